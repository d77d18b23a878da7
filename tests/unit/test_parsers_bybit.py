"""Bybit v5 parsers against the documented payloads, plus the feed's order-book rules."""
from __future__ import annotations

import dataclasses
import math
from datetime import datetime, timezone

import pytest

from collector.exchanges.bybit import parsers
from collector.exchanges.bybit.feed import BybitFeed
from collector.orderbook import OrderBook
from common.schema import Funding, OpenInterest, Ticker, ms_to_dt
from common.settings import Settings
from tests.conftest import load_jsonl
from tests.support.feed_helpers import offline_context

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _pinned(record, **expected):
    """Every field of ``record`` equals ``expected`` (exact; floats to 1e-12 relative)."""
    actual = {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
    assert set(actual) == set(expected), set(actual) ^ set(expected)
    for name, want in expected.items():
        got = actual[name]
        if isinstance(want, float) and isinstance(got, float):
            assert math.isclose(got, want, rel_tol=1e-12), (name, got, want)
        else:
            assert got == want and type(got) is type(want), (name, got, want)


def _base(market, ts_ms, symbol="BTCUSDT", pair="BTC/USDT"):
    return dict(exchange="bybit", symbol=symbol, pair=pair, market=market,
                ts=ms_to_dt(ts_ms), received_at=NOW)


# ---- trades ----------------------------------------------------------------------------------
def test_public_trade_linear_buy():
    [trade] = parsers.parse_trades(load_jsonl("bybit/publicTrade.jsonl")[0], "perp", NOW)
    _pinned(trade, **_base("perp", 1672304486865), trade_id="20f43950-d8dd-5b31-9112-a178eb6023af",
            price=16578.5, size=0.001, side="buy")


def test_public_trade_spot_sell():
    msg = load_jsonl("bybit/publicTrade_spot_sell.constructed.jsonl")[0]
    [trade] = parsers.parse_trades(msg, "spot", NOW)
    _pinned(trade, **_base("spot", 1672304486865), trade_id="2290000000007152601",
            price=16578.43, size=0.0125, side="sell")


def test_rest_recent_trade_spot_buy():
    payload = load_jsonl("bybit/rest_recent_trade.jsonl")[0]
    [trade] = parsers.parse_rest_trades(payload, "spot", NOW)
    _pinned(trade, **_base("spot", 1672052955758), trade_id="2100000000007764263",
            price=16618.49, size=0.00012, side="buy")
    with pytest.raises(ValueError):
        parsers.parse_rest_trades({"retCode": 10002, "retMsg": "params error"}, "spot", NOW)


def test_rest_recent_trade_linear_sell():
    payload = load_jsonl("bybit/rest_recent_trade_linear_sell.constructed.jsonl")[0]
    [trade] = parsers.parse_rest_trades(payload, "perp", NOW)
    _pinned(trade, **_base("perp", 1760352369000),
            trade_id="b1b8a3f0-7a1c-5d2e-9a55-5c0f64c4c1de", price=114890.1, size=0.251,
            side="sell")


# ---- tickers, funding, open interest ---------------------------------------------------------
def test_spot_ticker_has_no_bid_ask():
    msg = load_jsonl("bybit/tickers_spot_snapshot.jsonl")[0]
    fields, [ticker] = parsers.parse_ticker(msg, "spot", NOW)
    _pinned(ticker, **_base("spot", 1673853746003), last=21109.77, bid=None, bid_size=None,
            ask=None, ask_size=None, open_24h=20704.93, high_24h=21426.99, low_24h=20575.0,
            volume_24h=6780.866843, quote_volume_24h=141946527.22907118, change_pct_24h=1.96,
            mark_price=None, index_price=None)


LINEAR_TICKER = dict(last=17216.0, bid=17215.5, bid_size=84.489, ask=17216.0, ask_size=83.02,
                     open_24h=16926.5, high_24h=17281.5, low_24h=16915.0, volume_24h=91705.276,
                     quote_volume_24h=1570383121.943499, change_pct_24h=1.7103,
                     mark_price=17217.33, index_price=17227.36)
LINEAR_FUNDING = dict(rate=-0.000212, next_funding_time=ms_to_dt(1673280000000),
                      predicted_rate=None, mark_price=17217.33, index_price=17227.36,
                      interval_hours=8.0)


def test_linear_ticker_snapshot():
    snapshot = load_jsonl("bybit/tickers_linear_snapshot.constructed.jsonl")[0]
    fields, (ticker, funding, oi) = parsers.parse_ticker(snapshot, "perp", NOW)
    _pinned(ticker, **_base("perp", 1673272861686), **LINEAR_TICKER)
    _pinned(funding, **_base("perp", 1673272861686), **LINEAR_FUNDING)
    # one side (singleOpenInterest), not the two-sided openInterest 68744.761
    _pinned(oi, **_base("perp", 1673272861686), open_interest=34372.3805,
            open_interest_value=591800617.955)


def test_linear_ticker_partial_deltas_are_merged():
    snapshot = load_jsonl("bybit/tickers_linear_snapshot.constructed.jsonl")[0]
    delta = load_jsonl("bybit/tickers_linear_delta.constructed.jsonl")[0]
    single = load_jsonl("bybit/tickers_linear_delta_single_oi.constructed.jsonl")[0]
    fields, _ = parsers.parse_ticker(snapshot, "perp", NOW)
    merged, (ticker, funding, oi) = parsers.parse_ticker(delta, "perp", NOW, fields)
    # the delta's fields change, everything else is the snapshot's
    _pinned(ticker, **_base("perp", 1673272861786), **dict(LINEAR_TICKER, bid=17215.0,
                                                           bid_size=1.5))
    _pinned(funding, **_base("perp", 1673272861786), **dict(LINEAR_FUNDING, rate=-0.0002))
    _pinned(oi, **_base("perp", 1673272861786), open_interest=34372.3805,
            open_interest_value=591800617.955)       # openInterest changed, one side did not
    assert fields["bid1Price"] == "17215.50"      # the previous state is not mutated
    _, (_, _, oi) = parsers.parse_ticker(single, "perp", NOW, merged)
    _pinned(oi, **_base("perp", 1673272861886), open_interest=34375.0005,
            open_interest_value=591846905.12)


def test_ticker_delta_without_snapshot_raises_and_merge_waits_for_the_snapshot():
    delta = load_jsonl("bybit/tickers_linear_delta.constructed.jsonl")[0]
    with pytest.raises(ValueError):
        parsers.parse_ticker(delta, "perp", NOW)
    merge = parsers.TickerMerge()
    assert merge.parse(delta, "perp", NOW) == []
    snapshot = load_jsonl("bybit/tickers_linear_snapshot.constructed.jsonl")[0]
    assert len(merge.parse(snapshot, "perp", NOW)) == 3
    [ticker, *_] = merge.parse(delta, "perp", NOW)
    assert ticker.bid == 17215.0 and ticker.ask == 17216.0
    merge.forget("perp", ["BTCUSDT"])
    assert merge.parse(delta, "perp", NOW) == []


def test_ticker_snapshot_replaces_the_previous_state():
    """A snapshot is the whole state: a field it lacks is not carried over from the merged state
    (here the pre-2026-06 sample after one with singleOpenInterest: no stale open interest)."""
    snapshot = load_jsonl("bybit/tickers_linear_snapshot.constructed.jsonl")[0]
    fields, _ = parsers.parse_ticker(snapshot, "perp", NOW)
    old = load_jsonl("bybit/tickers.jsonl")[2]
    merged, (ticker, funding) = parsers.parse_ticker(old, "perp", NOW, fields)
    _pinned(ticker, **_base("perp", 1673272861686), **LINEAR_TICKER)
    _pinned(funding, **_base("perp", 1673272861686), **LINEAR_FUNDING)
    assert "singleOpenInterest" not in merged and "fundingCap" not in merged


def test_lacks_single_open_interest():
    # the pre-2026-06 linear sample has the two-sided openInterest only
    assert parsers.lacks_single_open_interest(load_jsonl("bybit/tickers.jsonl")[2]["data"]) is True
    snapshot = load_jsonl("bybit/tickers_linear_snapshot.constructed.jsonl")[0]["data"]
    assert parsers.lacks_single_open_interest(snapshot) is False
    # spot tickers carry no open interest at all: nothing is missing
    spot = load_jsonl("bybit/tickers_spot_snapshot.jsonl")[0]["data"]
    assert parsers.lacks_single_open_interest(spot) is False


def test_rest_linear_ticker():
    payload = load_jsonl("bybit/rest_tickers_linear.constructed.jsonl")[0]
    ticker, funding, oi = parsers.parse_rest_ticker(payload, "perp", NOW)
    base = _base("perp", 1760352369814)
    _pinned(ticker, **base, last=114890.1, bid=114890.0, bid_size=12.554, ask=114890.1,
            ask_size=3.217, open_24h=105595.9, high_24h=116309.3, low_24h=102007.6,
            volume_24h=81234.567, quote_volume_24h=9123456789.1234, change_pct_24h=8.8025,
            mark_price=114898.43, index_price=114890.92)
    _pinned(funding, **base, rate=0.0001, next_funding_time=ms_to_dt(1760371200000),
            predicted_rate=None, mark_price=114898.43, index_price=114890.92,
            interval_hours=8.0)
    _pinned(oi, **base, open_interest=26095.221, open_interest_value=2998305736.54)


def test_rest_ticker_without_single_open_interest_and_spot():
    # the inverse sample predates singleOpenInterest: no record rather than a doubled one
    inverse = load_jsonl("bybit/rest_tickers.jsonl")[0]
    assert [type(r) for r in parsers.parse_rest_ticker(inverse, "perp", NOW)] == [Ticker, Funding]
    [ticker] = parsers.parse_rest_ticker(load_jsonl("bybit/rest_tickers.jsonl")[2], "spot", NOW)
    _pinned(ticker, **_base("spot", 1673859087947), last=20533.13, bid=20517.96, bid_size=2.0,
            ask=20527.77, ask_size=1.862172, open_24h=20393.48, high_24h=21128.12,
            low_24h=20318.89, volume_24h=11801.27771, quote_volume_24h=243765620.65899866,
            change_pct_24h=0.68, mark_price=None, index_price=None)


# ---- klines ----------------------------------------------------------------------------------
def test_kline_running():
    [candle] = parsers.parse_kline(load_jsonl("bybit/kline.jsonl")[0], "spot", NOW)
    _pinned(candle, **_base("spot", 1672324800000), interval="5m", open=16649.5, high=16677.0,
            low=16608.0, close=16677.0, volume=2.081, quote_volume=34666.4005, trades=None,
            closed=False, source="exchange")


def test_kline_confirmed_is_closed():
    msg = load_jsonl("bybit/kline_confirmed.constructed.jsonl")[0]
    [candle] = parsers.parse_kline(msg, "perp", NOW)
    _pinned(candle, **_base("perp", 1672324800000), interval="1m", open=16649.5, high=16680.5,
            low=16608.0, close=16677.0, volume=2.081, quote_volume=34666.4005, trades=None,
            closed=True, source="exchange")


def test_rest_kline_newest_first_and_only_ended_candles_closed():
    payload = load_jsonl("bybit/rest_kline.jsonl")[0]          # hourly rows, newest first
    candles = parsers.parse_rest_klines(payload, "BTCUSD", "perp", "60", NOW)
    assert [c.ts for c in candles] == [ms_to_dt(1670601600000), ms_to_dt(1670605200000),
                                       ms_to_dt(1670608800000)]
    _pinned(candles[-1], **_base("perp", 1670608800000, "BTCUSD", "BTC/USD"), interval="1h",
            open=17071.0, high=17073.0, low=17027.0, close=17055.5, volume=268611.0,
            quote_volume=15.74462667, trades=None, closed=True, source="exchange")
    _pinned(candles[0], **_base("perp", 1670601600000, "BTCUSD", "BTC/USD"), interval="1h",
            open=17086.5, high=17088.0, low=16978.0, close=17071.5, volume=6356.0,
            quote_volume=0.37288112, trades=None, closed=True, source="exchange")
    # the server time inside the newest hour: that candle is still forming
    payload["time"] = 1670608800000 + 59 * 60_000
    assert [c.closed for c in parsers.parse_rest_klines(payload, "BTCUSD", "perp", "60", NOW)] \
        == [True, True, False]
    payload["time"] = 1670608800000 + 60 * 60_000
    assert parsers.parse_rest_klines(payload, "BTCUSD", "perp", "60", NOW)[-1].closed


MONDAY_MS = 1760313600000        # 2025-10-13 00:00 UTC: every interval, weekly included, starts here


def rest_kline(rows, server_ms, symbol="BTCUSDT", category="linear"):
    """A ``GET /v5/market/kline`` answer (RKL shape: string rows, newest first)."""
    return {"retCode": 0, "retMsg": "OK",
            "result": {"symbol": symbol, "category": category, "list": rows},
            "retExtInfo": {}, "time": server_ms}


def test_rest_kline_one_minute_backfill_rows():
    """The interval the feed backfills ("1"): values pinned, the running minute not closed."""
    rows = [[str(MONDAY_MS + 60_000), "114895.3", "114897.0", "114890.1", "114890.1", "0.812",
             "93291.6412"],
            [str(MONDAY_MS), "114880.0", "114902.5", "114871.4", "114895.3", "12.345",
             "1418372.11"]]
    older, newer = parsers.parse_rest_klines(rest_kline(rows, MONDAY_MS + 60_000 + 59_999),
                                             "BTCUSDT", "perp", "1", NOW)
    _pinned(older, **_base("perp", MONDAY_MS), interval="1m", open=114880.0, high=114902.5,
            low=114871.4, close=114895.3, volume=12.345, quote_volume=1418372.11, trades=None,
            closed=True, source="exchange")
    _pinned(newer, **_base("perp", MONDAY_MS + 60_000), interval="1m", open=114895.3,
            high=114897.0, low=114890.1, close=114890.1, volume=0.812, quote_volume=93291.6412,
            trades=None, closed=False, source="exchange")


@pytest.mark.parametrize("interval,name,span_ms", [
    ("1", "1m", 60_000), ("3", "3m", 180_000), ("5", "5m", 300_000), ("15", "15m", 900_000),
    ("30", "30m", 1_800_000), ("60", "1h", 3_600_000), ("120", "2h", 7_200_000),
    ("240", "4h", 14_400_000), ("360", "6h", 21_600_000), ("720", "12h", 43_200_000),
    ("D", "1d", 86_400_000), ("W", "1w", 604_800_000),
])
def test_rest_kline_closes_exactly_when_its_interval_ends(interval, name, span_ms):
    """REST rows have no confirm flag: closed is derived from the interval's span."""
    rows = [[str(MONDAY_MS), "114880.0", "114902.5", "114871.4", "114895.3", "12.345",
             "1418372.11"]]
    for server_ms, closed in ((MONDAY_MS + span_ms - 1, False), (MONDAY_MS + span_ms, True)):
        [candle] = parsers.parse_rest_klines(rest_kline(rows, server_ms), "BTCUSDT", "perp",
                                             interval, NOW)
        assert (candle.ts, candle.interval, candle.closed) == (ms_to_dt(MONDAY_MS), name, closed)


def test_topic_parts_channel_and_symbol():
    assert parsers.topic_parts({"topic": "orderbook.200.BTCUSDT"}) == ("orderbook", "BTCUSDT")
    assert parsers.topic_parts({"topic": "kline.1.BTCUSDT"}) == ("kline", "BTCUSDT")
    for topic in ("BTCUSDT", None):          # no channel prefix / not text: not a data topic
        with pytest.raises(ValueError):
            parsers.topic_parts({"topic": topic})


# ---- order book ------------------------------------------------------------------------------
def test_orderbook_delta_message():
    book = parsers.parse_orderbook(load_jsonl("bybit/orderbook.jsonl")[0])
    assert (book.symbol, book.snapshot, book.update_id, book.seq, book.ts) == \
        ("BTCUSDT", False, 177400507, 66544703342, ms_to_dt(1687940967466))
    assert book.bids == [(30247.2, 30.028), (30245.4, 0.224), (30242.1, 1.593),
                         (30240.3, 1.305), (30240.0, 0.0)]
    assert book.asks == [(30248.7, 0.0), (30249.3, 0.892), (30249.5, 1.778), (30249.6, 0.0),
                         (30251.9, 2.947), (30252.2, 0.659), (30252.5, 4.591)]


def test_orderbook_snapshot_message():
    msg = load_jsonl("bybit/orderbook_snapshot.constructed.jsonl")[0]
    book = parsers.parse_orderbook(msg)
    assert (book.symbol, book.snapshot, book.update_id, book.seq, book.ts) == \
        ("BTCUSDT", True, 177400506, 66544703340, ms_to_dt(1687940967400))
    assert book.bids == [(30247.2, 1.0), (30245.4, 0.224), (30240.0, 2.5)]
    assert book.asks == [(30248.7, 0.33), (30249.6, 0.75), (30251.9, 2.947)]


def test_apply_delta_fast_path():
    """The synced-book hot path: sizes overwrite, "0" deletes (the top ask moves), new prices
    insert; a duplicate or older update id is not applied."""
    snap = parsers.parse_orderbook(load_jsonl("bybit/orderbook_snapshot.constructed.jsonl")[0])
    book = OrderBook(200)
    book.load_snapshot(snap.bids, snap.asks, snap.update_id)
    delta = load_jsonl("bybit/orderbook.jsonl")[0]["data"]
    assert parsers.apply_delta(book, delta, 200) is True
    assert book.update_id == 177400507
    assert book.bids.top(10) == [[30247.2, 30.028], [30245.4, 0.224], [30242.1, 1.593],
                                 [30240.3, 1.305]]
    assert book.asks.top(10) == [[30249.3, 0.892], [30249.5, 1.778], [30251.9, 2.947],
                                 [30252.2, 0.659], [30252.5, 4.591]]
    before = (book.bids.top(10), book.asks.top(10))
    assert parsers.apply_delta(book, dict(delta, b=[["1", "1"]]), 200) is False   # same u
    assert parsers.apply_delta(book, dict(delta, u=5, b=[["1", "1"]]), 200) is False
    assert (book.bids.top(10), book.asks.top(10)) == before and book.update_id == 177400507
    assert parsers.apply_delta(book, dict(delta, u=177400600, b=[], a=[]), 2) is True
    assert len(book.asks) == 2 and book.update_id == 177400600       # truncated to depth


def test_apply_delta_needs_a_loaded_book():
    """A delta before any snapshot is not applied (the feed resyncs instead)."""
    book = OrderBook(200)
    delta = load_jsonl("bybit/orderbook.jsonl")[0]["data"]
    assert parsers.book_update_id(delta) == 177400507
    assert parsers.apply_delta(book, delta, 200) is False
    assert book.update_id is None and len(book.bids) == 0 and len(book.asks) == 0


@pytest.mark.parametrize("mutate", [
    lambda m: m.pop("data"),
    lambda m: m["data"].pop("u"),
    lambda m: m.__setitem__("type", "weird"),
    lambda m: m["data"].__setitem__("b", [["x", "1"]]),
])
def test_malformed_orderbook_raises(mutate):
    msg = load_jsonl("bybit/orderbook.jsonl")[0]
    mutate(msg)
    with pytest.raises((KeyError, ValueError, TypeError)):
        parsers.parse_orderbook(msg)


def test_malformed_trade_raises():
    msg = load_jsonl("bybit/publicTrade.jsonl")[0]
    msg["data"][0]["S"] = "Up"
    with pytest.raises(KeyError):
        parsers.parse_trades(msg, "spot", NOW)
    msg["data"][0]["S"] = "Sell"
    msg["data"][0]["p"] = None
    with pytest.raises(TypeError):
        parsers.parse_trades(msg, "spot", NOW)


# ---- order-book rules in the feed ------------------------------------------------------------
def book_msg(kind: str, u: int, bids, asks, symbol="BTCUSDT"):
    return {"topic": f"orderbook.200.{symbol}", "type": kind, "ts": 1687940967466,
            "data": {"s": symbol, "b": bids, "a": asks, "u": u, "seq": u * 10},
            "cts": 1687940967464}


def feed() -> BybitFeed:
    return BybitFeed(Settings().bybit, offline_context())


async def test_book_snapshot_delta_reset_and_backwards_u():
    f = feed()
    f.on_book("perp", book_msg("snapshot", 100, [["100.0", "1"], ["99.5", "2"]],
                                      [["100.5", "3"], ["101.0", "4"]]))
    book = f.books[("perp", "BTCUSDT")]
    assert book.synced and book.update_id == 100
    f.on_book("perp", book_msg("delta", 101, [["100.0", "0"], ["99.8", "5"]],
                                      [["100.2", "1"], ["555", "0"]]))
    assert book.best_bid() == (99.8, 5.0) and book.best_ask() == (100.2, 1.0)
    assert book.bids.top(5) == [[99.8, 5.0], [99.5, 2.0]] and book.update_id == 101
    # u == 1 snapshot after a service restart resets the book
    f.on_book("perp", book_msg("snapshot", 1, [["90", "1"]], [["91", "1"]]))
    assert book.synced and book.update_id == 1 and book.bids.top(5) == [[90.0, 1.0]]
    f.on_book("perp", book_msg("delta", 2, [["90.5", "2"]], []))
    assert book.best_bid() == (90.5, 2.0)
    # u going backwards: this symbol resyncs, deltas are ignored until a snapshot
    f.on_book("perp", book_msg("delta", 1, [["95", "1"]], []))
    assert not book.synced and f.stats.gaps == 1 and f.stats.resyncs == 0
    gap = f.gaps.find_open("bybit", "perp", "BTCUSDT", "book")
    assert gap.cause == "sequence_gap" and f.book_states()["perp:BTCUSDT"]["state"] == "resyncing"
    f.on_book("perp", book_msg("delta", 3, [["95", "1"]], []))
    assert not book.synced and f.stats.gaps == 1
    f.on_book("perp", book_msg("snapshot", 10, [["96", "1"]], [["97", "1"]]))
    assert book.synced and book.update_id == 10 and f.stats.resyncs == 1
    assert gap.end is not None and f.gaps.find_open("bybit", "perp", "BTCUSDT", "book") is None


async def test_delta_before_snapshot_resyncs_and_depth_is_truncated():
    f = feed()
    f.on_book("spot", book_msg("delta", 5, [["1", "1"]], []))
    assert f.stats.gaps == 1 and not f.books[("spot", "BTCUSDT")].synced
    bids = [[str(1000 - i), "1"] for i in range(250)]
    asks = [[str(1001 + i), "1"] for i in range(250)]
    f.on_book("spot", book_msg("snapshot", 6, bids, asks))
    book = f.books[("spot", "BTCUSDT")]
    assert book.synced and f.stats.resyncs == 1
    assert len(book.bids) == 200 and len(book.asks) == 200
    f.on_book("spot", book_msg("delta", 7, [["1000.5", "1"]], [["1000.7", "1"]]))
    assert len(book.bids) == 200 and book.bids.top(1) == [[1000.5, 1.0]]


def test_ticker_without_single_open_interest_stores_no_open_interest():
    f = feed()
    f.on_ticker("perp", load_jsonl("bybit/tickers.jsonl")[2], NOW)     # pre-2026-06 sample
    assert not f.writer.of(OpenInterest) and len(f.writer.of(Funding)) == 1
    assert list(f.stats.errors) == ["perp tickers.BTCUSDT: no singleOpenInterest; "
                                    "open interest (both sides) not stored"]


@pytest.mark.parametrize("fixture,topics", [
    ("error_spot_invalid_symbol.jsonl", ["kline.1.NOTREALUSDT"]),
    ("error_spot_invalid_symbol_no_req_id.jsonl", ["orderbook.50.NOTREALUSDT"]),
    ("error_linear_handler_not_found.jsonl", ["orderbook.1.NOPEUSDT"]),
    ("error_linear_already_subscribed.jsonl", ["allLiquidation.ORDERUSDT"]),
    ("error.jsonl", ["invalid.topic.BTCUSDT"]),
    ("error_spot_args_size.jsonl", []),
])
def test_rejected_topics(fixture, topics):
    assert parsers.rejected_topics(load_jsonl(f"bybit/{fixture}")[0]["ret_msg"]) == topics
    assert parsers.rejected_topics("Invalid symbol :[tickers.AUSDT, kline.1.AUSDT]") == \
        ["tickers.AUSDT", "kline.1.AUSDT"]


def test_rest_not_supported_symbols_is_its_own_error():
    payload = load_jsonl("bybit/rest_not_supported_symbols.jsonl")[0]
    for parse in (lambda: parsers.parse_rest_trades(payload, "spot", NOW),
                  lambda: parsers.parse_rest_ticker(payload, "perp", NOW),
                  lambda: parsers.check_response(payload)):
        with pytest.raises(parsers.NotSupportedSymbol) as info:
            parse()
        # the text is the (market, symbol) unavailability reason the feed records
        assert str(info.value) == "retCode 10001: Not supported symbols"
    with pytest.raises(ValueError) as info:
        parsers.check_response({"retCode": 10001, "retMsg": "params error"})
    assert not isinstance(info.value, parsers.NotSupportedSymbol)


async def test_spot_ticker_filled_from_live_book():
    f = feed()
    f.on_book("spot", book_msg("snapshot", 1, [["21109.5", "0.7"]], [["21110", "0.2"]]))
    f.on_ticker("spot", load_jsonl("bybit/tickers.jsonl")[1], NOW)
    [ticker] = f.writer.of(Ticker)
    assert (ticker.bid, ticker.bid_size, ticker.ask, ticker.ask_size) == (21109.5, 0.7, 21110, 0.2)


def test_heartbeat_policy_and_urls():
    f = feed()
    conns = f.build_connections()
    assert [c.url for c in conns] == ["wss://stream.bybit.com/v5/public/spot",
                                      "wss://stream.bybit.com/v5/public/linear"]
    for conn in conns:
        assert conn.heartbeat.app_ping() == '{"op":"ping"}'
        assert conn.heartbeat.app_ping_interval_s == 20
    pong = load_jsonl("bybit/pong.jsonl")[0]
    import orjson
    assert f.handle(conns[0], orjson.dumps(pong)) is False
    assert f.handle(conns[0], b"not json") is True and f.stats.malformed == 1
