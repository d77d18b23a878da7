"""Fake Bybit v5: /v5/public/spot and /v5/public/linear WebSockets plus the REST market endpoints
the feed uses (tickers, recent-trade, kline), as strict as the real server per
docs/exchanges/bybit.md.

WebSocket rules:
- Subscribe rejections in the real shapes: spot ``Invalid symbol :[<topics>]``, linear
  ``error:handler not found,topic:<topic>``; the whole request fails (none of its topics served).
- Spot: more than 10 args in one request -> ``args size >10`` (nothing served); a request
  repeating a live topic gets no reply at all and serves nothing. Linear: a duplicate fails the
  request with ``error:already subscribed,topic:<topic>``.
- At most 21,000 characters of args per connection (a request past that fails; the server's text
  is unknown, ours is constructed).
- Heartbeat: ``{"op":"ping"}`` answered with the per-market pong; a connection that for
  ``idle_cut_s`` (600 s as documented, shortened in tests) neither pinged nor was sent data is
  cut.
- The order-book snapshot may arrive before the ack (``snapshot_before_ack``).

Content (seeded, ``seed``): book deltas change sizes on both sides, delete levels (size "0"),
move the top of book, skip update ids (+1..+5) and now and then re-send a full snapshot; trades
are buys and sells at varying prices and sizes (a function of the trade id, so REST and WS
agree); klines carry ``rest_candle`` values and the finished minute is sent once with
``confirm: true``. ``book_tops`` records the fake's best bid/ask per update id.

REST rules: unknown symbols (``bad_symbols``) answer HTTP 200 ``retCode 10001 "Not supported
symbols"``; more than ``rest_limit`` requests per 5 s (600 as documented) switch on the IP ban:
HTTP 403 "access too frequent" until a test switches it off (``rate_limited``).
``/v5/market/recent-trade`` serves the tape newest first (limit: spot 1-60, linear 1-1000);
``/v5/market/kline`` serves ``rest_candle`` rows newest first within ``start``..``end``.
"""
from __future__ import annotations

import asyncio
import copy
import random
import time
import uuid
from collections import deque
from typing import Any

import orjson
from aiohttp import web
from websockets.exceptions import ConnectionClosed

from tests.support.fakes.base import FakeExchange, fixture
from tests.support.fakes.tape import TradeTape, TradingFake

MAX_SPOT_ARGS = 10
MAX_ARG_CHARS = 21_000


def now_ms() -> int:
    return int(time.time() * 1000)


def rest_candle(start_ms: int) -> list[str]:
    """The fake's 1m candle opening at ``start_ms`` (REST row layout; WS klines match it)."""
    k = start_ms // 60_000 % 50
    o = 30200.0 + k
    return [str(start_ms), f"{o}", f"{o + 5}", f"{o - 5}", f"{o + 1}", "2.5", f"{(o + 1) * 2.5}"]


def trade_fields(trade_id: int) -> tuple[str, str, str]:
    """(price, size, side) of the fake's trade ``trade_id``: both sides, varying values."""
    side = "Sell" if trade_id % 3 == 0 else "Buy"
    return f"{16578.5 + (trade_id % 7) * 0.5:.2f}", f"0.00{trade_id % 9 + 1}", side


class FakeBybit(TradingFake, FakeExchange):
    def __init__(self, seed: int = 7) -> None:
        super().__init__()
        # keys: (category, symbol), category "spot" | "linear"
        self.tape = TradeTape(first_id=2_100_000_000_007_764_263)
        self.rng = random.Random(seed)
        self.bad_symbols: set[str] = {"BADUSDT"}
        self.violations: list[str] = []
        self.snapshot_before_ack = True
        self.rate_limited = False      # REST answers the IP limit's HTTP 403
        self.rest_limit = 600
        self._rest_times: deque[float] = deque()
        self.idle_cut_s = 600.0
        self.idle_cuts = 0
        self.resnapshot_every = 40     # deltas between re-sent full snapshots (0: never)
        self.book_tops: dict[tuple[str, str, int], tuple[list[float], list[float]]] = {}
        self.samples = {
            "trade": fixture("bybit/publicTrade.jsonl")[0],
            "spot_ticker": fixture("bybit/tickers_spot_snapshot.jsonl")[0],
            "linear_ticker": fixture("bybit/tickers_linear_snapshot.constructed.jsonl")[0],
            "linear_deltas": [fixture("bybit/tickers_linear_delta.constructed.jsonl")[0],
                              fixture("bybit/tickers_linear_delta_single_oi.constructed.jsonl")[0]],
            "kline": fixture("bybit/kline.jsonl")[0],
            "book_delta": fixture("bybit/orderbook.jsonl")[0],
            "error_spot": fixture("bybit/error_spot_invalid_symbol.jsonl")[0],
            "error_linear": fixture("bybit/error_linear_handler_not_found.jsonl")[0],
            "error_args": fixture("bybit/error_spot_args_size.jsonl")[0],
            "ack_spot": fixture("bybit/subscribe_ack.jsonl")[1],
            "ack_linear": fixture("bybit/subscribe_ack.jsonl")[2],
            "pong_spot": fixture("bybit/pong.jsonl")[0],
            "pong_linear": fixture("bybit/pong.jsonl")[1],
            "rest_ticker": fixture("bybit/rest_tickers_linear.constructed.jsonl")[0],
            "rest_spot_ticker": fixture("bybit/rest_tickers.jsonl")[2],
            "rest_trade": fixture("bybit/rest_recent_trade.jsonl")[0],
            "rest_kline": fixture("bybit/rest_kline.jsonl")[0],
            "rest_unknown": fixture("bybit/rest_not_supported_symbols.jsonl")[0],
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

    def _refuse(self, request: web.Request) -> web.Response | None:
        """The IP limit (403 once exceeded) and unknown symbols (retCode 10001)."""
        self.rest_requests.append(str(request.rel_url))
        now = time.monotonic()
        self._rest_times.append(now)
        while self._rest_times and now - self._rest_times[0] > 5.0:
            self._rest_times.popleft()
        if len(self._rest_times) > self.rest_limit:
            self.rate_limited = True
        if self.rate_limited:
            return web.Response(status=403, text="access too frequent")
        if request.query.get("symbol") in self.bad_symbols:
            return self._json(dict(self.samples["rest_unknown"], time=now_ms()))
        return None

    async def _rest_recent_trade(self, request: web.Request) -> web.Response:
        if (refused := self._refuse(request)) is not None:
            return refused
        category, symbol = request.query.get("category", ""), request.query.get("symbol", "")
        limit = int(request.query.get("limit", 60 if category == "spot" else 500))
        if not 1 <= limit <= (60 if category == "spot" else 1000):
            return self._params_error("params error: limit out of range")
        body = copy.deepcopy(self.samples["rest_trade"])
        template = body["result"]["list"][0]
        rows = []
        for t in self.tape.recent((category, symbol), limit):
            price, size, side = trade_fields(t["id"])
            rows.append(dict(template, execId=self.trade_id(category, t), symbol=symbol,
                             price=price, size=size, side=side, time=str(t["ts"]),
                             isRPITrade=False, seq=str(t["id"])))
        body["result"].update(category=category, list=rows)
        body["time"] = now_ms()
        return self._json(body)

    async def _rest_kline(self, request: web.Request) -> web.Response:
        if (refused := self._refuse(request)) is not None:
            return refused
        if request.query.get("interval") != "1":
            return self._params_error("params error: interval")
        limit = min(int(request.query.get("limit", 200)), 1000)
        now = now_ms()
        current = now - now % 60_000
        last = min(current, int(request.query.get("end", current)) // 60_000 * 60_000)
        start = int(request.query.get("start", last - (limit - 1) * 60_000))
        first = max(start - start % 60_000, last - (limit - 1) * 60_000)
        body = copy.deepcopy(self.samples["rest_kline"])
        body["result"].update(symbol=request.query.get("symbol"),
                              category=request.query.get("category"),
                              list=[rest_candle(m) for m in range(last, first - 1, -60_000)])
        body["time"] = now
        return self._json(body)

    async def _rest_tickers(self, request: web.Request) -> web.Response:
        if (refused := self._refuse(request)) is not None:
            return refused
        category = request.query.get("category", "linear")
        body = copy.deepcopy(self.samples["rest_spot_ticker" if category == "spot"
                                          else "rest_ticker"])
        body["result"]["list"][0]["symbol"] = request.query.get("symbol", "BTCUSDT")
        body["time"] = now_ms()
        return self._json(body)

    # ---- WebSocket ---------------------------------------------------------------------------
    def new_state(self, path: str) -> dict[str, Any]:
        return {"linear": path.endswith("linear"), "topics": set(), "u": {}, "books": {},
                "deltas": 0, "alive": time.monotonic(), "kline_start": {}}

    async def send(self, ws, obj: Any) -> None:
        if isinstance(obj, dict) and "topic" in obj:
            ws.state_dict["alive"] = time.monotonic()      # data keeps a connection alive
        await super().send(ws, obj)

    async def _stream(self, ws, path: str, state: dict[str, Any]) -> None:
        try:
            while True:
                await asyncio.sleep(self.stream_interval_s)
                if time.monotonic() - state["alive"] > self.idle_cut_s:
                    self.idle_cuts += 1     # no ping and no data for too long: cut
                    await ws.close(1000, "idle")
                    return
                if not self.silent:
                    await self.stream_once(ws, path, state)
        except (ConnectionClosed, asyncio.CancelledError):
            return

    async def on_text(self, ws, path, state, text) -> None:
        msg = orjson.loads(text)
        op = msg.get("op")
        linear = state["linear"]
        if op == "ping":
            state["alive"] = time.monotonic()
            pong = dict(self.samples["pong_linear" if linear else "pong_spot"])
            if linear:
                pong["req_id"] = msg.get("req_id", "")
            await self.send(ws, pong)
            return
        if op not in ("subscribe", "unsubscribe"):
            return
        args = msg["args"]
        ack = dict(self.samples["ack_linear" if linear else "ack_spot"])
        ack.update(op=op, req_id=msg.get("req_id", ""))
        if not linear and len(args) > MAX_SPOT_ARGS:
            self.violations.append(text)
            await self.send(ws, dict(self.samples["error_args"]))
            return
        if op == "unsubscribe":
            for topic in args:
                state["topics"].discard(topic)
            await self.send(ws, ack)
            return
        bad = [t for t in args if t.rsplit(".", 1)[1] in self.bad_symbols]
        dup = [t for t in args if t in state["topics"]]
        chars = sum(len(t) for t in state["topics"] | set(args))
        if dup and not linear and not bad:
            return                              # spot: a duplicate is never answered
        error = None
        if bad:
            error = dict(self.samples["error_linear" if linear else "error_spot"])
            error["ret_msg"] = f"error:handler not found,topic:{bad[0]}" if linear else \
                f"Invalid symbol :[{','.join(bad)}]"
        elif dup:
            error = dict(self.samples["error_linear"])
            error["ret_msg"] = f"error:already subscribed,topic:{dup[0]}"
        elif chars > MAX_ARG_CHARS:
            self.violations.append(text)
            error = dict(self.samples["error_linear" if linear else "error_spot"])
            error["ret_msg"] = f"args length {chars} exceeds {MAX_ARG_CHARS}"
        if error is not None:
            error["req_id"] = msg.get("req_id", "")
            await self.send(ws, error)
            return
        if not self.snapshot_before_ack:
            await self.send(ws, ack)
        for topic in args:
            state["topics"].add(topic)
            if topic.startswith("publicTrade."):
                self.tape.activate(("linear" if linear else "spot", topic.split(".", 1)[1]))
            if not self.silent:
                await self.initial(ws, state, topic)
        if self.snapshot_before_ack:
            await self.send(ws, ack)

    async def initial(self, ws, state, topic: str) -> None:
        kind, symbol = topic.split(".", 1)[0], topic.rsplit(".", 1)[1]
        if kind == "orderbook":
            state["books"].pop(symbol, None)          # a new subscription: a fresh book
            await self.send(ws, self.book_snapshot(state, symbol))
        elif kind == "tickers":
            await self.send(ws, self.ticker(state, symbol, snapshot=True))
        elif kind == "kline":
            await self.send(ws, self.kline(symbol))

    async def stream_once(self, ws, path, state) -> None:
        for topic in sorted(state["topics"]):
            kind, symbol = topic.split(".", 1)[0], topic.rsplit(".", 1)[1]
            if kind == "orderbook":
                state["deltas"] += 1
                every = self.resnapshot_every
                await self.send(ws, self.book_snapshot(state, symbol)
                                if every and state["deltas"] % every == 0
                                else self.book_delta(state, symbol))
            elif kind == "tickers":
                await self.send(ws, self.ticker(state, symbol, snapshot=not state["linear"]))
            elif kind == "kline":
                start = now_ms() // 60_000 * 60_000
                previous = state["kline_start"].get(symbol)
                if previous is not None and previous < start:   # that minute is over
                    await self.send(ws, self.kline(symbol, start=previous, confirm=True))
                state["kline_start"][symbol] = start
                await self.send(ws, self.kline(symbol, start=start))

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

    @staticmethod
    def tape_id(trade_id: str) -> int:
        """The tape id behind a spot or linear trade id."""
        return int(trade_id) if trade_id.isdigit() else uuid.UUID(trade_id).int

    def trade_message(self, key, trade: dict[str, Any]) -> dict[str, Any]:
        category, symbol = key
        msg = copy.deepcopy(self.samples["trade"])
        msg["topic"] = f"publicTrade.{symbol}"
        msg["ts"] = now_ms()
        price, size, side = trade_fields(trade["id"])
        msg["data"][0].update(T=trade["ts"], s=symbol, i=self.trade_id(category, trade),
                              p=price, v=size, S=side, seq=trade["id"])
        return msg

    # ---- order book --------------------------------------------------------------------------
    def _book(self, state, symbol: str) -> dict[str, dict[str, str]]:
        book = state["books"].get(symbol)
        if book is None:
            sample = self.samples["book_delta"]["data"]
            book = state["books"][symbol] = {
                side: {p: s for p, s in sample[side] if float(s)} for side in ("b", "a")}
        return book

    def _levels(self, state, symbol: str, u: int) -> tuple[list, list]:
        book = self._book(state, symbol)
        bids = sorted(book["b"].items(), key=lambda lv: -float(lv[0]))
        asks = sorted(book["a"].items(), key=lambda lv: float(lv[0]))
        category = "linear" if state["linear"] else "spot"
        self.book_tops[(category, symbol, u)] = (
            [float(bids[0][0]), float(bids[0][1])], [float(asks[0][0]), float(asks[0][1])])
        return [list(lv) for lv in bids], [list(lv) for lv in asks]

    def book_snapshot(self, state, symbol: str, u: int | None = None) -> dict[str, Any]:
        u = state["u"][symbol] = u if u is not None else state["u"].get(symbol, 1000) + 1
        bids, asks = self._levels(state, symbol, u)
        return {"topic": f"orderbook.200.{symbol}", "type": "snapshot", "ts": now_ms(),
                "data": {"s": symbol, "b": bids, "a": asks, "u": u, "seq": 66544703342 + u},
                "cts": now_ms()}

    def _change(self, state, symbol: str) -> tuple[list, list]:
        """One delta's levels: a size change on each side, now and then a deleted level (the
        top, so the top of book moves) and a new level (possibly a new top)."""
        rng, book = self.rng, self._book(state, symbol)
        changes: dict[str, list] = {"b": [], "a": []}
        for side in ("b", "a"):
            levels = sorted(book[side], key=float, reverse=side == "b")
            price = rng.choice(levels)
            size = f"{rng.randint(1, 4000) / 1000:.3f}"
            book[side][price] = size
            changes[side].append([price, size])
            if rng.random() < 0.3 and len(levels) > 2:
                del book[side][levels[0]]
                changes[side].append([levels[0], "0"])
            if rng.random() < 0.3:
                best_bid, best_ask = max(map(float, book["b"])), min(map(float, book["a"]))
                if best_ask - best_bid > 0.15:        # room inside the spread: a new top
                    new = best_bid + 0.1 if side == "b" else best_ask - 0.1
                else:                                 # behind the deepest level
                    new = min(map(float, book["b"])) - 0.5 if side == "b" else \
                        max(map(float, book["a"])) + 0.5
                text = f"{new:.2f}"
                if text not in book[side]:
                    size = f"{rng.randint(1, 2000) / 1000:.3f}"
                    book[side][text] = size
                    changes[side].append([text, size])
        return changes["b"], changes["a"]

    def book_delta(self, state, symbol: str, u: int | None = None) -> dict[str, Any]:
        msg = copy.deepcopy(self.samples["book_delta"])
        msg["topic"] = f"orderbook.200.{symbol}"
        msg["ts"] = msg["cts"] = now_ms()
        if u is None:       # a real delta of the fake's book (update ids skip: not contiguous)
            u = state["u"][symbol] = state["u"].get(symbol, 1000) + self.rng.randint(1, 5)
            bids, asks = self._change(state, symbol)
            self._levels(state, symbol, u)
        else:               # a test's injected delta (the fake's book is left alone)
            bids, asks = [["30246.00", "1.5"]], [["30250.00", "0.25"]]
        msg["data"].update(s=symbol, u=u, seq=66544703342 + u, b=bids, a=asks)
        return msg

    # ---- tickers and klines ------------------------------------------------------------------
    def ticker(self, state, symbol: str, snapshot: bool) -> dict[str, Any]:
        if state["linear"]:
            msg = copy.deepcopy(self.samples["linear_ticker"] if snapshot else
                                self.rng.choice(self.samples["linear_deltas"]))
        else:
            msg = copy.deepcopy(self.samples["spot_ticker"])
        msg["topic"] = f"tickers.{symbol}"
        msg["data"]["symbol"] = symbol
        msg["ts"] = now_ms()
        return msg

    def kline(self, symbol: str, start: int | None = None, confirm: bool = False
              ) -> dict[str, Any]:
        msg = copy.deepcopy(self.samples["kline"])
        msg["topic"] = f"kline.1.{symbol}"
        start = now_ms() // 60000 * 60000 if start is None else start
        row = rest_candle(start)
        msg["data"][0].update(interval="1", start=start, end=start + 59999, timestamp=now_ms(),
                              open=row[1], high=row[2], low=row[3], close=row[4],
                              volume=row[5], turnover=row[6], confirm=confirm)
        msg["ts"] = now_ms()
        return msg

    async def push(self, path_suffix: str, msg: Any) -> None:
        for ws in self.live(path_suffix):
            await self.send(ws, msg)
