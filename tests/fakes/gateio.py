"""A fake Gate.io v4: spot + USDT futures WebSockets and the REST endpoints the feed uses, on
127.0.0.1, with the real message formats.

The server keeps its own book per stream with an update id; diffs carry contiguous U/u and the
REST snapshot returns the current book with ``id``. Test knobs (per (market, symbol)):
``gap_next`` (one update is applied but not sent), ``full_next`` (send a ``full:true`` book that
replaces everything), ``crossed_next`` (send a diff whose bid crosses the best ask), ``silent``.
"""
from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter

from aiohttp import web
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

from tests.helpers import free_port

SPOT = {"BTC_USDT": 50000.0, "BTC_USDC": 50010.0}
FUT = {"BTC_USDT": 50005.0}
MULTIPLIER = 0.0001


class ServerBook:
    def __init__(self, mid: float, futures: bool) -> None:
        self.futures = futures
        self.id = random.randint(10_000, 1_000_000)
        self.mid = mid
        self.bids = {round(mid - 0.1 * (i + 1), 1): self.size() for i in range(30)}
        self.asks = {round(mid + 0.1 * (i + 1), 1): self.size() for i in range(30)}

    def size(self):
        return random.randint(1, 5000) if self.futures else round(random.uniform(0.001, 2), 4)

    def fmt(self, levels) -> list:
        if self.futures:
            return [{"p": str(p), "s": s} for p, s in levels]
        return [[str(p), str(s)] for p, s in levels]

    def change(self) -> tuple[list, list]:
        """Mutate a few levels; returns the changed (bids, asks)."""
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

    def snapshot_rest(self) -> dict:
        body = {"id": self.id, "current": int(time.time() * 1000),
                "update": int(time.time() * 1000),
                "bids": self.fmt(sorted(self.bids.items(), reverse=True)[:100]),
                "asks": self.fmt(sorted(self.asks.items())[:100])}
        if self.futures:
            body["current"] = time.time()
            body["update"] = time.time()
        return body


class FakeGate:
    def __init__(self, tick_s: float = 0.03) -> None:
        self.tick_s = tick_s
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
        self._servers = []
        self._runner: web.AppRunner | None = None

    async def start(self) -> "FakeGate":
        for symbol, mid in SPOT.items():
            self.books[("spot", symbol)] = ServerBook(mid, False)
        for symbol, mid in FUT.items():
            self.books[("perp", symbol)] = ServerBook(mid, True)
        self._servers.append(await serve(lambda ws: self._ws(ws, "spot"), "127.0.0.1",
                                         self.spot_port))
        self._servers.append(await serve(lambda ws: self._ws(ws, "perp"), "127.0.0.1",
                                         self.perp_port))
        app = web.Application()
        app.router.add_get("/api/v4/spot/order_book", self._rest_spot_book)
        app.router.add_get("/api/v4/futures/usdt/order_book", self._rest_fut_book)
        app.router.add_get("/api/v4/futures/usdt/contracts/{contract}", self._rest_contract)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.rest_port).start()
        return self

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
            await server.wait_closed()
        if self._runner is not None:
            await self._runner.cleanup()

    async def push_upgrade(self, market: str) -> None:
        """The service-upgrade notice Gate sends before closing a connection."""
        await self.sockets[market].send(json.dumps({
            "type": "upgrade",
            "msg": "The connection will soon be closed for a service upgrade. Please reconnect."}))

    # ---- REST --------------------------------------------------------------------------------
    def _label(self, label: str, message: str, status: int = 400) -> web.Response:
        return web.json_response({"label": label, "message": message}, status=status)

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
        return web.json_response(self.books[("perp", symbol)].snapshot_rest())

    async def _rest_contract(self, request: web.Request) -> web.Response:
        contract = request.match_info["contract"]
        if not self.contracts_available:
            return web.json_response({"label": "SERVER_ERROR"}, status=503)
        if contract not in FUT:
            return self._label("CONTRACT_NOT_FOUND", contract, 404)
        return web.json_response({
            "name": contract, "type": "direct", "quanto_multiplier": str(MULTIPLIER),
            "mark_price": str(FUT[contract]), "index_price": str(FUT[contract]),
            "funding_rate": "0.0001", "funding_interval": 28800,
            "funding_next_apply": (int(time.time()) // 28800 + 1) * 28800,
            "order_size_min": 1})

    # ---- WebSocket ---------------------------------------------------------------------------
    async def _ws(self, ws, market: str) -> None:
        self.connects[market] += 1
        self.sockets[market] = ws
        prefix = "spot" if market == "spot" else "futures"
        subs: dict[str, set] = {}
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
                symbols = [x for x in payload if "_" in x and not x[0].isdigit()]
                bad = [x for x in symbols if x not in known]
                ack = {"time": now, "time_ms": now * 1000, "id": msg.get("id"),
                       "channel": channel, "event": msg["event"], "payload": payload}
                if bad:
                    ack.update(error={"code": 2, "message": f"unknown currency pair {bad[0]}"},
                               result={"status": "fail"})
                    await ws.send(json.dumps(ack))
                    continue
                ack.update(error=None, result={"status": "success"})
                await ws.send(json.dumps(ack))
                subs.setdefault(channel, set()).update(symbols)
        except ConnectionClosed:
            pass
        finally:
            pump.cancel()

    def _envelope(self, channel: str, result) -> str:
        now = time.time()
        return json.dumps({"time": int(now), "time_ms": int(now * 1000), "channel": channel,
                           "event": "update", "result": result})

    async def _pump(self, ws, market: str, prefix: str, subs: dict) -> None:
        n = 0
        try:
            while True:
                await asyncio.sleep(self.tick_s)
                if self.silent:
                    continue
                n += 1
                now = time.time()
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
                                   "funding_rate": "0.000125", "funding_rate_indicative": "0.0001",
                                   "mark_price": str(bid), "index_price": str(bid),
                                   "total_size": "2500000", "volume_24h": "100000",
                                   "volume_24h_base": "10", "volume_24h_quote": "500000",
                                   "volume_24h_settle": "500000", "low_24h": str(bid - 500),
                                   "high_24h": str(ask + 500), "quanto_base_rate": ""}]
                    await ws.send(self._envelope(f"{prefix}.tickers", result))
                for symbol in list(subs.get(f"{prefix}.trades", ())):
                    if market == "spot":
                        result = {"id": n, "id_market": n, "create_time": int(now),
                                  "create_time_ms": f"{now * 1000:.3f}", "side": "buy",
                                  "currency_pair": symbol, "amount": "0.01",
                                  "price": str(SPOT[symbol])}
                    else:
                        result = [{"size": -25 if n % 2 else 40, "id": n, "create_time": int(now),
                                   "create_time_ms": int(now * 1000), "price": str(FUT[symbol]),
                                   "contract": symbol}]
                    await ws.send(self._envelope(f"{prefix}.trades", result))
                if n % 3 == 0:
                    # candles: [interval, pair]; a new minute every 6 pushes
                    for symbol in list(subs.get(f"{prefix}.candlesticks", ())):
                        t = (int(now) // 60) * 60 + 60 * (n // 6)
                        mid = (SPOT if market == "spot" else FUT)[symbol]
                        candle = {"t": str(t) if market == "spot" else t, "o": str(mid),
                                  "h": str(mid + 5), "l": str(mid - 5), "c": str(mid + 1),
                                  "n": f"1m_{symbol}"}
                        if market == "spot":
                            candle.update(v="2500.5", a="0.05")
                        else:
                            candle.update(v=120, a="0.012")
                        await ws.send(self._envelope(f"{prefix}.candlesticks",
                                                     candle if market == "spot" else [candle]))
                    for symbol in list(subs.get("futures.contract_stats", ())):
                        await ws.send(self._envelope("futures.contract_stats", [{
                            "time": int(now), "contract": symbol, "open_interest": 2500000,
                            "open_interest_usd": 12500000.5, "mark_price": str(FUT[symbol]),
                            "lsr_taker": 1.1, "lsr_account": 0.9, "long_liq_size": 0,
                            "short_liq_size": 0, "long_liq_amount": 0, "short_liq_amount": 0,
                            "long_liq_usd": 0, "short_liq_usd": 0, "top_lsr_account": 1.0,
                            "top_lsr_size": 1.0}]))
        except (ConnectionClosed, asyncio.CancelledError):
            return

    async def _book_push(self, ws, market: str, prefix: str, symbol: str) -> None:
        key = (market, symbol)
        book = self.books[key]
        channel = f"{prefix}.order_book_update"
        if key in self.full_next:
            self.full_next.discard(key)
            # The server replaces its whole book; the push carries all of it.
            fresh = ServerBook(book.mid + 1000, book.futures)
            fresh.id = book.id + 5
            self.books[key] = book = fresh
            result = {"t": int(time.time() * 1000), "full": True, "s": symbol,
                      "U": book.id - 4, "u": book.id, "l": "100",
                      "b": book.fmt(sorted(book.bids.items(), reverse=True)),
                      "a": book.fmt(sorted(book.asks.items()))}
            self.full_books[key] = result
            await ws.send(self._envelope(channel, result))
            return
        if key in self.crossed_next:
            self.crossed_next.discard(key)
            # A bogus diff (not applied to the server's own book, so a resync repairs it).
            book.id += 1
            bad_bid = round(min(book.asks) + 1.0, 1)
            levels = book.fmt([(bad_bid, 1 if book.futures else 1.0)])
            await ws.send(self._envelope(channel, {
                "t": int(time.time() * 1000), "s": symbol, "U": book.id, "u": book.id,
                "b": levels, "a": [], "l": "100"}))
            return
        first = book.id + 1
        bids, asks = book.change()
        book.id += random.randint(1, 3)
        if key in self.gap_next:
            self.gap_next.discard(key)
            return   # applied on the server, never sent: the client's ids jump
        await ws.send(self._envelope(channel, {
            "t": int(time.time() * 1000), "s": symbol, "U": first, "u": book.id,
            "b": book.fmt(bids), "a": book.fmt(asks), "l": "100"}))
