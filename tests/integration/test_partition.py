"""Scale-out partitioning: N collector processes own disjoint subscription sets that together
cover every (exchange, market, symbol, stream) exactly once."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections import Counter
from types import SimpleNamespace

import pytest
from pymongo import AsyncMongoClient

from collector import partition
from collector.exchanges.base import FeedContext
from collector.exchanges.binance import endpoints as ep
from collector.exchanges.binance.feed import BinanceFeed
from collector.stats import Stats
from common import schema
from common.settings import BinanceSettings
from tests.conftest import ROOT
from tests.support.fakes.binance import FakeBinance
from tests.support.helpers import wait_for

SYMBOLS = [f"SYM{i}USDT" for i in range(40)] + ["BTCUSDT", "ETHUSDT", "BTCUSDC"]


def _all_subscriptions():
    for exchange in ("binance", "bybit", "okx"):
        for market, streams in (("spot", ("ticker", "trade", "depth@100ms", "kline_1m")),
                                ("perp", ("ticker", "aggTrade", "markPrice", "depth@100ms"))):
            for symbol in SYMBOLS:
                for stream in streams:
                    yield exchange, market, symbol, stream


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_partitions_cover_everything_once(n):
    subs = list(_all_subscriptions())
    owned = Counter()
    for i in range(n):
        for sub in subs:
            if partition.owns(f"{i}/{n}", *sub):
                owned[sub] += 1
    assert set(owned) == set(subs)                     # full coverage
    assert set(owned.values()) == {1}                  # no duplicates
    if n > 1:   # and the split is not degenerate
        sizes = [sum(partition.owns(f"{i}/{n}", *s) for s in subs) for i in range(n)]
        assert min(sizes) > len(subs) / n / 2


def test_partition_spec_parsing():
    assert partition.parse_partition("") == (0, 1)
    assert partition.parse_partition("1/3") == (1, 3)
    for bad in ("3/3", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(ValueError):
            partition.parse_partition(bad)


def _feed_streams(spec: str) -> list[str]:
    """The Binance streams one partition's feed subscribes (no network: only the plan)."""
    cfg = BinanceSettings(spot_symbols=SYMBOLS[:12], perp_symbols=SYMBOLS[:6],
                          spot_ws_url="ws://x", perp_ws_url="ws://x")
    ctx = FeedContext(settings=SimpleNamespace(partition=spec), writer=None, stats=Stats(),
                      session=None, poll_interval_s=30.0)
    feed = BinanceFeed(cfg, ctx)
    return [f"{conn.meta.market}:{feed.arg_text(sub)}" for conn in feed.build_connections()
            for sub in conn.meta.subscriptions]


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_binance_feed_stream_selection_is_disjoint_and_complete(n):
    everything = _feed_streams("")
    parts = [_feed_streams(f"{i}/{n}") for i in range(n)]
    merged = [s for part in parts for s in part]
    assert sorted(merged) == sorted(everything)
    assert len(set(merged)) == len(merged)


async def test_two_real_collector_processes_split_binance_without_overlap(mongo_uri, tmp_path):
    """``python -m collector`` twice, partitions 0/2 and 1/2, against one fake Binance: their
    subscriptions are disjoint and together equal one unpartitioned process's; each reports its
    own status document; every subscribed symbol's trades are stored."""
    fake = FakeBinance()
    await fake.start()
    db_name = f"test_partition_{uuid.uuid4().hex[:8]}"
    client = AsyncMongoClient(mongo_uri, tz_aware=True)
    procs: list[subprocess.Popen] = []
    ws, http = f"ws://127.0.0.1:{fake.port}", f"http://127.0.0.1:{fake.port}"

    def start(spec: str) -> None:
        env = {**os.environ, "MONGODB_URI": mongo_uri, "CRYPTODATA_MONGODB_DB": db_name,
               "CRYPTODATA_CONFIG_FILE": "/dev/null", "CRYPTODATA_EXCHANGES": '["binance"]',
               "CRYPTODATA_BINANCE__SPOT_SYMBOLS": '["BTCUSDT","BTCUSDC"]',
               "CRYPTODATA_BINANCE__PERP_SYMBOLS": '["BTCUSDT"]',
               "CRYPTODATA_BINANCE__SPOT_WS_URL": ws, "CRYPTODATA_BINANCE__PERP_WS_URL": ws,
               "CRYPTODATA_BINANCE__SPOT_REST_URL": http, "CRYPTODATA_BINANCE__PERP_REST_URL": http,
               "CRYPTODATA_PARTITION": spec, "CRYPTODATA_SPOOL_DIR": str(tmp_path / "spool"),
               "CRYPTODATA_STATUS_INTERVAL_S": "0.5", "CRYPTODATA_LOG_LEVEL": "WARNING"}
        procs.append(subprocess.Popen([sys.executable, "-m", "collector"], cwd=str(ROOT), env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def subscribed() -> list[str]:
        return [s for subs in fake.subscriptions.values() for s in subs]

    async def _true(value):
        return value

    try:
        expected = {f"{route}|{s}" for route, streams in (
            ("/stream", [t.name.format(s=s) for s in ("btcusdt", "btcusdc") for t in ep.SPOT_STREAMS]),
            ("/public/stream", [t.name.format(s="btcusdt") for t in ep.PERP_PUBLIC_STREAMS]),
            ("/market/stream", [t.name.format(s="btcusdt") for t in ep.PERP_MARKET_STREAMS]))
            for s in streams}
        start("0/2")
        start("1/2")
        await wait_for(lambda: _true(set(subscribed()) == expected), timeout_s=30,
                       what="both partitions subscribed")
        assert len(subscribed()) == len(expected)          # no stream subscribed twice
        db = client[db_name]

        async def both_reported():
            ids = sorted(d["_id"] for d in await db[schema.STATUS].find({}, {"_id": 1})
                         .to_list(10))
            return ids == ["collector-0-of-2", "collector-1-of-2"]
        await wait_for(both_reported, timeout_s=30, what="one status document per partition")

        async def trades_of_every_symbol():
            keys = {(d["market"], d["symbol"]) async for d in
                    db[schema.TRADES].find({}, {"market": 1, "symbol": 1})}
            return keys >= {("spot", "BTCUSDT"), ("spot", "BTCUSDC"), ("perp", "BTCUSDT")}
        await wait_for(trades_of_every_symbol, timeout_s=30, what="trades of every symbol")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        await client.drop_database(db_name)
        await client.close()
        await fake.stop()
