"""Kraken parsers against documented payloads (tests/fixtures/kraken), incl. checksum vectors."""
from __future__ import annotations

import dataclasses
import zlib
import time
from datetime import datetime, timezone
from pathlib import Path

import orjson
import pytest

from collector.exchanges.kraken import endpoints as ep
from collector.exchanges.kraken import parsers as p
from collector.orderbook import OrderBook

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "kraken"
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
    snapshot, update = lines("v2_book_snapshot_matic.jsonl") + lines("v2_book_update_matic.jsonl")
    book, expected = load_book(snapshot, 4, 8)
    assert expected == 2439117997 and p.book_crc(book) == 2439117997
    book, expected = load_book(update, 4, 8, book)
    assert expected == 2114181697 and p.book_crc(book) == 2114181697
    assert book.bids.top(10)[-1] == [0.5657, 1098.3947558]
    # Without padding to the instrument precision the documented checksum is not reproduced.
    raw, _ = load_book(snapshot, None, None)
    assert p.book_crc(raw) == 3830085102


def _fast_book(msg_text: str, price_prec: int, qty_prec: int, book=None):
    """The feed's hot path: orjson floats applied as they are, texts made by ``book_crc``."""
    msg = orjson.loads(msg_text)
    book = book or OrderBook(100, keep_text=True)
    item = msg["data"][0]
    p.apply_book(book, msg["type"], item, 10)
    return book, item["checksum"]


def test_fast_path_reproduces_the_documented_checksums():
    (guide,) = (FIX / "v2_book_checksum_guide.jsonl").read_text().split()
    book, expected = _fast_book(guide, 1, 8)
    assert p.book_crc(book, (1, 8), {}) == expected == 3310070434
    assert book.best_bid() == (45283.5, 0.1) and book.best_ask() == (45285.2, 0.001)
    snapshot = (FIX / "v2_book_snapshot_matic.jsonl").read_text().strip()
    update = (FIX / "v2_book_update_matic.jsonl").read_text().strip()
    book, expected = _fast_book(snapshot, 4, 8)
    texts: dict = {}
    assert p.book_crc(book, (4, 8), texts) == expected == 2439117997
    assert texts[0.5666] == "5666"                     # price texts cached per precision
    book, expected = _fast_book(update, 4, 8, book)
    assert p.book_crc(book, (4, 8), texts) == expected == 2114181697
    # truncated to the subscribed depth: levels that fell out are gone
    assert len(book.bids) == len(book.asks) == 10
    assert book.bids.top(10)[-1] == [0.5657, 1098.3947558]
    # a text, once made, is kept: the next check formats nothing
    assert all(type(t) is str for t in book.asks.text.values() if t is not None)


def test_fast_level_texts_equal_the_exact_path_or_refuse():
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
        text = f'{{"price":{num(pp)},"qty":{num(qp)}}}'
        [(_, qty, exact)] = p.levels_exact([p.decode(text)], pp, qp)
        level = orjson.loads(text)
        if qty == 0:
            continue
        try:
            fast = p.level_text(level["price"], level["qty"], (pp, qp), {})
        except p.Inexact:
            continue
        fast_count += 1
        assert fast == exact, text
    assert fast_count > 8000
    # Near a rounding tie, >= 10^15 units of the precision, below one unit: refused (the book
    # is then rebuilt from exact decimals); no precision known: refused.
    for price, qty in ((1.23, 0.123456785), (1.5, 12345678.12345678), (1.5, 1e-9)):
        with pytest.raises(p.Inexact):
            p.level_text(price, qty, (2, 8), {})
    with pytest.raises(p.Inexact):
        p.level_text(1.5, 1.0, None, {})
    # More places than the precision but far from a tie, and ints: the exact path's text.
    assert p.level_text(2, 0.123456789, (2, 8), {}) == "200" + "12345679"


def test_a_level_that_is_not_two_numbers_is_malformed():
    for level in ({"price": "1.5", "qty": 1.0}, {"price": True, "qty": 1.0},
                  {"price": 1.5, "qty": -1.0}, {"price": 0, "qty": 1.0}, {"qty": 1.0}):
        book = OrderBook(10, keep_text=True)
        with pytest.raises((ValueError, KeyError)):
            p.apply_book(book, "snapshot", {"bids": [level], "asks": []}, 10)


def test_exact_path_quantizes_decimals_the_floats_cannot_prove():
    raw = ('{"channel":"book","type":"snapshot","data":[{"symbol":"X/USD","bids":[{"price":1.5,'
           '"qty":0.123456785}],"asks":[],"checksum":1}]}')
    level = orjson.loads(raw)["data"][0]["bids"][0]
    with pytest.raises(p.Inexact):                     # 12345678.5: a tie the float cannot settle
        p.level_text(level["price"], level["qty"], (2, 8), {})
    book = OrderBook(10, keep_text=True)
    p.apply_book_exact(book, "snapshot", p.decode(raw)["data"][0], (2, 8), 10)
    # The Decimal quantized to 8 places (ROUND_HALF_EVEN: to the even 12345678).
    assert book.bids.text == {-1.5: "15012345678"} and book.best_bid() == (1.5, 0.123456785)
    assert p.book_crc(book) == zlib.crc32(b"15012345678") & 0xFFFFFFFF


def fields(record) -> dict:
    """Every normalized field of a record (a one-line mapping mistake changes one of them)."""
    return dataclasses.asdict(record)


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


def spot(symbol: str, ts: datetime) -> dict:
    return {"exchange": "kraken", "symbol": symbol, "pair": symbol, "market": "spot", "ts": ts,
            "received_at": NOW}


def perp(symbol: str, pair: str, ts: datetime) -> dict:
    return {"exchange": "kraken", "symbol": symbol, "pair": pair, "market": "perp", "ts": ts,
            "received_at": NOW}


def test_ticker_snapshot_every_field():
    (msg,) = lines("v2_ticker_snapshot.jsonl")
    t = p.parse_ticker(orjson.loads(orjson.dumps(msg["data"][0], default=float)), NOW)
    assert fields(t) == {**spot("ALGO/USD", utc(2023, 9, 25, 9, 4, 31, 742648)),
                         "last": 0.10035, "bid": 0.10025, "bid_size": 740.0, "ask": 0.10036,
                         "ask_size": 1361.44813783,
                         "open_24h": pytest.approx(0.10035 + 0.00017),   # last - change (quote)
                         "high_24h": 0.10285, "low_24h": 0.09979, "volume_24h": 997038.98383185,
                         "quote_volume_24h": pytest.approx(997038.98383185 * 0.10148),
                         "change_pct_24h": -0.17, "mark_price": None, "index_price": None}


def test_ticker_update_moves_the_ask():
    (msg,) = lines("v2_ticker_update.jsonl")
    t = p.parse_ticker(msg["data"][0], NOW)          # Decimal-decoded numbers work too
    assert (t.bid, t.bid_size, t.ask, t.ask_size) == (0.10025, 740.0, 0.10035, 740.0)


def test_trade_update_every_field():
    (msg,) = lines("v2_trade_update.jsonl")
    (t,) = p.parse_trades(msg, NOW)
    assert fields(t) == {**spot("MATIC/USD", utc(2023, 9, 25, 7, 49, 37, 708706)),
                         "trade_id": "4665906", "price": 0.5117, "size": 40.0, "side": "sell"}


def test_trade_snapshot_keeps_order_and_taker_side():
    (msg,) = lines("v2_trade_snapshot.jsonl")
    trades = p.parse_trades(msg, NOW)
    assert [(t.trade_id, t.side, t.price, t.size, t.ts) for t in trades] == [
        ("4665846", "buy", 0.5147, 6423.46326, utc(2023, 9, 25, 7, 48, 36, 925533)),
        ("4665847", "buy", 0.5147, 1136.19677815, utc(2023, 9, 25, 7, 49, 36, 925603))]
    with pytest.raises(ValueError):
        p.parse_trades({"data": [{**msg["data"][0], "side": "b"}]}, NOW)


def test_ohlc_update_every_field():
    (msg,) = lines("v2_ohlc_update.jsonl")
    c = p.parse_candle(msg["data"][0], NOW)
    # interval_begin (nanosecond RFC 3339) is the candle time, not the deprecated timestamp
    assert fields(c) == {**spot("MATIC/USD", utc(2023, 10, 4, 16, 25)), "interval": "5m",
                         "open": 0.5624, "high": 0.5628, "low": 0.5622, "close": 0.5627,
                         "volume": 30927.68066226,
                         "quote_volume": pytest.approx(30927.68066226 * 0.5626), "trades": 12,
                         "closed": False, "source": "exchange"}


def test_ohlc_snapshot_candles_in_order():
    (msg,) = lines("v2_ohlc_snapshot.jsonl")
    candles = [p.parse_candle(item, NOW) for item in msg["data"]]
    assert [(c.ts, c.high, c.trades, c.volume) for c in candles] == [
        (utc(2023, 10, 4, 15, 25), 0.09875, 1, 201.86015),
        (utc(2023, 10, 4, 15, 30), 0.0988, 13, 16255.46368)]


def test_instrument_precisions():
    msg = {"channel": "instrument", "type": "snapshot", "data": {"assets": [], "pairs": [
        {"symbol": "BTC/USD", "price_precision": 1, "qty_precision": 8},
        {"symbol": "MATIC/USD", "price_precision": 4, "qty_precision": 8}]}}
    assert p.parse_instrument_pairs(msg) == {"BTC/USD": (1, 8), "MATIC/USD": (4, 8)}


def test_book_update_deletes_a_level():
    book = OrderBook(10, keep_text=True)
    p.apply_book(book, "snapshot", {"bids": [{"price": 1.0, "qty": 2.0}],
                                    "asks": [{"price": 1.1, "qty": 3.0}]}, 10)
    p.apply_book(book, "update", {"bids": [{"price": 1.0, "qty": 0}],
                                  "asks": [{"price": 1.2, "qty": 1.0}]}, 10)
    assert (book.best_bid(), book.best_ask(), len(book.asks)) == (None, (1.1, 3.0), 2)
    assert p.book_crc(book, (1, 1), {}) == zlib.crc32(b"1130" b"1210") & 0xFFFFFFFF


def test_symbol_aliases():
    assert p.v2_symbol("XBT/USD") == "BTC/USD"
    assert p.v2_symbol("XXBTZUSD") == "BTC/USD"
    assert p.v2_symbol("BTC/USD") == "BTC/USD"


def test_futures_ticker_every_field_of_ticker_funding_and_open_interest():
    (eth,) = lines("futures_ticker_pf_ethusd.jsonl")
    eth = orjson.loads(orjson.dumps(eth, default=float))
    ticker, funding, oi = p.parse_futures_ticker(eth, NOW)
    ts = datetime.fromtimestamp(1783587648.112, tz=timezone.utc)
    mark = 1751.97553924942
    assert fields(ticker) == {**perp("PF_ETHUSD", "ETH/USD", ts), "last": 1751.7,
                              "bid": 1751.6, "bid_size": 1.459, "ask": 1751.7, "ask_size": 2.886,
                              "open_24h": 1734.8, "high_24h": 1765.4, "low_24h": 1708.8,
                              "volume_24h": 57204.177, "quote_volume_24h": 99424431.8132,
                              "change_pct_24h": 0.97, "mark_price": mark, "index_price": 1751.75}
    # The relative rate is the comparable one; the absolute funding_rate (0.0327) is not stored.
    assert fields(funding) == {**perp("PF_ETHUSD", "ETH/USD", ts), "rate": 1.86711875e-05,
                               "next_funding_time": utc(2026, 7, 9, 10, 0),   # epoch ms 1783591200000
                               "predicted_rate": 1.783425e-05, "mark_price": mark,
                               "index_price": 1751.75, "interval_hours": 1.0}
    assert fields(oi) == {**perp("PF_ETHUSD", "ETH/USD", ts), "open_interest": 24085.822,
                          "open_interest_value": pytest.approx(24085.822 * mark)}


def test_futures_ticker_omits_zero_funding_fields():
    (eth,) = lines("futures_ticker_pf_ethusd.jsonl")
    eth = {k: float(v) if hasattr(v, "as_tuple") else v for k, v in eth.items()
           if not k.startswith("relative_funding") and k != "next_funding_rate_time"}
    _, funding, _ = p.parse_futures_ticker(eth, NOW)
    assert (funding.rate, funding.predicted_rate, funding.next_funding_time) == (0.0, None, None)


def test_futures_trade_fill_every_field():
    (msg,) = lines("futures_trade_fill.jsonl")
    t = p.parse_futures_trade(orjson.loads(orjson.dumps(msg, default=float)), NOW)
    assert fields(t) == {**perp("PI_XBTUSD", "BTC/USD",
                                datetime.fromtimestamp(1612266317.519, tz=timezone.utc)),
                         "trade_id": "05af78ac-a774-478c-a50c-8b9c234e071e", "price": 34969.5,
                         "size": 15000.0, "side": "sell"}


def test_futures_book_snapshot_and_deletion():
    (snap,) = lines("futures_book_snapshot.jsonl")
    (delta,) = lines("futures_book_delete.jsonl")
    bids, asks, seq = p.parse_futures_book_snapshot(snap)
    assert (bids, asks, seq) == ([(34892.5, 6385.0), (34892.0, 10924.0)],
                                 [(34911.5, 20598.0), (34912.0, 2300.0)], 326072249)
    assert p.parse_futures_book_delta(delta) == ("sell", 34981.0, 0.0, 326094134)
    book = OrderBook(100)
    book.load_snapshot(bids, asks, seq)
    p.apply_futures_delta(book, "sell", 34911.5, 0.0, seq + 1)       # sell = ask side, 0 deletes
    p.apply_futures_delta(book, "buy", 34893.0, 2.0, seq + 2)        # buy = bid side
    assert (book.best_bid(), book.best_ask(), book.update_id) == (
        (34893.0, 2.0), (34912.0, 2300.0), seq + 2)


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


def test_rest_trades_every_field_and_cursor():
    trades, last = p.parse_rest_trades(rest("rest_trades.json"), "BTC/USD", NOW)
    assert last == "1688671969993150842"
    assert fields(trades[0]) == {**spot("BTC/USD", datetime.fromtimestamp(
        1688669597.8277369, tz=timezone.utc)), "trade_id": "61044952", "price": 30243.4,
        "size": 0.34507674, "side": "buy"}
    assert [(t.trade_id, t.side, t.price, t.size) for t in trades[1:]] == [
        ("61044953", "sell", 30243.3, 0.0037696), ("61044954", "sell", 30240.0, 0.0037696)]
    with pytest.raises(ValueError):
        p.parse_rest_trades(rest("rest_error_unknown_pair.json"), "BTC/USD", NOW)


def test_rest_ohlc_every_field_without_the_running_candle():
    candles = p.parse_rest_ohlc(rest("rest_ohlc.json"), "BTC/USD", NOW)
    assert [fields(c) for c in candles] == [
        {**spot("BTC/USD", utc(2023, 7, 6, 19, 20)), "interval": "1m", "open": 30306.1,
         "high": 30306.2, "low": 30305.7, "close": 30305.7, "volume": 3.39243896,
         "quote_volume": pytest.approx(3.39243896 * 30306.1), "trades": 23, "closed": True, "source": "exchange"},
        {**spot("BTC/USD", utc(2023, 7, 6, 19, 21)), "interval": "1m", "open": 30304.5,
         "high": 30304.5, "low": 30300.0, "close": 30300.0, "volume": 4.42996871,
         "quote_volume": pytest.approx(4.42996871 * 30300.9), "trades": 18, "closed": True, "source": "exchange"}]


def test_futures_history_every_field_keyed_by_uid():
    trades = p.parse_futures_history(rest("rest_futures_history.json"), "PF_XBTUSD", NOW)
    assert [fields(t) for t in trades] == [
        {**perp("PF_XBTUSD", "BTC/USD", utc(2019, 2, 14, 9, 25, 33, 920000)),
         "trade_id": "11c3d82c-9e70-4fe9-8115-f643f1b162d4", "price": 3574.0, "size": 100.0,
         "side": "sell"},
        {**perp("PF_XBTUSD", "BTC/USD", utc(2019, 2, 14, 9, 25, 33, 100000)),
         "trade_id": "5f4a8d0e-1b4f-4a3e-8c1e-2d0f0b6c7a11", "price": 3573.5, "size": 40.0,
         "side": "buy"}]


def test_futures_history_trade_id_is_a_page_position_not_a_key():
    """F7: ``trade_id`` runs 100, 99, ... in every page; without ``uid`` the key is built from
    the trade itself, so rows of different pages never collide."""
    trades = p.parse_futures_history(rest("rest_futures_history_without_uid.json"),
                                     "PF_XBTUSD", NOW)
    assert [t.trade_id for t in trades] == ["2019-02-14T09:25:33.920Z|3574|100|sell",
                                            "2019-02-14T09:25:33.100Z|3573.5|40|buy"]


def test_futures_rest_ticker_every_field():
    funding, oi = p.parse_futures_rest_ticker(rest("rest_futures_tickers.json"), "PF_XBTUSD", NOW)
    ts = utc(2023, 7, 6, 17, 49, 30)
    # REST has the absolute rate only: relative = absolute / index price
    assert fields(funding) == {**perp("PF_XBTUSD", "BTC/USD", ts),
                               "rate": pytest.approx(0.30248 / 30248.0),
                               "next_funding_time": None,
                               "predicted_rate": pytest.approx(-0.15124 / 30248.0),
                               "mark_price": 30251.5, "index_price": 30248.0,
                               "interval_hours": 1.0}
    assert fields(oi) == {**perp("PF_XBTUSD", "BTC/USD", ts), "open_interest": 2510.0142,
                          "open_interest_value": pytest.approx(2510.0142 * 30251.5)}
    with pytest.raises(ValueError):
        p.parse_futures_rest_ticker(rest("rest_futures_tickers.json"), "PF_NOPEUSD", NOW)


def test_rest_body_rate_limits():
    """F6: HTTP-200 rate-limit bodies pause REST like a 429; other errors do not."""
    assert p.rest_rate_limit(rest("rest_error_rate_limit.json")) == p.RATE_LIMIT_PAUSE_S
    assert p.rest_rate_limit(rest("rest_error_too_many_requests.json")) == p.RATE_LIMIT_PAUSE_S
    assert p.rest_rate_limit(rest("rest_error_unknown_pair.json")) is None
    assert p.rest_rate_limit(rest("rest_ohlc.json")) is None
    until = time.time() + 12
    assert p.rest_rate_limit({"error": [f"EService:Throttled: {until}"]}) == \
        pytest.approx(12, abs=1)


def test_spot_replies_are_judged_by_the_request_they_answer():
    """F1: the failed-unsubscribe reply says method "subscribe"; its req_id says unsubscribe."""
    from collector.exchanges.kraken.requests import FuturesRequests, SpotRequests
    requests = SpotRequests()
    requests.request("book", ["BTC/USD"], "unsubscribe", depth=100)
    (reply,) = lines("v2_unsubscribe_not_found.jsonl")
    assert requests.asked({**reply, "req_id": 1}) == ("unsubscribe", "book")
    (reply,) = lines("v2_subscribe_pair_not_supported.jsonl")
    assert requests.asked(reply) == ("subscribe", None)      # unknown req_id: its own method
    futures = FuturesRequests()
    futures.request("subscribe", "ticker", "PF_XBTUSD")
    futures.request("subscribe", "ticker", "PF_NOPEUSD")
    assert futures.answered({"event": "subscribed", "feed": "ticker",
                             "product_ids": ["PF_XBTUSD"]}) == (None, None)
    (error,) = lines("futures_error_invalid_product.jsonl")
    assert futures.answered(error) == ("ticker", "PF_NOPEUSD")


async def test_book_checksum_checked_within_the_interval_and_before_every_sample(monkeypatch):
    """The CRC of the last update applied is checked once per VERIFY_AFTER_S (or at the next
    snapshot sample, whichever is first), not for every update: a book that diverged is
    resynced before anything is sampled from it."""
    import asyncio

    from collector.exchanges.kraken.feed import KrakenFeed
    from collector.kit.samplers import sample_books
    from common.schema import BookSnapshot
    from common.settings import Settings
    from tests.support.feed_helpers import offline_context
    from tests.support.helpers import wait_for

    monkeypatch.setattr(ep, "VERIFY_AFTER_S", 60.0)     # only the sampler checks here
    settings = Settings(book_snapshot_interval_s=0.01)
    feed = KrakenFeed(settings.kraken, offline_context(settings))
    feed.precision["BTC/USD"] = (1, 8)
    snapshot = (FIX / "v2_book_checksum_guide.jsonl").read_text().strip()
    feed.handle(None, snapshot)
    book = feed.books[("spot", "BTC/USD")]
    assert book.synced and feed.spot_books.unverified == {}       # a snapshot is checked at once
    bad = orjson.dumps({"channel": "book", "type": "update", "data": [{
        "symbol": "BTC/USD", "bids": [{"price": 45283.5, "qty": 0.2}], "asks": [],
        "checksum": 12345, "timestamp": "2023-10-06T17:35:55.440295Z"}]})
    feed.handle(None, bad)
    assert book.synced and feed.spot_books.unverified == {("spot", "BTC/USD"): 12345}
    assert feed.checksum_failures == 0                 # not checked yet
    sampler = asyncio.create_task(sample_books(feed))
    try:
        await wait_for(lambda: _value(feed.checksum_failures == 1), timeout_s=5, what="checked")
    finally:
        sampler.cancel()
    assert not book.synced and feed.spot_books.unverified == {}
    assert not [r for r in feed.writer.records if isinstance(r, BookSnapshot)]
    gap = feed.gaps.find_open("kraken", "spot", "BTC/USD", "book")
    assert gap.cause == "checksum" and "exchange 12345" in gap.detail


async def _value(v):
    return v


async def test_book_checksum_checked_by_the_timer_when_nothing_reads_the_book():
    from collector.exchanges.kraken.feed import KrakenFeed
    from common.settings import Settings
    from tests.support.feed_helpers import offline_context
    from tests.support.helpers import wait_for

    feed = KrakenFeed(Settings().kraken, offline_context())
    feed.precision["BTC/USD"] = (1, 8)
    feed.handle(None, (FIX / "v2_book_checksum_guide.jsonl").read_text().strip())
    good = (FIX / "v2_book_checksum_guide.jsonl").read_text().strip().replace(
        '"type":"snapshot"', '"type":"update"')        # same levels again: same checksum
    feed.handle(None, good)
    feed.handle(None, good.replace("3310070434", "3310070435"))
    assert feed.spot_books.unverified == {("spot", "BTC/USD"): 3310070435}
    await wait_for(lambda: _value(feed.checksum_failures == 1), timeout_s=5, what="timer check")
    assert "local 3310070434 != exchange 3310070435" in \
        feed.gaps.find_open("kraken", "spot", "BTC/USD", "book").detail


# A derivatives ``ticker`` on the unified socket: the v2 ticker fields plus the inferred funding,
# mark, index and open-interest names (docs §6.1; the strict fake sends the same shape).
UNIFIED_TICKER = {"symbol": "PF_XBTUSD", "bid": 30249.0, "bid_qty": 1.5, "ask": 30250.5,
                  "ask_qty": 0.25, "last": 30250.0, "volume": 1520.3, "vwap": 30180.0,
                  "low": 29900.0, "high": 30400.0, "change": 150.0, "change_pct": 0.5,
                  "timestamp": "2023-07-06T17:49:29.512000Z", "mark_price": 30251.5,
                  "index_price": 30248.0, "funding_rate": 1e-05, "funding_rate_prediction": 9e-06,
                  "next_funding_time": "2023-07-06T18:00:00.000000Z", "open_interest": 2510.0142}


def test_unified_ticker_every_field_of_ticker_funding_and_open_interest():
    ticker, funding, oi = p.parse_unified_ticker(dict(UNIFIED_TICKER), NOW)
    ts = utc(2023, 7, 6, 17, 49, 29, 512000)
    assert fields(ticker) == {**perp("PF_XBTUSD", "BTC/USD", ts), "last": 30250.0,
                              "bid": 30249.0, "bid_size": 1.5, "ask": 30250.5, "ask_size": 0.25,
                              "open_24h": 30100.0,                  # last - change (quote)
                              "high_24h": 30400.0, "low_24h": 29900.0, "volume_24h": 1520.3,
                              "quote_volume_24h": 1520.3 * 30180.0, "change_pct_24h": 0.5,
                              "mark_price": 30251.5, "index_price": 30248.0}
    assert fields(funding) == {**perp("PF_XBTUSD", "BTC/USD", ts), "rate": 1e-05,
                               "next_funding_time": utc(2023, 7, 6, 18),
                               "predicted_rate": 9e-06, "mark_price": 30251.5,
                               "index_price": 30248.0, "interval_hours": 1.0}
    assert fields(oi) == {**perp("PF_XBTUSD", "BTC/USD", ts), "open_interest": 2510.0142,
                          "open_interest_value": 2510.0142 * 30251.5}


def test_unified_ticker_without_funding_or_open_interest_gives_the_ticker_only():
    """Absent inferred fields give no funding / open-interest record (docs §6.1)."""
    item = {k: v for k, v in UNIFIED_TICKER.items()
            if k not in ("funding_rate", "funding_rate_prediction", "next_funding_time",
                         "open_interest", "mark_price", "index_price")}
    ticker, funding, oi = p.parse_unified_ticker(item, NOW)
    assert (ticker.market, ticker.mark_price, ticker.index_price, funding, oi) == (
        "perp", None, None, None, None)
    # funding without a next time or a prediction; open interest without a mark: no value
    ticker, funding, oi = p.parse_unified_ticker(
        {**item, "funding_rate": -2e-06, "open_interest": 12.5}, NOW)
    assert (funding.rate, funding.next_funding_time, funding.predicted_rate) == (-2e-06, None, None)
    assert (oi.open_interest, oi.open_interest_value) == (12.5, None)


def test_book_checksum_from_level_texts_reproduces_the_guide():
    """``book_checksum`` over (price text, qty text) pairs: asks first, then bids."""
    (msg,) = lines("v2_book_checksum_guide.jsonl")
    item = msg["data"][0]
    asks = [(pt, qt) for _, _, pt, qt in p.parse_levels(item["asks"], 1, 8)]
    bids = [(pt, qt) for _, _, pt, qt in p.parse_levels(item["bids"], 1, 8)]
    assert p.book_checksum(asks, bids) == 3310070434
    assert p.book_checksum(bids, asks) != 3310070434          # the order is part of the checksum


def test_book_snapshot_after_a_resubscribe_replaces_the_old_book():
    """A resync's snapshot drops every level of the old book; updates only change their levels."""
    book = OrderBook(10, keep_text=True)
    # the book before the resync: its best bid is above every bid of the new snapshot
    p.apply_book(book, "snapshot", {"bids": [{"price": 0.5667, "qty": 2.0}],
                                    "asks": [{"price": 0.5669, "qty": 3.0}]}, 10)
    book.changed = False
    msg = orjson.loads((FIX / "v2_book_snapshot_matic.jsonl").read_text().strip())
    p.apply_book(book, msg["type"], msg["data"][0], 10)
    assert p.book_crc(book, (4, 8), {}) == msg["data"][0]["checksum"] == 2439117997
    assert book.best_bid() == (0.5666, 4831.75496356) and book.changed is True
    assert book.best_ask() == (0.5668, 4410.79769741) and book.asks.levels[0.5669] == 4655.40412487


def test_book_without_instrument_precision_checksums_the_digits_as_sent():
    """No precision for the pair (e.g. derivatives on the unified socket, docs §6.1): the exact
    decimals as sent, unpadded, make the texts; a known pair keeps its own padding."""
    raw = ('{"channel":"book","type":"snapshot","data":[{"symbol":"PF_XBTUSD","bids":[{"price":'
           '30249.5,"qty":0.0125}],"asks":[],"checksum":1234},{"symbol":"MATIC/USD","bids":[],'
           '"asks":[{"price":0.567,"qty":49844.89424998}],"checksum":2114181697}]}')
    items = p.decode(raw)["data"]
    unknown, matic = OrderBook(10, keep_text=True), OrderBook(10, keep_text=True)
    p.apply_book_exact(unknown, "snapshot", items[0], None, 10)
    p.apply_book_exact(matic, "snapshot", items[1], (4, 8), 10)
    assert unknown.bids.text == {-30249.5: "302495125"}
    assert matic.asks.text == {0.567: "5670" + "4984489424998"}      # 0.567 padded to 4 places
    with pytest.raises(p.Inexact):                   # the float path needs the precision
        p.level_text(30249.5, 0.0125, None, {})


def test_book_price_texts_follow_an_instrument_precision_change():
    """The per-pair price-text cache is dropped when the instrument precision changes."""
    caches: dict = {}
    texts = p.price_texts_of(caches, "MATIC/USD", (4, 8))
    assert p.level_text(0.5657, 1098.3947558, (4, 8), texts) == "5657" + "109839475580"
    assert p.price_texts_of(caches, "MATIC/USD", (4, 8)) is texts      # same precision: kept
    texts = p.price_texts_of(caches, "MATIC/USD", (5, 8))
    assert p.level_text(0.5657, 1098.3947558, (5, 8), texts) == "56570" + "109839475580"
    assert caches["MATIC/USD"] == ((5, 8), {0.5657: "56570"})


def test_futures_ticker_of_a_fixed_maturity_contract_has_no_funding():
    """``tag`` month/quarter: no funding record; open interest and the ticker stay."""
    (xbt,) = lines("futures_ticker_pi_xbtusd.jsonl")
    msg = {k: float(v) if hasattr(v, "as_tuple") else v for k, v in xbt.items()
           if "funding" not in k}
    msg.update(product_id="FI_XBTUSD_230331", tag="quarter", maturityTime=1680274800000)
    ticker, funding, oi = p.parse_futures_ticker(msg, NOW)
    assert (ticker.symbol, ticker.pair, ticker.last, funding) == (
        "FI_XBTUSD_230331", "BTC/USD", 21983.5, None)
    assert (oi.open_interest, oi.open_interest_value) == (30072580.0,
                                                          30072580.0 * 21979.68641534714)


def test_futures_book_snapshot_keeps_fractional_sizes():
    """PF_ contracts are 1 base unit: sizes below one contract are real levels."""
    snap = {"feed": "book_snapshot", "product_id": "PF_XBTUSD", "timestamp": 1688665770000,
            "seq": 1200, "tickSize": None,
            "bids": [{"price": 30249.0, "qty": 0.5}, {"price": 30248.5, "qty": 1.2}],
            "asks": [{"price": 30250.5, "qty": 0.0125}]}
    assert p.parse_futures_book_snapshot(snap) == (
        [(30249.0, 0.5), (30248.5, 1.2)], [(30250.5, 0.0125)], 1200)


def test_futures_rest_ticker_matches_lower_case_symbols_and_omitted_prediction():
    """REST spells some symbols in lower case; a row without ``fundingRatePrediction`` has no
    predicted rate."""
    funding, oi = p.parse_futures_rest_ticker(rest("rest_futures_tickers.json"), "PI_XBTUSD", NOW)
    assert (funding.symbol, funding.rate, funding.predicted_rate, funding.mark_price) == (
        "PI_XBTUSD", -1.2e-11 / 30248.0, None, 30250.0)
    assert (oi.open_interest, oi.open_interest_value) == (10000000.0, 10000000.0 * 30250.0)


def test_rest_body_rate_limit_variants():
    """F6: every documented prefix pauses; a throttle instant already past still pauses 1 s."""
    assert p.rest_rate_limit({"error": ["EAuth:Rate limit exceeded"]}) == 30.0
    assert p.rest_rate_limit({"error": [f"EService:Throttled: {time.time() - 5}"]}) == 1.0
    assert p.rest_rate_limit({"error": ["EQuery:Unknown asset pair",
                                        "EAPI:Rate limit exceeded: 1700000000"]}) == 30.0


def test_ticker_from_exact_decimals_stores_floats_in_every_field():
    """A message the feed re-decoded with ``decode`` (Decimal numbers) gives the same floats as
    the orjson path: a Decimal left in a record would not be a BSON double."""
    (msg,) = lines("v2_ticker_update.jsonl")
    t = p.parse_ticker(msg["data"][0], NOW)
    values = fields(t)
    assert values == {**spot("ALGO/USD", utc(2023, 9, 25, 9, 4, 31, 742648)),
                      "last": 0.10035, "bid": 0.10025, "bid_size": 740.0, "ask": 0.10035,
                      "ask_size": 740.0, "open_24h": 0.10035 - -0.00017, "high_24h": 0.10285,
                      "low_24h": 0.09979, "volume_24h": 997038.98383185,
                      "quote_volume_24h": 997038.98383185 * 0.10148, "change_pct_24h": -0.17,
                      "mark_price": None, "index_price": None}
    assert {k for k, v in values.items() if type(v) is float} == {
        "last", "bid", "bid_size", "ask", "ask_size", "open_24h", "high_24h", "low_24h",
        "volume_24h", "quote_volume_24h", "change_pct_24h"}


def test_rfc3339_times_keep_their_sub_second_digits():
    """Millisecond (futures REST) and nanosecond (v2) RFC 3339 forms, truncated to microseconds;
    the feed's fast parser gives the same instant."""
    for text, expected in (("2023-07-06T17:49:29.512Z", utc(2023, 7, 6, 17, 49, 29, 512000)),
                           ("2023-10-04T16:26:30.524394914Z",
                            utc(2023, 10, 4, 16, 26, 30, 524394))):
        assert p.parse_time(text) == expected == p.parse_time_fast(text)
        assert p.parse_time(text).utcoffset().total_seconds() == 0


def test_fast_book_deletions_carry_no_text():
    """``qty`` 0 deletes a level (docs §2.3), whatever the JSON number's form (0.00000000 is a
    float, a pair with qty precision 0 sends an int): level and text both gone."""
    book = OrderBook(10, keep_text=True)
    p.apply_book(book, "snapshot", {"bids": [{"price": 0.5666, "qty": 1.5},
                                             {"price": 0.5665, "qty": 2.0}], "asks": []}, 10)
    assert p.book_crc(book, (4, 8), {}) == zlib.crc32(b"5666150000000" b"5665200000000")
    p.apply_book(book, "update", {"bids": [{"price": 0.5666, "qty": 0.0},
                                           {"price": 0.5665, "qty": 0}], "asks": []}, 10)
    assert (len(book.bids), book.bids.text) == (0, {})


def test_fast_levels_of_whole_numbers_when_the_precision_is_zero():
    """With precision 0 the wire numbers have no fraction and orjson decodes them as ints: the
    texts are the digits, the stored price and size are floats, also from a cached price text."""
    cache: dict = {}
    assert p.level_text(6150000, 3, (0, 0), cache) == "61500003"
    assert p.level_text(6150000, 1, (0, 0), cache) == "61500001" and cache == {6150000: "6150000"}
    book = OrderBook(10, keep_text=True)
    p.apply_book(book, "snapshot", {"bids": [{"price": 6150000, "qty": 3}], "asks": []}, 10)
    assert book.best_bid() == (6150000.0, 3.0)
    assert [type(v) for v in book.best_bid()] == [float, float]
    assert p.levels_exact(p.decode('[{"price":6150000,"qty":1}]'), 0, 0) == [
        (6150000.0, 1.0, "61500001")]


def test_fast_levels_refuse_a_tie_just_below_the_half():
    """5.000033315 at 8 places: its float is 500003331.4999999 units, a tie the float cannot
    decide; the exact decimal rounds half-even to ...32, so the fast path must refuse."""
    with pytest.raises(p.Inexact):
        p.level_text(1.5, 5.000033315, (2, 8), {})
    assert p.levels_exact(p.decode('[{"price":1.5,"qty":5.000033315}]'), 2, 8) == [
        (1.5, 5.000033315, "150" + "500003332")]


def test_checksum_covers_the_top_ten_of_a_deeper_book():
    """The feed may subscribe depth 25 (docs §2.3): levels 11+ are kept but not checksummed
    (nor formatted)."""
    msg = orjson.loads((FIX / "v2_book_checksum_guide.jsonl").read_text().strip())
    item = msg["data"][0]
    item["asks"] += [{"price": 45300.0 + i, "qty": 0.5} for i in range(3)]
    item["bids"] += [{"price": 45270.0 - i, "qty": 0.5} for i in range(3)]
    book = OrderBook(25, keep_text=True)
    p.apply_book(book, msg["type"], item, 25)
    assert p.book_crc(book, (1, 8), {}) == item["checksum"] == 3310070434
    assert len(book.asks) == len(book.bids) == 13
    assert book.asks.text[45300.0] is None and book.bids.text[-45270.0] is None


def test_futures_buy_trade_and_bid_delta():
    """``side`` buy (the taker bought) on a trade, and a bid level (``buy``) on the book feed."""
    trade = {"feed": "trade", "product_id": "PF_XBTUSD",
             "uid": "9b7a6c40-5f3e-4d21-9a0b-1c2d3e4f5a6b", "side": "buy", "type": "fill",
             "seq": 41234, "time": 1688665770512, "qty": 0.0125, "price": 30250.5}
    t = p.parse_futures_trade(trade, NOW)
    assert (t.trade_id, t.side, t.price, t.size, t.ts) == (
        "9b7a6c40-5f3e-4d21-9a0b-1c2d3e4f5a6b", "buy", 30250.5, 0.0125,
        utc(2023, 7, 6, 17, 49, 30, 512000))
    delta = {"feed": "book", "product_id": "PF_XBTUSD", "side": "buy", "seq": 326094135,
             "price": 34980.5, "qty": 1500.0, "timestamp": 1612269953630}
    assert p.parse_futures_book_delta(delta) == ("buy", 34980.5, 1500.0, 326094135)
    with pytest.raises(ValueError):
        p.parse_futures_book_delta({**delta, "qty": -1.0})


def test_futures_rest_ticker_of_a_fixed_maturity_contract_has_no_funding():
    """REST ``tag`` quarter: open interest only (a fixed-maturity contract has no funding)."""
    body = {"result": "success", "serverTime": "2023-07-06T17:49:30.000Z", "tickers": [
        {"symbol": "FI_XBTUSD_230929", "last": 30480.0, "tag": "quarter", "pair": "XBT:USD",
         "markPrice": 30478.5, "indexPrice": 30248.0, "openInterest": 1520.0,
         "suspended": False, "postOnly": False}]}
    funding, oi = p.parse_futures_rest_ticker(body, "FI_XBTUSD_230929", NOW)
    assert funding is None
    assert fields(oi) == {**perp("FI_XBTUSD_230929", "BTC/USD", utc(2023, 7, 6, 17, 49, 30)),
                          "open_interest": 1520.0, "open_interest_value": 1520.0 * 30478.5}


def test_rest_ohlc_keeps_low_and_close_apart():
    """Row ``[time, open, high, low, close, vwap, volume, count]``: each price in its own field."""
    body = {"error": [], "result": {"XXBTZUSD": [
        [1688671380, "30291.4", "30295.0", "30288.1", "30294.2", "30292.3", "1.51234567", 14],
        [1688671440, "30294.2", "30296.0", "30293.5", "30295.1", "30294.8", "0.40000000", 3]],
        "last": 1688671380}}
    (c,) = p.parse_rest_ohlc(body, "BTC/USD", NOW)
    assert (c.ts, c.open, c.high, c.low, c.close, c.volume, c.quote_volume, c.trades) == (
        utc(2023, 7, 6, 19, 23), 30291.4, 30295.0, 30288.1, 30294.2, 1.51234567,
        1.51234567 * 30292.3, 14)


def test_level_text_refuses_what_the_float_proof_does_not_cover():
    """``_exact_text``'s contract: positive numbers below 10^15 units of the precision, and a
    precision whose power of ten is an exact float (10^22 is the last); anything else is refused
    (the pair is then rebuilt from exact decimals)."""
    for price, qty, precision in ((0, 1.0, (2, 8)), (True, 1.0, (2, 8)),
                                  (10 ** 13, 1.0, (2, 8)),          # 10^15 units, an int
                                  (1e-10, 1.0, (23, 8)), (1.5, 1e-10, (2, 23))):
        with pytest.raises(p.Inexact):
            p.level_text(price, qty, precision, {})
    assert p.level_text(10 ** 13 - 1, 1, (2, 0), {}) == "999999999999900" + "1"
    assert p.level_text(1e-10, 1.0, (22, 0), {}) == "1000000000000" + "1"
    assert p.level_text(1.5, 1e-10, (1, 22), {}) == "15" + "1000000000000"


def test_exact_path_snapshot_replaces_and_update_changes_the_book():
    """``apply_book_exact``: a snapshot drops the old levels, an update only touches its own;
    both mark the book changed (the snapshot sampler stores only changed books)."""
    book = OrderBook(10, keep_text=True)
    old = p.decode('{"bids":[{"price":9.0,"qty":1.0}],"asks":[{"price":11.0,"qty":1.0}]}')
    p.apply_book_exact(book, "snapshot", old, (1, 1), 10)
    book.changed = False
    new = p.decode('{"bids":[{"price":8.5,"qty":2.0}],"asks":[{"price":11.5,"qty":3.0}]}')
    p.apply_book_exact(book, "snapshot", new, (1, 1), 10)
    assert (book.bids.top(5), book.asks.top(5), book.changed) == ([[8.5, 2.0]], [[11.5, 3.0]], True)
    book.changed = False
    update = p.decode('{"bids":[{"price":8.0,"qty":1.5}],"asks":[]}')
    p.apply_book_exact(book, "update", update, (1, 1), 10)
    assert (book.bids.top(5), book.changed) == ([[8.5, 2.0], [8.0, 1.5]], True)
    assert p.book_crc(book) == zlib.crc32(b"115" b"30" b"85" b"20" b"80" b"15") & 0xFFFFFFFF


def test_rest_error_bodies_are_reported_with_the_exchange_error():
    """Errors arrive in the body (docs §3 and §5): the raised message, which the feed reports
    on /health, carries the exchange's own error text."""
    unknown = orjson.loads((FIX / "rest_error_unknown_pair.json").read_text())
    with pytest.raises(ValueError) as spot:
        p.parse_rest_trades(unknown, "BTC/USD", NOW)
    assert str(spot.value) == "Kraken REST error: ['EQuery:Unknown asset pair']"
    futures_error = {"result": "error", "error": "apiLimitExceeded",
                     "serverTime": "2023-01-01T00:00:00.000Z"}
    with pytest.raises(ValueError) as history:
        p.parse_futures_history(futures_error, "PF_XBTUSD", NOW)
    assert str(history.value) == "Kraken Futures REST error: 'apiLimitExceeded'"
    with pytest.raises(ValueError) as instruments:
        p.parse_futures_instruments(futures_error)
    assert str(instruments.value) == "instruments request failed: 'apiLimitExceeded'"
