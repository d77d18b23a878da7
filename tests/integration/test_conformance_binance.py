"""The Binance feed held to docs/exchanges/binance.md against the strict fake (tests/support/fakes/
binance.py). Each test names the finding (F-number) or rule of the doc it proves; the F1-F4
tests fail on the code before the fixes (e6e5094), the others on the code before this file's
commit where a finding is named."""
from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import datetime, timezone
from typing import Any

import aiohttp
import orjson
import pytest

from collector.exchanges.base import FeedContext
from collector.exchanges.binance.feed import BinanceFeed
from collector.rest import RestClient
from collector.stats import Stats
from common import schema
from common.indexes import apply_indexes
from common.settings import BinanceSettings, Settings
from tests.support import feedutil
from tests.support.fakes.binance import MAX_STREAMS, FakeBinance
from tests.support.feed_helpers import ListWriter
from tests.support.helpers import wait_for

OPEN_INTEREST = 10659.509          # the fake's /fapi/v1/openInterest


@contextlib.asynccontextmanager
async def serving(**kw: Any):
    fake = FakeBinance(**kw)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


def _settings(fake: FakeBinance, **cfg_kw: Any) -> Settings:
    base, ws = f"http://127.0.0.1:{fake.port}", f"ws://127.0.0.1:{fake.port}"
    cfg_kw.setdefault("spot_symbols", ["BTCUSDT", "BTCUSDC"])
    cfg = BinanceSettings(spot_ws_url=ws, perp_ws_url=ws, spot_rest_url=base,
                          perp_rest_url=base, **cfg_kw)
    return Settings(binance=cfg, poll_interval_s=0.5, book_snapshot_interval_s=0.2,
                    liquidity_interval_s=0.3)


@contextlib.asynccontextmanager
async def running_feed(fake: FakeBinance, db, **cfg_kw: Any):
    """The feed running against ``fake``, storing into ``db`` (tests/support/feedutil.py)."""
    settings = _settings(fake, **cfg_kw)
    await apply_indexes(db, settings.retention)
    async with feedutil.running_feed(BinanceFeed, db, settings, "binance") as feed:
        yield feed, feed.writer


async def prepared(fake: FakeBinance, **cfg_kw: Any) -> BinanceFeed:
    """A feed that only ran ``prepare()`` (the symbol checks) against ``fake``."""
    settings = _settings(fake, **cfg_kw)
    async with aiohttp.ClientSession() as session:
        feed = BinanceFeed(settings.binance, FeedContext(settings, ListWriter(), Stats(), session,
                                                         30.0))
        await feed.prepare()
    return feed


async def _value(result: Any) -> Any:
    return result


def _synced(feed: BinanceFeed, *keys: tuple[str, str]):
    async def check() -> bool:
        return all(k in feed.books and feed.books[k].synced for k in keys)
    return check


# ---- F1 / C5: WebSocket error shapes ---------------------------------------------------------
async def test_nested_and_flat_ws_errors_are_reported_not_malformed(mongo_db):
    """F1: the live nested error ``{"error":{"code":2,...},"id":N}`` and the documented flat one
    are exchange errors (stats.errors), not malformed messages."""
    async with serving() as fake, running_feed(fake, mongo_db) as (feed, _):
        await wait_for(lambda: _value(len(fake.clients) == 3), what="three connections")
        await wait_for(lambda: _value(feed.stats.records[schema.TRADES] > 0), what="trades")
        malformed = feed.stats.malformed
        await fake.send_raw('{"error":{"code":2,"msg":"Invalid request: invalid stream"},"id":1}')
        await fake.send_raw('{"code":2,"msg":"Invalid request: too many parameters"}')
        await wait_for(lambda: _value(sum(feed.stats.errors.values()) == 6), what="6 errors")
        assert feed.stats.malformed == malformed
        nested = [k for k in feed.stats.errors if k.startswith("2: Invalid request: invalid st")]
        flat = [k for k in feed.stats.errors if k.startswith("2: Invalid request: too many")]
        assert sum(feed.stats.errors[k] for k in nested) == 3
        assert sum(feed.stats.errors[k] for k in flat) == 3


# ---- F2: open interest value ------------------------------------------------------------------
async def test_open_interest_value_is_at_the_mark_price_not_the_last_price(mongo_db):
    """F2: value = openInterest x mark price (markPrice ``p`` / premiumIndex ``markPrice``); the
    fake's mark is 7.25 above its last price, so the last price gives another number."""
    async with serving() as fake, running_feed(fake, mongo_db) as (feed, writer):
        doc = await wait_for(lambda: mongo_db[schema.OPEN_INTEREST].find_one(
            {"exchange": "binance", "symbol": "BTCUSDT", "open_interest_value": {"$ne": None}}),
            what="open interest value stored")
        assert doc["market"] == "perp" and doc["open_interest"] == OPEN_INTEREST
        marks = {OPEN_INTEREST * float(m) for m in fake.marks_sent["BTCUSDT"]}
        lasts = {OPEN_INTEREST * float(c) for c in fake.lasts_sent[("perp", "BTCUSDT")]}
        assert doc["open_interest_value"] in marks
        assert doc["open_interest_value"] not in lasts


# ---- F4 / H4 / H6: per-connection limits --------------------------------------------------------
async def test_1024_streams_per_connection_and_paced_subscribes(mongo_db):
    """F4: 303 spot symbols (1212 streams) are split into connections of at most 1024 streams
    and their SUBSCRIBE requests paced under 5 messages/s: the strict fake closes none."""
    quiet = tuple(f"Q{i:03d}USDT" for i in range(300))
    async with serving(quiet_spot=quiet, weight_limits={"spot": 100_000}) as fake, running_feed(
            fake, mongo_db, spot_symbols=["BTCUSDT", "BTCUSDC", "ETHUSDT", *quiet]) as (feed, _):
        wanted = 4 * 303

        async def spot_streams() -> list[str]:
            return [s for c in fake.clients.values() if c.route == "/stream" for s in c.streams]
        await wait_for(lambda: _value(len([s for c in fake.clients.values()
                                           if c.route == "/stream" for s in c.streams]) == wanted
                                      or fake.closes), timeout_s=20, what="all spot streams")
        assert fake.closes == []
        streams = await spot_streams()
        assert len(streams) == len(set(streams)) == wanted
        sizes = sorted(len(c.streams) for c in fake.clients.values() if c.route == "/stream")
        assert sizes == [wanted - MAX_STREAMS, MAX_STREAMS]
        assert {"q299usdt@depth@100ms", "btcusdt@trade"} <= set(streams)


# ---- F3 and section 6: REST weights -----------------------------------------------------------
async def test_rest_weights_charged_as_documented(mongo_db, monkeypatch):
    """F3: the weight the feed charges its budget for each request equals the documented weight
    the server counts (exchangeInfo 20, USD-M klines limit 1000: 5, depth 50/20, trades 25)."""
    charged: dict[str, float] = {}
    original = RestClient.get

    async def spy(self, path, params=None, *, weight=1.0, **kw):
        charged[path] = charged.get(path, 0) + weight
        return await original(self, path, params, weight=weight, **kw)
    monkeypatch.setattr(RestClient, "get", spy)
    async with serving() as fake, running_feed(fake, mongo_db) as (feed, _):
        await wait_for(_synced(feed, ("spot", "BTCUSDT"), ("spot", "BTCUSDC"),
                               ("perp", "BTCUSDT")), what="books synced")
        await wait_for(lambda: mongo_db[schema.OPEN_INTEREST].find_one({}), what="OI polled")
        since = datetime.fromtimestamp(time.time() - 120, tz=timezone.utc)
        for market in ("spot", "perp"):
            await feed.backfill_candles(market, "BTCUSDT", since)
            await feed.backfill_trades(market, "BTCUSDT", since)
        assert charged == dict(fake.weight_by_path)
        assert charged["/api/v3/exchangeInfo"] == 20 and charged["/fapi/v1/klines"] == 5


async def test_429_retry_after_is_honoured_without_a_ban(mongo_db):
    """Section 6: over the per-minute weight the server answers 429 with Retry-After; a client
    that keeps calling during that back-off gets 418 (a ban). The feed waits it out."""
    async with serving(weight_limits={"spot": 100}, weight_window_s=1.0, ban_s=30) as fake, \
            running_feed(fake, mongo_db) as (feed, _):
        await wait_for(_synced(feed, ("spot", "BTCUSDT"), ("spot", "BTCUSDC")), timeout_s=20,
                       what="spot books synced through the 429")
        assert ("/api/v3/depth", 429) in fake.rest_rejected
        assert [r for r in fake.rest_rejected if r[1] == 418] == []


# ---- F7: overlapping spot diff ------------------------------------------------------------------
async def test_spot_diff_recovering_applied_ids_is_applied_not_a_gap(mongo_db):
    """F7 (B3): only ``U > local + 1`` is a gap; a diff with ``U <= local < u`` is applied."""
    async with serving(dup_rate=0.0) as fake, running_feed(fake, mongo_db) as (feed, _):
        await wait_for(_synced(feed, ("spot", "BTCUSDT")), what="book synced")
        gaps = feed.stats.gaps
        fake.overlap_next("spot", "BTCUSDT")
        state = fake.spot["BTCUSDT"]
        await wait_for(lambda: _value(not state.overlap), what="overlapping diff sent")
        target = state.update_id
        book = feed.books[("spot", "BTCUSDT")]
        await wait_for(lambda: _value(book.update_id is not None and book.update_id >= target),
                       what="overlapping diff applied")
        assert feed.stats.gaps == gaps and book.synced
        assert not [g for g in feed.gaps.recent if g.stream == "book"]


# ---- F8: trade backfill pages back by fromId ----------------------------------------------------
async def _stored_ids(db, market: str, symbol: str) -> set[str]:
    return {d["trade_id"] async for d in db[schema.TRADES].find(
        {"market": market, "symbol": symbol}, {"trade_id": 1})}


async def test_trade_id_hole_beyond_one_page_is_backfilled_completely(mongo_db):
    """F8: a hole of 2500 spot trades (more than the newest-1000 page) is filled from
    historicalTrades by fromId; the gap is marked backfilled and no id is missing."""
    async with serving() as fake, running_feed(fake, mongo_db) as (feed, writer):
        key = ("spot", "BTCUSDT")
        await wait_for(lambda: _value(len(fake.trades_sent.get(key, [])) > 20), what="trades")
        fake.lose_trades(*key, 2500)
        gap = await wait_for(lambda: _value(next((g for g in feed.gaps.recent
                                                  if g.cause == "sequence_gap"
                                                  and g.stream == "trade"), None)),
                             what="trade-id gap")
        await wait_for(lambda: _value(gap.backfilled), timeout_s=20, what="gap backfilled")
        first, last = gap.extra["missing_ids"]
        assert last - first + 1 == 2500
        assert fake.rest_requests["/api/v3/historicalTrades"] >= 2
        await wait_for(lambda: writer.flush(), what="flushed")
        stored = await _stored_ids(mongo_db, *key)
        assert {str(i) for i in range(first, last + 1)} <= stored


async def test_perp_trade_backfill_pages_aggtrades_by_from_id(mongo_db):
    """F8 (USD-M): 1500 aggregate trades missed; backfill_trades reaches back by fromId."""
    async with serving() as fake, running_feed(fake, mongo_db) as (feed, writer):
        key = ("perp", "BTCUSDT")
        await wait_for(lambda: _value(len(fake.trades_sent.get(key, [])) > 20), what="trades")
        before = len(fake.trades_made[key])
        since_ms = fake.trade_rows[key][fake.trades_made[key][-1]][2]
        fake.lose_trades(*key, 1500)
        await wait_for(lambda: _value(len(fake.trades_made[key]) > before + 1500), what="made")
        lost = fake.trades_made[key][before:before + 1500]
        since = datetime.fromtimestamp(since_ms / 1000, tz=timezone.utc)
        assert await feed.backfill_trades("perp", "BTCUSDT", since) is True
        await wait_for(lambda: writer.flush(), what="flushed")
        assert set(lost) <= await _stored_ids(mongo_db, *key)


# ---- F10 / F13: which symbols are collected -----------------------------------------------------
async def test_only_linear_usdm_perpetuals_are_collected():
    """F10: a coin-margined contract (BTCUSD_PERP, margin BTC, sizes in contracts) and a
    quarterly future listed on the USD-M endpoints are reported unavailable, not collected."""
    async with serving() as fake:
        feed = await prepared(fake, perp_symbols=["BTCUSDT", "BTCUSD_PERP", "BTCUSDT_261225"])
        assert feed.stats.unavailable_symbols == {
            "perp:BTCUSD_PERP": "coin-margined (BTC margin), not a linear perpetual",
            "perp:BTCUSDT_261225": "USD-M contract type CURRENT_QUARTER"}


def test_default_spot_symbols_hold_no_busd_pair():
    """F13: BUSD pairs no longer trade."""
    assert BinanceSettings().spot_symbols == ["BTCUSDT", "BTCUSDC"]


async def test_unknown_spot_symbol_fails_the_batch_then_is_found_alone():
    """F3: one exchangeInfo for all spot symbols; the -1121 of an unknown one (which fails the
    whole request) is resolved per symbol."""
    async with serving() as fake:
        feed = await prepared(fake, spot_symbols=["BTCUSDT", "NOPEUSDT"])
        assert feed.stats.unavailable_symbols == {"spot:NOPEUSDT": "Invalid symbol."}
        assert fake.weight_by_path["/api/v3/exchangeInfo"] == 3 * 20


# ---- F11: candles that close --------------------------------------------------------------------
async def test_closed_kline_is_stored_with_the_exact_ohlcv(mongo_db):
    """F11 (4.4): the final kline of a minute (``x: true``) is stored closed with exactly the
    OHLCV the exchange sent (base ``v``, quote ``q``, ``n`` trades)."""
    async with serving() as fake, running_feed(fake, mongo_db) as (feed, _):
        now_ms = int(time.time() * 1000)
        fake.clock_offset_ms = 60_000 - now_ms % 60_000 - 1500     # a minute ends in 1.5 s
        key = ("spot", "BTCUSDT")
        final = await wait_for(lambda: _value(fake.closed_klines.get(key)), timeout_s=10,
                               what="a kline closed")
        minute, sent = next(iter(final.items()))
        ts = datetime.fromtimestamp(minute / 1000, tz=timezone.utc)
        doc = await wait_for(lambda: mongo_db[schema.OHLCV].find_one(
            {"exchange": "binance", "market": "spot", "symbol": "BTCUSDT", "ts": ts,
             "closed": True}), what="closed candle stored")
        k = sent["k"]
        assert sent["k"]["x"] is True and k["n"] > 0
        assert (doc["open"], doc["high"], doc["low"], doc["close"]) == tuple(
            float(k[f]) for f in "ohlc")
        assert (doc["volume"], doc["quote_volume"], doc["trades"]) == (
            float(k["v"]), float(k["q"]), k["n"])


# ---- F9 / H7: connection attempts per IP ---------------------------------------------------------
@pytest.mark.parametrize("partitions", [1, 3])
def test_connection_attempts_stay_within_300_per_5_minutes_per_ip(partitions):
    """F9: all partitions on one host together open at most 300 connections per 5 minutes."""
    settings = Settings(partition=f"0/{partitions}" if partitions > 1 else "")
    feed = BinanceFeed(settings.binance, FeedContext(settings, None, Stats(), None, 30.0))
    assert partitions * 300 / feed.throttle.min_interval_s <= 300


# ---- C7: server shutdown notice -----------------------------------------------------------------
async def test_server_shutdown_notice_reconnects_every_connection(mongo_db):
    async with serving() as fake, running_feed(fake, mongo_db) as (feed, _):
        await wait_for(_synced(feed, ("spot", "BTCUSDT"), ("perp", "BTCUSDT")), what="synced")
        connections = fake.connections
        await fake.send_shutdown()
        await wait_for(lambda: _value(fake.connections >= connections + 3), what="reconnected")
        await wait_for(_synced(feed, ("spot", "BTCUSDT"), ("perp", "BTCUSDT")), what="resynced")


# ---- H1-H2: heartbeat -------------------------------------------------------------------------
async def test_server_pings_are_answered_and_a_silent_client_is_cut(mongo_db):
    """H1/H2 (F5): the server pings (here every 0.3 s, pong due within 0.9 s; pongs count
    against the 5 messages/s); the collector stays connected through many pings, a client that
    does not answer is disconnected."""
    async with serving(heartbeat={"spot": (0.3, 0.9), "perp": (0.3, 0.9)}) as fake, \
            running_feed(fake, mongo_db) as (feed, _):
        async with aiohttp.ClientSession() as session, session.ws_connect(
                f"ws://127.0.0.1:{fake.port}/stream", autoping=False) as mute:
            assert await asyncio.wait_for(_close_of(mute), timeout=5) == (1008, "pong timeout")
        await wait_for(lambda: _value(fake.heartbeats_answered >= 30), what="30 pings answered")
        assert fake.closes == [("/stream", 1008, "pong timeout")]
        assert feed.stats.reconnects == 0 and fake.connections == 4


async def _close_of(ws: aiohttp.ClientWebSocketResponse) -> tuple[int, str]:
    """(code, reason) of the server's close frame."""
    while True:
        msg = await ws.receive()
        if msg.type == aiohttp.WSMsgType.CLOSE:
            return msg.data, msg.extra
        if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
            return ws.close_code, ""


async def _answer(ws: aiohttp.ClientWebSocketResponse) -> Any:
    while True:
        msg = await asyncio.wait_for(ws.receive(), timeout=5)
        if msg.type == aiohttp.WSMsgType.TEXT:
            return orjson.loads(msg.data)
        if msg.type != aiohttp.WSMsgType.PING:
            return msg.type


# ---- the fake itself: request rules of section 2 and limits of section 3 ------------------------
@contextlib.asynccontextmanager
async def raw_client(fake: FakeBinance, path: str = "/stream"):
    async with aiohttp.ClientSession() as session, session.ws_connect(
            f"ws://127.0.0.1:{fake.port}{path}") as ws:
        yield ws


async def test_fake_answers_requests_with_the_documented_shapes():
    """C1-C6, D1, D5: acks by id, LIST_SUBSCRIPTIONS, the flat table errors; an unknown but
    well-formed symbol is acked and stays silent; an invalid stream name gets the live nested
    error and the connection is closed."""
    async with serving() as fake, raw_client(fake) as ws:
        await ws.send_str("{not json")
        assert await _answer(ws) == {"code": 3, "msg": "Invalid JSON: expected value at line 1 "
                                                       "column 1"}
        await ws.send_str('{"params":[],"id":1}')
        assert await _answer(ws) == {"code": 2, "msg": "Invalid request: missing field `method` "
                                                       "at line 1 column 73"}
        await ws.send_str('{"method":"SUBSCRIBE","params":[],"id":[1]}')
        assert await _answer(ws) == {"code": 2, "msg": "Invalid request: request ID must be an "
                                                       "unsigned integer"}
        await asyncio.sleep(1.0)       # the fake's 5 messages/s limit (tested below)
        await ws.send_str('{"method":"SUBSCRIBE","params":["nopeusdt@trade",'
                          '"btcusdt@depth@100ms"],"id":7}')
        assert await _answer(ws) == {"result": None, "id": 7}
        await ws.send_str('{"method":"UNSUBSCRIBE","params":["btcusdt@depth@100ms"],"id":8}')
        assert await _answer(ws) == {"result": None, "id": 8}
        await ws.send_str('{"method":"LIST_SUBSCRIPTIONS","id":9}')
        assert await _answer(ws) == {"result": ["nopeusdt@trade"], "id": 9}
        await ws.send_str('{"method":"SUBSCRIBE","params":["BTCUSDT@trade"],"id":10}')
        assert await _answer(ws) == {"error": {"code": 2, "msg": "Invalid request: invalid "
                                                                 "stream"}, "id": 10}
        assert await _close_of(ws) == (1008, "invalid stream")


async def test_fake_enforces_message_rate_and_streams_per_connection():
    """H4/H6: a sixth message within one second closes a spot connection with 1008; so does a
    SUBSCRIBE that would take a connection over 1024 streams."""
    async with serving() as fake:
        async with raw_client(fake) as ws:
            for i in range(6):
                await ws.send_str(orjson.dumps({"method": "LIST_SUBSCRIPTIONS", "id": i}).decode())
            assert await _close_of(ws) == (1008, "Too many requests")
        async with raw_client(fake, "/market/stream") as ws:
            params = [f"s{i}usdt@aggTrade" for i in range(MAX_STREAMS + 1)]
            await ws.send_str(orjson.dumps({"method": "SUBSCRIBE", "params": params,
                                            "id": 1}).decode())
            assert await _close_of(ws) == (1008, "Too many streams")
        assert [c[1:] for c in fake.closes] == [(1008, "Too many requests"),
                                                 (1008, "Too many streams")]


async def test_fake_rest_depth_limit_and_rate_limit_answers():
    """F12 and section 6: a USD-M depth limit outside 5..1000's set is -1130; over the weight
    budget 429 with Retry-After and -1003, then 418 while the client ignores it."""
    async with serving(weight_limits={"perp": 45}) as fake, aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{fake.port}/fapi/v1/depth"
        async with session.get(url, params={"symbol": "BTCUSDT", "limit": "1001"}) as r:
            assert r.status == 400 and await r.json() == {
                "code": -1130, "msg": "Data sent for parameter 'limit' is not valid."}
            assert r.headers["X-MBX-USED-WEIGHT-1M"] == "20"      # a refused request counts
        async with session.get(url, params={"symbol": "BTCUSDT", "limit": "1000"}) as r:
            assert r.status == 200 and r.headers["X-MBX-USED-WEIGHT-1M"] == "40"
        async with session.get(url, params={"symbol": "BTCUSDT", "limit": "1000"}) as r:
            assert r.status == 429 and int(r.headers["Retry-After"]) > 0
            assert (await r.json())["code"] == -1003
        async with session.get(url, params={"symbol": "BTCUSDT", "limit": "5"}) as r:
            assert r.status == 418 and int(r.headers["Retry-After"]) >= 120
        async with session.get(url, params={"symbol": "NOPE", "limit": "5"}) as r:
            assert r.status == 418      # banned: even an invalid request is refused
