"""Index and TTL specification: declared once, applied idempotently by both programs at start
and by the Ansible playbook (``python -m common.indexes``).

- every data collection: ``{exchange, symbol, ts:-1}`` serves "latest N for a symbol" and time
  ranges per symbol; a single-field TTL index on ``ts`` bounds its size (TTL is ignored on
  compound indexes) and serves time ranges across symbols;
- trades: unique ``(exchange, market, symbol, trade_id)`` so re-inserts after a reconnect or a
  backfill are rejected as duplicates instead of stored twice;
- ohlcv: unique ``(exchange, market, symbol, interval, ts)``, written by upsert;
- funding / open interest: unique per ``(exchange, market, symbol, ts)`` so re-polls are no-ops;
- latest: ``_id`` is ``exchange:market:symbol:type``; ``{exchange, symbol}`` serves /realtime.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.errors import OperationFailure, PyMongoError

from common import schema
from common.settings import RetentionSettings, Settings

log = logging.getLogger(__name__)

READ_KEYS = [("exchange", ASCENDING), ("symbol", ASCENDING), ("ts", DESCENDING)]


@dataclass(frozen=True)
class IndexSpec:
    collection: str
    keys: list[tuple[str, int]]
    name: str
    options: dict[str, Any] = field(default_factory=dict)


def _unique_keys(record_type: type[schema.Record]) -> list[tuple[str, int]]:
    base = ["exchange", "market", "symbol"]
    return [(name, ASCENDING) for name in base + list(record_type.unique_fields)]


def index_specs(retention: RetentionSettings) -> list[IndexSpec]:
    specs: list[IndexSpec] = []
    for record_type in schema.RECORD_TYPES:
        coll = record_type.collection
        specs.append(IndexSpec(coll, READ_KEYS, "exchange_symbol_ts"))
        specs.append(IndexSpec(coll, [("ts", ASCENDING)], "ttl_ts",
                               {"expireAfterSeconds": int(getattr(retention, coll))}))
        if record_type.unique_fields:
            specs.append(IndexSpec(coll, _unique_keys(record_type), "unique_key", {"unique": True}))
    specs.append(IndexSpec(schema.LATEST, [("exchange", ASCENDING), ("symbol", ASCENDING)],
                           "exchange_symbol"))
    specs.append(IndexSpec(schema.GAPS, [("exchange", ASCENDING), ("symbol", ASCENDING),
                                         ("start", DESCENDING)], "exchange_symbol_start"))
    specs.append(IndexSpec(schema.GAPS, [("start", ASCENDING)], "ttl_start",
                           {"expireAfterSeconds": int(retention.trades)}))
    return specs


async def apply_indexes(db, retention: RetentionSettings) -> int:
    """Create every index; update a changed TTL in place. Returns the number of specs applied."""
    for spec in index_specs(retention):
        coll = db[spec.collection]
        try:
            await coll.create_index(spec.keys, name=spec.name, **spec.options)
        except OperationFailure as exc:
            # 85/86: an index on these keys exists with other options (e.g. a new TTL value).
            if exc.code in (85, 86) and "expireAfterSeconds" in spec.options:
                await db.command({
                    "collMod": spec.collection,
                    "index": {"keyPattern": dict(spec.keys),
                              "expireAfterSeconds": spec.options["expireAfterSeconds"]},
                })
            else:
                raise
    return len(index_specs(retention))


async def ensure_indexes(db, retention: RetentionSettings, retry_s: float = 2.0) -> None:
    """Apply the indexes, retrying until MongoDB is reachable (programs may start before it)."""
    logged = False
    while True:
        try:
            await apply_indexes(db, retention)
            if logged:
                log.info("indexes applied")
            return
        except PyMongoError as exc:
            if not logged:
                log.warning("could not apply indexes yet (%r); retrying every %.0fs", exc, retry_s)
                logged = True
            await asyncio.sleep(retry_s)


async def _index_state(db, retention: RetentionSettings) -> set:
    """Comparable snapshot of the indexes on every collection the spec touches (for change counts)."""
    state = set()
    for coll in sorted({spec.collection for spec in index_specs(retention)}):
        try:
            info = await db[coll].index_information()
        except OperationFailure:
            info = {}
        for name, meta in info.items():
            state.add((coll, name, tuple((k, int(v)) for k, v in meta.get("key", [])),
                       meta.get("expireAfterSeconds"), bool(meta.get("unique", False))))
    return state


async def _main() -> None:
    from common.db import get_database, make_client

    parser = argparse.ArgumentParser(description="Apply cryptodata indexes and TTLs to MongoDB")
    parser.add_argument("--uri", help="MongoDB URI (default: settings / MONGODB_URI)")
    args = parser.parse_args()
    settings = Settings()
    if args.uri:
        settings.mongodb_uri = args.uri
    client = make_client(settings)
    try:
        db = get_database(client, settings)
        before = await _index_state(db, settings.retention)
        count = await apply_indexes(db, settings.retention)
        after = await _index_state(db, settings.retention)
        print(f"applied {count} index specs to {settings.mongodb_db}")
        # Machine-readable line for Ansible's changed_when: indexes created or modified by this run.
        print(json.dumps({"applied": count, "changed": len(after - before)}))
    finally:
        await client.close()


if __name__ == "__main__":
    asyncio.run(_main())
