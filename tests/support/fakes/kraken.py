"""A fake Kraken: spot WebSocket v2, Futures WebSocket v1 and the public REST endpoints the feed
uses (spot ``/0/public/Trades`` and ``/0/public/OHLC``; futures ``/derivatives/api/v3/
instruments``, ``tickers`` and ``history``), on 127.0.0.1, real message formats.

The market runs on the server whether or not anyone is connected: trades (and the 1m candles
built from them) keep happening while a client is disconnected, and REST serves them, so a test
can check that backfill recovers exactly what the stream missed. Candle time is compressed (a
new minute every ``ticks_per_minute`` ticks) so closed candles appear quickly.

The spot book checksum is computed here independently of the collector (fixed-point formatting of
the server's own numbers). Test knobs: ``lose_next`` (symbols whose next book update is lost in
transit: the server's book changes, the client's does not, and every later checksum disagrees
until a new snapshot), ``corrupt_next`` (the next update carries a wrong checksum),
``forget_book_after_corrupt`` (the server then drops that book subscription, as when a
resubscribe was lost), ``fut_gap_next`` (skip one futures book seq), ``fut_dup_next``
(repeat one futures book message), ``silent`` (accept connections, answer pings only), ``quiet``
(heartbeats only, no data), ``trades_paused`` (no trades; books keep moving), ``instruments_down``
(futures instrument list answers 503), ``rest_errors_next`` (body errors or ``(status,
retry_after)`` for the next spot REST calls), ``ohlc_max_rows``, ``drop_connections()``.

As strict as Kraken per docs/exchanges/kraken.md: acks per symbol with ``time_in``/``time_out``
(book echoes ``depth``, ticker ``event_trigger``); an unsubscribe of something not subscribed
answers ``{"error":"Subscription Not Found","method":"subscribe",...}``; unknown pairs answer
``Currency pair not supported``; the ticker fires on trades, or on top-of-book changes with
``event_trigger: bbo``; futures errors carry no ``product_ids``; a spot socket with no client
message for ``idle_cut_s`` is closed; more than ``max_msgs_per_s`` client messages a second answer
``{"Error":"Exceeded msg rate"}``; more than ``connect_limit`` connection attempts per window are
refused (HTTP 429 on the upgrade); spot REST allows ``rest_limit`` (burst, calls/s) and then
answers HTTP 200 ``{"error":["EAPI:Rate limit exceeded"]}``; OHLC returns at most the newest 720
rows; futures history ``trade_id`` is the row's position in the page. Randomness is seeded.
"""
from __future__ import annotations

import asyncio
import json
import random
import time
import zlib
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from aiohttp import web
from websockets.asyncio.server import serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Response

from tests.support.helpers import free_port

# symbol -> (price_precision, qty_precision, mid)
INSTRUMENTS = {"BTC/USD": (1, 8, 50000.0), "ETH/USD": (2, 8, 3000.0)}
# REST pair parameter -> (v2 symbol, the pair key Kraken returns)
REST_PAIRS = {"XBTUSD": ("BTC/USD", "XXBTZUSD"), "ETHUSD": ("ETH/USD", "XETHZUSD")}
FUT_PRODUCTS = {"PF_XBTUSD": 50000.0}
# The Unified WebSocket's perpetuals (v2 format; precisions of the fake's own choosing: the feed
# gets none from this endpoint and checksums the digits as sent, so books are sent padded).
UNIFIED_INSTRUMENTS = {"PF_XBTUSD": (1, 4, 50000.0)}
FUT_FUNDING_ABS = 0.5            # absolute rate; / index (= mid) = relative 1e-05
FUT_OPEN_INTEREST = 1234.5
LEVELS = 25


def rfc3339(dt: datetime, ns: bool = False) -> str:
    text = dt.strftime("%Y-%m-%dT%H:%M:%S.%f")
    return text + ("000Z" if ns else "Z")


def iso_ms(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def ack_times() -> dict:
    now = rfc3339(datetime.now(timezone.utc))
    return {"time_in": now, "time_out": now}


def num(value: float, places: int) -> str:
    """A JSON number as Kraken writes it (shortest form, trailing zeros dropped)."""
    text = f"{value:.{places}f}".rstrip("0").rstrip(".")
    return text or "0"


class SpotBook:
    def __init__(self, symbol: str, rng: random.Random, pad: bool = False) -> None:
        self.symbol = symbol
        self.rng = rng
        self.pad = pad          # numbers with every digit of their precision (unified)
        self.pp, self.qp, mid = INSTRUMENTS.get(symbol) or UNIFIED_INSTRUMENTS[symbol]
        tick = 10 ** -self.pp
        self.tick = tick
        self.depth = 10
        self.bids = {round(mid - tick * (i + 1), self.pp): self.qty() for i in range(LEVELS)}
        self.asks = {round(mid + tick * (i + 1), self.pp): self.qty() for i in range(LEVELS)}
        self.lost_prices: set[float] = set()     # deleted by a lost update: never re-added

    def qty(self) -> float:
        return round(self.rng.uniform(0.001, 3.0), self.rng.choice([1, 3, self.qp])) or 0.5

    def num(self, value: float, places: int) -> str:
        return f"{value:.{places}f}" if self.pad else num(value, places)

    def levels(self, side: dict, prices) -> list[str]:
        return [f'{{"price":{self.num(p, self.pp)},"qty":{self.num(side.get(p, 0.0), self.qp)}}}'
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

    def update(self, corrupt: bool = False, lost: bool = False) -> str:
        """Mutate the server book like the exchange does and send what a depth-``depth``
        subscriber sees: changed levels inside its window and levels entering the window; levels
        pushed out of the window are NOT deleted (the client truncates). ``lost``: the update
        deletes a top level below the best, which no later update re-adds (a divergence that
        lasts until a new snapshot)."""
        depth = self.depth
        before = self.window(depth)
        side_name = self.rng.choice(["bids", "asks"])
        is_bid = side_name == "bids"
        side = getattr(self, side_name)
        changed: list[float] = []
        roll = self.rng.random()
        best_bid, best_ask = max(self.bids), min(self.asks)
        better = round(best_bid + self.tick if is_bid else best_ask - self.tick, self.pp)
        if (lost or roll < 0.25) and len(side) > 12:
            price = self.rng.choice(sorted(side, reverse=is_bid)[1 if lost else 0:8])
            if lost:
                self.lost_prices.add(price)
            side.pop(price)
            changed.append(price)
            far = round(min(side) - self.tick if is_bid else max(side) + self.tick, self.pp)
            side[far] = self.qty()
        elif roll < 0.45 and best_ask - best_bid > 1.5 * self.tick and better not in self.lost_prices:
            # a better price: pushes the last level of the window out
            price = better
            side[price] = self.qty()
            changed.append(price)
        else:
            price = self.rng.choice(sorted(side, reverse=is_bid)[:8])
            side[price] = self.qty()
            changed.append(price)
        after = self.window(depth)
        entered = (after[0] - before[0]) if is_bid else (after[1] - before[1])
        inside = after[0] if is_bid else after[1]
        send = [p for p in changed if p in inside or p not in side] + \
            [p for p in sorted(entered) if p not in changed]
        checksum = self.checksum() ^ (0x5A5A if corrupt else 0)
        levels = self.levels(side, send)
        bids = ",".join(levels) if is_bid else ""
        asks = ",".join(levels) if not is_bid else ""
        return ('{"channel":"book","type":"update","data":[{"symbol":"%s","bids":[%s],'
                '"asks":[%s],"checksum":%d,"timestamp":"%s"}]}'
                % (self.symbol, bids, asks, checksum, rfc3339(datetime.now(timezone.utc))))


@dataclass
class SpotTrade:
    trade_id: int
    ts: datetime
    price: float
    qty: float
    side: str

    @property
    def ns(self) -> int:
        return int(self.ts.timestamp()) * 10 ** 9 + self.ts.microsecond * 1000


@dataclass
class FakeCandle:
    begin: datetime
    open: float
    high: float
    low: float
    close: float
    volume: float = 0.0
    notional: float = 0.0
    trades: int = 0

    def add(self, price: float, qty: float) -> None:
        self.high, self.low, self.close = max(self.high, price), min(self.low, price), price
        self.volume += qty
        self.notional += price * qty
        self.trades += 1

    @property
    def vwap(self) -> float:
        return self.notional / self.volume if self.volume else self.close


@dataclass
class FutTrade:
    uid: str
    seq: int
    time_ms: int
    price: float
    qty: float
    side: str


@dataclass
class Market:
    """Everything that happened on the server, connected clients or not."""
    spot_trades: dict[str, list[SpotTrade]] = field(default_factory=dict)
    candles: dict[str, list[FakeCandle]] = field(default_factory=dict)
    fut_trades: dict[str, list[FutTrade]] = field(default_factory=dict)


class FakeKraken:
    def __init__(self, tick_s: float = 0.03, ticks_per_minute: int = 5, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.tick_s = tick_s
        self.ticks_per_minute = ticks_per_minute
        self.spot_port = free_port()
        self.perp_port = free_port()
        self.spot_url = f"ws://127.0.0.1:{self.spot_port}/v2"
        self.unified_port = free_port()
        self.unified_url = f"ws://127.0.0.1:{self.unified_port}/v2/public"
        self.unified_connects = 0
        self.perp_url = f"ws://127.0.0.1:{self.perp_port}/ws/v1"
        self.rest_port = free_port()
        self.rest_url = f"http://127.0.0.1:{self.rest_port}"
        self.perp_rest_url = self.rest_url
        self._runner: web.AppRunner | None = None
        self.silent = False
        self.quiet = False
        self.lose_next: set[str] = set()
        self.corrupt_next: set[str] = set()
        self.forget_book_after_corrupt: set[str] = set()
        self.fut_gap_next = False
        self.fut_dup_next = False
        self.trades_paused = False
        self.instruments_down = False
        self.rest_errors_next: list = []     # "EAPI:..." body errors or (status, retry_after)
        self.ohlc_max_rows = 720
        # Limits (docs/exchanges/kraken.md): a spot socket without a client message for this long
        # is closed; client messages per second; connection attempts per window; spot REST.
        self.idle_cut_s = 60.0
        self.max_msgs_per_s = 50
        self.connect_limit = (150, 600.0)
        self.rest_limit: tuple[float, float] | None = (15.0, 1.0)   # burst, calls per second
        self._rest_tokens = 15.0
        self._rest_stamp = time.monotonic()
        self._connect_times: deque[float] = deque()
        self.refused_connects = 0
        self.rate_errors = 0
        self.idle_cuts = 0
        self.unsubscribe_failures: Counter[str] = Counter()
        self.errors_sent: list[dict] = []
        self.tickers_sent: list[tuple[str, float, float]] = []
        self.spot_connects = 0
        self.perp_connects = 0
        self.book_subscribes: Counter[str] = Counter()
        self.book_unsubscribes: Counter[str] = Counter()
        self.fut_book_subscribes: Counter[str] = Counter()
        self.pings = 0
        self.requests: list[dict] = []
        self.rest_requests: list[tuple[str, dict]] = []
        # Derivatives REST v3 turned off (its decommission): every call answers 404.
        self.derivatives_rest_gone = False
        self.history_page = 100          # /derivatives/api/v3/history page size
        self.market = Market()
        # The exchange's own book per pair: the bbo ticker follows its top of book.
        self.market_books = {s: SpotBook(s, self.rng) for s in INSTRUMENTS}
        self.market_books.update({s: SpotBook(s, self.rng, pad=True) for s in UNIFIED_INSTRUMENTS})
        self._spot_sockets: dict = {}    # ws -> its subscriptions
        self._unified_sockets: dict = {}
        self._perp_sockets: dict = {}
        self._servers = []
        self._market_task: asyncio.Task | None = None
        self._tick = 0
        self._start = datetime.now(timezone.utc).replace(second=0, microsecond=0)

    async def start(self) -> "FakeKraken":
        self._servers.append(await serve(self._spot, "127.0.0.1", self.spot_port,
                                         process_request=self._admit))
        self._servers.append(await serve(self._perp, "127.0.0.1", self.perp_port,
                                         process_request=self._admit))
        self._servers.append(await serve(self._unified, "127.0.0.1", self.unified_port,
                                         process_request=self._admit))
        app = web.Application()
        app.router.add_get("/0/public/Trades", self._rest_trades)
        app.router.add_get("/0/public/OHLC", self._rest_ohlc)
        app.router.add_get("/derivatives/api/v3/instruments", self._instruments)
        app.router.add_get("/derivatives/api/v3/tickers", self._rest_tickers)
        app.router.add_get("/derivatives/api/v3/history", self._rest_history)
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

    async def drop_connections(self) -> None:
        """Close every client connection (the market keeps running)."""
        for ws in list(self._spot_sockets) + list(self._perp_sockets) + \
                list(self._unified_sockets):
            await ws.close()

    def _admit(self, connection, request):
        """Cloudflare's reconnect budget: too many connection attempts per window -> 429."""
        limit, window = self.connect_limit
        now = time.monotonic()
        while self._connect_times and now - self._connect_times[0] > window:
            self._connect_times.popleft()
        if len(self._connect_times) >= limit:
            self.refused_connects += 1
            return Response(429, "Too Many Requests", Headers([("Retry-After", "600")]),
                            b"rate limited\n")
        self._connect_times.append(now)
        return None

    def best_bbo(self, symbol: str) -> tuple[float, float]:
        book = self.market_books[symbol]
        return max(book.bids), min(book.asks)

    def spot_trade_ids(self, symbol: str) -> list[str]:
        return [str(t.trade_id) for t in self.market.spot_trades.get(symbol, [])]

    def fut_trade_ids(self, product: str) -> list[str]:
        return [t.uid for t in self.market.fut_trades.get(product, [])]

    # ---- the market --------------------------------------------------------------------------
    def candle_begin(self) -> datetime:
        return self._start + timedelta(minutes=self._tick // self.ticks_per_minute)

    async def _market_loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            if self.silent or self.quiet:
                continue
            self._tick += 1
            now = datetime.now(timezone.utc)
            for book in self.market_books.values():
                book.update()
            if self.trades_paused:
                continue
            for symbol in INSTRUMENTS:
                await self._spot_trade(symbol, now)
            for product in FUT_PRODUCTS:
                await self._fut_trade(product, now)

    async def _spot_trade(self, symbol: str, now: datetime) -> None:
        trades = self.market.spot_trades.setdefault(symbol, [])
        pp, _, mid = INSTRUMENTS[symbol]
        trade = SpotTrade(len(trades) + 1, now, round(mid + self.rng.randint(-20, 20) * 10 ** -pp, pp),
                          round(self.rng.uniform(0.001, 0.5), 8), self.rng.choice(["buy", "sell"]))
        trades.append(trade)
        candles = self.market.candles.setdefault(symbol, [])
        begin = self.candle_begin()
        if not candles or candles[-1].begin != begin:
            candles.append(FakeCandle(begin, trade.price, trade.price, trade.price, trade.price))
        candle = candles[-1]
        candle.add(trade.price, trade.qty)
        for ws, subs in list(self._spot_sockets.items()):
            if symbol in subs["trade"]:
                await self._send(ws, json.dumps({"channel": "trade", "type": "update", "data": [{
                    "symbol": symbol, "side": trade.side, "price": trade.price, "qty": trade.qty,
                    "ord_type": "market", "trade_id": trade.trade_id,
                    "timestamp": rfc3339(trade.ts)}]}))
            if symbol in subs["ohlc"]:
                await self._send(ws, self._ohlc_message(symbol, candle, now))
            if subs["ticker"].get(symbol) == "trades":
                await self._send(ws, self._ticker_message(symbol, now))

    def _ticker_message(self, symbol: str, now: datetime) -> str:
        bid, ask = self.best_bbo(symbol)
        self.tickers_sent.append((symbol, bid, ask))
        trades = self.market.spot_trades.get(symbol) or self.market.fut_trades.get(symbol)
        last = trades[-1].price if trades else bid
        # Derivatives: funding, mark, index and open interest (field names inferred, see doc).
        extra = "" if symbol in INSTRUMENTS else (
            ',"mark_price":%s,"index_price":%s,"funding_rate":1e-05,'
            '"funding_rate_prediction":9e-06,"next_funding_time":"%s","open_interest":%s'
            % (bid + 0.1, bid, rfc3339(now.replace(minute=0, second=0, microsecond=0)
                                       + timedelta(hours=1)), FUT_OPEN_INTEREST))
        return ('{"channel":"ticker","type":"update","data":[{"symbol":"%s","bid":%s,'
                '"bid_qty":1.5,"ask":%s,"ask_qty":0.25,"last":%s,"volume":1234.5,'
                '"vwap":%s,"low":%s,"high":%s,"change":12.5,"change_pct":0.25,'
                '"timestamp":"%s"%s}]}' % (symbol, bid, ask, last, bid, bid - 100, ask + 100,
                                           rfc3339(now), extra))

    def _ohlc_message(self, symbol: str, candle: FakeCandle, now: datetime,
                      kind: str = "update") -> str:
        return json.dumps({"channel": "ohlc", "type": kind, "timestamp": rfc3339(now, True),
                           "data": [{"symbol": symbol, "open": candle.open, "high": candle.high,
                                     "low": candle.low, "close": candle.close,
                                     "trades": candle.trades, "volume": round(candle.volume, 8),
                                     "vwap": round(candle.vwap, 4),
                                     "interval_begin": rfc3339(candle.begin, True), "interval": 1,
                                     "timestamp": rfc3339(candle.begin + timedelta(minutes=1))}]})

    async def _fut_trade(self, product: str, now: datetime) -> None:
        trades = self.market.fut_trades.setdefault(product, [])
        n = len(trades) + 1
        trade = FutTrade(f"u-{n}", n, int(now.timestamp() * 1000),
                         FUT_PRODUCTS[product] + self.rng.randint(-10, 10) * 0.5,
                         round(self.rng.uniform(0.0001, 0.5), 4), self.rng.choice(["buy", "sell"]))
        trades.append(trade)
        for ws, feeds in list(self._perp_sockets.items()):
            if product in feeds["trade"]:
                await self._send(ws, json.dumps(self._fut_trade_doc(product, trade)))
        for ws, subs in list(self._unified_sockets.items()):
            if product in subs["trade"]:
                await self._send(ws, json.dumps({"channel": "trade", "type": "update", "data": [{
                    "symbol": product, "side": trade.side, "price": trade.price,
                    "qty": trade.qty, "ord_type": "market", "trade_id": trade.seq,
                    "timestamp": rfc3339(now)}]}))
            if subs["ticker"].get(product) == "trades":
                await self._send(ws, self._ticker_message(product, now))

    @staticmethod
    def _fut_trade_doc(product: str, trade: FutTrade) -> dict:
        return {"feed": "trade", "product_id": product, "uid": trade.uid, "side": trade.side,
                "type": "fill", "seq": trade.seq, "time": trade.time_ms, "qty": trade.qty,
                "price": trade.price}

    @staticmethod
    async def _send(ws, text: str) -> None:
        try:
            await ws.send(text)
        except ConnectionClosed:
            pass

    # ---- REST --------------------------------------------------------------------------------
    def _kraken_error(self, message: str) -> web.Response:
        return web.json_response({"error": [message]})

    def _rest_refusal(self, request: web.Request) -> web.Response | None:
        """Injected errors, then the public REST rate limit: both answer like Kraken (a body
        error with HTTP 200; or the HTTP status injected, with Retry-After)."""
        self.rest_requests.append((request.path, dict(request.query)))
        if self.rest_errors_next:
            error = self.rest_errors_next.pop(0)
            if isinstance(error, tuple):
                status, retry_after = error
                return web.json_response({"error": ["EGeneral:Too many requests"]},
                                         status=status, headers={"Retry-After": str(retry_after)})
            return self._kraken_error(error)
        if self.rest_limit is not None:
            burst, rate = self.rest_limit
            now = time.monotonic()
            self._rest_tokens = min(burst, self._rest_tokens + (now - self._rest_stamp) * rate)
            self._rest_stamp = now
            if self._rest_tokens < 1.0:
                self.rate_errors += 1
                return self._kraken_error("EAPI:Rate limit exceeded")
            self._rest_tokens -= 1.0
        return None

    async def _rest_trades(self, request: web.Request) -> web.Response:
        """Trades after ``since`` (seconds, or the nanosecond ``last`` cursor), oldest first, at
        most ``count`` (<= 1000); ``last`` = the nanosecond time of the last one returned."""
        query = dict(request.query)
        if (refusal := self._rest_refusal(request)) is not None:
            return refusal
        if query.get("pair") not in REST_PAIRS:
            return self._kraken_error("EQuery:Unknown asset pair")
        symbol, key = REST_PAIRS[query["pair"]]
        count = min(int(query.get("count", 1000)), 1000)
        since = int(query.get("since", 0))
        if since < 10 ** 12:
            rows = [t for t in self.market.spot_trades.get(symbol, []) if t.ns >= since * 10 ** 9]
        else:
            rows = [t for t in self.market.spot_trades.get(symbol, []) if t.ns > since]
        rows = rows[:count]
        last = str(rows[-1].ns if rows else since if since >= 10 ** 12 else since * 10 ** 9)
        return web.json_response({"error": [], "result": {key: [
            [f"{t.price:.{INSTRUMENTS[symbol][0]}f}", f"{t.qty:.8f}",
             round(t.ts.timestamp(), 6), t.side[0], "m", "", t.trade_id] for t in rows],
            "last": last}})

    async def _rest_ohlc(self, request: web.Request) -> web.Response:
        """Candles (compressed fake time) after ``since``; the last row is the running one; at
        most the ``ohlc_max_rows`` newest rows whatever ``since`` is."""
        query = dict(request.query)
        if (refusal := self._rest_refusal(request)) is not None:
            return refusal
        if query.get("pair") not in REST_PAIRS:
            return self._kraken_error("EQuery:Unknown asset pair")
        if query.get("interval") != "1":
            return self._kraken_error("EGeneral:Invalid arguments")
        symbol, key = REST_PAIRS[query["pair"]]
        since = int(query.get("since", 0))
        pp = INSTRUMENTS[symbol][0]
        rows = [[int(c.begin.timestamp()), f"{c.open:.{pp}f}", f"{c.high:.{pp}f}",
                 f"{c.low:.{pp}f}", f"{c.close:.{pp}f}", f"{c.vwap:.4f}", f"{c.volume:.8f}",
                 c.trades]
                for c in self.market.candles.get(symbol, []) if c.begin.timestamp() > since]
        rows = rows[-self.ohlc_max_rows:]
        return web.json_response({"error": [], "result": {
            key: rows, "last": rows[-2][0] if len(rows) > 1 else since}})

    def _derivatives_gone(self, request: web.Request) -> web.Response | None:
        if not self.derivatives_rest_gone:
            return None
        self.rest_requests.append((request.path, dict(request.query)))
        return web.Response(status=404, text="Not Found")

    async def _instruments(self, request: web.Request) -> web.Response:
        if (gone := self._derivatives_gone(request)) is not None:
            return gone
        if self.instruments_down:
            return web.Response(status=503, text="Service Unavailable")
        return web.json_response({"result": "success", "instruments": [
            {"symbol": s.lower() if s.startswith("PI_") else s, "type": "flexible_futures",
             "tradeable": True, "contractSize": 1, "tickSize": 0.5} for s in FUT_PRODUCTS]
            + [{"symbol": "PI_XBTUSD", "type": "futures_inverse", "tradeable": True}]})

    async def _rest_tickers(self, request: web.Request) -> web.Response:
        if (gone := self._derivatives_gone(request)) is not None:
            return gone
        self.rest_requests.append((request.path, dict(request.query)))
        now = datetime.now(timezone.utc)
        return web.json_response({"result": "success", "serverTime": iso_ms(now), "tickers": [{
            "symbol": product, "last": mid, "lastTime": iso_ms(now), "tag": "perpetual",
            "pair": "XBT:USD", "markPrice": mid + 0.2, "bid": mid - 0.5, "bidSize": 1.5,
            "ask": mid + 0.5, "askSize": 2.5, "vol24h": 1000.0, "volumeQuote": 5.0e7,
            "openInterest": FUT_OPEN_INTEREST, "open24h": mid - 100, "high24h": mid + 200,
            "low24h": mid - 300, "indexPrice": mid, "fundingRate": FUT_FUNDING_ABS,
            "fundingRatePrediction": 0.45, "suspended": False, "postOnly": False,
            "change24h": 1.2} for product, mid in FUT_PRODUCTS.items()]})

    async def _rest_history(self, request: web.Request) -> web.Response:
        """The ``history_page`` most recent trades before ``lastTime`` (newest first)."""
        if (gone := self._derivatives_gone(request)) is not None:
            return gone
        query = dict(request.query)
        self.rest_requests.append((request.path, query))
        product = query.get("symbol", "").upper()
        if product not in FUT_PRODUCTS:
            return web.json_response({"result": "error", "error": "Invalid symbol"}, status=400)
        trades = self.market.fut_trades.get(product, [])
        if "lastTime" in query:
            text = query["lastTime"].replace("Z", "+00:00")
            before = int(datetime.fromisoformat(text).timestamp() * 1000)
            trades = [t for t in trades if t.time_ms < before]
        page = list(reversed(trades))[:self.history_page]
        return web.json_response({"result": "success", "history": [{
            "time": iso_ms(datetime.fromtimestamp(t.time_ms / 1000, timezone.utc)),
            "trade_id": len(page) - i, "price": t.price, "size": t.qty, "side": t.side, "type": "fill",
            "uid": t.uid} for i, t in enumerate(page)],
            "serverTime": iso_ms(datetime.now(timezone.utc))})

    # ---- spot v2 -----------------------------------------------------------------------------
    async def _spot(self, ws) -> None:
        self.spot_connects += 1
        await self._v2_socket(ws, self._spot_sockets, INSTRUMENTS, None)

    async def _unified(self, ws) -> None:
        """The Unified WebSocket: spot v2's format; subscriptions must say ``asset_class:
        derivatives`` (documented); the rest follows spot v2 (inferred, see the doc)."""
        self.unified_connects += 1
        await self._v2_socket(ws, self._unified_sockets, UNIFIED_INSTRUMENTS, "derivatives")

    async def _v2_socket(self, ws, sockets: dict, universe: dict, asset_class: str | None
                         ) -> None:
        # channel -> subscribed symbols (ticker: symbol -> its event_trigger; ohlc: -> interval)
        subs: dict[str, dict] = {"ticker": {}, "trade": {}, "ohlc": {}}
        books: dict[str, SpotBook] = {}
        sockets[ws] = subs
        last_heard = {"at": time.monotonic()}
        pump = asyncio.get_running_loop().create_task(self._spot_pump(ws, subs, books))
        idle = asyncio.get_running_loop().create_task(self._idle_cut(ws, last_heard))
        recent: deque[float] = deque()
        try:
            async for raw in ws:
                msg = json.loads(raw)
                self.requests.append(msg)
                now = time.monotonic()
                last_heard["at"] = now
                recent.append(now)
                while recent and now - recent[0] > 1.0:
                    recent.popleft()
                if len(recent) > self.max_msgs_per_s:
                    self.rate_errors += 1
                    await ws.send('{"Error":"Exceeded msg rate"}')
                    continue
                method = msg.get("method")
                if method == "ping":
                    self.pings += 1
                    await ws.send(json.dumps({"method": "pong", "req_id": msg.get("req_id"),
                                              **ack_times()}))
                    continue
                if self.silent:
                    continue
                await self._spot_request(ws, msg, subs, books, universe, asset_class)
        except ConnectionClosed:
            pass
        finally:
            pump.cancel()
            idle.cancel()
            sockets.pop(ws, None)

    async def _idle_cut(self, ws, last_heard: dict) -> None:
        """Kraken closes a connection that sent nothing for about a minute."""
        try:
            while True:
                await asyncio.sleep(min(1.0, self.idle_cut_s / 4))
                if time.monotonic() - last_heard["at"] > self.idle_cut_s:
                    self.idle_cuts += 1
                    await ws.close(1000, "idle")
                    return
        except (ConnectionClosed, asyncio.CancelledError):
            return

    async def _spot_request(self, ws, msg: dict, subs: dict, books: dict, universe: dict,
                            asset_class: str | None) -> None:
        method, req_id = msg.get("method"), msg.get("req_id")
        params = msg["params"]
        channel = params["channel"]
        if params.get("asset_class") != asset_class:
            await self._spot_error(ws, {"error": f"Invalid asset_class {params.get('asset_class')}",
                                        "method": method, "success": False, "req_id": req_id})
            return
        if method == "subscribe" and channel == "instrument":
            await ws.send(json.dumps({"method": "subscribe", "req_id": req_id, "result": {
                "channel": "instrument", "snapshot": True}, "success": True, **ack_times()}))
            pairs = [{"symbol": s, "base": s.split("/")[0], "quote": s.split("/")[1],
                      "status": "online", "price_precision": pp, "qty_precision": qp,
                      "price_increment": 10 ** -pp, "qty_increment": 10 ** -qp}
                     for s, (pp, qp, _) in INSTRUMENTS.items()]
            await ws.send(json.dumps({"channel": "instrument", "type": "snapshot",
                                      "data": {"assets": [], "pairs": pairs}}))
            return
        for symbol in params.get("symbol", []):
            if symbol not in universe:
                await self._spot_error(ws, {"error": f"Currency pair not supported {symbol}",
                                            "method": method, "success": False,
                                            "symbol": symbol, "req_id": req_id})
                continue
            subscribed = symbol in books if channel == "book" else symbol in subs[channel]
            if method == "unsubscribe" and not subscribed:
                # Kraken answers a failed unsubscribe with method "subscribe" (SDK recording).
                self.unsubscribe_failures[symbol] += 1
                await self._spot_error(ws, {"error": "Subscription Not Found",
                                            "method": "subscribe", "req_id": req_id,
                                            "success": False, "symbol": symbol})
                continue
            result = {"channel": channel, "symbol": symbol}
            if method == "subscribe":
                result["snapshot"] = params.get("snapshot", channel != "trade")
            if channel == "book":
                result["depth"] = params.get("depth", 10)
            elif channel == "ticker":
                result["event_trigger"] = subs["ticker"].get(symbol) or \
                    params.get("event_trigger", "trades")
            await ws.send(json.dumps({"method": method, "req_id": req_id, "result": result,
                                      "success": True, **ack_times()}))
            if channel == "book":
                if method == "subscribe":
                    self.book_subscribes[symbol] += 1
                    books[symbol] = SpotBook(symbol, self.rng, pad=asset_class is not None)
                    await ws.send(books[symbol].snapshot(params.get("depth", 10)))
                else:
                    self.book_unsubscribes[symbol] += 1
                    books.pop(symbol, None)
            elif method == "subscribe":
                subs[channel][symbol] = params.get("event_trigger", "trades") \
                    if channel == "ticker" else params.get("interval", True)
                candles = self.market.candles.get(symbol)
                if channel == "ohlc" and candles:   # snapshot: the running candle
                    await ws.send(self._ohlc_message(
                        symbol, candles[-1], datetime.now(timezone.utc), "snapshot"))
            else:
                subs[channel].pop(symbol, None)

    async def _spot_error(self, ws, body: dict) -> None:
        body.update(ack_times())
        self.errors_sent.append(body)
        await ws.send(json.dumps(body))

    async def _spot_pump(self, ws, subs, books) -> None:
        """Per connection: book updates and bbo tickers (trades, candles and trade-triggered
        tickers come from the market)."""
        bbo_sent: dict[str, tuple[float, float]] = {}
        try:
            while True:
                await asyncio.sleep(self.tick_s)
                if self.silent:
                    continue
                if self.quiet:
                    await ws.send('{"channel":"heartbeat"}')
                    continue
                now = datetime.now(timezone.utc)
                for symbol, book in list(books.items()):
                    lost, corrupt = symbol in self.lose_next, symbol in self.corrupt_next
                    self.lose_next.discard(symbol)
                    self.corrupt_next.discard(symbol)
                    message = book.update(corrupt, lost)
                    if not lost:
                        await ws.send(message)
                    if corrupt and symbol in self.forget_book_after_corrupt:
                        self.forget_book_after_corrupt.discard(symbol)
                        books.pop(symbol, None)
                for symbol, trigger in list(subs["ticker"].items()):
                    if trigger == "bbo" and bbo_sent.get(symbol) != self.best_bbo(symbol):
                        bbo_sent[symbol] = self.best_bbo(symbol)
                        await ws.send(self._ticker_message(symbol, now))
                if not books and not any(subs.values()):
                    await ws.send('{"channel":"heartbeat"}')
        except (ConnectionClosed, asyncio.CancelledError):
            return

    # ---- futures -----------------------------------------------------------------------------
    async def _perp(self, ws) -> None:
        self.perp_connects += 1
        feeds: dict[str, set[str]] = {"ticker": set(), "trade": set(), "book": set()}
        self._perp_sockets[ws] = feeds
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
                if bad:     # the real error names no product
                    self.errors_sent.append({"event": "error", "message": "Invalid product id"})
                    await ws.send('{"event":"error","message":"Invalid product id"}')
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
                        seqs[product] = self.rng.randint(1000, 100000)
                        mid = FUT_PRODUCTS[product]
                        await ws.send(json.dumps({
                            "feed": "book_snapshot", "product_id": product,
                            "timestamp": 1612269825817, "seq": seqs[product], "tickSize": None,
                            "bids": [{"price": mid - i - 0.5, "qty": 1.5 + i} for i in range(20)]
                            + [{"price": mid - 100, "qty": 0}],
                            "asks": [{"price": mid + i + 0.5, "qty": 2.5 + i}
                                     for i in range(20)]}))
                    elif feed == "trade":
                        recent = self.market.fut_trades.get(product, [])[-5:]
                        await ws.send(json.dumps({
                            "feed": "trade_snapshot", "product_id": product,
                            "trades": [self._fut_trade_doc(product, t)
                                       for t in reversed(recent)]}))
        except ConnectionClosed:
            pass
        finally:
            pump.cancel()
            self._perp_sockets.pop(ws, None)

    async def _perp_pump(self, ws, feeds, seqs, heartbeat) -> None:
        n = 0
        last_book: dict[str, str] = {}
        try:
            while True:
                await asyncio.sleep(self.tick_s)
                if self.silent:
                    continue
                n += 1
                now_ms = int(datetime.now(timezone.utc).timestamp() * 1000)
                if heartbeat["on"] and (self.quiet or n % 10 == 0):
                    await ws.send(json.dumps({"feed": "heartbeat", "time": now_ms}))
                if self.quiet:
                    continue
                for product in list(feeds["book"]):
                    if self.fut_dup_next and last_book.get(product):
                        self.fut_dup_next = False       # a repeated message: same seq
                        await ws.send(last_book[product])
                    seqs[product] += 2 if self.fut_gap_next else 1
                    self.fut_gap_next = False
                    mid = FUT_PRODUCTS[product]
                    side = self.rng.choice(["buy", "sell"])
                    price = mid - 0.5 - n % 5 if side == "buy" else mid + 0.5 + n % 5
                    # both sides, level changes and deletions (qty 0) of snapshot levels
                    qty = 0.0 if self.rng.random() < 0.2 else round(self.rng.uniform(0.01, 5), 4)
                    last_book[product] = json.dumps({
                        "feed": "book", "product_id": product, "side": side,
                        "seq": seqs[product], "price": price, "qty": qty, "timestamp": now_ms})
                    await ws.send(last_book[product])
                for product in list(feeds["ticker"]):
                    mid = FUT_PRODUCTS[product]
                    await ws.send(json.dumps({
                        "time": now_ms, "product_id": product, "funding_rate": FUT_FUNDING_ABS,
                        "funding_rate_prediction": 0.4, "relative_funding_rate": 1.0e-05,
                        "relative_funding_rate_prediction": 0.9e-05,
                        "next_funding_rate_time": (now_ms // 3600000 + 1) * 3600000,
                        "feed": "ticker", "bid": mid - 0.5, "ask": mid + 0.5, "bid_size": 1.5,
                        "ask_size": 2.5, "volume": 1000.0, "dtm": 0, "leverage": "50x",
                        "index": mid, "premium": 0.0, "last": mid, "change": 1.2,
                        "suspended": False, "tag": "perpetual", "pair": "XBT:USD",
                        "openInterest": FUT_OPEN_INTEREST, "markPrice": mid + 0.1,
                        "maturityTime": 0, "post_only": False, "volumeQuote": 5.0e7,
                        "open": mid - 100, "high": mid + 200, "low": mid - 300}))
        except (ConnectionClosed, asyncio.CancelledError):
            return
