"""Fake Bybit v5: /v5/public/spot and /v5/public/linear WebSockets plus /v5/market/tickers.

Messages are the documented samples (tests/fixtures/bybit) with symbol, ids, update ids and
timestamps filled in. On subscribe the order-book snapshot is sent *before* the ack (as Bybit
does sometimes). Topics of symbols in ``bad_symbols`` make the request fail with the real error
ack; like the real server (pessimistically) the whole request then fails and none of its
topics is served. Spot requests with more than 10 args are recorded in ``violations``.
"""
from __future__ import annotations

import copy
import itertools
import time
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.base import FakeExchange, fixture

_ids = itertools.count(1)


def now_ms() -> int:
    return int(time.time() * 1000)


class FakeBybit(FakeExchange):
    def __init__(self) -> None:
        super().__init__()
        self.bad_symbols: set[str] = {"BADUSDT"}
        self.violations: list[str] = []
        self.snapshot_before_ack = True
        self.samples = {
            "trade": fixture("bybit/publicTrade.jsonl")[0],
            "spot_ticker": fixture("bybit/tickers.jsonl")[1],
            "linear_ticker": fixture("bybit/tickers.jsonl")[2],
            "linear_delta": fixture("bybit/tickers_linear_delta.constructed.jsonl")[0],
            "kline": fixture("bybit/kline.jsonl")[0],
            "book_delta": fixture("bybit/orderbook.jsonl")[0],
            "error": fixture("bybit/error.jsonl")[0],
            "ack_spot": fixture("bybit/subscribe_ack.jsonl")[1],
            "ack_linear": fixture("bybit/subscribe_ack.jsonl")[2],
            "pong_spot": fixture("bybit/pong.jsonl")[0],
            "pong_linear": fixture("bybit/pong.jsonl")[1],
            "rest_ticker": fixture("bybit/rest_tickers.jsonl")[0],
        }

    # ---- REST --------------------------------------------------------------------------------
    def routes(self, app: web.Application) -> None:
        app.router.add_get("/v5/market/tickers", self._rest_tickers)

    async def _rest_tickers(self, request: web.Request) -> web.Response:
        self.rest_requests.append(str(request.rel_url))
        body = copy.deepcopy(self.samples["rest_ticker"])
        body["result"]["category"] = request.query.get("category", "linear")
        item = body["result"]["list"][0]
        item["symbol"] = request.query.get("symbol", "BTCUSDT")
        body["time"] = now_ms()
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    # ---- WebSocket ---------------------------------------------------------------------------
    def new_state(self, path: str) -> dict[str, Any]:
        return {"linear": path.endswith("linear"), "topics": set(), "u": {}}

    async def on_text(self, ws, path, state, text) -> None:
        msg = orjson.loads(text)
        op = msg.get("op")
        linear = state["linear"]
        if op == "ping":
            pong = dict(self.samples["pong_linear" if linear else "pong_spot"])
            if linear:
                pong["req_id"] = msg.get("req_id", "")
            await self.send(ws, pong)
            return
        if op not in ("subscribe", "unsubscribe"):
            return
        args = msg["args"]
        if not linear and len(args) > 10:
            self.violations.append(text)
        ack = dict(self.samples["ack_linear" if linear else "ack_spot"])
        ack.update(op=op, req_id=msg.get("req_id", ""))
        if op == "unsubscribe":
            for topic in args:
                state["topics"].discard(topic)
            await self.send(ws, ack)
            return
        bad = [t for t in args if t.rsplit(".", 1)[1] in self.bad_symbols]
        good = [] if bad else args
        if not self.snapshot_before_ack:
            await self.send(ws, ack)
        for topic in good:
            state["topics"].add(topic)
            if not self.silent:
                await self.initial(ws, state, topic)
        if bad:
            error = dict(self.samples["error"])
            error["ret_msg"] = f"Invalid topic: {bad[0]}"
            error["req_id"] = msg.get("req_id", "")
            await self.send(ws, error)
        elif self.snapshot_before_ack:
            await self.send(ws, ack)

    async def initial(self, ws, state, topic: str) -> None:
        kind, symbol = topic.split(".", 1)[0], topic.rsplit(".", 1)[1]
        if kind == "orderbook":
            await self.send(ws, self.book_snapshot(state, symbol))
        elif kind == "tickers":
            await self.send(ws, self.ticker(state, symbol, snapshot=True))
        elif kind == "publicTrade":
            await self.send(ws, self.trade(symbol))
        elif kind == "kline":
            await self.send(ws, self.kline(symbol))

    async def stream_once(self, ws, path, state) -> None:
        for topic in sorted(state["topics"]):
            kind, symbol = topic.split(".", 1)[0], topic.rsplit(".", 1)[1]
            if kind == "orderbook":
                await self.send(ws, self.book_delta(state, symbol))
            elif kind == "tickers":
                await self.send(ws, self.ticker(state, symbol, snapshot=not state["linear"]))
            elif kind == "publicTrade":
                await self.send(ws, self.trade(symbol))
            elif kind == "kline":
                await self.send(ws, self.kline(symbol))

    # ---- message builders (from the samples) -------------------------------------------------
    def book_snapshot(self, state, symbol: str, u: int | None = None) -> dict[str, Any]:
        u = state["u"][symbol] = u if u is not None else state["u"].get(symbol, 1000) + 1
        delta = self.samples["book_delta"]
        return {"topic": f"orderbook.200.{symbol}", "type": "snapshot", "ts": now_ms(),
                "data": {"s": symbol,
                         "b": [lvl for lvl in delta["data"]["b"] if float(lvl[1])],
                         "a": [lvl for lvl in delta["data"]["a"] if float(lvl[1])],
                         "u": u, "seq": 66544703342 + u},
                "cts": now_ms()}

    def book_delta(self, state, symbol: str, u: int | None = None) -> dict[str, Any]:
        if u is None:
            u = state["u"][symbol] = state["u"].get(symbol, 1000) + 1
        msg = copy.deepcopy(self.samples["book_delta"])
        msg["topic"] = f"orderbook.200.{symbol}"
        msg["ts"] = msg["cts"] = now_ms()
        msg["data"].update(s=symbol, u=u, seq=66544703342 + u,
                           b=[["30246.00", f"{(u % 7) + 1}.5"]], a=[["30250.00", "0.25"]])
        return msg

    def ticker(self, state, symbol: str, snapshot: bool) -> dict[str, Any]:
        if state["linear"]:
            msg = copy.deepcopy(self.samples["linear_ticker" if snapshot else "linear_delta"])
        else:
            msg = copy.deepcopy(self.samples["spot_ticker"])
        msg["topic"] = f"tickers.{symbol}"
        msg["data"]["symbol"] = symbol
        msg["ts"] = now_ms()
        return msg

    def trade(self, symbol: str) -> dict[str, Any]:
        msg = copy.deepcopy(self.samples["trade"])
        msg["topic"] = f"publicTrade.{symbol}"
        msg["ts"] = now_ms()
        item = msg["data"][0]
        item.update(T=now_ms(), s=symbol, i=f"fake-{next(_ids)}")
        return msg

    def kline(self, symbol: str) -> dict[str, Any]:
        msg = copy.deepcopy(self.samples["kline"])
        msg["topic"] = f"kline.1.{symbol}"
        start = now_ms() // 60000 * 60000
        msg["data"][0].update(interval="1", start=start, end=start + 59999, timestamp=now_ms())
        msg["ts"] = now_ms()
        return msg

    async def push(self, path_suffix: str, msg: Any) -> None:
        for ws in self.live(path_suffix):
            await self.send(ws, msg)
