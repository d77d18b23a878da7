"""API load benchmark (not a test): ``python tests/bench/api_bench.py [--mode closed|rate|both]
[-c 32] [-n 2000] [--rate 500 --duration 10] [--pin-cpu N]``.

Starts nx-27017 on a free loopback port (or uses ``--mongodb-uri``), seeds realistic data with the
collector's own Writer (5 exchanges, their default spot/perp symbols, every record type, a trade
history), starts ``python -m api`` on a free port (rate limit off; with ``--pin-cpu`` on that one
CPU) and drives each endpoint over loopback with aiohttp:

- ``closed``: ``-c`` workers, each sending its next request when the previous one answered,
  ``-n`` requests per endpoint; measures the throughput the server sustains at that concurrency.
- ``rate``: open loop at ``--rate`` requests/s for ``--duration`` s per endpoint, whatever the
  answers do; latency is taken from each request's scheduled send time, so a server that falls
  behind shows its queueing delay. Reports the achieved rate and errors (non-2xx, timeouts, and
  requests not sent because ``--max-inflight`` were already outstanding).

Prints one table row per mode and endpoint: requests, p50/p99 latency, requests/s, errors.
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
from common.schema import (  # noqa: E402
    BookSnapshot, Candle, Funding, Liquidity, OpenInterest, Ticker, Trade, now_utc,
)
from common.settings import Settings  # noqa: E402
from tests.support.helpers import free_port, wait_port  # noqa: E402

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


def failed(url: str, status: int) -> bool:
    # /health answers 503 when MongoDB is unreachable; anything else >= 400 is an error.
    return status >= (500 if url.endswith("/health") else 400)


def percentiles(latencies: list[float]) -> tuple[float, float]:
    if len(latencies) < 2:
        value = latencies[0] * 1000 if latencies else float("nan")
        return value, value
    q = statistics.quantiles(latencies, n=100)
    return q[49] * 1000, q[98] * 1000


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
                if failed(url, resp.status):
                    errors += 1
            latencies.append(time.perf_counter() - t0)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(url) as resp:          # warm-up
            await resp.read()
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    p50, p99 = percentiles(latencies)
    return {"n": len(latencies), "p50_ms": p50, "p99_ms": p99,
            "rps": len(latencies) / elapsed, "errors": errors}


async def load_rate(url: str, rate: float, duration_s: float, max_inflight: int = 1000,
                    timeout_s: float = 10.0) -> dict:
    """Open loop: request i is sent at start + i / rate, answered or not."""
    latencies: list[float] = []
    errors = 0
    inflight: set[asyncio.Task] = set()
    timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def one(session: aiohttp.ClientSession, scheduled: float) -> None:
        nonlocal errors
        try:
            async with session.get(url, timeout=timeout) as resp:
                await resp.read()
                if failed(url, resp.status):
                    errors += 1
                    return
        except (aiohttp.ClientError, asyncio.TimeoutError):
            errors += 1
            return
        latencies.append(time.perf_counter() - scheduled)

    total = max(1, int(rate * duration_s))
    connector = aiohttp.TCPConnector(limit=max_inflight)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(url) as resp:          # warm-up
            await resp.read()
        started = time.perf_counter()
        for i in range(total):
            scheduled = started + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(inflight) >= max_inflight:
                errors += 1                           # overloaded: not sent
                continue
            task = asyncio.ensure_future(one(session, scheduled))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
        if inflight:
            await asyncio.wait(inflight)
        elapsed = time.perf_counter() - started
    p50, p99 = percentiles(latencies)
    return {"n": total, "p50_ms": p50, "p99_ms": p99, "rps": len(latencies) / elapsed,
            "errors": errors}


def pinned(cpu: int | None):
    """preexec_fn for the API server: run it on one CPU (``os.sched_setaffinity``)."""
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("closed", "rate", "both"), default=None,
                        help="closed loop, open loop at --rate, or both (default: closed, or "
                             "rate when --rate is given)")
    parser.add_argument("-c", "--concurrency", type=int, default=32, help="closed loop")
    parser.add_argument("-n", "--requests", type=int, default=2000,
                        help="closed loop: requests per endpoint")
    parser.add_argument("--rate", type=float, default=None,
                        help="open loop: requests/s per endpoint (default 500)")
    parser.add_argument("--duration", type=float, default=10.0,
                        help="open loop: seconds per endpoint")
    parser.add_argument("--max-inflight", type=int, default=1000,
                        help="open loop: outstanding requests before sends count as errors")
    parser.add_argument("--pin-cpu", type=int, default=None, metavar="CPU",
                        help="run the API server on this CPU only")
    parser.add_argument("--trades-per-symbol", type=int, default=2000)
    parser.add_argument("--mongodb-uri", help="use this server instead of starting nx-27017")
    args = parser.parse_args()
    mode = args.mode or ("rate" if args.rate else "closed")
    rate = args.rate or 500.0

    tmp = tempfile.mkdtemp(prefix="api-bench-")
    procs: list[subprocess.Popen] = []
    api_log = None
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
        # Production log level: the access line per request is part of what is measured.
        env = {**os.environ, "MONGODB_URI": uri, "CRYPTODATA_MONGODB_DB": dbname,
               "CRYPTODATA_API_RATE_PER_S": "0", "CRYPTODATA_LOG_LEVEL": "INFO"}
        api_log = open(os.path.join(tmp, "api.log"), "wb")
        procs.append(subprocess.Popen([sys.executable, "-m", "api", "--host", "127.0.0.1",
                                       "--port", str(api_port)], cwd=str(ROOT), env=env,
                                      stdout=api_log, stderr=subprocess.STDOUT,
                                      preexec_fn=pinned(args.pin_cpu)))
        wait_port(api_port)
        base = f"http://127.0.0.1:{api_port}"
        where = f"CPU {args.pin_cpu}" if args.pin_cpu is not None else "any CPU"
        plan = []
        if mode in ("closed", "both"):
            plan.append(f"closed loop: concurrency {args.concurrency}, {args.requests} "
                        "requests per endpoint")
        if mode in ("rate", "both"):
            plan.append(f"open loop: {rate:g} requests/s for {args.duration:g} s per endpoint")
        print(f"\nAPI server on {where} of {os.cpu_count()}; {'; '.join(plan)}\n")
        print("| mode | endpoint | requests | p50 ms | p99 ms | req/s | errors |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for name in ("closed", "rate"):
            if mode not in (name, "both"):
                continue
            for path in ENDPOINTS:
                if name == "closed":
                    r = await load(base + path, args.concurrency, args.requests)
                else:
                    r = await load_rate(base + path, rate, args.duration, args.max_inflight)
                print(f"| {name} | `{path}` | {r['n']} | {r['p50_ms']:.2f} | "
                      f"{r['p99_ms']:.2f} | {r['rps']:.0f} | {r['errors']} |", flush=True)
        await client.drop_database(dbname)
        await client.close()
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if api_log is not None:
            api_log.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
