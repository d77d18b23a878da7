"""Every route, declared once: method, path, handler, summary and its parameters (OpenAPI
parameter objects). ``/openapi.json`` is generated from this table."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from aiohttp import web

from api import handlers
from api.params import (
    BOOK_DEFAULT_LIMIT, BOOK_HISTORY_PARAMS, HISTORY_PARAMS, P_EXCHANGE, P_INTERVAL, P_MARKET,
    PATH_EXCHANGE, PATH_SYMBOL, query_param,
)
from common import schema


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Callable
    summary: str
    params: list[dict[str, Any]] = field(default_factory=list)
    tag: str = "data"
    content_type: str = "application/json"


P_DEPTH = query_param("depth", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 20},
             "levels per side")

ROUTES = [
    Route("GET", "/", handlers.dashboard, "Live dashboard (HTML; the same as /dashboard)",
          tag="ui", content_type="text/html"),
    Route("GET", "/dashboard", handlers.dashboard,
          "Live dashboard: prices, spreads, book state, freshness, gaps, charts", tag="ui",
          content_type="text/html"),
    Route("GET", "/health", handlers.health, "Database, collector heartbeat and stream freshness",
          tag="ops"),
    Route("GET", "/metrics", handlers.metrics, "Prometheus metrics (API + collector counters)",
          tag="ops", content_type="text/plain"),
    Route("GET", "/openapi.json", handlers.openapi, "This OpenAPI 3 document", tag="docs"),
    Route("GET", "/docs", handlers.docs, "Human-readable API documentation", tag="docs",
          content_type="text/html"),
    Route("GET", "/exchanges", handlers.exchanges, "Exchanges, enabled flag, symbols seen"),
    Route("GET", "/symbols", handlers.symbols, "Native symbols seen per exchange", [P_EXCHANGE]),
    Route("GET", "/realtime", handlers.realtime, "Newest record of every type, every symbol"),
    Route("GET", "/realtime/{exchange}", handlers.realtime_exchange,
          "Newest records of one exchange", [PATH_EXCHANGE]),
    Route("GET", "/realtime/{exchange}/{symbol:.+}", handlers.realtime_symbol,
          "Newest records of one symbol (any spelling)", [PATH_EXCHANGE, PATH_SYMBOL]),
    Route("GET", "/orderbook/{exchange}/{symbol:.+}", handlers.orderbook,
          "Latest top-N order book with update_id and sync state",
          [PATH_EXCHANGE, PATH_SYMBOL, P_MARKET, P_DEPTH]),
    Route("GET", "/market-data", handlers.history_handler(schema.MARKET_DATA),
          "Ticker history (newest first, cursor paging)", HISTORY_PARAMS),
    Route("GET", "/trades", handlers.history_handler(schema.TRADES),
          "Trade history", HISTORY_PARAMS),
    Route("GET", "/ohlcv", handlers.history_handler(schema.OHLCV, interval=True),
          "Candles", HISTORY_PARAMS + [P_INTERVAL]),
    Route("GET", "/funding-rates", handlers.history_handler(schema.FUNDING_RATES),
          "Funding-rate history", HISTORY_PARAMS),
    Route("GET", "/open-interest", handlers.history_handler(schema.OPEN_INTEREST),
          "Open-interest history", HISTORY_PARAMS),
    Route("GET", "/volume-liquidity", handlers.history_handler(schema.VOLUME_LIQUIDITY),
          "Volume and depth history", HISTORY_PARAMS),
    Route("GET", "/orderbook-snapshots",
          handlers.history_handler(schema.ORDER_BOOK, default_limit=BOOK_DEFAULT_LIMIT),
          "Order-book snapshot history (default page 20: a snapshot is ~8 trades' size)",
          BOOK_HISTORY_PARAMS),
    Route("GET", "/analysis/data-check", handlers.data_check,
          "Per-collection counts, newest record age, growth per hour", tag="analysis"),
    Route("GET", "/analysis/bitcoin", handlers.bitcoin,
          "BTC price per exchange, spreads, volume share, funding, basis", tag="analysis"),
    Route("GET", "/ws", handlers.ws, "Live stream (WebSocket; see the protocol in /docs)",
          tag="stream"),
    Route("GET", "/gaps", handlers.gaps,
          "Gap ledger: stream interruptions and whether they were backfilled", HISTORY_PARAMS),
]


def add_routes(app: web.Application) -> None:
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.handler)
    # The dashboard's script, style and vendored chart library (no CDN: works offline).
    app.router.add_static("/static/", handlers.STATIC_DIR)
