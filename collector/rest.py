"""REST access shared by every exchange: aiohttp with a per-exchange request budget that honours
the exchange's weights and its 418/429/Retry-After answers. Backfill, snapshots and polls all draw
from the same budget, so none of them can get the IP banned."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Mapping

import aiohttp
import orjson

log = logging.getLogger(__name__)


class RestError(Exception):
    """A non-2xx answer. ``payload`` is the decoded JSON error body when there is one."""

    def __init__(self, status: int, payload: Any, url: str) -> None:
        super().__init__(f"HTTP {status} from {url}: {payload!r}"[:500])
        self.status = status
        self.payload = payload
        self.url = url


class RateLimited(RestError):
    pass


class RateBudget:
    """Token bucket of request weight (``capacity`` per ``window_s``) plus a hard pause set by
    429/418 answers. Shared by all REST users of one exchange."""

    def __init__(self, capacity: float, window_s: float = 60.0) -> None:
        self.capacity = capacity
        self.refill_per_s = capacity / window_s
        self.tokens = capacity
        self._stamp = time.monotonic()
        self.paused_until = 0.0
        self._lock = asyncio.Lock()

    def pause(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, time.monotonic() + seconds)

    async def acquire(self, weight: float = 1.0) -> None:
        weight = min(weight, self.capacity)
        async with self._lock:
            while True:
                now = time.monotonic()
                if now < self.paused_until:
                    await asyncio.sleep(self.paused_until - now)
                    continue
                self.tokens = min(self.capacity, self.tokens + (now - self._stamp) * self.refill_per_s)
                self._stamp = now
                if self.tokens >= weight:
                    self.tokens -= weight
                    return
                await asyncio.sleep((weight - self.tokens) / self.refill_per_s)


class RestClient:
    """``rate_limited``: for venues that report rate limits in the body of a 2xx answer, the
    seconds to pause for such a body (None for any other); it then backs off like a 429."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, budget: RateBudget,
                 *, timeout_s: float = 10.0, headers: Mapping[str, str] | None = None,
                 rate_limited: Callable[[Any], float | None] | None = None) -> None:
        self.session = session
        # Sent with every request of this client (e.g. a venue's wire-format switch).
        self.headers = dict(headers) if headers else None
        self.rate_limited = rate_limited
        self.base_url = base_url.rstrip("/")
        self.budget = budget
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.requests = 0
        self.errors = 0

    async def get(self, path: str, params: dict[str, Any] | None = None, *,
                  weight: float = 1.0) -> Any:
        await self.budget.acquire(weight)
        url = f"{self.base_url}{path}"
        self.requests += 1
        try:
            async with self.session.get(url, params=params, timeout=self.timeout,
                                        headers=self.headers) as resp:
                body = await resp.read()
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            self.errors += 1
            raise RestError(0, repr(exc), url) from exc
        try:
            payload = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            payload = body[:200].decode("utf-8", "replace")
        if status in (418, 429):
            self.errors += 1
            # 418 = IP ban on Binance (minutes to days): pause at least two minutes.
            pause = float(retry_after) if retry_after and retry_after.isdigit() else \
                (120.0 if status == 418 else 30.0)
            self.budget.pause(pause)
            log.warning("%s answered %s; pausing REST for %.0fs", url, status, pause)
            raise RateLimited(status, payload, url)
        if status >= 400:
            self.errors += 1
            raise RestError(status, payload, url)
        if self.rate_limited is not None:
            body_pause = self.rate_limited(payload)
            if body_pause is not None:
                self.errors += 1
                self.budget.pause(body_pause)
                log.warning("%s answered %.100r; pausing REST for %.0fs", url, payload, body_pause)
                raise RateLimited(status, payload, url)
        return payload
