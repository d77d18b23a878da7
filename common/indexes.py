"""Index and TTL specification: declared once, applied idempotently by both programs at start
and by the Ansible playbook (``python -m common.indexes``).

- every data collection: ``{exchange, symbol, ts:-1, _id:-1}`` serves the history endpoints for a
  symbol in their exact sort order (``ts`` then ``_id``, the keyset cursor), so a page reads
  ``limit`` index entries instead of sorting every match; ``{ts:-1, _id:-1}`` does the same for
  queries without a symbol; a single-field TTL index on ``ts`` bounds the collection's size (TTL
  is ignored on compound indexes); ``{received_at, _id}`` serves the ``/ws`` poller (records
  stored since its last read);
- trades: unique ``(exchange, market, symbol, trade_id)`` so re-inserts after a reconnect or a
  backfill are rejected as duplicates instead of stored twice;
- ohlcv: unique ``(exchange, market, symbol, interval, ts)``, written by upsert;
- funding / open interest: unique per ``(exchange, market, symbol, ts)`` so re-polls are no-ops;
- latest: ``_id`` is ``exchange:market:symbol:type``; ``{exchange, symbol}`` serves /realtime;
- gaps: ``{exchange, symbol, start:-1, _id:-1}`` and ``{start:-1, _id:-1}`` for ``/gaps`` paging.

A spec that replaces an older index under a new name lists the old one in ``RETIRED``; the
applier creates the new index first and then drops the old one (make before break), so a
second run changes nothing.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.errors import OperationFailure, PyMongoError

from common import schema
from common.settings import RetentionSettings, Settings

log = logging.getLogger(__name__)

# The history sort (api.queries) is (ts, _id) descending; the indexes end with exactly that.
HISTORY_SORT = [("ts", DESCENDING), ("_id", DESCENDING)]
READ_KEYS = [("exchange", ASCENDING), ("symbol", ASCENDING), *HISTORY_SORT]
GAPS_SORT = [("start", DESCENDING), ("_id", DESCENDING)]
# The /ws poller reads each collection in (received_at, _id) order from its last position.
STREAM_SORT = [("received_at", ASCENDING), ("_id", ASCENDING)]
# (collection, name, keys) of indexes that a spec replaced: dropped once the new one exists.
RETIRED = [*((c, "exchange_symbol_ts", [("exchange", ASCENDING), ("symbol", ASCENDING),
                                         ("ts", DESCENDING)]) for c in schema.DATA_COLLECTIONS),
           (schema.GAPS, "exchange_symbol_start", [("exchange", ASCENDING),
                                                   ("symbol", ASCENDING), ("start", DESCENDING)])]
# IndexNotFound: dropping a retired index that is already gone.
INDEX_NOT_FOUND = 27


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
        specs.append(IndexSpec(coll, READ_KEYS, "exchange_symbol_ts_id"))
        # TTL before ts_id: without _id (nx-27017) ts_id would be the same index, minus the TTL.
        specs.append(IndexSpec(coll, [("ts", ASCENDING)], "ttl_ts",
                               {"expireAfterSeconds": int(getattr(retention, coll))}))
        specs.append(IndexSpec(coll, HISTORY_SORT, "ts_id"))
        specs.append(IndexSpec(coll, STREAM_SORT, "received_at_id"))
        if record_type.unique_fields:
            specs.append(IndexSpec(coll, _unique_keys(record_type), "unique_key", {"unique": True}))
    specs.append(IndexSpec(schema.LATEST, [("exchange", ASCENDING), ("symbol", ASCENDING)],
                           "exchange_symbol"))
    specs.append(IndexSpec(schema.GAPS, [("exchange", ASCENDING), ("symbol", ASCENDING),
                                         *GAPS_SORT], "exchange_symbol_start_id"))
    specs.append(IndexSpec(schema.GAPS, [("start", ASCENDING)], "ttl_start",
                           {"expireAfterSeconds": int(retention.trades)}))
    specs.append(IndexSpec(schema.GAPS, GAPS_SORT, "start_id"))
    return specs


async def indexes_can_name_id(db) -> bool:
    """False on nx-27017 (the embedded server): it keeps ``_id`` outside the indexed JSON, and a
    compound index naming ``_id`` makes every insert into the collection fail there."""
    try:
        info = await db.command("buildInfo")
    except OperationFailure:
        return True
    return info.get("process") != "nx_27017"


def _fields(keys: list[tuple[str, int]]) -> tuple[str, ...]:
    return tuple(name for name, _ in keys)


def server_specs(specs: list[IndexSpec], with_id: bool) -> list[tuple[IndexSpec, list]]:
    """(spec, keys as this server holds them): without ``_id`` where the server cannot index it
    (nx-27017), and then without the specs that duplicate one already listed."""
    out: list[tuple[IndexSpec, list]] = []
    seen: dict[str, set[tuple[str, ...]]] = defaultdict(set)
    for spec in specs:
        keys = spec.keys if with_id else [k for k in spec.keys if k[0] != "_id"]
        if _fields(keys) in seen[spec.collection]:
            continue
        seen[spec.collection].add(_fields(keys))
        out.append((spec, keys))
    return out


async def missing_indexes(db, retention: RetentionSettings) -> list[str]:
    """``collection.name`` of every specified index this database lacks (deployment checks)."""
    missing = []
    for spec, keys in server_specs(index_specs(retention), await indexes_can_name_id(db)):
        info = await db[spec.collection].index_information()
        if not any([k for k, _ in meta["key"]] == list(_fields(keys)) for meta in info.values()):
            missing.append(f"{spec.collection}.{spec.name}")
    return missing


async def apply_indexes(db, retention: RetentionSettings) -> int:
    """Create every index; update a changed TTL in place; drop retired indexes once their
    replacement exists. Returns the number of specs applied."""
    specs = index_specs(retention)
    applied: dict[str, set[tuple[str, ...]]] = defaultdict(set)
    for spec, keys in server_specs(specs, await indexes_can_name_id(db)):
        applied[spec.collection].add(_fields(keys))
        coll = db[spec.collection]
        try:
            await coll.create_index(keys, name=spec.name, **spec.options)
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
    for collection, name, keys in RETIRED:
        if _fields(keys) in applied[collection]:
            continue     # same keys as an applied spec (nx-27017 without _id): nothing to retire
        try:
            await db[collection].drop_index(name)
            log.info("%s: dropped retired index %s", collection, name)
        except OperationFailure as exc:
            if exc.code != INDEX_NOT_FOUND:
                raise
    return len(specs)


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
