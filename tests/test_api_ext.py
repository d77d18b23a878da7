"""Extended API contract: every endpoint on real stored data, cursor paging, range limits,
/orderbook, analysis (API + CLI), auth, rate limit, injection, /ws delivery + slow clients,
OpenAPI/route parity, /metrics, and schemathesis against a live server (zero 5xx)."""
from __future__ import annotations

import asyncio
import base64
import os
import sys
import time
from datetime import timedelta

import orjson
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient, TestServer

from api.app import create_app
from api.keys import HUB
from api.openapi import openapi_path
from api.routes import ROUTES
from collector.writer import Writer
from common import schema
from common.indexes import apply_indexes
from common.schema import (BookSnapshot, Candle, Funding, Liquidity, OpenInterest, Ticker, Trade,
                           now_utc)
from common.settings import Settings
from tests.helpers import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    seen, cursor, pages = [], None, 0
    while True:
        params = {"exchange": "binance", "symbol": "BTCUSDT", "market": "spot", "limit": "7"}
        if cursor:
            params["cursor"] = cursor
        body = await (await client.get("/trades", params=params)).json()
        seen += [(r["ts"], r["trade_id"]) for r in body["data"]]
        pages += 1
        cursor = body["next"]
        if not cursor:
            break
        assert pages < 20
    ids = [t for _, t in seen]
    assert len(ids) == len(set(ids)) == 31                 # 30 + the one "x" trade
    assert [ts for ts, _ in seen] == sorted((ts for ts, _ in seen), reverse=True)
    assert pages == 5


async def test_time_range_limit_unless_cursor(client):
    old = (now_utc() - timedelta(days=40)).isoformat()
    resp = await client.get("/trades", params={"since": old})
    assert resp.status == 400 and "31 days" in (await resp.json())["error"]["message"]
    first = await (await client.get("/trades", params={"limit": "2"})).json()
    resp = await client.get("/trades", params={"since": old, "limit": "2",
                                               "cursor": first["next"]})
    assert resp.status == 200 and (await resp.json())["count"] == 2
    ok = await client.get("/trades", params={"since": (now_utc() - timedelta(days=30)).isoformat()})
    assert ok.status == 200


async def test_orderbook_top_n_with_update_id_and_sync(client):
    body = await (await client.get("/orderbook/okx/btcusdt", params={"depth": "5"})).json()
    book = body["data"][0]
    assert book["symbol"] == "BTC-USDT" and book["update_id"] == 12345
    assert len(book["bids"]) == len(book["asks"]) == 5 and book["bids"][0][0] > book["bids"][1][0]
    assert book["sync"]["state"] == "live"
    assert (await client.get("/orderbook/okx/NOPE")).status == 404
    assert (await client.get("/orderbook/okx/BTC-USDT", params={"depth": "0"})).status == 400
    assert (await client.get("/orderbook/okx/BTC-USDT", params={"market": "perp"})).status == 404


async def test_analysis_endpoints(client):
    check = await (await client.get("/analysis/data-check")).json()
    by = {r["collection"]: r for r in check["collections"]}
    assert by["trades"]["count"] == 32 and by["trades"]["per_hour_last_1h"] == 32
    assert by["trades"]["newest_age_s"] < 60
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
        await wait_for(lambda: hub.polls >= polls + 2)
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
    assert table == documented
    registered = {(r.method.lower(), openapi_path(r.resource.canonical))
                  for r in client.app.router.routes() if r.method != "HEAD"}
    assert registered == table
    assert spec["openapi"].startswith("3.")
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
                                     quote_volume_24h=4.0, high_24h=5.0, low_24h=0.5),
                              history=False)
            assert await writer.flush()
            polls = hub.polls
            await wait_for(lambda: hub.polls > polls or server_client not in hub.clients)
            high = max(high, len(server_client.queue))
            assert len(server_client.queue) <= hub.max_queue
            if server_client not in hub.clients:
                break
        assert server_client.max_seen <= hub.max_queue and high <= hub.max_queue
        assert server_client not in hub.clients          # dropped as too slow
    finally:
        sock.close()
