"""The real OkxFeed against a fake OKX (WebSocket /public + /business, REST), real MongoDB."""
from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest_asyncio

from collector.exchanges.base import FeedContext
from collector.exchanges.okx.feed import OkxFeed
from collector.stats import Stats
from collector.writer import Writer
from common import schema
from common.settings import OkxSettings, Settings
from tests.fakes.okx import FakeOkx
from tests.faultlog import report
from tests.helpers import wait_for


async def _async(value):
    return value


def _synced(feed, inst, market="spot"):
    book = feed.books.get((market, inst))
    return book is not None and book.synced


async def start(mongo_db, fake: FakeOkx, poll_interval_s: float = 1.0, **feed_attrs):
    await fake.start()
    settings = Settings(
        okx=OkxSettings(spot_ws_url=f"{fake.ws_base}/ws/v5", perp_ws_url=f"{fake.ws_base}/ws/v5",
                        spot_rest_url=fake.rest_base, perp_rest_url=fake.rest_base,
                        idle_timeout_s=1.0),
        book_snapshot_interval_s=0.2, liquidity_interval_s=0.2, flush_interval_s=0.1)
    writer = Writer(mongo_db, flush_interval_s=0.1)
    session = aiohttp.ClientSession()
    ctx = FeedContext(settings=settings, writer=writer, stats=Stats(), session=session,
                      poll_interval_s=poll_interval_s)
    feed = OkxFeed(settings.okx, ctx)
    feed.resync_cooldown_s = 0.3
    for name, value in feed_attrs.items():
        setattr(feed, name, value)
    tasks = [asyncio.create_task(writer.run()), asyncio.create_task(feed.run())]
    return feed, writer, session, tasks


async def stop(feed, writer, session, tasks, fake):
    await feed.stop()
    tasks[1].cancel()
    await asyncio.gather(tasks[1], return_exceptions=True)
    await writer.close(5)
    tasks[0].cancel()
    await asyncio.gather(tasks[0], return_exceptions=True)
    await session.close()
    await fake.stop()


@pytest_asyncio.fixture
async def env(mongo_db):
    fake = FakeOkx()
    feed, writer, session, tasks = await start(mongo_db, fake)
    try:
        yield fake, feed, mongo_db
    finally:
        await stop(feed, writer, session, tasks, fake)


async def test_all_collections_units_and_business_url(env):
    fake, feed, db = env

    async def all_collections():
        counts = {}
        for name in schema.DATA_COLLECTIONS:
            counts[name] = await db[name].count_documents({"exchange": "okx"})
        return all(counts.values()) and counts

    await wait_for(all_collections, timeout_s=10, what="all seven collections")
    assert feed.ct_val == {"BTC-USDT-SWAP": 0.01}
    assert any("instType=SWAP" in r for r in fake.rest_requests)
    # candles only on /business, never on /public; no error events
    subs = fake.sent_ops("subscribe")
    public = [a["channel"] for p, m in subs if p.endswith("/public") for a in m["args"]]
    business = [a["channel"] for p, m in subs if p.endswith("/business") for a in m["args"]]
    assert "candle1m" not in public and set(business) == {"candle1m"}
    assert {"books", "trades", "tickers", "funding-rate", "open-interest"} <= set(public)
    assert not feed.stats.errors
    # checksums were validated and matched
    assert feed.checksum_checked > 0 and feed.stats.gaps == 0

    async def swap_trade():
        return await db[schema.TRADES].find_one({"symbol": "BTC-USDT-SWAP"})
    trade = await wait_for(swap_trade, what="swap trade")
    assert trade["market"] == "perp" and trade["size"] == 0.05 and trade["side"] == "buy"
    spot_trade = await db[schema.TRADES].find_one({"symbol": "BTC-USDT"})
    assert spot_trade["size"] == 0.0002 and spot_trade["price"] == 30236

    async def swap_ticker():
        return await db[schema.MARKET_DATA].find_one({"symbol": "BTC-USDT-SWAP"})
    ticker = await wait_for(swap_ticker, what="swap ticker")
    assert ticker["bid_size"] == 0.23 and ticker["ask_size"] == 1.55
    assert ticker["volume_24h"] == 17602.13
    funding = await db[schema.FUNDING_RATES].find_one({"symbol": "BTC-USDT-SWAP"})
    assert funding["rate"] == 0.0001875391284828 and funding["interval_hours"] == 8
    oi = await db[schema.OPEN_INTEREST].find_one({})
    assert oi["open_interest"] == 5654.74

    async def swap_book():
        return await db[schema.ORDER_BOOK].find_one({"symbol": "BTC-USDT-SWAP"})
    book = await wait_for(swap_book, what="swap book snapshot")
    assert book["asks"][0][0] == 8476.98 and book["asks"][0][1] == 4.15   # 415 contracts
    candle = await db[schema.OHLCV].find_one({"symbol": "BTC-USDT"})
    assert candle["interval"] == "1m" and candle["open"] == 8533.02


async def test_sequence_rules_gap_and_checksum_resync(env):
    fake, feed, db = env
    await wait_for(lambda: _async(_synced(feed, "BTC-USDT") and _synced(feed, "BTC-USDC")),
                   what="books synced")
    usdt, usdc = feed.books[("spot", "BTC-USDT")], feed.books[("spot", "BTC-USDC")]
    ws = fake.public_ws()
    state = ws.state_dict
    # no-change heartbeat: seqId == prevSeqId == last
    last = state["books"]["BTC-USDT"]["seq"]
    await fake.send(ws, fake.book_update(state, "BTC-USDT", prev=last, seq=last, bids=[], asks=[]))
    # sequence reset after maintenance: seqId < prevSeqId, prevSeqId == last
    await fake.send(ws, fake.book_update(state, "BTC-USDT", seq=3, bids=[], asks=[]))
    await wait_for(lambda: _async(usdt.update_id is not None and usdt.update_id < 1000),
                   what="reset accepted")
    await wait_for(lambda: _async(usdt.update_id > 4), what="updates after the reset")
    assert usdt.synced and feed.stats.gaps == 0 and feed.stats.resyncs == 0

    # a gap on BTC-USDT: only BTC-USDT is resubscribed; BTC-USDC stays synced
    subs_before = len(fake.sent_ops("subscribe"))
    last = state["books"]["BTC-USDT"]["seq"]
    usdc_seq = usdc.update_id
    injected = time.monotonic()
    await fake.send(ws, fake.book_update(state, "BTC-USDT", prev=last + 5, seq=last + 6))
    await wait_for(lambda: _async(feed.stats.resyncs == 1), what="gap resync")
    assert usdc.synced
    await wait_for(lambda: _async(usdt.synced), interval_s=0.01, what="BTC-USDT resynced")
    recovery_s = time.monotonic() - injected
    await wait_for(lambda: _async(usdc.update_id > usdc_seq), what="BTC-USDC keeps updating")
    report("okx_sequence_gap", expected="that book alone resubscribes (snapshot again); other "
           "symbols unaffected", recovery_s=recovery_s,
           other_books_resynced=feed.stats.resyncs - 1)
    assert usdc.synced and feed.stats.gaps == 1
    unsubs = [m["args"] for _, m in fake.sent_ops("unsubscribe")]
    assert unsubs == [[{"channel": "books", "instId": "BTC-USDT"}]]
    assert [m["args"] for _, m in fake.sent_ops("subscribe")[subs_before:]] == unsubs

    # a wrong checksum on BTC-USDC resyncs that book (after the per-symbol cool-down)
    usdt_seq = usdt.update_id
    injected = time.monotonic()
    await fake.send(ws, fake.book_update(state, "BTC-USDC", checksum=123456789))
    await wait_for(lambda: _async(feed.stats.gaps == 2), what="checksum mismatch")
    await wait_for(lambda: _async(feed.stats.resyncs == 2 and usdc.synced), interval_s=0.01,
                   what="BTC-USDC resynced")
    recovery_s = time.monotonic() - injected
    await wait_for(lambda: _async(usdt.update_id > usdt_seq), what="BTC-USDT keeps updating")
    report("okx_checksum", expected="that book alone resubscribes (after its cool-down); "
           "other symbols unaffected", recovery_s=recovery_s,
           other_books_resynced=feed.stats.resyncs - 2)
    assert usdt.synced and feed.stats.resyncs == 2


async def test_notice_reconnects(env):
    fake, feed, db = env
    await wait_for(lambda: _async(len(feed.connections) == 2 and
                                  all(c.connects == 1 and c.connected.is_set()
                                      for c in feed.connections)), what="connected")
    await fake.push("/public", {"event": "notice", "code": "64008",
                                "msg": "The connection will soon be closed for a service "
                                       "upgrade. Please reconnect.", "connId": "a4d3ae55"})
    public = [c for c in feed.connections if c.url.endswith("/public")][0]
    await wait_for(lambda: _async(public.connects >= 2 and public.connected.is_set()),
                   timeout_s=8, what="reconnect after notice")
    assert feed.notices == 1
    await wait_for(lambda: _async(_synced(feed, "BTC-USDT")), what="book after reconnect")


async def test_idle_watchdog_and_pong_is_control(env):
    fake, feed, db = env
    await wait_for(lambda: _async(len(feed.connections) == 2 and
                                  all(c.connects >= 1 for c in feed.connections)),
                   what="connected")
    assert feed.on_message(feed.connections[0], "pong") is False
    fake.silent = True            # the socket stays open but no data flows
    await wait_for(lambda: _async(all(c.connects >= 2 for c in feed.connections)),
                   timeout_s=8, what="idle reconnect")
    fake.silent = False
    await wait_for(lambda: _async(_synced(feed, "BTC-USDT")), what="data after reconnect")


async def test_ctval_default_when_rest_fails(mongo_db):
    fake = FakeOkx()
    fake.instruments_fail = True
    feed, writer, session, tasks = await start(mongo_db, fake)
    try:
        await wait_for(lambda: _async(feed.ct_val.get("BTC-USDT-SWAP") == 0.01),
                       what="default ctVal")
        assert any("ctVal" in key for key in feed.stats.errors)
        await wait_for(lambda: _async(_synced(feed, "BTC-USDT-SWAP", "perp")), what="swap book")
    finally:
        await stop(feed, writer, session, tasks, fake)


async def test_resync_reconnects_when_subscribe_budget_is_exhausted(env):
    fake, feed, db = env
    await wait_for(lambda: _async(_synced(feed, "BTC-USDT")), what="book synced")
    public = feed.book_conn["BTC-USDT"]
    feed._sub_requests[public].extend([time.monotonic()] * 470)
    ws = fake.public_ws()
    last = ws.state_dict["books"]["BTC-USDT"]["seq"]
    await fake.send(ws, fake.book_update(ws.state_dict, "BTC-USDT", prev=last + 1, seq=last + 2))
    await wait_for(lambda: _async(public.connects >= 2 and _synced(feed, "BTC-USDT")),
                   timeout_s=8, what="reconnect instead of resubscribe")
    assert not fake.sent_ops("unsubscribe")
    assert feed.subscribe_budget_left(public) == 479


async def test_rest_fallback_for_funding_and_open_interest(mongo_db):
    fake = FakeOkx()
    fake.ws_rejects = {"funding-rate", "open-interest"}
    feed, writer, session, tasks = await start(mongo_db, fake, poll_interval_s=1.0)
    try:
        async def both():
            return (await mongo_db[schema.FUNDING_RATES].find_one({"exchange": "okx"}) and
                    await mongo_db[schema.OPEN_INTEREST].find_one({"exchange": "okx"}))
        await wait_for(both, timeout_s=8, what="funding + open interest from REST")
        assert any(r.startswith("/api/v5/public/funding-rate") for r in fake.rest_requests)
        assert any("instType=SWAP" in r and "open-interest" in r for r in fake.rest_requests)
        assert any("60018" in key for key in feed.stats.errors)
        oi = await mongo_db[schema.OPEN_INTEREST].find_one({})
        assert oi["open_interest"] == 5654.74 and oi["symbol"] == "BTC-USDT-SWAP"
    finally:
        await stop(feed, writer, session, tasks, fake)


async def test_quiet_connection_pings_and_pongs_do_not_count_as_data(mongo_db):
    fake = FakeOkx()
    feed, writer, session, tasks = await start(mongo_db, fake, ping_interval_s=0.3)
    try:
        await wait_for(lambda: _async(len(feed.connections) == 2 and
                                      all(c.connects >= 1 for c in feed.connections)),
                       what="connected")
        fake.silent = True       # only "pong" answers from now on
        await wait_for(lambda: _async(any(t == "ping" for _, t in fake.received)),
                       what="text ping sent when quiet")
        await wait_for(lambda: _async(all(c.connects >= 2 for c in feed.connections)),
                       timeout_s=8, what="idle reconnect despite pongs")
    finally:
        await stop(feed, writer, session, tasks, fake)
