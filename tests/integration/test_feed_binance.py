"""The real Binance feed against the fake Binance on loopback, storing into a real server."""
from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from collector.exchanges.base import FeedContext
from collector.exchanges.binance.feed import BinanceFeed
from collector.stats import Stats
from collector.writer import Writer
from common import schema
from common.indexes import apply_indexes
from common.settings import BinanceSettings, Settings
from tests.support.fakes.binance import FakeBinance
from tests.support.faultlog import report
from tests.support.helpers import wait_for


@pytest.fixture
async def fake():
    server = FakeBinance()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def running(fake, mongo_db):
    base = f"http://127.0.0.1:{fake.port}"
    ws = f"ws://127.0.0.1:{fake.port}"
    cfg = BinanceSettings(spot_ws_url=ws, perp_ws_url=ws, spot_rest_url=base, perp_rest_url=base,
                          spot_symbols=["BTCUSDT", "BTCUSDC", "BTCBUSD"], idle_timeout_s=1.5)
    settings = Settings(binance=cfg, book_snapshot_interval_s=0.2, liquidity_interval_s=0.3)
    await apply_indexes(mongo_db, settings.retention)
    writer = Writer(mongo_db, batch_size=200, flush_interval_s=0.1)
    async with aiohttp.ClientSession() as session:
        feed = BinanceFeed(cfg, FeedContext(settings, writer, Stats(), session, 0.5))
        tasks = [asyncio.create_task(feed.run()), asyncio.create_task(writer.run())]
        yield feed, writer
        await feed.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await writer.close()


async def test_all_seven_data_types_are_stored(running, mongo_db):
    feed, _ = running

    async def all_collections():
        counts = {c: await mongo_db[c].count_documents({"exchange": "binance"})
                  for c in schema.DATA_COLLECTIONS}
        perp_book = await mongo_db[schema.ORDER_BOOK].count_documents({"market": "perp"})
        return counts if all(counts.values()) and perp_book else None

    counts = await wait_for(all_collections, timeout_s=20, what="all seven collections")
    assert set(counts) == set(schema.DATA_COLLECTIONS)
    trade = await mongo_db[schema.TRADES].find_one({"market": "spot", "symbol": "BTCUSDT"})
    assert trade["pair"] == "BTC/USDT" and trade["side"] in ("buy", "sell")
    assert trade["ts"].tzinfo is not None and trade["received_at"] >= trade["ts"]
    funding = await mongo_db[schema.FUNDING_RATES].find_one({"symbol": "BTCUSDT"})
    assert funding["market"] == "perp" and funding["rate"] == 0.0001
    perp_ticker = await wait_for(lambda: mongo_db[schema.LATEST].find_one(
        {"_id": "binance:perp:BTCUSDT:market_data"}), what="latest perp ticker")
    book = await mongo_db[schema.ORDER_BOOK].find_one({"market": "perp"})
    assert book["bids"][0][0] < book["asks"][0][0]
    assert perp_ticker["bid"] < perp_ticker["ask"]       # filled from the live book
    # BTCBUSD is delisted: reported once, skipped, visible in stats.
    assert feed.stats.unavailable_symbols == {"spot:BTCBUSD": "Invalid symbol."}
    assert await mongo_db[schema.TRADES].count_documents({"symbol": "BTCBUSD"}) == 0


async def test_gap_resyncs_only_that_symbol(running, fake):
    feed, _ = running
    await wait_for(lambda: _synced(feed, ("spot", "BTCUSDT"), ("spot", "BTCUSDC"),
                                   ("perp", "BTCUSDT")), what="books synced")
    other_id_before = feed.books[("spot", "BTCUSDC")].update_id
    requests_before, gaps_before = fake.depth_requests, feed.stats.gaps
    resyncs_before = feed.stats.resyncs
    fake.inject_gap("spot", "BTCUSDT")
    injected = time.monotonic()
    await wait_for(lambda: _value(feed.stats.gaps > gaps_before), what="gap detected")
    detected_s = time.monotonic() - injected
    await wait_for(lambda: _synced(feed, ("spot", "BTCUSDT")), what="resynced")
    resync_s = time.monotonic() - injected
    report("binance_sequence_gap", expected="that book alone resyncs from a REST snapshot; "
           "gap in the ledger; other symbols unaffected", recovery_s=resync_s,
           detected_s=detected_s, snapshots=fake.depth_requests - requests_before,
           other_books_resynced=feed.stats.resyncs - resyncs_before - 1)
    gap = next(g for g in feed.gaps.recent if g.cause == "sequence_gap")
    assert gap.symbol == "BTCUSDT" and gap.stream == "book" and gap.end is not None
    assert fake.depth_requests == requests_before + 1    # one snapshot, for that symbol only
    other = feed.books[("spot", "BTCUSDC")]
    assert other.synced and other.update_id > other_id_before   # never reset

    fake.inject_gap("perp", "BTCUSDT")                    # USD-M: pu breaks
    await wait_for(lambda: _value(feed.stats.gaps > gaps_before + 1), what="perp gap")
    await wait_for(lambda: _synced(feed, ("perp", "BTCUSDT")), what="perp resynced")


async def test_malformed_message_is_counted_and_skipped(running, fake, mongo_db):
    feed, _ = running
    await wait_for(lambda: _value(feed.stats.records[schema.TRADES] > 0), what="trades")
    await fake.send_raw('{"stream":"btcusdt@trade","data":{"e":"trade","s":"BTCUSDT","p":"x"}}')
    await fake.send_raw("not json at all")
    await wait_for(lambda: _value(feed.stats.malformed >= 2 * len(fake.sockets)),
                   what=f"malformed counted on {len(fake.sockets)} sockets")
    before = feed.stats.records[schema.TRADES]
    await wait_for(lambda: _value(feed.stats.records[schema.TRADES] > before + 10),
                   what="trades keep flowing")


async def test_silent_connection_is_replaced_by_the_idle_watchdog(running, fake):
    feed, _ = running
    await wait_for(lambda: _value(fake.connections >= 3), what="connected")
    connections_before = fake.connections
    fake.stall()
    stalled_at = time.monotonic()
    await wait_for(lambda: _value(feed.stats.reconnects >= 3), timeout_s=10,
                   what="idle reconnects")
    detect_s = time.monotonic() - stalled_at
    fake.stall(False)
    unstalled_at = time.monotonic()
    await wait_for(lambda: _value(fake.connections >= connections_before + 3), timeout_s=15,
                   what="reconnected")
    before = feed.stats.records[schema.TRADES]
    await wait_for(lambda: _value(feed.stats.records[schema.TRADES] > before), what="data again")
    data_s = time.monotonic() - unstalled_at
    await wait_for(lambda: _synced(feed, ("spot", "BTCUSDT"), ("perp", "BTCUSDT")),
                   what="books resynced after reconnect")
    # Recovery = the watchdog's reaction (the fake stays silent until the test ends the stall).
    report("binance_stall", expected="socket open, no data: idle watchdog reconnects after "
           "idle_timeout_s (1.5 s here); data and books again", recovery_s=detect_s,
           data_after_stall_end_s=data_s, books_after_stall_end_s=time.monotonic() - unstalled_at)
    assert {g.cause for g in feed.gaps.recent} >= {"idle"}


async def _value(result):
    return result


def _synced(feed, *keys):
    async def check():
        return all(k in feed.books and feed.books[k].synced for k in keys)
    return check()
