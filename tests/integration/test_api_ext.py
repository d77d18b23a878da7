"""Extended API contract: every endpoint on real stored data, cursor paging, range limits,
/orderbook, analysis (API + CLI), auth (also through ``python -m api``), rate limit, injection,
/ws delivery (every record, in order) + slow clients, OpenAPI/route parity (paths and
parameters), /metrics, merged collector status, request ids, index coverage of the history
queries, the benchmark harness, and schemathesis against a live server (zero 5xx)."""
from __future__ import annotations

import asyncio
import base64
import logging
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import timedelta

import orjson
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient, TestServer
from bson import ObjectId
from yarl import URL

from api.__main__ import bind_settings
from api.app import ConfigError, create_app
from api.keys import HUB
from api.openapi import openapi_path
from api.params import Filters, encode_cursor
from api.queries import Queries
from api.routes import ROUTES
from api.security import auth_config_error, auth_required
from collector.retention import migrate_time_keys
from collector.writer import Writer
from common import schema
from common.indexes import STREAM_SORT, apply_indexes, index_specs, indexes_can_name_id
from common.schema import (
    BookSnapshot, Candle, Funding, Liquidity, OpenInterest, Ticker, Trade, now_utc,
)
from common.settings import RetentionSettings, Settings
from tests.bench import api_bench
from tests.support.helpers import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


async def seed(db) -> None:
    writer = Writer(db)
    now = now_utc()
    base = now - timedelta(seconds=60)
    for i in range(30):
        ts = base + timedelta(seconds=i // 3)          # three trades per timestamp: ties
        writer.submit(Trade("binance", "BTCUSDT", "BTC/USDT", "spot", ts, now, trade_id=str(i),
                            price=100.0 + i, size=1.0, side="buy"))
    for ex, sym, perp, price, vol in (("binance", "BTCUSDT", "BTCUSDT", 50000.0, 900.0),
                                      ("okx", "BTC-USDT", "BTC-USDT-SWAP", 50050.0, 100.0)):
        writer.submit(Trade(ex, sym, "BTC/USDT", "spot", now, now, trade_id="x", price=price,
                            size=0.1, side="sell"))
        writer.submit(Ticker(ex, sym, "BTC/USDT", "spot", now, now, last=price, bid=price - 1,
                             ask=price + 1, volume_24h=vol, quote_volume_24h=vol * price))
        writer.submit(Ticker(ex, perp, "BTC/USDT", "perp", now, now, last=price + 25,
                             mark_price=price + 20, volume_24h=vol, quote_volume_24h=vol * price))
        writer.submit(Funding(ex, perp, "BTC/USDT", "perp", now.replace(microsecond=0), now,
                              rate=0.0001, interval_hours=8.0))
        writer.submit(OpenInterest(ex, perp, "BTC/USDT", "perp", now, now, open_interest=10.0))
        writer.submit(BookSnapshot(ex, sym, "BTC/USDT", "spot", now, now,
                                   bids=[[price - i, 1.0] for i in range(1, 31)],
                                   asks=[[price + i, 1.0] for i in range(1, 31)], depth=30,
                                   update_id=12345))
        writer.submit(Liquidity(ex, sym, "BTC/USDT", "spot", now, now, mid=price, spread_bps=0.4))
        writer.submit(Candle(ex, sym, "BTC/USDT", "spot", now.replace(second=0, microsecond=0),
                             now, open=1.0, high=2.0, low=0.5, close=1.5, volume=3.0))
    assert await writer.flush()


def make_settings(mongo_uri, db, **kw) -> Settings:
    kw.setdefault("api_rate_per_s", 0)
    return Settings(mongodb_uri=mongo_uri, mongodb_db=db.name, exchanges=["binance", "okx"], **kw)


@pytest.fixture
async def seeded(mongo_uri, mongo_db):
    await apply_indexes(mongo_db, Settings().retention)
    await seed(mongo_db)
    return mongo_db


@pytest.fixture
async def make_client(mongo_uri, seeded):
    clients = []

    async def make(**kw) -> TestClient:
        client = TestClient(TestServer(create_app(make_settings(mongo_uri, seeded, **kw))))
        await client.start_server()
        clients.append(client)
        return client
    yield make
    for c in clients:
        await c.close()


@pytest.fixture
async def client(make_client):
    return await make_client()


async def wait_for(predicate, timeout: float = 5.0, step: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate() if asyncio.iscoroutinefunction(predicate) else predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(step)


# --- contract on every endpoint -------------------------------------------------------------
CONCRETE = {
    "/realtime/{exchange}": "/realtime/okx",
    "/realtime/{exchange}/{symbol:.+}": "/realtime/okx/btcusdt",
    "/orderbook/{exchange}/{symbol:.+}": "/orderbook/binance/BTC-USDT",
}
HISTORY = {"/market-data": "last", "/trades": "trade_id", "/ohlcv": "close",
           "/funding-rates": "rate", "/open-interest": "open_interest",
           "/volume-liquidity": "spread_bps", "/orderbook-snapshots": "bids"}


@pytest.mark.parametrize("route", [r for r in ROUTES if r.path != "/ws"],
                         ids=lambda r: r.path)
async def test_every_endpoint_on_stored_data(client, route):
    path = CONCRETE.get(route.path, route.path)
    resp = await client.get(path)
    assert resp.status == 200, (path, await resp.text())
    assert resp.headers["X-Request-Id"]
    if route.content_type != "application/json":
        assert resp.content_type == route.content_type
        return
    body = await resp.json()
    if route.path in HISTORY:
        assert body["count"] == len(body["data"]) > 0 and "next" in body
        assert HISTORY[route.path] in body["data"][0]
        assert all("_id" not in row for row in body["data"])
        filtered = await (await client.get(route.path, params={
            "exchange": "okx", "symbol": "BTC/USDT", "market": "spot", "limit": "1"})).json()
        for row in filtered["data"]:
            assert (row["exchange"], row["market"]) == ("okx", "spot")


async def test_cursor_pages_walk_every_row_once_with_ties(client):
    seen, cursor, cursors = [], None, []
    while True:
        params = {"exchange": "binance", "symbol": "BTCUSDT", "market": "spot", "limit": "7"}
        if cursor:
            params["cursor"] = cursor
        body = await (await client.get("/trades", params=params)).json()
        seen += [(r["ts"], r["trade_id"]) for r in body["data"]]
        cursor = body["next"]
        if not cursor:
            break
        cursors.append(cursor)
        assert len(cursors) < 20
    ids = [t for _, t in seen]
    assert len(ids) == len(set(ids)) == 31                 # 30 + the one "x" trade
    assert ids == ["x"] + [str(i) for i in range(29, -1, -1)]
    # Three trades per millisecond: a page ending inside one (trades 17, 10) carries the last
    # _id; one ending on a millisecond's last trade (24, 3) only the millisecond (one read).
    # The last page has no cursor: nothing older exists.
    assert [c.count(".o") for c in cursors] == [0, 1, 1, 0]
    assert all(c.partition(".")[0].isdigit() for c in cursors)


async def test_book_snapshots_default_to_a_page_of_20_trades_to_100(client, seeded):
    """A book snapshot is ~8 trades' size: its default page is 20 (the OpenAPI says so), an
    explicit limit still goes to 1000; the other history endpoints keep 100."""
    writer = Writer(seeded)
    base = now_utc() - timedelta(minutes=5)
    for i in range(25):
        writer.submit(BookSnapshot("binance", "ETHUSDT", "ETH/USDT", "spot",
                                   base + timedelta(seconds=i), base, bids=[[10.0 - i / 100, 1.0]],
                                   asks=[[10.0 + i / 100, 1.0]], depth=1, update_id=i))
    assert await writer.flush()
    params = {"exchange": "binance", "symbol": "ETHUSDT"}
    first = await (await client.get("/orderbook-snapshots", params=params)).json()
    assert [r["update_id"] for r in first["data"]] == list(range(24, 4, -1))
    rest = await (await client.get("/orderbook-snapshots",
                                   params={**params, "cursor": first["next"]})).json()
    assert [r["update_id"] for r in rest["data"]] == [4, 3, 2, 1, 0] and rest["next"] is None
    everything = await (await client.get("/orderbook-snapshots",
                                         params={**params, "limit": "1000"})).json()
    assert everything["count"] == 25
    trades = await (await client.get("/trades", params={"exchange": "binance"})).json()
    assert trades["count"] == 31                     # all of them, under the default of 100
    spec = await (await client.get("/openapi.json")).json()
    limit_default = {path: next(p["schema"]["default"] for p in spec["paths"][path]["get"]["parameters"]
                                if p["name"] == "limit")
                     for path in ("/orderbook-snapshots", "/trades")}
    assert limit_default == {"/orderbook-snapshots": 20, "/trades": 100}


async def test_any_time_range_is_a_page_and_an_inverted_one_is_empty(client):
    """The contract (OpenAPI pattern) has no cross-parameter rule: a 40-day range answers like
    any other (newest first, ``limit`` rows), since > until is an empty range, not an error."""
    old = (now_utc() - timedelta(days=40)).isoformat()
    newest = await (await client.get("/trades", params={"limit": "2"})).json()
    ranged = await client.get("/trades", params={"since": old, "limit": "2"})
    assert ranged.status == 200 and (await ranged.json())["data"] == newest["data"]
    inverted = await client.get("/trades", params={"since": "2026-01-02", "until": "2026-01-01"})
    assert inverted.status == 200
    assert await inverted.json() == {"data": [], "count": 0, "next": None}


async def test_orderbook_top_n_with_update_id_and_sync(client):
    body = await (await client.get("/orderbook/okx/btcusdt", params={"depth": "5"})).json()
    book = body["data"][0]
    assert book["symbol"] == "BTC-USDT" and book["update_id"] == 12345
    assert len(book["bids"]) == len(book["asks"]) == 5 and book["bids"][0][0] > book["bids"][1][0]
    assert book["sync"]["state"] == "live"
    assert (await client.get("/orderbook/okx/NOPE")).status == 404
    assert (await client.get("/orderbook/okx/BTC-USDT", params={"depth": "0"})).status == 400
    assert (await client.get("/orderbook/okx/BTC-USDT", params={"market": "perp"})).status == 404


async def test_analysis_endpoints(client, seeded):
    check = await (await client.get("/analysis/data-check")).json()
    by = {r["collection"]: r for r in check["collections"]}
    assert by["trades"]["count"] == 32 and by["trades"]["per_hour_last_1h"] == 32
    assert by["trades"]["newest_age_s"] < 60
    # The totals (a row count on nx-27017, O(n)) are shared for a minute; the windows are exact.
    writer = Writer(seeded)
    writer.submit(Trade("binance", "BTCUSDT", "BTC/USDT", "spot", now_utc(), now_utc(),
                        trade_id="later", price=1.0, size=1.0, side="buy"))
    assert await writer.flush()
    again = {r["collection"]: r for r in
             (await (await client.get("/analysis/data-check")).json())["collections"]}
    assert (again["trades"]["count"], again["trades"]["per_hour_last_1h"]) == (32, 33)
    btc = await (await client.get("/analysis/bitcoin")).json()
    spot = next(s for s in btc["spreads"] if s["market"] == "spot")
    assert (spot["min_exchange"], spot["max_exchange"], spot["spread"]) == ("binance", "okx", 50.0)
    share = {(v["exchange"], v["market"]): v["share_pct"] for v in btc["volume_share"]}
    assert share[("binance", "spot")] > share[("okx", "spot")]
    assert {f["exchange"] for f in btc["funding"]} == {"binance", "okx"}
    basis = {b["exchange"]: b for b in btc["basis"]}
    assert basis["binance"]["basis"] == 20.0 and basis["binance"]["basis_bps"] == 4.0


async def test_analysis_clis_print_tables(mongo_uri, seeded):
    env = {**os.environ, "MONGODB_URI": mongo_uri, "CRYPTODATA_MONGODB_DB": seeded.name}
    for module, needle in (("api.tools.data_check", "trades"), ("api.tools.bitcoin", "Basis")):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", module, cwd=ROOT, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()
        assert needle in out.decode()
        if module.endswith("bitcoin"):
            assert "okx" in out.decode() and "50,050" in out.decode()


# --- auth, rate limit, injection -------------------------------------------------------------
async def test_auth_on_requires_a_valid_key_except_health(make_client):
    client = await make_client(api_auth="on", api_keys=["k-123"])
    resp = await client.get("/trades")
    assert resp.status == 401
    assert (await resp.json())["error"] == {"status": 401, "message":
                                            "missing API key (send it in the X-API-Key header)"}
    resp = await client.get("/trades", headers={"X-API-Key": "wrong"})
    assert resp.status == 401 and (await resp.json())["error"]["message"] == "invalid API key"
    assert (await client.get("/trades", headers={"X-API-Key": "k-123"})).status == 200
    assert (await client.get("/health")).status == 200
    assert (await client.get("/metrics")).status == 401


async def test_ws_takes_the_key_as_api_key_query_and_only_ws(make_client):
    """Browsers cannot send headers on a WebSocket: /ws (only) accepts ?api_key=; the page and
    its static files need no key."""
    client = await make_client(api_auth="on", api_keys=["k-123"])
    ws = await client.ws_connect("/ws?api_key=k-123")
    await ws.send_json({"op": "ping"})
    assert await ws.receive_json() == {"op": "pong"}
    await ws.close()
    resp = await client.get("/ws?api_key=wrong", headers={"Upgrade": "websocket"})
    assert resp.status == 401
    assert (await client.get("/trades?api_key=k-123")).status == 401
    for path in ("/", "/dashboard", "/static/dashboard.js",
                 "/static/vendor/lightweight-charts-4.2.3/LICENSE"):
        assert (await client.get(path)).status == 200, path
    # Nothing outside api/static/ is served, key or not.
    for path in ("/static/..%2fkeys.py", "/static/%2e%2e/keys.py"):
        resp = await client.get(URL(path, encoded=True), headers={"X-API-Key": "k-123"})
        assert resp.status in (403, 404), (path, resp.status)


async def test_auth_auto_off_on_loopback_on_elsewhere(make_client):
    loop_client = await make_client(api_keys=["k"], api_host="127.0.0.1")
    assert (await loop_client.get("/exchanges")).status == 200
    public = await make_client(api_keys=["k"], api_host="0.0.0.0")
    assert (await public.get("/exchanges")).status == 401
    assert (await public.get("/exchanges", headers={"X-API-Key": "k"})).status == 200


async def test_rate_limit_429_with_retry_after(make_client):
    client = await make_client(api_rate_per_s=0.5, api_rate_burst=3)
    statuses = [(await client.get("/exchanges")).status for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    resp = await client.get("/exchanges")
    assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
    assert (await resp.json())["error"]["status"] == 429
    assert (await client.get("/health")).status == 200          # exempt


@pytest.mark.parametrize("params,status", [
    ({"symbol": '{"$ne": "x"}'}, 404),
    ({"symbol": '{"$gt": ""}', "exchange": "binance"}, 404),
    ({"symbol[$ne]": "x"}, 400),
    ({"exchange[$ne]": "binance"}, 400),
    ({"exchange": '{"$ne": "binance"}'}, 400),
    ({"market": '{"$in": ["spot"]}'}, 400),
    ({"since": '{"$gt": 0}'}, 400),
    ({"limit": '{"$gt": 0}'}, 400),
    ({"cursor": "not-a-cursor"}, 400),
    ({"cursor": base64.urlsafe_b64encode(orjson.dumps([1, "s", {"$gt": ""}])).decode()}, 400),
    ({"cursor": base64.urlsafe_b64encode(orjson.dumps([1, "o", "zz"])).decode()}, 400),
])
async def test_injection_attempts_never_reach_mongodb_as_operators(client, params, status):
    resp = await client.get("/trades", params=params)
    assert resp.status == status
    assert (await resp.json())["error"]["status"] == status


# --- /ws ------------------------------------------------------------------------------------
async def test_ws_delivers_records_written_after_subscription(client, seeded):
    ws = await client.ws_connect("/ws")
    await ws.send_json({"op": "subscribe", "exchange": "binance", "symbol": "BTC-USDT",
                        "type": "trades"})
    ack = await ws.receive_json(timeout=5)
    assert ack["op"] == "subscribed" and ack["filter"]["type"] == "trades"
    writer = Writer(seeded)
    ts = now_utc()
    writer.submit(Trade("okx", "BTC-USDT", "BTC/USDT", "spot", ts, ts, trade_id="n1",
                        price=1.0, size=1.0, side="buy"))       # other exchange: filtered out
    writer.submit(Trade("binance", "BTCUSDT", "BTC/USDT", "spot", ts, ts, trade_id="new",
                        price=123.0, size=2.0, side="buy"))
    assert await writer.flush()
    msg = await ws.receive_json(timeout=5)
    assert msg["op"] == "record" and msg["key"] == "binance:spot:BTCUSDT:trades"
    assert msg["data"]["trade_id"] == "new" and msg["data"]["price"] == 123.0
    await ws.send_json({"op": "nope"})
    assert (await ws.receive_json(timeout=5))["op"] == "error"
    await ws.close()


async def test_ws_slow_client_is_bounded_then_closed(client, seeded):
    hub = client.app[HUB]
    hub.max_queue, hub.slow_after_s = 20, 1.5
    fast = await client.ws_connect("/ws")             # keeps the shared poller running
    await fast.send_json({"op": "subscribe", "exchange": "okx"})
    assert (await fast.receive_json(timeout=5))["op"] == "subscribed"
    ws = await client.ws_connect("/ws")
    await ws.send_json({"op": "subscribe", "exchange": "binance"})
    assert (await ws.receive_json(timeout=5))["op"] == "subscribed"
    (server_client,) = [c for c in hub.clients if 1 in c.subs and c.subs[1].exchange == "binance"]
    blocked = asyncio.Event()

    async def never_drains(data, compress=None):     # a peer that never reads: sends block
        blocked.set()
        await asyncio.Future()
    server_client.ws.send_str = never_drains
    writer = Writer(seeded)
    for round_ in range(4):
        ts = now_utc()
        for i in range(50):                            # 50 distinct keys per round
            writer.submit(Ticker("binance", f"SYM{i}USDT", f"SYM{i}/USDT", "spot", ts, ts,
                                 last=float(round_)))
        assert await writer.flush()
        polls = hub.polls
        await wait_for(lambda polls=polls: hub.polls >= polls + 2)
        assert len(server_client.queue) <= hub.max_queue
    assert blocked.is_set()
    assert server_client.max_seen <= hub.max_queue and server_client.dropped > 0
    msg = await ws.receive(timeout=10)                 # closed with a clear code
    assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING)
    assert ws.close_code == 4008
    assert server_client not in hub.clients and not server_client.queue
    assert len(hub.clients) == 1                        # the fast client is unaffected
    await fast.send_json({"op": "ping"})
    assert (await fast.receive_json(timeout=5))["op"] == "pong"


# --- docs, metrics ----------------------------------------------------------------------------
async def test_openapi_matches_the_route_table_and_docs_render(client):
    spec = await (await client.get("/openapi.json")).json()
    table = {(r.method.lower(), openapi_path(r.path)) for r in ROUTES}
    documented = {(m, p) for p, ops in spec["paths"].items() for m in ops}
    # /ws is a WebSocket, which OpenAPI 3.0 cannot describe: /docs has its protocol.
    assert table - {("get", "/ws")} == documented
    registered = {(r.method.lower(), openapi_path(r.resource.canonical))
                  for r in client.app.router.routes()
                  if r.method != "HEAD" and not r.resource.canonical.startswith("/static")}
    assert registered == table
    assert spec["openapi"].startswith("3.")
    ids = [op["operationId"] for ops in spec["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))              # / and /dashboard share a handler
    assert spec["paths"]["/trades"]["get"]["responses"]["405"]["headers"]["Allow"]
    html = await (await client.get("/docs")).text()
    assert "<script" not in html and "https://" not in html and "http://" not in html  # no CDN
    for _, path in table:
        assert path in html


async def test_metrics_per_canonical_route_and_collector_gauges(client, seeded):
    await client.get("/realtime/okx/BTC-USDT")
    await client.get("/realtime/binance/btcusdt")
    await seeded[schema.STATUS].insert_one({
        "_id": "collector", "updated_at": now_utc(), "running": True,
        "writer": {"stored": 1234, "pending": 7, "last_write_ms": 3.5},
        "exchanges": {"binance": {"messages": 999, "reconnects": 2, "gaps": 1, "malformed": 3,
                                  "records": {"trades": 55}}}})
    text = await (await client.get("/metrics")).text()
    assert ('cryptodata_api_requests_total{method="GET",route="/realtime/{exchange}/{symbol}",'
            'status="200"} 2.0') in text
    assert 'cryptodata_api_request_duration_seconds_bucket{le="0.001",method="GET",' in text \
        or 'cryptodata_api_request_duration_seconds_count{method="GET",route="/realtime/{exchange}/{symbol}"} 2.0' in text
    for line in ('cryptodata_collector_messages{exchange="binance"} 999.0',
                 'cryptodata_collector_reconnects{exchange="binance"} 2.0',
                 'cryptodata_collector_gaps{exchange="binance"} 1.0',
                 'cryptodata_collector_malformed{exchange="binance"} 3.0',
                 'cryptodata_collector_writer_stored 1234.0',
                 'cryptodata_collector_writer_pending 7.0',
                 'cryptodata_collector_writer_last_write_ms 3.5'):
        assert line in text, line
    assert "BTC-USDT" not in text                       # raw URLs never become labels


# --- schemathesis -----------------------------------------------------------------------------
async def test_schemathesis_finds_no_server_errors(mongo_uri, seeded, tmp_path):
    port = free_port()
    server = TestServer(create_app(make_settings(mongo_uri, seeded)), host="127.0.0.1", port=port)
    await server.start_server()
    try:
        exe = os.path.join(os.path.dirname(sys.executable), "schemathesis")
        proc = await asyncio.create_subprocess_exec(
            exe, "run", f"http://127.0.0.1:{port}/openapi.json", "--checks",
            "not_a_server_error", "--max-examples", "15", "--seed", "1",
            "--phases", "examples,coverage,fuzzing", "--no-color", "--request-timeout", "10",
            cwd=str(tmp_path), env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        await server.close()
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-4000:]
    assert "Server error" not in text


async def test_ws_peer_that_never_reads_real_socket_stays_bounded(client, seeded):
    """A real TCP peer with a tiny receive window that never reads: the server's per-client
    queue stays within max_queue while records keep arriving, and the client is dropped."""
    import socket
    hub = client.app[HUB]
    hub.max_queue, hub.slow_after_s, hub.sndbuf = 30, 1.5, 8192
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", client.server.port))
    key = base64.b64encode(os.urandom(16)).decode()
    await loop.sock_sendall(sock, (
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += await loop.sock_recv(sock, 1)
    assert head.startswith(b"HTTP/1.1 101")
    payload = orjson.dumps({"op": "subscribe", "exchange": "binance"})
    mask = os.urandom(4)
    frame = bytes([0x81, 0x80 | len(payload)]) + mask + bytes(
        b ^ mask[i % 4] for i, b in enumerate(payload))
    await loop.sock_sendall(sock, frame)
    await wait_for(lambda: len(hub.clients) == 1)
    (server_client,) = hub.clients
    writer = Writer(seeded, batch_size=1000)
    high = 0
    try:
        for round_ in range(40):                 # ~400 bytes per record, 200 keys per round
            ts = now_utc()
            for i in range(200):
                writer.submit(Ticker("binance", f"S{i}USDT", f"S{i}/USDT", "spot", ts, ts,
                                     last=float(round_), bid=1.0, ask=2.0, volume_24h=3.0,
                                     quote_volume_24h=4.0, high_24h=5.0, low_24h=0.5))
            assert await writer.flush()
            polls = hub.polls
            await wait_for(lambda polls=polls: hub.polls > polls or server_client not in hub.clients)
            high = max(high, len(server_client.queue))
            assert len(server_client.queue) <= hub.max_queue
            if server_client not in hub.clients:
                break
        assert server_client.max_seen <= hub.max_queue and high <= hub.max_queue
        assert server_client not in hub.clients          # dropped as too slow
    finally:
        sock.close()


# --- startup: the bound address decides auth; refuse to serve without keys ---------------------
def test_bound_host_decides_whether_keys_are_required():
    base = Settings(api_keys=[], api_auth="auto", api_host="127.0.0.1")
    public = bind_settings(base, "0.0.0.0", 5001)
    assert auth_required(public) and not auth_required(bind_settings(base, "127.0.0.1", 5001))
    assert "CRYPTODATA_API_KEYS" in auth_config_error(public)
    assert auth_config_error(bind_settings(base, "::1", 5001)) is None
    assert auth_config_error(public.model_copy(update={"api_keys": ["k"]})) is None
    assert auth_config_error(public.model_copy(update={"api_auth": "off"})) is None
    assert auth_config_error(base.model_copy(update={"api_auth": "on"})) is not None
    with pytest.raises(ConfigError):
        create_app(public)


def _api_env(mongo_uri: str, db_name: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CRYPTODATA_") and k != "MONGODB_URI"}
    env.update({"MONGODB_URI": mongo_uri, "CRYPTODATA_MONGODB_DB": db_name,
                "CRYPTODATA_CONFIG_FILE": os.devnull, "CRYPTODATA_API_RATE_PER_S": "0"}, **extra)
    return env


def _serve(env: dict[str, str], port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "api", "--host", "0.0.0.0", "--port",
                             str(port)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    out, err = proc.communicate()
    raise AssertionError(f"API did not start (rc={proc.returncode}): {err[-2000:]}")


def _status_of(port: int, path: str, key: str | None = None) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                 headers={"X-API-Key": key} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_public_bind_without_keys_refuses_to_start(mongo_uri, seeded):
    env = _api_env(mongo_uri, seeded.name)
    proc = subprocess.run([sys.executable, "-m", "api", "--host", "0.0.0.0", "--port",
                           str(free_port())], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0
    assert "CRYPTODATA_API_KEYS is empty" in proc.stderr and "0.0.0.0" in proc.stderr


@pytest.mark.parametrize("extra,without_key", [
    ({"CRYPTODATA_API_KEYS": '["k-1"]'}, 401),     # --host 0.0.0.0 reaches the auth decision
    ({"CRYPTODATA_API_AUTH": "off"}, 200),         # explicitly disabled: starts, no key needed
])
def test_public_bind_serves_with_keys_or_auth_off(mongo_uri, seeded, extra, without_key):
    port = free_port()
    proc = _serve(_api_env(mongo_uri, seeded.name, **extra), port)
    try:
        assert _status_of(port, "/exchanges") == without_key
        assert _status_of(port, "/exchanges", "k-1") == 200
        assert _status_of(port, "/health") == 200
    finally:
        proc.terminate()
        proc.communicate(timeout=20)


# --- request ids, access log, the 500 path ----------------------------------------------------
async def test_500_is_stable_json_with_request_id_logged_and_no_traceback(mongo_uri, seeded,
                                                                          caplog):
    app = create_app(make_settings(mongo_uri, seeded))

    async def boom(request):                 # test-only route: an unexpected handler failure
        raise RuntimeError("secret internal detail")
    app.router.add_get("/boom", boom)
    client = TestClient(TestServer(app))
    await client.start_server()
    caplog.set_level(logging.INFO, logger="api")
    try:
        resp = await client.get("/boom", headers={"X-Request-Id": "req-42.a_B"})
        text = await resp.text()
        assert resp.status == 500 and resp.headers["X-Request-Id"] == "req-42.a_B"
        assert orjson.loads(text) == {"error": {"status": 500, "message": "internal error",
                                                "request_id": "req-42.a_B"}}
        assert "Traceback" not in text and "secret" not in text and "RuntimeError" not in text
        access = [r.getMessage() for r in caplog.records if r.name == "api.access"]
        assert any(m.startswith("GET /boom 500 ") and m.endswith("id=req-42.a_B")
                   for m in access), access
        failure = [r for r in caplog.records if r.name == "api" and r.exc_info]
        assert failure and "req-42.a_B" in failure[0].getMessage()
        # A client id that could forge or break log lines is replaced by a generated one.
        for bad in ("x" * 65, "a b", "<script>", "id\tx"):
            resp = await client.get("/exchanges", headers={"X-Request-Id": bad})
            rid = resp.headers["X-Request-Id"]
            assert resp.status == 200 and re.fullmatch(r"[0-9a-f]{16}", rid), (bad, rid)
            assert any(m.endswith(f"id={rid}") and m.startswith("GET /exchanges 200 ")
                       for m in (r.getMessage() for r in caplog.records
                                 if r.name == "api.access"))
    finally:
        await client.close()


# --- every route accepts exactly the parameters it documents ----------------------------------
def _valid_values() -> dict[str, str]:
    now = now_utc()
    return {"exchange": "okx", "symbol": "BTC-USDT", "market": "spot", "limit": "5",
            "since": (now - timedelta(hours=1)).isoformat(), "until": now.isoformat(),
            "cursor": encode_cursor(schema.time_key(now), ObjectId()), "interval": "1m", "depth": "5"}


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.path)
async def test_route_accepts_exactly_its_openapi_parameters(client, route):
    path = CONCRETE.get(route.path, route.path)
    spec = await (await client.get("/openapi.json")).json()
    documented = [] if route.path == "/ws" else \
        spec["paths"][openapi_path(route.path)]["get"]["parameters"]
    query = {p["name"]: _valid_values()[p["name"]] for p in documented if p["in"] == "query"}
    # Every parameter some other route takes, and one nobody takes: a 400 here.
    others = {p["name"] for ops in spec["paths"].values() for op in ops.values()
              for p in op["parameters"] if p["in"] == "query"} - set(query)
    for name in sorted(others - ({"api_key"} if route.path == "/ws" else set())) + ["zz_undocumented"]:
        resp = await client.get(path, params={name: _valid_values().get(name, "1")})
        assert resp.status == 400, (path, name, await resp.text())
        assert "unknown parameter" in (await resp.json())["error"]["message"], (path, name)
    if route.path == "/ws":
        assert not query
        return
    resp = await client.get(path, params=query)
    assert resp.status in (200, 404), (path, query, await resp.text())
    if resp.status == 404:
        assert "parameter" not in (await resp.json())["error"]["message"]


# --- symbol spellings: Kraken and Gate.io -------------------------------------------------------
@pytest.mark.parametrize("exchange,native,spellings", [
    ("kraken", "BTC/USD", ["XBT/USD", "XXBTZUSD", "BTC/USD", "BTC-USD"]),
    ("gateio", "BTC_USDT", ["BTC_USDT", "BTC-USDT"]),
])
async def test_symbol_spellings_kraken_and_gateio(client, seeded, exchange, native, spellings):
    writer = Writer(seeded)
    now = now_utc()
    pair = "BTC/USD" if exchange == "kraken" else "BTC/USDT"
    writer.submit(Trade(exchange, native, pair, "spot", now, now, trade_id="k1", price=1.0,
                        size=1.0, side="buy"))
    writer.submit(BookSnapshot(exchange, native, pair, "spot", now, now, bids=[[1.0, 1.0]],
                               asks=[[2.0, 1.0]], depth=1, update_id=7))
    assert await writer.flush()
    for spelling in spellings:
        trades = await (await client.get("/trades", params={"exchange": exchange,
                                                            "symbol": spelling})).json()
        assert [r["symbol"] for r in trades["data"]] == [native], spelling
        quoted = urllib.parse.quote(spelling, safe="")
        realtime = await (await client.get(f"/realtime/{exchange}/{quoted}")).json()
        assert list(realtime["data"]) == [native], spelling
        book = await (await client.get(f"/orderbook/{exchange}/{quoted}")).json()
        assert book["data"][0]["symbol"] == native and book["data"][0]["update_id"] == 7
    resp = await client.get("/trades", params={"exchange": exchange, "symbol": "ETH/USD"})
    assert resp.status == 404 and native in (await resp.json())["error"]["known_symbols"][exchange]


# --- history sorts are served by an index (deterministic: from the spec) ------------------------
def _serving_index(collection: str, query: dict, sort: list) -> list | None:
    """Keys of an index whose prefix fields all have equality ($in) predicates in ``query`` and
    whose remaining keys are exactly ``sort``: MongoDB then returns rows in sort order without a
    SORT stage (merging one scan per $in combination). An equality on a field (the cursor's
    own millisecond: ``t`` equal, sorted by ``_id``) may also sit between prefix and sort."""
    equal = {f for f, v in query.items()
             if isinstance(v, (str, int)) or (isinstance(v, dict) and set(v) == {"$in"})}
    best = None
    for spec in index_specs(RetentionSettings()):
        n = len(spec.keys) - len(sort)
        if (spec.collection == collection and n >= 0 and spec.keys[n:] == sort
                and {f for f, _ in spec.keys[:n]} <= equal
                and (best is None or n > len(best) - len(sort))):
            best = spec.keys
    return best


def _flat(query: dict) -> bool:
    """Only field predicates: no $and / $or / $nor / $expr anywhere (nx-27017 scans for them)."""
    return all(not k.startswith("$") and (not isinstance(v, dict) or all(
        op in ("$in", "$gte", "$gt", "$lte", "$lt") for op in v)) for k, v in query.items())


async def _history_shapes(queries: Queries):
    """(collection, query, sort, fields the serving index must start with) for every read the
    history endpoints and /gaps send (a page after a cursor is two reads)."""
    since = now_utc() - timedelta(hours=1)
    cursor = (schema.time_key(now_utc()), ObjectId())
    shapes = [({}, ()), ({"exchange": "okx"}, ()), ({"market": "spot"}, ()),
              ({"exchange": "okx", "symbol": "BTC-USDT"}, ("exchange", "symbol")),
              ({"symbol": "btc/usdt"}, ("exchange", "symbol")),      # two exchanges: $in
              ({"exchange": "binance", "symbol": "BTCUSDT", "market": "spot"},
               ("exchange", "symbol"))]
    out = []
    for kw, prefix in shapes:
        for extra in ({}, {"since": since}, {"cursor": cursor},
                      {"since": since, "cursor": cursor}):
            f = Filters(exchange=kw.get("exchange"), symbol=kw.get("symbol"),
                        market=kw.get("market"), limit=100, since=extra.get("since"),
                        until=None, cursor=extra.get("cursor"))
            for coll, wildcard in ((schema.TRADES, False), (schema.GAPS, True)):
                scope = await queries.scope_query(f, wildcard=wildcard)
                reads = queries.page_queries(scope, f)
                assert len(reads) == (2 if f.cursor else 1)
                for query, sort in reads:
                    out.append((coll, query, sort, prefix))
    return out


async def test_every_history_query_shape_is_served_by_an_index(seeded):
    queries = Queries(seeded)
    for coll, query, sort, prefix in await _history_shapes(queries):
        assert _flat(query), query
        keys = _serving_index(coll, query, sort)
        if sort == [("_id", -1)]:
            # The cursor's own millisecond: equality on t, then _id, in the same index.
            assert isinstance(query["t"], int), query
            keys = _serving_index(coll, query, [("t", -1), ("_id", -1)])
        assert keys is not None, (coll, query, sort)
        assert tuple(f for f, _ in keys[:len(prefix)]) == prefix, (coll, query, keys)
    symbol_only = await queries.scope_query(Filters(None, "btc/usdt", None, 10, None, None))
    assert symbol_only == {"exchange": {"$in": ["binance", "okx"]},
                           "symbol": {"$in": ["BTC-USDT", "BTCUSDT"]}}
    # the /ws poller's read: an integer range on rt (a date range is a scan on nx-27017)
    assert STREAM_SORT == [(schema.RECEIVED_KEY, 1), ("_id", 1)]
    assert _serving_index(schema.TRADES, {schema.RECEIVED_KEY: {"$gte": 0}},
                          list(STREAM_SORT)) == STREAM_SORT


def _plan_stages(node) -> list[str]:
    if isinstance(node, dict):
        found = [node["stage"]] if isinstance(node.get("stage"), str) else []
        return found + [s for v in node.values() for s in _plan_stages(v)]
    if isinstance(node, list):
        return [s for v in node for s in _plan_stages(v)]
    return []


async def test_history_plans_have_no_blocking_sort_on_mongod(seeded):
    if not await indexes_can_name_id(seeded):
        pytest.skip("needs a real mongod (MONGODB_URI): nx-27017 cannot hold _id-suffixed "
                    "indexes and has no query planner to explain; the spec test above covers it")
    queries = Queries(seeded)
    for coll, query, sort, _ in await _history_shapes(queries):
        plan = await seeded[coll].find(query).sort(sort).limit(100).explain()
        stages = _plan_stages(plan["queryPlanner"]["winningPlan"])
        assert "SORT" not in stages and "IXSCAN" in stages, (coll, query, stages)


# --- /gaps: cursor paging, spellings --------------------------------------------------------------
async def test_gaps_cursor_pages_and_symbol_spellings(client, seeded):
    base = now_utc().replace(microsecond=0) - timedelta(minutes=30)
    docs = []
    for i in range(7):
        start = base + timedelta(seconds=i // 2)          # pairs share a start: ties
        docs.append({"_id": f"binance:spot:BTCUSDT:trade:{i}", "exchange": "binance",
                     "symbol": "BTCUSDT", "market": "spot", "stream": "trade", "start": start,
                     "end": start + timedelta(seconds=1), "cause": "disconnect",
                     "backfilled": True})
    docs.append({"_id": "binance:*:*:binance:spot:x", "exchange": "binance", "symbol": "*",
                 "market": "*", "stream": "binance:spot", "start": base + timedelta(seconds=9),
                 "end": None, "cause": "idle", "backfilled": False})
    docs.append({"_id": "okx:spot:BTC-USDT:trade:y", "exchange": "okx", "symbol": "BTC-USDT",
                 "market": "spot", "stream": "trade", "start": base + timedelta(seconds=8),
                 "end": None, "cause": "disconnect", "backfilled": False})
    await seeded[schema.GAPS].insert_many(docs)
    # Written as an earlier release wrote them (no integer key t): the collector's start-up
    # migration adds it; the reads below need it.
    assert await migrate_time_keys(seeded, [schema.GAPS]) == 9
    assert await migrate_time_keys(seeded, [schema.GAPS]) == 0          # done once
    stored = await seeded[schema.GAPS].find_one({"_id": "okx:spot:BTC-USDT:trade:y"})
    assert stored["t"] == schema.time_key(base) + 8000
    seen, cursor, pages = [], None, 0
    while True:
        params = {"exchange": "binance", "symbol": "btc-usdt", "limit": "3"}
        if cursor:
            params["cursor"] = cursor
        resp = await client.get("/gaps", params=params)
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        seen += [(r["start"], r["stream"], r["symbol"]) for r in body["data"]]
        pages += 1
        cursor = body["next"]
        if not cursor:
            break
        assert pages < 10
    assert len(seen) == 8 and pages == 3                  # 7 BTCUSDT gaps + the '*' one
    assert {s for _, _, s in seen} == {"BTCUSDT", "*"}
    assert [s for s, _, _ in seen] == sorted((s for s, _, _ in seen), reverse=True)
    assert (await client.get("/gaps", params={"symbol": "NOPE"})).status == 404
    # A symbol that has gaps but never a stored record (not in `latest`) is still known here.
    await seeded[schema.GAPS].insert_one({
        "_id": "binance:spot:ETHUSDT:trade:z", "exchange": "binance", "symbol": "ETHUSDT",
        "market": "spot", "stream": "trade", "start": base, "end": None, "cause": "restart",
        "backfilled": False, "t": schema.time_key(base)})
    body = await (await client.get("/gaps", params={"symbol": "eth-usdt",
                                                    "market": "spot"})).json()
    assert {(r["symbol"], r["cause"]) for r in body["data"]} == {("ETHUSDT", "restart"),
                                                                 ("*", "idle")}


# --- collector status: partitions merged, book sync state ---------------------------------------
async def test_partitioned_status_is_merged_and_books_marked_resyncing(client, seeded):
    now = now_utc()
    spool = {"records": 5, "bytes": 500, "segments": 1, "max_bytes": 1000,
             "policy": "drop_oldest", "dropped": 0, "rejected": 0, "spooled": 5, "replayed": 0}
    await seeded[schema.STATUS].insert_many([
        {"_id": "collector-0-of-2", "updated_at": now - timedelta(seconds=3), "running": True,
         "host": "h", "pid": 10,
         "writer": {"stored": 100, "pending": 2, "last_write_ms": 3.0, "db_available": True,
                    "spool": spool},
         "exchanges": {"binance": {
             "messages": 10, "reconnects": 1, "gaps": 0, "resyncs": 2,
             "records": {"trades": 4}, "connections": {"binance:spot": {"connected": True}},
             "last_record_at": {"trades": {"spot:BTCUSDT": now}},
             "books": {"spot:BTCUSDT": {"state": "resyncing", "since": now - timedelta(seconds=1),
                                        "update_id": None}}}}},
        {"_id": "collector-1-of-2", "updated_at": now - timedelta(seconds=1), "running": True,
         "host": "h", "pid": 11,
         "writer": {"stored": 50, "pending": 1, "last_write_ms": 7.0, "db_available": True,
                    "spool": {**spool, "records": 7, "bytes": 700}},
         "exchanges": {
             "binance": {"messages": 5, "reconnects": 2, "gaps": 1, "resyncs": 0,
                         "records": {"trades": 6},
                         "connections": {"binance:spot": {"connected": False}},
                         "last_record_at": {"trades": {"perp:BTCUSDT": now}},
                         "books": {"perp:BTCUSDT": {"state": "live", "since": now,
                                                    "update_id": 99}}},
             "okx": {"messages": 3, "last_record_at": {"trades": {"spot:BTC-USDT": now}},
                     "books": {"spot:BTC-USDT": {"state": "live", "since": now,
                                                 "update_id": 12345}}}}},
        # A stopped single-process run from earlier: listed, but not the heartbeat.
        {"_id": "collector", "updated_at": now - timedelta(hours=1), "running": False,
         "writer": {"stored": 1}, "exchanges": {}},
        {"_id": "collectors-old", "updated_at": now - timedelta(days=9), "running": True},
        {"_id": "other-program", "updated_at": now - timedelta(days=9), "running": True},
    ])
    health = await (await client.get("/health")).json()
    assert health["status"] == "healthy", health["problems"]
    collector = health["collector"]
    assert [p["id"] for p in collector["processes"]] == ["collector", "collector-0-of-2",
                                                          "collector-1-of-2"]
    assert 2.5 <= collector["heartbeat_age_s"] < 60          # the oldest running process
    assert collector["writer"]["stored"] == 151 and collector["writer"]["last_write_ms"] == 7.0
    assert collector["writer"]["spool"]["records"] == 12
    binance = health["exchanges"]["binance"]
    assert binance["reconnects"] == 3 and binance["gaps"] == 1
    assert set(binance["stream_age_s"]) == {"trades:spot:BTCUSDT", "trades:perp:BTCUSDT"}
    assert binance["books"]["spot:BTCUSDT"]["state"] == "resyncing"
    assert binance["books"]["perp:BTCUSDT"]["update_id"] == 99

    rt = (await (await client.get("/realtime/binance/BTCUSDT")).json())["data"]["BTCUSDT"]
    assert rt["spot"]["order_book"]["resyncing"] is True
    assert rt["spot"]["volume_liquidity"]["resyncing"] is True
    assert rt["spot"]["order_book"]["stale"] is False
    assert "resyncing" not in rt["spot"]["trades"]              # not derived from the book
    everything = (await (await client.get("/realtime")).json())["data"]
    assert everything["okx"]["BTC-USDT"]["spot"]["order_book"]["resyncing"] is False

    book = (await (await client.get("/orderbook/binance/BTCUSDT")).json())["data"][0]
    assert book["sync"]["state"] == "resyncing" and book["sync"]["source"] == "collector"
    assert book["sync"]["stale"] is False and book["sync"]["resyncs"] == 2
    okx = (await (await client.get("/orderbook/okx/BTC-USDT")).json())["data"][0]
    assert okx["sync"]["state"] == "live" and okx["sync"]["update_id"] == 12345

    text = await (await client.get("/metrics")).text()
    for line in ('cryptodata_collector_messages{exchange="binance"} 15.0',
                 'cryptodata_collector_spool_records 12.0',
                 'cryptodata_collector_spool_bytes 1200.0',
                 'cryptodata_collector_writer_pending 3.0',
                 'cryptodata_collector_processes{running="true"} 2.0',
                 'cryptodata_collector_processes{running="false"} 1.0'):
        assert line in text, line


async def test_health_names_the_partition_whose_heartbeat_is_late(client, seeded):
    now = now_utc()
    await seeded[schema.STATUS].insert_many([
        {"_id": f"collector-{i}-of-2", "updated_at": now - timedelta(seconds=age),
         "running": True, "writer": {}, "exchanges": {}}
        for i, age in ((0, 1), (1, 300))])
    body = await (await client.get("/health")).json()
    assert body["status"] == "degraded"
    assert any(p.startswith("collector collector-1-of-2 heartbeat is") for p in body["problems"])
    assert not any("collector-0-of-2" in p for p in body["problems"])
    assert body["collector"]["heartbeat_age_s"] >= 299


# --- /ws: every record, in order -----------------------------------------------------------------
async def test_ws_delivers_every_trade_in_order_across_flushes(client, seeded):
    hub = client.app[HUB]
    ws = await client.ws_connect("/ws")
    await ws.send_json({"op": "subscribe", "exchange": "binance", "symbol": "BTC-USDT",
                        "type": "trades"})
    assert (await ws.receive_json(timeout=5))["op"] == "subscribed"
    writer = Writer(seeded)
    for flush in range(5):
        for i in range(10):
            n = flush * 10 + i
            ts = now_utc()
            writer.submit(Trade("binance", "BTCUSDT", "BTC/USDT", "spot", ts, ts,
                                trade_id=f"t{n}", price=100.0 + n, size=1.0, side="buy"))
            writer.submit(Trade("binance", "BTCUSDC", "BTC/USDC", "spot", ts, ts,
                                trade_id=f"c{n}", price=1.0, size=1.0, side="buy"))  # filtered
        assert await writer.flush()
        if flush % 2:
            polls = hub.polls                      # let some flushes land in separate ticks
            await wait_for(lambda polls=polls: hub.polls > polls)
    got = []
    while len(got) < 50:
        msg = await ws.receive_json(timeout=5)
        assert msg["op"] == "record" and msg["key"] == "binance:spot:BTCUSDT:trades"
        got.append(msg["data"]["trade_id"])
    assert got == [f"t{n}" for n in range(50)]
    polls = hub.polls
    await wait_for(lambda: hub.polls >= polls + 3)  # a sweep has run too: still no repeats
    await ws.send_json({"op": "ping"})
    assert (await ws.receive_json(timeout=5)) == {"op": "pong"}
    await ws.close()


async def test_ws_delivers_a_record_stored_after_newer_ones(client, seeded):
    """Two collector partitions flush independently: a record received earlier can be stored
    after newer ones were already sent; it is still delivered (within the lookback)."""
    ws = await client.ws_connect("/ws")
    await ws.send_json({"op": "subscribe", "exchange": "binance", "type": "trades"})
    assert (await ws.receive_json(timeout=5))["op"] == "subscribed"
    part_a, part_b = Writer(seeded), Writer(seeded)
    now = now_utc()

    def trade(symbol: str, trade_id: str, received) -> Trade:
        return Trade("binance", symbol, "BTC/USDT", "spot", received, received,
                     trade_id=trade_id, price=1.0, size=1.0, side="buy")
    part_a.submit(trade("BTCUSDT", "a1", now))
    assert await part_a.flush()
    assert (await ws.receive_json(timeout=5))["data"]["trade_id"] == "a1"
    part_b.submit(trade("BTCUSDC", "b0", now - timedelta(milliseconds=400)))
    assert await part_b.flush()
    late = await ws.receive_json(timeout=5)
    assert (late["key"], late["data"]["trade_id"]) == ("binance:spot:BTCUSDC:trades", "b0")
    # Beyond the lookback (a spool replay hours later) it is history, not live: skipped.
    part_b.submit(trade("BTCUSDC", "old", now - timedelta(hours=1)))
    part_b.submit(trade("BTCUSDC", "b1", now_utc()))
    assert await part_b.flush()
    assert (await ws.receive_json(timeout=5))["data"]["trade_id"] == "b1"
    await ws.close()


# --- benchmark harness smoke test (no wall-clock thresholds) --------------------------------------
def test_api_bench_prints_figures_for_every_endpoint_in_both_modes():
    proc = subprocess.run(
        [sys.executable, "tests/bench/api_bench.py", "--mode", "both", "--trades-per-symbol",
         "20", "-c", "2", "-n", "20", "--rate", "20", "--duration", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for mode in ("closed", "rate"):
        rows = [line for line in proc.stdout.splitlines() if line.startswith(f"| {mode} |")]
        assert [r.split("|")[2].strip().strip("`") for r in rows] == api_bench.ENDPOINTS, rows
        for row in rows:
            cells = [c.strip() for c in row.strip("|").split("|")]
            p50, p99, rps = (float(c) for c in cells[3:6])
            assert 0 < p50 <= p99 and rps > 0, row


async def test_405_says_which_methods_are_allowed(client):
    """RFC 9110: a 405 carries Allow; the body keeps the one JSON error shape."""
    for method, path in (("POST", "/trades"), ("DELETE", "/realtime/okx"), ("PUT", "/")):
        resp = await client.request(method, path)
        assert resp.status == 405, (method, path)
        assert {m.strip() for m in resp.headers["Allow"].split(",")} == {"GET"}, resp.headers
        assert await resp.json() == {"error": {"status": 405, "message": "Method Not Allowed"}}
