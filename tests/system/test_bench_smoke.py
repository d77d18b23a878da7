"""Smoke test of the benchmark harness: ``--quick`` runs end to end and produces every figure.

Deliberately no wall-clock thresholds (CI machines are shared and noisy): only that each figure
was measured, is a positive number and that ratios were computed.
"""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.bench.client import latency_summary

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_quick_benchmark_produces_all_figures(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "tests.bench.collector_bench", "--quick",
                           "--json", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=280)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    res = orjson.loads(out.read_bytes())

    def positive(x):
        return isinstance(x, (int, float)) and math.isfinite(x) and x > 0

    for kind in ("trade", "ticker", "depth", "kline", "trade_wss"):
        t = res["throughput"][kind]
        for key in ("ours_msgs_per_s", "floor_msgs_per_s", "ratio", "cpu_ratio",
                    "ours_cpu_us_per_msg", "floor_cpu_us_per_msg", "ours_peak_rss_mb"):
            assert positive(t[key]), (kind, key, t)
    # Every other exchange's real feed against its own floor, same run (no thresholds).
    assert set(res["exchanges"]) == {"bybit", "okx", "kraken", "gateio"}
    for exchange, kinds in res["exchanges"].items():
        assert set(kinds) == {"trade", "ticker", "depth"}, exchange
        for kind, t in kinds.items():
            for key in ("ours_msgs_per_s", "floor_msgs_per_s", "ratio", "cpu_ratio",
                        "ours_cpu_us_per_msg", "floor_cpu_us_per_msg", "ours_peak_rss_mb"):
                assert positive(t[key]), (exchange, kind, key, t)
        assert kinds["depth"]["book_levels"] > 0, exchange
    prog = res["program"]       # the collector program itself (python -m collector)
    assert positive(prog["steady_rss_mb"]) and positive(prog["peak_rss_mb"])
    assert prog["docs_stored"] > 0
    s = res["storage"]
    assert positive(s["ours_docs_per_s"]) and positive(s["ceiling_docs_per_s"])
    assert positive(s["ratio"]) and s["docs_in_db"] >= s["docs"] > 0
    lat = res["latency"]
    assert positive(lat["p50_ms"]) and positive(lat["p99_ms"]) and lat["measured_docs"] > 0
    growth = res["growth"]
    assert set(growth["symbols"]) == {"1", "10", "100"}
    assert set(growth["levels"]) == {"20", "400", "1000"}
    for rows in growth.values():
        for row in rows.values():
            assert positive(row["cpu_us_per_msg"]) and positive(row["peak_rss_mb"])
    assert growth["symbols"]["100"]["synced_books"] == 100
    assert growth["levels"]["1000"]["book_levels"] > 400
    figures = {row["figure"] for row in res["table"]}
    assert len(figures) == 5 + 4 * 3 + 4 and \
        all(row["ratio"] not in ("", None) for row in res["table"])


@pytest.mark.timeout(300)
def test_quick_volume_benchmark_produces_all_figures(tmp_path):
    out = tmp_path / "volume.json"
    proc = subprocess.run([sys.executable, "-m", "tests.bench.volume_bench", "--quick",
                           "--json", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=280)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    res = orjson.loads(out.read_bytes())

    def positive(x):
        return isinstance(x, (int, float)) and math.isfinite(x) and x > 0

    assert list(res["levels"]) == ["2000", "6000"]
    for trades, level in res["levels"].items():
        # Every history route (and /gaps, /health, data-check, a cursor page) at every level.
        paths = {p.split("?")[0] for p in level["endpoints"]}
        assert paths == {"/trades", "/market-data", "/orderbook-snapshots", "/volume-liquidity",
                         "/ohlcv", "/funding-rates", "/open-interest", "/gaps", "/health",
                         "/analysis/data-check"}
        assert any("cursor=" in p for p in level["endpoints"])
        for figures in level["endpoints"].values():
            assert all(positive(figures[k]) for k in ("p50_ms", "p99_ms", "median7_ms"))
        assert positive(level["cursor_walk_10_pages_ms"]) and 1 < level["cursor_walk_pages"] <= 10
        assert level["documents"]["trades"] == int(trades)
    ret = res["retention"]
    # The oldest 5 % of 6,000 trades (the deleter's cutoff at 95 % of their time span).
    assert ret["deleted"] == 300 and ret["batches"] >= 1 and positive(ret["docs_per_s"])
    assert (res["writer"]["docs"], res["writer"]["deleted_meanwhile"] > 0) == (3000, True)
    assert positive(res["writer"]["ratio"]) and positive(res["writer"]["ceiling_docs_per_s"])
    assert set(res["ratio_p50_top_over_first"]) == set(res["levels"]["6000"]["endpoints"])


def test_latency_summary_without_samples_is_nan_not_an_error():
    for samples in ([], [(100.0, 0.01)]):        # none, or none in the steady-state window
        out = latency_summary(samples)
        assert out["measured_docs"] == 0 and math.isnan(out["p50_ms"]) and math.isnan(out["max_ms"])
    out = latency_summary([(100.0 + i / 100, 0.002) for i in range(500)])
    assert out["measured_docs"] > 0 and out["p50_ms"] == out["p99_ms"] == 2.0


@pytest.mark.timeout(180)
def test_handler_benchmark_compares_two_checkouts():
    """``handler_bench --tree``: every exchange's feed handles all its frames in both checkouts
    (here the same one twice) and each line gets both figures and their ratio."""
    proc = subprocess.run([sys.executable, "-m", "tests.bench.handler_bench", "--tree", str(ROOT),
                           "--reps", "1", "--kinds", "trade"], cwd=ROOT, capture_output=True,
                          text=True, timeout=170)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [line.split() for line in proc.stdout.splitlines()[1:]]
    assert [row[:2] for row in rows] == [[ex, "trade"] for ex in
                                         ("binance", "bybit", "okx", "kraken", "gateio")]
    for row in rows:        # name kind <us> us/msg <us> us/msg <ratio>
        assert row[3] == row[5] == "us/msg", row
        assert float(row[2]) > 0 and float(row[4]) > 0 and float(row[6]) > 0, row
