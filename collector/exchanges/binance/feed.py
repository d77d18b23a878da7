"""Binance feed: spot + USD-M perpetual over combined-stream WebSockets (``endpoints.SPEC``),
REST for depth snapshots, open interest, the initial funding value and backfill."""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any, Coroutine

import orjson

from collector.connection import WsConnection
from collector.exchanges.base import Feed, FeedContext
from collector.exchanges.binance import endpoints as ep
from collector.exchanges.binance import parsers
from collector.kit.books import SnapshotBooks, SymbolUnavailable
from collector.kit.spec import ConnMeta, Subscription
from collector.rest import RateBudget, RestError
from common.schema import PERP, SPOT, Funding, now_utc, received_now
from common.settings import ExchangeSettings

log = logging.getLogger(__name__)


class BinanceFeed(Feed):
    name = "binance"
    spec = ep.SPEC
    consecutive_trade_ids = (SPOT,)     # spot trade ids (the hole check relies on them too)

    def __init__(self, cfg: ExchangeSettings, ctx: FeedContext) -> None:
        super().__init__(cfg, ctx)
        self.spot_rest = self.rest(cfg.spot_rest_url, RateBudget(ep.SPOT_WEIGHT_PER_MINUTE))
        self.perp_rest = self.rest(cfg.perp_rest_url, RateBudget(ep.PERP_WEIGHT_PER_MINUTE))
        self.book_sync = SnapshotBooks(self, self._fetch_snapshot,
                                       use_prev_id=lambda market: market == PERP)
        self.mark_prices: dict[str, float] = {}
        self._subscribe_id = 0
        self._requests: dict[int, list[str]] = {}     # request id -> params, until answered
        self.routes = {"trade": self._on_trade, "aggTrade": self._on_trade,
                       "depthUpdate": self._on_depth, "24hrTicker": self._on_ticker,
                       "kline": self._on_kline, "markPriceUpdate": self._on_mark_price,
                       "serverShutdown": self._on_shutdown}

    # ---- setup -------------------------------------------------------------------------------
    async def prepare(self) -> None:
        """Skip unknown, delisted and non-linear symbols up front (reported once, in /health).
        One spot exchangeInfo (weight 20); if an unknown symbol fails it, one per symbol."""
        spot = self.configured_symbols(SPOT)
        if spot and not await self._check_spot(spot):
            for symbol in spot:
                await self._check_spot([symbol])
        if self.cfg.perp_symbols:
            try:
                info = await self.perp_rest.get(ep.PERP_EXCHANGE_INFO_PATH,
                                                weight=ep.PERP_EXCHANGE_INFO_WEIGHT)
                listed = parsers.contracts(info)
                for symbol in self.configured_symbols(PERP):
                    reason = parsers.not_linear_perpetual(listed.get(symbol))
                    if reason:
                        self.mark_unavailable(PERP, symbol, reason)
            except (RestError, KeyError, TypeError) as exc:
                # Try every symbol then: the depth snapshot reports unknown ones.
                log.warning("binance: futures exchangeInfo failed: %r", exc)

    async def _check_spot(self, symbols: list[str]) -> bool:
        """Mark the non-trading ``symbols``; False if the exchange named one of several unknown."""
        try:
            info = await self.spot_rest.get(ep.SPOT_EXCHANGE_INFO_PATH,
                                            {"symbols": orjson.dumps(symbols).decode()},
                                            weight=ep.SPOT_EXCHANGE_INFO_WEIGHT)
            for symbol, status in parsers.contract_statuses(info).items():
                if status != "TRADING":
                    self.mark_unavailable(SPOT, symbol, f"spot status {status}")
        except RestError as exc:
            if (reason := parsers.rejected_symbol(exc.payload)) and len(symbols) > 1:
                return False
            if reason:
                self.mark_unavailable(SPOT, symbols[0], reason)
            else:
                log.warning("binance: could not check %s: %s", symbols, exc)
        except (KeyError, TypeError) as exc:
            log.warning("binance: unexpected exchangeInfo for %s: %r", symbols, exc)
        return True

    def subscribe_requests(self, meta: ConnMeta, subs: list[Subscription]) -> list[str]:
        requests = []
        for batch in self.batched(subs):
            self._subscribe_id += 1
            params = self._requests[self._subscribe_id] = [self.arg_text(s) for s in batch]
            requests.append(orjson.dumps({"method": "SUBSCRIBE", "params": params,
                                          "id": self._subscribe_id}).decode())
        return requests

    def arg_text(self, sub: Subscription) -> str:
        return sub.channel.name.format(s=sub.symbol.lower())

    def on_disconnect(self, meta: ConnMeta, reason: str) -> None:
        # Diffs were missed while disconnected: every book on this connection resyncs.
        if meta.carries_books:
            self.book_sync.reset(meta.market, meta.symbols("book"))

    # ---- messages ----------------------------------------------------------------------------
    def channel_of(self, msg: dict[str, Any]) -> str | None:
        data = msg.get("data", msg)
        return data.get("e") if isinstance(data, dict) else None

    def on_control(self, conn: WsConnection, msg: Any) -> None:
        """Acks ``{"result": null, "id": N}``; errors nested as the servers send them
        (``{"error": {"code": 2, "msg": "Invalid request: invalid stream"}, "id": N}``) or flat
        as documented (``{"code": 2, "msg": ...}``): reported once with the refused streams."""
        error = msg["error"] if isinstance(msg.get("error"), dict) else msg if "code" in msg \
            else None
        params = self._requests.pop(msg.get("id"), None) or ()
        if error is not None:
            self.stats.error_once(self.name, f"{error.get('code')}: {error.get('msg')} (refused"
                                             f": {' '.join(params[:3]) or '-'}; {len(params)})")

    def _on_trade(self, conn: WsConnection, msg: dict, raw: Any) -> None:
        data = msg.get("data", msg)
        if data.get("X") == "INSURANCE_FUND":   # off-book liquidation fills
            return
        market = conn.meta.market
        if "t" in data:        # spot trade ids are consecutive per symbol
            trade_id, symbol = int(data["t"]), data["s"]
            if (hole := self.trade_ids.check((market, symbol), trade_id, trade_id,
                                             int(data["T"]))) is not None:
                self.trade_hole(market, symbol, hole)
        self.emit(parsers.parse_trade(data, market, received_now()))

    def _on_ticker(self, conn: WsConnection, msg: dict, raw: Any) -> None:
        ticker = parsers.parse_ticker(msg.get("data", msg), conn.meta.market,
                                      received_now())
        if ticker.bid is None:          # USD-M tickers carry no best bid/ask
            self.fill_top_of_book(ticker)
        self.emit(ticker)

    def _on_kline(self, conn: WsConnection, msg: dict, raw: Any) -> None:
        self.emit(parsers.parse_kline(msg.get("data", msg), conn.meta.market,
                                      received_now()))

    def _on_mark_price(self, conn: WsConnection, msg: dict, raw: Any) -> None:
        self._on_funding(parsers.parse_mark_price(msg.get("data", msg), received_now()))

    def _on_funding(self, funding: Funding) -> None:
        if funding.mark_price:
            self.mark_prices[funding.symbol] = funding.mark_price
        self.emit_derived(funding, funding.rate)

    def _on_shutdown(self, conn: WsConnection, msg: dict, raw: Any) -> bool:
        conn.reconnect("server shutdown notice")
        return False

    def _on_depth(self, conn: WsConnection, msg: dict, raw: Any) -> None:
        data = msg.get("data", msg)
        first, last, prev = parsers.depth_ids(data)
        self.book_sync.on_diff(conn.meta.market, data["s"], first, last, prev, data,
                               parsers.apply_depth, parsers.parse_depth)

    async def _fetch_snapshot(self, market: str, symbol: str):
        rest, path, limit, weight = (
            (self.spot_rest, ep.SPOT_DEPTH_PATH, ep.SPOT_DEPTH_LIMIT, ep.SPOT_DEPTH_WEIGHT)
            if market == SPOT else
            (self.perp_rest, ep.PERP_DEPTH_PATH, ep.PERP_DEPTH_LIMIT, ep.PERP_DEPTH_WEIGHT))
        try:
            payload = await rest.get(path, {"symbol": symbol, "limit": limit}, weight=weight)
        except RestError as exc:
            if reason := parsers.rejected_symbol(exc.payload):
                raise SymbolUnavailable(reason) from exc
            raise
        return parsers.parse_depth_snapshot(payload)

    async def stop(self) -> None:
        self.book_sync.cancel_all()
        await super().stop()

    # ---- REST: open interest poll and backfill -----------------------------------------------
    def _open_interest_owner(self, symbol: str) -> bool:
        return self.owns(PERP, symbol, ep.OPEN_INTEREST_STREAM)

    def pollers(self) -> list[Coroutine[Any, Any, None]]:
        return [self._poll_derivatives()] if any(map(self._open_interest_owner,
                                                     self.symbols(PERP))) else []

    async def _poll_derivatives(self) -> None:
        first = True
        while True:
            for symbol in [s for s in self.symbols(PERP) if self._open_interest_owner(s)]:
                try:
                    if first:   # funding is known before the first mark-price push
                        await self._poll_funding(symbol)
                    await self._poll_open_interest(symbol)
                except RestError as exc:
                    log.warning("binance: derivatives poll for %s failed: %s", symbol, exc)
                except (KeyError, TypeError, ValueError) as exc:
                    self.malformed(exc, exc)
            first = False
            await asyncio.sleep(self.ctx.poll_interval_s)

    async def _poll_funding(self, symbol: str) -> None:
        payload = await self.perp_rest.get(ep.PREMIUM_INDEX_PATH, {"symbol": symbol}, weight=1)
        self._on_funding(parsers.parse_premium_index(payload, now_utc()))

    async def _poll_open_interest(self, symbol: str) -> None:
        """Open interest in contracts (= base units on USD-M); its value at the mark price."""
        if symbol not in self.mark_prices:
            await self._poll_funding(symbol)
        payload = await self.perp_rest.get(ep.OPEN_INTEREST_PATH, {"symbol": symbol}, weight=1)
        self.emit(parsers.parse_open_interest(payload, now_utc(), self.mark_prices.get(symbol)))

    async def repoll_derivatives(self, symbol: str) -> None:
        await self._poll_funding(symbol)
        await self._poll_open_interest(symbol)

    def owns_backfill(self, market: str, symbol: str, kind: str) -> bool:
        if kind == "derivatives":      # open interest is polled by the openInterest owner
            return self._open_interest_owner(symbol)
        return super().owns_backfill(market, symbol, kind)

    async def backfill_trades(self, market: str, symbol: str, since: datetime) -> bool:
        """The newest page of trades (spot) / aggregate trades (USD-M), then older pages by
        ``fromId`` (ids are consecutive) until one reaches back to the gap start."""
        spot = market == SPOT
        rest = self.spot_rest if spot else self.perp_rest
        parse = parsers.parse_rest_trade if spot else parsers.parse_rest_agg_trade
        weight = ep.SPOT_TRADES_WEIGHT if spot else ep.PERP_AGG_TRADES_WEIGHT

        async def page(path: str, **query: int) -> list:
            rows = await rest.get(path, {"symbol": symbol, "limit": ep.BACKFILL_LIMIT, **query},
                                  weight=weight)
            received_at = now_utc()
            return [parse(row, symbol, received_at) for row in rows]

        older = ep.SPOT_HISTORICAL_TRADES_PATH if spot else ep.PERP_AGG_TRADES_PATH
        return await self.page_trades_back(
            lambda: page(ep.SPOT_TRADES_PATH if spot else ep.PERP_AGG_TRADES_PATH),
            lambda oldest: page(older, fromId=max(0, oldest - ep.BACKFILL_LIMIT)),
            since, ep.BACKFILL_LIMIT, self.cfg.backfill_max_pages)

    async def backfill_candles(self, market: str, symbol: str, since: datetime) -> None:
        rest, path, weight = (self.spot_rest, ep.SPOT_KLINES_PATH, ep.SPOT_KLINES_WEIGHT) \
            if market == SPOT else (self.perp_rest, ep.PERP_KLINES_PATH, ep.PERP_KLINES_WEIGHT)
        since_ms = int(since.timestamp() * 1000)
        rows = await rest.get(path, {"symbol": symbol, "interval": "1m",
                                     "startTime": since_ms - since_ms % 60_000,
                                     "limit": ep.BACKFILL_LIMIT}, weight=weight)
        received_at = now_utc()
        for row in rows:
            candle = parsers.parse_rest_kline(row, symbol, market, received_at)
            if candle.closed:
                self.emit(candle)
