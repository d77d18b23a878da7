"""The REST side of the Kraken feed: futures symbol validation (``/derivatives/api/v3/
instruments``) and the backfill hooks: spot trades (``/0/public/Trades``, forward by cursor) and closed
candles (``/0/public/OHLC``, at most 720 rows), futures trades (``/derivatives/api/v3/history``,
backwards by time) and funding / open interest (``/derivatives/api/v3/tickers``)."""
from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from collector.exchanges.base import Feed, FeedContext
from collector.exchanges.kraken import endpoints as ep
from collector.exchanges.kraken import parsers as p
from collector.rest import RateBudget, RateLimited, RestClient, RestError
from common.schema import PERP, SPOT, now_utc
from common.settings import ExchangeSettings

log = logging.getLogger(__name__)


class RestRetired(RestError):
    """The endpoint family is gone for good (a backfill through it is partial, not retried)."""

    def __init__(self, reason: str) -> None:
        super().__init__(410, reason, "")


class KrakenRest(Feed):
    """Base of ``KrakenFeed``: its REST clients, ``prepare`` and the ``Backfill`` hooks."""

    def __init__(self, cfg: ExchangeSettings, ctx: FeedContext) -> None:
        super().__init__(cfg, ctx)
        # Spot REST reports rate limits in the body of HTTP 200 answers: backed off like 429.
        self.spot_rest = RestClient(ctx.session, cfg.spot_rest_url,
                                    RateBudget(ep.SPOT_REST_CALLS, ep.SPOT_REST_WINDOW_S),
                                    rate_limited=p.rest_rate_limit)
        self.perp_rest = RestClient(ctx.session, cfg.perp_rest_url,
                                    RateBudget(ep.FUT_REST_CALLS, ep.FUT_REST_WINDOW_S))
        self.perp_rest_retired = False

    async def perp_get(self, path: str, params: dict | None = None) -> Any:
        """A derivatives REST v3 call. From its decommission date a failure (refused, 404, 410,
        ...) retires it for this process: reported once in ``/health``, never retried, and the
        perpetual backfill hooks do nothing (a gap stays ``backfilled: false``)."""
        if self.perp_rest_retired:
            raise RestRetired(ep.FUT_REST_RETIRED)
        try:
            return await self.perp_rest.get(path, params)
        except RestError as exc:
            if now_utc() >= ep.FUT_REST_DECOMMISSION and not isinstance(exc, RateLimited):
                self.perp_rest_retired = True
                self.stats.error_once(self.name, ep.FUT_REST_RETIRED)
                raise RestRetired(ep.FUT_REST_RETIRED) from exc
            raise

    async def prepare(self) -> None:
        """Validate the futures symbols against the instrument list (spot symbols are checked
        by the WebSocket). If the list is unreachable, go ahead: subscribe errors mark them."""
        if not self.cfg.perp_symbols or not self.cfg.perp_rest_url:
            return
        try:
            listed = p.parse_futures_instruments(await self.perp_get(ep.FUT_INSTRUMENTS_REST))
        except (RestError, KeyError, TypeError, ValueError, AttributeError) as exc:
            log.warning("kraken: futures instrument list unavailable (%s)", exc)
            return
        for symbol in self.configured_symbols(PERP):
            if symbol not in listed:
                self.mark_unavailable(PERP, symbol, "not in the futures instrument list")

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
            trades = p.parse_futures_history(await self.perp_get(ep.FUT_HISTORY_REST, params),
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
        body = await self.perp_get(ep.FUT_TICKERS_REST)
        for record in p.parse_futures_rest_ticker(body, symbol, now_utc()):
            if record is not None:
                self.emit(record)
