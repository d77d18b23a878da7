"""Units of the loss accounting: the run state file, per-collection drop counters (spool and
writer), ``durable_until``, the db_outage gap's ``lost_by_type``, and flushes under a slow
database. The end-to-end versions are in tests/system/test_faults_db.py."""
from __future__ import annotations

import asyncio
import time

from collector.gaps import GapLedger
from collector.runstate import RunState
from collector.spool import Spool
from collector.writer import Writer
from common import schema
from common.indexes import apply_indexes
from common.schema import Ticker, now_utc
from common.settings import Settings
from tests.integration.test_spool_gaps import FlakyDb, _trade


def _ticker(last: float) -> Ticker:
    ts = now_utc()
    return Ticker("binance", "BTCUSDT", "BTC/USDT", "spot", ts, ts, last=last)


def test_run_state_roundtrip_and_unreadable_file(tmp_path):
    state = RunState(tmp_path)
    assert state.load() is None                          # first start
    saved = {"durable_until": 1796177245.734, "pid": 7,
             "outage": {"id": "*:*:*:mongodb:1", "records_lost": 3,
                        "lost_by_type": {"trades": 3}}}
    state.save(saved)
    assert RunState(tmp_path).load() == saved
    assert not list(tmp_path.glob(".state.json.*"))     # the temp file was renamed over it
    (tmp_path / "state.json").write_text('{"durable_until": ')   # torn (power loss)
    assert RunState(tmp_path).load() is None


def test_spool_counts_dropped_records_per_collection(tmp_path):
    trades = [schema.to_doc(_trade(i)) for i in range(80)]     # ~16 KB into an 8 KB spool
    spool = Spool(tmp_path, max_bytes=8192, segment_bytes=2048)
    spool.append("trades", trades[:10])
    spool.append("market_data", [{"x": i} for i in range(5)])
    for i in range(10, 80, 10):
        spool.append("trades", trades[i:i + 10])
    spool.sync()
    # What is left plus what was dropped is exactly what was appended, per collection.
    left = {"trades": 0, "market_data": 0}
    for seq in list(spool._segments):
        for coll, _ in spool._read(seq):
            left[coll] += 1
    assert spool.dropped == sum(spool.dropped_by.values())
    assert left["trades"] + spool.dropped_by["trades"] == 80
    assert left["market_data"] + spool.dropped_by["market_data"] == 5
    assert spool.dropped_by["trades"] > 0 and spool.dropped_by["market_data"] == 5


async def test_outage_loss_per_collection_counts_from_the_last_good_write(tmp_path, mongo_db):
    await apply_indexes(mongo_db, Settings().retention)
    flaky = FlakyDb(mongo_db)
    writer = Writer(flaky, batch_size=50, queue_max=10,
                    spool=Spool(tmp_path, max_bytes=10 * 2 ** 20, policy="reject"))
    ledger = GapLedger(writer)
    writer.outage_listeners.append(ledger.on_db_availability)
    assert writer.durable_until is None
    before = time.time()
    writer.submit(_trade(0))
    assert await writer.flush() and before <= writer.durable_until <= time.time()
    # A write that hangs lets the queue overflow before it fails: those drops belong to the
    # outage that the failure then declares.
    for i in range(1, 13):
        writer.submit(_trade(i))
    writer.submit(_ticker(1.0))
    writer.submit(_ticker(2.0))
    assert writer.dropped_by == {"trades": 2, "market_data": 2}
    flaky.down = True
    assert not await writer.flush()
    assert ledger.outage_state()["records_lost"] == 4
    assert ledger.outage_state()["lost_by_type"] == {"market_data": 2, "trades": 2}
    flaky.down = False
    assert await writer.flush() and await writer.flush()
    gap = await mongo_db.gaps.find_one({"cause": "db_outage"})
    assert gap["records_lost"] == 4 and gap["lost_by_type"] == {"market_data": 2, "trades": 2}
    assert gap["backfilled"] is False
    stored = sorted([int(d["trade_id"]) async for d in mongo_db.trades.find({})])
    assert stored == list(range(11))                  # 11 and 12 found the queue full
    assert await mongo_db.market_data.count_documents({}) == 0


class SlowTrades:
    """Every trades insert takes 50 ms, and trades keep arriving meanwhile (a slow MongoDB
    under steady load)."""

    def __init__(self, db, writer_ref: list) -> None:
        self.db, self.writer_ref, self.n = db, writer_ref, 1000

    def __getitem__(self, name):
        coll = self.db[name]
        if name != "trades":
            return coll
        outer = self

        class Slow:
            async def insert_many(self, docs, ordered=False):
                await asyncio.sleep(0.05)
                for _ in range(5):
                    outer.n += 1
                    outer.writer_ref[0].submit(_trade(outer.n))
                return await coll.insert_many(docs, ordered=ordered)
        return Slow()


async def test_a_busy_collection_does_not_starve_the_others(mongo_db):
    ref: list = []
    writer = Writer(SlowTrades(mongo_db, ref), batch_size=5)
    ref.append(writer)
    for i in range(20):
        writer.submit(_trade(i))
    writer.submit(_ticker(3.0))
    assert await asyncio.wait_for(writer.flush(), 5)
    assert await mongo_db.market_data.count_documents({"last": 3.0}) == 1
    assert await mongo_db.trades.count_documents({}) == 20    # what was pending at the start
    assert writer.pending == 5                                # arrived during the last write


async def test_drops_while_the_database_answers_are_an_overflow_gap(mongo_db):
    writer = Writer(mongo_db, batch_size=50, queue_max=10)
    ledger = GapLedger(writer)
    writer.outage_listeners.append(ledger.on_db_availability)
    writer.flush_listeners.append(ledger.on_flush)
    writer.submit(_trade(0))
    assert await writer.flush()
    for i in range(1, 13):
        writer.submit(_trade(i))
    writer.submit(_ticker(1.0))
    assert await writer.flush()             # the drops are recorded after this flush
    assert await writer.flush()             # ... and the gap written by the next one
    gaps = await mongo_db.gaps.find({}).to_list(None)
    assert [(g["cause"], g["stream"], g["records_lost"], g["lost_by_type"], g["backfilled"])
            for g in gaps] == [("overflow", "writer", 3, {"market_data": 1, "trades": 2}, False)]
    assert gaps[0]["end"] is not None and gaps[0]["start"] <= gaps[0]["end"]
    assert await writer.flush() and await mongo_db.gaps.count_documents({}) == 1
