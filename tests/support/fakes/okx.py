"""Fake OKX v5, as strict as the real server per docs/exchanges/okx.md: /ws/v5/public and
/ws/v5/business WebSockets plus the REST endpoints the feed uses (instruments, funding-rate,
open-interest, market/trades, market/candles, market/books).

- Instruments: only ``instruments`` exist (ctVal, ctType per SWAP). Anything else is answered
  with the real errors: WS ``60018`` "Wrong URL or channel:<c>,instId:<i> doesn't exist..." (no
  ack), REST ``51001`` with HTTP 200. A channel on the wrong URL: ``64001`` (candles on /public)
  or ``60018``; an unknown ``op``: ``60019``; the request ``id`` is echoed.
- Heartbeat: no server pings; text ``ping`` -> ``pong``; a connection that was sent nothing for
  ``idle_cut_s`` (30 s) is closed with 4004. At most ``connects_per_s`` (3) connection attempts
  a second (more are closed with 1013) and ``subscribe_limit`` (480) subscribe/unsubscribe
  requests per connection (more: ``60014``).
- REST limits per endpoint and window as documented (books 40 / 2 s, trades 100 / 2 s,
  funding-rate 10 / 2 s per instId, ...): over them ``{"code":"50011",...}`` with HTTP 200 (or
  HTTP 429 + Retry-After when ``rate_limit_status`` is 429); ``51000`` parameter errors are HTTP
  400. ``rate_limit_next`` answers the next N REST requests with 50011.
- Trades: the market makes taker orders of 1-3 fills (seeded); ``trades`` (/public) pushes one
  aggregate per order with ``count`` and ``tradeId`` = the LAST fill, ``trades-all``
  (/business) one push per fill, REST ``/market/trades`` lists fills newest first.
- Books: one book per instrument (same seqIds on every connection). ``ws_snapshot`` False:
  no WS snapshot (the announced change), the book comes from REST ``/market/books`` (``sz``
  default 1, max 400, with ``seqId``). ``checksums`` False (default): checksum ``0``, as since
  2026-06-23. ``varied``: updates change both sides, delete levels, move the top of the book,
  and every ``heartbeat_every`` ticks send the no-change message (``seqId == prevSeqId``).
"""
from __future__ import annotations

import asyncio
import copy
import random
import time
import zlib
from collections import deque
from decimal import Decimal
from typing import Any

import orjson
from aiohttp import web
from websockets.exceptions import ConnectionClosed

from tests.support.fakes.base import FakeExchange, fixture
from tests.support.fakes.tape import TradeTape, TradingFake

CONN_ID = "a4d3ae55"
# endpoint -> (requests, window seconds, keyed by instId too)
REST_LIMITS = {"/api/v5/market/books": (40, 2.0, False), "/api/v5/market/trades": (100, 2.0, False),
               "/api/v5/market/history-trades": (20, 2.0, False),
               "/api/v5/market/candles": (40, 2.0, False),
               "/api/v5/market/history-candles": (20, 2.0, False),
               "/api/v5/public/funding-rate": (10, 2.0, True),
               "/api/v5/public/open-interest": (20, 2.0, True),
               "/api/v5/public/instruments": (20, 2.0, False)}
PUBLIC_CHANNELS = {"tickers", "trades", "books", "funding-rate", "open-interest"}
BUSINESS_CHANNELS = {"trades-all"}        # and candle<bar>


def now_ms() -> int:
    return int(time.time() * 1000)


def okx_checksum(bids: dict[str, str], asks: dict[str, str]) -> int:
    b = sorted(bids.items(), key=lambda kv: -Decimal(kv[0]))[:25]
    a = sorted(asks.items(), key=lambda kv: Decimal(kv[0]))[:25]
    parts: list[str] = []
    for i in range(max(len(a), len(b))):
        if i < len(b):
            parts += b[i]
        if i < len(a):
            parts += a[i]
    crc = zlib.crc32(":".join(parts).encode())
    return crc - 2 ** 32 if crc >= 2 ** 31 else crc


def rest_candle(start_ms: int, confirm: str) -> list[str]:
    """The fake's 1m candle opening at ``start_ms`` (REST/WS row layout, spot units)."""
    k = start_ms // 60_000 % 50
    o = 8600.0 + k
    return [str(start_ms), f"{o}", f"{o + 4}", f"{o - 4}", f"{o + 2}", "3.5",
            f"{(o + 2) * 3.5}", f"{(o + 2) * 3.5}", confirm]


def fill_size(inst: str) -> str:
    return "5" if inst.endswith("-SWAP") else "0.0002"


class FakeOkx(TradingFake, FakeExchange):
    def __init__(self, seed: int = 11) -> None:
        super().__init__()
        self.rng = random.Random(seed)
        self.tape = TradeTape(first_id=734_864_000)      # keys: instId; one entry per fill
        self.push_every_s: dict[str, float] = {}
        self.muted: set[str] = set()
        self.instruments_fail = False
        # instId -> (ctVal, ctType) for SWAP; spot instruments have none
        self.instruments: dict[str, tuple[str, str] | None] = {
            "BTC-USDT": None, "BTC-USDC": None, "ETH-USDT": None,
            "BTC-USDT-SWAP": ("0.01", "linear"), "ETH-USDT-SWAP": ("0.1", "linear"),
            "BTC-USD-SWAP": ("100", "inverse")}
        # channels answered with the real "doesn't exist" error instead of data
        self.ws_rejects: set[str] = set()
        self.ws_snapshot = True
        self.checksums = False
        self.varied = False
        self.heartbeat_every = 10
        self.max_fills = 3
        self.idle_cut_s = 30.0
        self.connects_per_s = 3
        self.subscribe_limit = 480
        self.rate_limit_status = 200
        self.rate_limit_next = 0
        self.refused_connects = 0
        self.answer_pings = True
        self.books: dict[str, dict[str, Any]] = {}          # instId -> {"bids","asks","seq"}
        self._ticks = 0
        self._connect_times: deque[float] = deque()
        self._rest_calls: dict[tuple[str, str], deque[float]] = {}
        self.samples = {
            "books": fixture("okx/books_doc.jsonl")[0],
            "tickers": fixture("okx/tickers.jsonl")[2],
            "trades": fixture("okx/trades.jsonl")[2],
            "candle": fixture("okx/candle.jsonl")[0],
            "funding": fixture("okx/funding-rate.jsonl")[0],
            "oi": fixture("okx/open-interest.constructed.jsonl")[0],
            "error": fixture("okx/error.jsonl")[0],
            "instruments": fixture("okx/instruments_swap.constructed.jsonl")[0],
        }

    # ---- REST --------------------------------------------------------------------------------
    def routes(self, app: web.Application) -> None:
        app.router.add_get("/api/v5/public/instruments", self._instruments)
        app.router.add_get("/api/v5/public/funding-rate", self._funding)
        app.router.add_get("/api/v5/public/open-interest", self._open_interest)
        app.router.add_get("/api/v5/market/trades", self._trades)
        app.router.add_get("/api/v5/market/candles", self._candles)
        app.router.add_get("/api/v5/market/history-candles", self._candles)
        app.router.add_get("/api/v5/market/history-trades", self._history_trades)
        app.router.add_get("/api/v5/market/books", self._rest_books)

    @staticmethod
    def _json(body: Any, status: int = 200) -> web.Response:
        return web.Response(body=orjson.dumps(body), status=status,
                            content_type="application/json")

    def _param_error(self, name: str) -> web.Response:
        return self._json({"code": "51000", "msg": f"Parameter {name} error", "data": []}, 400)

    def _check(self, request: web.Request) -> web.Response | None:
        """Record the request; the rate-limit and unknown-instrument answers, if due."""
        self.rest_requests.append(str(request.rel_url))
        path = request.path
        limit, window, per_inst = REST_LIMITS.get(path, (20, 2.0, False))
        calls = self._rest_calls.setdefault(
            (path, request.query.get("instId", "") if per_inst else ""), deque())
        now = time.monotonic()
        while calls and now - calls[0] > window:
            calls.popleft()
        calls.append(now)
        if self.rate_limit_next > 0 or len(calls) > limit:
            self.rate_limit_next = max(0, self.rate_limit_next - 1)
            if self.rate_limit_status == 429:
                return web.Response(status=429, headers={"Retry-After": "1"},
                                    body=b'{"msg":"Too Many Requests","code":"50011"}',
                                    content_type="application/json")
            return self._json({"code": "50011", "msg": "Rate limit reached. Please refer to API "
                               "documentation and throttle requests accordingly.", "data": []})
        inst = request.query.get("instId")
        if inst is not None and inst not in self.instruments:
            return self._json({"code": "51001", "msg": "Instrument ID, Instrument ID code or "
                               "Spread ID doesn't exist.", "data": []})
        return None

    async def _trades(self, request: web.Request) -> web.Response:
        if (answer := self._check(request)) is not None:
            return answer
        inst = request.query["instId"]
        limit = int(request.query.get("limit", 100))
        if not 1 <= limit <= 500:
            return self._param_error("limit")
        return self._json({"code": "0", "msg": "", "data": [
            self.fill_item(inst, t) for t in self.tape.recent(inst, limit)]})

    async def _history_trades(self, request: web.Request) -> web.Response:
        """Fills older than ``after`` (a tradeId, ``type`` 1), newest first, ``limit`` <= 100."""
        if (answer := self._check(request)) is not None:
            return answer
        limit = int(request.query.get("limit", 100))
        if not 1 <= limit <= 100 or request.query.get("type", "1") != "1":
            return self._param_error("limit" if request.query.get("type", "1") == "1" else "type")
        after = int(request.query.get("after", 2 ** 62))
        fills = [t for t in self.tape.recent(request.query["instId"], self.tape.keep)
                 if t["id"] < after][:limit]
        return self._json({"code": "0", "msg": "", "data": [
            self.fill_item(request.query["instId"], t) for t in fills]})

    async def _candles(self, request: web.Request) -> web.Response:
        """``candles``: the latest 1,440 rows only; ``history-candles``: older ones too. Both
        newest first, ``after`` = older than that open time."""
        if (answer := self._check(request)) is not None:
            return answer
        if request.query.get("bar") != "1m":
            return self._param_error("bar")
        limit = int(request.query.get("limit", 100))
        if not 1 <= limit <= 300:
            return self._param_error("limit")
        current = now_ms() // 60_000 * 60_000
        newest = int(request.query["after"]) - 60_000 if "after" in request.query else current
        oldest = current - 1439 * 60_000 if request.path.endswith("/candles") else 0
        rows = [rest_candle(t, "0" if t == current else "1")
                for t in range(newest, newest - limit * 60_000, -60_000) if t >= oldest]
        return self._json({"code": "0", "msg": "", "data": rows})

    async def _rest_books(self, request: web.Request) -> web.Response:
        if (answer := self._check(request)) is not None:
            return answer
        size = int(request.query.get("sz", 1))            # the documented default is 1 level
        if not 1 <= size <= 400:
            return self._param_error("sz")
        book = self.book_of(request.query["instId"])
        bids = sorted(book["bids"].items(), key=lambda kv: -Decimal(kv[0]))[:size]
        asks = sorted(book["asks"].items(), key=lambda kv: Decimal(kv[0]))[:size]
        return self._json({"code": "0", "msg": "", "data": [{
            "asks": [[p, s, "0", "1"] for p, s in asks], "bids": [[p, s, "0", "1"] for p, s in bids],
            "ts": str(now_ms()), "seqId": book["seq"]}]})

    def _rest_item(self, request: web.Request, sample: str) -> web.Response:
        item = copy.deepcopy(self.samples[sample]["data"][0])
        item.update(instId=request.query["instId"], ts=str(now_ms()))
        return self._json({"code": "0", "msg": "", "data": [item]})

    async def _funding(self, request: web.Request) -> web.Response:
        return self._check(request) or self._rest_item(request, "funding")

    async def _open_interest(self, request: web.Request) -> web.Response:
        return self._check(request) or self._rest_item(request, "oi")

    async def _instruments(self, request: web.Request) -> web.Response:
        if self.instruments_fail:
            self.rest_requests.append(str(request.rel_url))
            return web.Response(status=500, text="boom")
        if (answer := self._check(request)) is not None:
            return answer
        inst = request.query["instId"]
        item = dict(self.samples["instruments"]["data"][0])
        ct_val, ct_type = self.instruments[inst] or ("", "")
        base, quote = inst.split("-")[:2]
        item.update(instId=inst, uly=f"{base}-{quote}", instFamily=f"{base}-{quote}",
                    settleCcy=base if ct_type == "inverse" else quote,
                    ctValCcy=quote if ct_type == "inverse" else base, ctVal=ct_val,
                    ctType=ct_type)
        return self._json({"code": "0", "msg": "", "data": [item]})

    # ---- WebSocket ---------------------------------------------------------------------------
    def new_state(self, path: str) -> dict[str, Any]:
        return {"subs": set(), "books": self.books, "sent_at": {}, "requests": 0,
                "snapshot_sent": set()}

    async def _handler(self, ws) -> None:
        now = time.monotonic()
        while self._connect_times and now - self._connect_times[0] > 1.0:
            self._connect_times.popleft()
        self._connect_times.append(now)
        if len(self._connect_times) > self.connects_per_s:
            self.refused_connects += 1
            await ws.close(1013, "too many connection attempts")
            return
        ws.last_sent = now
        cut = asyncio.get_running_loop().create_task(self._idle_cut(ws))
        try:
            await super()._handler(ws)
        finally:
            cut.cancel()

    async def _idle_cut(self, ws) -> None:
        """OKX closes a connection that had nothing pushed for 30 s (close code 4004)."""
        while True:
            await asyncio.sleep(min(1.0, self.idle_cut_s / 4))
            if time.monotonic() - ws.last_sent > self.idle_cut_s:
                await ws.close(4004, f"No data received in {self.idle_cut_s:g}s")
                return

    async def send(self, ws, obj: Any) -> None:
        ws.last_sent = time.monotonic()
        await super().send(ws, obj)

    def _error(self, code: str, msg: str, request: dict[str, Any]) -> dict[str, Any]:
        error = {"event": "error", "code": code, "msg": msg, "connId": CONN_ID}
        if "id" in request:
            error["id"] = request["id"]
        return error

    async def on_text(self, ws, path, state, text) -> None:
        if text == "ping":
            if self.answer_pings:
                await self.send(ws, "pong")
            return
        try:
            msg = orjson.loads(text)
            op = msg.get("op")
        except (orjson.JSONDecodeError, AttributeError):
            await self.send(ws, self._error("60012", f"Invalid request: {text}", {}))
            return
        if op not in ("subscribe", "unsubscribe"):
            await self.send(ws, self._error("60019", f"Invalid op: {op}", msg))
            return
        state["requests"] += 1
        if state["requests"] > self.subscribe_limit:
            await self.send(ws, self._error("60014", "Requests too frequent.", msg))
            return
        business = path.endswith("/business")
        for arg in msg["args"]:
            channel, inst = arg["channel"], arg["instId"]
            key = (channel, inst)
            echo = {"id": msg["id"]} if "id" in msg else {}
            if op == "unsubscribe":
                state["subs"].discard(key)
                state["snapshot_sent"].discard(inst) if channel == "books" else None
                await self.send(ws, {**echo, "event": "unsubscribe", "arg": arg,
                                     "connId": CONN_ID})
                continue
            if channel.startswith("candle") and not business:
                await self.send(ws, self._error("64001", "This channel has been migrated to the "
                                                "'/business' URL. Please subscribe using the new "
                                                "URL.", msg))
                continue
            on_this_url = (channel in BUSINESS_CHANNELS or channel.startswith("candle")) \
                if business else channel in PUBLIC_CHANNELS
            if channel in self.ws_rejects or inst not in self.instruments or not on_this_url:
                await self.send(ws, self._error(
                    "60018", f"Wrong URL or channel:{channel},instId:{inst} doesn't exist. Please "
                    f"use the correct URL, channel and parameters referring to API document.",
                    msg))
                continue
            await self.send(ws, {**echo, "event": "subscribe", "arg": arg, "connId": CONN_ID})
            state["subs"].add(key)
            if channel in ("trades", "trades-all"):
                self.tape.activate(inst)      # trades come from the tape
            elif channel == "books":
                self.book_of(inst)
                if self.ws_snapshot and not self.silent and channel not in self.muted:
                    await self.send(ws, self.book_snapshot(state, inst))
                    state["snapshot_sent"].add(inst)
            elif not self.silent and channel not in self.muted:
                await self.send(ws, self.message(channel, inst))
                state["sent_at"][key] = time.monotonic()

    async def stream_once(self, ws, path, state) -> None:
        now = time.monotonic()
        for key in sorted(state["subs"]):
            channel = key[0]
            if channel in ("trades", "trades-all", "books") or channel in self.muted or \
                    now - state["sent_at"].get(key, 0.0) < self.push_every_s.get(channel, 0.0):
                continue
            state["sent_at"][key] = now
            await self.send(ws, self.message(*key))

    async def _market(self) -> None:
        """Trades (taker orders of 1-3 fills) and book updates, the same for every subscriber."""
        while True:
            await asyncio.sleep(self.trade_interval_s)
            if self.silent:
                continue
            self._ticks += 1
            for inst in list(self.books):
                if "books" not in self.muted:
                    await self._book_tick(inst)
            for inst in self.tape.active():
                await self._trade_tick(inst)

    async def _trade_tick(self, inst: str) -> None:
        # While a test makes trades go missing, orders are single fills (exactly N lost).
        size = 1 if self.tape._lose.get(inst) else self.rng.randint(1, self.max_fills)
        fills = [self.tape.new(inst) for _ in range(size)]
        lost = [self.tape.take_loss(inst) for _ in fills]
        if any(lost) or not self.trade_subscribers(inst):
            return                      # happened (REST lists it), never pushed
        for fill in fills:
            fill["pushed"] = True
        for ws in list(self.connections):
            subs = ws.state_dict["subs"]
            if ("trades-all", inst) in subs:
                for fill in fills:
                    await self.send(ws, {"arg": {"channel": "trades-all", "instId": inst},
                                         "data": [self.fill_item(inst, fill)]})
            if ("trades", inst) in subs:
                await self.send(ws, self.aggregate_message(inst, fills))

    async def _book_tick(self, inst: str) -> None:
        subscribers = [ws for ws in self.connections if ("books", inst) in ws.state_dict["subs"]]
        if not subscribers:
            return
        update = self.book_update(None, inst)
        for ws in subscribers:
            state = ws.state_dict
            if inst not in state["snapshot_sent"] and self.ws_snapshot:
                await self.send(ws, self.book_snapshot(state, inst))  # subscribed while silent
                state["snapshot_sent"].add(inst)
            else:
                await self.send(ws, update)

    # ---- trades ------------------------------------------------------------------------------
    def trade_subscribers(self, inst) -> list:
        return [ws for ws in self.connections
                if {("trades", inst), ("trades-all", inst)} & ws.state_dict["subs"]]

    def fill_item(self, inst: str, fill: dict[str, Any]) -> dict[str, Any]:
        """One fill (``trades-all`` push, REST ``/market/trades`` row): no ``count``."""
        item = dict(self.samples["trades"]["data"][0])
        item.update(instId=inst, tradeId=str(fill["id"]), ts=str(fill["ts"]), sz=fill_size(inst),
                    source="0")
        return item

    def aggregate_message(self, inst: str, fills: list[dict[str, Any]]) -> dict[str, Any]:
        """``trades``: one push per taker order; ``tradeId`` is the LAST fill, ``count`` fills,
        ``sz`` their sum."""
        item = self.fill_item(inst, fills[-1])
        item.update(count=str(len(fills)),
                    sz=str(sum(Decimal(fill_size(inst)) for _ in fills)), seqId=fills[-1]["id"])
        return {"arg": {"channel": "trades", "instId": inst}, "data": [item]}

    def trade_message(self, inst: str, trade: dict[str, Any]) -> dict[str, Any]:
        return {"arg": {"channel": "trades-all", "instId": inst},
                "data": [self.fill_item(inst, trade)]}

    # ---- builders ----------------------------------------------------------------------------
    def message(self, channel: str, inst: str) -> dict[str, Any]:
        swap = inst.endswith("-SWAP")
        arg = {"channel": channel, "instId": inst}
        if channel == "tickers":
            msg = copy.deepcopy(self.samples["tickers"])
            msg["data"][0].update(instId=inst, ts=str(now_ms()))
            if swap:
                msg["data"][0].update(instType="SWAP", askSz="155", bidSz="23",
                                      vol24h="1760213", volCcy24h="17602.13")
        elif channel.startswith("candle"):
            msg = copy.deepcopy(self.samples["candle"])
            msg["data"][0][0] = str(now_ms() // 60000 * 60000)
            msg["data"][0][8] = "0"
        elif channel == "funding-rate":
            msg = copy.deepcopy(self.samples["funding"])
            msg["data"][0].update(instId=inst, ts=str(now_ms()))
        elif channel == "open-interest":
            msg = copy.deepcopy(self.samples["oi"])
            msg["data"][0].update(instId=inst, ts=str(now_ms()))
        else:
            raise ValueError(channel)
        msg["arg"] = arg
        return msg

    def book_of(self, inst: str) -> dict[str, Any]:
        book = self.books.get(inst)
        if book is None:
            data = self.samples["books"]["data"][0]
            book = self.books[inst] = {"bids": {lvl[0]: lvl[1] for lvl in data["bids"]},
                                       "asks": {lvl[0]: lvl[1] for lvl in data["asks"]},
                                       "seq": 1000}
        return book

    def _checksum(self, book: dict[str, Any]) -> int:
        return okx_checksum(book["bids"], book["asks"]) if self.checksums else 0

    def book_snapshot(self, state, inst: str) -> dict[str, Any]:
        msg = copy.deepcopy(self.samples["books"])
        book = self.book_of(inst)
        msg["arg"]["instId"] = inst
        msg["data"][0].update(
            bids=[[p, s, "0", "1"] for p, s in sorted(book["bids"].items(),
                                                      key=lambda kv: -Decimal(kv[0]))],
            asks=[[p, s, "0", "1"] for p, s in sorted(book["asks"].items(),
                                                      key=lambda kv: Decimal(kv[0]))],
            ts=str(now_ms()), prevSeqId=-1, seqId=book["seq"], checksum=self._checksum(book))
        return msg

    def _varied_levels(self, book: dict[str, Any]) -> tuple[list[list[str]], list[list[str]]]:
        """Both sides change; a level is deleted ("0"); sometimes a new best level appears
        inside the spread (the top moves) or the best level goes away."""
        rng = self.rng
        out: dict[str, list[list[str]]] = {"bids": [], "asks": []}
        for side in ("bids", "asks"):
            levels = book[side]
            prices = sorted(levels, key=Decimal, reverse=side == "bids")
            if prices and rng.random() < 0.5:
                out[side].append([rng.choice(prices), str(rng.randint(1, 400)), "0", "1"])
            if len(prices) > 3 and rng.random() < 0.4:
                out[side].append([rng.choice(prices[:4]), "0", "0", "0"])      # deletion
            bid = max(map(Decimal, book["bids"]), default=Decimal("8470"))
            ask = min(map(Decimal, book["asks"]), default=Decimal("8480"))
            if ask - bid > Decimal("0.02") and rng.random() < 0.3:
                step = Decimal("0.01") * rng.randint(1, int((ask - bid) / Decimal("0.01")) - 1)
                price = bid + step if side == "bids" else ask - step
                out[side].append([str(price), str(rng.randint(1, 50)), "0", "1"])  # new top
        return out["bids"], out["asks"]

    def book_update(self, state, inst: str, *, prev: int | None = None, seq: int | None = None,
                    bids: list[list[str]] | None = None, asks: list[list[str]] | None = None,
                    checksum: int | None = None) -> dict[str, Any]:
        book = self.book_of(inst)
        last = book["seq"]
        prev = last if prev is None else prev
        if bids is None and asks is None:
            if self.varied and self.heartbeat_every and self._ticks % self.heartbeat_every == 0:
                bids, asks, seq = [], [], last          # the no-change message
            elif self.varied:
                bids, asks = self._varied_levels(book)
            else:
                n = self._ticks + self.rng.randint(0, 8)
                bids = [["8476.97", str(250 + n % 9), "0", "12"]]
                asks = [["8477", str(5 + n % 4), "0", "2"]]
        seq = last + 1 if seq is None else seq
        bids, asks = bids or [], asks or []
        for side, levels in ((book["bids"], bids), (book["asks"], asks)):
            for level in levels:
                if float(level[1]) == 0:
                    side.pop(level[0], None)
                else:
                    side[level[0]] = level[1]
        book["seq"] = seq
        return {"arg": {"channel": "books", "instId": inst}, "action": "update",
                "data": [{"asks": asks, "bids": bids, "ts": str(now_ms()),
                          "checksum": self._checksum(book) if checksum is None else checksum,
                          "prevSeqId": prev, "seqId": seq}]}

    def public_ws(self, inst: str = "BTC-USDT"):
        """The /public connection carrying ``inst``'s book."""
        return next(ws for ws in self.live("/public") if ("books", inst) in ws.state_dict["subs"])

    async def push(self, path_suffix: str, msg: Any) -> None:
        for ws in self.live(path_suffix):
            await self.send(ws, msg)

    async def close_all(self) -> None:
        for ws in list(self.connections):
            try:
                await ws.close(1001, "going away")
            except ConnectionClosed:
                pass
