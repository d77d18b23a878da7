"""Bybit v5 parsers against the documented payloads, plus the feed's order-book rules."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from collector.exchanges.bybit import parsers
from collector.exchanges.bybit.feed import BybitFeed
from common.schema import Funding, OpenInterest, Ticker, Trade, ms_to_dt
from common.settings import Settings
from tests.conftest import load_jsonl
from tests.feed_helpers import offline_context

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def test_public_trade():
    msg = load_jsonl("bybit/publicTrade.jsonl")[0]
    [trade] = parsers.parse_trades(msg, "perp", NOW)
    assert isinstance(trade, Trade)
    assert (trade.exchange, trade.symbol, trade.pair, trade.market) == \
        ("bybit", "BTCUSDT", "BTC/USDT", "perp")
    assert trade.price == 16578.5 and trade.size == 0.001 and trade.side == "buy"
    assert trade.trade_id == "20f43950-d8dd-5b31-9112-a178eb6023af"
    assert trade.ts == ms_to_dt(1672304486865) and trade.received_at == NOW


def test_spot_ticker_has_no_bid_ask():
    msg = load_jsonl("bybit/tickers.jsonl")[1]
    fields, [ticker] = parsers.parse_ticker(msg, "spot", NOW)
    assert ticker.last == 21109.77 and ticker.bid is None and ticker.ask is None
    assert ticker.volume_24h == 6780.866843 and ticker.quote_volume_24h == 141946527.22907118
    assert ticker.open_24h == 20704.93 and ticker.high_24h == 21426.99 and ticker.low_24h == 20575
    assert ticker.change_pct_24h == pytest.approx(1.96)
    assert ticker.ts == ms_to_dt(1673853746003)


def test_linear_ticker_snapshot_then_partial_delta_is_merged():
    snapshot = load_jsonl("bybit/tickers_linear_snapshot.constructed.jsonl")[0]
    delta = load_jsonl("bybit/tickers_linear_delta.constructed.jsonl")[0]
    fields, records = parsers.parse_ticker(snapshot, "perp", NOW)
    ticker, funding, oi = records
    assert ticker.bid == 17215.5 and ticker.ask == 17216.0 and ticker.ask_size == 83.02
    assert ticker.mark_price == 17217.33 and ticker.index_price == 17227.36
    assert ticker.volume_24h == 91705.276 and ticker.quote_volume_24h == 1570383121.943499
    assert isinstance(funding, Funding) and funding.rate == -0.000212
    assert funding.next_funding_time == ms_to_dt(1673280000000) and funding.interval_hours == 8
    # one side (singleOpenInterest), not the two-sided openInterest 68744.761
    assert isinstance(oi, OpenInterest) and oi.open_interest == 34372.3805
    assert oi.open_interest_value == 591800617.955

    merged, records = parsers.parse_ticker(delta, "perp", NOW, fields)
    ticker, funding, oi = records
    # changed fields from the delta ...
    assert ticker.bid == 17215.0 and ticker.bid_size == 1.5
    assert funding.rate == -0.0002 and oi.open_interest == 34372.3805   # single unchanged
    # ... everything else unchanged from the snapshot
    assert ticker.ask == 17216.0 and ticker.last == 17216.0 and ticker.mark_price == 17217.33
    assert funding.next_funding_time == ms_to_dt(1673280000000)
    assert ticker.ts == ms_to_dt(1673272861786)
    assert fields["bid1Price"] == "17215.50"      # the previous state is not mutated


def test_ticker_delta_without_snapshot_raises():
    delta = load_jsonl("bybit/tickers_linear_delta.constructed.jsonl")[0]
    with pytest.raises(ValueError):
        parsers.parse_ticker(delta, "perp", NOW)


def test_kline():
    msg = load_jsonl("bybit/kline.jsonl")[0]
    [candle] = parsers.parse_kline(msg, "spot", NOW)
    assert candle.interval == "5m" and candle.ts == ms_to_dt(1672324800000)
    assert (candle.open, candle.high, candle.low, candle.close) == (16649.5, 16677, 16608, 16677)
    assert candle.volume == 2.081 and candle.quote_volume == 34666.4005
    assert candle.closed is False
    msg["data"][0]["confirm"] = True
    assert parsers.parse_kline(msg, "spot", NOW)[0].closed is True


def test_rest_ticker_fallback():
    payload = load_jsonl("bybit/rest_tickers_linear.constructed.jsonl")[0]
    ticker, funding, oi = parsers.parse_rest_ticker(payload, "perp", NOW)
    assert funding.rate == 0.0001 and funding.next_funding_time == ms_to_dt(1760371200000)
    assert oi.open_interest == 26095.221 and funding.ts == ms_to_dt(1760352369814)
    assert oi.open_interest_value == 2998305736.54
    # the inverse sample predates singleOpenInterest: no record rather than a doubled one
    inverse = load_jsonl("bybit/rest_tickers.jsonl")[0]
    assert [type(r) for r in parsers.parse_rest_ticker(inverse, "perp", NOW)] == [Ticker, Funding]
    spot = load_jsonl("bybit/rest_tickers.jsonl")[2]
    [ticker] = parsers.parse_rest_ticker(spot, "spot", NOW)
    assert ticker.bid == 20517.96 and ticker.ask_size == 1.862172


def test_rest_recent_trade():
    payload = load_jsonl("bybit/rest_recent_trade.jsonl")[0]
    [trade] = parsers.parse_rest_trades(payload, "spot", NOW)
    assert (trade.symbol, trade.market) == ("BTCUSDT", "spot")
    assert trade.trade_id == "2100000000007764263"
    assert trade.price == 16618.49 and trade.size == 0.00012 and trade.side == "buy"
    assert trade.ts == ms_to_dt(1672052955758)
    with pytest.raises(ValueError):
        parsers.parse_rest_trades({"retCode": 10001, "retMsg": "params error"}, "spot", NOW)


def test_rest_kline_newest_first_and_only_ended_candles_closed():
    payload = load_jsonl("bybit/rest_kline.jsonl")[0]          # hourly rows, newest first
    candles = parsers.parse_rest_klines(payload, "BTCUSD", "perp", "60", NOW)
    assert [c.ts for c in candles] == [ms_to_dt(1670601600000), ms_to_dt(1670605200000),
                                       ms_to_dt(1670608800000)]
    newest = candles[-1]
    assert (newest.open, newest.high, newest.low, newest.close) == (17071, 17073, 17027, 17055.5)
    assert newest.volume == 268611 and newest.quote_volume == 15.74462667
    assert newest.interval == "1h" and all(c.closed for c in candles)
    # the server time inside the newest hour: that candle is still forming
    payload["time"] = 1670608800000 + 59 * 60_000
    assert [c.closed for c in parsers.parse_rest_klines(payload, "BTCUSD", "perp", "60", NOW)] \
        == [True, True, False]


def test_orderbook_message():
    msg = load_jsonl("bybit/orderbook.jsonl")[0]
    book = parsers.parse_orderbook(msg)
    assert not book.snapshot and book.symbol == "BTCUSDT" and book.update_id == 177400507
    assert book.bids[0] == (30247.2, 30.028) and book.asks[0] == (30248.7, 0.0)
    assert book.seq == 66544703342


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
        with pytest.raises(parsers.NotSupportedSymbol):
            parse()
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
