"""Kraken feed: spot WebSocket v2 (ticker on top-of-book changes, trade, book with CRC32 checksum,
ohlc 1m) and Kraken Futures WebSocket v1 (ticker -> ticker/funding/open interest, trade, book
with seq check) from ``endpoints.SPEC``; REST backfill of trades, closed candles, funding and
open interest after a gap."""
from __future__ import annotations

import logging
from collections import OrderedDict, deque
from datetime import datetime, timedelta
from typing import Any

import orjson

from collector.connection import WsConnection
from collector.exchanges.base import Feed, FeedContext
from collector.exchanges.kraken import endpoints as ep
from collector.exchanges.kraken import parsers as p
from collector.kit.books import ResubscribeBooks
from collector.kit.spec import ConnMeta, Subscription
from collector.rest import RateBudget, RestClient, RestError
from common.schema import PERP, SPOT, now_utc, received_now
from common.settings import ExchangeSettings

log = logging.getLogger(__name__)

SENT_REQUESTS_KEPT = 4096       # spot requests remembered by req_id (to judge their replies)


class KrakenFeed(Feed):
    name = "kraken"
    spec = ep.SPEC

    def __init__(self, cfg: ExchangeSettings, ctx: FeedContext) -> None:
        super().__init__(cfg, ctx)
        self.book_depth = next((d for d in ep.SPOT_BOOK_DEPTHS if d >= cfg.book_depth),
                               ep.SPOT_BOOK_DEPTHS[-1])
        self.spot_rest = RestClient(ctx.session, cfg.spot_rest_url,
                                    RateBudget(ep.SPOT_REST_CALLS, ep.SPOT_REST_WINDOW_S),
                                    rate_limited=p.rest_rate_limit)
        self.perp_rest = RestClient(ctx.session, cfg.perp_rest_url,
                                    RateBudget(ep.FUT_REST_CALLS, ep.FUT_REST_WINDOW_S))
        self.precision: dict[str, tuple[int, int]] = {}
        self.price_texts: p.PriceTexts = {}
        self.resync = ResubscribeBooks(self, self._resubscribe, cooldown_s=ep.RESYNC_COOLDOWN_S,
                                       retry_after_s=ep.RESYNC_RETRY_S)
        self.checksum_failures = 0
        self._fut_seq: dict[str, int] = {}
        self._req_id = 0
        # req_id -> (method, channel) of the spot requests sent: a reply is judged by what was
        # asked (a failed unsubscribe comes back as method "subscribe").
        self._sent: OrderedDict[int, tuple[str, str]] = OrderedDict()
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

    async def prepare(self) -> None:
        """Validate the futures symbols against the instrument list (spot symbols are checked
        by the WebSocket). If the list is unreachable, go ahead: subscribe errors mark them."""
        if not self.cfg.perp_symbols or not self.cfg.perp_rest_url:
            return
        try:
            listed = p.parse_futures_instruments(await self.perp_rest.get(ep.FUT_INSTRUMENTS_REST))
        except (RestError, KeyError, TypeError, ValueError, AttributeError) as exc:
            log.warning("kraken: futures instrument list unavailable (%s)", exc)
            return
        for symbol in self.configured_symbols(PERP):
            if symbol not in listed:
                self.mark_unavailable(PERP, symbol, "not in the futures instrument list")

    # ---- subscriptions -----------------------------------------------------------------------
    def arg_text(self, sub: Subscription) -> str:
        return f"{sub.channel.name}:{sub.symbol}"

    def _spot_request(self, channel: str, symbols: list[str] | None,
                      method: str = "subscribe", **params: Any) -> str:
        self._req_id += 1
        self._sent[self._req_id] = (method, channel)
        if len(self._sent) > SENT_REQUESTS_KEPT:
            self._sent.popitem(last=False)
        body: dict[str, Any] = {"channel": channel, **params}
        if symbols is not None:
            body["symbol"] = symbols
        return orjson.dumps({"method": method, "params": body, "req_id": self._req_id}).decode()

    def _book_request(self, symbols: list[str], method: str = "subscribe") -> str:
        if method == "subscribe":
            return self._spot_request(ep.SPOT_BOOK, symbols, depth=self.book_depth, snapshot=True)
        return self._spot_request(ep.SPOT_BOOK, symbols, method, depth=self.book_depth)

    def _fut_request(self, meta: ConnMeta, event: str, feed: str, symbol: str | None) -> str:
        meta.extra["pending"].append((feed, symbol))
        body: dict[str, Any] = {"event": event, "feed": feed}
        if symbol is not None:
            body["product_ids"] = [symbol]
        return orjson.dumps(body).decode()

    def on_connection_open(self, meta: ConnMeta) -> None:
        books = meta.symbols("book")
        for symbol in books:
            self.book(meta.market, symbol, keep_text=meta.market == SPOT).reset()
        self.resync.reset(meta.market, books)
        self._fut_seq.clear() if meta.market == PERP else None

    def subscribe_requests(self, meta: ConnMeta, subs: list[Subscription]) -> list[str]:
        by_channel: dict[str, list[str]] = {}
        for sub in subs:
            by_channel.setdefault(sub.channel.name, []).append(sub.symbol)
        if meta.market == PERP:
            # One request per product and feed: v1 errors name no product, so each is
            # attributed to the oldest unanswered request (v1 answers in order).
            meta.extra["pending"] = deque()
            return [self._fut_request(meta, "subscribe", ep.FUT_HEARTBEAT, None)] + [
                self._fut_request(meta, "subscribe", feed, s)
                for feed, symbols in by_channel.items() for s in symbols]
        requests = []
        books = by_channel.get(ep.SPOT_BOOK, [])
        meta.extra["books"] = set()
        if books:   # books are subscribed once the pairs' precisions (checksum) are known
            requests.append(self._spot_request(ep.SPOT_INSTRUMENT, None, snapshot=True))
        if ep.SPOT_TICKER in by_channel:
            requests.append(self._spot_request(ep.SPOT_TICKER, by_channel[ep.SPOT_TICKER],
                                               event_trigger=ep.SPOT_TICKER_TRIGGER))
        if ep.SPOT_TRADE in by_channel:
            requests.append(self._spot_request(ep.SPOT_TRADE, by_channel[ep.SPOT_TRADE],
                                               snapshot=False))
        if ep.SPOT_OHLC in by_channel:
            requests.append(self._spot_request(ep.SPOT_OHLC, by_channel[ep.SPOT_OHLC],
                                               interval=ep.SPOT_OHLC_INTERVAL_MIN))
        known = [s for s in books if s in self.precision]
        if known:   # precisions known from a previous connection: no need to wait
            meta.extra["books"].update(known)
            requests.append(self._book_request(known))
        return requests

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
        if market == SPOT:
            await self.send_paced(conn, [self._book_request([symbol], "unsubscribe"),
                                         self._book_request([symbol])])
        else:
            meta = self.meta(conn)
            await self.send_paced(conn, [self._fut_request(meta, e, ep.FUT_BOOK, symbol)
                                         for e in ("unsubscribe", "subscribe")])

    def on_disconnect(self, meta: ConnMeta, reason: str) -> None:
        self.resync.reset(meta.market, meta.symbols("book"))

    async def stop(self) -> None:
        self.resync.cancel_all()
        await super().stop()

    # ---- messages ----------------------------------------------------------------------------
    def decode(self, raw: str | bytes) -> Any:
        try:
            return orjson.loads(raw)   # floats; books prove their checksum texts (parsers)
        except orjson.JSONDecodeError:
            return p.decode(raw)       # whatever orjson refuses, the exact decoder judges

    def channel_of(self, msg: dict) -> str | None:
        channel = msg.get("channel")
        if channel is not None:
            return channel
        feed = msg.get("feed")
        return None if feed is None or "event" in msg else "fut:" + feed

    def on_control(self, conn: WsConnection, msg: dict) -> None:
        if self.meta(conn).market == PERP:
            self._fut_control(conn, msg)
        elif msg.get("success") is False:
            error = str(msg.get("error", "unknown error"))
            method, channel = self._sent.get(msg.get("req_id"), (
                msg.get("method"), (msg.get("result") or {}).get("channel")))
            if method == "unsubscribe":     # e.g. "Subscription Not Found": nothing to drop
                log.debug("kraken: spot unsubscribe failed: %s", error)
                return
            self.stats.error_once(self.name, f"spot {method} failed: {error}")
            symbol = (msg.get("result") or {}).get("symbol") or msg.get("symbol")
            if symbol and "not supported" in error.lower():
                self.mark_unavailable(SPOT, symbol, error)
            if channel == ep.SPOT_INSTRUMENT or "instrument" in error.lower():
                # No precisions: subscribe the books anyway; checksums then use the numbers'
                # own digits (exact for prices/quantities sent with full precision).
                log.warning("kraken: instrument channel unavailable; checksums use the digits")
                self._subscribe_books(conn, only_known=False)
        elif "error" in msg or "Error" in msg:
            self.stats.error_once(self.name, f"spot error: {msg.get('error') or msg.get('Error')}")

    def _fut_control(self, conn: WsConnection, msg: dict) -> None:
        event = msg.get("event")
        pending: deque = self.meta(conn).extra.setdefault("pending", deque())
        if event in ("subscribed", "unsubscribed"):
            for symbol in msg.get("product_ids") or [None]:
                if (msg.get("feed"), symbol) in pending:
                    pending.remove((msg.get("feed"), symbol))
        elif event in ("error", "subscribed_failed", "unsubscribed_failed", "alert"):
            feed, symbol = pending.popleft() if pending else (None, None)
            self.stats.error_once(self.name, f"futures {event}: {msg.get('message', '')}")
            if msg.get("message") == "Invalid product id" and symbol is not None:
                self.mark_unavailable(PERP, symbol, f"Invalid product id ({feed})")

    def _on_instrument(self, conn: WsConnection, msg: dict, raw: Any) -> bool:
        self.precision.update(p.parse_instrument_pairs(msg))
        if msg.get("type") == "snapshot":
            self._subscribe_books(conn, only_known=True)
        return False

    def _on_book(self, conn: WsConnection, msg: dict, raw: str | bytes) -> None:
        kind, items = p.parse_book(raw, msg, self.precision, self.price_texts)
        for symbol, expected, bids, asks in items:
            book = self.book(SPOT, symbol, keep_text=True)
            if kind != "snapshot" and not book.synced:
                self.resync.unsynced_update(SPOT, symbol)
                continue
            actual = p.apply_book(book, kind, bids, asks, self.book_depth)
            if actual == expected:
                if kind == "snapshot":
                    self.resync.synced(SPOT, symbol)
                continue
            # No sequence numbers on v2 books: the checksum is the only gap detector.
            self.checksum_failures += 1
            self.resync.lose(SPOT, symbol, "checksum", f"local {actual} != exchange {expected}")

    def _on_ticker(self, conn: WsConnection, msg: dict, raw: Any) -> None:
        received_at = received_now()
        for item in msg["data"]:
            self.emit(p.parse_ticker(item, received_at))

    def _on_trade(self, conn: WsConnection, msg: dict, raw: Any) -> None:
        for trade in p.parse_trades(msg, received_now()):
            # v2 trade ids are sequential per pair: a hole is a missed trade.
            trade_id = int(trade.trade_id)
            self.check_trade_ids(SPOT, trade.symbol, trade_id, trade_id,
                                 int(trade.ts.timestamp() * 1000))
            self.emit(trade)

    def _on_ohlc(self, conn: WsConnection, msg: dict, raw: Any) -> None:
        received_at = received_now()
        for item in msg["data"]:
            self.emit_candle(p.parse_candle(item, received_at))

    def _on_fut_ticker(self, conn: WsConnection, msg: dict, raw: Any) -> None:
        ticker, funding, oi = p.parse_futures_ticker(msg, received_now())
        self.emit(ticker)
        if funding is not None:
            self.emit_derived(funding, funding.rate)
        if oi is not None:
            self.emit_derived(oi, oi.open_interest)

    def _on_fut_trade(self, conn: WsConnection, msg: dict, raw: Any) -> None:
        self.emit(p.parse_futures_trade(msg, received_now()))

    def _on_fut_trades(self, conn: WsConnection, msg: dict, raw: Any) -> None:
        received_at = received_now()
        for trade in msg["trades"]:
            self.emit(p.parse_futures_trade({"product_id": msg["product_id"], **trade},
                                            received_at))

    def _on_fut_snapshot(self, conn: WsConnection, msg: dict, raw: Any) -> None:
        symbol = msg["product_id"]
        bids, asks, seq = p.parse_futures_book_snapshot(msg)
        self.book(PERP, symbol).load_snapshot(bids, asks, seq)
        self._fut_seq[symbol] = seq
        self.resync.synced(PERP, symbol)

    def _on_fut_book(self, conn: WsConnection, msg: dict, raw: Any) -> None:
        symbol = msg["product_id"]
        side, price, qty, seq = p.parse_futures_book_delta(msg)
        book, last = self.books.get((PERP, symbol)), self._fut_seq.get(symbol)
        if book is None or not book.synced or last is None or seq <= last:
            return      # before the snapshot of a (re)subscription, or a repeat
        if seq != last + 1:
            self._fut_seq.pop(symbol, None)
            self.resync.lose(PERP, symbol, "sequence_gap", f"seq {last} -> {seq}")
            return
        self._fut_seq[symbol] = seq
        p.apply_futures_delta(book, side, price, qty, seq)

    # ---- REST backfill -----------------------------------------------------------------------
    async def backfill_trades(self, market: str, symbol: str, since: datetime) -> bool:
        if market == SPOT:
            return await self._backfill_spot_trades(symbol, since)
        return await self._backfill_perp_trades(symbol, since)

    async def _backfill_spot_trades(self, symbol: str, since: datetime) -> bool:
        """``/0/public/Trades`` pages forward from ``since`` (oldest first) with the ``last``
        cursor; complete when a page is not full or reaches the time the backfill started."""
        until = now_utc()
        cursor = str(int(since.timestamp()))    # seconds; ``last`` cursors are nanoseconds
        for _ in range(ep.SPOT_TRADES_MAX_PAGES):
            body = await self.spot_rest.get(ep.SPOT_TRADES_REST, {
                "pair": p.rest_pair(symbol, ep.REST_ASSETS), "since": cursor,
                "count": ep.SPOT_TRADES_PAGE})
            trades, last = p.parse_rest_trades(body, symbol, now_utc())
            self.emit_backfilled_trades(trades, since, ep.SPOT_TRADES_PAGE)
            if len(trades) < ep.SPOT_TRADES_PAGE or trades[-1].ts >= until:
                return True
            if last == cursor:
                break
            cursor = last
        return False

    async def _backfill_perp_trades(self, symbol: str, since: datetime) -> bool:
        """``/derivatives/api/v3/history`` pages backwards (100 trades before ``lastTime``)
        until a page reaches ``since``."""
        last_time: str | None = None
        for _ in range(ep.FUT_HISTORY_MAX_PAGES):
            params = {"symbol": symbol} if last_time is None else \
                {"symbol": symbol, "lastTime": last_time}
            trades = p.parse_futures_history(await self.perp_rest.get(ep.FUT_HISTORY_REST, params),
                                             symbol, now_utc())
            if not trades or self.emit_backfilled_trades(trades, since, ep.FUT_HISTORY_PAGE):
                return True
            # Overlap by 1 ms: trades sharing the boundary millisecond are fetched again
            # (deduplicated) rather than skipped.
            oldest = min(t.ts for t in trades) + timedelta(milliseconds=1)
            following = oldest.strftime("%Y-%m-%dT%H:%M:%S.") + f"{oldest.microsecond // 1000:03d}Z"
            if following == last_time:
                break
            last_time = following
        return False

    async def backfill_candles(self, market: str, symbol: str, since: datetime) -> bool | None:
        """Spot only (futures candles are in the charts API, not used). ``/0/public/OHLC``
        returns at most the 720 newest rows whatever ``since`` is: a gap starting earlier than
        the oldest row is only partly covered (False)."""
        if market != SPOT:
            return None
        minute = int(since.timestamp()) // 60 * 60
        body = await self.spot_rest.get(ep.SPOT_OHLC_REST, {
            "pair": p.rest_pair(symbol, ep.REST_ASSETS), "interval": ep.SPOT_OHLC_INTERVAL_MIN,
            "since": minute - 60})
        candles = p.parse_rest_ohlc(body, symbol, now_utc())
        for candle in candles:
            if candle.ts.timestamp() >= minute:
                self.emit(candle)
        return not candles or candles[0].ts.timestamp() <= minute

    async def repoll_derivatives(self, symbol: str) -> None:
        """Funding and open interest come with the futures ticker: re-polled over REST."""
        body = await self.perp_rest.get(ep.FUT_TICKERS_REST)
        for record in p.parse_futures_rest_ticker(body, symbol, now_utc()):
            if record is not None:
                self.emit(record)


def _keepalive(conn: WsConnection, msg: Any, raw: Any) -> bool:
    """Heartbeats and status: keep-alive, not data (the idle watchdog must not count them)."""
    return False
