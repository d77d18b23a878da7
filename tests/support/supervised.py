"""The repository's supervisord.conf under a real supervisord, in a private directory: embedded
MongoDB (nx-27017), the collector pointed at the fake Binance (its own process), and the API,
each on a free port. Used by the end-to-end test (tests/system/test_system.py) and the soak
(tests/support/soak.py)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from pymongo import MongoClient

from tests.conftest import ROOT
from tests.support.helpers import free_port, wait_port

PROGRAMS = ("mongodb", "collector", "api")


def http_json(url: str) -> tuple[int | None, Any]:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
    except (OSError, ValueError):
        return None, None


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


class SupervisedSystem:
    def __init__(self, workdir: Path, **env: str) -> None:
        self.dir = Path(workdir)
        self.extra_env = env
        self.fake: subprocess.Popen | None = None
        self.supervisord: subprocess.Popen | None = None
        self.db_client: MongoClient | None = None

    def start(self) -> "SupervisedSystem":
        fake_port, db_port, api_port = free_port(), free_port(), free_port()
        self.fake = subprocess.Popen(
            [sys.executable, "-m", "tests.support.fakes.binance", "--port", str(fake_port)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(fake_port)
        # supervisord resolves %(here)s to the config's folder: a private copy of the real file.
        shutil.copy(ROOT / "supervisord.conf", self.dir / "supervisord.conf")
        (self.dir / "var").mkdir(exist_ok=True)
        (self.dir / "logs").mkdir(exist_ok=True)
        fake_ws, fake_http = f"ws://127.0.0.1:{fake_port}", f"http://127.0.0.1:{fake_port}"
        self.env = {
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
            # BTCBUSD (delisted) shows an unavailable symbol in /health.
            "CRYPTODATA_BINANCE__SPOT_SYMBOLS": '["BTCUSDT", "BTCUSDC", "BTCBUSD"]',
            "CRYPTODATA_API_PORT": str(api_port),
            "CRYPTODATA_STATUS_INTERVAL_S": "1",
            "CRYPTODATA_FLUSH_INTERVAL_S": "0.2",
            **self.extra_env,
        }
        self.conf = str(self.dir / "supervisord.conf")
        self.supervisord = subprocess.Popen(
            [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", self.conf],
            cwd=self.dir, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.api = f"http://127.0.0.1:{api_port}"
        self.db_client = MongoClient(f"mongodb://127.0.0.1:{db_port}",
                                     serverSelectionTimeoutMS=2000)
        self.db = self.db_client["cryptodata"]
        self.logs = self.dir / "logs"
        return self

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "supervisor.supervisorctl", "-c", self.conf, *args],
            cwd=self.dir, env=self.env, capture_output=True, text=True, timeout=30)

    def pid(self, program: str) -> int | None:
        out = self.ctl("pid", program).stdout.strip()
        return int(out) if out.isdigit() and int(out) > 0 else None

    def rss_mb(self) -> dict[str, float | None]:
        """RSS of every program (None while it is not running)."""
        pids = {name: self.pid(name) for name in PROGRAMS}
        return {name: rss_mb(pid) if pid else None for name, pid in pids.items()}

    def log_tails(self, lines: int = 15) -> str:
        return "\n".join(f"--- {f.name}\n" + "\n".join(f.read_text().splitlines()[-lines:])
                         for f in sorted(self.logs.glob("*.log")))

    def stop(self) -> None:
        if self.supervisord is not None:
            self.supervisord.send_signal(signal.SIGTERM)
            try:
                self.supervisord.wait(60)
            except subprocess.TimeoutExpired:
                self.supervisord.kill()
                self.supervisord.wait()
        if self.fake is not None:
            self.fake.terminate()
            try:
                self.fake.wait(10)
            except subprocess.TimeoutExpired:
                self.fake.kill()
                self.fake.wait()
        if self.db_client is not None:
            self.db_client.close()

    def __enter__(self) -> "SupervisedSystem":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
