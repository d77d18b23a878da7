"""Bybit v5 feed: one public connection per category (spot, linear), tickers (linear deltas merged
into the last snapshot), trades, orderbook.200 with resubscribe-on-regression, 1m klines, funding
and open interest from the merged linear ticker with a REST fallback poll."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Coroutine

import orjson

from collector.connection import HeartbeatPolicy, WsConnection
from collector.exchanges.base import Feed
from collector.exchanges.bybit import endpoints
from collector.exchanges.bybit.parsers import (
    parse_kline, parse_orderbook, parse_rest_ticker, parse_ticker, parse_trades, topic_parts,
)
from collector.rest import RestError
from common.schema import Funding, OpenInterest, Ticker, now_utc

log = logging.getLogger(__name__)

PARSE_ERRORS = (KeyError, ValueError, TypeError, IndexError, AttributeError)


class BybitFeed(Feed):
    name = "bybit"
    connect_interval_s = endpoints.CONNECT_INTERVAL_S
    rest_weight_per_window = endpoints.REST_WEIGHT_PER_WINDOW
    rest_window_s = endpoints.REST_WINDOW_S
    # Funding/open-interest records derived from the 100 ms linear ticker: at most one per this
    # many seconds while the value changes, and at least one per ``derived_max_interval_s``.
    derived_min_interval_s = 1.0
    derived_max_interval_s = 60.0
    resync_cooldown_s = 1.0

    def __init__(self, cfg, ctx) -> None:
        super().__init__(cfg, ctx)
        self.depth = min(cfg.book_depth, endpoints.ORDERBOOK_DEPTH)
        # (market, symbol) -> merged ticker fields (linear snapshot + deltas)
        self.ticker_state: dict[tuple[str, str], dict[str, Any]] = {}
        self.market_conn: dict[str, WsConnection] = {}
        self._resyncing: set[tuple[str, str]] = set()
        # (kind, symbol) -> (monotonic time, value) of the last emitted derived record
        self._derived_last: dict[tuple[str, str], tuple[float, Any]] = {}
        self.last_ws_funding_at: dict[str, float] = {}
        self.rest_polls = 0
        self._bg: set[asyncio.Task] = set()
        # req_id -> (market, args) of subscribe requests awaiting their ack
        self._requests: dict[str, tuple[str, list[str]]] = {}
        self._req_seq = 0
        self._last_resync: dict[tuple[str, str], float] = {}
        self._pending_resync: dict[tuple[str, str], asyncio.TimerHandle] = {}

    # ---- connections -------------------------------------------------------------------------
    def symbols(self, market: str) -> list[str]:
        names = self.cfg.spot_symbols if market == "spot" else self.cfg.perp_symbols
        return [s for s in names if self.is_available(s)]

    def build_connections(self) -> list[WsConnection]:
        heartbeat = HeartbeatPolicy(app_ping=lambda: endpoints.PING_MESSAGE,
                                    app_ping_interval_s=endpoints.PING_INTERVAL_S)
        conns = []
        for market, url in (("spot", self.cfg.spot_ws_url), ("perp", self.cfg.perp_ws_url)):
            if not self.symbols(market):
                continue
            conn = self.connection(
                endpoints.CATEGORY[market], url,
                on_message=lambda c, raw, m=market: self.on_message(m, c, raw),
                on_open=lambda c, m=market: self.subscribe_all(m, c), heartbeat=heartbeat)
            self.market_conn[market] = conn
            conns.append(conn)
        return conns

    def topics(self, market: str) -> list[str]:
        args = []
        for symbol in self.symbols(market):
            args += [f"{endpoints.TICKERS}.{symbol}", f"{endpoints.TRADES}.{symbol}",
                     f"{endpoints.ORDERBOOK}.{symbol}", f"{endpoints.KLINE}.{symbol}"]
        return args

    async def subscribe_all(self, market: str, conn: WsConnection) -> None:
        await self._send_op(conn, market, "subscribe", self.topics(market))

    async def _send_op(self, conn: WsConnection, market: str, op: str, args: list[str]) -> None:
        chunk = endpoints.SPOT_MAX_ARGS_PER_REQUEST if market == "spot" \
            else endpoints.LINEAR_MAX_ARGS_PER_REQUEST
        for i in range(0, len(args), chunk):
            part = args[i:i + chunk]
            self._req_seq += 1
            req_id = f"{op[:5]}{self._req_seq}"
            if op == "subscribe":
                self._requests[req_id] = (market, part)
            await conn.send(orjson.dumps({"req_id": req_id, "op": op, "args": part}).decode())

    def on_disconnect(self, conn: WsConnection, reason: str) -> None:
        for market, c in self.market_conn.items():
            if c is conn:
                for (m, symbol), book in self.books.items():
                    if m == market:
                        book.reset()
                for key in [k for k in self.ticker_state if k[0] == market]:
                    del self.ticker_state[key]
                self._resyncing = {k for k in self._resyncing if k[0] != market}
                for key in [k for k in self._pending_resync if k[0] == market]:
                    self._pending_resync.pop(key).cancel()
                self._requests = {k: v for k, v in self._requests.items() if v[0] != market}

    # ---- messages ----------------------------------------------------------------------------
    def on_message(self, market: str, conn: WsConnection, raw: str | bytes) -> bool:
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            self.malformed(raw, exc)
            return False
        self.stats.messages += 1
        if not isinstance(msg, dict):
            self.malformed(raw, TypeError("message is not an object"))
            return False
        if "topic" not in msg:
            self._on_control(market, msg)
            return False
        received_at = now_utc()
        try:
            kind, _ = topic_parts(msg)
            if kind == "orderbook":
                self._on_book(market, conn, msg)
            elif kind == endpoints.TRADES:
                for record in parse_trades(msg, market, received_at):
                    self.emit(record)
            elif kind == endpoints.TICKERS:
                self._on_ticker(market, msg, received_at)
            elif kind == "kline":
                for record in parse_kline(msg, market, received_at):
                    self.emit(record)
        except PARSE_ERRORS as exc:
            self.malformed(raw, exc)
        return True

    def _on_control(self, market: str, msg: dict[str, Any]) -> None:
        request = self._requests.pop(str(msg.get("req_id", "")), None)
        if msg.get("success") is not False:
            return
        reason = str(msg.get("ret_msg"))
        if "already subscribed" in reason:
            return
        self.stats.error_once(self.name, f"{market} {msg.get('op')} failed: {reason}")
        # One bad topic may fail its whole request: retry the request's topics one by one so
        # the valid ones are not lost (a topic failing alone is only reported).
        if request is not None and len(request[1]) > 1:
            conn = self.market_conn.get(market)
            if conn is not None:
                self._spawn(self._retry_singly(conn, market, request[1]))

    async def _retry_singly(self, conn: WsConnection, market: str, args: list[str]) -> None:
        try:
            for topic in args:
                await self._send_op(conn, market, "subscribe", [topic])
        except Exception as exc:   # connection dropped: on_open subscribes everything again
            log.info("bybit: retrying topics failed: %r", exc)

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    def _on_ticker(self, market: str, msg: dict[str, Any], received_at) -> None:
        _, symbol = topic_parts(msg)
        key = (market, symbol)
        try:
            fields, records = parse_ticker(msg, market, received_at, self.ticker_state.get(key))
        except ValueError:
            if msg.get("type") == "delta" and key not in self.ticker_state:
                return            # a delta before the snapshot: wait for the snapshot
            raise
        self.ticker_state[key] = fields
        for record in records:
            if isinstance(record, Ticker):
                if market == "spot" and record.bid is None:
                    book = self.books.get(key)
                    if book is not None and book.synced:
                        bid, ask = book.best_bid(), book.best_ask()
                        if bid is not None:
                            record.bid, record.bid_size = bid
                        if ask is not None:
                            record.ask, record.ask_size = ask
                self.emit(record)
            elif isinstance(record, Funding):
                self.last_ws_funding_at[symbol] = time.monotonic()
                self._emit_derived("funding", symbol, record.rate, record)
            elif isinstance(record, OpenInterest):
                self._emit_derived("oi", symbol, record.open_interest, record)

    def _emit_derived(self, kind: str, symbol: str, value: Any, record: Any) -> None:
        now = time.monotonic()
        last = self._derived_last.get((kind, symbol))
        if last is not None:
            elapsed = now - last[0]
            if elapsed < self.derived_min_interval_s:
                return
            if value == last[1] and elapsed < self.derived_max_interval_s:
                return
        self._derived_last[(kind, symbol)] = (now, value)
        self.emit(record)

    def _on_book(self, market: str, conn: WsConnection, msg: dict[str, Any]) -> None:
        update = parse_orderbook(msg)
        key = (market, update.symbol)
        book = self.book(market, update.symbol)
        book.depth = self.depth
        if update.snapshot:
            # Any snapshot (including u == 1 after a service restart) replaces the book.
            book.load_snapshot(update.bids, update.asks, update.update_id)
            book.truncate(self.depth)
            self._resyncing.discard(key)
            return
        if key in self._resyncing:
            return
        if not book.synced:
            self.resync(market, update.symbol, "delta before snapshot")
            return
        if book.update_id is not None and update.update_id < book.update_id:
            self.resync(market, update.symbol,
                        f"update id went backwards ({book.update_id} -> {update.update_id})")
            return
        if book.update_id is not None and update.update_id == book.update_id:
            return        # duplicate
        book.apply(update.bids, update.asks, update.update_id)
        book.truncate(self.depth)

    def resync(self, market: str, symbol: str, reason: str) -> None:
        """Drop one symbol's book and resubscribe its order-book topic only (at most once per
        ``resync_cooldown_s`` per symbol)."""
        key = (market, symbol)
        log.warning("bybit %s %s: resync (%s)", market, symbol, reason)
        self.stats.gaps += 1
        self.book(market, symbol).reset()
        self._resyncing.add(key)
        if key in self._pending_resync:
            return
        wait = self._last_resync.get(key, -1e9) + self.resync_cooldown_s - time.monotonic()
        if wait > 0:
            self._pending_resync[key] = asyncio.get_running_loop().call_later(
                wait, self._resubscribe_book, market, symbol)
        else:
            self._resubscribe_book(market, symbol)

    def _resubscribe_book(self, market: str, symbol: str) -> None:
        key = (market, symbol)
        self._pending_resync.pop(key, None)
        if key not in self._resyncing:
            return
        self._last_resync[key] = time.monotonic()
        self.stats.resyncs += 1
        conn = self.market_conn.get(market)
        if conn is None:
            return
        topic = [f"{endpoints.ORDERBOOK}.{symbol}"]

        async def resubscribe() -> None:
            try:
                await self._send_op(conn, market, "unsubscribe", topic)
                await self._send_op(conn, market, "subscribe", topic)
            except Exception as exc:  # connection dropped: on_open resubscribes everything
                log.info("bybit resubscribe of %s failed: %r", symbol, exc)

        self._spawn(resubscribe())

    async def stop(self) -> None:
        for handle in self._pending_resync.values():
            handle.cancel()
        await super().stop()

    # ---- REST fallback -----------------------------------------------------------------------
    def pollers(self) -> list[Coroutine[Any, Any, None]]:
        if not self.symbols("perp"):
            return []
        return [self._poll_derivatives()]

    async def _poll_derivatives(self) -> None:
        """Funding and open interest from ``/v5/market/tickers`` whenever the WS ticker has not
        delivered them for a poll interval (start-up, or a silent linear connection)."""
        client = self.rest(self.cfg.perp_rest_url)
        interval = self.ctx.poll_interval_s
        while True:
            for symbol in self.symbols("perp"):
                last = self.last_ws_funding_at.get(symbol)
                if last is not None and time.monotonic() - last < interval:
                    continue
                try:
                    payload = await client.get(endpoints.REST_TICKERS,
                                               {"category": "linear", "symbol": symbol})
                    self.rest_polls += 1
                    for record in parse_rest_ticker(payload, "perp", now_utc()):
                        if isinstance(record, (Funding, OpenInterest)):
                            self.emit(record)
                except RestError as exc:
                    self.stats.error_once(self.name, f"REST tickers poll failed: {exc}")
                except PARSE_ERRORS as exc:
                    self.malformed(payload, exc)
            await asyncio.sleep(interval)
