"""What every exchange feed shares: record routing to the writer, malformed-message accounting,
connection wiring, REST budget, and the fixed-cadence book snapshot / liquidity sampler."""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Coroutine

import aiohttp

from collector.connection import Backoff, ConnectThrottle, HeartbeatPolicy, MessageHandler, \
    OpenHandler, WsConnection
from collector.liquidity import compute_liquidity
from collector.orderbook import OrderBook
from collector.rest import RateBudget, RestClient
from collector.stats import Stats
from collector.writer import Writer
from common.schema import BookSnapshot, Record, Ticker, now_utc
from common.settings import ExchangeSettings, Settings
from common.symbols import pair_from_symbol

log = logging.getLogger(__name__)


@dataclass
class FeedContext:
    settings: Settings
    writer: Writer
    stats: Stats
    session: aiohttp.ClientSession
    poll_interval_s: float


class Feed:
    """Base class of the five exchange feeds. Subclasses implement ``build_connections`` and,
    where needed, ``prepare`` (symbol validation) and ``pollers`` (REST polling tasks)."""

    name: ClassVar[str] = ""
    # Seconds between connection attempts to this exchange (connection-rate limits).
    connect_interval_s: ClassVar[float] = 0.5
    backoff_max_s: ClassVar[float] = 60.0
    # REST request weight allowed per window (seconds).
    rest_weight_per_window: ClassVar[float] = 600.0
    rest_window_s: ClassVar[float] = 60.0

    def __init__(self, cfg: ExchangeSettings, ctx: FeedContext) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.writer = ctx.writer
        self.stats = ctx.stats.exchange(self.name)
        self.throttle = ConnectThrottle(self.connect_interval_s)
        self.rest_budget = RateBudget(self.rest_weight_per_window, self.rest_window_s)
        self.books: dict[tuple[str, str], OrderBook] = {}
        self.tickers: dict[tuple[str, str], Ticker] = {}
        self.connections: list[WsConnection] = []
        self._pairs: dict[str, str] = {}
        self._tasks: list[asyncio.Task] = []
        self._malformed_logged_at = 0.0

    # ---- helpers for subclasses -------------------------------------------------------------
    def pair(self, symbol: str) -> str:
        pair = self._pairs.get(symbol)
        if pair is None:
            pair = self._pairs[symbol] = pair_from_symbol(symbol)
        return pair

    def rest(self, base_url: str) -> RestClient:
        return RestClient(self.ctx.session, base_url, self.rest_budget)

    def book(self, market: str, symbol: str, *, keep_text: bool = False) -> OrderBook:
        key = (market, symbol)
        book = self.books.get(key)
        if book is None:
            book = self.books[key] = OrderBook(self.cfg.book_depth, keep_text=keep_text)
        return book

    def emit(self, record: Record, *, history: bool = True) -> None:
        """Hand a normalized record to the writer and note it for freshness/logging."""
        if isinstance(record, Ticker):
            self.tickers[(record.market, record.symbol)] = record
        self.writer.submit(record, history=history)
        stats = self.stats
        stats.records[record.collection] += 1
        stats.last_record_at[record.collection][f"{record.market}:{record.symbol}"] = time.time()

    def malformed(self, raw: Any, exc: BaseException) -> None:
        """Count, log (at most once per 10 s) and skip a message that did not parse."""
        self.stats.malformed += 1
        now = time.monotonic()
        if now - self._malformed_logged_at > 10:
            self._malformed_logged_at = now
            log.warning("%s: skipped malformed message (%d so far): %r: %.200r",
                        self.name, self.stats.malformed, exc, raw)

    def mark_unavailable(self, symbol: str, reason: str) -> None:
        """Report an unknown/delisted symbol once; it is skipped from then on."""
        if symbol not in self.stats.unavailable_symbols:
            log.error("%s: symbol %s unavailable, skipping it: %s", self.name, symbol, reason)
        self.stats.unavailable_symbols[symbol] = reason[:200]

    def is_available(self, symbol: str) -> bool:
        return symbol not in self.stats.unavailable_symbols

    def connection(self, name: str, url: str, *, on_message: MessageHandler,
                   on_open: OpenHandler | None = None,
                   heartbeat: HeartbeatPolicy = HeartbeatPolicy(),
                   idle_timeout_s: float | None = None) -> WsConnection:
        conn = WsConnection(
            f"{self.name}:{name}", url, on_message=on_message, on_open=on_open,
            on_close=self._on_close, heartbeat=heartbeat,
            idle_timeout_s=idle_timeout_s or self.cfg.idle_timeout_s,
            backoff=Backoff(max_s=self.backoff_max_s), throttle=self.throttle)
        self.connections.append(conn)
        return conn

    def _on_close(self, conn: WsConnection, reason: str) -> None:
        self.stats.reconnects += 1
        self.on_disconnect(conn, reason)

    def on_disconnect(self, conn: WsConnection, reason: str) -> None:
        """Hook: a connection dropped (books on it must resync)."""

    # ---- to implement ------------------------------------------------------------------------
    async def prepare(self) -> None:
        """Validate symbols etc. before connecting (optional)."""

    def build_connections(self) -> list[WsConnection]:
        raise NotImplementedError

    def pollers(self) -> list[Coroutine[Any, Any, None]]:
        """REST polling loops (optional)."""
        return []

    # ---- lifecycle ---------------------------------------------------------------------------
    async def run(self) -> None:
        await self.prepare()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(conn.run()) for conn in self.build_connections()]
        self._tasks += [loop.create_task(coro) for coro in self.pollers()]
        self._tasks.append(loop.create_task(self._sample_books()))
        self._tasks.append(loop.create_task(self._sample_liquidity()))
        await asyncio.gather(*self._tasks)

    async def stop(self) -> None:
        for conn in self.connections:
            await conn.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def connection_status(self) -> dict[str, dict[str, Any]]:
        return {conn.name: {"connected": conn.connected.is_set(), "connects": conn.connects,
                            "disconnects": conn.disconnects, "last_error": conn.last_error}
                for conn in self.connections}

    async def _sample_books(self) -> None:
        settings = self.ctx.settings
        levels = settings.book_snapshot_levels
        while True:
            await asyncio.sleep(settings.book_snapshot_interval_s)
            now = now_utc()
            for (market, symbol), book in self.books.items():
                if not book.synced or not book.changed:
                    continue
                book.changed = False
                self.emit(BookSnapshot(self.name, symbol, self.pair(symbol), market, now, now,
                                       bids=book.bids.top(levels), asks=book.asks.top(levels),
                                       depth=levels, update_id=book.update_id))

    async def _sample_liquidity(self) -> None:
        settings = self.ctx.settings
        while True:
            await asyncio.sleep(settings.liquidity_interval_s)
            now = now_utc()
            for (market, symbol), book in self.books.items():
                if not book.synced:
                    continue
                record = compute_liquidity(book, self.tickers.get((market, symbol)),
                                           exchange=self.name, symbol=symbol,
                                           pair=self.pair(symbol), market=market, ts=now,
                                           received_at=now)
                if record is not None:
                    self.emit(record)
