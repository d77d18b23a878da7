"""JSON encoding with orjson (datetimes as ISO 8601 UTC)."""
from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body, option=orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS),
                        status=status, content_type="application/json")
