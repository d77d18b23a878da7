"""Process-level faults: ``python -m collector`` as a subprocess against the in-process fake
Binance and a private nx-27017 (its own data dir and port, so it can be stopped and restarted).

Each test prints ``FAULT <name> k=v ...`` (run with -s, or set CRYPTODATA_FAULT_RESULTS=file).
Parameters (environment):

- ``CRYPTODATA_FAULT_OUTAGE_S``  MongoDB outage length, default 60 s (set e.g. 15 for a quick
  local run).
- ``CRYPTODATA_FAULT_SOAK_S``    soak duration, default 30 s (600 for the 10-minute version).
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
from pathlib import Path

import pytest
from pymongo import AsyncMongoClient

from common import schema
from tests.conftest import ROOT, start_nx
from tests.fakes.binance import FakeBinance
from tests.faultlog import report
from tests.helpers import free_port, wait_for

OUTAGE_S = float(os.environ.get("CRYPTODATA_FAULT_OUTAGE_S", "60"))
SOAK_S = float(os.environ.get("CRYPTODATA_FAULT_SOAK_S", "30"))
SUBSCRIBED = {("spot", "BTCUSDT"), ("spot", "BTCUSDC"), ("perp", "BTCUSDT")}


def _cut(fake, index: int | None = None) -> dict:
    """Per subscribed stream: how many trades the fake generated so far / the last id."""
    return {k: (len(v) if index is None else int(v[index]))
            for k, v in fake.trades_sent.items() if k in SUBSCRIBED}


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

    def rss_mb(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

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


def _sent(fake, market: str, symbol: str) -> list[int]:
    return [int(i) for i in fake.trades_sent.get((market, symbol), [])]


async def _missing_between(db, fake, market, symbol, lo: int, hi: int) -> list[int]:
    stored = await _ids(db, market, symbol)
    return [i for i in _sent(fake, market, symbol) if lo <= i <= hi and i not in stored]


async def test_kill9_restart_recovers_and_records_restart_gap(fake, db, collector_factory):
    proc = collector_factory()
    proc.start()
    await wait_for(lambda: _trade_count(db), timeout_s=30, what="first trades stored")
    await asyncio.sleep(1.5)           # a heartbeat with data behind it
    first = min(await _ids(db, "spot", "BTCUSDT"))
    proc.signal(signal.SIGKILL)
    proc.wait()
    killed_at_id = _sent(fake, "spot", "BTCUSDT")[-1]
    await asyncio.sleep(2.0)            # down for a while: trades keep happening
    restarted = proc.start()
    down_until_id = _sent(fake, "spot", "BTCUSDT")[-1]

    async def new_data():
        return await _trade_count(db, symbol="BTCUSDT", market="spot",
                                  trade_id={"$in": [str(i) for i in range(down_until_id + 1,
                                                                          down_until_id + 400)]})
    await wait_for(new_data, timeout_s=30, what="data after restart")
    recovery_s = time.monotonic() - restarted

    async def restart_gap():
        return await db[schema.GAPS].find_one({"cause": "restart", "backfilled": True})
    gap = await wait_for(restart_gap, timeout_s=20, what="restart gap backfilled")
    await asyncio.sleep(1.0)
    hi = down_until_id + 20
    lost = await _missing_between(db, fake, "spot", "BTCUSDT", first, hi)
    report("kill9", recovery_s=recovery_s, restart_gap_s=float(gap["duration_s"]),
           downtime_trades=down_until_id - killed_at_id, trades_lost=len(lost))
    assert gap["exchange"] == "binance" and gap["end"] is not None
    assert await db[schema.GAPS].count_documents({"end": None}) == 0
    assert not lost, lost[:20]
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0


async def test_mongodb_outage_loses_nothing(fake, nx, db, collector_factory):
    proc = collector_factory()
    proc.start()
    await wait_for(lambda: _trade_count(db), timeout_s=30, what="first trades stored")
    await asyncio.sleep(1.0)
    start_ids = _cut(fake)
    nx.stop()
    stopped_at = time.monotonic()
    await asyncio.sleep(OUTAGE_S)
    end_ids = _cut(fake)
    nx.start()
    restarted = time.monotonic()
    window = {k: [str(i) for i in fake.trades_sent[k][start_ids[k]:end_ids[k]]]
              for k in end_ids}
    sent_in_outage = sum(len(v) for v in window.values())

    async def all_stored():
        total = 0
        for (market, symbol), ids in window.items():
            total += await _trade_count(db, market=market, symbol=symbol,
                                        trade_id={"$in": ids})
        return total == sent_in_outage and total
    try:
        await wait_for(all_stored, timeout_s=30, interval_s=0.25, what="outage trades replayed")
    except AssertionError:
        for (market, symbol), ids in window.items():
            stored = await _ids(db, market, symbol)
            missing = [i for i in ids if int(i) not in stored]
            print("MISSING", market, symbol, len(ids), len(missing), missing[:5], missing[-5:])
        raise
    recovery_s = time.monotonic() - restarted
    seen = collections.Counter()
    async for d in db[schema.TRADES].find({}, {"market": 1, "symbol": 1, "trade_id": 1}):
        seen[(d["market"], d["symbol"], d["trade_id"])] += 1
    duplicates = sum(n - 1 for n in seen.values())

    async def outage_gap():
        return await db[schema.GAPS].find_one({"cause": "db_outage", "end": {"$ne": None}})
    gap = await wait_for(outage_gap, timeout_s=15, what="db_outage gap closed")
    report("mongodb_outage", outage_s=time.monotonic() - stopped_at - recovery_s,
           recovery_s=recovery_s, trades_sent_in_outage=sent_in_outage,
           trades_lost=0, duplicates=duplicates, gap_backfilled=str(gap["backfilled"]))
    assert duplicates == 0 and gap["backfilled"] is True

    async def status_spool():
        doc = await db[schema.STATUS].find_one({"_id": "collector"})
        spool = doc["writer"]["spool"] if doc else None
        return spool if spool and spool["replayed"] > 0 else None
    spool = await wait_for(status_spool, timeout_s=10, what="spool figures in the status doc")
    assert spool["records"] == 0 and spool["dropped"] == 0
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0


async def test_sigterm_during_heavy_ingest_loses_nothing(fake, nx, db, collector_factory):
    fake.tick_s = 0.002                 # ~2000 trades/s over four streams, plus books
    proc = collector_factory()
    proc.start()
    await wait_for(lambda: _trade_count(db), timeout_s=30, what="first trades stored")
    await asyncio.sleep(3.0)
    proc.signal(signal.SIGTERM)
    term_at = time.monotonic()
    cut = _cut(fake, -1)
    assert proc.wait(30) == 0
    exit_s = time.monotonic() - term_at
    lost = 0
    tail = 0
    for (market, symbol), last_sent in cut.items():
        stored = await _ids(db, market, symbol)
        lo, hi = min(stored), max(stored)
        # Everything the collector received is stored: no hole between first and last.
        lost += sum(1 for i in _sent(fake, market, symbol) if lo <= i <= hi and i not in stored)
        tail += max(0, last_sent - hi)  # still on the wire when the feed stopped
    report("sigterm_heavy", exit_s=exit_s, trades_stored=await _trade_count(db),
           trades_lost=lost, unreceived_tail=tail)
    assert lost == 0


async def test_sigterm_while_mongodb_down_spools_and_replays(fake, nx, db, collector_factory):
    proc = collector_factory()
    proc.start()
    await wait_for(lambda: _trade_count(db), timeout_s=30, what="first trades stored")
    nx.stop()
    await asyncio.sleep(3.0)
    proc.signal(signal.SIGTERM)
    cut = _cut(fake, -1)
    assert proc.wait(30) == 0
    fake.stall()                       # nothing new: only the spool can fill the window
    nx.start()
    restarted = proc.start()

    async def replayed():
        counts = []
        for (market, symbol), last in cut.items():
            stored = await _ids(db, market, symbol)
            counts.append(bool(stored) and max(stored) >= last - 50)
        return all(counts)
    await wait_for(replayed, timeout_s=30, what="spool replayed")
    replay_s = time.monotonic() - restarted
    lost = 0
    for (market, symbol) in cut:
        stored = await _ids(db, market, symbol)
        lost += sum(1 for i in _sent(fake, market, symbol)
                    if min(stored) <= i <= max(stored) and i not in stored)
    report("sigterm_db_down", replay_after_restart_s=replay_s, trades_lost=lost)
    assert lost == 0
    proc.signal(signal.SIGTERM)
    proc.wait(30)


async def test_soak_rss_stays_flat(fake, db, collector_factory):
    proc = collector_factory()
    proc.start()
    await wait_for(lambda: _trade_count(db), timeout_s=30, what="first trades stored")
    warmup = min(10.0, SOAK_S / 3)
    await asyncio.sleep(warmup)
    start_mb = proc.rss_mb()
    samples = [start_mb]
    deadline = time.monotonic() + SOAK_S - warmup
    while time.monotonic() < deadline:
        await asyncio.sleep(min(5.0, max(0.5, deadline - time.monotonic())))
        samples.append(proc.rss_mb())
    end_mb = samples[-1]
    stored = await _trade_count(db)
    report("soak", duration_s=SOAK_S, rss_start_mb=start_mb, rss_end_mb=end_mb,
           rss_max_mb=max(samples), trades_stored=stored)
    assert end_mb - start_mb < max(20.0, start_mb * 0.25)
    proc.signal(signal.SIGTERM)
    assert proc.wait(30) == 0
