"""GateioFeed end to end against the fake Gate.io (tests/fakes/gateio.py) with a real Writer."""
from __future__ import annotations

import time

import pytest

from collector.exchanges.gateio.feed import GateioFeed
from common import schema
from common.settings import GateioSettings, Settings
from tests.fakes.gateio import MULTIPLIER, FakeGate
from tests.faultlog import report
from tests.feedutil import collection_counts, running_feed
from tests.helpers import wait_for


@pytest.fixture
async def fake():
    server = await FakeGate().start()
    try:
        yield server
    finally:
        await server.stop()


def settings_for(fake: FakeGate, **gate) -> Settings:
    cfg = dict(spot_symbols=["BTC_USDT", "BTC_USDC"], perp_symbols=["BTC_USDT"],
               spot_ws_url=fake.spot_url, perp_ws_url=fake.perp_url,
               spot_rest_url=fake.rest_url, perp_rest_url=fake.rest_url, book_depth=100)
    cfg.update(gate)
    return Settings(gateio=GateioSettings(**cfg), exchanges=["gateio"],
                    book_snapshot_interval_s=0.1, liquidity_interval_s=0.2, poll_interval_s=1.0)


def synced(feed, market, symbol):
    return feed.books[(market, symbol)].synced


def book_matches_server(feed, fake, market, symbol) -> bool:
    """The feed's top levels equal the fake server's own book (sizes in base units)."""
    book = feed.books.get((market, symbol))
    if book is None:
        return False
    server = fake.books[(market, symbol)]
    mult = MULTIPLIER if market == "perp" else 1.0
    if not book.synced or book.update_id != server.id:
        return False
    want_bids = [[p, s * mult] for p, s in sorted(server.bids.items(), reverse=True)[:10]]
    want_asks = [[p, s * mult] for p, s in sorted(server.asks.items())[:10]]
    return all(abs(a[0] - b[0]) < 1e-9 and abs(a[1] - b[1]) < 1e-9
               for a, b in zip(book.bids.top(10) + book.asks.top(10), want_bids + want_asks))


async def test_all_collections_and_book_sync(mongo_db, fake):
    async with running_feed(GateioFeed, mongo_db, settings_for(fake), "gateio") as feed:
        async def all_collections():
            counts = await collection_counts(mongo_db)
            return counts if all(counts.values()) else None
        await wait_for(all_collections, timeout_s=10, what="records in all collections")
        assert feed.multipliers == {"BTC_USDT": MULTIPLIER}
        for market, symbol in (("spot", "BTC_USDT"), ("spot", "BTC_USDC"), ("perp", "BTC_USDT")):
            async def matches(m=market, s=symbol):
                return book_matches_server(feed, fake, m, s)
            await wait_for(matches, timeout_s=5, what=f"{market} {symbol} book == server book")
        # futures sizes are contracts x quanto_multiplier (base units)
        trade = await mongo_db[schema.TRADES].find_one({"market": "perp"})
        assert trade["size"] in (pytest.approx(25 * MULTIPLIER), pytest.approx(40 * MULTIPLIER))
        assert trade["side"] in ("buy", "sell")
        async def stats_oi():
            return await mongo_db[schema.OPEN_INTEREST].find_one(
                {"open_interest_value": 12500000.5})
        oi = await wait_for(stats_oi, timeout_s=5, what="open interest from contract_stats")
        assert oi["open_interest"] == pytest.approx(250.0)
        funding = await mongo_db[schema.FUNDING_RATES].find_one({"symbol": "BTC_USDT"})
        assert funding["rate"] == 0.000125 and funding["interval_hours"] == 8.0
        assert funding["next_funding_time"] is not None
        async def closed_candle():
            return await mongo_db[schema.OHLCV].find_one({"market": "spot", "closed": True})
        candle = await wait_for(closed_candle, timeout_s=5, what="closed spot candle")
        assert candle["volume"] == 0.05 and candle["quote_volume"] == 2500.5
        assert feed.stats.malformed == 0 and feed.stats.resyncs == 0
        assert feed.stats.errors == {}


async def test_gap_full_and_crossed_resync_one_book(mongo_db, fake):
    async with running_feed(GateioFeed, mongo_db, settings_for(fake), "gateio") as feed:
        keys = [("spot", "BTC_USDT"), ("spot", "BTC_USDC"), ("perp", "BTC_USDT")]

        async def all_synced():
            return all(book_matches_server(feed, fake, *k) for k in keys)
        await wait_for(all_synced, timeout_s=10, what="books synced")
        before = dict(fake.snapshot_requests)

        # U/u gap on one spot book -> that book alone fetches a new REST snapshot
        fake.gap_next.add(("spot", "BTC_USDT"))
        injected = time.monotonic()

        async def refetched():
            return fake.snapshot_requests[("spot", "BTC_USDT")] > before[("spot", "BTC_USDT")] \
                and book_matches_server(feed, fake, "spot", "BTC_USDT")
        await wait_for(refetched, timeout_s=5, interval_s=0.01, what="resync after gap")
        report("gateio_sequence_gap", expected="that book alone fetches a REST snapshot; no "
               "reconnect; other symbols unaffected", recovery_s=time.monotonic() - injected,
               other_books_resynced=sum(feed.states[k].resyncs for k in keys[1:]),
               reconnects=fake.connects["spot"] - 1)
        assert feed.states[("spot", "BTC_USDT")].resyncs == 1
        assert fake.snapshot_requests[("spot", "BTC_USDC")] == before[("spot", "BTC_USDC")]
        assert fake.connects["spot"] == 1

        # futures gap as well
        fake.gap_next.add(("perp", "BTC_USDT"))

        async def perp_refetched():
            return fake.snapshot_requests[("perp", "BTC_USDT")] > before[("perp", "BTC_USDT")] \
                and book_matches_server(feed, fake, "perp", "BTC_USDT")
        await wait_for(perp_refetched, timeout_s=5, what="futures resync after gap")

        # full:true replaces the whole book without a REST snapshot
        requests = dict(fake.snapshot_requests)
        fake.full_next.add(("spot", "BTC_USDC"))

        async def replaced():
            return feed.states[("spot", "BTC_USDC")].full_resets == 1 and \
                book_matches_server(feed, fake, "spot", "BTC_USDC")
        await wait_for(replaced, timeout_s=5, what="full:true reset")
        best_bid = feed.books[("spot", "BTC_USDC")].best_bid()[0]
        assert best_bid > 50010.0 + 900       # only the new book's levels are left
        assert fake.snapshot_requests == requests
        assert feed.states[("spot", "BTC_USDC")].resyncs == 0

        # a crossed book is not trusted: resync from REST
        fake.crossed_next.add(("perp", "BTC_USDT"))
        resyncs = feed.states[("perp", "BTC_USDT")].resyncs

        async def uncrossed():
            return feed.states[("perp", "BTC_USDT")].resyncs == resyncs + 1 and \
                book_matches_server(feed, fake, "perp", "BTC_USDT")
        await wait_for(uncrossed, timeout_s=5, what="resync after crossed book")
        assert not feed.books[("perp", "BTC_USDT")].crossed()
        assert fake.connects == {"spot": 1, "perp": 1}


async def test_unknown_symbol_error_isolated(mongo_db, fake):
    settings = settings_for(fake, spot_symbols=["BTC_USDT", "NOPE_USDT"])
    async with running_feed(GateioFeed, mongo_db, settings, "gateio") as feed:
        async def data():
            return book_matches_server(feed, fake, "spot", "BTC_USDT") and \
                await mongo_db[schema.TRADES].count_documents({"symbol": "BTC_USDT",
                                                               "market": "spot"})
        await wait_for(data, timeout_s=10, what="data for the valid symbol")
        assert "NOPE_USDT" in feed.stats.unavailable_symbols
        assert sum(feed.stats.errors.values()) >= 1
        assert fake.connects["spot"] == 1


async def test_contract_size_default_when_rest_unavailable(mongo_db, fake):
    fake.contracts_available = False
    settings = settings_for(fake, spot_symbols=[])
    async with running_feed(GateioFeed, mongo_db, settings, "gateio") as feed:
        async def trades():
            return await mongo_db[schema.TRADES].find_one({"market": "perp"})
        trade = await wait_for(trades, timeout_s=10, what="perp trades")
        assert feed.multipliers == {"BTC_USDT": 0.0001}
        assert trade["size"] in (pytest.approx(0.0025), pytest.approx(0.004))


async def test_silent_connection_is_reconnected_by_idle_watchdog(mongo_db, fake):
    fake.silent = True
    settings = settings_for(fake, idle_timeout_s=0.5, perp_symbols=[])

    def configure(feed):
        feed.ping_interval_s = 0.1   # spot.pong keeps arriving but is control traffic
    async with running_feed(GateioFeed, mongo_db, settings, "gateio", configure) as feed:
        async def reconnected():
            return fake.connects["spot"] >= 2
        await wait_for(reconnected, timeout_s=8, what="reconnect after silence")
        assert feed.stats.reconnects >= 1
        assert fake.pings["spot"] >= 2
        fake.silent = False

        async def data():
            return book_matches_server(feed, fake, "spot", "BTC_USDT")
        await wait_for(data, timeout_s=8, what="book synced after the server talks again")


async def test_upgrade_notice_reconnects_and_resyncs(mongo_db, fake):
    settings = settings_for(fake, perp_symbols=[], spot_symbols=["BTC_USDT"])
    async with running_feed(GateioFeed, mongo_db, settings, "gateio") as feed:
        async def ready():
            return book_matches_server(feed, fake, "spot", "BTC_USDT")
        await wait_for(ready, timeout_s=10, what="book synced")
        requests = fake.snapshot_requests[("spot", "BTC_USDT")]
        await fake.push_upgrade("spot")

        async def resynced():
            return fake.connects["spot"] == 2 and \
                fake.snapshot_requests[("spot", "BTC_USDT")] > requests and \
                book_matches_server(feed, fake, "spot", "BTC_USDT")
        await wait_for(resynced, timeout_s=8, what="reconnect + resync after upgrade notice")
