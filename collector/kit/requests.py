"""Subscribe requests awaiting their answer.

Venues fail a request whole when one of its arguments is bad, and their error replies may carry
only the request id (Gate.io's documented error) or only the argument they reject, without the
id (Bybit): the answer, by id or by an argument it names, finds the request, so the feed knows
which subscription failed and can retry the others. Some answers never come (Bybit spot ignores
a duplicate subscribe; a dropped connection answers nothing): a request older than ``ttl_s`` is
forgotten so that it cannot take the blame for a later error, and the table stays bounded."""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Any, Generic, Hashable, TypeVar

A = TypeVar("A")


@dataclass(frozen=True, slots=True)
class Request(Generic[A]):
    conn: str          # connection label
    args: list[A]
    sent_at: float     # monotonic


class PendingRequests(Generic[A]):
    def __init__(self, ttl_s: float = 10.0, max_pending: int = 100_000) -> None:
        self.ttl_s = ttl_s
        self.max_pending = max_pending
        self._ids = itertools.count(1)
        self._pending: dict[Hashable, Request[A]] = {}

    def new_id(self) -> int:
        """A fresh request id (for venues whose requests carry a numeric id)."""
        return next(self._ids)

    def add(self, req_id: Hashable, conn: str, args: list[A]) -> None:
        now = time.monotonic()
        for key, request in list(self._pending.items()):     # oldest first
            if now - request.sent_at < self.ttl_s and len(self._pending) < self.max_pending:
                break
            del self._pending[key]
        self._pending[req_id] = Request(conn, args, now)

    def take(self, req_id: Any, conn: str | None = None, arg: A | None = None
             ) -> Request[A] | None:
        """The request answered by ``req_id``, else the one of ``conn`` that carried ``arg``
        (forgotten from then on); None if unknown."""
        request = self._pending.pop(req_id, None) if isinstance(req_id, Hashable) else None
        if request is None and arg is not None:
            for key, pending in list(self._pending.items()):
                if pending.conn == conn and arg in pending.args:
                    return self._pending.pop(key)
        return request

    def drop(self, conn: str) -> None:
        """The connection dropped: its requests will never be answered."""
        self._pending = {k: r for k, r in self._pending.items() if r.conn != conn}

    def __contains__(self, req_id: Hashable) -> bool:
        request = self._pending.get(req_id)
        return request is not None and time.monotonic() - request.sent_at < self.ttl_s

    def __len__(self) -> int:
        return len(self._pending)
