"""aiohttp application factory."""
from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid

from aiohttp import web
from pymongo.errors import PyMongoError

from api.json import json_response
from api.keys import HUB, METRICS, QUERIES, REQUEST_ID, SETTINGS, SPEC
from api.metrics import Metrics
from api.openapi import build_spec
from api.params import ApiError
from api.queries import Queries
from api.routes import ROUTES, add_routes
from api.security import auth_config_error, auth_required, security_middleware
from api.stream import Hub
from common.db import get_database, make_client
from common.indexes import ensure_indexes
from common.settings import Settings

log = logging.getLogger("api")
access_log = logging.getLogger("api.access")

# A client's X-Request-Id is echoed and logged only if it cannot forge or break log lines.
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")


def request_id_for(request: web.Request) -> str:
    given = request.headers.get("X-Request-Id", "")
    return given if REQUEST_ID_PATTERN.fullmatch(given) else uuid.uuid4().hex[:16]


@web.middleware
async def access_middleware(request: web.Request, handler):
    """Request id, then one INFO line per request: method, path, status, ms, request id."""
    request_id = request_id_for(request)
    request[REQUEST_ID] = request_id
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        response.headers["X-Request-Id"] = request_id
        return response
    except web.HTTPException as exc:     # redirects (errors_middleware turns the rest into JSON)
        status = exc.status
        exc.headers["X-Request-Id"] = request_id
        raise
    except asyncio.CancelledError:
        status = 499                     # the client went away before the answer
        raise
    finally:
        # raw_path: still percent-encoded, so a crafted URL cannot put a newline in the log.
        access_log.info("%s %s %d %.1fms id=%s", request.method, request.rel_url.raw_path,
                        status, (time.perf_counter() - started) * 1000, request_id)


@web.middleware
async def errors_middleware(request: web.Request, handler):
    """One error shape for every failure: {"error": {"status", "message", ...}}; no tracebacks."""
    request_id = request[REQUEST_ID]
    try:
        response = await handler(request)
    except ApiError as exc:
        response = json_response({"error": {"status": exc.status, "message": exc.message,
                                             **exc.details}}, status=exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = json_response({"error": {"status": exc.status, "message": exc.reason}},
                                 status=exc.status)
        if "Allow" in exc.headers:       # 405 must say which methods the resource has (RFC 9110)
            response.headers["Allow"] = exc.headers["Allow"]
    except PyMongoError as exc:
        log.error("request %s %s: database error: %r", request_id, request.rel_url.raw_path, exc)
        response = json_response({"error": {"status": 503, "message": "database unavailable"}},
                                 status=503)
    except Exception:   # noqa: BLE001
        log.exception("request %s %s failed", request_id, request.rel_url.raw_path)
        response = json_response({"error": {"status": 500, "message": "internal error",
                                            "request_id": request_id}}, status=500)
    return response


class ConfigError(ValueError):
    """Settings the API refuses to serve with."""


def create_app(settings: Settings | None = None) -> web.Application:
    settings = settings or Settings()
    problem = auth_config_error(settings)
    if problem:
        raise ConfigError(problem)
    metrics = Metrics()
    app = web.Application(middlewares=[metrics.middleware(), access_middleware,
                                       errors_middleware, security_middleware(settings)])
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[SPEC] = build_spec(ROUTES, auth_required(settings))

    async def lifecycle(app: web.Application):
        client = make_client(settings)
        db = get_database(client, settings)
        indexes = asyncio.get_running_loop().create_task(ensure_indexes(db, settings.retention))
        app[QUERIES] = Queries(db)
        # Lookback: a record may be stored up to a few writer flushes after it was received.
        app[HUB] = Hub(db, lookback_s=max(2.0, 8 * settings.flush_interval_s))
        yield
        indexes.cancel()
        await app[HUB].close()
        await client.close()

    app.cleanup_ctx.append(lifecycle)
    add_routes(app)
    return app
