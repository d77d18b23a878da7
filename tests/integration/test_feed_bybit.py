"""The real BybitFeed against a fake Bybit (WebSocket + REST), writing into a real MongoDB."""
from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone

import aiohttp
import orjson
import pytest
import pytest_asyncio
import websockets

from collector.exchanges.base import FeedContext
from collector.exchanges.bybit.feed import BybitFeed
from collector.kit.spec import IDLE_S as STREAM_IDLE_S
from collector.rest import RestError
from collector.stats import Stats
from collector.writer import Writer
from common import schema
from common.indexes import apply_indexes
from common.schema import Candle, now_utc
from common.settings import BybitSettings, Settings
from tests.support.fakes.bybit import MAX_ARG_CHARS, FakeBybit, rest_candle, trade_fields
from tests.support.faultlog import report
from tests.support.feed_helpers import offline_context
from tests.support.feedutil import PERP_TYPES, api_client, wait_for_latest
from tests.support.helpers import wait_for


def settings_for(fake: FakeBybit, **bybit) -> Settings:
    cfg = dict(spot_symbols=["BTCUSDT", "BTCUSDC", "BADUSDT"], perp_symbols=["BTCUSDT"],
               spot_ws_url=f"{fake.ws_base}/v5/public/spot",
               perp_ws_url=f"{fake.ws_base}/v5/public/linear",
               spot_rest_url=fake.rest_base, perp_rest_url=fake.rest_base, idle_timeout_s=1.0)
    cfg.update(bybit)
    return Settings(bybit=BybitSettings(**cfg), book_snapshot_interval_s=0.2,
                    liquidity_interval_s=0.2, flush_interval_s=0.1)


@pytest_asyncio.fixture
async def env(mongo_db):
    fake = FakeBybit()
    await fake.start()
    settings = settings_for(fake)
    await apply_indexes(mongo_db, settings.retention)
    writer = Writer(mongo_db, flush_interval_s=0.1)
    session = aiohttp.ClientSession()
    ctx = FeedContext(settings=settings, writer=writer, stats=Stats(), session=session,
                      poll_interval_s=0.5)
    feed = BybitFeed(settings.bybit, ctx)
    feed.derived.min_interval_s = 0.0
    feed.book_driver.scheduler.cooldown_s = 0.3
    writer_task = asyncio.create_task(writer.run())
    feed_task = asyncio.create_task(feed.run())
    try:
        yield fake, feed, mongo_db
    finally:
        await feed.stop()
        feed_task.cancel()
        await asyncio.gather(feed_task, return_exceptions=True)
        await writer.close(5)
        writer_task.cancel()
        await asyncio.gather(writer_task, return_exceptions=True)
        await session.close()
        await fake.stop()


async def _all_collections(db):
    counts = {}
    for name in schema.DATA_COLLECTIONS:
        counts[name] = await db[name].count_documents({"exchange": "bybit"})
    return all(counts.values()) and counts


async def test_all_collections_and_awkward_cases(env):
    fake, feed, db = env
    await wait_for(lambda: _all_collections(db), timeout_s=10, what="all seven collections")
    # spot: max 10 args per request (12 topics -> chunked), snapshot sent before the ack
    assert not fake.violations
    spot_subs = [m for p, m in fake.sent_ops("subscribe") if p.endswith("spot")]
    assert len(spot_subs) >= 2 and all(len(m["args"]) <= 10 for m in spot_subs)
    # BADUSDT fails both of its requests: reported once, marked unavailable, never retried;
    # the valid topics that shared a request with it are retried one by one and arrive
    # (the spot rejection names the topics in brackets: "Invalid symbol :[...]")
    assert [k for k in feed.stats.errors if "BADUSDT" in k] == \
        ["spot subscribe tickers.BADUSDT failed: "
         "Invalid symbol :[tickers.BADUSDT,publicTrade.BADUSDT]"]
    assert sum(feed.stats.errors.values()) == 1
    assert "spot:BADUSDT" in feed.stats.unavailable_symbols and \
        "BADUSDT" not in feed.symbols("spot")
    singles = [m["args"] for p, m in fake.sent_ops("subscribe") if len(m["args"]) == 1]
    assert ["tickers.BTCUSDT"] in singles and ["kline.1.BTCUSDC"] in singles
    assert not [a for a in singles if "BADUSDT" in a[0]]
    assert feed.books[("spot", "BTCUSDT")].synced and feed.books[("spot", "BTCUSDC")].synced
    await wait_for(lambda: _async(_synced(feed, "BTCUSDT", "perp")), what="perp book")

    async def perp_trade():
        return await db[schema.TRADES].find_one({"market": "perp"})
    trade = await wait_for(perp_trade, what="perp trade")
    # trades: taker side, base size, both markets (the fake's values for that trade id)
    price, size, side = trade_fields(fake.tape_id(trade["trade_id"]))
    assert (trade["price"], trade["size"], trade["side"]) == \
        (float(price), float(size), side.lower())
    assert await db[schema.TRADES].count_documents({"market": "spot", "symbol": "BTCUSDC"})

    async def both_sides():
        return {t["side"] for t in await db[schema.TRADES].find(
            {"exchange": "bybit"}).to_list(None)} == {"buy", "sell"}
    await wait_for(both_sides, what="buys and sells stored")
    # candles from kline.1
    candle = await db[schema.OHLCV].find_one({"symbol": "BTCUSDT", "market": "spot"})
    row = rest_candle(int(candle["ts"].replace(tzinfo=timezone.utc).timestamp() * 1000))
    assert candle["interval"] == "1m" and \
        [candle[k] for k in ("open", "high", "low", "close", "volume")] == \
        [float(v) for v in row[1:6]]

    # linear ticker: snapshot + partial deltas merged (delta bid, snapshot mark price)
    async def merged_perp_ticker():
        return await db[schema.MARKET_DATA].find_one(
            {"market": "perp", "bid": 17215.0, "mark_price": 17217.33, "ask": 17216.0})
    await wait_for(merged_perp_ticker, timeout_s=5, what="merged perp ticker")

    # spot tickers get bid/ask from the live book top
    async def spot_ticker_with_bid():
        return await db[schema.MARKET_DATA].find_one(
            {"market": "spot", "symbol": "BTCUSDT", "bid": {"$ne": None}})
    ticker = await wait_for(spot_ticker_with_bid, timeout_s=5, what="spot ticker bid")
    assert ticker["ask"] > ticker["bid"] and ticker["volume_24h"] == 6780.866843
    # funding / open interest: WS-derived (merged) and the REST fallback poll at start
    assert any("/v5/market/tickers" in r and "category=linear" in r for r in fake.rest_requests)

    # open interest is one side (singleOpenInterest, merged from a delta carrying only it);
    # the two-sided openInterest (68744.761 / 68750.001) is never stored
    async def merged_derivatives():
        return (await db[schema.FUNDING_RATES].find_one({"rate": -0.0002, "interval_hours": 8})
                and await db[schema.OPEN_INTEREST].find_one(
                    {"open_interest": 34375.0005, "open_interest_value": 591846905.12}))
    await wait_for(merged_derivatives, timeout_s=5, what="funding / OI from merged deltas")
    assert {d["open_interest"] for d in await db[schema.OPEN_INTEREST].find(
        {"exchange": "bybit"}).to_list(None)} <= {34372.3805, 34375.0005, 26095.221}
    liq = await db[schema.VOLUME_LIQUIDITY].find_one({"market": "spot", "symbol": "BTCUSDT"})
    assert liq["spread_bps"] > 0 and liq["volume_24h"] == 6780.866843
    book = await db[schema.ORDER_BOOK].find_one({"market": "spot"})
    assert book["bids"][0][0] > book["asks"][0][0] - 100 and book["update_id"] > 1000


async def test_backwards_u_resyncs_that_symbol_only_and_u1_snapshot_resets(env):
    fake, feed, db = env
    await wait_for(lambda: _async(_synced(feed, "BTCUSDT") and _synced(feed, "BTCUSDC")),
                   what="spot books synced")
    usdt, usdc = feed.books[("spot", "BTCUSDT")], feed.books[("spot", "BTCUSDC")]
    await wait_for(lambda: _async(usdt.update_id and usdt.update_id > 1003), what="deltas")
    # the start-up retries of the valid topics that shared BADUSDT's request are done
    await wait_for(lambda: _async(len([m for p, m in fake.sent_ops("subscribe")
                                       if len(m["args"]) == 1]) == 8), what="retries")
    subs_before = len(fake.sent_ops("subscribe"))
    ws = fake.live("spot")[0]
    injected = time.monotonic()
    await fake.send(ws, fake.book_delta(ws.state_dict, "BTCUSDT", u=5))   # u goes backwards
    await wait_for(lambda: _async(feed.stats.gaps == 1), what="integrity lost")
    await wait_for(lambda: _async(feed.stats.resyncs == 1 and usdt.synced), interval_s=0.01,
                   what="BTCUSDT resynced")
    report("bybit_sequence_gap", expected="that book alone resubscribes (snapshot again); "
           "other symbols unaffected", recovery_s=time.monotonic() - injected,
           other_books_resynced=feed.stats.resyncs - 1)
    [gap] = [g for g in feed.gaps.recent if g.stream == "book"]
    assert (gap.market, gap.symbol, gap.cause) == ("spot", "BTCUSDT", "sequence_gap")
    assert "backwards" in gap.detail and gap.end is not None and not gap.backfilled
    assert usdc.synced and feed.gaps.find_open("bybit", "spot", "BTCUSDT", "book") is None
    unsubs = [m for _, m in fake.sent_ops("unsubscribe")]
    assert [m["args"] for m in unsubs] == [["orderbook.200.BTCUSDT"]]
    assert [m["args"] for _, m in fake.sent_ops("subscribe")[subs_before:]] == \
        [["orderbook.200.BTCUSDT"]]

    async def gap_stored():
        return await db[schema.GAPS].find_one({"stream": "book", "symbol": "BTCUSDT",
                                               "cause": "sequence_gap", "end": {"$ne": None}})
    await wait_for(gap_stored, what="closed book gap in the ledger")
    # a u=1 snapshot (service restart) resets the book without a resync
    await fake.send(ws, fake.book_snapshot(ws.state_dict, "BTCUSDT", u=1))
    await wait_for(lambda: _async(usdt.update_id is not None and usdt.update_id < 10),
                   what="u=1 snapshot applied")
    assert usdt.synced and feed.stats.resyncs == 1 and feed.stats.gaps == 1
    # malformed messages are counted and skipped
    await fake.send(ws, {"topic": "publicTrade.BTCUSDT", "type": "snapshot", "ts": 1,
                         "data": [{"p": "1"}]})
    await wait_for(lambda: _async(feed.stats.malformed >= 1), what="malformed counted")
    assert usdc.synced


async def test_already_subscribed_is_no_error_and_the_rest_of_the_request_is_retried(env):
    fake, feed, db = env
    await wait_for(lambda: _async(_synced(feed, "BTCUSDT", "perp")), what="perp book synced")
    conn = _conn(feed, "perp")
    await conn.send(feed._request("linear", "unsubscribe", ["tickers.BTCUSDT"]))
    ws = fake.live("linear")[0]
    await wait_for(lambda: _async("tickers.BTCUSDT" not in ws.state_dict["topics"]),
                   what="unsubscribed")
    errors = dict(feed.stats.errors)
    # one topic of the request is live already: linear refuses the whole request
    await conn.send(feed._request("linear", "subscribe", ["kline.1.BTCUSDT", "tickers.BTCUSDT"]))
    await wait_for(lambda: _async("tickers.BTCUSDT" in ws.state_dict["topics"]),
                   what="the other topic retried alone")
    assert feed.already_subscribed == 1 and feed.stats.errors == errors
    assert ["tickers.BTCUSDT"] in [m["args"] for _, m in fake.sent_ops("subscribe")[-1:]]


async def test_spot_duplicate_gets_no_reply_and_its_request_is_forgotten(env):
    fake, feed, db = env
    await wait_for(lambda: _async(_synced(feed, "BTCUSDC")), what="spot book synced")
    conn, ws = _conn(feed, "spot"), fake.live("spot")[0]
    feed.requests.ttl_s = 0.3
    errors, subs = dict(feed.stats.errors), len(fake.sent_ops("subscribe"))
    dup = feed._request("spot", "subscribe", ["tickers.BTCUSDT", "kline.1.BTCUSDC"])
    await conn.send(dup)
    # an unsubscribe behind it is acked: the fake has handled the duplicate (silently)
    await conn.send(feed._request("spot", "unsubscribe", ["tickers.BTCUSDC"]))
    await wait_for(lambda: _async("tickers.BTCUSDC" not in ws.state_dict["topics"]),
                   what="unsubscribe handled")
    req_id = orjson.loads(dup)["req_id"]
    await wait_for(lambda: _async(req_id not in feed.requests), what="request forgotten")
    assert feed.already_subscribed == 0 and feed.stats.errors == errors
    assert len(fake.sent_ops("subscribe")) == subs + 1      # nothing retried


async def test_spot_request_over_10_args_is_refused_whole(env):
    fake, feed, db = env
    await wait_for(lambda: _async(_synced(feed, "BTCUSDC")), what="spot book synced")
    conn, ws = _conn(feed, "spot"), fake.live("spot")[0]
    topics = [f"tickers.SYM{i}USDT" for i in range(11)]
    await conn.send(feed._request("spot", "subscribe", topics))
    await wait_for(lambda: _async(any("args size >10" in k for k in feed.stats.errors)),
                   what="args size error reported")
    assert not ws.state_dict["topics"] & set(topics) and len(fake.violations) == 1


async def test_rest_unknown_symbol_marks_that_market_symbol_unavailable(env):
    fake, feed, db = env
    with pytest.raises(RestError) as info:
        await feed.repoll_derivatives("BADUSDT")
    assert info.value.payload["retMsg"] == "Not supported symbols"
    assert feed.stats.unavailable_symbols["perp:BADUSDT"].endswith(
        "retCode 10001: Not supported symbols")
    await feed.backfill_trades("spot", "BTCUSDC", now_utc())     # a listed symbol: no error
    assert "spot:BTCUSDC" not in feed.stats.unavailable_symbols


async def test_fake_cuts_a_connection_without_ping_or_data(env):
    """The server's 10-minute rule (shortened): no ping and no data -> cut; pings keep it."""
    fake, feed, db = env
    fake.idle_cut_s = 0.5
    url = f"{fake.ws_base}/v5/public/spot"
    async with websockets.connect(url) as quiet, websockets.connect(url) as pinging:
        started = time.monotonic()
        while time.monotonic() - started < 1.5:
            await pinging.send('{"op":"ping"}')
            assert orjson.loads(await pinging.recv())["ret_msg"] == "pong"
            await asyncio.sleep(0.1)
        with pytest.raises(websockets.ConnectionClosed):
            await quiet.recv()
        assert fake.idle_cuts >= 1 and pinging.state is websockets.State.OPEN


async def test_closed_candle_is_stored_closed(env):
    fake, feed, db = env
    await wait_for(lambda: _async(_synced(feed, "BTCUSDT")), what="connected")
    start = (int(time.time()) // 60 - 2) * 60_000
    await fake.push("spot", fake.kline("BTCUSDT", start=start, confirm=True))

    async def stored():
        return await db[schema.OHLCV].find_one({"exchange": "bybit", "market": "spot",
                                                "symbol": "BTCUSDT", "closed": True})
    candle = await wait_for(stored, what="closed candle")
    row = rest_candle(start)
    assert candle["ts"].replace(tzinfo=timezone.utc).timestamp() * 1000 == start
    assert [candle[k] for k in ("open", "high", "low", "close", "volume", "quote_volume")] == \
        [float(v) for v in row[1:7]]


async def test_rest_rate_limit_403_once_exceeded(env):
    fake, feed, db = env
    await wait_for(lambda: _async(_synced(feed, "BTCUSDT", "perp")), what="start-up done")
    fake._rest_times.clear()
    fake.rest_limit = 2             # 600 per 5 s in production
    for _ in range(2):
        await feed.backfill_trades("spot", "BTCUSDT", now_utc())
    with pytest.raises(RestError) as info:
        await feed.backfill_trades("spot", "BTCUSDT", now_utc())
    assert info.value.status == 403 and fake.rate_limited
    assert feed.rest_budget.paused_until - time.monotonic() > 590


async def test_drop_mid_stream_backfills_the_missed_trades(env):
    fake, feed, db = env
    keys = [("spot", "BTCUSDT"), ("spot", "BTCUSDC"), ("linear", "BTCUSDT")]
    await wait_for(lambda: _async(all(any(t["pushed"] for t in fake.tape.trades.get(k, ()))
                                      for k in keys)), what="trades flowing")
    last_pushed = {k: max(t["id"] for t in fake.tape.trades[k] if t["pushed"]) for k in keys}
    await fake.drop_connections(down_s=0.8)       # trades keep happening meanwhile

    async def gaps_backfilled():
        gaps = [g for g in feed.gaps.recent if g.cause == "disconnect"]
        return len(gaps) == 2 and all(g.backfilled for g in gaps) and gaps
    gaps = await wait_for(gaps_backfilled, timeout_s=15, what="disconnect gaps backfilled")
    ends = {g.stream: g.end for g in gaps}
    assert set(ends) == {"bybit:spot", "bybit:linear"}
    for category, symbol in keys:
        market = "spot" if category == "spot" else "perp"
        end_ms = ends[f"bybit:{category}"].timestamp() * 1000
        missed = [fake.trade_id(category, t)
                  for t in fake.tape.unpushed((category, symbol), last_pushed[(category, symbol)])
                  if t["ts"] < end_ms]
        assert len(missed) >= 3, (category, symbol)

        async def stored(ids=missed, market=market, symbol=symbol):
            return await db[schema.TRADES].count_documents(
                {"exchange": "bybit", "market": market, "symbol": symbol,
                 "trade_id": {"$in": ids}}) == len(ids)
        await wait_for(stored, what=f"missed {category} {symbol} trades in MongoDB")
    recent = [r for r in fake.rest_requests if r.startswith("/v5/market/recent-trade")]
    assert any("category=spot" in r and "limit=60" in r for r in recent)
    assert any("category=linear" in r and "limit=1000" in r for r in recent)
    assert feed.stats.backfills >= 2 and feed.stats.backfilled_trades >= 9

    async def ledger():
        return await db[schema.GAPS].count_documents(
            {"exchange": "bybit", "cause": "disconnect", "backfilled": True}) == 2
    await wait_for(ledger, what="backfilled gaps in the ledger")


async def test_kline_backfill_emits_closed_candles_only(env):
    fake, feed, db = env
    await wait_for(lambda: _async(_synced(feed, "BTCUSDT")), what="connected")
    emitted: list[Candle] = []
    emit = feed.emit
    # Only candles: the running feed keeps emitting tickers, books etc. meanwhile.
    feed.emit = lambda record, **kw: (isinstance(record, Candle) and emitted.append(record),
                                      emit(record, **kw))[1]
    since = now_utc() - timedelta(minutes=3)
    await feed.backfill_candles("spot", "BTCUSDT", since)
    request = [r for r in fake.rest_requests if r.startswith("/v5/market/kline")][-1]
    start_ms = int(since.timestamp() * 1000) // 60_000 * 60_000
    assert "category=spot" in request and "interval=1" in request and f"start={start_ms}" in request
    # the fake's newest row is the current, still forming minute: never emitted
    assert len(emitted) in (3, 4) and all(c.closed for c in emitted)
    assert all(c.ts.timestamp() + 60 <= now_utc().timestamp() for c in emitted)
    first = emitted[0]
    assert first.ts.timestamp() * 1000 == start_ms
    row = rest_candle(start_ms)
    assert (first.open, first.high, first.low, first.close, first.volume) == \
        tuple(float(v) for v in row[1:6])

    async def stored():
        return await db[schema.OHLCV].count_documents(
            {"exchange": "bybit", "symbol": "BTCUSDT", "market": "spot", "closed": True,
             "volume": 2.5}) >= 3
    await wait_for(stored, what="closed candles stored")


async def test_rest_403_pauses_the_shared_budget(env):
    fake, feed, db = env
    fake.rate_limited = True
    with pytest.raises(RestError) as info:
        await feed.backfill_trades("spot", "BTCUSDT", now_utc())
    assert info.value.status == 403
    assert feed.rest_budget.paused_until - time.monotonic() > 590


async def test_idle_watchdog_reconnects_silent_server(env):
    fake, feed, db = env
    await wait_for(lambda: _async(len(feed.connections) == 2 and
                                  all(c.connects >= 1 for c in feed.connections)),
                   what="connected")
    fake.silent = True        # socket stays open, pongs/acks only
    await wait_for(lambda: _async(all(c.connects >= 2 for c in feed.connections)),
                   timeout_s=8, what="idle reconnect")
    assert {g.cause for g in feed.gaps.open_gaps.values()} | \
        {g.cause for g in feed.gaps.recent} >= {"idle"}
    fake.silent = False
    await wait_for(lambda: _async(_synced(feed, "BTCUSDT")), what="resubscribed")


async def test_realtime_api_shows_every_data_type(env, mongo_uri):
    fake, feed, db = env
    await wait_for(lambda: _all_collections(db), timeout_s=10, what="all seven collections")
    await wait_for_latest(db, "bybit", {("perp", "BTCUSDT", t) for t in PERP_TYPES})
    async with api_client(mongo_uri, db, "bybit") as client:
        for spelling in ("BTCUSDT", "btcusdt", "BTC-USDT", "BTC/USDT"):
            resp = await client.get(f"/realtime/bybit/{spelling}")
            assert resp.status == 200, spelling
            body = await resp.json()
            assert set(body["data"]) == {"BTCUSDT"}, spelling
        spot, perp = body["data"]["BTCUSDT"]["spot"], body["data"]["BTCUSDT"]["perp"]
        common = {"market_data", "trades", "order_book", "ohlcv", "volume_liquidity"}
        assert common <= set(spot) and common | {"funding_rates", "open_interest"} <= set(perp)
        assert spot["market_data"]["volume_24h"] == 6780.866843
        assert spot["market_data"]["last"] == 21109.77
        price, size, side = trade_fields(fake.tape_id(spot["trades"]["trade_id"]))
        assert (spot["trades"]["price"], spot["trades"]["side"]) == (float(price), side.lower())
        ohlcv_ms = int(datetime.fromisoformat(spot["ohlcv"]["ts"]).timestamp() * 1000)
        assert spot["ohlcv"]["open"] == float(rest_candle(ohlcv_ms)[1])
        assert spot["ohlcv"]["interval"] == "1m"
        # the stored book's top is the fake's top at that update id
        book = await db[schema.ORDER_BOOK].find_one({"exchange": "bybit", "market": "spot",
                                                     "symbol": "BTCUSDT"}, sort=[("ts", -1)])
        bid, ask = fake.book_tops[("spot", "BTCUSDT", book["update_id"])]
        assert book["bids"][0] == bid and book["asks"][0] == ask
        assert spot["volume_liquidity"]["volume_24h"] == 6780.866843
        assert perp["market_data"]["mark_price"] == 17217.33
        # WS snapshot / merged delta, or the start-up REST poll, whichever was stored last
        assert perp["funding_rates"]["rate"] in (-0.000212, -0.0002, 0.0001)
        assert perp["funding_rates"]["interval_hours"] == 8
        assert perp["open_interest"]["open_interest"] in (34372.3805, 34375.0005, 26095.221)
        _, size, _ = trade_fields(fake.tape_id(perp["trades"]["trade_id"]))
        assert perp["trades"]["size"] == float(size)
        assert all(doc["stale"] is False for doc in (*spot.values(), *perp.values()))
        usdc = await (await client.get("/realtime/bybit/BTC_USDC")).json()
        assert set(usdc["data"]["BTCUSDC"]["spot"]) >= common


# ---- partitioning (offline: only the subscription plan is exercised) ------------------------
SYMBOLS = [f"SYM{i}USDT" for i in range(10)] + ["BTCUSDT", "BTCUSDC"]


def _plan(spec: str) -> tuple[list[tuple[str, str]], list[str]]:
    cfg = BybitSettings(spot_symbols=SYMBOLS, perp_symbols=SYMBOLS[:6])
    feed = BybitFeed(cfg, offline_context(Settings(partition=spec)))
    subs = [(conn.meta.market, feed.arg_text(sub)) for conn in feed.build_connections()
            for sub in conn.meta.subscriptions]
    return subs, feed.owned("perp", "ticker")


@pytest.mark.parametrize("n", [2, 3])
def test_partitions_cover_every_topic_once(n):
    everything, polled = _plan("")
    parts = [_plan(f"{i}/{n}") for i in range(n)]
    merged = [s for subs, _ in parts for s in subs]
    assert sorted(merged) == sorted(everything) and len(set(merged)) == len(merged)
    assert all(subs for subs, _ in parts)
    merged_polls = [s for _, p in parts for s in p]
    assert sorted(merged_polls) == sorted(polled) and len(set(merged_polls)) == len(merged_polls)
    # the fallback poll runs where the linear ticker (its WS source) is subscribed
    for subs, poll in parts:
        assert {s for s in poll} == {t.split(".")[1] for m, t in subs
                                     if m == "perp" and t.startswith("tickers.")}


def test_idle_threshold_follows_the_streams_a_connection_carries():
    for i in range(4):
        feed = BybitFeed(BybitSettings(spot_symbols=["BTCUSDT"], perp_symbols=[]),
                         offline_context(Settings(partition=f"{i}/4")))
        for conn in feed.build_connections():
            kinds = conn.meta.kinds
            assert conn.idle_timeout_s == min(STREAM_IDLE_S[k] for k in kinds)
    feed = BybitFeed(BybitSettings(), offline_context())
    assert [c.idle_timeout_s for c in feed.build_connections()] == [10.0, 10.0]


def _conn(feed, market):
    return next(c for c in feed.connections if c.meta.market == market)


async def _async(value):
    return value


def _synced(feed, symbol, market="spot"):
    book = feed.books.get((market, symbol))
    return book is not None and book.synced


# ---- the 21,000-character args limit per connection (F4) ------------------------------------
MANY = [f"SYM{i:04d}USDT" for i in range(400)]      # 86 characters of topics each


def test_connections_split_to_the_args_limit():
    feed = BybitFeed(BybitSettings(spot_symbols=MANY, perp_symbols=[]), offline_context())
    conns = feed.build_connections()
    assert [c.meta.label for c in conns] == ["spot", "spot-2"]
    chars = [sum(len(feed.arg_text(s)) for s in c.meta.subscriptions) for c in conns]
    assert chars == [232 * 86, 168 * 86] and max(chars) <= MAX_ARG_CHARS
    # every topic once; a symbol's four topics share a connection
    where = {}
    for conn in conns:
        for sub in conn.meta.subscriptions:
            where.setdefault(sub.symbol, set()).add(conn.meta.label)
    assert sorted(where) == MANY and all(len(labels) == 1 for labels in where.values())
    assert sum(len(c.meta.subscriptions) for c in conns) == 4 * len(MANY)
    for conn in conns:
        requests = feed.subscribe_requests(conn.meta, list(conn.meta.subscriptions))
        assert all(len(orjson.loads(r)["args"]) <= 10 for r in requests)


async def test_many_symbols_subscribe_within_the_servers_limits():
    fake = FakeBybit()
    fake.silent = True              # acks only: 1,600 topics would stream a lot
    await fake.start()
    cfg = BybitSettings(spot_symbols=MANY, perp_symbols=[], backfill=False,
                        spot_ws_url=f"{fake.ws_base}/v5/public/spot", perp_ws_url="",
                        spot_rest_url=fake.rest_base)
    feed = BybitFeed(cfg, offline_context())
    task = asyncio.create_task(feed.run())
    try:
        await wait_for(lambda: _async(sum(len(ws.state_dict["topics"])
                                          for ws in fake.live("spot")) == 4 * len(MANY)),
                       what="every topic subscribed")
        assert len(fake.live("spot")) == 2 and not fake.violations
        assert not feed.stats.errors
    finally:
        await feed.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await fake.stop()


async def test_kline_backfill_pages_a_long_gap(env):
    """A gap longer than 1000 minutes is fetched in explicit start..end pages (F7)."""
    fake, feed, db = env
    emitted: list[Candle] = []
    emit = feed.emit
    feed.emit = lambda record, **kw: (isinstance(record, Candle) and emitted.append(record),
                                      emit(record, **kw))[1]
    now_ms = int(time.time() * 1000)
    start_ms = now_ms // 60_000 * 60_000 - 1500 * 60_000
    await feed.backfill_candles("perp", "BTCUSDT", datetime.fromtimestamp(start_ms / 1000,
                                                                         timezone.utc))
    pages = [r for r in fake.rest_requests if r.startswith("/v5/market/kline")]
    assert len(pages) == 2
    assert f"start={start_ms}&end={start_ms + 1000 * 60_000 - 1}" in pages[0]
    assert f"start={start_ms + 1000 * 60_000}&" in pages[1]
    minutes = [int(c.ts.timestamp() * 1000) for c in emitted]
    assert minutes == list(range(start_ms, minutes[-1] + 1, 60_000)) and len(minutes) >= 1499
