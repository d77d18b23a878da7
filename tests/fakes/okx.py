"""Fake OKX v5: /ws/v5/public and /ws/v5/business WebSockets plus the REST endpoints the feed uses
(instruments, funding-rate, open-interest, market/trades, market/candles).

Messages are the documented samples (tests/fixtures/okx) with instId, ids, sequence numbers and
timestamps filled in. The fake keeps its own copy of each book (raw strings) so every books push
carries a correct CRC32 checksum (signed 32-bit) unless a test asks for a wrong one. ``candle*``
on /public answers the real 64001 error. Text ``ping`` is answered with text ``pong``.

Trades happen on the fake's own tape (tests/fakes/tape.py) with consecutive ids per instrument,
whether or not a client is connected; ``/api/v5/market/trades`` serves them newest first
(``limit`` <= 500, else the parameter error). ``/api/v5/market/candles`` serves deterministic 1m
candles (``rest_candle``) newest first, the current minute with ``confirm`` "0". Per channel,
``push_every_s`` slows a channel's pushes down and ``muted`` subscribes it without ever pushing.
"""
from __future__ import annotations

import copy
import itertools
import time
import zlib
from decimal import Decimal
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.base import FakeExchange, fixture
from tests.fakes.tape import TradeTape, TradingFake

_ids = itertools.count(1)


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


class FakeOkx(TradingFake, FakeExchange):
    def __init__(self) -> None:
        super().__init__()
        self.tape = TradeTape(first_id=734_864_000)      # keys: instId
        self.push_every_s: dict[str, float] = {}
        self.muted: set[str] = set()
        self.instruments_fail = False
        # channels answered with the real "doesn't exist" error instead of data
        self.ws_rejects: set[str] = set()
        self.samples = {
            "books": fixture("okx/books_doc.jsonl")[0],
            "tickers": fixture("okx/tickers.jsonl")[2],
            "trades": fixture("okx/trades.jsonl")[2],
            "candle": fixture("okx/candle.jsonl")[0],
            "funding": fixture("okx/funding-rate.jsonl")[0],
            "oi": fixture("okx/open-interest.constructed.jsonl")[0],
            "error": fixture("okx/error.jsonl")[0],
            "ack": fixture("okx/subscribe_ack.jsonl")[3],
            "instruments": fixture("okx/instruments_swap.constructed.jsonl")[0],
        }

    # ---- REST --------------------------------------------------------------------------------
    def routes(self, app: web.Application) -> None:
        app.router.add_get("/api/v5/public/instruments", self._instruments)
        app.router.add_get("/api/v5/public/funding-rate", self._funding)
        app.router.add_get("/api/v5/public/open-interest", self._open_interest)
        app.router.add_get("/api/v5/market/trades", self._trades)
        app.router.add_get("/api/v5/market/candles", self._candles)

    @staticmethod
    def _json(body: Any) -> web.Response:
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def _trades(self, request: web.Request) -> web.Response:
        self.rest_requests.append(str(request.rel_url))
        inst = request.query["instId"]
        limit = int(request.query.get("limit", 100))
        if not 1 <= limit <= 500:
            return self._json({"code": "51000", "msg": "Parameter limit error", "data": []})
        return self._json({"code": "0", "msg": "", "data": [
            self.trade_item(inst, t, rest=True) for t in self.tape.recent(inst, limit)]})

    async def _candles(self, request: web.Request) -> web.Response:
        self.rest_requests.append(str(request.rel_url))
        if request.query.get("bar") != "1m":
            return self._json({"code": "51000", "msg": "Parameter bar error", "data": []})
        limit = int(request.query.get("limit", 100))
        if not 1 <= limit <= 300:
            return self._json({"code": "51000", "msg": "Parameter limit error", "data": []})
        current = now_ms() // 60_000 * 60_000
        rows = [rest_candle(current - i * 60_000, "0" if i == 0 else "1") for i in range(limit)]
        return self._json({"code": "0", "msg": "", "data": rows})

    def _rest_item(self, request: web.Request, sample: str) -> web.Response:
        self.rest_requests.append(str(request.rel_url))
        item = copy.deepcopy(self.samples[sample]["data"][0])
        item.update(instId=request.query["instId"], ts=str(now_ms()))
        return web.Response(body=orjson.dumps({"code": "0", "msg": "", "data": [item]}),
                            content_type="application/json")

    async def _funding(self, request: web.Request) -> web.Response:
        return self._rest_item(request, "funding")

    async def _open_interest(self, request: web.Request) -> web.Response:
        return self._rest_item(request, "oi")

    async def _instruments(self, request: web.Request) -> web.Response:
        self.rest_requests.append(str(request.rel_url))
        if self.instruments_fail:
            return web.Response(status=500, text="boom")
        return web.Response(body=orjson.dumps(self.samples["instruments"]),
                            content_type="application/json")

    # ---- WebSocket ---------------------------------------------------------------------------
    def new_state(self, path: str) -> dict[str, Any]:
        return {"subs": set(), "books": {}, "sent_at": {}}

    async def on_text(self, ws, path, state, text) -> None:
        if text == "ping":
            await ws.send("pong")
            return
        msg = orjson.loads(text)
        op = msg.get("op")
        if op not in ("subscribe", "unsubscribe"):
            error = dict(self.samples["error"])
            error.update(msg=f"Invalid request: {text}", id=msg.get("id", ""))
            await self.send(ws, error)
            return
        for arg in msg["args"]:
            key = (arg["channel"], arg["instId"])
            if op == "unsubscribe":
                state["subs"].discard(key)
                await self.send(ws, {"event": "unsubscribe", "arg": arg, "connId": "a4d3ae55"})
                continue
            if arg["channel"].startswith("candle") and not path.endswith("/business"):
                await self.send(ws, {"event": "error", "code": "64001", "connId": "a4d3ae55",
                                     "msg": "This channel has been migrated to the '/business' "
                                            "URL. Please subscribe using the new URL."})
                continue
            if arg["channel"] in self.ws_rejects:
                await self.send(ws, {"event": "error", "code": "60018", "connId": "a4d3ae55",
                                     "msg": f"Wrong URL or channel:{arg['channel']},instId:"
                                            f"{arg['instId']} doesn't exist. Please use the "
                                            f"correct URL, channel and parameters referring to "
                                            f"API document."})
                continue
            ack = {"event": "subscribe", "arg": arg, "connId": "a4d3ae55"}
            await self.send(ws, ack)
            state["subs"].add(key)
            if arg["channel"] == "trades":
                self.tape.activate(arg["instId"])      # trades come from the tape
            elif not self.silent and arg["channel"] not in self.muted:
                await self.send(ws, self.message(state, *key, initial=True))
                state["sent_at"][key] = time.monotonic()

    async def stream_once(self, ws, path, state) -> None:
        now = time.monotonic()
        for key in sorted(state["subs"]):
            channel = key[0]
            if channel == "trades" or channel in self.muted or \
                    now - state["sent_at"].get(key, 0.0) < self.push_every_s.get(channel, 0.0):
                continue
            state["sent_at"][key] = now
            await self.send(ws, self.message(state, *key, initial=False))

    # ---- trades (the tape) -------------------------------------------------------------------
    def trade_subscribers(self, inst) -> list:
        return [ws for ws in self.connections if ("trades", inst) in ws.state_dict["subs"]]

    def trade_item(self, inst: str, trade: dict[str, Any], rest: bool = False) -> dict[str, Any]:
        item = dict(self.samples["trades"]["data"][0])
        item.update(instId=inst, tradeId=str(trade["id"]), ts=str(trade["ts"]),
                    sz="5" if inst.endswith("-SWAP") else "0.0002")
        if not rest:                      # the REST sample has no count
            item["count"] = str(trade["count"])
        return item

    def trade_message(self, inst: str, trade: dict[str, Any]) -> dict[str, Any]:
        return {"arg": {"channel": "trades", "instId": inst},
                "data": [self.trade_item(inst, trade)]}

    # ---- builders ----------------------------------------------------------------------------
    def message(self, state, channel: str, inst: str, initial: bool) -> dict[str, Any]:
        swap = inst.endswith("-SWAP")
        arg = {"channel": channel, "instId": inst}
        if channel == "books":
            # a subscription made while silent never got its snapshot: it comes first
            fresh = initial or inst not in state["books"]
            return self.book_snapshot(state, inst) if fresh else self.book_update(state, inst)
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

    def book_snapshot(self, state, inst: str, seq: int = 1000) -> dict[str, Any]:
        msg = copy.deepcopy(self.samples["books"])
        data = msg["data"][0]
        bids = {lvl[0]: lvl[1] for lvl in data["bids"]}
        asks = {lvl[0]: lvl[1] for lvl in data["asks"]}
        state["books"][inst] = {"bids": bids, "asks": asks, "seq": seq}
        msg["arg"]["instId"] = inst
        data.update(ts=str(now_ms()), prevSeqId=-1, seqId=seq, checksum=okx_checksum(bids, asks))
        return msg

    def book_update(self, state, inst: str, *, prev: int | None = None, seq: int | None = None,
                    bids: list[list[str]] | None = None, asks: list[list[str]] | None = None,
                    checksum: int | None = None) -> dict[str, Any]:
        book = state["books"][inst]
        last = book["seq"]
        prev = last if prev is None else prev
        seq = last + 1 if seq is None else seq
        if bids is None and asks is None:
            n = next(_ids)
            bids = [["8476.97", str(250 + n % 9), "0", "12"]]
            asks = [["8477", str(5 + n % 4), "0", "2"]]
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
                          "checksum": okx_checksum(book["bids"], book["asks"])
                          if checksum is None else checksum,
                          "prevSeqId": prev, "seqId": seq}]}

    def public_ws(self):
        return self.live("/public")[0]

    async def push(self, path_suffix: str, msg: Any) -> None:
        for ws in self.live(path_suffix):
            await self.send(ws, msg)
