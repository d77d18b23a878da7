"""A fake Kraken: spot WebSocket v2 and Futures WebSocket v1 on 127.0.0.1, real message formats.

The spot book checksum is computed here independently of the collector (fixed-point formatting of
the server's own numbers). Test knobs: ``corrupt_next`` (symbols whose next book update carries a
wrong checksum), ``fut_gap_next`` (skip one futures book seq), ``silent`` (accept connections,
answer nothing).
"""
from __future__ import annotations

import asyncio
import json
import random
import zlib
from collections import Counter
from datetime import datetime, timedelta, timezone

from aiohttp import web
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

from tests.helpers import free_port

# symbol -> (price_precision, qty_precision, mid)
INSTRUMENTS = {"BTC/USD": (1, 8, 50000.0), "ETH/USD": (2, 8, 3000.0)}
FUT_PRODUCTS = {"PF_XBTUSD": 50000.0}
LEVELS = 25


def rfc3339(dt: datetime, ns: bool = False) -> str:
    text = dt.strftime("%Y-%m-%dT%H:%M:%S.%f")
    return text + ("000Z" if ns else "Z")


def num(value: float, places: int) -> str:
    """A JSON number as Kraken writes it (shortest form, trailing zeros dropped)."""
    text = f"{value:.{places}f}".rstrip("0").rstrip(".")
    return text or "0"


class SpotBook:
    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self.pp, self.qp, mid = INSTRUMENTS[symbol]
        tick = 10 ** -self.pp
        self.tick = tick
        self.depth = 10
        self.bids = {round(mid - tick * (i + 1), self.pp): self.qty() for i in range(LEVELS)}
        self.asks = {round(mid + tick * (i + 1), self.pp): self.qty() for i in range(LEVELS)}

    def qty(self) -> float:
        return round(random.uniform(0.001, 3.0), random.choice([1, 3, self.qp])) or 0.5

    def levels(self, side: dict, prices) -> list[str]:
        return [f'{{"price":{num(p, self.pp)},"qty":{num(side.get(p, 0.0), self.qp)}}}'
                for p in prices]

    def checksum(self) -> int:
        def fmt(v: float, places: int) -> str:
            return f"{v:.{places}f}".replace(".", "").lstrip("0")
        asks = sorted(self.asks)[:10]
        bids = sorted(self.bids, reverse=True)[:10]
        text = "".join(fmt(p, self.pp) + fmt(self.asks[p], self.qp) for p in asks)
        text += "".join(fmt(p, self.pp) + fmt(self.bids[p], self.qp) for p in bids)
        return zlib.crc32(text.encode()) & 0xFFFFFFFF

    def window(self, depth: int) -> tuple[set[float], set[float]]:
        return (set(sorted(self.bids, reverse=True)[:depth]), set(sorted(self.asks)[:depth]))

    def snapshot(self, depth: int) -> str:
        self.depth = depth
        bids = self.levels(self.bids, sorted(self.bids, reverse=True)[:depth])
        asks = self.levels(self.asks, sorted(self.asks)[:depth])
        return ('{"channel":"book","type":"snapshot","data":[{"symbol":"%s","bids":[%s],'
                '"asks":[%s],"checksum":%d,"timestamp":"%s"}]}'
                % (self.symbol, ",".join(bids), ",".join(asks), self.checksum(),
                   rfc3339(datetime.now(timezone.utc))))

    def update(self, corrupt: bool = False) -> str:
        """Mutate the server book like the exchange does and send what a depth-``depth``
        subscriber sees: changed levels inside its window and levels entering the window; levels
        pushed out of the window are NOT deleted (the client truncates)."""
        depth = self.depth
        before = self.window(depth)
        side_name = random.choice(["bids", "asks"])
        is_bid = side_name == "bids"
        side = getattr(self, side_name)
        changed: list[float] = []
        roll = random.random()
        best_bid, best_ask = max(self.bids), min(self.asks)
        if roll < 0.25 and len(side) > 12:
            price = random.choice(sorted(side, reverse=is_bid)[:8])
            side.pop(price)
            changed.append(price)
            far = round(min(side) - self.tick if is_bid else max(side) + self.tick, self.pp)
            side[far] = self.qty()
        elif roll < 0.45 and best_ask - best_bid > 1.5 * self.tick:
            # a better price: pushes the last level of the window out
            price = round(best_bid + self.tick if is_bid else best_ask - self.tick, self.pp)
            side[price] = self.qty()
            changed.append(price)
        else:
            price = random.choice(sorted(side, reverse=is_bid)[:8])
            side[price] = self.qty()
            changed.append(price)
        after = self.window(depth)
        entered = (after[0] - before[0]) if is_bid else (after[1] - before[1])
        inside = after[0] if is_bid else after[1]
        send = [p for p in changed if p in inside or p not in side] + \
            [p for p in sorted(entered) if p not in changed]
        checksum = self.checksum() ^ (0x5A5A if corrupt else 0)
        levels = [f'{{"price":{num(p, self.pp)},"qty":{num(side.get(p, 0.0), self.qp)}}}'
                  for p in send]
        bids = ",".join(levels) if is_bid else ""
        asks = ",".join(levels) if not is_bid else ""
        return ('{"channel":"book","type":"update","data":[{"symbol":"%s","bids":[%s],'
                '"asks":[%s],"checksum":%d,"timestamp":"%s"}]}'
                % (self.symbol, bids, asks, checksum, rfc3339(datetime.now(timezone.utc))))


class FakeKraken:
    def __init__(self, tick_s: float = 0.03) -> None:
        self.tick_s = tick_s
        self.spot_port = free_port()
        self.perp_port = free_port()
        self.spot_url = f"ws://127.0.0.1:{self.spot_port}/v2"
        self.perp_url = f"ws://127.0.0.1:{self.perp_port}/ws/v1"
        self.rest_port = free_port()
        self.perp_rest_url = f"http://127.0.0.1:{self.rest_port}"
        self._runner: web.AppRunner | None = None
        self.silent = False
        self.corrupt_next: set[str] = set()
        self.fut_gap_next = False
        self.spot_connects = 0
        self.perp_connects = 0
        self.book_subscribes: Counter[str] = Counter()
        self.book_unsubscribes: Counter[str] = Counter()
        self.fut_book_subscribes: Counter[str] = Counter()
        self.pings = 0
        self.requests: list[dict] = []
        self._servers = []

    async def start(self) -> "FakeKraken":
        self._servers.append(await serve(self._spot, "127.0.0.1", self.spot_port))
        self._servers.append(await serve(self._perp, "127.0.0.1", self.perp_port))
        app = web.Application()
        app.router.add_get("/derivatives/api/v3/instruments", self._instruments)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.rest_port).start()
        return self

    async def _instruments(self, request: web.Request) -> web.Response:
        return web.json_response({"result": "success", "instruments": [
            {"symbol": s.lower() if s.startswith("PI_") else s, "type": "flexible_futures",
             "tradeable": True, "contractSize": 1, "tickSize": 0.5} for s in FUT_PRODUCTS]
            + [{"symbol": "PI_XBTUSD", "type": "futures_inverse", "tradeable": True}]})

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
            await server.wait_closed()
        if self._runner is not None:
            await self._runner.cleanup()

    # ---- spot v2 -----------------------------------------------------------------------------
    async def _spot(self, ws) -> None:
        self.spot_connects += 1
        subs: dict[str, set[str]] = {"ticker": set(), "trade": set(), "ohlc": set()}
        books: dict[str, SpotBook] = {}
        pump = asyncio.get_running_loop().create_task(self._spot_pump(ws, subs, books))
        try:
            async for raw in ws:
                msg = json.loads(raw)
                self.requests.append(msg)
                method = msg.get("method")
                if method == "ping":
                    self.pings += 1
                    await ws.send(json.dumps({"method": "pong", "req_id": msg.get("req_id"),
                                              "time_in": rfc3339(datetime.now(timezone.utc)),
                                              "time_out": rfc3339(datetime.now(timezone.utc))}))
                    continue
                if self.silent:
                    continue
                params = msg["params"]
                channel = params["channel"]
                if method == "subscribe" and channel == "instrument":
                    await ws.send(json.dumps({"method": "subscribe", "result": {
                        "channel": "instrument", "snapshot": True}, "success": True}))
                    pairs = [{"symbol": s, "base": s.split("/")[0], "quote": s.split("/")[1],
                              "status": "online", "price_precision": pp, "qty_precision": qp,
                              "price_increment": 10 ** -pp, "qty_increment": 10 ** -qp}
                             for s, (pp, qp, _) in INSTRUMENTS.items()]
                    await ws.send(json.dumps({"channel": "instrument", "type": "snapshot",
                                              "data": {"assets": [], "pairs": pairs}}))
                    continue
                for symbol in params.get("symbol", []):
                    if symbol not in INSTRUMENTS:
                        await ws.send(json.dumps({
                            "method": method, "error": f"Currency pair not supported {symbol}",
                            "success": False, "symbol": symbol, "req_id": msg.get("req_id")}))
                        continue
                    result = {"channel": channel, "symbol": symbol, "snapshot": True}
                    await ws.send(json.dumps({"method": method, "result": result,
                                              "success": True, "req_id": msg.get("req_id")}))
                    if channel == "book":
                        if method == "subscribe":
                            self.book_subscribes[symbol] += 1
                            books[symbol] = SpotBook(symbol)
                            await ws.send(books[symbol].snapshot(params.get("depth", 10)))
                        else:
                            self.book_unsubscribes[symbol] += 1
                            books.pop(symbol, None)
                    elif method == "subscribe":
                        subs[channel].add(symbol)
                    else:
                        subs[channel].discard(symbol)
        except ConnectionClosed:
            pass
        finally:
            pump.cancel()

    async def _spot_pump(self, ws, subs, books) -> None:
        n = 0
        start = datetime.now(timezone.utc).replace(second=0, microsecond=0)
        try:
            while True:
                await asyncio.sleep(self.tick_s)
                if self.silent:
                    continue
                n += 1
                now = datetime.now(timezone.utc)
                for symbol, book in list(books.items()):
                    corrupt = symbol in self.corrupt_next
                    self.corrupt_next.discard(symbol)
                    await ws.send(book.update(corrupt))
                for symbol in subs["ticker"]:
                    book = books.get(symbol) or SpotBook(symbol)
                    bid, ask = max(book.bids), min(book.asks)
                    await ws.send(
                        '{"channel":"ticker","type":"update","data":[{"symbol":"%s","bid":%s,'
                        '"bid_qty":1.5,"ask":%s,"ask_qty":0.25,"last":%s,"volume":1234.5,'
                        '"vwap":%s,"low":%s,"high":%s,"change":12.5,"change_pct":0.25,'
                        '"timestamp":"%s"}]}' % (symbol, bid, ask, bid, bid, bid - 100,
                                                 ask + 100, rfc3339(now)))
                for symbol in subs["trade"]:
                    await ws.send(json.dumps({"channel": "trade", "type": "update", "data": [{
                        "symbol": symbol, "side": random.choice(["buy", "sell"]),
                        "price": INSTRUMENTS[symbol][2], "qty": 0.01, "ord_type": "market",
                        "trade_id": n, "timestamp": rfc3339(now)}]}))
                for symbol in subs["ohlc"]:
                    # a new 1-minute candle every 5 ticks, so closed candles appear quickly
                    begin = start + timedelta(minutes=n // 5)
                    mid = INSTRUMENTS[symbol][2]
                    await ws.send(json.dumps({"channel": "ohlc", "type": "update",
                                              "timestamp": rfc3339(now, True), "data": [{
                        "symbol": symbol, "open": mid, "high": mid + 5, "low": mid - 5,
                        "close": mid + 1, "trades": n % 5 + 1, "volume": 0.5, "vwap": mid,
                        "interval_begin": rfc3339(begin, True), "interval": 1,
                        "timestamp": rfc3339(begin + timedelta(minutes=1))}]}))
                if not books and not any(subs.values()):
                    await ws.send('{"channel":"heartbeat"}')
        except (ConnectionClosed, asyncio.CancelledError):
            return

    # ---- futures -----------------------------------------------------------------------------
    async def _perp(self, ws) -> None:
        self.perp_connects += 1
        feeds: dict[str, set[str]] = {"ticker": set(), "trade": set(), "book": set()}
        seqs: dict[str, int] = {}
        heartbeat = {"on": False}
        if not self.silent:
            await ws.send('{"event":"info","version":1}')
        pump = asyncio.get_running_loop().create_task(self._perp_pump(ws, feeds, seqs, heartbeat))
        try:
            async for raw in ws:
                msg = json.loads(raw)
                self.requests.append(msg)
                if self.silent:
                    continue
                feed, event = msg.get("feed"), msg.get("event")
                if feed == "heartbeat":
                    heartbeat["on"] = True
                    await ws.send('{"event":"subscribed","feed":"heartbeat"}')
                    continue
                if feed not in feeds:
                    await ws.send('{"event":"error","message":"Invalid feed"}')
                    continue
                bad = [p for p in msg["product_ids"] if p not in FUT_PRODUCTS]
                if bad:
                    await ws.send(json.dumps({"event": "error", "message": "Invalid product id",
                                              "product_ids": bad}))
                good = [p for p in msg["product_ids"] if p in FUT_PRODUCTS]
                if not good:
                    continue
                await ws.send(json.dumps({"event": event + "d", "feed": feed,
                                          "product_ids": good}))
                for product in good:
                    if event == "unsubscribe":
                        feeds[feed].discard(product)
                        continue
                    feeds[feed].add(product)
                    if feed == "book":
                        self.fut_book_subscribes[product] += 1
                        seqs[product] = random.randint(1000, 100000)
                        mid = FUT_PRODUCTS[product]
                        await ws.send(json.dumps({
                            "feed": "book_snapshot", "product_id": product,
                            "timestamp": 1612269825817, "seq": seqs[product], "tickSize": None,
                            "bids": [{"price": mid - i - 0.5, "qty": 1.5 + i} for i in range(20)]
                            + [{"price": mid - 100, "qty": 0}],
                            "asks": [{"price": mid + i + 0.5, "qty": 2.5 + i}
                                     for i in range(20)]}))
                    elif feed == "trade":
                        await ws.send(json.dumps({"feed": "trade_snapshot", "product_id": product,
                                                  "trades": [{
                            "feed": "trade", "product_id": product, "uid": "snap-1",
                            "side": "buy", "type": "fill", "seq": 1, "time": 1612266317519,
                            "qty": 0.5, "price": FUT_PRODUCTS[product]}]}))
        except ConnectionClosed:
            pass
        finally:
            pump.cancel()

    async def _perp_pump(self, ws, feeds, seqs, heartbeat) -> None:
        n = 0
        try:
            while True:
                await asyncio.sleep(self.tick_s)
                if self.silent:
                    continue
                n += 1
                now_ms = int(datetime.now(timezone.utc).timestamp() * 1000)
                for product in list(feeds["book"]):
                    seqs[product] += 2 if self.fut_gap_next else 1
                    self.fut_gap_next = False
                    mid = FUT_PRODUCTS[product]
                    side = random.choice(["buy", "sell"])
                    price = mid - 0.5 - n % 5 if side == "buy" else mid + 0.5 + n % 5
                    await ws.send(json.dumps({"feed": "book", "product_id": product,
                                              "side": side, "seq": seqs[product],
                                              "price": price, "qty": round(random.uniform(0, 5), 4),
                                              "timestamp": now_ms}))
                for product in list(feeds["ticker"]):
                    mid = FUT_PRODUCTS[product]
                    await ws.send(json.dumps({
                        "time": now_ms, "product_id": product, "funding_rate": 0.5,
                        "funding_rate_prediction": 0.4, "relative_funding_rate": 1.0e-05,
                        "relative_funding_rate_prediction": 0.9e-05,
                        "next_funding_rate_time": (now_ms // 3600000 + 1) * 3600000,
                        "feed": "ticker", "bid": mid - 0.5, "ask": mid + 0.5, "bid_size": 1.5,
                        "ask_size": 2.5, "volume": 1000.0, "dtm": 0, "leverage": "50x",
                        "index": mid, "premium": 0.0, "last": mid, "change": 1.2,
                        "suspended": False, "tag": "perpetual", "pair": "XBT:USD",
                        "openInterest": 1234.5, "markPrice": mid + 0.1, "maturityTime": 0,
                        "post_only": False, "volumeQuote": 5.0e7, "open": mid - 100,
                        "high": mid + 200, "low": mid - 300}))
                for product in list(feeds["trade"]):
                    await ws.send(json.dumps({
                        "feed": "trade", "product_id": product, "uid": f"u-{n}",
                        "side": "sell", "type": "fill", "seq": n, "time": now_ms, "qty": 0.1,
                        "price": FUT_PRODUCTS[product]}))
                if heartbeat["on"] and n % 10 == 0:
                    await ws.send(json.dumps({"feed": "heartbeat", "time": now_ms}))
        except (ConnectionClosed, asyncio.CancelledError):
            return
