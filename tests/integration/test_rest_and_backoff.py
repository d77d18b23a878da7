"""REST budget (429/418 + Retry-After) and reconnect backoff bounds."""
from __future__ import annotations

import time

import aiohttp
import pytest
from aiohttp import web

from collector.connection import Backoff
from collector.rest import RateBudget, RateLimited, RestClient, RestError


@pytest.fixture
async def server():
    hits = {"n": 0}

    async def limited(request: web.Request) -> web.Response:
        hits["n"] += 1
        return web.json_response({"code": -1003, "msg": "Too many requests"}, status=429,
                                 headers={"Retry-After": "7"})

    async def bad_symbol(request: web.Request) -> web.Response:
        return web.json_response({"code": -1121, "msg": "Invalid symbol."}, status=400)

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"symbol": request.query["symbol"]})

    app = web.Application()
    app.router.add_get("/limited", limited)
    app.router.add_get("/bad", bad_symbol)
    app.router.add_get("/ok", ok)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}", hits
    await runner.cleanup()


async def test_429_pauses_the_whole_exchange_budget_for_retry_after(server):
    base, hits = server
    budget = RateBudget(capacity=100)
    async with aiohttp.ClientSession() as session:
        client = RestClient(session, base, budget)
        assert await client.get("/ok", {"symbol": "BTCUSDT"}) == {"symbol": "BTCUSDT"}
        with pytest.raises(RateLimited) as info:
            await client.get("/limited")
        assert info.value.status == 429 and hits["n"] == 1
        # Every further request of this exchange now waits out Retry-After (7 s).
        assert budget.paused_until - time.monotonic() > 6
        with pytest.raises(RestError) as bad:
            budget.paused_until = 0
            await client.get("/bad")
        assert bad.value.payload == {"code": -1121, "msg": "Invalid symbol."}


async def test_budget_spends_weight_and_refills():
    budget = RateBudget(capacity=10, window_s=1.0)
    await budget.acquire(10)
    started = time.monotonic()
    await budget.acquire(5)          # must wait for ~0.5 s of refill
    assert time.monotonic() - started >= 0.4


def test_backoff_is_capped_jittered_and_resets():
    backoff = Backoff(initial_s=1.0, max_s=60.0)
    delays = [backoff.next_delay() for _ in range(12)]
    assert all(0.5 <= d <= 60.0 for d in delays)
    assert max(delays[-4:]) >= 30.0          # grew to the cap region
    assert len({round(d, 6) for d in delays}) > 6   # jittered, not a fixed schedule
    backoff.reset()
    assert backoff.next_delay() <= 1.0
