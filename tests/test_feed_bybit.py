"""The real BybitFeed against a fake Bybit (WebSocket + REST), writing into a real MongoDB."""
from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest_asyncio

from collector.exchanges.base import FeedContext
from collector.exchanges.bybit.feed import BybitFeed
from collector.stats import Stats
from collector.writer import Writer
from common import schema
from common.settings import BybitSettings, Settings
from tests.fakes.bybit import FakeBybit
from tests.faultlog import report
from tests.helpers import wait_for


@pytest_asyncio.fixture
async def env(mongo_db):
    fake = FakeBybit()
    await fake.start()
    settings = Settings(
        bybit=BybitSettings(
            spot_symbols=["BTCUSDT", "BTCUSDC", "BADUSDT"], perp_symbols=["BTCUSDT"],
            spot_ws_url=f"{fake.ws_base}/v5/public/spot",
            perp_ws_url=f"{fake.ws_base}/v5/public/linear",
            spot_rest_url=fake.rest_base, perp_rest_url=fake.rest_base, idle_timeout_s=1.0),
        book_snapshot_interval_s=0.2, liquidity_interval_s=0.2, flush_interval_s=0.1)
    writer = Writer(mongo_db, flush_interval_s=0.1)
    session = aiohttp.ClientSession()
    ctx = FeedContext(settings=settings, writer=writer, stats=Stats(), session=session,
                      poll_interval_s=0.5)
    feed = BybitFeed(settings.bybit, ctx)
    feed.derived_min_interval_s = 0.0
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


async def test_all_collections_and_awkward_cases(env):
    fake, feed, db = env

    async def all_collections():
        counts = {}
        for name in schema.DATA_COLLECTIONS:
            counts[name] = await db[name].count_documents({"exchange": "bybit"})
        return all(counts.values()) and counts

    await wait_for(all_collections, timeout_s=10, what="all seven collections")
    # spot: max 10 args per request (12 topics -> chunked), snapshot sent before the ack
    assert not fake.violations
    spot_subs = [m for p, m in fake.sent_ops("subscribe") if p.endswith("spot")]
    assert len(spot_subs) >= 2 and all(len(m["args"]) <= 10 for m in spot_subs)
    # the failed request is reported; its topics are retried one by one, so the valid topics
    # sharing the request with BADUSDT (BTCUSDC's) still arrive
    assert any("Invalid topic" in key for key in feed.stats.errors)
    singles = [m["args"] for p, m in fake.sent_ops("subscribe") if len(m["args"]) == 1]
    assert ["tickers.BADUSDT"] in singles and ["tickers.BTCUSDT"] in singles
    assert feed.books[("spot", "BTCUSDT")].synced and feed.books[("spot", "BTCUSDC")].synced
    await wait_for(lambda: _async(("perp", "BTCUSDT") in feed.books
                                  and feed.books[("perp", "BTCUSDT")].synced), what="perp book")
    async def perp_trade():
        return await db[schema.TRADES].find_one({"market": "perp"})
    await wait_for(perp_trade, what="perp trade")
    # trades: taker side, base size, both markets
    trade = await db[schema.TRADES].find_one({"market": "perp"})
    assert trade["side"] == "buy" and trade["size"] == 0.001 and trade["price"] == 16578.5
    assert await db[schema.TRADES].count_documents({"market": "spot", "symbol": "BTCUSDC"})
    # candles from kline.1
    candle = await db[schema.OHLCV].find_one({"symbol": "BTCUSDT", "market": "spot"})
    assert candle["interval"] == "1m" and not candle["closed"]

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
    assert fake.rest_requests and "category=linear" in fake.rest_requests[0]
    assert await db[schema.FUNDING_RATES].find_one({"rate": -0.0002, "interval_hours": 8})
    assert await db[schema.OPEN_INTEREST].find_one({"open_interest": 68750.001})
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
    # the start-up retries of the failed BADUSDT requests (12 single-topic subscribes) are done
    await wait_for(lambda: _async(len([m for p, m in fake.sent_ops("subscribe")
                                       if len(m["args"]) == 1]) == 12), what="retries")
    subs_before = len(fake.sent_ops("subscribe"))
    ws = fake.live("spot")[0]
    injected = time.monotonic()
    await fake.send(ws, fake.book_delta(ws.state_dict, "BTCUSDT", u=5))   # u goes backwards
    await wait_for(lambda: _async(feed.stats.resyncs == 1), what="resync")
    await wait_for(lambda: _async(usdt.synced), interval_s=0.01, what="BTCUSDT resynced")
    report("bybit_sequence_gap", expected="that book alone resubscribes (snapshot again); "
           "other symbols unaffected", recovery_s=time.monotonic() - injected,
           other_books_resynced=feed.stats.resyncs - 1)
    assert usdc.synced and feed.stats.resyncs == 1
    unsubs = [m for _, m in fake.sent_ops("unsubscribe")]
    assert [m["args"] for m in unsubs] == [["orderbook.200.BTCUSDT"]]
    assert [m["args"] for _, m in fake.sent_ops("subscribe")[subs_before:]] == \
        [["orderbook.200.BTCUSDT"]]
    # a u=1 snapshot (service restart) resets the book without a resync
    await fake.send(ws, fake.book_snapshot(ws.state_dict, "BTCUSDT", u=1))
    await wait_for(lambda: _async(usdt.update_id is not None and usdt.update_id < 10),
                   what="u=1 snapshot applied")
    assert usdt.synced and feed.stats.resyncs == 1
    # malformed messages are counted and skipped
    await fake.send(ws, {"topic": "publicTrade.BTCUSDT", "type": "snapshot", "ts": 1,
                         "data": [{"p": "1"}]})
    await wait_for(lambda: _async(feed.stats.malformed >= 1), what="malformed counted")
    assert usdc.synced


async def test_idle_watchdog_reconnects_silent_server(env):
    fake, feed, db = env
    await wait_for(lambda: _async(len(feed.connections) == 2 and
                                  all(c.connects >= 1 for c in feed.connections)),
                   what="connected")
    fake.silent = True        # socket stays open, pongs/acks only
    await wait_for(lambda: _async(all(c.connects >= 2 for c in feed.connections)),
                   timeout_s=8, what="idle reconnect")
    assert any("no data" in (r or "") for r in [c._reconnect_reason for c in feed.connections]) \
        or feed.stats.reconnects >= 2
    fake.silent = False
    await wait_for(lambda: _async(_synced(feed, "BTCUSDT")), what="resubscribed")


async def _async(value):
    return value


def _synced(feed, symbol, market="spot"):
    book = feed.books.get((market, symbol))
    return book is not None and book.synced
