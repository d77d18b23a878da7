"""Kraken parsers against documented payloads (tests/fixtures/kraken), incl. checksum vectors."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import orjson
import pytest

from collector.exchanges.kraken import endpoints as ep
from collector.exchanges.kraken import parsers as p
from collector.orderbook import OrderBook, apply_text_levels

FIX = Path(__file__).parent / "fixtures" / "kraken"
NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def lines(name: str) -> list:
    return [p.decode(line) for line in (FIX / name).read_text().splitlines() if line.strip()]


def load_book(msg, price_prec, qty_prec, book=None):
    book = book or OrderBook(100, keep_text=True)
    item = msg["data"][0]
    if msg["type"] == "snapshot":
        book.load_snapshot((), ())
    for price, qty, pt, qt in p.parse_levels(item["asks"], price_prec, qty_prec):
        book.asks.set(price, qty, pt, qt)
    for price, qty, pt, qt in p.parse_levels(item["bids"], price_prec, qty_prec):
        book.bids.set(price, qty, pt, qt)
    book.truncate(10)
    return book, item["checksum"]


def test_checksum_guide_btc_usd():
    (msg,) = lines("v2_book_checksum_guide.jsonl")
    book, expected = load_book(msg, 1, 8)
    assert expected == 3310070434
    assert p.book_crc(book) == 3310070434
    assert p.checksum_text(p.decode("45285.2"), 1) == "452852"
    assert p.checksum_text(p.decode("0.00100000"), 8) == "100000"


def test_checksum_matic_snapshot_and_update_need_instrument_precision():
    snapshot, update = lines("v2_book.jsonl")
    book, expected = load_book(snapshot, 4, 8)
    assert expected == 2439117997 and p.book_crc(book) == 2439117997
    book, expected = load_book(update, 4, 8, book)
    assert expected == 2114181697 and p.book_crc(book) == 2114181697
    assert book.bids.top(10)[-1] == [0.5657, 1098.3947558]
    # Without padding to the instrument precision the documented checksum is not reproduced.
    raw, _ = load_book(snapshot, None, None)
    assert p.book_crc(raw) == 3830085102


def _fast_book(msg_text: str, price_prec: int, qty_prec: int, book=None):
    """The feed's hot path: orjson floats -> levels_fast -> one text per level."""
    msg = orjson.loads(msg_text)
    book = book or OrderBook(100, keep_text=True)
    item = msg["data"][0]
    if msg["type"] == "snapshot":
        book.load_snapshot((), ())
    cache: dict = {}
    apply_text_levels(book.asks, p.levels_fast(item["asks"], price_prec, qty_prec, cache))
    apply_text_levels(book.bids, p.levels_fast(item["bids"], price_prec, qty_prec, cache))
    book.truncate(10)
    return book, item["checksum"]


def test_fast_path_reproduces_the_documented_checksums():
    (guide,) = (FIX / "v2_book_checksum_guide.jsonl").read_text().split()
    book, expected = _fast_book(guide, 1, 8)
    assert p.book_crc(book) == expected == 3310070434
    snapshot, update = (FIX / "v2_book.jsonl").read_text().split()
    book, expected = _fast_book(snapshot, 4, 8)
    assert p.book_crc(book) == expected == 2439117997
    book, expected = _fast_book(update, 4, 8, book)
    assert p.book_crc(book) == expected == 2114181697


def test_fast_levels_equal_the_exact_path_or_refuse():
    import random
    rng = random.Random(7)
    fast_count = 0
    for _ in range(20000):
        pp, qp = rng.randint(0, 10), rng.randint(0, 10)

        def num(prec):
            digits = rng.randint(0, prec + (3 if rng.random() < 0.2 else 0))
            whole = 0 if rng.random() < 0.3 else rng.randint(0, 10 ** rng.randint(0, 16 - prec))
            frac = "".join(rng.choice("0123456789") for _ in range(digits))
            return f"{whole}.{frac or '0'}"
        text = "[" + ",".join(f'{{"price":{num(pp)},"qty":{num(qp)}}}' for _ in range(2)) + "]"
        exact = [(a, b, c if b != 0 else "") for a, b, c in p.levels_exact(p.decode(text), pp, qp)]
        try:
            fast = p.levels_fast(orjson.loads(text), pp, qp, {})
        except p.Inexact:
            continue
        fast_count += 1
        assert fast == exact, text
    assert fast_count > 8000
    # Near a rounding tie, >= 10^15 units of the precision, below one unit, text, bool, negative:
    # refused (the exact path decides).
    for level in ({"price": 1.23, "qty": 0.123456785}, {"price": 1.5, "qty": 12345678.12345678},
                  {"price": 1.5, "qty": 1e-9}, {"price": "1.5", "qty": 1.0},
                  {"price": True, "qty": 1.0}, {"price": 1.5, "qty": -1.0}):
        with pytest.raises(p.Inexact):
            p.levels_fast([level], 2, 8, {})
    # More places than the precision but far from a tie, and ints: the exact path's text.
    assert p.levels_fast([{"price": 2, "qty": 0.123456789}], 2, 8, {}) == [
        (2.0, 0.123456789, "200" + "12345679")]


def test_book_parse_falls_back_to_exact_decimals_for_unprovable_numbers():
    raw = ('{"channel":"book","type":"update","data":[{"symbol":"X/USD","bids":[{"price":1.5,'
           '"qty":0.1234567891}],"asks":[],"checksum":1}]}')
    kind, items = p.parse_book(raw, orjson.loads(raw), {"X/USD": (2, 8)}, {})
    # Exact path: the Decimal quantized to 8 places (ROUND_HALF_EVEN), float from the Decimal.
    assert kind == "update" and items == [("X/USD", 1, [(1.5, 0.1234567891, "15012345679")], [])]


def test_ticker():
    snap, _ = lines("v2_ticker.jsonl")
    t = p.parse_ticker(snap["data"][0], NOW)
    assert (t.symbol, t.pair, t.market) == ("ALGO/USD", "ALGO/USD", "spot")
    assert (t.bid, t.bid_size, t.ask, t.ask_size, t.last) == (0.10025, 740.0, 0.10036,
                                                              1361.44813783, 0.10035)
    assert t.volume_24h == 997038.98383185
    assert t.quote_volume_24h == pytest.approx(997038.98383185 * 0.10148)
    assert (t.high_24h, t.low_24h, t.change_pct_24h) == (0.10285, 0.09979, -0.17)
    assert t.ts == datetime(2023, 9, 25, 9, 4, 31, 742648, tzinfo=timezone.utc)


def test_trades():
    snap, upd = lines("v2_trade.jsonl")
    trades = p.parse_trades(snap, NOW)
    assert [t.trade_id for t in trades] == ["4665846", "4665847"]
    (t,) = p.parse_trades(upd, NOW)
    assert (t.symbol, t.side, t.price, t.size, t.trade_id) == ("MATIC/USD", "sell", 0.5117, 40.0,
                                                               "4665906")
    assert t.ts == datetime(2023, 9, 25, 7, 49, 37, 708706, tzinfo=timezone.utc)
    with pytest.raises(Exception):
        p.parse_trades({"data": [{"symbol": "X/Y", "side": "b"}]}, NOW)


def test_ohlc_nanosecond_interval_begin():
    _, upd = lines("v2_ohlc.jsonl")
    c = p.parse_candle(upd["data"][0], NOW)
    assert c.ts == datetime(2023, 10, 4, 16, 25, tzinfo=timezone.utc)
    assert (c.interval, c.open, c.high, c.low, c.close, c.volume, c.trades) == (
        "5m", 0.5624, 0.5628, 0.5622, 0.5627, 30927.68066226, 12)
    assert c.closed is False


def test_symbol_aliases():
    assert p.v2_symbol("XBT/USD") == "BTC/USD"
    assert p.v2_symbol("XXBTZUSD") == "BTC/USD"
    assert p.v2_symbol("BTC/USD") == "BTC/USD"


def test_futures_ticker_funding_and_oi():
    _, eth = lines("futures_ticker.jsonl")
    eth = {k: float(v) if hasattr(v, "as_tuple") else v for k, v in eth.items()}
    ticker, funding, oi = p.parse_futures_ticker(eth, NOW)
    assert (ticker.symbol, ticker.pair, ticker.market) == ("PF_ETHUSD", "ETH/USD", "perp")
    assert (ticker.bid, ticker.ask, ticker.mark_price, ticker.index_price) == (
        1751.6, 1751.7, 1751.97553924942, 1751.75)
    assert ticker.quote_volume_24h == 99424431.8132
    # The relative rate is the comparable one; the absolute funding_rate (0.0327) is not stored.
    assert funding.rate == 1.86711875e-05
    assert funding.predicted_rate == 1.783425e-05
    assert funding.next_funding_time == datetime.fromtimestamp(1783591200, tz=timezone.utc)
    assert oi.open_interest == 24085.822
    assert funding.ts == datetime.fromtimestamp(1783587648.112, tz=timezone.utc)


def test_futures_trade_and_book():
    msg = lines("futures_trade.jsonl")[-1]
    msg = {k: float(v) if hasattr(v, "as_tuple") else v for k, v in msg.items()}
    t = p.parse_futures_trade(msg, NOW)
    assert (t.trade_id, t.side, t.size, t.price) == ("05af78ac-a774-478c-a50c-8b9c234e071e",
                                                     "sell", 15000.0, 34969.5)
    snap, delta = lines("futures_book_doc.jsonl")
    bids, asks, seq = p.parse_futures_book_snapshot(snap)
    assert seq == 326072249 and bids[0] == (34892.5, 6385.0) and asks[0] == (34911.5, 20598.0)
    assert p.parse_futures_book_delta(delta) == ("sell", 34981.0, 0.0, 326094134)


def test_futures_instruments():
    body = {"result": "success", "instruments": [
        {"symbol": "pi_xbtusd", "tradeable": True}, {"symbol": "PF_XBTUSD", "tradeable": True},
        {"symbol": "PF_OLDUSD", "tradeable": False}]}
    assert p.parse_futures_instruments(body) == {"PI_XBTUSD", "PF_XBTUSD"}
    with pytest.raises(ValueError):
        p.parse_futures_instruments({"result": "error", "error": "x"})


def rest(name: str) -> dict:
    return orjson.loads((FIX / name).read_bytes())


def test_rest_pair_names():
    assert p.rest_pair("BTC/USD", ep.REST_ASSETS) == "XBTUSD"
    assert p.rest_pair("ETH/USD", ep.REST_ASSETS) == "ETHUSD"
    assert p.rest_pair("DOGE/USDT", ep.REST_ASSETS) == "XDGUSDT"


def test_rest_trades_and_cursor():
    trades, last = p.parse_rest_trades(rest("rest_trades.json"), "BTC/USD", NOW)
    assert last == "1688671969993150842"
    assert [t.trade_id for t in trades] == ["61044952", "61044953", "61044954"]
    t = trades[0]
    assert (t.symbol, t.pair, t.market, t.side, t.price, t.size) == (
        "BTC/USD", "BTC/USD", "spot", "buy", 30243.4, 0.34507674)
    assert abs(t.ts.timestamp() - 1688669597.8277369) < 1e-6
    assert trades[1].side == "sell"
    with pytest.raises(ValueError):
        p.parse_rest_trades({"error": ["EQuery:Unknown asset pair"]}, "BTC/USD", NOW)


def test_rest_ohlc_leaves_out_the_running_candle():
    candles = p.parse_rest_ohlc(rest("rest_ohlc.json"), "BTC/USD", NOW)
    assert [c.ts.timestamp() for c in candles] == [1688671200, 1688671260]
    c = candles[0]
    assert (c.open, c.high, c.low, c.close, c.volume, c.trades, c.closed, c.interval) == (
        30306.1, 30306.2, 30305.7, 30305.7, 3.39243896, 23, True, "1m")
    assert c.quote_volume == pytest.approx(3.39243896 * 30306.1)


def test_futures_history_trades():
    trades = p.parse_futures_history(rest("rest_futures_history.json"), "PF_XBTUSD", NOW)
    assert [t.trade_id for t in trades] == ["11c3d82c-9e70-4fe9-8115-f643f1b162d4",
                                            "5f4a8d0e-1b4f-4a3e-8c1e-2d0f0b6c7a11"]
    t = trades[0]
    assert (t.market, t.pair, t.side, t.price, t.size) == ("perp", "BTC/USD", "sell", 3574.0,
                                                           100.0)
    assert t.ts == datetime(2019, 2, 14, 9, 25, 33, 920000, tzinfo=timezone.utc)


def test_futures_rest_ticker_relative_funding():
    funding, oi = p.parse_futures_rest_ticker(rest("rest_futures_tickers.json"), "PF_XBTUSD", NOW)
    # REST has the absolute rate only: relative = absolute / index price
    assert funding.rate == pytest.approx(0.30248 / 30248.0) == pytest.approx(1e-05)
    assert funding.predicted_rate == pytest.approx(-0.15124 / 30248.0)
    assert (funding.mark_price, funding.index_price) == (30251.5, 30248.0)
    assert funding.ts == datetime(2023, 7, 6, 17, 49, 30, tzinfo=timezone.utc)
    assert oi.open_interest == 2510.0142
    assert oi.open_interest_value == pytest.approx(2510.0142 * 30251.5)
    with pytest.raises(ValueError):
        p.parse_futures_rest_ticker(rest("rest_futures_tickers.json"), "PF_NOPEUSD", NOW)
