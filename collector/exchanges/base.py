"""The skeleton every exchange feed fills in.

A feed declares its venue (``spec``: connections, channels, limits, book protocol, in the
exchange's ``endpoints.py``), formats its subscribe requests (``subscribe_requests``), names the
channel of a decoded message (``channel_of``) and handles each channel (``routes``); parsers own
the wire format. Everything else is here or in ``collector.kit``: connections planned from the
spec within the venue's limits and this process's partition, one message loop with one error
and counter policy, (market, symbol) availability, book integrity state, trade-id continuity,
the change-or-interval rule, the candle closer, backfill orchestration, rotation and samplers.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Coroutine, Hashable, Mapping

import aiohttp
import orjson

from collector import partition
from collector.connection import Backoff, ConnectThrottle, MessageHandler, WsConnection
from collector.gaps import Gap, GapLedger
from collector.kit.availability import Availability
from collector.kit.backfill import Backfill
from collector.kit.emitters import CandleCloser, ChangeOrInterval
from collector.kit.rotation import rotate_forever
from collector.kit.samplers import sample_books, sample_liquidity, sample_trade_candles
from collector.kit.spec import Channel, ConnMeta, Subscription, VenueSpec, batches, plan_connections
from collector.kit.trade_candles import TradeCandles
from collector.kit.tradeids import Hole, TradeIdContinuity
from collector.orderbook import OrderBook
from collector.rest import RateBudget, RestClient
from collector.stats import Stats
from collector.writer import Writer
from common.schema import Candle, Record, Ticker, Trade, ms_to_dt, s_to_dt
from common.settings import ExchangeSettings, Settings
from common.status import BookState, ConnectionStatus
from common.symbols import pair_from_symbol

log = logging.getLogger(__name__)
_loads, _JSONDecodeError = orjson.loads, orjson.JSONDecodeError

# A restart gap closes (and is backfilled) when every connection delivers again, or this long
# after the first one did.
RESTART_SETTLE_S = 10.0

# A channel handler: (connection, decoded message, raw frame) -> False for control traffic
# (acks, pongs, heartbeats: not data for the idle watchdog), True/None for data.
Handler = Callable[[WsConnection, Any, "str | bytes"], "bool | None"]


@dataclass
class FeedContext:
    settings: Settings
    writer: Writer
    stats: Stats
    session: aiohttp.ClientSession
    poll_interval_s: float
    gaps: GapLedger | None = None


class Feed(Backfill):
    name: ClassVar[str] = ""
    spec: ClassVar[VenueSpec]
    # Markets whose trade ids are consecutive integers per symbol: where a backfill cannot
    # reach back to a gap's start, the number of trades lost is then exact.
    consecutive_trade_ids: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: ExchangeSettings, ctx: FeedContext) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.writer = ctx.writer
        self.stats = ctx.stats.exchange(self.name)
        limits = self.spec.limits
        # Connection-rate limits are per IP: partitions on one host share them.
        _, partitions = partition.parse_partition(ctx.settings.partition)
        self.throttle = ConnectThrottle(limits.connect_interval_s * partitions)
        self.rest_budget = RateBudget(limits.rest_weight_per_window, limits.rest_window_s)
        self.availability = Availability(self.name, self.stats.unavailable_symbols)
        self.books: dict[tuple[str, str], OrderBook] = {}
        self.connections: list[WsConnection] = []
        self.connection_kinds: dict[str, set[str]] = {}   # gap stream -> data kinds carried
        self.routes: Mapping[Any, Handler] = {}
        self.trade_ids = TradeIdContinuity(on_switched_off=self._trade_ids_off)
        self.candles = CandleCloser()
        # Markets whose candles are built from trades (no exchange candles): set by the feed.
        self.trade_candles: TradeCandles | None = None
        self.derived = ChangeOrInterval(min_interval_s=1.0,
                                        max_interval_s=min(ctx.poll_interval_s, 60.0))
        self._pairs: dict[str, str] = {}
        self.backfill_oldest = {}
        self._tasks: list[asyncio.Task] = []
        self._malformed_logged_at = 0.0
        self.gaps = ctx.gaps if ctx.gaps is not None else GapLedger(ctx.writer)
        # Gaps that close when data flows again: connection -> its gap; "*" -> restart gap.
        self._awaiting_data: dict[Any, Gap] = {}
        self._restart_live: set[WsConnection] = set()     # connections live since a restart
        self._restart_first_at: float | None = None
        self.rotations = 0
        # Books that lost integrity and are resyncing: (market, symbol) -> epoch seconds since.
        self._books_resyncing: dict[tuple[str, str], float] = {}

    # ---- symbols, ownership, channels --------------------------------------------------------
    def configured_symbols(self, market: str) -> list[str]:
        """Native symbols of ``market`` as configured (feeds normalize spellings here)."""
        return list(self.cfg.spot_symbols if market == "spot" else self.cfg.perp_symbols)

    def symbols(self, market: str) -> list[str]:
        """Configured symbols of ``market`` that the exchange has not rejected."""
        return [s for s in self.configured_symbols(market) if self.is_available(market, s)]

    def mark_unavailable(self, market: str, symbol: str, reason: str) -> None:
        self.availability.mark(market, symbol, reason)

    def is_available(self, market: str, symbol: str) -> bool:
        return self.availability.ok(market, symbol)

    def owns(self, market: str, symbol: str, stream: str) -> bool:
        """Whether this process's partition owns the (market, symbol, stream) subscription
        (always true without ``CRYPTODATA_PARTITION``); see collector/partition.py."""
        return partition.owns(self.ctx.settings.partition, self.name, market, symbol, stream)

    def channels(self, market: str) -> list[Channel]:
        return [ch for conn in self.spec.connections if conn.market == market
                for ch in conn.channels]

    def owned(self, market: str, kind: str) -> list[str]:
        """Available symbols of ``market`` whose ``kind`` channel this partition owns."""
        return [s for s in self.symbols(market)
                if any(self.owns(market, s, ch.partition_stream)
                       for ch in self.channels(market) if ch.kind == kind)]

    def pair(self, symbol: str) -> str:
        pair = self._pairs.get(symbol)
        if pair is None:
            pair = self._pairs[symbol] = pair_from_symbol(symbol)
        return pair

    def rest(self, base_url: str, budget: RateBudget | None = None, *,
             headers: Mapping[str, str] | None = None) -> RestClient:
        return RestClient(self.ctx.session, base_url, budget or self.rest_budget,
                          headers=headers)

    def book(self, market: str, symbol: str, *, keep_text: bool = False,
             keep_fragments: bool = False) -> OrderBook:
        key = (market, symbol)
        book = self.books.get(key)
        if book is None:
            book = self.books[key] = OrderBook(self.cfg.book_depth, keep_text=keep_text,
                                               keep_fragments=keep_fragments)
        return book

    # ---- records -----------------------------------------------------------------------------
    def emit(self, record: Record, *, history: bool = True) -> None:
        """Hand a normalized record to the writer (which also keeps each stream's newest record:
        the freshness of the status document) and count it."""
        if self.trade_candles is not None and isinstance(record, Trade):
            self.trade_candles.add(record)
        self.writer.submit(record, history)
        self.stats.records[record.collection] += 1

    def before_book_read(self) -> None:
        """Called before the samplers read the books: a feed that defers a book check (Kraken's
        checksums) makes it here, so nothing is stored from an unchecked book."""

    def fill_top_of_book(self, ticker: Ticker) -> None:
        """Best bid/ask (and sizes) for a ticker that carries none (Binance USD-M, Bybit spot),
        from the live book when it is in sync."""
        book = self.books.get((ticker.market, ticker.symbol))
        if book is not None and book.synced:
            ticker.bid, ticker.bid_size = book.best_bid() or (None, None)
            ticker.ask, ticker.ask_size = book.best_ask() or (None, None)

    def emit_derived(self, record: Record, value: Any) -> None:
        """Funding / open interest pushed with every ticker: ``latest`` always, history on
        change or once per interval (``ChangeOrInterval``)."""
        key = (record.collection, record.market, record.symbol)
        self.emit(record, history=self.derived.due(key, value))

    def emit_candle(self, candle: Candle) -> None:
        """A running candle of a venue without a closed flag (``CandleCloser``)."""
        for record in self.candles.push(candle):
            self.emit(record)

    def _trade_ids_off(self, key: Hashable) -> None:
        self.stats.error_once(self.name, f"{key}: trade ids not consecutive (too many holes a "
                                         f"minute); check off")

    def trade_hole(self, market: str, symbol: str, hole: Hole) -> None:
        """A hole in consecutive trade ids (``self.trade_ids.check``, called per trade by the
        feeds whose ids are consecutive): a ``trade`` gap, backfilled by the trades' owner."""
        gap = self.gaps.record(self.name, symbol, market, "trade", "sequence_gap",
                               start=ms_to_dt(hole.start_ms), end=ms_to_dt(hole.end_ms),
                               detail=f"trade ids {hole.first_missing}..{hole.last_missing} "
                                      f"missing")
        gap.extra["missing_ids"] = [hole.first_missing, hole.last_missing]
        if self.cfg.backfill and self.owns_backfill(market, symbol, "trades"):
            self.spawn(self.run_backfill(gap))

    def malformed(self, raw: Any, exc: BaseException) -> None:
        """Count, log (at most once per 10 s) and skip a message that did not parse."""
        self.stats.malformed += 1
        now = time.monotonic()
        if now - self._malformed_logged_at > 10:
            self._malformed_logged_at = now
            log.warning("%s: skipped malformed message (%d so far): %r: %.200r",
                        self.name, self.stats.malformed, exc, raw)

    # ---- connections -------------------------------------------------------------------------
    def subscribe_requests(self, meta: ConnMeta, subs: list[Subscription]) -> list[str]:
        """The messages that subscribe ``subs`` on a fresh connection (venue format)."""
        raise NotImplementedError

    def arg_text(self, sub: Subscription) -> str:
        """A subscription's argument as sent (for per-connection size limits)."""
        return f"{sub.channel.name}.{sub.symbol}"

    def on_connection_open(self, meta: ConnMeta) -> None:
        """Hook: a connection (re)opened, before its subscriptions are sent."""

    def build_connections(self) -> list[WsConnection]:
        plan = plan_connections(self.spec, self.symbols, self.owns,
                                lambda field: getattr(self.cfg, field), self.arg_text)
        conns = []
        for conn_spec, label, url, subs in plan:
            meta = ConnMeta(conn_spec, label, url, tuple(subs))
            self.connection_kinds[f"{self.name}:{label}"] = meta.kinds
            conns.append(self.new_connection(meta))
        return conns

    def new_connection(self, meta: ConnMeta, on_message: MessageHandler | None = None
                       ) -> WsConnection:
        idle = self.cfg.idle_timeout_s if "idle_timeout_s" in self.cfg.model_fields_set \
            else meta.idle_timeout_s(self.cfg.idle_timeout_s)
        conn = WsConnection(
            f"{self.name}:{meta.label}", meta.url, on_message=on_message or self.handle,
            on_open=self._open, on_close=self._on_close, heartbeat=meta.spec.heartbeat,
            idle_timeout_s=idle, backoff=Backoff(max_s=self.spec.limits.backoff_max_s),
            throttle=self.throttle, meta=meta, headers=dict(meta.spec.headers) or None)
        self.connections.append(conn)
        return conn

    @staticmethod
    def meta(conn: WsConnection) -> ConnMeta:
        return conn.meta    # typed Any on the connection; no cast() call on the hot path

    async def _open(self, conn: WsConnection) -> None:
        meta = self.meta(conn)
        self.on_connection_open(meta)
        live = [s for s in meta.subscriptions if self.is_available(s.market, s.symbol)]
        await self.send_paced(conn, self.subscribe_requests(meta, live))

    async def send_paced(self, conn: WsConnection, messages: list[str]) -> None:
        """Send requests on one connection at the venue's request rate."""
        interval = self.spec.limits.request_interval_s
        for i, text in enumerate(messages):
            if i and interval:
                await asyncio.sleep(interval)
            await conn.send(text)

    def batched(self, subs: list[Subscription]) -> list[list[Subscription]]:
        return [list(b) for b in batches(subs, self.spec.limits.args_per_request)]

    def send_soon(self, conn: WsConnection, text: str) -> None:
        """Fire-and-forget send from the synchronous message handler."""
        async def send() -> None:
            try:
                await conn.send(text)
            except Exception as exc:   # connection dropped: the reconnect resubscribes
                log.debug("%s: send failed: %r", conn.name, exc)
        self.spawn(send())

    # ---- the message loop --------------------------------------------------------------------
    def decode_other(self, raw: str | bytes) -> Any:
        """A frame JSON refuses: a venue's plain-text control frame (OKX ``pong``) or its second
        decoder (Kraken: exact decimals). Default: malformed."""
        raise ValueError("not JSON")

    def channel_of(self, msg: Any) -> Any:
        """The route key of a decoded message; None for control traffic."""
        raise NotImplementedError

    def on_control(self, conn: WsConnection, msg: Any) -> None:
        """Acks, pongs, errors, notices."""

    def handle(self, conn: WsConnection, raw: str | bytes) -> bool | None:
        """Decode -> count -> dispatch by channel. Every frame counts as a message; one that
        does not decode or parse is counted as malformed, logged and skipped. The first data
        message after a disconnect closes its gap. (One frame on the hottest path: orjson is
        called here, not behind a method.)"""
        self.stats.messages += 1
        try:
            try:
                msg = _loads(raw)
            except _JSONDecodeError:
                msg = self.decode_other(raw)
            key = self.channel_of(msg)
            if key is None:
                self.on_control(conn, msg)
                return False
            handler = self.routes.get(key)
            if handler is None:
                return False
            result = handler(conn, msg, raw)
        except Exception as exc:  # noqa: BLE001 - one bad message must never stop the feed
            self.malformed(raw, exc)
            result = True
        if self._awaiting_data and result is not False:
            self._data_resumed(conn)
        return result

    # ---- disconnects and gaps ----------------------------------------------------------------
    def _on_close(self, conn: WsConnection, reason: str) -> None:
        self.stats.reconnects += 1
        meta = self.meta(conn)
        cause = "idle" if reason.startswith("no data") else "disconnect"
        # The gap starts at the last data message, not at the detection: an idle watchdog
        # notices a silent connection only after its threshold, and backfill must cover that.
        start = None
        if conn.last_data_at:
            silent_s = asyncio.get_running_loop().time() - conn.last_data_at
            start = s_to_dt(time.time() - max(0.0, silent_s))
        gap = self.gaps.open(self.name, "*", meta.market, f"{self.name}:{meta.label}", cause,
                             start=start, detail=reason)
        self._awaiting_data[conn] = gap
        symbols = meta.symbols()
        # What was missed meanwhile: the connection gap covers (and backfills) it, so the first
        # trade after the reconnect is no second hole, and running candles are never final.
        self.trade_ids.forget((meta.market, s) for s in symbols)
        self.candles.drop(meta.market, symbols)
        self.on_disconnect(meta, reason)

    def on_disconnect(self, meta: ConnMeta, reason: str) -> None:
        """Hook: a connection dropped (its books must resync)."""

    def await_data(self, gap: Gap) -> None:
        """Close ``gap`` (and backfill it) once every connection delivers data again (collector
        restart), or ``RESTART_SETTLE_S`` after the first one did (a market that stays silent
        must not hold the backfill of the others)."""
        self._awaiting_data["*"] = gap
        self._restart_live = set()
        self._restart_first_at = None

    def _data_resumed(self, conn: WsConnection) -> None:
        gap = self._awaiting_data.pop(conn, None)
        if gap is not None:
            self._close_and_backfill(gap)
        if "*" in self._awaiting_data:
            # The REST backfill covers up to now: a connection not yet delivering would lose
            # what it misses until its first message, so wait for all of them.
            now = time.monotonic()
            self._restart_live.add(conn)
            if self._restart_first_at is None:
                self._restart_first_at = now
            if (all(c in self._restart_live for c in self.connections)
                    or now - self._restart_first_at >= RESTART_SETTLE_S):
                self._close_and_backfill(self._awaiting_data.pop("*"))

    def _close_and_backfill(self, gap: Gap) -> None:
        self.gaps.close(gap)
        if self.cfg.backfill:
            self.spawn(self.run_backfill(gap))

    # ---- book integrity ----------------------------------------------------------------------
    def book_lost_sync(self, market: str, symbol: str, cause: str, detail: str = "") -> None:
        """A book can no longer be trusted (sequence gap, checksum mismatch, crossed book):
        count it, mark it resyncing (``/realtime`` and ``/orderbook`` show that) and open its
        ledger gap; ``book_in_sync`` closes it. Snapshots are not sampled meanwhile."""
        self.stats.gaps += 1
        key = (market, symbol)
        self._books_resyncing.setdefault(key, time.time())
        book = self.books.get(key)
        if book is not None:
            book.synced = False
        self.gaps.open(self.name, symbol, market, "book", cause, detail=detail)
        log.warning("%s %s %s: book resync (%s: %s)", self.name, market, symbol, cause, detail)

    def book_in_sync(self, market: str, symbol: str) -> None:
        """The book of (market, symbol) was rebuilt from a fresh snapshot."""
        if self._books_resyncing.pop((market, symbol), None) is not None:
            self.stats.resyncs += 1
        gap = self.gaps.find_open(self.name, market, symbol, "book")
        if gap is not None:
            self.gaps.close(gap)        # a book cannot be backfilled: it is resynced

    def book_states(self) -> dict[str, BookState]:
        """Per book ``market:symbol``: state live | syncing (first snapshot pending) |
        resyncing (lost integrity or its connection), since when, and the last update id."""
        states: dict[str, BookState] = {}
        for (market, symbol), book in self.books.items():
            since = self._books_resyncing.get((market, symbol))
            if book.synced:
                state = "live"
            elif since is not None or book.update_id is not None:
                state = "resyncing"
            else:
                state = "syncing"
            states[f"{market}:{symbol}"] = {
                "state": state, "since": s_to_dt(since) if since else None,
                "update_id": book.update_id}
        return states

    # ---- lifecycle ---------------------------------------------------------------------------
    async def prepare(self) -> None:
        """Validate symbols, load contract sizes etc. before connecting (optional)."""

    def pollers(self) -> list[Coroutine[Any, Any, None]]:
        """REST polling loops (optional)."""
        return []

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.append(task)
        task.add_done_callback(self._forget_task)

    def _forget_task(self, task: asyncio.Task) -> None:
        if task in self._tasks:
            self._tasks.remove(task)

    def start_task(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(coro))

    async def run(self) -> None:
        await self.prepare()
        conns = self.build_connections()
        for conn in conns:
            self.start_task(conn.run())
            if self.cfg.rotate_after_s > 0:
                self.start_task(rotate_forever(self, conn, self.cfg.rotate_after_s))
        for coro in self.pollers():
            self.start_task(coro)
        self.start_task(sample_books(self))
        self.start_task(sample_liquidity(self))
        if self.trade_candles is not None:
            self.start_task(sample_trade_candles(self))
        await asyncio.gather(*self._tasks)

    async def stop(self) -> None:
        # Concurrently: each close waits for the closing handshake (up to close_timeout).
        await asyncio.gather(*(conn.stop() for conn in list(self.connections)),
                             return_exceptions=True)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def connection_status(self) -> dict[str, ConnectionStatus]:
        return {conn.name: {"connected": conn.connected.is_set(), "connects": conn.connects,
                            "disconnects": conn.disconnects, "last_error": conn.last_error}
                for conn in self.connections}
