"""Gate.io v4 feed: spot + USDT perpetual tickers, trades, 1m candles, funding (futures.tickers),
open interest (futures.contract_stats) and L2 books kept from ``order_book_update`` diffs
spliced onto a REST snapshot by U/u (``SnapshotDiffSync``); REST backfill of trades, closed
candles, funding and open interest after a gap.

Open interest has one stored source, ``futures.contract_stats`` (1m): its points carry the
interval's bucket time and a USD value, and REST ``contract_stats`` serves the same series, so a
gap is backfilled onto the same keys. ``futures.tickers`` ``total_size`` (the same quantity,
stamped with the push time every second) is not stored: two sources in one collection would
interleave two timestamp grids.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Coroutine

import orjson

from collector.booksync import Diff, Outcome, SnapshotDiffSync
from collector.connection import HeartbeatPolicy, WsConnection
from collector.exchanges.legacy_base import Feed
from collector.exchanges.gateio import endpoints as ep
from collector.exchanges.gateio import parsers as p
from collector.rest import RestError
from common.schema import PERP, SPOT, Candle, now_utc, received_now

log = logging.getLogger(__name__)


def _pinger(channel: str) -> Callable[[], str]:
    return lambda: orjson.dumps({"time": int(time.time()), "channel": channel}).decode()


@dataclass
class BookState:
    market: str
    symbol: str
    sync: SnapshotDiffSync
    fetch: asyncio.Task | None = None
    snapshots: int = 0         # REST snapshots fetched (tests / status)
    resyncs: int = 0
    full_resets: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class GateioFeed(Feed):
    name = "gateio"
    connect_interval_s = ep.CONNECT_INTERVAL_S
    backoff_max_s = ep.BACKOFF_MAX_S
    rest_weight_per_window = ep.REST_CALLS
    rest_window_s = ep.REST_WINDOW_S
    ping_interval_s = ep.PING_INTERVAL_S

    def __init__(self, cfg, ctx) -> None:
        super().__init__(cfg, ctx)
        self.spot_symbols = [s.upper() for s in cfg.spot_symbols]
        self.perp_symbols = [s.upper() for s in cfg.perp_symbols]
        self.multipliers: dict[str, float] = {}
        self.funding_info: dict[str, dict[str, Any]] = {}
        self.states: dict[tuple[str, str], BookState] = {}
        self._candles: dict[tuple[str, str, str], Candle] = {}
        self._last_funding: dict[str, tuple[float, float]] = {}   # symbol -> (monotonic, rate)
        self._last_oi: dict[str, float] = {}     # symbol -> newest stats bucket (epoch s)
        self.spot_conn: WsConnection | None = None
        self.perp_conn: WsConnection | None = None
        # One budget (the base's) for both: same host, per-IP limits.
        self.spot_rest = self.rest(cfg.spot_rest_url) if cfg.spot_rest_url else None
        self.perp_rest = self.rest(cfg.perp_rest_url) if cfg.perp_rest_url else None

    # ---- subscriptions (this partition's share) ----------------------------------------------
    def symbols(self, market: str) -> list[str]:
        configured = self.spot_symbols if market == SPOT else self.perp_symbols
        return [s for s in configured if self.is_available(s)]

    def spot_subscriptions(self) -> dict[str, list[str]]:
        """Channel -> the pairs this partition subscribes on it."""
        symbols = self.symbols(SPOT)
        return {ch: [s for s in symbols if self.owns(SPOT, s, kind)]
                for ch, kind in ep.SPOT_KINDS.items()}

    def perp_subscriptions(self) -> dict[str, list[str]]:
        symbols = self.symbols(PERP)
        return {ch: [s for s in symbols if self.owns(PERP, s, kind)]
                for ch, kind in ep.FUT_KINDS.items()}

    def contract_symbols(self) -> list[str]:
        """Contracts whose size (and funding schedule) this partition needs: any owned stream."""
        owned = {s for symbols in self.perp_subscriptions().values() for s in symbols}
        return [s for s in self.symbols(PERP) if s in owned]

    # ---- setup -------------------------------------------------------------------------------
    async def prepare(self) -> None:
        for symbol in self.contract_symbols():
            await self._load_contract(symbol, initial=True)

    async def _load_contract(self, symbol: str, initial: bool = False) -> None:
        try:
            body = await self.perp_rest.get(ep.FUT_CONTRACT_REST.format(contract=symbol))
            info = p.parse_contract(body)
        except RestError as exc:
            if exc.status in (400, 404):
                self.mark_unavailable(symbol, f"contract lookup failed: {exc.payload!r}")
                return
            if initial or symbol not in self.multipliers:
                default = ep.DEFAULT_QUANTO_MULTIPLIER.get(symbol)
                if default is None:
                    self.mark_unavailable(symbol, f"no contract size known: {exc}")
                    return
                log.warning("%s: %s contract size unavailable (%s); using default %s",
                            self.name, symbol, exc, default)
                self.multipliers[symbol] = default
            return
        except Exception as exc:   # malformed contract document
            self.malformed(symbol, exc)
            self.multipliers.setdefault(symbol, ep.DEFAULT_QUANTO_MULTIPLIER.get(symbol, 0.0))
            return
        self.multipliers[symbol] = info.pop("multiplier")
        self.funding_info[symbol] = info

    def pollers(self) -> list[Coroutine[Any, Any, None]]:
        return [self._poll_contracts()] if self.contract_symbols() else []

    async def _poll_contracts(self) -> None:
        """Refresh contract size and funding schedule (next apply time, interval)."""
        while True:
            await asyncio.sleep(max(self.ctx.poll_interval_s, 30.0))
            for symbol in self.contract_symbols():
                await self._load_contract(symbol)

    def build_connections(self) -> list[WsConnection]:
        conns = []
        spot = [ch for ch, symbols in self.spot_subscriptions().items() if symbols]
        if spot and self.cfg.spot_ws_url:
            self.spot_conn = self.connection(
                "spot", self.cfg.spot_ws_url, on_message=self._on_message, on_open=self._open_spot,
                heartbeat=HeartbeatPolicy(app_ping=_pinger(ep.SPOT_PING),
                                          app_ping_interval_s=self.ping_interval_s),
                kinds=sorted({ep.IDLE_KINDS[ep.SPOT_KINDS[ch]] for ch in spot}), market=SPOT)
            conns.append(self.spot_conn)
        perp = [ch for ch, symbols in self.perp_subscriptions().items() if symbols]
        if perp and self.cfg.perp_ws_url:
            self.perp_conn = self.connection(
                "perp", self.cfg.perp_ws_url, on_message=self._on_message, on_open=self._open_perp,
                heartbeat=HeartbeatPolicy(app_ping=_pinger(ep.FUT_PING),
                                          app_ping_interval_s=self.ping_interval_s),
                kinds=sorted({ep.IDLE_KINDS[ep.FUT_KINDS[ch]] for ch in perp}), market=PERP)
            conns.append(self.perp_conn)
        return conns

    def _state(self, market: str, symbol: str) -> BookState:
        key = (market, symbol)
        state = self.states.get(key)
        if state is None:
            state = self.states[key] = BookState(
                market, symbol, SnapshotDiffSync(self.book(market, symbol), use_prev_id=False))
        return state

    def _reset_market(self, market: str) -> None:
        for state in self.states.values():
            if state.market == market:
                if state.fetch is not None:
                    state.fetch.cancel()
                    state.fetch = None
                state.sync.reset()

    def on_disconnect(self, conn: WsConnection, reason: str) -> None:
        market = SPOT if conn is self.spot_conn else PERP
        self._reset_market(market)
        # The running candles missed trades: never store them as final (backfill closes them).
        for key in [k for k in self._candles if k[0] == market]:
            del self._candles[key]

    @staticmethod
    def _request(channel: str, payload: list[str]) -> str:
        return orjson.dumps({"time": int(time.time()), "channel": channel, "event": "subscribe",
                             "payload": payload}).decode()

    @staticmethod
    def _payload(channel: str, symbol: str) -> list[str]:
        """Each channel's own argument order (Gate rejects another order)."""
        if channel in (ep.SPOT_CANDLES, ep.FUT_CANDLES):
            return [ep.CANDLE_INTERVAL, symbol]          # [interval, pair]
        if channel == ep.SPOT_BOOK:
            return [symbol, ep.BOOK_INTERVAL]            # [pair, interval]
        if channel == ep.FUT_BOOK:
            return [symbol, ep.BOOK_INTERVAL, ep.BOOK_LEVEL]
        if channel == ep.FUT_STATS:
            return [symbol, ep.STATS_INTERVAL]           # [contract, interval]
        return [symbol]

    async def _subscribe(self, conn: WsConnection, market: str,
                         subs: dict[str, list[str]], symbols: list[str]) -> None:
        book_channel = ep.SPOT_BOOK if market == SPOT else ep.FUT_BOOK
        for symbol in symbols:
            # One request per symbol and channel: an error then affects that subscription only.
            for channel, owned in subs.items():
                if symbol in owned:
                    if channel == book_channel:
                        self._state(market, symbol)
                    await conn.send(self._request(channel, self._payload(channel, symbol)))

    async def _open_spot(self, conn: WsConnection) -> None:
        self._reset_market(SPOT)
        await self._subscribe(conn, SPOT, self.spot_subscriptions(), self.symbols(SPOT))

    async def _open_perp(self, conn: WsConnection) -> None:
        self._reset_market(PERP)
        symbols = [s for s in self.symbols(PERP) if s in self.multipliers]
        await self._subscribe(conn, PERP, self.perp_subscriptions(), symbols)

    # ---- messages ----------------------------------------------------------------------------
    def _on_message(self, conn: WsConnection, raw: str | bytes) -> bool | None:
        self.stats.messages += 1
        try:
            msg = orjson.loads(raw)
            event = msg.get("event")
            channel = msg.get("channel", "")
            if msg.get("type") == "upgrade":
                conn.reconnect("service upgrade notice")
                return False
            if msg.get("error"):
                self._error(msg)
                return False
            if event != "update":
                return False   # subscribe/unsubscribe acks, pongs
            received_at = received_now()
            if channel == ep.SPOT_BOOK:
                self._book_update(SPOT, *p.parse_spot_book_update(msg))
            elif channel == ep.FUT_BOOK:
                symbol = msg["result"]["s"]
                self._book_update(PERP, *p.parse_futures_book_update(msg, self.multipliers[symbol]))
            elif channel == ep.SPOT_TRADES:
                self.emit(p.parse_spot_trade(msg, received_at))
            elif channel == ep.SPOT_TICKERS:
                self.emit(p.parse_spot_ticker(msg, received_at))
            elif channel == ep.SPOT_CANDLES:
                self._candle(p.parse_spot_candle(msg, received_at))
            elif channel == ep.FUT_TRADES:
                for trade in p.parse_futures_trades(msg, received_at, self.multipliers):
                    self.emit(trade)
            elif channel == ep.FUT_TICKERS:
                for ticker, funding in p.parse_futures_tickers(
                        msg, received_at, self.multipliers, self.funding_info):
                    self.emit(ticker)
                    self._funding(funding)
            elif channel == ep.FUT_CANDLES:
                for candle in p.parse_futures_candles(msg, received_at, self.multipliers):
                    self._candle(candle)
            elif channel == ep.FUT_STATS:
                for oi in p.parse_contract_stats(msg, received_at, self.multipliers):
                    self._open_interest(oi)
            else:
                return False
        except Exception as exc:
            self.malformed(raw, exc)
        return None

    def _error(self, msg: dict) -> None:
        """An exchange error answers one request: log once, count, leave other streams alone."""
        error = msg.get("error") or {}
        text = error.get("message", str(error)) if isinstance(error, dict) else str(error)
        payload = msg.get("payload") or []
        self.stats.error_once(self.name, f"{msg.get('channel')} {payload}: "
                                         f"{error.get('code') if isinstance(error, dict) else ''} "
                                         f"{text}")
        lowered = text.lower()
        if "unknown" in lowered or "invalid" in lowered and ("pair" in lowered or
                                                             "contract" in lowered):
            # Each subscription names one symbol, so only that symbol is affected.
            symbols = [item for item in payload
                       if item in self.spot_symbols or item in self.perp_symbols]
            named = [item for item in symbols if item in text]
            for item in named or (symbols if len(symbols) == 1 else []):
                self.mark_unavailable(item, text)

    def _funding(self, funding) -> None:
        """Tickers arrive about once a second: store funding on change or once per poll
        interval."""
        now = time.monotonic()
        previous = self._last_funding.get(funding.symbol)
        if previous is None or previous[1] != funding.rate or \
                now - previous[0] >= min(self.ctx.poll_interval_s, 60.0):
            self._last_funding[funding.symbol] = (now, funding.rate)
            self.emit(funding)

    def _open_interest(self, oi) -> None:
        ts = oi.ts.timestamp()
        if ts > self._last_oi.get(oi.symbol, 0.0):
            self._last_oi[oi.symbol] = ts
        self.emit(oi)

    def _candle(self, candle: Candle) -> None:
        key = (candle.market, candle.symbol, candle.interval)
        previous = self._candles.get(key)
        if previous is not None and candle.ts < previous.ts:
            return
        if previous is not None and candle.ts > previous.ts and not previous.closed:
            previous.closed = True
            self.emit(previous)
        self._candles[key] = candle
        self.emit(candle)

    # ---- order books -------------------------------------------------------------------------
    def _book_update(self, market: str, symbol: str, first: int, last: int, bids, asks,
                     full: bool) -> None:
        state = self.states.get((market, symbol))
        if state is None:
            return
        sync = state.sync
        book = sync.book
        if full:
            # A full snapshot pushed by the server replaces the whole book.
            state.full_resets += 1
            if state.fetch is not None:
                state.fetch.cancel()
                state.fetch = None
            sync.reset()
            sync.on_snapshot(bids, asks, last)
            self.book_in_sync(market, symbol)
            self._after_change(state)
            return
        outcome = sync.on_diff(Diff(first, last, None, bids, asks))
        if outcome is Outcome.BUFFERED:
            if state.fetch is None:
                state.fetch = asyncio.get_running_loop().create_task(self._fetch_snapshot(state))
        elif outcome is Outcome.GAP:
            self._resync(state, "sequence_gap", f"U={first} after u={book.update_id}")
        elif outcome is Outcome.APPLIED:
            self._after_change(state)

    def _after_change(self, state: BookState) -> None:
        book = state.sync.book
        book.truncate()
        if book.crossed():
            self._resync(state, "crossed",
                         f"bid {book.best_bid()[0]} >= ask {book.best_ask()[0]}")

    def _resync(self, state: BookState, cause: str, detail: str) -> None:
        """Drop this book and rebuild it from a REST snapshot (the next diff is buffered and
        starts the fetch); other books are untouched."""
        state.resyncs += 1
        if state.fetch is not None:
            state.fetch.cancel()
            state.fetch = None
        state.sync.reset()
        self.book_lost_sync(state.market, state.symbol, cause, detail)

    async def _fetch_snapshot(self, state: BookState) -> None:
        delay = 0.2
        try:
            while not state.sync.synced:
                try:
                    if state.market == SPOT:
                        body = await self.spot_rest.get(ep.SPOT_BOOK_REST, {
                            "currency_pair": state.symbol, "limit": ep.SNAPSHOT_LIMIT,
                            "with_id": "true"})
                        snap_id, bids, asks = p.parse_spot_book_snapshot(body)
                    else:
                        body = await self.perp_rest.get(ep.FUT_BOOK_REST, {
                            "contract": state.symbol, "limit": ep.SNAPSHOT_LIMIT,
                            "with_id": "true"})
                        snap_id, bids, asks = p.parse_futures_book_snapshot(
                            body, self.multipliers[state.symbol])
                except RestError as exc:
                    self.stats.error_once(self.name, f"order book snapshot {state.symbol}: {exc}")
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                except (KeyError, TypeError, ValueError) as exc:
                    self.malformed(body, exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                state.snapshots += 1
                if state.sync.synced:
                    return   # a full:true push arrived meanwhile
                outcome = state.sync.on_snapshot(bids, asks, snap_id)
                if outcome is Outcome.SYNCED:
                    state.fetch = None
                    self.book_in_sync(state.market, state.symbol)
                    self._after_change(state)
                    return
                if outcome is Outcome.GAP:
                    # Buffered diffs do not continue from the snapshot: start over.
                    state.sync.reset()
                    self.book_lost_sync(state.market, state.symbol, "sequence_gap",
                                        f"buffered diffs do not continue snapshot {snap_id}")
                # SNAPSHOT_TOO_OLD (REST lags the stream) or gap: try again shortly.
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        finally:
            if state.fetch is asyncio.current_task():
                state.fetch = None

    # ---- REST backfill -----------------------------------------------------------------------
    async def backfill_trades(self, market: str, symbol: str, since: datetime) -> bool:
        """Trades in [since, now], newest first, paged; complete when a page is not full."""
        window = {"limit": ep.TRADES_PAGE, "from": int(since.timestamp()),
                  "to": int(time.time()) + 1}
        for page in range(ep.TRADES_MAX_PAGES):
            if market == SPOT:
                body = await self.spot_rest.get(ep.SPOT_TRADES_REST, {
                    "currency_pair": symbol, **window, "page": page + 1})
                trades = p.parse_rest_spot_trades(body, now_utc())
            else:
                body = await self.perp_rest.get(ep.FUT_TRADES_REST, {
                    "contract": symbol, **window, "offset": page * ep.TRADES_PAGE})
                trades = p.parse_rest_futures_trades(body, now_utc(), self.multipliers)
            self.emit_backfilled_trades(trades, since, ep.TRADES_PAGE)
            if len(body) < ep.TRADES_PAGE:     # internal trades are skipped, not missing
                return True
        return False

    def owns_backfill(self, market: str, symbol: str, kind: str) -> bool:
        # Candles and derivatives: the hooks below check the owner of each stream they re-fetch.
        return kind != "trades" or self.owns_trades(market, symbol)

    async def backfill_candles(self, market: str, symbol: str, since: datetime) -> None:
        """Closed 1m candles from the gap's minute (at most the last 1000 points)."""
        if not self.owns(market, symbol, ep.SPOT_KINDS[ep.SPOT_CANDLES]):
            return
        start = max(int(since.timestamp()) // 60 * 60,
                    (int(time.time()) // 60 - ep.CANDLES_MAX_POINTS + 1) * 60)
        if market == SPOT:
            body = await self.spot_rest.get(ep.SPOT_CANDLES_REST, {
                "currency_pair": symbol, "interval": ep.CANDLE_INTERVAL, "from": start})
            candles = p.parse_rest_spot_candles(body, symbol, now_utc())
        else:
            body = await self.perp_rest.get(ep.FUT_CANDLES_REST, {
                "contract": symbol, "interval": ep.CANDLE_INTERVAL, "from": start})
            candles = p.parse_rest_futures_candles(body, symbol, now_utc(), self.multipliers)
        for candle in candles:
            self.emit(candle)

    async def repoll_derivatives(self, symbol: str) -> None:
        """Funding from the contract document (owner of futures.tickers); open interest from REST
        contract_stats since the newest streamed point (owner of futures.contract_stats)."""
        if self.owns(PERP, symbol, ep.FUT_KINDS[ep.FUT_TICKERS]):
            body = await self.perp_rest.get(ep.FUT_CONTRACT_REST.format(contract=symbol))
            self.emit(p.parse_contract_funding(body, now_utc()))
        if self.owns(PERP, symbol, ep.FUT_KINDS[ep.FUT_STATS]):
            params: dict[str, Any] = {"contract": symbol, "interval": ep.STATS_REST_INTERVAL,
                                      "limit": ep.STATS_REST_LIMIT}
            if symbol in self._last_oi:
                params["from"] = int(self._last_oi[symbol]) + 1
            body = await self.perp_rest.get(ep.FUT_STATS_REST, params)
            for oi in p.parse_rest_contract_stats(body, symbol, now_utc(), self.multipliers):
                self._open_interest(oi)
