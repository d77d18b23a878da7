"""OKX v5 feed: /public (tickers, trades, books, funding-rate, open-interest) and /business
(candle1m) connections; books kept with raw strings for the CRC32 checksum and checked against
seqId/prevSeqId; a gap or checksum mismatch resubscribes that instrument alone (with a cool-down).
SWAP contract sizes are converted to base units with ctVal fetched in ``prepare``."""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any, Coroutine

import orjson

from collector.connection import HeartbeatPolicy, WsConnection
from collector.exchanges.base import Feed
from collector.exchanges.okx import endpoints
from collector.exchanges.okx.parsers import (
    BookMessage, checksum, market_of, parse_books, parse_candles, parse_funding,
    parse_open_interest, parse_tickers, parse_trades, sequence_ok,
)
from collector.orderbook import BookSide, OrderBook
from collector.rest import RestError
from common.schema import now_utc

log = logging.getLogger(__name__)

PARSE_ERRORS = (KeyError, ValueError, TypeError, IndexError, AttributeError)


def _top_text(side: BookSide, n: int) -> list[tuple[str, str]]:
    assert side.text is not None
    return [side.text[price] for price, _ in side.top(n)]


class OkxFeed(Feed):
    name = "okx"
    connect_interval_s = endpoints.CONNECT_INTERVAL_S
    rest_weight_per_window = endpoints.REST_WEIGHT_PER_WINDOW
    rest_window_s = endpoints.REST_WINDOW_S
    resync_cooldown_s = endpoints.RESYNC_COOLDOWN_S
    ping_interval_s = endpoints.PING_INTERVAL_S

    def __init__(self, cfg, ctx) -> None:
        super().__init__(cfg, ctx)
        self.depth = min(cfg.book_depth, endpoints.BOOK_DEPTH)
        self.ct_val: dict[str, float] = {}
        self.book_conn: dict[str, WsConnection] = {}      # instId -> its /public connection
        self.conn_symbols: dict[WsConnection, list[str]] = {}
        self._resyncing: set[str] = set()
        self._last_resync: dict[str, float] = {}
        self._pending_resync: dict[str, asyncio.TimerHandle] = {}
        self._bg: set[asyncio.Task] = set()
        self.checksum_checked = 0
        # connection -> monotonic times of its subscribe/unsubscribe requests in the last hour
        self._sub_requests: dict[WsConnection, deque[float]] = {}
        self.notices = 0
        # instId -> monotonic time of the last WS funding / open-interest push
        self.last_ws_at: dict[tuple[str, str], float] = {}
        self.rest_polls = 0

    def symbols(self, market: str) -> list[str]:
        names = self.cfg.spot_symbols if market == "spot" else self.cfg.perp_symbols
        return [s for s in names if self.is_available(s)]

    # ---- preparation -------------------------------------------------------------------------
    async def prepare(self) -> None:
        """Contract values of the SWAP instruments (contracts -> base units)."""
        client = self.rest(self.cfg.perp_rest_url)
        for inst in self.symbols("perp"):
            try:
                payload = await client.get(endpoints.REST_INSTRUMENTS,
                                           {"instType": "SWAP", "instId": inst})
                if str(payload.get("code")) != "0":
                    raise RestError(200, payload, endpoints.REST_INSTRUMENTS)
                data = payload["data"]
                if not data:
                    self.mark_unavailable(inst, "not listed in /api/v5/public/instruments")
                    continue
                self.ct_val[inst] = float(data[0]["ctVal"])
            except (RestError, KeyError, ValueError, TypeError, AttributeError) as exc:
                default = endpoints.DEFAULT_CT_VAL.get(inst, 1.0)
                log.warning("okx: ctVal of %s unavailable (%r); using default %s",
                            inst, exc, default)
                self.stats.error_once(self.name, f"ctVal fetch failed for {inst}; default used")
                self.ct_val[inst] = default

    def ct(self, inst: str) -> float:
        if market_of(inst) != "perp":
            return 1.0
        return self.ct_val.get(inst) or endpoints.DEFAULT_CT_VAL.get(inst, 1.0)

    # ---- connections -------------------------------------------------------------------------
    def build_connections(self) -> list[WsConnection]:
        heartbeat = HeartbeatPolicy(app_ping=lambda: endpoints.PING_TEXT,
                                    app_ping_interval_s=self.ping_interval_s,
                                    ping_only_when_quiet=True)
        # url -> list of (channel, instId); spot and swap share a connection when URLs match.
        plan: dict[str, list[tuple[str, str]]] = {}
        names: dict[str, str] = {}
        for market, base in (("spot", self.cfg.spot_ws_url), ("perp", self.cfg.perp_ws_url)):
            base = base.rstrip("/")
            public_channels = endpoints.PUBLIC_CHANNELS_SPOT if market == "spot" \
                else endpoints.PUBLIC_CHANNELS_SWAP
            for path, channels in ((endpoints.PUBLIC_PATH, public_channels),
                                   (endpoints.BUSINESS_PATH, endpoints.BUSINESS_CHANNELS)):
                url = base + path
                for inst in self.symbols(market):
                    plan.setdefault(url, []).extend((ch, inst) for ch in channels)
                names.setdefault(url, f"{path.strip('/')}" if url not in names else names[url])
        conns = []
        used_names: set[str] = set()
        for url, args in plan.items():
            name = names[url]
            if name in used_names:
                name = f"{name}{len(used_names)}"
            used_names.add(name)
            conn = self.connection(name, url, on_message=self.on_message,
                                   on_open=lambda c, a=args: self._on_open(c, a),
                                   heartbeat=heartbeat)
            self.conn_symbols[conn] = sorted({inst for _, inst in args})
            for channel, inst in args:
                if channel == endpoints.BOOKS:
                    self.book_conn[inst] = conn
            conns.append(conn)
        return conns

    async def _on_open(self, conn: WsConnection, args: list[tuple[str, str]]) -> None:
        self._sub_requests[conn] = deque()      # a new connection has a fresh request bucket
        await self.subscribe(conn, args)

    def subscribe_budget_left(self, conn: WsConnection) -> int:
        stamps = self._sub_requests.setdefault(conn, deque())
        now = time.monotonic()
        while stamps and now - stamps[0] > 3600:
            stamps.popleft()
        return endpoints.SUBSCRIBE_REQUESTS_PER_HOUR - len(stamps)

    async def subscribe(self, conn: WsConnection, args: list[tuple[str, str]],
                        op: str = "subscribe") -> None:
        self._sub_requests.setdefault(conn, deque()).append(time.monotonic())
        await conn.send(orjson.dumps({"op": op, "args": [{"channel": ch, "instId": inst}
                                                         for ch, inst in args]}).decode())

    def on_disconnect(self, conn: WsConnection, reason: str) -> None:
        for inst, c in self.book_conn.items():
            if c is conn:
                self.book(market_of(inst), inst, keep_text=True).reset()
                self._resyncing.discard(inst)
                handle = self._pending_resync.pop(inst, None)
                if handle is not None:
                    handle.cancel()

    # ---- messages ----------------------------------------------------------------------------
    def on_message(self, conn: WsConnection, raw: str | bytes) -> bool:
        if raw == endpoints.PONG_TEXT or raw == b"pong":
            return False
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            self.malformed(raw, exc)
            return False
        self.stats.messages += 1
        if not isinstance(msg, dict):
            self.malformed(raw, TypeError("message is not an object"))
            return False
        event = msg.get("event")
        if event is not None:
            self._on_event(conn, msg)
            return False
        received_at = now_utc()
        try:
            arg = msg["arg"]
            channel = arg["channel"]
            inst = arg["instId"]
            if channel == endpoints.BOOKS:
                for update in parse_books(msg, self.ct(inst)):
                    self._on_book(update)
            elif channel == endpoints.TRADES:
                for record in parse_trades(msg, received_at, self.ct(inst)):
                    self.emit(record)
            elif channel == endpoints.TICKERS:
                for record in parse_tickers(msg, received_at, self.ct(inst)):
                    self.emit(record)
            elif channel.startswith("candle"):
                for record in parse_candles(msg, received_at, self.ct(inst)):
                    self.emit(record)
            elif channel == endpoints.FUNDING:
                for record in parse_funding(msg, received_at):
                    self.emit(record)
                self.last_ws_at[(channel, inst)] = time.monotonic()
            elif channel == endpoints.OPEN_INTEREST:
                for record in parse_open_interest(msg, received_at, self.ct(inst)):
                    self.emit(record)
                self.last_ws_at[(channel, inst)] = time.monotonic()
        except PARSE_ERRORS as exc:
            self.malformed(raw, exc)
        return True

    def _on_event(self, conn: WsConnection, msg: dict[str, Any]) -> None:
        event = msg["event"]
        if event == "error":
            self.stats.error_once(self.name, f"error {msg.get('code')}: {msg.get('msg')}")
        elif event == "notice":
            # Sent ~60 s before a service upgrade disconnects us: reconnect now.
            self.notices += 1
            log.warning("okx %s: notice %r; reconnecting", conn.name, msg.get("msg"))
            conn.reconnect("notice")
        # subscribe / unsubscribe acks need nothing

    # ---- order book --------------------------------------------------------------------------
    def _on_book(self, update: BookMessage) -> None:
        inst = update.inst_id
        book = self.book(market_of(inst), inst, keep_text=True)
        book.depth = self.depth
        if update.snapshot:
            book.bids.clear()
            book.asks.clear()
            self._apply(book, update)
            book.synced = True
            self._resyncing.discard(inst)
        else:
            if inst in self._resyncing:
                return
            if not book.synced:
                self.resync(inst, "update before snapshot")
                return
            if not sequence_ok(book.update_id, update.prev_seq_id, update.seq_id):
                self.resync(inst, f"sequence gap: last {book.update_id}, "
                                  f"prevSeqId {update.prev_seq_id}")
                return
            self._apply(book, update)
        if update.checksum:
            self.checksum_checked += 1
            local = checksum(_top_text(book.bids, endpoints.CHECKSUM_LEVELS),
                             _top_text(book.asks, endpoints.CHECKSUM_LEVELS))
            if local != update.checksum:
                self.resync(inst, f"checksum mismatch (local {local}, exchange "
                                  f"{update.checksum})")

    def _apply(self, book: OrderBook, update: BookMessage) -> None:
        for side, levels in ((book.bids, update.bids), (book.asks, update.asks)):
            for price, size, price_text, size_text in levels:
                side.set(price, size, price_text, size_text)
        book.update_id = update.seq_id
        book.changed = True
        book.truncate(self.depth)

    def resync(self, inst: str, reason: str) -> None:
        """Discard one instrument's book and unsubscribe+resubscribe its ``books`` channel,
        at most once per ``resync_cooldown_s`` per instrument."""
        log.warning("okx %s: resync (%s)", inst, reason)
        self.stats.gaps += 1
        self.book(market_of(inst), inst, keep_text=True).reset()
        self._resyncing.add(inst)
        if inst in self._pending_resync:
            return
        wait = self._last_resync.get(inst, -1e9) + self.resync_cooldown_s - time.monotonic()
        loop = asyncio.get_running_loop()
        if wait > 0:
            self._pending_resync[inst] = loop.call_later(wait, self._start_resubscribe, inst)
        else:
            self._start_resubscribe(inst)

    def _start_resubscribe(self, inst: str) -> None:
        self._pending_resync.pop(inst, None)
        conn = self.book_conn.get(inst)
        if conn is None or inst not in self._resyncing:
            return
        self._last_resync[inst] = time.monotonic()
        self.stats.resyncs += 1
        args = [(endpoints.BOOKS, inst)]
        if self.subscribe_budget_left(conn) < 2 + endpoints.SUBSCRIBE_BUDGET_MARGIN:
            # Out of subscribe requests for this hour: a new connection gets a fresh bucket and
            # fresh snapshots of every book on it.
            conn.reconnect("subscribe request budget exhausted")
            return

        async def resubscribe() -> None:
            try:
                await self.subscribe(conn, args, "unsubscribe")
                await self.subscribe(conn, args, "subscribe")
            except Exception as exc:   # dropped connection: on_open subscribes everything again
                log.info("okx resubscribe of %s failed: %r", inst, exc)

        task = asyncio.get_running_loop().create_task(resubscribe())
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    # ---- REST fallback -----------------------------------------------------------------------
    def pollers(self) -> list[Coroutine[Any, Any, None]]:
        return [self._poll_derivatives()] if self.symbols("perp") else []

    async def _poll_derivatives(self) -> None:
        """Funding rate and open interest from REST for any SWAP whose WS channel has been silent
        for a poll interval (funding pushes every 30-90 s; both are documented on /public)."""
        client = self.rest(self.cfg.perp_rest_url)
        interval = max(self.ctx.poll_interval_s, 1.0)
        # Give the WebSocket a head start before falling back.
        await asyncio.sleep(interval)
        polls = ((endpoints.FUNDING, endpoints.REST_FUNDING, parse_funding),
                 (endpoints.OPEN_INTEREST, endpoints.REST_OPEN_INTEREST, parse_open_interest))
        while True:
            for inst in self.symbols("perp"):
                for channel, path, parse in polls:
                    last = self.last_ws_at.get((channel, inst))
                    if last is not None and time.monotonic() - last < 2 * interval:
                        continue
                    params = {"instId": inst}
                    if channel == endpoints.OPEN_INTEREST:
                        params["instType"] = "SWAP"
                    payload: Any = None
                    try:
                        payload = await client.get(path, params)
                        if str(payload.get("code")) != "0":
                            raise RestError(200, payload, path)
                        self.rest_polls += 1
                        args = (payload, now_utc()) if parse is parse_funding else \
                            (payload, now_utc(), self.ct(inst))
                        for record in parse(*args):
                            self.emit(record)
                    except RestError as exc:
                        self.stats.error_once(self.name, f"REST {path} failed: {exc}")
                    except PARSE_ERRORS as exc:
                        self.malformed(payload, exc)
            await asyncio.sleep(interval)

    async def stop(self) -> None:
        for handle in self._pending_resync.values():
            handle.cancel()
        await super().stop()
