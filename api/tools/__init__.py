"""Command-line analysis tools using the same query code as the API."""
from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

from common.db import get_database, make_client
from common.settings import Settings


def run(fn: Callable[[Any, Settings], Awaitable[None]], uri: str | None = None) -> None:
    async def main() -> None:
        settings = Settings()
        if uri:
            settings.mongodb_uri = uri
        client = make_client(settings)
        try:
            await fn(get_database(client, settings), settings)
        finally:
            await client.close()
    asyncio.run(main())
