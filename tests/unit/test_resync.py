"""The shared per-book resync machinery: resubscribe scheduling (cool-down, absorbing repeated
requests, retry when the snapshot never comes) and the book integrity state every feed reports."""
from __future__ import annotations

import asyncio
import time

from collector.exchanges.base import Feed
from collector.kit.spec import VenueSpec
from collector.resync import ResubscribeScheduler
from common.settings import ExchangeSettings
from tests.support.feed_helpers import offline_context
from tests.support.helpers import wait_for


async def _true(value):
    return value


async def test_requests_are_absorbed_while_pending_and_cooldown_spaces_resubscribes():
    sent: list[tuple[str, float]] = []

    async def resubscribe(key: str) -> None:
        sent.append((key, time.monotonic()))

    scheduler = ResubscribeScheduler(resubscribe, cooldown_s=0.3, retry_after_s=5.0)
    for _ in range(5):
        scheduler.request("BTCUSDT")
    await wait_for(lambda: _true(len(sent) == 1), what="first resubscribe")
    assert scheduler.pending("BTCUSDT")
    scheduler.done("BTCUSDT")
    await wait_for(lambda: _true(not scheduler.pending("BTCUSDT")), what="resync complete")

    scheduler.request("BTCUSDT")          # fails again right away: waits out the cool-down
    await wait_for(lambda: _true(len(sent) == 2), what="second resubscribe")
    scheduler.done("BTCUSDT")
    assert sent[1][1] - sent[0][1] >= 0.3 - 0.01
    assert scheduler.requests == 2


async def test_a_lost_snapshot_is_retried_until_it_arrives():
    sent: list[str] = []

    async def resubscribe(key: str) -> None:
        sent.append(key)

    scheduler = ResubscribeScheduler(resubscribe, cooldown_s=0.0, retry_after_s=0.1)
    scheduler.request("BTC-USDT")
    await wait_for(lambda: _true(len(sent) >= 3), what="retries")
    scheduler.done("BTC-USDT")
    await wait_for(lambda: _true(not scheduler.pending("BTC-USDT")), what="resync complete")
    count = len(sent)
    await asyncio.sleep(0.3)              # no further retries once done (negative check)
    assert len(sent) == count


async def test_not_connected_ends_the_resync_and_cancel_drops_pending():
    async def resubscribe(key: str) -> None:
        raise ConnectionError("not connected")

    scheduler = ResubscribeScheduler(resubscribe, cooldown_s=0.0, retry_after_s=5.0)
    scheduler.request("a")
    await wait_for(lambda: _true(not scheduler.pending("a")), what="gave up while disconnected")

    async def slow(key: str) -> None:
        await asyncio.sleep(10)

    scheduler = ResubscribeScheduler(slow, cooldown_s=0.0)
    scheduler.request(("spot", "x"))
    scheduler.request(("perp", "x"))
    scheduler.cancel(lambda key: key[0] == "spot")
    assert not scheduler.pending(("spot", "x")) and scheduler.pending(("perp", "x"))
    scheduler.cancel()
    assert not scheduler.pending(("perp", "x"))


class _Feed(Feed):
    name = "test"
    spec = VenueSpec("test", ())


def test_book_integrity_state_and_ledger():
    feed = _Feed(ExchangeSettings(), offline_context())
    book = feed.book("spot", "BTCUSDT")
    assert feed.book_states()["spot:BTCUSDT"]["state"] == "syncing"
    book.load_snapshot([(100.0, 1.0)], [(101.0, 1.0)], 7)
    book.synced = True
    feed.book_in_sync("spot", "BTCUSDT")
    assert feed.stats.resyncs == 0        # a first sync is not a resync
    state = feed.book_states()["spot:BTCUSDT"]
    assert state["state"] == "live" and state["update_id"] == 7

    feed.book_lost_sync("spot", "BTCUSDT", "checksum", "local 1 != exchange 2")
    assert not book.synced and feed.stats.gaps == 1
    assert feed.book_states()["spot:BTCUSDT"]["state"] == "resyncing"
    gap = feed.gaps.find_open("test", "spot", "BTCUSDT", "book")
    assert gap is not None and gap.cause == "checksum"

    book.synced = True
    feed.book_in_sync("spot", "BTCUSDT")
    assert feed.stats.resyncs == 1 and feed.book_states()["spot:BTCUSDT"]["state"] == "live"
    assert gap.end is not None and feed.gaps.find_open("test", "spot", "BTCUSDT", "book") is None
