"""Binance parsers on documented payloads: exact normalized values."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from collector.exchanges.binance import parsers
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
