"""Scale-out partitioning: N collector processes own disjoint subscription sets that together
cover every (exchange, market, symbol, stream) exactly once."""
from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest

from collector import partition
from collector.exchanges.binance import endpoints as ep
from collector.exchanges.binance.feed import BinanceFeed
from common.settings import BinanceSettings

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
    cfg = BinanceSettings(spot_symbols=SYMBOLS[:12], perp_symbols=SYMBOLS[:6],
                          spot_ws_url="ws://x", perp_ws_url="ws://x")
    feed = BinanceFeed.__new__(BinanceFeed)     # no network: only stream selection is exercised
    feed.cfg = cfg
    feed.ctx = SimpleNamespace(settings=SimpleNamespace(partition=spec))
    feed.stats = SimpleNamespace(unavailable_symbols={})
    out = []
    for market, symbols, templates in (("spot", cfg.spot_symbols, ep.SPOT_STREAMS),
                                       ("perp", cfg.perp_symbols, ep.PERP_PUBLIC_STREAMS),
                                       ("perp", cfg.perp_symbols, ep.PERP_MARKET_STREAMS)):
        out += [f"{market}:{s}" for s in feed._streams(market, symbols, templates)]
    return out


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_binance_feed_stream_selection_is_disjoint_and_complete(n):
    everything = _feed_streams("")
    parts = [_feed_streams(f"{i}/{n}") for i in range(n)]
    merged = [s for part in parts for s in part]
    assert sorted(merged) == sorted(everything)
    assert len(set(merged)) == len(merged)
