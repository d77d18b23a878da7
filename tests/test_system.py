"""End to end: the repository's supervisord.conf under a real supervisord, with the embedded
MongoDB, the collector pointed at the fake Binance, and the API. Data must reach the API within
seconds, and a ``kill -9`` of the collector must be followed by a restart and more data."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from pymongo import MongoClient

from common import schema
from tests.conftest import ROOT
from tests.helpers import free_port, wait_port, wait_until

pytestmark = pytest.mark.system


def http_json(url: str):
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
    except OSError:
        return None, None


@pytest.fixture
def system(tmp_path):
    fake_port, db_port, api_port = free_port(), free_port(), free_port()
    fake = subprocess.Popen([sys.executable, "-m", "tests.fakes.binance", "--port", str(fake_port)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(fake_port)
    # supervisord resolves %(here)s to the config's folder: give it a private copy of the real file.
    shutil.copy(ROOT / "supervisord.conf", tmp_path / "supervisord.conf")
    (tmp_path / "var").mkdir()
    (tmp_path / "logs").mkdir()
    fake_ws, fake_http = f"ws://127.0.0.1:{fake_port}", f"http://127.0.0.1:{fake_port}"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "CRYPTODATA_VENV": sys.prefix,
        "CRYPTODATA_EMBEDDED_DB": "true",
        "CRYPTODATA_EMBEDDED_DB_PORT": str(db_port),
        "MONGODB_URI": f"mongodb://127.0.0.1:{db_port}",
        "CRYPTODATA_EXCHANGES": '["binance"]',
        "CRYPTODATA_BINANCE__SPOT_WS_URL": fake_ws,
        "CRYPTODATA_BINANCE__PERP_WS_URL": fake_ws,
        "CRYPTODATA_BINANCE__SPOT_REST_URL": fake_http,
        "CRYPTODATA_BINANCE__PERP_REST_URL": fake_http,
        "CRYPTODATA_API_PORT": str(api_port),
        "CRYPTODATA_STATUS_INTERVAL_S": "1",
        "CRYPTODATA_FLUSH_INTERVAL_S": "0.2",
    }
    conf = str(tmp_path / "supervisord.conf")
    supervisord = subprocess.Popen([sys.executable, "-m", "supervisor.supervisord", "-n", "-c", conf],
                                   cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)

    def ctl(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", conf, *args],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)

    db = MongoClient(f"mongodb://127.0.0.1:{db_port}", serverSelectionTimeoutMS=2000)["cryptodata"]
    try:
        yield {"api": f"http://127.0.0.1:{api_port}", "ctl": ctl, "db": db, "logs": tmp_path / "logs"}
    finally:
        for log_file in sorted((tmp_path / "logs").glob("*.log")):
            # Shown by pytest only when the test fails.
            print(f"--- {log_file.name}\n" + "\n".join(log_file.read_text().splitlines()[-15:]))
        supervisord.send_signal(signal.SIGTERM)
        try:
            supervisord.wait(60)
        except subprocess.TimeoutExpired:
            supervisord.kill()
        fake.terminate()
        fake.wait(10)
        db.client.close()


def trade_count(db) -> int:
    return db[schema.TRADES].count_documents({})


def test_pipeline_under_supervisord_survives_kill_9(system):
    api, ctl, db = system["api"], system["ctl"], system["db"]
    started = time.monotonic()

    def realtime_has_trades():
        status, body = http_json(f"{api}/realtime/binance/BTCUSDT")
        return status == 200 and "trades" in body["data"].get("BTCUSDT", {}).get("spot", {})

    wait_until(realtime_has_trades, timeout_s=60, what="trades visible at /realtime")
    first_data_s = time.monotonic() - started
    status = ctl("status")
    assert status.returncode == 0, status.stdout
    for program in ("mongodb", "collector", "api"):
        assert f"{program}" in status.stdout and "RUNNING" in status.stdout

    # Ingest rate over a measured window (all collections).
    def total() -> int:
        return sum(db[c].count_documents({}) for c in schema.DATA_COLLECTIONS)
    n0, t0 = total(), time.monotonic()
    wait_until(lambda: total() >= n0 + 300, timeout_s=30, what="300 more documents")
    n1, t1 = total(), time.monotonic()
    rate = (n1 - n0) / (t1 - t0)

    old_pid = int(ctl("pid", "collector").stdout.strip())
    os.kill(old_pid, signal.SIGKILL)
    killed_at = time.monotonic()

    def restarted():
        out = ctl("pid", "collector").stdout.strip()
        return out.isdigit() and int(out) not in (0, old_pid)
    wait_until(restarted, timeout_s=30, what="collector restarted by supervisord")
    before = trade_count(db)
    wait_until(lambda: trade_count(db) > before + 20, timeout_s=30, what="data after restart")
    recovery_s = time.monotonic() - killed_at
    # The restarted collector's heartbeat reports fresh Binance streams.
    health = wait_until(lambda: (lambda r: r[1] if r[0] == 200 and
                                 r[1]["exchanges"]["binance"]["fresh"] else None)(
        http_json(f"{api}/health")), timeout_s=20, what="healthy /health")
    assert health["mongodb"]["reachable"] is True and health["status"] == "healthy"
    assert "BTCBUSD" in health["exchanges"]["binance"]["unavailable_symbols"]
    log_text = (system["logs"] / "data_collection.log").read_text()
    assert "collector started" in log_text
    print(f"\nSYSTEM first_data_s={first_data_s:.1f} ingest_docs_per_s={rate:.0f} "
          f"kill9_recovery_s={recovery_s:.1f}")
