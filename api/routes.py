"""Every route, declared once."""
from __future__ import annotations

from aiohttp import web

from api import handlers
from common import schema

ROUTES = [
    ("GET", "/health", handlers.health),
    ("GET", "/exchanges", handlers.exchanges),
    ("GET", "/symbols", handlers.symbols),
    ("GET", "/realtime", handlers.realtime),
    ("GET", "/realtime/{exchange}", handlers.realtime_exchange),
    ("GET", "/realtime/{exchange}/{symbol:.+}", handlers.realtime_symbol),
    ("GET", "/market-data", handlers.history_handler(schema.MARKET_DATA)),
    ("GET", "/trades", handlers.history_handler(schema.TRADES)),
    ("GET", "/ohlcv", handlers.history_handler(schema.OHLCV, interval=True)),
    ("GET", "/funding-rates", handlers.history_handler(schema.FUNDING_RATES)),
    ("GET", "/open-interest", handlers.history_handler(schema.OPEN_INTEREST)),
    ("GET", "/volume-liquidity", handlers.history_handler(schema.VOLUME_LIQUIDITY)),
    ("GET", "/orderbook-snapshots", handlers.history_handler(schema.ORDER_BOOK)),
    ("GET", "/gaps", handlers.gaps),
]


def add_routes(app: web.Application) -> None:
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
