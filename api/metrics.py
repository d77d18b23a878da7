"""Prometheus metrics: request counts and latency per canonical route, plus the collector's
counters read from its status document (exported as gauges)."""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest,
)

from common import schema
from common.status import MergedStatus

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
EXCHANGE_FIELDS = ("messages", "reconnects", "gaps", "malformed", "resyncs")
WRITER_FIELDS = ("stored", "pending", "duplicates", "dropped", "write_errors", "last_write_ms")
# The writer's disk spool (MongoDB outages): how much is waiting to be replayed.
SPOOL_FIELDS = ("records", "bytes")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("cryptodata_api_requests", "HTTP requests by canonical route",
                                ["method", "route", "status"], registry=r)
        self.latency = Histogram("cryptodata_api_request_duration_seconds",
                                 "HTTP request latency by canonical route", ["method", "route"],
                                 buckets=BUCKETS, registry=r)
        self.ws_clients = Gauge("cryptodata_api_ws_clients", "connected /ws subscribers",
                                registry=r)
        self.exchange = {f: Gauge(f"cryptodata_collector_{f}", f"collector {f} per exchange",
                                  ["exchange"], registry=r) for f in EXCHANGE_FIELDS}
        self.records = Gauge("cryptodata_collector_records", "records produced",
                             ["exchange", "collection"], registry=r)
        self.writer = {f: Gauge(f"cryptodata_collector_writer_{f}", f"writer {f}", registry=r)
                       for f in WRITER_FIELDS}
        self.spool = {f: Gauge(f"cryptodata_collector_spool_{f}",
                               f"spooled {f} waiting for MongoDB (all collector processes)",
                               registry=r) for f in SPOOL_FIELDS}
        self.heartbeat = Gauge("cryptodata_collector_heartbeat_age_seconds",
                               "age of the oldest running collector process's status document",
                               registry=r)
        self.processes = Gauge("cryptodata_collector_processes",
                               "collector processes reporting a status document", ["running"],
                               registry=r)
        self.reported = Gauge("cryptodata_collector_reported",
                              "1 if a collector status document exists", registry=r)
        # What /health judges, as series an alert rule can watch (deploy/monitoring/).
        self.stream_age = Gauge("cryptodata_collector_stream_age_seconds",
                                "seconds since the newest record of a stream "
                                "(collection:market:symbol)", ["exchange", "stream"], registry=r)
        self.book_unsynced = Gauge("cryptodata_collector_book_unsynced_seconds",
                                   "seconds a book has been out of the live state (0 = live)",
                                   ["exchange", "book", "state"], registry=r)
        self.gaps_open = Gauge("cryptodata_gaps_open",
                               "gap-ledger entries not closed yet (exchange * = database)",
                               ["exchange"], registry=r)
        self.gaps_unfilled = Gauge("cryptodata_gaps_not_backfilled_24h",
                                   "gaps of the last 24 h closed without their data fetched "
                                   "again", ["exchange"], registry=r)

    def middleware(self):
        @web.middleware
        async def middleware(request: web.Request, handler):
            started = time.perf_counter()
            status = 500
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            finally:
                info = request.match_info
                resource = info.route.resource if info is not None and info.route else None
                route = resource.canonical if resource is not None else "unmatched"
                self.requests.labels(request.method, route, str(status)).inc()
                self.latency.labels(request.method, route).observe(
                    time.perf_counter() - started)
        return middleware

    def update_collector(self, status_doc: MergedStatus | None) -> None:
        """``status_doc``: the merged status (api.status.merge_status)."""
        if status_doc is None:
            self.reported.set(0)
            return
        self.reported.set(1)
        running = sum(1 for p in status_doc.get("processes", []) if p.get("running"))
        self.processes.labels("true").set(running)
        self.processes.labels("false").set(len(status_doc.get("processes", [])) - running)
        updated = status_doc.get("updated_at")
        if isinstance(updated, datetime):
            self.heartbeat.set((datetime.now(timezone.utc) - updated).total_seconds())
        writer = status_doc.get("writer") or {}
        for f, gauge in self.writer.items():
            value = writer.get(f)
            if isinstance(value, (int, float)):
                gauge.set(value)
        spool = writer.get("spool") or {}
        for f, gauge in self.spool.items():
            value = spool.get(f, 0)
            gauge.set(value if isinstance(value, (int, float)) else 0)
        for name, info in (status_doc.get("exchanges") or {}).items():
            for f, gauge in self.exchange.items():
                value = info.get(f)
                if isinstance(value, (int, float)):
                    gauge.labels(name).set(value)
            for coll, count in (info.get("records") or {}).items():
                if isinstance(count, (int, float)):
                    self.records.labels(name, coll).set(count)
        self._update_streams(status_doc)

    def _update_streams(self, status_doc: MergedStatus) -> None:
        """Per-stream ages and per-book unsynced time; rebuilt each time so a stream or book
        the collector no longer reports leaves no frozen series behind."""
        now = datetime.now(timezone.utc)
        self.stream_age.clear()
        self.book_unsynced.clear()
        for name, info in (status_doc.get("exchanges") or {}).items():
            for coll, per_key in (info.get("last_record_at") or {}).items():
                for key, at in (per_key or {}).items():
                    if isinstance(at, datetime):
                        self.stream_age.labels(name, f"{coll}:{key}").set(
                            (now - at).total_seconds())
            for book, state in (info.get("books") or {}).items():
                if not isinstance(state, dict):
                    continue
                since = state.get("since")
                live = state.get("state") == "live"
                unsynced = 0.0 if live or not isinstance(since, datetime) else \
                    (now - since).total_seconds()
                self.book_unsynced.labels(name, book, str(state.get("state"))).set(unsynced)

    def update_gaps(self, counts: dict[str, dict[str, int]]) -> None:
        """``counts``: exchange -> {open, not_backfilled_24h} (gap_metrics)."""
        self.gaps_open.clear()
        self.gaps_unfilled.clear()
        for name, row in counts.items():
            self.gaps_open.labels(name).set(row["open"])
            self.gaps_unfilled.labels(name).set(row["not_backfilled_24h"])

    def render(self) -> web.Response:
        resp = web.Response(body=generate_latest(self.registry))
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp


async def gap_metrics(db) -> dict[str, dict[str, int]]:
    """exchange -> {open, not_backfilled_24h} from the gap ledger (an alert wants both: a gap
    still open, and one that closed without its data being fetched again)."""
    since = datetime.now(timezone.utc) - timedelta(days=1)
    ended = {"$ne": [{"$ifNull": ["$end", None]}, None]}
    rows = await db[schema.GAPS].aggregate([
        {"$match": {"$or": [{"start": {"$gte": since}}, {"end": None}]}},
        {"$group": {"_id": "$exchange",
                    "open": {"$sum": {"$cond": [ended, 0, 1]}},
                    "unfilled": {"$sum": {"$cond": [{"$and": [
                        ended, {"$ne": ["$backfilled", True]}, {"$gte": ["$start", since]}]},
                        1, 0]}}}}])
    return {row["_id"]: {"open": row["open"], "not_backfilled_24h": row["unfilled"]}
            async for row in rows}
