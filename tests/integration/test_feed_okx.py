"""The real OkxFeed against a fake OKX (WebSocket /public + /business, REST), real MongoDB."""
from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import replace
from datetime import timedelta

import aiohttp
import pytest
import pytest_asyncio

from collector.exchanges.base import FeedContext
from collector.exchanges.okx.feed import OkxFeed
from collector.stats import Stats
from collector.writer import Writer
from common import schema
from common.indexes import apply_indexes
from common.schema import ms_to_dt, now_utc
from common.settings import OkxSettings, Settings
from tests.support.fakes.okx import FakeOkx, rest_candle
from tests.support.faultlog import report
from tests.support.feed_helpers import offline_context
from tests.support.feedutil import PERP_TYPES, SPOT_TYPES, api_client, wait_for_latest
from tests.support.helpers import wait_for


async def _async(value):
    return value


async def all_connected(feed: OkxFeed, n: int = 4) -> None:
    await wait_for(lambda: _async(len(feed.connections) == n and
                                  all(c.connected.is_set() for c in feed.connections)),
                   what="connected")


def quick_ping(interval_s: float, pong_timeout_s: float | None = 5.0):
    """OKX's spec with the text ping sent after ``interval_s`` of quiet (instead of 25 s)."""
    spec = OkxFeed.spec
    heartbeat = replace(spec.connections[0].heartbeat, app_ping_interval_s=interval_s,
                        app_pong_timeout_s=pong_timeout_s)
    return replace(spec, connections=tuple(replace(c, heartbeat=heartbeat)
                                           for c in spec.connections))


def _synced(feed, inst, market="spot"):
    book = feed.books.get((market, inst))
    return book is not None and book.synced


async def start(mongo_db, fake: FakeOkx, poll_interval_s: float = 1.0, cfg=None,
                **feed_attrs):
    await fake.start()
    settings = Settings(
        okx=OkxSettings(spot_ws_url=f"{fake.ws_base}/ws/v5", perp_ws_url=f"{fake.ws_base}/ws/v5",
                        spot_rest_url=fake.rest_base, perp_rest_url=fake.rest_base,
                        **{"idle_timeout_s": 1.0, **(cfg or {})}),
        book_snapshot_interval_s=0.2, liquidity_interval_s=0.2, flush_interval_s=0.1)
    await apply_indexes(mongo_db, settings.retention)
    writer = Writer(mongo_db, flush_interval_s=0.1)
    session = aiohttp.ClientSession()
    ctx = FeedContext(settings=settings, writer=writer, stats=Stats(), session=session,
                      poll_interval_s=poll_interval_s)
    feed = OkxFeed(settings.okx, ctx)
    feed.book_sync.scheduler.cooldown_s = 0.3
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


@contextlib.asynccontextmanager
async def running(mongo_db, fake: FakeOkx):
    feed, writer, session, tasks = await start(mongo_db, fake)
    try:
        yield fake, feed, mongo_db
    finally:
        await stop(feed, writer, session, tasks, fake)


@pytest_asyncio.fixture
async def env(mongo_db):
    async with running(mongo_db, FakeOkx()) as started:
        yield started


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
    # candles and every fill (trades-all) on /business, never on /public; no error events
    assert set(business) == {"candle1m", "trades-all"}
    assert set(public) == {"books", "tickers", "funding-rate", "open-interest"}
    assert not feed.stats.errors
    # checksums were validated and matched
    assert feed.stats.gaps == 0

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


@pytest_asyncio.fixture
async def checksummed_env(mongo_db):
    """The server before 2026-06-23: book messages carry the CRC32 of the top 25 levels."""
    fake = FakeOkx()
    fake.checksums = True
    async with running(mongo_db, fake) as started:
        yield started


async def test_sequence_rules_gap_and_checksum_resync(checksummed_env):
    fake, feed, db = checksummed_env
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
    await wait_for(lambda: _async(feed.stats.resyncs == 1 and usdt.synced), interval_s=0.01,
                   what="BTC-USDT resynced")
    recovery_s = time.monotonic() - injected
    await wait_for(lambda: _async(usdc.update_id > usdc_seq), what="BTC-USDC keeps updating")
    report("okx_sequence_gap", expected="that book alone resubscribes (snapshot again); other "
           "symbols unaffected", recovery_s=recovery_s,
           other_books_resynced=feed.stats.resyncs - 1)
    assert usdc.synced and feed.stats.gaps == 1
    [gap] = [g for g in feed.gaps.recent if g.stream == "book"]
    assert (gap.market, gap.symbol, gap.cause) == ("spot", "BTC-USDT", "sequence_gap")
    assert f"prevSeqId {last + 5}" in gap.detail and gap.end is not None
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
    assert usdt.synced
    [checksum_gap] = [g for g in feed.gaps.recent if g.cause == "checksum"]
    assert (checksum_gap.stream, checksum_gap.symbol) == ("book", "BTC-USDC")
    assert "exchange 123456789" in checksum_gap.detail and checksum_gap.end is not None
    assert not feed.gaps.open_gaps

    async def ledger():
        return await db[schema.GAPS].count_documents(
            {"exchange": "okx", "stream": "book", "end": {"$ne": None},
             "cause": {"$in": ["sequence_gap", "checksum"]}}) == 2
    await wait_for(ledger, what="both book gaps closed in the ledger")


async def test_notice_reconnects(env):
    fake, feed, db = env
    await wait_for(lambda: _async(len(feed.connections) == 4 and
                                  all(c.connects == 1 and c.connected.is_set()
                                      for c in feed.connections)), what="connected")
    await fake.push("/public", {"event": "notice", "code": "64008",
                                "msg": "The connection will soon be closed for a service "
                                       "upgrade. Please reconnect.", "connId": "a4d3ae55"})
    public = [c for c in feed.connections if c.url.endswith("/public")][0]
    await wait_for(lambda: _async(public.connects >= 2 and public.connected.is_set()),
                   timeout_s=8, what="reconnect after notice")
    assert feed.notices == 2          # spot and SWAP /public connections
    await wait_for(lambda: _async(_synced(feed, "BTC-USDT")), what="book after reconnect")


async def test_idle_watchdog_and_pong_is_control(env):
    fake, feed, db = env
    await wait_for(lambda: _async(len(feed.connections) == 4 and
                                  all(c.connects >= 1 for c in feed.connections)),
                   what="connected")
    assert feed.handle(feed.connections[0], "pong") is False
    fake.silent = True            # the socket stays open but no data flows
    await wait_for(lambda: _async(all(c.connects >= 2 for c in feed.connections)),
                   timeout_s=8, what="idle reconnect")
    fake.silent = False
    await wait_for(lambda: _async(_synced(feed, "BTC-USDT")), what="data after reconnect")


async def test_unfetchable_ctval_holds_swap_records_back_never_a_default(mongo_db):
    """Finding F3 (issue 11 item 8): ETH-USDT-SWAP's ctVal is 0.1; while /instruments fails
    the old feed stored its sizes with a default of 1 (10x). Now its records wait for the
    instrument's own ctVal (retried with backoff); spot is unaffected meanwhile."""
    fake = FakeOkx()
    fake.instruments_fail = True
    feed, writer, session, tasks = await start(
        mongo_db, fake, cfg={"spot_symbols": ["BTC-USDT"], "perp_symbols": ["ETH-USDT-SWAP"]})
    try:
        async def spot_trade():
            return await mongo_db[schema.TRADES].find_one({"symbol": "BTC-USDT"})
        await wait_for(spot_trade, what="spot trades while ctVal is unknown")
        await wait_for(lambda: _async(any(t["pushed"]
                                          for t in fake.tape.trades.get("ETH-USDT-SWAP", ()))),
                       what="SWAP fills pushed")
        assert feed.ct("ETH-USDT-SWAP") is None
        for name in (schema.TRADES, schema.MARKET_DATA, schema.ORDER_BOOK, schema.OPEN_INTEREST):
            assert await mongo_db[name].count_documents({"symbol": "ETH-USDT-SWAP"}) == 0, name
        assert any("ctVal of ETH-USDT-SWAP" in key for key in feed.stats.errors)

        fake.instruments_fail = False
        await wait_for(lambda: _async(feed.ct("ETH-USDT-SWAP") == 0.1), what="ctVal retried")

        async def swap_trade():
            return await mongo_db[schema.TRADES].find_one({"symbol": "ETH-USDT-SWAP"})
        trade = await wait_for(swap_trade, what="SWAP trade after ctVal")
        assert trade["size"] == 0.5                       # 5 contracts of 0.1 ETH
        ticker = await wait_for(lambda: mongo_db[schema.MARKET_DATA].find_one(
            {"symbol": "ETH-USDT-SWAP"}), what="SWAP ticker")
        assert (ticker["bid_size"], ticker["ask_size"]) == (23 * 0.1, 155 * 0.1)
        await wait_for(lambda: _async(_synced(feed, "ETH-USDT-SWAP", "perp")), what="swap book")
        assert feed.books[("perp", "ETH-USDT-SWAP")].best_ask() == (8476.98, 415 * 0.1)
    finally:
        await stop(feed, writer, session, tasks, fake)


async def test_unknown_and_inverse_instruments_are_unavailable_per_market(mongo_db):
    """Findings F3/F7 (issue 11 item 8): REST 51001 and WS 60018 mark (market, symbol)
    unavailable; an inverse SWAP (ctVal in USD) is refused, not stored as base units. The same
    name in the other market is untouched."""
    fake = FakeOkx()
    feed, writer, session, tasks = await start(mongo_db, fake, cfg={
        "spot_symbols": ["BTC-USDT", "FOO-USDT"],
        "perp_symbols": ["BTC-USDT-SWAP", "FOO-USDT-SWAP", "BTC-USD-SWAP"]})
    try:
        unavailable = feed.stats.unavailable_symbols
        await wait_for(lambda: _async("spot:FOO-USDT" in unavailable), what="60018 on WS")
        assert unavailable["perp:FOO-USDT-SWAP"] == \
            "Instrument ID, Instrument ID code or Spread ID doesn't exist."
        assert unavailable["perp:BTC-USD-SWAP"].startswith("ctType 'inverse'")
        assert "Wrong URL or channel:" in unavailable["spot:FOO-USDT"]
        assert set(unavailable) == {"spot:FOO-USDT", "perp:FOO-USDT-SWAP", "perp:BTC-USD-SWAP"}
        # the unknown SWAPs were never subscribed; no ctVal was made up for them
        subscribed = {a["instId"] for _, m in fake.sent_ops("subscribe") for a in m["args"]}
        assert "FOO-USDT-SWAP" not in subscribed and "BTC-USD-SWAP" not in subscribed
        assert feed.ct_val == {"BTC-USDT-SWAP": 0.01}
        await wait_for(lambda: _async(_synced(feed, "BTC-USDT") and
                                      _synced(feed, "BTC-USDT-SWAP", "perp")),
                       what="the known instruments keep flowing")
        for symbol in ("FOO-USDT", "FOO-USDT-SWAP", "BTC-USD-SWAP"):
            assert await mongo_db[schema.TRADES].count_documents({"symbol": symbol}) == 0
    finally:
        await stop(feed, writer, session, tasks, fake)


async def test_resync_reconnects_when_subscribe_budget_is_exhausted(env):
    fake, feed, db = env
    await wait_for(lambda: _async(_synced(feed, "BTC-USDT")), what="book synced")
    public = feed.book_conn[("spot", "BTC-USDT")]
    feed.budget.spend("public", 470)
    ws = fake.public_ws()
    last = ws.state_dict["books"]["BTC-USDT"]["seq"]
    await fake.send(ws, fake.book_update(ws.state_dict, "BTC-USDT", prev=last + 1, seq=last + 2))
    await wait_for(lambda: _async(public.connects >= 2 and _synced(feed, "BTC-USDT")),
                   timeout_s=8, what="reconnect instead of resubscribe")
    assert not fake.sent_ops("unsubscribe")
    assert feed.budget.left("public") == 479


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
    feed, writer, session, tasks = await start(mongo_db, fake, spec=quick_ping(0.3))
    try:
        await wait_for(lambda: _async(len(feed.connections) == 4 and
                                      all(c.connects >= 1 for c in feed.connections)),
                       what="connected")
        fake.silent = True       # only "pong" answers from now on
        await wait_for(lambda: _async(any(t == "ping" for _, t in fake.received)),
                       what="text ping sent when quiet")
        await wait_for(lambda: _async(all(c.connects >= 2 for c in feed.connections)),
                       timeout_s=8, what="idle reconnect despite pongs")
    finally:
        await stop(feed, writer, session, tasks, fake)


async def test_funding_rest_fallback_only_when_the_channel_is_really_unavailable(mongo_db):
    fake = FakeOkx()
    fake.push_every_s["funding-rate"] = 2.5        # within OKX's 30-90 s, scaled down
    feed, writer, session, tasks = await start(mongo_db, fake, poll_interval_s=1.0)
    try:
        async def ws_funding(n):
            return await mongo_db[schema.FUNDING_RATES].count_documents({"exchange": "okx"}) >= n
        # pushes 2.5 s apart, polls every 1 s: the old "silent for 2 polls" rule fired here
        await wait_for(lambda: ws_funding(3), timeout_s=15, what="three WS funding pushes")
        assert not [r for r in fake.rest_requests if "funding-rate" in r]
        assert not [r for r in fake.rest_requests if "open-interest" in r]
        assert feed.derivatives.polls == 0

        # the channel goes quiet for longer than its maximum silence: REST takes over
        fake.muted.add("funding-rate")
        feed.watch.max_silence_s["funding-rate"] = 3.0
        muted_at = time.monotonic()
        await wait_for(lambda: _async([r for r in fake.rest_requests if "funding-rate" in r]),
                       timeout_s=10, what="REST funding poll")
        assert time.monotonic() - muted_at >= 0.5     # not before the channel was silent
        assert not [r for r in fake.rest_requests if "open-interest" in r]   # OI still pushes
        fake.muted.discard("funding-rate")
    finally:
        await stop(feed, writer, session, tasks, fake)


async def test_trade_id_hole_is_a_gap_and_is_backfilled(env):
    fake, feed, db = env
    await wait_for(lambda: _async(any(t["pushed"] for t in fake.tape.trades.get("BTC-USDT", ()))),
                   what="trades flowing")
    fake.tape.lose("BTC-USDT", 6)                 # they happen, but are never pushed

    async def hole_backfilled():
        return [g for g in feed.gaps.recent
                if g.stream == "trade" and g.cause == "sequence_gap" and g.backfilled]
    [gap] = await wait_for(hole_backfilled, what="trade-id hole backfilled")
    first, last = gap.extra["missing_ids"]
    lost = [str(t["id"]) for t in fake.tape.unpushed("BTC-USDT")]
    assert [str(i) for i in range(first, last + 1)] == lost and len(lost) == 6
    assert (gap.symbol, gap.market) == ("BTC-USDT", "spot")
    assert any(r.startswith("/api/v5/market/trades?instId=BTC-USDT&limit=500")
               for r in fake.rest_requests)

    async def stored():
        return await db[schema.TRADES].count_documents(
            {"exchange": "okx", "symbol": "BTC-USDT", "trade_id": {"$in": lost}}) == 6
    await wait_for(stored, what="the lost trades in MongoDB")

    async def ledger():
        return await db[schema.GAPS].find_one({"exchange": "okx", "stream": "trade",
                                               "backfilled": True})
    doc = await wait_for(ledger, what="backfilled trade gap in the ledger")
    assert doc["missing_ids"] == [first, last] and doc["cause"] == "sequence_gap"
    # the backfilled trades are stored once (unique trade ids), the stream's neighbours too
    assert await db[schema.TRADES].count_documents(
        {"exchange": "okx", "symbol": "BTC-USDT", "trade_id": str(first - 1)}) == 1


async def test_drop_mid_stream_backfills_the_missed_trades(env):
    fake, feed, db = env
    insts = ["BTC-USDT", "BTC-USDC", "BTC-USDT-SWAP"]
    await wait_for(lambda: _async(all(any(t["pushed"] for t in fake.tape.trades.get(i, ()))
                                      for i in insts)), what="trades flowing")
    last_pushed = {i: max(t["id"] for t in fake.tape.trades[i] if t["pushed"]) for i in insts}
    await fake.drop_connections(down_s=0.8)        # trades keep happening meanwhile

    async def gaps_backfilled():
        gaps = [g for g in feed.gaps.recent if g.cause == "disconnect"]
        return len(gaps) == 4 and all(g.backfilled for g in gaps) and gaps
    gaps = await wait_for(gaps_backfilled, timeout_s=15, what="disconnect gaps backfilled")
    assert {g.stream for g in gaps} == {"okx:public", "okx:business", "okx:perp-public",
                                        "okx:perp-business"}
    for inst in insts:
        business = next(g for g in gaps if g.stream == (
            "okx:perp-business" if inst.endswith("SWAP") else "okx:business"))
        missed = [str(t["id"]) for t in fake.tape.unpushed(inst, last_pushed[inst])
                  if t["ts"] < business.end.timestamp() * 1000]
        assert len(missed) >= 3, inst

        async def stored(ids=missed, inst=inst):
            return await db[schema.TRADES].count_documents(
                {"exchange": "okx", "symbol": inst, "trade_id": {"$in": ids}}) == len(ids)
        await wait_for(stored, what=f"missed {inst} trades in MongoDB")
    # the /business gaps (trades-all + candles) refetch trades once per instrument
    assert len([r for r in fake.rest_requests if r.startswith("/api/v5/market/trades")]) == 3
    # no trade-id gap on top of the connection gap for the same hole
    assert not [g for g in feed.gaps.recent if g.stream == "trade"]
    swap = await db[schema.TRADES].find_one({"symbol": "BTC-USDT-SWAP",
                                             "trade_id": {"$in": missed}})
    assert swap["size"] == 0.05                    # 5 contracts of 0.01 BTC, from REST too

    async def ledger():
        return await db[schema.GAPS].count_documents(
            {"exchange": "okx", "cause": "disconnect", "backfilled": True}) == 4
    await wait_for(ledger, what="backfilled gaps in the ledger")


async def test_candle_backfill_emits_closed_candles_only(env):
    fake, feed, db = env
    await wait_for(lambda: _async(_synced(feed, "BTC-USDT")), what="connected")
    emitted = []
    emit = feed.emit
    # Only candles: the running feed keeps emitting tickers, books etc. meanwhile.
    feed.emit = lambda record, **kw: (isinstance(record, schema.Candle) and emitted.append(record),
                                      emit(record, **kw))[1]
    since = now_utc() - timedelta(minutes=3)
    await feed.backfill_candles("spot", "BTC-USDT", since)
    request = [r for r in fake.rest_requests if r.startswith("/api/v5/market/candles")][-1]
    assert "instId=BTC-USDT" in request and "bar=1m" in request and "limit=300" in request
    start = since.replace(second=0, microsecond=0)
    assert len(emitted) in (3, 4) and all(c.closed and c.ts >= start for c in emitted)
    first = emitted[0]
    assert first.ts == start
    row = rest_candle(int(start.timestamp() * 1000), "1")
    assert (first.open, first.high, first.low, first.close, first.volume, first.quote_volume) \
        == tuple(float(v) for v in row[1:6] + row[7:8])

    async def stored():
        return await db[schema.OHLCV].count_documents(
            {"exchange": "okx", "symbol": "BTC-USDT", "closed": True, "volume": 3.5}) >= 3
    await wait_for(stored, what="closed candles stored")


async def test_realtime_api_shows_every_data_type(env, mongo_uri):
    fake, feed, db = env
    await wait_for_latest(db, "okx", {("spot", "BTC-USDT", t) for t in SPOT_TYPES} |
                          {("perp", "BTC-USDT-SWAP", t) for t in PERP_TYPES})
    async with api_client(mongo_uri, db, "okx") as client:
        for spelling in ("BTC-USDT", "btc-usdt", "BTC_USDT", "BTCUSDT", "BTC/USDT"):
            resp = await client.get(f"/realtime/okx/{spelling}")
            assert resp.status == 200, spelling
            body = await resp.json()
            assert set(body["data"]) == {"BTC-USDT"}, spelling
        spot = body["data"]["BTC-USDT"]["spot"]
        assert {"market_data", "trades", "order_book", "ohlcv", "volume_liquidity"} <= set(spot)
        assert spot["market_data"]["last"] == 30236 and spot["market_data"]["bid"] == 30228.6
        assert spot["market_data"]["volume_24h"] == 17602.13085371
        assert spot["market_data"]["quote_volume_24h"] == 525802090.62716611
        assert spot["trades"]["price"] == 30236 and spot["trades"]["size"] == 0.0002
        assert spot["ohlcv"]["open"] == 8533.02 and spot["ohlcv"]["interval"] == "1m"
        assert spot["order_book"]["asks"][0][0] == 8476.98
        assert spot["volume_liquidity"]["spread_bps"] > 0
        body = await (await client.get("/realtime/okx/BTC-USDT-SWAP")).json()
        perp = body["data"]["BTC-USDT-SWAP"]["perp"]
        assert set(schema.DATA_COLLECTIONS) <= set(perp)
        assert perp["market_data"]["bid_size"] == 0.23 and perp["market_data"]["volume_24h"] \
            == 17602.13
        assert perp["trades"]["size"] == 0.05
        assert perp["order_book"]["asks"][0] == [8476.98, 4.15]
        assert perp["funding_rates"]["rate"] == 0.0001875391284828
        assert perp["funding_rates"]["interval_hours"] == 8
        assert perp["open_interest"]["open_interest"] == 5654.74
        assert perp["volume_liquidity"]["volume_24h"] == 17602.13
        assert all(doc["stale"] is False for doc in (*spot.values(), *perp.values()))


# ---- partitioning (offline: only the subscription plan is exercised) ------------------------
SPOT = [f"SYM{i}-USDT" for i in range(10)] + ["BTC-USDT", "BTC-USDC"]
SWAP = [f"SYM{i}-USDT-SWAP" for i in range(6)]


def _plan(spec: str):
    cfg = OkxSettings(spot_symbols=SPOT, perp_symbols=SWAP)
    feed = OkxFeed(cfg, offline_context(Settings(partition=spec)))
    subs = [(c.url, (s.channel.name, s.symbol)) for c in feed.build_connections()
            for s in feed.meta(c).subscriptions]
    polled = [(ch, inst) for inst in SWAP for ch in feed.derivatives.polled(inst)]
    return subs, polled


@pytest.mark.parametrize("n", [2, 3])
def test_partitions_cover_every_channel_once(n):
    everything, polled = _plan("")
    assert len(everything) == len(set(everything)) == len(SPOT) * 4 + len(SWAP) * 6
    parts = [_plan(f"{i}/{n}") for i in range(n)]
    merged = [s for subs, _ in parts for s in subs]
    assert sorted(merged) == sorted(everything) and len(set(merged)) == len(merged)
    assert all(subs for subs, _ in parts)
    merged_polls = [p for _, polls in parts for p in polls]
    assert sorted(merged_polls) == sorted(polled) and len(set(merged_polls)) == len(merged_polls)
    # REST stands in only for the channels this partition subscribes itself
    for subs, polls in parts:
        assert set(polls) <= {arg for _, arg in subs}


def test_idle_thresholds_per_connection():
    feed = OkxFeed(OkxSettings(), offline_context())
    idle = {c.url.rsplit("/", 1)[1]: c.idle_timeout_s for c in feed.build_connections()}
    # /public: books send a no-change message only every ~60 s (idle class "quiet");
    # /business: candles (trades-all may pause for minutes)
    assert idle == {"public": 70.0, "business": 30.0}


# ---- conformance (docs/exchanges/okx.md Findings; each fails on the pre-kit feed) -----------
def _book_levels(book) -> tuple[list, list]:
    return book.bids.top(400), book.asks.top(400)


def _fake_levels(fake: FakeOkx, inst: str, factor: float = 1.0) -> tuple[list, list]:
    book = fake.books[inst]
    bids = sorted(((float(p), float(s) * factor) for p, s in book["bids"].items()), reverse=True)
    asks = sorted((float(p), float(s) * factor) for p, s in book["asks"].items())
    return [list(b) for b in bids], [list(a) for a in asks]


async def test_trades_are_fills_and_a_backfill_counts_each_once(env):
    """Finding F1 (issue 11 item 2): the fake's taker orders have 1-3 fills; ``trades`` would
    push one aggregate (LAST fill id, summed size), REST lists the fills. The feed stores fills
    (``trades-all``), so after a drop and its backfill every fill id is stored exactly once with
    its own size: the stored volume equals the market's."""
    fake, feed, db = env
    inst = "BTC-USDT"
    await wait_for(lambda: _async(sum(t["pushed"] for t in fake.tape.trades.get(inst, ())) >= 8),
                   what="fills flowing")
    await fake.drop_connections(down_s=0.8)

    async def backfilled():
        return [g for g in feed.gaps.recent if g.stream == "okx:business" and g.backfilled]
    [gap] = await wait_for(backfilled, timeout_s=15, what="business gap backfilled")
    upto = max(t["id"] for t in fake.tape.trades[inst] if t["ts"] < gap.end.timestamp() * 1000)
    fills = [t for t in fake.tape.trades[inst] if t["id"] <= upto]
    assert any(not t["pushed"] for t in fills)                 # the gap really missed some

    async def stored():
        docs = await db[schema.TRADES].find({"exchange": "okx", "symbol": inst,
                                             "trade_id": {"$in": [str(t["id"]) for t in fills]}}
                                            ).to_list(None)
        return len(docs) == len(fills) and docs
    docs = await wait_for(stored, what="every fill of the window stored")
    assert sorted(int(d["trade_id"]) for d in docs) == [t["id"] for t in fills]
    assert {d["size"] for d in docs} == {0.0002}               # one fill each, never a sum
    assert sum(d["size"] for d in docs) == pytest.approx(0.0002 * len(fills))
    assert not [g for g in feed.gaps.recent if g.stream == "trade"]
    # the fake did aggregate: orders of several fills happened in this window
    assert len({t["ts"] for t in fills}) < len(fills)


async def test_books_without_ws_snapshot_sync_from_rest_and_stay_exact(mongo_db):
    """Finding F2 (issue 11 item 5): without the WS snapshot (the announced change) books are
    built from REST /market/books (sz=400, seqId) spliced with the buffered updates; varied
    updates (both sides, deletions, top-of-book moves, the no-change message, checksum 0) keep
    the feed's book equal to the exchange's; a sequence break re-fetches REST and never
    resubscribes (the 480/hour budget)."""
    fake = FakeOkx()
    fake.ws_snapshot = False
    fake.varied = True
    feed, writer, session, tasks = await start(mongo_db, fake)
    try:
        await wait_for(lambda: _async(_synced(feed, "BTC-USDT") and _synced(feed, "BTC-USDC") and
                                      _synced(feed, "BTC-USDT-SWAP", "perp")),
                       what="books synced from REST")
        books_requests = [r for r in fake.rest_requests if r.startswith("/api/v5/market/books")]
        assert all("sz=400" in r for r in books_requests) and len(books_requests) == 3
        book = feed.books[("spot", "BTC-USDT")]
        start_seq = book.update_id
        await wait_for(lambda: _async(book.update_id >= start_seq + 25), what="25 updates")
        fake.silent = True                 # freeze the market to compare the two books
        swap = feed.books[("perp", "BTC-USDT-SWAP")]
        await wait_for(lambda: _async(book.update_id == fake.books["BTC-USDT"]["seq"] and
                                      swap.update_id == fake.books["BTC-USDT-SWAP"]["seq"]),
                       what="the last updates applied")
        assert _book_levels(book) == _fake_levels(fake, "BTC-USDT")
        assert _book_levels(swap) == _fake_levels(fake, "BTC-USDT-SWAP", 0.01)
        assert feed.stats.gaps == 0 and feed.stats.malformed == 0
        fake.silent = False

        ws = fake.public_ws()
        last = fake.books["BTC-USDT"]["seq"]
        await fake.send(ws, fake.book_update(None, "BTC-USDT", prev=last + 3, seq=last + 4))
        await wait_for(lambda: _async(feed.stats.resyncs == 1 and book.synced),
                       what="REST re-sync after the break")
        assert not fake.sent_ops("unsubscribe")
        assert len([r for r in fake.rest_requests if "market/books?instId=BTC-USDT&" in r]) >= 2
        assert (await wait_for(lambda: mongo_db[schema.ORDER_BOOK].find_one(
            {"symbol": "BTC-USDT"}), what="stored book"))["bids"]
    finally:
        await stop(feed, writer, session, tasks, fake)


async def test_varied_ws_book_updates_keep_the_book_exact(mongo_db):
    """The strict fake's varied content over the WS-snapshot protocol: deletions, new best
    levels, the 60 s no-change message (seqId == prevSeqId), checksum 0 never a mismatch."""
    fake = FakeOkx()
    fake.varied = True
    fake.heartbeat_every = 4
    feed, writer, session, tasks = await start(mongo_db, fake)
    try:
        await wait_for(lambda: _async(_synced(feed, "BTC-USDT")), what="synced")
        book = feed.books[("spot", "BTC-USDT")]
        start_seq, start_top = book.update_id, book.best_bid()
        await wait_for(lambda: _async(book.update_id >= start_seq + 30), what="30 updates")
        fake.silent = True
        await wait_for(lambda: _async(book.update_id == fake.books["BTC-USDT"]["seq"]),
                       what="the last update applied")
        assert _book_levels(book) == _fake_levels(fake, "BTC-USDT")
        assert book.best_bid() != start_top            # the top of the book moved
        assert feed.stats.gaps == 0 and feed.stats.resyncs == 0 and not feed.gaps.open_gaps
    finally:
        await stop(feed, writer, session, tasks, fake)


async def test_body_rate_limit_backs_off_and_is_not_malformed(mongo_db):
    """Finding F6: OKX reports a REST rate limit as ``{"code":"50011",...}`` with HTTP 200.
    It pauses the REST budget like a 429 and is not counted as a malformed message."""
    fake = FakeOkx()
    fake.ws_rejects = {"funding-rate"}
    fake.rate_limit_next = 1
    feed, writer, session, tasks = await start(mongo_db, fake, poll_interval_s=1.0)
    try:
        # the first call (instruments) is limited: retried, no ctVal made up meanwhile
        await wait_for(lambda: _async(feed.ct("BTC-USDT-SWAP") == 0.01), what="ctVal retried")
        fake.rate_limit_next = 1          # the next call (a funding poll or a book snapshot)
        await wait_for(lambda: _async(any("50011" in k for k in feed.stats.errors)),
                       what="rate limit seen")
        assert feed.rest_budget.paused_until > 0
        funding = await wait_for(lambda: mongo_db[schema.FUNDING_RATES].find_one(
            {"exchange": "okx"}), timeout_s=10, what="funding once the limit passed")
        assert funding["rate"] == 0.0001875391284828
        assert feed.stats.malformed == 0
    finally:
        await stop(feed, writer, session, tasks, fake)


@pytest.mark.parametrize("ping_s,cut", [(0.3, False), (25.0, True)])
async def test_pings_keep_a_quiet_connection_past_the_idle_cut(mongo_db, ping_s, cut):
    """The strict fake closes a connection that was sent nothing for ``idle_cut_s`` (OKX: 30 s,
    close 4004); the feed's text ping after quiet (25 s; here 0.3 s) gets a pong and keeps it
    open. Without pings in time the cut comes."""
    fake = FakeOkx()
    fake.idle_cut_s = 1.0
    feed, writer, session, tasks = await start(mongo_db, fake, spec=quick_ping(ping_s),
                                               cfg={"idle_timeout_s": 30.0})
    try:
        await all_connected(feed)
        fake.silent = True
        if cut:          # closed by the server (4004) after ~1 s of nothing sent
            await wait_for(lambda: _async(all(c.disconnects >= 1 for c in feed.connections)),
                           timeout_s=5, what="idle cut")
        else:            # 8 pings take > 2 s, twice the cut: each answered, nothing cut
            await wait_for(lambda: _async(sum(t == "ping" for _, t in fake.received) >= 8),
                           what="pings while quiet")
            assert all(c.connects == 1 and c.disconnects == 0 for c in feed.connections)
    finally:
        await stop(feed, writer, session, tasks, fake)


async def test_a_ping_without_pong_reconnects_long_before_the_idle_watchdog(mongo_db):
    """Finding F8: OKX documents "expect pong within N seconds, else reconnect". A socket that
    stops answering (here: the fake no longer answers pings, nothing else arrives) is replaced
    after ping + pong timeout (0.3 + 0.5 s here), not after the 70 s data-idle threshold."""
    fake = FakeOkx()
    feed, writer, session, tasks = await start(mongo_db, fake, spec=quick_ping(0.3, 0.5),
                                               cfg={"idle_timeout_s": 60.0})
    try:
        await all_connected(feed)
        fake.silent = True
        fake.answer_pings = False
        silenced = time.monotonic()
        await wait_for(lambda: _async(all(c.disconnects >= 1 for c in feed.connections)),
                       timeout_s=6, what="reconnect after the missing pong")
        assert time.monotonic() - silenced < 6
        [gap, *_] = [g for g in feed.gaps.recent + list(feed.gaps.open_gaps.values())
                     if g.cause == "disconnect"] or [None]
        assert gap is not None and "after an application ping" in gap.detail
    finally:
        await stop(feed, writer, session, tasks, fake)


def test_connect_interval_is_per_ip_and_books_are_spread_over_connections():
    """Findings F4/F5 (issue 11 item 9): 3 connection attempts per second per IP, shared by the
    partitions on one host; fewer than 30 book channels per connection, one request each."""
    feed = OkxFeed(OkxSettings(), offline_context(Settings(partition="0/3")))
    assert feed.throttle.min_interval_s == pytest.approx(1.2)      # 3 partitions x 0.4 s
    many = [f"SYM{i}-USDT" for i in range(70)]
    feed = OkxFeed(OkxSettings(spot_symbols=many, perp_symbols=[]), offline_context())
    conns = feed.build_connections()
    public = [feed.meta(c) for c in conns if c.url.endswith("/public")]
    assert [len(m.symbols("book")) for m in public] == [28, 28, 14]
    for meta in public:
        [request] = feed.subscribe_requests(meta, list(meta.subscriptions))
        assert len(request) < 64_000
    assert sorted(s for m in public for s in m.symbols("book")) == sorted(many)


async def test_long_gaps_page_history_trades_and_candles(env):
    """Finding F9: a gap longer than one REST page is paged back (``history-trades`` by tradeId,
    ``candles`` then ``history-candles`` by ``after``) until its start, so it is complete, not
    partial, and every fill / closed minute of it is stored."""
    fake, feed, db = env
    inst = "BTC-USDT"
    await wait_for(lambda: _async(len(fake.tape.trades.get(inst, ())) >= 5), what="fills")
    burst = [fake.tape.new(inst) for _ in range(1200)]      # happened, never pushed
    since = ms_to_dt(burst[0]["ts"])
    assert await feed.backfill_trades("spot", inst, since) is True
    history = [r for r in fake.rest_requests if r.startswith("/api/v5/market/history-trades")]
    assert len(history) >= 7 and all("type=1" in r and "after=" in r for r in history)

    async def stored():
        return await db[schema.TRADES].count_documents(
            {"exchange": "okx", "symbol": inst,
             "trade_id": {"$in": [str(t["id"]) for t in burst]}}) == len(burst)
    await wait_for(stored, what="all 1,200 fills of the burst stored")

    emitted = []
    emit = feed.emit
    feed.emit = lambda record, **kw: (isinstance(record, schema.Candle) and emitted.append(record),
                                      emit(record, **kw))[1]
    since = now_utc() - timedelta(hours=30)               # 1,800 minutes > the latest 1,440
    assert await feed.backfill_candles("spot", inst, since) is True
    assert any(r.startswith("/api/v5/market/history-candles") for r in fake.rest_requests)
    start = since.replace(second=0, microsecond=0)
    minutes = sorted({c.ts for c in emitted if c.closed and c.ts >= start})
    # every closed minute from the gap start on, none missing (1,800 +- a minute boundary)
    assert minutes == [start + timedelta(minutes=i) for i in range(len(minutes))]
    assert len(minutes) in (1800, 1801)
