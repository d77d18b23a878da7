"""common.sentry: real envelopes from subprocesses that simulate the API and the collector."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from common import sentry as ops_sentry
from tests.conftest import ROOT
from tests.helpers import free_port, wait_until
from tests.ops_fake_sentry import FakeSentry

SECRET_URI = "mongodb://cryptoapp:Sup3rS3cret@10.0.0.5:27017/cryptodata?authSource=admin"

API_PROGRAM = textwrap.dedent("""
    import asyncio, sys
    import aiohttp
    from aiohttp import web
    from sentry_sdk.integrations.aiohttp import AioHttpIntegration
    from common.sentry import init_sentry
    import sentry_sdk

    assert init_sentry("api", [AioHttpIntegration()])

    async def boom(request):
        raise RuntimeError("handler failed talking to " + {uri!r})

    async def main():
        app = web.Application()
        app.router.add_get("/boom", boom)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", {port}).start()
        async with aiohttp.ClientSession() as s:
            async with s.get("http://127.0.0.1:{port}/boom") as r:
                print("status", r.status)
        await runner.cleanup()

    asyncio.run(main())
    sentry_sdk.flush(5)
""")

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


def test_api_handler_exception_arrives():
    with FakeSentry() as fake:
        proc = run_program(API_PROGRAM.format(uri=SECRET_URI, port=free_port()), fake.dsn)
        assert "status 500" in proc.stdout, proc.stderr
        events = wait_until(fake.events, what="api event")
        event = events[0]
        exc = event["exception"]["values"][-1]
        assert exc["type"] == "RuntimeError"
        assert exc["mechanism"]["type"] == "aiohttp"
        assert event["tags"]["program"] == "api"
        assert event["environment"] == "test" and event["release"] == "cryptodata@test1"
        assert "[Filtered]" in exc["value"]
        assert all(req["gzip"] and req["path"] == "/api/1/envelope/" for req in fake.requests)
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
