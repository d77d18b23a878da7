"""A fake Gate.io v4: spot + USDT futures WebSockets and the REST endpoints the feed uses, on
127.0.0.1, with the real message formats.

The market runs on the server whether or not anyone is connected: trades, 1m candles and
contract stats keep happening while a client is disconnected, and the REST endpoints
(``/spot/trades``, ``/spot/candlesticks``, ``/futures/usdt/trades``, ``/futures/usdt/
candlesticks``, ``/futures/usdt/contract_stats``, ``/futures/usdt/contracts/{c}``) serve them, so a
test can check that backfill recovers what the stream missed. Candle / stats time is compressed
(a new minute every ``ticks_per_minute`` ticks) so closed candles appear quickly.

Subscriptions are checked per channel like Gate does: each channel's payload has its own
argument order (``spot.order_book_update`` [pair, interval], ``spot.candlesticks`` [interval,
pair], ``futures.order_book_update`` [contract, interval, level], ``futures.candlesticks``
[interval, contract], ``futures.contract_stats`` [contract, interval]); a wrong one is answered
with error code 2 (invalid argument).

The server keeps its own book per stream with an update id; diffs carry contiguous U/u and the
REST snapshot returns the current book with ``id``. Test knobs (per (market, symbol)):
``gap_next`` (one update is applied but not sent), ``full_next`` (send a ``full:true`` book that
replaces everything), ``crossed_next`` (send a diff whose bid crosses the best ask), ``silent``,
``drop_connections()``.

Strict like the real server (docs/exchanges/gateio.md): futures sizes are decimal strings only
for a client that sent ``X-Gate-Size-Decimal: 1`` (WS handshake or REST request), otherwise
integers truncated toward zero (a 0.4-contract level reads 0); protocol pings from the server,
with a disconnect when the pong is late (``ping_interval_s`` / ``ping_timeout_s``); REST limited
to ``rest_limit`` requests per ``rest_window_s`` per endpoint (HTTP 429 ``TOO_MANY_REQUESTS``
with ``Retry-After``); a second subscription of the same book stream on one connection is an
error; unknown pairs answered in the documented shape (``error_shape="doc"``: no payload, no id)
or the newer one (id and payload echoed). More knobs: ``missing_contracts`` (contract lookup
404s), ``duplicate_next`` (a book diff is sent again after a newer one). Randomness is seeded
(``seed``).
"""
from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field

from aiohttp import web
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

from tests.support.helpers import free_port

SIZE_DECIMAL = "X-Gate-Size-Decimal"
SPOT = {"BTC_USDT": 50000.0, "BTC_USDC": 50010.0}
FUT = {"BTC_USDT": 50005.0}
MULTIPLIER = 0.0001
FUNDING_RATE_WS = "0.000125"      # futures.tickers funding_rate
FUNDING_RATE_REST = "0.0001"      # /futures/usdt/contracts/{c} funding_rate
INTERNAL_EVERY = 7                # every 7th futures trade is an insurance-fund (internal) one

PAIR = re.compile(r"^[A-Z0-9]+_[A-Z0-9]+$")
BOOK_INTERVALS = {"100ms", "20ms"}
CANDLE_INTERVALS = {"10s", "1m", "5m", "15m", "30m", "1h", "4h", "8h", "1d", "7d"}
STATS_INTERVALS = {"1s", "10s", "1m", "5m", "15m", "30m", "1h", "4h", "8h", "1d", "7d"}
LEVELS = {"100", "50", "20"}
# Channel -> argument kinds in order ("pairs" = any number of pairs).
ARGUMENTS = {
    "spot.tickers": "pairs", "spot.trades": "pairs",
    "spot.order_book_update": ("pair", BOOK_INTERVALS),
    "spot.candlesticks": (CANDLE_INTERVALS, "pair"),
    "futures.tickers": "pairs", "futures.trades": "pairs",
    "futures.order_book_update": ("pair", BOOK_INTERVALS, LEVELS),
    "futures.candlesticks": (CANDLE_INTERVALS, "pair"),
    "futures.contract_stats": ("pair", STATS_INTERVALS),
}


def fut_size(size: float, decimal: bool):
    """A futures size as sent: a decimal string with the header, else an integer truncated
    toward zero (0.4 -> 0, -0.7 -> 0, 1.7 -> 1)."""
    return f"{size:g}" if decimal else int(size)


class ServerBook:
    def __init__(self, mid: float, futures: bool, rng: random.Random) -> None:
        self.futures = futures
        self.rng = random = rng
        self.id = random.randint(10_000, 1_000_000)
        self.mid = mid
        self.bids = {round(mid - 0.1 * (i + 1), 1): self.size() for i in range(30)}
        self.asks = {round(mid + 0.1 * (i + 1), 1): self.size() for i in range(30)}

    def size(self):
        """Futures: contracts with one decimal, a fifth of them below one contract."""
        random = self.rng
        if self.futures:
            return random.randint(1, 9) / 10 if random.random() < 0.2 else \
                random.randint(10, 50000) / 10
        return round(random.uniform(0.001, 2), 4)

    def fmt(self, levels, decimal: bool = True) -> list:
        if self.futures:
            return [{"p": str(p), "s": fut_size(s, decimal)} for p, s in levels]
        return [[str(p), str(s)] for p, s in levels]

    def change(self) -> tuple[list, list]:
        """Mutate a few levels; returns the changed (bids, asks)."""
        random = self.rng
        bids, asks = [], []
        for _ in range(random.randint(1, 3)):
            is_bid = random.random() < 0.5
            side, out = (self.bids, bids) if is_bid else (self.asks, asks)
            price = random.choice(sorted(side, reverse=is_bid)[:20])
            if random.random() < 0.2 and len(side) > 20:
                side.pop(price)
                out.append((price, 0))
            else:
                side[price] = self.size()
                out.append((price, side[price]))
        return bids, asks

    def snapshot_rest(self, decimal: bool = True) -> dict:
        body = {"id": self.id, "current": int(time.time() * 1000),
                "update": int(time.time() * 1000),
                "bids": self.fmt(sorted(self.bids.items(), reverse=True)[:100], decimal),
                "asks": self.fmt(sorted(self.asks.items())[:100], decimal)}
        if self.futures:
            body["current"] = time.time()
            body["update"] = time.time()
        return body


@dataclass
class FakeCandle:
    t: int
    open: float
    high: float
    low: float
    close: float
    base: float = 0.0        # spot: base amount; futures: contracts
    quote: float = 0.0

    def add(self, price: float, amount: float, base: float) -> None:
        self.high, self.low, self.close = max(self.high, price), min(self.low, price), price
        self.base += amount
        self.quote += price * base


@dataclass
class Market:
    """Everything that happened on the server, connected clients or not."""
    trades: dict[tuple[str, str], list[dict]] = field(default_factory=dict)
    candles: dict[tuple[str, str], list[FakeCandle]] = field(default_factory=dict)
    stats: dict[str, list[dict]] = field(default_factory=dict)


class FakeGate:
    def __init__(self, tick_s: float = 0.03, ticks_per_minute: int = 6, seed: int = 7,
                 ping_interval_s: float | None = 20.0, ping_timeout_s: float = 20.0,
                 rest_limit: int = 200, rest_window_s: float = 10.0) -> None:
        self.rng = random.Random(seed)
        self.ping_interval_s, self.ping_timeout_s = ping_interval_s, ping_timeout_s
        self.rest_limit, self.rest_window_s = rest_limit, rest_window_s
        self.rest_calls: dict[str, list[float]] = {}    # endpoint -> request times in window
        self.rate_limited = Counter()                    # endpoint -> 429 answers
        self.error_shape = "echo"                        # "echo" (id + payload) | "doc"
        self.missing_contracts: set[str] = set()
        self.duplicate_next: set[tuple[str, str]] = set()
        self._last_diff: dict = {}                        # (ws, book key) -> last diff sent
        self.decimal_clients = Counter()                 # market -> WS handshakes with header
        self.rest_headers: list[tuple[str, str | None]] = []   # (path, X-Gate-Size-Decimal)
        self.tick_s = tick_s
        self.ticks_per_minute = ticks_per_minute
        self.spot_port, self.perp_port, self.rest_port = free_port(), free_port(), free_port()
        self.spot_url = f"ws://127.0.0.1:{self.spot_port}/ws/v4/"
        self.perp_url = f"ws://127.0.0.1:{self.perp_port}/v4/ws/usdt"
        self.rest_url = f"http://127.0.0.1:{self.rest_port}/api/v4"
        self.silent = False
        self.contracts_available = True
        self.gap_next: set[tuple[str, str]] = set()
        self.full_next: set[tuple[str, str]] = set()
        self.crossed_next: set[tuple[str, str]] = set()
        self.connects = Counter()
        self.snapshot_requests = Counter()     # (market, symbol) -> count
        self.pings = Counter()
        self.books: dict[tuple[str, str], ServerBook] = {}
        self.full_books: dict[tuple[str, str], dict] = {}
        self.sockets: dict = {}
        self.subscriptions: dict = {}          # ws -> {channel: set of symbols}
        self.subscribe_errors: list[dict] = []
        self.rest_requests: list[tuple[str, dict]] = []
        self.stats_served: list[dict] = []     # contract_stats rows REST answered with
        self.market = Market()
        self._tick = 0
        self._start = int(time.time()) // 60 * 60
        self._spot_trade_id = 0
        self._servers = []
        self._runner: web.AppRunner | None = None
        self._market_task: asyncio.Task | None = None

    async def start(self) -> "FakeGate":
        for symbol, mid in SPOT.items():
            self.books[("spot", symbol)] = ServerBook(mid, False, self.rng)
        for symbol, mid in FUT.items():
            self.books[("perp", symbol)] = ServerBook(mid, True, self.rng)
        pings = {"ping_interval": self.ping_interval_s, "ping_timeout": self.ping_timeout_s}
        self._servers.append(await serve(lambda ws: self._ws(ws, "spot"), "127.0.0.1",
                                         self.spot_port, **pings))
        self._servers.append(await serve(lambda ws: self._ws(ws, "perp"), "127.0.0.1",
                                         self.perp_port, **pings))
        app = web.Application(middlewares=[self._rate_limit])
        app.router.add_get("/api/v4/spot/order_book", self._rest_spot_book)
        app.router.add_get("/api/v4/futures/usdt/order_book", self._rest_fut_book)
        app.router.add_get("/api/v4/futures/usdt/contracts/{contract}", self._rest_contract)
        app.router.add_get("/api/v4/spot/trades", self._rest_spot_trades)
        app.router.add_get("/api/v4/futures/usdt/trades", self._rest_fut_trades)
        app.router.add_get("/api/v4/spot/candlesticks", self._rest_spot_candles)
        app.router.add_get("/api/v4/futures/usdt/candlesticks", self._rest_fut_candles)
        app.router.add_get("/api/v4/futures/usdt/contract_stats", self._rest_stats)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.rest_port).start()
        self._market_task = asyncio.get_running_loop().create_task(self._market_loop())
        return self

    async def stop(self) -> None:
        if self._market_task is not None:
            self._market_task.cancel()
        for server in self._servers:
            server.close()
            await server.wait_closed()
        if self._runner is not None:
            await self._runner.cleanup()

    async def push_upgrade(self, market: str, form: str = "type") -> None:
        """The service-upgrade notice Gate sends before closing a connection, in one of the
        shapes seen (docs/exchanges/gateio.md D2): top-level ``type`` (doc mirror), ``event``
        (official SDK handler) or a ``*.system`` push with ``result.type``."""
        now = int(time.time())
        prefix = "spot" if market == "spot" else "futures"
        text = "The connection will soon be closed for a service upgrade. Please reconnect."
        msg = {"type": {"type": "upgrade", "msg": text},
               "event": {"time": now, "time_ms": now * 1000, "channel": f"{prefix}.pong",
                         "event": "upgrade", "result": None},
               "system": {"time": now, "time_ms": now * 1000, "channel": f"{prefix}.system",
                          "event": "update", "result": {"type": "upgrade", "msg": text}}}[form]
        await self.sockets[market].send(json.dumps(msg))

    async def drop_connections(self) -> None:
        """Close every client connection (the market keeps running)."""
        for ws in list(self.subscriptions):
            await ws.close()

    def trade_ids(self, market: str, symbol: str, internal: bool = False) -> list[str]:
        return [str(t["id"]) for t in self.market.trades.get((market, symbol), [])
                if bool(t.get("is_internal")) == internal]

    # ---- the market --------------------------------------------------------------------------
    def minute(self) -> int:
        """Start of the current (compressed) minute, unix seconds."""
        return self._start + 60 * (self._tick // self.ticks_per_minute)

    async def _market_loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            if self.silent:
                continue
            self._tick += 1
            now = time.time()
            for symbol in SPOT:
                await self._spot_trade(symbol, now)
            for symbol in FUT:
                await self._fut_trade(symbol, now)
                self._stats(symbol)
            if self._tick % 3 == 0:
                await self._push_candles_and_stats()

    async def _candle(self, key: tuple[str, str], price: float, amount: float,
                      base: float) -> None:
        candles = self.market.candles.setdefault(key, [])
        t = self.minute()
        if not candles or candles[-1].t != t:
            if candles:     # the window closed: its final state goes out (spot: w=true)
                await self._push_candle(key, candles[-1], closed=True)
            candles.append(FakeCandle(t, price, price, price, price))
        candles[-1].add(price, amount, base)

    async def _spot_trade(self, symbol: str, now: float) -> None:
        # ``id`` is unique per market but not consecutive (it was an all-market id);
        # ``id_market`` (WS) / ``sequence_id`` (REST) count the market's trades.
        self._spot_trade_id += 1
        trades = self.market.trades.setdefault(("spot", symbol), [])
        random = self.rng
        price = round(SPOT[symbol] + random.randint(-20, 20) * 0.1, 1)
        amount = round(random.uniform(0.001, 0.5), 4)
        trade = {"id": 9_000_000 + self._spot_trade_id, "create_time": int(now),
                 "create_time_ms": f"{now * 1000:.3f}", "side": random.choice(["buy", "sell"]),
                 "currency_pair": symbol, "amount": str(amount), "price": str(price),
                 "sequence_id": str(len(trades) + 1)}
        trades.append(trade)
        await self._candle(("spot", symbol), price, amount, amount)
        push = {"id": trade["id"], "id_market": len(trades), **{
            k: trade[k] for k in ("create_time", "create_time_ms", "side", "currency_pair",
                                  "amount", "price")}}
        await self._broadcast("spot", "spot.trades", symbol, push)

    async def _fut_trade(self, symbol: str, now: float) -> None:
        trades = self.market.trades.setdefault(("perp", symbol), [])
        n = len(trades) + 1
        random = self.rng
        # Contracts with one decimal; every 5th fill is below one contract (0.x).
        size = (random.randint(1, 9) / 10 if n % 5 == 0 else random.randint(10, 5000) / 10) \
            * random.choice([1, -1])
        price = round(FUT[symbol] + random.randint(-20, 20) * 0.1, 1)
        trade = {"size": size, "id": n, "create_time": int(now),
                 "create_time_ms": int(now * 1000), "price": str(price), "contract": symbol}
        if n % INTERNAL_EVERY == 0:
            trade["is_internal"] = True
        trades.append(trade)
        if not trade.get("is_internal"):
            await self._candle(("perp", symbol), price, abs(size), abs(size) * MULTIPLIER)
        await self._broadcast("perp", "futures.trades", symbol, lambda decimal: [
            {**trade, "size": fut_size(trade["size"], decimal)}])

    def _stats(self, symbol: str) -> None:
        rows = self.market.stats.setdefault(symbol, [])
        t = self.minute()
        if not rows or rows[-1]["time"] != t:
            k = (t - self._start) // 60
            rows.append({"time": t, "contract": symbol, "open_interest": 2_500_000 + 100 * k,
                         "open_interest_usd": 12_500_000.5 + 25 * k, "mark_price": str(FUT[symbol]),
                         "lsr_taker": 1.1, "lsr_account": 0.9, "long_liq_size": 0,
                         "short_liq_size": 0, "long_liq_amount": 0, "short_liq_amount": 0,
                         "long_liq_usd": 0, "short_liq_usd": 0, "top_lsr_account": 1.0,
                         "top_lsr_size": 1.0})

    async def _push_candle(self, key: tuple[str, str], candle: FakeCandle,
                           closed: bool = False) -> None:
        market, symbol = key
        body = {"t": str(candle.t) if market == "spot" else candle.t, "o": str(candle.open),
                "h": str(candle.high), "l": str(candle.low), "c": str(candle.close),
                "n": f"1m_{symbol}"}
        if market == "spot":
            body.update(v=f"{candle.quote:.4f}", a=f"{candle.base:.4f}", w=closed)
            await self._broadcast("spot", "spot.candlesticks", symbol, body)
        else:
            body.update(a=f"{candle.base * MULTIPLIER:.4f}")
            await self._broadcast("perp", "futures.candlesticks", symbol, lambda decimal: [
                {**body, "v": fut_size(round(candle.base, 1), decimal)}])

    async def _push_candles_and_stats(self) -> None:
        for key, candles in list(self.market.candles.items()):
            await self._push_candle(key, candles[-1])
        for symbol, rows in self.market.stats.items():
            await self._broadcast(
                "perp", "futures.contract_stats", symbol, lambda decimal, row=rows[-1]: [
                    {**row, "open_interest": fut_size(row["open_interest"], decimal)}])

    async def _broadcast(self, market: str, channel: str, symbol: str, result) -> None:
        """``result`` or, for futures sizes, ``result(decimal)`` per client's header."""
        texts: dict[bool, str] = {}
        for ws, subs in list(self.subscriptions.items()):
            if ws.market == market and symbol in subs.get(channel, ()):
                if ws.decimal not in texts:
                    texts[ws.decimal] = self._envelope(
                        channel, result(ws.decimal) if callable(result) else result)
                text = texts[ws.decimal]
                try:
                    await ws.send(text)
                except ConnectionClosed:
                    pass

    # ---- REST --------------------------------------------------------------------------------
    def _label(self, label: str, message: str, status: int = 400) -> web.Response:
        return web.json_response({"label": label, "message": message}, status=status)

    def _log(self, request: web.Request) -> dict:
        query = dict(request.query)
        path = request.path.removeprefix("/api/v4")
        self.rest_requests.append((path, query))
        self.rest_headers.append((path, request.headers.get(SIZE_DECIMAL)))
        return query

    @staticmethod
    def _decimal(request: web.Request) -> bool:
        return request.headers.get(SIZE_DECIMAL) == "1"

    @web.middleware
    async def _rate_limit(self, request: web.Request, handler):
        """``rest_limit`` requests per ``rest_window_s`` per endpoint (Gate: 200 / 10 s per
        endpoint per IP); over it HTTP 429 with the label body and a Retry-After."""
        endpoint = request.path if "/contracts/" not in request.path else "contracts"
        now = time.monotonic()
        calls = [t for t in self.rest_calls.get(endpoint, []) if now - t < self.rest_window_s]
        if len(calls) >= self.rest_limit:
            self.rate_limited[endpoint] += 1
            self.rest_calls[endpoint] = calls
            retry = max(1, int(self.rest_window_s - (now - calls[0]) + 0.999))
            return web.json_response(
                {"label": "TOO_MANY_REQUESTS", "message": "Request Rate limit Exceeded"},
                status=429, headers={"Retry-After": str(retry),
                                     "X-Gate-RateLimit-Requests-Remain": "0",
                                     "X-Gate-RateLimit-Limit": str(self.rest_limit)})
        self.rest_calls[endpoint] = calls + [now]
        return await handler(request)

    async def _rest_spot_book(self, request: web.Request) -> web.Response:
        symbol = request.query["currency_pair"]
        assert request.query.get("with_id") == "true" and int(request.query["limit"]) <= 100
        if ("spot", symbol) not in self.books:
            return self._label("INVALID_CURRENCY_PAIR", symbol)
        self.snapshot_requests[("spot", symbol)] += 1
        return web.json_response(self.books[("spot", symbol)].snapshot_rest())

    async def _rest_fut_book(self, request: web.Request) -> web.Response:
        symbol = request.query["contract"]
        assert request.query.get("with_id") == "true" and int(request.query["limit"]) <= 100
        if ("perp", symbol) not in self.books:
            return self._label("CONTRACT_NOT_FOUND", symbol, 404)
        self.snapshot_requests[("perp", symbol)] += 1
        self._log(request)
        return web.json_response(self.books[("perp", symbol)].snapshot_rest(
            self._decimal(request)))

    async def _rest_contract(self, request: web.Request) -> web.Response:
        self._log(request)
        contract = request.match_info["contract"]
        if not self.contracts_available:
            return web.json_response({"label": "SERVER_ERROR"}, status=503)
        if contract not in FUT or contract in self.missing_contracts:
            return self._label("CONTRACT_NOT_FOUND", contract, 404)
        return web.json_response({
            "enable_decimal": True, "status": "trading", "in_delisting": False,
            "name": contract, "type": "direct", "quanto_multiplier": str(MULTIPLIER),
            "mark_price": str(FUT[contract]), "index_price": str(FUT[contract]),
            "funding_rate": FUNDING_RATE_REST, "funding_interval": 28800,
            "funding_next_apply": (int(time.time()) // 28800 + 1) * 28800,
            "order_size_min": 1})

    @staticmethod
    def _window(rows: list[dict], query: dict) -> list[dict]:
        """Trades in [from, to] (seconds), newest first."""
        low, high = float(query.get("from", 0)), float(query.get("to", time.time() + 1))
        return [r for r in reversed(rows) if low <= float(r["create_time_ms"]) / 1000 <= high]

    async def _rest_spot_trades(self, request: web.Request) -> web.Response:
        query = self._log(request)
        symbol = query.get("currency_pair", "")
        if ("spot", symbol) not in self.books:
            return self._label("INVALID_CURRENCY_PAIR", symbol)
        limit = int(query.get("limit", 100))
        if limit > 1000:
            return self._label("INVALID_PARAM_VALUE", "limit must not exceed 1000")
        page = int(query.get("page", 1))
        rows = self._window(self.market.trades.get(("spot", symbol), []), query)
        return web.json_response(rows[(page - 1) * limit:page * limit])

    async def _rest_fut_trades(self, request: web.Request) -> web.Response:
        query = self._log(request)
        symbol = query.get("contract", "")
        if symbol not in FUT:
            return self._label("CONTRACT_NOT_FOUND", symbol, 404)
        limit = int(query.get("limit", 100))
        if limit > 1000:
            return self._label("INVALID_PARAM_VALUE", "limit must not exceed 1000")
        offset = int(query.get("offset", 0))
        rows = self._window(self.market.trades.get(("perp", symbol), []), query)
        decimal = self._decimal(request)
        rows = [{**r, "create_time": float(r["create_time_ms"]) / 1000,
                 "size": fut_size(r["size"], decimal)} for r in rows]
        return web.json_response(rows[offset:offset + limit])

    def _candle_query(self, query: dict) -> web.Response | None:
        if "limit" in query and ("from" in query or "to" in query):
            return self._label("INVALID_PARAM_VALUE", "limit conflicts with from and to")
        if query.get("interval") != "1m":
            return self._label("INVALID_PARAM_VALUE", f"interval {query.get('interval')}")
        return None

    def _candles_since(self, key: tuple[str, str], query: dict) -> list[FakeCandle]:
        low = int(query.get("from", 0))
        candles = [c for c in self.market.candles.get(key, []) if c.t >= low]
        if len(candles) > 1000:
            raise web.HTTPBadRequest(text='{"label":"INVALID_PARAM_VALUE"}')
        return candles

    async def _rest_spot_candles(self, request: web.Request) -> web.Response:
        query = self._log(request)
        error = self._candle_query(query)
        if error is not None:
            return error
        symbol = query.get("currency_pair", "")
        candles = self._candles_since(("spot", symbol), query)
        running = self.minute()
        return web.json_response([
            [str(c.t), f"{c.quote:.4f}", str(c.close), str(c.high), str(c.low), str(c.open),
             f"{c.base:.4f}", "false" if c.t == running else "true"] for c in candles])

    async def _rest_fut_candles(self, request: web.Request) -> web.Response:
        query = self._log(request)
        error = self._candle_query(query)
        if error is not None:
            return error
        symbol = query.get("contract", "")
        candles = self._candles_since(("perp", symbol), query)
        decimal = self._decimal(request)
        return web.json_response([
            {"t": c.t, "v": fut_size(round(c.base, 1), decimal), "c": str(c.close),
             "h": str(c.high), "l": str(c.low), "o": str(c.open), "sum": f"{c.quote:.4f}"}
            for c in candles])

    async def _rest_stats(self, request: web.Request) -> web.Response:
        query = self._log(request)
        symbol = query.get("contract", "")
        if symbol not in FUT:
            return self._label("CONTRACT_NOT_FOUND", symbol, 404)
        step = {"1m": 60, "5m": 300}[query.get("interval", "5m")]
        low = int(query.get("from", 0))
        limit = int(query.get("limit", 30))
        rows = [r for r in self.market.stats.get(symbol, [])
                if r["time"] >= low and r["time"] % step == 0]
        # With ``from``: the first ``limit`` points from there (paged forward); else the newest.
        rows = rows[:limit] if "from" in query else rows[-limit:]
        self.stats_served.extend(rows)
        decimal = self._decimal(request)
        return web.json_response([{**{k: v for k, v in r.items() if k != "contract"},
                                   "open_interest": fut_size(r["open_interest"], decimal)}
                                  for r in rows])

    # ---- WebSocket ---------------------------------------------------------------------------
    def _check(self, channel: str, payload: list, known: dict) -> tuple[list[str], str | None]:
        """-> (the payload's symbols, an error message) per the channel's argument order."""
        spec = ARGUMENTS.get(channel)
        if spec is None:
            return [], f"unknown channel {channel}"
        if spec == "pairs":
            slots = ["pair"] * len(payload)
        else:
            if len(payload) != len(spec):
                return [], f"invalid argument: {channel} expects {len(spec)} arguments"
            slots = list(spec)
        symbols = []
        for slot, value in zip(slots, payload):
            if slot == "pair":
                if not isinstance(value, str) or not PAIR.match(value) or value not in known:
                    return [], f"unknown currency pair {value}"
                symbols.append(value)
            elif value not in slot:
                return [], f"invalid argument: {value}"
        return symbols, None

    async def _ws(self, ws, market: str) -> None:
        self.connects[market] += 1
        self.sockets[market] = ws
        ws.market = market
        ws.decimal = ws.request.headers.get(SIZE_DECIMAL) == "1"
        self.decimal_clients[market] += ws.decimal
        prefix = "spot" if market == "spot" else "futures"
        subs: dict[str, set] = {}
        self.subscriptions[ws] = subs
        pump = asyncio.get_running_loop().create_task(self._pump(ws, market, prefix, subs))
        try:
            async for raw in ws:
                msg = json.loads(raw)
                channel = msg["channel"]
                now = int(time.time())
                if channel == f"{prefix}.ping":
                    self.pings[market] += 1
                    await ws.send(json.dumps({"time": now, "time_ms": now * 1000,
                                              "channel": f"{prefix}.pong", "event": "",
                                              "error": None, "result": None}))
                    continue
                if self.silent:
                    continue
                payload = msg["payload"]
                known = SPOT if market == "spot" else FUT
                ack = {"time": now, "time_ms": now * 1000, "id": msg.get("id"),
                       "channel": channel, "event": msg["event"], "payload": payload}
                symbols, error = self._check(channel, payload, known)
                if not channel.startswith(prefix + "."):
                    error = f"unknown channel {channel}"
                if error is None and channel.endswith(".order_book_update") and \
                        set(symbols) & subs.get(channel, set()):
                    # One subscription per book stream and connection (A45317/A44946).
                    error = f"Alert sub {channel}.{symbols[0]}"
                if error is not None:
                    if self.error_shape == "doc":   # the documented example: no id, no payload
                        ack = {"time": now, "time_ms": now * 1000, "channel": channel,
                               "event": msg["event"], "error": {"code": 2, "message": error},
                               "result": None}
                    else:
                        ack.update(error={"code": 2, "message": error},
                                   result={"status": "fail"})
                    self.subscribe_errors.append(ack)
                    await ws.send(json.dumps(ack))
                    continue
                ack.update(error=None, result={"status": "success"})
                await ws.send(json.dumps(ack))
                subs.setdefault(channel, set()).update(symbols)
        except ConnectionClosed:
            pass
        finally:
            pump.cancel()
            self.subscriptions.pop(ws, None)

    def _envelope(self, channel: str, result) -> str:
        now = time.time()
        return json.dumps({"time": int(now), "time_ms": int(now * 1000), "channel": channel,
                           "event": "update", "result": result})

    async def _pump(self, ws, market: str, prefix: str, subs: dict) -> None:
        """Per connection: book diffs and tickers (trades, candles and stats come from the
        market)."""
        try:
            while True:
                await asyncio.sleep(self.tick_s)
                if self.silent:
                    continue
                for symbol in list(subs.get(f"{prefix}.order_book_update", ())):
                    await self._book_push(ws, market, prefix, symbol)
                for symbol in list(subs.get(f"{prefix}.tickers", ())):
                    book = self.books[(market, symbol)]
                    bid, ask = max(book.bids), min(book.asks)
                    if market == "spot":
                        result = {"currency_pair": symbol, "last": str(bid),
                                  "lowest_ask": str(ask), "highest_bid": str(bid),
                                  "change_percentage": "-1.5", "base_volume": "1000.5",
                                  "quote_volume": "50000000.25", "high_24h": str(ask + 500),
                                  "low_24h": str(bid - 500)}
                    else:
                        result = [{"contract": symbol, "last": str(bid), "change_percentage": "1.2",
                                   "funding_rate": FUNDING_RATE_WS,
                                   "funding_rate_indicative": "0.0001",
                                   "mark_price": str(bid), "index_price": str(bid),
                                   "total_size": "2500000", "volume_24h": "100000",
                                   "volume_24h_base": "10", "volume_24h_quote": "500000",
                                   "volume_24h_settle": "500000", "low_24h": str(bid - 500),
                                   "high_24h": str(ask + 500), "quanto_base_rate": ""}]
                    await ws.send(self._envelope(f"{prefix}.tickers", result))
        except (ConnectionClosed, asyncio.CancelledError):
            return

    async def _book_push(self, ws, market: str, prefix: str, symbol: str) -> None:
        key = (market, symbol)
        book = self.books[key]
        channel = f"{prefix}.order_book_update"
        if key in self.full_next:
            self.full_next.discard(key)
            # The server replaces its whole book; the push carries all of it.
            fresh = ServerBook(book.mid + 1000, book.futures, self.rng)
            fresh.id = book.id + 5
            self.books[key] = book = fresh
            result = {"t": int(time.time() * 1000), "full": True, "s": symbol,
                      "U": book.id - 4, "u": book.id, "l": "100",
                      "b": book.fmt(sorted(book.bids.items(), reverse=True), ws.decimal),
                      "a": book.fmt(sorted(book.asks.items()), ws.decimal)}
            self.full_books[key] = result
            await ws.send(self._envelope(channel, result))
            return
        if key in self.crossed_next:
            self.crossed_next.discard(key)
            # A bogus diff (not applied to the server's own book, so a resync repairs it).
            book.id += 1
            bad_bid = round(min(book.asks) + 1.0, 1)
            levels = book.fmt([(bad_bid, 1 if book.futures else 1.0)], ws.decimal)
            await ws.send(self._envelope(channel, {
                "t": int(time.time() * 1000), "s": symbol, "U": book.id, "u": book.id,
                "b": levels, "a": [], "l": "100"}))
            return
        first = book.id + 1
        bids, asks = book.change()
        book.id += self.rng.randint(1, 3)
        if key in self.gap_next:
            self.gap_next.discard(key)
            return   # applied on the server, never sent: the client's ids jump
        text = self._envelope(channel, {
            "t": int(time.time() * 1000), "s": symbol, "U": first, "u": book.id,
            "b": book.fmt(bids, ws.decimal), "a": book.fmt(asks, ws.decimal), "l": "100"})
        await ws.send(text)
        previous = self._last_diff.get((ws, key))
        self._last_diff[(ws, key)] = text
        if key in self.duplicate_next and previous is not None:
            self.duplicate_next.discard(key)
            await ws.send(previous)     # the previous diff again, after a newer one
            await ws.send(text)         # and this one twice
