"""Live stream for ``/ws``: every record stored in a subscribed data collection is sent to the
matching subscribers, in the order it was received.

One shared poller per app reads, every ``poll_s``, each data collection that has a subscriber.
Its position in a collection is ``mark``, the (rt, _id) of the newest record handled (``rt``:
``received_at`` as integer epoch ms, ``common.schema.RECEIVED_KEY``; an integer range is served
from the index on every server, a date range is a scan on nx-27017). A tick reads the keys (a
projection: _id, rt, exchange, market, symbol) of the records after the mark in (rt, _id) order
(the ``rt_id`` index; at most ``batch`` per collection per tick, the rest follow on the next
tick), then fetches the full records that some subscriber wants, and offers them in that order.

``received_at`` is not the order of storage: every collector partition flushes its own batches,
so a record received earlier can be stored after the mark has passed it. Every ``sweep_s`` a
tick therefore also reads the keys inside ``lookback_s`` before the mark and sends the ones not
handled yet (the (_id, received_at) pairs handled inside that window are kept, so nothing is
sent twice; a candle rewritten with a new ``received_at`` is sent again). Documents written
before ``rt`` existed are not streamed (the history endpoints have them). A record stored more
than about ``lookback_s - sweep_s`` after it was received (a spool replay after a MongoDB outage)
is not streamed; the history endpoints have it.

Why not change streams: they need a replica set (a standalone mongod refuses them) and the
embedded nx-27017 emulates them with its own resume rules; this one polling path behaves the same
on every server the project runs on.

Backpressure: each client has a bounded queue of ``max_queue`` records. When it is full, records
are coalesced (only the newest per key ``exchange:market:symbol:type`` is kept) and, if still
full, the oldest are dropped (counted in ``dropped``). A client whose queue has made no progress
for ``slow_after_s`` seconds is closed with code 4008.

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
import contextlib
import logging
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import WSMsgType, web
from pymongo import DESCENDING
from pymongo.errors import PyMongoError

from api.params import EXCHANGES, MARKETS, TYPES
from api.queries import comparable
from common import schema
from common.indexes import STREAM_SORT

log = logging.getLogger("api.ws")

CLOSE_TOO_SLOW = 4008
CLOSE_SHUTDOWN = 1001
RT = schema.RECEIVED_KEY
KEY_FIELDS = {"_id": 1, RT: 1, "exchange": 1, "market": 1, "symbol": 1}


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj, option=orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS).decode()


def record_key(doc: dict[str, Any], kind: str) -> str:
    return f"{doc.get('exchange')}:{doc.get('market')}:{doc.get('symbol')}:{kind}"


@dataclass
class Subscription:
    id: int
    exchange: str | None
    symbol: str | None       # comparable() form
    market: str | None
    type: str | None

    def matches(self, doc: dict[str, Any], kind: str) -> bool:
        return ((self.exchange is None or doc.get("exchange") == self.exchange)
                and (self.type is None or kind == self.type)
                and (self.market is None or doc.get("market") == self.market)
                and (self.symbol is None or comparable(doc.get("symbol", "")) == self.symbol))


class Client:
    def __init__(self, ws: web.WebSocketResponse, max_queue: int) -> None:
        self.ws = ws
        self.subs: dict[int, Subscription] = {}
        self.queue: deque[tuple[str, dict[str, Any]]] = deque()
        self.max_queue = max_queue
        self.max_seen = 0               # high-water mark of the queue (tests, metrics)
        self.dropped = 0
        self.wake = asyncio.Event()
        self.last_progress = time.monotonic()
        self.next_id = 1
        self.too_slow = asyncio.Event()     # set by the poller; the connection's task closes it

    def wants(self, doc: dict[str, Any], kind: str) -> bool:
        return any(s.matches(doc, kind) for s in self.subs.values())

    def offer(self, key: str, doc: dict[str, Any]) -> None:
        if not self.queue:
            self.last_progress = time.monotonic()
        if len(self.queue) >= self.max_queue:
            self._shrink()
        self.queue.append((key, doc))
        self.max_seen = max(self.max_seen, len(self.queue))
        self.wake.set()

    def _shrink(self) -> None:
        """Coalesce to the newest record per key, then drop the oldest down to 3/4 full (so a
        client that stays behind pays this O(n) pass once per max_queue/4 records)."""
        before = len(self.queue)
        last = {key: i for i, (key, _) in enumerate(self.queue)}
        if len(last) < before:
            self.queue = deque(item for i, item in enumerate(self.queue) if last[item[0]] == i)
        target = min(self.max_queue - 1, self.max_queue * 3 // 4)
        while len(self.queue) > target:
            self.queue.popleft()
        self.dropped += before - len(self.queue)


@dataclass
class Tail:
    """The poller's position in one collection."""
    mark: tuple[int, Any] | None = None     # (rt, _id) of the newest handled
    # (_id, rt) -> rt of records handled inside the lookback window
    seen: dict[tuple[Any, int], int] = field(default_factory=dict)
    swept_at: float = 0.0

    def handled(self, key: dict[str, Any]) -> None:
        received = key[RT]
        self.seen[(key["_id"], received)] = received
        if self.mark is None or (received, key["_id"]) > self.mark:
            self.mark = (received, key["_id"])

    def prune(self, lookback_ms: int) -> None:
        if self.mark is not None:
            low = self.mark[0] - lookback_ms
            self.seen = {k: at for k, at in self.seen.items() if at >= low}


class Hub:
    def __init__(self, db, *, poll_s: float = 0.2, max_queue: int = 2048,
                 slow_after_s: float = 10.0, lookback_s: float = 2.0, sweep_s: float = 0.5,
                 batch: int = 1000) -> None:
        self.db = db
        self.poll_s = poll_s
        self.max_queue = max_queue
        self.slow_after_s = slow_after_s
        self.lookback_ms = int(lookback_s * 1000)
        self.sweep_s = sweep_s
        self.batch = batch
        # Kernel send buffer per WebSocket (fixed, so a stuck peer holds bounded kernel memory
        # and is detected as slow instead of hiding megabytes in an autotuned buffer).
        self.sndbuf = 256 * 1024
        self.clients: set[Client] = set()
        self._tails: dict[str, Tail] = {}
        self._lock = asyncio.Lock()     # one tick or one baseline at a time
        self._task: asyncio.Task | None = None
        self.polls = 0

    # -- poller ---------------------------------------------------------------------------
    def _wanted_collections(self) -> set[str]:
        kinds: set[str] = set()
        for client in self.clients:
            for sub in client.subs.values():
                if sub.type is None:
                    return set(TYPES)
                kinds.add(sub.type)
        return kinds

    async def subscribe_collections(self, kinds: set[str]) -> None:
        """Start following ``kinds`` from what is stored now (before the subscription is
        acknowledged, so every later record is delivered), and make sure the poller runs."""
        async with self._lock:
            for kind in kinds - set(self._tails):
                tail = Tail()
                try:
                    newest = await self.db[kind].find({RT: {"$gte": 0}}, {"_id": 1, RT: 1}).sort(
                        [(f, DESCENDING) for f, _ in STREAM_SORT]).limit(1).to_list(1)
                    if newest:
                        tail.handled(newest[0])
                        while await self._read(kind, tail, emit=False, sweep=True):
                            pass     # everything stored up to now counts as handled
                except PyMongoError as exc:
                    # Follow from the first successful read instead (may include a few records
                    # stored just before the subscription).
                    log.warning("ws: no baseline for %s yet: %r", kind, exc)
                self._tails[kind] = tail
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _read(self, kind: str, tail: Tail, emit: bool, sweep: bool) -> int:
        """One step of one collection: keys of the records stored from the mark on (on a
        sweep: from ``lookback`` before it), minus the ones already handled, then the wanted
        records, in order. Returns the number of records handled."""
        coll = self.db[kind]
        low = 0                              # every document that has ``rt``
        if tail.mark is not None:
            low = tail.mark[0] - self.lookback_ms if sweep else tail.mark[0]
            if sweep:
                tail.swept_at = time.monotonic()
        # Records at the mark's own rt come back again: the limit leaves room for every
        # handled one so that ``batch`` new records still fit.
        found = await coll.find({RT: {"$gte": low}}, KEY_FIELDS).sort(STREAM_SORT) \
            .limit(len(tail.seen) + self.batch).to_list(None)
        keys = [k for k in found if (k["_id"], k[RT]) not in tail.seen][:self.batch]
        wanted = [k["_id"] for k in keys
                  if emit and any(c.wants(k, kind) for c in self.clients)]
        docs: dict[Any, dict[str, Any]] = {}
        if wanted:
            async for doc in coll.find({"_id": {"$in": wanted}}):
                docs[doc["_id"]] = doc
        for k in keys:
            tail.handled(k)
            doc = docs.pop(k["_id"], None)
            if doc is None:          # not wanted, or expired between the two reads
                continue
            if doc.get(RT) != k[RT]:
                tail.handled(doc)    # rewritten (candle) between the two reads: sent now
            doc.pop("_id", None)
            for storage_key in schema.STORAGE_KEYS:     # not part of the record
                doc.pop(storage_key, None)
            doc["type"] = kind
            key = record_key(doc, kind)
            for client in list(self.clients):
                if client.wants(doc, kind):
                    client.offer(key, doc)
        tail.prune(self.lookback_ms)
        return len(keys)

    async def _poll_once(self) -> None:
        async with self._lock:
            wanted = self._wanted_collections()
            for kind in set(self._tails) - wanted:
                del self._tails[kind]     # unsubscribed: a later subscriber takes a new baseline
            for kind in sorted(wanted & set(self._tails)):
                tail = self._tails[kind]
                sweep = time.monotonic() - tail.swept_at >= self.sweep_s
                await self._read(kind, tail, emit=True, sweep=sweep)
                await asyncio.sleep(0)   # let senders drain between collections
        self.polls += 1

    async def _run(self) -> None:
        while True:
            try:
                await self._poll_once()
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
                self._tails.clear()
                return
            await asyncio.sleep(self.poll_s)

    def _check_slow(self) -> None:
        now = time.monotonic()
        for client in list(self.clients):
            if client.queue and now - client.last_progress > self.slow_after_s:
                log.info("ws: closing slow client (%d records queued)", len(client.queue))
                self.clients.discard(client)
                client.queue.clear()
                client.too_slow.set()

    @staticmethod
    async def _close_slow(client: Client) -> None:
        """Close with 4008 and wait (bounded) for the client's close reply; a peer that does
        not read at all cannot even take the close frame and is cut off."""
        try:
            await asyncio.wait_for(client.ws.close(code=CLOSE_TOO_SLOW,
                                                   message=b"client too slow"), 5.0)
        except (asyncio.TimeoutError, ConnectionError, RuntimeError):
            pass
        transport = client.ws._req.transport if client.ws._req is not None else None  # noqa: SLF001
        if transport is not None and not transport.is_closing():
            transport.abort()

    @staticmethod
    async def _messages(client: Client):
        """Incoming frames until the peer closes or the client is found too slow. The pending
        read is cancelled first in the latter case: aiohttp's close() called while another task
        reads drops the connection without waiting for the client's close reply."""
        ws = client.ws
        slow = asyncio.ensure_future(client.too_slow.wait())
        try:
            while not ws.closed:
                receive = asyncio.ensure_future(ws.receive())
                await asyncio.wait({receive, slow}, return_when=asyncio.FIRST_COMPLETED)
                if not receive.done():
                    receive.cancel()
                    try:
                        await receive
                    except asyncio.CancelledError:
                        pass
                    return
                msg = receive.result()
                if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED,
                                WSMsgType.ERROR):
                    return
                yield msg
        finally:
            slow.cancel()

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
                key, doc = client.queue.popleft()
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
            if len(client.subs) >= 64:
                raise ValueError("too many subscriptions (64 max)")
            sub = Subscription(client.next_id, values["exchange"],
                               comparable(symbol) if symbol else None, values["market"],
                               values["type"])
            client.next_id += 1
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
            async with contextlib.aclosing(self._messages(client)) as messages:
                async for msg in messages:
                    await self._on_message(client, msg)
        finally:
            self.clients.discard(client)
            sender.cancel()
            client.queue.clear()
            if client.too_slow.is_set():
                await self._close_slow(client)
        return ws

    async def _on_message(self, client: Client, msg: Any) -> None:
        ws = client.ws
        if msg.type != WSMsgType.TEXT:
            if msg.type == WSMsgType.BINARY:
                await ws.send_str(_dumps({"op": "error", "message": "send JSON text"}))
            return
        try:
            op, body = self._parse(client, orjson.loads(msg.data))
        except (ValueError, orjson.JSONDecodeError) as exc:
            await ws.send_str(_dumps({"op": "error", "message": str(exc)}))
            return
        if op == "subscribed":
            kind = client.subs[body["id"]].type
            # Registered first, so the poller keeps the collection while its baseline is
            # taken; acknowledged after: records stored from then on are delivered.
            self.clients.add(client)
            await self.subscribe_collections({kind} if kind else set(TYPES))
        await ws.send_str(_dumps({"op": op, **body}))
