"""Kraken feed: spot WebSocket v2 (ticker, trade, book with CRC32 checksum, ohlc 1m) and Kraken
Futures WebSocket v1 (ticker -> ticker/funding/open interest, trade, book with seq check), REST
backfill of trades, closed candles, funding and open interest after a gap."""
from __future__ import annotations

import logging
import time
from bisect import bisect_left, insort
from zlib import crc32 as _crc32
from datetime import datetime, timedelta
from typing import Any

import orjson

from collector import partition
from collector.connection import HeartbeatPolicy, WsConnection
from collector.exchanges.legacy_base import Feed
from collector.exchanges.kraken import endpoints as ep
from collector.exchanges.kraken import parsers as p
from collector.orderbook import BookSide
from collector.resync import ResubscribeScheduler
from collector.rest import RateBudget, RestClient, RestError
from common.schema import PERP, SPOT, Candle, now_utc, received_now

log = logging.getLogger(__name__)


_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError


def _apply(side: BookSide, levels: list) -> None:
    """(price, qty, checksum text) levels onto a kept-text book side (``BookSide.set`` inlined,
    one text string per level)."""
    book, keys, text = side.levels, side.keys, side.text
    sign = -1.0 if side.is_bid else 1.0
    for price, qty, level_text in levels:
        key = sign * price
        if qty == 0.0:
            if key in book:
                del book[key]
                del keys[bisect_left(keys, key)]
            text.pop(price, None)
        else:
            if key not in book:
                insort(keys, key)
            book[key] = qty
            text[price] = level_text


def _ping() -> str:
    return '{"method":"ping"}'


class KrakenFeed(Feed):
    name = "kraken"
    connect_interval_s = ep.CONNECT_INTERVAL_S
    backoff_max_s = ep.BACKOFF_MAX_S
    ping_interval_s = ep.SPOT_PING_INTERVAL_S

    def __init__(self, cfg, ctx) -> None:
        super().__init__(cfg, ctx)
        # Partitions share the IP, hence Cloudflare's reconnect budget: space connects N times more.
        _, partitions = partition.parse_partition(ctx.settings.partition)
        self.throttle.min_interval_s = self.connect_interval_s * partitions
        # Configured names (XBT/USD, XXBTZUSD) -> v2 names (BTC/USD), de-duplicated, in order.
        self.spot_symbols: list[str] = list(dict.fromkeys(p.v2_symbol(s) for s in cfg.spot_symbols))
        self.perp_symbols: list[str] = [s.upper() for s in cfg.perp_symbols]
        self.book_depth = next((d for d in ep.SPOT_BOOK_DEPTHS if d >= cfg.book_depth),
                               ep.SPOT_BOOK_DEPTHS[-1])
        self.spot_rest = RestClient(ctx.session, cfg.spot_rest_url,
                                    RateBudget(ep.SPOT_REST_CALLS, ep.SPOT_REST_WINDOW_S))
        self.perp_rest = RestClient(ctx.session, cfg.perp_rest_url,
                                    RateBudget(ep.FUT_REST_CALLS, ep.FUT_REST_WINDOW_S))
        self.precision: dict[str, tuple[int, int]] = {}
        # symbol -> (precision, price -> checksum text at that precision)
        self._texts: dict[str, tuple[tuple[int, int], dict[float, str]]] = {}
        self._book_subscribed: set[str] = set()
        self._candles: dict[str, Candle] = {}
        self._fut_seq: dict[str, int] = {}
        self._last_funding_emit: dict[str, float] = {}
        self._last_funding_rate: dict[str, float | None] = {}
        self._req_id = 0
        self.spot_conn: WsConnection | None = None
        self.perp_conn: WsConnection | None = None
        # Per-book resync by resubscription (cool-down, retry, one coroutine per resubscribe).
        self.spot_resync: ResubscribeScheduler[str] = ResubscribeScheduler(
            self._resubscribe_spot_book, cooldown_s=ep.RESYNC_COOLDOWN_S,
            retry_after_s=ep.RESYNC_RETRY_S, name="kraken spot")
        self.perp_resync: ResubscribeScheduler[str] = ResubscribeScheduler(
            self._resubscribe_perp_book, cooldown_s=ep.RESYNC_COOLDOWN_S,
            retry_after_s=ep.RESYNC_RETRY_S, name="kraken futures")
        self.checksum_failures = 0

    async def prepare(self) -> None:
        """Validate the futures symbols against the instrument list (spot symbols are checked
        against the WebSocket ``instrument`` channel). If the list is unreachable, go ahead."""
        if not self.perp_symbols or not self.cfg.perp_rest_url:
            return
        try:
            body = await self.perp_rest.get(ep.FUT_INSTRUMENTS_REST)
            listed = p.parse_futures_instruments(body)
        except (RestError, KeyError, TypeError, ValueError, AttributeError) as exc:
            log.warning("%s: futures instrument list unavailable (%s); symbols not validated",
                        self.name, exc)
            return
        for symbol in self.perp_symbols:
            if symbol not in listed:
                self.mark_unavailable(symbol, "not in the futures instrument list")

    # ---- subscriptions (this partition's share) ----------------------------------------------
    def symbols(self, market: str) -> list[str]:
        configured = self.spot_symbols if market == SPOT else self.perp_symbols
        return [s for s in configured if self.is_available(s)]

    def spot_subscriptions(self) -> dict[str, list[str]]:
        """v2 channel -> the symbols this partition subscribes on it."""
        symbols = self.symbols(SPOT)
        return {channel: [s for s in symbols if self.owns(SPOT, s, kind)]
                for channel, kind in ep.SPOT_KINDS.items()}

    def perp_subscriptions(self) -> dict[str, list[str]]:
        """Futures feed -> the products this partition subscribes on it."""
        symbols = self.symbols(PERP)
        return {feed: [s for s in symbols if self.owns(PERP, s, kind)]
                for feed, kind in ep.FUT_KINDS.items()}

    # ---- wiring ------------------------------------------------------------------------------
    def build_connections(self) -> list[WsConnection]:
        conns = []
        spot = {ch: syms for ch, syms in self.spot_subscriptions().items() if syms}
        if spot and self.cfg.spot_ws_url:
            self.spot_conn = self.connection(
                "spot", self.cfg.spot_ws_url, on_message=self._on_spot, on_open=self._open_spot,
                heartbeat=HeartbeatPolicy(app_ping=_ping,
                                          app_ping_interval_s=self.ping_interval_s),
                kinds=sorted({ep.SPOT_IDLE_KINDS[ch] for ch in spot}), market=SPOT)
            conns.append(self.spot_conn)
        perp = {feed: syms for feed, syms in self.perp_subscriptions().items() if syms}
        if perp and self.cfg.perp_ws_url:
            self.perp_conn = self.connection(
                "perp", self.cfg.perp_ws_url, on_message=self._on_perp, on_open=self._open_perp,
                heartbeat=HeartbeatPolicy(protocol_ping_interval_s=30.0),
                kinds=sorted({ep.FUT_KINDS[feed] for feed in perp}), market=PERP)
            conns.append(self.perp_conn)
        return conns

    async def stop(self) -> None:
        self.spot_resync.cancel()
        self.perp_resync.cancel()
        await super().stop()

    def on_disconnect(self, conn: WsConnection, reason: str) -> None:
        if conn is self.spot_conn:
            self.spot_resync.cancel()       # the reconnect resubscribes every book
            self._book_subscribed.clear()
            for symbol in self.spot_symbols:
                self.book(SPOT, symbol, keep_text=True).reset()
            # The running candle missed trades: never store it as final (backfill closes it).
            self._candles.clear()
        elif conn is self.perp_conn:
            self.perp_resync.cancel()
            self._fut_seq.clear()
            for symbol in self.perp_symbols:
                self.book(PERP, symbol).reset()

    def _next_id(self) -> int:
        self._req_id += 1
        return self._req_id

    def _send(self, conn: WsConnection, text: str) -> None:
        """Fire-and-forget send from the synchronous message handler."""
        async def send() -> None:
            try:
                await conn.send(text)
            except Exception as exc:   # connection dropped: on_open resubscribes
                log.debug("%s: send failed: %r", conn.name, exc)
        self._spawn(send())

    # ---- spot v2 -----------------------------------------------------------------------------
    def _spot_sub(self, channel: str, symbols: list[str] | None, method: str = "subscribe",
                  **params: Any) -> str:
        body: dict[str, Any] = {"channel": channel, **params}
        if symbols is not None:
            body["symbol"] = symbols
        return orjson.dumps({"method": method, "params": body, "req_id": self._next_id()}).decode()

    async def _open_spot(self, conn: WsConnection) -> None:
        subs = self.spot_subscriptions()
        books = subs[ep.SPOT_BOOK]
        for symbol in books:
            self.book(SPOT, symbol, keep_text=True).reset()
        self._book_subscribed.clear()
        if books:
            # Instrument first: the books are subscribed once the pairs' precisions are known.
            await conn.send(self._spot_sub(ep.SPOT_INSTRUMENT, None, snapshot=True))
        if subs[ep.SPOT_TICKER]:
            await conn.send(self._spot_sub(ep.SPOT_TICKER, subs[ep.SPOT_TICKER]))
        if subs[ep.SPOT_TRADE]:
            await conn.send(self._spot_sub(ep.SPOT_TRADE, subs[ep.SPOT_TRADE], snapshot=False))
        if subs[ep.SPOT_OHLC]:
            await conn.send(self._spot_sub(ep.SPOT_OHLC, subs[ep.SPOT_OHLC],
                                           interval=ep.SPOT_OHLC_INTERVAL_MIN))
        known = [s for s in books if s in self.precision]
        if known:   # precisions known from a previous connection: no need to wait
            self._book_subscribed.update(known)
            await conn.send(self._book_request(known))

    def _books_to_subscribe(self) -> list[str]:
        return [s for s in self.spot_subscriptions()[ep.SPOT_BOOK]
                if s not in self._book_subscribed]

    def _book_request(self, symbols: list[str], method: str = "subscribe") -> str:
        if method == "subscribe":
            return self._spot_sub(ep.SPOT_BOOK, symbols, depth=self.book_depth, snapshot=True)
        return self._spot_sub(ep.SPOT_BOOK, symbols, method=method, depth=self.book_depth)

    def _on_spot(self, conn: WsConnection, raw: str | bytes) -> bool | None:
        self.stats.messages += 1
        try:
            try:
                msg = _loads(raw)   # floats; books prove their checksum texts (see parsers)
            except _JSONDecodeError:
                msg = p.decode(raw)   # whatever orjson refuses, the exact decoder judges
            channel = msg.get("channel")
            if channel is None:
                return self._spot_control(conn, msg)
            if channel == ep.SPOT_HEARTBEAT or channel == ep.SPOT_STATUS:
                return False    # keep-alive, not data: the idle watchdog must not count it
            if channel == ep.SPOT_BOOK:
                self._spot_books(raw, msg)
            elif channel == ep.SPOT_TICKER:
                received_at = received_now()
                for item in msg["data"]:
                    self.emit(p.parse_ticker(item, received_at))
            elif channel == ep.SPOT_TRADE:
                for trade in p.parse_trades(msg, received_now()):
                    self.emit(trade)
            elif channel == ep.SPOT_OHLC:
                received_at = received_now()
                for item in msg["data"]:
                    self._candle(p.parse_candle(item, received_at))
            elif channel == ep.SPOT_INSTRUMENT:
                self._instrument(conn, msg)
                return False
            else:
                return False
        except Exception as exc:
            self.malformed(raw, exc)
        return None

    def _spot_control(self, conn: WsConnection, msg: dict) -> bool:
        method = msg.get("method")
        if method in ("subscribe", "unsubscribe") and msg.get("success") is False:
            error = str(msg.get("error", "unknown error"))
            self.stats.error_once(self.name, f"spot {method} failed: {error}")
            result = msg.get("result") or {}
            symbol = result.get("symbol") or msg.get("symbol")
            if symbol and method == "subscribe" and (
                    "not supported" in error.lower() or "not found" in error.lower()):
                self.mark_unavailable(symbol, error)
            if result.get("channel") == ep.SPOT_INSTRUMENT or "instrument" in error.lower():
                # No precisions: subscribe the books anyway; checksums then use the numbers'
                # own digits (exact for prices/quantities sent with full precision).
                ready = self._books_to_subscribe()
                if ready:
                    log.warning("%s: instrument channel unavailable; book checksums use the "
                                "received digits", self.name)
                    self._book_subscribed.update(ready)
                    self._send(conn, self._book_request(ready))
        elif "error" in msg or "Error" in msg:
            self.stats.error_once(self.name, f"spot error: {msg.get('error') or msg.get('Error')}")
        return False   # acks, pongs, errors: control traffic

    def _instrument(self, conn: WsConnection, msg: dict) -> None:
        self.precision.update(p.parse_instrument_pairs(msg))
        if msg.get("type") != "snapshot":
            return
        ready = []
        for symbol in self._books_to_subscribe():
            if symbol not in self.precision:
                self.mark_unavailable(symbol, "not listed in the instrument channel")
                continue
            ready.append(symbol)
        if ready:
            self._book_subscribed.update(ready)
            self._send(conn, self._book_request(ready))

    def _price_texts(self, symbol: str, precision: tuple[int, int]) -> dict[float, str]:
        """Price -> checksum text cache of a pair at its current precision."""
        entry = self._texts.get(symbol)
        if entry is None or entry[0] != precision:
            entry = self._texts[symbol] = (precision, {})
        return entry[1]

    def _spot_books(self, raw: str | bytes, msg: dict) -> None:
        """Every level is parsed (and its checksum text made) before any book changes. Fast path:
        floats formatted to the instrument precision, each text proven exact; a message with a
        number that cannot be proven (or a pair without known precision) is decoded again with
        exact decimals (``p.decode``) and parsed from those."""
        kind = msg["type"]
        parsed = []
        try:
            for item in msg["data"]:
                precision = self.precision.get(item["symbol"])
                if precision is None:
                    raise p.Inexact("no instrument precision")
                pp, qp = precision
                cache = self._price_texts(item["symbol"], precision)
                parsed.append((item, p.levels_fast(item["bids"], pp, qp, cache),
                               p.levels_fast(item["asks"], pp, qp, cache)))
        except p.Inexact:
            msg = p.decode(raw)
            kind = msg["type"]
            parsed = []
            for item in msg["data"]:
                price_prec, qty_prec = self.precision.get(item["symbol"], (None, None))
                parsed.append((item, p.levels_exact(item["bids"], price_prec, qty_prec),
                               p.levels_exact(item["asks"], price_prec, qty_prec)))
        for item, bids, asks in parsed:
            self._spot_book(kind, item, bids, asks)

    def _spot_book(self, kind: str, item: dict, bids: list, asks: list) -> None:
        symbol = item["symbol"]
        book = self.book(SPOT, symbol, keep_text=True)
        if kind == "snapshot":
            book.load_snapshot((), ())
        elif not book.synced:
            return   # waiting for the snapshot of a resubscription
        _apply(book.asks, asks)
        _apply(book.bids, bids)
        book.changed = True
        # Kraken never deletes levels that fall out of the subscribed depth.
        book.truncate(self.book_depth)
        expected = int(item["checksum"])
        actual = self.checksum(book)
        if actual == expected:
            if kind == "snapshot":
                self.book_in_sync(SPOT, symbol)
                self.spot_resync.done(symbol)
            return
        # No sequence numbers on v2 books: the checksum is the only gap detector. Resync this
        # symbol alone (a pending resync retries by itself if its snapshot fails again).
        self.checksum_failures += 1
        book.reset()
        self.book_lost_sync(SPOT, symbol, "checksum", f"local {actual} != exchange {expected}")
        self.spot_resync.request(symbol)

    async def _resubscribe_spot_book(self, symbol: str) -> None:
        """Unsubscribe then subscribe in one coroutine: the order cannot be swapped (a subscribe
        overtaken by its unsubscribe would leave the book unsubscribed for good)."""
        conn = self.spot_conn
        if conn is None:
            raise ConnectionError("spot not connected")
        await conn.send(self._book_request([symbol], "unsubscribe"))
        await conn.send(self._book_request([symbol]))

    @staticmethod
    def checksum(book) -> int:
        """CRC32 of the top 10 asks then top 10 bids, from each level's kept checksum text (one
        string per level; ``(price text, qty text)`` pairs from ``BookSide.set`` work too)."""
        n = ep.CHECKSUM_LEVELS
        asks_text, bids_text = book.asks.text, book.bids.text
        texts = [asks_text[key] for key in book.asks.keys[:n]]
        texts += [bids_text[-key] for key in book.bids.keys[:n]]
        if texts and type(texts[0]) is tuple:
            texts = ["".join(t) for t in texts]
        return _crc32("".join(texts).encode()) & 0xFFFFFFFF

    def _candle(self, candle: Candle) -> None:
        """The running candle is re-sent with the same interval_begin; it is closed once a later
        interval_begin arrives."""
        key = f"{candle.symbol}:{candle.interval}"
        previous = self._candles.get(key)
        if previous is not None and candle.ts < previous.ts:
            return   # older candle from a snapshot: already stored
        if previous is not None and candle.ts > previous.ts and not previous.closed:
            previous.closed = True
            self.emit(previous)
        self._candles[key] = candle
        self.emit(candle)

    # ---- futures -----------------------------------------------------------------------------
    async def _open_perp(self, conn: WsConnection) -> None:
        subs = self.perp_subscriptions()
        self._fut_seq.clear()
        for symbol in subs[ep.FUT_BOOK]:
            self.book(PERP, symbol).reset()
        await conn.send(orjson.dumps({"event": "subscribe", "feed": ep.FUT_HEARTBEAT}).decode())
        # One request per product and feed: an error then concerns that subscription only.
        for feed, symbols in subs.items():
            for symbol in symbols:
                await conn.send(orjson.dumps({"event": "subscribe", "feed": feed,
                                              "product_ids": [symbol]}).decode())

    def _on_perp(self, conn: WsConnection, raw: str | bytes) -> bool | None:
        self.stats.messages += 1
        try:
            msg = orjson.loads(raw)
            feed = msg.get("feed")
            event = msg.get("event")
            if event is not None:
                if event in ("error", "subscribed_failed", "alert"):
                    self.stats.error_once(
                        self.name, f"futures {event}: {msg.get('message', '')} "
                                   f"{msg.get('feed', '')} {msg.get('product_ids', '')}".strip())
                    if msg.get("message") == "Invalid product id":
                        for symbol in msg.get("product_ids") or []:
                            self.mark_unavailable(symbol, "Invalid product id")
                return False
            if feed == ep.FUT_HEARTBEAT:
                return False
            received_at = now_utc()
            if feed == ep.FUT_TICKER:
                ticker, funding, oi = p.parse_futures_ticker(msg, received_at)
                self.emit(ticker)
                self._funding_oi(ticker.symbol, funding, oi)
            elif feed == "trade":
                self.emit(p.parse_futures_trade(msg, received_at))
            elif feed == "trade_snapshot":
                for trade in msg["trades"]:
                    self.emit(p.parse_futures_trade({"product_id": msg["product_id"], **trade},
                                                    received_at))
            elif feed == "book_snapshot":
                symbol = msg["product_id"]
                bids, asks, seq = p.parse_futures_book_snapshot(msg)
                self.book(PERP, symbol).load_snapshot(bids, asks, seq)
                self._fut_seq[symbol] = seq
                self.book_in_sync(PERP, symbol)
                self.perp_resync.done(symbol)
            elif feed == ep.FUT_BOOK:
                self._perp_book_delta(msg)
            else:
                return False
        except Exception as exc:
            self.malformed(raw, exc)
        return None

    def _funding_oi(self, symbol: str, funding, oi) -> None:
        """The ticker arrives every second: store funding / open interest when the rate changes
        or once per poll interval, not 86 400 times a day."""
        now = time.monotonic()
        last = self._last_funding_emit.get(symbol)
        rate = funding.rate if funding is not None else None
        changed = rate != self._last_funding_rate.get(symbol)
        if last is None or changed or now - last >= min(self.ctx.poll_interval_s, 60.0):
            self._last_funding_emit[symbol] = now
            self._last_funding_rate[symbol] = rate
            if funding is not None:
                self.emit(funding)
            if oi is not None:
                self.emit(oi)

    def _perp_book_delta(self, msg: dict) -> None:
        symbol = msg["product_id"]
        side, price, qty, seq = p.parse_futures_book_delta(msg)
        book = self.book(PERP, symbol)
        last = self._fut_seq.get(symbol)
        if not book.synced or last is None:
            return
        if seq <= last:
            return
        if seq != last + 1:
            book.reset()
            self._fut_seq.pop(symbol, None)
            self.book_lost_sync(PERP, symbol, "sequence_gap", f"seq {last} -> {seq}")
            self.perp_resync.request(symbol)
            return
        self._fut_seq[symbol] = seq
        if side == "buy":
            book.apply(((price, qty),), (), seq)
        else:
            book.apply((), ((price, qty),), seq)

    async def _resubscribe_perp_book(self, symbol: str) -> None:
        conn = self.perp_conn
        if conn is None:
            raise ConnectionError("futures not connected")
        for event in ("unsubscribe", "subscribe"):
            await conn.send(orjson.dumps({"event": event, "feed": ep.FUT_BOOK,
                                          "product_ids": [symbol]}).decode())

    # ---- REST backfill -----------------------------------------------------------------------
    async def backfill_trades(self, market: str, symbol: str, since: datetime) -> bool:
        if market == SPOT:
            return await self._backfill_spot_trades(symbol, since)
        return await self._backfill_perp_trades(symbol, since)

    async def _backfill_spot_trades(self, symbol: str, since: datetime) -> bool:
        """``/0/public/Trades`` pages forward from ``since`` (oldest first) with the ``last``
        cursor; complete when a page is not full or reaches the time the backfill started (the
        stream has been delivering since then)."""
        pair = p.rest_pair(symbol, ep.REST_ASSETS)
        until = now_utc()
        cursor = str(int(since.timestamp()))    # seconds; ``last`` cursors are nanoseconds
        for _ in range(ep.SPOT_TRADES_MAX_PAGES):
            body = await self.spot_rest.get(ep.SPOT_TRADES_REST, {
                "pair": pair, "since": cursor, "count": ep.SPOT_TRADES_PAGE})
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
            params = {"symbol": symbol}
            if last_time is not None:
                params["lastTime"] = last_time
            body = await self.perp_rest.get(ep.FUT_HISTORY_REST, params)
            trades = p.parse_futures_history(body, symbol, now_utc())
            if not trades:
                return True
            if self.emit_backfilled_trades(trades, since, ep.FUT_HISTORY_PAGE):
                return True
            # Overlap by 1 ms: trades sharing the boundary millisecond are fetched again
            # (deduplicated) rather than skipped.
            oldest = min(t.ts for t in trades) + timedelta(milliseconds=1)
            following = oldest.strftime("%Y-%m-%dT%H:%M:%S.") + f"{oldest.microsecond // 1000:03d}Z"
            if following == last_time:
                break
            last_time = following
        return False

    def owns_backfill(self, market: str, symbol: str, kind: str) -> bool:
        # Candles and derivatives: the hooks below check the owner of each stream they re-fetch.
        return kind != "trades" or self.owns_trades(market, symbol)

    async def backfill_candles(self, market: str, symbol: str, since: datetime) -> None:
        """Spot only: Kraken Futures has no candle feed (its candles are in the separate charts
        API, which this collector does not use)."""
        if market != SPOT or not self.owns(SPOT, symbol, ep.SPOT_KINDS[ep.SPOT_OHLC]):
            return
        minute = int(since.timestamp()) // 60 * 60
        body = await self.spot_rest.get(ep.SPOT_OHLC_REST, {
            "pair": p.rest_pair(symbol, ep.REST_ASSETS), "interval": ep.SPOT_OHLC_INTERVAL_MIN,
            "since": minute - 60})
        for candle in p.parse_rest_ohlc(body, symbol, now_utc()):
            if candle.ts.timestamp() >= minute:
                self.emit(candle)

    async def repoll_derivatives(self, symbol: str) -> None:
        """Funding and open interest come with the futures ticker: its owner re-polls them."""
        if not self.owns(PERP, symbol, ep.FUT_KINDS[ep.FUT_TICKER]):
            return
        body = await self.perp_rest.get(ep.FUT_TICKERS_REST)
        funding, oi = p.parse_futures_rest_ticker(body, symbol, now_utc())
        for record in (funding, oi):
            if record is not None:
                self.emit(record)
