"""Gate.io parsers against documented payloads (tests/fixtures/gateio) and book-sync rules."""
from __future__ import annotations

from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import orjson
import pytest

from collector.booksync import Diff, Outcome, SnapshotDiffSync
from collector.exchanges.gateio import parsers as p
from collector.orderbook import OrderBook

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "gateio"
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
    with pytest.raises((KeyError, ValueError)):
        p.parse_spot_trade({"result": {"currency_pair": "BTC_USDT", "side": "x"}}, NOW)
    with pytest.raises((KeyError, ValueError)):
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


# ---- every normalized field, one documented payload variant per fixture file -----------------
def dt(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


def fields(record) -> dict:
    """Every field of a record (``received_at`` checked separately: it is the caller's)."""
    out = asdict(record)
    assert out.pop("received_at") == NOW
    return out


BTC_SPOT = {"exchange": "gateio", "symbol": "BTC_USDT", "pair": "BTC/USDT", "market": "spot"}
BTC_PERP = {**BTC_SPOT, "market": "perp"}
ETH_PERP = {"exchange": "gateio", "symbol": "ETH_USDT", "pair": "ETH/USDT", "market": "perp"}


def test_spot_ticker_every_field():
    assert fields(p.parse_spot_ticker(lines("spot_tickers.jsonl")[-1], NOW)) == {
        **BTC_SPOT, "ts": dt(1669107766.406), "last": 15743.4, "bid": 15743.5, "bid_size": None,
        "ask": 15744.4, "ask_size": None, "open_24h": None, "high_24h": 16280.9,
        "low_24h": 15468.5, "volume_24h": 9110.473081735, "quote_volume_24h": 145082083.2535,
        "change_pct_24h": -1.8254, "mark_price": None, "index_price": None}


def test_spot_trades_store_id_not_id_market():
    """Issue 11 item 10: ``id`` stays the stored id (REST rows carry the same; ``id_market``
    differs from it); ``side`` is the taker side."""
    buy, sell = (p.parse_spot_trade(m, NOW) for m in lines("spot_trades_id_market.jsonl"))
    assert fields(buy) == {**BTC_SPOT, "ts": dt(1767225600.511), "trade_id": "5736713",
                           "price": 87000.5, "size": 0.0521, "side": "buy"}
    assert fields(sell) == {**BTC_SPOT, "ts": dt(1767225601.019), "trade_id": "9100000042",
                            "price": 86999.9, "size": 1.5, "side": "sell"}
    # without ``id`` the per-market id is the id (WS id_market, REST sequence_id: the same)
    (msg,) = lines("spot_trades_without_id.jsonl")
    assert p.parse_spot_trade(msg, NOW).trade_id == "5736714"
    assert p.spot_trade_id({"sequence_id": "588018"}) == "588018"
    # the public helper itself prefers ``id`` when the row has both
    assert p.spot_trade_id(lines("spot_trades_id_market.jsonl")[1]["result"]) == "9100000042"


def test_spot_candle_every_field_and_the_closed_flag():
    closed = lines("spot_candlesticks.jsonl")[-1]
    assert fields(p.parse_spot_candle(closed, NOW)) == {
        **BTC_SPOT, "ts": dt(1606292580), "interval": "1m", "open": 19128.1, "high": 19128.1,
        "low": 19128.1, "close": 19128.1, "volume": 3.8283, "quote_volume": 2362.32035,
        "trades": None, "closed": True, "source": "exchange"}
    closed["result"]["w"] = False
    assert p.parse_spot_candle(closed, NOW).closed is False


def test_futures_ticker_and_funding_every_field():
    info = {"BTC_USD": {"next_funding_time": dt(1767254400), "interval_hours": 8.0}}
    ((ticker, funding),) = p.parse_futures_tickers(lines("futures_tickers.jsonl")[0], NOW,
                                                   {"BTC_USD": 0.0001}, info)
    perp = {"exchange": "gateio", "symbol": "BTC_USD", "pair": "BTC/USD", "market": "perp",
            "ts": dt(1541659086.123)}
    assert fields(ticker) == {
        **perp, "last": 118.4, "bid": None, "bid_size": None, "ask": None, "ask_size": None,
        "open_24h": None, "high_24h": 132.5, "low_24h": 99.2, "volume_24h": 5526.0,
        "quote_volume_24h": 1665006.0, "change_pct_24h": 0.77, "mark_price": 118.35,
        "index_price": 118.36}
    assert fields(funding) == {
        **perp, "rate": -0.000114, "next_funding_time": dt(1767254400), "predicted_rate": None,
        "mark_price": 118.35, "index_price": 118.36, "interval_hours": 8.0}
    # without volume_24h_base: contracts x multiplier
    msg = lines("futures_tickers.jsonl")[0]
    del msg["result"][0]["volume_24h_base"]
    ((ticker, _),) = p.parse_futures_tickers(msg, NOW, {"BTC_USD": 0.0001})
    assert ticker.volume_24h == pytest.approx(74548.7577)


def test_futures_trades_decimal_sizes_every_field():
    """F1: with X-Gate-Size-Decimal: 1 sizes are decimal strings; the sign is the taker side."""
    sell, buy = p.parse_futures_trades(lines("futures_trades_decimal.jsonl")[0], NOW,
                                       {"ETH_USDT": 0.01})
    assert fields(sell) == {**ETH_PERP, "ts": dt(1767225600.499), "trade_id": "1",
                            "price": 3000.1, "size": pytest.approx(0.003), "side": "sell"}
    assert fields(buy) == {**ETH_PERP, "ts": dt(1767225600.499), "trade_id": "2",
                           "price": 3000.2, "size": pytest.approx(0.02), "side": "buy"}


def test_futures_trades_zero_size_row_is_skipped_not_the_batch():
    """Issue 11 item 3: without the header a 0.3-contract fill reads ``size: 0``."""
    msg = lines("futures_trades_integer_zero_size.jsonl")[0]
    with pytest.raises(ValueError):
        p.parse_futures_trades(msg, NOW, {"ETH_USDT": 0.01})
    skipped: p.Skipped = []
    (trade,) = p.parse_futures_trades(msg, NOW, {"ETH_USDT": 0.01}, skipped)
    assert (trade.trade_id, trade.side, trade.size) == ("2", "buy", pytest.approx(0.02))
    assert [(row["id"], str(exc)) for row, exc in skipped] == [(1, "zero trade size")]
    # a row of another batch type with a missing field: the same policy
    stats = lines("futures_contract_stats.jsonl")[0]
    stats["result"].insert(0, {"time": 1603865340, "contract": "BTC_USDT"})
    skipped = []
    (oi,) = p.parse_contract_stats(stats, NOW, {"BTC_USDT": 0.0001}, skipped)
    assert oi.ts == dt(1603865400) and len(skipped) == 1


def test_futures_candles_every_field_decimal_volume_and_price_candles_left_out():
    (candle,) = p.parse_futures_candles(lines("futures_candlesticks_decimal.jsonl")[0], NOW,
                                        {"BTC_USDT": 0.0001})
    assert fields(candle) == {
        **BTC_PERP, "ts": dt(1767225600), "interval": "1m", "open": 87000.0, "high": 87020.0,
        "low": 86990.5, "close": 87010.1, "volume": pytest.approx(0.00125),
        "quote_volume": None, "trades": None, "closed": False, "source": "exchange"}


def test_open_interest_every_field_ws_and_rest():
    (ws,) = p.parse_contract_stats(lines("futures_contract_stats.jsonl")[0], NOW,
                                   {"BTC_USDT": 0.0001})
    (rest_oi,) = p.parse_rest_contract_stats(rest("rest_contract_stats.json"), "BTC_USDT", NOW,
                                             {"BTC_USDT": 0.0001})
    for record, usd in ((ws, 1511.0), (rest_oi, 1020000.0)):
        assert fields(record) == {**BTC_PERP, "ts": dt(1603865400),
                                  "open_interest": pytest.approx(12.4724),
                                  "open_interest_value": usd}


def test_contract_document_funding_every_field():
    body = rest("rest_contract.json")
    assert fields(p.parse_contract_funding(body, NOW)) == {
        **BTC_PERP, "ts": NOW, "rate": 0.000091, "next_funding_time": dt(1767254400),
        "predicted_rate": None, "mark_price": 87001.2, "index_price": 87000.9,
        "interval_hours": 8.0}
    assert p.parse_contract(body) == {"multiplier": 0.0001, "interval_hours": 8.0,
                                      "next_funding_time": dt(1767254400)}


def test_rest_candles_every_field():
    (spot,) = p.parse_rest_spot_candles(rest("rest_spot_candlesticks.json"), "BTC_USDT", NOW)
    assert fields(spot) == {
        **BTC_SPOT, "ts": dt(1539852480), "interval": "1m", "open": 0.0021737,
        "high": 0.0021922, "low": 0.0021724, "close": 0.0021724, "volume": 44.2,
        "quote_volume": 971519.677, "trades": None, "closed": True, "source": "exchange"}
    late = datetime(2030, 1, 1, tzinfo=timezone.utc)
    first, second = p.parse_rest_futures_candles(rest("rest_futures_candlesticks.json"),
                                                 "BTC_USDT", late, {"BTC_USDT": 0.0001})
    assert asdict(second) == {
        **BTC_PERP, "ts": dt(1539852540), "received_at": late, "interval": "1m",
        "open": 1.032, "high": 1.034, "low": 1.032, "close": 1.034,
        "volume": pytest.approx(0.012), "quote_volume": 124.1, "trades": None, "closed": True, "source": "exchange"}


def test_rest_trades_every_field():
    newest, older = p.parse_rest_spot_trades(rest("rest_spot_trades.json"), NOW)
    assert fields(newest) == {**BTC_SPOT, "ts": dt(1548000000.123), "trade_id": "1232893232",
                              "price": 32.2, "size": 0.15, "side": "buy"}
    assert fields(older) == {**BTC_SPOT, "ts": dt(1547999999.87), "trade_id": "1232893230",
                             "price": 32.1, "size": 0.5, "side": "sell"}
    sell, buy = p.parse_rest_futures_trades(rest("rest_futures_trades.json"), NOW,
                                            {"BTC_USDT": 0.0001})
    assert fields(sell) == {**BTC_PERP, "ts": dt(1514764800.123), "trade_id": "121234231",
                            "price": 100.123, "size": pytest.approx(0.01), "side": "sell"}
    assert fields(buy) == {**BTC_PERP, "ts": dt(1514764799.5), "trade_id": "121234229",
                           "price": 100.0, "size": pytest.approx(0.004), "side": "buy"}


# ---- books: the synced fast path and the buffered path agree --------------------------------
def test_spot_diff_fast_path_applies_sizes_and_deletions():
    (msg,) = lines("spot_order_book_update_diff.jsonl")
    r = msg["result"]
    assert p.book_ids(r) == (48776307, 48776309)
    book = OrderBook(100)
    book.load_snapshot([(19137.74, 1.0), (19088.37, 2.0)], [(19137.75, 3.0)], 48776306)
    p.apply_spot_book(book, r, 48776309)
    assert (book.bids.top(5), book.asks.top(5), book.update_id) == (
        [[19137.74, 0.25]], [[19139.1, 1.2]], 48776309)
    diff = p.spot_book_diff(r)
    assert (diff.first_id, diff.last_id, diff.bids, diff.asks) == (
        48776307, 48776309, [(19137.74, 0.25), (19088.37, 0.0)],
        [(19137.75, 0.0), (19139.1, 1.2)])


def test_futures_diff_decimal_and_integer_sizes():
    """F1: the same level with and without the header: "0.4" contracts vs 0 (a deletion)."""
    book = OrderBook(100)
    book.load_snapshot([(3000.1, 0.1)], [(3000.2, 0.1)], 99)
    (msg,) = lines("futures_order_book_update_decimal.jsonl")
    p.apply_futures_book(book, msg["result"], 101, 0.01)
    assert book.bids.top(5) == [[3000.1, pytest.approx(0.004)]]
    assert book.asks.top(5) == [[3000.2, pytest.approx(51.168)]]
    (truncated,) = lines("futures_order_book_update_integer.jsonl")
    diff = p.futures_book_diff(truncated["result"], 0.01)
    assert (diff.first_id, diff.last_id, diff.bids, diff.asks) == (
        100, 101, [(3000.1, 0.0)], [(3000.2, pytest.approx(51.16))])


def test_book_snapshots_rest():
    bids, asks, snap_id = p.parse_spot_book_snapshot(rest("rest_spot_order_book.json"))
    assert (bids, asks, snap_id) == ([(1.17, 201.863), (1.16, 725.464)],
                                     [(1.52, 1.151), (1.53, 1.218)], 123456)
    bids, asks, snap_id = p.parse_futures_book_snapshot(
        rest("rest_futures_order_book_decimal.json"), 0.01)
    assert snap_id == 101 and bids == [(3000.1, pytest.approx(0.004))]
    assert asks == [(3000.2, pytest.approx(51.168))]


# ---- control messages ---------------------------------------------------------------------------
def test_error_and_upgrade_shapes():
    (doc,) = lines("error_unknown_pair_doc.jsonl")
    assert p.parse_error(doc) == ("unknown currency pair GIBBERISH_USD", "GIBBERISH_USD")
    (alert,) = lines("error.jsonl")
    assert p.parse_error(alert) == ("Alert sub ob.BTC_USDT.400", None)
    for form in ("type", "event", "system"):
        (msg,) = lines(f"upgrade_notice_{form}.jsonl")
        assert p.is_upgrade(msg), form
    assert not any(p.is_upgrade(m) for m in lines("ping_pong.jsonl") +
                   lines("spot_subscribe_ack.jsonl") + lines("spot_trades.jsonl"))
    request = orjson.loads(p.subscribe_request("futures.order_book_update",
                                               ["BTC_USDT", "100ms", "100"], 7, 1767225600))
    assert request == {"time": 1767225600, "id": 7, "channel": "futures.order_book_update",
                       "event": "subscribe", "payload": ["BTC_USDT", "100ms", "100"]}


# ---- fallbacks and boundaries the fixtures above do not reach -------------------------------
def test_spot_ticker_without_time_ms_takes_the_seconds_envelope():
    """The older documented pushes carry only ``time`` (s)."""
    assert fields(p.parse_spot_ticker(lines("spot_tickers.jsonl")[0], NOW)) == {
        "exchange": "gateio", "symbol": "NEO_BTC", "pair": "NEO/BTC", "market": "spot",
        "ts": dt(1619093533), "last": 0.0018716, "bid": 0.0018697, "bid_size": None,
        "ask": 0.0018734, "ask_size": None, "open_24h": None, "high_24h": 0.0018754,
        "low_24h": 0.0017148, "volume_24h": 1138.01640718, "quote_volume_24h": 2.048263365803126,
        "change_pct_24h": 2.9256, "mark_price": None, "index_price": None}


SPOT_TICKER_FIELDS = {"last": "last", "highest_bid": "bid", "lowest_ask": "ask",
                      "high_24h": "high_24h", "low_24h": "low_24h", "base_volume": "volume_24h",
                      "quote_volume": "quote_volume_24h", "change_percentage": "change_pct_24h"}


@pytest.mark.parametrize("wire", sorted(SPOT_TICKER_FIELDS))
@pytest.mark.parametrize("blank", ["", None])
def test_spot_ticker_blank_field_is_none_not_an_error(wire: str, blank: str | None):
    """Gate sends "" for a value it has not got (an inactive pair's ``highest_bid`` /
    ``lowest_ask``); that field alone becomes None (absent: key left out), the rest stays."""
    msg = lines("spot_tickers.jsonl")[-1]
    full = fields(p.parse_spot_ticker(msg, NOW))
    if blank is None:
        del msg["result"][wire]
    else:
        msg["result"][wire] = blank
    assert fields(p.parse_spot_ticker(msg, NOW)) == {**full, SPOT_TICKER_FIELDS[wire]: None}


def test_book_updates_are_diffs_unless_marked_full():
    """``full`` is present (true) only on full-book pushes (A44678): a diff must not replace
    the book."""
    (spot,) = lines("spot_order_book_update_diff.jsonl")
    assert p.parse_spot_book_update(spot) == (
        "BTC_USDT", 48776307, 48776309, [(19137.74, 0.25), (19088.37, 0.0)],
        [(19137.75, 0.0), (19139.1, 1.2)], False)
    (fut,) = lines("futures_order_book_update_decimal.jsonl")
    symbol, first, last, bids, asks, full = p.parse_futures_book_update(fut, 0.01)
    assert (symbol, first, last, full) == ("ETH_USDT", 100, 101, False)
    assert bids == [(3000.1, pytest.approx(0.004))] and asks == [(3000.2, pytest.approx(51.168))]
    fut["result"]["full"] = True
    assert p.parse_futures_book_update(fut, 0.01)[5] is True


def test_rest_candle_without_flag_closes_65_s_after_its_start():
    """The newest row without a closed flag is the running candle until its minute is over by
    the local clock plus a 5 s skew margin: closed at start + 65 s, not a second before."""
    body = rest("rest_futures_candlesticks.json")
    newest = body[-1]["t"]
    for now, kept in ((newest + 64, [1539852480]), (newest + 65, [1539852480, newest])):
        candles = p.parse_rest_futures_candles(body, "BTC_USDT", dt(now), {"BTC_USDT": 0.0001})
        assert [c.ts for c in candles] == [dt(t) for t in kept]


def test_rest_candles_older_rows_are_final_even_if_the_local_clock_lags():
    """Every row but the newest is closed by the exchange (a newer minute exists), whatever the
    local clock says: here it lags so that neither of the two older minutes looks over."""
    body = rest("rest_futures_candlesticks.json")
    body.append({"t": 1539852600, "v": 50, "c": "1.035", "h": "1.035", "l": "1.034",
                 "o": "1.034", "sum": "51.7"})
    candles = p.parse_rest_futures_candles(body, "BTC_USDT", dt(1539852602),
                                           {"BTC_USDT": 0.0001})
    assert [c.ts for c in candles] == [dt(1539852480), dt(1539852540)]


def test_rest_spot_candles_without_the_closed_element():
    """Rows of seven elements (no window-closed flag) fall back to the clock rule, like the
    futures rows: all but the newest, and the newest once its minute (+ 5 s) is over."""
    body = [row[:7] for row in rest("rest_spot_candlesticks.json")]
    (first,) = p.parse_rest_spot_candles(body, "BTC_USDT", dt(1539852540 + 64))
    assert (first.ts, first.open, first.close, first.volume, first.closed) == (
        dt(1539852480), 0.0021737, 0.0021724, 44.2, True)
    first, second = p.parse_rest_spot_candles(body, "BTC_USDT", dt(1539852540 + 65))
    assert asdict(second) == {
        **BTC_SPOT, "ts": dt(1539852540), "received_at": dt(1539852605), "interval": "1m", "open": 0.0021724, "high": 0.002185,
        "low": 0.00217, "close": 0.00218, "volume": 0.147, "quote_volume": 321.2,
        "trades": None, "closed": True, "source": "exchange"}


def test_futures_fractional_buy_is_a_buy():
    """With the decimal header a buy can be under one contract: any positive size is a buy."""
    msg = lines("futures_trades_decimal.jsonl")[0]
    msg["result"][1]["size"] = "0.4"
    sell, buy = p.parse_futures_trades(msg, NOW, {"ETH_USDT": 0.01})
    assert (sell.side, buy.side, buy.size, buy.trade_id) == ("sell", "buy", pytest.approx(0.004),
                                                             "2")


def test_futures_candles_closed_window_and_index_candles_left_out():
    msg = lines("futures_candlesticks_decimal.jsonl")[0]
    msg["result"][0]["w"] = True
    # the index-price candle of the same contract: a price series without volume
    msg["result"].append({**msg["result"][1], "n": "1m_index_BTC_USDT"})
    (candle,) = p.parse_futures_candles(msg, NOW, {"BTC_USDT": 0.0001})
    assert (candle.symbol, candle.ts, candle.close, candle.closed) == (
        "BTC_USDT", dt(1767225600), 87010.1, True)


def test_unknown_contract_error_names_the_contract():
    """The futures form of the unknown-symbol error (F4): the contract is marked unavailable."""
    msg = {"time": 1767225600, "time_ms": 1767225600231, "id": 3, "channel": "futures.trades",
           "event": "subscribe", "error": {"code": 2, "message": "unknown contract FOO_USDT"},
           "result": {"status": "fail"}}
    assert p.parse_error(msg) == ("unknown contract FOO_USDT", "FOO_USDT")
