"""A fake Binance on 127.0.0.1: spot + USD-M WebSocket (combined streams, SUBSCRIBE/ack) and the
REST endpoints the collector uses, all on one port. Messages have the documented shapes and key
order (see tests/fixtures/binance). It generates a consistent market: every depth diff continues
the previous one (``U = prev u + 1`` on spot, ``pu = prev u`` on USD-M) and the REST depth snapshot
is the book as of the newest diff, so a client following Binance's sync procedure stays in sync.

Test controls: ``inject_gap``, ``drop_connections``, ``stall`` (socket open, no data),
``lose_trades`` (trades happen but are not pushed: a trade-id hole), and
``python -m tests.fakes.binance --port N`` to run it standalone.

Trade accounting: ``trades_made`` (every trade that happened, as REST shows it; ``trade_rows``
has their content), ``trades_sent`` (exactly the ids written to a client socket), and, with
``start_barriers``, ``handled_trades()``: the ids the client provably passed to its message
handler (see ``SocketLog``).

Backfill REST (documented shapes): ``GET /api/v3/trades`` (newest ``limit`` spot trades,
``[{id, price, qty, quoteQty, time, isBuyerMaker, isBestMatch}]``), ``GET /fapi/v1/aggTrades``
(``[{a, p, q, f, l, T, m}]``), ``GET /api/v3/klines`` and ``/fapi/v1/klines`` (``startTime``,
``limit``; rows as in tests/fixtures/binance/rest_klines.jsonl), built from the trades generated.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import random
import time
from dataclasses import dataclass, field

import orjson
from aiohttp import WSMsgType, web

KNOWN_SPOT = {"BTCUSDT": 65000.0, "BTCUSDC": 64990.0, "ETHUSDT": 3400.0}
KNOWN_PERP = {"BTCUSDT": 65010.0}


@dataclass
class SymbolState:
    symbol: str
    market: str
    price: float
    update_id: int = 1000
    trade_id: int = 5000
    bids: dict[str, str] = field(default_factory=dict)
    asks: dict[str, str] = field(default_factory=dict)
    # Newest trades (REST /trades, /aggTrades) and 1m candles built from every trade.
    recent: collections.deque = field(default_factory=lambda: collections.deque(maxlen=1000))
    candles: dict[int, list] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for i in range(1, 21):
            self.bids[f"{self.price - i * 0.5:.2f}"] = f"{0.1 * i:.3f}"
            self.asks[f"{self.price + i * 0.5:.2f}"] = f"{0.1 * i:.3f}"


@dataclass
class SocketLog:
    """What one client socket was sent, and how much of it the client provably handled.

    The fake pings every socket periodically and notes how many trades preceded each ping. The
    collector's WebSocket client (aiohttp) answers a ping from ``receive()``, i.e. only after
    every earlier message was returned to ``WsConnection``, which calls the feed's handler
    synchronously before it reads the next one. So when a pong arrives, every trade sent before
    that ping went through the handler (and was handed to the writer)."""

    trades: list[tuple[tuple[str, str], str]] = field(default_factory=list)
    pings: dict[bytes, int] = field(default_factory=dict)
    acked: int = 0            # trades[:acked] were handled


class FakeBinance:
    def __init__(self, *, tick_s: float = 0.02, seed: int = 7) -> None:
        self.tick_s = tick_s
        self.rng = random.Random(seed)
        self.spot = {s: SymbolState(s, "spot", p) for s, p in KNOWN_SPOT.items()}
        self.perp = {s: SymbolState(s, "perp", p) for s, p in KNOWN_PERP.items()}
        self.sockets: set[web.WebSocketResponse] = set()
        self.subscriptions: dict[web.WebSocketResponse, set[str]] = {}
        self.stalled = False
        self.connections = 0
        self.messages_sent = 0
        self.trades_made: dict[tuple[str, str], list[str]] = {}
        self.trade_rows: dict[tuple[str, str], dict[str, tuple[str, str, int, bool]]] = {}
        self.trades_sent: dict[tuple[str, str], list[str]] = {}
        # Event time (E, ms) of every ticker / kline / mark-price message sent to at least one
        # client, and the time of every open-interest answer, per (market, symbol, event): what
        # the collector can be held to storing.
        self.events_sent: dict[tuple[str, str, str], list[int]] = {}
        self.socket_logs: list[SocketLog] = []
        self._logs: dict[web.WebSocketResponse, SocketLog] = {}
        self._barriers: asyncio.Task | None = None
        self._ping_seq = itertools.count()
        self.depth_requests = 0
        self._gap: set[tuple[str, str]] = set()
        self._lose: dict[tuple[str, str], int] = {}
        self.rest_requests: collections.Counter = collections.Counter()
        self._runner: web.AppRunner | None = None
        self._pump: asyncio.Task | None = None
        self.port = 0

    # ---- controls ----------------------------------------------------------------------------
    def inject_gap(self, market: str, symbol: str) -> None:
        """The next diff for this symbol skips update ids (as if one was lost)."""
        self._gap.add((market, symbol))

    def lose_trades(self, market: str, symbol: str, count: int) -> None:
        """The next ``count`` trades happen (REST shows them) but are never pushed."""
        self._lose[(market, symbol)] = count

    async def drop_connections(self) -> None:
        for ws in list(self.sockets):
            await ws.close()

    async def send_raw(self, text: str) -> None:
        """Send arbitrary text (e.g. garbage) to every connected client."""
        for ws in list(self.sockets):
            await ws.send_str(text)

    def stall(self, stalled: bool = True) -> None:
        self.stalled = stalled

    def start_barriers(self, interval_s: float = 0.01) -> None:
        """Ping every socket every ``interval_s`` (see ``SocketLog``)."""
        async def loop() -> None:
            while True:
                await asyncio.sleep(interval_s)
                for ws, log in list(self._logs.items()):
                    payload = str(next(self._ping_seq)).encode()
                    log.pings[payload] = len(log.trades)
                    try:
                        await ws.ping(payload)
                    except ConnectionError:
                        pass
        self._barriers = asyncio.get_running_loop().create_task(loop())

    def handled_trades(self) -> dict[tuple[str, str], set[str]]:
        """Trade ids the client provably passed to its message handler, per stream."""
        out: dict[tuple[str, str], set[str]] = {}
        for log in self.socket_logs:
            for key, trade_id in log.trades[:log.acked]:
                out.setdefault(key, set()).add(trade_id)
        return out

    # ---- lifecycle ---------------------------------------------------------------------------
    async def start(self, port: int = 0) -> int:
        app = web.Application()
        app.router.add_get("/stream", self._ws_spot)
        app.router.add_get("/public/stream", self._ws_perp)
        app.router.add_get("/market/stream", self._ws_perp)
        app.router.add_get("/api/v3/exchangeInfo", self._spot_exchange_info)
        app.router.add_get("/api/v3/depth", self._depth_spot)
        app.router.add_get("/fapi/v1/exchangeInfo", self._perp_exchange_info)
        app.router.add_get("/fapi/v1/depth", self._depth_perp)
        app.router.add_get("/fapi/v1/openInterest", self._open_interest)
        app.router.add_get("/fapi/v1/premiumIndex", self._premium_index)
        app.router.add_get("/api/v3/trades", self._rest_trades)
        app.router.add_get("/fapi/v1/aggTrades", self._rest_trades)
        app.router.add_get("/api/v3/klines", self._rest_klines)
        app.router.add_get("/fapi/v1/klines", self._rest_klines)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._pump = asyncio.get_running_loop().create_task(self._pump_loop())
        return self.port

    async def stop(self) -> None:
        for task in (self._pump, self._barriers):
            if task is not None:
                task.cancel()
        await self.drop_connections()
        if self._runner:
            await self._runner.cleanup()

    # ---- WebSocket ---------------------------------------------------------------------------
    async def _ws_spot(self, request: web.Request) -> web.WebSocketResponse:
        return await self._ws(request)

    async def _ws_perp(self, request: web.Request) -> web.WebSocketResponse:
        return await self._ws(request)

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        # Pings and pongs handled here: a pong is the barrier of SocketLog.
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        self.connections += 1
        self.sockets.add(ws)
        self.subscriptions[ws] = set()
        log = self._logs[ws] = SocketLog()
        self.socket_logs.append(log)
        route = request.path   # /stream, /public/stream or /market/stream
        try:
            async for msg in ws:
                if msg.type == WSMsgType.PING:
                    await ws.pong(msg.data)
                    continue
                if msg.type == WSMsgType.PONG:
                    log.acked = max(log.acked, log.pings.pop(bytes(msg.data), 0))
                    continue
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    req = orjson.loads(msg.data)
                except orjson.JSONDecodeError:
                    await ws.send_str('{"code":2,"msg":"Invalid request: invalid JSON"}')
                    continue
                if req.get("method") != "SUBSCRIBE" or not isinstance(req.get("params"), list):
                    await ws.send_str(orjson.dumps({"code": 2, "msg": "Invalid request"}).decode())
                    continue
                streams = set(req["params"])
                if route == "/public/stream":   # the 2026 route split: depth only here
                    streams = {s for s in streams if "@depth" in s or "@bookTicker" in s}
                elif route == "/market/stream":
                    streams = {s for s in streams if "@depth" not in s}
                self.subscriptions[ws] |= {f"{route}|{s}" for s in streams}
                await ws.send_str(orjson.dumps({"result": None, "id": req.get("id")}).decode())
        finally:
            self._logs.pop(ws, None)
            self.sockets.discard(ws)
            self.subscriptions.pop(ws, None)
        return ws

    async def _broadcast(self, market: str, stream: str, data: dict,
                         trade: tuple[tuple[str, str], str] | None = None) -> None:
        routes = ("/stream",) if market == "spot" else ("/public/stream", "/market/stream")
        wanted = {f"{route}|{stream}" for route in routes}
        payload = None
        sent = False
        for ws, subs in list(self.subscriptions.items()):
            if not subs.isdisjoint(wanted):
                if payload is None:
                    payload = orjson.dumps({"stream": stream, "data": data}).decode()
                log = self._logs.get(ws)
                if log is None or ws.close_code is not None:
                    continue            # the client's close frame arrived: it reads no more
                try:
                    await ws.send_str(payload)
                except ConnectionError:
                    continue
                self.messages_sent += 1
                if trade is not None:
                    log.trades.append(trade)
                sent = True
        if sent and trade is not None:
            self.trades_sent.setdefault(trade[0], []).append(trade[1])
        elif sent and "e" in data and data["e"] != "depthUpdate":
            self.events_sent.setdefault((market, data["s"], data["e"]), []).append(data["E"])

    async def _pump_loop(self) -> None:
        for tick in itertools.count():
            await asyncio.sleep(self.tick_s)
            if self.stalled:
                continue
            now_ms = int(time.time() * 1000)
            for state in itertools.chain(self.spot.values(), self.perp.values()):
                route = state.market
                low = state.symbol.lower()
                await self._broadcast(route, f"{low}@depth@100ms", self._diff(state, now_ms))
                lost = self._lose.pop((state.market, state.symbol), 0)
                for _ in range(lost):
                    state.trade_id += 1
                    self._trade(state, now_ms)
                state.trade_id += 1
                state.price += self.rng.choice((-0.5, 0.5))
                await self._broadcast(route, f"{low}@trade" if state.market == "spot"
                                      else f"{low}@aggTrade", self._trade(state, now_ms),
                                      ((state.market, state.symbol), str(state.trade_id)))
                if tick % 5 == 0:
                    await self._broadcast(route, f"{low}@ticker", self._ticker(state, now_ms))
                    await self._broadcast(route, f"{low}@kline_1m", self._kline(state, now_ms))
                    if state.market == "perp":
                        await self._broadcast(route, f"{low}@markPrice", self._mark(state, now_ms))

    # ---- message builders (documented key order) ---------------------------------------------
    def _diff(self, state: SymbolState, now_ms: int) -> dict:
        prev = state.update_id
        first = prev + 1
        if (state.market, state.symbol) in self._gap:
            self._gap.discard((state.market, state.symbol))
            first += 5            # ids prev+1 .. prev+5 are "lost"
        last = first + self.rng.randint(0, 3)
        state.update_id = last
        price = f"{state.price - self.rng.randint(1, 20) * 0.5:.2f}"
        qty = f"{self.rng.randint(0, 30) * 0.01:.3f}"
        ask = f"{state.price + self.rng.randint(1, 20) * 0.5:.2f}"
        ask_qty = f"{self.rng.randint(1, 30) * 0.01:.3f}"
        bid_levels, ask_levels = [[price, qty]], [[ask, ask_qty]]
        for side, p, q in ((state.bids, price, qty), (state.asks, ask, ask_qty)):
            if float(q) == 0:
                side.pop(p, None)
            else:
                side[p] = q
        # Keep the market uncrossed as the price drifts: delete levels through the new touch.
        for level in [p for p in state.asks if float(p) <= state.price]:
            del state.asks[level]
            ask_levels.append([level, "0.000"])
        for level in [p for p in state.bids if float(p) >= state.price]:
            del state.bids[level]
            bid_levels.append([level, "0.000"])
        msg = {"e": "depthUpdate", "E": now_ms}
        if state.market == "perp":
            msg["T"] = now_ms
        msg.update({"s": state.symbol, "U": first, "u": last})
        if state.market == "perp":
            msg["pu"] = prev if first == prev + 1 else prev + 3
        msg.update({"b": bid_levels, "a": ask_levels})
        return msg

    def _trade(self, state: SymbolState, now_ms: int) -> dict:
        qty = f"{self.rng.randint(1, 100) * 0.001:.3f}"
        key = (state.market, state.symbol)
        self.trades_made.setdefault(key, []).append(str(state.trade_id))
        self.trade_rows.setdefault(key, {})[str(state.trade_id)] = (
            f"{state.price:.2f}", qty, now_ms, bool(state.trade_id % 2))
        state.recent.append((state.trade_id, f"{state.price:.2f}", qty, now_ms,
                             bool(state.trade_id % 2)))
        minute = now_ms - now_ms % 60_000
        price = state.price
        c = state.candles.get(minute)
        if c is None:
            c = state.candles[minute] = [price, price, price, price, 0.0, 0.0, 0]
            for old in [m for m in state.candles if m < minute - 600 * 60_000]:
                del state.candles[old]
        c[1], c[2], c[3] = max(c[1], price), min(c[2], price), price
        c[4] += float(qty)
        c[5] += float(qty) * price
        c[6] += 1
        if state.market == "spot":
            return {"e": "trade", "E": now_ms, "s": state.symbol, "t": state.trade_id,
                    "p": f"{state.price:.2f}", "q": qty, "T": now_ms,
                    "m": bool(state.trade_id % 2), "M": True}
        return {"e": "aggTrade", "E": now_ms, "a": state.trade_id, "s": state.symbol,
                "p": f"{state.price:.2f}", "q": qty, "f": state.trade_id * 2,
                "l": state.trade_id * 2, "T": now_ms, "m": bool(state.trade_id % 2)}

    def _ticker(self, state: SymbolState, now_ms: int) -> dict:
        msg = {"e": "24hrTicker", "E": now_ms, "s": state.symbol, "p": "12.50", "P": "0.019",
               "w": f"{state.price:.2f}", "c": f"{state.price:.2f}", "Q": "0.010"}
        if state.market == "spot":
            msg.update({"b": f"{state.price - 0.5:.2f}", "B": "1.500",
                        "a": f"{state.price + 0.5:.2f}", "A": "2.000"})
        msg.update({"o": f"{state.price - 12.5:.2f}", "h": f"{state.price + 100:.2f}",
                    "l": f"{state.price - 100:.2f}", "v": "12345.678", "q": "802469070.00",
                    "O": now_ms - 86_400_000, "C": now_ms, "F": 1, "L": state.trade_id,
                    "n": state.trade_id})
        return msg

    def _kline(self, state: SymbolState, now_ms: int) -> dict:
        start = now_ms - now_ms % 60_000
        p = f"{state.price:.2f}"
        return {"e": "kline", "E": now_ms, "s": state.symbol, "k": {
            "t": start, "T": start + 59_999, "s": state.symbol, "i": "1m", "f": 1,
            "L": state.trade_id, "o": p, "c": p, "h": f"{state.price + 1:.2f}",
            "l": f"{state.price - 1:.2f}", "v": "12.500", "n": 30, "x": False,
            "q": "812500.00", "V": "6.000", "Q": "390000.00", "B": "0"}}

    def _mark(self, state: SymbolState, now_ms: int) -> dict:
        next_funding = now_ms - now_ms % 28_800_000 + 28_800_000
        return {"e": "markPriceUpdate", "E": now_ms, "s": state.symbol,
                "p": f"{state.price:.8f}", "i": f"{state.price - 3:.8f}",
                "P": f"{state.price - 2:.8f}", "r": "0.00010000", "T": next_funding}

    # ---- REST --------------------------------------------------------------------------------
    @staticmethod
    def _error(code: int, msg: str, status: int = 400) -> web.Response:
        return web.Response(status=status, body=orjson.dumps({"code": code, "msg": msg}),
                            content_type="application/json")

    async def _spot_exchange_info(self, request: web.Request) -> web.Response:
        symbol = request.query.get("symbol", "")
        if symbol not in self.spot:
            return self._error(-1121, "Invalid symbol.")
        return web.json_response({"timezone": "UTC", "serverTime": int(time.time() * 1000),
                                  "symbols": [{"symbol": symbol, "status": "TRADING"}]})

    async def _perp_exchange_info(self, request: web.Request) -> web.Response:
        return web.json_response({"symbols": [{"symbol": s, "status": "TRADING",
                                               "contractType": "PERPETUAL"} for s in self.perp]})

    def _depth(self, states: dict[str, SymbolState], request: web.Request,
               futures: bool) -> web.Response:
        self.depth_requests += 1
        state = states.get(request.query.get("symbol", ""))
        if state is None:
            return self._error(-1121, "Invalid symbol.")
        bids = sorted(state.bids.items(), key=lambda kv: -float(kv[0]))
        asks = sorted(state.asks.items(), key=lambda kv: float(kv[0]))
        body: dict = {"lastUpdateId": state.update_id}
        if futures:
            now = int(time.time() * 1000)
            body.update({"E": now, "T": now})
        body.update({"bids": [list(kv) for kv in bids], "asks": [list(kv) for kv in asks]})
        return web.json_response(body)

    async def _depth_spot(self, request: web.Request) -> web.Response:
        return self._depth(self.spot, request, futures=False)

    async def _depth_perp(self, request: web.Request) -> web.Response:
        return self._depth(self.perp, request, futures=True)

    async def _open_interest(self, request: web.Request) -> web.Response:
        symbol = request.query.get("symbol", "")
        if symbol not in self.perp:
            return self._error(-1121, "Invalid symbol.")
        now = int(time.time() * 1000)
        self.events_sent.setdefault(("perp", symbol, "openInterest"), []).append(now)
        return web.json_response({"openInterest": "10659.509", "symbol": symbol, "time": now})

    async def _premium_index(self, request: web.Request) -> web.Response:
        symbol = request.query.get("symbol", "")
        state = self.perp.get(symbol)
        if state is None:
            return self._error(-1121, "Invalid symbol.")
        now = int(time.time() * 1000)
        return web.json_response({
            "symbol": symbol, "markPrice": f"{state.price:.8f}",
            "indexPrice": f"{state.price - 3:.8f}", "estimatedSettlePrice": f"{state.price:.8f}",
            "lastFundingRate": "0.00010000", "nextFundingTime": now - now % 28_800_000 + 28_800_000,
            "interestRate": "0.00010000", "time": now})


    async def _rest_trades(self, request: web.Request) -> web.Response:
        futures = request.path.startswith("/fapi")
        self.rest_requests[request.path] += 1
        state = (self.perp if futures else self.spot).get(request.query.get("symbol", ""))
        if state is None:
            return self._error(-1121, "Invalid symbol.")
        limit = min(int(request.query.get("limit", 500)), 1000)
        rows = list(state.recent)[-limit:]
        if futures:
            body = [{"a": i, "p": p, "q": q, "f": i * 2, "l": i * 2, "T": t, "m": m}
                    for i, p, q, t, m in rows]
        else:
            body = [{"id": i, "price": p, "qty": q, "quoteQty": f"{float(p) * float(q):.8f}",
                     "time": t, "isBuyerMaker": m, "isBestMatch": True} for i, p, q, t, m in rows]
        return web.json_response(body)

    async def _rest_klines(self, request: web.Request) -> web.Response:
        futures = request.path.startswith("/fapi")
        self.rest_requests[request.path] += 1
        state = (self.perp if futures else self.spot).get(request.query.get("symbol", ""))
        if state is None:
            return self._error(-1121, "Invalid symbol.")
        if request.query.get("interval") != "1m":
            return self._error(-1120, "Invalid interval.")
        start = int(request.query.get("startTime", 0))
        limit = min(int(request.query.get("limit", 500)), 1000)
        rows = []
        for minute in sorted(m for m in state.candles if m >= start - start % 60_000)[:limit]:
            o, h, lo, c, v, q, n = state.candles[minute]
            rows.append([minute, f"{o:.2f}", f"{h:.2f}", f"{lo:.2f}", f"{c:.2f}", f"{v:.8f}",
                         minute + 59_999, f"{q:.8f}", n, f"{v / 2:.8f}", f"{q / 2:.8f}", "0"])
        return web.json_response(rows)


async def _serve(port: int) -> None:
    fake = FakeBinance()
    actual = await fake.start(port)
    print(f"fake binance listening on 127.0.0.1:{actual}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    asyncio.run(_serve(parser.parse_args().port))
