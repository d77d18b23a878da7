"""aiohttp application factory."""
from __future__ import annotations

import asyncio
import logging
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
from api.security import auth_required, security_middleware
from api.stream import Hub
from common.db import get_database, make_client
from common.indexes import ensure_indexes
from common.settings import Settings

log = logging.getLogger("api")


@web.middleware
async def errors_middleware(request: web.Request, handler):
    """One error shape for every failure: {"error": {"status", "message", ...}}; no tracebacks."""
    request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex[:16]
    request[REQUEST_ID] = request_id
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
    except PyMongoError as exc:
        log.error("request %s %s: database error: %r", request_id, request.path, exc)
        response = json_response({"error": {"status": 503, "message": "database unavailable"}},
                                 status=503)
    except Exception:   # noqa: BLE001
        log.exception("request %s %s failed", request_id, request.path)
        response = json_response({"error": {"status": 500, "message": "internal error",
                                            "request_id": request_id}}, status=500)
    response.headers["X-Request-Id"] = request_id
    return response


def create_app(settings: Settings | None = None) -> web.Application:
    settings = settings or Settings()
    metrics = Metrics()
    app = web.Application(middlewares=[metrics.middleware(), errors_middleware,
                                       security_middleware(settings)])
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[SPEC] = build_spec(ROUTES, auth_required(settings))

    async def lifecycle(app: web.Application):
        client = make_client(settings)
        db = get_database(client, settings)
        indexes = asyncio.get_running_loop().create_task(ensure_indexes(db, settings.retention))
        app[QUERIES] = Queries(db)
        app[HUB] = Hub(db)
        yield
        indexes.cancel()
        await app[HUB].close()
        await client.close()

    app.cleanup_ctx.append(lifecycle)
    add_routes(app)
    return app
