"""common.sentry: real envelopes captured on a local HTTP server, from the REAL programs
(``python -m api``, ``python -m collector``) hitting real faults, plus the setup details the
programs rely on (asyncio mechanism inside the loop, excepthook, scrubbing)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from common import sentry as ops_sentry
from tests.conftest import ROOT
from tests.support.helpers import free_port, wait_port, wait_until
from tests.support.ops_fake_sentry import FakeSentry

SECRET_URI = "mongodb://cryptoapp:Sup3rS3cret@10.0.0.5:27017/cryptodata?authSource=admin"

# The collector's init_sentry call in a minimal loop: the real collector catches its tasks' errors
# (feeds restart, writes spool), so an unhandled task exception has no natural trigger there.
COLLECTOR_PROGRAM = textwrap.dedent("""
    import asyncio
    from sentry_sdk.integrations.asyncio import AsyncioIntegration
    from common.sentry import init_sentry
    import sentry_sdk

    async def feed():
        raise ValueError("feed crashed api_key=abcdef123456 uri=" + {uri!r})

    async def main():
        assert init_sentry("collector", [AsyncioIntegration()])   # inside the running loop
        task = asyncio.get_running_loop().create_task(feed())
        while not task.done():
            await asyncio.sleep(0.01)
        sentry_sdk.flush(5)

    asyncio.run(main())
""")

CRASH_PROGRAM = textwrap.dedent("""
    from common.sentry import init_sentry
    init_sentry("api", [])
    raise SystemError("unhandled at startup " + {uri!r})
""")


def run_program(code: str, dsn: str | None, **env_extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTODATA_")}
    env.update(PYTHONPATH=str(ROOT), CRYPTODATA_ENVIRONMENT="test", CRYPTODATA_RELEASE="cryptodata@test1",
               MONGODB_URI=SECRET_URI, **env_extra)
    if dsn:
        env["CRYPTODATA_SENTRY_DSN"] = dsn
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=30)


def assert_clean(fake: FakeSentry) -> None:
    raw = fake.raw()
    assert b"Sup3rS3cret" not in raw
    assert b"abcdef123456" not in raw


def closed_port_uri() -> str:
    """SECRET_URI's credentials on a local port nothing listens on: MongoDB is down."""
    return f"mongodb://cryptoapp:Sup3rS3cret@127.0.0.1:{free_port()}/cryptodata?authSource=admin"


def program_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTODATA_")}
    env.update(PYTHONPATH=str(ROOT), **extra)
    return env


def start(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def stop(proc: subprocess.Popen, sig: int) -> str:
    """Graceful stop with the program's supervisord stopsignal; returns its output."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


def assert_tagged(event: dict, program: str) -> None:
    assert event["tags"]["program"] == program
    assert event["environment"] == "test" and event["release"] == "cryptodata@test1"


def test_real_api_reports_database_failure(tmp_path):
    """python -m api with MongoDB down: a data request fails (503) and the error reaches Sentry."""
    port = free_port()
    with FakeSentry() as fake:
        env = program_env(MONGODB_URI=closed_port_uri(), CRYPTODATA_SENTRY_DSN=fake.dsn,
                          CRYPTODATA_ENVIRONMENT="test", CRYPTODATA_RELEASE="cryptodata@test1")
        proc = start(["api", "--port", str(port)], env, tmp_path)
        try:
            wait_port(port)
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/trades?exchange=binance", timeout=30)
            assert err.value.code == 503
            events = wait_until(lambda: [e for e in fake.events() if e.get("logger") == "api"],
                                timeout_s=30, what="api database-error event")
        finally:
            output = stop(proc, signal.SIGINT)
        event = events[0]
        assert event["level"] == "error", output
        assert "database error" in event["logentry"]["message"]
        assert "ServerSelectionTimeoutError" in json.dumps(event["logentry"])
        assert_tagged(event, "api")
        assert all(req["path"] == "/api/1/envelope/" for req in fake.requests)
        assert_clean(fake)


def test_real_collector_reports_database_failure(tmp_path):
    """python -m collector with MongoDB down logs at ERROR -> Sentry; the DSN, environment and
    release come from the settings file named by CRYPTODATA_CONFIG_FILE."""
    with FakeSentry() as fake:
        config = tmp_path / "cryptodata.env"
        config.write_text(f"CRYPTODATA_SENTRY_DSN={fake.dsn}\nCRYPTODATA_ENVIRONMENT=test\n"
                          "CRYPTODATA_RELEASE=cryptodata@test1\n")
        env = program_env(MONGODB_URI=closed_port_uri(), CRYPTODATA_CONFIG_FILE=str(config),
                          CRYPTODATA_EXCHANGES="[]", CRYPTODATA_SPOOL_DIR=str(tmp_path / "spool"))
        proc = start(["collector"], env, tmp_path)
        try:
            events = wait_until(lambda: [e for e in fake.events() if e.get("logger") == "collector"],
                                timeout_s=30, what="collector database-error event")
        finally:
            output = stop(proc, signal.SIGTERM)
        event = events[0]
        assert event["level"] == "error", output
        assert "could not read the previous status" in event["logentry"]["message"]
        assert_tagged(event, "collector")
        assert_clean(fake)


def test_real_collector_reports_constructor_failure(tmp_path):
    """Sentry is up before Collector.__init__: an unusable spool_dir (its parent is a file) is
    reported before the program exits."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    with FakeSentry() as fake:
        env = program_env(MONGODB_URI=closed_port_uri(), CRYPTODATA_SENTRY_DSN=fake.dsn,
                          CRYPTODATA_ENVIRONMENT="test", CRYPTODATA_RELEASE="cryptodata@test1",
                          CRYPTODATA_EXCHANGES="[]", CRYPTODATA_SPOOL_DIR=str(blocker / "spool"))
        proc = start(["collector"], env, tmp_path)
        output, _ = proc.communicate(timeout=60)   # exits on its own
        assert proc.returncode == 1 and "NotADirectoryError" in output, output
        events = wait_until(fake.events, what="constructor exception event")
        exc = events[0]["exception"]["values"][-1]
        assert exc["type"] == "NotADirectoryError"
        assert any(frame["function"] == "__init__" and frame["module"] == "collector.app"
                   for frame in exc["stacktrace"]["frames"])
        assert_tagged(events[0], "collector")
        assert_clean(fake)


def test_collector_task_exception_arrives_with_asyncio_mechanism():
    with FakeSentry() as fake:
        proc = run_program(COLLECTOR_PROGRAM.format(uri=SECRET_URI), fake.dsn)
        assert proc.returncode == 0, proc.stderr
        events = wait_until(fake.events, what="collector event")
        exc = events[0]["exception"]["values"][-1]
        assert exc["type"] == "ValueError"
        assert exc["mechanism"] == {"type": "asyncio", "handled": False}
        assert events[0]["tags"]["program"] == "collector"
        assert_clean(fake)


def test_unhandled_startup_exception_arrives():
    with FakeSentry() as fake:
        proc = run_program(CRASH_PROGRAM.format(uri=SECRET_URI), fake.dsn)
        assert proc.returncode == 1
        events = wait_until(fake.events, what="excepthook event")
        assert events[0]["exception"]["values"][-1]["mechanism"]["type"] == "excepthook"
        assert_clean(fake)


def test_nothing_sent_without_dsn():
    with FakeSentry() as fake:
        code = "from common.sentry import init_sentry; import sys; sys.exit(0 if init_sentry('api', []) is False else 5)"
        proc = run_program(code, None)
        assert proc.returncode == 0, proc.stderr
        proc = run_program(CRASH_PROGRAM.format(uri=SECRET_URI), None)
        assert proc.returncode == 1
        assert fake.requests == []


@pytest.mark.parametrize("text, leaked", [
    (SECRET_URI, "Sup3rS3cret"),
    ("mongodb+srv://u:pw123@cluster0.example.net/db", "pw123"),
    ("api_key=AKIA123 secret: s3cr3tvalue", "AKIA123"),
    ('{"apiKey": "k-999"}', "k-999"),
])
def test_scrub_text(text, leaked):
    assert leaked not in ops_sentry.scrub_text(text)


def test_scrub_nested_keys():
    event = {"extra": {"env": {"MONGODB_URI": "mongodb://localhost", "CRYPTODATA_BINANCE__API_SECRET": "x"},
                       "symbols": ["BTCUSDT"]}}
    out = ops_sentry.scrub(event)
    assert out["extra"]["env"]["MONGODB_URI"] == "[Filtered]"
    assert out["extra"]["env"]["CRYPTODATA_BINANCE__API_SECRET"] == "[Filtered]"
    assert out["extra"]["symbols"] == ["BTCUSDT"]
