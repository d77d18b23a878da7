"""The collector program: feeds -> writer -> MongoDB, plus the status document and log lines."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from datetime import datetime
from typing import Any

import aiohttp
from pymongo.errors import PyMongoError
from sentry_sdk.integrations.asyncio import AsyncioIntegration

from collector.exchanges import load_feed_class
from collector.exchanges.base import Feed, FeedContext
from collector.gaps import GapLedger
from collector.heap import freeze_startup_objects, unfreeze
from collector.partition import parse_partition
from collector.retention import upkeep
from collector.runstate import RunState
from collector.spool import Spool
from collector.stats import Stats
from collector.writer import Writer
from common import schema
from common.db import get_database, make_client
from common.indexes import ensure_indexes
from common.sentry import init_sentry
from common.settings import Settings
from common.status import CollectorStatus

log = logging.getLogger("collector")

COLLECTION_LABELS = {
    schema.MARKET_DATA: "MARKET DATA", schema.ORDER_BOOK: "ORDER BOOK", schema.TRADES: "TRADES",
    schema.OHLCV: "OHLCV", schema.FUNDING_RATES: "FUNDING RATES",
    schema.OPEN_INTEREST: "OPEN INTEREST", schema.VOLUME_LIQUIDITY: "VOLUME/LIQUIDITY",
}


def status_id(partition_spec: str) -> str:
    """``_id`` of this process's status document: ``collector``, or ``collector-<i>-of-<N>``
    for partition i of N (each process reports its own; the API merges them)."""
    index, count = parse_partition(partition_spec)
    return "collector" if count == 1 else f"collector-{index}-of-{count}"


def spool_dir(settings: Settings) -> str:
    """One spool directory per partition: processes must never replay each other's segments."""
    index, count = parse_partition(settings.partition)
    return settings.spool_dir if count == 1 else os.path.join(settings.spool_dir,
                                                              f"{index}-of-{count}")
DISPLAY_NAMES = {"binance": "Binance", "bybit": "Bybit", "kraken": "Kraken", "gateio": "Gate.io",
                 "okx": "OKX"}


class Collector:
    def __init__(self, settings: Settings, *, poll_interval_s: float | None = None) -> None:
        self.settings = settings
        self.poll_interval_s = poll_interval_s or settings.poll_interval_s
        self.stats = Stats()
        self.status_id = status_id(settings.partition)
        self.client = make_client(settings)
        self.db = get_database(self.client, settings)
        self.writer = Writer(self.db, batch_size=settings.batch_size,
                             flush_interval_s=settings.flush_interval_s,
                             queue_max=settings.queue_max,
                             spool=Spool(spool_dir(settings),
                                         max_bytes=int(settings.spool_max_mb * 2 ** 20),
                                         policy=settings.spool_full_policy))
        self.gaps = GapLedger(self.writer, owner=self.status_id)
        self.run_state = RunState(spool_dir(settings))
        self.writer.outage_listeners.append(self.gaps.on_db_availability)
        self.writer.flush_listeners.append(self.gaps.on_flush)
        self.feeds: list[Feed] = []
        self._tasks: list[asyncio.Task] = []
        self._writer_task: asyncio.Task | None = None
        self.stopped = asyncio.Event()

    async def run(self, duration_s: float = 0.0) -> None:
        started = schema.now_utc()
        previous, outage = await self._previous_run()
        loop = asyncio.get_running_loop()
        # Collect even if MongoDB is not up yet; indexes follow as soon as it is.
        self._tasks.append(loop.create_task(ensure_indexes(self.db, self.settings.retention)))
        if previous is not None:
            self._tasks.append(loop.create_task(
                self._close_previous_gaps(previous, started, outage)))
        else:
            self.gaps.own_ids = None
        if parse_partition(self.settings.partition)[0] == 0:
            # One process per database migrates old documents and deletes expired ones.
            self._tasks.append(loop.create_task(upkeep(self.db, self.settings.retention,
                                                       self.settings.retention_interval_s)))
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopped.set)
        async with aiohttp.ClientSession() as session:
            ctx = FeedContext(self.settings, self.writer, self.stats, session, self.poll_interval_s,
                              self.gaps)
            for name in self.settings.enabled_exchanges():
                feed = load_feed_class(name)(self.settings.exchange(name), ctx)
                if previous is not None:
                    # Down since the previous run's data was last durable: a restart gap until
                    # this feed's first data (then backfilled over REST).
                    feed.await_data(self.gaps.open(name, "*", "*", "collector", "restart",
                                                   start=previous))
                self.feeds.append(feed)
                self._tasks.append(loop.create_task(self._run_feed(feed)))
            self._writer_task = loop.create_task(self.writer.run())
            self._tasks.append(self._writer_task)
            self._tasks.append(loop.create_task(self._status_loop()))
            self._tasks.append(loop.create_task(self._state_loop()))
            self._tasks.append(loop.create_task(self._log_loop()))
            log.info("collector started: %s", ", ".join(f.name for f in self.feeds))
            # Start-up objects live as long as the process: keep full GC passes off them.
            freeze_startup_objects()
            try:
                if duration_s > 0:
                    await asyncio.wait_for(self.stopped.wait(), duration_s)
                else:
                    await self.stopped.wait()
            except asyncio.TimeoutError:
                pass
            try:
                await self.shutdown()
            finally:
                unfreeze()

    async def _previous_run(self) -> tuple[datetime | None, dict[str, Any] | None]:
        """When the previous run's data was last durable (restart gap start; None on a first
        start) and its open db_outage gap's loss. From the local run state file, so it never
        waits for MongoDB; without one (first run of this version, state lost) from the
        previous status document's heartbeat, if the database answers within 5 s."""
        state = self.run_state.load()
        if state is not None:
            return schema.s_to_dt(float(state["durable_until"])), state.get("outage")
        try:
            doc = await asyncio.wait_for(
                self.db[schema.STATUS].find_one({"_id": self.status_id}, {"updated_at": 1}), 5)
        except (PyMongoError, asyncio.TimeoutError) as exc:
            log.error("no run state and could not read the previous status (restart gap "
                      "unknown): %r", exc)
            return None, None
        return (doc.get("updated_at") if doc else None), None

    async def _close_previous_gaps(self, previous: datetime, started: datetime,
                                   outage: dict[str, Any] | None) -> None:
        """Close the gaps the previous run left open: they end where its data was last durable
        (the restart gap covers the time after that). Waits until MongoDB answers and the spool
        is replayed: gaps opened during an outage reach the database only then."""
        gaps = self.db[schema.GAPS]
        while True:
            spool = self.writer.spool
            if self.writer.db_available and not (spool is not None and spool):
                try:
                    found = await asyncio.wait_for(gaps.find(
                        {"end": None, "collector": self.status_id,
                         "start": {"$lt": started}}).to_list(None), 10)
                    break
                except (PyMongoError, asyncio.TimeoutError) as exc:
                    log.warning("previous run's open gaps not readable yet: %r", exc)
            await asyncio.sleep(1.0)
        own = self.gaps.own_ids or set()
        for gap in found:
            if gap["_id"] in own:
                continue
            end = max(previous, gap["start"])
            gap.update(end=end, duration_s=round((end - gap["start"]).total_seconds(), 3),
                       detail=(gap.get("detail") or "") + " [closed at restart]")
            if outage is not None and gap["_id"] == outage.get("id"):
                # The spool (replayed by this run) holds what it took; what the killed
                # process had dropped is the loss, known from its run state.
                lost = int(outage.get("records_lost") or 0)
                gap.update(records_lost=lost, lost_by_type=outage.get("lost_by_type") or {},
                           backfilled=lost == 0)
            # Through the writer (spooled if MongoDB went away again); whole-document replace.
            self.writer.submit_doc(schema.GAPS, gap)
            log.warning("closed the previous run's open gap %s at %s", gap["_id"], end)
        self.gaps.own_ids = None

    async def _run_feed(self, feed: Feed) -> None:
        while True:
            try:
                await feed.run()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bug in one feed must not take the others down; restart it after a pause.
                log.exception("%s feed crashed; restarting in 5s", feed.name)
                await feed.stop()
                await asyncio.sleep(5)

    async def shutdown(self) -> None:
        log.info("stopping: flushing %d pending documents", self.writer.pending)
        for feed in self.feeds:
            await feed.stop()
        self.writer.stop_running()
        if self._writer_task is not None:
            # Bounded: a write hanging on a stalled database is cancelled with the rest.
            await asyncio.wait({self._writer_task}, timeout=2.0)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.writer.close()
        self._save_run_state()
        await self._write_status(final=True)
        log.info("stopped; %d documents stored in total (%s)", self.writer.stored,
                 ", ".join(f"{coll}={n}" for coll, n in sorted(self.writer.stored_by.items())))
        await self.client.close()

    def status_doc(self, running: bool = True) -> CollectorStatus:
        exchanges = {feed.name: self.stats.exchange(feed.name).as_doc(
            feed.connection_status(), feed.book_states(), self.writer.fresh(feed.name))
            for feed in self.feeds}
        writer = self.writer
        return {
            "_id": self.status_id, "partition": self.settings.partition or None,
            "updated_at": schema.now_utc(),
            "started_at": schema.s_to_dt(self.stats.started_at),
            "host": socket.gethostname(), "pid": os.getpid(),
            "writer": {"stored": writer.stored, "pending": writer.pending,
                       "duplicates": writer.duplicates, "dropped": writer.dropped,
                       "write_errors": writer.write_errors, "last_write_ms": writer.last_write_ms,
                       "db_available": writer.db_available,
                       "spool": writer.spool_status()},
            "gaps": self.gaps.status(),
            "exchanges": exchanges,
            "running": running,
        }

    async def _write_status(self, final: bool = False) -> None:
        doc = self.status_doc(running=not final)
        try:
            await self.db[schema.STATUS].replace_one({"_id": self.status_id}, doc, upsert=True)
        except PyMongoError as exc:
            log.debug("status write failed: %r", exc)

    async def _status_loop(self) -> None:
        while True:
            await self._write_status()
            await asyncio.sleep(self.settings.status_interval_s)

    def _save_run_state(self) -> None:
        if self.writer.durable_until is not None:
            self.run_state.save({"durable_until": self.writer.durable_until, "pid": os.getpid(),
                                 "outage": self.gaps.outage_state()})

    async def _state_loop(self) -> None:
        # At the flush cadence: a crash loses at most this much of durable_until's precision
        # (an older value only lengthens the next restart gap).
        while True:
            self._save_run_state()
            await asyncio.sleep(max(0.2, self.settings.flush_interval_s))

    async def _log_loop(self) -> None:
        last_stored = 0
        last_counts: dict[tuple[str, str], int] = {}
        while True:
            await asyncio.sleep(self.settings.log_stats_interval_s)
            stored = self.writer.stored
            if stored != last_stored:
                log.info("Stored %d messages to MongoDB (%d in total, %d pending)",
                         stored - last_stored, stored, self.writer.pending)
                last_stored = stored
            for feed in self.feeds:
                stats, fresh = self.stats.exchange(feed.name), self.writer.fresh(feed.name)
                for coll, count in list(stats.records.items()):
                    key = (feed.name, coll)
                    if count != last_counts.get(key):
                        symbols = sorted({symbol for _, symbol in fresh[coll]})
                        log.info("📊 %s %s: %s (+%d)", DISPLAY_NAMES.get(feed.name, feed.name),
                                 COLLECTION_LABELS.get(coll, coll), ", ".join(symbols),
                                 count - last_counts.get(key, 0))
                        last_counts[key] = count


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)


async def _main(settings: Settings, duration_s: float, poll_interval_s: float | None) -> None:
    # Sentry first and inside the running loop: unhandled task exceptions get the asyncio
    # mechanism, and errors in Collector.__init__ (e.g. an unusable spool_dir) are reported too.
    init_sentry("collector", [AsyncioIntegration()], settings)
    await Collector(settings, poll_interval_s=poll_interval_s).run(duration_s)


def run(duration_s: float = 0.0, poll_interval_s: float | None = None) -> None:
    import uvloop

    settings = Settings()
    configure_logging(settings.log_level)
    started = time.monotonic()
    uvloop.run(_main(settings, duration_s, poll_interval_s))
    log.info("collector ran for %.1fs", time.monotonic() - started)
