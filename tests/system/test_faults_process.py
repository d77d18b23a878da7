"""Process-level faults: ``python -m collector`` as a subprocess against the in-process fake
Binance and a private nx-27017 (its own data dir and port, so it can be stopped and restarted).

Each test records its figure with tests.support.faultlog.report (a table at the end of the pytest
output). Parameters (environment):

- ``CRYPTODATA_FAULT_OUTAGE_S``  MongoDB outage length, default 60 s (set e.g. 15 for a quick
  local run).
- ``CRYPTODATA_FAULT_SOAK_S``    soak duration (tests/support/soak.py), default 30 s; CI runs 600.
"""
from __future__ import annotations

import asyncio
import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from pymongo import AsyncMongoClient

from common import schema
from tests.conftest import ROOT, start_nx
from tests.support.fakes.binance import FakeBinance
from tests.support.faultlog import report
from tests.support.helpers import free_port, wait_for
from tests.support.soak import SOAK_S

OUTAGE_S = float(os.environ.get("CRYPTODATA_FAULT_OUTAGE_S", "60"))
SUBSCRIBED = {("spot", "BTCUSDT"), ("spot", "BTCUSDC"), ("perp", "BTCUSDT")}
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _cut(fake) -> dict[tuple[str, str], int]:
    """Per subscribed stream: how many trades the fake has sent so far."""
    return {k: len(fake.trades_sent.get(k, [])) for k in SUBSCRIBED}


def _ms_to_dt(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


class Nx:
    """A private MongoDB-compatible server that tests may stop and restart on the same data."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="cryptodata-fault-nx-")
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = start_nx(self.dir, self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
async def fake():
    server = FakeBinance()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def nx():
    server = Nx()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
async def db(nx):
    client = AsyncMongoClient(nx.uri, tz_aware=True, serverSelectionTimeoutMS=3000)
    yield client["faults"]
    await client.close()


class CollectorProc:
    def __init__(self, fake: FakeBinance, nx: Nx, spool_dir: str, **env) -> None:
        base, ws = f"http://127.0.0.1:{fake.port}", f"ws://127.0.0.1:{fake.port}"
        self.env = {**os.environ, "MONGODB_URI": nx.uri, "CRYPTODATA_MONGODB_DB": "faults",
                    "CRYPTODATA_CONFIG_FILE": "/dev/null",
                    "CRYPTODATA_EXCHANGES": '["binance"]',
                    "CRYPTODATA_BINANCE__SPOT_SYMBOLS": '["BTCUSDT","BTCUSDC"]',
                    "CRYPTODATA_BINANCE__PERP_SYMBOLS": '["BTCUSDT"]',
                    "CRYPTODATA_BINANCE__SPOT_WS_URL": ws, "CRYPTODATA_BINANCE__PERP_WS_URL": ws,
                    "CRYPTODATA_BINANCE__SPOT_REST_URL": base,
                    "CRYPTODATA_BINANCE__PERP_REST_URL": base,
                    "CRYPTODATA_SPOOL_DIR": spool_dir, "CRYPTODATA_FLUSH_INTERVAL_S": "0.2",
                    "CRYPTODATA_STATUS_INTERVAL_S": "1", "CRYPTODATA_LOG_LEVEL": "WARNING",
                    "PYTHONUNBUFFERED": "1", **env}
        self.proc: subprocess.Popen | None = None
        self.log = open(os.path.join(spool_dir + ".log"), "ab")

    def start(self) -> float:
        self.proc = subprocess.Popen([sys.executable, "-m", "collector"], cwd=str(ROOT),
                                     env=self.env, stdout=self.log, stderr=self.log)
        return time.monotonic()

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def collector_factory(fake, nx, tmp_path):
    procs: list[CollectorProc] = []

    def make(**env) -> CollectorProc:
        proc = CollectorProc(fake, nx, str(tmp_path / "spool"), **env)
        procs.append(proc)
        return proc
    yield make
    for proc in procs:
        proc.close()


async def _trade_count(db, **query) -> int:
    return await db[schema.TRADES].count_documents(query)


async def _ids(db, market: str, symbol: str) -> set[int]:
    return {int(d["trade_id"]) async for d in db[schema.TRADES].find(
        {"market": market, "symbol": symbol}, {"trade_id": 1})}


async def _stored(db) -> collections.Counter:
    """(market, symbol, trade_id) -> number of documents (more than 1 = duplicate)."""
    seen: collections.Counter = collections.Counter()
    async for d in db[schema.TRADES].find({}, {"market": 1, "symbol": 1, "trade_id": 1}):
        seen[(d["market"], d["symbol"], d["trade_id"])] += 1
    return seen


def _made(fake, market: str, symbol: str) -> list[int]:
    """Every trade the fake exchange generated (REST shows them, sent or not)."""
    return [int(i) for i in fake.trades_made.get((market, symbol), [])]


async def _missing_between(db, fake, market, symbol, lo: int, hi: int) -> list[int]:
    stored = await _ids(db, market, symbol)
    return [i for i in _made(fake, market, symbol) if lo <= i <= hi and i not in stored]


async def _handled_vs_stored(db, fake) -> dict[str, int]:
    """The exact accounting of the SIGTERM tests (fake.start_barriers): every trade the
    collector provably handled must be stored, once. A trade sent after the last answered
    barrier ping cannot be proven received; if it is not stored it was on the wire or in the
    client's buffers when the collector stopped reading (counted as ``unread_at_close``)."""
    handled = fake.handled_trades()
    seen = await _stored(db)
    stored = set(seen)
    lost = sum(1 for (m, s), ids in handled.items() for t in ids if (m, s, t) not in stored)
    unverified = sum(1 for (m, s), ids in fake.trades_sent.items() for t in ids
                     if t not in handled.get((m, s), ()) and (m, s, t) not in stored)
    sent = {(m, s, t) for (m, s), ids in fake.trades_sent.items() for t in ids}
    return {"handled": sum(len(v) for v in handled.values()), "stored": len(stored),
            "lost": lost, "duplicates": sum(n - 1 for n in seen.values()),
            "not_sent": len(stored - sent), "unread_at_close": unverified}


async def test_kill9_restart_recovers_and_records_restart_gap(fake, db, collector_factory):
    proc = collector_factory()
    proc.start()
    await wait_for(lambda: _trade_count(db), timeout_s=30, what="first trades stored")

    async def heartbeat_after_data():
        doc = await db[schema.STATUS].find_one({"_id": "collector"})
        return doc and doc["updated_at"] > first_stored_at
    first_stored_at = datetime.now(timezone.utc)
    await wait_for(heartbeat_after_data, timeout_s=10, what="a heartbeat with data behind it")
    first = min(await _ids(db, "spot", "BTCUSDT"))
    proc.signal(signal.SIGKILL)
    proc.wait()
    killed_at = time.monotonic()
    killed_at_id = _made(fake, "spot", "BTCUSDT")[-1]
    # Down while trades keep happening (the restart gap the backfill must fill).
    await wait_for(lambda: _value(_made(fake, "spot", "BTCUSDT")[-1] >= killed_at_id + 100),
                   what="trades while the collector is down")
    restarted = proc.start()
    down_until_id = _made(fake, "spot", "BTCUSDT")[-1]

    async def new_data():
        return await _trade_count(db, symbol="BTCUSDT", market="spot",
                                  trade_id={"$in": [str(i) for i in range(down_until_id + 1,
                                                                          down_until_id + 400)]})
    await wait_for(new_data, timeout_s=30, what="data after restart")
    recovery_s = time.monotonic() - restarted

    async def restart_gap():
        return await db[schema.GAPS].find_one({"cause": "restart", "backfilled": True})
    gap = await wait_for(restart_gap, timeout_s=20, what="restart gap backfilled")
    hi = down_until_id + 20

    async def complete():
        return not await _missing_between(db, fake, "spot", "BTCUSDT", first, hi)
    try:
        await wait_for(complete, timeout_s=5, what="backfilled trades stored")
    except AssertionError:
        pass                        # reported below, then asserted
    lost = await _missing_between(db, fake, "spot", "BTCUSDT", first, hi)
    report("kill9", expected="restarted (here by the test): data again, restart gap in the "
           "ledger, backfilled", recovery_s=recovery_s, records_lost=len(lost),
           restart_gap_s=float(gap["duration_s"]), down_s=restarted - killed_at,
           downtime_trades=down_until_id - killed_at_id)
    assert gap["exchange"] == "binance" and gap["end"] is not None
    assert await db[schema.GAPS].count_documents({"end": None}) == 0
    assert not lost, lost[:20]
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0


async def test_mongodb_outage_loses_nothing(fake, nx, db, collector_factory):
    proc = collector_factory()
    proc.start()
    await wait_for(lambda: _trade_count(db), timeout_s=30, what="first trades stored")
    start_idx = _cut(fake)
    nx.stop()
    stopped_at = time.monotonic()
    await asyncio.sleep(OUTAGE_S)      # the outage itself (its length is the parameter)
    end_idx = _cut(fake)
    nx.start()
    restarted = time.monotonic()
    # Exactly the trades the fake sent to the collector while the database was down.
    window = {k: fake.trades_sent[k][start_idx[k]:end_idx[k]] for k in SUBSCRIBED}
    sent_in_outage = sum(len(v) for v in window.values())

    async def all_stored():
        total = 0
        for (market, symbol), ids in window.items():
            total += await _trade_count(db, market=market, symbol=symbol,
                                        trade_id={"$in": ids})
        return total == sent_in_outage and total
    try:
        # Replay runs at a few thousand documents/s; the bound leaves room for a loaded machine
        # (the background soak, other jobs): ~12 s alone for a 60 s outage, 16 s beside the soak.
        await wait_for(all_stored, timeout_s=max(30.0, 1.5 * OUTAGE_S), interval_s=0.25,
                       what="outage trades replayed")
    except AssertionError:
        pass                        # reported below, then asserted
    recovery_s = time.monotonic() - restarted

    # Content: every trade as the fake sent it (Binance semantics: m = buyer is maker -> sell).
    missing = mismatched = 0
    examples: list = []
    holes: dict = {}
    for (market, symbol), ids in window.items():
        rows = fake.trade_rows[(market, symbol)]
        docs = {d["trade_id"]: d async for d in db[schema.TRADES].find(
            {"market": market, "symbol": symbol, "trade_id": {"$in": ids}},
            {"trade_id": 1, "price": 1, "size": 1, "side": 1, "ts": 1})}
        for trade_id in ids:
            doc = docs.get(trade_id)
            if doc is None:
                missing += 1
                holes.setdefault((market, symbol), []).append(ids.index(trade_id))
                continue
            price, qty, ts_ms, buyer_maker = rows[trade_id]
            expected = (float(price), float(qty), "sell" if buyer_maker else "buy",
                        _ms_to_dt(ts_ms))
            got = (doc["price"], doc["size"], doc["side"], doc["ts"])
            if got != expected:
                mismatched += 1
                examples.append((market, symbol, trade_id, expected, got))
    duplicates = sum(n - 1 for n in (await _stored(db)).values())

    async def outage_gap():
        return await db[schema.GAPS].find_one({"cause": "db_outage", "end": {"$ne": None}})
    gap = await wait_for(outage_gap, timeout_s=15, what="db_outage gap closed")
    report("mongodb_outage", expected="collector keeps collecting into the spool; every trade "
           "sent during the outage stored after it (count and content), no duplicate",
           recovery_s=recovery_s, records_lost=missing + mismatched,
           outage_s=restarted - stopped_at, trades_sent_in_outage=sent_in_outage,
           missing=missing, content_mismatches=mismatched, duplicates=duplicates,
           gap_backfilled=gap["backfilled"])
    assert missing == 0 and mismatched == 0, (
        examples[:5], {k: (len(window[k]), v[:3], v[-3:]) for k, v in holes.items()},
        await db[schema.STATUS].find_one({"_id": "collector"}, {"writer": 1}))
    assert duplicates == 0 and gap["backfilled"] is True

    async def status_spool():
        doc = await db[schema.STATUS].find_one({"_id": "collector"})
        spool = doc["writer"]["spool"] if doc else None
        return spool if spool and spool["replayed"] > 0 else None
    spool = await wait_for(status_spool, timeout_s=10, what="spool figures in the status doc")
    assert spool["records"] == 0 and spool["dropped"] == 0
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0


def _handled_count(fake) -> int:
    return sum(len(v) for v in fake.handled_trades().values())


async def _replay_leftover_spool(proc, fake, db, spool_dir: Path) -> float | None:
    """If the stopping collector spooled anything, start it again (the fake silent, backfill
    off: only the spool can fill the window) until the spool is replayed. Returns the time."""
    if not any(p.stat().st_size for p in spool_dir.glob("*.bson")):
        return None
    fake.stall()
    proc.env["CRYPTODATA_BINANCE__BACKFILL"] = "false"
    started = proc.start()

    async def replayed():
        doc = await db[schema.STATUS].find_one({"_id": "collector"})
        spool = doc["writer"]["spool"] if doc else None
        return spool is not None and spool["replayed"] > 0 and spool["records"] == 0
    await wait_for(replayed, timeout_s=30, what="spool replayed")
    took = time.monotonic() - started
    proc.signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    return took


async def test_sigterm_during_heavy_ingest_loses_nothing(fake, nx, db, collector_factory,
                                                         tmp_path):
    fake.tick_s = 0.002                 # ~2000 trades/s over four streams, plus books
    fake.start_barriers(0.01)
    proc = collector_factory()
    proc.start()
    await wait_for(lambda: _trade_count(db), timeout_s=30, what="first trades stored")
    handled = _handled_count(fake)
    await wait_for(lambda: _value(_handled_count(fake) >= handled + 3000), timeout_s=30,
                   what="3000 more trades handled")
    proc.signal(signal.SIGTERM)
    term_at = time.monotonic()
    assert proc.wait(30) == 0
    exit_s = time.monotonic() - term_at
    replay_s = await _replay_leftover_spool(proc, fake, db, tmp_path / "spool")
    figures = await _handled_vs_stored(db, fake)
    report("sigterm_heavy", expected="pending writes flushed (or spooled and replayed): every "
           "trade the collector received is stored, once", records_lost=figures["lost"],
           exit_s=exit_s, spool_replay_s=replay_s, **figures)
    assert figures["lost"] == 0 and figures["duplicates"] == 0 and figures["not_sent"] == 0


async def test_sigterm_while_mongodb_down_spools_and_replays(fake, nx, db, collector_factory):
    fake.start_barriers(0.01)
    # Backfill off: after the restart only the spool can fill the window.
    proc = collector_factory(CRYPTODATA_BINANCE__BACKFILL="false")
    proc.start()
    await wait_for(lambda: _trade_count(db), timeout_s=30, what="first trades stored")
    nx.stop()
    handled = _handled_count(fake)
    await wait_for(lambda: _value(_handled_count(fake) >= handled + 300), timeout_s=30,
                   what="300 trades handled while MongoDB is down")
    proc.signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    fake.stall()                       # nothing new: only the spool can fill the window
    nx.start()
    restarted = proc.start()
    must_store = fake.handled_trades()

    async def replayed():
        for (market, symbol), ids in must_store.items():
            if await _trade_count(db, market=market, symbol=symbol,
                                  trade_id={"$in": list(ids)}) < len(ids):
                return False
        return True
    try:
        await wait_for(replayed, timeout_s=30, interval_s=0.25, what="spool replayed")
    except AssertionError:
        pass                        # reported below, then asserted
    replay_s = time.monotonic() - restarted
    figures = await _handled_vs_stored(db, fake)
    report("sigterm_db_down", expected="pending writes spooled on SIGTERM, replayed after the "
           "restart: every trade received is stored, once", recovery_s=replay_s,
           records_lost=figures["lost"], **figures)
    assert figures["lost"] == 0 and figures["duplicates"] == 0 and figures["not_sent"] == 0
    proc.signal(signal.SIGTERM)
    proc.wait(30)


async def _value(result):
    return result


def _mb(value: float | None) -> str:
    return "?" if value is None else f"{value:.1f}"


@pytest.mark.soak
@pytest.mark.timeout(SOAK_S + 300)
def test_soak_rss_stays_flat(background_soak):
    """The soak started with the session (tests/conftest.py); this test runs last and waits."""
    result = background_soak.wait()
    programs = result["programs"]
    rss = {name: (p["start_mb"], p["end_mb"]) for name, p in programs.items()}
    report("soak", expected="steady load for the soak duration: RSS of every program flat, "
           "no restart, API answers", duration_s=result["duration_s"],
           **{f"{name}_mb": f"{_mb(start)}->{_mb(end)}" for name, (start, end) in rss.items()},
           cpu_pct="/".join(f"{p['cpu_pct']}" for p in programs.values()),
           trades_per_s=round(result["trades_per_s"]), api_requests=result["api_requests"],
           api_errors=result["api_errors"])
    for name, (start, end) in rss.items():
        # Flat: growth below 25 % of the post-warm-up RSS (at least 20 MB of allocator slack).
        assert start is not None and end is not None, (name, result["log_tails"])
        assert end - start < max(20.0, start * 0.25), (name, start, end, result["samples"])
    assert not any(p["restarted"] for p in programs.values()), programs
    assert result["trades_per_s"] > 50 and result["api_errors"] == 0, result
