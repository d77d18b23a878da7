"""MongoDB faults nobody sees in a unit test, on the real ``python -m collector`` against the fake
Binance and a private nx-27017 (fixtures of tests/system/test_faults_process.py): a hanging database
(SIGSTOP: socket open, no answers); the collector SIGKILLed during an outage (hanging or refused)
then restarted while the database is still away; the writer's loss paths (``queue_max`` during a
hang, spool full under ``drop_oldest`` and ``reject``); a slow database (every packet delayed by
tests/support/latency_proxy.py) at twice the usual rate, with and without a small ``queue_max``. Each
test counts loss end to end (what the fake sent or made vs. what is stored, per record type it
can prove) and checks that the gap ledger and the writer's counters say the same; each records
its figure in the fault table (tests/support/faultlog.py)."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from common import schema
from tests.support.faultlog import report
from tests.support.helpers import wait_for
from tests.support.latency_proxy import LatencyProxy
from tests.system.test_faults_process import (  # noqa: F401 - fixtures
    SUBSCRIBED,
    Nx,
    _ids,
    _made,
    _stored,
    _value,
    collector_factory,
    db,
    fake,
    nx,
)

SPOT_TRADES = "/api/v3/trades"


class DbOutage:
    """``hang``: nx-27017 stopped with SIGSTOP (connections stay open, nothing answers);
    ``refused``: nx-27017 terminated (connections refused), restarted on the same data."""

    def __init__(self, nx: Nx, kind: str) -> None:
        self.nx, self.kind = nx, kind
        self.active = False

    def begin(self) -> None:
        if self.kind == "hang":
            os.kill(self.nx.proc.pid, signal.SIGSTOP)
        else:
            self.nx.stop()
        self.active = True

    def end(self) -> None:
        if not self.active:
            return
        if self.kind == "hang":
            os.kill(self.nx.proc.pid, signal.SIGCONT)
        else:
            self.nx.start()
        self.active = False


def _spooled_bytes(spool_dir: Path) -> int:
    return sum(p.stat().st_size for p in spool_dir.glob("*.bson"))


async def _first_ids(db) -> dict[tuple[str, str], int]:
    """Per subscribed stream, the first trade id stored (the count starts there)."""
    firsts = {}
    for key in sorted(SUBSCRIBED):
        async def stored(key=key):
            return await _ids(db, *key)
        firsts[key] = min(await wait_for(stored, timeout_s=30, what=f"first {key} trades"))
    return firsts


async def _more_trades(fake, n: int) -> None:
    """Wait until the fake has made ``n`` more spot BTCUSDT trades (its clock, not ours)."""
    mark = int(_made(fake, "spot", "BTCUSDT")[-1])
    await wait_for(lambda: _value(int(_made(fake, "spot", "BTCUSDT")[-1]) >= mark + n),
                   timeout_s=30, what=f"{n} more trades")


async def _missing(db, fake, firsts: dict, last: dict) -> dict[tuple[str, str], list[int]]:
    """Per stream: trades the fake made (pushed or not) from the first stored one to ``last``
    that are not stored."""
    out = {}
    for key, first in firsts.items():
        stored = await _ids(db, *key)
        out[key] = [int(i) for i in fake.trades_made[key]
                    if first <= int(i) <= last[key] and int(i) not in stored]
    return out


@pytest.mark.parametrize("kind", ["hang", "refused"])
async def test_kill9_during_db_outage_then_restart_loses_nothing(kind, fake, nx, db,
                                                                 collector_factory, tmp_path):
    spool_dir = tmp_path / "spool"
    proc = collector_factory()
    proc.start()
    firsts = await _first_ids(db)
    await wait_for(lambda: _value((spool_dir / "state.json").exists()), what="run state written")
    outage = DbOutage(nx, kind)
    outage.begin()
    began = time.monotonic()
    try:
        # The collector noticed (a hang: once the write times out) and spools.
        await wait_for(lambda: _value(_spooled_bytes(spool_dir) > 0), timeout_s=40,
                       what="spooling")
        detected_s = time.monotonic() - began
        await _more_trades(fake, 50)                 # ~1 s spooled by the first process
        proc.signal(signal.SIGKILL)
        proc.wait()
        killed_at = time.monotonic()
        await _more_trades(fake, 50)                 # ~1 s with no collector at all
        backfills = fake.rest_requests[SPOT_TRADES]
        proc.start()
        restarted_at = time.monotonic()
        # The restart gap is opened and backfilled with MongoDB still away (into the spool).
        await wait_for(lambda: _value(fake.rest_requests[SPOT_TRADES] > backfills),
                       timeout_s=30, what="restart backfill while MongoDB is away")
        backfill_s = time.monotonic() - restarted_at
        await _more_trades(fake, 50)
    finally:
        outage.end()
    resumed = time.monotonic()
    last = {k: int(_made(fake, *k)[-1]) for k in SUBSCRIBED}

    async def complete():
        return not any((await _missing(db, fake, firsts, last)).values())
    try:
        await wait_for(complete, timeout_s=60, interval_s=0.25, what="every trade stored")
    except AssertionError:
        pass                        # reported below, then asserted
    recovery_s = time.monotonic() - resumed
    missing = await _missing(db, fake, firsts, last)
    lost = sum(len(v) for v in missing.values())
    made = sum(1 for k, first in firsts.items() for i in fake.trades_made[k]
               if first <= int(i) <= last[k])
    duplicates = sum(n - 1 for n in (await _stored(db)).values())

    async def ledger_closed():
        gaps = await db[schema.GAPS].find({}).to_list(None)
        return gaps if gaps and not any(g["end"] is None for g in gaps) else None
    try:
        gaps = await wait_for(ledger_closed, timeout_s=30, what="every gap closed")
    except AssertionError:
        gaps = await db[schema.GAPS].find({}).to_list(None)
    restart = [g for g in gaps if g["cause"] == "restart"]
    outages = sorted((g for g in gaps if g["cause"] == "db_outage"), key=lambda g: g["start"])
    ledger_lost = sum(int(g.get("records_lost") or 0) for g in gaps)
    report(f"kill9_during_db_{kind}", expected="collector SIGKILLed during a MongoDB outage "
           f"({kind}), restarted while it is still away: restart gap from the run state file, "
           "backfilled into the spool; every trade stored once; the ledger agrees",
           recovery_s=recovery_s, records_lost=lost, trades_made=made, stored=made - lost,
           duplicates=duplicates, ledger_lost=ledger_lost, detect_s=detected_s,
           down_s=restarted_at - killed_at, backfill_after_s=backfill_s,
           outage_s=resumed - began,
           restart_gap_s=restart[0]["duration_s"] if restart else None,
           restart_backfilled=bool(restart and restart[0]["backfilled"]))
    assert lost == 0, ({k: (len(v), v[:3], v[-3:], fake.trade_rows[k][str(v[0])][2],
                            fake.trade_rows[k][str(v[-1])][2]) for k, v in missing.items() if v},
                       restart, outages)
    assert duplicates == 0
    assert ledger_lost == lost
    assert len(restart) == 1 and restart[0]["backfilled"] is True and restart[0]["end"], gaps
    # The killed process's outage gap (replayed from its spool), closed by its successor where
    # its data was last durable, with nothing lost; then the successor's own, if it saw any (a
    # refused database may be back before its first write gives up, or flap once more).
    assert outages, gaps
    assert outages[0]["end"] == restart[0]["start"], (outages[0], restart[0])
    assert all(g["records_lost"] == 0 and g["backfilled"] is True for g in outages), outages
    assert all(g["end"] is not None for g in gaps), [g for g in gaps if g["end"] is None]
    proc.signal(signal.SIGTERM)
    assert proc.wait(30) == 0


# Fake event -> the collection that stores one document per event (by event time).
PER_EVENT = {"24hrTicker": schema.MARKET_DATA, "openInterest": schema.OPEN_INTEREST}
# Collections whose loss the fake proves document by document (the ledger counts documents).
ONE_PER_EVENT = (schema.TRADES, *PER_EVENT.values())
TYPE_NAMES = {schema.TRADES: "trades", schema.MARKET_DATA: "tickers",
              schema.OPEN_INTEREST: "open_interest", schema.OHLCV: "candles"}


def _sent_cut(fake) -> tuple[dict, dict]:
    """How many trades / other events the fake has sent so far, per stream."""
    return ({k: len(v) for k, v in fake.trades_sent.items()},
            {k: len(v) for k, v in fake.events_sent.items()})


async def _window_loss(db, fake, start: tuple[dict, dict], end: tuple[dict, dict]) -> dict:
    """Sent between two cuts, stored, lost (= sent - stored), per record type the fake can
    prove: trades by id, tickers and open interest by event time (one document each), candles
    by open time (a candle is lost only if none of its updates was stored)."""
    out = {}
    sent = stored = 0
    for key, upto in end[0].items():
        ids = fake.trades_sent[key][start[0].get(key, 0):upto]
        sent += len(ids)
        stored += len({d["trade_id"] async for d in db[schema.TRADES].find(
            {"market": key[0], "symbol": key[1], "trade_id": {"$in": ids}}, {"trade_id": 1})})
    out[schema.TRADES] = (sent, stored, sent - stored)
    for event, coll in (*PER_EVENT.items(), ("kline", schema.OHLCV)):
        sent = stored = 0
        for key, upto in end[1].items():
            if key[2] != event:
                continue
            times = fake.events_sent[key][start[1].get(key, 0):upto]
            if event == "kline":
                times = sorted({ms - ms % 60_000 for ms in times})
            times = [schema.s_to_dt(ms / 1000) for ms in times]
            sent += len(times)
            stored += len({d["ts"] async for d in db[coll].find(
                {"market": key[0], "symbol": key[1], "ts": {"$in": times}}, {"ts": 1})})
        out[coll] = (sent, stored, sent - stored)
    return out


async def _caught_up(db, fake, end: tuple[dict, dict]) -> bool:
    """Everything sent before the cut ``end`` has been handled once what was sent after it
    (trades on each stream, the next open-interest answer) is stored."""
    for key, upto in end[0].items():
        after = fake.trades_sent[key][upto:upto + 5]
        if len(after) < 5 or await db[schema.TRADES].count_documents(
                {"market": key[0], "symbol": key[1], "trade_id": {"$in": after}}) < 5:
            return False
    for key, upto in end[1].items():
        if key[2] == "openInterest":
            after = fake.events_sent[key][upto:upto + 1]
            if not after or not await db[schema.OPEN_INTEREST].count_documents(
                    {"symbol": key[1], "ts": schema.s_to_dt(after[0] / 1000)}):
                return False
    return True


# name: (outage, extra collector environment, more spot trades made during the outage).
LOSS_PATHS = {
    "db_hang": ("hang", {}, 100),
    "queue_max_in_hang": ("hang", {"CRYPTODATA_QUEUE_MAX": "500"}, 100),
    "spool_full_drop_oldest": ("refused", {"CRYPTODATA_SPOOL_MAX_MB": "0.1",
                                           "CRYPTODATA_SPOOL_FULL_POLICY": "drop_oldest"}, 400),
    "spool_full_reject": ("refused", {"CRYPTODATA_SPOOL_MAX_MB": "0.1",
                                      "CRYPTODATA_SPOOL_FULL_POLICY": "reject",
                                      "CRYPTODATA_QUEUE_MAX": "500"}, 400),
}


@pytest.mark.parametrize("path", list(LOSS_PATHS))
async def test_db_outage_loss_is_counted_end_to_end(path, fake, nx, db, collector_factory,
                                                     tmp_path):
    """Every loss path of the writer, end to end: what the fake sent during an outage, what
    is stored after it, and the ``db_outage`` gap's ``records_lost`` / ``lost_by_type`` and the
    status document's drop counters must all tell the same story."""
    kind, env, outage_trades = LOSS_PATHS[path]
    spool_dir = tmp_path / "spool"
    # Open interest is REST-polled: every 0.5 s here, so an outage holds a countable number.
    proc = collector_factory(CRYPTODATA_POLL_INTERVAL_S="0.5", **env)
    proc.start()
    await _first_ids(db)
    # From the first message on: documents pending when the outage began were sent before it.
    start: tuple[dict, dict] = ({}, {})
    outage = DbOutage(nx, kind)
    outage.begin()
    began = time.monotonic()
    try:
        await wait_for(lambda: _value(_spooled_bytes(spool_dir) > 0), timeout_s=40,
                       what="spooling")
        await _more_trades(fake, outage_trades)
    finally:
        outage.end()
    resumed = time.monotonic()

    async def outage_closed():
        return await db[schema.GAPS].find_one({"cause": "db_outage", "end": {"$ne": None}})
    gap = await wait_for(outage_closed, timeout_s=60, interval_s=0.25, what="db_outage closed")
    recovery_s = time.monotonic() - resumed
    end = _sent_cut(fake)

    await wait_for(lambda: _caught_up(db, fake, end), timeout_s=30, interval_s=0.25,
                   what="trades after the outage")
    loss = await _window_loss(db, fake, start, end)

    async def fresh_status():
        # Built after the outage ended (a status write issued during it may land late, stale).
        doc = await db[schema.STATUS].find_one({"_id": "collector"})
        return doc if doc and doc["updated_at"] > gap["end"] else None
    writer = (await wait_for(fresh_status, timeout_s=10, what="status after the outage"))["writer"]
    metrics_lost = writer["dropped"] + writer["spool"]["dropped"]
    by_type = gap.get("lost_by_type", {})
    lost = sum(loss[c][2] for c in ONE_PER_EVENT)
    report(path, expected=f"MongoDB {kind} outage under "
           f"{' '.join(f'{k}={v}' for k, v in env.items()) or 'default settings'}: "
           "lost = sent - stored for trades, tickers and open interest, and the db_outage gap "
           "and the writer/spool counters say the same", recovery_s=recovery_s,
           records_lost=lost, outage_s=resumed - began,
           **{f"{name}_sent/stored/lost": "/".join(map(str, loss[c]))
              for c, name in TYPE_NAMES.items()},
           ledger_lost=gap.get("records_lost"), metrics_lost=metrics_lost,
           ledger_by_type=",".join(f"{c}:{n}" for c, n in by_type.items()),
           gap_backfilled=gap["backfilled"])
    for coll in ONE_PER_EVENT:
        assert by_type.get(coll, 0) == loss[coll][2], (coll, by_type, loss)
    # The ledger counts candle updates; a candle (open time) is lost only if all its updates
    # were, which takes an outage longer than a minute.
    assert loss[schema.OHLCV][2] == 0, loss
    assert gap["records_lost"] == sum(by_type.values()) == metrics_lost, (gap, writer)
    assert gap["backfilled"] is (metrics_lost == 0)
    if path == "db_hang":
        assert lost == 0 and metrics_lost == 0
    else:
        assert loss[schema.TRADES][2] > 0, "the loss path was not exercised"
    proc.signal(signal.SIGTERM)
    assert proc.wait(30) == 0


SLOW_MS = 100          # added each way: every MongoDB round trip takes 200 ms longer


async def test_slow_mongodb_at_double_ingest_loses_nothing(fake, nx, db, collector_factory):
    """MongoDB answers, but every packet is delayed (a TCP proxy), at twice the fake's usual
    trade rate: the writer's batches absorb the latency; nothing is dropped or lost."""
    fake.tick_s /= 2
    proxy = LatencyProxy(nx.port, SLOW_MS / 1000)
    port = await proxy.start()
    try:
        proc = collector_factory(MONGODB_URI=f"mongodb://127.0.0.1:{port}",
                                 CRYPTODATA_POLL_INTERVAL_S="0.5")
        proc.start()
        await _first_ids(db)
        began = time.monotonic()
        await _more_trades(fake, 1000)              # 10 s of the fake's clock at 2x
        end = _sent_cut(fake)
        cut_at = time.monotonic()
        await wait_for(lambda: _caught_up(db, fake, end), timeout_s=30, interval_s=0.1,
                       what="trades sent before the cut stored")
        catch_up_s = time.monotonic() - cut_at
        loss = await _window_loss(db, fake, ({}, {}), end)
        status = await db[schema.STATUS].find_one({"_id": "collector"})
        writer = status["writer"]
        outages = await db[schema.GAPS].count_documents({"cause": "db_outage"})
        duplicates = sum(n - 1 for n in (await _stored(db)).values())
        lost = sum(loss[c][2] for c in ONE_PER_EVENT) + loss[schema.OHLCV][2]
        report("slow_mongodb_2x", expected=f"every MongoDB packet delayed {SLOW_MS} ms each way, "
               "2x the usual trade rate: batches absorb it, nothing dropped, no outage",
               recovery_s=None, records_lost=lost, run_s=cut_at - began,
               **{f"{name}_sent/stored/lost": "/".join(map(str, loss[c]))
                  for c, name in TYPE_NAMES.items()}, duplicates=duplicates,
               metrics_lost=writer["dropped"] + writer["spool"]["dropped"],
               db_outage_gaps=outages, last_write_ms=round(writer["last_write_ms"]),
               stored_lag_s=catch_up_s, proxied_chunks=proxy.chunks)
        assert lost == 0 and duplicates == 0, loss
        assert all(loss[c][0] for c in TYPE_NAMES), loss        # each type was exercised
        assert writer["dropped"] == 0 and writer["spool"]["dropped"] == 0 and outages == 0
        assert proxy.chunks > 0 and writer["last_write_ms"] >= 2 * SLOW_MS
        proc.signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        await proxy.stop()


async def test_slow_mongodb_over_queue_max_is_an_overflow_gap(fake, nx, db, collector_factory):
    """The same slow MongoDB with a small ``queue_max``: documents are dropped although the
    database never fails; each drop is in an ``overflow`` gap, and lost = sent - stored."""
    fake.tick_s /= 2
    proxy = LatencyProxy(nx.port, SLOW_MS / 1000)
    port = await proxy.start()
    try:
        proc = collector_factory(MONGODB_URI=f"mongodb://127.0.0.1:{port}",
                                 CRYPTODATA_POLL_INTERVAL_S="0.5", CRYPTODATA_QUEUE_MAX="300")
        proc.start()
        await _first_ids(db)
        began = time.monotonic()
        await _more_trades(fake, 500)               # 5 s of the fake's clock at 2x
        fake.stall()                                 # the overload ends; REST still answers
        stalled_at = time.monotonic()

        async def settled():
            # Nothing pending, and every drop in an overflow gap (the gaps are written one
            # flush after the drops are seen).
            status = await db[schema.STATUS].find_one({"_id": "collector"})
            gaps = await db[schema.GAPS].find({"cause": "overflow"}).to_list(None)
            w = status["writer"]
            ok = (status["updated_at"].timestamp() > time.time() - 2 and w["pending"] == 0
                  and w["dropped"] == sum(g["records_lost"] for g in gaps))
            return (w, gaps) if ok else None
        writer, gaps = await wait_for(settled, timeout_s=60, interval_s=0.25,
                                      what="drops settled into overflow gaps")
        settle_s = time.monotonic() - stalled_at
        end = _sent_cut(fake)
        oi = [k for k in end[1] if k[2] == "openInterest"]

        async def last_oi_stored():
            for key in oi:
                last = fake.events_sent[key][end[1][key] - 1]
                if not await db[schema.OPEN_INTEREST].count_documents(
                        {"symbol": key[1], "ts": schema.s_to_dt(last / 1000)}):
                    return False
            return True
        await wait_for(last_oi_stored, timeout_s=10, what="open interest after the overload")
        loss = await _window_loss(db, fake, ({}, {}), end)
        by_type: dict[str, int] = {}
        for gap in gaps:
            for coll, n in gap["lost_by_type"].items():
                by_type[coll] = by_type.get(coll, 0) + n
        lost = sum(loss[c][2] for c in ONE_PER_EVENT)
        outages = await db[schema.GAPS].count_documents({"cause": "db_outage"})
        report("slow_mongodb_queue_max", expected=f"MongoDB {SLOW_MS} ms slower each way, 2x "
               "rate, queue_max=300: documents dropped without an outage; every drop in an "
               "overflow gap, lost = sent - stored per type", recovery_s=settle_s,
               records_lost=lost, run_s=stalled_at - began,
               **{f"{name}_sent/stored/lost": "/".join(map(str, loss[c]))
                  for c, name in TYPE_NAMES.items()},
               overflow_gaps=len(gaps), ledger_lost=sum(by_type.values()),
               metrics_lost=writer["dropped"] + writer["spool"]["dropped"],
               ledger_by_type=",".join(f"{c}:{n}" for c, n in sorted(by_type.items())),
               db_outage_gaps=outages)
        for coll in ONE_PER_EVENT:
            assert by_type.get(coll, 0) == loss[coll][2], (coll, by_type, loss)
        assert sum(by_type.values()) == writer["dropped"] and writer["spool"]["dropped"] == 0
        assert outages == 0 and loss[schema.TRADES][2] > 0, "the loss path was not exercised"
        proc.signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        await proxy.stop()


async def test_kill9_beyond_rest_reach_ledger_states_exact_loss(fake, nx, db, collector_factory):
    """Down for more trades than the backfill may fetch (its page budget, one page of 1,000 trades
    here): the restart gap cannot be backfilled, and states exactly how many spot trades it lost
    (consecutive ids); perp aggregate trades are listed as unknown."""
    proc = collector_factory(CRYPTODATA_BINANCE__BACKFILL_MAX_PAGES="1")
    proc.start()
    firsts = await _first_ids(db)
    await _more_trades(fake, 25)                    # the state file holds a durable point
    proc.signal(signal.SIGKILL)
    proc.wait()
    fake.tick_s /= 10                               # a burst: 1,500 trades per symbol
    await _more_trades(fake, 1500)
    fake.tick_s *= 10
    restarted = proc.start()

    async def counted():
        return await db[schema.GAPS].find_one({"cause": "restart",
                                                "records_lost": {"$exists": True}})
    gap = await wait_for(counted, timeout_s=60, interval_s=0.25, what="restart gap loss counted")
    recovery_s = time.monotonic() - restarted
    last = {k: int(_made(fake, *k)[-1]) for k in SUBSCRIBED}
    cut = (_sent_cut(fake)[0], {})
    await wait_for(lambda: _caught_up(db, fake, cut), timeout_s=30,
                   what="trades after the restart stored")
    missing = await _missing(db, fake, firsts, last)
    spot = {f"{m}:{s}": len(v) for (m, s), v in missing.items() if m == "spot"}
    report("kill9_beyond_rest", expected="down for more trades than the backfill's page budget "
           "(1 page here): the restart gap is not backfilled and states the exact loss per spot "
           "stream",
           recovery_s=recovery_s, records_lost=sum(spot.values()),
           ledger_lost=gap["records_lost"],
           **{f"missing_{k}": v for k, v in sorted(spot.items())},
           **{f"ledger_{k}": v for k, v in sorted(gap["lost_by_stream"].items())},
           loss_unknown=",".join(gap.get("loss_unknown", [])),
           perp_missing=len(missing[("perp", "BTCUSDT")]), backfilled=gap["backfilled"])
    assert gap["backfilled"] is False
    assert gap["lost_by_stream"] == spot and gap["records_lost"] == sum(spot.values()), (
        gap, spot)
    assert all(v > 0 for v in spot.values()), spot
    assert gap["loss_unknown"] == ["perp:BTCUSDT"]
    proc.signal(signal.SIGTERM)
    assert proc.wait(30) == 0
