"""deploy/monitoring/: the Prometheus alert rules pass ``promtool check rules`` and their unit
tests (``promtool test rules``: each alert fires when and with what it should); the Grafana
dashboard is valid against its schema, its queries are valid PromQL; and every metric either
names is one the API's /metrics really exposes on stored data.

promtool comes from Debian's ``prometheus`` package (.ci/run installs it); without it those
checks are skipped, except under CI, where a missing promtool is a failure."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import jsonschema_rs
import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from api.app import create_app
from common import schema
from common.schema import now_utc
from common.settings import Settings
from tests.support.live_api import ROOT, seed

MONITORING = ROOT / "deploy" / "monitoring"
RULES = MONITORING / "cryptodata-rules.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
# Series that come from Prometheus itself, not from /metrics.
PROMETHEUS_OWN = {"up"}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is required under CI (.ci/run installs Debian's prometheus)")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    return path


def rule_exprs() -> dict[str, str]:
    doc = yaml.safe_load(RULES.read_text())
    return {rule["alert"]: rule["expr"] for group in doc["groups"] for rule in group["rules"]}


def dashboard_exprs() -> dict[str, str]:
    dash = json.loads(DASHBOARD.read_text())
    return {f"{p['title']} {t['refId']}": t["expr"] for p in dash["panels"] for t in p["targets"]}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers not followed by '(' (functions) and not
    inside {...} matchers, by (...) / [5m] groupings or label values."""
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\"[^\"]*\"", " ", expr)
    text = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", " ", text)
    names = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", text))
    keywords = {"and", "or", "unless", "bool", "offset"}
    return {n for n in names if n not in keywords and not re.fullmatch(r"\d+\w*", n)}


def test_alert_rules_pass_promtool_check():
    out = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(rule_exprs())} rules found" in out.stdout


def test_alert_rules_unit_tests_fire_as_designed():
    """cryptodata-rules.test.yml: every alert's firing time, labels and annotation text."""
    tested = {t["alertname"] for case in yaml.safe_load(
        (MONITORING / "cryptodata-rules.test.yml").read_text())["tests"]
        for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert tested == set(rule_exprs())
    out = subprocess.run([promtool(), "test", "rules", "cryptodata-rules.test.yml"],
                         cwd=MONITORING, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr


def test_the_rules_cover_what_on_call_needs():
    assert set(rule_exprs()) == {
        "CryptodataApiDown", "CryptodataCollectorNeverReported",
        "CryptodataCollectorHeartbeatStale", "CryptodataStreamStale",
        "CryptodataBookResyncingTooLong", "CryptodataGapOpen", "CryptodataGapsNotBackfilled",
        "CryptodataSpoolGrowing", "CryptodataWriteErrors", "CryptodataRecordsDropped"}


def test_grafana_dashboard_is_schema_valid_and_laid_out(tmp_path):
    dash = json.loads(DASHBOARD.read_text())
    validator = jsonschema_rs.validator_for(
        json.loads((MONITORING / "grafana-dashboard.schema.json").read_text()))
    errors = [e.message for e in validator.iter_errors(dash)]
    assert errors == []
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"{p['title']} overlaps another panel"
        cells |= mine
    # Every query is valid PromQL: promtool parses it as a recording rule.
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:q{i}", "expr": expr}
        for i, expr in enumerate(dashboard_exprs().values())]}]}
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    out = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_metric_name_extraction():
    assert metric_names('sum by (le, route) (rate(a_bucket{x="y"}[5m])) > 0 and b') == \
        {"a_bucket", "b"}
    assert metric_names('up{job="cryptodata-api"} == 0') == {"up"}


async def test_every_metric_the_rules_and_dashboard_use_is_exposed(mongo_uri, mongo_db):
    """/metrics of the real app over stored data and a full collector status document."""
    await seed(mongo_db)
    await mongo_db[schema.STATUS].update_one({"_id": "collector"}, {"$set": {
        "writer": {"stored": 10, "pending": 0, "duplicates": 0, "dropped": 0, "write_errors": 0,
                   "last_write_ms": 1.0, "spool": {"records": 0, "bytes": 0}},
        "exchanges.binance.messages": 5, "exchanges.binance.reconnects": 1,
        "exchanges.binance.resyncs": 2, "exchanges.binance.gaps": 0,
        "exchanges.binance.malformed": 0, "exchanges.binance.records": {"trades": 20},
        "exchanges.kraken.books": {"spot:BTC/USD": {"state": "resyncing", "since": now_utc(),
                                                   "update_id": 7}}}})
    settings = Settings(mongodb_uri=mongo_uri, mongodb_db=mongo_db.name)
    client = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    try:
        assert (await client.get("/health")).status == 200
        text = await (await client.get("/metrics")).text()
    finally:
        await client.close()
    exposed = {line.split("{")[0].split(" ")[0] for line in text.splitlines()
               if line and not line.startswith("#")}
    used = {name: where for where, expr in {**rule_exprs(), **dashboard_exprs()}.items()
            for name in metric_names(expr)}
    missing = {name: where for name, where in used.items()
               if name not in exposed and name not in PROMETHEUS_OWN}
    assert missing == {}
    # The values the alerts read are the ones the API reports.
    assert 'cryptodata_gaps_open{exchange="okx"} 1.0' in text
    assert 'cryptodata_gaps_not_backfilled_24h{exchange="okx"} 0.0' in text
    assert re.search(r'cryptodata_collector_book_unsynced_seconds\{book="spot:BTC/USD",'
                     r'exchange="kraken",state="resyncing"\} \d', text)
    assert 'cryptodata_collector_book_unsynced_seconds{book="spot:BTCUSDT",exchange="binance",' \
           'state="live"} 0.0' in text
    assert re.search(r'cryptodata_collector_stream_age_seconds\{exchange="okx",'
                     r'stream="market_data:spot:BTC-USDT"\} \d', text)
