"""Retention and time-key upkeep, run by the collector as background tasks.

- ``RetentionDeleter``: where the server gets no TTL index (common.indexes.server_profile; the
  embedded nx-27017), deletes documents older than their collection's retention
  (common.indexes.expiry_plan) by a range on the integer time key ``t``, in bounded batches: the
  ``batch``-th oldest expired document's ``t`` bounds each ``delete_many``, so one call removes
  about ``batch`` documents (plus the ones sharing that millisecond) and the reads and writes
  around it wait for one short call, not for a whole day's expiry.
- ``migrate_time_keys``: documents written before ``t`` existed get it (``ts`` / ``start`` in
  epoch ms) in bounded batches at start; until then the history reads, which filter and sort
  on ``t``, do not return them.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from pymongo import ASCENDING, UpdateOne
from pymongo.errors import PyMongoError

from common import schema
from common.indexes import expiry_plan, server_profile
from common.settings import RetentionSettings

log = logging.getLogger(__name__)
T = schema.TIME_KEY


@dataclass
class PassStats:
    """One pass over every collection: documents deleted and the duration of each batch."""

    deleted: int = 0
    batch_ms: list[float] = field(default_factory=list)
    per_collection: dict[str, int] = field(default_factory=dict)


class RetentionDeleter:
    def __init__(self, db, plan: list[tuple[str, int]], *, batch: int = 2000,
                 pause_s: float = 0.02) -> None:
        self.db = db
        self.plan = plan
        self.batch = batch
        self.pause_s = pause_s        # between batches: the event loop's other work goes first
        self.deleted = 0

    async def delete_older(self, collection: str, cutoff_ms: int, stats: PassStats) -> None:
        """Delete documents of ``collection`` with ``t < cutoff_ms``, ``batch`` at a time."""
        coll = self.db[collection]
        while True:
            started = time.perf_counter()
            edge = await coll.find({T: {"$lt": cutoff_ms}}, {"_id": 0, T: 1}).sort(
                T, ASCENDING).skip(self.batch - 1).limit(1).to_list(1)
            # Fewer than ``batch`` expired: the rest in one call; else up to the batch's edge.
            query = {T: {"$lte": edge[0][T]}} if edge else {T: {"$lt": cutoff_ms}}
            result = await coll.delete_many(query)
            stats.batch_ms.append((time.perf_counter() - started) * 1000)
            stats.deleted += result.deleted_count
            stats.per_collection[collection] = (stats.per_collection.get(collection, 0)
                                                + result.deleted_count)
            self.deleted += result.deleted_count
            if not edge:
                return
            await asyncio.sleep(self.pause_s)

    async def run_once(self, now_ms: int | None = None) -> PassStats:
        now_ms = schema.time_key(schema.now_utc()) if now_ms is None else now_ms
        stats = PassStats()
        for collection, max_age_s in self.plan:
            await self.delete_older(collection, now_ms - max_age_s * 1000, stats)
        return stats

    async def run(self, interval_s: float) -> None:
        while True:
            try:
                stats = await self.run_once()
                if stats.deleted:
                    log.info("retention: deleted %d expired documents in %d batches (%.0f ms, "
                             "longest batch %.1f ms): %s", stats.deleted, len(stats.batch_ms),
                             sum(stats.batch_ms), max(stats.batch_ms), stats.per_collection)
            except PyMongoError as exc:
                log.warning("retention pass failed (next in %.0fs): %r", interval_s, exc)
            await asyncio.sleep(interval_s)


async def migrate_time_keys(db, collections: list[str], batch: int = 1000) -> int:
    """Set ``t`` on documents lacking it (written by an earlier release), ``batch`` per round
    trip. Returns the number of documents updated."""
    updated = 0
    for collection in collections:
        coll = db[collection]
        source = "start" if collection == schema.GAPS else "ts"
        while True:
            docs = await coll.find({T: {"$exists": False}}, {source: 1}).limit(batch) \
                .to_list(batch)
            ops = [UpdateOne({"_id": d["_id"]}, {"$set": {T: schema.time_key(d[source])}})
                   for d in docs if d.get(source) is not None]
            if ops:
                await coll.bulk_write(ops, ordered=False)
                updated += len(ops)
            if len(docs) < batch or not ops:
                break
        if updated:
            log.info("time keys: %s migrated (%d documents so far)", collection, updated)
    return updated


async def upkeep(db, retention: RetentionSettings, interval_s: float,
                 retry_s: float = 5.0) -> dict[str, Any]:
    """The collector's task: migrate old documents once, then, where the server has no TTL
    indexes, run the retention deleter every ``interval_s``. Waits for the database."""
    while True:
        try:
            profile = await server_profile(db, retention)
            await migrate_time_keys(db, [*schema.DATA_COLLECTIONS, schema.GAPS])
            break
        except PyMongoError as exc:
            log.debug("upkeep waits for MongoDB: %r", exc)
            await asyncio.sleep(retry_s)
    if profile.ttl:
        return {"mode": "ttl"}           # the server's TTL indexes expire documents
    await RetentionDeleter(db, expiry_plan(retention)).run(interval_s)
    return {"mode": "delete"}
