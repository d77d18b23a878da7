"""Connection-level faults on the real Binance feed against the fake: drop, garbage, trade-id
hole, make-before-break rotation. Each records its figure (tests/support/faultlog.py)."""
from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp
import pytest

from collector.exchanges.base import FeedContext
from collector.exchanges.binance.feed import BinanceFeed
from collector.gaps import GapLedger
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


@contextlib.asynccontextmanager
async def running_feed(fake, db, **cfg_kw):
    base, ws = f"http://127.0.0.1:{fake.port}", f"ws://127.0.0.1:{fake.port}"
    cfg = BinanceSettings(spot_ws_url=ws, perp_ws_url=ws, spot_rest_url=base, perp_rest_url=base,
                          spot_symbols=["BTCUSDT", "BTCUSDC"], **cfg_kw)
    settings = Settings(binance=cfg, book_snapshot_interval_s=0.2, liquidity_interval_s=0.3)
    await apply_indexes(db, settings.retention)
    writer = Writer(db, batch_size=200, flush_interval_s=0.1)
    ledger = GapLedger(writer)
    async with aiohttp.ClientSession() as session:
        feed = BinanceFeed(cfg, FeedContext(settings, writer, Stats(), session, 0.5, ledger))
        tasks = [asyncio.create_task(feed.run()), asyncio.create_task(writer.run())]
        try:
            yield feed, writer
        finally:
            await feed.stop()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await writer.close()


async def _stored_ids(db, market: str, symbol: str) -> set[str]:
    return {d["trade_id"] async for d in db[schema.TRADES].find(
        {"market": market, "symbol": symbol}, {"trade_id": 1})}


async def _missing(db, fake, market: str, symbol: str, upto: int) -> list[str]:
    """Trades the fake generated (its first ``upto``), from the first stored one on, that are
    not in the DB (generated, not only sent: the backfill must fetch what was never pushed)."""
    stored = await _stored_ids(db, market, symbol)
    made = fake.trades_made[(market, symbol)][:upto]
    first = min(int(i) for i in stored)
    return [i for i in made if int(i) >= first and i not in stored]


async def _unstored(db, fake, start: dict, upto: dict) -> int:
    """Trades the fake sent between two cuts (``len(fake.trades_sent[k])`` snapshots) that are
    not in the DB."""
    n = 0
    for key, end in upto.items():
        stored = await _stored_ids(db, *key)
        n += sum(1 for i in fake.trades_sent[key][start.get(key, 0):end] if i not in stored)
    return n


async def _sent_but_lost(db, fake, start: dict) -> int:
    """Trades sent since ``start`` (up to now) that are not stored once the last of them had
    time to arrive and be flushed."""
    upto = {k: len(fake.trades_sent[k]) for k in start}

    async def none_missing():
        return await _unstored(db, fake, start, upto) == 0
    try:
        await wait_for(none_missing, timeout_s=5, what="sent trades stored")
    except AssertionError:
        pass                        # counted by the caller, then asserted
    return await _unstored(db, fake, start, upto)


async def _count(feed, coll=schema.TRADES):
    return feed.stats.records[coll]


async def test_drop_reconnects_and_backfills_what_was_missed(fake, mongo_db):
    async with running_feed(fake, mongo_db) as (feed, writer):
        await wait_for(lambda: _synced(feed, ("spot", "BTCUSDT"), ("perp", "BTCUSDT")),
                       what="books synced")
        await wait_for(lambda: _value(all(c.connected.is_set() for c in feed.connections)),
                       what="all three connections up")
        await fake.drop_connections()
        dropped_at = time.monotonic()
        cut = {k: len(v) for k, v in fake.trades_made.items()}
        before = feed.stats.records[schema.TRADES]
        await wait_for(lambda: _value(feed.stats.records[schema.TRADES] > before + 5),
                       what="trades again")
        data_s = time.monotonic() - dropped_at
        await wait_for(lambda: _synced(feed, ("spot", "BTCUSDT"), ("spot", "BTCUSDC"),
                                       ("perp", "BTCUSDT")), what="books resynced")
        books_s = time.monotonic() - dropped_at
        await wait_for(lambda: _value(sum(g.backfilled for g in feed.gaps.recent) >= 2),
                       timeout_s=10, what="gaps backfilled")
        upto = {k: n + 20 for k, n in cut.items()}
        await asyncio.sleep(0.5)
        assert await writer.flush()
        lost = 0
        for market, symbol in (("spot", "BTCUSDT"), ("spot", "BTCUSDC"), ("perp", "BTCUSDT")):
            lost += len(await _missing(mongo_db, fake, market, symbol, upto[(market, symbol)]))
        gaps = [g for g in feed.gaps.recent if g.cause == "disconnect"]
        assert len(gaps) == 3 and all(g.end is not None for g in gaps)
        report("drop", expected="reconnect, books resync, a disconnect gap per connection, "
               "trades backfilled", recovery_s=data_s, records_lost=lost,
               books_resynced_s=books_s, gaps_recorded=len(gaps),
               backfilled=sum(g.backfilled for g in gaps))
        assert lost == 0
        stored = await mongo_db[schema.GAPS].count_documents({"cause": "disconnect"})
        assert stored == 3


async def test_garbage_does_not_disconnect_or_stop_other_data(fake, mongo_db):
    async with running_feed(fake, mongo_db) as (feed, _):
        await wait_for(lambda: _value(feed.stats.records[schema.TRADES] > 10), what="trades")
        reconnects = feed.stats.reconnects
        start = {k: len(v) for k, v in fake.trades_sent.items()}
        started = time.monotonic()
        for junk in ("\x00\xff garbage", "[]", "{}", '{"data": 5}', "null", '"x"',
                     '{"stream":"x","data":{"e":"depthUpdate","s":"BTCUSDT","U":"a"}}'):
            await fake.send_raw(junk)
        before = feed.stats.records[schema.TRADES]
        await wait_for(lambda: _value(feed.stats.records[schema.TRADES] > before + 10),
                       what="trades keep flowing")
        continues_s = time.monotonic() - started
        # Every trade sent around the garbage is stored.
        lost = await _sent_but_lost(mongo_db, fake, start)
        report("garbage", expected="each message skipped and counted as malformed; no "
               "reconnect, other data unaffected", recovery_s=continues_s, records_lost=lost,
               malformed=feed.stats.malformed, reconnects=feed.stats.reconnects - reconnects)
        assert feed.stats.reconnects == reconnects and feed.stats.malformed >= 5
        assert lost == 0


async def test_trade_id_hole_is_a_gap_and_is_backfilled(fake, mongo_db):
    async with running_feed(fake, mongo_db) as (feed, writer):
        await wait_for(lambda: _value(feed.stats.records[schema.TRADES] > 10), what="trades")
        other_before = {("spot", "BTCUSDC"): len(fake.trades_sent[("spot", "BTCUSDC")])}
        fake.lose_trades("spot", "BTCUSDT", 7)
        started = time.monotonic()

        async def hole_backfilled():
            return any(g.cause == "sequence_gap" and g.stream == "trade" and g.backfilled
                       for g in feed.gaps.recent)
        await wait_for(hole_backfilled, timeout_s=10, what="hole backfilled")
        backfill_s = time.monotonic() - started
        gap = next(g for g in feed.gaps.recent if g.stream == "trade")
        first, last = gap.extra["missing_ids"]
        assert last - first + 1 == 7
        await wait_for(lambda: _writer_flushed(writer), what="flushed")
        stored = await _stored_ids(mongo_db, "spot", "BTCUSDT")
        missing = [i for i in range(first, last + 1) if str(i) not in stored]
        # Other symbols unaffected: no gap, and every trade sent meanwhile is stored.
        other_lost = await _sent_but_lost(mongo_db, fake, other_before)
        other_gaps = [g for g in feed.gaps.recent if g.symbol != "BTCUSDT"]
        report("trade_id_hole", expected="sequence gap in the ledger, backfilled over REST; "
               "other symbols unaffected", recovery_s=backfill_s,
               records_lost=len(missing) + other_lost, hole=7, other_symbol_gaps=len(other_gaps))
        assert not missing and not other_gaps and other_lost == 0


async def test_make_before_break_rotation_loses_nothing(fake, mongo_db):
    async with running_feed(fake, mongo_db, rotate_after_s=1.5) as (feed, writer):
        await wait_for(lambda: _value(feed.rotations >= 3), timeout_s=15, what="rotations")
        await wait_for(lambda: _value(feed.rotations >= 6), timeout_s=15, what="second round")
        upto = len(fake.trades_made[("spot", "BTCUSDT")])
        await asyncio.sleep(0.3)
        assert await writer.flush()
        lost = len(await _missing(mongo_db, fake, "spot", "BTCUSDT", upto))
        report("rotation", expected="make-before-break: no disconnect, no gap, overlap "
               "deduplicated", records_lost=lost, rotations=feed.rotations,
               disconnect_gaps=feed.stats.reconnects, duplicates_rejected=writer.duplicates)
        assert feed.stats.reconnects == 0 and not feed.gaps.recent and lost == 0
        # Three connections (a rotation may be in flight: its replacement shares the label).
        assert len({conn.name for conn in feed.connections}) == 3


async def _writer_flushed(writer):
    return await writer.flush() and writer.pending == 0


async def _value(result):
    return result


def _synced(feed, *keys):
    async def check():
        return all(k in feed.books and feed.books[k].synced for k in keys)
    return check()
