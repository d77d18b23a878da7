"""Fixed-cadence records derived from live books: book snapshots (top N levels, only books that
are in sync and changed) and volume/liquidity metrics (book + latest ticker)."""
from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from collector.liquidity import compute_liquidity
from common.schema import BookSnapshot, Ticker, now_utc

if TYPE_CHECKING:
    from collector.exchanges.base import Feed


async def sample_books(feed: Feed) -> None:
    settings = feed.ctx.settings
    levels = settings.book_snapshot_levels
    while True:
        await asyncio.sleep(settings.book_snapshot_interval_s)
        feed.before_book_read()
        now = now_utc()
        for (market, symbol), book in feed.books.items():
            if not book.synced or not book.changed:
                continue
            book.changed = False
            feed.emit(BookSnapshot(feed.name, symbol, feed.pair(symbol), market, now, now,
                                   bids=book.bids.top(levels), asks=book.asks.top(levels),
                                   depth=levels, update_id=book.update_id))


async def sample_liquidity(feed: Feed) -> None:
    settings = feed.ctx.settings
    while True:
        await asyncio.sleep(settings.liquidity_interval_s)
        feed.before_book_read()
        now = now_utc()
        for (market, symbol), book in feed.books.items():
            if not book.synced:
                continue
            ticker = feed.writer.newest(Ticker, feed.name, market, symbol)
            record = compute_liquidity(book, ticker if isinstance(ticker, Ticker) else None,
                                       exchange=feed.name, symbol=symbol,
                                       pair=feed.pair(symbol), market=market, ts=now,
                                       received_at=now)
            if record is not None:
                feed.emit(record)


async def sample_trade_candles(feed: Feed) -> None:
    """Once a second: store the trade-built candles that changed (``kit.trade_candles``)."""
    builder = feed.trade_candles
    assert builder is not None
    while True:
        await asyncio.sleep(1.0)
        for candle in builder.due(time.time() * 1000):
            feed.emit(candle)
