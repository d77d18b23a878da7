"""OKX's subscribe budget: 480 subscribe/unsubscribe/login requests per connection per hour."""
from __future__ import annotations

import time
from collections import deque
from typing import Hashable

from collector.exchanges.okx import endpoints


class SubscribeBudget:
    """Subscribe/unsubscribe requests sent per connection in the last hour (OKX: 480)."""

    def __init__(self, per_hour: int = endpoints.SUBSCRIBE_REQUESTS_PER_HOUR) -> None:
        self.per_hour = per_hour
        self._sent: dict[Hashable, deque[float]] = {}

    def fresh(self, conn: Hashable) -> None:
        """A new connection starts with a full bucket."""
        self._sent[conn] = deque()

    def spend(self, conn: Hashable, n: int = 1) -> None:
        self._sent.setdefault(conn, deque()).extend([time.monotonic()] * n)

    def left(self, conn: Hashable) -> int:
        stamps = self._sent.setdefault(conn, deque())
        now = time.monotonic()
        while stamps and now - stamps[0] > 3600:
            stamps.popleft()
        return self.per_hour - len(stamps)
