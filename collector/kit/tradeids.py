"""Trade-id continuity for venues whose public trade ids are consecutive per symbol (Binance
spot, OKX): a hole between consecutive ids is a ``trade`` gap, recorded and backfilled.

Rules: an id at or below the highest seen is an overlap (rotation, reconnect, backfill), never a
hole, and never moves the highest id back. A dropped connection forgets its symbols: the
connection's own gap covers (and backfills) what it missed, so the first trade after the
reconnect is not a second hole. A symbol whose ids turn out not to be consecutive (more than
``max_holes_per_minute``) has its check switched off, reported once, instead of flooding the
ledger and the REST budget.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Hashable, Iterable


@dataclass(frozen=True, slots=True)
class Hole:
    first_missing: int
    last_missing: int
    start_ms: int          # time of the last trade before the hole
    end_ms: int            # time of the first trade after it


class TradeIdContinuity:
    def __init__(self, max_holes_per_minute: int = 30,
                 on_switched_off: Callable[[Hashable], None] | None = None) -> None:
        self.max_holes_per_minute = max_holes_per_minute
        self.on_switched_off = on_switched_off          # told once per key switched off
        self._last: dict[Hashable, list[int]] = {}     # key -> [highest id, its time ms]
        self._holes: dict[Hashable, deque[float]] = {}
        self.switched_off: set[Hashable] = set()

    def check(self, key: Hashable, low: int, high: int, at_ms: int) -> Hole | None:
        """A trade (or an aggregate covering ids ``low..high``) of ``key`` at ``at_ms``; the hole
        before it, if any. (Per trade on the busiest streams: the usual case, the next id, is
        one dict read and the key's state updated in place.)"""
        last = self._last.get(key)
        if last is None:
            if key not in self.switched_off:        # first trade (after a reconnect): no hole
                self._last[key] = [high, at_ms]
            return None
        last_id, last_ms = last
        if high <= last_id:
            return None
        last[0], last[1] = high, at_ms
        if low <= last_id + 1 or self._too_many(key):
            return None
        return Hole(last_id + 1, low - 1, last_ms, at_ms)

    def forget(self, keys: Iterable[Hashable]) -> None:
        for key in keys:
            self._last.pop(key, None)

    def _too_many(self, key: Hashable) -> bool:
        holes = self._holes.setdefault(key, deque())
        now = time.monotonic()
        holes.append(now)
        while holes and now - holes[0] > 60:
            holes.popleft()
        if len(holes) <= self.max_holes_per_minute:
            return False
        self.switched_off.add(key)
        del self._last[key]
        if self.on_switched_off is not None:
            self.on_switched_off(key)
        return True
