"""MongoDB access: the one client factory both programs use (pymongo's native async API)."""
from __future__ import annotations

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from common.settings import Settings


def make_client(settings: Settings, *, timeout_ms: int = 5000) -> AsyncMongoClient:
    # tz_aware: dates come back as aware UTC datetimes, the same type the collector writes.
    return AsyncMongoClient(
        settings.mongodb_uri,
        tz_aware=True,
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        socketTimeoutMS=max(timeout_ms * 2, 10_000),
        appname="cryptodata",
    )


def get_database(client: AsyncMongoClient, settings: Settings) -> AsyncDatabase:
    return client[settings.mongodb_db]
