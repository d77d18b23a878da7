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


SPOT_TYPES = frozenset({schema.MARKET_DATA, schema.TRADES, schema.ORDER_BOOK, schema.OHLCV,
                        schema.VOLUME_LIQUIDITY})
PERP_TYPES = SPOT_TYPES | {schema.FUNDING_RATES, schema.OPEN_INTEREST}


async def wait_for_latest(db, exchange: str, wanted: set[tuple[str, str, str]],
                          timeout_s: float = 15.0) -> None:
    """Wait until ``latest`` holds every wanted (market, symbol, type) of ``exchange``."""
    from tests.support.helpers import wait_for

    async def complete() -> bool:
        docs = await db[schema.LATEST].find({"exchange": exchange},
                                            {"market": 1, "symbol": 1, "type": 1}).to_list(1000)
        return {(d["market"], d["symbol"], d["type"]) for d in docs} >= wanted
    await wait_for(complete, timeout_s=timeout_s, what=f"{exchange}: every type in latest")


@contextlib.asynccontextmanager
async def api_client(mongo_uri: str, db, exchange: str) -> AsyncIterator:
    """The real API app over the feed test's database (aiohttp test client)."""
    from aiohttp.test_utils import TestClient, TestServer

    from api.app import create_app

    settings = Settings(mongodb_uri=mongo_uri, mongodb_db=db.name, exchanges=[exchange])
    client = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()
