"""Spool, writer-with-spool and gap ledger units, and the /gaps + /health API surface."""
from __future__ import annotations

from datetime import timedelta

from aiohttp.test_utils import TestClient, TestServer
from bson import ObjectId
from pymongo.errors import AutoReconnect

from api.app import create_app
from collector.gaps import GapLedger
from collector.spool import Spool
from collector.writer import Writer
from common import schema
from common.indexes import apply_indexes
from common.schema import Trade, now_utc
from common.settings import Settings


def _trade(i: int, ts=None) -> Trade:
    ts = ts or now_utc()
    return Trade("binance", "BTCUSDT", "BTC/USDT", "spot", ts, ts, trade_id=str(i),
                 price=100.0 + i, size=1.0, side="buy")


def test_spool_roundtrip_keeps_order_and_exact_values(tmp_path):
    spool = Spool(tmp_path, max_bytes=10 * 2 ** 20, segment_bytes=4096)
    docs = [schema.to_doc(_trade(i)) | {"_id": ObjectId()} for i in range(500)]
    assert spool.append("trades", docs[:250]) and spool.append("ohlcv", [{"x": 1}])
    assert spool.append("trades", docs[250:])
    spool.sync()
    assert spool.records == 501 and len(spool.status()) and spool.status()["segments"] > 1
    # A new process sees the same records (restart after SIGKILL during an outage).
    again = Spool(tmp_path, max_bytes=10 * 2 ** 20, segment_bytes=4096)
    assert again.records == 501
    got: list[tuple[str, dict]] = []

    async def write(coll, batch):
        got.extend((coll, d) for d in batch)

    import asyncio
    assert asyncio.run(again.drain(write)) == 501
    assert [c for c, _ in got[:250]] == ["trades"] * 250 and got[250][0] == "ohlcv"
    trades = [d for c, d in got if c == "trades"]
    assert [d["trade_id"] for d in trades] == [str(i) for i in range(500)]
    assert trades[0]["ts"] == docs[0]["ts"].replace(microsecond=docs[0]["ts"].microsecond // 1000 * 1000)
    assert again.records == 0 and not list(tmp_path.glob("*.bson"))


def test_spool_full_policies(tmp_path):
    docs = [schema.to_doc(_trade(i)) for i in range(100)]
    drop = Spool(tmp_path / "drop", max_bytes=8192, segment_bytes=2048)
    for i in range(0, 100, 10):
        assert drop.append("trades", docs[i:i + 10])
    assert drop.bytes <= 8192 and drop.dropped > 0 and drop.records + drop.dropped == 100
    reject = Spool(tmp_path / "reject", max_bytes=8192, segment_bytes=2048, policy="reject")
    results = [reject.append("trades", docs[i:i + 10]) for i in range(0, 100, 10)]
    assert results[0] and not results[-1] and reject.rejected > 0 and reject.dropped == 0


def test_spool_torn_tail_is_skipped(tmp_path):
    spool = Spool(tmp_path)
    spool.append("trades", [schema.to_doc(_trade(i)) for i in range(10)])
    spool.close()
    seg = next(tmp_path.glob("*.bson"))
    seg.write_bytes(seg.read_bytes()[:-7])          # SIGKILL in the middle of a write
    assert Spool(tmp_path).records == 9


class FlakyDb:
    """Wraps a real database; while ``down`` every operation fails like a stopped server."""

    def __init__(self, db) -> None:
        self.db = db
        self.down = False

    def __getitem__(self, name):
        if self.down:
            return _Down()
        return self.db[name]

    async def command(self, *args, **kwargs):
        if self.down:
            raise AutoReconnect("down")
        return await self.db.command(*args, **kwargs)


class _Down:
    def __getattr__(self, name):
        async def fail(*args, **kwargs):
            raise AutoReconnect("connection refused")
        return fail


async def test_writer_spools_during_outage_and_replays_in_order(tmp_path, mongo_db):
    await apply_indexes(mongo_db, Settings().retention)
    flaky = FlakyDb(mongo_db)
    spool = Spool(tmp_path)
    writer = Writer(flaky, batch_size=50, flush_interval_s=0.05, spool=spool)
    ledger = GapLedger(writer)
    writer.outage_listeners.append(ledger.on_db_availability)
    for i in range(100):
        writer.submit(_trade(i))
    assert await writer.flush()
    flaky.down = True
    for i in range(100, 300):
        writer.submit(_trade(i))
    assert not await writer.flush()
    assert writer.pending == 0 and spool.records == 201      # 200 trades + the open gap doc
    flaky.down = False
    assert await writer.flush()
    assert await writer.flush()         # the closed gap is queued when availability returns
    ids = [d["trade_id"] async for d in mongo_db.trades.find({}, {"trade_id": 1})]
    assert sorted(map(int, ids)) == list(range(300))
    gap = await mongo_db.gaps.find_one({"cause": "db_outage"})
    assert gap["end"] is not None and gap["backfilled"] is True and gap["duration_s"] >= 0
    # Replaying the same spool again (crash before the segment was deleted) adds nothing.
    spool.append("trades", [d async for d in mongo_db.trades.find({})][:10])
    assert await writer.flush()
    assert await mongo_db.trades.count_documents({}) == 300


async def test_sigterm_path_spools_when_database_is_down(tmp_path, mongo_db):
    flaky = FlakyDb(mongo_db)
    spool = Spool(tmp_path)
    writer = Writer(flaky, flush_interval_s=0.05, spool=spool)
    writer.db_available = False
    flaky.down = True
    for i in range(50):
        writer.submit(_trade(i))
    await writer.close()
    assert Spool(tmp_path).records == 50


async def test_gaps_api_and_health(mongo_uri, mongo_db):
    settings = Settings(mongodb_uri=mongo_uri, mongodb_db=mongo_db.name, exchanges=["binance"])
    await apply_indexes(mongo_db, settings.retention)
    writer = Writer(mongo_db)
    ledger = GapLedger(writer)
    now = now_utc()
    ledger.record("binance", "BTCUSDT", "spot", "trade", "sequence_gap",
                  start=now - timedelta(minutes=5), end=now - timedelta(minutes=4))
    old = ledger.open("binance", "*", "spot", "binance:spot", "disconnect",
                      start=now - timedelta(minutes=3))
    ledger.close(old, end=now - timedelta(minutes=2), backfilled=True)
    ledger.open("binance", "*", "perp", "binance:perp-public", "idle")
    ledger.open("*", "*", "*", "mongodb", "db_outage", start=now - timedelta(minutes=1))
    assert await writer.flush()
    client = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    try:
        body = await (await client.get("/gaps", params={"exchange": "binance"})).json()
        starts = [row["start"] for row in body["data"]]
        assert body["count"] == 4 and starts == sorted(starts, reverse=True)
        assert {r["cause"] for r in body["data"]} == {"sequence_gap", "disconnect", "idle",
                                                      "db_outage"}
        body = await (await client.get("/gaps", params={"symbol": "BTCUSDT",
                                                         "market": "spot"})).json()
        assert {r["cause"] for r in body["data"]} == {"sequence_gap", "disconnect", "db_outage"}
        bad = await client.get("/gaps", params={"limit": "0"})
        assert bad.status == 400
        health = await (await client.get("/health")).json()
        assert health["exchanges"]["binance"]["gap_ledger"] == {"open": 1, "last_24h": 3}
        assert health["gap_ledger"]["open"] == 1
    finally:
        await client.close()
