"""The two book drivers. Each owns one protocol's rules so that a feed only parses and routes.

``SnapshotBooks`` (Binance, Gate.io; OKX when no WS snapshot comes): WS diffs are buffered until
a REST snapshot splices with them (``booksync.SnapshotDiffSync``); one fetch loop per book with
one retry policy (capped exponential backoff, until the book is in sync or the symbol is
reported unavailable); a sequence break resyncs that book alone.

``ResubscribeBooks`` (Bybit, OKX, Kraken): a fresh subscription pushes a fresh snapshot; a book
that loses integrity is reset and its channel resubscribed alone (``resync.ResubscribeScheduler``:
one in flight, cool-down, retry when the snapshot does not come).

Both report through the feed's ``book_lost_sync`` / ``book_in_sync`` (ledger gap, counters and
the live / syncing / resyncing state in /health).
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Sequence

from collector.booksync import Diff, Outcome, SnapshotDiffSync
from collector.orderbook import OrderBook
from collector.rest import RestError
from collector.resync import ResubscribeScheduler

if TYPE_CHECKING:
    from collector.exchanges.base import Feed

log = logging.getLogger(__name__)

Key = tuple[str, str]                       # (market, symbol)
Levels = Sequence[tuple[float, float]]
PARSE_ERRORS = (KeyError, IndexError, TypeError, ValueError, AttributeError, OverflowError)


class SymbolUnavailable(Exception):
    """Raised by a snapshot fetcher when the exchange says the symbol does not exist."""


class SnapshotBooks:
    def __init__(self, feed: Feed, fetch: Callable[[str, str], Awaitable[tuple[Levels, Levels,
                                                                                  int]]],
                 *, use_prev_id: Callable[[str], bool] = lambda market: False,
                 check_crossed: bool = False, retry_initial_s: float = 0.2,
                 retry_max_s: float = 5.0) -> None:
        self.feed = feed
        self.fetch = fetch
        self.use_prev_id = use_prev_id
        self.check_crossed = check_crossed
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.syncs: dict[Key, SnapshotDiffSync] = {}
        self.fetches: dict[Key, asyncio.Task] = {}
        self.snapshots: dict[Key, int] = {}        # REST snapshots fetched per book
        self.full_resets: dict[Key, int] = {}      # server-pushed full snapshots per book

    def sync(self, market: str, symbol: str) -> SnapshotDiffSync:
        key = (market, symbol)
        sync = self.syncs.get(key)
        if sync is None:
            sync = self.syncs[key] = SnapshotDiffSync(self.feed.book(market, symbol),
                                                      use_prev_id=self.use_prev_id(market))
        return sync

    def on_diff(self, market: str, symbol: str, first_id: int, last_id: int,
                prev_id: int | None, data: Any, apply: Callable[[OrderBook, Any, int], None],
                to_diff: Callable[[Any], Diff]) -> None:
        """One WS diff. A synced book applies it straight from the decoded message (``apply``,
        the parser's fast path); otherwise it is buffered as ``to_diff(data)`` and a snapshot
        fetch starts."""
        key = (market, symbol)
        sync = self.syncs.get(key) or self.sync(market, symbol)
        if sync.book.synced:
            outcome = sync.admit(first_id, last_id, prev_id)
            if outcome is Outcome.APPLIED:
                try:
                    apply(sync.book, data, last_id)
                except PARSE_ERRORS:
                    # A malformed level may have been half applied: rebuild this book.
                    self.resync(market, symbol, "sequence_gap", "malformed diff")
                    raise
                if self.check_crossed:
                    self._check_crossed(market, symbol, sync.book)
                return
            if outcome is Outcome.STALE:
                return
        else:
            outcome = sync.on_diff(to_diff(data))
        if outcome is Outcome.GAP:
            self.feed.book_lost_sync(market, symbol, "sequence_gap",
                                     f"diff {first_id}..{last_id} (prev {prev_id}) after "
                                     f"{sync.book.update_id}")
            self._cancel(key)
            sync.reset()
            sync.on_diff(to_diff(data))
            outcome = Outcome.BUFFERED
        if outcome is Outcome.BUFFERED and key not in self.fetches:
            self._start_fetch(market, symbol)

    def on_full_snapshot(self, market: str, symbol: str, bids: Levels, asks: Levels,
                         last_id: int) -> None:
        """A snapshot pushed on the stream (Gate.io ``full: true``) replaces the whole book."""
        key = (market, symbol)
        self.full_resets[key] = self.full_resets.get(key, 0) + 1
        self._cancel(key)
        sync = self.sync(market, symbol)
        sync.reset()
        sync.on_snapshot(bids, asks, last_id)
        self._synced(market, symbol, sync)

    def resync(self, market: str, symbol: str, cause: str, detail: str) -> None:
        """Drop this book (ledger gap) and rebuild it from a new snapshot; others untouched."""
        key = (market, symbol)
        self._cancel(key)
        sync = self.sync(market, symbol)
        sync.reset()
        self.feed.book_lost_sync(market, symbol, cause, detail)

    def reset(self, market: str, symbols: Sequence[str] | None = None) -> None:
        """The connection carrying these books dropped: every one resyncs (no ledger gap of its
        own: the connection's gap covers it)."""
        for (m, symbol), sync in self.syncs.items():
            if m == market and (symbols is None or symbol in symbols):
                self._cancel((m, symbol))
                sync.reset()

    def cancel_all(self) -> None:
        for key in list(self.fetches):
            self._cancel(key)

    def _check_crossed(self, market: str, symbol: str, book: OrderBook) -> None:
        book.truncate()
        if book.crossed():
            bid, ask = book.best_bid(), book.best_ask()
            self.resync(market, symbol, "crossed",
                        f"bid {bid[0] if bid else None} >= ask {ask[0] if ask else None}")

    def _synced(self, market: str, symbol: str, sync: SnapshotDiffSync) -> None:
        self.feed.book_in_sync(market, symbol)
        if self.check_crossed:
            self._check_crossed(market, symbol, sync.book)

    def _cancel(self, key: Key) -> None:
        task = self.fetches.pop(key, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def _start_fetch(self, market: str, symbol: str) -> None:
        key = (market, symbol)
        self.fetches[key] = asyncio.get_running_loop().create_task(self._fetch_loop(key))

    async def _fetch_loop(self, key: Key) -> None:
        market, symbol = key
        sync = self.sync(market, symbol)
        delay = self.retry_initial_s
        try:
            while not sync.synced:
                # Let a few diffs buffer first so the snapshot is not older than the stream.
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)
                try:
                    bids, asks, last_id = await self.fetch(market, symbol)
                except SymbolUnavailable as exc:
                    self.feed.mark_unavailable(market, symbol, str(exc))
                    return
                except RestError as exc:
                    self.feed.stats.error_once(self.feed.name,
                                               f"{market} {symbol} book snapshot: {exc}")
                    continue
                except PARSE_ERRORS as exc:
                    self.feed.malformed(f"{market} {symbol} book snapshot", exc)
                    continue
                self.snapshots[key] = self.snapshots.get(key, 0) + 1
                if sync.synced:
                    return          # a server-pushed full snapshot arrived meanwhile
                outcome = sync.on_snapshot(bids, asks, last_id)
                if outcome is Outcome.SYNCED:
                    self.fetches.pop(key, None)
                    log.info("%s %s %s: book synced at update id %s", self.feed.name, market,
                             symbol, sync.book.update_id)
                    self._synced(market, symbol, sync)
                    return
                if outcome is Outcome.GAP:
                    # The buffered diffs do not continue this snapshot: start over.
                    sync.reset()
                    self.feed.book_lost_sync(market, symbol, "sequence_gap",
                                             f"buffered diffs do not continue snapshot {last_id}")
                # SNAPSHOT_TOO_OLD (REST lags the stream) or a gap: try again shortly.
        finally:
            if self.fetches.get(key) is asyncio.current_task():
                del self.fetches[key]


class ResubscribeBooks:
    def __init__(self, feed: Feed, resubscribe: Callable[[Key], Awaitable[None]], *,
                 cooldown_s: float = 1.0, retry_after_s: float = 10.0) -> None:
        self.feed = feed
        self.scheduler: ResubscribeScheduler[Key] = ResubscribeScheduler(
            resubscribe, cooldown_s=cooldown_s, retry_after_s=retry_after_s, name=feed.name)

    def synced(self, market: str, symbol: str) -> None:
        """A fresh snapshot of (market, symbol) was applied to its book."""
        self.feed.book_in_sync(market, symbol)
        self.scheduler.done((market, symbol))

    def lose(self, market: str, symbol: str, cause: str, detail: str) -> None:
        """Sequence break, checksum mismatch, malformed update: reset the book, resubscribe it."""
        self.feed.book_lost_sync(market, symbol, cause, detail)
        book = self.feed.books.get((market, symbol))
        if book is not None:
            book.reset()
        self.scheduler.request((market, symbol))

    def unsynced_update(self, market: str, symbol: str) -> None:
        """An update for a book without a snapshot: ignored while its resubscription is pending
        (updates of the old subscription), else the book resyncs."""
        if not self.scheduler.pending((market, symbol)):
            self.lose(market, symbol, "sequence_gap", "update before snapshot")

    def reset(self, market: str, symbols: Sequence[str] | None = None) -> None:
        """The connection carrying these books dropped: the reconnect subscribes (and so
        snapshots) them again; pending resubscriptions are dropped."""
        for (m, symbol), book in self.feed.books.items():
            if m == market and (symbols is None or symbol in symbols):
                book.reset()
        self.scheduler.cancel(lambda key: key[0] == market and
                              (symbols is None or key[1] in symbols))

    def cancel_all(self) -> None:
        self.scheduler.cancel()
