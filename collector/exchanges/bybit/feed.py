"""Bybit v5 feed: one public connection per category (spot, linear), tickers (linear deltas merged
into the last snapshot), trades, orderbook.200 with resubscribe-on-regression, 1m klines, funding
and open interest from the merged linear ticker with a REST fallback poll, and REST backfill
(recent trades, closed klines, tickers) after a gap.

Trade ids are not checked for continuity: linear ids are UUIDs and the docs promise nothing about
spot ids beyond being numeric strings, so holes are only found through connection gaps.
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any, Coroutine

import orjson

from collector.connection import HeartbeatPolicy, WsConnection
from collector.exchanges.legacy_base import Feed
from collector.exchanges.bybit import endpoints
from collector.exchanges.bybit.parsers import (
    parse_kline, parse_orderbook, parse_rest_klines, parse_rest_ticker, parse_rest_trades,
    parse_ticker, parse_trades, topic_parts,
)
from collector.resync import ResubscribeScheduler
from collector.rest import RestError
from common.schema import PERP, SPOT, Funding, OpenInterest, Ticker, now_utc, received_now

log = logging.getLogger(__name__)

PARSE_ERRORS = (KeyError, ValueError, TypeError, IndexError, AttributeError)
# "Invalid topic: tickers.BADUSDT", "error:already subscribed,topic:orderbook.200.BTCUSDT"
_TOPIC_IN_REASON = re.compile(r"topic\s*:\s*([\w.\-]+)")


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
        self.spot_rest = self.rest(cfg.spot_rest_url)
        self.perp_rest = self.rest(cfg.perp_rest_url)
        # (market, symbol) -> merged ticker fields (linear snapshot + deltas)
        self.ticker_state: dict[tuple[str, str], dict[str, Any]] = {}
        self.market_conn: dict[str, WsConnection] = {}
        self.resync = ResubscribeScheduler(self._resubscribe_book,
                                           cooldown_s=self.resync_cooldown_s, name=self.name)
        # (kind, symbol) -> (monotonic time, value) of the last emitted derived record
        self._derived_last: dict[tuple[str, str], tuple[float, Any]] = {}
        self.last_ws_funding_at: dict[str, float] = {}
        self.rest_polls = 0
        self.already_subscribed = 0
        # req_id -> (market, args) of subscribe requests awaiting their ack
        self._requests: dict[str, tuple[str, list[str]]] = {}
        self._req_seq = 0

    # ---- symbols and subscriptions -----------------------------------------------------------
    @staticmethod
    def unavailable_key(market: str, symbol: str) -> str:
        """BTCUSDT is both a spot and a linear symbol: a linear rejection must not drop spot."""
        return symbol if market == SPOT else f"{PERP}:{symbol}"

    def symbols(self, market: str) -> list[str]:
        names = self.cfg.spot_symbols if market == SPOT else self.cfg.perp_symbols
        return [s for s in names if self.is_available(self.unavailable_key(market, s))]

    def subscriptions(self, market: str) -> list[tuple[str, str]]:
        """(kind, topic) this partition subscribes on ``market``'s connection."""
        return [(kind, f"{topic}.{symbol}") for symbol in self.symbols(market)
                for topic, kind in endpoints.TOPIC_KINDS.items()
                if self.owns(market, symbol, kind)]

    def topics(self, market: str) -> list[str]:
        return [topic for _, topic in self.subscriptions(market)]

    def build_connections(self) -> list[WsConnection]:
        heartbeat = HeartbeatPolicy(app_ping=lambda: endpoints.PING_MESSAGE,
                                    app_ping_interval_s=endpoints.PING_INTERVAL_S)
        conns = []
        for market, url in ((SPOT, self.cfg.spot_ws_url), (PERP, self.cfg.perp_ws_url)):
            subs = self.subscriptions(market)
            if not subs:
                continue
            kinds = {kind for kind, _ in subs}
            if market == PERP and "ticker" in kinds:
                kinds.add("funding")          # funding and open interest ride on the ticker
            conn = self.connection(
                endpoints.CATEGORY[market], url,
                on_message=lambda c, raw, m=market: self.on_message(m, c, raw),
                on_open=lambda c, m=market: self.subscribe_all(m, c), heartbeat=heartbeat,
                kinds=sorted(kinds), market=market)
            self.market_conn[market] = conn
            conns.append(conn)
        return conns

    async def subscribe_all(self, market: str, conn: WsConnection) -> None:
        await self._send_op(conn, market, "subscribe", self.topics(market))

    async def _send_op(self, conn: WsConnection, market: str, op: str, args: list[str]) -> None:
        chunk = endpoints.SPOT_MAX_ARGS_PER_REQUEST if market == SPOT \
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
            if c is not conn:
                continue
            for (m, symbol), book in self.books.items():
                if m == market:
                    book.reset()
            for key in [k for k in self.ticker_state if k[0] == market]:
                del self.ticker_state[key]
            # The reconnect subscribes (and so snapshots) every book again.
            self.resync.cancel(lambda key, m=market: key[0] == m)
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
        received_at = received_now()
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
        """Acks, pongs and request failures. A failed request names one topic in ``ret_msg``;
        the request's other topics are retried one by one so one bad topic cannot take the valid
        ones down with it (the error shape may lack ``req_id``: the topic finds the request)."""
        request = self._requests.pop(str(msg.get("req_id") or ""), None)
        if msg.get("success") is not False:
            return
        reason = str(msg.get("ret_msg"))
        match = _TOPIC_IN_REASON.search(reason)
        named = match.group(1) if match else None
        if request is None and named is not None:
            request = self._take_request(market, named)
        args = request[1] if request is not None else ([named] if named else [])
        if "already subscribed" in reason:
            # Our own duplicate (a retried batch the server had partly accepted, or a resubscribe
            # whose unsubscribe did not take): the topic is live, nothing is lost. A book waiting
            # for a snapshot is covered by the resync scheduler's retry (unsubscribe first).
            self.already_subscribed += 1
            log.info("bybit %s: %s", market, reason)
        elif named is None or not self._reject_topic(market, named, reason):
            self.stats.error_once(self.name, f"{market} {msg.get('op')} failed: {reason}")
        retry = [t for t in args if t != named and self._wanted(market, t)]
        if len(args) > 1 and retry:
            conn = self.market_conn.get(market)
            if conn is not None:
                self._spawn(self._retry_singly(conn, market, retry))

    def _take_request(self, market: str, topic: str) -> tuple[str, list[str]] | None:
        for req_id, (m, args) in list(self._requests.items()):
            if m == market and topic in args:
                return self._requests.pop(req_id)
        return None

    def _reject_topic(self, market: str, topic: str, reason: str) -> bool:
        """A rejected topic of ours: the channels are fixed constants, so an invalid topic means
        the symbol is not listed in this category. Reported once; the symbol is skipped from
        then on (also after reconnects). False if the topic is not one of ours."""
        try:
            _, symbol = topic.rsplit(".", 1)
        except ValueError:
            return False
        if symbol not in (self.cfg.spot_symbols if market == SPOT else self.cfg.perp_symbols):
            return False
        key = self.unavailable_key(market, symbol)
        if self.is_available(key):
            self.stats.error_once(self.name, f"{market} subscribe {topic} failed: {reason}")
            self.mark_unavailable(key, f"{endpoints.CATEGORY[market]}: {reason}")
        return True

    def _wanted(self, market: str, topic: str) -> bool:
        return self.is_available(self.unavailable_key(market, topic.rsplit(".", 1)[-1]))

    async def _retry_singly(self, conn: WsConnection, market: str, args: list[str]) -> None:
        try:
            for topic in args:
                if self._wanted(market, topic):   # a later rejection may have dropped it
                    await self._send_op(conn, market, "subscribe", [topic])
        except Exception as exc:   # connection dropped: on_open subscribes everything again
            log.info("bybit: retrying topics failed: %r", exc)

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
                if market == SPOT and record.bid is None:
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

    # ---- order book --------------------------------------------------------------------------
    def _on_book(self, market: str, conn: WsConnection | None, msg: dict[str, Any]) -> None:
        if msg.get("type") == "delta" and self._apply_delta(market, msg["data"]):
            return
        update = parse_orderbook(msg)
        key = (market, update.symbol)
        book = self.book(market, update.symbol)
        book.depth = self.depth
        if update.snapshot:
            # Any snapshot (including u == 1 after a service restart) replaces the book.
            book.load_snapshot(update.bids, update.asks, update.update_id)
            book.truncate(self.depth)
            self.book_in_sync(market, update.symbol)
            self.resync.done(key)
            return
        if not book.synced:
            if key not in self._books_resyncing:
                self.lose_sync(market, update.symbol, "delta before snapshot")
            return                # else: deltas of the old subscription; a snapshot is coming
        if book.update_id is not None and update.update_id < book.update_id:
            self.lose_sync(market, update.symbol,
                           f"update id went backwards ({book.update_id} -> {update.update_id})")
            return
        if book.update_id is not None and update.update_id == book.update_id:
            return        # duplicate
        book.apply(update.bids, update.asks, update.update_id)
        book.truncate(self.depth)

    def _apply_delta(self, market: str, data: dict[str, Any]) -> bool:
        """The hot path: a delta that moves a synced book forward, applied straight from the
        decoded message (``OrderBook.apply_text``: no tuples, prices through its text cache).
        False (nothing done) for anything else, which ``parse_orderbook`` and the rules below
        handle (snapshots, an unsynced book, a duplicate or backwards update id)."""
        symbol = data["s"]
        book = self.books.get((market, symbol))
        if book is None or not book.synced:
            return False
        update_id = int(data["u"])
        if book.update_id is None or update_id <= book.update_id:
            return False
        try:
            book.apply_text(data["b"], data["a"], update_id)
        except (KeyError, IndexError, TypeError, ValueError):
            # A malformed level may have been half applied: rebuild this book.
            self.lose_sync(market, symbol, "malformed delta")
            raise
        book.truncate(self.depth)
        return True

    def lose_sync(self, market: str, symbol: str, reason: str) -> None:
        """Drop one symbol's book and resubscribe its order-book topic only (cool-down, retry
        and absorbing repeats: ``ResubscribeScheduler``)."""
        self.book_lost_sync(market, symbol, "sequence_gap", reason)
        self.book(market, symbol).reset()
        self.resync.request((market, symbol))

    async def _resubscribe_book(self, key: tuple[str, str]) -> None:
        market, symbol = key
        conn = self.market_conn.get(market)
        if conn is None:
            raise ConnectionError(f"bybit: no {market} connection")
        topic = [f"{endpoints.ORDERBOOK}.{symbol}"]
        await self._send_op(conn, market, "unsubscribe", topic)
        await self._send_op(conn, market, "subscribe", topic)

    async def stop(self) -> None:
        self.resync.cancel()
        await super().stop()

    # ---- REST: fallback poll and backfill ----------------------------------------------------
    def polled_symbols(self) -> list[str]:
        """Linear symbols whose funding/OI fallback this partition polls: the owner of the
        ticker topic (where the WS values come from), so the poll sees the WS freshness."""
        return [s for s in self.symbols(PERP) if self.owns(PERP, s, "ticker")]

    def pollers(self) -> list[Coroutine[Any, Any, None]]:
        return [self._poll_derivatives()] if self.polled_symbols() else []

    async def _poll_derivatives(self) -> None:
        """Funding and open interest from ``/v5/market/tickers`` whenever the WS ticker has not
        delivered them for a poll interval (start-up, or a silent linear connection)."""
        interval = self.ctx.poll_interval_s
        while True:
            for symbol in self.polled_symbols():
                last = self.last_ws_funding_at.get(symbol)
                if last is not None and time.monotonic() - last < interval:
                    continue
                try:
                    await self.repoll_derivatives(symbol)
                except RestError as exc:
                    self.stats.error_once(self.name, f"REST tickers poll failed: {exc}")
                except PARSE_ERRORS as exc:
                    self.malformed(exc, exc)
            await asyncio.sleep(interval)

    async def _get(self, market: str, path: str, params: dict[str, Any]) -> Any:
        """REST GET; Bybit's IP limit answers HTTP 403 ("access too frequent") and asks for a
        pause of at least 10 minutes, which the shared budget then honours."""
        rest = self.spot_rest if market == SPOT else self.perp_rest
        try:
            return await rest.get(path, params)
        except RestError as exc:
            if exc.status == 403:
                self.rest_budget.pause(endpoints.REST_BAN_PAUSE_S)
                log.error("bybit: REST rate limit hit (403); pausing REST for %.0fs",
                          endpoints.REST_BAN_PAUSE_S)
            raise

    async def repoll_derivatives(self, symbol: str) -> None:
        payload = await self._get(PERP, endpoints.REST_TICKERS,
                                  {"category": "linear", "symbol": symbol})
        self.rest_polls += 1
        for record in parse_rest_ticker(payload, PERP, now_utc()):
            if isinstance(record, (Funding, OpenInterest)):
                self.emit(record)

    async def backfill_trades(self, market: str, symbol: str, since) -> bool:
        """The newest 60 (spot) / 1000 (linear) trades: complete when they reach back to the
        gap start (a longer spot gap stays marked partial: the endpoint has no paging)."""
        limit = endpoints.RECENT_TRADE_LIMIT[market]
        payload = await self._get(market, endpoints.REST_RECENT_TRADE, {
            "category": endpoints.CATEGORY[market], "symbol": symbol, "limit": limit})
        trades = parse_rest_trades(payload, market, now_utc())
        return self.emit_backfilled_trades(trades, since, limit)

    async def backfill_candles(self, market: str, symbol: str, since) -> None:
        since_ms = int(since.timestamp() * 1000)
        payload = await self._get(market, endpoints.REST_KLINE, {
            "category": endpoints.CATEGORY[market], "symbol": symbol,
            "interval": endpoints.KLINE_INTERVAL, "start": since_ms - since_ms % 60_000,
            "limit": endpoints.KLINE_LIMIT})
        for candle in parse_rest_klines(payload, symbol, market, endpoints.KLINE_INTERVAL,
                                        now_utc()):
            if candle.closed:                 # the newest row is usually still forming
                self.emit(candle)
