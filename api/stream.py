"""Live stream for ``/ws``: one shared poller per app reads ``latest`` every ``poll_s`` and
fans changed records out to subscribers.

MongoDB change streams need a replica set, so the poller compares ``(received_at, ts)`` per key
(``exchange:market:symbol:type``) with what it saw last. Backpressure: each client has a bounded,
per-key coalescing queue (only the newest record per key is kept, at most ``max_queue`` keys); a
client whose queue has made no progress for ``slow_after_s`` seconds is closed with code 4008.

Protocol (JSON text frames):
  -> {"op": "subscribe", "exchange": "binance", "symbol": "BTCUSDT", "type": "trades"}
     (each of exchange/symbol/type optional = any; symbol in any spelling; "market" optional)
  <- {"op": "subscribed", "id": 1, "filter": {...}}
  <- {"op": "record", "key": "binance:spot:BTCUSDT:trades", "data": {...record...}}
  -> {"op": "unsubscribe", "id": 1}     -> {"op": "ping"}  <- {"op": "pong"}
  <- {"op": "error", "message": "..."}
"""
from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import WSMsgType, web
from pymongo.errors import PyMongoError

from api.params import EXCHANGES, MARKETS, TYPES
from api.queries import comparable
from common import schema

log = logging.getLogger("api.ws")

CLOSE_TOO_SLOW = 4008
CLOSE_SHUTDOWN = 1001


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj, option=orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS).decode()


@dataclass
class Subscription:
    id: int
    exchange: str | None
    symbol: str | None       # comparable() form
    market: str | None
    type: str | None

    def matches(self, doc: dict[str, Any]) -> bool:
        return ((self.exchange is None or doc.get("exchange") == self.exchange)
                and (self.type is None or doc.get("type") == self.type)
                and (self.market is None or doc.get("market") == self.market)
                and (self.symbol is None or comparable(doc.get("symbol", "")) == self.symbol))


class Client:
    def __init__(self, ws: web.WebSocketResponse, max_queue: int) -> None:
        self.ws = ws
        self.subs: dict[int, Subscription] = {}
        self.queue: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.max_queue = max_queue
        self.max_seen = 0               # high-water mark of the queue (tests, metrics)
        self.dropped = 0
        self.wake = asyncio.Event()
        self.last_progress = time.monotonic()
        self.next_id = 1

    def offer(self, key: str, doc: dict[str, Any]) -> None:
        if not self.queue:
            self.last_progress = time.monotonic()
        if key in self.queue:
            self.queue[key] = doc            # coalesce: keep only the newest per key
            self.queue.move_to_end(key)
        else:
            if len(self.queue) >= self.max_queue:
                self.queue.popitem(last=False)   # drop the oldest key's record
                self.dropped += 1
            self.queue[key] = doc
        self.max_seen = max(self.max_seen, len(self.queue))
        self.wake.set()


class Hub:
    def __init__(self, db, *, poll_s: float = 0.2, max_queue: int = 256,
                 slow_after_s: float = 10.0) -> None:
        self.db = db
        self.poll_s = poll_s
        self.max_queue = max_queue
        self.slow_after_s = slow_after_s
        # Kernel send buffer per WebSocket (fixed, so a stuck peer holds bounded kernel memory
        # and is detected as slow instead of hiding megabytes in an autotuned buffer).
        self.sndbuf = 256 * 1024
        self.clients: set[Client] = set()
        self._seen: dict[str, tuple[Any, Any]] = {}
        self._task: asyncio.Task | None = None
        self._ready = asyncio.Event()
        self.polls = 0

    # -- poller ---------------------------------------------------------------------------
    async def ensure_started(self) -> None:
        if self._task is None or self._task.done():
            self._ready.clear()
            self._task = asyncio.get_running_loop().create_task(self._run())
        try:
            # The baseline (what exists now) is taken before the subscription is acknowledged.
            await asyncio.wait_for(self._ready.wait(), 5.0)
        except asyncio.TimeoutError:
            log.warning("ws poller: no baseline yet (database slow or unavailable)")

    async def _poll_once(self, emit: bool) -> None:
        docs = await self.db[schema.LATEST].find({}).to_list(None)
        for doc in docs:
            key = str(doc.pop("_id", None) or "")
            if not key:
                key = f"{doc.get('exchange')}:{doc.get('market')}:{doc.get('symbol')}:{doc.get('type')}"
            stamp = (doc.get("received_at"), doc.get("ts"))
            if self._seen.get(key) == stamp:
                continue
            self._seen[key] = stamp
            if emit:
                for client in list(self.clients):
                    if any(s.matches(doc) for s in client.subs.values()):
                        client.offer(key, doc)
        self.polls += 1

    async def _run(self) -> None:
        first = True
        while True:
            try:
                await self._poll_once(emit=not first)
                first = False
                self._ready.set()
            except PyMongoError as exc:
                log.warning("ws poller: database error %r", exc)
            except asyncio.CancelledError:
                raise
            except Exception:   # noqa: BLE001
                log.exception("ws poller failed")
            self._check_slow()
            if not self.clients:
                # Nobody listening: stop polling; the next subscriber takes a new baseline.
                self._task = None
                self._seen.clear()
                return
            await asyncio.sleep(self.poll_s)

    def _check_slow(self) -> None:
        now = time.monotonic()
        for client in list(self.clients):
            if client.queue and now - client.last_progress > self.slow_after_s:
                log.info("ws: closing slow client (%d keys queued)", len(client.queue))
                self.clients.discard(client)
                client.queue.clear()
                asyncio.get_running_loop().create_task(self._force_close(client))

    @staticmethod
    async def _force_close(client: Client) -> None:
        try:
            await asyncio.wait_for(client.ws.close(code=CLOSE_TOO_SLOW,
                                                   message=b"client too slow"), 2.0)
        except (asyncio.TimeoutError, ConnectionError, RuntimeError):
            pass
        transport = client.ws._req.transport if client.ws._req is not None else None  # noqa: SLF001
        if transport is not None and not transport.is_closing():
            transport.abort()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for client in list(self.clients):
            try:
                await asyncio.wait_for(client.ws.close(code=CLOSE_SHUTDOWN,
                                                       message=b"server shutdown"), 1.0)
            except (asyncio.TimeoutError, ConnectionError, RuntimeError):
                pass

    # -- one connection -------------------------------------------------------------------
    async def _sender(self, client: Client) -> None:
        while not client.ws.closed:
            await client.wake.wait()
            client.wake.clear()
            while client.queue:
                key, doc = client.queue.popitem(last=False)
                await client.ws.send_str(_dumps({"op": "record", "key": key, "data": doc}))
                client.last_progress = time.monotonic()

    def _parse(self, client: Client, msg: Any) -> tuple[str, dict[str, Any]]:
        if not isinstance(msg, dict) or not isinstance(msg.get("op"), str):
            raise ValueError('expected a JSON object with "op"')
        op = msg["op"]
        if op == "subscribe":
            extra = set(msg) - {"op", "exchange", "symbol", "market", "type"}
            if extra:
                raise ValueError(f"unknown field(s): {', '.join(sorted(extra))}")
            values = {}
            for name, allowed in (("exchange", EXCHANGES), ("market", MARKETS), ("type", TYPES)):
                v = msg.get(name)
                if v is not None and (not isinstance(v, str) or v.lower() not in allowed):
                    raise ValueError(f"{name}: must be one of {', '.join(allowed)}")
                values[name] = v.lower() if isinstance(v, str) else None
            symbol = msg.get("symbol")
            if symbol is not None and (not isinstance(symbol, str) or not 0 < len(symbol) <= 40):
                raise ValueError("symbol: 1 to 40 characters")
            sub = Subscription(client.next_id, values["exchange"],
                               comparable(symbol) if symbol else None, values["market"],
                               values["type"])
            client.next_id += 1
            if len(client.subs) >= 64:
                raise ValueError("too many subscriptions (64 max)")
            client.subs[sub.id] = sub
            return "subscribed", {"id": sub.id, "filter": {
                "exchange": sub.exchange, "symbol": symbol, "market": sub.market,
                "type": sub.type}}
        if op == "unsubscribe":
            sid = msg.get("id")
            if sid is None:
                client.subs.clear()
            elif client.subs.pop(sid, None) is None:
                raise ValueError(f"no subscription {sid!r}")
            return "unsubscribed", {"id": sid}
        if op == "ping":
            return "pong", {}
        raise ValueError("op: must be subscribe, unsubscribe or ping")

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=64 * 1024)
        sock = request.transport.get_extra_info("socket") if request.transport else None
        if sock is not None and self.sndbuf:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.sndbuf)
            except OSError:
                pass
        await ws.prepare(request)
        client = Client(ws, self.max_queue)
        sender = asyncio.get_running_loop().create_task(self._sender(client))
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    if msg.type == WSMsgType.BINARY:
                        await ws.send_str(_dumps({"op": "error", "message": "send JSON text"}))
                    continue
                try:
                    op, body = self._parse(client, orjson.loads(msg.data))
                except (ValueError, orjson.JSONDecodeError) as exc:
                    await ws.send_str(_dumps({"op": "error", "message": str(exc)}))
                    continue
                if op == "subscribed":
                    self.clients.add(client)
                    await self.ensure_started()   # baseline taken: later writes are delivered
                await ws.send_str(_dumps({"op": op, **body}))
        finally:
            self.clients.discard(client)
            sender.cancel()
            client.queue.clear()
        return ws
