"""Storage contract against a real wire-protocol server: indexes, batching, dedupe, upserts."""
from __future__ import annotations

from datetime import timedelta

import pytest
from pymongo.errors import DuplicateKeyError

from collector.writer import Writer
from common import schema
from common.indexes import (
    HISTORY_SORT, READ_KEYS, STREAM_SORT, apply_indexes, expiry_plan, index_specs,
    indexes_can_name_id, missing_indexes, server_profile,
)
from common.schema import Candle, Ticker, Trade, now_utc
from common.settings import RetentionSettings


def trade(trade_id: str, price: float = 100.0, **kw) -> Trade:
    now = now_utc()
    return Trade("binance", "BTCUSDT", "BTC/USDT", "spot", kw.get("ts", now),
                 kw.get("received_at", now),
                 trade_id=trade_id, price=price, size=0.5, side="buy")


async def test_indexes_are_idempotent_and_enforce_unique_trades(mongo_db):
    retention = RetentionSettings()
    assert await missing_indexes(mongo_db, retention)            # a fresh database lacks them
    await apply_indexes(mongo_db, retention)
    await apply_indexes(mongo_db, retention)   # second run: no error, nothing new
    assert await missing_indexes(mongo_db, retention) == []
    info = await mongo_db[schema.TRADES].index_information()
    # nx-27017 renames indexes, so look the TTL up by its option, not its name.
    ttl = [spec for spec in info.values() if "expireAfterSeconds" in spec]
    if (await server_profile(mongo_db)).ttl:
        assert [(s["key"], s["expireAfterSeconds"]) for s in ttl] == [
            ([("ts", 1)], retention.trades)]
    else:
        # nx-27017: no TTL index (it scans on every read); the retention task deletes instead.
        assert ttl == []
    assert (schema.TRADES, retention.trades) in expiry_plan(retention)
    assert (schema.GAPS, retention.trades) in expiry_plan(retention)
    assert any(spec.get("unique") for spec in info.values())
    await mongo_db[schema.TRADES].insert_one(trade("1").to_doc())
    with pytest.raises(DuplicateKeyError):
        await mongo_db[schema.TRADES].insert_one(trade("1").to_doc())
    assert len(index_specs(retention)) >= 2 * len(schema.DATA_COLLECTIONS)


async def test_index_upgrade_replaces_the_old_read_index_idempotently(mongo_db):
    retention = RetentionSettings()
    coll = mongo_db[schema.TRADES]
    # What a deployment of the previous release has: {exchange, symbol, ts:-1} under this name.
    await coll.create_index([("exchange", 1), ("symbol", 1), ("ts", -1)],
                            name="exchange_symbol_ts")
    await coll.create_index([("ts", 1)], name="ttl_ts", expireAfterSeconds=retention.trades)
    # ... and the /ws poller's index on the BSON date (nx-27017 cannot hold the _id suffix).
    old_stream = [("received_at", 1), ("_id", 1)] if await indexes_can_name_id(mongo_db) \
        else [("received_at", 1)]
    await coll.create_index(old_stream, name="received_at_id")
    await apply_indexes(mongo_db, retention)
    first = await coll.index_information()
    await apply_indexes(mongo_db, retention)
    assert await coll.index_information() == first          # a second run changes nothing
    await coll.insert_one(trade("1").to_doc())                # and writes still work
    keys = {tuple(name for name, _ in meta["key"]) for meta in first.values()}
    if await indexes_can_name_id(mongo_db):
        assert "exchange_symbol_ts" not in first              # retired after its replacement
        assert [tuple(k) for k in first["exchange_symbol_t_id"]["key"]] == READ_KEYS
        assert [tuple(k) for k in first["t_id"]["key"]] == HISTORY_SORT
        assert [tuple(k) for k in first["rt_id"]["key"]] == STREAM_SORT
        assert "received_at_id" not in first                  # retired
        assert first["ttl_ts"]["expireAfterSeconds"] == retention.trades     # TTL kept
    else:
        # nx-27017: the _id suffixes are left out (a compound key with _id breaks its inserts).
        assert not any("_id" in k for k in keys if len(k) > 1)
        assert {("exchange", "symbol", "t"), ("rt",), ("t",)} <= keys
        assert ("exchange", "symbol", "ts") not in keys               # retired
        assert ("received_at",) not in keys                           # retired
        assert ("ts",) not in keys          # the TTL index: dropped (the retention task deletes)


async def test_writer_batches_dedupes_and_updates_latest(mongo_db):
    await apply_indexes(mongo_db, RetentionSettings())
    writer = Writer(mongo_db, batch_size=50, flush_interval_s=0.05)
    for i in range(120):
        writer.submit(trade(str(i), price=100.0 + i))
    for i in range(100, 120):          # a reconnect re-sends the last 20 trades
        writer.submit(trade(str(i), price=100.0 + i))
    assert await writer.flush()
    assert await mongo_db[schema.TRADES].count_documents({}) == 120
    assert writer.stored == 120 and writer.duplicates == 20
    latest = await mongo_db[schema.LATEST].find_one({"_id": "binance:spot:BTCUSDT:trades"})
    assert latest["price"] == 219.0 and latest["type"] == schema.TRADES
    assert latest["ts"].tzinfo is not None
    # A second flush replaces the same latest document; dates must stay dates.
    writer.submit(trade("500", price=1.5))
    assert await writer.flush()
    latest = await mongo_db[schema.LATEST].find({"type": schema.TRADES}).to_list(None)
    assert len(latest) == 1 and latest[0]["price"] == 1.5
    assert hasattr(latest[0]["received_at"], "tzinfo")


async def test_writer_keeps_every_streams_newest_record_for_freshness(mongo_db):
    """The status document's freshness (``Writer.fresh``): each stream's newest receive time,
    before its flush and after it, per exchange."""
    writer = Writer(mongo_db)
    at = now_utc().replace(microsecond=0)
    writer.submit(trade("1", price=1.0, received_at=at))
    writer.submit(trade("2", price=2.0, received_at=at + timedelta(seconds=1)))
    writer.submit(Ticker("okx", "BTC-USDT", "BTC/USDT", "spot", at, at, last=5.0),
                  history=False)
    assert writer.fresh("binance") == {schema.TRADES: {("spot", "BTCUSDT"): at + timedelta(seconds=1)}}
    assert await writer.flush()
    writer.submit(Ticker("okx", "BTC-USDT-SWAP", "BTC/USDT", "perp", at, at + timedelta(seconds=3),
                         last=6.0))
    assert writer.fresh("binance") == {schema.TRADES: {("spot", "BTCUSDT"): at + timedelta(seconds=1)}}
    assert writer.fresh("okx") == {schema.MARKET_DATA: {("spot", "BTC-USDT"): at,
                                                        ("perp", "BTC-USDT-SWAP"): at + timedelta(seconds=3)}}
    assert writer.fresh("kraken") == {}


async def test_candles_are_upserted_on_open_time(mongo_db):
    await apply_indexes(mongo_db, RetentionSettings())
    writer = Writer(mongo_db)
    open_time = now_utc().replace(second=0, microsecond=0)
    for close, closed in ((10.0, False), (11.0, False), (12.0, True)):
        writer.submit(Candle("binance", "BTCUSDT", "BTC/USDT", "spot", open_time, now_utc(),
                             interval="1m", open=10.0, high=12.0, low=9.0, close=close,
                             volume=1.0, closed=closed))
        assert await writer.flush()
    docs = await mongo_db[schema.OHLCV].find({}).to_list(None)
    assert hasattr(docs[0]["received_at"], "tzinfo") and docs[0]["ts"] == open_time
    assert len(docs) == 1 and docs[0]["close"] == 12.0 and bool(docs[0]["closed"])  # nx-27017 returns booleans as 1


async def test_writer_keeps_data_while_database_is_unreachable(mongo_db):
    from pymongo import AsyncMongoClient

    from tests.support.helpers import free_port

    dead = AsyncMongoClient(f"mongodb://127.0.0.1:{free_port()}", serverSelectionTimeoutMS=200)
    writer = Writer(dead["x"], batch_size=10)
    now = now_utc()
    for i in range(5):
        writer.submit(Ticker("binance", "BTCUSDT", "BTC/USDT", "spot", now - timedelta(seconds=i),
                             now, last=1.0 + i))
    assert await writer.flush() is False
    assert writer.pending == 5 and not writer.db_available
    writer.db = mongo_db            # the database "comes back"
    assert await writer.flush() is True
    assert await mongo_db[schema.MARKET_DATA].count_documents({}) == 5
    await dead.close()
