"""One benchmark measurement in its own process (started by ``tests.bench.collector_bench``).

Modes (``--mode``):

- ``floor``: plain websockets + orjson + uvloop; parse and count, nothing else.
- ``collector``: the real BinanceFeed (WsConnection, parsers, book sync/maintenance, record
  building, stats) and the real ``Writer`` (documents, batches, coalesced ``latest``, its flush
  task) with storage switched off. BENCHMARK MODE ONLY: the Writer's database is a
  ``NullDatabase`` that accepts and drops every write; nothing is stored.
- ``store``: the real feed and the real Writer into MongoDB (nx-27017); stored docs/s.
- ``ceiling``: the database's own bulk-insert ceiling: pre-built trade documents, insert_many.
- ``latency``: real feed + real Writer at a fixed message rate; receive -> acknowledged latency
  (``received_at`` of each document vs the moment its insert_many was acknowledged).

Prints one JSON object on stdout.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import resource
import sys
import time
from typing import Any

import orjson


def cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Meter:
    """Counts messages; snapshots wall/CPU at message ``warmup`` and at ``total``."""

    def __init__(self, warmup: int, total: int) -> None:
        self.warmup = warmup
        self.total = total
        self.n = 0
        self.t0 = self.c0 = self.t1 = self.c1 = 0.0
        self.done = asyncio.Event()

    def tick(self) -> None:
        n = self.n = self.n + 1
        if n == self.warmup:
            self.t0, self.c0 = time.perf_counter(), cpu_s()
        elif n == self.total:
            self.t1, self.c1 = time.perf_counter(), cpu_s()
            self.done.set()

    def result(self) -> dict[str, Any]:
        msgs = self.total - self.warmup
        wall = self.t1 - self.t0
        return {"msgs": msgs, "wall_s": wall, "msgs_per_s": msgs / wall if wall else 0.0,
                "cpu_s": self.c1 - self.c0,
                "cpu_us_per_msg": (self.c1 - self.c0) / msgs * 1e6 if msgs else 0.0}


async def run_floor(args) -> dict[str, Any]:
    from websockets.asyncio.client import connect

    from tests.bench.exchanges import FLOOR_PATH, IS_DATA, SNAPSHOT_PATH

    meter = Meter(args.warmup + 1, args.count)
    loads = orjson.loads
    is_data = IS_DATA[args.exchange]
    async with connect(args.ws_url + FLOOR_PATH[args.exchange], max_size=2 ** 24, max_queue=256,
                       ping_interval=None) as ws:
        if args.exchange == "binance":
            await ws.send(orjson.dumps({"method": "SUBSCRIBE", "params": ["x@trade"],
                                        "id": 1}).decode())
        else:
            await ws.send('{"subscribe":"floor"}')
        if args.kind in ("depth", "mix") and args.exchange in SNAPSHOT_PATH:
            await fetch_snapshots(args)
        async for raw in ws:
            if is_data(loads(raw)):
                meter.tick()
                if meter.done.is_set():
                    break
    return meter.result()


class NullCollection:
    """A collection that accepts every write and stores nothing (storage switched off)."""

    class _Inserted:
        def __init__(self, n: int) -> None:
            self.inserted_ids = range(n)

    async def insert_many(self, docs, ordered: bool = True):
        return self._Inserted(len(docs))

    async def bulk_write(self, requests, ordered: bool = True):
        return None


class NullDatabase:
    """BENCHMARK MODE ONLY (storage off): the real ``Writer`` runs unchanged (documents,
    per-collection batches, coalesced ``latest`` upserts, flush task) on top of this database,
    which drops every write. Never used by tests as a storage path."""

    def __init__(self) -> None:
        self._collections: dict[str, NullCollection] = {}

    def __getitem__(self, name: str) -> NullCollection:
        coll = self._collections.get(name)
        if coll is None:
            coll = self._collections[name] = NullCollection()
        return coll

    async def command(self, *args, **kwargs):
        return {"ok": 1}


def make_feed(args, writer, session, meter: Meter | None):
    from collector.exchanges.base import FeedContext
    from collector.exchanges.binance.feed import BinanceFeed
    from collector.heap import freeze_startup_objects
    from collector.rest import RateBudget, RestClient
    from collector.stats import Stats
    from common.schema import SPOT
    from common.settings import BinanceSettings, Settings
    from tests.bench.replay_server import symbols_for

    cfg = BinanceSettings(spot_symbols=symbols_for(args.symbols), perp_symbols=[],
                          spot_ws_url=args.ws_url, spot_rest_url=args.rest_url,
                          perp_ws_url=args.ws_url, perp_rest_url=args.rest_url,
                          book_depth=max(1000, args.levels))
    settings = Settings(binance=cfg, exchanges=["binance"], _env_file=None)

    class BenchFeed(BinanceFeed):
        def build_connections(self):
            conns = super().build_connections()
            if meter is not None:
                for conn in conns:
                    inner = conn.on_message

                    def counted(c, raw, inner=inner, tick=meter.tick):
                        result = inner(c, raw)
                        if result is not False:     # data only (acks return False)
                            tick()
                        return result
                    conn.on_message = counted
            return conns

    feed = BenchFeed(cfg, FeedContext(settings, writer, Stats(), session, 3600.0))
    # The replay server is not rate limited: lift the REST weight budget (Binance's real limit
    # would delay the 100-symbol snapshots by minutes and is not what is being measured).
    feed.spot_rest = RestClient(session, args.rest_url, RateBudget(1e12))
    assert SPOT
    # The collector program's start-up step (collector/app.py), at the same point: feeds built,
    # nothing received yet.
    freeze_startup_objects()
    return feed, settings


async def fetch_snapshots(args) -> None:
    """The floor client also downloads every REST depth snapshot (the replay server waits for
    them, as it does for the feeds that sync their books over REST)."""
    import aiohttp

    from tests.bench.exchanges import SNAPSHOT_PATH, symbols_for
    path, param, extra = SNAPSHOT_PATH[args.exchange]
    async with aiohttp.ClientSession() as session:
        for symbol in symbols_for(args.symbols, args.exchange):
            async with session.get(args.rest_url + path,
                                   params={param: symbol, **extra}) as resp:
                orjson.loads(await resp.read())


async def run_collector(args) -> dict[str, Any]:
    import aiohttp

    # Measured from the first message after the warm-up (and, for depth, after the book sync).
    meter = Meter(args.warmup + 1, args.count)
    writer = production_writer(NullDatabase())
    async with aiohttp.ClientSession() as session:
        feed, _ = make_feed(args, writer, session, meter)
        task = asyncio.create_task(feed.run())
        flusher = asyncio.create_task(writer.run())
        await wait_or_fail(meter.done, task, args.timeout)
        await feed.stop()
        for t in (task, flusher):
            t.cancel()
        await asyncio.gather(task, flusher, return_exceptions=True)
    out = meter.result()
    out.update(records=sum(feed.stats.records.values()), docs=writer.stored,
               malformed=feed.stats.malformed, gaps=feed.stats.gaps,
               synced_books=sum(1 for b in feed.books.values() if b.synced),
               books=len(feed.books),
               book_levels=max((len(b.bids) + len(b.asks)) // 2 for b in feed.books.values())
               if feed.books else 0)
    if args.kind in ("depth", "mix") and out["synced_books"] != out["books"]:
        out["error"] = "not every book synced"
    return out


async def run_exchange_collector(args) -> dict[str, Any]:
    """Bybit / OKX / Kraken / Gate.io with storage off: the exchange's real feed class, built as
    the collector builds it (its settings, a FeedContext), its connections from its public
    ``build_connections()`` run as they are (WsConnection, transport, the feed's own subscribe
    requests and message handler, book sync and maintenance, records) against the replay server,
    and the real Writer over a NullDatabase. Only spot symbols are configured, so no start-up
    REST calls (contract sizes, instrument lists: perpetuals only) are needed; REST backfill is
    off (not what is measured). The feed files are used unchanged."""
    import aiohttp

    from collector.exchanges import load_feed_class
    from collector.exchanges.base import FeedContext
    from collector.heap import freeze_startup_objects
    from collector.stats import Stats
    from common.settings import Settings
    from tests.bench.exchanges import WS_SUFFIX, symbols_for

    meter = Meter(args.warmup + 1, args.count)
    name = args.exchange
    settings = Settings(_env_file=None, exchanges=[name])
    cfg = settings.exchange(name).model_copy(update={
        "spot_symbols": symbols_for(args.symbols, name), "perp_symbols": [],
        "spot_ws_url": args.ws_url + WS_SUFFIX[name], "spot_rest_url": args.rest_url,
        "perp_ws_url": "", "perp_rest_url": "", "book_depth": args.levels, "backfill": False})
    settings = settings.model_copy(update={name: cfg})
    writer = production_writer(NullDatabase())
    async with aiohttp.ClientSession() as session:
        feed = load_feed_class(name)(cfg, FeedContext(settings, writer, Stats(), session, 3600.0))
        conns = feed.build_connections()
        for conn in conns:
            inner = conn.on_message

            def counted(c, raw, inner=inner, tick=meter.tick):
                result = inner(c, raw)
                if result is not False:     # data only (acks, pongs, instrument: False)
                    tick()
                return result
            conn.on_message = counted
        freeze_startup_objects()            # as collector/app.py does once feeds are built
        tasks = [asyncio.create_task(conn.run()) for conn in conns]
        flusher = asyncio.create_task(writer.run())
        runner = asyncio.gather(*tasks)
        await wait_or_fail(meter.done, runner, args.timeout)
        await asyncio.gather(*(conn.stop() for conn in conns), return_exceptions=True)
        for t in tasks + [flusher]:
            t.cancel()
        await asyncio.gather(*tasks, flusher, return_exceptions=True)
    out = meter.result()
    books = [b for b in feed.books.values()]
    out.update(records=sum(feed.stats.records.values()), docs=writer.stored,
               malformed=feed.stats.malformed, gaps=feed.stats.gaps,
               synced_books=sum(1 for b in books if b.synced), books=len(books),
               book_levels=max(((len(b.bids) + len(b.asks)) // 2 for b in books), default=0))
    if out["malformed"]:
        out["error"] = f"{out['malformed']} malformed messages"
    elif args.kind == "depth" and (not books or out["synced_books"] != out["books"]
                                   or out["gaps"]):
        out["error"] = f"books not in sync (gaps {out['gaps']}, synced {out['synced_books']}" \
                       f"/{out['books']})"
    return out


async def wait_or_fail(event: asyncio.Event, task: asyncio.Task, timeout: float) -> None:
    waiter = asyncio.create_task(event.wait())
    done, _ = await asyncio.wait({waiter, task}, timeout=timeout,
                                 return_when=asyncio.FIRST_COMPLETED)
    if waiter not in done:
        waiter.cancel()
        if task in done and task.exception():
            raise task.exception()
        raise TimeoutError("benchmark did not finish in time")


async def fresh_db(uri: str, name: str):
    from pymongo import AsyncMongoClient

    from common.indexes import apply_indexes
    from common.settings import RetentionSettings

    client = AsyncMongoClient(uri, tz_aware=True)
    await client.drop_database(name)
    db = client[name]
    await apply_indexes(db, RetentionSettings())
    return client, db


def production_writer(db):
    """The real Writer configured exactly as collector/app.py does (Settings defaults)."""
    from collector.writer import Writer
    from common.settings import Settings

    settings = Settings(_env_file=None)
    return Writer(db, batch_size=settings.batch_size, flush_interval_s=settings.flush_interval_s,
                  queue_max=settings.queue_max)


async def run_store(args) -> dict[str, Any]:
    """Real feed + real Writer: time from the first message to all trades acknowledged."""
    import aiohttp

    client, db = await fresh_db(args.mongodb_uri, f"bench_store_{args.tag}")
    meter = Meter(1, args.count)
    writer = production_writer(db)
    start = cpu_s()
    async with aiohttp.ClientSession() as session:
        feed, _ = make_feed(args, writer, session, meter)
        tasks = [asyncio.create_task(feed.run()), asyncio.create_task(writer.run())]
        await wait_or_fail(meter.done, tasks[0], args.timeout)
        t_first = meter.t0
        deadline = time.monotonic() + args.timeout
        while writer.stored < args.count - 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        t_end = time.perf_counter()
        await feed.stop()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    count = await db["trades"].count_documents({})
    await client.drop_database(db.name)
    await client.close()
    wall = t_end - t_first
    return {"docs": writer.stored, "docs_in_db": count, "wall_s": wall,
            "docs_per_s": writer.stored / wall if wall else 0.0,
            "cpu_us_per_doc": (cpu_s() - start) / max(1, writer.stored) * 1e6,
            "duplicates": writer.duplicates, "write_errors": writer.write_errors}


async def run_ceiling(args) -> dict[str, Any]:
    """The database's own ceiling: insert_many of ready trade documents, batches of 2000."""
    from datetime import datetime, timedelta, timezone

    from common.schema import time_key

    client, db = await fresh_db(args.mongodb_uri, f"bench_ceiling_{args.tag}")
    base = datetime.now(timezone.utc)      # younger than the TTL retention
    docs = [{"exchange": "binance", "symbol": "BTCUSDT", "pair": "BTC/USDT", "market": "spot",
             "ts": base + timedelta(milliseconds=i), "received_at": base + timedelta(milliseconds=i),
             "trade_id": str(1_000_000 + i), "price": 65000.0 + (i % 100) * 0.01,
             "size": 0.001 * (i % 50 + 1), "side": "buy" if i % 2 else "sell",
             "t": time_key(base) + i, "rt": time_key(base) + i}   # the Writer's fields
            for i in range(args.count)]
    coll = db["trades"]
    started = time.perf_counter()
    for i in range(0, len(docs), 2000):
        await coll.insert_many(docs[i:i + 2000], ordered=False)
    wall = time.perf_counter() - started
    await client.drop_database(db.name)
    await client.close()
    return {"docs": len(docs), "wall_s": wall, "docs_per_s": len(docs) / wall}


async def run_latency(args) -> dict[str, Any]:
    """Fixed-rate trades through the real feed and Writer; per-document receive -> ack latency."""
    import aiohttp

    client, db = await fresh_db(args.mongodb_uri, f"bench_latency_{args.tag}")
    writer = production_writer(db)
    samples: list[tuple[float, float]] = []
    original = writer._write

    async def timed_write(collection: str, docs: list[dict[str, Any]]) -> None:
        await original(collection, docs)
        acked = time.time()
        for d in docs:
            received = d["received_at"].timestamp()
            samples.append((received, acked - received))
    writer._write = timed_write          # instrumentation only; the real write still happens

    meter = Meter(1, args.count)
    async with aiohttp.ClientSession() as session:
        feed, _ = make_feed(args, writer, session, meter)
        tasks = [asyncio.create_task(feed.run()), asyncio.create_task(writer.run())]
        await wait_or_fail(meter.done, tasks[0], args.timeout)
        # Everything received is acknowledged within two flush intervals plus the write time.
        await asyncio.sleep(writer.flush_interval_s * 2 + 1.0)
        await feed.stop()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    await client.drop_database(db.name)
    await client.close()
    return {"docs": len(samples), **latency_summary(samples), "rate": args.rate,
            "kind": args.kind, "flush_interval_s": writer.flush_interval_s,
            "achieved_msgs_per_s": meter.result()["msgs_per_s"]}


def latency_summary(samples: list[tuple[float, float]]) -> dict[str, Any]:
    """(receive time, latency) pairs -> steady-state percentiles in ms (NaN without samples)."""
    # Steady state only: drop the first and the last second of receive times (start-up, and the
    # tail of a finite run, which waits for the timer flush instead of a full batch).
    latencies: list[float] = []
    if samples:
        first, last = samples[0][0], max(r for r, _ in samples)
        latencies = [lat for r, lat in samples if first + 1.0 <= r <= last - 1.0]
    lat = sorted(latencies) or [float("nan")]
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]  # noqa: E731
    return {"measured_docs": len(latencies), "p50_ms": q(0.50) * 1000,
            "p99_ms": q(0.99) * 1000, "max_ms": lat[-1] * 1000}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mode", required=True,
                   choices=["floor", "collector", "store", "ceiling", "latency"])
    p.add_argument("--ws-url", default="")
    p.add_argument("--rest-url", default="")
    p.add_argument("--mongodb-uri", default="")
    p.add_argument("--exchange", default="binance")
    p.add_argument("--kind", default="trade")
    p.add_argument("--count", type=int, default=100_000)
    p.add_argument("--warmup", type=int, default=1000)
    p.add_argument("--rate", type=float, default=0)
    p.add_argument("--symbols", type=int, default=1)
    p.add_argument("--levels", type=int, default=1000)
    p.add_argument("--timeout", type=float, default=120)
    p.add_argument("--tag", default="0")
    p.add_argument("--profile", default="", help="write a cProfile dump here")
    args = p.parse_args()
    gc.collect()
    runner = {"floor": run_floor, "collector": run_collector, "store": run_store,
              "ceiling": run_ceiling, "latency": run_latency}[args.mode]
    if args.mode == "collector" and args.exchange != "binance":
        runner = run_exchange_collector
    import uvloop
    if args.profile:
        import cProfile
        prof = cProfile.Profile()
        prof.enable()
        out = uvloop.run(runner(args))
        prof.disable()
        prof.dump_stats(args.profile)
    else:
        out = uvloop.run(runner(args))
    out["peak_rss_mb"] = peak_rss_mb()
    sys.stdout.write(orjson.dumps(out).decode() + "\n")


if __name__ == "__main__":
    main()
