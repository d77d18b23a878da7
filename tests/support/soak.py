"""The RSS soak: the real supervisord.conf (embedded MongoDB, collector, API; tests/support/supervised.py)
at the fake Binance's steady message rate, with a steady API query load, for
``CRYPTODATA_FAULT_SOAK_S`` seconds (default 30; CI runs 600). The RSS of every program is sampled
every 5 s after a warm-up; the result is one JSON document.

It runs in its own process so that a long soak can overlap the rest of the test session:
tests/conftest.py starts it when the session begins (``BackgroundSoak``) and
``test_soak_rss_stays_flat`` (run last) waits for it and checks the result. Standalone:
``python -m tests.support.soak --duration 600 --out soak.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pymongo.errors import PyMongoError

from common import schema
from tests.conftest import ROOT
from tests.support.helpers import wait_until
from tests.support.supervised import PROGRAMS, SupervisedSystem, cpu_s, http_json

SOAK_S = float(os.environ.get("CRYPTODATA_FAULT_SOAK_S", "30"))
SAMPLE_EVERY_S = 5.0
QUERIES = ("/health", "/realtime/binance/BTCUSDT", "/orderbook/binance/BTCUSDT",
           "/trades?exchange=binance&symbol=BTCUSDT&limit=100", "/gaps?exchange=binance")


def warmup_s(duration_s: float) -> float:
    # Caches, allocator arenas and connection pools fill during the first minute.
    return min(60.0, duration_s / 4)


def trade_count(db) -> int:
    try:
        return db[schema.TRADES].count_documents({})
    except PyMongoError:
        return 0          # the embedded database is still starting


def run(duration_s: float, workdir: Path) -> dict[str, Any]:
    with SupervisedSystem(workdir) as system:
        api, db = system.api, system.db
        wait_until(lambda: trade_count(db) > 0, timeout_s=60, what="first trades stored")
        wait_until(lambda: all(http_json(api + path)[0] == 200 for path in QUERIES),
                   timeout_s=30, what="every queried endpoint has data")
        began = time.monotonic()
        pids = {name: system.pid(name) for name in PROGRAMS}
        requests = 0
        errors: list[str] = []
        samples: list[dict[str, Any]] = []
        trades_at_start = None
        next_sample = began + warmup_s(duration_s)
        end = began + duration_s
        while True:
            now = time.monotonic()
            if now >= next_sample or now >= end:
                rss = system.rss_mb()
                samples.append({"t": round(now - began, 1), **rss})
                if trades_at_start is None:
                    trades_at_start = (now, trade_count(db))
                    cpu_at_start = {name: cpu_s(pid) for name, pid in pids.items() if pid}
                next_sample += SAMPLE_EVERY_S
                if now >= end:
                    break
            for path in QUERIES:            # the steady API load (~5 requests/s)
                status, _ = http_json(api + path)
                requests += 1
                if status != 200:
                    errors.append(f"{round(time.monotonic() - began)}s {path} -> {status}")
            time.sleep(1.0)
        trades_end = (time.monotonic(), trade_count(db))
        restarts = {name: system.pid(name) != pid for name, pid in pids.items()}
        measured_s = time.monotonic() - trades_at_start[0]
        programs = {}
        for name in PROGRAMS:
            series = [s[name] for s in samples if s[name] is not None]
            programs[name] = {"start_mb": series[0] if series else None,
                              "end_mb": series[-1] if series else None,
                              "max_mb": max(series) if series else None,
                              "restarted": restarts[name],
                              # Share of one core over the measured span (load on the machine).
                              "cpu_pct": _cpu_pct(cpu_at_start.get(name), pids[name],
                                                  measured_s)}
        t0, n0 = trades_at_start
        t1, n1 = trades_end
        return {"duration_s": duration_s, "warmup_s": warmup_s(duration_s),
                "programs": programs, "trades_per_s": (n1 - n0) / max(t1 - t0, 1e-9),
                "trades_stored": n1, "api_requests": requests, "api_errors": len(errors),
                "api_error_examples": errors[:10],
                "samples": samples, "log_tails": system.log_tails()}


def _cpu_pct(start: float | None, pid: int | None, span_s: float) -> float | None:
    end = cpu_s(pid) if pid else None
    return None if start is None or end is None else round(100 * (end - start) / span_s, 1)


class BackgroundSoak:
    """``python -m tests.support.soak`` as a child process of the test session."""

    def __init__(self, workdir: Path, duration_s: float = SOAK_S) -> None:
        self.dir = Path(workdir)
        self.duration_s = duration_s
        self.out = self.dir / "soak.json"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.dir / "soak.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.soak", "--duration", str(self.duration_s),
             "--workdir", str(self.dir / "system"), "--out", str(self.out)],
            cwd=ROOT, stdout=log, stderr=log)
        log.close()
        self.started = time.monotonic()

    def wait(self) -> dict[str, Any]:
        assert self.proc is not None
        # Start-up (<60 s) plus the soak plus shutdown (<60 s): beyond that something hangs.
        remaining = self.started + self.duration_s + 180 - time.monotonic()
        try:
            code = self.proc.wait(max(1.0, remaining))
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"soak did not finish: {self.log()}")
        assert code == 0 and self.out.exists(), f"soak failed ({code}): {self.log()}"
        return json.loads(self.out.read_text())

    def log(self) -> str:
        path = self.dir / "soak.log"
        return path.read_text()[-4000:] if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()              # the soak stops supervisord on SIGTERM
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=SOAK_S)
    parser.add_argument("--workdir", default="")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    # SIGTERM unwinds through SupervisedSystem.__exit__ (supervisord and the fake stopped).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="cryptodata-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    result = run(args.duration, workdir)
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
