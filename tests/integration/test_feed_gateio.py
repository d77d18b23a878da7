"""GateioFeed end to end against the fake Gate.io (tests/support/fakes/gateio.py) with a real Writer, and
through the API."""
from __future__ import annotations

import json
import time
from dataclasses import replace

import pytest
from websockets.asyncio.client import connect

from collector.exchanges.gateio import endpoints as ep
from collector.exchanges.gateio.feed import GateioFeed
from collector.kit.spec import IDLE_S as STREAM_IDLE_S
from common import schema
from common.indexes import apply_indexes
from common.schema import s_to_dt
from common.settings import GateioSettings, Settings
from tests.support.fakes.gateio import FUNDING_RATE_REST, MULTIPLIER, SPOT, FakeGate
from tests.support.faultlog import report
from tests.support.feed_helpers import offline_context
from tests.support.feedutil import (
    PERP_TYPES, SPOT_TYPES, api_client, collection_counts, running_feed, wait_for_latest,
)
from tests.support.helpers import wait_for


@pytest.fixture
async def fake():
    # Server pings with a short pong deadline: a feed that does not answer is cut.
    server = await FakeGate(ping_interval_s=0.3, ping_timeout_s=0.5).start()
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


async def _value(value):
    return value


def resyncs(feed, market: str, symbol: str) -> int:
    """Times this book lost integrity and resynced (its ledger gaps)."""
    return sum(1 for g in feed.gaps.recent
               if g.stream == "book" and (g.market, g.symbol) == (market, symbol))


def with_ping_interval(feed, seconds: float) -> None:
    """The spec's app-ping interval, shortened for a test."""
    feed.spec = replace(feed.spec, connections=tuple(
        replace(c, heartbeat=replace(c.heartbeat, app_ping_interval_s=seconds))
        for c in feed.spec.connections))


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
        sent = {str(t["id"]): t for t in fake.market.trades[("perp", "BTC_USDT")]}
        assert trade["size"] == pytest.approx(abs(sent[trade["trade_id"]]["size"]) * MULTIPLIER)
        assert trade["side"] == ("buy" if sent[trade["trade_id"]]["size"] > 0 else "sell")
        # open interest: contract_stats only (bucket times), contracts x multiplier
        oi = await mongo_db[schema.OPEN_INTEREST].find_one({"symbol": "BTC_USDT"})
        row = next(r for r in fake.market.stats["BTC_USDT"] if s_to_dt(r["time"]) == oi["ts"])
        assert oi["open_interest"] == pytest.approx(row["open_interest"] * MULTIPLIER)
        assert oi["open_interest_value"] == row["open_interest_usd"]
        docs = await mongo_db[schema.OPEN_INTEREST].find({}).to_list(1000)
        assert all(d["ts"].timestamp() % 60 == 0 for d in docs)  # never the tickers' push times
        funding = await mongo_db[schema.FUNDING_RATES].find_one({"symbol": "BTC_USDT"})
        assert funding["rate"] == 0.000125 and funding["interval_hours"] == 8.0
        assert funding["next_funding_time"] is not None
        async def closed_candle():
            return await mongo_db[schema.OHLCV].find_one({"market": "spot", "closed": True,
                                                          "symbol": "BTC_USDT"})
        candle = await wait_for(closed_candle, timeout_s=5, what="closed spot candle")
        server = next(c for c in fake.market.candles[("spot", "BTC_USDT")]
                      if s_to_dt(c.t) == candle["ts"])
        assert candle["volume"] == pytest.approx(server.base, abs=1e-4)
        assert candle["quote_volume"] == pytest.approx(server.quote, abs=1e-4)
        assert candle["close"] == server.close
        assert feed.stats.malformed == 0 and feed.stats.resyncs == 0 and feed.stats.gaps == 0
        assert feed.stats.errors == {} and fake.subscribe_errors == []


async def test_gap_full_and_crossed_resync_one_book(mongo_db, fake):
    async with running_feed(GateioFeed, mongo_db, settings_for(fake), "gateio") as feed:
        keys = [("spot", "BTC_USDT"), ("spot", "BTC_USDC"), ("perp", "BTC_USDT")]

        async def all_synced():
            return all(book_matches_server(feed, fake, *k) for k in keys)
        await wait_for(all_synced, timeout_s=10, what="books synced")
        before = dict(fake.snapshot_requests)

        def book_gaps():
            return [g for g in feed.gaps.recent if g.stream == "book"]

        # U/u gap on one spot book -> that book alone fetches a new REST snapshot
        fake.gap_next.add(("spot", "BTC_USDT"))
        injected = time.monotonic()

        async def refetched():
            return fake.snapshot_requests[("spot", "BTC_USDT")] > before[("spot", "BTC_USDT")] \
                and book_matches_server(feed, fake, "spot", "BTC_USDT")
        await wait_for(refetched, timeout_s=5, interval_s=0.01, what="resync after gap")
        report("gateio_sequence_gap", expected="that book alone fetches a REST snapshot; no "
               "reconnect; other symbols unaffected", recovery_s=time.monotonic() - injected,
               other_books_resynced=sum(resyncs(feed, *k) for k in keys[1:]),
               reconnects=fake.connects["spot"] - 1)
        assert resyncs(feed, "spot", "BTC_USDT") == 1
        assert fake.snapshot_requests[("spot", "BTC_USDC")] == before[("spot", "BTC_USDC")]
        assert fake.connects["spot"] == 1
        (gap,) = book_gaps()
        assert (gap.market, gap.symbol, gap.cause) == ("spot", "BTC_USDT", "sequence_gap")
        assert gap.end is not None
        assert feed.stats.gaps == 1 and feed.stats.resyncs == 1

        # futures gap as well
        fake.gap_next.add(("perp", "BTC_USDT"))

        async def perp_refetched():
            return fake.snapshot_requests[("perp", "BTC_USDT")] > before[("perp", "BTC_USDT")] \
                and book_matches_server(feed, fake, "perp", "BTC_USDT")
        await wait_for(perp_refetched, timeout_s=5, what="futures resync after gap")
        gap = book_gaps()[-1]
        assert (gap.market, gap.cause, gap.end is not None) == ("perp", "sequence_gap", True)

        # full:true replaces the whole book without a REST snapshot
        requests = dict(fake.snapshot_requests)
        fake.full_next.add(("spot", "BTC_USDC"))

        async def replaced():
            return feed.book_sync.full_resets.get(("spot", "BTC_USDC")) == 1 and \
                book_matches_server(feed, fake, "spot", "BTC_USDC")
        await wait_for(replaced, timeout_s=5, what="full:true reset")
        best_bid = feed.books[("spot", "BTC_USDC")].best_bid()[0]
        assert best_bid > 50010.0 + 900       # only the new book's levels are left
        assert fake.snapshot_requests == requests
        assert resyncs(feed, "spot", "BTC_USDC") == 0
        assert len(book_gaps()) == 2          # a full:true reset is not a gap

        # a crossed book is not trusted: resync from REST
        fake.crossed_next.add(("perp", "BTC_USDT"))
        before = resyncs(feed, "perp", "BTC_USDT")

        async def uncrossed():
            return resyncs(feed, "perp", "BTC_USDT") == before + 1 and \
                book_matches_server(feed, fake, "perp", "BTC_USDT")
        await wait_for(uncrossed, timeout_s=5, what="resync after crossed book")
        assert not feed.books[("perp", "BTC_USDT")].crossed()
        assert fake.connects == {"spot": 1, "perp": 1}
        gap = book_gaps()[-1]
        assert (gap.market, gap.symbol, gap.cause) == ("perp", "BTC_USDT", "crossed")
        assert gap.end is not None
        # counters and ledger agree
        assert feed.stats.gaps == feed.stats.resyncs == 3
        assert sum(resyncs(feed, *k) for k in keys) == 3

        async def stored():
            docs = await mongo_db[schema.GAPS].find({"stream": "book"}).to_list(10)
            return docs if len(docs) == 3 and all(d["end"] for d in docs) else None
        docs = await wait_for(stored, timeout_s=5, what="book gaps stored, closed")
        assert sorted(d["cause"] for d in docs) == ["crossed", "sequence_gap", "sequence_gap"]


async def test_unknown_symbol_error_isolated(mongo_db, fake):
    settings = settings_for(fake, spot_symbols=["BTC_USDT", "NOPE_USDT"])
    async with running_feed(GateioFeed, mongo_db, settings, "gateio") as feed:
        async def data():
            return book_matches_server(feed, fake, "spot", "BTC_USDT") and \
                await mongo_db[schema.TRADES].count_documents({"symbol": "BTC_USDT",
                                                               "market": "spot"})
        await wait_for(data, timeout_s=10, what="data for the valid symbol")
        assert "spot:NOPE_USDT" in feed.stats.unavailable_symbols
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
        sent = {str(t["id"]): t for t in fake.market.trades[("perp", "BTC_USDT")]}
        assert trade["size"] == pytest.approx(abs(sent[trade["trade_id"]]["size"]) * 0.0001)


@pytest.mark.parametrize("market", ["spot", "perp"])
async def test_silent_connection_is_reconnected_by_idle_watchdog(mongo_db, fake, market):
    fake.silent = True
    symbols = dict(perp_symbols=[]) if market == "spot" else dict(spot_symbols=[])
    settings = settings_for(fake, idle_timeout_s=0.5, **symbols)

    def configure(feed):
        with_ping_interval(feed, 0.1)   # spot.pong / futures.pong keep arriving: control
    async with running_feed(GateioFeed, mongo_db, settings, "gateio", configure) as feed:
        async def reconnected():
            return fake.connects[market] >= 2
        await wait_for(reconnected, timeout_s=8, what="reconnect after silence")
        assert feed.stats.reconnects >= 1
        assert fake.pings[market] >= 2
        fake.silent = False

        async def data():
            return book_matches_server(feed, fake, market, "BTC_USDT")
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


async def test_argument_order_is_checked_per_channel(fake):
    """Gate's channels disagree on argument order; the fake rejects the wrong one like Gate
    (error code 2, status fail), and accepts the order the feed sends."""
    cases = {
        "spot": [("spot.candlesticks", ["1m", "BTC_USDT"], ["BTC_USDT", "1m"]),
                 ("spot.order_book_update", ["BTC_USDT", "100ms"], ["100ms", "BTC_USDT"])],
        "perp": [("futures.candlesticks", ["1m", "BTC_USDT"], ["BTC_USDT", "1m"]),
                 ("futures.order_book_update", ["BTC_USDT", "100ms", "100"],
                  ["100ms", "BTC_USDT", "100"]),
                 ("futures.contract_stats", ["BTC_USDT", "1m"], ["1m", "BTC_USDT"])],
    }
    for market, checks in cases.items():
        url = fake.spot_url if market == "spot" else fake.perp_url
        async with connect(url) as ws:
            for channel, right, wrong in checks:
                assert ep.payload(channel, "BTC_USDT") == right
                for payload, ok in ((wrong, False), (right, True)):
                    await ws.send(json.dumps({"time": 0, "channel": channel,
                                              "event": "subscribe", "payload": payload}))
                    while True:
                        ack = json.loads(await ws.recv())
                        if ack.get("event") == "subscribe":
                            break
                    assert (ack["error"] is None) is ok, (channel, payload, ack)
                    if not ok:
                        assert ack["error"]["code"] == 2 and ack["result"]["status"] == "fail"


async def _ids(db, market: str, symbol: str) -> set[str]:
    return {d["trade_id"] async for d in db[schema.TRADES].find(
        {"exchange": "gateio", "market": market, "symbol": symbol}, {"trade_id": 1})}


async def test_drop_mid_stream_backfills_missed_trades_candles_and_derivatives(
        mongo_db, fake, monkeypatch):
    monkeypatch.setattr(ep, "TRADES_PAGE", 25)      # several pages for a short outage
    monkeypatch.setattr(ep, "TRADES_MAX_PAGES", 40)
    settings = settings_for(fake)
    await apply_indexes(mongo_db, settings.retention)
    async with running_feed(GateioFeed, mongo_db, settings, "gateio") as feed:
        markets = [("spot", s) for s in SPOT] + [("perp", "BTC_USDT")]

        async def flowing():
            return all([await _ids(mongo_db, m, s) for m, s in markets]) and \
                "BTC_USDT" in feed._last_oi
        await wait_for(flowing, timeout_s=10, what="trades on both connections, stats")
        await fake.drop_connections()
        cut = {k: len(fake.trade_ids(*k)) for k in markets}

        async def backfilled():
            gaps = [g for g in feed.gaps.recent if g.cause == "disconnect"]
            return gaps if len(gaps) == 2 and all(g.backfilled for g in gaps) else None
        gaps = await wait_for(backfilled, timeout_s=15, what="both disconnect gaps backfilled")
        assert {g.stream for g in gaps} == {"gateio:spot", "gateio:perp"}

        async def nothing_missing():
            missing = {}
            for market, symbol in markets:
                stored = await _ids(mongo_db, market, symbol)
                first = min(int(i) for i in stored)
                sent = fake.trade_ids(market, symbol)[:cut[(market, symbol)] + 10]
                missing[symbol, market] = [i for i in sent if int(i) >= first and i not in stored]
            return missing if not any(missing.values()) else None
        await wait_for(nothing_missing, timeout_s=10, what="every trade missed in MongoDB")
        # insurance-fund (is_internal) futures trades are never stored, streamed or backfilled
        internal = set(fake.trade_ids("perp", "BTC_USDT", internal=True))
        assert internal and not internal & await _ids(mongo_db, "perp", "BTC_USDT")
        pages = [q for path, q in fake.rest_requests if path == "/spot/trades"]
        assert max(int(q["page"]) for q in pages) >= 2 and all(q["limit"] == "25" for q in pages)
        assert any(int(q["offset"]) >= 25 for path, q in fake.rest_requests
                   if path == "/futures/usdt/trades")

        # closed candles (spot flag / futures all but the running one), server values
        for key in markets:
            async def candles_stored(key=key):
                for candle in fake.market.candles[key][:-1]:
                    doc = await mongo_db[schema.OHLCV].find_one(
                        {"exchange": "gateio", "market": key[0], "symbol": key[1],
                         "ts": s_to_dt(candle.t)})
                    if doc is None or not doc["closed"] or doc["close"] != candle.close:
                        return None
                return True
            await wait_for(candles_stored, timeout_s=10, what=f"{key} closed candles")
        # funding re-polled from the contract, open interest from contract_stats since the
        # newest streamed point
        assert await wait_for(lambda: mongo_db[schema.FUNDING_RATES].find_one(
            {"symbol": "BTC_USDT", "rate": float(FUNDING_RATE_REST)}), timeout_s=15,
            what="REST funding")
        stats = [q for path, q in fake.rest_requests if path == "/futures/usdt/contract_stats"]
        assert stats[0]["interval"] == "1m" and int(stats[0]["from"]) > 0
        assert all(q["interval"] == "1m" for q in stats)

        # F5: the 1m open-interest series has no hole across the outage (5m filled one in 5)
        async def oi_series_whole():
            docs = await mongo_db[schema.OPEN_INTEREST].find({"symbol": "BTC_USDT"}).to_list(
                100_000)
            stored = {int(d["ts"].timestamp()) for d in docs}
            want = {r["time"] for r in fake.market.stats["BTC_USDT"]
                    if min(stored) <= r["time"] <= max(r["time"] for r in fake.stats_served)}
            return want <= stored and len(want) >= 3
        await wait_for(oi_series_whole, timeout_s=15, what="1m open interest without holes")
        for row in fake.stats_served:
            doc = await wait_for(lambda row=row: mongo_db[schema.OPEN_INTEREST].find_one(
                {"symbol": "BTC_USDT", "ts": s_to_dt(row["time"])}), timeout_s=15,
                what="open interest served over REST")
            assert doc["open_interest"] == pytest.approx(row["open_interest"] * MULTIPLIER)
        docs = await wait_for(lambda: mongo_db[schema.GAPS].find(
            {"exchange": "gateio", "cause": "disconnect", "backfilled": True}).to_list(10),
            timeout_s=15, what="ledger: gaps backfilled")
        assert len(docs) == 2


async def test_api_realtime_serves_every_type_under_every_spelling(mongo_uri, mongo_db, fake):
    settings = settings_for(fake)
    await apply_indexes(mongo_db, settings.retention)
    async with running_feed(GateioFeed, mongo_db, settings, "gateio"):
        await wait_for_latest(mongo_db, "gateio", {("spot", "BTC_USDT", t) for t in SPOT_TYPES} |
                              {("perp", "BTC_USDT", t) for t in PERP_TYPES})
        async with api_client(mongo_uri, mongo_db, "gateio") as client:
            for spelling in ("BTC_USDT", "BTC-USDT", "btcusdt"):
                resp = await client.get(f"/realtime/gateio/{spelling}")
                assert resp.status == 200, spelling
                data = (await resp.json())["data"]
                assert set(data) == {"BTC_USDT"}, spelling     # not BTC_USDC
                spot, perp = data["BTC_USDT"]["spot"], data["BTC_USDT"]["perp"]
                assert set(spot) >= SPOT_TYPES and set(perp) >= PERP_TYPES
                ticker = spot[schema.MARKET_DATA]
                assert (ticker["volume_24h"], ticker["quote_volume_24h"],
                        ticker["change_pct_24h"]) == (1000.5, 50000000.25, -1.5)
                assert ticker["ask"] > ticker["bid"]
                assert abs(spot[schema.TRADES]["price"] - SPOT["BTC_USDT"]) <= 2.0
                assert spot[schema.ORDER_BOOK]["bids"][0][0] < spot[schema.ORDER_BOOK]["asks"][0][0]
                assert spot[schema.OHLCV]["interval"] == "1m"
                assert spot[schema.VOLUME_LIQUIDITY]["exchange"] == "gateio"
                assert perp[schema.MARKET_DATA]["volume_24h"] == 10.0
                assert perp[schema.FUNDING_RATES]["rate"] == 0.000125
                assert perp[schema.FUNDING_RATES]["interval_hours"] == 8.0
                oi = perp[schema.OPEN_INTEREST]
                row = next(r for r in fake.market.stats["BTC_USDT"]
                           if r["open_interest_usd"] == oi["open_interest_value"])
                assert oi["open_interest"] == pytest.approx(row["open_interest"] * MULTIPLIER)
                # perp book sizes in base units (contracts x multiplier)
                assert perp[schema.ORDER_BOOK]["bids"][0][1] < 5000 * MULTIPLIER + 1e-9


# ---- offline: wiring, partitions --------------------------------------------------------------
def offline_feed(partition: str = "", **gate) -> GateioFeed:
    cfg = dict(spot_symbols=["BTC_USDT"], perp_symbols=["BTC_USDT"],
               spot_ws_url="ws://spot", perp_ws_url="ws://perp")
    cfg.update(gate)
    settings = Settings(gateio=GateioSettings(**cfg), partition=partition)
    return GateioFeed(settings.gateio, offline_context(settings))


def _plan(feed) -> list[tuple[str, str, str]]:
    return [(sub.market, sub.symbol, sub.channel.name) for conn in feed.build_connections()
            for sub in feed.meta(conn).subscriptions]


def _subscribed(partition: str) -> tuple[list[tuple[str, str, str]], list[str]]:
    symbols = [f"SYM{i}_USDT" for i in range(30)] + ["BTC_USDT", "BTC_USDC"]
    feed = offline_feed(partition, spot_symbols=symbols, perp_symbols=symbols[:20])
    return _plan(feed), feed.contract_symbols()


def test_partitions_cover_every_subscription_once():
    everything, contracts = _subscribed("")
    (zero, c0), (one, c1) = _subscribed("0/2"), _subscribed("1/2")
    assert set(zero) | set(one) == set(everything)
    assert not set(zero) & set(one) and zero and one
    assert len(everything) == 32 * 4 + 20 * 5
    # the contract-size poller runs for exactly the contracts a partition streams something of
    assert set(c0) | set(c1) == set(contracts)
    for subs, polled in ((zero, c0), (one, c1)):
        assert set(polled) == {s for market, s, _ in subs if market == "perp"}


def test_subscribe_requests_are_the_partitions_subscriptions():
    symbols = [f"SYM{i}_USDT" for i in range(12)]
    for part in ("0/2", "1/2"):
        feed = offline_feed(part, spot_symbols=symbols, perp_symbols=symbols)
        feed.multipliers = {s: 1.0 for s in symbols}
        for conn in feed.build_connections():
            meta = feed.meta(conn)
            sent = [json.loads(m) for m in feed.subscribe_requests(meta, list(meta.subscriptions))]
            assert sorted((m["channel"], tuple(m["payload"])) for m in sent) == sorted(
                (ch, tuple(ep.payload(ch, s))) for market, s, ch in _plan(feed)
                if market == meta.market)
            assert all(m["event"] == "subscribe" and isinstance(m["id"], int) for m in sent)
            assert len({m["id"] for m in sent}) == len(sent)


def test_idle_threshold_follows_the_streams():
    spot, perp = offline_feed().build_connections()
    assert spot.idle_timeout_s == perp.idle_timeout_s == STREAM_IDLE_S["book"]
    # a partition that only has a contract's stats (pushed once a minute) waits like trades
    for i in range(300):
        feed = offline_feed("0/5", spot_symbols=[], perp_symbols=[f"SYM{i}_USDT"])
        if {ch for _, _, ch in _plan(feed)} == {ep.FUT_STATS}:
            break
    else:
        pytest.fail("no partition with only contract_stats")
    [conn] = feed.build_connections()
    assert conn.idle_timeout_s == STREAM_IDLE_S["trades"]


# ---- conformance (docs/exchanges/gateio.md Findings, issue 11) --------------------------------
async def test_futures_sizes_are_decimal_strings_with_the_header(mongo_db, fake):
    """F1 / issue 11 item 3: with ``X-Gate-Size-Decimal: 1`` (WS handshake and futures REST) a
    0.4-contract level stays in the book and sub-contract fills are stored; without it Gate
    truncates them to 0 (the level deleted, the fill's whole batch dropped)."""
    server = fake.books[("perp", "BTC_USDT")]
    best = max(server.bids)
    server.bids[best] = 0.4
    settings = settings_for(fake, spot_symbols=[])
    async with running_feed(GateioFeed, mongo_db, settings, "gateio") as feed:
        async def synced():
            return book_matches_server(feed, fake, "perp", "BTC_USDT")
        await wait_for(synced, timeout_s=10, what="perp book == server book")
        assert fake.decimal_clients["perp"] == fake.connects["perp"] >= 1
        assert {h for path, h in fake.rest_headers if path.startswith("/futures/")} == {"1"}
        if server.bids.get(best) == 0.4:      # not changed by a diff meanwhile
            assert feed.books[("perp", "BTC_USDT")].bids.levels[-best] == pytest.approx(
                0.4 * MULTIPLIER)
        sent = {str(t["id"]): t for t in fake.market.trades[("perp", "BTC_USDT")]}

        async def fractional_fill():
            async for doc in mongo_db[schema.TRADES].find({"market": "perp"}):
                row = sent.get(doc["trade_id"])
                if row is not None and abs(row["size"]) < 1:
                    return doc, row
        doc, row = await wait_for(fractional_fill, timeout_s=10, what="a 0.x-contract fill")
        assert doc["size"] == pytest.approx(abs(row["size"]) * MULTIPLIER)
        assert doc["side"] == ("buy" if row["size"] > 0 else "sell")
        assert feed.stats.malformed == 0


def test_one_bad_row_does_not_drop_its_batch():
    """Issue 11 item 3: a zero-size fill (what a client without the header reads for 0.3
    contracts) is counted as malformed and skipped; the other fills of the push are kept."""
    feed = offline_feed(spot_symbols=[])
    feed.multipliers = {"BTC_USDT": MULTIPLIER}
    [conn] = feed.build_connections()
    rows = [{"id": 1, "create_time": 1767225600, "create_time_ms": 1767225600499,
             "contract": "BTC_USDT", "size": 0, "price": "3000.1"},
            {"id": 2, "create_time": 1767225600, "create_time_ms": 1767225600499,
             "contract": "BTC_USDT", "size": "-2.5", "price": "3000.2"}]
    feed.handle(conn, json.dumps({"channel": "futures.trades", "event": "update",
                                  "time": 1767225600, "result": rows}))
    (trade,) = feed.writer.of(schema.Trade)
    assert (trade.trade_id, trade.side, trade.price) == ("2", "sell", 3000.2)
    assert trade.size == pytest.approx(2.5 * MULTIPLIER)
    assert feed.stats.malformed == 1 and feed.stats.messages == 1


async def test_unavailable_contract_keeps_the_spot_pair_of_the_same_name(mongo_db, fake):
    """F3 / issue 11 item 7: the contract lookup of perpetual BTC_USDT answers 404; spot
    BTC_USDT (the same text, another market) keeps streaming."""
    fake.missing_contracts.add("BTC_USDT")
    async with running_feed(GateioFeed, mongo_db, settings_for(fake), "gateio") as feed:
        async def spot_flowing():
            return book_matches_server(feed, fake, "spot", "BTC_USDT") and \
                await mongo_db[schema.TRADES].find_one({"market": "spot", "symbol": "BTC_USDT"})
        await wait_for(spot_flowing, timeout_s=10, what="spot BTC_USDT book and trades")
        assert list(feed.stats.unavailable_symbols) == ["perp:BTC_USDT"]
        assert "CONTRACT_NOT_FOUND" in feed.stats.unavailable_symbols["perp:BTC_USDT"]
        assert feed.symbols("spot") == ["BTC_USDT", "BTC_USDC"] and feed.symbols("perp") == []
        assert fake.connects["perp"] == 0 and fake.connects["spot"] == 1


@pytest.mark.parametrize("shape", ["doc", "echo"])
async def test_unknown_pair_error_without_payload_echo_marks_it_once(mongo_db, fake, shape):
    """F4: Gate's documented error has no ``payload`` (nor ``id``); the pair is found by the
    request id or the name in the message, marked unavailable in its market, and not
    subscribed again after a reconnect."""
    fake.error_shape = shape
    settings = settings_for(fake, spot_symbols=["BTC_USDT", "NOPE_USDT"], perp_symbols=[])
    async with running_feed(GateioFeed, mongo_db, settings, "gateio") as feed:
        await wait_for(lambda: _value("spot:NOPE_USDT" in feed.stats.unavailable_symbols),
                       timeout_s=10, what="NOPE_USDT unavailable")
        assert "unknown currency pair NOPE_USDT" in \
            feed.stats.unavailable_symbols["spot:NOPE_USDT"]
        errors = len(fake.subscribe_errors)
        assert errors == 4 and all("payload" not in e for e in fake.subscribe_errors) == (
            shape == "doc")
        await fake.drop_connections()

        async def resubscribed():
            return fake.connects["spot"] == 2 and book_matches_server(feed, fake, "spot",
                                                                      "BTC_USDT")
        await wait_for(resubscribed, timeout_s=10, what="reconnected, BTC_USDT synced")
        assert len(fake.subscribe_errors) == errors      # NOPE_USDT not asked for again


@pytest.mark.parametrize("form", ["type", "event", "system"])
async def test_upgrade_notice_in_every_shape_reconnects(mongo_db, fake, form):
    """F2: the notice as top-level ``type`` (doc mirror), ``event`` (official SDK) or a
    ``*.system`` push: each reconnects at once (the fake does not close the socket itself)."""
    settings = settings_for(fake, perp_symbols=[], spot_symbols=["BTC_USDT"])
    async with running_feed(GateioFeed, mongo_db, settings, "gateio"):
        await wait_for(lambda: _value(fake.connects["spot"] == 1 and
                                      fake.subscriptions), timeout_s=10, what="connected")
        await fake.push_upgrade("spot", form)
        await wait_for(lambda: _value(fake.connects["spot"] == 2), timeout_s=8,
                       what=f"reconnect after the {form} upgrade notice")


async def test_spot_trades_keep_id_not_id_market(mongo_db, fake):
    """Issue 11 item 10 / F6: ``id`` (unique per market, not consecutive) is the stored id, as
    REST ``/spot/trades`` has it; ``id_market`` (a different number) is not used for it, so
    streamed and backfilled trades share their unique key."""
    settings = settings_for(fake, perp_symbols=[], spot_symbols=["BTC_USDT"])
    async with running_feed(GateioFeed, mongo_db, settings, "gateio"):
        async def some_trades():
            ids = await _ids(mongo_db, "spot", "BTC_USDT")
            return ids if len(ids) >= 5 else None
        stored = await wait_for(some_trades, timeout_s=10, what="spot trades")
        assert stored <= set(fake.trade_ids("spot", "BTC_USDT"))
        sent = {str(t["id"]): t for t in fake.market.trades[("spot", "BTC_USDT")]}
        doc = await mongo_db[schema.TRADES].find_one({"trade_id": min(stored)})
        row = sent[doc["trade_id"]]
        assert (doc["price"], doc["size"], doc["side"]) == (
            float(row["price"]), float(row["amount"]), row["side"])
        assert int(row["sequence_id"]) != int(row["id"])


async def test_rest_429_is_waited_out_as_told(mongo_db):
    """REST answers over the per-endpoint limit with 429 + Retry-After: the client pauses for
    that long (one 429, not a retry storm) and the book still syncs."""
    server = await FakeGate(rest_limit=1, rest_window_s=1.0).start()
    try:
        settings = settings_for(server, perp_symbols=[])
        async with running_feed(GateioFeed, mongo_db, settings, "gateio") as feed:
            for symbol in SPOT:
                async def synced(symbol=symbol):
                    return book_matches_server(feed, server, "spot", symbol)
                await wait_for(synced, timeout_s=10, what=f"{symbol} synced after 429")
            assert server.rate_limited == {"/api/v4/spot/order_book": 1}
    finally:
        await server.stop()


async def test_duplicate_and_out_of_order_diffs_are_ignored(mongo_db, fake):
    """A diff sent again after a newer one (and that one twice) is stale: no gap, no resync."""
    settings = settings_for(fake, perp_symbols=[], spot_symbols=["BTC_USDT"])
    async with running_feed(GateioFeed, mongo_db, settings, "gateio") as feed:
        await wait_for(lambda: _value(book_matches_server(feed, fake, "spot", "BTC_USDT")),
                       timeout_s=10, what="synced")
        requests = fake.snapshot_requests[("spot", "BTC_USDT")]
        for _ in range(3):
            fake.duplicate_next.add(("spot", "BTC_USDT"))
            await wait_for(lambda: _value(not fake.duplicate_next), timeout_s=5, what="sent")
        await wait_for(lambda: _value(book_matches_server(feed, fake, "spot", "BTC_USDT")),
                       timeout_s=5, what="book == server after duplicates")
        assert feed.stats.gaps == 0 and fake.snapshot_requests[("spot", "BTC_USDT")] == requests
