"""Subscribe requests awaiting their answer, by request id: venues whose error replies do not
echo what was asked (only the id) still name the one subscription that failed."""
from __future__ import annotations

import itertools
from typing import Any

from collector.kit.spec import Subscription


class PendingRequests:
    def __init__(self, max_pending: int = 100_000) -> None:
        self._ids = itertools.count(1)
        self._pending: dict[int, Subscription] = {}
        # Requests a dropped connection never answered are forgotten oldest first.
        self.max_pending = max_pending

    def add(self, sub: Subscription) -> int:
        """A new request id for ``sub``."""
        if len(self._pending) >= self.max_pending:
            del self._pending[next(iter(self._pending))]
        request_id = next(self._ids)
        self._pending[request_id] = sub
        return request_id

    def answered(self, request_id: Any) -> Subscription | None:
        """The subscription a reply's ``id`` answers (forgotten from then on); None if unknown."""
        return self._pending.pop(request_id, None) if isinstance(request_id, int) else None

    def __len__(self) -> int:
        return len(self._pending)
