"""Prometheus metrics: request counts and latency per canonical route, plus the collector's
counters read from its status document (exported as gauges)."""
from __future__ import annotations

import time
from datetime import datetime, timezone

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import generate_latest

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

    def render(self) -> web.Response:
        resp = web.Response(body=generate_latest(self.registry))
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp
