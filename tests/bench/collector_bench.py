"""Collector performance benchmark (not a test; see tests/bench/README.md).

    /work/main/.venv/bin/python -m tests.bench.collector_bench            # full run (~3-5 min)
    /work/main/.venv/bin/python -m tests.bench.collector_bench --quick    # CI smoke (~20 s)

Starts, each in its own process: the Binance replay server, nx-27017 (unless ``MONGODB_URI`` is
set) and one client process per measurement, so server, database and client do not share an
interpreter (on a 2-core machine they still share the cores: every figure is therefore given as a
ratio to a reference measured in the same run, and repeated measurements are reported as medians
of per-pair ratios).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from tests.bench.exchanges import BOOK_LEVELS

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable

# Issue text: cryptofeed 2.4.1 on this machine kind (one core, Binance combined stream).
PEER = {"trade": "74.6k", "ticker": "89.6k (bookTicker)", "depth": "13.7k", "kline": "-",
        "stored": "4.0k docs/s", "rss": "67 / 161 MB"}
# Targets (ratios vs the same-run reference).
TARGET = {"trade": 0.9, "ticker": 0.9, "depth": 0.5, "kline": None, "trade_wss": None,
          "stored": 0.9, "p99_ms": 500.0, "rss_mb": 150.0}
OTHER_EXCHANGES = ("bybit", "okx", "kraken", "gateio")


class Bench:
    def __init__(self, quick: bool, reps: int | None,
                 exchanges: tuple[str, ...] = OTHER_EXCHANGES) -> None:
        self.quick = quick
        self.other_exchanges = exchanges
        self.reps = reps or (1 if quick else 3)
        self.procs: list[subprocess.Popen] = []
        self.tmp = tempfile.mkdtemp(prefix="cryptodata-bench-")
        self.results: dict[str, Any] = {"quick": quick, "reps": self.reps}
        self.tag = 0

    # ---- processes -------------------------------------------------------------------------
    def start(self) -> None:
        server = subprocess.Popen([PY, "-m", "tests.bench.replay_server", "--cert-dir", self.tmp],
                                  cwd=ROOT, stdout=subprocess.PIPE, text=True)
        self.procs.append(server)
        line = server.stdout.readline().split()
        if not line or line[0] != "READY":
            raise RuntimeError("replay server did not start")
        self.port, self.tls_port, self.cert = int(line[1]), int(line[2]), line[3]
        self.mongodb_uri = os.environ.get("MONGODB_URI") or self._start_nx()

    def _start_nx(self) -> str:
        from tests.support.helpers import free_port, wait_port

        exe = shutil.which("nx-27017", path=str(Path(PY).parent)) or "nx-27017"
        data = os.path.join(self.tmp, "nx")
        os.makedirs(data)
        port = free_port()
        self.procs.append(subprocess.Popen(
            [exe, "--data-dir", data, "--host", "127.0.0.1", "-p", str(port),
             "--log-file", os.path.join(data, "nx.log"), "--pid-file", os.path.join(data, "nx.pid")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(port)
        return f"mongodb://127.0.0.1:{port}"

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def client(self, mode: str, kind: str = "trade", count: int = 10_000, *, warmup: int = 1000,
               rate: float = 0, symbols: int = 1, levels: int = 1000, tls: bool = False,
               timeout: float = 120, exchange: str = "binance") -> dict[str, Any]:
        self.tag += 1
        # The scenario key (cached by the server): every run of it replays the same frames.
        path = f"/b/{exchange}/{kind}/{count}/{int(rate)}/{symbols}/{levels}/{warmup}"
        scheme, port = ("wss", self.tls_port) if tls else ("ws", self.port)
        args = [PY, "-m", "tests.bench.client", "--mode", mode, "--kind", kind,
                "--exchange", exchange,
                "--count", str(count), "--warmup", str(warmup), "--rate", str(rate),
                "--symbols", str(symbols), "--levels", str(levels), "--timeout", str(timeout),
                "--ws-url", f"{scheme}://127.0.0.1:{port}{path}",
                "--rest-url", f"http://127.0.0.1:{self.port}{path}",
                "--mongodb-uri", self.mongodb_uri, "--tag", f"{os.getpid()}_{self.tag}"]
        env = dict(os.environ, SSL_CERT_FILE=self.cert, CRYPTODATA_CONFIG_FILE=os.devnull)
        out = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=timeout + 30)
        if out.returncode != 0:
            raise RuntimeError(f"client {mode}/{kind} failed:\n{out.stderr[-3000:]}")
        result = orjson.loads(out.stdout.strip().splitlines()[-1])
        if result.get("error"):
            raise RuntimeError(f"client {mode}/{kind}: {result['error']}")
        return result

    # ---- sections ----------------------------------------------------------------------------
    def throughput(self) -> None:
        n = 6_000 if self.quick else 100_000
        warm = 500 if self.quick else 2_000
        out = {}
        for kind, tls in (("trade", False), ("ticker", False), ("depth", False),
                          ("kline", False), ("trade", True)):
            label = kind + ("_wss" if tls else "")
            pairs = []
            for _ in range(self.reps):
                floor = self.client("floor", kind, n, warmup=warm, tls=tls)
                ours = self.client("collector", kind, n, warmup=warm, tls=tls)
                pairs.append((floor, ours))
            out[label] = summarize_pairs(pairs)
            print(f"  {label:10s} ours {out[label]['ours_msgs_per_s']:9.0f}/s  floor "
                  f"{out[label]['floor_msgs_per_s']:9.0f}/s  ratio {out[label]['ratio']:.2f} "
                  f"(cpu ratio {out[label]['cpu_ratio']:.2f})", flush=True)
        self.results["throughput"] = out

    def exchanges(self) -> None:
        """Bybit, OKX, Kraken, Gate.io: storage-off msgs/s of each exchange's real feed against
        its own floor (the same frames, plain websockets + orjson), trades / tickers / depth."""
        out: dict[str, dict[str, Any]] = {}
        for exchange in self.other_exchanges:
            out[exchange] = {}
            for kind in ("trade", "ticker", "depth"):
                if self.quick:
                    n, warm = (2_000, 300) if kind == "depth" else (3_000, 300)
                else:
                    n, warm = (20_000, 1_000) if kind == "depth" else (50_000, 2_000)
                levels = BOOK_LEVELS[exchange]
                pairs = []
                for _ in range(self.reps):
                    floor = self.client("floor", kind, n, warmup=warm, levels=levels,
                                        exchange=exchange)
                    ours = self.client("collector", kind, n, warmup=warm, levels=levels,
                                       exchange=exchange)
                    pairs.append((floor, ours))
                t = out[exchange][kind] = summarize_pairs(pairs)
                if kind == "depth":
                    t["book_levels"] = pairs[-1][1]["book_levels"]
                print(f"  {exchange:7s} {kind:7s} ours {t['ours_msgs_per_s']:9.0f}/s  floor "
                      f"{t['floor_msgs_per_s']:9.0f}/s  ratio {t['ratio']:.2f} "
                      f"(cpu ratio {t['cpu_ratio']:.2f})", flush=True)
        self.results["exchanges"] = out

    def storage(self) -> None:
        n = 3_000 if self.quick else 30_000
        pairs = []
        for _ in range(self.reps):
            ceiling = self.client("ceiling", count=n)
            stored = self.client("store", "trade", n + 1, warmup=0)
            pairs.append((ceiling, stored))
        ratios = [s["docs_per_s"] / c["docs_per_s"] for c, s in pairs]
        self.results["storage"] = {
            "ours_docs_per_s": med(s["docs_per_s"] for _, s in pairs),
            "ceiling_docs_per_s": med(c["docs_per_s"] for c, _ in pairs),
            "ratio": med(ratios), "ratios": ratios,
            "docs": pairs[-1][1]["docs"], "docs_in_db": pairs[-1][1]["docs_in_db"],
            "peak_rss_mb": max(s["peak_rss_mb"] for _, s in pairs)}
        s = self.results["storage"]
        print(f"  stored     ours {s['ours_docs_per_s']:9.0f}/s  ceiling "
              f"{s['ceiling_docs_per_s']:9.0f}/s  ratio {s['ratio']:.2f}", flush=True)

    def latency(self) -> None:
        # The realistic mix (trades, depth with book maintenance, tickers, klines) at a steady
        # 2,000 msgs/s through the real Writer configured from Settings.
        rate = 2000
        seconds = 4 if self.quick else 20
        res = self.client("latency", "mix", rate * seconds + 1, warmup=1000, rate=rate,
                          timeout=seconds * 4 + 60)
        self.results["latency"] = res
        print(f"  latency    p50 {res['p50_ms']:.0f} ms  p99 {res['p99_ms']:.0f} ms  max "
              f"{res['max_ms']:.0f} ms at {res['achieved_msgs_per_s']:.0f} msgs/s", flush=True)

    def program(self) -> None:
        """RSS of the collector *program*: ``python -m collector`` itself (what supervisord runs:
        collector/app.py with its MongoDB client, Writer, spool, status loop, Sentry hook), not
        the benchmark client. Binance spot, 20 symbols (trades, 1000-level books, tickers,
        klines), the mix at a steady 2,000 msgs/s from the replay server, storing into the same
        MongoDB; RSS sampled from /proc every 0.5 s. Steady state = median of the second half."""
        import signal

        from pymongo import MongoClient

        from tests.bench.exchanges import symbols_for
        seconds = 6 if self.quick else 30
        rate, nsym = 2000, 20
        self.tag += 1
        path = f"/b/binance/mix/{int(rate * (seconds + 20))}/{rate}/{nsym}/1000/1000"
        db_name = f"bench_program_{os.getpid()}_{self.tag}"
        env = dict(os.environ, CRYPTODATA_CONFIG_FILE=os.devnull, MONGODB_URI=self.mongodb_uri,
                   CRYPTODATA_MONGODB_DB=db_name, CRYPTODATA_EXCHANGES='["binance"]',
                   CRYPTODATA_BINANCE__SPOT_SYMBOLS=orjson.dumps(symbols_for(nsym)).decode(),
                   CRYPTODATA_BINANCE__PERP_SYMBOLS="[]",
                   CRYPTODATA_BINANCE__SPOT_WS_URL=f"ws://127.0.0.1:{self.port}{path}",
                   CRYPTODATA_BINANCE__SPOT_REST_URL=f"http://127.0.0.1:{self.port}{path}",
                   CRYPTODATA_SPOOL_DIR=os.path.join(self.tmp, f"spool{self.tag}"),
                   CRYPTODATA_LOG_LEVEL="WARNING", CRYPTODATA_PARTITION="")
        proc = subprocess.Popen([PY, "-m", "collector", str(seconds + 60)], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        samples: list[float] = []
        started = time.monotonic()
        try:
            while time.monotonic() - started < seconds and proc.poll() is None:
                time.sleep(0.5)
                samples.append(proc_status_mb(proc.pid, "VmRSS"))
            peak = proc_status_mb(proc.pid, "VmHWM")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                _, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
        if not samples or samples[-1] <= 0:
            raise RuntimeError(f"collector program did not run:\n{err[-3000:]}")
        client = MongoClient(self.mongodb_uri)
        try:
            stored = sum(client[db_name][c].count_documents({})
                         for c in ("trades", "market_data", "ohlcv", "order_book"))
            client.drop_database(db_name)
        finally:
            client.close()
        steady = med(samples[len(samples) // 2:])
        self.results["program"] = {
            "seconds": seconds, "rate": rate, "symbols": nsym, "samples": len(samples),
            "steady_rss_mb": steady, "peak_rss_mb": peak, "docs_stored": stored}
        print(f"  collector program: steady RSS {steady:.0f} MB, peak {peak:.0f} MB "
              f"({nsym} symbols, {rate} msgs/s, {seconds} s, {stored} documents stored)",
              flush=True)

    def growth(self) -> None:
        n_base = 4_000 if self.quick else 60_000
        out: dict[str, Any] = {"symbols": {}, "levels": {}}
        for nsym in (1, 10, 100):
            warm = max(1000, 10 * nsym)
            res = self.client("collector", "mix", warm + n_base, warmup=warm, symbols=nsym)
            out["symbols"][nsym] = pick(res, "msgs_per_s", "cpu_us_per_msg", "peak_rss_mb",
                                        "books", "synced_books")
        for levels in (20, 400, 1000):
            res = self.client("collector", "depth", 1000 + n_base, warmup=1000, levels=levels)
            out["levels"][levels] = pick(res, "msgs_per_s", "cpu_us_per_msg", "peak_rss_mb",
                                         "book_levels")
        base_s, base_l = out["symbols"][1], out["levels"][20]
        for row in out["symbols"].values():
            row["cpu_vs_1"] = row["cpu_us_per_msg"] / base_s["cpu_us_per_msg"]
            row["rss_vs_1"] = row["peak_rss_mb"] / base_s["peak_rss_mb"]
        for row in out["levels"].values():
            row["cpu_vs_20"] = row["cpu_us_per_msg"] / base_l["cpu_us_per_msg"]
            row["rss_vs_20"] = row["peak_rss_mb"] / base_l["peak_rss_mb"]
        self.results["growth"] = out
        for k, row in out["symbols"].items():
            print(f"  {k:>4} symbols (mix)  {row['cpu_us_per_msg']:6.1f} us/msg "
                  f"({row['cpu_vs_1']:.2f}x)  RSS {row['peak_rss_mb']:.0f} MB "
                  f"({row['rss_vs_1']:.2f}x)", flush=True)
        for k, row in out["levels"].items():
            print(f"  {k:>4} levels (depth) {row['cpu_us_per_msg']:6.1f} us/msg "
                  f"({row['cpu_vs_20']:.2f}x)  RSS {row['peak_rss_mb']:.0f} MB "
                  f"({row['rss_vs_20']:.2f}x)", flush=True)

    # ---- report ----------------------------------------------------------------------------
    def table(self) -> list[dict[str, Any]]:
        r = self.results
        rows = []
        for kind, t in r["throughput"].items():
            target = TARGET.get(kind)
            rows.append({
                "figure": f"{kind} msgs/s (storage off)", "ours": f"{t['ours_msgs_per_s']:.0f}",
                "floor": f"{t['floor_msgs_per_s']:.0f}", "ratio": f"{t['ratio']:.2f}",
                "cpu_ratio": f"{t['cpu_ratio']:.2f}",
                "extra": f"{t['ours_cpu_us_per_msg']:.1f} vs {t['floor_cpu_us_per_msg']:.1f} us CPU/msg",
                "peer": PEER.get(kind.replace("_wss", ""), "-"),
                "target": f">= {target}x" if target else "-",
                "ok": None if target is None else t["ratio"] >= target})
        for exchange, kinds in r.get("exchanges", {}).items():
            for kind, t in kinds.items():
                target = TARGET[kind]
                rows.append({
                    "figure": f"{exchange} {kind} msgs/s (storage off)",
                    "ours": f"{t['ours_msgs_per_s']:.0f}", "floor": f"{t['floor_msgs_per_s']:.0f}",
                    "ratio": f"{t['ratio']:.2f}", "cpu_ratio": f"{t['cpu_ratio']:.2f}",
                    "extra": f"{t['ours_cpu_us_per_msg']:.1f} vs {t['floor_cpu_us_per_msg']:.1f} "
                             f"us CPU/msg", "peer": "-", "target": f">= {target}x",
                    "ok": t["ratio"] >= target})
        s = r["storage"]
        rows.append({"figure": "stored docs/s (end to end)", "ours": f"{s['ours_docs_per_s']:.0f}",
                     "floor": f"{s['ceiling_docs_per_s']:.0f} (insert_many)",
                     "ratio": f"{s['ratio']:.2f}", "cpu_ratio": "-", "extra": "",
                     "peer": PEER["stored"], "target": ">= 0.9x", "ok": s["ratio"] >= 0.9})
        lat = r["latency"]
        # Not a floor ratio: the share of the 500 ms budget the p99 uses.
        rows.append({"figure": "p50 / p99 receive->stored @2000/s",
                     "ours": f"{lat['p50_ms']:.0f} / {lat['p99_ms']:.0f} ms", "floor": "-",
                     "ratio": f"{lat['p99_ms'] / TARGET['p99_ms']:.2f} of budget",
                     "cpu_ratio": "-", "extra": "p99 / 500 ms budget, not a floor ratio",
                     "peer": "-", "target": "p99 < 500 ms", "ok": lat["p99_ms"] < TARGET["p99_ms"]})
        prog = r["program"]
        floor_rss = max(t["floor_peak_rss_mb"] for t in r["throughput"].values())
        rows.append({"figure": "collector program RSS, steady / peak",
                     "ours": f"{prog['steady_rss_mb']:.0f} / {prog['peak_rss_mb']:.0f} MB",
                     "floor": f"{floor_rss:.0f} MB (floor client)",
                     "ratio": f"{prog['peak_rss_mb'] / floor_rss:.2f}", "cpu_ratio": "-",
                     "extra": "python -m collector, 20 symbols, 2000 msgs/s",
                     "peer": PEER["rss"], "target": "< 150 MB",
                     "ok": prog["steady_rss_mb"] < TARGET["rss_mb"]})
        rss = max([t["ours_peak_rss_mb"] for t in r["throughput"].values()] +
                  [t["ours_peak_rss_mb"] for k in r.get("exchanges", {}).values()
                   for t in k.values()] +
                  [row["peak_rss_mb"] for g in r["growth"].values() for row in g.values()] +
                  [s["peak_rss_mb"], lat["peak_rss_mb"]])
        rows.append({"figure": "peak RSS, benchmark client (any run)", "ours": f"{rss:.0f} MB",
                     "floor": f"{floor_rss:.0f} MB", "ratio": f"{rss / floor_rss:.2f}",
                     "cpu_ratio": "-", "extra": "collector code in the bench client process",
                     "peer": PEER["rss"], "target": "< 150 MB", "ok": rss < TARGET["rss_mb"]})
        self.results["table"] = rows
        return rows


def proc_status_mb(pid: int, field: str) -> float:
    """``VmRSS`` / ``VmHWM`` of a live process from /proc (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def med(values) -> float:
    return statistics.median(list(values))


def pick(d: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: d[k] for k in keys if k in d}


def summarize_pairs(pairs: list[tuple[dict, dict]]) -> dict[str, Any]:
    return {
        "ours_msgs_per_s": med(o["msgs_per_s"] for _, o in pairs),
        "floor_msgs_per_s": med(f["msgs_per_s"] for f, _ in pairs),
        # Median of the per-pair ratios (each pair ran back to back under the same load).
        "ratio": med(o["msgs_per_s"] / f["msgs_per_s"] for f, o in pairs),
        "ratios": [o["msgs_per_s"] / f["msgs_per_s"] for f, o in pairs],
        # CPU-time based ratio: insensitive to other processes stealing the core.
        "cpu_ratio": med(f["cpu_us_per_msg"] / o["cpu_us_per_msg"] for f, o in pairs),
        "ours_cpu_us_per_msg": med(o["cpu_us_per_msg"] for _, o in pairs),
        "floor_cpu_us_per_msg": med(f["cpu_us_per_msg"] for f, _ in pairs),
        "ours_peak_rss_mb": max(o["peak_rss_mb"] for _, o in pairs),
        "floor_peak_rss_mb": max(f["peak_rss_mb"] for f, _ in pairs),
        "msgs": pairs[0][1]["msgs"],
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    cols = ("figure", "ours", "floor", "ratio", "cpu_ratio", "peer", "target", "ok")
    heads = ("figure", "ours", "floor/ceiling", "ratio", "cpu ratio", "peer (cryptofeed)",
             "target", "met")
    cells = [[str(h) for h in heads]] + [
        [("yes" if row[c] else "NO") if c == "ok" and row[c] is not None else
         ("-" if row[c] is None else str(row[c])) for c in cols] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cols))]
    for n, r in enumerate(cells):
        print("| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |")
        if n == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def main() -> None:
    parser = argparse.ArgumentParser(description="cryptodata collector benchmark")
    parser.add_argument("--quick", action="store_true", help="CI smoke mode (small counts)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per figure")
    parser.add_argument("--json", default="", help="also write all results to this file")
    parser.add_argument("--only", default="",
                        help="comma list: throughput,exchanges,storage,latency,program,growth")
    parser.add_argument("--exchanges", default="",
                        help="comma list restricting the exchanges section: " +
                             ",".join(OTHER_EXCHANGES))
    args = parser.parse_args()
    chosen = tuple(e for e in OTHER_EXCHANGES
                   if not args.exchanges or e in args.exchanges.split(","))
    bench = Bench(args.quick, args.reps, chosen)
    started = time.monotonic()
    all_sections = ("throughput", "exchanges", "storage", "latency", "program", "growth")
    sections = [s for s in all_sections if not args.only or s in args.only.split(",")]
    try:
        bench.start()
        print(f"replay server ws:{bench.port} wss:{bench.tls_port}; MongoDB {bench.mongodb_uri}",
              flush=True)
        for section in sections:
            print(f"[{section}]", flush=True)
            t0 = time.monotonic()
            getattr(bench, section)()
            bench.results.setdefault("section_s", {})[section] = time.monotonic() - t0
    finally:
        bench.stop()
    if len(sections) == len(all_sections):
        print()
        print_table(bench.table())
    bench.results["elapsed_s"] = time.monotonic() - started
    print(f"\nelapsed {bench.results['elapsed_s']:.1f} s")
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(bench.results, option=orjson.OPT_INDENT_2 |
                                                 orjson.OPT_NON_STR_KEYS))


if __name__ == "__main__":
    main()
