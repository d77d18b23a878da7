"""API load benchmark (not a test): ``python tests/bench/api_bench.py [-c 32] [-n 2000]``.

Starts nx-27017 on a free loopback port (or uses ``--mongodb-uri``), seeds realistic data with the
collector's own Writer (5 exchanges, their default spot/perp symbols, every record type, a trade
history), starts ``python -m api`` on a free port (rate limit off) and drives each endpoint with a
fixed-concurrency aiohttp load generator over loopback. Prints p50/p99 latency and requests/s.
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
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
from pymongo import AsyncMongoClient  # noqa: E402

from collector.writer import Writer  # noqa: E402
from common.indexes import apply_indexes  # noqa: E402
from common.schema import (BookSnapshot, Candle, Funding, Liquidity, OpenInterest,  # noqa: E402
                           Ticker, Trade, now_utc)
from common.settings import Settings  # noqa: E402
from tests.helpers import free_port, wait_port  # noqa: E402

ENDPOINTS = ["/health", "/realtime", "/realtime/binance/BTCUSDT", "/trades?limit=100"]


def pair_of(symbol: str) -> str:
    s = symbol.replace("-SWAP", "").replace("PF_XBTUSD", "BTC/USD").replace("_", "/") \
        .replace("-", "/")
    if "/" not in s:
        s = s[:3] + "/" + s[3:]
    return s.replace("XBT", "BTC")


async def seed(db, trades_per_symbol: int) -> int:
    settings = Settings()
    await apply_indexes(db, settings.retention)
    writer = Writer(db, batch_size=1000)
    now = now_utc()
    rnd = random.Random(1)
    count = 0
    for ex in settings.exchanges:
        conf = settings.exchange(ex)
        for market, symbols in (("spot", conf.spot_symbols), ("perp", conf.perp_symbols)):
            for sym in symbols:
                pair, px = pair_of(sym), 50000 + rnd.uniform(-50, 50)
                for i in range(trades_per_symbol):
                    ts = now - timedelta(milliseconds=(trades_per_symbol - i) * 250)
                    writer.submit(Trade(ex, sym, pair, market, ts, ts, trade_id=str(i),
                                        price=px + rnd.uniform(-5, 5),
                                        size=rnd.uniform(0.001, 1), side=rnd.choice(("buy", "sell"))))
                    count += 1
                writer.submit(Ticker(ex, sym, pair, market, now, now, last=px, bid=px - 0.5,
                                     ask=px + 0.5, bid_size=1.0, ask_size=1.0, volume_24h=1e4,
                                     quote_volume_24h=5e8, mark_price=px if market == "perp" else None))
                writer.submit(BookSnapshot(ex, sym, pair, market, now, now,
                                           bids=[[px - i, 1.0] for i in range(1, 21)],
                                           asks=[[px + i, 1.0] for i in range(1, 21)],
                                           depth=20, update_id=1))
                writer.submit(Liquidity(ex, sym, pair, market, now, now, mid=px, spread_bps=0.2))
                writer.submit(Candle(ex, sym, pair, market, now.replace(second=0, microsecond=0),
                                     now, open=px, high=px + 10, low=px - 10, close=px, volume=5.0))
                if market == "perp":
                    writer.submit(Funding(ex, sym, pair, market, now, now, rate=0.0001))
                    writer.submit(OpenInterest(ex, sym, pair, market, now, now,
                                               open_interest=1e4))
                if writer.pending > 5000:
                    assert await writer.flush()
    assert await writer.flush()
    return count


async def load(url: str, concurrency: int, total: int) -> dict:
    latencies: list[float] = []
    errors = 0
    remaining = total

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal remaining, errors
        while remaining > 0:
            remaining -= 1
            t0 = time.perf_counter()
            async with session.get(url) as resp:
                await resp.read()
                if resp.status >= 400 and not url.endswith("/health"):
                    errors += 1
            latencies.append(time.perf_counter() - t0)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(url) as resp:          # warm-up
            await resp.read()
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    q = statistics.quantiles(latencies, n=100)
    return {"n": len(latencies), "p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000,
            "rps": len(latencies) / elapsed, "errors": errors}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--concurrency", type=int, default=32)
    parser.add_argument("-n", "--requests", type=int, default=2000, help="per endpoint")
    parser.add_argument("--trades-per-symbol", type=int, default=2000)
    parser.add_argument("--mongodb-uri", help="use this server instead of starting nx-27017")
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="api-bench-")
    procs: list[subprocess.Popen] = []
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
        dbname = f"bench_{os.getpid()}"
        client = AsyncMongoClient(uri, tz_aware=True)
        t0 = time.perf_counter()
        trades = await seed(client[dbname], args.trades_per_symbol)
        print(f"seeded {trades} trades + latest/ticker/book/candle/funding/OI records "
              f"in {time.perf_counter() - t0:.1f}s ({uri})")
        api_port = free_port()
        env = {**os.environ, "MONGODB_URI": uri, "CRYPTODATA_MONGODB_DB": dbname,
               "CRYPTODATA_API_RATE_PER_S": "0", "CRYPTODATA_LOG_LEVEL": "WARNING"}
        procs.append(subprocess.Popen([sys.executable, "-m", "api", "--host", "127.0.0.1",
                                       "--port", str(api_port)], cwd=str(ROOT), env=env))
        wait_port(api_port)
        base = f"http://127.0.0.1:{api_port}"
        print(f"\nconcurrency {args.concurrency}, {args.requests} requests per endpoint\n")
        print(f"| endpoint | requests | p50 ms | p99 ms | req/s | errors |")
        print(f"|---|---:|---:|---:|---:|---:|")
        for path in ENDPOINTS:
            r = await load(base + path, args.concurrency, args.requests)
            print(f"| `{path}` | {r['n']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                  f"{r['rps']:.0f} | {r['errors']} |", flush=True)
        await client.drop_database(dbname)
        await client.close()
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
