"""Backfill orchestration shared by every feed: what a gap missed, which partition re-fetches
it, and the REST hooks an exchange fills in (``backfill_trades``, ``backfill_candles``,
``repoll_derivatives``). Unique keys in MongoDB make overlaps harmless."""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any, Awaitable, Callable, ClassVar, Coroutine

from pymongo.errors import PyMongoError

from collector.gaps import Gap
from collector.rest import RestError
from common import schema
from common.schema import PERP, SPOT, Record, Trade, s_to_dt

if TYPE_CHECKING:
    from collector.gaps import GapLedger
    from collector.kit.spec import Channel
    from collector.stats import ExchangeStats
    from collector.writer import Writer

log = logging.getLogger(__name__)

TRADES, KLINE, DERIVATIVES = "trades", "kline", "derivatives"


class Backfill:
    """Mixin of ``Feed``: the orchestration; exchanges override the three hooks."""

    # Per (market, symbol): (id, time) of the oldest trade the last backfill page held.
    backfill_oldest: dict[tuple[str, str], tuple[int, Any]]

    if TYPE_CHECKING:      # provided by Feed
        name: ClassVar[str]
        consecutive_trade_ids: ClassVar[tuple[str, ...]]
        stats: ExchangeStats
        gaps: GapLedger
        writer: Writer
        connection_kinds: dict[str, set[str]]

        def spawn(self, coro: Coroutine[Any, Any, Any]) -> None: ...

        def symbols(self, market: str) -> list[str]: ...
        def owns(self, market: str, symbol: str, stream: str) -> bool: ...
        def channels(self, market: str) -> list[Channel]: ...
        def malformed(self, raw: Any, exc: BaseException) -> None: ...
        def emit(self, record: Record, *, history: bool = True) -> None: ...

    async def run_backfill(self, gap: Gap) -> None:
        try:
            done = await self.backfill(gap)
        except Exception:  # noqa: BLE001 - a failed backfill leaves the gap marked not backfilled
            log.exception("%s: backfill of %s failed", self.name, gap.id)
            return
        if done:
            self.stats.backfills += 1
            self.gaps.mark_backfilled(gap)

    async def backfill(self, gap: Gap) -> bool:
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
        short: list[tuple[str, str]] = []       # trade backfills that did not reach ``since``
        for market in markets:
            for symbol in self.symbols(market):
                if gap.symbol not in ("*", symbol):
                    continue
                owned = [k for k in kinds if self.owns_backfill(market, symbol, k)]
                try:
                    if TRADES in owned:
                        reached = await self.backfill_trades(market, symbol, since)
                        if not reached:
                            short.append((market, symbol))
                        complete &= reached
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
        if short:
            self.spawn(self._count_trade_loss(gap, short))
        return complete

    async def _count_trade_loss(self, gap: Gap, short: list[tuple[str, str]]) -> None:
        """Trades a gap lost for good (its backfill could not reach back to the start): where
        ids are consecutive, exactly the ids between the last trade stored before the gap and
        the oldest one the exchange still had. Counted once MongoDB holds everything received
        before the gap (after an outage: the spool replayed); elsewhere the loss is unknown."""
        writer = self.writer
        while True:
            if (writer.db_available and not (writer.spool is not None and writer.spool)
                    and (writer.durable_until or 0.0) > gap.start.timestamp()):
                try:
                    lost, unknown = await self._trades_lost(gap, short)
                    break
                except PyMongoError as exc:
                    log.warning("%s: loss of %s not countable yet: %r", self.name, gap.id, exc)
            await asyncio.sleep(1.0)
        gap.extra.update(records_lost=sum(lost.values()), lost_by_stream=lost)
        if unknown:
            gap.extra["loss_unknown"] = unknown
        self.gaps.mark_backfilled(gap, False)
        log.warning("%s: gap %s lost %d trades for good (%s)%s", self.name, gap.id,
                    sum(lost.values()), lost, f"; unknown for {unknown}" if unknown else "")

    async def _trades_lost(self, gap: Gap, short: list[tuple[str, str]]
                           ) -> tuple[dict[str, int], list[str]]:
        """Per stream of ``short``: trades missing for good, or the stream listed as unknown."""
        lost: dict[str, int] = {}
        unknown: list[str] = []
        trades = self.writer.db[schema.TRADES]
        for market, symbol in short:
            oldest = self.backfill_oldest.get((market, symbol))
            last = None
            key = {"exchange": self.name, "market": market, "symbol": symbol}
            if market in self.consecutive_trade_ids and oldest is not None:
                # The newest trade durable before the gap, then whatever is stored between it
                # and the oldest one re-fetched (a write in flight when the process died).
                last = await trades.find_one({**key, "received_at": {"$lt": gap.start}},
                                             {"trade_id": 1, "ts": 1}, sort=[("ts", -1)])
            if last is None:
                unknown.append(f"{market}:{symbol}")
                continue
            assert oldest is not None
            lo, (hi, hi_ts) = int(last["trade_id"]), oldest
            between = {int(d["trade_id"]) async for d in trades.find(
                {**key, "ts": {"$gte": last["ts"], "$lte": hi_ts}}, {"trade_id": 1})}
            missing = hi - lo - 1 - sum(1 for i in between if lo < i < hi)
            if missing > 0:
                lost[f"{market}:{symbol}"] = missing
        return lost, unknown

    def backfill_kinds(self, gap: Gap) -> tuple[str, ...]:
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

    def owns_backfill(self, market: str, symbol: str, kind: str) -> bool:
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

    def emit_backfilled_trades(self, trades: list[Trade], since: datetime,
                               page_limit: int) -> bool:
        """Emit the trades of one REST page at or after ``since``; True if the page reaches
        back to ``since`` (it held older trades, or fewer than a full page)."""
        fresh = [t for t in trades if t.ts >= since]
        for trade in fresh:
            self.emit(trade)
        self.stats.backfilled_trades += len(fresh)
        if trades and trades[0].market in self.consecutive_trade_ids:
            # Where the page starts: what is older is gone (see _count_trade_loss).
            first = min(trades, key=lambda t: int(t.trade_id))
            self.backfill_oldest[(first.market, first.symbol)] = (int(first.trade_id), first.ts)
        return bool(trades) and (len(fresh) < len(trades) or len(trades) < page_limit)

    async def page_trades_back(self, newest: Callable[[], Awaitable[list[Trade]]],
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
