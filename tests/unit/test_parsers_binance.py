"""Binance parsers on documented payloads: exact normalized values."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from collector.booksync import Diff
from collector.exchanges.binance import parsers
from collector.orderbook import OrderBook
from common.schema import Candle, Funding, OpenInterest, Ticker, Trade
from tests.conftest import load_jsonl

RECEIVED = datetime(2026, 1, 1, tzinfo=timezone.utc)


def data(msg: dict) -> dict:
    return msg.get("data", msg)


def test_raw_trade_taker_side_and_ids():
    msg = data(load_jsonl("binance/trade.jsonl")[0])
    trade = parsers.parse_trade(msg, "spot", RECEIVED)
    assert (trade.symbol, trade.pair, trade.market) == ("ETHUSDT", "ETH/USDT", "spot")
    assert trade.trade_id == "705291099"
    assert trade.price == 4149.74 and trade.size == 0.4387
    assert trade.side == "sell"          # m=true: buyer was maker, so the taker sold
    assert trade.ts == datetime(2021, 12, 12, 23, 17, 42, 243000, tzinfo=timezone.utc)
    assert trade.received_at == RECEIVED


def test_agg_trade_uses_agg_id():
    msg = data(load_jsonl("binance/aggTrade.jsonl")[0])
    trade = parsers.parse_trade(msg, "perp", RECEIVED)
    assert trade.trade_id == "15683430" and trade.side == "buy" and trade.size == 58.0


def test_spot_and_futures_tickers():
    spot, futures = load_jsonl("binance/ticker_24hr.jsonl")
    t = parsers.parse_ticker(spot, "spot", RECEIVED)
    assert (t.last, t.bid, t.bid_size, t.ask, t.ask_size) == (0.0025, 0.0024, 10.0, 0.0026, 100.0)
    assert (t.volume_24h, t.quote_volume_24h, t.change_pct_24h) == (10000.0, 18.0, 250.0)
    f = parsers.parse_ticker(futures, "perp", RECEIVED)
    assert f.bid is None and f.ask is None          # USD-M tickers carry no best bid/ask
    assert f.last == 16584.6 and f.quote_volume_24h == 2036102085.697464


def test_kline_in_progress_and_values():
    k = parsers.parse_kline(data(load_jsonl("binance/kline.jsonl")[0]), "spot", RECEIVED)
    assert k.interval == "1m" and k.closed is False
    assert (k.open, k.high, k.low, k.close) == (0.3527, 0.3528, 0.3522, 0.3528)
    assert k.volume == 25877.0 and k.quote_volume == 9116.046 and k.trades == 30
    assert k.ts == datetime.fromtimestamp(1633998480, tz=timezone.utc)


def test_mark_price_funding():
    f = parsers.parse_mark_price(load_jsonl("binance/markPrice_funding.jsonl")[0], RECEIVED)
    assert f.rate == 0.00038167 and f.mark_price == 11794.15
    assert f.next_funding_time == datetime.fromtimestamp(1562306400, tz=timezone.utc)


def test_depth_diff_and_snapshot():
    diff = parsers.parse_depth(load_jsonl("binance/depth_update_spot_doc.jsonl")[0])
    assert (diff.first_id, diff.last_id, diff.prev_id) == (157, 160, None)
    assert diff.bids == [(0.0024, 10.0)] and diff.asks == [(0.0026, 100.0)]
    bids, asks, last = parsers.parse_depth_snapshot(
        {"lastUpdateId": 1027024, "bids": [["4.00000000", "431.00000000"]],
         "asks": [["4.00000200", "12.00000000"]]})
    assert last == 1027024 and bids == [(4.0, 431.0)] and asks == [(4.000002, 12.0)]


def test_rest_open_interest_and_premium_index():
    oi = parsers.parse_open_interest(load_jsonl("binance/rest_open_interest.jsonl")[0], RECEIVED,
                                     mark_price=10000.0)
    assert oi.open_interest == 10659.509 and oi.open_interest_value == pytest.approx(106595090.0)
    f = parsers.parse_premium_index(load_jsonl("binance/rest_funding_premiumIndex.jsonl")[0],
                                    RECEIVED)
    assert f.rate == 0.00038246 and f.index_price == 11781.8049597


@pytest.mark.parametrize("bad", [{}, {"e": "trade", "s": "X"}, {"e": "kline", "s": "X", "k": {}},
                                 {"e": "trade", "s": "BTCUSDT", "t": 1, "p": "abc", "q": "1",
                                  "T": 1, "m": True}])
def test_malformed_messages_raise(bad):
    with pytest.raises((KeyError, ValueError, TypeError)):
        parsers.parse_trade(bad, "spot", RECEIVED) if bad.get("e") != "kline" else \
            parsers.parse_kline(bad, "spot", RECEIVED)


# ---- every normalized field pinned, one fixture per documented payload variant ------------------
# Each test compares the whole record (dataclass equality: every field) with the values read by
# hand from the payload and docs/exchanges/binance.md section 4 (m: buyer is maker -> the taker
# sold; x: the kline is final; v base / q quote volume; P percent; r fraction; ms timestamps).
def _ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def _one(name: str):
    return data(load_jsonl(f"binance/{name}.jsonl")[0])


def test_spot_trade_doc_payload_every_field():
    assert parsers.parse_trade(_one("trade_spot_doc"), "spot", RECEIVED) == Trade(
        exchange="binance", symbol="BNBBTC", pair="BNB/BTC", market="spot",
        ts=_ms(1672515782136), received_at=RECEIVED, trade_id="12345", price=0.001, size=100.0,
        side="sell")


def test_spot_trade_taker_buy_every_field():
    assert parsers.parse_trade(_one("trade_spot_taker_buy_combined"), "spot", RECEIVED) == Trade(
        exchange="binance", symbol="BNBBTC", pair="BNB/BTC", market="spot",
        ts=_ms(1672515782135), received_at=RECEIVED, trade_id="12346", price=0.002, size=5.5,
        side="buy")


def test_usdm_agg_trade_sdk_payload_every_field():
    """``a`` is the id (not ``f``/``l``), ``q`` the size (not ``nq``), ``T`` the time."""
    assert parsers.parse_trade(_one("agg_trade_usdm_sdk"), "perp", RECEIVED) == Trade(
        exchange="binance", symbol="BNBUSDT", pair="BNB/USDT", market="perp",
        ts=_ms(123456785), received_at=RECEIVED, trade_id="5933014", price=0.001, size=100.0,
        side="sell")


def test_spot_ticker_doc_payload_every_field():
    assert parsers.parse_ticker(_one("ticker_spot_doc"), "spot", RECEIVED) == Ticker(
        exchange="binance", symbol="BNBBTC", pair="BNB/BTC", market="spot",
        ts=_ms(1672515782136), received_at=RECEIVED, last=0.0025, bid=0.0024, bid_size=10.0,
        ask=0.0026, ask_size=100.0, open_24h=0.001, high_24h=0.0025, low_24h=0.001,
        volume_24h=10000.0, quote_volume_24h=18.0, change_pct_24h=250.0)


def test_usdm_ticker_has_no_best_bid_ask_every_field():
    assert parsers.parse_ticker(_one("ticker_usdm"), "perp", RECEIVED) == Ticker(
        exchange="binance", symbol="BTCUSDT", pair="BTC/USDT", market="perp",
        ts=_ms(1672515782136), received_at=RECEIVED, last=16584.6, open_24h=16716.0,
        high_24h=16764.89, low_24h=16456.51, volume_24h=122474.816,
        quote_volume_24h=2036102085.697464, change_pct_24h=-0.786)


def test_open_kline_doc_payload_every_field():
    assert parsers.parse_kline(_one("kline_open_doc"), "spot", RECEIVED) == Candle(
        exchange="binance", symbol="BNBBTC", pair="BNB/BTC", market="spot",
        ts=_ms(1672515780000), received_at=RECEIVED, interval="1m", open=0.001, high=0.0025,
        low=0.0015, close=0.002, volume=1000.0, quote_volume=1.0, trades=100, closed=False)


def test_closed_kline_every_field():
    assert parsers.parse_kline(_one("kline_closed_combined"), "perp", RECEIVED) == Candle(
        exchange="binance", symbol="BNBBTC", pair="BNB/BTC", market="perp",
        ts=_ms(1672515780000), received_at=RECEIVED, interval="1m", open=0.001, high=0.0025,
        low=0.0015, close=0.0021, volume=1000.5, quote_volume=1.00105, trades=101, closed=True)


def test_mark_price_sdk_payload_every_field():
    """``p`` mark, ``i`` index (not ``P`` settle or ``ap`` average), ``r`` rate, ``T`` next."""
    assert parsers.parse_mark_price(_one("mark_price_usdm_sdk"), RECEIVED) == Funding(
        exchange="binance", symbol="BTCUSDT", pair="BTC/USDT", market="perp",
        ts=_ms(1562305380000), received_at=RECEIVED, rate=0.00038167,
        next_funding_time=_ms(1562306400000), mark_price=11794.15, index_price=11784.62659091)


def test_premium_index_every_field():
    assert parsers.parse_premium_index(_one("rest_funding_premiumIndex"), RECEIVED) == Funding(
        exchange="binance", symbol="BTCUSDT", pair="BTC/USDT", market="perp",
        ts=_ms(1597370495002), received_at=RECEIVED, rate=0.00038246,
        next_funding_time=_ms(1597392000000), mark_price=11793.63104562,
        index_price=11781.8049597)


def test_open_interest_every_field_and_no_value_without_a_mark():
    payload = _one("rest_open_interest")
    expected = OpenInterest(exchange="binance", symbol="BTCUSDT", pair="BTC/USDT", market="perp",
                            ts=_ms(1589437530011), received_at=RECEIVED, open_interest=10659.509,
                            open_interest_value=10659.509 * 11794.15)
    assert parsers.parse_open_interest(payload, RECEIVED, 11794.15) == expected
    assert parsers.parse_open_interest(payload, RECEIVED).open_interest_value is None


def test_usdm_depth_sdk_payload_ids_and_levels():
    """USD-M: ``U`` 157 is not ``pu`` 149 + 1; continuity is ``pu`` (B6)."""
    d = _one("depth_update_usdm_sdk")
    assert parsers.depth_ids(d) == (157, 160, 149)
    assert parsers.parse_depth(d) == Diff(157, 160, 149, [(0.0024, 10.0)], [(0.0026, 100.0)])
    assert parsers.depth_ids(_one("depth_update_spot_doc")) == (157, 160, None)


def test_depth_fast_apply_deletes_levels_and_moves_the_touch():
    """The hot path (``apply_depth``) and the buffered path (``parse_depth`` + ``apply``) give
    the same book: "0" and "0.00000000" delete, new levels become the best bid/ask."""
    bids, asks, last = parsers.parse_depth_snapshot(_one("rest_depth_usdm"))
    assert (bids, asks, last) == ([(4.0, 431.0), (3.9, 1.5)], [(4.000002, 12.0)], 1027024)
    doc = _one("depth_update_spot_doc")
    diff = _one("depth_update_spot_deletes_and_new_touch")
    fast, slow = OrderBook(), OrderBook()
    for book in (fast, slow):
        book.load_snapshot([], [], 156)
    parsers.apply_depth(fast, doc, 160)
    parsers.apply_depth(fast, diff, 163)
    for d in (doc, diff):
        parsed = parsers.parse_depth(d)
        slow.apply(parsed.bids, parsed.asks, parsed.last_id)
    for book in (fast, slow):
        assert book.bids.top(5) == [[0.0023, 7.0]] and book.asks.top(5) == [[0.0025, 3.5]]
        assert book.best_bid() == (0.0023, 7.0) and book.best_ask() == (0.0025, 3.5)
        assert book.update_id == 163


def test_rest_trades_every_field_both_sides():
    rows = load_jsonl("binance/rest_trades_spot.jsonl")[0]
    assert [parsers.parse_rest_trade(r, "BNBBTC", RECEIVED) for r in rows] == [
        Trade(exchange="binance", symbol="BNBBTC", pair="BNB/BTC", market="spot",
              ts=_ms(1499865549590), received_at=RECEIVED, trade_id="28457", price=4.000001,
              size=12.0, side="sell"),
        Trade(exchange="binance", symbol="BNBBTC", pair="BNB/BTC", market="spot",
              ts=_ms(1499865549591), received_at=RECEIVED, trade_id="28458", price=4.000002,
              size=1.5, side="buy")]


def test_rest_agg_trades_every_field_both_sides():
    rows = load_jsonl("binance/rest_agg_trades_usdm.jsonl")[0]
    assert [parsers.parse_rest_agg_trade(r, "BTCUSDT", RECEIVED) for r in rows] == [
        Trade(exchange="binance", symbol="BTCUSDT", pair="BTC/USDT", market="perp",
              ts=_ms(1498793709153), received_at=RECEIVED, trade_id="26129", price=0.01633102,
              size=4.70443515, side="sell"),
        Trade(exchange="binance", symbol="BTCUSDT", pair="BTC/USDT", market="perp",
              ts=_ms(1498793709154), received_at=RECEIVED, trade_id="26130", price=0.01633103,
              size=0.5, side="buy")]


def test_rest_klines_every_field_closed_by_close_time():
    closed_row = load_jsonl("binance/rest_klines.jsonl")[0][0]
    assert parsers.parse_rest_kline(closed_row, "BNBBTC", "spot", RECEIVED) == Candle(
        exchange="binance", symbol="BNBBTC", pair="BNB/BTC", market="spot",
        ts=_ms(1499040000000), received_at=RECEIVED, interval="1m", open=0.0163479, high=0.8,
        low=0.015758, close=0.015771, volume=148976.11427815, quote_volume=2434.19055334,
        trades=308, closed=True)
    open_row = load_jsonl("binance/rest_klines_open.jsonl")[0][0]
    during = _ms(1672515839999)             # the close time itself: not yet past
    candle = parsers.parse_rest_kline(open_row, "BNBBTC", "perp", during)
    assert candle == Candle(
        exchange="binance", symbol="BNBBTC", pair="BNB/BTC", market="perp",
        ts=_ms(1672515780000), received_at=during, interval="1m", open=0.001, high=0.0025,
        low=0.0015, close=0.002, volume=1000.0, quote_volume=1.0, trades=100, closed=False)
    after = _ms(1672515840000)
    assert parsers.parse_rest_kline(open_row, "BNBBTC", "perp", after).closed is True


def test_exchange_info_statuses_and_linear_perpetual_rule():
    spot = parsers.contract_statuses(_one("exchange_info_spot"))
    assert spot == {"BTCUSDT": "TRADING", "BTCBUSD": "BREAK"}
    listed = parsers.contracts(_one("exchange_info_usdm"))
    assert {s: parsers.not_linear_perpetual(listed.get(s)) for s in (
        "BTCUSDT", "BTCUSD_PERP", "BTCUSDT_261225", "ETHUSDT", "XYZUSDT")} == {
        "BTCUSDT": None,
        "BTCUSD_PERP": "coin-margined (BTC margin), not a linear perpetual",
        "BTCUSDT_261225": "USD-M contract type CURRENT_QUARTER",
        "ETHUSDT": "USD-M status SETTLING",
        "XYZUSDT": "USD-M status unknown symbol"}


def test_rest_error_bodies():
    assert parsers.rejected_symbol(_one("error_invalid_symbol")) == "Invalid symbol."
    assert parsers.rejected_symbol(_one("error_rate_limit")) is None
    assert parsers.rejected_symbol("<html>") is None
    assert parsers.rejected_symbol({"code": -1121}) == "Invalid symbol."
    # The exchange's own text is reported (mutation test: a mapping to the default survived).
    assert parsers.rejected_symbol({"code": -1121, "msg": "Symbol is closed."}) == \
        "Symbol is closed."
