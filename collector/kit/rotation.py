"""Make-before-break rotation before an exchange's forced cut (e.g. Binance's 24 h limit): open a
replacement connection, wait until it delivers data, then stop the old one (no disconnect, no
gap).

Until the switch the replacement's messages are held back (bounded) and handed to the feed right
after the old connection stopped, in order: both connections carry the same streams, and
interleaving them could apply a book diff before its predecessor (a false sequence gap). What the
held-back messages repeat is harmless: trades/candles dedupe on unique keys, book diffs already
applied are stale and ignored."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from collector.connection import MessageHandler, WsConnection

if TYPE_CHECKING:
    from collector.exchanges.base import Feed

log = logging.getLogger(__name__)

# Messages a replacement connection may hold back before the switch is forced.
HOLD_MAX = 50_000


class HoldBack:
    """A replacement's message handler: holds messages back until ``release``, then passes them
    (and everything after) to the feed's handler."""

    def __init__(self, handler: MessageHandler) -> None:
        self.handler = handler
        self.held: list[str | bytes] | None = []
        self.full = asyncio.Event()

    def __call__(self, conn: WsConnection, raw: str | bytes) -> bool | None:
        if self.held is None:
            return self.handler(conn, raw)
        self.held.append(raw)
        if len(self.held) >= HOLD_MAX:
            self.full.set()
        return True

    def release(self, conn: WsConnection) -> int:
        backlog, self.held = self.held or [], None
        for raw in backlog:
            self.handler(conn, raw)
        return len(backlog)


async def rotate_forever(feed: Feed, conn: WsConnection, every_s: float) -> None:
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(every_s)
        hold = HoldBack(conn.on_message)
        new = feed.new_connection(conn.meta, on_message=hold)
        feed.start_task(new.run())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not hold.full.is_set() and not (
                new.connected.is_set() and new.last_data_at > 0 and
                loop.time() - new.last_data_at < 1.0):
            await asyncio.sleep(0.05)
        if not new.connected.is_set():
            log.warning("%s: rotation failed (replacement not connected); retrying", conn.name)
            await new.stop()       # its run() returns on its own (never cancel: gathered)
            feed.connections.remove(new)
            continue
        await conn.stop()           # stopping: no on_close, hence no gap; run() returns
        feed.connections.remove(conn)
        released = hold.release(new)
        feed.rotations += 1
        log.info("%s rotated (make-before-break, %d messages held back)", conn.name, released)
        conn = new
