"""Running a real Feed against fakes with a real Writer (shared by the exchange feed tests)."""
from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator

import aiohttp

from collector.exchanges.base import FeedContext
from collector.stats import Stats
from collector.writer import Writer
from common import schema
from common.settings import Settings


@contextlib.asynccontextmanager
async def running_feed(feed_cls, mongo_db, settings: Settings, name: str,
                       configure=None) -> AsyncIterator:
    writer = Writer(mongo_db, batch_size=100, flush_interval_s=0.1)
    async with aiohttp.ClientSession() as session:
        ctx = FeedContext(settings=settings, writer=writer, stats=Stats(), session=session,
                          poll_interval_s=settings.poll_interval_s)
        feed = feed_cls(settings.exchange(name), ctx)
        if configure is not None:
            configure(feed)
        loop = asyncio.get_running_loop()
        writer_task = loop.create_task(writer.run())
        feed_task = loop.create_task(feed.run())
        try:
            yield feed
        finally:
            await feed.stop()
            feed_task.cancel()
            await asyncio.gather(feed_task, return_exceptions=True)
            await writer.close()
            writer_task.cancel()
            await asyncio.gather(writer_task, return_exceptions=True)


async def collection_counts(db) -> dict[str, int]:
    return {name: await db[name].count_documents({}) for name in schema.DATA_COLLECTIONS}
