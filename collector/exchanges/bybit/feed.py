"""Bybit v5 feed: spot and linear public connections (``endpoints.SPEC``): tickers (linear
deltas merged), trades, orderbook.200 resubscribed on loss, 1m klines, funding and open interest
from the linear ticker (REST fallback poll), REST backfill. Trade ids are not checked for
continuity (linear ids are UUIDs): holes are found through connection gaps."""
from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from typing import Any, Callable, Coroutine, Sequence

import orjson

from collector.connection import WsConnection
from collector.exchanges.base import Feed, FeedContext, Handler
from collector.exchanges.bybit import endpoints as ep
from collector.exchanges.bybit import parsers
from collector.kit.books import PARSE_ERRORS, ResubscribeBooks
from collector.kit.requests import PendingRequests
from collector.kit.spec import ConnMeta, Subscription
from collector.rest import RestError
from common.schema import PERP, SPOT, Funding, OpenInterest, Record, Ticker, now_utc, received_now
from common.settings import ExchangeSettings

log = logging.getLogger(__name__)


class BybitFeed(Feed):
    name = "bybit"
    spec = ep.SPEC

    def __init__(self, cfg: ExchangeSettings, ctx: FeedContext) -> None:
        super().__init__(cfg, ctx)
        self.depth = min(cfg.book_depth, ep.ORDERBOOK_DEPTH)
        self.spot_rest = self.rest(cfg.spot_rest_url)
        self.perp_rest = self.rest(cfg.perp_rest_url)
        self.ticker_merge = parsers.TickerMerge()
        self.book_driver = ResubscribeBooks(self, self._resubscribe_book)
        self.last_ws_funding_at: dict[str, float] = {}
        self.already_subscribed = 0
        # Spot never answers a duplicate subscribe: unanswered requests expire.
        self.requests: PendingRequests[str] = PendingRequests()
        self._req_seq = 0
        self.routes = {"orderbook": self._by_market(self.on_book),
                       ep.TICKERS: self._by_market(self.on_ticker),
                       ep.TRADES: self._emits(parsers.parse_trades),
                       "kline": self._emits(parsers.parse_kline)}   # ``confirm`` closes candles

    def _by_market(self, handler: Callable[[str, Any], None]) -> Handler:
        return lambda conn, msg, raw: handler(conn.meta.market, msg)   # meta: ConnMeta

    def _emits(self, parse: Callable[[Any, str, datetime], Sequence[Record]]) -> Handler:
        def handle(conn: WsConnection, msg: Any, raw: Any) -> None:
            for record in parse(msg, conn.meta.market, received_now()):
                self.emit(record)
        return handle

    # ---- subscriptions -----------------------------------------------------------------------
    def subscribe_requests(self, meta: ConnMeta, subs: list[Subscription]) -> list[str]:
        return [self._request(meta.label, "subscribe", [self.arg_text(s) for s in batch])
                for batch in self.batched(subs)]

    def _request(self, label: str, op: str, args: list[str]) -> str:
        self._req_seq += 1
        req_id = f"{op[:5]}{self._req_seq}"
        if op == "subscribe":
            self.requests.add(req_id, label, args)
        return orjson.dumps({"req_id": req_id, "op": op, "args": args}).decode()

    def on_disconnect(self, meta: ConnMeta, reason: str) -> None:
        self.book_driver.reset(meta.market, meta.symbols("book"))
        self.ticker_merge.forget(meta.market, meta.symbols("ticker"))
        self.requests.drop(meta.label)

    # ---- control messages --------------------------------------------------------------------
    def channel_of(self, msg: dict[str, Any]) -> str | None:
        topic = msg.get("topic")      # "orderbook.200.BTCUSDT" -> "orderbook"
        return None if topic is None else topic.partition(".")[0]

    def on_control(self, conn: WsConnection, msg: Any) -> None:
        """Acks, pongs, failures: a request fails whole; its other topics are retried singly."""
        meta = self.meta(conn)
        reason = str(msg.get("ret_msg"))
        named = parsers.rejected_topics(reason) if msg.get("success") is False else []
        request = self.requests.take(str(msg.get("req_id") or ""), meta.label,
                                     named[0] if named else None)
        if msg.get("success") is not False:
            return
        args = request.args if request is not None else named
        if "already subscribed" in reason:
            # Our own duplicate (a retried batch, a lost unsubscribe): the topic is live.
            self.already_subscribed += 1
            log.info("bybit %s: %s", meta.label, reason)
        elif not [t for t in named if self._reject_topic(meta.market, t, reason)]:
            self.stats.error_once(self.name, f"{meta.market} {msg.get('op')} failed: {reason}")
        if len(args) > 1:
            for topic in args:
                if topic not in named and self.is_available(meta.market, topic.rpartition(".")[2]):
                    self.send_soon(conn, self._request(meta.label, "subscribe", [topic]))

    def _reject_topic(self, market: str, topic: str, reason: str) -> bool:
        """Our topic rejected: its symbol is not listed in this category. False if not ours."""
        symbol = topic.rpartition(".")[2]
        ours = symbol in self.configured_symbols(market)
        if ours and self.is_available(market, symbol):
            self.stats.error_once(self.name, f"{market} subscribe {topic} failed: {reason}")
            self.mark_unavailable(market, symbol, f"{ep.CATEGORY[market]}: {reason}")
        return ours

    # ---- data --------------------------------------------------------------------------------
    def on_ticker(self, market: str, msg: dict[str, Any], received_at: datetime | None = None
                  ) -> None:
        records = self.ticker_merge.parse(msg, market, received_at or received_now())
        for record in records:
            if isinstance(record, Ticker):
                if record.bid is None:          # spot tickers carry no bid/ask: the book's top
                    self.fill_top_of_book(record)
                self.emit(record)
            elif isinstance(record, Funding):
                self.last_ws_funding_at[record.symbol] = time.monotonic()
                self.emit_derived(record, record.rate)
            elif isinstance(record, OpenInterest):
                self.emit_derived(record, record.open_interest)
        if market == PERP and records and parsers.lacks_single_open_interest(
                self.ticker_merge.fields.get((market, records[0].symbol), {})):
            self.stats.error_once(self.name, f"perp {msg['topic']}: no singleOpenInterest; "
                                             f"open interest (both sides) not stored")

    # ---- order book --------------------------------------------------------------------------
    def on_book(self, market: str, msg: dict[str, Any]) -> None:
        if msg.get("type") == "delta":
            data = msg["data"]
            book = self.books.get((market, data["s"]))
            if book is not None and book.synced:
                try:
                    if parsers.apply_delta(book, data, self.depth):
                        return
                except PARSE_ERRORS:
                    # A malformed level may have been half applied: rebuild this book.
                    self.book_driver.lose(market, data["s"], "sequence_gap", "malformed delta")
                    raise
        update = parsers.parse_orderbook(msg)
        symbol = update.symbol
        book = self.book(market, symbol)
        book.depth = self.depth
        if update.snapshot:
            # Any snapshot (including u == 1 after a service restart) replaces the book.
            book.load_snapshot(update.bids, update.asks, update.update_id)
            book.truncate(self.depth)
            self.book_driver.synced(market, symbol)
        elif not book.synced:
            if (market, symbol) not in self._books_resyncing:   # else: a snapshot is coming
                self.book_driver.lose(market, symbol, "sequence_gap", "delta before snapshot")
        elif book.update_id is not None and update.update_id < book.update_id:
            self.book_driver.lose(market, symbol, "sequence_gap", f"update id went backwards "
                                  f"({book.update_id} -> {update.update_id})")
        elif book.update_id is None or update.update_id > book.update_id:   # equal: duplicate
            book.apply(update.bids, update.asks, update.update_id)
            book.truncate(self.depth)

    async def _resubscribe_book(self, key: tuple[str, str]) -> None:
        market, symbol = key
        topic = f"{ep.ORDERBOOK}.{symbol}"
        conn = next((c for c in reversed(self.connections) if self.meta(c).market == market and
                     any(self.arg_text(s) == topic for s in self.meta(c).subscriptions)), None)
        if conn is None:
            raise ConnectionError(f"bybit: no {market} connection carries {topic}")
        await self.send_paced(conn, [self._request(self.meta(conn).label, op, [topic])
                                     for op in ("unsubscribe", "subscribe")])

    async def stop(self) -> None:
        self.book_driver.cancel_all()
        await super().stop()

    # ---- REST: fallback poll and backfill ----------------------------------------------------
    def pollers(self) -> list[Coroutine[Any, Any, None]]:
        # Polled by the ticker's owner (where the WS values come from).
        return [self._poll_derivatives()] if self.owned(PERP, "ticker") else []

    async def _poll_derivatives(self) -> None:
        """Funding and open interest over REST when the WS ticker has not brought them for a
        poll interval (start-up, a silent linear connection)."""
        interval = self.ctx.poll_interval_s
        while True:
            for symbol in self.owned(PERP, "ticker"):
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
        """REST GET: the IP limit's 403 pauses REST >= 10 minutes; an unknown symbol (HTTP 200,
        retCode 10001 "Not supported symbols") marks (market, symbol) unavailable."""
        rest = self.spot_rest if market == SPOT else self.perp_rest
        try:
            payload = await rest.get(path, params)
            parsers.check_response(payload)
        except RestError as exc:
            if exc.status == 403:
                self.rest_budget.pause(ep.REST_BAN_PAUSE_S)
                log.error("bybit: REST rate limit hit (403); pausing REST for %.0fs",
                          ep.REST_BAN_PAUSE_S)
            raise
        except parsers.NotSupportedSymbol as exc:
            self.mark_unavailable(market, params["symbol"], f"{path}: {exc}")
            raise RestError(200, payload, path) from exc
        return payload

    async def repoll_derivatives(self, symbol: str) -> None:
        payload = await self._get(PERP, ep.REST_TICKERS, {"category": "linear", "symbol": symbol})
        for record in parsers.parse_rest_ticker(payload, PERP, now_utc()):
            if isinstance(record, (Funding, OpenInterest)):
                self.emit(record)

    async def backfill_trades(self, market: str, symbol: str, since: datetime) -> bool:
        """The newest 60 (spot) / 1000 (linear) trades (no paging: a longer gap is partial)."""
        limit = ep.RECENT_TRADE_LIMIT[market]
        payload = await self._get(market, ep.REST_RECENT_TRADE, {
            "category": ep.CATEGORY[market], "symbol": symbol, "limit": limit})
        trades = parsers.parse_rest_trades(payload, market, now_utc())
        return self.emit_backfilled_trades(trades, since, limit)

    async def backfill_candles(self, market: str, symbol: str, since: datetime) -> None:
        """Closed 1m candles since ``since`` in explicit start..end pages of 1000 rows."""
        page_ms = ep.KLINE_LIMIT * 60_000
        start = int(since.timestamp() * 1000) // 60_000 * 60_000
        while start <= time.time() * 1000:
            payload = await self._get(market, ep.REST_KLINE, {
                "category": ep.CATEGORY[market], "symbol": symbol,
                "interval": ep.KLINE_INTERVAL, "start": start, "end": start + page_ms - 1,
                "limit": ep.KLINE_LIMIT})
            for candle in parsers.parse_rest_klines(payload, symbol, market, ep.KLINE_INTERVAL,
                                                    now_utc()):
                if candle.closed:             # the newest row is usually still forming
                    self.emit(candle)
            start += page_ms
