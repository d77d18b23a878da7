"""Thin handlers: validate -> query -> encode."""
from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aiohttp import web
from pymongo.errors import PyMongoError

from api import analysis
from api.json import json_response
from api.keys import HUB, METRICS, QUERIES, SETTINGS, SPEC
from api.metrics import gap_metrics
from api.openapi import render_docs
from api.params import (
    DEFAULT_LIMIT, EXCHANGES, MARKETS, TYPES, BadRequest, NotFound, check_symbol, choice, filters,
    int_param, only,
)
from api.queries import Queries
from api.status import book_state, exchange_status
from common import schema
from common.settings import Settings


def _queries(request: web.Request) -> Queries:
    return request.app[QUERIES]


def _settings(request: web.Request) -> Settings:
    return request.app[SETTINGS]


def _no_params(request: web.Request) -> None:
    if request.query:
        raise BadRequest(f"unknown parameter(s): {', '.join(sorted(request.query))}")


def history_handler(collection: str, *, interval: bool = False,
                    default_limit: int = DEFAULT_LIMIT):
    async def handler(request: web.Request) -> web.Response:
        f = filters(request, interval=interval, default_limit=default_limit)
        rows, next_cursor = await _queries(request).history(collection, f)
        return json_response({"data": rows, "count": len(rows), "next": next_cursor})
    handler.__name__ = f"history_{collection}"
    return handler


async def gaps(request: web.Request) -> web.Response:
    """The gap ledger (collector.gaps), newest first by ``start``, cursor-paged like the history
    endpoints; exchange / symbol / market filters also return the ``*`` gaps (whole connection,
    collector or database) that covered them."""
    f = filters(request)
    rows, next_cursor = await _queries(request).history(schema.GAPS, f, wildcard=True)
    return json_response({"data": rows, "count": len(rows), "next": next_cursor})


def _exchange_param(request: web.Request) -> str:
    exchange = request.match_info["exchange"]
    if exchange not in EXCHANGES:
        raise BadRequest(f"exchange: must be one of {', '.join(EXCHANGES)}",
                         allowed=list(EXCHANGES))
    return exchange


# Records computed from a live order book: not trustworthy while that book resyncs.
BOOK_TYPES = (schema.ORDER_BOOK, schema.VOLUME_LIQUIDITY)


async def _realtime(request: web.Request, exchange: str | None = None,
                    symbols: list[str] | None = None) -> dict[str, Any]:
    """exchange -> symbol -> market -> type -> newest record, each marked ``stale`` when old;
    book-derived records also carry ``resyncing`` (the collector's book state is not live)."""
    queries = _queries(request)
    docs = await queries.latest(exchange, symbols)
    status = await queries.status_cached()
    stale_after_s = _settings(request).stale_after_s
    now = datetime.now(timezone.utc)
    grouped: dict[str, Any] = {}
    for doc in docs:
        kind = doc.pop("type", "unknown")
        market = doc.get("market", "spot")
        received = doc.get("received_at")
        doc["stale"] = bool(received is None or (now - received).total_seconds() > stale_after_s)
        if kind in BOOK_TYPES:
            book = book_state(status, doc["exchange"], market, doc["symbol"])
            doc["resyncing"] = bool(book and book.get("state") != "live")
        grouped.setdefault(doc["exchange"], {}).setdefault(doc["symbol"], {}) \
            .setdefault(market, {})[kind] = doc
    return grouped


async def realtime(request: web.Request) -> web.Response:
    _no_params(request)
    return json_response({"data": await _realtime(request)})


def by_type(grouped: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """symbol -> market -> type -> record, as type -> [records] (by symbol, then market), every
    type present: the shape of the original runbook (``.data.market_data | length`` = streams)."""
    out: dict[str, list[dict[str, Any]]] = {kind: [] for kind in TYPES}
    for symbol in sorted(grouped):
        for market in sorted(grouped[symbol]):
            for kind, doc in grouped[symbol][market].items():
                out.setdefault(kind, []).append(doc)
    return out


async def realtime_exchange(request: web.Request) -> web.Response:
    """``data``: type -> newest record per symbol and market; ``by_symbol``: the grouped view."""
    _no_params(request)
    exchange = _exchange_param(request)
    grouped = (await _realtime(request, exchange)).get(exchange, {})
    return json_response({"exchange": exchange, "data": by_type(grouped), "by_symbol": grouped})


async def realtime_symbol(request: web.Request) -> web.Response:
    _no_params(request)
    exchange = _exchange_param(request)
    symbol = check_symbol("symbol", request.match_info["symbol"])
    symbols = await _queries(request).resolve_symbols(exchange, symbol)
    grouped = (await _realtime(request, exchange, symbols)).get(exchange, {})
    return json_response({"exchange": exchange, "data": grouped})


async def exchanges(request: web.Request) -> web.Response:
    _no_params(request)
    settings = _settings(request)
    known = await _queries(request).known_symbols()
    rows = [{"exchange": name, "enabled": name in settings.enabled_exchanges(),
             "symbols": known.get(name, [])} for name in EXCHANGES]
    return json_response({"data": rows})


async def symbols(request: web.Request) -> web.Response:
    only(request.query, {"exchange"})
    exchange = choice(request.query, "exchange", EXCHANGES)
    known = await _queries(request).known_symbols()
    data = {exchange: known.get(exchange, [])} if exchange else known
    return json_response({"data": data})


async def health(request: web.Request) -> web.Response:
    """healthy: database reachable, collector heartbeat recent, every enabled exchange fresh;
    degraded: reachable but the collector or some exchange is stale; unhealthy: no database."""
    _no_params(request)
    settings = _settings(request)
    queries = _queries(request)
    started = time.perf_counter()
    try:
        await queries.db.command("ping")
        ping_ms = round((time.perf_counter() - started) * 1000, 2)
        status_doc = await queries.status()
        gap_counts = await queries.gap_counts.get()
    except PyMongoError as exc:
        return json_response({"status": "unhealthy",
                              "mongodb": {"reachable": False, "error": type(exc).__name__}},
                             status=503)
    now = datetime.now(timezone.utc)
    body: dict[str, Any] = {"mongodb": {"reachable": True, "ping_ms": ping_ms}}
    problems: list[str] = []
    if status_doc is None:
        body["collector"] = {"heartbeat_age_s": None, "processes": []}
        problems.append("collector has never reported")
        exchanges_doc: dict[str, Any] = {}
    else:
        late_after = max(30.0, settings.status_interval_s * 4)
        processes = []
        for proc in status_doc["processes"]:
            proc_age = (now - proc["updated_at"]).total_seconds()
            processes.append({"id": proc["id"], "heartbeat_age_s": round(proc_age, 1),
                              "running": proc["running"], "host": proc["host"],
                              "pid": proc["pid"], "writer": proc["writer"]})
            if proc["running"] and proc_age > late_after:
                problems.append(f"collector {proc['id']} heartbeat is {proc_age:.0f}s old")
        age = (now - status_doc["updated_at"]).total_seconds()
        body["collector"] = {"heartbeat_age_s": round(age, 1),
                             "running": status_doc["running"],
                             "writer": status_doc["writer"], "processes": processes}
        if not status_doc["running"] and age > late_after:
            problems.append(f"collector heartbeat is {age:.0f}s old")
        exchanges_doc = status_doc["exchanges"]
    body["exchanges"] = {}
    for name in settings.enabled_exchanges():
        info = exchanges_doc.get(name, {})
        streams = {}
        for coll, per_symbol in info.get("last_record_at", {}).items():
            for key, at in per_symbol.items():
                streams[f"{coll}:{key}"] = round((now - at).total_seconds(), 1)
        fresh = bool(streams) and min(streams.values()) <= settings.stale_after_s
        stale_streams = sorted(k for k, v in streams.items() if v > settings.stale_after_s)
        body["exchanges"][name] = {
            "fresh": fresh, "stream_age_s": streams, "stale_streams": stale_streams,
            "unavailable_symbols": info.get("unavailable_symbols", {}),
            "errors": info.get("errors", {}), "reconnects": info.get("reconnects", 0),
            "gaps": info.get("gaps", 0), "malformed": info.get("malformed", 0),
            "books": info.get("books", {}),
            "gap_ledger": gap_counts.get(name, {"open": 0, "last_24h": 0}),
        }
        if not fresh:
            problems.append(f"{name}: no fresh data")
    body["gap_ledger"] = gap_counts.get("*", {"open": 0, "last_24h": 0})   # database outages
    body["status"] = "degraded" if problems else "healthy"
    body["problems"] = problems
    return json_response(body)


async def orderbook(request: web.Request) -> web.Response:
    """Latest top-N book per market from ``latest`` (type order_book), with its update_id and
    ``sync``: the collector's own book state (``live`` / ``syncing`` / ``resyncing``, since when,
    its update id) when its status reports it, else ``live`` / ``stale`` from the snapshot's age;
    ``stale`` is also a separate flag (snapshot older than stale_after_s)."""
    only(request.query, {"market", "depth"})
    market = choice(request.query, "market", MARKETS)
    depth = int_param(request.query, "depth", 20, 1, 1000)
    exchange = _exchange_param(request)
    queries = _queries(request)
    symbols = await queries.resolve_symbols(exchange,
                                            check_symbol("symbol", request.match_info["symbol"]))
    docs = await queries.latest_of_type(schema.ORDER_BOOK, exchange, symbols)
    status_doc = await queries.status()
    ex_status = exchange_status(status_doc, exchange)
    stale_after = _settings(request).stale_after_s
    now = datetime.now(timezone.utc)
    books = []
    for doc in sorted(docs, key=lambda d: (d.get("market", ""), d["symbol"])):
        if market and doc.get("market") != market:
            continue
        received = doc.get("received_at")
        age = (now - received).total_seconds() if received else None
        stale = age is None or age > stale_after
        book = book_state(status_doc, exchange, doc.get("market", "spot"), doc["symbol"])
        books.append({
            "exchange": exchange, "symbol": doc["symbol"], "pair": doc.get("pair"),
            "market": doc.get("market"), "ts": doc.get("ts"), "received_at": received,
            "update_id": doc.get("update_id"), "depth": min(depth, max(
                len(doc.get("bids") or []), len(doc.get("asks") or []))),
            "bids": (doc.get("bids") or [])[:depth], "asks": (doc.get("asks") or [])[:depth],
            "sync": {"state": book.get("state") if book else ("stale" if stale else "live"),
                     "source": "collector" if book else "age",
                     "since": book.get("since") if book else None,
                     "update_id": book.get("update_id") if book else None,
                     "stale": stale, "age_s": round(age, 3) if age is not None else None,
                     "resyncs": ex_status.get("resyncs", 0), "gaps": ex_status.get("gaps", 0)},
        })
    if not books:
        raise NotFound("no order book stored for this symbol"
                       + (f" on {market}" if market else ""), symbols=symbols)
    return json_response({"exchange": exchange, "data": books})


async def data_check(request: web.Request) -> web.Response:
    _no_params(request)
    queries = _queries(request)
    return json_response(await analysis.data_check(queries.db, totals=await queries.totals.get()))


async def bitcoin(request: web.Request) -> web.Response:
    _no_params(request)
    return json_response(await analysis.bitcoin(_queries(request).db,
                                                _settings(request).stale_after_s))


async def metrics(request: web.Request) -> web.Response:
    _no_params(request)
    m = request.app[METRICS]
    try:
        m.update_collector(await _queries(request).status())
        m.update_gaps(await gap_metrics(_queries(request).db))   # one scrape per ~15 s
    except PyMongoError:
        m.reported.set(0)
    m.ws_clients.set(len(request.app[HUB].clients))
    return m.render()


async def openapi(request: web.Request) -> web.Response:
    _no_params(request)
    return json_response(request.app[SPEC])


async def docs(request: web.Request) -> web.Response:
    _no_params(request)
    return web.Response(text=render_docs(request.app[SPEC]), content_type="text/html")


STATIC_DIR = Path(__file__).resolve().parent / "static"


async def dashboard(request: web.Request) -> web.StreamResponse:
    _no_params(request)
    return web.FileResponse(STATIC_DIR / "dashboard.html",
                            headers={"Content-Type": "text/html; charset=utf-8"})


async def ws(request: web.Request) -> web.StreamResponse:
    only(request.query, {"api_key"})     # read by the security middleware
    if request.headers.get("Upgrade", "").lower() != "websocket":
        raise BadRequest("this endpoint speaks WebSocket (send Upgrade: websocket)")
    return await request.app[HUB].handle(request)
