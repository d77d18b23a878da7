"""The Sentry event listener under a REAL supervisord, and the healthcheck's XML-RPC process check."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from monitoring import supervisor_listener as listener
from tests.conftest import ROOT
from tests.support.helpers import wait_until
from tests.support.ops_fake_sentry import FakeSentry

CONF = textwrap.dedent("""
    [unix_http_server]
    file={d}/supervisor.sock

    [supervisord]
    logfile={d}/supervisord.log
    pidfile={d}/supervisord.pid
    childlogdir={d}
    nodaemon=true

    [rpcinterface:supervisor]
    supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

    [supervisorctl]
    serverurl=unix://{d}/supervisor.sock

    [program:crashy]
    command={py} -c "import sys; print('boom mongodb://u:hunter2@db/x', file=sys.stderr); sys.exit(3)"
    startsecs=1
    startretries=0
    autorestart=false

    [program:flaky]
    command={py} -c "import sys, time; time.sleep(0.3); sys.exit(1)"
    startsecs=0
    autorestart=false

    [program:steady]
    command={py} -c "import time; time.sleep(600)"
    startsecs=0
    stopsignal=TERM

    [eventlistener:sentry_listener]
    command={py} -m monitoring.supervisor_listener
    directory={root}
    events=PROCESS_STATE_FATAL,PROCESS_STATE_EXITED
    environment=CRYPTODATA_SENTRY_DSN="{dsn}",CRYPTODATA_ENVIRONMENT="test",PYTHONPATH="{root}"
    stderr_logfile={d}/listener.err.log
""")


@pytest.fixture
def supervised():
    with FakeSentry() as fake, tempfile.TemporaryDirectory(prefix="cd-sup-") as d:
        conf = Path(d) / "supervisord.conf"
        conf.write_text(CONF.format(d=d, py=sys.executable, root=ROOT, dsn=fake.dsn))
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTODATA_")}
        proc = subprocess.Popen([sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(conf)],
                                cwd=d, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            yield fake, Path(d), proc
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_listener_reports_fatal_and_unexpected_exit(supervised):
    fake, d, _ = supervised

    def programs():
        return {e["tags"].get("supervisor.program"): e for e in fake.events()}

    events = wait_until(lambda: {"crashy", "flaky"} <= set(programs()) and programs(),
                        timeout_s=30, what="FATAL + EXITED events")
    fatal, exited = events["crashy"], events["flaky"]
    assert fatal["tags"]["supervisor.event"] == "PROCESS_STATE_FATAL"
    assert fatal["fingerprint"] == ["supervisor", "crashy", "PROCESS_STATE_FATAL"]
    assert fatal["level"] == "error"
    assert fatal["contexts"]["supervisor"]["from_state"] == "BACKOFF"
    assert exited["tags"]["supervisor.event"] == "PROCESS_STATE_EXITED"
    assert exited["contexts"]["supervisor"]["expected"] == "0"
    assert fatal["environment"] == "test"
    # The program's stderr tail (read over supervisord's XML-RPC) is attached, scrubbed.
    assert "boom mongodb://[Filtered]@db/x" in fatal["contexts"]["supervisor"]["log_tail"]
    assert b"hunter2" not in fake.raw()
    # The listener keeps the protocol channel clean: its log lines go to stderr only.
    assert "crashy FATAL" in (d / "listener.err.log").read_text()

    # The health check sees the same state over XML-RPC: crashy FATAL -> CRITICAL.
    out = subprocess.run([sys.executable, "-m", "monitoring.healthcheck", "--api", "http://127.0.0.1:9",
                          "--supervisor-socket", str(d / "supervisor.sock"), "--json", "--no-sentry"],
                         cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    checks = {c["component"]: c for c in json.loads(out.stdout)["checks"]}
    assert checks["supervisor:crashy"]["status"] == "CRITICAL"
    assert checks["supervisor:steady"]["status"] == "OK"
    assert checks["supervisor:sentry_listener"]["status"] == "OK"


def test_healthcheck_supervisor_down(tmp_path):
    out = subprocess.run([sys.executable, "-m", "monitoring.healthcheck", "--api", "http://127.0.0.1:9",
                          "--supervisor-socket", str(tmp_path / "missing.sock"), "--json", "--no-sentry"],
                         cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    checks = {c["component"]: c for c in json.loads(out.stdout)["checks"]}
    assert checks["supervisor"]["status"] == "CRITICAL"


def _event(name: str, payload: str) -> str:
    return f"ver:3.0 server:supervisor serial:1 pool:l poolserial:1 eventname:{name} len:{len(payload)}\n{payload}"


def test_listener_protocol_without_dsn():
    events = [
        _event("PROCESS_STATE_EXITED", "processname:api groupname:api from_state:RUNNING expected:1 pid:5"),
        _event("PROCESS_STATE_EXITED", "processname:api groupname:api from_state:RUNNING expected:0 pid:6"),
        _event("PROCESS_STATE_FATAL", "processname:collector groupname:collector from_state:BACKOFF"),
    ]
    stdout = io.StringIO()
    listener.run(io.StringIO("".join(events)), stdout, sentry_on=False)
    assert stdout.getvalue() == "READY\n" + "RESULT 2\nOKREADY\n" * 3


@pytest.mark.parametrize("event, expected, report", [
    ("PROCESS_STATE_FATAL", None, True),
    ("PROCESS_STATE_EXITED", "0", True),
    ("PROCESS_STATE_EXITED", "1", False),
])
def test_should_report(event, expected, report):
    payload = {"processname": "x"} | ({"expected": expected} if expected else {})
    assert listener.should_report(event, payload) is report
