"""KrakenFeed end to end against the fake Kraken (tests/fakes/kraken.py) with a real Writer."""
from __future__ import annotations

import time

import pytest

from collector.exchanges.kraken.feed import KrakenFeed
from common import schema
from common.settings import KrakenSettings, Settings
from tests.fakes.kraken import FakeKraken
from tests.faultlog import report
from tests.feedutil import collection_counts, running_feed
from tests.helpers import wait_for


@pytest.fixture
async def fake():
    server = await FakeKraken().start()
    try:
        yield server
    finally:
        await server.stop()


def settings_for(fake: FakeKraken, **kraken) -> Settings:
    cfg = dict(spot_symbols=["XBT/USD", "ETH/USD"], perp_symbols=["PF_XBTUSD"],
               spot_ws_url=fake.spot_url, perp_ws_url=fake.perp_url,
               perp_rest_url=fake.perp_rest_url, book_depth=100)
    cfg.update(kraken)
    return Settings(kraken=KrakenSettings(**cfg), exchanges=["kraken"],
                    book_snapshot_interval_s=0.1, liquidity_interval_s=0.2, poll_interval_s=1.0)


def fast_reconnects(feed: KrakenFeed) -> None:
    # Production keeps >= 5 s between connects (Cloudflare limit); tests reconnect quickly.
    assert KrakenFeed.connect_interval_s >= 5
    feed.throttle.min_interval_s = 0.05


async def test_all_collections_and_checksum_resync_of_one_symbol(mongo_db, fake):
    async with running_feed(KrakenFeed, mongo_db, settings_for(fake), "kraken",
                            fast_reconnects) as feed:
        async def all_collections():
            counts = await collection_counts(mongo_db)
            return counts if all(counts.values()) else None
        counts = await wait_for(all_collections, timeout_s=10, what="records in all collections")
        assert set(counts) == set(schema.DATA_COLLECTIONS)
        # symbols stored under their v2 names; perp under the futures name
        assert await mongo_db[schema.MARKET_DATA].find_one({"symbol": "BTC/USD", "market": "spot"})
        assert await mongo_db[schema.FUNDING_RATES].find_one(
            {"symbol": "PF_XBTUSD", "pair": "BTC/USD", "rate": 1.0e-05, "interval_hours": 1.0})
        assert await mongo_db[schema.OPEN_INTEREST].find_one({"open_interest": 1234.5})
        async def closed_candle():
            return await mongo_db[schema.OHLCV].find_one({"symbol": "BTC/USD", "closed": True})
        await wait_for(closed_candle, timeout_s=5, what="closed candle")
        book = await mongo_db[schema.ORDER_BOOK].find_one({"symbol": "ETH/USD"})
        assert book["bids"][0][0] < book["asks"][0][0]

        # Many checksummed updates were verified and none failed.
        assert feed.checksum_failures == 0
        assert fake.book_subscribes == {"BTC/USD": 1, "ETH/USD": 1}
        assert feed.stats.malformed == 0

        fake.corrupt_next.add("BTC/USD")
        injected = time.monotonic()

        async def resubscribed():
            return fake.book_subscribes["BTC/USD"] == 2 and feed.books[("spot", "BTC/USD")].synced
        await wait_for(resubscribed, timeout_s=5, interval_s=0.01,
                       what="BTC/USD book resubscribed")
        report("kraken_checksum", expected="that book alone unsubscribes/resubscribes (new "
               "snapshot), no reconnect; other symbols unaffected",
               recovery_s=time.monotonic() - injected,
               other_books_resubscribed=fake.book_subscribes["ETH/USD"] - 1,
               reconnects=fake.spot_connects - 1)
        assert feed.checksum_failures == 1
        assert fake.book_unsubscribes == {"BTC/USD": 1}
        assert fake.book_subscribes["ETH/USD"] == 1          # the other symbol is untouched
        assert fake.spot_connects == 1                       # no reconnect
        # after the resync, checksums verify again
        before = feed.stats.messages

        async def more():
            return feed.stats.messages > before + 20
        await wait_for(more, timeout_s=5)
        assert feed.checksum_failures == 1

        # futures book seq gap -> resubscribe of that product only
        spot_subscribes = dict(fake.book_subscribes)
        fake.fut_gap_next = True
        injected = time.monotonic()

        async def fut_resubscribed():
            return fake.fut_book_subscribes["PF_XBTUSD"] == 2 and \
                feed.books[("perp", "PF_XBTUSD")].synced
        await wait_for(fut_resubscribed, timeout_s=5, interval_s=0.01,
                       what="futures book resubscribed")
        report("kraken_futures_sequence_gap", expected="that product's book alone resubscribes, "
               "no reconnect; other symbols unaffected", recovery_s=time.monotonic() - injected,
               other_books_resubscribed=sum(fake.book_subscribes.values())
               - sum(spot_subscribes.values()),
               reconnects=fake.perp_connects - 1)
        assert fake.perp_connects == 1


async def test_unknown_symbol_isolated_and_error_logged_once(mongo_db, fake):
    settings = settings_for(fake, spot_symbols=["BTC/USD", "DOGE/USD"],
                            perp_symbols=["PF_XBTUSD", "PF_NOPEUSD"])
    async with running_feed(KrakenFeed, mongo_db, settings, "kraken", fast_reconnects) as feed:
        async def data():
            return await mongo_db[schema.TRADES].count_documents({"symbol": "BTC/USD"}) and \
                await mongo_db[schema.MARKET_DATA].count_documents({"symbol": "PF_XBTUSD"})
        await wait_for(data, timeout_s=10, what="data for the valid symbols")
        assert "DOGE/USD" in feed.stats.unavailable_symbols
        assert "PF_NOPEUSD" in feed.stats.unavailable_symbols
        assert any("not supported" in e for e in feed.stats.errors)
        assert sum(feed.stats.errors.values()) >= 2


async def test_silent_connection_is_reconnected_by_idle_watchdog(mongo_db, fake):
    fake.silent = True
    settings = settings_for(fake, idle_timeout_s=0.5, perp_symbols=[])

    def configure(feed):
        fast_reconnects(feed)
        feed.ping_interval_s = 0.1   # pongs keep arriving but are control traffic
    async with running_feed(KrakenFeed, mongo_db, settings, "kraken", configure) as feed:
        async def reconnected():
            return fake.spot_connects >= 2
        await wait_for(reconnected, timeout_s=8, what="reconnect after silence")
        assert feed.stats.reconnects >= 1
        assert fake.pings >= 2
        fake.silent = False

        async def data():
            return await mongo_db[schema.TRADES].count_documents({"exchange": "kraken"})
        await wait_for(data, timeout_s=8, what="data after the server talks again")


async def test_depth_10_book_truncation_keeps_checksums_valid(mongo_db, fake):
    """At depth 10, levels pushed out of scope are never deleted by Kraken: the feed must truncate
    after every update or the next checksum fails."""
    settings = settings_for(fake, book_depth=10, perp_symbols=[])
    async with running_feed(KrakenFeed, mongo_db, settings, "kraken", fast_reconnects) as feed:
        assert feed.book_depth == 10

        async def many_updates():
            book = feed.books.get(("spot", "BTC/USD"))
            return book is not None and book.synced and feed.stats.messages > 400
        await wait_for(many_updates, timeout_s=10, what="many book updates")
        assert feed.checksum_failures == 0
        book = feed.books[("spot", "BTC/USD")]
        assert len(book.bids) == 10 and len(book.asks) == 10
        assert [r["params"].get("depth") for r in fake.requests
                if r.get("params", {}).get("channel") == "book"] == [10]
