"""Backfill orchestration shared by every feed: what a gap missed, which partition re-fetches
it, and the REST hooks an exchange fills in (``backfill_trades``, ``backfill_candles``,
``repoll_derivatives``). Unique keys in MongoDB make overlaps harmless."""
from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from collector.gaps import Gap
from collector.rest import RestError
from common.schema import PERP, SPOT, Trade, s_to_dt

if TYPE_CHECKING:
    from collector.exchanges.base import Feed

log = logging.getLogger(__name__)

TRADES, KLINE, DERIVATIVES = "trades", "kline", "derivatives"


class Backfill:
    """Mixin of ``Feed``: the orchestration; exchanges override the three hooks."""

    async def run_backfill(self: Feed, gap: Gap) -> None:
        try:
            done = await self.backfill(gap)
        except Exception:  # noqa: BLE001 - a failed backfill leaves the gap marked not backfilled
            log.exception("%s: backfill of %s failed", self.name, gap.id)
            return
        if done:
            self.stats.backfills += 1
            self.gaps.mark_backfilled(gap)

    async def backfill(self: Feed, gap: Gap) -> bool:
        """Re-fetch over REST what ``gap`` missed and ``emit`` it: trades since the gap start,
        closed candles since then, and on perps funding and open interest re-polled, each only
        in the partition that owns it. Books are not backfilled (they resync from a snapshot).
        True if the gap is fully covered."""
        kinds = self.backfill_kinds(gap)
        if not kinds:
            return False
        markets = [SPOT, PERP] if gap.market == "*" else [gap.market]
        since = s_to_dt(gap.start.timestamp() - 1.0)
        complete = True
        for market in markets:
            for symbol in self.symbols(market):
                if gap.symbol not in ("*", symbol):
                    continue
                owned = [k for k in kinds if self.owns_backfill(market, symbol, k)]
                try:
                    if TRADES in owned:
                        complete &= await self.backfill_trades(market, symbol, since)
                    if KLINE in owned:
                        complete &= await self.backfill_candles(market, symbol, since) \
                            is not False
                    if DERIVATIVES in owned and market == PERP:
                        await self.repoll_derivatives(symbol)
                except RestError as exc:
                    log.warning("%s: backfill %s %s failed: %s", self.name, market, symbol, exc)
                    complete = False
                except (KeyError, TypeError, ValueError, IndexError) as exc:
                    self.malformed(exc, exc)
                    complete = False
        log.info("%s: backfill of %s %s", self.name, gap.id, "complete" if complete else "partial")
        return complete

    def backfill_kinds(self: Feed, gap: Gap) -> tuple[str, ...]:
        """What a gap missed: nothing for a book (it resyncs), trades for a trade-id hole, only
        what the dropped connection carried for a connection gap, everything for a restart."""
        if gap.stream == "book":
            return ()
        if gap.stream == "trade":
            return (TRADES,)
        kinds = self.connection_kinds.get(gap.stream)
        if kinds is None:
            return (TRADES, KLINE, DERIVATIVES)
        out = []
        if "trades" in kinds:
            out.append(TRADES)
        if "kline" in kinds:
            out.append(KLINE)
        if kinds & {"ticker", "funding", "open_interest"}:
            out.append(DERIVATIVES)
        return tuple(out)

    def owns_backfill(self: Feed, market: str, symbol: str, kind: str) -> bool:
        """Whether this partition backfills ``kind`` of (market, symbol): the owner of the first
        channel (in the spec's order) that carries it, so exactly one partition does."""
        wanted = {TRADES: ("trades",), KLINE: ("kline",),
                  DERIVATIVES: ("funding", "open_interest", "ticker")}[kind]
        channels = self.channels(market)
        for data_kind in wanted:
            for channel in channels:
                if channel.kind == data_kind:
                    return self.owns(market, symbol, channel.partition_stream)
        return False

    def emit_backfilled_trades(self: Feed, trades: list[Trade], since: datetime,
                               page_limit: int) -> bool:
        """Emit the trades of one REST page at or after ``since``; True if the page reaches
        back to ``since`` (it held older trades, or fewer than a full page)."""
        fresh = [t for t in trades if t.ts >= since]
        for trade in fresh:
            self.emit(trade)
        self.stats.backfilled_trades += len(fresh)
        return bool(trades) and (len(fresh) < len(trades) or len(trades) < page_limit)

    async def page_trades_back(self: Feed, newest: Callable[[], Awaitable[list[Trade]]],
                               before: Callable[[int], Awaitable[list[Trade]]],
                               since: datetime, page_limit: int, max_pages: int = 20) -> bool:
        """Trades since ``since`` from a venue with integer trade ids that serves the newest
        page (``newest()``) and the page just before an id (``before(oldest id)``): pages back
        until a page reaches ``since``; True if one did within ``max_pages`` (a REST budget)."""
        page = await newest()
        for pages in range(1, max_pages + 1):
            if self.emit_backfilled_trades(page, since, page_limit):
                return True
            if not page or pages == max_pages:
                return False
            oldest = min(int(t.trade_id) for t in page)
            page = [t for t in await before(oldest) if int(t.trade_id) < oldest]
        return False

    # ---- hooks -------------------------------------------------------------------------------
    async def backfill_trades(self, market: str, symbol: str, since: datetime) -> bool:
        """Emit the trades of (market, symbol) since ``since`` from the exchange's REST API;
        True if what was fetched reaches back to ``since``."""
        return False

    async def backfill_candles(self, market: str, symbol: str, since: datetime) -> Any:
        """Emit the closed 1m candles of (market, symbol) since ``since``; False if the REST
        window cannot reach back that far (the gap then stays partial)."""
        return None

    async def repoll_derivatives(self, symbol: str) -> None:
        """Re-poll funding and open interest of a perpetual over REST."""
