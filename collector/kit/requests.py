"""Subscribe requests awaiting their answer, for venues that fail a request whole when one of
its arguments is bad and may answer without the request id: the answer (by id, or by an
argument it names) finds the request, so its other arguments can be retried. Some answers never
come (a duplicate on some venues): a request older than ``ttl_s`` is forgotten so that it cannot
take the blame for a later error."""
from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Request:
    conn: str          # connection label
    args: list[str]
    sent_at: float     # monotonic


class PendingRequests:
    def __init__(self, ttl_s: float = 10.0) -> None:
        self.ttl_s = ttl_s
        self._pending: dict[str, Request] = {}

    def add(self, req_id: str, conn: str, args: list[str]) -> None:
        now = time.monotonic()
        for key, request in list(self._pending.items()):     # oldest first
            if now - request.sent_at < self.ttl_s:
                break
            del self._pending[key]
        self._pending[req_id] = Request(conn, args, now)

    def take(self, req_id: str, conn: str, arg: str | None = None) -> Request | None:
        """The request answered by ``req_id``, else the one of ``conn`` that carried ``arg``."""
        request = self._pending.pop(req_id, None)
        if request is None and arg is not None:
            for key, pending in list(self._pending.items()):
                if pending.conn == conn and arg in pending.args:
                    return self._pending.pop(key)
        return request

    def drop(self, conn: str) -> None:
        """The connection dropped: its requests will never be answered."""
        self._pending = {k: r for k, r in self._pending.items() if r.conn != conn}

    def __contains__(self, req_id: str) -> bool:
        request = self._pending.get(req_id)
        return request is not None and time.monotonic() - request.sent_at < self.ttl_s

    def __len__(self) -> int:
        return len(self._pending)
