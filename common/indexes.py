"""Index, TTL and retention specification: declared once, applied idempotently by both programs
at start and by the Ansible playbook (``python -m common.indexes``).

- every data collection: ``{exchange, symbol, t:-1, _id:-1}`` serves the history endpoints for a
  symbol in their exact sort order (``t`` - ``ts`` as integer epoch ms - then ``_id``, the keyset
  cursor), so a page reads ``limit`` index entries instead of sorting every match; ``{t:-1,
  _id:-1}`` does the same for queries without a symbol and serves the retention deleter's range;
  a single-field TTL index on ``ts`` bounds the collection's size (TTL is ignored on compound
  indexes); ``{rt, _id}`` (``rt`` = ``received_at`` in ms) serves the ``/ws`` poller (records
  stored since its last read);
- trades: unique ``(exchange, market, symbol, trade_id)`` so re-inserts after a reconnect or a
  backfill are rejected as duplicates instead of stored twice;
- ohlcv: unique ``(exchange, market, symbol, interval, ts)``, written by upsert;
- funding / open interest: unique per ``(exchange, market, symbol, ts)`` so re-polls are no-ops;
- latest: ``_id`` is ``exchange:market:symbol:type``; ``{exchange, symbol}`` serves /realtime;
- gaps: ``{exchange, symbol, t:-1, _id:-1}`` and ``{t:-1, _id:-1}`` (``t`` = ``start`` in ms)
  for ``/gaps`` paging; TTL on ``start``.

Per server (``server_profile``), decided here and nowhere else:

- a real mongod holds the specs as written and expires documents with the TTL indexes;
- nx-27017 (the embedded server) cannot index ``_id`` in a compound key (left out, then
  duplicates dropped) and expires TTL collections by scanning on every read, so it gets no TTL
  index (an existing one is dropped) and ``expiry_plan`` lists what the collector's retention
  task (collector.retention) deletes instead, in bounded batches by a range on ``t``.

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

# The history sort (api.queries) is (t, _id) descending; the indexes end with exactly that.
HISTORY_SORT = [(schema.TIME_KEY, DESCENDING), ("_id", DESCENDING)]
READ_KEYS = [("exchange", ASCENDING), ("symbol", ASCENDING), *HISTORY_SORT]
GAPS_SORT = HISTORY_SORT         # a gap's t is its start
# The /ws poller reads each collection in (rt, _id) order from its last position (rt:
# received_at as integer epoch ms; a BSON date range costs a scan on nx-27017).
STREAM_SORT = [(schema.RECEIVED_KEY, ASCENDING), ("_id", ASCENDING)]
_EX_SYM = [("exchange", ASCENDING), ("symbol", ASCENDING)]


def _retired(coll: str, time_field: str) -> list[tuple[str, str, list[tuple[str, int]]]]:
    """The read indexes of earlier releases, keyed on the BSON date (``ts`` / ``start``)."""
    t_id = [(time_field, DESCENDING), ("_id", DESCENDING)]
    return [(coll, f"exchange_symbol_{time_field}", [*_EX_SYM, (time_field, DESCENDING)]),
            (coll, f"exchange_symbol_{time_field}_id", [*_EX_SYM, *t_id]),
            (coll, f"{time_field}_id", t_id)]


# (collection, name, keys) of indexes that a spec replaced: dropped once the new one exists.
RETIRED = [*(r for c in schema.DATA_COLLECTIONS for r in _retired(c, "ts")),
           *_retired(schema.GAPS, "start"),
           *((c, "received_at_id", [("received_at", ASCENDING), ("_id", ASCENDING)])
             for c in schema.DATA_COLLECTIONS)]
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
        specs.append(IndexSpec(coll, READ_KEYS, "exchange_symbol_t_id"))
        specs.append(IndexSpec(coll, [("ts", ASCENDING)], "ttl_ts",
                               {"expireAfterSeconds": int(getattr(retention, coll))}))
        specs.append(IndexSpec(coll, HISTORY_SORT, "t_id"))
        specs.append(IndexSpec(coll, STREAM_SORT, "rt_id"))
        if record_type.unique_fields:
            specs.append(IndexSpec(coll, _unique_keys(record_type), "unique_key", {"unique": True}))
    specs.append(IndexSpec(schema.LATEST, [("exchange", ASCENDING), ("symbol", ASCENDING)],
                           "exchange_symbol"))
    specs.append(IndexSpec(schema.GAPS, [*_EX_SYM, *GAPS_SORT], "exchange_symbol_t_id"))
    specs.append(IndexSpec(schema.GAPS, [("start", ASCENDING)], "ttl_start",
                           {"expireAfterSeconds": int(retention.trades)}))
    specs.append(IndexSpec(schema.GAPS, GAPS_SORT, "t_id"))
    return specs


def expiry_plan(retention: RetentionSettings) -> list[tuple[str, int]]:
    """(collection, max age in seconds) of every TTL spec: what the retention task deletes by
    ``t`` (the same instant as the TTL field: ``ts``, or ``start`` for gaps) where the server
    gets no TTL index."""
    return [(spec.collection, int(spec.options["expireAfterSeconds"]))
            for spec in index_specs(retention) if "expireAfterSeconds" in spec.options]


@dataclass(frozen=True)
class ServerProfile:
    # Compound indexes may name ``_id`` (not on nx-27017: it keeps ``_id`` outside the indexed
    # JSON, and such an index makes every insert into the collection fail there).
    index_id: bool
    # TTL indexes are cheap (a background monitor). nx-27017 expires a TTL collection with a
    # scan on every read (~150 ms per read at 200k documents): retention task instead.
    ttl: bool


async def server_profile(db, retention: RetentionSettings | None = None) -> ServerProfile:
    """What this server gets; ``retention.mechanism`` may force TTL indexes or deletes."""
    try:
        info = await db.command("buildInfo")
        real = info.get("process") != "nx_27017"
    except OperationFailure:
        real = True
    mechanism = retention.mechanism if retention is not None else "auto"
    return ServerProfile(index_id=real,
                         ttl=real if mechanism == "auto" else mechanism == "ttl")


async def indexes_can_name_id(db) -> bool:
    """False on nx-27017 (see ``ServerProfile.index_id``)."""
    return (await server_profile(db)).index_id


def _fields(keys: list[tuple[str, int]]) -> tuple[str, ...]:
    return tuple(name for name, _ in keys)


def _server_keys(keys: list[tuple[str, int]], with_id: bool) -> list[tuple[str, int]]:
    return keys if with_id else [k for k in keys if k[0] != "_id"]


def server_specs(specs: list[IndexSpec], with_id: bool,
                 ttl: bool = True) -> list[tuple[IndexSpec, list]]:
    """(spec, keys as this server holds them): without ``_id`` where the server cannot index it
    (nx-27017), without TTL specs where it gets none, and then without the specs that duplicate
    one already listed."""
    out: list[tuple[IndexSpec, list]] = []
    seen: dict[str, set[tuple[str, ...]]] = defaultdict(set)
    for spec in specs:
        if not ttl and "expireAfterSeconds" in spec.options:
            continue
        keys = _server_keys(spec.keys, with_id)
        if _fields(keys) in seen[spec.collection]:
            continue
        seen[spec.collection].add(_fields(keys))
        out.append((spec, keys))
    return out


async def missing_indexes(db, retention: RetentionSettings) -> list[str]:
    """``collection.name`` of every specified index this database lacks (deployment checks)."""
    missing = []
    profile = await server_profile(db, retention)
    for spec, keys in server_specs(index_specs(retention), profile.index_id, profile.ttl):
        info = await db[spec.collection].index_information()
        if not any([k for k, _ in meta["key"]] == list(_fields(keys)) for meta in info.values()):
            missing.append(f"{spec.collection}.{spec.name}")
    return missing


async def _drop_where(coll, match) -> None:
    """Drop the indexes whose metadata ``match`` accepts, by the name the server gave them
    (nx-27017 renames indexes, and ignores a drop by the name it was created with)."""
    for name, meta in (await coll.index_information()).items():
        if name != "_id_" and match(meta):
            try:
                await coll.drop_index(name)
                log.info("%s: dropped index %s", coll.name, name)
            except OperationFailure as exc:
                if exc.code != INDEX_NOT_FOUND:
                    raise


async def apply_indexes(db, retention: RetentionSettings) -> int:
    """Create every index; update a changed TTL in place; drop retired indexes once their
    replacement exists, and TTL indexes where the server gets none. Returns the number of
    specs applied."""
    specs = index_specs(retention)
    profile = await server_profile(db, retention)
    applied: dict[str, set[tuple[str, ...]]] = defaultdict(set)
    for spec, keys in server_specs(specs, profile.index_id, profile.ttl):
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
    for collection, _name, keys in RETIRED:
        fields = _fields(_server_keys(keys, profile.index_id))
        if fields in applied[collection]:
            continue     # same keys as an applied spec (nx-27017 without _id): nothing to retire
        await _drop_where(db[collection], lambda meta, fields=fields:
                          tuple(k for k, _ in meta["key"]) == fields
                          and "expireAfterSeconds" not in meta)
    if not profile.ttl:
        for collection in sorted({spec.collection for spec in specs}):
            await _drop_where(db[collection], lambda meta: "expireAfterSeconds" in meta)
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
