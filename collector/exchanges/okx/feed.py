"""OKX v5 feed: /public (tickers, trades, books, funding-rate, open-interest) and /business
(candle1m) connections; books kept with raw strings for the CRC32 checksum and checked against
seqId/prevSeqId; a gap or checksum mismatch resubscribes that instrument alone
(``ResubscribeScheduler``). SWAP contract sizes are converted to base units with ctVal fetched in
``prepare``.

Trade ids: OKX trade ids are integers per instrument, consecutive in the documented REST sample
and the 2022 capture, so a hole in the ``trades`` stream is recorded as a ``trade`` gap and
backfilled. Aggregated pushes (``count`` > 1) stand for ``count`` fills, but the docs do not say
whether ``tradeId`` is the first or the last of them: the check uses the widest range consistent
with either (``parsers.trade_id_range``), so it cannot report a false hole but may miss a hole
smaller than an aggregate. Should the ids turn out not to be consecutive for an instrument (more
than ``TRADE_HOLES_PER_MINUTE_MAX`` holes a minute), the check switches itself off for it with an
error in /health instead of flooding the ledger and the REST budget.

Backfill uses ``/api/v5/market/trades`` (newest 500) only: ``history-trades`` pages further back
but its paging parameters are not in our reference notes, so a longer gap stays marked partial.
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from typing import Any, Coroutine

import orjson

from collector.connection import HeartbeatPolicy, WsConnection
from collector.exchanges.legacy_base import Feed
from collector.exchanges.okx import endpoints
from collector.exchanges.okx.parsers import (
    BookMessage, checksum_fragments, market_of, parse_books, parse_candles, parse_funding,
    parse_open_interest, parse_rest_candles, parse_rest_trades, parse_tickers, parse_trades,
    rest_data, sequence_ok, trade_id_range,
)
from collector.orderbook import OrderBook
from collector.resync import ResubscribeScheduler
from collector.rest import RestError
from common.schema import PERP, SPOT, ms_to_dt, now_utc, received_now

log = logging.getLogger(__name__)

PARSE_ERRORS = (KeyError, ValueError, TypeError, IndexError, AttributeError)
# 60018 "Wrong URL or channel:funding-rate,instId:BTC-USDT-SWAP doesn't exist. ..."
_REJECTED_ARG = re.compile(r"channel:([\w-]+),\s*instId:([\w-]+)")


class OkxFeed(Feed):
    name = "okx"
    connect_interval_s = endpoints.CONNECT_INTERVAL_S
    rest_weight_per_window = endpoints.REST_WEIGHT_PER_WINDOW
    rest_window_s = endpoints.REST_WINDOW_S
    ping_interval_s = endpoints.PING_INTERVAL_S

    def __init__(self, cfg, ctx) -> None:
        super().__init__(cfg, ctx)
        self.depth = min(cfg.book_depth, endpoints.BOOK_DEPTH)
        self.spot_rest = self.rest(cfg.spot_rest_url)
        self.perp_rest = self.rest(cfg.perp_rest_url)
        self.ct_val: dict[str, float] = {}
        self.book_conn: dict[str, WsConnection] = {}      # instId -> its /public connection
        self.conn_symbols: dict[WsConnection, list[str]] = {}
        self.resync = ResubscribeScheduler(self._resubscribe_book,
                                           cooldown_s=endpoints.RESYNC_COOLDOWN_S,
                                           name=self.name)
        self.checksum_checked = 0
        # connection -> monotonic times of its subscribe/unsubscribe requests in the last hour
        self._sub_requests: dict[WsConnection, deque[float]] = {}
        self.notices = 0
        # (channel, instId) -> monotonic time of the last WS push / subscribe ack; rejected ones
        self.last_ws_at: dict[tuple[str, str], float] = {}
        self._subscribed_at: dict[tuple[str, str], float] = {}
        self._ws_rejected: set[tuple[str, str]] = set()
        self.ws_max_silence_s = dict(endpoints.WS_MAX_SILENCE_S)
        self.rest_polls = 0
        # instId -> (highest trade id seen, its time ms); holes per instrument (monotonic times)
        self._last_trade: dict[str, tuple[int, int]] = {}
        self._trade_holes: dict[str, deque[float]] = {}
        self._trade_check_off: set[str] = set()

    def rest_for(self, inst: str):
        return self.perp_rest if market_of(inst) == PERP else self.spot_rest

    # ---- preparation -------------------------------------------------------------------------
    async def prepare(self) -> None:
        """Contract values of the SWAP instruments (contracts -> base units)."""
        for inst in self.symbols(PERP):
            try:
                payload = await self.perp_rest.get(endpoints.REST_INSTRUMENTS,
                                                   {"instType": "SWAP", "instId": inst})
                if str(payload.get("code")) != "0":
                    raise RestError(200, payload, endpoints.REST_INSTRUMENTS)
                data = payload["data"]
                if not data:
                    self.mark_unavailable(inst, "not listed in /api/v5/public/instruments")
                    continue
                self.ct_val[inst] = float(data[0]["ctVal"])
            except (RestError, KeyError, ValueError, TypeError, AttributeError) as exc:
                default = endpoints.DEFAULT_CT_VAL.get(inst, 1.0)
                log.warning("okx: ctVal of %s unavailable (%r); using default %s",
                            inst, exc, default)
                self.stats.error_once(self.name, f"ctVal fetch failed for {inst}; default used")
                self.ct_val[inst] = default

    def ct(self, inst: str) -> float:
        if market_of(inst) != PERP:
            return 1.0
        return self.ct_val.get(inst) or endpoints.DEFAULT_CT_VAL.get(inst, 1.0)

    # ---- connections -------------------------------------------------------------------------
    def plan(self) -> dict[str, dict[str, Any]]:
        """url -> {"label", "args": [(channel, instId)], "markets"} for what this partition owns;
        spot and swap share a connection when their URLs match, and a (channel, instId) is
        subscribed once (duplicates across connections waste bandwidth)."""
        plan: dict[str, dict[str, Any]] = {}
        for market, base in ((SPOT, self.cfg.spot_ws_url), (PERP, self.cfg.perp_ws_url)):
            public = endpoints.PUBLIC_CHANNELS_SPOT if market == SPOT \
                else endpoints.PUBLIC_CHANNELS_SWAP
            for path, channels in ((endpoints.PUBLIC_PATH, public),
                                   (endpoints.BUSINESS_PATH, endpoints.BUSINESS_CHANNELS)):
                url = base.rstrip("/") + path
                entry = plan.setdefault(url, {"label": path.strip("/"), "args": [],
                                              "markets": set()})
                for inst in self.symbols(market):
                    for channel in channels:
                        arg = (channel, inst)
                        if self.owns(market, inst, endpoints.CHANNEL_KINDS[channel]) \
                                and arg not in entry["args"]:
                            entry["args"].append(arg)
                            entry["markets"].add(market)
        labels: set[str] = set()
        for entry in plan.values():          # distinct URLs with the same path: distinct names
            if entry["label"] in labels:
                entry["label"] = f"{entry['label']}{len(labels)}"
            labels.add(entry["label"])
        return {url: entry for url, entry in plan.items() if entry["args"]}

    def build_connections(self) -> list[WsConnection]:
        heartbeat = HeartbeatPolicy(app_ping=lambda: endpoints.PING_TEXT,
                                    app_ping_interval_s=self.ping_interval_s,
                                    ping_only_when_quiet=True)
        conns = []
        for url, entry in self.plan().items():
            args = entry["args"]
            markets = entry["markets"]
            conn = self.connection(
                entry["label"], url, on_message=self.on_message,
                on_open=lambda c, a=args: self._on_open(c, a), heartbeat=heartbeat,
                kinds=sorted({endpoints.CHANNEL_KINDS[ch] for ch, _ in args}),
                market=next(iter(markets)) if len(markets) == 1 else "*")
            self.conn_symbols[conn] = sorted({inst for _, inst in args})
            for channel, inst in args:
                if channel == endpoints.BOOKS:
                    self.book_conn[inst] = conn
            conns.append(conn)
        return conns

    async def _on_open(self, conn: WsConnection, args: list[tuple[str, str]]) -> None:
        self._sub_requests[conn] = deque()      # a new connection has a fresh request bucket
        await self.subscribe(conn, args)

    def subscribe_budget_left(self, conn: WsConnection) -> int:
        stamps = self._sub_requests.setdefault(conn, deque())
        now = time.monotonic()
        while stamps and now - stamps[0] > 3600:
            stamps.popleft()
        return endpoints.SUBSCRIBE_REQUESTS_PER_HOUR - len(stamps)

    async def subscribe(self, conn: WsConnection, args: list[tuple[str, str]],
                        op: str = "subscribe") -> None:
        self._sub_requests.setdefault(conn, deque()).append(time.monotonic())
        await conn.send(orjson.dumps({"op": op, "args": [{"channel": ch, "instId": inst}
                                                         for ch, inst in args]}).decode())

    def on_disconnect(self, conn: WsConnection, reason: str) -> None:
        for inst, c in self.book_conn.items():
            if c is conn:
                self.book(market_of(inst), inst, keep_fragments=True).reset()
        # The reconnect subscribes (and so snapshots) every book on it again.
        self.resync.cancel(lambda inst: self.book_conn.get(inst) is conn)
        # The connection gap covers (and backfills) the trades missed meanwhile: no second,
        # trade-id gap for the same hole after the reconnect.
        for inst in self.conn_symbols.get(conn, ()):
            self._last_trade.pop(inst, None)

    # ---- messages ----------------------------------------------------------------------------
    def on_message(self, conn: WsConnection, raw: str | bytes) -> bool:
        if raw == endpoints.PONG_TEXT or raw == b"pong":
            return False
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            self.malformed(raw, exc)
            return False
        self.stats.messages += 1
        if not isinstance(msg, dict):
            self.malformed(raw, TypeError("message is not an object"))
            return False
        event = msg.get("event")
        if event is not None:
            try:
                self._on_event(conn, msg)
            except PARSE_ERRORS as exc:
                self.malformed(raw, exc)
            return False
        received_at = received_now()
        try:
            arg = msg["arg"]
            channel = arg["channel"]
            inst = arg["instId"]
            if channel == endpoints.BOOKS:
                if not self._on_book_update(msg, inst):
                    for update in parse_books(msg, self.ct(inst)):
                        self._on_book(update)
            elif channel == endpoints.TRADES:
                trades = parse_trades(msg, received_at, self.ct(inst))
                if inst not in self._trade_check_off:
                    self._check_trade_ids(inst, msg["data"])
                for record in trades:
                    self.emit(record)
            elif channel == endpoints.TICKERS:
                for record in parse_tickers(msg, received_at, self.ct(inst)):
                    self.emit(record)
            elif channel.startswith("candle"):
                for record in parse_candles(msg, received_at, self.ct(inst)):
                    self.emit(record)
            elif channel == endpoints.FUNDING:
                for record in parse_funding(msg, received_at):
                    self.emit(record)
                self._ws_pushed(channel, inst)
            elif channel == endpoints.OPEN_INTEREST:
                for record in parse_open_interest(msg, received_at, self.ct(inst)):
                    self.emit(record)
                self._ws_pushed(channel, inst)
        except PARSE_ERRORS as exc:
            self.malformed(raw, exc)
        return True

    def _on_event(self, conn: WsConnection, msg: dict[str, Any]) -> None:
        event = msg["event"]
        if event == "error":
            text = str(msg.get("msg"))
            self.stats.error_once(self.name, f"error {msg.get('code')}: {text}")
            match = _REJECTED_ARG.search(text)
            if match:
                self._ws_rejected.add((match.group(1), match.group(2)))
        elif event == "subscribe":
            arg = msg.get("arg")
            if not isinstance(arg, dict):
                return            # not an ack of ours (an ack echoes its {channel, instId})
            key = (arg.get("channel"), arg.get("instId"))
            if key[0] in self.ws_max_silence_s:
                self._subscribed_at[key] = time.monotonic()
        elif event == "notice":
            # Sent ~60 s before a service upgrade disconnects us: reconnect now.
            self.notices += 1
            log.warning("okx %s: notice %r; reconnecting", conn.name, msg.get("msg"))
            conn.reconnect("notice")
        # unsubscribe acks need nothing

    # ---- trade-id continuity -----------------------------------------------------------------
    def _check_trade_ids(self, inst: str, items: list[dict[str, Any]]) -> None:
        """A hole between consecutive trade ids is a ``trade`` gap (recorded closed, backfilled
        over REST). Ids at or below the highest seen are overlaps (reconnects, rotation), not
        holes, and never move the highest id back."""
        for item in items:
            low, high = trade_id_range(item)
            at = int(item["ts"])
            last = self._last_trade.get(inst)
            if last is not None and high <= last[0]:
                continue
            self._last_trade[inst] = (high, at)
            if last is None or low <= last[0] + 1:
                continue
            if self._too_many_holes(inst):
                return
            market = market_of(inst)
            gap = self.gaps.record(self.name, inst, market, "trade", "sequence_gap",
                                   start=ms_to_dt(last[1]), end=ms_to_dt(at),
                                   detail=f"trade ids {last[0] + 1}..{low - 1} missing")
            gap.extra["missing_ids"] = [last[0] + 1, low - 1]
            if self.cfg.backfill and self.owns_trades(market, inst):
                self._spawn(self._run_backfill(gap))

    def _too_many_holes(self, inst: str) -> bool:
        holes = self._trade_holes.setdefault(inst, deque())
        now = time.monotonic()
        holes.append(now)
        while holes and now - holes[0] > 60:
            holes.popleft()
        if len(holes) <= endpoints.TRADE_HOLES_PER_MINUTE_MAX:
            return False
        self._trade_check_off.add(inst)
        self.stats.error_once(self.name, f"{inst}: trade ids not consecutive "
                                         f"({len(holes)} holes a minute); id check off")
        return True

    # ---- order book --------------------------------------------------------------------------
    def _on_book_update(self, msg: dict[str, Any], inst: str) -> bool:
        """The hot path: an ``update`` of a synced book, applied straight from the decoded
        message (no BookMessage, no per-level tuples; text kept as sent), then its checksum.
        False (nothing done) for anything else, which ``parse_books``/``_on_book`` handle."""
        book = self.books.get((market_of(inst), inst))
        if book is None or not book.synced or msg.get("action") != "update":
            return False
        data = msg["data"]
        if not isinstance(data, list):
            return False
        factor = self.ct(inst)
        for item in data:
            if not book.synced:
                break                 # an earlier item lost sync: a snapshot is coming
            prev_seq_id = int(item.get("prevSeqId", -1))
            seq_id = int(item["seqId"])
            if not sequence_ok(book.update_id, prev_seq_id, seq_id):
                self.lose_sync(inst, "sequence_gap", f"last seqId {book.update_id}, "
                                                     f"prevSeqId {prev_seq_id}")
                return True
            try:
                book.bids.apply_text_fragments(item["bids"], factor)
                book.asks.apply_text_fragments(item["asks"], factor)
                book.update_id = seq_id
                book.changed = True
                book.truncate(self.depth)
                self._verify_checksum(inst, book, int(item.get("checksum") or 0))
            except PARSE_ERRORS as exc:
                # Possibly half applied (or odd text kept): rebuild this book, count the message.
                self.lose_sync(inst, "sequence_gap", f"malformed update: {exc!r}")
                raise
        return True

    def _verify_checksum(self, inst: str, book: OrderBook, expected: int) -> None:
        """OKX checks every update that carries a (non-zero) checksum: CRC32 of the top 25."""
        if not expected:
            return
        self.checksum_checked += 1
        local = checksum_fragments(book.bids.top_fragments(endpoints.CHECKSUM_LEVELS),
                                   book.asks.top_fragments(endpoints.CHECKSUM_LEVELS))
        if local != expected:
            self.lose_sync(inst, "checksum", f"local {local}, exchange {expected}")

    def _on_book(self, update: BookMessage) -> None:
        inst = update.inst_id
        market = market_of(inst)
        book = self.book(market, inst, keep_fragments=True)
        book.depth = self.depth
        if update.snapshot:
            book.bids.clear()
            book.asks.clear()
            self._apply(book, update)
            book.synced = True
            self.book_in_sync(market, inst)
            self.resync.done(inst)
        else:
            if not book.synced:
                if (market, inst) not in self._books_resyncing:
                    self.lose_sync(inst, "sequence_gap", "update before snapshot")
                return            # else: updates of the old subscription; a snapshot is coming
            if not sequence_ok(book.update_id, update.prev_seq_id, update.seq_id):
                self.lose_sync(inst, "sequence_gap", f"last seqId {book.update_id}, "
                                                     f"prevSeqId {update.prev_seq_id}")
                return
            self._apply(book, update)
        self._verify_checksum(inst, book, update.checksum)

    def _apply(self, book: OrderBook, update: BookMessage) -> None:
        for side, levels in ((book.bids, update.bids), (book.asks, update.asks)):
            for price, size, price_text, size_text in levels:
                side.set(price, size, price_text, size_text)
        book.update_id = update.seq_id
        book.changed = True
        book.truncate(self.depth)

    def lose_sync(self, inst: str, cause: str, detail: str) -> None:
        """Discard one instrument's book and resubscribe its ``books`` channel alone."""
        market = market_of(inst)
        self.book_lost_sync(market, inst, cause, detail)
        self.book(market, inst, keep_fragments=True).reset()
        self.resync.request(inst)

    async def _resubscribe_book(self, inst: str) -> None:
        conn = self.book_conn.get(inst)
        if conn is None:
            raise ConnectionError(f"okx: no connection carries the {inst} book")
        if self.subscribe_budget_left(conn) < 2 + endpoints.SUBSCRIBE_BUDGET_MARGIN:
            # Out of subscribe requests for this hour: a new connection gets a fresh bucket and
            # fresh snapshots of every book on it (its disconnect cancels this resync).
            conn.reconnect("subscribe request budget exhausted")
            return
        args = [(endpoints.BOOKS, inst)]
        await self.subscribe(conn, args, "unsubscribe")
        await self.subscribe(conn, args, "subscribe")

    async def stop(self) -> None:
        self.resync.cancel()
        await super().stop()

    # ---- funding / open interest: WS first, REST only when the channel is unavailable --------
    def _ws_pushed(self, channel: str, inst: str) -> None:
        self.last_ws_at[(channel, inst)] = time.monotonic()
        self._ws_rejected.discard((channel, inst))

    def ws_unavailable(self, channel: str, inst: str, since: float) -> bool:
        """The channel was rejected, or has been silent for well over its documented cadence
        since ``since`` (the poller's start), its last push and its last subscribe ack."""
        key = (channel, inst)
        if key in self._ws_rejected:
            return True
        heard = max(since, self.last_ws_at.get(key, 0.0), self._subscribed_at.get(key, 0.0))
        return time.monotonic() - heard > self.ws_max_silence_s[channel]

    def _ws_fresh(self, channel: str, inst: str) -> bool:
        """A push arrived on the current subscription (after its ack) recently enough."""
        key = (channel, inst)
        last = self.last_ws_at.get(key)
        return last is not None and last >= self._subscribed_at.get(key, 0.0) and \
            time.monotonic() - last <= self.ws_max_silence_s[channel]

    def _polled(self, inst: str) -> list[str]:
        """The derivatives channels of ``inst`` this partition owns (and so may poll)."""
        return [ch for ch in (endpoints.FUNDING, endpoints.OPEN_INTEREST)
                if self.owns(PERP, inst, endpoints.CHANNEL_KINDS[ch])]

    def pollers(self) -> list[Coroutine[Any, Any, None]]:
        return [self._poll_derivatives()] if any(self._polled(i) for i in self.symbols(PERP)) \
            else []

    async def _poll_derivatives(self) -> None:
        """REST stands in for ``funding-rate`` / ``open-interest`` only while the WS channel is
        unavailable: a REST value carries the response time, so polling while the channel
        pushes (every 30-90 s) would only store duplicates with made-up timestamps."""
        interval = max(self.ctx.poll_interval_s, 1.0)
        started = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            for inst in self.symbols(PERP):
                for channel in self._polled(inst):
                    if self.ws_unavailable(channel, inst, started):
                        await self._poll_rest(channel, inst)

    async def repoll_derivatives(self, symbol: str) -> None:
        """After a gap: the current values, unless the channel already pushed since its
        re-subscription."""
        for channel in self._polled(symbol):
            if not self._ws_fresh(channel, symbol):
                await self._poll_rest(channel, symbol)

    async def _poll_rest(self, channel: str, inst: str) -> None:
        path, params = ((endpoints.REST_FUNDING, {"instId": inst}) if channel == endpoints.FUNDING
                        else (endpoints.REST_OPEN_INTEREST, {"instType": "SWAP", "instId": inst}))
        payload: Any = None
        try:
            payload = await self.perp_rest.get(path, params)
            rest_data(payload)
            self.rest_polls += 1
            records = parse_funding(payload, now_utc()) if channel == endpoints.FUNDING \
                else parse_open_interest(payload, now_utc(), self.ct(inst))
            for record in records:
                self.emit(record)
        except RestError as exc:
            self.stats.error_once(self.name, f"REST {path} failed: {exc}")
        except PARSE_ERRORS as exc:
            self.malformed(payload, exc)

    # ---- backfill ----------------------------------------------------------------------------
    def backfill_kinds(self, gap) -> tuple[str, ...]:
        """A /business gap missed candles only: trades and the derivatives were on /public."""
        if gap.stream.endswith(":business"):
            return ("kline",)
        return super().backfill_kinds(gap)

    def owns_backfill(self, market: str, symbol: str, kind: str) -> bool:
        if kind == "derivatives":     # either channel's owner re-polls what it owns
            return bool(self._polled(symbol))
        return super().owns_backfill(market, symbol, kind)

    async def backfill_trades(self, market: str, symbol: str, since) -> bool:
        payload = await self.rest_for(symbol).get(
            endpoints.REST_TRADES, {"instId": symbol, "limit": endpoints.TRADES_LIMIT})
        trades = parse_rest_trades(payload, now_utc(), self.ct(symbol))
        return self.emit_backfilled_trades(trades, since, endpoints.TRADES_LIMIT)

    async def backfill_candles(self, market: str, symbol: str, since) -> None:
        """The newest 300 1m candles (5 h), closed ones (``confirm`` "1") from the gap start."""
        payload = await self.rest_for(symbol).get(
            endpoints.REST_CANDLES, {"instId": symbol, "bar": "1m",
                                     "limit": endpoints.CANDLES_LIMIT})
        start = since.replace(second=0, microsecond=0)
        for candle in parse_rest_candles(payload, symbol, "1m", now_utc(), self.ct(symbol)):
            if candle.closed and candle.ts >= start:
                self.emit(candle)
