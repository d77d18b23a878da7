"""Batched MongoDB writer: records in, unordered bulk writes out, never a round trip per message.

``submit`` is synchronous and cheap (append to a per-collection batch). A background task flushes
a collection when its batch reaches ``batch_size`` or every ``flush_interval_s``. Inserts are
unordered ``insert_many`` (duplicate-key rejections of re-sent trades are expected and ignored);
candles are upserted on their open time; the ``latest`` collection gets one coalesced upsert per
(exchange, market, symbol, type) per flush. When MongoDB is unavailable the batches are kept and
retried in order; nothing is dropped until ``queue_max`` pending documents are reached.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from typing import Any

from pymongo import ReplaceOne
from pymongo.errors import BulkWriteError, PyMongoError

from common import schema
from common.schema import Record, latest_id, to_doc

log = logging.getLogger(__name__)

DUPLICATE_KEY = 11000


class Writer:
    def __init__(self, db, *, batch_size: int = 500, flush_interval_s: float = 1.0,
                 queue_max: int = 200_000) -> None:
        self.db = db
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.queue_max = queue_max
        self._pending: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self._latest: dict[str, dict[str, Any]] = {}
        self._pending_count = 0
        self._wake = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._stopping = False
        # Counters for logs, status and metrics.
        self.stored = 0
        self.duplicates = 0
        self.dropped = 0
        self.write_errors = 0
        self.last_write_ms = 0.0
        self.db_available = True
        self.last_error: str | None = None

    @property
    def pending(self) -> int:
        return self._pending_count

    def submit(self, record: Record, *, history: bool = True) -> None:
        """Queue a record for its collection (``history``) and for ``latest``."""
        doc = to_doc(record)
        if history:
            if self._pending_count >= self.queue_max:
                self.dropped += 1
            else:
                batch = self._pending[record.collection]
                batch.append(dict(doc))
                self._pending_count += 1
                if len(batch) >= self.batch_size:
                    self._wake.set()
        doc["type"] = record.collection
        # Whole-document replacement carrying its own _id: a $set of dates on an existing
        # document, or an upsert that takes _id from the filter, is mis-stored by nx-27017.
        doc["_id"] = key = latest_id(record)
        self._latest[key] = doc

    async def run(self) -> None:
        while not self._stopping:
            try:
                await asyncio.wait_for(self._wake.wait(), self.flush_interval_s)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            ok = await self.flush()
            if not ok:
                # Database unavailable: back off a little before the next attempt.
                await asyncio.sleep(min(5.0, self.flush_interval_s * 2))

    async def close(self, timeout_s: float = 20.0) -> None:
        """Final flush (SIGTERM path): keep trying until written or the deadline passes."""
        self._stopping = True
        deadline = time.monotonic() + timeout_s
        while self._pending_count or self._latest:
            if await self.flush():
                continue
            if time.monotonic() > deadline:
                log.error("shutdown: %d documents could not be written", self._pending_count)
                return
            await asyncio.sleep(0.5)

    async def flush(self) -> bool:
        """Write everything pending. Returns False if the database was unavailable."""
        async with self._flush_lock:
            started = time.perf_counter()
            for collection in list(self._pending):
                docs = self._pending[collection]
                while docs:
                    chunk = docs[: self.batch_size * 4]
                    try:
                        await self._write(collection, chunk)
                    except PyMongoError as exc:
                        self._unavailable(exc)
                        return False
                    del docs[: len(chunk)]
                    self._pending_count -= len(chunk)
            if self._latest:
                latest, self._latest = self._latest, {}
                try:
                    await self.db[schema.LATEST].bulk_write(
                        [ReplaceOne({"_id": key}, doc, upsert=True) for key, doc in latest.items()],
                        ordered=False)
                except PyMongoError as exc:
                    # Newer values may have arrived meanwhile; only restore keys not replaced.
                    for key, doc in latest.items():
                        self._latest.setdefault(key, doc)
                    self._unavailable(exc)
                    return False
            if not self.db_available:
                log.warning("MongoDB available again")
            self.db_available = True
            self.last_write_ms = (time.perf_counter() - started) * 1000
            return True

    def _unavailable(self, exc: Exception) -> None:
        self.write_errors += 1
        self.last_error = repr(exc)[:300]
        if self.db_available:
            log.error("MongoDB write failed, keeping %d documents pending: %s",
                      self._pending_count, self.last_error)
        self.db_available = False

    async def _write(self, collection: str, docs: list[dict[str, Any]]) -> None:
        coll = self.db[collection]
        if collection == schema.OHLCV:
            # Later updates of the same candle win; one upsert per candle per batch.
            by_key: dict[tuple, dict[str, Any]] = {}
            for doc in docs:
                by_key[(doc["exchange"], doc["market"], doc["symbol"], doc["interval"], doc["ts"])] = doc
            ops = [ReplaceOne({"exchange": k[0], "market": k[1], "symbol": k[2], "interval": k[3],
                               "ts": k[4]}, doc, upsert=True) for k, doc in by_key.items()]
            await coll.bulk_write(ops, ordered=False)
            self.stored += len(docs)
            return
        try:
            result = await coll.insert_many(docs, ordered=False)
            self.stored += len(result.inserted_ids)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            non_dup = [e for e in errors if e.get("code") != DUPLICATE_KEY]
            self.duplicates += len(errors) - len(non_dup)
            self.stored += exc.details.get("nInserted", 0)
            if non_dup:
                self.write_errors += len(non_dup)
                log.error("%s: %d documents rejected: %s", collection, len(non_dup),
                          non_dup[0].get("errmsg"))
        # insert_many adds _id to each doc; the docs are discarded after this.
