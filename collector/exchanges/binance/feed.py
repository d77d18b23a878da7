"""Binance feed: spot + USD-M perpetual over the combined-stream WebSocket, REST for depth
snapshots, open interest and the initial funding value."""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Coroutine

import orjson

from collector import partition
from collector.booksync import Outcome, SnapshotDiffSync
from collector.connection import WsConnection
from collector.exchanges.base import Feed, FeedContext
from collector.exchanges.binance import endpoints as ep
from collector.exchanges.binance import parsers
from collector.rest import RateBudget, RestClient, RestError
from common.schema import PERP, SPOT, ms_to_dt, now_utc, received_now
from common.settings import ExchangeSettings

log = logging.getLogger(__name__)

FUNDING_HISTORY_EVERY_S = 60.0


class BinanceFeed(Feed):
    name = "binance"
    connect_interval_s = 0.5      # 300 connections / 5 min / IP
    consecutive_trade_ids = (SPOT,)     # spot trade ids (the hole check relies on them too)

    def __init__(self, cfg: ExchangeSettings, ctx: FeedContext) -> None:
        super().__init__(cfg, ctx)
        self.spot_rest = RestClient(ctx.session, cfg.spot_rest_url,
                                    RateBudget(ep.SPOT_WEIGHT_PER_MINUTE))
        self.perp_rest = RestClient(ctx.session, cfg.perp_rest_url,
                                    RateBudget(ep.PERP_WEIGHT_PER_MINUTE))
        self.syncs: dict[tuple[str, str], SnapshotDiffSync] = {}
        self._snapshot_tasks: dict[tuple[str, str], asyncio.Task] = {}
        self._funding_history_at: dict[str, float] = {}
        self._last_rate: dict[str, float] = {}
        self._subscribe_id = 0
        # Spot trade ids are sequential per symbol: symbol -> (last id, its time ms).
        self._last_trade: dict[str, tuple[int, int]] = {}

    # ---- setup -------------------------------------------------------------------------------
    async def prepare(self) -> None:
        """Skip unknown/delisted symbols up front (reported once, shown in /health)."""
        for symbol in self.cfg.spot_symbols:
            try:
                info = await self.spot_rest.get(ep.SPOT_EXCHANGE_INFO_PATH, {"symbol": symbol},
                                                weight=2)
                status = info["symbols"][0]["status"]
                if status != "TRADING":
                    self.mark_unavailable(symbol, f"spot status {status}")
            except RestError as exc:
                self._maybe_invalid(symbol, exc)
            except (KeyError, IndexError, TypeError) as exc:
                log.warning("binance: unexpected exchangeInfo for %s: %r", symbol, exc)
        if self.cfg.perp_symbols:
            try:
                info = await self.perp_rest.get(ep.PERP_EXCHANGE_INFO_PATH, weight=1)
                listed = {s["symbol"]: s.get("status") for s in info["symbols"]}
                for symbol in self.cfg.perp_symbols:
                    if listed.get(symbol) != "TRADING":
                        self.mark_unavailable(f"perp:{symbol}",
                                              f"USD-M status {listed.get(symbol, 'unknown symbol')}")
            except RestError as exc:
                # Not reachable now: try every symbol; the depth snapshot reports unknown ones.
                log.warning("binance: futures exchangeInfo failed: %s", exc)
            except (KeyError, TypeError) as exc:
                log.warning("binance: unexpected futures exchangeInfo: %r", exc)

    def _maybe_invalid(self, symbol: str, exc: RestError) -> None:
        payload = exc.payload if isinstance(exc.payload, dict) else {}
        if payload.get("code") == ep.INVALID_SYMBOL:
            self.mark_unavailable(symbol, payload.get("msg", "Invalid symbol."))
        else:
            log.warning("binance: could not check %s: %s", symbol, exc)

    def spot_symbols(self) -> list[str]:
        return [s for s in self.cfg.spot_symbols if self.is_available(s)]

    def perp_symbols(self) -> list[str]:
        return [s for s in self.cfg.perp_symbols if self.is_available(f"perp:{s}")]

    def _streams(self, market: str, symbols: list[str], templates: tuple[str, ...]) -> list[str]:
        """Stream names for these symbols, limited to this process's partition (if any)."""
        spec = self.ctx.settings.partition
        return partition.select(spec, self.name, market, (
            (s, t.split("@", 1)[1], t.format(s=s.lower())) for s in symbols for t in templates))

    def build_connections(self) -> list[WsConnection]:
        conns = []
        spot, perp = self.spot_symbols(), self.perp_symbols()
        streams = self._streams(SPOT, spot, ep.SPOT_STREAMS)
        if streams:
            conns.append(self._stream_connection("spot", self.cfg.spot_ws_url + ep.SPOT_WS_PATH,
                                                 streams, SPOT,
                                                 kinds=["ticker", "trades", "book", "kline"]))
        streams = self._streams(PERP, perp, ep.PERP_PUBLIC_STREAMS)
        if streams:
            conns.append(self._stream_connection(
                "perp-public", self.cfg.perp_ws_url + ep.PERP_PUBLIC_WS_PATH, streams, PERP,
                kinds=["book"]))
        streams = self._streams(PERP, perp, ep.PERP_MARKET_STREAMS)
        if streams:
            conns.append(self._stream_connection(
                "perp-market", self.cfg.perp_ws_url + ep.PERP_MARKET_WS_PATH, streams, PERP,
                books=False, kinds=["ticker", "trades", "funding", "kline"]))
        return conns

    def _stream_connection(self, label: str, url: str, streams: list[str], market: str,
                           books: bool = True, kinds: list[str] | None = None) -> WsConnection:
        async def on_open(conn: WsConnection) -> None:
            for start in range(0, len(streams), ep.MAX_PARAMS_PER_SUBSCRIBE):
                self._subscribe_id += 1
                await conn.send(orjson.dumps({
                    "method": "SUBSCRIBE",
                    "params": streams[start:start + ep.MAX_PARAMS_PER_SUBSCRIBE],
                    "id": self._subscribe_id}).decode())

        def on_message(conn: WsConnection, raw: str | bytes) -> bool | None:
            return self._on_message(conn, raw, market)

        conn = self.connection(label, url, on_message=on_message, on_open=on_open, kinds=kinds,
                               market=market)
        conn.book_market = market if books else None  # type: ignore[attr-defined]
        return conn

    def on_disconnect(self, conn: WsConnection, reason: str) -> None:
        market = getattr(conn, "book_market", None)
        if market is None:
            return
        # Diffs were missed while disconnected: every book on this connection resyncs.
        for (book_market, symbol), sync in self.syncs.items():
            if book_market == market:
                self._cancel_snapshot((book_market, symbol))
                sync.reset()

    # ---- messages ----------------------------------------------------------------------------
    def _on_message(self, conn: WsConnection, raw: str | bytes, market: str) -> bool | None:
        self.stats.messages += 1
        try:
            msg = orjson.loads(raw)
            data = msg.get("data", msg)
            event = data.get("e")
            if event == "trade" or event == "aggTrade":
                if data.get("X") == "INSURANCE_FUND":   # off-book liquidation fills
                    return True
                if "t" in data:
                    self._check_trade_id(data)
                self.emit(parsers.parse_trade(data, market, received_now()))
            elif event == "depthUpdate":
                self._on_depth(market, data)
            elif event == "24hrTicker":
                ticker = parsers.parse_ticker(data, market, received_now())
                if ticker.bid is None:
                    self._fill_bbo(ticker)
                self.emit(ticker)
            elif event == "kline":
                self.emit(parsers.parse_kline(data, market, received_now()))
            elif event == "markPriceUpdate":
                self._on_funding(parsers.parse_mark_price(data, received_now()))
            elif event == "serverShutdown":
                conn.reconnect("server shutdown notice")
                return False
            elif "result" in msg and "id" in msg:
                return False            # subscribe ack
            elif "code" in msg:
                self.stats.error_once(self.name, f"{msg.get('code')}: {msg.get('msg')}")
                return False
            else:
                raise ValueError(f"unknown message type {event!r}")
        except Exception as exc:  # noqa: BLE001 - one bad message must never stop the feed
            self.malformed(raw, exc)
        return True

    def _fill_bbo(self, ticker) -> None:
        """USD-M tickers carry no best bid/ask: take them from the live book when synced."""
        book = self.books.get((ticker.market, ticker.symbol))
        if book is not None and book.synced:
            bid, ask = book.best_bid(), book.best_ask()
            if bid and ask:
                ticker.bid, ticker.bid_size = bid
                ticker.ask, ticker.ask_size = ask

    def _on_funding(self, funding) -> None:
        """Every mark-price update refreshes ``latest``; history keeps one per minute or change."""
        now = funding.received_at.timestamp()
        symbol = funding.symbol
        history = (self._last_rate.get(symbol) != funding.rate or
                   now - self._funding_history_at.get(symbol, 0.0) >= FUNDING_HISTORY_EVERY_S)
        if history:
            self._funding_history_at[symbol] = now
            self._last_rate[symbol] = funding.rate
        self.emit(funding, history=history)

    def _on_depth(self, market: str, data: dict[str, Any]) -> None:
        symbol = data["s"]
        key = (market, symbol)
        sync = self.syncs.get(key)
        if sync is None:
            sync = self.syncs[key] = SnapshotDiffSync(self.book(market, symbol),
                                                      use_prev_id=(market == PERP))
        book = sync.book
        if book.synced:
            # Hot path: sequence check, then apply straight from the decoded message.
            last_id = int(data["u"])
            outcome = sync.admit(int(data["U"]), last_id, data.get("pu"))
            if outcome is Outcome.APPLIED:
                try:
                    book.apply_text(data["b"], data["a"], last_id)
                except (KeyError, IndexError, TypeError, ValueError):
                    # A malformed level may have been half applied: rebuild this book.
                    self._cancel_snapshot(key)
                    sync.reset()
                    raise
                return
        else:
            outcome = sync.on_diff(parsers.parse_depth(data))
        if outcome is Outcome.GAP:
            self.book_lost_sync(market, symbol, "sequence_gap",
                                f"depth gap at U={data.get('U')} pu={data.get('pu')}")
            sync.reset()
            sync.on_diff(parsers.parse_depth(data))
            outcome = Outcome.BUFFERED
        if outcome is Outcome.BUFFERED and key not in self._snapshot_tasks:
            self._snapshot_tasks[key] = asyncio.get_running_loop().create_task(
                self._load_snapshot(market, symbol, sync))

    def _cancel_snapshot(self, key: tuple[str, str]) -> None:
        task = self._snapshot_tasks.pop(key, None)
        if task is not None:
            task.cancel()

    async def _load_snapshot(self, market: str, symbol: str, sync: SnapshotDiffSync) -> None:
        """Fetch depth snapshots until one splices with the buffered diffs."""
        rest, path, limit, weight = (
            (self.spot_rest, ep.SPOT_DEPTH_PATH, ep.SPOT_DEPTH_LIMIT, ep.SPOT_DEPTH_WEIGHT)
            if market == SPOT else
            (self.perp_rest, ep.PERP_DEPTH_PATH, ep.PERP_DEPTH_LIMIT, ep.PERP_DEPTH_WEIGHT))
        key = (market, symbol)
        try:
            for attempt in range(10):
                # Let a few diffs buffer first so the snapshot is not older than the stream.
                await asyncio.sleep(0.2 + attempt * 0.5)
                try:
                    payload = await rest.get(path, {"symbol": symbol, "limit": limit},
                                             weight=weight)
                    bids, asks, last_id = parsers.parse_depth_snapshot(payload)
                except RestError as exc:
                    payload = exc.payload if isinstance(exc.payload, dict) else {}
                    if payload.get("code") == ep.INVALID_SYMBOL:
                        self.mark_unavailable(symbol if market == SPOT else f"perp:{symbol}",
                                              payload.get("msg", "Invalid symbol."))
                        return
                    log.warning("binance %s %s: snapshot failed: %s", market, symbol, exc)
                    continue
                except (KeyError, TypeError, ValueError) as exc:
                    self.malformed(payload, exc)
                    continue
                outcome = sync.on_snapshot(bids, asks, last_id)
                if outcome is Outcome.SYNCED:
                    self.book_in_sync(market, symbol)
                    log.info("binance %s %s: book synced at update id %d", market, symbol,
                             sync.book.update_id)
                    return
                if outcome is Outcome.GAP:
                    sync.reset()
            log.error("binance %s %s: could not sync the book after 10 snapshots", market, symbol)
        finally:
            if self._snapshot_tasks.get(key) is asyncio.current_task():
                del self._snapshot_tasks[key]

    # ---- trade-id continuity and backfill ----------------------------------------------------
    def _check_trade_id(self, data: dict[str, Any]) -> None:
        """Spot trade ids are consecutive per symbol: a hole is a gap (backfilled over REST)."""
        symbol, trade_id, at = data["s"], int(data["t"]), int(data["T"])
        last = self._last_trade.get(symbol)
        if last is not None and trade_id <= last[0]:
            return              # a repeat (rotation overlap, backfill): never move backwards
        self._last_trade[symbol] = (trade_id, at)
        if last is not None and trade_id > last[0] + 1:
            gap = self.gaps.record(self.name, symbol, SPOT, "trade", "sequence_gap",
                                   start=ms_to_dt(last[1]), end=ms_to_dt(at),
                                   detail=f"trade ids {last[0] + 1}..{trade_id - 1} missing")
            gap.extra["missing_ids"] = [last[0] + 1, trade_id - 1]
            if self.cfg.backfill:
                self._spawn(self._run_backfill(gap))

    def owns_trades(self, market: str, symbol: str) -> bool:
        stream = "trade" if market == SPOT else "aggTrade"
        return self.owns(market, symbol, stream)

    def owns_backfill(self, market: str, symbol: str, kind: str) -> bool:
        # Binance partitions by its stream names; open interest is REST-polled as openInterest.
        if kind == "kline":
            return self.owns(market, symbol, "kline_1m")
        if kind == "derivatives":
            return self.owns(market, symbol, "openInterest")
        return super().owns_backfill(market, symbol, kind)

    def symbols(self, market: str) -> list[str]:
        return self.spot_symbols() if market == SPOT else self.perp_symbols()

    async def backfill_trades(self, market: str, symbol: str, since) -> bool:
        """The newest 1000 trades (spot) / aggregate trades (USD-M): complete when the page
        reaches back to the gap start."""
        received_at = now_utc()
        if market == SPOT:
            rows = await self.spot_rest.get(ep.SPOT_TRADES_PATH,
                                            {"symbol": symbol, "limit": ep.BACKFILL_LIMIT},
                                            weight=ep.SPOT_TRADES_WEIGHT)
            trades = [parsers.parse_rest_trade(r, symbol, received_at) for r in rows]
        else:
            rows = await self.perp_rest.get(ep.PERP_AGG_TRADES_PATH,
                                            {"symbol": symbol, "limit": ep.BACKFILL_LIMIT},
                                            weight=ep.PERP_AGG_TRADES_WEIGHT)
            trades = [parsers.parse_rest_agg_trade(r, symbol, received_at) for r in rows]
        return self.emit_backfilled_trades(trades, since, ep.BACKFILL_LIMIT)

    async def backfill_candles(self, market: str, symbol: str, since) -> None:
        rest, path = (self.spot_rest, ep.SPOT_KLINES_PATH) if market == SPOT else \
            (self.perp_rest, ep.PERP_KLINES_PATH)
        since_ms = int(since.timestamp() * 1000)
        rows = await rest.get(path, {"symbol": symbol, "interval": "1m",
                                     "startTime": since_ms - since_ms % 60_000,
                                     "limit": ep.BACKFILL_LIMIT}, weight=ep.KLINES_WEIGHT)
        received_at = now_utc()
        for row in rows:
            candle = parsers.parse_rest_kline(row, symbol, market, received_at)
            if candle.closed:
                self.emit(candle)

    async def repoll_derivatives(self, symbol: str) -> None:
        received_at = now_utc()
        payload = await self.perp_rest.get(ep.PREMIUM_INDEX_PATH, {"symbol": symbol}, weight=1)
        self._on_funding(parsers.parse_premium_index(payload, received_at))
        payload = await self.perp_rest.get(ep.OPEN_INTEREST_PATH, {"symbol": symbol}, weight=1)
        mark = self.tickers.get((PERP, symbol))
        self.emit(parsers.parse_open_interest(payload, received_at, mark.last if mark else None))

    # ---- REST polling ------------------------------------------------------------------------
    def pollers(self) -> list[Coroutine[Any, Any, None]]:
        return [self._poll_derivatives()] if self._polled_symbols(self.cfg.perp_symbols) else []

    def _polled_symbols(self, symbols: list[str]) -> list[str]:
        """REST-polled perp data (open interest, initial funding) is partitioned like a stream."""
        spec = self.ctx.settings.partition
        return [s for s in symbols if partition.owns(spec, self.name, PERP, s, "openInterest")]

    async def _poll_derivatives(self) -> None:
        first = True
        while True:
            for symbol in self._polled_symbols(self.perp_symbols()):
                received_at = now_utc()
                try:
                    if first:   # funding is known before the first mark-price push
                        payload = await self.perp_rest.get(ep.PREMIUM_INDEX_PATH,
                                                           {"symbol": symbol}, weight=1)
                        self._on_funding(parsers.parse_premium_index(payload, received_at))
                    payload = await self.perp_rest.get(ep.OPEN_INTEREST_PATH,
                                                       {"symbol": symbol}, weight=1)
                    mark = self.tickers.get((PERP, symbol))
                    self.emit(parsers.parse_open_interest(
                        payload, received_at, mark.last if mark else None))
                except RestError as exc:
                    log.warning("binance: derivatives poll for %s failed: %s", symbol, exc)
                except (KeyError, TypeError, ValueError) as exc:
                    self.malformed(exc, exc)
            first = False
            await asyncio.sleep(self.ctx.poll_interval_s)
