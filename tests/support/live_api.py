"""A real ``python -m api`` process on a free port over seeded data, for the tests that drive the
API from outside (schemathesis, the browser): what every venue looks like right after
``make run``, written through the collector's own writer, plus the collector's status document."""
from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Iterator

from collector.gaps import Gap
from collector.writer import Writer
from common import schema
from common.indexes import apply_indexes
from common.schema import (
    BookSnapshot, Candle, Funding, Liquidity, OpenInterest, Ticker, Trade, now_utc,
)
from common.settings import Settings
from tests.support.helpers import free_port, wait_port

ROOT = Path(__file__).resolve().parents[2]

# exchange -> (spot symbol, pair, last price): one BTC market per venue, as collected by default.
VENUES = {
    "binance": ("BTCUSDT", "BTC/USDT", 65000.5),
    "bybit": ("BTCUSDT", "BTC/USDT", 65001.25),
    "kraken": ("BTC/USD", "BTC/USD", 64990.0),
    "gateio": ("BTC_USDT", "BTC/USDT", 65002.75),
    "okx": ("BTC-USDT", "BTC/USDT", 64999.5),
}


def ticker(exchange: str, last: float, at: datetime) -> Ticker:
    symbol, pair, _ = VENUES[exchange]
    return Ticker(exchange, symbol, pair, "spot", at, at, last=last, bid=last - 0.5,
                  ask=last + 0.5, volume_24h=1234.5)


async def seed(db, now: datetime | None = None) -> datetime:
    """Every venue: ticker, trades, 1-minute candles (the last 30 minutes), a book snapshot and
    a liquidity record; Binance perp funding and open interest; one open gap on OKX."""
    await apply_indexes(db, Settings().retention)
    now = now or now_utc()
    writer = Writer(db)
    minute = now.replace(second=0, microsecond=0)
    for exchange, (symbol, pair, last) in VENUES.items():
        writer.submit(ticker(exchange, last, now))
        for i in range(20):
            ts = now - timedelta(seconds=20 - i)
            writer.submit(Trade(exchange, symbol, pair, "spot", ts, ts, trade_id=str(i),
                                price=last - 20 + i, size=0.5, side="buy" if i % 2 else "sell"))
        for i in range(30):
            ts = minute - timedelta(minutes=29 - i)
            base = last - 30 + i
            writer.submit(Candle(exchange, symbol, pair, "spot", ts, ts, open=base,
                                 high=base + 2, low=base - 1, close=base + 1, volume=3.0,
                                 closed=i < 29))
        writer.submit(BookSnapshot(exchange, symbol, pair, "spot", now, now,
                                   bids=[[last - 0.5, 1.0]], asks=[[last + 0.5, 2.0]], depth=20,
                                   update_id=7))
        writer.submit(Liquidity(exchange, symbol, pair, "spot", now, now, mid=last,
                               spread_bps=round(1.0 / last * 1e4, 4), volume_24h=1234.5))
    writer.submit(Funding("binance", "BTCUSDT", "BTC/USDT", "perp", now, now, rate=0.0001))
    writer.submit(OpenInterest("binance", "BTCUSDT", "BTC/USDT", "perp", now, now,
                               open_interest=100.0))
    assert await writer.flush()
    gap = Gap("okx", "BTC-USDT", "spot", "trades", cause="disconnect",
              start=now - timedelta(minutes=5))
    await db[schema.GAPS].insert_one(gap.to_doc())
    await write_status(db, now_utc())
    return now


async def write_status(db, at: datetime, resyncing: str | None = None) -> None:
    """The collector's heartbeat: every venue's ticker stream fresh as of ``at``, books live
    (``resyncing``: that exchange's book is resyncing)."""
    exchanges: dict[str, Any] = {}
    for exchange, (symbol, _, _) in VENUES.items():
        state = "resyncing" if exchange == resyncing else "live"
        exchanges[exchange] = {
            "last_record_at": {"market_data": {f"spot:{symbol}": at},
                               "trades": {f"spot:{symbol}": at}},
            "books": {f"spot:{symbol}": {"state": state, "since": at, "update_id": 7}},
        }
    await db[schema.STATUS].replace_one({"_id": "collector"}, {
        "_id": "collector", "updated_at": at, "running": True, "host": "test", "pid": 1,
        "writer": {"stored": 1, "pending": 0}, "exchanges": exchanges}, upsert=True)


@contextmanager
def api_process(mongo_uri: str, db_name: str, log_path: Path, **env: str) -> Iterator[str]:
    """``python -m api`` on a free loopback port; yields its base URL."""
    port = free_port()
    environ = {**os.environ, "MONGODB_URI": mongo_uri, "CRYPTODATA_MONGODB_DB": db_name,
               "CRYPTODATA_SENTRY_DSN": "", **env}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "api", "--port", str(port)], cwd=ROOT,
                                env=environ, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_port(port)
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
