"""The original runbook's commands (README, "The original runbook's commands") answer what they
imply: each ``curl ... | jq FILTER`` line runs against the real app on stored data and its jq
path is evaluated on the real answer; the ``grep`` line finds the collector's "Stored N
messages" lines in a real collector's log; the ``python -m collector`` / ``python -m api`` lines
parse as the runbook means them."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp.test_utils import TestClient, TestServer

from api.app import create_app
from collector.writer import Writer
from common import schema
from common.schema import Ticker, now_utc
from common.settings import Settings
from tests.support.fakes.binance import FakeBinance
from tests.support.helpers import wait_for
from tests.support.live_api import ROOT, seed

SECTION = "### The original runbook's commands"


def runbook_lines() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text[text.index(SECTION):]
    block = block[block.index("```bash\n") + 8:]
    return [line for line in block[:block.index("```")].splitlines() if line.strip()]


def jq(value: Any, program: str) -> Any:
    """The jq subset the runbook uses: ``.``, ``.a.b`` paths and ``| length``."""
    for step in (s.strip() for s in program.split("|")):
        if step == "length":
            value = len(value) if value is not None else 0
        elif step == ".":
            pass
        elif re.fullmatch(r"(\.[A-Za-z_][A-Za-z0-9_]*)+", step):
            for key in step[1:].split("."):
                value = value.get(key) if isinstance(value, dict) else None
        else:
            raise AssertionError(f"jq filter outside the tested subset: {step!r}")
    return value


def curl_commands() -> list[tuple[str, str, str]]:
    """(line, path?query, jq program) of every ``curl ... | jq ...`` line."""
    out = []
    for line in runbook_lines():
        if not line.startswith("curl "):
            continue
        words = shlex.split(line, comments=True)
        url = next(w for w in words if "5001" in w)
        parts = urlsplit(url if "://" in url else f"http://{url}")
        program = words[words.index("jq") + 1]
        out.append((line, parts.path + (f"?{parts.query}" if parts.query else ""), program))
    return out


def test_the_runbook_has_every_command_of_the_guide():
    lines = runbook_lines()
    paths = [p for _, p, _ in curl_commands()]
    assert "/realtime/binance" in paths and "/health" in paths and "/realtime" in paths
    assert {p.split("?")[0] for p in paths if "limit=" in p} == {
        "/market-data", "/trades", "/orderbook-snapshots", "/ohlcv", "/funding-rates",
        "/open-interest", "/volume-liquidity"}
    assert any(line.startswith('grep "Stored.*messages" data_collection.log') for line in lines)
    assert any(line.startswith("python -m collector 3600 60") for line in lines)
    assert any(line.startswith("python -m api --port 5002 --debug") for line in lines)


@pytest.fixture
async def app_on_stored_data(mongo_uri, mongo_db):
    await seed(mongo_db)
    # A second Binance ticker stream (perp), so the count is not a coincidental 1.
    writer = Writer(mongo_db)
    now = now_utc()
    writer.submit(Ticker("binance", "BTCUSDT", "BTC/USDT", "perp", now, now, last=65010.0))
    assert await writer.flush()
    client = TestClient(TestServer(create_app(Settings(mongodb_uri=mongo_uri,
                                                       mongodb_db=mongo_db.name))))
    await client.start_server()
    yield client, mongo_db
    await client.close()


async def test_every_curl_jq_line_answers_what_it_implies(app_on_stored_data):
    client, db = app_on_stored_data
    answers: dict[tuple[str, str], Any] = {}
    for line, target, program in curl_commands():
        resp = await client.get(target)
        assert resp.status == 200, (line, resp.status, await resp.text())
        answers[(target, program)] = jq(await resp.json(), program)
    assert answers[("/health", ".status")] == "healthy"
    mongo = answers[("/health", ".mongodb")]
    assert mongo["reachable"] is True and set(mongo) == {"reachable", "ping_ms"}
    # /realtime | jq . : every exchange with its newest records.
    everything = answers[("/realtime", ".")]
    assert sorted(everything["data"]) == ["binance", "bybit", "gateio", "kraken", "okx"]
    assert everything["data"]["binance"]["BTCUSDT"]["perp"]["market_data"]["last"] == 65010.0
    # The monitoring line: Binance ticker streams stored (symbol x market), not 0.
    streams = {(d["symbol"], d["market"]) for d in
               await db[schema.MARKET_DATA].find({"exchange": "binance"}).to_list(None)}
    assert answers[("/realtime/binance", ".data.market_data | length")] == len(streams) == 2
    # The per-type endpoints: ?limit= rows when that many are stored, else all of them.
    stored = {"/market-data": schema.MARKET_DATA, "/trades": schema.TRADES,
              "/orderbook-snapshots": schema.ORDER_BOOK, "/ohlcv": schema.OHLCV,
              "/funding-rates": schema.FUNDING_RATES, "/open-interest": schema.OPEN_INTEREST,
              "/volume-liquidity": schema.VOLUME_LIQUIDITY}
    checked = 0
    for (target, program), value in answers.items():
        if "limit=" not in target:
            continue
        assert program == ".data | length"
        path, query = target.split("?")
        limit = int(dict(p.split("=") for p in query.split("&"))["limit"])
        count = await db[stored[path]].count_documents({})
        assert value == min(limit, count) > 0, (target, value, count)
        checked += 1
    assert checked == len(stored)


def test_python_m_collector_3600_60_means_an_hour_with_60s_polling(monkeypatch):
    import collector.__main__ as cli
    calls = []
    monkeypatch.setattr(cli, "run", lambda duration, poll: calls.append((duration, poll)))
    monkeypatch.setattr(sys, "argv", ["python -m collector", "3600", "60"])
    cli.main()
    assert calls == [(3600.0, 60.0)]


def test_python_m_api_port_5002_debug(monkeypatch):
    import api.__main__ as cli
    served, levels = [], []
    monkeypatch.setattr(cli.web, "run_app", lambda app, **kw: served.append(kw))
    monkeypatch.setattr(cli.logging, "basicConfig", lambda **kw: levels.append(kw["level"]))
    monkeypatch.setattr("common.sentry.init_sentry", lambda *a, **k: None)
    cli.main(["--port", "5002", "--debug"])
    assert [(kw["host"], kw["port"]) for kw in served] == [("127.0.0.1", 5002)]
    assert levels == ["DEBUG"]


@pytest.mark.timeout(120)
async def test_grep_stored_messages_finds_the_collectors_lines(mongo_uri, mongo_db, tmp_path):
    """A real ``python -m collector 6 60`` (the runbook's command, 6 s instead of an hour)
    against the fake Binance; its log is what ``grep "Stored.*messages"`` reads."""
    fake = FakeBinance()
    await fake.start()
    base, ws = f"http://127.0.0.1:{fake.port}", f"ws://127.0.0.1:{fake.port}"
    env = {"MONGODB_URI": mongo_uri, "CRYPTODATA_MONGODB_DB": mongo_db.name,
           "CRYPTODATA_CONFIG_FILE": "/dev/null", "CRYPTODATA_EXCHANGES": '["binance"]',
           "CRYPTODATA_BINANCE__SPOT_SYMBOLS": '["BTCUSDT"]',
           "CRYPTODATA_BINANCE__PERP_SYMBOLS": '["BTCUSDT"]',
           "CRYPTODATA_BINANCE__SPOT_WS_URL": ws, "CRYPTODATA_BINANCE__PERP_WS_URL": ws,
           "CRYPTODATA_BINANCE__SPOT_REST_URL": base, "CRYPTODATA_BINANCE__PERP_REST_URL": base,
           "CRYPTODATA_SPOOL_DIR": str(tmp_path / "spool"), "CRYPTODATA_LOG_STATS_INTERVAL_S": "1",
           "CRYPTODATA_SENTRY_DSN": "", "PYTHONUNBUFFERED": "1"}
    log_path = tmp_path / "data_collection.log"
    try:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "collector", "6", "60"], cwd=ROOT,
                                    env={**os.environ, **env}, stdout=log, stderr=log)
            try:
                # The duration argument ends it (the fake exchange runs on this event loop).
                async def exited() -> bool:
                    return proc.poll() is not None
                await wait_for(exited, timeout_s=60, interval_s=0.1, what="collector exit")
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        assert proc.returncode == 0, log_path.read_text()[-3000:]
    finally:
        await fake.stop()
    grep = subprocess.run(["grep", "Stored.*messages", str(log_path)], capture_output=True,
                          text=True)
    lines = grep.stdout.splitlines()
    assert grep.returncode == 0 and lines, log_path.read_text()[-3000:]
    parsed = [re.search(r"Stored (\d+) messages to MongoDB \((\d+) in total, (\d+) pending\)", line)
              for line in lines]
    assert all(parsed), lines
    # Each line's count is the growth since the previous one; the totals add up.
    counts = [int(m.group(1)) for m in parsed]
    assert sum(counts) == int(parsed[-1].group(2))
    assert all(c > 0 for c in counts)
    # The last periodic line may precede the shutdown flush; the stop line has the final count,
    # per collection. Every inserted document is in the database; a candle is counted once per
    # write (a later write replaces it), so the candle count is at least the candles stored.
    log_text = log_path.read_text()
    final = re.search(r"stopped; (\d+) documents stored in total \(([^)]*)\)", log_text)
    assert final, log_text[-3000:]
    assert int(parsed[-1].group(2)) <= int(final.group(1))
    by_collection = {k: int(v) for k, v in (kv.split("=") for kv in final.group(2).split(", "))}
    assert sum(by_collection.values()) == int(final.group(1))
    in_db = {c: await mongo_db[c].count_documents({}) for c in (
        schema.MARKET_DATA, schema.TRADES, schema.ORDER_BOOK, schema.OHLCV, schema.FUNDING_RATES,
        schema.OPEN_INTEREST, schema.VOLUME_LIQUIDITY)}
    candles = by_collection.pop(schema.OHLCV)
    assert 0 < in_db.pop(schema.OHLCV) <= candles
    assert by_collection == {c: n for c, n in in_db.items() if n}, (by_collection, in_db)
