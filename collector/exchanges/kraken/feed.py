"""Kraken feed: spot WebSocket v2 (ticker on top-of-book changes, trade, book with CRC32 checksum,
ohlc 1m) and Kraken Futures WebSocket v1 (ticker -> ticker/funding/open interest, trade, book
with seq check) from ``endpoints.SPEC``; REST backfill of trades, closed candles, funding and
open interest after a gap."""
from __future__ import annotations

from typing import Any

from collector.connection import WsConnection
from collector.exchanges.base import FeedContext
from collector.exchanges.kraken import endpoints as ep
from collector.exchanges.kraken import parsers as p
from collector.exchanges.kraken.books import SpotBooks
from collector.exchanges.kraken.futures_v1 import FuturesV1
from collector.exchanges.kraken.requests import FuturesRequests, SpotRequests
from collector.exchanges.kraken.rest import KrakenRest
from collector.kit.books import ResubscribeBooks
from collector.kit.spec import ConnMeta, Subscription
from collector.kit.trade_candles import TradeCandles
from common.schema import PERP, SPOT, Funding, OpenInterest, Ticker, received_now
from common.settings import KrakenSettings


class KrakenFeed(FuturesV1, KrakenRest):
    name = "kraken"
    spec = ep.SPEC

    def __init__(self, cfg: KrakenSettings, ctx: FeedContext) -> None:
        # One perpetual transport: the other's URL is blanked, so it is not planned.
        self.unified = cfg.perp_transport == "unified"
        unused = "perp_ws_url" if self.unified else "perp_unified_ws_url"
        super().__init__(cfg.model_copy(update={unused: ""}), ctx)
        self.book_depth = next((d for d in ep.SPOT_BOOK_DEPTHS if d >= cfg.book_depth),
                               ep.SPOT_BOOK_DEPTHS[-1])
        self.precision: dict[str, tuple[int, int]] = {}
        self.spot_books = SpotBooks(self)
        self.resync = ResubscribeBooks(self, self._resubscribe, cooldown_s=ep.RESYNC_COOLDOWN_S,
                                       retry_after_s=ep.RESYNC_RETRY_S)
        self.checksum_failures = 0
        self.spot_requests = SpotRequests()
        self.fut_seq: dict[str, int] = {}
        if self.configured_symbols(PERP):    # no perpetual candle channel: built from trades
            self.trade_candles = TradeCandles({PERP})
        self.routes = {
            ep.SPOT_BOOK: self._on_book, ep.SPOT_TICKER: self._on_ticker,
            ep.SPOT_TRADE: self._on_trade, ep.SPOT_OHLC: self._on_ohlc,
            ep.SPOT_INSTRUMENT: self._on_instrument, ep.SPOT_HEARTBEAT: _keepalive,
            ep.SPOT_STATUS: _keepalive, "fut:" + ep.FUT_HEARTBEAT: _keepalive,
            "fut:" + ep.FUT_TICKER: self._on_fut_ticker, "fut:" + ep.FUT_TRADE: self._on_fut_trade,
            "fut:trade_snapshot": self._on_fut_trades, "fut:book_snapshot": self._on_fut_snapshot,
            "fut:" + ep.FUT_BOOK: self._on_fut_book}

    def configured_symbols(self, market: str) -> list[str]:
        """Spot: configured names (XBT/USD, XXBTZUSD) as v2 names (BTC/USD), de-duplicated."""
        if market == SPOT:
            return list(dict.fromkeys(p.v2_symbol(s) for s in self.cfg.spot_symbols))
        return [s.upper() for s in self.cfg.perp_symbols]

    # ---- subscriptions -----------------------------------------------------------------------
    def arg_text(self, sub: Subscription) -> str:
        return f"{sub.channel.name}:{sub.symbol}"

    def _v2(self, market: str) -> bool:
        return market == SPOT or self.unified

    def _market(self, conn: WsConnection) -> str:
        """Market of a v2 message's connection (spot unless perpetuals are on unified too)."""
        return conn.meta.spec.market if self.unified else SPOT

    def _book_request(self, symbols: list[str], method: str = "subscribe",
                      market: str = SPOT) -> str:
        params: dict = {"snapshot": True} if method == "subscribe" else {}   # subscribe-only
        if market == PERP:
            params["asset_class"] = ep.UNIFIED_ASSET_CLASS
        return self.spot_requests.request(ep.SPOT_BOOK, symbols, method, depth=self.book_depth,
                                          **params)

    def on_connection_open(self, meta: ConnMeta) -> None:
        books = meta.symbols("book")
        for symbol in books:
            self.book(meta.market, symbol, keep_text=self._v2(meta.market)).reset()
        self.resync.reset(meta.market, books)
        if meta.market == PERP:
            self.fut_seq.clear()

    def subscribe_requests(self, meta: ConnMeta, subs: list[Subscription]) -> list[str]:
        by_channel: dict[str, list[str]] = {}
        for sub in subs:
            by_channel.setdefault(sub.channel.name, []).append(sub.symbol)
        if not self._v2(meta.market):
            fut = meta.extra["requests"] = FuturesRequests()
            return [fut.request("subscribe", ep.FUT_HEARTBEAT, None)] + [
                fut.request("subscribe", feed, s) for feed, ss in by_channel.items() for s in ss]
        books = by_channel.pop(ep.SPOT_BOOK, [])
        spot = meta.market == SPOT
        # Spot books wait for the pairs' precisions (instrument channel) unless known from a
        # previous connection; unified books use the digits as sent (no instrument channel).
        known = [s for s in books if s in self.precision] if spot else books
        meta.extra["books"] = set(known)
        requests = [self.spot_requests.request(ep.SPOT_INSTRUMENT, None, snapshot=True)] \
            if books and spot else []
        params, extra = (ep.SPOT_PARAMS, {}) if spot else \
            (ep.UNIFIED_PARAMS, {"asset_class": ep.UNIFIED_ASSET_CLASS})
        requests += [self.spot_requests.request(ch, ss, **params[ch], **extra)
                     for ch, ss in by_channel.items()]
        return requests + ([self._book_request(known, market=meta.market)] if known else [])

    def _subscribe_books(self, conn: WsConnection, only_known: bool) -> None:
        meta = self.meta(conn)
        ready = []
        for symbol in meta.symbols("book"):
            if symbol in meta.extra["books"] or not self.is_available(SPOT, symbol):
                continue
            if only_known and symbol not in self.precision:
                self.mark_unavailable(SPOT, symbol, "not listed in the instrument channel")
                continue
            ready.append(symbol)
        if ready:
            meta.extra["books"].update(ready)
            self.send_soon(conn, self._book_request(ready))

    async def _resubscribe(self, key: tuple[str, str]) -> None:
        """Unsubscribe then subscribe in one coroutine (a subscribe overtaken by its
        unsubscribe would leave the book unsubscribed for good)."""
        market, symbol = key
        conn = next((c for c in self.connections if c.connected.is_set() and
                     self.meta(c).market == market and symbol in self.meta(c).symbols("book")),
                    None)
        if conn is None:
            raise ConnectionError(f"{market} not connected")
        if self._v2(market):
            await self.send_paced(conn, [self._book_request([symbol], "unsubscribe", market),
                                         self._book_request([symbol], market=market)])
        else:
            fut = self.meta(conn).extra["requests"]
            await self.send_paced(conn, [fut.request(e, ep.FUT_BOOK, symbol)
                                         for e in ("unsubscribe", "subscribe")])

    def on_disconnect(self, meta: ConnMeta, reason: str) -> None:
        self.resync.reset(meta.market, meta.symbols("book"))

    async def stop(self) -> None:
        self.resync.cancel_all()
        await super().stop()

    # ---- messages ----------------------------------------------------------------------------
    decode_other = staticmethod(p.decode)   # what orjson refuses: the exact decoder judges

    def channel_of(self, msg: dict) -> str | None:
        channel = msg.get("channel")
        if channel is not None:
            return channel
        feed = msg.get("feed")
        return None if feed is None or "event" in msg else "fut:" + feed

    def on_control(self, conn: WsConnection, msg: dict) -> None:
        market = self.meta(conn).market
        if not self._v2(market):
            self._fut_control(conn, msg)
        elif msg.get("success") is False:
            error = str(msg.get("error", "unknown error"))
            method, channel = self.spot_requests.asked(msg)
            if method == "unsubscribe":     # e.g. "Subscription Not Found": nothing to drop
                return
            self.stats.error_once(self.name, f"spot {method} failed: {error}")
            symbol = (msg.get("result") or {}).get("symbol") or msg.get("symbol")
            if symbol and "not supported" in error.lower():
                self.mark_unavailable(market, symbol, error)
            if channel == ep.SPOT_INSTRUMENT or "instrument" in error.lower():
                # No precisions: subscribe the books anyway; checksums then use the numbers'
                # own digits (exact for prices/quantities sent with full precision).
                self._subscribe_books(conn, only_known=False)
        elif "error" in msg or "Error" in msg:
            self.stats.error_once(self.name, f"spot error: {msg.get('error') or msg.get('Error')}")

    def _on_instrument(self, conn: WsConnection, msg: dict, raw: Any) -> bool:
        self.precision.update(p.parse_instrument_pairs(msg))
        if msg.get("type") == "snapshot":
            self._subscribe_books(conn, only_known=True)
        return False

    def _on_book(self, conn: WsConnection, msg: dict, raw: str | bytes) -> None:
        self.spot_books.on_message(self._market(conn), msg, raw)

    def before_book_read(self) -> None:
        self.spot_books.verify_all()

    def _on_ticker(self, conn: WsConnection, msg: dict, raw: Any) -> None:
        received_at = received_now()
        if not self.unified or conn.meta.spec.market == SPOT:
            for item in msg["data"]:
                self.emit(p.parse_ticker(item, received_at))
            return
        for item in msg["data"]:
            self._derived(*p.parse_unified_ticker(item, received_at))

    def _on_trade(self, conn: WsConnection, msg: dict, raw: Any) -> None:
        # v2 trade ids are sequential per pair, but a per-trade id check (trade_ids.check)
        # costs a quarter of this path's throughput; disconnects are covered by their gaps.
        market = conn.meta.spec.market if self.unified else SPOT    # self._market, inlined
        for trade in p.parse_trades(msg, received_now(), market):
            self.emit(trade)

    def _on_ohlc(self, conn: WsConnection, msg: dict, raw: Any) -> None:
        received_at = received_now()
        for item in msg["data"]:
            self.emit_candle(p.parse_candle(item, received_at))

    def _on_fut_ticker(self, conn: WsConnection, msg: dict, raw: Any) -> None:
        self._derived(*p.parse_futures_ticker(msg, received_now()))

    def _derived(self, ticker: Ticker, funding: Funding | None, oi: OpenInterest | None) -> None:
        self.emit(ticker)
        if funding is not None:
            self.emit_derived(funding, funding.rate)
        if oi is not None:
            self.emit_derived(oi, oi.open_interest)

def _keepalive(conn: WsConnection, msg: Any, raw: Any) -> bool:
    """Heartbeats and status: keep-alive, not data (the idle watchdog must not count them)."""
    return False
