"""Typed keys for values stored on the application and the request."""
from __future__ import annotations

from aiohttp import web

from api.queries import Queries
from common.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
QUERIES = web.AppKey("queries", Queries)
REQUEST_ID = web.RequestKey("request_id", str)
