"""The integer time key ``t``, keyset paging on it, and retention without TTL (nx-27017)."""
from __future__ import annotations

from datetime import timedelta

from aiohttp.test_utils import TestClient, TestServer

from api import analysis
from api.app import create_app
from api.params import Filters, encode_cursor
from api.queries import Queries
from collector.gaps import Gap
from collector.retention import RetentionDeleter, migrate_time_keys, upkeep
from collector.spool import Spool
from collector.writer import Writer
from common import schema
from common.indexes import apply_indexes, expiry_plan, server_profile
from common.schema import Trade, ms_to_dt, now_utc, time_key
from common.settings import RetentionSettings, Settings

DAY_MS = 86_400_000


def trade(i: int, t_ms: int, symbol: str = "BTCUSDT") -> Trade:
    return Trade("binance", symbol, "BTC/USDT", "spot", ms_to_dt(t_ms), ms_to_dt(t_ms),
                 trade_id=str(i), price=100.0 + i, size=0.5, side="buy")


def test_time_key_is_the_bson_millisecond_of_ts():
    ts = ms_to_dt(1_767_225_600_999)
    assert time_key(ts) == 1_767_225_600_999
    # Microseconds are floored exactly like the BSON date (no float rounding up).
    assert time_key(ts.replace(microsecond=999_999)) == 1_767_225_600_999
    assert time_key(ts.replace(microsecond=0)) == 1_767_225_600_000
    doc = trade(7, 1_767_225_600_123).to_doc()
    assert doc["t"] == 1_767_225_600_123 and doc["ts"] == ms_to_dt(1_767_225_600_123)
    start = ms_to_dt(1_767_225_601_500)
    assert Gap("okx", "*", "*", "okx:spot", "idle", start).to_doc()["t"] == 1_767_225_601_500
    # `latest` is read by key only: no history key there.
    assert "t" not in Writer.latest_doc("k", trade(1, 1_767_225_600_000))


async def test_writer_stores_the_time_key(mongo_db):
    await apply_indexes(mongo_db, RetentionSettings())
    writer = Writer(mongo_db, batch_size=10)
    writer.submit(trade(1, 1_767_225_600_123))
    assert await writer.flush()
    doc = await mongo_db[schema.TRADES].find_one({"trade_id": "1"})
    assert (doc["t"], doc["ts"]) == (1_767_225_600_123, ms_to_dt(1_767_225_600_123))


async def test_deleter_removes_exactly_the_expired_in_bounded_batches(mongo_db):
    await apply_indexes(mongo_db, RetentionSettings())
    now_ms = time_key(now_utc())
    # 300 trades one hour apart over 12.5 days, newest first; 7-day retention.
    ts = [now_ms - i * 3_600_000 for i in range(300)]
    await mongo_db[schema.TRADES].insert_many([trade(i, t).to_doc() for i, t in enumerate(ts)])
    gaps = [Gap("binance", "*", "*", "binance:spot", "idle", ms_to_dt(now_ms - d * DAY_MS))
            for d in (1, 6, 8, 9)]
    await mongo_db[schema.GAPS].insert_many([g.to_doc() for g in gaps])
    cutoff = now_ms - 7 * DAY_MS
    expired = sum(t < cutoff for t in ts)
    assert expired == 131
    deleter = RetentionDeleter(mongo_db, expiry_plan(RetentionSettings()), batch=40, pause_s=0)
    stats = await deleter.run_once(now_ms)
    assert stats.per_collection[schema.TRADES] == 131
    assert stats.per_collection[schema.GAPS] == 2
    assert stats.deleted == deleter.deleted == 133
    left = sorted((d["t"] for d in await mongo_db[schema.TRADES].find().to_list(None)),
                  reverse=True)
    assert left == [t for t in ts if t >= cutoff]
    assert sorted(g["t"] for g in await mongo_db[schema.GAPS].find().to_list(None)) == \
        [now_ms - 6 * DAY_MS, now_ms - DAY_MS]
    # 131 expired trades in batches of 40: 40, 40, 40, 11 (the last bounded by the cutoff);
    # every other collection and the gaps one call each.
    assert len(stats.batch_ms) == 4 + len(expiry_plan(RetentionSettings())) - 1
    assert (await deleter.run_once(now_ms)).deleted == 0            # nothing left to do


async def test_upkeep_picks_the_mechanism_from_the_server_profile(mongo_db):
    await apply_indexes(mongo_db, RetentionSettings())
    profile = await server_profile(mongo_db)
    info = await mongo_db[schema.TRADES].index_information()
    has_ttl = any("expireAfterSeconds" in meta for meta in info.values())
    assert has_ttl == profile.ttl
    if profile.ttl:
        # A real mongod: its TTL indexes expire documents; the task only migrates and ends.
        assert await upkeep(mongo_db, RetentionSettings(), 3600) == {"mode": "ttl"}


async def test_old_documents_get_the_key_at_start_and_read_again(mongo_uri, mongo_db):
    await apply_indexes(mongo_db, RetentionSettings())
    now_ms = time_key(now_utc())
    old = [trade(i, now_ms - i * 1000).to_doc() for i in range(5)]
    for doc in old:
        del doc["t"]                                  # as the previous release wrote them
    await mongo_db[schema.TRADES].insert_many(old)
    await mongo_db[schema.LATEST].replace_one(
        {"_id": "k"}, Writer.latest_doc("k", trade(0, now_ms)), upsert=True)
    settings = Settings(mongodb_uri=mongo_uri, mongodb_db=mongo_db.name, api_rate_per_s=0)
    async with TestClient(TestServer(create_app(settings))) as client:
        # Before the migration: no error; filtered/paged reads (ranges on t) miss these rows.
        resp = await client.get("/trades", params={"limit": "2"})
        assert resp.status == 200 and len((await resp.json())["data"]) == 2
        body = await (await client.get("/trades", params={"since": str(now_ms - 10_000)})).json()
        assert body["data"] == []
        assert await migrate_time_keys(mongo_db, list(schema.DATA_COLLECTIONS)) == 5
        body = await (await client.get("/trades", params={"limit": "2"})).json()
        assert [r["trade_id"] for r in body["data"]] == ["0", "1"]
        assert "t" not in body["data"][0] and body["data"][0]["price"] == 100.0
        body = await (await client.get("/trades", params={"cursor": body["next"]})).json()
        assert [r["trade_id"] for r in body["data"]] == ["2", "3", "4"]


async def test_cursor_walks_a_burst_of_one_millisecond_without_loss_or_repeat(mongo_uri,
                                                                            mongo_db):
    await apply_indexes(mongo_db, RetentionSettings())
    now_ms = time_key(now_utc())
    # 25 trades in the same millisecond between two single ones, plus another symbol's.
    docs = [trade(0, now_ms).to_doc(), trade(99, now_ms - 2000).to_doc(),
            trade(500, now_ms - 1000, "ETHUSDT").to_doc()]
    docs += [trade(i, now_ms - 1000).to_doc() for i in range(1, 26)]
    await mongo_db[schema.TRADES].insert_many(docs)
    for sym in ("BTCUSDT", "ETHUSDT"):
        await mongo_db[schema.LATEST].replace_one(
            {"_id": sym}, Writer.latest_doc(sym, trade(0, now_ms, sym)), upsert=True)
    expected = [d["trade_id"] for d in sorted(
        (d for d in docs if d["symbol"] == "BTCUSDT"), key=lambda d: (d["t"], d["_id"]),
        reverse=True)]
    settings = Settings(mongodb_uri=mongo_uri, mongodb_db=mongo_db.name, api_rate_per_s=0)
    async with TestClient(TestServer(create_app(settings))) as client:
        seen, cursor = [], None
        for _ in range(10):
            params = {"exchange": "binance", "symbol": "BTCUSDT", "limit": "4",
                      "since": str(now_ms - 1000), "until": str(now_ms)}
            if cursor:
                params["cursor"] = cursor
            resp = await client.get("/trades", params=params)
            assert resp.status == 200, await resp.text()
            body = await resp.json()
            seen += [r["trade_id"] for r in body["data"]]
            cursor = body["next"]
            if not cursor:
                break
        # since/until bound the walk: trade 99 (2 s old) is outside it.
        assert seen == [t for t in expected if t != "99"]
        assert len(seen) == 26 and seen[0] == "0"
        # A cursor from another collection (string _id) is a 400, not a 500.
        gap_page = await (await client.get("/gaps", params={"limit": "1"})).json()
        assert gap_page["data"] == []
        resp = await client.get("/trades", params={"cursor": encode_cursor(now_ms - 1000, "x")})
        assert resp.status == 400 and "cursor" in (await resp.json())["error"]["message"]


def test_since_until_are_compared_as_the_stored_millisecond():
    f = Filters(None, None, None, 10, ms_to_dt(1000) + timedelta(microseconds=500),
                ms_to_dt(5000), cursor=(3000, "id"))
    reads = Queries(None).page_queries({"exchange": "okx"}, f)
    assert reads == [({"exchange": "okx", "t": 3000}, [("_id", -1)]),
                     ({"exchange": "okx", "t": {"$gte": 1000, "$lt": 3000}},
                      [("t", -1), ("_id", -1)])]


async def test_data_check_counts_windows_on_the_time_key(mongo_db):
    await apply_indexes(mongo_db, RetentionSettings())
    now = now_utc()
    now_ms = time_key(now)
    ages_min = [30] * 3 + [120] * 5 + [30 * 60] * 2
    await mongo_db[schema.TRADES].insert_many(
        [trade(i, now_ms - age * 60_000).to_doc() for i, age in enumerate(ages_min)])
    check = await analysis.data_check(mongo_db, now)
    row = next(r for r in check["collections"] if r["collection"] == schema.TRADES)
    assert (row["count"], row["per_hour_last_1h"], row["per_hour_avg_24h"]) == (10, 3, 0.3)
    assert row["newest_ts"] == ms_to_dt(now_ms - 30 * 60_000) and row["newest_age_s"] == 1800.0


async def test_a_batch_spooled_by_the_previous_release_gets_the_key_on_replay(mongo_db, tmp_path):
    await apply_indexes(mongo_db, RetentionSettings())
    spool = Spool(str(tmp_path / "spool"))
    old = trade(1, 1_767_225_600_123).to_doc()
    del old["t"]
    assert spool.append(schema.TRADES, [old])
    spool.sync()
    writer = Writer(mongo_db, spool=spool)
    assert await writer.flush()
    doc = await mongo_db[schema.TRADES].find_one({"trade_id": "1"})
    assert doc["t"] == 1_767_225_600_123


async def test_the_mechanism_can_be_forced_either_way(mongo_db):
    forced_ttl = RetentionSettings(mechanism="ttl", trades=3600)
    await apply_indexes(mongo_db, forced_ttl)
    info = await mongo_db[schema.TRADES].index_information()
    assert [(m["key"], m["expireAfterSeconds"]) for m in info.values()
            if "expireAfterSeconds" in m] == [([("ts", 1)], 3600)]
    assert (await server_profile(mongo_db, forced_ttl)).ttl is True
    forced_delete = RetentionSettings(mechanism="delete")
    await apply_indexes(mongo_db, forced_delete)             # the TTL index is dropped again
    info = await mongo_db[schema.TRADES].index_information()
    assert not any("expireAfterSeconds" in m for m in info.values())
    assert (await server_profile(mongo_db, forced_delete)).ttl is False
