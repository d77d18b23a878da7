"""Volume benchmark (not a test): history reads as the database grows.

``python -m tests.bench.volume_bench [--levels 20000,100000,200000,300000,1000000] [--requests 50]
[--quick] [--json FILE] [--mongodb-uri URI]``

Starts nx-27017 on a free loopback port (or uses ``--mongodb-uri``) and seeds one database per
level, each with the real index spec (common.indexes through its applier): trades built as the
collector builds them (``Trade(...).to_doc()``, the Writer's document builder, inserted with
``insert_many``: fast seeding, same documents) over the default symbols of every exchange at
one trade per ~0.6 s (1M = one week, newest = now; a smaller level is the newest part of a
larger one), plus proportional tickers, book snapshots, liquidity, candles, funding, open
interest and gaps; ``latest`` shaped as ``Writer.latest_doc`` writes it. A ``python -m api``
process per level (INFO logging, rate limit off) answers single sequential requests, the levels
interleaved request by request (a shared machine's load falls on all alike); per endpoint the
p50/p99 of ``--requests`` requests, the median of the first 7 (the issue-13 table), a 10-page
cursor walk (total ms, median of 5), ``/health``, ``/gaps`` and ``/analysis/data-check``. At the last level the retention deleter
(collector.retention) deletes ~5 % of the trades in batches: documents/s, per-batch p50/p99,
and the p50/p99 of trade reads sent while it runs. Then the Writer's stored docs/s into the
full database with the deleter running, against ``insert_many`` of the same documents.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import orjson  # noqa: E402
from pymongo import AsyncMongoClient  # noqa: E402

from api.params import BOOK_DEFAULT_LIMIT, DEFAULT_LIMIT  # noqa: E402
from collector.gaps import Gap  # noqa: E402
from collector.retention import PassStats, RetentionDeleter  # noqa: E402
from collector.writer import Writer  # noqa: E402
from common import schema  # noqa: E402
from common.indexes import apply_indexes, server_profile  # noqa: E402
from common.schema import (  # noqa: E402
    BookSnapshot, Candle, Funding, Liquidity, OpenInterest, Ticker, Trade, ms_to_dt, now_utc,
    time_key,
)
from common.settings import Settings  # noqa: E402
from tests.bench.api_bench import pair_of  # noqa: E402
from tests.support.helpers import free_port, wait_port  # noqa: E402

WEEK_MS = 7 * 86_400_000
FULL_TRADES = 1_000_000          # the week of trades the spacing is computed for
# Other collections per trade (proportional seeding).
PER_TRADE = {schema.MARKET_DATA: 0.1, schema.ORDER_BOOK: 0.02, schema.VOLUME_LIQUIDITY: 0.02,
             schema.OHLCV: 0.01, schema.FUNDING_RATES: 0.001, schema.OPEN_INTEREST: 0.002,
             schema.GAPS: 0.001}
HISTORY = ["/market-data", "/orderbook-snapshots", "/volume-liquidity", "/ohlcv",
           "/funding-rates", "/open-interest"]


def symbols() -> list[tuple[str, str, str]]:
    settings = Settings()
    out = []
    for ex in settings.exchanges:
        conf = settings.exchange(ex)
        out += [(ex, m, s) for m, group in (("spot", conf.spot_symbols),
                                           ("perp", conf.perp_symbols)) for s in group]
    return out


def build(kind: str, i: int, t_ms: int, key: tuple[str, str, str], rnd: random.Random) -> dict:
    """Document ``i`` of a collection, as the collector writes it."""
    ex, market, sym = key
    pair, ts = pair_of(sym), ms_to_dt(t_ms)
    px = 50_000 + rnd.uniform(-50, 50)
    if kind == schema.TRADES:
        rec: schema.Record = Trade(ex, sym, pair, market, ts, ts, trade_id=str(i), price=px,
                                   size=rnd.uniform(0.001, 1), side=rnd.choice(("buy", "sell")))
    elif kind == schema.MARKET_DATA:
        rec = Ticker(ex, sym, pair, market, ts, ts, last=px, bid=px - 0.5, ask=px + 0.5,
                     bid_size=1.0, ask_size=1.0, volume_24h=1e4, quote_volume_24h=5e8)
    elif kind == schema.ORDER_BOOK:
        rec = BookSnapshot(ex, sym, pair, market, ts, ts,
                           bids=[[px - j, 1.0] for j in range(1, 21)],
                           asks=[[px + j, 1.0] for j in range(1, 21)], depth=20, update_id=i)
    elif kind == schema.VOLUME_LIQUIDITY:
        rec = Liquidity(ex, sym, pair, market, ts, ts, mid=px, spread_bps=0.2,
                        bid_depth_10bps=3.0, ask_depth_10bps=2.0)
    elif kind == schema.OHLCV:
        rec = Candle(ex, sym, pair, market, ms_to_dt(t_ms - t_ms % 60_000), ts, open=px,
                     high=px + 10, low=px - 10, close=px, volume=5.0, closed=True)
    elif kind == schema.FUNDING_RATES:
        rec = Funding(ex, sym, pair, market, ts, ts, rate=0.0001)
    elif kind == schema.OPEN_INTEREST:
        rec = OpenInterest(ex, sym, pair, market, ts, ts, open_interest=1e4)
    else:
        return Gap(ex, sym, market, "trade", "disconnect", ts, end=ts, backfilled=True,
                   detail=str(i)).to_doc()
    return rec.to_doc()


class Seeder:
    """Grows every collection to its share of ``trades``; newest first (a level adds older
    documents), one week per FULL_TRADES trades."""

    def __init__(self, db, now_ms: int) -> None:
        self.db = db
        self.now_ms = now_ms
        self.done = {kind: 0 for kind in [schema.TRADES, *PER_TRADE]}
        self.keys = symbols()
        self.perp = [k for k in self.keys if k[1] == "perp"]
        self.rnd = random.Random(13)

    async def grow(self, trades: int) -> None:
        for kind, target in [(schema.TRADES, trades),
                             *((k, int(trades * share)) for k, share in PER_TRADE.items())]:
            keys = self.perp if kind in (schema.FUNDING_RATES, schema.OPEN_INTEREST) else self.keys
            # Spread over the same week as the trades (so their newest is as recent).
            spacing = WEEK_MS * (trades / FULL_TRADES) / max(target, 1)
            start, self.done[kind] = self.done[kind], target
            for lo in range(start, target, 5000):
                docs = [build(kind, i, self.now_ms - int(i * spacing), keys[i % len(keys)],
                              self.rnd) for i in range(lo, min(target, lo + 5000))]
                await self.db[kind].insert_many(docs, ordered=False)

    async def latest(self) -> None:
        now = self.now_ms
        for i, key in enumerate(self.keys):
            for kind in (schema.TRADES, schema.MARKET_DATA, schema.ORDER_BOOK):
                doc = build(kind, i, now, key, self.rnd)
                rec_key = f"{key[0]}:{key[1]}:{key[2]}:{kind}"
                doc.pop("t")
                doc.update(type=kind, _id=rec_key)
                await self.db[schema.LATEST].replace_one({"_id": rec_key}, doc, upsert=True)


def p99(samples: list[float]) -> float:
    s = sorted(samples)
    return round(s[min(len(s) - 1, int(len(s) * 0.99))], 2)


def pct(samples: list[float]) -> dict[str, float]:
    """p50/p99 of all samples, and the median of the first 7 (the issue's method)."""
    return {"p50_ms": round(statistics.median(samples), 2), "p99_ms": p99(samples),
            "median7_ms": round(statistics.median(samples[:7]), 2)}


async def timed_get(session: aiohttp.ClientSession, url: str) -> tuple[float, Any]:
    t0 = time.perf_counter()
    async with session.get(url) as resp:
        body = await resp.read()
        if resp.status >= (500 if "/health" in url else 400):
            raise RuntimeError(f"{url}: {resp.status} {body[:300]!r}")
    return (time.perf_counter() - t0) * 1000, body


SINCE = "<5 min ago>"


def endpoints() -> list[str]:
    """Paths measured; ``SINCE`` is replaced by epoch ms of 5 minutes before each request run."""
    sym = "exchange=binance&symbol=BTCUSDT"
    out = ["/trades?limit=100", f"/trades?{sym}&limit=100",
           f"/trades?{sym}&since={SINCE}&limit=100", "/trades?symbol=btcusdt&limit=100",
           "/trades?market=perp&limit=100"]
    for path in HISTORY:
        extra = "&interval=1m" if path == "/ohlcv" else ""
        one = "exchange=binance&symbol=BTCUSDT" if path not in ("/funding-rates",
                                                                "/open-interest") \
            else "exchange=okx&symbol=BTC-USDT-SWAP"
        # Each endpoint's default page: 100 rows, 20 book snapshots (api.params).
        limit = BOOK_DEFAULT_LIMIT if path == "/orderbook-snapshots" else DEFAULT_LIMIT
        out += [f"{path}?limit={limit}{extra}", f"{path}?{one}&limit={limit}{extra}"]
    out += ["/gaps?limit=100", "/gaps?exchange=binance&symbol=BTCUSDT&limit=100",
            "/health", "/analysis/data-check"]
    return out


async def measure_levels(bases: dict[str, str], n: int) -> dict[str, dict[str, Any]]:
    """Every endpoint at every level, the levels' requests interleaved (level A, B, C, A, ...)
    so that load from elsewhere on a shared machine falls on all of them alike."""
    url_of = str(time_key(now_utc()) - 5 * 60_000).join
    out: dict[str, dict[str, Any]] = {lv: {"endpoints": {}} for lv in bases}
    async with aiohttp.ClientSession() as session:
        async def sample(urls: dict[str, str]) -> dict[str, dict[str, float]]:
            for url in urls.values():
                await timed_get(session, url)                          # warm-up
            samples: dict[str, list[float]] = {lv: [] for lv in urls}
            for _ in range(n):
                for lv, url in urls.items():
                    samples[lv].append((await timed_get(session, url))[0])
            return {lv: pct(s) for lv, s in samples.items()}

        for path in endpoints():
            for lv, figures in (await sample({lv: base + url_of(path.split(SINCE))
                                              for lv, base in bases.items()})).items():
                out[lv]["endpoints"][path] = figures
        # Cursor pages: page 2 of the symbol's trades; a 10-page walk in total.
        first = "/trades?exchange=binance&symbol=BTCUSDT&limit=100"
        page2 = {}
        for lv, base in bases.items():
            cursor = orjson.loads((await timed_get(session, base + first))[1])["next"]
            page2[lv] = f"{base}{first}&cursor={cursor}"
        for lv, figures in (await sample(page2)).items():
            out[lv]["endpoints"][f"{first}&cursor=<page 2>"] = figures
        walks: dict[str, list[float]] = {lv: [] for lv in bases}
        for _ in range(5):
            for lv, base in bases.items():
                total, cursor, pages = 0.0, None, 0
                while pages < 10:
                    ms, body = await timed_get(session, base + first
                                               + (f"&cursor={cursor}" if cursor else ""))
                    total += ms
                    pages += 1
                    cursor = orjson.loads(body)["next"]
                    if not cursor:
                        break
                walks[lv].append(total)
                out[lv]["cursor_walk_pages"] = pages
        for lv, totals in walks.items():
            out[lv]["cursor_walk_10_pages_ms"] = round(statistics.median(totals), 2)
    return out


async def retention_cost(db, base: str, now_ms: int, trades: int) -> dict[str, Any]:
    """Delete the oldest ~5 % of the trades with the retention deleter while trade reads run."""
    span_ms = WEEK_MS * trades / FULL_TRADES           # the trades' time span (Seeder)
    age_s = int(span_ms * 0.95 / 1000)
    deleter = RetentionDeleter(db, [(schema.TRADES, age_s)])
    reads: list[float] = []
    done = asyncio.Event()

    async def reader() -> None:
        async with aiohttp.ClientSession() as session:
            url = f"{base}/trades?exchange=binance&symbol=BTCUSDT&limit=100"
            while not done.is_set():
                reads.append((await timed_get(session, url))[0])

    task = asyncio.create_task(reader())
    t0 = time.perf_counter()
    stats = await deleter.run_once(now_ms)
    wall = time.perf_counter() - t0
    done.set()
    await task
    b = stats.batch_ms
    return {"deleted": stats.deleted, "batches": len(b), "wall_s": round(wall, 2),
            "docs_per_s": round(stats.deleted / wall),
            "batch_p50_ms": round(statistics.median(b), 2), "batch_p99_ms": p99(b),
            "batch_max_ms": round(max(b), 2), "reads_during": len(reads),
            "reads_during_p50_ms": round(statistics.median(reads), 2) if reads else None,
            "reads_during_p99_ms": p99(reads) if reads else None}


async def writer_ratio(db, now_ms: int, count: int, reps: int) -> dict[str, Any]:
    """Stored docs/s of the Writer (records in, as the feeds submit them) into the full database
    with the retention deleter running, against insert_many of the same documents (batches of
    2,000) into the same collection; ``reps`` alternating pairs, medians (shared machine)."""
    keys = symbols()
    rnd = random.Random(7)
    settings = Settings()

    def trades(offset: int) -> list[Trade]:
        return [Trade(k[0], k[2], pair_of(k[2]), k[1], ms_to_dt(now_ms + i), ms_to_dt(now_ms + i),
                      trade_id=f"w{offset + i}", price=50_000 + rnd.uniform(-5, 5), size=0.1,
                      side="buy") for i, k in ((i, keys[i % len(keys)]) for i in range(count))]

    stats = PassStats()

    async def delete_loop(stop: asyncio.Event) -> None:
        # The deleter as the collector runs it, here back to back: each pass expires the
        # oldest minute of trades that is left.
        oldest = await db[schema.TRADES].find({}, {"t": 1}).sort("t", 1).limit(1).to_list(1)
        edge = oldest[0]["t"]
        deleter = RetentionDeleter(db, [(schema.TRADES, 0)], batch=2000)
        while not stop.is_set():
            edge += 60_000
            await deleter.delete_older(schema.TRADES, edge, stats)
            await asyncio.sleep(0.05)

    ceilings, ours = [], []
    for rep in range(reps):
        docs = [t.to_doc() for t in trades(2 * rep * count)]
        t0 = time.perf_counter()
        for i in range(0, count, 2000):
            await db[schema.TRADES].insert_many(docs[i:i + 2000], ordered=False)
        ceilings.append(count / (time.perf_counter() - t0))
        records = trades((2 * rep + 1) * count)
        writer = Writer(db, batch_size=settings.batch_size,
                        flush_interval_s=settings.flush_interval_s)
        stop = asyncio.Event()
        run = asyncio.create_task(writer.run())
        deleting = asyncio.create_task(delete_loop(stop))
        t0 = time.perf_counter()
        for i in range(0, count, 500):
            for rec in records[i:i + 500]:
                writer.submit(rec)
            await asyncio.sleep(0)
        while writer.stored < count:
            await asyncio.sleep(0.005)
        ours.append(count / (time.perf_counter() - t0))
        stop.set()
        await deleting
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
    return {"docs": count, "reps": reps, "ceiling_docs_per_s": round(statistics.median(ceilings)),
            "ours_docs_per_s": round(statistics.median(ours)),
            "ratio": round(statistics.median(o / c for o, c in zip(ours, ceilings)), 3),
            "ratios": [round(o / c, 3) for o, c in zip(ours, ceilings)],
            "deleted_meanwhile": stats.deleted}


ISSUE_COLUMNS = ["/trades?limit=100", "/trades?exchange=binance&symbol=BTCUSDT&limit=100",
                 f"/trades?exchange=binance&symbol=BTCUSDT&since={SINCE}&limit=100"]


def markdown(results: dict[str, Any]) -> str:
    """The issue-13 table (median of 7) and every endpoint's p50/p99 per level, as markdown."""
    levels = list(results["levels"])
    first, top = levels[0], levels[-1]
    lines = ["| trades stored | `/trades?limit=100` | `...&exchange=binance&symbol=BTCUSDT` | "
             "same with `since` (5 min ago) | 10-page cursor walk |", "|---:|---:|---:|---:|---:|"]
    for level in levels:
        eps = results["levels"][level]["endpoints"]
        cells = " | ".join(f"{eps[p]['median7_ms']:.1f} ms" for p in ISSUE_COLUMNS)
        lines.append(f"| {int(level):,} | {cells} | "
                     f"{results['levels'][level]['cursor_walk_10_pages_ms']:.0f} ms |")
    lines += ["", "| endpoint | " + " | ".join(f"{int(x):,}: p50 / p99 ms" for x in levels)
              + f" | p50 {int(top):,} / {int(first):,} |",
              "|---|" + "---:|" * (len(levels) + 1)]
    for path in results["levels"][top]["endpoints"]:
        cells = " | ".join(f"{results['levels'][x]['endpoints'][path]['p50_ms']:.1f} / "
                           f"{results['levels'][x]['endpoints'][path]['p99_ms']:.1f}"
                           for x in levels)
        lines.append(f"| `{path}` | {cells} | {results['ratio_p50_top_over_first'][path]:.2f} |")
    r, w = results["retention"], results["writer"]
    lines += ["", f"Retention at {int(top):,} trades: {r['deleted']:,} documents in "
              f"{r['batches']} batches, {r['wall_s']} s ({r['docs_per_s']:,} docs/s), batch p50 "
              f"{r['batch_p50_ms']} ms / p99 {r['batch_p99_ms']} ms; trade reads meanwhile p50 "
              f"{r['reads_during_p50_ms']} ms / p99 {r['reads_during_p99_ms']} ms. Writer with "
              f"the deleter running: {w['ours_docs_per_s']:,} docs/s vs insert_many "
              f"{w['ceiling_docs_per_s']:,} docs/s, ratio {w['ratio']} (pairs: {w.get('ratios')})."]
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--levels", default="20000,100000,200000,300000,1000000",
                        help="trade counts to measure at (cumulative, ascending)")
    parser.add_argument("--requests", type=int, default=50, help="requests per endpoint")
    parser.add_argument("--writer-docs", type=int, default=30_000)
    parser.add_argument("--reps", type=int, default=3, help="writer/ceiling pairs")
    parser.add_argument("--quick", action="store_true", help="CI smoke mode (small counts)")
    parser.add_argument("--json", default="", help="also write all results to this file")
    parser.add_argument("--mongodb-uri", help="use this server instead of starting nx-27017")
    parser.add_argument("--report", default="", metavar="JSON",
                        help="only print the markdown tables of a saved --json result")
    args = parser.parse_args()
    if args.report:
        print(markdown(orjson.loads(Path(args.report).read_bytes())))
        return
    if args.quick:
        args.levels, args.requests, args.writer_docs, args.reps = "2000,6000", 7, 3000, 1
    levels = [int(x) for x in args.levels.split(",")]

    tmp = tempfile.mkdtemp(prefix="volume-bench-")
    procs: list[subprocess.Popen] = []
    logs = []
    results: dict[str, Any] = {"levels": {}}
    try:
        uri = args.mongodb_uri
        if not uri:
            port = free_port()
            exe = shutil.which("nx-27017", path=str(Path(sys.executable).parent)) or "nx-27017"
            procs.append(subprocess.Popen(
                [exe, "--data-dir", tmp, "--host", "127.0.0.1", "-p", str(port),
                 "--log-file", os.path.join(tmp, "nx.log"), "--pid-file",
                 os.path.join(tmp, "nx.pid")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_port(port)
            uri = f"mongodb://127.0.0.1:{port}"
        dbname = f"volume_{os.getpid()}"
        client = AsyncMongoClient(uri, tz_aware=True)
        profile = await server_profile(client[dbname])
        results["server"] = {"uri_kind": "nx-27017" if not args.mongodb_uri else "given",
                             "ttl": profile.ttl, "index_id": profile.index_id}
        now_ms = time_key(now_utc())
        env = {**os.environ, "MONGODB_URI": uri, "CRYPTODATA_API_RATE_PER_S": "0",
               "CRYPTODATA_LOG_LEVEL": "INFO"}
        bases: dict[str, str] = {}
        for level in levels:
            # One database per level, seeded alike (the smaller ones are the newest part of the
            # larger), and one API process on each.
            db = client[f"{dbname}_{level}"]
            await apply_indexes(db, Settings().retention)
            seeder = Seeder(db, now_ms)
            await seeder.latest()
            t0 = time.perf_counter()
            await seeder.grow(level)
            docs = {k: await db[k].estimated_document_count() for k in seeder.done}
            results["levels"][str(level)] = {"documents": docs}
            print(f"{level:,} trades: {sum(docs.values()):,} documents, seeded in "
                  f"{time.perf_counter() - t0:.0f}s", flush=True)
            api_port = free_port()
            logs.append(open(os.path.join(tmp, f"api-{level}.log"), "wb"))
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "api", "--host", "127.0.0.1", "--port", str(api_port)],
                cwd=str(ROOT), env={**env, "CRYPTODATA_MONGODB_DB": db.name},
                stdout=logs[-1], stderr=subprocess.STDOUT))
            wait_port(api_port)
            bases[str(level)] = f"http://127.0.0.1:{api_port}"
        measured = await measure_levels(bases, args.requests)
        for level, res in measured.items():
            results["levels"][level].update(res)
            print(f"\n== {int(level):,} trades ==")
            for path, r in res["endpoints"].items():
                print(f"  {path:70s} p50 {r['p50_ms']:7.2f}  p99 {r['p99_ms']:7.2f}  "
                      f"median7 {r['median7_ms']:7.2f} ms", flush=True)
            print(f"  10-page cursor walk: {res['cursor_walk_10_pages_ms']:.1f} ms "
                  f"({res['cursor_walk_pages']} pages)", flush=True)
        top = str(levels[-1])
        results["retention"] = await retention_cost(db, bases[top], now_ms, levels[-1])
        print(f"\nretention at {int(top):,} trades: {results['retention']}", flush=True)
        results["writer"] = await writer_ratio(db, now_ms, args.writer_docs, args.reps)
        print(f"writer with the deleter running: {results['writer']}", flush=True)
        low = str(levels[0])
        ratios = {p: round(r["p50_ms"] / results["levels"][low]["endpoints"][p]["p50_ms"], 2)
                  for p, r in results["levels"][top]["endpoints"].items()}
        results["ratio_p50_top_over_first"] = ratios
        print(f"\np50 ratio {int(top):,} / {int(low):,}: max {max(ratios.values()):.2f} "
              f"({max(ratios, key=ratios.get)})")
        for level in levels:
            await client.drop_database(f"{dbname}_{level}")
        await client.close()
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        for f in logs:
            f.close()
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print("\n" + markdown(results))


if __name__ == "__main__":
    asyncio.run(main())
