"""API keys (``X-API-Key``) and a token-bucket rate limit per key, or per client IP without auth."""
from __future__ import annotations

import hmac
import ipaddress
import math
import time
from collections import OrderedDict

from aiohttp import web

from api.json import json_response
from common.settings import Settings

# The dashboard page and its static files carry no data: the page asks for a key itself.
AUTH_EXEMPT = {"/health", "/docs", "/openapi.json", "/", "/dashboard"}
AUTH_EXEMPT_PREFIX = "/static/"
RATE_EXEMPT = {"/health"}


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def auth_required(settings: Settings) -> bool:
    """``settings.api_host`` must be the address actually bound (``python -m api --host`` writes
    it there before the app is built)."""
    mode = settings.api_auth.lower()
    if mode in ("on", "true", "1", "yes"):
        return True
    if mode in ("off", "false", "0", "no"):
        return False
    return not is_loopback(settings.api_host)


def auth_config_error(settings: Settings) -> str | None:
    """Why these settings must not serve (keys required but none configured), or None.
    Starting anyway would answer 401 to every request, which looks like an outage."""
    if auth_required(settings) and not any(settings.api_keys):
        return (f"API keys are required (bind address {settings.api_host!r}, "
                f"CRYPTODATA_API_AUTH={settings.api_auth}) but CRYPTODATA_API_KEYS is empty; "
                "set CRYPTODATA_API_KEYS='[\"...\"]', bind to 127.0.0.1, "
                "or set CRYPTODATA_API_AUTH=off")
    return None


class TokenBuckets:
    """``rate`` tokens per second up to ``burst``; at most ``max_keys`` buckets (LRU)."""

    def __init__(self, rate: float, burst: int, max_keys: int = 10_000) -> None:
        self.rate, self.burst, self.max_keys = rate, max(1, burst), max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str, now: float | None = None) -> float:
        """0.0 if allowed, else seconds until a token is available."""
        now = time.monotonic() if now is None else now
        tokens, at = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    resp = json_response({"error": {"status": status, "message": message}}, status=status)
    if headers:
        resp.headers.update(headers)
    return resp


def security_middleware(settings: Settings):
    required = auth_required(settings)
    keys = [k.encode() for k in settings.api_keys if k]
    buckets = TokenBuckets(settings.api_rate_per_s, settings.api_rate_burst) \
        if settings.api_rate_per_s > 0 else None

    @web.middleware
    async def middleware(request: web.Request, handler):
        path = request.path
        given = request.headers.get("X-API-Key", "")
        if not given and path == "/ws":
            # Browsers cannot send headers on a WebSocket; the access log has no query string
            # and Sentry scrubs api_key=.
            given = request.query.get("api_key", "")
        identity = None
        if required and path not in AUTH_EXEMPT and not path.startswith(AUTH_EXEMPT_PREFIX):
            if not given:
                return _error(401, "missing API key (send it in the X-API-Key header)",
                              {"WWW-Authenticate": "ApiKey"})
            raw = given.encode()
            if not any(hmac.compare_digest(raw, k) for k in keys):
                return _error(401, "invalid API key", {"WWW-Authenticate": "ApiKey"})
            identity = "key:" + given
        if buckets is not None and path not in RATE_EXEMPT:
            identity = identity or "ip:" + (request.remote or "?")
            wait = buckets.take(identity)
            if wait > 0:
                return _error(429, "rate limit exceeded",
                              {"Retry-After": str(max(1, math.ceil(wait)))})
        return await handler(request)
    return middleware
