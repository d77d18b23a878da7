"""OKX v5 feed: per market a /public (tickers, books, funding-rate, open-interest) and a
/business (trades-all, candle1m) connection (``endpoints.SPEC``). Books: a WS snapshot when one
comes (kept with the wire text for the CRC32 checksum; a break resubscribes that book alone,
``ResubscribeBooks``), else a REST ``/market/books`` snapshot spliced with the buffered updates
on prevSeqId (``SnapshotBooks``; a break re-fetches without resubscribing, which keeps the 480
requests/hour budget). SWAP sizes become base units with each instrument's own ctVal
(``contracts``). Funding and open interest: REST only while a channel is rejected or silent."""
from __future__ import annotations

import logging
import re
from datetime import datetime
from typing import Any, Callable, Coroutine

import orjson

from collector.connection import MessageHandler, WsConnection
from collector.exchanges.base import Feed, FeedContext
from collector.exchanges.okx import endpoints as ep
from collector.exchanges.okx import parsers
from collector.exchanges.okx.api import get_data
from collector.exchanges.okx.books import OkxBooks
from collector.exchanges.okx.budget import SubscribeBudget
from collector.exchanges.okx.contracts import ContractSizes
from collector.exchanges.okx.derivatives import DerivativesFallback
from collector.kit.spec import ConnMeta, Subscription
from collector.kit.tradeids import TradeIdContinuity
from collector.rest import RestClient
from common.schema import PERP, now_utc, received_now
from common.settings import ExchangeSettings

log = logging.getLogger(__name__)

PONG = object()        # the decoded text "pong"
# 60018 "Wrong URL or channel:funding-rate,instId:BTC-USDT-SWAP doesn't exist. ..."
_REJECTED_ARG = re.compile(r"channel:([\w-]+),\s*instId:([\w-]+)")


class OkxFeed(Feed):
    name = "okx"
    spec = ep.SPEC

    def __init__(self, cfg: ExchangeSettings, ctx: FeedContext) -> None:
        super().__init__(cfg, ctx)
        self.depth = min(cfg.book_depth, ep.BOOK_DEPTH)
        self.spot_rest = self.rest(cfg.spot_rest_url)
        self.perp_rest = self.rest(cfg.perp_rest_url)
        self.contracts = ContractSizes(self)
        self.ct_val = self.contracts.values
        # Base units per contract (1 for spot; None while a SWAP's ctVal is unknown).
        self.ct: Callable[[str], float | None] = self.contracts.get
        self.order_books = OkxBooks(self)
        self.book_sync, self.rest_books = self.order_books.resubscribe, self.order_books.rest
        self.book_conn: dict[tuple[str, str], WsConnection] = {}   # its /public connection
        self.budget = SubscribeBudget()
        self.derivatives = DerivativesFallback(self)
        self.watch = self.derivatives.watch
        self.trade_ids = TradeIdContinuity(ep.TRADE_HOLES_PER_MINUTE_MAX,
                                           self._trade_ids_off)
        self.notices = 0
        self.routes = {ep.TICKERS.name: self._on_tickers, ep.TRADES.name: self._on_trades,
                       ep.BOOKS.name: self._on_books, ep.CANDLE.name: self._on_candles,
                       ep.FUNDING.name: self._on_funding,
                       ep.OPEN_INTEREST.name: self._on_open_interest}

    def rest_for(self, market: str) -> RestClient:
        return self.perp_rest if market == PERP else self.spot_rest

    # ---- setup -------------------------------------------------------------------------------
    async def prepare(self) -> None:
        """Contract values of the SWAP instruments; a failed fetch retries in the background."""
        for inst in self.symbols(PERP):
            if not await self.contracts.load(inst):
                self.spawn(self.contracts.retry(inst))

    def subscribe_requests(self, meta: ConnMeta, subs: list[Subscription]) -> list[str]:
        requests = [self._request("subscribe", batch) for batch in self.batched(subs)]
        self.budget.spend(meta.label, len(requests))
        return requests

    @staticmethod
    def _request(op: str, subs: list[Subscription]) -> str:
        return orjson.dumps({"op": op, "args": [{"channel": s.channel.name, "instId": s.symbol}
                                                for s in subs]}).decode()

    def arg_text(self, sub: Subscription) -> str:
        return f'{{"channel":"{sub.channel.name}","instId":"{sub.symbol}"}}'

    def on_connection_open(self, meta: ConnMeta) -> None:
        self.budget.fresh(meta.label)          # a new connection has a fresh request bucket

    def new_connection(self, meta: ConnMeta, on_message: MessageHandler | None = None
                       ) -> WsConnection:
        conn = super().new_connection(meta, on_message)
        for inst in meta.symbols("book"):
            self.book_conn[(meta.market, inst)] = conn
        return conn

    def on_disconnect(self, meta: ConnMeta, reason: str) -> None:
        # The reconnect subscribes (and so snapshots) every book on it again.
        if meta.carries_books:
            self.order_books.reset(meta.market, meta.symbols("book"))

    # ---- messages ----------------------------------------------------------------------------
    def decode_other(self, raw: str | bytes) -> Any:
        if raw == ep.PONG_TEXT or raw == b"pong":
            return PONG
        raise ValueError("not JSON")

    def channel_of(self, msg: Any) -> Any:
        if msg is PONG or "event" in msg:
            return None
        return msg["arg"]["channel"]

    def on_control(self, conn: WsConnection, msg: Any) -> None:
        if msg is PONG:
            return
        event = msg.get("event")
        if event == "error":
            text = str(msg.get("msg"))
            self.stats.error_once(self.name, f"error {msg.get('code')}: {text}")
            match = _REJECTED_ARG.search(text)
            if match and str(msg.get("code")) == ep.WS_UNKNOWN_ARG:
                channel, inst = match.groups()
                if channel in ep.WS_MAX_SILENCE_S:       # REST stands in for this channel
                    self.watch.rejected.add((channel, inst))
                else:                                    # the instrument does not exist
                    self.mark_unavailable(parsers.market_of(inst), inst, text)
        elif event == "subscribe" and isinstance(msg.get("arg"), dict):
            self.watch.acked((msg["arg"].get("channel"), msg["arg"].get("instId")))
        elif event == "notice":
            # Sent ~60 s before a service upgrade disconnects us: reconnect now.
            self.notices += 1
            log.warning("okx %s: notice %r; reconnecting", conn.name, msg.get("msg"))
            conn.reconnect("notice")

    def _on_tickers(self, conn: WsConnection, msg: dict, raw: Any) -> None:
        if (factor := self.ct(msg["arg"]["instId"])) is not None:
            for ticker in parsers.parse_tickers(msg, received_now(), factor):
                self.emit(ticker)

    def _on_trades(self, conn: WsConnection, msg: dict, raw: Any) -> None:
        if (factor := self.ct(msg["arg"]["instId"])) is None:
            return                      # held back until the contract value is known
        check, emit = self.trade_ids.check, self.emit
        for trade, item in zip(parsers.parse_trades(msg, received_now(), factor), msg["data"]):
            low, high = parsers.trade_id_range(item)
            if (hole := check((trade.market, trade.symbol), low, high,
                              int(item["ts"]))) is not None:
                self.trade_hole(trade.market, trade.symbol, hole)
            emit(trade)

    def _on_candles(self, conn: WsConnection, msg: dict, raw: Any) -> None:
        if (factor := self.ct(msg["arg"]["instId"])) is not None:
            for candle in parsers.parse_candles(msg, received_now(), factor):
                self.emit(candle)

    def _on_funding(self, conn: WsConnection, msg: dict, raw: Any) -> None:
        for funding in parsers.parse_funding(msg, received_now()):
            self.emit_derived(funding, funding.rate)
        self.watch.pushed((ep.FUNDING.name, msg["arg"]["instId"]))

    def _on_open_interest(self, conn: WsConnection, msg: dict, raw: Any) -> None:
        inst = msg["arg"]["instId"]
        if (factor := self.ct(inst)) is not None:
            for oi in parsers.parse_open_interest(msg, received_now(), factor):
                self.emit_derived(oi, oi.open_interest)
        self.watch.pushed((ep.OPEN_INTEREST.name, inst))

    # ---- order books -------------------------------------------------------------------------
    def _on_books(self, conn: WsConnection, msg: dict, raw: Any) -> None:
        self.order_books.on_message(msg)

    async def resubscribe_book(self, key: tuple[str, str]) -> None:
        conn = self.book_conn.get(key)
        if conn is None:
            raise ConnectionError(f"okx: no connection carries the {key} book")
        label = self.meta(conn).label
        if self.budget.left(label) < 2 + ep.SUBSCRIBE_BUDGET_MARGIN:
            # Out of subscribe requests for this hour: a new connection gets a fresh bucket and
            # fresh snapshots of every book on it (its disconnect cancels this resync).
            conn.reconnect("subscribe request budget exhausted")
            return
        sub = [Subscription(ep.BOOKS, *key)]
        self.budget.spend(label, 2)
        await conn.send(self._request("unsubscribe", sub))
        await conn.send(self._request("subscribe", sub))

    async def stop(self) -> None:
        self.order_books.cancel_all()
        await super().stop()

    # ---- funding / open interest: REST only while a channel is unavailable ------------------
    def pollers(self) -> list[Coroutine[Any, Any, None]]:
        polled = any(self.derivatives.polled(i) for i in self.symbols(PERP))
        return [self.derivatives.run()] if polled else []

    async def repoll_derivatives(self, symbol: str) -> None:
        await self.derivatives.repoll(symbol)

    # ---- backfill ----------------------------------------------------------------------------
    def owns_backfill(self, market: str, symbol: str, kind: str) -> bool:
        if kind == "derivatives":     # either channel's owner re-polls what it owns
            return bool(self.derivatives.polled(symbol))
        return super().owns_backfill(market, symbol, kind)

    async def backfill_trades(self, market: str, symbol: str, since: datetime) -> bool:
        """Fills since ``since`` (the same objects and ids as ``trades-all``): the newest 500,
        then ``history-trades`` pages older than the oldest id; complete once a page reaches
        back to ``since``."""
        if (factor := self.ct(symbol)) is None:
            return False
        path, limit = ep.REST_TRADES, ep.TRADES_LIMIT
        params: dict[str, Any] = {"instId": symbol, "limit": limit}
        for _ in range(ep.BACKFILL_MAX_PAGES):
            data = await get_data(self.rest_for(market), path, params)
            trades = parsers.parse_trades({"data": data}, now_utc(), factor)
            if self.emit_backfilled_trades(trades, since, limit) or not trades:
                return bool(trades)
            path, limit = ep.REST_HISTORY_TRADES, ep.HISTORY_TRADES_LIMIT
            params = {"instId": symbol, "type": "1", "limit": limit,
                      "after": min(int(t.trade_id) for t in trades)}
        return False

    async def backfill_candles(self, market: str, symbol: str, since: datetime) -> bool:
        """Closed 1m candles (``confirm`` "1") from the gap start: ``candles`` pages older than
        the oldest row, then ``history-candles``; False if they run out before ``since``."""
        if (factor := self.ct(symbol)) is None:
            return False
        start = since.replace(second=0, microsecond=0)
        path, params = ep.REST_CANDLES, {"instId": symbol, "bar": "1m", "limit": ep.CANDLES_LIMIT}
        for _ in range(ep.BACKFILL_MAX_PAGES):
            data = await get_data(self.rest_for(market), path, params)
            candles = parsers.parse_rest_candles({"code": "0", "data": data}, symbol, "1m",
                                                 now_utc(), factor)
            for candle in candles:
                if candle.closed and candle.ts >= start:
                    self.emit(candle)
            if candles and candles[0].ts <= start:
                return True
            if candles:
                params = {**params, "after": int(candles[0].ts.timestamp() * 1000)}
            elif path == ep.REST_CANDLES:
                path = ep.REST_HISTORY_CANDLES      # past the latest 1,440 rows
            else:
                return False
        return False
