"""monitoring.healthcheck against the REAL API: the aiohttp app from api/ on a free port, over the
test MongoDB, fed by the collector's own code (feeds' emit -> Writer, Collector.status_doc).
Exit codes, output, thresholds and Sentry envelopes."""
from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from datetime import timedelta
from types import SimpleNamespace
from unittest import mock

import aiohttp
import pytest
from aiohttp import web

from api.app import create_app
from collector.app import Collector
from collector.exchanges import base, load_feed_class
from collector.exchanges.base import Feed, FeedContext
from common import schema
from common.schema import Ticker, Trade, now_utc
from common.settings import Settings
from tests.conftest import ROOT
from tests.support.helpers import free_port, wait_for
from tests.support.ops_fake_sentry import FakeSentry


async def serve(app: web.Application) -> tuple[str, web.AppRunner]:
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return f"http://127.0.0.1:{port}", runner


class Live:
    """The real API plus a collector whose records and heartbeat the test places in time."""

    def __init__(self, url: str, collector: Collector, feeds: dict[str, Feed]) -> None:
        self.url, self.collector, self.feeds = url, collector, feeds
        self._trade_id = 0

    async def record(self, exchange: str, symbol: str, *, age_s: float = 0.0,
                     kind: str = "trades") -> None:
        """One record through the feed's emit (writer + freshness stats), stored ``age_s`` ago."""
        at = now_utc() - timedelta(seconds=age_s)
        self._trade_id += 1
        record = (Trade(exchange, symbol, symbol, "spot", at, at, trade_id=str(self._trade_id),
                        price=100.0, size=1.0, side="buy") if kind == "trades"
                  else Ticker(exchange, symbol, symbol, "spot", at, at, last=100.0))
        clock = SimpleNamespace(time=lambda: time.time() - age_s, monotonic=time.monotonic)
        with mock.patch.object(base, "time", clock):
            self.feeds[exchange].emit(record)
        assert await self.collector.writer.flush()

    async def heartbeat(self, age_s: float = 0.0) -> None:
        """The collector's status document, as its status loop writes it, ``age_s`` ago."""
        doc = self.collector.status_doc()
        doc.update(running=True, updated_at=doc["updated_at"] - timedelta(seconds=age_s))
        await self.collector.db[schema.STATUS].replace_one({"_id": self.collector.status_id}, doc, upsert=True)


@pytest.fixture
async def live(mongo_uri, mongo_db, tmp_path):
    settings = Settings(mongodb_uri=mongo_uri, mongodb_db=mongo_db.name,
                        exchanges=["binance", "okx"], spool_dir=str(tmp_path / "spool"))
    collector = Collector(settings)
    async with aiohttp.ClientSession() as session:
        ctx = FeedContext(settings, collector.writer, collector.stats, session,
                          settings.poll_interval_s, collector.gaps)
        feeds = {name: load_feed_class(name)(settings.exchange(name), ctx)
                 for name in settings.exchanges}
        collector.feeds = list(feeds.values())
        url, runner = await serve(create_app(settings))
        try:
            yield Live(url, collector, feeds)
        finally:
            await runner.cleanup()
            await collector.client.close()


@pytest.fixture
async def dead_db_api():
    """The real API with MongoDB unreachable (nothing listens on the URI's port)."""
    settings = Settings(mongodb_uri=f"mongodb://127.0.0.1:{free_port()}", exchanges=["binance"])
    url, runner = await serve(create_app(settings))
    try:
        yield url
    finally:
        await runner.cleanup()


async def fresh(live: Live) -> None:
    await live.record("binance", "BTCUSDT")
    await live.record("binance", "BTCUSDT", kind="ticker")
    await live.record("okx", "BTC-USDT")
    await live.heartbeat()


async def run_check(*args: str, dsn: str | None = None) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTODATA_")}
    env.update(PYTHONPATH=str(ROOT), CRYPTODATA_RELEASE="cryptodata@test1")
    if dsn:
        env["CRYPTODATA_SENTRY_DSN"] = dsn
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "monitoring.healthcheck", *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert b"Traceback" not in err, err.decode()
    return proc.returncode, out.decode()


def statuses(out: str) -> dict[str, str]:
    return {c["component"]: c["status"] for c in json.loads(out)["checks"]}


async def test_fresh_data_is_ok(live):
    await fresh(live)
    rc, out = await run_check("--api", live.url, "--no-sentry", "--json")
    assert rc == 0, out
    checks = {c["component"]: c for c in json.loads(out)["checks"]}
    assert {k: c["status"] for k, c in checks.items()} == {
        "api": "OK", "mongodb": "OK", "collector": "OK",
        "freshness:binance": "OK", "freshness:okx": "OK"}
    # The real /health shape: market_data + trades of BTCUSDT on spot.
    assert checks["freshness:binance"]["data"]["streams"] == 2
    rc, text = await run_check("--api", live.url, "--no-sentry")
    assert rc == 0 and text.startswith("CRYPTODATA OK - 5 checks passed")


@pytest.mark.parametrize("binance_ages, code, bad", [
    # one stream past the API's stale_after_s (120 s) while the other is live: WARNING
    ((300.0, 0.0), 1, {"freshness:binance": "WARNING"}),
    # one stream silent past --stale-crit (600 s): CRITICAL although /health says healthy
    ((700.0, 0.0), 2, {"freshness:binance": "CRITICAL"}),
    # every stream silent: /health degraded and the exchange CRITICAL
    ((700.0, 650.0), 2, {"api": "WARNING", "freshness:binance": "CRITICAL"}),
])
async def test_stale_streams(live, binance_ages, code, bad):
    trades_age, ticker_age = binance_ages
    await live.record("binance", "BTCUSDT", age_s=trades_age)
    await live.record("binance", "BTCUSDT", age_s=ticker_age, kind="ticker")
    await live.record("okx", "BTC-USDT")
    await live.heartbeat()
    rc, out = await run_check("--api", live.url, "--no-sentry", "--json")
    assert rc == code, out
    assert {k: v for k, v in statuses(out).items() if v != "OK"} == bad
    rc, text = await run_check("--api", live.url, "--no-sentry")
    assert "trades:spot:BTCUSDT" in text


async def test_exchange_without_data_is_critical(live):
    await live.record("binance", "BTCUSDT")
    await live.heartbeat()
    rc, out = await run_check("--api", live.url, "--no-sentry", "--json")
    assert rc == 2
    assert {k: v for k, v in statuses(out).items() if v != "OK"} == {
        "api": "WARNING", "freshness:okx": "CRITICAL"}


@pytest.mark.parametrize("age, code, collector_status", [(60.0, 1, "WARNING"), (500.0, 2, "CRITICAL")])
async def test_collector_heartbeat(live, age, code, collector_status):
    await fresh(live)
    await live.heartbeat(age_s=age)
    rc, out = await run_check("--api", live.url, "--no-sentry", "--json")
    assert rc == code
    # /health itself turns degraded when the heartbeat is older than 30 s.
    assert {k: v for k, v in statuses(out).items() if v != "OK"} == {
        "api": "WARNING", "collector": collector_status}


async def test_stale_exchange_reported_to_sentry(live):
    await live.record("binance", "BTCUSDT", age_s=900.0)
    await live.record("okx", "BTC-USDT")
    await live.heartbeat()
    with FakeSentry() as fake:
        rc, _ = await run_check("--api", live.url, dsn=fake.dsn)
        assert rc == 2

        async def arrived():
            return len(fake.check_ins()) >= 2 and fake.events()
        await wait_for(arrived, what="freshness event and check-ins")
        fingerprints = sorted(tuple(e["fingerprint"]) for e in fake.events())
        assert fingerprints == [("cryptodata-healthcheck", "api"),
                                ("cryptodata-healthcheck", "freshness:binance")]
        event = next(e for e in fake.events() if e["fingerprint"][-1] == "freshness:binance")
        assert event["level"] == "error"
        assert event["contexts"]["healthcheck"]["data"]["oldest_stream"] == "trades:spot:BTCUSDT"
        assert [c["status"] for c in fake.check_ins()] == ["in_progress", "error"]


async def test_database_down_is_critical_and_reported_once_per_component(dead_db_api):
    with FakeSentry() as fake:
        # Two timer runs of the same incident (concurrently: each waits for server selection).
        (rc_text, text), (rc_json, out) = await asyncio.gather(
            run_check("--api", dead_db_api, dsn=fake.dsn),
            run_check("--api", dead_db_api, "--json", dsn=fake.dsn))
        assert rc_text == rc_json == 2
        assert text.startswith("CRYPTODATA CRITICAL - /health status=unhealthy (HTTP 503)")
        assert statuses(out) == {"api": "CRITICAL", "mongodb": "CRITICAL"}

        async def arrived():
            return len(fake.check_ins()) >= 4 and len(fake.events()) >= 4
        await wait_for(arrived, what="events and check-ins")
        events = fake.events()
        # one issue per failing component, identical fingerprints across runs
        assert sorted(tuple(e["fingerprint"]) for e in events) == sorted(
            [("cryptodata-healthcheck", "api"), ("cryptodata-healthcheck", "mongodb")] * 2)
        assert {e["level"] for e in events} == {"error"}
        assert all(e["release"] == "cryptodata@test1" for e in events)
        statuses_ = [c["status"] for c in fake.check_ins()]
        assert statuses_.count("in_progress") == 2 and statuses_.count("error") == 2
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


async def test_healthy_sends_ok_checkin_and_no_event(live):
    await fresh(live)
    with FakeSentry() as fake:
        rc, _ = await run_check("--api", live.url, dsn=fake.dsn)
        assert rc == 0

        async def arrived():
            return len(fake.check_ins()) >= 2
        await wait_for(arrived, what="check-ins")
        assert [c["status"] for c in fake.check_ins()] == ["in_progress", "ok"]
        assert fake.events() == []


@pytest.mark.parametrize("args", [("--bogus",), ("--timeout", "soon")])
async def test_bad_usage_is_unknown(args):
    rc, _ = await run_check(*args, "--no-sentry")
    assert rc == 3
