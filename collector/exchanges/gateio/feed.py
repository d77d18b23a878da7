"""Gate.io v4 spot + USDT perpetual (``endpoints.SPEC``). Books: ``order_book_update`` diffs on a
REST snapshot. Open interest: ``futures.contract_stats`` only (1m buckets, the series REST backfills
onto the same keys; tickers' ``total_size`` would interleave a second timestamp grid)."""
from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any, Callable, Coroutine

from collector.connection import WsConnection
from collector.exchanges.base import Feed, FeedContext
from collector.exchanges.gateio import endpoints as ep
from collector.exchanges.gateio import parsers as p
from collector.kit.backfill import DERIVATIVES
from collector.kit.books import SnapshotBooks, SymbolUnavailable
from collector.kit.requests import PendingRequests
from collector.kit.spec import ConnMeta, Subscription
from collector.rest import RestError
from common.schema import PERP, SPOT, OpenInterest, now_utc, received_now
from common.settings import ExchangeSettings


class GateioFeed(Feed):
    name = "gateio"
    spec = ep.SPEC

    def __init__(self, cfg: ExchangeSettings, ctx: FeedContext) -> None:
        super().__init__(cfg, ctx)
        self.multipliers: dict[str, float] = {}
        self.funding_info: dict[str, dict[str, Any]] = {}
        self._last_oi: dict[str, float] = {}     # symbol -> newest stats bucket (epoch s)
        self._oi_since: dict[str, float] = {}    # symbol -> newest bucket before a disconnect
        self.requests: PendingRequests[Subscription] = PendingRequests()  # errors name the id
        self.perp_rest = self.rest(cfg.perp_rest_url, headers=dict([ep.SIZE_DECIMAL_HEADER]))
        self.rests = {SPOT: self.rest(cfg.spot_rest_url), PERP: self.perp_rest}
        self.book_sync = SnapshotBooks(self, self._fetch_snapshot, check_crossed=True)
        self.routes = {
            ep.SPOT_BOOK: self._on_spot_book, ep.FUT_BOOK: self._on_futures_book,
            ep.SPOT_TRADES: lambda conn, msg, raw: self.emit(
                p.parse_spot_trade(msg, received_now())),
            ep.SPOT_TICKERS: lambda conn, msg, raw: self.emit(
                p.parse_spot_ticker(msg, received_now())),
            ep.SPOT_CANDLES: lambda conn, msg, raw: self.emit_candle(
                p.parse_spot_candle(msg, received_now())),
            ep.FUT_TRADES: self._rows(p.parse_futures_trades, self.emit),
            ep.FUT_TICKERS: self._rows(p.parse_futures_tickers, self._ticker_funding,
                                       self.funding_info),
            ep.FUT_CANDLES: self._rows(p.parse_futures_candles, self.emit_candle),
            ep.FUT_STATS: self._rows(p.parse_contract_stats, self._open_interest),
            ep.SPOT_SYSTEM: self._on_system, ep.FUT_SYSTEM: self._on_system}

    def configured_symbols(self, market: str) -> list[str]:
        return [s.upper() for s in super().configured_symbols(market)]

    def contract_symbols(self) -> list[str]:
        """Contracts whose size (and funding schedule) this partition needs: any owned stream."""
        return [s for s in self.symbols(PERP) if any(
            self.owns(PERP, s, ch.partition_stream) for ch in self.channels(PERP))]

    # ---- setup and subscriptions -------------------------------------------------------------
    async def prepare(self) -> None:
        for symbol in self.contract_symbols():
            await self._load_contract(symbol)

    async def _load_contract(self, symbol: str) -> None:
        """Contract size and funding schedule. A 400/404 removes the contract (not the spot
        pair of the same name); unreachable or malformed: the known size, else the default."""
        try:
            info = p.parse_contract(await self.perp_rest.get(
                ep.FUT_CONTRACT_REST.format(contract=symbol)))
        except (RestError, *p.ROW_ERRORS) as exc:
            if not isinstance(exc, RestError):
                self.malformed(symbol, exc)
            known = self.multipliers.get(symbol, ep.DEFAULT_QUANTO_MULTIPLIER.get(symbol))
            if getattr(exc, "status", None) in (400, 404) or known is None:
                self.mark_unavailable(PERP, symbol, f"contract lookup failed: {exc!r}")
            else:
                self.multipliers[symbol] = known
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

    def subscribe_requests(self, meta: ConnMeta, subs: list[Subscription]) -> list[str]:
        """One request per (channel, symbol), with an id (errors name it); a contract without a
        known size is left out (its sizes could not be converted)."""
        requests = []
        for sub in subs:
            if sub.market == PERP and sub.symbol not in self.multipliers:
                continue
            self.requests.add(request_id := self.requests.new_id(), meta.label, [sub])
            requests.append(p.subscribe_request(sub.channel.name, ep.payload(
                sub.channel.name, sub.symbol), request_id, int(time.time())))
        return requests

    def on_disconnect(self, meta: ConnMeta, reason: str) -> None:
        self.book_sync.reset(meta.market, meta.symbols("book"))
        self.requests.drop(meta.label)
        # Open interest is re-polled from here (not from pushes that beat the backfill).
        self._oi_since.update({s: self._last_oi[s] for s in meta.symbols("open_interest")
                               if s in self._last_oi and s not in self._oi_since})

    # ---- messages ----------------------------------------------------------------------------
    def channel_of(self, msg: dict) -> str | None:
        return msg.get("channel") if msg.get("event") == "update" else None

    def on_control(self, conn: WsConnection, msg: Any) -> None:
        """Acks, pongs, errors, the service-upgrade notice."""
        request = self.requests.take(msg.get("id"))
        sub = request.args[0] if request is not None else None
        if p.is_upgrade(msg):
            conn.reconnect("service upgrade notice")
        elif msg.get("error"):
            self._error(self.meta(conn).market, msg, sub)

    def _on_system(self, conn: WsConnection, msg: dict, raw: Any) -> bool:
        """``*.system`` pushes are control traffic (the upgrade notice), not data."""
        self.on_control(conn, msg)
        return False

    def _error(self, market: str, msg: dict, sub: Subscription | None) -> None:
        """Count; an unknown symbol is unavailable in its market only (by id, name or echo)."""
        text, named = p.parse_error(msg)
        payload = msg.get("payload") or []
        self.stats.error_once(self.name, f"{msg.get('channel')} {payload}: {text}")
        if named is None:
            return          # not an unknown symbol (argument order, duplicate, ...)
        configured = self.configured_symbols(market)
        market, symbol = (sub.market, sub.symbol) if sub is not None else (market, next(
            (s for s in [named, *payload] if s in configured), None))
        if symbol is not None:
            self.mark_unavailable(market, symbol, text)

    def _on_spot_book(self, conn: WsConnection, msg: dict, raw: Any) -> None:
        self._book(SPOT, msg["result"], p.apply_spot_book, p.spot_book_diff)

    def _on_futures_book(self, conn: WsConnection, msg: dict, raw: Any) -> None:
        mult = self.multipliers[msg["result"]["s"]]
        self._book(PERP, msg["result"],
                   lambda book, r, last_id: p.apply_futures_book(book, r, last_id, mult),
                   lambda r: p.futures_book_diff(r, mult))

    def _book(self, market: str, r: dict, apply: Callable, to_diff: Callable) -> None:
        if r.get("full"):            # the push is the whole book: no REST snapshot needed
            diff = to_diff(r)
            self.book_sync.on_full_snapshot(market, r["s"], diff.bids, diff.asks, diff.last_id)
            return
        first, last = p.book_ids(r)
        self.book_sync.on_diff(market, r["s"], first, last, None, r, apply, to_diff)


    def _batch(self, parse: Callable[..., list], msg: Any, *args: Any) -> list:
        """A list of futures rows: a bad row is counted as malformed and skipped, alone."""
        skipped: p.Skipped = []
        records = parse(msg, received_now(), self.multipliers, *args, skipped=skipped)
        for row, exc in skipped:
            self.malformed(row, exc)
        return records

    def _rows(self, parse: Callable[..., list], handle: Callable[[Any], None], *args: Any):
        """The route of a ``futures.*`` channel whose result is a list of rows."""
        def route(conn: WsConnection, msg: dict, raw: Any) -> None:
            for record in self._batch(parse, msg, *args):
                handle(record)
        return route

    def _ticker_funding(self, pair: tuple) -> None:
        self.emit(pair[0])
        self.emit_derived(pair[1], pair[1].rate)

    def _open_interest(self, oi: OpenInterest) -> None:
        self._last_oi[oi.symbol] = max(oi.ts.timestamp(), self._last_oi.get(oi.symbol, 0.0))
        self.emit(oi)

    async def _fetch_snapshot(self, market: str, symbol: str):
        try:
            body = await self.rests[market].get(ep.BOOK_REST[market], {
                ep.SYMBOL_PARAM[market]: symbol, "limit": ep.SNAPSHOT_LIMIT, "with_id": "true"})
        except RestError as exc:
            if isinstance(exc.payload, dict) and exc.payload.get("label") in ep.UNKNOWN_LABELS:
                raise SymbolUnavailable(f"{exc.payload}") from exc
            raise
        return p.parse_spot_book_snapshot(body) if market == SPOT else \
            p.parse_futures_book_snapshot(body, self.multipliers[symbol])

    async def stop(self) -> None:
        self.book_sync.cancel_all()
        await super().stop()

    # ---- REST backfill -----------------------------------------------------------------------
    def owns_backfill(self, market: str, symbol: str, kind: str) -> bool:
        """Funding and open interest have different owners: repoll_derivatives checks each."""
        return kind == DERIVATIVES or super().owns_backfill(market, symbol, kind)

    async def backfill_trades(self, market: str, symbol: str, since: datetime) -> bool:
        """Trades in [since, now], newest first, paged; complete when a page is not full."""
        query = {ep.SYMBOL_PARAM[market]: symbol, "limit": ep.TRADES_PAGE,
                 "from": int(since.timestamp()), "to": int(time.time()) + 1}
        for page in range(ep.TRADES_MAX_PAGES):
            paging = {"page": page + 1} if market == SPOT else {"offset": page * ep.TRADES_PAGE}
            body = await self.rests[market].get(ep.TRADES_REST[market], {**query, **paging})
            trades = p.parse_rest_spot_trades(body, now_utc()) if market == SPOT else \
                self._batch(p.parse_rest_futures_trades, body)
            self.emit_backfilled_trades(trades, since, ep.TRADES_PAGE)
            if len(body) < ep.TRADES_PAGE:
                return True
        return False

    async def backfill_candles(self, market: str, symbol: str, since: datetime) -> None:
        """Closed 1m candles from the gap's minute (at most the last 1000 points)."""
        start = max(int(since.timestamp()) // 60 * 60,
                    (int(time.time()) // 60 - ep.CANDLES_MAX_POINTS + 1) * 60)
        body = await self.rests[market].get(ep.CANDLES_REST[market], {
            ep.SYMBOL_PARAM[market]: symbol, "interval": ep.CANDLE_INTERVAL, "from": start})
        candles = p.parse_rest_spot_candles(body, symbol, now_utc()) if market == SPOT else \
            p.parse_rest_futures_candles(body, symbol, now_utc(), self.multipliers)
        for candle in candles:
            self.emit(candle)

    async def repoll_derivatives(self, symbol: str) -> None:
        """Funding from the contract document (tickers' owner); open interest from REST 1m
        contract_stats since the newest streamed point, paged (contract_stats' owner)."""
        if self.owns(PERP, symbol, "ticker"):
            body = await self.perp_rest.get(ep.FUT_CONTRACT_REST.format(contract=symbol))
            self.emit(p.parse_contract_funding(body, now_utc()))
        if not self.owns(PERP, symbol, "open_interest"):
            return
        query: dict[str, Any] = {"contract": symbol, "interval": ep.STATS_REST_INTERVAL,
                                 "limit": ep.STATS_REST_LIMIT}
        since = self._oi_since.pop(symbol, self._last_oi.get(symbol))
        for _ in range(ep.STATS_REST_MAX_PAGES):
            if since is not None:
                query["from"] = int(since) + 1
            body = await self.perp_rest.get(ep.FUT_STATS_REST, query)
            rows = p.parse_rest_contract_stats(body, symbol, now_utc(), self.multipliers)
            for oi in rows:
                self._open_interest(oi)
            if len(rows) < ep.STATS_REST_LIMIT:
                return
            since = rows[-1].ts.timestamp()
