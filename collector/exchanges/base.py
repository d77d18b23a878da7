"""What every exchange feed shares: record routing to the writer, malformed-message accounting,
connection wiring, REST budget, and the fixed-cadence book snapshot / liquidity sampler."""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Coroutine

import aiohttp
from pymongo.errors import PyMongoError

from collector import partition
from collector.gaps import Gap, GapLedger
from collector.connection import Backoff, ConnectThrottle, HeartbeatPolicy, MessageHandler, \
    OpenHandler, WsConnection
from collector.liquidity import compute_liquidity
from collector.orderbook import OrderBook
from collector.rest import RateBudget, RestClient, RestError
from collector.stats import Stats
from collector.writer import Writer
from common.schema import PERP, SPOT, TRADES, BookSnapshot, Record, Ticker, now_utc, s_to_dt
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
    gaps: GapLedger | None = None


# Expected worst-case silence per stream kind (seconds) -> the idle watchdog of a connection uses
# the shortest among its streams: books/tickers push every 100 ms-1 s, mark price every 1-3 s,
# candles every ~2 s, while trades on a quiet symbol can pause for minutes.
# Messages a rotation's replacement connection may hold back before the switch is forced.
ROTATION_HOLD_MAX = 50_000
# A restart gap closes (and is backfilled) when every connection delivers again, or this long
# after the first one did.
RESTART_SETTLE_S = 10.0

STREAM_IDLE_S = {"book": 10.0, "ticker": 20.0, "funding": 15.0, "kline": 30.0, "trades": 300.0}


class _HoldBack:
    """A rotation replacement's message handler: holds messages back until ``release``, then
    passes them (and everything after) to the feed's handler."""

    def __init__(self, handler: MessageHandler) -> None:
        self.handler = handler
        self.held: list[str | bytes] | None = []
        self.full = asyncio.Event()

    def __call__(self, conn: WsConnection, raw: str | bytes) -> bool | None:
        if self.held is None:
            return self.handler(conn, raw)
        self.held.append(raw)
        if len(self.held) >= ROTATION_HOLD_MAX:
            self.full.set()
        return True

    def release(self, conn: WsConnection) -> int:
        backlog, self.held = self.held or [], None
        for raw in backlog:
            self.handler(conn, raw)
        return len(backlog)


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
    # Markets whose trade ids are consecutive integers per symbol: where a backfill cannot
    # reach back to a gap's start, the number of trades lost is then exact.
    consecutive_trade_ids: ClassVar[tuple[str, ...]] = ()

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
        self.gaps = ctx.gaps if ctx.gaps is not None else GapLedger(ctx.writer)
        # Gaps that close when data flows again: connection -> its gap; "*" -> restart gap.
        self._awaiting_data: dict[Any, Gap] = {}
        self._restart_live: set[WsConnection] = set()     # connections live since a restart
        # (market, symbol) -> (id, ts) of the oldest trade of the last backfill page
        # (consecutive ids only).
        self._backfill_oldest: dict[tuple[str, str], tuple[int, Any]] = {}
        self._restart_first_at: float | None = None
        self.rotations = 0
        # Books that lost integrity and are resyncing: (market, symbol) -> epoch seconds since.
        self._books_resyncing: dict[tuple[str, str], float] = {}

    # ---- helpers for subclasses -------------------------------------------------------------
    def pair(self, symbol: str) -> str:
        pair = self._pairs.get(symbol)
        if pair is None:
            pair = self._pairs[symbol] = pair_from_symbol(symbol)
        return pair

    def owns(self, market: str, symbol: str, stream: str) -> bool:
        """Whether this process's partition owns the (market, symbol, stream) subscription
        (always true without ``CRYPTODATA_PARTITION``); see collector/partition.py."""
        return partition.owns(self.ctx.settings.partition, self.name, market, symbol, stream)

    def symbols(self, market: str) -> list[str]:
        """Configured native symbols of ``market`` that are not marked unavailable."""
        configured = self.cfg.spot_symbols if market == SPOT else self.cfg.perp_symbols
        return [s for s in configured if self.is_available(s)]

    def rest(self, base_url: str) -> RestClient:
        return RestClient(self.ctx.session, base_url, self.rest_budget)

    def book(self, market: str, symbol: str, *, keep_text: bool = False,
             keep_fragments: bool = False) -> OrderBook:
        key = (market, symbol)
        book = self.books.get(key)
        if book is None:
            book = self.books[key] = OrderBook(self.cfg.book_depth, keep_text=keep_text,
                                               keep_fragments=keep_fragments)
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

    def idle_timeout_for(self, kinds: list[str] | None) -> float:
        """Idle threshold of a connection: an explicitly configured ``idle_timeout_s`` wins,
        else the shortest expected silence among its stream kinds (STREAM_IDLE_S)."""
        if not kinds or "idle_timeout_s" in self.cfg.model_fields_set:
            return self.cfg.idle_timeout_s
        return min(STREAM_IDLE_S.get(k, self.cfg.idle_timeout_s) for k in kinds)

    def connection(self, name: str, url: str, *, on_message: MessageHandler,
                   on_open: OpenHandler | None = None,
                   heartbeat: HeartbeatPolicy = HeartbeatPolicy(),
                   idle_timeout_s: float | None = None,
                   kinds: list[str] | None = None, market: str = "*") -> WsConnection:
        feed = self

        def tracked(conn: WsConnection, raw: str | bytes) -> bool | None:
            result = on_message(conn, raw)
            if feed._awaiting_data and result is not False:
                feed._data_resumed(conn)
            return result

        conn = WsConnection(
            f"{self.name}:{name}", url, on_message=tracked, on_open=on_open,
            on_close=self._on_close, heartbeat=heartbeat,
            idle_timeout_s=idle_timeout_s or self.idle_timeout_for(kinds),
            backoff=Backoff(max_s=self.backoff_max_s), throttle=self.throttle)
        conn.market = market  # type: ignore[attr-defined]
        conn.label = name  # type: ignore[attr-defined]
        conn.spec = (name, url, tracked, on_open, heartbeat,  # type: ignore[attr-defined]
                     conn.idle_timeout_s)
        self.connections.append(conn)
        return conn

    def _on_close(self, conn: WsConnection, reason: str) -> None:
        self.stats.reconnects += 1
        cause = "idle" if reason.startswith("no data") else "disconnect"
        stream = f"{self.name}:{getattr(conn, 'label', conn.name)}"
        # The gap starts at the last data message, not at the detection: an idle watchdog
        # notices a silent connection only after its threshold, and backfill must cover that.
        start = None
        if conn.last_data_at:
            silent_s = asyncio.get_running_loop().time() - conn.last_data_at
            start = s_to_dt(time.time() - max(0.0, silent_s))
        gap = self.gaps.open(self.name, "*", getattr(conn, "market", "*"), stream, cause,
                             start=start, detail=reason)
        self._awaiting_data[conn] = gap
        self.on_disconnect(conn, reason)

    def on_disconnect(self, conn: WsConnection, reason: str) -> None:
        """Hook: a connection dropped (books on it must resync)."""

    # ---- book integrity (every exchange) -----------------------------------------------------
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

    def book_states(self) -> dict[str, dict[str, Any]]:
        """Per book ``market:symbol``: state live | syncing (first snapshot pending) |
        resyncing (lost integrity or its connection), since when, and the last update id."""
        states = {}
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
            self._spawn(self._run_backfill(gap))

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.append(task)
        task.add_done_callback(lambda t: t in self._tasks and self._tasks.remove(t))

    async def _run_backfill(self, gap: Gap) -> None:
        try:
            done = await self.backfill(gap)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a failed backfill leaves the gap marked not backfilled
            log.exception("%s: backfill of %s failed", self.name, gap.id)
            return
        if done:
            self.stats.backfills += 1
            self.gaps.mark_backfilled(gap)

    async def backfill(self, gap: Gap) -> bool:
        """Re-fetch over REST what ``gap`` missed and ``emit`` it (unique keys make overlaps
        harmless): trades since the gap start, closed candles since then, and on perps funding
        and open interest re-polled, each only in the partition that owns it. Books are not
        backfilled (they resync from a snapshot). Everything goes through the feed's
        RestClients, i.e. its shared RateBudget. Returns True if the gap is fully covered."""
        kinds = self.backfill_kinds(gap)
        if not kinds:
            return False
        markets = [SPOT, PERP] if gap.market == "*" else [gap.market]
        since = s_to_dt(gap.start.timestamp() - 1.0)
        complete = True
        short: list[tuple[str, str]] = []       # trade backfills that did not reach ``since``
        for market in markets:
            for symbol in self.symbols(market):
                if gap.symbol not in ("*", symbol):
                    continue
                owned = [k for k in kinds if self.owns_backfill(market, symbol, k)]
                try:
                    if "trades" in owned:
                        reached = await self.backfill_trades(market, symbol, since)
                        if not reached:
                            short.append((market, symbol))
                        complete &= reached
                    if "kline" in owned:
                        await self.backfill_candles(market, symbol, since)
                    if "derivatives" in owned and market == PERP:
                        await self.repoll_derivatives(symbol)
                except RestError as exc:
                    log.warning("%s: backfill %s %s failed: %s", self.name, market, symbol, exc)
                    complete = False
                except (KeyError, TypeError, ValueError, IndexError) as exc:
                    self.malformed(exc, exc)
                    complete = False
        log.info("%s: backfill of %s %s", self.name, gap.id, "complete" if complete else "partial")
        if short:
            self._spawn(self._count_trade_loss(gap, short))
        return complete

    async def _count_trade_loss(self, gap: Gap, short: list[tuple[str, str]]) -> None:
        """Trades a gap lost for good (its backfill could not reach back to the start): where
        ids are consecutive, exactly the ids between the last trade stored before the gap and
        the oldest one the exchange still had. Counted once MongoDB holds everything received
        before the gap (after an outage: the spool replayed); elsewhere the loss is unknown."""
        writer = self.writer
        while True:
            if (writer.db_available and not (writer.spool is not None and writer.spool)
                    and (writer.durable_until or 0.0) > gap.start.timestamp()):
                try:
                    lost, unknown = await self._trades_lost(gap, short)
                    break
                except PyMongoError as exc:
                    log.warning("%s: loss of %s not countable yet: %r", self.name, gap.id, exc)
            await asyncio.sleep(1.0)
        gap.extra.update(records_lost=sum(lost.values()), lost_by_stream=lost)
        if unknown:
            gap.extra["loss_unknown"] = unknown
        self.gaps.mark_backfilled(gap, False)
        log.warning("%s: gap %s lost %d trades for good (%s)%s", self.name, gap.id,
                    sum(lost.values()), lost, f"; unknown for {unknown}" if unknown else "")

    async def _trades_lost(self, gap: Gap, short: list[tuple[str, str]]
                           ) -> tuple[dict[str, int], list[str]]:
        """Per stream of ``short``: trades missing for good, or the stream listed as unknown."""
        lost: dict[str, int] = {}
        unknown: list[str] = []
        trades = self.writer.db[TRADES]
        for market, symbol in short:
            oldest = self._backfill_oldest.get((market, symbol))
            last = None
            key = {"exchange": self.name, "market": market, "symbol": symbol}
            if market in self.consecutive_trade_ids and oldest is not None:
                # The newest trade durable before the gap, then whatever is stored between it
                # and the oldest one re-fetched (a write in flight when the process died).
                last = await trades.find_one({**key, "received_at": {"$lt": gap.start}},
                                             {"trade_id": 1, "ts": 1}, sort=[("ts", -1)])
            if last is None:
                unknown.append(f"{market}:{symbol}")
                continue
            lo, (hi, hi_ts) = int(last["trade_id"]), oldest
            between = {int(d["trade_id"]) async for d in trades.find(
                {**key, "ts": {"$gte": last["ts"], "$lte": hi_ts}}, {"trade_id": 1})}
            missing = hi - lo - 1 - sum(1 for i in between if lo < i < hi)
            if missing > 0:
                lost[f"{market}:{symbol}"] = missing
        return lost, unknown

    def backfill_kinds(self, gap: Gap) -> tuple[str, ...]:
        """What a gap missed: nothing for a book (it resyncs), trades for a trade-id hole,
        everything (trades, kline, derivatives) for a connection or restart gap."""
        if gap.stream == "book":
            return ()
        if gap.stream == "trade":
            return ("trades",)
        return ("trades", "kline", "derivatives")

    def owns_backfill(self, market: str, symbol: str, kind: str) -> bool:
        """Whether this partition backfills ``kind`` (trades | kline | derivatives) of
        (market, symbol): the owner of the matching stream does."""
        if kind == "trades":
            return self.owns_trades(market, symbol)
        return self.owns(market, symbol, "funding" if kind == "derivatives" else kind)

    def owns_trades(self, market: str, symbol: str) -> bool:
        """Whether this partition collects the trades of (market, symbol)."""
        return self.owns(market, symbol, "trades")

    async def backfill_trades(self, market: str, symbol: str, since) -> bool:
        """Hook: emit the trades of (market, symbol) since ``since`` (aware datetime) from the
        exchange's REST API; True if the fetched page reaches back to ``since``."""
        return False

    async def backfill_candles(self, market: str, symbol: str, since) -> None:
        """Hook: emit the closed 1m candles of (market, symbol) since ``since``."""

    async def repoll_derivatives(self, symbol: str) -> None:
        """Hook: re-poll funding and open interest of a perpetual over REST."""

    def emit_backfilled_trades(self, trades: list, since, page_limit: int) -> bool:
        """Emit the trades of one REST page at or after ``since``; True if the page reaches
        back to ``since`` (it held older trades, or fewer than a full page)."""
        fresh = [t for t in trades if t.ts >= since]
        if trades and trades[0].market in self.consecutive_trade_ids:
            # Where the page starts: what is older is gone (see _count_trade_loss).
            first = min(trades, key=lambda t: int(t.trade_id))
            self._backfill_oldest[(first.market, first.symbol)] = (int(first.trade_id), first.ts)
        for trade in fresh:
            self.emit(trade)
        self.stats.backfilled_trades += len(fresh)
        return bool(trades) and (len(fresh) < len(trades) or len(trades) < page_limit)

    # ---- make-before-break rotation ----------------------------------------------------------
    async def _rotate_loop(self, conn: WsConnection) -> None:
        """Before the exchange's forced cut: open a replacement connection, wait until it
        delivers data, then stop the old one (no disconnect, no gap).

        Until the switch the replacement's messages are held back (bounded) and handed to the
        feed right after the old connection stopped, in order: both connections carry the same
        streams, and interleaving them could apply a book diff before its predecessor (a false
        sequence gap). What the held-back messages repeat is harmless: trades/candles dedupe on
        unique keys, book diffs already applied are stale and ignored."""
        every = self.cfg.rotate_after_s
        while True:
            await asyncio.sleep(every)
            name, url, handler, on_open, heartbeat, idle = conn.spec  # type: ignore[attr-defined]
            hold = _HoldBack(handler)
            new = WsConnection(conn.name, url, on_message=hold, on_open=on_open,
                               on_close=self._on_close, heartbeat=heartbeat, idle_timeout_s=idle,
                               backoff=Backoff(max_s=self.backoff_max_s), throttle=self.throttle)
            for attr in ("market", "label", "spec", "book_market"):
                if hasattr(conn, attr):
                    setattr(new, attr, getattr(conn, attr))
            self._tasks.append(asyncio.get_running_loop().create_task(new.run()))
            self.connections.append(new)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not hold.full.is_set() and not (
                    new.connected.is_set() and new.last_data_at > 0 and
                    asyncio.get_running_loop().time() - new.last_data_at < 1.0):
                await asyncio.sleep(0.05)
            if not new.connected.is_set():
                log.warning("%s: rotation failed (replacement not connected); retrying", conn.name)
                await new.stop()       # its run() returns on its own (never cancel: gathered)
                self.connections.remove(new)
                continue
            await conn.stop()           # stopping: no on_close, hence no gap; run() returns
            self.connections.remove(conn)
            released = hold.release(new)
            self.rotations += 1
            log.info("%s rotated (make-before-break, %d messages held back)", conn.name,
                     released)
            conn = new

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
        conns = self.build_connections()
        self._tasks = [loop.create_task(conn.run()) for conn in conns]
        if self.cfg.rotate_after_s > 0:
            self._tasks += [loop.create_task(self._rotate_loop(conn)) for conn in conns]
        self._tasks += [loop.create_task(coro) for coro in self.pollers()]
        self._tasks.append(loop.create_task(self._sample_books()))
        self._tasks.append(loop.create_task(self._sample_liquidity()))
        await asyncio.gather(*self._tasks)

    async def stop(self) -> None:
        # Concurrently: each close waits for the closing handshake (up to close_timeout).
        await asyncio.gather(*(conn.stop() for conn in list(self.connections)),
                             return_exceptions=True)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

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
