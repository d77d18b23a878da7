"""Snapshot + diff splicing per Binance's documented procedure (spot U/u, USD-M pu)."""
from __future__ import annotations

from collector.booksync import Diff, Outcome, SnapshotDiffSync
from collector.orderbook import OrderBook


def diff(first, last, prev=None, bids=(), asks=()):
    return Diff(first, last, prev, list(bids), list(asks))


def test_spot_sync_drops_contained_diffs_and_applies_the_straddling_one():
    sync = SnapshotDiffSync(OrderBook(), use_prev_id=False)
    assert sync.on_diff(diff(100, 105, bids=[(10.0, 1.0)])) is Outcome.BUFFERED
    assert sync.on_diff(diff(106, 110, bids=[(10.0, 2.0)])) is Outcome.BUFFERED
    assert sync.on_snapshot([(10.0, 5.0), (9.0, 1.0)], [(11.0, 1.0)], 107) is Outcome.SYNCED
    # 100-105 was dropped (contained); 106-110 straddles 108 and was applied.
    assert sync.book.update_id == 110 and sync.book.best_bid() == (10.0, 2.0)
    assert sync.on_diff(diff(111, 111, asks=[(11.0, 0.0)])) is Outcome.APPLIED
    assert sync.book.best_ask() is None
    assert sync.on_diff(diff(105, 109)) is Outcome.STALE
    assert sync.on_diff(diff(115, 116)) is Outcome.GAP


def test_snapshot_older_than_the_buffer_is_refused():
    sync = SnapshotDiffSync(OrderBook(), use_prev_id=False)
    sync.on_diff(diff(500, 501))
    assert sync.on_snapshot([], [], 400) is Outcome.SNAPSHOT_TOO_OLD
    assert not sync.synced and len(sync.buffer) == 1


def test_futures_continuity_is_checked_with_pu_not_U():
    # Real USD-M numbers: U is not previous u + 1, pu links the events.
    sync = SnapshotDiffSync(OrderBook(), use_prev_id=True)
    sync.on_diff(diff(600859598000, 600859598061, 600859597990))
    assert sync.on_snapshot([(1.0, 1.0)], [(2.0, 1.0)], 600859598050) is Outcome.SYNCED
    assert sync.on_diff(diff(600859599090, 600859599100, 600859598061)) is Outcome.APPLIED
    assert sync.on_diff(diff(600859599200, 600859599300, 600859599150)) is Outcome.GAP


def test_reset_discards_book_and_buffer():
    sync = SnapshotDiffSync(OrderBook(), use_prev_id=False)
    sync.on_diff(diff(1, 2))
    sync.on_snapshot([(1.0, 1.0)], [(2.0, 1.0)], 1)
    sync.reset()
    assert not sync.synced and sync.book.best_bid() is None and not sync.buffer


def test_book_truncates_and_reports_crossed():
    book = OrderBook(depth=2)
    book.load_snapshot([(10.0, 1.0), (9.0, 1.0), (8.0, 1.0)], [(11.0, 1.0), (12.0, 1.0)])
    book.truncate()
    assert book.bids.top(5) == [[10.0, 1.0], [9.0, 1.0]]
    assert not book.crossed()
    book.apply([(11.5, 1.0)], [])
    assert book.crossed() and book.mid() == 11.25
