"""OKX v5 parsers against documented payloads, plus the feed's book sequence/checksum rules."""
from __future__ import annotations

import dataclasses
import zlib
from datetime import datetime, timezone
from decimal import Decimal

import orjson
import pytest

from collector.exchanges.okx import parsers
from collector.exchanges.okx.feed import OkxFeed
from common.schema import ms_to_dt
from common.settings import Settings
from tests.conftest import load_jsonl
from tests.support.feed_helpers import offline_context

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def test_spot_ticker_units():
    msg = load_jsonl("okx/tickers.jsonl")[2]
    [t] = parsers.parse_tickers(msg, NOW)
    assert (t.exchange, t.symbol, t.pair, t.market) == ("okx", "BTC-USDT", "BTC/USDT", "spot")
    assert t.last == 30236 and t.bid == 30228.6 and t.bid_size == 0.23393
    assert t.ask == 30228.7 and t.ask_size == 1.55896972
    assert t.volume_24h == 17602.13085371 and t.quote_volume_24h == 525802090.62716611
    assert t.open_24h == 29700.4 and t.high_24h == 31073 and t.low_24h == 28020.3
    assert t.change_pct_24h == pytest.approx((30236 - 29700.4) / 29700.4 * 100)
    assert t.ts == ms_to_dt(1652459224956)


def test_swap_ticker_contracts_to_base():
    msg = load_jsonl("okx/tickers.jsonl")[1]          # UNI-USD-SWAP, sizes in contracts
    [t] = parsers.parse_tickers(msg, NOW, ct_val=10.0)
    assert t.market == "perp" and t.pair == "UNI/USD"
    assert t.bid_size == 960.0 and t.ask_size == 250.0
    assert t.volume_24h == 577730.7823                  # volCcy24h: base coin for SWAP
    assert t.quote_volume_24h == pytest.approx(577730.7823 * 5.123)


def test_trades_spot_and_swap():
    [spot] = parsers.parse_trades(load_jsonl("okx/trades.jsonl")[2], NOW)
    assert spot.trade_id == "338476307" and spot.price == 30236 and spot.size == 0.0002
    assert spot.side == "buy" and spot.market == "spot" and spot.ts == ms_to_dt(1652459224818)
    msg = load_jsonl("okx/trades.jsonl")[1]
    msg["arg"]["instId"] = msg["data"][0]["instId"] = "BTC-USDT-SWAP"
    msg["data"][0]["sz"] = "123"
    [swap] = parsers.parse_trades(msg, NOW, ct_val=0.01)
    assert swap.market == "perp" and swap.size == pytest.approx(1.23) and swap.side == "sell"


def test_candle():
    msg = load_jsonl("okx/candle.jsonl")[0]
    msg["arg"]["channel"] = "candle1m"
    [c] = parsers.parse_candles(msg, NOW)
    assert c.interval == "1m" and c.ts == ms_to_dt(1597026383085) and c.closed is True
    assert (c.open, c.high, c.low, c.close) == (8533.02, 8553.74, 8527.17, 8548.26)
    assert c.volume == 45247 and c.quote_volume == 5529.5858061
    msg["arg"]["instId"] = "BTC-USDT-SWAP"
    msg["data"][0][8] = "0"
    [c] = parsers.parse_candles(msg, NOW, ct_val=0.01)
    assert c.market == "perp" and c.volume == 529.5858061 and c.closed is False
    assert parsers.candle_interval("candle1H") == "1h"
    assert parsers.candle_interval("candle1D") == "1d"


def test_funding_rate():
    [f] = parsers.parse_funding(load_jsonl("okx/funding-rate.jsonl")[0], NOW)
    assert f.symbol == "BTC-USD-SWAP" and f.market == "perp"
    assert f.rate == 0.0001875391284828 and f.predicted_rate is None
    assert f.next_funding_time == ms_to_dt(1700726400000) and f.interval_hours == 8
    assert f.ts == ms_to_dt(1700724675402)
    [f] = parsers.parse_funding(load_jsonl("okx/funding-rate.jsonl")[1], NOW)
    assert f.rate == 0.0001 and f.predicted_rate == 0.0002 and f.interval_hours == 8


def test_open_interest():
    msg = load_jsonl("okx/open-interest.constructed.jsonl")[0]
    [oi] = parsers.parse_open_interest(msg, NOW, ct_val=0.01)
    assert oi.open_interest == 5654.74 and oi.ts == ms_to_dt(1630338003010)
    del msg["data"][0]["oiCcy"]
    [oi] = parsers.parse_open_interest(msg, NOW, ct_val=0.01)
    assert oi.open_interest == pytest.approx(5654.74)


def test_books_parse_keeps_text_and_converts_contracts():
    msg = load_jsonl("okx/books_doc.jsonl")[0]
    [b] = parsers.parse_books(msg)
    assert b.snapshot and b.prev_seq_id == -1 and b.seq_id == 123456 and b.checksum == 0
    assert b.asks[1] == (8477.0, 7.0, "8477", "7")
    msg["arg"]["instId"] = "BTC-USDT-SWAP"
    [b] = parsers.parse_books(msg, ct_val=0.01)
    assert b.bids[0][:2] == (8476.97, 2.56) and b.bids[0][3] == "256"


@pytest.mark.parametrize("mutate", [
    lambda m: m.pop("arg"),
    lambda m: m["data"][0].pop("seqId"),
    lambda m: m.__setitem__("action", "weird"),
    lambda m: m.__setitem__("data", {"asks": []}),
    lambda m: m["data"][0]["asks"].append(["nan?", "1", "0", "1"]),
])
def test_malformed_books_raise(mutate):
    msg = load_jsonl("okx/books_doc.jsonl")[0]
    mutate(msg)
    with pytest.raises((KeyError, ValueError, TypeError)):
        parsers.parse_books(msg)


def test_malformed_trade_raises():
    msg = load_jsonl("okx/trades.jsonl")[2]
    msg["data"][0]["side"] = "up"
    with pytest.raises(ValueError):
        parsers.parse_trades(msg, NOW)


def test_checksum_doc_example():
    assert parsers.checksum_string([("3366.1", "7"), ("3366", "6")],
                                   [("3366.8", "9"), ("3368", "8")]) == \
        "3366.1:7:3366.8:9:3366:6:3368:8"
    value = parsers.checksum([("3366.1", "7"), ("3366", "6")], [("3366.8", "9"), ("3368", "8")])
    crc = zlib.crc32(b"3366.1:7:3366.8:9:3366:6:3368:8")
    assert value == (crc - 2 ** 32 if crc >= 2 ** 31 else crc)
    assert -2 ** 31 <= value < 2 ** 31


def test_sequence_rule():
    assert parsers.sequence_ok(10, 10, 15)
    assert parsers.sequence_ok(15, 15, 15)        # no-change heartbeat
    assert parsers.sequence_ok(15, 15, 3)         # reset after maintenance
    assert not parsers.sequence_ok(15, 14, 16)    # gap
    assert not parsers.sequence_ok(None, 1, 2)


# ---- books in the feed -----------------------------------------------------------------------
def reference_checksum(bids: dict[str, str], asks: dict[str, str]) -> int:
    """Independent implementation (as verified against the 2022 capture): Decimal sort."""
    b = sorted(bids.items(), key=lambda kv: -Decimal(kv[0]))[:25]
    a = sorted(asks.items(), key=lambda kv: Decimal(kv[0]))[:25]
    parts = []
    for i in range(max(len(a), len(b))):
        if i < len(b):
            parts += b[i]
        if i < len(a):
            parts += a[i]
    crc = zlib.crc32(":".join(parts).encode())
    return crc - 2 ** 32 if crc >= 2 ** 31 else crc


def books(action, prev, seq, bids=(), asks=(), inst="BTC-USDT", checksum=0):
    return {"arg": {"channel": "books", "instId": inst}, "action": action,
            "data": [{"asks": [list(a) for a in asks], "bids": [list(b) for b in bids],
                      "ts": "1597026383085", "checksum": checksum, "prevSeqId": prev,
                      "seqId": seq}]}


def feed() -> OkxFeed:
    return OkxFeed(Settings().okx, offline_context())


def apply(f: OkxFeed, msg) -> None:
    f.handle(None, orjson.dumps(msg))


async def test_doc_sequence_example():
    f = feed()
    apply(f, books("snapshot", -1, 10, [("100", "1", "0", "1")], [("101", "1", "0", "1")]))
    book = f.books[("spot", "BTC-USDT")]
    assert book.synced and book.update_id == 10
    apply(f, books("update", 10, 15, [("100.5", "2", "0", "1")]))
    apply(f, books("update", 15, 15))                        # no-change heartbeat
    apply(f, books("update", 15, 3, [], [("100.9", "4", "0", "1")]))   # sequence reset
    apply(f, books("update", 3, 5, [("100", "0", "0", "0")]))
    assert book.synced and book.update_id == 5 and f.stats.gaps == 0
    assert book.bids.top(5) == [[100.5, 2.0]] and book.best_ask() == (100.9, 4.0)
    # a gap resyncs this instrument only
    apply(f, books("snapshot", -1, 7, [("200", "1", "0", "1")], [("201", "1", "0", "1")],
                   inst="BTC-USDC"))
    apply(f, books("update", 4, 9, [("100.1", "1", "0", "1")]))
    assert not book.synced and f.stats.gaps == 1
    assert f.books[("spot", "BTC-USDC")].synced
    apply(f, books("update", 9, 10))                          # ignored while resyncing
    assert not book.synced
    apply(f, books("snapshot", -1, 20, [("99", "1", "0", "1")], [("101", "1", "0", "1")]))
    assert book.synced and book.update_id == 20


async def test_checksum_pass_and_mismatch_with_real_sample():
    f = feed()
    snapshot = load_jsonl("okx/books_doc.jsonl")[0]
    data = snapshot["data"][0]
    bids = {lvl[0]: lvl[1] for lvl in data["bids"]}
    asks = {lvl[0]: lvl[1] for lvl in data["asks"]}
    data["checksum"] = reference_checksum(bids, asks)
    apply(f, snapshot)
    book = f.books[("spot", "BTC-USDT")]
    assert book.synced and f.stats.gaps == 0
    # an update: the checksum is over the book *after* applying it, with raw strings
    update = books("update", 123456, 123457, [("8476.97", "0", "0", "0"), ("8476.99", "3.10", "0", "1")],
                   [("8477", "8", "0", "2")])
    del bids["8476.97"]
    bids["8476.99"] = "3.10"
    asks["8477"] = "8"
    update["data"][0]["checksum"] = reference_checksum(bids, asks)
    apply(f, update)
    assert book.synced and f.stats.gaps == 0 and book.update_id == 123457
    assert book.best_bid() == (8476.99, 3.1)
    bad = books("update", 123457, 123458, [("8476.99", "3", "0", "1")], checksum=12345)
    apply(f, bad)
    assert not book.synced and f.stats.gaps == 1
    gap = f.gaps.find_open("okx", "spot", "BTC-USDT", "book")
    assert gap.cause == "checksum" and "exchange 12345" in gap.detail


async def test_swap_book_in_base_units():
    f = feed()
    f.ct_val["BTC-USDT-SWAP"] = 0.01
    apply(f, books("snapshot", -1, 1, [("100", "250", "0", "3")], [("101", "7", "0", "1")],
                   inst="BTC-USDT-SWAP"))
    book = f.books[("perp", "BTC-USDT-SWAP")]
    assert book.best_bid() == (100.0, 2.5) and book.best_ask() == (101.0, 0.07)


def test_heartbeat_policy_and_urls():
    f = feed()
    conns = f.build_connections()
    urls = sorted(c.url for c in conns)
    assert urls == ["wss://ws.okx.com:8443/ws/v5/business"] * 2 + \
        ["wss://ws.okx.com:8443/ws/v5/public"] * 2          # spot and SWAP connections
    for conn in conns:
        hb = conn.heartbeat
        assert hb.app_ping() == "ping" and hb.ping_only_when_quiet and hb.app_ping_interval_s < 30
    assert OkxFeed.spec.limits.connect_interval_s >= 0.35
    assert f.handle(conns[0], "pong") is False


# ---- REST backfill payloads ------------------------------------------------------------------
def test_rest_trades_and_candles():
    payload = load_jsonl("okx/rest_trades.jsonl")[0]
    newest, older = parsers.parse_rest_trades(payload, NOW)
    assert (newest.trade_id, newest.side, newest.size, newest.price) == \
        ("734864333", "sell", 0.00013669, 102537.9)
    assert older.trade_id == "734864332" and older.ts == ms_to_dt(1747087161666)
    with pytest.raises(ValueError):
        parsers.parse_rest_trades({"code": "51000", "msg": "Parameter limit error", "data": []},
                                  NOW)
    payload = load_jsonl("okx/rest_candles.jsonl")[0]
    candles = parsers.parse_rest_candles(payload, "BTC-USDT", "1m", NOW)
    assert [c.ts for c in candles] == [ms_to_dt(1625097600000), ms_to_dt(1625097660000)]
    assert candles[0].open == 33528.6 and candles[0].high == 33870 and candles[0].volume == 778.838
    assert candles[0].interval == "1m" and not any(c.closed for c in candles)   # confirm "0"
    payload["data"][0][8] = "1"
    assert [c.closed for c in parsers.parse_rest_candles(payload, "BTC-USDT", "1m", NOW)] == \
        [True, False]


# ---- trade-id continuity ---------------------------------------------------------------------
def trades(inst: str, *ids: int) -> bytes:
    """A ``trades-all`` push per fill id (the feed's trade channel)."""
    return orjson.dumps({"arg": {"channel": "trades-all", "instId": inst}, "data": [
        {"instId": inst, "tradeId": str(i), "px": "100", "sz": "1", "side": "buy", "source": "0",
         "ts": str(1_700_000_000_000 + i)} for i in ids]})


def trade_gaps(f: OkxFeed):
    return [g for g in f.gaps.recent if g.stream == "trade"]


def test_trade_id_range_of_an_aggregate_ends_at_its_trade_id():
    """Documented: a ``trades`` aggregate's tradeId is the LAST fill (123 with count 3 covers
    121..123); a ``trades-all`` / REST object is one fill."""
    assert parsers.trade_id_range({"tradeId": "123", "count": "3"}) == (121, 123)
    assert parsers.trade_id_range({"tradeId": "130639474"}) == (130639474, 130639474)


async def test_trade_id_holes_and_overlaps():
    f = feed()
    f.cfg.backfill = False
    f.handle(None, trades("BTC-USDT", 100, 101, 102))
    # overlaps (a reconnect or rotation replaying fills) are no holes, and do not move the
    # last id back: the next new id continues from 103
    f.handle(None, trades("BTC-USDT", 101, 102))
    f.handle(None, trades("BTC-USDT", 103))
    # another instrument has its own sequence
    f.handle(None, trades("BTC-USDT-SWAP", 5_000, 5_001))
    assert trade_gaps(f) == [] and f.stats.malformed == 0
    f.handle(None, trades("BTC-USDT", 109))
    [gap] = trade_gaps(f)
    assert (gap.symbol, gap.market, gap.cause) == ("BTC-USDT", "spot", "sequence_gap")
    assert gap.extra["missing_ids"] == [104, 108] and gap.end is not None
    assert gap.start == ms_to_dt(1_700_000_000_103) and gap.end == ms_to_dt(1_700_000_000_109)
    # after a disconnect the connection gap covers the hole: no second, trade-id gap
    [conn] = [c for c in f.build_connections() if c.name == "okx:business"]
    f._on_close(conn, "closed")
    f.handle(None, trades("BTC-USDT", 200))
    assert len(trade_gaps(f)) == 1


async def test_trade_id_check_turns_itself_off_when_ids_are_not_consecutive():
    f = feed()
    f.cfg.backfill = False
    for i in range(10):
        f.handle(None, trades("BTC-USDC", i * 10))
    assert len(trade_gaps(f)) == 5 and ("spot", "BTC-USDC") in f.trade_ids.switched_off
    assert any("not consecutive" in key for key in f.stats.errors)
    f.handle(None, trades("BTC-USDC", 1_000))
    assert len(trade_gaps(f)) == 5


def test_checksum_from_kept_fragments_matches_text():
    """The feed's checksum path (each level's "price:size" text kept by the book) gives the
    same value as the text one, sides of unequal length included."""
    from collector.orderbook import OrderBook
    book = OrderBook(400, keep_fragments=True)
    book.bids.apply_text_scaled([["3366.1", "7", "0", "1"], ["3366", "6", "0", "1"],
                                    ["3365.5", "0.10", "0", "1"], ["3360", "1", "0", "1"]])
    book.asks.apply_text_scaled([["3366.8", "9", "0", "1"], ["3368", "8", "0", "1"]])
    book.bids.apply_text_scaled([["3360", "0", "0", "0"]])          # deleted
    bids = [("3366.1", "7"), ("3366", "6"), ("3365.5", "0.10")]
    asks = [("3366.8", "9"), ("3368", "8")]
    assert book.bids.top(5) == [[3366.1, 7.0], [3366.0, 6.0], [3365.5, 0.1]]
    assert parsers.checksum_fragments(book.bids.top_fragments(25),
                                      book.asks.top_fragments(25)) == parsers.checksum(bids, asks)
    book.truncate(1)
    assert book.bids.top_fragments(25) == ["3366.1:7"] and book.asks.top_fragments(25) == ["3366.8:9"]


# ---- pinned: every normalized field of every record type, from documented payloads ----------
# (fixtures one file per payload variant; a one-line mistake in a mapping fails here)
def fields(record) -> dict:
    out = {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
    # Candle.source (main, after this branch point): OKX candles come from the exchange.
    assert out.pop("source", "exchange") == "exchange"
    return out


BASE = {"exchange": "okx", "received_at": NOW}


def test_pinned_spot_ticker():
    [t] = parsers.parse_tickers(load_jsonl("okx/tickers.jsonl")[2], NOW)
    assert fields(t) == {**BASE, "symbol": "BTC-USDT", "pair": "BTC/USDT", "market": "spot",
                         "ts": ms_to_dt(1652459224956), "last": 30236.0, "bid": 30228.6,
                         "bid_size": 0.23393, "ask": 30228.7, "ask_size": 1.55896972,
                         "open_24h": 29700.4, "high_24h": 31073.0, "low_24h": 28020.3,
                         "volume_24h": 17602.13085371, "quote_volume_24h": 525802090.62716611,
                         "change_pct_24h": (30236 - 29700.4) / 29700.4 * 100,
                         "mark_price": None, "index_price": None}


def test_pinned_swap_ticker_contracts_to_base():
    [t] = parsers.parse_tickers(load_jsonl("okx/tickers.jsonl")[1], NOW, ct_val=10.0)
    assert fields(t) == {**BASE, "symbol": "UNI-USD-SWAP", "pair": "UNI/USD", "market": "perp",
                         "ts": ms_to_dt(1652459223143), "last": 5.123, "bid": 5.134,
                         "bid_size": 960.0, "ask": 5.142, "ask_size": 250.0, "open_24h": 4.799,
                         "high_24h": 5.458, "low_24h": 4.537,
                         "volume_24h": 577730.7823,                   # volCcy24h: base coin
                         "quote_volume_24h": 577730.7823 * 5.123,
                         "change_pct_24h": (5.123 - 4.799) / 4.799 * 100,
                         "mark_price": None, "index_price": None}


def test_pinned_trades_all_fill():
    [t] = parsers.parse_trades(load_jsonl("okx/trades-all_doc.jsonl")[0], NOW)
    assert fields(t) == {**BASE, "symbol": "BTC-USDT", "pair": "BTC/USDT", "market": "spot",
                         "ts": ms_to_dt(1630048897897), "trade_id": "130639474",
                         "price": 42219.9, "size": 0.12060306, "side": "buy"}


def test_pinned_swap_trade_taker_sell_in_base_units():
    [t] = parsers.parse_trades(load_jsonl("okx/trades.jsonl")[1], NOW, ct_val=10.0)
    assert fields(t) == {**BASE, "symbol": "UNI-USD-SWAP", "pair": "UNI/USD", "market": "perp",
                         "ts": ms_to_dt(1652459215150), "trade_id": "12883020", "price": 5.123,
                         "size": 1000.0, "side": "sell"}


def test_pinned_rest_trade_is_one_fill():
    [t] = parsers.parse_rest_trades(load_jsonl("okx/rest_trades_fill_doc.jsonl")[0], NOW)
    assert fields(t) == {**BASE, "symbol": "BTC-USDT", "pair": "BTC/USDT", "market": "spot",
                         "ts": ms_to_dt(1654161646974), "trade_id": "242720720",
                         "price": 29963.2, "size": 0.00001, "side": "sell"}
    assert parsers.trade_id_range(load_jsonl("okx/rest_trades_fill_doc.jsonl")[0]["data"][0]) \
        == (242720720, 242720720)


def test_pinned_trades_aggregate_covers_the_fills_before_its_id():
    msg = load_jsonl("okx/trades_aggregate_doc.jsonl")[0]
    assert parsers.trade_id_range(msg["data"][0]) == (130639472, 130639474)


def test_pinned_candles_spot_closed_and_swap_running():
    msg = load_jsonl("okx/candle.jsonl")[0]
    [c] = parsers.parse_candles(msg, NOW)
    assert fields(c) == {**BASE, "symbol": "BTC-USDT", "pair": "BTC/USDT", "market": "spot",
                         "ts": ms_to_dt(1597026383085), "interval": "1d", "open": 8533.02,
                         "high": 8553.74, "low": 8527.17, "close": 8548.26,
                         "volume": 45247.0,                # vol: base for spot
                         "quote_volume": 5529.5858061,     # volCcyQuote
                         "trades": None, "closed": True}
    msg["arg"] = {"channel": "candle1m", "instId": "BTC-USDT-SWAP"}
    msg["data"][0][8] = "0"
    [c] = parsers.parse_candles(msg, NOW, ct_val=0.01)
    assert fields(c) == {**BASE, "symbol": "BTC-USDT-SWAP", "pair": "BTC/USDT", "market": "perp",
                         "ts": ms_to_dt(1597026383085), "interval": "1m", "open": 8533.02,
                         "high": 8553.74, "low": 8527.17, "close": 8548.26,
                         "volume": 529.5858061,            # volCcy: base for derivatives
                         "quote_volume": 5529.5858061, "trades": None, "closed": False}


def test_pinned_funding():
    [f] = parsers.parse_funding(load_jsonl("okx/funding-rate.jsonl")[0], NOW)
    assert fields(f) == {**BASE, "symbol": "BTC-USD-SWAP", "pair": "BTC/USD", "market": "perp",
                         "ts": ms_to_dt(1700724675402), "rate": 0.0001875391284828,
                         "next_funding_time": ms_to_dt(1700726400000),   # fundingTime
                         "predicted_rate": None,                         # nextFundingRate ""
                         "mark_price": None, "index_price": None, "interval_hours": 8.0}


def test_pinned_open_interest_ws_and_rest():
    msg = load_jsonl("okx/open-interest_usd.constructed.jsonl")[0]
    expected = {**BASE, "symbol": "BTC-USDT-SWAP", "pair": "BTC/USDT", "market": "perp",
                "ts": ms_to_dt(1630338003010), "open_interest": 5654.74,      # oiCcy: base
                "open_interest_value": 350000000.5}                           # oiUsd
    [oi] = parsers.parse_open_interest(msg, NOW, ct_val=0.01)
    assert fields(oi) == expected
    [oi] = parsers.parse_open_interest({"code": "0", "msg": "", "data": msg["data"]}, NOW, 0.01)
    assert fields(oi) == expected


def test_pinned_book_snapshot_update_deletion_and_no_change():
    from collector.orderbook import OrderBook
    book = OrderBook(400, keep_fragments=True)
    snapshot = load_jsonl("okx/books_doc.jsonl")[0]["data"][0]
    assert parsers.load_books_snapshot(book, snapshot, 0.01, 400) is None
    assert book.synced and book.update_id == 123456
    assert book.best_bid() == (8476.97, 2.56) and book.best_ask() == (8476.98, 4.15)
    assert book.asks.top(2) == [[8476.98, 4.15], [8477.0, 0.07]]
    update = load_jsonl("okx/books_update.constructed.jsonl")[0]
    assert parsers.apply_books_update(book, update, 0.01, 400) is None
    assert book.update_id == 123457
    assert book.best_ask() == (8476.99, 0.12)                   # best ask deleted, new one
    assert book.best_bid() == (8476.97, 3.0)                    # size changed
    assert 8475.55 not in [p for p, _ in book.bids.top(400)]    # "0" deletes the level
    assert parsers.apply_books_update(
        book, load_jsonl("okx/books_no_change.constructed.jsonl")[0], 0.01, 400) is None
    assert book.update_id == 123457 and book.best_ask() == (8476.99, 0.12)
    stale = load_jsonl("okx/books_update.constructed.jsonl")[0]       # prevSeqId 123456 again
    assert parsers.apply_books_update(book, stale, 0.01, 400) == \
        ("sequence_gap", "last seqId 123457, prevSeqId 123456")


def test_pinned_rest_book_snapshot_and_buffered_diff():
    payload = load_jsonl("okx/rest_books_seqid_doc.jsonl")[0]
    assert parsers.parse_rest_books(payload["data"], 0.5) == (
        [(41006.3, 0.30178218 * 0.5)], [(41006.8, 0.60038921 * 0.5)], 3235851742)
    diff = parsers.books_diff(load_jsonl("okx/books_update.constructed.jsonl")[0]["data"][0], 0.01)
    assert (diff.first_id, diff.last_id, diff.prev_id) == (123457, 123457, 123456)
    assert diff.bids == [(8476.97, 3.0), (8475.55, 0.0)]
    assert diff.asks == [(8476.98, 0.0), (8476.99, 0.12)]


def test_pinned_rest_envelope_errors():
    with pytest.raises(ValueError, match="51001"):
        parsers.rest_data(load_jsonl("okx/rest_error_51001.jsonl")[0])
    with pytest.raises(ValueError, match="50011"):
        parsers.rest_data(load_jsonl("okx/rest_error_50011.jsonl")[0])


async def test_ws_error_shapes_are_handled():
    """60018 marks (market, symbol) unavailable; 64001 and 60012 are reported; a notice is
    control traffic. None of them is data or malformed."""
    f = feed()
    for name in ("error_60018_unknown_instrument", "error_64001_candle_on_public.constructed",
                 "error", "subscribe_ack"):
        for msg in load_jsonl(f"okx/{name}.jsonl"):
            assert f.handle(None, orjson.dumps(msg)) is False
    assert f.stats.unavailable_symbols == {"spot:FOO-USDT": load_jsonl(
        "okx/error_60018_unknown_instrument.jsonl")[0]["msg"]}
    assert {k.split(":")[0] for k in f.stats.errors} >= {"error 60018", "error 64001",
                                                         "error 60012"}
    assert f.stats.malformed == 0


async def test_level_text_kept_only_for_books_whose_snapshot_carries_a_checksum():
    """Since 2026-06-23 the checksum is always 0: such a book keeps no level text (a non-zero
    checksum on its updates cannot be checked and is not a mismatch). A snapshot with a
    checksum turns the text on for that book, the next one without turns it off."""
    f = feed()
    apply(f, books("snapshot", -1, 10, [("100", "1", "0", "1")], [("101", "1", "0", "1")]))
    book = f.books[("spot", "BTC-USDT")]
    assert book.bids.frags is None and book.asks.frags is None
    apply(f, books("update", 10, 11, [("100.5", "2", "0", "1")], checksum=12345))
    assert book.synced and book.update_id == 11 and f.stats.gaps == 0
    assert book.best_bid() == (100.5, 2.0)
    bids, asks = {"100": "1.50"}, {"101": "1"}
    checksummed = books("snapshot", -1, 20, [("100", "1.50", "0", "1")], [("101", "1", "0", "1")],
                        checksum=reference_checksum(bids, asks))
    apply(f, checksummed)
    assert book.bids.frags == {-100.0: "100:1.50"} and book.asks.frags == {101.0: "101:1"}
    apply(f, books("update", 20, 21, [("100", "0", "0", "0")], checksum=12345))
    assert not book.synced and f.stats.gaps == 1
    apply(f, books("snapshot", -1, 30, [("99", "1", "0", "1")], [("101", "1", "0", "1")]))
    assert book.synced and book.bids.frags is None and book.bids.top(5) == [[99.0, 1.0]]


# ---- pinned: paths the payloads above do not reach --------------------------------------------
def test_pinned_candle_bars_week_and_month():
    # Documented bars: hours, days and weeks are upper-case on the wire and stored lower-case;
    # the month bar "1M" must stay upper-case, "1m" is one minute.
    assert parsers.candle_interval("candle1W") == "1w"
    assert parsers.candle_interval("candle12H") == "12h"
    assert parsers.candle_interval("candle1M") == "1M"
    assert parsers.candle_interval("candle1m") == "1m"


def test_pinned_books5_and_bbo_tbt_are_full_snapshots_without_sequence_link():
    """``books5``/``bbo-tbt`` pushes have no ``action``, ``prevSeqId`` nor ``checksum``: each one
    is a whole snapshot, with no previous id and no checksum to verify."""
    bbo, books5 = load_jsonl("okx/bbo-tbt_books5_doc.jsonl")
    [b] = parsers.parse_books(books5, ct_val=0.1)               # BCH-USDT-SWAP: 0.1 BCH
    assert (b.inst_id, b.snapshot, b.prev_seq_id, b.seq_id, b.checksum) == \
        ("BCH-USDT-SWAP", True, -1, 363996337, 0)
    assert b.ts == ms_to_dt(1670324386802)
    assert b.bids[0] == (111.05, 5774.5, "111.05", "57745")
    assert [lvl[0] for lvl in b.asks] == [111.06, 111.07, 111.08, 111.09, 111.1]
    [b] = parsers.parse_books(bbo, ct_val=0.1)
    assert (b.snapshot, b.prev_seq_id, b.checksum) == (True, -1, 0)
    assert b.asks == [(111.06, pytest.approx(5515.4), "111.06", "55154")]


def test_pinned_books_update_links_to_the_previous_seq_id():
    [b] = parsers.parse_books(load_jsonl("okx/books_doc.jsonl")[1])
    assert (b.snapshot, b.prev_seq_id, b.seq_id) == (False, 123456, 123457)


def test_pinned_pre_deprecation_checksum_is_verified_on_a_snapshot():
    """Before 2026-06-23 ``checksum`` was the CRC32 of the top 25 levels (now always 0): a
    matching one passes, a wrong one is reported with both values."""
    from collector.orderbook import OrderBook
    msg = load_jsonl("okx/books_doc.jsonl")[0]
    data = msg["data"][0]
    expected = reference_checksum({lvl[0]: lvl[1] for lvl in data["bids"]},
                                  {lvl[0]: lvl[1] for lvl in data["asks"]})
    assert expected == -2102840145
    data["checksum"] = expected
    [b] = parsers.parse_books(msg)
    assert b.checksum == -2102840145
    assert parsers.load_books_snapshot(OrderBook(400, keep_fragments=True), data, 1.0, 400) is None
    data["checksum"] = 12345
    assert parsers.load_books_snapshot(OrderBook(400, keep_fragments=True), data, 1.0, 400) == \
        ("checksum", "local -2102840145, exchange 12345")


def test_pinned_book_changes_are_flagged_and_kept_to_depth():
    """``changed`` tells the snapshot sampler a book moved; levels beyond the configured depth
    are dropped after a snapshot and after each update."""
    from collector.orderbook import OrderBook
    book = OrderBook(400, keep_fragments=True)
    snapshot = load_jsonl("okx/books_doc.jsonl")[0]["data"][0]
    assert parsers.load_books_snapshot(book, snapshot, 1.0, 3) is None
    assert book.changed
    assert book.bids.top(400) == [[8476.97, 256.0], [8475.55, 101.0], [8475.54, 100.0]]
    assert book.asks.top(400) == [[8476.98, 415.0], [8477.0, 7.0], [8477.34, 85.0]]
    book.changed = False                                       # the sampler stored it
    update = load_jsonl("okx/books_update.constructed.jsonl")[0]
    assert parsers.apply_books_update(book, update, 1.0, 3) is None
    assert book.changed
    assert book.bids.top(400) == [[8476.97, 300.0], [8475.54, 100.0]]
    assert book.asks.top(400) == [[8476.99, 12.0], [8477.0, 7.0], [8477.34, 85.0]]


def test_pinned_checksum_string_with_sides_of_unequal_length():
    """Past the shorter side the longer one's levels follow in order (documented rule), whichever
    side is longer; checked against the independent Decimal implementation too."""
    bids = [("3366.1", "7"), ("3366", "6"), ("3365.5", "0.10")]
    asks = [("3366.8", "9")]
    assert parsers.checksum_string(bids, asks) == "3366.1:7:3366.8:9:3366:6:3365.5:0.10"
    assert parsers.checksum_string([("3366.1", "7")], [("3366.8", "9"), ("3368", "8")]) == \
        "3366.1:7:3366.8:9:3368:8"
    assert parsers.checksum(bids, asks) == reference_checksum(dict(bids), dict(asks))
    assert parsers.checksum_fragments(["3366.1:7", "3366:6", "3365.5:0.10"], ["3366.8:9"]) == \
        reference_checksum(dict(bids), dict(asks))
