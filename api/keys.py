"""Typed keys for values stored on the application and the request."""
from __future__ import annotations

from aiohttp import web

from api.metrics import Metrics
from api.queries import Queries
from api.stream import Hub
from common.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
QUERIES = web.AppKey("queries", Queries)
HUB = web.AppKey("hub", Hub)
METRICS = web.AppKey("metrics", Metrics)
SPEC = web.AppKey("spec", dict)
REQUEST_ID = web.RequestKey("request_id", str)
