"""KrakenFeed end to end against the fake Kraken (tests/support/fakes/kraken.py) with a real Writer, and
through the API."""
from __future__ import annotations

import asyncio
import dataclasses
import time
from datetime import datetime, timedelta, timezone

import aiohttp
import orjson
import pytest

from collector.exchanges.kraken import endpoints as ep
from collector.exchanges.kraken.feed import KrakenFeed
from collector.connection import Backoff
from collector.gaps import Gap
from collector.kit.spec import IDLE_S as STREAM_IDLE_S
from collector.rest import RateLimited, RestError
from common import schema
from common.schema import Ticker
from common.indexes import apply_indexes
from common.settings import KrakenSettings, Settings
from tests.support.fakes.kraken import FUT_FUNDING_ABS, FUT_OPEN_INTEREST, INSTRUMENTS, FakeKraken
from tests.support.faultlog import report
from tests.support.feed_helpers import offline_context
from tests.support.feedutil import (
    PERP_TYPES, SPOT_TYPES, api_client, collection_counts, running_feed, wait_for_latest,
)
from tests.support.helpers import wait_for


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
               spot_rest_url=fake.rest_url, perp_rest_url=fake.perp_rest_url, book_depth=100)
    cfg.update(kraken)
    return Settings(kraken=KrakenSettings(**cfg), exchanges=["kraken"],
                    book_snapshot_interval_s=0.1, liquidity_interval_s=0.2, poll_interval_s=1.0)


def fast_reconnects(feed: KrakenFeed) -> None:
    # Production keeps >= 8 s between connects (Cloudflare ban threshold); tests reconnect quickly.
    assert feed.throttle.min_interval_s >= 8
    feed.throttle.min_interval_s = 0.05


async def _value(value):
    return value


def with_connections(feed: KrakenFeed, change) -> None:
    """Apply ``change`` to every connection the feed builds."""
    make = feed.new_connection

    def new_connection(*args, **kwargs):
        conn = make(*args, **kwargs)
        change(conn)
        return conn
    feed.new_connection = new_connection


def _book_requests(fake: FakeKraken, symbol: str) -> list[str]:
    return [r["method"] for r in fake.requests
            if r.get("params", {}).get("channel") == "book" and symbol in r["params"]["symbol"]]


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
        assert feed.stats.gaps == 0 and feed.stats.resyncs == 0

        fake.lose_next.add("BTC/USD")
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
        # unsubscribe strictly before the new subscribe (one coroutine sends both, in order)
        assert _book_requests(fake, "BTC/USD") == ["subscribe", "unsubscribe", "subscribe"]
        assert fake.book_subscribes["ETH/USD"] == 1          # the other symbol is untouched
        assert fake.spot_connects == 1                       # no reconnect
        # the ledger has the checksum gap, closed by the fresh snapshot
        gap = next(g for g in feed.gaps.recent if g.stream == "book")
        assert (gap.market, gap.symbol, gap.cause) == ("spot", "BTC/USD", "checksum")
        assert gap.end is not None and not gap.backfilled
        assert feed.stats.gaps == 1 and feed.stats.resyncs == 1
        assert feed.book_states()["spot:BTC/USD"]["state"] == "live"
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
        gap = [g for g in feed.gaps.recent if g.stream == "book"][-1]
        assert (gap.market, gap.symbol, gap.cause) == ("perp", "PF_XBTUSD", "sequence_gap")
        assert gap.end is not None
        assert feed.stats.gaps == 2 and feed.stats.resyncs == 2

        async def ledger_docs():
            docs = await mongo_db[schema.GAPS].find({"stream": "book"}).to_list(10)
            return docs if len(docs) == 2 and all(d["end"] for d in docs) else None
        docs = await wait_for(ledger_docs, timeout_s=5, what="book gaps stored, closed")
        assert {(d["market"], d["cause"]) for d in docs} == {("spot", "checksum"),
                                                              ("perp", "sequence_gap")}


async def test_futures_resync_has_a_cool_down(mongo_db, fake):
    """Repeated seq gaps on one product resubscribe at most once per cool-down."""
    settings = settings_for(fake, spot_symbols=[])

    def configure(feed):
        fast_reconnects(feed)
        feed.resync.scheduler.cooldown_s = 1.0
    async with running_feed(KrakenFeed, mongo_db, settings, "kraken", configure) as feed:
        async def synced():
            book = feed.books.get(("perp", "PF_XBTUSD"))
            return book is not None and book.synced
        await wait_for(synced, timeout_s=10, what="futures book")
        fake.fut_gap_next = True
        await wait_for(lambda: _value(fake.fut_book_subscribes["PF_XBTUSD"] == 2),
                       timeout_s=5, what="first resubscribe")
        await wait_for(synced, timeout_s=5, what="resynced")
        first = asyncio.get_running_loop().time()
        fake.fut_gap_next = True        # fails again at once: waits out the cool-down
        await wait_for(lambda: _value(fake.fut_book_subscribes["PF_XBTUSD"] == 3),
                       timeout_s=5, what="second resubscribe")
        assert asyncio.get_running_loop().time() - first >= 0.8
        assert feed.resync.scheduler.requests == 2


async def test_unknown_symbol_isolated_and_error_logged_once(mongo_db, fake):
    settings = settings_for(fake, spot_symbols=["BTC/USD", "DOGE/USD"],
                            perp_symbols=["PF_XBTUSD", "PF_NOPEUSD"])
    async with running_feed(KrakenFeed, mongo_db, settings, "kraken", fast_reconnects) as feed:
        async def data():
            return await mongo_db[schema.TRADES].count_documents({"symbol": "BTC/USD"}) and \
                await mongo_db[schema.MARKET_DATA].count_documents({"symbol": "PF_XBTUSD"})
        await wait_for(data, timeout_s=10, what="data for the valid symbols")
        assert "spot:DOGE/USD" in feed.stats.unavailable_symbols
        assert "perp:PF_NOPEUSD" in feed.stats.unavailable_symbols
        assert any("not supported" in e for e in feed.stats.errors)
        assert sum(feed.stats.errors.values()) >= 2


@pytest.mark.parametrize("market", ["spot", "perp"])
async def test_silent_connection_is_reconnected_by_idle_watchdog(mongo_db, fake, market):
    fake.silent = True
    symbols = dict(perp_symbols=[]) if market == "spot" else dict(spot_symbols=[])
    settings = settings_for(fake, idle_timeout_s=0.5, **symbols)

    def quick(conn) -> None:
        # Pongs keep arriving but are control traffic. Every idle cut backs off further (no
        # data, so the backoff never resets): cap it, or the reconnect after the server talks
        # again may be due only after the test's wait.
        conn.heartbeat = dataclasses.replace(conn.heartbeat, app_ping_interval_s=0.1)
        conn.backoff = Backoff(initial_s=0.05, max_s=0.5)

    def configure(feed):
        fast_reconnects(feed)
        with_connections(feed, quick)
    async with running_feed(KrakenFeed, mongo_db, settings, "kraken", configure) as feed:
        async def reconnected():
            return (fake.spot_connects if market == "spot" else fake.perp_connects) >= 2
        await wait_for(reconnected, timeout_s=8, what="reconnect after silence")
        assert feed.stats.reconnects >= 1
        if market == "spot":
            assert fake.pings >= 2
        fake.silent = False

        async def data():
            # Any stream: requests the silent server swallowed (a trade subscribe sent just
            # before it talks again) are not answered, so trades alone may never come.
            query = {"exchange": "kraken", "market": market}
            return sum([await mongo_db[c].count_documents(query)
                        for c in (schema.TRADES, schema.ORDER_BOOK, schema.MARKET_DATA)])
        await wait_for(data, timeout_s=8, what="data after the server talks again")


async def test_heartbeats_neither_feed_the_watchdog_nor_reset_the_backoff(mongo_db, fake):
    """A connection that only gets heartbeats is dead for the watchdog, and its reconnects back
    off further each time (a reset on heartbeats would reconnect at the first step forever)."""
    fake.quiet = True
    settings = settings_for(fake, idle_timeout_s=0.4, perp_symbols=[])

    def quick_backoff(conn):
        conn.healthy_after_s = 0.1
        conn.backoff.initial_s, conn.backoff.max_s = 0.02, 0.3

    def configure(feed):
        fast_reconnects(feed)
        with_connections(feed, quick_backoff)
    async with running_feed(KrakenFeed, mongo_db, settings, "kraken", configure) as feed:
        await wait_for(lambda: _value(fake.spot_connects >= 4), timeout_s=10,
                       what="reconnects while only heartbeats arrive")
        assert feed.connections[0].backoff.attempt >= 3
        fake.quiet = False
        await wait_for(lambda: _value(feed.connections[0].backoff.attempt == 0), timeout_s=5,
                       what="backoff reset once data flows")


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


async def _ids(db, market: str, symbol: str) -> set[str]:
    return {d["trade_id"] async for d in db[schema.TRADES].find(
        {"exchange": "kraken", "market": market, "symbol": symbol}, {"trade_id": 1})}


async def test_drop_mid_stream_backfills_missed_trades_and_candles(mongo_db, fake, monkeypatch):
    # Small pages so paging (forward with ``last`` on spot, backwards by lastTime on futures)
    # is exercised by a short outage.
    monkeypatch.setattr(ep, "SPOT_TRADES_PAGE", 20)
    monkeypatch.setattr(ep, "FUT_HISTORY_PAGE", 20)
    monkeypatch.setattr(ep, "FUT_HISTORY_MAX_PAGES", 50)
    fake.history_page = 20
    # The production budget (about 1 call/s) would make this test slow, not different.
    monkeypatch.setattr(ep, "SPOT_REST_CALLS", 50.0)
    monkeypatch.setattr(ep, "FUT_REST_CALLS", 50.0)
    fake.rest_limit = None      # ... and the fake's limit, which is Kraken's, would refuse it
    settings = settings_for(fake)
    await apply_indexes(mongo_db, settings.retention)
    async with running_feed(KrakenFeed, mongo_db, settings, "kraken", fast_reconnects) as feed:
        async def flowing():
            return all([await _ids(mongo_db, "spot", "BTC/USD"),
                        await _ids(mongo_db, "spot", "ETH/USD"),
                        await _ids(mongo_db, "perp", "PF_XBTUSD")])
        await wait_for(flowing, timeout_s=10, what="trades stored on both connections")
        await fake.drop_connections()
        cut = {s: len(fake.spot_trade_ids(s)) for s in INSTRUMENTS}
        cut_perp = len(fake.fut_trade_ids("PF_XBTUSD"))

        async def backfilled():
            gaps = [g for g in feed.gaps.recent if g.cause == "disconnect"]
            return gaps if len(gaps) == 2 and all(g.backfilled for g in gaps) else None
        gaps = await wait_for(backfilled, timeout_s=15, what="both disconnect gaps backfilled")
        assert {g.stream for g in gaps} == {"kraken:spot", "kraken:perp"}
        assert feed.stats.backfilled_trades > 0 and feed.stats.backfills == 2

        async def nothing_missing():
            missing = {}
            for symbol in INSTRUMENTS:
                stored = await _ids(mongo_db, "spot", symbol)
                first = min(int(i) for i in stored)
                sent = fake.spot_trade_ids(symbol)[:cut[symbol] + 10]
                missing[symbol] = [i for i in sent if int(i) >= first and i not in stored]
            stored = await _ids(mongo_db, "perp", "PF_XBTUSD")
            sent = fake.fut_trade_ids("PF_XBTUSD")[:cut_perp + 10]
            first = min(int(i[2:]) for i in stored)
            missing["PF_XBTUSD"] = [i for i in sent if int(i[2:]) >= first and i not in stored]
            return missing if not any(missing.values()) else None
        await wait_for(nothing_missing, timeout_s=10, what="every trade missed in MongoDB")
        # the trades of the outage were fetched, and over several pages
        paths = [path for path, _ in fake.rest_requests]
        assert paths.count("/0/public/Trades") >= 2 * 2
        assert paths.count("/derivatives/api/v3/history") >= 2
        assert "/derivatives/api/v3/tickers" in paths

        # closed candles of the outage: stored closed, with the server's values
        for symbol in INSTRUMENTS:
            async def candles_stored(symbol=symbol):
                for candle in fake.market.candles[symbol][:-1]:
                    doc = await mongo_db[schema.OHLCV].find_one(
                        {"exchange": "kraken", "symbol": symbol, "ts": candle.begin})
                    if doc is None or not doc["closed"] or doc["trades"] != candle.trades:
                        return None
                return True
            await wait_for(candles_stored, timeout_s=10, what=f"{symbol} closed candles")
        assert ("/0/public/OHLC", {"pair": "XBTUSD", "interval": "1"}) in [
            (path, {k: v for k, v in q.items() if k != "since"}) for path, q in fake.rest_requests]
        # funding / open interest re-polled over REST (REST markPrice differs from the stream's)
        funding = await wait_for(lambda: mongo_db[schema.FUNDING_RATES].find_one(
            {"symbol": "PF_XBTUSD", "mark_price": 50000.2}), timeout_s=5, what="REST funding")
        assert funding["rate"] == pytest.approx(FUT_FUNDING_ABS / 50000.0)
        assert await mongo_db[schema.OPEN_INTEREST].find_one(
            {"symbol": "PF_XBTUSD", "open_interest": FUT_OPEN_INTEREST})
        docs = await wait_for(lambda: mongo_db[schema.GAPS].find(
            {"exchange": "kraken", "cause": "disconnect", "backfilled": True}).to_list(10),
            timeout_s=5, what="ledger: gaps backfilled")
        assert len(docs) == 2


async def test_api_realtime_serves_every_type_under_every_spelling(mongo_uri, mongo_db, fake):
    settings = settings_for(fake)
    await apply_indexes(mongo_db, settings.retention)
    async with running_feed(KrakenFeed, mongo_db, settings, "kraken", fast_reconnects):
        await wait_for_latest(mongo_db, "kraken", {("spot", "BTC/USD", t) for t in SPOT_TYPES} |
                              {("perp", "PF_XBTUSD", t) for t in PERP_TYPES - {schema.OHLCV}})
        async with api_client(mongo_uri, mongo_db, "kraken") as client:
            for spelling in ("XBT/USD", "XXBTZUSD", "BTC/USD", "btc-usd"):
                resp = await client.get(f"/realtime/kraken/{spelling}")
                assert resp.status == 200, spelling
                body = await resp.json()
                spot = body["data"]["BTC/USD"]["spot"]
                assert set(spot) >= SPOT_TYPES, spelling
                ticker = spot[schema.MARKET_DATA]
                assert (ticker["bid_size"], ticker["ask_size"], ticker["volume_24h"]) == \
                    (1.5, 0.25, 1234.5)
                assert ticker["ask"] > ticker["bid"] > 49000
                trade = spot[schema.TRADES]
                assert abs(trade["price"] - INSTRUMENTS["BTC/USD"][2]) <= 2.0
                assert trade["side"] in ("buy", "sell") and not trade["stale"]
                book = spot[schema.ORDER_BOOK]
                assert book["bids"][0][0] < book["asks"][0][0]
                assert spot[schema.OHLCV]["interval"] == "1m"
                assert spot[schema.VOLUME_LIQUIDITY]["exchange"] == "kraken"
            body = await (await client.get("/realtime/kraken/PF_XBTUSD")).json()
            perp = body["data"]["PF_XBTUSD"]["perp"]
            assert set(perp) >= PERP_TYPES - {schema.OHLCV}
            assert perp[schema.FUNDING_RATES]["rate"] == pytest.approx(1.0e-05)
            assert perp[schema.OPEN_INTEREST]["open_interest"] == FUT_OPEN_INTEREST
            assert perp[schema.MARKET_DATA]["mark_price"] == 50000.1
            assert "BTC/USD" not in body["data"]     # the futures symbol is its own instrument


# ---- offline: wiring, limits, partitions ----------------------------------------------------
def offline_feed(partition: str = "", **kraken) -> KrakenFeed:
    cfg = dict(spot_symbols=["BTC/USD"], perp_symbols=["PF_XBTUSD"],
               spot_ws_url="ws://spot", perp_ws_url="ws://perp")
    cfg.update(kraken)
    settings = Settings(kraken=KrakenSettings(**cfg), partition=partition)
    return KrakenFeed(settings.kraken, offline_context(settings))


def test_ping_throttle_and_idle_thresholds():
    feed = offline_feed()
    spot, perp = feed.build_connections()
    # application ping well inside the server's ~1 minute inactivity close
    assert spot.heartbeat.app_ping() == '{"method":"ping"}'
    assert spot.heartbeat.app_ping_interval_s == 20.0
    # spot and futures share one throttle: <= 75 connection attempts per 10 minutes
    assert spot.throttle is perp.throttle and 600 / spot.throttle.min_interval_s <= 75
    assert offline_feed("1/3").throttle.min_interval_s == 3 * ep.CONNECT_INTERVAL_S
    # both connections carry a book: book threshold
    assert spot.idle_timeout_s == perp.idle_timeout_s == STREAM_IDLE_S["book"]


def _subscriptions(feed: KrakenFeed) -> list[tuple[str, str, str]]:
    """(market, symbol, channel) of every subscription the feed's connections carry."""
    return [(sub.market, sub.symbol, sub.channel.name) for conn in feed.build_connections()
            for sub in conn.meta.subscriptions]


def test_a_connection_without_book_uses_the_quiet_threshold():
    """The ohlc channel updates on trades only: a connection with neither book nor ticker (the
    bbo ticker moves with the book) is allowed the trades threshold instead of being
    reconnected every 10 s."""
    for i in range(200):
        feed = offline_feed("0/4", spot_symbols=[f"SYM{i}/USD"], perp_symbols=[])
        channels = {ch for _, _, ch in _subscriptions(feed)}
        if channels and not channels & {"book", "ticker"}:
            break
    else:
        pytest.fail("no partition without a book")
    [spot] = feed.build_connections()
    assert spot.idle_timeout_s == STREAM_IDLE_S["trades"]


def _subscribed(partition: str) -> list[tuple[str, str, str]]:
    symbols = [f"SYM{i}/USD" for i in range(30)] + ["BTC/USD"]
    feed = offline_feed(partition, spot_symbols=symbols,
                        perp_symbols=[f"PF_SYM{i}USD" for i in range(20)] + ["PF_XBTUSD"])
    return _subscriptions(feed)


def test_partitions_cover_every_subscription_once():
    everything = _subscribed("")
    parts = [_subscribed(f"{i}/2") for i in range(2)]
    assert set(parts[0]) | set(parts[1]) == set(everything)
    assert not set(parts[0]) & set(parts[1])
    assert all(parts)


def test_on_open_sends_exactly_the_partitions_subscriptions():
    for part in ("0/2", "1/2"):
        feed = offline_feed(part, spot_symbols=[f"SYM{i}/USD" for i in range(12)],
                            perp_symbols=[f"PF_SYM{i}USD" for i in range(12)])
        feed.precision = {f"SYM{i}/USD": (1, 8) for i in range(12)}
        want = set(_subscriptions(feed))
        sent = set()
        for conn in feed.connections:
            meta = conn.meta
            for text in feed.subscribe_requests(meta, list(meta.subscriptions)):
                msg = orjson.loads(text)
                if meta.market == "spot":
                    sent |= {("spot", s, msg["params"]["channel"])
                             for s in msg["params"].get("symbol", [])}
                else:
                    sent |= {("perp", s, msg["feed"]) for s in msg.get("product_ids", [])}
        assert sent == want


# ---- conformance (issue 11, docs/exchanges/kraken.md "Findings") ------------------------------
async def _book_synced(feed: KrakenFeed, market: str, symbol: str) -> bool:
    book = feed.books.get((market, symbol))
    return book is not None and book.synced


async def test_failed_unsubscribe_reply_keeps_the_symbol(mongo_db, fake):
    """F1: a resync whose unsubscribe finds nothing (the server had dropped the book) gets
    Kraken's ``{"error":"Subscription Not Found","method":"subscribe",...}``: the reply is
    judged by its req_id (an unsubscribe), the book resyncs and BTC/USD stays available, also
    across a reconnect."""
    settings = settings_for(fake, perp_symbols=[])
    async with running_feed(KrakenFeed, mongo_db, settings, "kraken", fast_reconnects) as feed:
        await wait_for(lambda: _book_synced(feed, "spot", "BTC/USD"), timeout_s=10, what="book")
        fake.forget_book_after_corrupt.add("BTC/USD")
        fake.corrupt_next.add("BTC/USD")
        await wait_for(lambda: _value(fake.book_subscribes["BTC/USD"] == 2), timeout_s=5,
                       what="resubscribe")
        await wait_for(lambda: _book_synced(feed, "spot", "BTC/USD"), timeout_s=5, what="resync")
        assert fake.unsubscribe_failures == {"BTC/USD": 1}
        assert fake.errors_sent[-1]["error"] == "Subscription Not Found"
        assert feed.stats.unavailable_symbols == {}
        assert feed.stats.errors == {}
        await fake.drop_connections()
        await wait_for(lambda: _value(fake.book_subscribes["BTC/USD"] == 3), timeout_s=5,
                       what="BTC/USD subscribed again after the reconnect")


async def test_futures_error_without_product_ids_marks_the_requested_product(mongo_db, fake):
    """F3: the real ``{"event":"error","message":"Invalid product id"}`` names no product. With
    the instrument list unreachable, the error is attributed to the request it answers: only
    PF_NOPEUSD is marked, and the reconnect does not subscribe it again."""
    fake.instruments_down = True
    settings = settings_for(fake, spot_symbols=[], perp_symbols=["PF_NOPEUSD", "PF_XBTUSD"])
    async with running_feed(KrakenFeed, mongo_db, settings, "kraken", fast_reconnects) as feed:
        await wait_for(lambda: _value(bool(feed.stats.unavailable_symbols)), timeout_s=10,
                       what="unknown product marked")
        assert fake.errors_sent == [{"event": "error", "message": "Invalid product id"}] * 3
        assert set(feed.stats.unavailable_symbols) == {"perp:PF_NOPEUSD"}
        await wait_for(lambda: mongo_db[schema.MARKET_DATA].find_one({"symbol": "PF_XBTUSD"}),
                       timeout_s=5, what="the valid product's data")
        fake.requests.clear()
        await fake.drop_connections()
        await wait_for(lambda: _value(fake.perp_connects == 2 and len(fake.requests) >= 4),
                       timeout_s=5, what="resubscribed")
        assert {p for r in fake.requests for p in r.get("product_ids", [])} == {"PF_XBTUSD"}


async def test_ticker_follows_top_of_book_between_trades(mongo_db, fake):
    """F4: subscribed with ``event_trigger: bbo``, the ticker's bid/ask move with the book while
    no trade happens (the default trigger sends nothing then)."""
    fake.trades_paused = True
    settings = settings_for(fake, spot_symbols=["BTC/USD"], perp_symbols=[])
    async with running_feed(KrakenFeed, mongo_db, settings, "kraken", fast_reconnects) as feed:
        def at_top_of_book():
            ticker = feed.writer.newest(Ticker, "kraken", "spot", "BTC/USD")
            return _value(len(set(fake.tickers_sent)) >= 3 and ticker is not None and
                          ("BTC/USD", ticker.bid, ticker.ask) == fake.tickers_sent[-1])
        await wait_for(at_top_of_book, timeout_s=5, what="tickers following the top of book")
        assert await mongo_db[schema.TRADES].count_documents({}) == 0
        [request] = [r for r in fake.requests if r.get("params", {}).get("channel") == "ticker"]
        assert request["params"]["event_trigger"] == "bbo"


async def test_ohlc_backfill_beyond_the_720_row_window_is_partial(mongo_db, fake):
    """F5: ``/0/public/OHLC`` returns only the newest rows (720; 3 here): a gap that starts
    earlier is reported partial (False), one inside the window complete."""
    fake.ohlc_max_rows = 3
    settings = settings_for(fake, spot_symbols=["BTC/USD"], perp_symbols=[])
    async with running_feed(KrakenFeed, mongo_db, settings, "kraken", fast_reconnects) as feed:
        await wait_for(lambda: _value(len(fake.market.candles.get("BTC/USD", [])) >= 6),
                       timeout_s=10, what="six candles on the server")
        candles = fake.market.candles["BTC/USD"]
        assert await feed.backfill_candles("spot", "BTC/USD", candles[0].begin) is False
        recent = fake.market.candles["BTC/USD"][-2].begin
        assert await feed.backfill_candles("spot", "BTC/USD", recent) is True


@pytest.mark.parametrize("error", ["EAPI:Rate limit exceeded", "EGeneral:Too many requests",
                                   (429, 7)])
async def test_rest_rate_limit_answers_pause_rest(fake, error):
    """F6: Kraken's HTTP-200 body rate-limit errors back off like a 429 (which honours
    Retry-After): RateLimited is raised and every REST call of the budget waits."""
    settings = settings_for(fake)
    async with aiohttp.ClientSession() as session:
        feed = KrakenFeed(settings.kraken,
                          dataclasses.replace(offline_context(settings), session=session))
        fake.rest_errors_next = [error]
        before = time.monotonic()
        with pytest.raises(RateLimited):
            await feed.spot_rest.get(ep.SPOT_OHLC_REST, {"pair": "XBTUSD", "interval": 1})
        pause = feed.spot_rest.budget.paused_until - before
        assert pause == pytest.approx(7 if isinstance(error, tuple) else 30, abs=0.5)


async def test_fake_rest_limit_is_kept_by_the_feed_budget(fake):
    """The fake refuses bursts beyond a public limit of about 1 call/s; the feed's own budget
    (3 calls per 3 s) keeps under it."""
    settings = settings_for(fake)
    fake.rest_limit = (4.0, 1.0)
    async with aiohttp.ClientSession() as session:
        feed = KrakenFeed(settings.kraken,
                          dataclasses.replace(offline_context(settings), session=session))
        feed.spot_rest.budget.capacity = feed.spot_rest.budget.tokens = 3
        for _ in range(5):
            await feed.spot_rest.get(ep.SPOT_OHLC_REST, {"pair": "XBTUSD", "interval": 1})
        assert fake.rate_errors == 0


async def test_spot_pings_keep_the_connection_inside_the_idle_cut(mongo_db, fake):
    """The fake closes a spot socket that sends nothing for ``idle_cut_s`` (Kraken: ~1 minute);
    the feed's application ping (20 s in production) keeps it open."""
    fake.idle_cut_s = 0.6
    settings = settings_for(fake, perp_symbols=[])

    def configure(feed):
        fast_reconnects(feed)
        with_connections(feed, lambda conn: setattr(conn, "heartbeat", dataclasses.replace(
            conn.heartbeat, app_ping_interval_s=0.15)))
    async with running_feed(KrakenFeed, mongo_db, settings, "kraken", configure):
        await wait_for(lambda: _value(fake.pings >= 10), timeout_s=5, what="pings")
        assert fake.idle_cuts == 0 and fake.spot_connects == 1 and fake.rate_errors == 0


# ---- perpetuals over the Unified WebSocket (issue 12) ------------------------------------------
async def test_unified_transport_serves_every_perp_type_and_trade_candles(mongo_db, fake):
    """``perp_transport: unified``: book (v2 checksum), trades, ticker with funding and open
    interest from wss://uws.kraken.com/v2/public (subscriptions say asset_class derivatives);
    nothing goes to the v1 endpoint; 1-minute candles are built from the trades (source
    "trades") and close when their minute has ended."""
    settings = settings_for(fake, spot_symbols=[], perp_transport="unified",
                            perp_unified_ws_url=fake.unified_url)
    async with running_feed(KrakenFeed, mongo_db, settings, "kraken", fast_reconnects) as feed:
        await wait_for(lambda: _book_synced(feed, "perp", "PF_XBTUSD"), timeout_s=10,
                       what="unified book synced")
        await wait_for_latest(mongo_db, "kraken", {("perp", "PF_XBTUSD", t) for t in (
            schema.MARKET_DATA, schema.TRADES, schema.FUNDING_RATES, schema.OPEN_INTEREST,
            schema.ORDER_BOOK)})
        assert fake.perp_connects == 0 and fake.unified_connects == 1
        requests = [r for r in fake.requests if r.get("method") == "subscribe"]
        assert {r["params"]["channel"] for r in requests} == {"ticker", "trade", "book"}
        assert all(r["params"]["asset_class"] == "derivatives" for r in requests)
        funding = await mongo_db[schema.FUNDING_RATES].find_one({"symbol": "PF_XBTUSD"})
        assert (funding["rate"], funding["predicted_rate"], funding["pair"]) == (
            1e-05, 9e-06, "BTC/USD")
        oi = await mongo_db[schema.OPEN_INTEREST].find_one({"symbol": "PF_XBTUSD"})
        assert oi["open_interest"] == FUT_OPEN_INTEREST
        trade = await mongo_db[schema.TRADES].find_one({"symbol": "PF_XBTUSD"})
        assert trade["market"] == "perp" and trade["side"] in ("buy", "sell")
        assert feed.checksum_failures == 0 and feed.stats.malformed == 0
        # a checksum failure resubscribes that book over the unified socket
        fake.lose_next.add("PF_XBTUSD")
        await wait_for(lambda: _value(feed.checksum_failures == 1), timeout_s=5, what="mismatch")
        await wait_for(lambda: _book_synced(feed, "perp", "PF_XBTUSD"), timeout_s=5,
                       what="resynced")
        assert [r["method"] for r in fake.requests if r.get("params", {}).get("channel") ==
                "book"] == ["subscribe", "unsubscribe", "subscribe"]
        # candles from trades: every trade counted once, closed after the minute
        feed.trade_candles.grace_ms = 0
        candle = await wait_for(lambda: mongo_db[schema.OHLCV].find_one(
            {"symbol": "PF_XBTUSD", "market": "perp", "source": "trades"}), timeout_s=5,
            what="a trade-built candle")
        assert candle["interval"] == "1m"
        fake.trades_paused = True       # the minute's trades are now final

        async def candle_of_its_trades():
            doc = await mongo_db[schema.OHLCV].find_one(
                {"symbol": "PF_XBTUSD", "source": "trades", "ts": candle["ts"]})
            trades = await mongo_db[schema.TRADES].find(
                {"symbol": "PF_XBTUSD", "ts": {"$gte": candle["ts"],
                                               "$lt": candle["ts"] + timedelta(minutes=1)}}
            ).sort("ts", 1).to_list(None)
            return (doc, trades) if trades and doc["trades"] == len(trades) else None
        doc, trades = await wait_for(candle_of_its_trades, timeout_s=5,
                                     what="the candle of the minute's stored trades")
        prices = [t["price"] for t in trades]
        assert (doc["open"], doc["close"], doc["high"], doc["low"]) == (
            prices[0], prices[-1], max(prices), min(prices))
        assert doc["volume"] == pytest.approx(sum(t["size"] for t in trades))


def test_default_perp_transport_is_v1():
    feed = offline_feed()
    assert [c.url for c in feed.build_connections()] == ["ws://spot", "ws://perp"]
    feed = offline_feed(perp_transport="unified", perp_unified_ws_url="ws://uws/v2/public")
    assert [c.url for c in feed.build_connections()] == ["ws://spot", "ws://uws/v2/public"]


async def test_derivatives_rest_after_its_decommission_degrades_to_no_perp_backfill(
        mongo_db, fake, monkeypatch):
    """Issue 12: Derivatives REST v3 has no documented successor. Before 2027-03-01 a failure
    is an ordinary REST error; from that date the first failure retires it: one error line in
    /health (``errors``), the perpetual backfill is partial, and no further call is made."""
    fake.derivatives_rest_gone = True
    settings = settings_for(fake, spot_symbols=[], perp_symbols=["PF_XBTUSD"])
    gap = Gap("kraken", "*", "perp", "kraken:perp", "disconnect",
              datetime.now(timezone.utc) - timedelta(seconds=30))
    async with aiohttp.ClientSession() as session:
        feed = KrakenFeed(settings.kraken,
                          dataclasses.replace(offline_context(settings), session=session))
        assert await feed.backfill(gap) is False               # still before the date
        assert not feed.perp_rest_retired and ep.FUT_REST_RETIRED not in feed.stats.errors
        monkeypatch.setattr(ep, "FUT_REST_DECOMMISSION",
                            datetime.now(timezone.utc) - timedelta(days=1))
        assert await feed.backfill(gap) is False
        assert feed.perp_rest_retired and feed.stats.errors[ep.FUT_REST_RETIRED] == 1
        calls = len(fake.rest_requests)
        assert await feed.backfill(gap) is False
        with pytest.raises(RestError):
            await feed.repoll_derivatives("PF_XBTUSD")
        assert len(fake.rest_requests) == calls               # retired: nothing sent again
        assert feed.stats.errors[ep.FUT_REST_RETIRED] == 1
