"""CPU per message of a feed's message handler plus the Writer (storage off), in one process, no
sockets: the steadiest figure for comparing two versions of the collector's hot path on a shared
machine (the socket benchmarks' ratios move by up to 0.08 between identical runs).

    python -m tests.bench.handler_bench [--tree PATH] [--kinds trade,ticker] [--reps 9]

For every exchange and kind, 30,000 frames of one spot symbol (``tests/bench/exchanges.py``, and
the replay server's Binance shapes) are built here, then handed to the exchange's real feed as
its connection would (``build_connections()[0].on_message``), with ``Writer.flush`` into a
``NullDatabase`` every 500 messages. Figure: the best of ``--reps`` runs, process CPU time per
message. ``--tree`` runs the same frames through another checkout's collector (e.g. a worktree of
an older commit: ``git worktree add /tmp/old <commit>``), each version in its own process, so a
before/after table comes from one command. A checkout whose feed does not handle a frame kind
reports its record count (0: not comparable).
"""
from __future__ import annotations

import argparse
import os
import pickle
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[2]
COUNT = 30_000
TS0 = 1_780_000_000_000

# Runs inside the checkout under test (its own collector, Settings and bench helpers).
RUNNER = r'''
import asyncio, gc, pickle, sys, time
sys.path.insert(0, ".")
name, kind, path, reps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
data = pickle.load(open(path, "rb"))
msgs = data["frames"]
from tests.bench.client import NullDatabase, production_writer
from collector.exchanges import load_feed_class
from collector.exchanges.base import FeedContext
from collector.stats import Stats
from common.settings import Settings
import aiohttp

async def once():
    settings = Settings(_env_file=None, exchanges=[name])
    cfg = settings.exchange(name).model_copy(update={
        "spot_symbols": [data["symbol"]], "perp_symbols": [],
        "spot_ws_url": "ws://127.0.0.1:9" + data["ws_suffix"], "spot_rest_url": "http://127.0.0.1:9",
        "perp_ws_url": "", "perp_rest_url": "", "book_depth": 100, "backfill": False})
    settings = settings.model_copy(update={name: cfg})
    writer = production_writer(NullDatabase())
    async with aiohttp.ClientSession() as session:
        feed = load_feed_class(name)(cfg, FeedContext(settings, writer, Stats(), session, 3600.0))
        conn = feed.build_connections()[0]
        on_message = conn.on_message
        gc.collect(); gc.freeze()
        started = time.process_time()
        for i, raw in enumerate(msgs):
            on_message(conn, raw)
            if i % 500 == 499:
                await writer.flush()
        await writer.flush()
        elapsed = time.process_time() - started
        return elapsed, sum(feed.stats.records.values()), feed.stats.malformed

best = None
for _ in range(reps):
    elapsed, records, malformed = asyncio.run(once())
    best = elapsed if best is None else min(best, elapsed)
print(best / len(msgs) * 1e6, records, malformed)
'''


def frames() -> dict[tuple[str, str], dict]:
    """(exchange, kind) -> {"symbol", "ws_suffix", "frames"} built with this checkout's bench
    frame builders."""
    from tests.bench import exchanges as ex
    from tests.bench.replay_server import Book, TickerState

    out: dict[tuple[str, str], dict] = {}
    for name, cls in (("bybit", ex.BybitFrames), ("okx", ex.OkxFrames),
                      ("kraken", ex.KrakenFrames), ("gateio", ex.GateioFrames)):
        rng = random.Random(11)
        fmt = cls(rng)
        symbol = ex.symbols_for(1, name)[0]
        book = Book(symbol, 60000.0, 100, rng, decimals=ex.DECIMALS[name])
        ticker = TickerState(book, rng)
        out[name, "trade"] = {"symbol": symbol, "ws_suffix": ex.WS_SUFFIX[name],
                              "frames": [fmt.trade(book, TS0 + i) for i in range(COUNT)]}
        out[name, "ticker"] = {"symbol": symbol, "ws_suffix": ex.WS_SUFFIX[name],
                               "frames": [fmt.ticker(ticker, TS0 + i) for i in range(COUNT)]}
    # Binance: the replay server's combined-stream shapes.
    rng = random.Random(42)
    book = Book("BTCUSDT", 60100.0, 1000, rng, 8)
    ticker = TickerState(book, rng)
    trades, tickers = [], []
    for n in range(COUNT):
        ts = TS0 + n
        trades.append(orjson.dumps({"stream": "btcusdt@trade", "data": {
            "e": "trade", "E": ts, "s": "BTCUSDT", "t": 1_000_001 + n,
            "p": book.price(rng.randint(-5, 5)), "q": f"{rng.uniform(0.0001, 2):.8f}", "T": ts,
            "m": rng.random() < 0.5, "M": True}}))
        tickers.append(orjson.dumps({"stream": "btcusdt@ticker", "data": ticker.next(ts)}))
    for kind, built in (("trade", trades), ("ticker", tickers)):
        out["binance", kind] = {"symbol": "BTCUSDT", "ws_suffix": "", "frames": built}
    return out


def run(tree: Path, name: str, kind: str, path: str, reps: int) -> tuple[float, int, int]:
    env = dict(os.environ, CRYPTODATA_CONFIG_FILE=os.devnull)
    out = subprocess.run([sys.executable, "-c", RUNNER, name, kind, path, str(reps)], cwd=tree,
                         env=env, capture_output=True, text=True, check=True)
    us, records, malformed = out.stdout.split()
    return float(us), int(records), int(malformed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", default="", help="another checkout to compare with")
    parser.add_argument("--kinds", default="trade,ticker")
    parser.add_argument("--exchanges", default="binance,bybit,okx,kraken,gateio")
    parser.add_argument("--reps", type=int, default=9)
    args = parser.parse_args()
    trees = [ROOT] + ([Path(args.tree).resolve()] if args.tree else [])
    built = frames()
    print(f"{'exchange':8s} {'kind':7s} " + "  ".join(f"{t.name[:14]:>14s}" for t in trees)
          + ("   this/other" if len(trees) == 2 else ""))
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.exchanges.split(","):
            for kind in args.kinds.split(","):
                path = os.path.join(tmp, f"{name}-{kind}.pickle")
                with open(path, "wb") as f:
                    pickle.dump(built[name, kind], f)
                cells, figures = [], []
                for tree in trees:
                    us, records, malformed = run(tree, name, kind, path, args.reps)
                    ok = records == COUNT and not malformed
                    figures.append(us if ok else None)
                    cells.append(f"{us:8.2f} us/msg" if ok else f"{records:>7d} records")
                line = f"{name:8s} {kind:7s} " + "  ".join(f"{c:>14s}" for c in cells)
                if len(trees) == 2 and None not in figures:
                    line += f"   {figures[0] / figures[1]:5.2f}"     # this tree / the other
                print(line, flush=True)


if __name__ == "__main__":
    main()
