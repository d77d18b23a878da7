"""Backfill when a partition owns a symbol's candles or funding/open interest but not its trades.

``Feed.backfill`` walks the symbols whose *trades* this partition owns and calls every hook for
them. Feeds whose streams are partitioned by data kind (Kraken, Gate.io) make each hook skip what
another partition owns (no duplicate REST traffic) and mix this in, so the candles and the
funding / open interest of the remaining symbols are still filled by their owner.
"""
from __future__ import annotations

import logging

from collector.gaps import Gap
from collector.rest import RestError
from common.schema import PERP, SPOT, s_to_dt

log = logging.getLogger(__name__)


class KindOwnedBackfill:
    async def backfill(self, gap: Gap) -> bool:
        complete = await super().backfill(gap)  # type: ignore[misc]
        if gap.stream in ("book", "trade"):
            return complete
        since = s_to_dt(gap.start.timestamp() - 1.0)
        for market in ([SPOT, PERP] if gap.market == "*" else [gap.market]):
            for symbol in self.symbols(market):  # type: ignore[attr-defined]
                if gap.symbol not in ("*", symbol) or \
                        self.owns_trades(market, symbol):  # type: ignore[attr-defined]
                    continue            # done by the base (or not this gap's symbol)
                try:
                    await self.backfill_candles(market, symbol, since)  # type: ignore[attr-defined]
                    if market == PERP:
                        await self.repoll_derivatives(symbol)  # type: ignore[attr-defined]
                except RestError as exc:
                    log.warning("backfill %s %s failed: %s", market, symbol, exc)
                    complete = False
                except (KeyError, TypeError, ValueError, IndexError) as exc:
                    self.malformed(exc, exc)  # type: ignore[attr-defined]
                    complete = False
        return complete
