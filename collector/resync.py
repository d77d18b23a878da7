"""Per-book resync by resubscription (Bybit, OKX, Kraken: a fresh subscription brings a fresh
snapshot), shared so every exchange gets the same guarantees:

- one resubscribe in flight per book; further requests while it is pending are absorbed;
- a per-book cool-down between resubscribes (a book that keeps failing cannot flood the
  exchange with subscribe requests, which some exchanges count against a budget);
- a retry when the snapshot does not arrive within ``retry_after_s`` (a lost subscribe ack or
  snapshot would otherwise leave the book unsynced for good while the connection's other
  channels keep it looking alive).

The feed calls ``request(key)`` when a book loses integrity and ``done(key)`` when the fresh
snapshot was applied; ``resubscribe(key)`` is the feed's coroutine that sends the messages (in
order: unsubscribe, then subscribe, in one coroutine so they cannot be reordered).
"""
from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Awaitable, Callable, Generic, Hashable, TypeVar

from websockets.exceptions import ConnectionClosed

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)


class ResubscribeScheduler(Generic[K]):
    def __init__(self, resubscribe: Callable[[K], Awaitable[None]], *, cooldown_s: float = 1.0,
                 retry_after_s: float = 10.0, name: str = "") -> None:
        self._resubscribe = resubscribe
        self.cooldown_s = cooldown_s
        self.retry_after_s = retry_after_s
        self.name = name
        self.requests = 0           # resubscribes sent (retries included)
        self._last_sent: dict[K, float] = {}
        self._tasks: dict[K, asyncio.Task] = {}
        self._done: dict[K, asyncio.Event] = {}

    def pending(self, key: K) -> bool:
        return key in self._tasks

    def request(self, key: K) -> None:
        """Resync ``key`` (no-op while a resync of it is already in progress)."""
        if key in self._tasks:
            return
        self._done[key] = asyncio.Event()
        task = asyncio.get_running_loop().create_task(self._run(key))
        self._tasks[key] = task
        task.add_done_callback(functools.partial(self._forget_if, key))

    def done(self, key: K) -> None:
        """The fresh snapshot for ``key`` arrived: the resync is complete."""
        event = self._done.get(key)
        if event is not None:
            event.set()

    def cancel(self, predicate: Callable[[K], bool] = lambda key: True) -> None:
        """Drop pending resyncs (e.g. the connection went away: reconnecting resubscribes all)."""
        for key in [k for k in self._tasks if predicate(k)]:
            self._tasks[key].cancel()
            self._forget(key)

    def _forget_if(self, key: K, task: asyncio.Task) -> None:
        if self._tasks.get(key) is task:
            self._forget(key)

    def _forget(self, key: K) -> None:
        self._tasks.pop(key, None)
        self._done.pop(key, None)

    async def _run(self, key: K) -> None:
        done = self._done[key]
        while not done.is_set():
            wait = self._last_sent.get(key, -1e9) + self.cooldown_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._last_sent[key] = time.monotonic()
            self.requests += 1
            try:
                await self._resubscribe(key)
            except (ConnectionError, ConnectionClosed, OSError) as exc:
                # Not connected: the reconnect resubscribes everything anyway.
                log.info("%s: resubscribe of %s not sent (%r)", self.name, key, exc)
                return
            try:
                await asyncio.wait_for(done.wait(), self.retry_after_s)
            except asyncio.TimeoutError:
                log.warning("%s: no snapshot for %s %.0fs after resubscribing; retrying",
                            self.name, key, self.retry_after_s)
