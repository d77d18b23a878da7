"""monitoring.healthcheck against a tiny local aiohttp /health: exit codes, output, Sentry."""
from __future__ import annotations

import asyncio
import json
import os
import sys

import pytest
from aiohttp import web

from tests.conftest import ROOT
from tests.helpers import free_port, wait_for
from tests.ops_fake_sentry import FakeSentry


def health_doc(status: str, *, heartbeat: float = 2.0, age: float = 1.5) -> dict:
    return {
        "status": status,
        "mongodb": {"reachable": status != "unhealthy", "ping_ms": 0.8},
        "collector": {"heartbeat_age_s": heartbeat},
        "exchanges": {
            "binance": {"trades": {"BTCUSDT": {"age_s": age}}, "stale": age > 120},
            "okx": {"market_data": {"BTC-USDT": {"age_s": 3.0}}},
        },
    }


@pytest.fixture
async def api():
    """A stand-in API whose /health answer the test sets; returns (base_url, state dict)."""
    state = {"doc": health_doc("healthy"), "http": 200}

    async def health(request):
        return web.json_response(state["doc"], status=state["http"])

    app = web.Application()
    app.router.add_get("/health", health)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", state
    finally:
        await runner.cleanup()


async def run_check(*args: str, dsn: str | None = None) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTODATA_")}
    env.update(PYTHONPATH=str(ROOT), CRYPTODATA_RELEASE="cryptodata@test1")
    if dsn:
        env["CRYPTODATA_SENTRY_DSN"] = dsn
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "monitoring.healthcheck", *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert not err or b"Traceback" not in err, err.decode()
    return proc.returncode, out.decode()


@pytest.mark.parametrize("status, http, code", [
    ("healthy", 200, 0), ("degraded", 200, 1), ("unhealthy", 503, 2),
])
async def test_exit_codes(api, status, http, code):
    url, state = api
    state.update(doc=health_doc(status), http=http)
    rc, out = await run_check("--api", url, "--no-sentry")
    assert rc == code, out
    assert out.startswith(f"CRYPTODATA {['OK', 'WARNING', 'CRITICAL'][code]} - ")
    rc_json, out_json = await run_check("--api", url, "--no-sentry", "--json")
    doc = json.loads(out_json)
    assert rc_json == code and doc["exit_code"] == code
    assert {c["component"] for c in doc["checks"]} >= {"api", "mongodb", "collector",
                                                       "freshness:binance", "freshness:okx"}


@pytest.mark.parametrize("age, heartbeat, code, component", [
    (300.0, 2.0, 1, "freshness:binance"),   # stale stream -> WARNING even when /health says healthy
    (1200.0, 2.0, 2, "freshness:binance"),
    (1.0, 60.0, 1, "collector"),
    (1.0, 500.0, 2, "collector"),
])
async def test_freshness_and_heartbeat_thresholds(api, age, heartbeat, code, component):
    url, state = api
    state["doc"] = health_doc("healthy", heartbeat=heartbeat, age=age)
    rc, out = await run_check("--api", url, "--no-sentry", "--json")
    assert rc == code
    bad = [c["component"] for c in json.loads(out)["checks"] if c["status"] != "OK"]
    assert bad == [component]


async def test_nested_stale_flag_warns(api):
    url, state = api
    doc = health_doc("healthy")
    doc["exchanges"]["kraken"] = {"trades": {"BTC/USD": {"age_s": None, "stale": True}}}
    state["doc"] = doc
    rc, out = await run_check("--api", url, "--no-sentry")
    assert rc == 1 and "kraken" in out and "stale: trades.BTC/USD" in out


async def test_unhealthy_api_reported_to_sentry_with_checkin(api):
    url, state = api
    state.update(doc=health_doc("unhealthy"), http=503)
    with FakeSentry() as fake:
        for _ in range(2):   # two timer runs of the same incident
            rc, _ = await run_check("--api", url, dsn=fake.dsn)
            assert rc == 2

        async def arrived():
            return len(fake.check_ins()) >= 4 and len(fake.events()) >= 4
        await wait_for(arrived, what="events and check-ins")
        events = fake.events()
        fingerprints = sorted(tuple(e["fingerprint"]) for e in events)
        # one issue per failing component, identical fingerprints across runs
        assert fingerprints == sorted([("cryptodata-healthcheck", "api"),
                                       ("cryptodata-healthcheck", "mongodb")] * 2)
        assert {e["level"] for e in events} == {"error"}
        assert all(e["release"] == "cryptodata@test1" for e in events)
        statuses = [c["status"] for c in fake.check_ins()]
        assert statuses.count("in_progress") == 2 and statuses.count("error") == 2
        checkin = fake.check_ins()[-1]
        assert checkin["monitor_slug"] == "cryptodata-healthcheck"
        assert checkin["monitor_config"]["schedule"] == {"type": "crontab", "value": "* * * * *"}


async def test_dead_api_reported_to_sentry():
    with FakeSentry() as fake:
        rc, out = await run_check("--api", f"http://127.0.0.1:{free_port()}", dsn=fake.dsn)
        assert rc == 2 and "unreachable" in out

        async def arrived():
            return fake.events() and len(fake.check_ins()) >= 2
        await wait_for(arrived, what="event for the dead API")
        event = fake.events()[0]
        assert event["fingerprint"] == ["cryptodata-healthcheck", "api"]
        assert event["tags"]["healthcheck.component"] == "api"
        assert [c["status"] for c in fake.check_ins()] == ["in_progress", "error"]


async def test_healthy_sends_ok_checkin_and_no_event(api):
    url, _ = api
    with FakeSentry() as fake:
        rc, _ = await run_check("--api", url, dsn=fake.dsn)
        assert rc == 0

        async def arrived():
            return len(fake.check_ins()) >= 2
        await wait_for(arrived, what="check-ins")
        assert [c["status"] for c in fake.check_ins()] == ["in_progress", "ok"]
        assert fake.events() == []
