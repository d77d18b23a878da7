"""Splicing a REST snapshot with a buffered diff stream (Binance spot/USD-M, Gate.io).

The exchanges' documented procedure: buffer diffs, fetch a snapshot with ``lastUpdateId``, drop
diffs the snapshot already contains, require the first kept diff to straddle the snapshot id, then
require continuity between consecutive diffs. Continuity is either ``U <= previous u + 1 <= u``
(Binance spot, Gate: normally ``U == previous u + 1``) or ``pu == previous u`` (Binance USD-M,
whose ``U`` is not contiguous).
A break is a gap: the caller discards that symbol's book and resyncs it alone.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import Sequence

from collector.orderbook import OrderBook


@dataclass(slots=True)
class Diff:
    first_id: int                      # U
    last_id: int                       # u
    prev_id: int | None                # pu (USD-M only)
    bids: Sequence[tuple[float, float]]
    asks: Sequence[tuple[float, float]]


class Outcome(Enum):
    BUFFERED = "buffered"     # waiting for a snapshot
    APPLIED = "applied"
    STALE = "stale"           # already contained in the book; ignored
    GAP = "gap"               # continuity broken: resync needed
    SNAPSHOT_TOO_OLD = "snapshot_too_old"  # fetch another snapshot, keep buffering
    SYNCED = "synced"


class SnapshotDiffSync:
    def __init__(self, book: OrderBook, *, use_prev_id: bool, max_buffer: int = 50_000) -> None:
        self.book = book
        self.use_prev_id = use_prev_id
        self.buffer: deque[Diff] = deque(maxlen=max_buffer)
        self._first_pending = True   # the first diff after a snapshot must straddle it

    @property
    def synced(self) -> bool:
        return self.book.synced

    def reset(self) -> None:
        self.book.reset()
        self.buffer.clear()
        self._first_pending = True

    def on_diff(self, diff: Diff) -> Outcome:
        if not self.book.synced:
            self.buffer.append(diff)
            return Outcome.BUFFERED
        return self._apply(diff)

    def on_snapshot(self, bids: Sequence[tuple[float, float]], asks: Sequence[tuple[float, float]],
                    last_update_id: int) -> Outcome:
        if self.buffer and last_update_id < self.buffer[0].first_id - 1:
            return Outcome.SNAPSHOT_TOO_OLD
        self.book.load_snapshot(bids, asks, last_update_id)
        self._first_pending = True
        pending, self.buffer = self.buffer, deque(maxlen=self.buffer.maxlen)
        for diff in pending:
            if self._apply(diff) is Outcome.GAP:
                return Outcome.GAP
        return Outcome.SYNCED

    def admit(self, first_id: int, last_id: int, prev_id: int | None) -> Outcome:
        """Sequence check of a diff against the synced book, without touching the levels.

        ``APPLIED`` means the diff continues the book and the caller must apply it now (then
        ``book.update_id`` must become ``last_id``); ``STALE``/``GAP`` as for ``on_diff``. This
        lets a feed apply a synced diff straight from the decoded message (no Diff object, no
        intermediate level tuples): the hot path of every depth stream.
        """
        book = self.book
        local = book.update_id if book.update_id is not None else -1
        if last_id < local + (0 if self.use_prev_id else 1):
            return Outcome.STALE
        if self._first_pending:
            if first_id > local + 1:
                return Outcome.GAP
            self._first_pending = False
        elif self.use_prev_id:
            if last_id <= local:
                return Outcome.STALE    # already applied (overlapping connections on rotation)
            if prev_id != local:
                return Outcome.GAP
        elif first_id > local + 1:
            # Only a diff that starts past the next id is a gap; one re-covering applied ids
            # (U <= local < u, e.g. across a rotation) is applied: its sizes are absolute.
            return Outcome.GAP
        return Outcome.APPLIED

    def _apply(self, diff: Diff) -> Outcome:
        outcome = self.admit(diff.first_id, diff.last_id, diff.prev_id)
        if outcome is Outcome.APPLIED:
            self.book.apply(diff.bids, diff.asks, diff.last_id)
        return outcome
