"""Kraken feed: spot WebSocket v2 (ticker, trade, book with CRC32 checksum, ohlc 1m) and Kraken
Futures WebSocket v1 (ticker -> ticker/funding/open interest, trade, book with seq check)."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson

from collector.connection import HeartbeatPolicy, WsConnection
from collector.exchanges.base import Feed
from collector.exchanges.kraken import endpoints as ep
from collector.exchanges.kraken import parsers as p
from collector.rest import RestError
from common.schema import PERP, SPOT, Candle, now_utc

log = logging.getLogger(__name__)


def _ping() -> str:
    return '{"method":"ping"}'


class KrakenFeed(Feed):
    name = "kraken"
    connect_interval_s = ep.CONNECT_INTERVAL_S
    backoff_max_s = ep.BACKOFF_MAX_S
    rest_weight_per_window = 60.0
    ping_interval_s = ep.SPOT_PING_INTERVAL_S

    def __init__(self, cfg, ctx) -> None:
        super().__init__(cfg, ctx)
        # Configured names (XBT/USD, XXBTZUSD) -> v2 names (BTC/USD), de-duplicated, in order.
        self.spot_symbols: list[str] = list(dict.fromkeys(p.v2_symbol(s) for s in cfg.spot_symbols))
        self.perp_symbols: list[str] = [s.upper() for s in cfg.perp_symbols]
        self.book_depth = next((d for d in ep.SPOT_BOOK_DEPTHS if d >= cfg.book_depth),
                               ep.SPOT_BOOK_DEPTHS[-1])
        self.precision: dict[str, tuple[int, int]] = {}
        self._book_subscribed: set[str] = set()
        self._candles: dict[str, Candle] = {}
        self._fut_seq: dict[str, int] = {}
        self._last_funding_emit: dict[str, float] = {}
        self._last_funding_rate: dict[str, float | None] = {}
        self._req_id = 0
        self._consecutive_failures: dict[str, int] = {}
        self.spot_conn: WsConnection | None = None
        self.perp_conn: WsConnection | None = None
        # Counters for tests/status.
        self.checksum_failures = 0
        self.resubscribes: dict[str, int] = {}

    async def prepare(self) -> None:
        """Validate the futures symbols against the instrument list (spot symbols are checked
        against the WebSocket ``instrument`` channel). If the list is unreachable, go ahead."""
        if not self.perp_symbols or not self.cfg.perp_rest_url:
            return
        try:
            body = await self.rest(self.cfg.perp_rest_url).get(ep.FUT_INSTRUMENTS_REST)
            listed = p.parse_futures_instruments(body)
        except (RestError, KeyError, TypeError, ValueError, AttributeError) as exc:
            log.warning("%s: futures instrument list unavailable (%s); symbols not validated",
                        self.name, exc)
            return
        for symbol in self.perp_symbols:
            if symbol not in listed:
                self.mark_unavailable(symbol, "not in the futures instrument list")

    # ---- wiring ------------------------------------------------------------------------------
    def build_connections(self) -> list[WsConnection]:
        conns = []
        if self.spot_symbols and self.cfg.spot_ws_url:
            self.spot_conn = self.connection(
                "spot", self.cfg.spot_ws_url, on_message=self._on_spot, on_open=self._open_spot,
                heartbeat=HeartbeatPolicy(app_ping=_ping,
                                          app_ping_interval_s=self.ping_interval_s))
            conns.append(self.spot_conn)
        if self.perp_symbols and self.cfg.perp_ws_url:
            self.perp_conn = self.connection(
                "perp", self.cfg.perp_ws_url, on_message=self._on_perp, on_open=self._open_perp,
                heartbeat=HeartbeatPolicy(protocol_ping_interval_s=30.0))
            conns.append(self.perp_conn)
        return conns

    def on_disconnect(self, conn: WsConnection, reason: str) -> None:
        if conn is self.spot_conn:
            self._book_subscribed.clear()
            for symbol in self.spot_symbols:
                self.book(SPOT, symbol, keep_text=True).reset()
        elif conn is self.perp_conn:
            self._fut_seq.clear()
            for symbol in self.perp_symbols:
                self.book(PERP, symbol).reset()

    def _next_id(self) -> int:
        self._req_id += 1
        return self._req_id

    def _send(self, conn: WsConnection, payload: dict | str, delay_s: float = 0.0) -> None:
        """Fire-and-forget send from the synchronous message handler."""
        text = payload if isinstance(payload, str) else orjson.dumps(payload).decode()

        async def send() -> None:
            if delay_s:
                await asyncio.sleep(delay_s)
            try:
                await conn.send(text)
            except Exception as exc:   # connection dropped: on_open resubscribes
                log.debug("%s: send failed: %r", conn.name, exc)
        asyncio.get_running_loop().create_task(send())

    # ---- spot v2 -----------------------------------------------------------------------------
    def _spot_sub(self, channel: str, symbols: list[str] | None, method: str = "subscribe",
                  **params: Any) -> str:
        body: dict[str, Any] = {"channel": channel, **params}
        if symbols is not None:
            body["symbol"] = symbols
        return orjson.dumps({"method": method, "params": body, "req_id": self._next_id()}).decode()

    async def _open_spot(self, conn: WsConnection) -> None:
        symbols = [s for s in self.spot_symbols if self.is_available(s)]
        for symbol in symbols:
            self.book(SPOT, symbol, keep_text=True).reset()
        self._book_subscribed.clear()
        # Instrument first: the book is subscribed once the pair's precisions are known.
        await conn.send(self._spot_sub(ep.SPOT_INSTRUMENT, None, snapshot=True))
        await conn.send(self._spot_sub(ep.SPOT_TICKER, symbols))
        await conn.send(self._spot_sub(ep.SPOT_TRADE, symbols, snapshot=False))
        await conn.send(self._spot_sub(ep.SPOT_OHLC, symbols, interval=ep.SPOT_OHLC_INTERVAL_MIN))
        known = [s for s in symbols if s in self.precision]
        if known:   # precisions known from a previous connection: no need to wait
            await conn.send(self._book_request(known))
            self._book_subscribed.update(known)

    def _book_request(self, symbols: list[str], method: str = "subscribe") -> str:
        if method == "subscribe":
            return self._spot_sub(ep.SPOT_BOOK, symbols, depth=self.book_depth, snapshot=True)
        return self._spot_sub(ep.SPOT_BOOK, symbols, method=method, depth=self.book_depth)

    def _on_spot(self, conn: WsConnection, raw: str | bytes) -> bool | None:
        self.stats.messages += 1
        try:
            msg = p.decode(raw)
            channel = msg.get("channel")
            if channel is None:
                return self._spot_control(conn, msg)
            if channel == ep.SPOT_HEARTBEAT or channel == ep.SPOT_STATUS:
                return False
            received_at = now_utc()
            if channel == ep.SPOT_BOOK:
                for item in msg["data"]:
                    self._spot_book(conn, msg["type"], item)
            elif channel == ep.SPOT_TICKER:
                for item in msg["data"]:
                    self.emit(p.parse_ticker(item, received_at))
            elif channel == ep.SPOT_TRADE:
                for trade in p.parse_trades(msg, received_at):
                    self.emit(trade)
            elif channel == ep.SPOT_OHLC:
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
                ready = [s for s in self.spot_symbols
                         if self.is_available(s) and s not in self._book_subscribed]
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
        for symbol in self.spot_symbols:
            if not self.is_available(symbol) or symbol in self._book_subscribed:
                continue
            if symbol not in self.precision:
                self.mark_unavailable(symbol, "not listed in the instrument channel")
                continue
            ready.append(symbol)
        if ready:
            self._book_subscribed.update(ready)
            self._send(conn, self._book_request(ready))

    def _spot_book(self, conn: WsConnection, kind: str, item: dict) -> None:
        symbol = item["symbol"]
        book = self.book(SPOT, symbol, keep_text=True)
        price_prec, qty_prec = self.precision.get(symbol, (None, None))
        bids = p.parse_levels(item["bids"], price_prec, qty_prec)
        asks = p.parse_levels(item["asks"], price_prec, qty_prec)
        if kind == "snapshot":
            book.load_snapshot((), ())
        elif not book.synced:
            return   # waiting for the snapshot of a resubscription
        for price, qty, ptext, qtext in asks:
            book.asks.set(price, qty, ptext, qtext)
        for price, qty, ptext, qtext in bids:
            book.bids.set(price, qty, ptext, qtext)
        book.changed = True
        # Kraken never deletes levels that fall out of the subscribed depth.
        book.truncate(self.book_depth)
        expected = int(item["checksum"])
        if self.checksum(book) == expected:
            self._consecutive_failures.pop(symbol, None)
        else:
            self.checksum_failures += 1
            self.stats.gaps += 1
            self._resubscribe_book(conn, symbol, f"checksum mismatch (expected {expected})")

    @staticmethod
    def checksum(book) -> int:
        n = ep.CHECKSUM_LEVELS
        asks_text, bids_text = book.asks.text, book.bids.text
        asks = [asks_text[price] for price, _ in book.asks.top(n)]
        bids = [bids_text[price] for price, _ in book.bids.top(n)]
        return p.book_checksum(asks, bids)

    def _resubscribe_book(self, conn: WsConnection, symbol: str, reason: str) -> None:
        """Resync one symbol's book only: unsubscribe + subscribe gives a fresh snapshot."""
        log.warning("%s: %s book out of sync (%s); resubscribing it", self.name, symbol, reason)
        self.stats.resyncs += 1
        self.resubscribes[symbol] = self.resubscribes.get(symbol, 0) + 1
        self.book(SPOT, symbol, keep_text=True).reset()
        # Back off when a symbol keeps failing (e.g. unexpected precision): 0, 1, 2, 4 ... 60 s.
        failures = self._consecutive_failures.get(symbol, 0)
        self._consecutive_failures[symbol] = failures + 1
        delay = 0.0 if failures == 0 else min(60.0, 2.0 ** (failures - 1))
        self._send(conn, self._book_request([symbol], "unsubscribe"), delay)
        self._send(conn, self._book_request([symbol]), delay)

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
        symbols = [s for s in self.perp_symbols if self.is_available(s)]
        self._fut_seq.clear()
        for symbol in symbols:
            self.book(PERP, symbol).reset()
        await conn.send(orjson.dumps({"event": "subscribe", "feed": ep.FUT_HEARTBEAT}).decode())
        # One request per product and feed: an error then concerns that subscription only.
        for symbol in symbols:
            for feed in (ep.FUT_TICKER, ep.FUT_TRADE, ep.FUT_BOOK):
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
            elif feed == ep.FUT_BOOK:
                self._perp_book_delta(conn, msg)
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

    def _perp_book_delta(self, conn: WsConnection, msg: dict) -> None:
        symbol = msg["product_id"]
        side, price, qty, seq = p.parse_futures_book_delta(msg)
        book = self.book(PERP, symbol)
        last = self._fut_seq.get(symbol)
        if not book.synced or last is None:
            return
        if seq <= last:
            return
        if seq != last + 1:
            self.stats.gaps += 1
            self.stats.resyncs += 1
            self.resubscribes[symbol] = self.resubscribes.get(symbol, 0) + 1
            log.warning("%s: %s book seq gap (%d -> %d); resubscribing", self.name, symbol,
                        last, seq)
            book.reset()
            self._fut_seq.pop(symbol, None)
            for event in ("unsubscribe", "subscribe"):
                self._send(conn, {"event": event, "feed": ep.FUT_BOOK, "product_ids": [symbol]})
            return
        self._fut_seq[symbol] = seq
        if side == "buy":
            book.apply(((price, qty),), (), seq)
        else:
            book.apply((), ((price, qty),), seq)
