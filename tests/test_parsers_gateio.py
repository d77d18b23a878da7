"""Gate.io parsers against documented payloads (tests/fixtures/gateio) and book-sync rules."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import orjson
import pytest

from collector.booksync import Diff, Outcome, SnapshotDiffSync
from collector.exchanges.gateio import parsers as p
from collector.orderbook import OrderBook

FIX = Path(__file__).parent / "fixtures" / "gateio"
NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def lines(name: str) -> list:
    return [orjson.loads(line) for line in (FIX / name).read_text().splitlines() if line.strip()]


def test_spot_ticker():
    t = p.parse_spot_ticker(lines("spot_tickers.jsonl")[-1], NOW)
    assert (t.symbol, t.pair, t.market) == ("BTC_USDT", "BTC/USDT", "spot")
    assert (t.last, t.ask, t.bid) == (15743.4, 15744.4, 15743.5)
    assert (t.volume_24h, t.quote_volume_24h) == (9110.473081735, 145082083.2535)
    assert (t.change_pct_24h, t.high_24h, t.low_24h) == (-1.8254, 16280.9, 15468.5)
    assert t.ts == datetime.fromtimestamp(1669107766.406, tz=timezone.utc)


def test_spot_trade():
    t = p.parse_spot_trade(lines("spot_trades.jsonl")[-1], NOW)
    assert (t.symbol, t.trade_id, t.side, t.price, t.size) == ("GT_USDT", "309143071", "sell",
                                                               0.4705, 16.47)
    assert t.ts == datetime.fromtimestamp(1606292218.213, tz=timezone.utc)


def test_spot_candle():
    c = p.parse_spot_candle(lines("spot_candlesticks.jsonl")[-1], NOW)
    assert (c.symbol, c.interval, c.open, c.close, c.volume, c.quote_volume, c.closed) == (
        "BTC_USDT", "1m", 19128.1, 19128.1, 3.8283, 2362.32035, True)
    assert c.ts == datetime.fromtimestamp(1606292580, tz=timezone.utc)
    old = p.parse_spot_candle(lines("spot_candlesticks.jsonl")[2], NOW)
    assert old.volume is None and old.quote_volume == 20.54344 and old.closed is False


def test_spot_book_update_full():
    symbol, first, last, bids, asks, full = p.parse_spot_book_update(
        lines("spot_order_book_update_doc.jsonl")[0])
    assert (symbol, first, last, full) == ("BTC_USDT", 48776301, 48776306, True)
    assert bids == [(19137.74, 0.0001), (19088.37, 0.0)] and asks == [(19137.75, 0.6135)]


def test_futures_units_are_base():
    mult = {"BTC_USD": 0.0001}
    symbol, first, last, bids, asks, full = p.parse_futures_book_update(
        lines("futures_order_book_update_doc.jsonl")[0], 0.0001)
    assert (symbol, first, last, full) == ("BTC_USD", 2517661101, 2517661113, False)
    assert bids[1] == (54664.5, pytest.approx(5.8794)) and asks[0] == (54743.6, 0.0)
    msg = lines("futures_trades.jsonl")[0]
    # the documented example is an insurance-fund (is_internal) trade: not a market trade
    assert p.parse_futures_trades(msg, NOW, mult) == []
    msg["result"][0]["is_internal"] = False
    (t,) = p.parse_futures_trades(msg, NOW, mult)
    assert (t.side, t.size, t.price, t.trade_id) == ("sell", pytest.approx(0.0108), 96.4,
                                                     "27753479")
    ((ticker, funding),) = p.parse_futures_tickers(lines("futures_tickers.jsonl")[0], NOW, mult)
    assert (ticker.last, ticker.mark_price, ticker.index_price, ticker.volume_24h) == (
        118.4, 118.35, 118.36, 5526.0)
    assert funding.rate == -0.000114
    (stats,) = p.parse_contract_stats(lines("futures_contract_stats.jsonl")[0], NOW,
                                      {"BTC_USDT": 0.0001})
    assert stats.open_interest == pytest.approx(12.4724) and stats.open_interest_value == 1511
    assert stats.ts == datetime.fromtimestamp(1603865400, tz=timezone.utc)
    (c,) = p.parse_futures_candles(lines("futures_candlesticks.jsonl")[1], NOW, mult)
    assert (c.symbol, c.open, c.high, c.volume) == ("BTC_USD", 94.3, 96.9,
                                                    pytest.approx(2752.5555))


def test_contract_info():
    info = p.parse_contract({"name": "BTC_USDT", "quanto_multiplier": "0.0001",
                             "funding_interval": 28800, "funding_next_apply": 1700000000})
    assert info["multiplier"] == 0.0001 and info["interval_hours"] == 8.0
    assert info["next_funding_time"] == datetime.fromtimestamp(1700000000, tz=timezone.utc)


def test_malformed_raises():
    with pytest.raises(Exception):
        p.parse_spot_trade({"result": {"currency_pair": "BTC_USDT", "side": "x"}}, NOW)
    with pytest.raises(Exception):
        p.parse_futures_tickers({"result": [{"contract": "BTC_USDT"}]}, NOW, {"BTC_USDT": 1.0})


def diff(first, last, bids=(), asks=()):
    return Diff(first, last, None, list(bids), list(asks))


def test_book_sync_gap_detected():
    sync = SnapshotDiffSync(OrderBook(100), use_prev_id=False)
    assert sync.on_diff(diff(95, 101, bids=[(10.0, 1.0)])) is Outcome.BUFFERED
    assert sync.on_diff(diff(102, 103, asks=[(11.0, 1.0)])) is Outcome.BUFFERED
    assert sync.on_snapshot([(9.0, 2.0)], [(12.0, 2.0)], 100) is Outcome.SYNCED
    assert sync.book.update_id == 103 and sync.book.best_bid() == (10.0, 1.0)
    assert sync.on_diff(diff(104, 104)) is Outcome.APPLIED
    assert sync.on_diff(diff(106, 107)) is Outcome.GAP     # 105 missing
    assert sync.on_diff(diff(90, 100)) is Outcome.STALE


def rest(name: str):
    return orjson.loads((FIX / name).read_bytes())


def test_rest_spot_trades_match_the_stream_fields():
    trades = p.parse_rest_spot_trades(rest("rest_spot_trades.json"), NOW)
    assert [(t.trade_id, t.side, t.price, t.size) for t in trades] == [
        ("1232893232", "buy", 32.2, 0.15), ("1232893230", "sell", 32.1, 0.5)]
    assert trades[0].ts == datetime.fromtimestamp(1548000000.123, tz=timezone.utc)  # ms (BSON)


def test_rest_spot_candles_use_the_window_closed_flag():
    (c,) = p.parse_rest_spot_candles(rest("rest_spot_candlesticks.json"), "BTC_USDT", NOW)
    assert (c.open, c.high, c.low, c.close) == (0.0021737, 0.0021922, 0.0021724, 0.0021724)
    assert (c.volume, c.quote_volume, c.closed, c.interval) == (44.2, 971519.677, True, "1m")
    assert c.ts == datetime.fromtimestamp(1539852480, tz=timezone.utc)


def test_rest_futures_trades_skip_internal_and_convert_contracts():
    trades = p.parse_rest_futures_trades(rest("rest_futures_trades.json"), NOW,
                                         {"BTC_USDT": 0.0001})
    assert [t.trade_id for t in trades] == ["121234231", "121234229"]
    assert (trades[0].side, trades[0].size) == ("sell", pytest.approx(0.01))
    assert (trades[1].side, trades[1].size) == ("buy", pytest.approx(0.004))


def test_rest_futures_candles_leave_out_the_running_one():
    late = datetime(2030, 1, 1, tzinfo=timezone.utc)
    body = rest("rest_futures_candlesticks.json")
    # the newest row is the running candle unless its minute is over by the local clock
    (c,) = p.parse_rest_futures_candles(body, "BTC_USDT", datetime.fromtimestamp(
        1539852560, tz=timezone.utc), {"BTC_USDT": 0.0001})
    assert (c.open, c.close, c.closed) == (1.032, 1.032, True)
    assert (c.volume, c.quote_volume) == (pytest.approx(9.7151), 3580.0)
    assert len(p.parse_rest_futures_candles(body, "BTC_USDT", late, {"BTC_USDT": 0.0001})) == 2


def test_rest_contract_stats_and_funding():
    (oi,) = p.parse_rest_contract_stats(rest("rest_contract_stats.json"), "BTC_USDT", NOW,
                                        {"BTC_USDT": 0.0001})
    assert (oi.symbol, oi.open_interest, oi.open_interest_value) == (
        "BTC_USDT", pytest.approx(12.4724), 1020000)
    assert oi.ts == datetime.fromtimestamp(1603865400, tz=timezone.utc)
    funding = p.parse_contract_funding({
        "name": "BTC_USDT", "quanto_multiplier": "0.0001", "funding_rate": "0.0001",
        "funding_interval": 28800, "funding_next_apply": 1700000000, "mark_price": "50000.1",
        "index_price": "50001"}, NOW)
    assert (funding.rate, funding.interval_hours, funding.mark_price, funding.index_price) == (
        0.0001, 8.0, 50000.1, 50001.0)
    assert funding.next_funding_time == datetime.fromtimestamp(1700000000, tz=timezone.utc)
