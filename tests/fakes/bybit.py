"""Fake Bybit v5: /v5/public/spot and /v5/public/linear WebSockets plus the REST market endpoints
the feed uses (tickers, recent-trade, kline).

Messages are the documented samples (tests/fixtures/bybit) with symbol, ids, update ids and
timestamps filled in. On subscribe the order-book snapshot is sent *before* the ack (as Bybit
does sometimes). Topics of symbols in ``bad_symbols`` make the request fail with the real error
ack; like the real server (pessimistically) the whole request then fails and none of its
topics is served. A topic subscribed twice fails the request the same way with "already
subscribed" (that text is constructed: the reference notes show no sample). Spot requests with
more than 10 args are recorded in ``violations``.

Trades happen on the fake's own tape (tests/fakes/tape.py) whether or not a client is connected;
``/v5/market/recent-trade`` serves them (newest first, ``limit`` capped as documented: spot 60,
linear 1000; a larger limit is answered with the parameter error). ``/v5/market/kline`` serves
deterministic 1m candles (``rest_candle``) newest first; the newest one is the current, unclosed
minute.
"""
from __future__ import annotations

import copy
import time
import uuid
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.base import FakeExchange, fixture
from tests.fakes.tape import TradeTape, TradingFake


def now_ms() -> int:
    return int(time.time() * 1000)


def rest_candle(start_ms: int) -> list[str]:
    """The fake's 1m candle opening at ``start_ms`` (REST row layout)."""
    k = start_ms // 60_000 % 50
    o = 30200.0 + k
    return [str(start_ms), f"{o}", f"{o + 5}", f"{o - 5}", f"{o + 1}", "2.5", f"{(o + 1) * 2.5}"]


class FakeBybit(TradingFake, FakeExchange):
    def __init__(self) -> None:
        super().__init__()
        # keys: (category, symbol), category "spot" | "linear"
        self.tape = TradeTape(first_id=2_100_000_000_007_764_263)
        self.bad_symbols: set[str] = {"BADUSDT"}
        self.violations: list[str] = []
        self.snapshot_before_ack = True
        self.rate_limited = False      # REST answers the IP limit's HTTP 403
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
            "rest_trade": fixture("bybit/rest_recent_trade.jsonl")[0],
            "rest_kline": fixture("bybit/rest_kline.jsonl")[0],
        }

    # ---- REST --------------------------------------------------------------------------------
    def routes(self, app: web.Application) -> None:
        app.router.add_get("/v5/market/tickers", self._rest_tickers)
        app.router.add_get("/v5/market/recent-trade", self._rest_recent_trade)
        app.router.add_get("/v5/market/kline", self._rest_kline)

    @staticmethod
    def _json(body: Any) -> web.Response:
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    def _params_error(self, text: str) -> web.Response:
        return self._json({"retCode": 10001, "retMsg": text, "result": {}, "retExtInfo": {},
                           "time": now_ms()})

    async def _rest_recent_trade(self, request: web.Request) -> web.Response:
        self.rest_requests.append(str(request.rel_url))
        if self.rate_limited:
            return web.Response(status=403, text="access too frequent")
        category, symbol = request.query.get("category", ""), request.query.get("symbol", "")
        limit = int(request.query.get("limit", 1 if category == "spot" else 500))
        if not 1 <= limit <= (60 if category == "spot" else 1000):
            return self._params_error("params error: limit out of range")
        body = copy.deepcopy(self.samples["rest_trade"])
        template = body["result"]["list"][0]
        body["result"].update(category=category, list=[
            dict(template, execId=self.trade_id(category, t), symbol=symbol,
                 price=self.trade_price(category), size=self.trade_size(category), side="Buy",
                 time=str(t["ts"]), isRPITrade=False, seq=str(t["id"]))
            for t in self.tape.recent((category, symbol), limit)])
        body["time"] = now_ms()
        return self._json(body)

    async def _rest_kline(self, request: web.Request) -> web.Response:
        self.rest_requests.append(str(request.rel_url))
        if request.query.get("interval") != "1":
            return self._params_error("params error: interval")
        limit = min(int(request.query.get("limit", 200)), 1000)
        now = now_ms()
        current = now - now % 60_000
        start = int(request.query.get("start", current - (limit - 1) * 60_000))
        first = max(start - start % 60_000, current - (limit - 1) * 60_000)
        body = copy.deepcopy(self.samples["rest_kline"])
        body["result"].update(symbol=request.query.get("symbol"),
                              category=request.query.get("category"),
                              list=[rest_candle(m) for m in range(current, first - 1, -60_000)])
        body["time"] = now
        return self._json(body)

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
        dup = [t for t in args if t in state["topics"]]
        good = [] if bad or dup else args
        if not self.snapshot_before_ack:
            await self.send(ws, ack)
        for topic in good:
            state["topics"].add(topic)
            if topic.startswith("publicTrade."):
                self.tape.activate(("linear" if linear else "spot", topic.split(".", 1)[1]))
            if not self.silent:
                await self.initial(ws, state, topic)
        if bad or dup:
            error = dict(self.samples["error"])
            error["ret_msg"] = f"Invalid topic: {bad[0]}" if bad else \
                f"error:already subscribed,topic:{dup[0]}"
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
        elif kind == "kline":
            await self.send(ws, self.kline(symbol))

    async def stream_once(self, ws, path, state) -> None:
        for topic in sorted(state["topics"]):
            kind, symbol = topic.split(".", 1)[0], topic.rsplit(".", 1)[1]
            if kind == "orderbook":
                await self.send(ws, self.book_delta(state, symbol))
            elif kind == "tickers":
                await self.send(ws, self.ticker(state, symbol, snapshot=not state["linear"]))
            elif kind == "kline":
                await self.send(ws, self.kline(symbol))

    # ---- trades (the tape) -------------------------------------------------------------------
    def trade_subscribers(self, key) -> list:
        category, symbol = key
        return [ws for ws in self.connections
                if ws.state_dict["linear"] == (category == "linear")
                and f"publicTrade.{symbol}" in ws.state_dict["topics"]]

    @staticmethod
    def trade_id(category: str, trade: dict[str, Any]) -> str:
        """Spot ids are numeric strings, linear ids UUIDs (as documented)."""
        return str(trade["id"]) if category == "spot" else str(uuid.UUID(int=trade["id"]))

    def trade_price(self, category: str) -> str:
        return self.samples["trade"]["data"][0]["p"]

    def trade_size(self, category: str) -> str:
        return self.samples["trade"]["data"][0]["v"]

    def trade_message(self, key, trade: dict[str, Any]) -> dict[str, Any]:
        category, symbol = key
        msg = copy.deepcopy(self.samples["trade"])
        msg["topic"] = f"publicTrade.{symbol}"
        msg["ts"] = now_ms()
        msg["data"][0].update(T=trade["ts"], s=symbol, i=self.trade_id(category, trade),
                              p=self.trade_price(category), v=self.trade_size(category),
                              seq=trade["id"])
        return msg

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
