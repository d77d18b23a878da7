"""A strict fake Binance on 127.0.0.1: spot + USD-M WebSocket (combined streams, SUBSCRIBE/ack)
and the REST endpoints the collector uses, all on one port. It holds clients to the rules of
docs/exchanges/binance.md (section numbers below), as strictly as the real servers:

- Heartbeat (H1/H2): the server pings every ``heartbeat[route][0]`` s and closes a connection
  whose pong (same payload) is not back within ``heartbeat[route][1]`` s (spot 20/60, USD-M
  180/600; tests pass short values). ``max_age_s`` cuts a connection at its "24 h" (H3).
- Limits (H4-H6): incoming text, ping and pong frames per connection in any 1 s window above
  ``msg_rate`` (spot 5, USD-M 10) close the socket with 1008 "Too many requests"; a SUBSCRIBE
  taking a connection over 1024 streams closes it with 1008 too (the live reply is unrecorded).
- Requests (C1-C5, D1): SUBSCRIBE / UNSUBSCRIBE acked ``{"result":null,"id":N}``,
  LIST_SUBSCRIPTIONS answered; an invalid stream name gets the nested live error
  ``{"error":{"code":2,"msg":"Invalid request: invalid stream"},"id":N}`` and a close; a
  well-formed stream of an unknown symbol is acked and stays silent (D5); bad JSON, a missing
  ``method``, an unknown method and a bad ``id`` get the documented flat errors.
- Routes (W4/W5): ``/public/stream`` delivers depth only, ``/market/stream`` everything else.
- Content: a consistent, seeded market. Depth diffs continue each other (spot ``U = prev u + 1``;
  USD-M ``U`` jumps and ``pu = prev u``, B5/B6), with level deletions, top-of-book moves and
  (``dup_rate``) duplicated diffs; a REST depth snapshot includes the next, not yet pushed diff
  and reports a ``lastUpdateId`` inside its ``[U; u]`` (the documented straddling first event).
  Trades of both sides (seeded), 1m klines that close (``x: true`` once, exact OHLCV of the
  trades made), tickers with varying volumes, mark price distinct from the last price, and the
  current optional fields (``st``, ``ps``, ``nq``, ``ap``).
- REST (section 6): documented weights per request, ``X-MBX-USED-WEIGHT-1M``, HTTP 429 with
  ``Retry-After`` and ``-1003`` over the per-minute budget, 418 for requests during that
  back-off; ``-1121`` for unknown symbols, ``-1130`` for a USD-M depth ``limit`` outside
  5/10/20/50/100/500/1000; ``exchangeInfo?symbols=[...]`` fails whole on one unknown symbol.

Test controls: ``inject_gap``, ``overlap_next``, ``drop_connections``, ``stall`` (socket open, no
data), ``lose_trades`` (trades happen but are not pushed: a trade-id hole), ``send_shutdown``,
``clock_offset_ms`` (the exchange's clock, e.g. to reach a minute boundary), and
``python -m tests.support.fakes.binance --port N`` to run it standalone (real-server timings).

Trade accounting: ``trades_made`` (every trade that happened, as REST shows it; ``trade_rows``
has their content), ``trades_sent`` (exactly the ids written to a client socket), and, with
``start_barriers``, ``handled_trades()``: the ids the client provably passed to its message
handler (see ``SocketLog``). ``closed_klines`` holds every final kline sent, ``marks_sent`` every
mark price, ``closes`` every connection the server closed (route, code, reason).
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import math
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import WSCloseCode, WSMsgType, web

KNOWN_SPOT = {"BTCUSDT": 65000.0, "BTCUSDC": 64990.0, "ETHUSDT": 3400.0}
KNOWN_PERP = {"BTCUSDT": 65010.0}
# Listed on the USD-M endpoints but not linear USDⓈ perpetuals (F10): a coin-margined contract
# after the CM->UM integration and a quarterly future. Never pumped.
OTHER_CONTRACTS = {
    "BTCUSD_PERP": {"contractType": "PERPETUAL", "baseAsset": "BTC", "quoteAsset": "USD",
                    "marginAsset": "BTC"},
    "BTCUSDT_261225": {"contractType": "CURRENT_QUARTER", "baseAsset": "BTC",
                       "quoteAsset": "USDT", "marginAsset": "USDT"},
}
SPOT_ROUTE, PUBLIC_ROUTE, MARKET_ROUTE = "/stream", "/public/stream", "/market/stream"
MAX_STREAMS = 1024                                       # H6
# A stream name: lower-case symbol @ a known stream type (anything else: "invalid stream").
STREAM_RE = re.compile(r"[a-z0-9_]+@(trade|aggTrade|ticker|miniTicker|bookTicker|"
                       r"markPrice(@1s)?|kline_(1s|1m|3m|5m|15m|30m|1h|2h|4h|6h|8h|12h|1d|3d|1w|"
                       r"1M)|depth(5|10|20)?(@100ms|@250ms|@500ms)?)")
METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")
PERP_DEPTH_LIMITS = {5, 10, 20, 50, 100, 500, 1000}
MARKET_OF_ROUTE = {SPOT_ROUTE: "spot", PUBLIC_ROUTE: "perp", MARKET_ROUTE: "perp"}


def rest_weight(path: str, query: Any) -> int:
    """Documented REST weight of one request (docs/exchanges/binance.md section 6)."""
    limit = int(query.get("limit", 0) or 0)
    if path == "/api/v3/depth":
        limit = limit or 100
        return 5 if limit <= 100 else 25 if limit <= 500 else 50 if limit <= 1000 else 250
    if path == "/fapi/v1/depth":
        limit = limit or 500
        return 2 if limit <= 50 else 5 if limit <= 100 else 10 if limit <= 500 else 20
    if path == "/fapi/v1/klines":
        limit = limit or 500
        return 1 if limit < 100 else 2 if limit < 500 else 5 if limit <= 1000 else 10
    if path == "/fapi/v1/premiumIndex":
        return 1 if "symbol" in query else 10
    return {"/api/v3/exchangeInfo": 20, "/api/v3/trades": 25, "/api/v3/historicalTrades": 25,
            "/api/v3/klines": 2, "/fapi/v1/exchangeInfo": 1, "/fapi/v1/aggTrades": 20,
            "/fapi/v1/openInterest": 1}.get(path, 1)


@dataclass
class SymbolState:
    symbol: str
    market: str
    price: float
    update_id: int = 1000
    trade_id: int = 5000
    bids: dict[str, str] = field(default_factory=dict)
    asks: dict[str, str] = field(default_factory=dict)
    # Trade history (REST trades / historicalTrades / aggTrades) and 1m candles of every trade.
    recent: collections.deque = field(default_factory=lambda: collections.deque(maxlen=20_000))
    candles: dict[int, list] = field(default_factory=dict)
    kline_minute: int = 0                 # the minute of the running kline pushed last
    pending_diff: dict | None = None      # made by a snapshot request, pushed next
    last_diff: dict | None = None
    overlap: bool = False

    def __post_init__(self) -> None:
        for i in range(1, 21):
            self.bids[f"{self.price - i * 0.5:.2f}"] = f"{0.1 * i:.3f}"
            self.asks[f"{self.price + i * 0.5:.2f}"] = f"{0.1 * i:.3f}"


@dataclass
class SocketLog:
    """What one client socket was sent, and how much of it the client provably handled.

    ``start_barriers`` pings every socket periodically and notes how many trades preceded each
    ping. The collector's WebSocket client (aiohttp) answers a ping from ``receive()``, i.e. only
    after every earlier message was returned to ``WsConnection``, which calls the feed's handler
    synchronously before it reads the next one. So when a pong arrives, every trade sent before
    that ping went through the handler (and was handed to the writer). These barrier pings are
    test instrumentation: their pongs are not counted against the message rate."""

    trades: list[tuple[tuple[str, str], str]] = field(default_factory=list)
    pings: dict[bytes, int] = field(default_factory=dict)
    acked: int = 0            # trades[:acked] were handled


@dataclass
class Client:
    """Server-side state of one WebSocket connection."""

    ws: web.WebSocketResponse
    route: str
    opened: float
    streams: set[str] = field(default_factory=set)
    frames: collections.deque = field(default_factory=collections.deque)   # arrival times
    heartbeat: dict[bytes, float] = field(default_factory=dict)            # unanswered pings
    pinged_at: float = 0.0


class FakeBinance:
    def __init__(self, *, tick_s: float = 0.02, seed: int = 7,
                 heartbeat: dict[str, tuple[float, float]] | None = None,
                 msg_rate: dict[str, int] | None = None, max_age_s: float = 24 * 3600,
                 weight_limits: dict[str, int] | None = None, weight_window_s: float = 60.0,
                 ban_s: float = 120.0, dup_rate: float = 0.02,
                 quiet_spot: tuple[str, ...] = (), mark_offset: float = 7.25) -> None:
        self.tick_s = tick_s
        self.rng = random.Random(seed)
        self.heartbeat = {"spot": (20.0, 60.0), "perp": (180.0, 600.0), **(heartbeat or {})}
        self.msg_rate = {"spot": 5, "perp": 10, **(msg_rate or {})}
        self.max_age_s = max_age_s
        self.weight_limits = {"spot": 6000, "perp": 2400, **(weight_limits or {})}
        self.weight_window_s = weight_window_s
        self.ban_s = ban_s
        self.dup_rate = dup_rate
        self.mark_offset = mark_offset
        self.clock_offset_ms = 0
        self.spot = {s: SymbolState(s, "spot", p) for s, p in KNOWN_SPOT.items()}
        self.perp = {s: SymbolState(s, "perp", p) for s, p in KNOWN_PERP.items()}
        self.quiet_spot = set(quiet_spot)     # listed and subscribable, but never trade
        self.clients: dict[web.WebSocketResponse, Client] = {}
        self.stalled = False
        self.connections = 0
        self.messages_sent = 0
        self.closes: list[tuple[str, int, str]] = []
        self.heartbeats_answered = 0
        self.requests: list[tuple[str, dict]] = []       # every WS request (route, body)
        self.trades_made: dict[tuple[str, str], list[str]] = {}
        self.trade_rows: dict[tuple[str, str], dict[str, tuple[str, str, int, bool]]] = {}
        self.trades_sent: dict[tuple[str, str], list[str]] = {}
        # Event time (E, ms) of every ticker / kline / mark-price message sent to at least one
        # client, and the time of every open-interest answer, per (market, symbol, event): what
        # the collector can be held to storing.
        self.events_sent: dict[tuple[str, str, str], list[int]] = {}
        self.closed_klines: dict[tuple[str, str], dict[int, dict]] = {}
        self.marks_sent: dict[str, set[str]] = {}
        self.lasts_sent: dict[tuple[str, str], set[str]] = {}
        self.socket_logs: list[SocketLog] = []
        self._logs: dict[web.WebSocketResponse, SocketLog] = {}
        self._tasks: list[asyncio.Task] = []
        self._ping_seq = itertools.count()
        self.depth_requests = 0
        self._gap: set[tuple[str, str]] = set()
        self._lose: dict[tuple[str, str], int] = {}
        self.rest_requests: collections.Counter = collections.Counter()
        self.weight_used: dict[str, int] = {"spot": 0, "perp": 0}      # current window
        self.weight_total: dict[str, int] = {"spot": 0, "perp": 0}     # since start
        self.weight_by_path: collections.Counter = collections.Counter()
        self.rest_rejected: list[tuple[str, int]] = []                 # (path, status)
        self._window_start = {"spot": time.monotonic(), "perp": time.monotonic()}
        self._backoff_until = {"spot": 0.0, "perp": 0.0}
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ---- compatibility views -----------------------------------------------------------------
    @property
    def sockets(self) -> set[web.WebSocketResponse]:
        return set(self.clients)

    @property
    def subscriptions(self) -> dict[web.WebSocketResponse, set[str]]:
        """Per socket: ``route|stream`` of every stream it is subscribed to."""
        return {ws: {f"{c.route}|{s}" for s in c.streams} for ws, c in self.clients.items()}

    def now_ms(self) -> int:
        return int(time.time() * 1000) + self.clock_offset_ms

    # ---- controls ----------------------------------------------------------------------------
    def inject_gap(self, market: str, symbol: str) -> None:
        """The next diff for this symbol breaks continuity (spot: ``U`` skips ids; USD-M: ``pu``
        is not the previous ``u``), as if one was lost."""
        self._gap.add((market, symbol))

    def overlap_next(self, market: str, symbol: str) -> None:
        """The next diff re-covers ids the previous one had (``U <= prev u``): not a gap (B3)."""
        (self.spot if market == "spot" else self.perp)[symbol].overlap = True

    def lose_trades(self, market: str, symbol: str, count: int) -> None:
        """The next ``count`` trades happen (REST shows them) but are never pushed."""
        self._lose[(market, symbol)] = count

    async def drop_connections(self) -> None:
        for ws in list(self.clients):
            await ws.close()

    async def send_raw(self, text: str) -> None:
        """Send arbitrary text (e.g. garbage) to every connected client."""
        for ws in list(self.clients):
            await ws.send_str(text)

    async def send_shutdown(self, combined: bool = True) -> None:
        """The ``serverShutdown`` notice (C7), in the combined or the raw form."""
        data = {"e": "serverShutdown", "E": self.now_ms()}
        await self.send_raw(orjson.dumps({"stream": "!serverShutdown", "data": data}
                                         if combined else data).decode())

    def stall(self, stalled: bool = True) -> None:
        self.stalled = stalled

    def start_barriers(self, interval_s: float = 0.01) -> None:
        """Ping every socket every ``interval_s`` (see ``SocketLog``)."""
        async def loop() -> None:
            while True:
                await asyncio.sleep(interval_s)
                for ws, log in list(self._logs.items()):
                    payload = b"barrier-%d" % next(self._ping_seq)
                    log.pings[payload] = len(log.trades)
                    try:
                        await ws.ping(payload)
                    except ConnectionError:
                        pass
        self._tasks.append(asyncio.get_running_loop().create_task(loop()))

    def handled_trades(self) -> dict[tuple[str, str], set[str]]:
        """Trade ids the client provably passed to its message handler, per stream."""
        out: dict[tuple[str, str], set[str]] = {}
        for log in self.socket_logs:
            for key, trade_id in log.trades[:log.acked]:
                out.setdefault(key, set()).add(trade_id)
        return out

    # ---- lifecycle ---------------------------------------------------------------------------
    async def start(self, port: int = 0) -> int:
        app = web.Application(middlewares=[self._weights])
        for route in (SPOT_ROUTE, PUBLIC_ROUTE, MARKET_ROUTE):
            app.router.add_get(route, self._ws)
        app.router.add_get("/api/v3/exchangeInfo", self._spot_exchange_info)
        app.router.add_get("/api/v3/depth", self._depth_spot)
        app.router.add_get("/fapi/v1/exchangeInfo", self._perp_exchange_info)
        app.router.add_get("/fapi/v1/depth", self._depth_perp)
        app.router.add_get("/fapi/v1/openInterest", self._open_interest)
        app.router.add_get("/fapi/v1/premiumIndex", self._premium_index)
        app.router.add_get("/api/v3/trades", self._rest_trades)
        app.router.add_get("/api/v3/historicalTrades", self._rest_trades)
        app.router.add_get("/fapi/v1/aggTrades", self._rest_trades)
        app.router.add_get("/api/v3/klines", self._rest_klines)
        app.router.add_get("/fapi/v1/klines", self._rest_klines)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        loop = asyncio.get_running_loop()
        self._tasks += [loop.create_task(self._pump_loop()), loop.create_task(self._keeper())]
        return self.port

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.drop_connections()
        if self._runner:
            await self._runner.cleanup()

    # ---- WebSocket ---------------------------------------------------------------------------
    async def _close(self, client: Client, code: int, reason: str) -> None:
        if client.ws.closed:
            return
        self.closes.append((client.route, code, reason))
        await client.ws.close(code=code, message=reason.encode())

    def _over_rate(self, client: Client) -> bool:
        """One more incoming frame; True when the 1 s window now holds more than the limit."""
        now = time.monotonic()
        frames = client.frames
        frames.append(now)
        while frames and now - frames[0] > 1.0:
            frames.popleft()
        return len(frames) > self.msg_rate[MARKET_OF_ROUTE[client.route]]

    async def _keeper(self) -> None:
        """Server pings, pong deadlines and the maximum connection age (H1-H3)."""
        while True:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            for client in list(self.clients.values()):
                interval, timeout = self.heartbeat[MARKET_OF_ROUTE[client.route]]
                if now - client.opened > self.max_age_s:
                    await self._close(client, WSCloseCode.GOING_AWAY, "max connection age")
                elif client.heartbeat and now - min(client.heartbeat.values()) > timeout:
                    await self._close(client, WSCloseCode.POLICY_VIOLATION, "pong timeout")
                elif now - (client.pinged_at or client.opened) >= interval:
                    payload = b"hb-%d" % next(self._ping_seq)
                    client.heartbeat[payload] = client.pinged_at = now
                    try:
                        await client.ws.ping(payload)
                    except ConnectionError:
                        pass

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        # Pings and pongs handled here: the rate limit counts them, a pong answers a heartbeat
        # or is the barrier of SocketLog.
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        self.connections += 1
        client = self.clients[ws] = Client(ws, request.path, time.monotonic())
        log = self._logs[ws] = SocketLog()
        self.socket_logs.append(log)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.PONG and bytes(msg.data) in log.pings:
                    log.acked = max(log.acked, log.pings.pop(bytes(msg.data)))
                    continue
                if msg.type not in (WSMsgType.PING, WSMsgType.PONG, WSMsgType.TEXT):
                    continue
                if self._over_rate(client):
                    await self._close(client, WSCloseCode.POLICY_VIOLATION, "Too many requests")
                    break
                if msg.type == WSMsgType.PING:
                    await ws.pong(msg.data)
                elif msg.type == WSMsgType.PONG:
                    # Unsolicited pongs are allowed but do not count as an answer.
                    if client.heartbeat.pop(bytes(msg.data), None) is not None:
                        self.heartbeats_answered += 1
                elif not await self._request(client, msg.data):
                    break
        finally:
            self._logs.pop(ws, None)
            self.clients.pop(ws, None)
        return ws

    async def _request(self, client: Client, text: str) -> bool:
        """One client request (C1-C5); False when the server closed the connection."""
        ws = client.ws
        try:
            req = orjson.loads(text)
        except orjson.JSONDecodeError:
            await ws.send_str('{"code":3,"msg":"Invalid JSON: expected value at line 1 column 1"}')
            return True
        self.requests.append((client.route, req))
        if not isinstance(req, dict) or "method" not in req:
            await ws.send_str(orjson.dumps({"code": 2, "msg": "Invalid request: missing field "
                                            "`method` at line 1 column 73"}).decode())
            return True
        req_id = req.get("id")
        if not (req_id is None or isinstance(req_id, int) and not isinstance(req_id, bool) or
                isinstance(req_id, str) and len(req_id) <= 36 and req_id.isalnum()):
            await ws.send_str('{"code":2,"msg":"Invalid request: request ID must be an '
                              'unsigned integer"}')
            return True
        method = req["method"]
        if method not in METHODS:
            await ws.send_str(orjson.dumps({"code": 2, "msg": f"Invalid request: unknown variant "
                                            f"{method}, expected one of {', '.join(METHODS)}",
                                            "id": req_id}).decode())
            return True
        if method == "LIST_SUBSCRIPTIONS":
            await ws.send_str(orjson.dumps({"result": sorted(client.streams),
                                            "id": req_id}).decode())
            return True
        params = req.get("params", [])
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if not isinstance(params, list) or not all(
                    isinstance(p, str) and STREAM_RE.fullmatch(p) for p in params):
                # The live error (REC-1/REC-2), nested, then the USD-M server closes (REC-1).
                error = {"code": 2, "msg": "Invalid request: invalid stream"}
                await ws.send_str(orjson.dumps({"error": error, "id": req_id}).decode())
                await self._close(client, WSCloseCode.POLICY_VIOLATION, "invalid stream")
                return False
            if method == "UNSUBSCRIBE":
                client.streams -= set(params)
            elif len(client.streams | set(params)) > MAX_STREAMS:
                await self._close(client, WSCloseCode.POLICY_VIOLATION, "Too many streams")
                return False
            else:
                client.streams |= set(params)
        await ws.send_str(orjson.dumps({"result": None, "id": req_id}).decode())
        return True

    def _delivers(self, route: str, market: str, stream: str) -> bool:
        if route == SPOT_ROUTE:
            return market == "spot"
        if market != "perp":
            return False
        # The 2026 route split: depth only on /public, everything else only on /market.
        return ("@depth" in stream) == (route == PUBLIC_ROUTE)

    async def _broadcast(self, market: str, stream: str, data: dict,
                         trade: tuple[tuple[str, str], str] | None = None) -> None:
        payload = None
        sent = False
        for ws, client in list(self.clients.items()):
            if stream not in client.streams or not self._delivers(client.route, market, stream):
                continue
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
            now_ms = self.now_ms()
            for state in itertools.chain(self.spot.values(), self.perp.values()):
                await self._pump(state, tick, now_ms)

    async def _pump(self, state: SymbolState, tick: int, now_ms: int) -> None:
        market, low = state.market, state.symbol.lower()
        depth = f"{low}@depth@100ms"
        if state.last_diff is not None and self.rng.random() < self.dup_rate:
            await self._broadcast(market, depth, state.last_diff)      # a duplicate push
        diff = state.pending_diff or self._diff(state, now_ms)
        state.pending_diff, state.last_diff = None, diff
        await self._broadcast(market, depth, diff)
        for _ in range(self._lose.pop((market, state.symbol), 0)):
            state.trade_id += 1
            self._trade(state, now_ms)
        state.trade_id += 1
        state.price += self.rng.choice((-0.5, 0.5))
        await self._broadcast(market, f"{low}@trade" if market == "spot" else f"{low}@aggTrade",
                              self._trade(state, now_ms), ((market, state.symbol),
                                                           str(state.trade_id)))
        minute = now_ms - now_ms % 60_000
        if state.kline_minute and minute != state.kline_minute:   # the candle closed
            final = self._kline(state, state.kline_minute, now_ms, closed=True)
            self.closed_klines.setdefault((market, state.symbol), {})[state.kline_minute] = final
            await self._broadcast(market, f"{low}@kline_1m", final)
            state.kline_minute = minute
        if tick % 5 == 0:
            state.kline_minute = minute
            await self._broadcast(market, f"{low}@ticker", self._ticker(state, now_ms))
            await self._broadcast(market, f"{low}@kline_1m", self._kline(state, minute, now_ms))
            if market == "perp":
                await self._broadcast(market, f"{low}@markPrice", self._mark(state, now_ms))

    # ---- message builders (documented key order) ---------------------------------------------
    def _diff(self, state: SymbolState, now_ms: int) -> dict:
        perp = state.market == "perp"
        prev = state.update_id
        # USD-M update ids jump between events (B6); spot events are contiguous.
        first = prev + 1 + (self.rng.randint(0, 500) if perp else 0)
        if state.overlap and not perp:
            state.overlap = False
            first = prev - 1                           # re-covers ids prev-1 .. prev
        gap = (state.market, state.symbol) in self._gap
        if gap:
            self._gap.discard((state.market, state.symbol))
            if not perp:
                first += 5            # ids prev+1 .. prev+5 are "lost"
        last = max(first, prev + 1) + self.rng.randint(0, 3)
        state.update_id = last
        price = f"{state.price - self.rng.randint(1, 20) * 0.5:.2f}"
        qty = f"{self.rng.randint(0, 30) * 0.01:.3f}"            # "0.000" deletes the level
        ask = f"{state.price + self.rng.randint(1, 20) * 0.5:.2f}"
        ask_qty = f"{self.rng.randint(0, 30) * 0.01:.3f}"
        bid_levels, ask_levels = [[price, qty]], [[ask, ask_qty]]
        for side, p, q in ((state.bids, price, qty), (state.asks, ask, ask_qty)):
            if float(q) == 0:
                side.pop(p, None)
            else:
                side[p] = q
        # Keep the market uncrossed as the price drifts: delete levels through the new touch,
        # and move the top of book (a new best bid/ask at the touch).
        for level in [p for p in state.asks if float(p) <= state.price]:
            del state.asks[level]
            ask_levels.append([level, "0.000"])
        for level in [p for p in state.bids if float(p) >= state.price]:
            del state.bids[level]
            bid_levels.append([level, "0.000"])
        touch_bid, touch_ask = f"{state.price - 0.5:.2f}", f"{state.price + 0.5:.2f}"
        if self.rng.random() < 0.5:
            state.bids[touch_bid] = f"{self.rng.randint(1, 9) * 0.1:.3f}"
            bid_levels.append([touch_bid, state.bids[touch_bid]])
        else:
            state.asks[touch_ask] = f"{self.rng.randint(1, 9) * 0.1:.3f}"
            ask_levels.append([touch_ask, state.asks[touch_ask]])
        msg: dict[str, Any] = {"e": "depthUpdate", "E": now_ms}
        if perp:
            msg["T"] = now_ms - 1
        msg.update({"s": state.symbol, "U": first, "u": last})
        if perp:
            msg["pu"] = prev + 3 if gap else prev
        msg.update({"b": bid_levels, "a": ask_levels})
        if perp:
            msg.update({"ps": state.symbol, "st": 1})
        return msg

    def _trade(self, state: SymbolState, now_ms: int) -> dict:
        qty = f"{self.rng.randint(1, 100) * 0.001:.3f}"
        maker = self.rng.random() < 0.5          # buyer is maker: the taker sold
        key = (state.market, state.symbol)
        price = f"{state.price:.2f}"
        self.trades_made.setdefault(key, []).append(str(state.trade_id))
        self.trade_rows.setdefault(key, {})[str(state.trade_id)] = (price, qty, now_ms, maker)
        state.recent.append((state.trade_id, price, qty, now_ms, maker))
        minute = now_ms - now_ms % 60_000
        value = float(price)
        c = state.candles.get(minute)
        if c is None:
            c = state.candles[minute] = [value, value, value, value, 0.0, 0.0, 0]
            for old in [m for m in state.candles if m < minute - 600 * 60_000]:
                del state.candles[old]
        c[1], c[2], c[3] = max(c[1], value), min(c[2], value), value
        c[4] += float(qty)
        c[5] += float(qty) * value
        c[6] += 1
        if state.market == "spot":
            return {"e": "trade", "E": now_ms, "s": state.symbol, "t": state.trade_id,
                    "p": price, "q": qty, "T": now_ms, "m": maker, "M": True}
        return {"e": "aggTrade", "E": now_ms, "s": state.symbol, "a": state.trade_id,
                "p": price, "q": qty, "nq": qty, "f": state.trade_id * 2,
                "l": state.trade_id * 2, "T": now_ms, "m": maker, "st": 1}

    def _ticker(self, state: SymbolState, now_ms: int) -> dict:
        last = f"{state.price:.2f}"
        self.lasts_sent.setdefault((state.market, state.symbol), set()).add(last)
        open_ = state.price - self.rng.randint(-200, 200) * 0.5
        change = state.price - open_
        volume = 12000 + self.rng.randint(0, 100_000) * 0.001
        msg: dict[str, Any] = {"e": "24hrTicker", "E": now_ms, "s": state.symbol,
                               "p": f"{change:.2f}", "P": f"{change / open_ * 100:.3f}",
                               "w": last, "c": last, "Q": "0.010"}
        if state.market == "spot":
            msg.pop("Q")
            msg.update({"x": f"{open_:.2f}", "c": last, "Q": "0.010",
                        "b": f"{state.price - 0.5:.2f}",
                        "B": f"{self.rng.randint(1, 30) * 0.1:.3f}",
                        "a": f"{state.price + 0.5:.2f}",
                        "A": f"{self.rng.randint(1, 30) * 0.1:.3f}"})
        msg.update({"o": f"{open_:.2f}", "h": f"{max(open_, state.price) + 100:.2f}",
                    "l": f"{min(open_, state.price) - 100:.2f}", "v": f"{volume:.3f}",
                    "q": f"{volume * state.price:.2f}", "O": now_ms - 86_400_000, "C": now_ms,
                    "F": 1, "L": state.trade_id, "n": state.trade_id})
        if state.market == "perp":
            msg.update({"ps": state.symbol, "st": 1})
        return msg

    def _kline(self, state: SymbolState, minute: int, now_ms: int, closed: bool = False) -> dict:
        o, h, lo, c, v, q, n = state.candles.get(minute) or (
            state.price, state.price, state.price, state.price, 0.0, 0.0, 0)
        return {"e": "kline", "E": now_ms, "s": state.symbol, "k": {
            "t": minute, "T": minute + 59_999, "s": state.symbol, "i": "1m", "f": 1,
            "L": state.trade_id, "o": f"{o:.2f}", "c": f"{c:.2f}", "h": f"{h:.2f}",
            "l": f"{lo:.2f}", "v": f"{v:.8f}", "n": n, "x": closed, "q": f"{q:.8f}",
            "V": f"{v / 2:.8f}", "Q": f"{q / 2:.8f}", "B": "0"}}

    def _mark_text(self, state: SymbolState) -> str:
        mark = f"{state.price + self.mark_offset:.8f}"     # mark price is not the last price
        self.marks_sent.setdefault(state.symbol, set()).add(mark)
        return mark

    def _mark(self, state: SymbolState, now_ms: int) -> dict:
        next_funding = now_ms - now_ms % 28_800_000 + 28_800_000
        mark = self._mark_text(state)
        return {"e": "markPriceUpdate", "E": now_ms, "s": state.symbol, "p": mark,
                "ap": mark, "i": f"{state.price - 3:.8f}", "P": f"{state.price - 2:.8f}",
                "r": "0.00010000", "T": next_funding, "st": 1}

    # ---- REST --------------------------------------------------------------------------------
    @staticmethod
    def _error(code: int, msg: str, status: int = 400,
               headers: dict[str, str] | None = None) -> web.Response:
        return web.Response(status=status, body=orjson.dumps({"code": code, "msg": msg}),
                            content_type="application/json", headers=headers)

    @web.middleware
    async def _weights(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Documented weights per IP and minute: 429 + Retry-After over the budget, 418 for a
        request that ignores the back-off (section 6)."""
        market = "perp" if request.path.startswith("/fapi") else "spot"
        if not request.path.startswith(("/api", "/fapi")):
            return await handler(request)
        now = time.monotonic()
        if now - self._window_start[market] >= self.weight_window_s:
            self._window_start[market] = now
            self.weight_used[market] = 0
        if now < self._backoff_until[market]:
            self._backoff_until[market] = now + self.ban_s
            self.rest_rejected.append((request.path, 418))
            return self._error(-1003, "Way too much request weight used; IP banned.", 418,
                               {"Retry-After": str(math.ceil(self.ban_s))})
        weight = rest_weight(request.path, request.query)
        if self.weight_used[market] + weight > self.weight_limits[market]:
            retry = math.ceil(self._window_start[market] + self.weight_window_s - now)
            self._backoff_until[market] = now + retry
            self.rest_rejected.append((request.path, 429))
            return self._error(-1003, "Too much request weight used; current limit is "
                               f"{self.weight_limits[market]} request weight per 1 MINUTE. "
                               "Please use WebSocket Streams for live updates to avoid polling "
                               "the API.", 429, {"Retry-After": str(retry)})
        self.weight_used[market] += weight
        self.weight_total[market] += weight
        self.weight_by_path[request.path] += weight
        response = await handler(request)
        response.headers["X-MBX-USED-WEIGHT-1M"] = str(self.weight_used[market])
        return response

    def _spot_listed(self) -> dict[str, str]:
        return {**{s: "TRADING" for s in self.spot}, **{s: "TRADING" for s in self.quiet_spot}}

    async def _spot_exchange_info(self, request: web.Request) -> web.Response:
        listed = self._spot_listed()
        if "symbol" in request.query:
            wanted = [request.query["symbol"]]
        elif "symbols" in request.query:
            try:
                wanted = orjson.loads(request.query["symbols"])
            except orjson.JSONDecodeError:
                return self._error(-1100, "Illegal characters found in parameter 'symbols'.")
        else:
            wanted = list(listed)
        if any(s not in listed for s in wanted):   # one unknown symbol fails the whole request
            return self._error(-1121, "Invalid symbol.")
        return web.json_response({"timezone": "UTC", "serverTime": self.now_ms(), "symbols": [
            {"symbol": s, "status": listed[s], "baseAsset": s[:3], "quoteAsset": s[3:]}
            for s in wanted]})

    async def _perp_exchange_info(self, request: web.Request) -> web.Response:
        symbols = [{"symbol": s, "pair": s, "contractType": "PERPETUAL", "status": "TRADING",
                    "baseAsset": s[:-4], "quoteAsset": s[-4:], "marginAsset": s[-4:]}
                   for s in self.perp]
        symbols += [{"symbol": s, "pair": s.split("_")[0], "status": "TRADING", **info}
                    for s, info in OTHER_CONTRACTS.items()]
        return web.json_response({"timezone": "UTC", "serverTime": self.now_ms(),
                                  "symbols": symbols})

    def _depth(self, states: dict[str, SymbolState], request: web.Request,
               futures: bool) -> web.Response:
        self.depth_requests += 1
        state = states.get(request.query.get("symbol", ""))
        if state is None:
            return self._error(-1121, "Invalid symbol.")
        limit = int(request.query.get("limit", 500 if futures else 100))
        if futures and limit not in PERP_DEPTH_LIMITS:
            return self._error(-1130, "Data sent for parameter 'limit' is not valid.")
        # The snapshot already holds the next (not yet pushed) diff: its lastUpdateId falls
        # inside that diff's [U; u], the straddling first event of the documented procedure.
        if state.pending_diff is None:
            state.pending_diff = self._diff(state, self.now_ms())
        last_id = self.rng.randint(state.pending_diff["U"], state.pending_diff["u"])
        bids = sorted(state.bids.items(), key=lambda kv: -float(kv[0]))[:min(limit, 5000)]
        asks = sorted(state.asks.items(), key=lambda kv: float(kv[0]))[:min(limit, 5000)]
        body: dict = {"lastUpdateId": last_id}
        if futures:
            now = self.now_ms()
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
        now = self.now_ms()
        self.events_sent.setdefault(("perp", symbol, "openInterest"), []).append(now)
        return web.json_response({"openInterest": "10659.509", "symbol": symbol, "time": now})

    async def _premium_index(self, request: web.Request) -> web.Response:
        symbol = request.query.get("symbol", "")
        state = self.perp.get(symbol)
        if state is None:
            return self._error(-1121, "Invalid symbol.")
        now = self.now_ms()
        mark = self._mark_text(state)
        return web.json_response({
            "symbol": symbol, "markPrice": mark,
            "indexPrice": f"{state.price - 3:.8f}", "estimatedSettlePrice": f"{state.price:.8f}",
            "lastFundingRate": "0.00010000", "nextFundingTime": now - now % 28_800_000 + 28_800_000,
            "interestRate": "0.00010000", "time": now})

    async def _rest_trades(self, request: web.Request) -> web.Response:
        """Newest ``limit`` trades (``/api/v3/trades``); from ``fromId`` on (``historicalTrades``,
        required there; optional on ``/fapi/v1/aggTrades``)."""
        futures = request.path.startswith("/fapi")
        self.rest_requests[request.path] += 1
        state = (self.perp if futures else self.spot).get(request.query.get("symbol", ""))
        if state is None:
            return self._error(-1121, "Invalid symbol.")
        limit = int(request.query.get("limit", 500))
        if not 1 <= limit <= 1000:
            return self._error(-1130, "Data sent for parameter 'limit' is not valid.")
        from_id = request.query.get("fromId")
        if from_id is None and request.path == "/api/v3/historicalTrades":
            return self._error(-1102, "Mandatory parameter 'fromId' was not sent, was empty/null,"
                               " or malformed.")
        if from_id is None:
            rows = list(state.recent)[-limit:]
        else:
            rows = [r for r in state.recent if r[0] >= int(from_id)][:limit]
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
        limit = min(int(request.query.get("limit", 500)), 1500 if futures else 1000)
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
