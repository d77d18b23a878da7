"""Batched MongoDB writer: records in, unordered bulk writes out, never a round trip per message.

``submit`` is synchronous and cheap (append to a per-collection batch). A background task flushes
a collection when its batch reaches ``batch_size`` or every ``flush_interval_s``. Inserts are
unordered ``insert_many`` (duplicate-key rejections of re-sent trades are expected and ignored);
candles are upserted on their open time; the ``latest`` collection gets one coalesced upsert per
(exchange, market, symbol, type) per flush. When MongoDB is unavailable the batches are kept and
retried in order; nothing is dropped until ``queue_max`` pending documents are reached.

With a ``spool`` (collector.spool) an outage does not hold data in memory: as soon as a write
fails, every pending batch is appended to the disk spool (fsync'd), and while MongoDB stays away
new batches are spooled every ``flush_interval_s``; a cheap ping probes for the database. When it
answers, the spool is replayed in order first, then normal flushing resumes. ``outage_listeners``
are called with (available: bool) on every transition (the gap ledger records db_outage gaps).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, defaultdict
from datetime import datetime
from typing import Any

from bson import ObjectId
from pymongo import ReplaceOne
from pymongo.errors import BulkWriteError, PyMongoError

from common import schema
from common.schema import Record, latest_id
from common.status import SpoolStatus

log = logging.getLogger(__name__)

DUPLICATE_KEY = 11000


class Writer:
    def __init__(self, db, *, batch_size: int = 500, flush_interval_s: float = 1.0,
                 queue_max: int = 200_000, spool=None) -> None:
        self.db = db
        self.spool = spool
        self.outage_listeners: list = []
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.queue_max = queue_max
        self._pending: dict[str, list[dict[str, Any]]] = defaultdict(list)
        # (type, exchange, market, symbol) -> newest record, coalesced; its ``latest_id`` (an
        # f-string) is made once per flush, not once per record.
        self._latest: dict[tuple[type[Record], str, str, str], Record] = {}
        # The same, kept across flushes: every stream's newest record (freshness, ``fresh``).
        self._newest: dict[tuple[type[Record], str, str, str], Record] = {}
        self._pending_count = 0
        self._wake = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._stopping = False
        self._next_probe = 0.0
        # Counters for logs, status and metrics.
        self.stored = 0
        # ``stored`` per collection; a candle counts once per write (later writes replace it).
        self.stored_by: Counter[str] = Counter()
        self.duplicates = 0
        self.dropped = 0
        self.dropped_by: Counter[str] = Counter()    # ``dropped`` per collection
        # Called after every successful flush (the gap ledger accounts for drops there).
        self.flush_listeners: list = []
        self.write_errors = 0
        self.last_write_ms = 0.0
        self.db_available = True
        self.last_error: str | None = None
        # Wall-clock time before which every submitted document is in MongoDB or fsync'd to the
        # spool (None until the first flush); the run state file (collector.runstate) keeps it.
        self.durable_until: float | None = None

    @property
    def pending(self) -> int:
        return self._pending_count

    def submit_doc(self, collection: str, doc: dict[str, Any]) -> None:
        """Queue a ready document (gap ledger entries: replaced by ``_id``)."""
        self._pending[collection].append(doc)
        self._pending_count += 1

    def submit(self, record: Record, history: bool = True) -> None:
        """Queue a record for its collection (``history``) and for ``latest``.

        ``latest`` is coalesced: only the newest record per key is kept and its document is
        built at flush time (``latest_doc``), so a stream of 100k tickers/s for one symbol costs
        one document per flush there, not one per message. Records are not modified after they
        are submitted (a feed that updates one, e.g. a candle it closes, submits it again)."""
        if history:
            if self._pending_count >= self.queue_max:
                self.dropped += 1
                self.dropped_by[record.collection] += 1
            else:
                batch = self._pending[record.collection]
                batch.append(record.to_doc())
                self._pending_count += 1
                if len(batch) >= self.batch_size:
                    self._wake.set()
        self._latest[type(record), record.exchange, record.market, record.symbol] = record

    def newest(self, kind: type[Record], exchange: str, market: str, symbol: str
               ) -> Record | None:
        """The newest record of one stream (e.g. the ticker the liquidity sampler reads)."""
        key = (kind, exchange, market, symbol)
        return self._latest.get(key) or self._newest.get(key)

    def fresh(self, exchange: str) -> dict[str, dict[tuple[str, str], datetime]]:
        """Receive time of the newest record of each of ``exchange``'s streams, written or not:
        collection -> (market, symbol) -> time."""
        out: dict[str, dict[tuple[str, str], datetime]] = defaultdict(dict)
        for records in (self._newest, self._latest):
            for (kind, name, market, symbol), record in records.items():
                if name == exchange:
                    out[kind.collection][market, symbol] = record.received_at
        return out

    @classmethod
    def _replace_latest(cls, record: Record) -> ReplaceOne:
        key = latest_id(record)
        return ReplaceOne({"_id": key}, cls.latest_doc(key, record), upsert=True)

    @staticmethod
    def latest_doc(key: str, record: Record) -> dict[str, Any]:
        """The ``latest`` document of a record: its fields plus ``type`` and its own ``_id``."""
        doc = record.to_doc()
        for key_name in schema.STORAGE_KEYS:    # history keys: ``latest`` is read by key only
            del doc[key_name]
        doc["type"] = record.collection
        # Whole-document replacement carrying its own _id: a $set of dates on an existing
        # document, or an upsert that takes _id from the filter, is mis-stored by nx-27017.
        doc["_id"] = key
        return doc

    async def run(self) -> None:
        while not self._stopping:
            try:
                await asyncio.wait_for(self._wake.wait(), self.flush_interval_s)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            if self.db_available or self.spool is None:
                ok = await self.flush()
                if not ok and self.spool is None:
                    # Database unavailable: back off a little before the next attempt.
                    await asyncio.sleep(min(5.0, self.flush_interval_s * 2))
                continue
            # Outage with a spool: persist what arrived, then probe (bounded by the interval so
            # spooling keeps its cadence); flush (spool first) once the database answers.
            self.spool_pending()
            if time.monotonic() >= self._next_probe:
                self._next_probe = time.monotonic() + min(2.0, max(0.2, self.flush_interval_s))
                if await self.probe():
                    await self.flush()

    def stop_running(self) -> None:
        """End ``run`` after the flush in progress: cancelling a flush mid-write would leave
        documents the server stored uncounted (they would then come back as duplicates)."""
        self._stopping = True
        self._wake.set()

    async def close(self, timeout_s: float = 20.0) -> None:
        """Final flush (SIGTERM path): keep trying until written or the deadline passes."""
        self._stopping = True
        deadline = time.monotonic() + timeout_s
        if self.spool is not None:
            # One attempt if the database looked healthy, else straight to the spool: SIGTERM
            # must not wait out an outage (supervisors kill after a grace period).
            # Bounded: a cancelled drain/write leaves its documents spooled or pending (they
            # carry an _id by then, so a later replay cannot duplicate them).
            ok = False
            if self.db_available:
                try:
                    ok = await asyncio.wait_for(self.flush(), timeout_s)
                except asyncio.TimeoutError:
                    log.error("shutdown: flush did not finish in %.0fs; spooling", timeout_s)
            if not ok:
                self.spool_pending()
            self.spool.close()
            return
        while self._pending_count or self._latest:
            if await self.flush():
                continue
            if time.monotonic() > deadline:
                log.error("shutdown: %d documents could not be written", self._pending_count)
                return
            await asyncio.sleep(0.5)

    async def probe(self) -> bool:
        try:
            await asyncio.wait_for(self.db.command("ping"),
                                   max(0.5, min(2.0, self.flush_interval_s)))
            return True
        except (PyMongoError, asyncio.TimeoutError, OSError):
            return False

    def spool_pending(self) -> int:
        """Move every pending batch to the disk spool (one fsync). Returns documents moved."""
        spool = self.spool
        started = time.time()
        if spool is None or not self._pending_count:
            if spool is not None:
                self.durable_until = started
            return 0
        moved = 0
        for collection in list(self._pending):
            docs = self._pending[collection]
            if not docs:
                continue
            for doc in docs:
                if "_id" not in doc:
                    doc["_id"] = ObjectId()   # replay twice -> duplicate key, never a copy
            if not spool.append(collection, docs):
                continue                       # reject policy: stays in memory (queue_max)
            moved += len(docs)
            self._pending_count -= len(docs)
            self._pending[collection] = []
        spool.sync()
        if not self._pending_count:        # reject policy: what stays in memory is not durable
            self.durable_until = started
        return moved

    async def flush(self) -> bool:
        """Write everything pending (the spool first). Returns False if the database was
        unavailable."""
        async with self._flush_lock:
            started = time.perf_counter()
            # Everything pending now is written below (or spooled on failure).
            started_wall = time.time()
            if self.spool is not None and self.spool:
                log.warning("spool: replaying %d documents", self.spool.records)
                try:
                    replayed = await self.spool.drain(self._write_replayed)
                    if replayed:
                        log.warning("spool: replayed %d documents into MongoDB", replayed)
                except PyMongoError as exc:
                    self._unavailable(exc)
                    self.spool_pending()
                    return False
            for collection in list(self._pending):
                docs = self._pending[collection]
                # Only what is pending now: with a slow database a busy collection refills
                # during every write and would starve the others (and ``latest``) forever.
                todo = len(docs)
                while todo > 0:
                    chunk = docs[: min(todo, self.batch_size * 4)]
                    try:
                        await self._write(collection, chunk)
                    except PyMongoError as exc:
                        self._unavailable(exc)
                        self.spool_pending()
                        return False
                    del docs[: len(chunk)]
                    self._pending_count -= len(chunk)
                    todo -= len(chunk)
            if self._latest:
                latest, self._latest = self._latest, {}
                self._newest.update(latest)
                try:
                    await self.db[schema.LATEST].bulk_write(
                        [self._replace_latest(record) for record in latest.values()],
                        ordered=False)
                except PyMongoError as exc:
                    # Newer values may have arrived meanwhile; only restore keys not replaced.
                    for key, record in latest.items():
                        self._latest.setdefault(key, record)
                    self._unavailable(exc)
                    self.spool_pending()
                    return False
            if not self.db_available:
                log.warning("MongoDB available again")
                self.db_available = True
                self._notify(True)
            self.durable_until = started_wall
            for listener in self.flush_listeners:
                listener()
            self.last_write_ms = (time.perf_counter() - started) * 1000
            return True

    def _notify(self, available: bool) -> None:
        for listener in self.outage_listeners:
            try:
                listener(available)
            except Exception:  # noqa: BLE001 - a listener bug must not stop the writer
                log.exception("outage listener failed")

    def spool_status(self) -> SpoolStatus | None:
        return None if self.spool is None else self.spool.status()

    def _unavailable(self, exc: Exception) -> None:
        self.write_errors += 1
        self.last_error = repr(exc)[:300]
        if self.db_available:
            log.error("MongoDB write failed, %s %d documents: %s",
                      "spooling" if self.spool is not None else "keeping",
                      self._pending_count, self.last_error)
            self.db_available = False
            self._notify(False)
        self.db_available = False

    async def _write_replayed(self, collection: str, docs: list[dict[str, Any]]) -> None:
        """A spooled batch: one spooled by an earlier release lacks the time keys ``t``/``rt``."""
        key = "start" if collection == schema.GAPS else "ts"
        for doc in docs:
            if schema.TIME_KEY not in doc and doc.get(key) is not None:
                doc[schema.TIME_KEY] = schema.time_key(doc[key])
            if collection != schema.GAPS and schema.RECEIVED_KEY not in doc \
                    and doc.get("received_at") is not None:
                doc[schema.RECEIVED_KEY] = schema.time_key(doc["received_at"])
        await self._write(collection, docs)

    def _count_stored(self, collection: str, count: int) -> None:
        self.stored += count
        self.stored_by[collection] += count

    async def _write(self, collection: str, docs: list[dict[str, Any]]) -> None:
        coll = self.db[collection]
        if collection == schema.GAPS:
            # Ledger entries are written when opened and again when closed: last one wins.
            by_id = {doc["_id"]: doc for doc in docs}
            await coll.bulk_write([ReplaceOne({"_id": k}, d, upsert=True)
                                   for k, d in by_id.items()], ordered=False)
            return
        if collection == schema.OHLCV:
            # Later updates of the same candle win; one upsert per candle per batch.
            by_key: dict[tuple, dict[str, Any]] = {}
            for doc in docs:
                by_key[(doc["exchange"], doc["market"], doc["symbol"], doc["interval"], doc["ts"])] = doc
            # Whole-document replacement (nx-27017 mis-stores dates given to $set on an existing
            # document); a spooled document's own _id must not replace the stored one's.
            ops = [ReplaceOne({"exchange": k[0], "market": k[1], "symbol": k[2], "interval": k[3],
                               "ts": k[4]}, {f: v for f, v in doc.items() if f != "_id"},
                              upsert=True) for k, doc in by_key.items()]
            await coll.bulk_write(ops, ordered=False)
            self._count_stored(collection, len(docs))
            return
        try:
            result = await coll.insert_many(docs, ordered=False)
            self._count_stored(collection, len(result.inserted_ids))
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            non_dup = [e for e in errors if e.get("code") != DUPLICATE_KEY]
            self.duplicates += len(errors) - len(non_dup)
            self._count_stored(collection, exc.details.get("nInserted", 0))
            if non_dup:
                self.write_errors += len(non_dup)
                log.error("%s: %d documents rejected: %s", collection, len(non_dup),
                          non_dup[0].get("errmsg"))
        # insert_many adds _id to each doc; the docs are discarded after this.
