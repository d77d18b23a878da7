"""API contract on real stored data (records written by the collector's own writer)."""
from __future__ import annotations

from datetime import timedelta

import pytest
from aiohttp.test_utils import TestClient, TestServer

from api.app import create_app
from collector.writer import Writer
from common import schema
from common.indexes import apply_indexes
from common.schema import Candle, Ticker, Trade, now_utc
from common.settings import Settings


@pytest.fixture
async def api(mongo_uri, mongo_db):
    settings = Settings(mongodb_uri=mongo_uri, mongodb_db=mongo_db.name, exchanges=["binance"])
    await apply_indexes(mongo_db, settings.retention)
    writer = Writer(mongo_db)
    now = now_utc()
    for i in range(30):
        ts = now - timedelta(seconds=30 - i)
        writer.submit(Trade("binance", "BTCUSDT", "BTC/USDT", "spot", ts, ts, trade_id=str(i),
                            price=100.0 + i, size=1.0, side="buy"))
        writer.submit(Trade("okx", "BTC-USDT", "BTC/USDT", "spot", ts, ts, trade_id=str(i),
                            price=200.0 + i, size=1.0, side="sell"))
    writer.submit(Ticker("binance", "BTCUSDT", "BTC/USDT", "spot", now, now, last=129.0))
    writer.submit(Ticker("binance", "BTCUSDT", "BTC/USDT", "perp", now, now, last=130.0))
    writer.submit(Candle("binance", "BTCUSDT", "BTC/USDT", "spot", now.replace(second=0), now,
                         open=1.0, high=2.0, low=0.5, close=1.5, volume=3.0))
    assert await writer.flush()
    client = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    yield client, now
    await client.close()


async def test_trades_latest_first_with_limit_and_time_filters(api):
    client, now = api
    resp = await client.get("/trades", params={"exchange": "binance", "symbol": "BTCUSDT",
                                               "limit": "5"})
    assert resp.status == 200
    body = await resp.json()
    assert body["count"] == 5 and [r["trade_id"] for r in body["data"]] == ["29", "28", "27", "26", "25"]
    assert "_id" not in body["data"][0] and body["data"][0]["ts"].endswith("Z")
    since = int((now - timedelta(seconds=5)).timestamp() * 1000)
    resp = await client.get("/trades", params={"exchange": "binance", "since": str(since)})
    assert {r["trade_id"] for r in (await resp.json())["data"]} == {"25", "26", "27", "28", "29"}


async def test_symbol_spellings_resolve_to_the_native_symbol(api):
    client, _ = api
    for spelling in ("BTC-USDT", "btcusdt", "BTC_USDT", "BTC/USDT"):
        resp = await client.get("/trades", params={"exchange": "okx", "symbol": spelling,
                                                   "limit": "1"})
        assert (await resp.json())["data"][0]["symbol"] == "BTC-USDT", spelling


async def test_realtime_views(api):
    client, _ = api
    body = await (await client.get("/realtime/binance/BTCUSDT")).json()
    assert body["data"]["BTCUSDT"]["spot"]["market_data"]["last"] == 129.0
    assert body["data"]["BTCUSDT"]["perp"]["market_data"]["last"] == 130.0
    assert body["data"]["BTCUSDT"]["spot"]["trades"]["stale"] is False
    everything = await (await client.get("/realtime")).json()
    assert set(everything["data"]) == {"binance", "okx"}
    okx = await (await client.get("/realtime/okx")).json()
    # The runbook's shape: data -> type -> records; the grouped view is by_symbol.
    assert [(r["symbol"], r["market"], r["price"]) for r in okx["data"]["trades"]] == [
        ("BTC-USDT", "spot", 229.0)]
    assert okx["data"]["market_data"] == [] and set(okx["by_symbol"]) == {"BTC-USDT"}
    resp = await client.get("/realtime/binance/NOPE")
    assert resp.status == 404
    err = await resp.json()
    assert err["error"]["known_symbols"] == {"binance": ["BTCUSDT"]}


async def test_ohlcv_exchanges_symbols(api):
    client, _ = api
    candles = await (await client.get("/ohlcv", params={"symbol": "BTCUSDT", "interval": "1m"})).json()
    assert candles["count"] == 1 and candles["data"][0]["close"] == 1.5
    exchanges = await (await client.get("/exchanges")).json()
    assert {"exchange": "binance", "enabled": True, "symbols": ["BTCUSDT"]} in exchanges["data"]
    symbols = await (await client.get("/symbols", params={"exchange": "okx"})).json()
    assert symbols["data"] == {"okx": ["BTC-USDT"]}


@pytest.mark.parametrize("path,params", [
    ("/trades", {"limit": "0"}), ("/trades", {"limit": "1001"}), ("/trades", {"limit": "ten"}),
    ("/trades", {"since": "yesterday"}), ("/trades", {"exchange": "ftx"}),
    ("/trades", {"symbol[$ne]": "x"}), ("/trades", {"since": "2026-02-30"}),
    ("/trades", {"exchange": ""}), ("/trades", {"exchange": "Binance"}), ("/realtime/OKX", {}),
    ("/trades", {"symbol": "BTC\u00e9"}), ("/trades", {"cursor": "1.x"}),
    ("/ohlcv", {"interval": "7m"}), ("/realtime/ftx", {}),
    # Not ASCII digits, or too many of them: a 400, never int() blowing up into a 500.
    ("/trades", {"limit": "²"}), ("/trades", {"limit": "١٠"}),
    ("/trades", {"limit": "9" * 5000}),
    ("/trades", {"limit": "-5"}), ("/trades", {"limit": " 5"}),
    ("/trades", {"since": "²"}), ("/trades", {"since": "9" * 5000}),
    ("/trades", {"until": "1" * 40}),
    ("/orderbook/binance/BTCUSDT", {"depth": "²"}),
    ("/orderbook/binance/BTCUSDT", {"depth": "9" * 5000}),
])
async def test_bad_parameters_get_400_json(api, path, params):
    client, _ = api
    resp = await client.get(path, params=params)
    assert resp.status == 400
    body = await resp.json()
    assert body["error"]["status"] == 400 and body["error"]["message"]


async def test_operator_injection_in_symbol_is_just_an_unknown_symbol(api):
    client, _ = api
    resp = await client.get("/trades", params={"symbol": '{"$ne": "x"}'})
    assert resp.status == 404


async def test_health_reports_database_and_collector(api, mongo_db):
    client, _ = api
    body = await (await client.get("/health")).json()
    assert body["mongodb"]["reachable"] is True and body["mongodb"]["ping_ms"] >= 0
    assert body["status"] == "degraded"            # no collector heartbeat yet
    await mongo_db[schema.STATUS].insert_one({
        "_id": "collector", "updated_at": now_utc(), "running": True, "writer": {},
        "exchanges": {"binance": {"last_record_at": {"trades": {"spot:BTCUSDT": now_utc()}}}}})
    body = await (await client.get("/health")).json()
    assert body["status"] == "healthy", body["problems"]
    assert body["exchanges"]["binance"]["fresh"] is True
