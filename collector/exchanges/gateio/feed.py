"""Gate.io v4 feed: spot + USDT perpetual tickers, trades, 1m candles, funding (futures.tickers),
open interest (futures.contract_stats / tickers) and L2 books kept from ``order_book_update``
diffs spliced onto a REST snapshot by U/u (``SnapshotDiffSync``)."""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Coroutine

import orjson

from collector.booksync import Diff, Outcome, SnapshotDiffSync
from collector.connection import HeartbeatPolicy, WsConnection
from collector.exchanges.base import Feed
from collector.exchanges.gateio import endpoints as ep
from collector.exchanges.gateio import parsers as p
from collector.rest import RestError
from common.schema import PERP, SPOT, Candle, now_utc

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
    # Gate public REST: 200 requests / 10 s per endpoint; stay far below.
    rest_weight_per_window = 300.0
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
        self.spot_conn: WsConnection | None = None
        self.perp_conn: WsConnection | None = None
        self.spot_rest = self.rest(cfg.spot_rest_url) if cfg.spot_rest_url else None
        self.perp_rest = self.rest(cfg.perp_rest_url) if cfg.perp_rest_url else None

    # ---- setup -------------------------------------------------------------------------------
    async def prepare(self) -> None:
        for symbol in self.perp_symbols:
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
        return [self._poll_contracts()] if self.perp_symbols else []

    async def _poll_contracts(self) -> None:
        """Refresh contract size and funding schedule (next apply time, interval)."""
        while True:
            await asyncio.sleep(max(self.ctx.poll_interval_s, 30.0))
            for symbol in self.perp_symbols:
                if self.is_available(symbol):
                    await self._load_contract(symbol)

    def build_connections(self) -> list[WsConnection]:
        conns = []
        if self.spot_symbols and self.cfg.spot_ws_url:
            self.spot_conn = self.connection(
                "spot", self.cfg.spot_ws_url, on_message=self._on_message, on_open=self._open_spot,
                heartbeat=HeartbeatPolicy(app_ping=_pinger(ep.SPOT_PING),
                                          app_ping_interval_s=self.ping_interval_s))
            conns.append(self.spot_conn)
        if self.perp_symbols and self.cfg.perp_ws_url:
            self.perp_conn = self.connection(
                "perp", self.cfg.perp_ws_url, on_message=self._on_message, on_open=self._open_perp,
                heartbeat=HeartbeatPolicy(app_ping=_pinger(ep.FUT_PING),
                                          app_ping_interval_s=self.ping_interval_s))
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
        self._reset_market(SPOT if conn is self.spot_conn else PERP)

    @staticmethod
    def _request(channel: str, payload: list[str]) -> str:
        return orjson.dumps({"time": int(time.time()), "channel": channel, "event": "subscribe",
                             "payload": payload}).decode()

    async def _open_spot(self, conn: WsConnection) -> None:
        self._reset_market(SPOT)
        symbols = [s for s in self.spot_symbols if self.is_available(s)]
        if not symbols:
            return
        for symbol in symbols:
            # One request per symbol and channel: an error then affects that subscription only.
            await conn.send(self._request(ep.SPOT_TICKERS, [symbol]))
            await conn.send(self._request(ep.SPOT_TRADES, [symbol]))
            self._state(SPOT, symbol)
            await conn.send(self._request(ep.SPOT_BOOK, [symbol, ep.BOOK_INTERVAL]))
            # Candles take [interval, pair] - the reverse of the order book's argument order.
            await conn.send(self._request(ep.SPOT_CANDLES, [ep.CANDLE_INTERVAL, symbol]))

    async def _open_perp(self, conn: WsConnection) -> None:
        self._reset_market(PERP)
        symbols = [s for s in self.perp_symbols if self.is_available(s) and s in self.multipliers]
        if not symbols:
            return
        for symbol in symbols:
            await conn.send(self._request(ep.FUT_TICKERS, [symbol]))
            await conn.send(self._request(ep.FUT_TRADES, [symbol]))
            self._state(PERP, symbol)
            await conn.send(self._request(ep.FUT_BOOK, [symbol, ep.BOOK_INTERVAL, ep.BOOK_LEVEL]))
            await conn.send(self._request(ep.FUT_CANDLES, [ep.CANDLE_INTERVAL, symbol]))
            await conn.send(self._request(ep.FUT_STATS, [symbol, ep.STATS_INTERVAL]))

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
            received_at = now_utc()
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
                for ticker, funding, oi in p.parse_futures_tickers(
                        msg, received_at, self.multipliers, self.funding_info):
                    self.emit(ticker)
                    self._funding(funding, oi)
            elif channel == ep.FUT_CANDLES:
                for candle in p.parse_futures_candles(msg, received_at, self.multipliers):
                    self._candle(candle)
            elif channel == ep.FUT_STATS:
                for oi in p.parse_contract_stats(msg, received_at, self.multipliers):
                    self.emit(oi)
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

    def _funding(self, funding, oi) -> None:
        """Tickers arrive about once a second: store funding / OI on change or once per poll
        interval."""
        now = time.monotonic()
        previous = self._last_funding.get(funding.symbol)
        if previous is None or previous[1] != funding.rate or \
                now - previous[0] >= min(self.ctx.poll_interval_s, 60.0):
            self._last_funding[funding.symbol] = (now, funding.rate)
            self.emit(funding)
            if oi is not None:
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
            self._after_change(state)
            return
        outcome = sync.on_diff(Diff(first, last, None, bids, asks))
        if outcome is Outcome.BUFFERED:
            if state.fetch is None:
                state.fetch = asyncio.get_running_loop().create_task(self._fetch_snapshot(state))
        elif outcome is Outcome.GAP:
            self._resync(state, f"update id gap: U={first} after u={book.update_id}")
        elif outcome is Outcome.APPLIED:
            self._after_change(state)

    def _after_change(self, state: BookState) -> None:
        book = state.sync.book
        book.truncate()
        if book.crossed():
            self._resync(state, f"crossed book: bid {book.best_bid()} >= ask {book.best_ask()}")

    def _resync(self, state: BookState, reason: str) -> None:
        log.warning("%s: %s %s book resync: %s", self.name, state.market, state.symbol, reason)
        self.stats.gaps += 1
        self.stats.resyncs += 1
        state.resyncs += 1
        if state.fetch is not None:
            state.fetch.cancel()
            state.fetch = None
        state.sync.reset()
        # The next diff is buffered and starts a new snapshot fetch.

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
                    self._after_change(state)
                    return
                if outcome is Outcome.GAP:
                    # Buffered diffs do not continue from the snapshot: start over.
                    self.stats.gaps += 1
                    state.sync.reset()
                # SNAPSHOT_TOO_OLD (REST lags the stream) or gap: try again shortly.
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        finally:
            if state.fetch is asyncio.current_task():
                state.fetch = None
