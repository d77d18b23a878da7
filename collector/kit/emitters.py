"""Two rules every feed shares for what it stores, each in one place.

``ChangeOrInterval``: funding and open interest arrive with tickers (up to 10 times a second) or
mark-price pushes; history keeps a value when it changed (at most once per ``min_interval_s``)
and otherwise once per ``max_interval_s``, while ``latest`` is refreshed on every push.

``CandleCloser``: venues whose candle stream re-sends the running candle without a closed flag
(Kraken, Gate.io): a candle is final once a later one starts. A dropped connection discards the
running candles (they missed trades; the backfill stores the final ones).
"""
from __future__ import annotations

import time
from typing import Any, Hashable

from common.schema import Candle


class ChangeOrInterval:
    def __init__(self, *, min_interval_s: float = 0.0, max_interval_s: float = 60.0) -> None:
        self.min_interval_s = min_interval_s
        self.max_interval_s = max_interval_s
        self._last: dict[Hashable, tuple[float, Any]] = {}

    def due(self, key: Hashable, value: Any, now: float | None = None) -> bool:
        """Whether ``value`` of ``key`` goes to history now (and remember it if so)."""
        now = time.monotonic() if now is None else now
        last = self._last.get(key)
        if last is not None:
            elapsed = now - last[0]
            if elapsed < self.min_interval_s:
                return False
            if value == last[1] and elapsed < self.max_interval_s:
                return False
        self._last[key] = (now, value)
        return True


class CandleCloser:
    def __init__(self) -> None:
        self._running: dict[tuple[str, str, str], Candle] = {}

    def push(self, candle: Candle) -> list[Candle]:
        """The records to store for an incoming running candle: the previous one, closed, when
        this one starts a later interval, then this one; nothing for an older candle."""
        key = (candle.market, candle.symbol, candle.interval)
        previous = self._running.get(key)
        if previous is not None and candle.ts < previous.ts:
            return []
        out = []
        if previous is not None and candle.ts > previous.ts and not previous.closed:
            previous.closed = True
            out.append(previous)
        self._running[key] = candle
        out.append(candle)
        return out

    def drop(self, market: str, symbols: list[str] | None = None) -> None:
        for key in [k for k in self._running
                    if k[0] == market and (symbols is None or k[1] in symbols)]:
            del self._running[key]
