"""One WebSocket session per endpoint, with everything every exchange needs and nothing
exchange-specific: heartbeat policy, a data-idle watchdog separate from the heartbeat, capped
jittered exponential backoff, resubscription (``on_open`` runs after every connect) and a
per-exchange connection-rate throttle."""
from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

# aiohttp-backed by default (3x cheaper per frame); CRYPTODATA_WS_CLIENT=websockets reverts.
from collector.wsclient import AiohttpClientConnection, connect

# Either client library's connection (the same send / close / iterate surface).
AnyConnection = ClientConnection | AiohttpClientConnection

log = logging.getLogger(__name__)

# The message handler is synchronous on purpose (no await per message on the hot path). It returns
# False for control traffic (acks, pongs, heartbeats) so that only data feeds the idle watchdog.
MessageHandler = Callable[["WsConnection", "str | bytes"], "bool | None"]
OpenHandler = Callable[["WsConnection"], Awaitable[None]]
CloseHandler = Callable[["WsConnection", str], None]


@dataclass(frozen=True)
class HeartbeatPolicy:
    """How a connection proves it is alive.

    - ``app_ping``: payload factory for an application-level ping (Bybit JSON, OKX text ``ping``,
      Gate ``spot.ping``), sent every ``app_ping_interval_s``; with ``ping_only_when_quiet`` it is
      sent only when nothing arrived for that long (OKX).
    - ``protocol_ping_interval_s``: RFC 6455 ping frames from the client (None = off; servers that
      ping us are answered automatically by the websockets library).
    - ``pong_timeout_s``: a protocol ping unanswered for this long closes the connection.
    - ``app_pong_timeout_s``: with ``ping_only_when_quiet``, nothing received (a pong or data)
      this long after an application ping closes the connection (None = off: the data-idle
      watchdog alone notices a dead socket).
    """

    app_ping: Callable[[], str] | None = None
    app_ping_interval_s: float = 20.0
    ping_only_when_quiet: bool = False
    protocol_ping_interval_s: float | None = None
    pong_timeout_s: float = 20.0
    app_pong_timeout_s: float | None = None


class Backoff:
    """Capped exponential backoff with full jitter; reset once a connection proved healthy
    (data messages after ``healthy_after_s``)."""

    def __init__(self, initial_s: float = 1.0, max_s: float = 60.0, factor: float = 2.0) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.factor = factor
        self.attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.max_s, self.initial_s * (self.factor ** self.attempt))
        self.attempt += 1
        # Half fixed, half random: never zero (no tight loops), never synchronized across symbols.
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def reset(self) -> None:
        self.attempt = 0


class ConnectThrottle:
    """At most one connection attempt per ``min_interval_s`` for one exchange (OKX: 3/s;
    Kraken bans IPs after ~150 reconnects per 10 minutes)."""

    def __init__(self, min_interval_s: float) -> None:
        self.min_interval_s = min_interval_s
        self._next_slot = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        async with self._lock:
            now = time.monotonic()
            delay = self._next_slot - now
            if delay > 0:
                await asyncio.sleep(delay)
                now = time.monotonic()
            self._next_slot = now + self.min_interval_s


class WsConnection:
    """Keeps one WebSocket endpoint connected until ``stop()``.

    After each successful connect ``on_open`` runs (the feed subscribes there); each received
    message goes to ``on_message``; each disconnect calls ``on_close`` with a reason.
    """

    def __init__(
        self,
        name: str,
        url: str | Callable[[], str],
        *,
        on_message: MessageHandler,
        on_open: OpenHandler | None = None,
        on_close: CloseHandler | None = None,
        heartbeat: HeartbeatPolicy = HeartbeatPolicy(),
        idle_timeout_s: float = 30.0,
        backoff: Backoff | None = None,
        throttle: ConnectThrottle | None = None,
        healthy_after_s: float = 30.0,
        open_timeout_s: float = 10.0,
        meta: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        # What the owner knows about this connection (the feeds' ``ConnMeta``); opaque here.
        self.meta = meta
        # Extra handshake headers (e.g. a venue's wire-format switch); None = none.
        self.headers = dict(headers) if headers else None
        self._url = url
        self.on_message = on_message
        self.on_open = on_open
        self.on_close = on_close
        self.heartbeat = heartbeat
        self.idle_timeout_s = idle_timeout_s
        self.backoff = backoff or Backoff()
        self.throttle = throttle
        self.healthy_after_s = healthy_after_s
        self.open_timeout_s = open_timeout_s

        self.ws: AnyConnection | None = None
        self.connected = asyncio.Event()
        self.connects = 0
        self.disconnects = 0
        self.last_message_at = 0.0
        self.last_data_at = 0.0
        self.last_error: str | None = None
        self._stopping = False
        self._reconnect_reason: str | None = None

    @property
    def url(self) -> str:
        return self._url() if callable(self._url) else self._url

    async def send(self, message: str) -> None:
        ws = self.ws
        if ws is None:
            raise ConnectionError(f"{self.name}: not connected")
        await ws.send(message)

    def reconnect(self, reason: str) -> None:
        """Drop the current connection (it will be re-established with backoff)."""
        self._reconnect_reason = reason
        ws = self.ws
        if ws is not None:
            asyncio.get_running_loop().create_task(ws.close(code=1000, reason=reason[:100]))

    async def stop(self) -> None:
        self._stopping = True
        ws = self.ws
        if ws is not None:
            await ws.close()

    async def run(self) -> None:
        while not self._stopping:
            if self.throttle is not None:
                await self.throttle.wait()
            reason = await self._session()
            if self._stopping:
                break
            self.disconnects += 1
            if self.on_close is not None:
                self.on_close(self, reason)
            delay = self.backoff.next_delay()
            log.warning("%s disconnected (%s); reconnecting in %.1fs", self.name, reason, delay)
            await asyncio.sleep(delay)

    async def _session(self) -> str:
        """One connection's lifetime; returns why it ended."""
        self._reconnect_reason = None
        try:
            ws = await connect(
                self.url,
                open_timeout=self.open_timeout_s,
                ping_interval=self.heartbeat.protocol_ping_interval_s,
                ping_timeout=self.heartbeat.pong_timeout_s,
                close_timeout=2,
                max_size=2 ** 24,
                max_queue=256,
                additional_headers=self.headers,
            )
        except (OSError, asyncio.TimeoutError, InvalidHandshake, InvalidURI) as exc:
            self.last_error = f"connect failed: {exc!r}"
            return self.last_error
        self.ws = ws
        self.connects += 1
        loop = asyncio.get_running_loop()
        opened_at = loop.time()
        self.last_message_at = self.last_data_at = opened_at
        helpers: list[asyncio.Task] = [loop.create_task(self._watchdog(ws))]
        if self.heartbeat.app_ping is not None:
            helpers.append(loop.create_task(self._app_pinger(ws)))
        try:
            if self.on_open is not None:
                await self.on_open(self)
            self.connected.set()
            log.info("%s connected to %s", self.name, self.url)
            handler = self.on_message
            healthy_at = opened_at + self.healthy_after_s
            async for raw in ws:
                now = loop.time()
                self.last_message_at = now
                if handler(self, raw) is not False:
                    self.last_data_at = now
                    # Healthy means data after a while: heartbeats/pongs alone (a connection
                    # the idle watchdog will close) must not reset the backoff into a tight
                    # loop. Reset once, not on every later message.
                    if now > healthy_at:
                        self.backoff.reset()
                        healthy_at = float("inf")
            return self._reconnect_reason or f"closed by server ({ws.close_code})"
        except ConnectionClosed as exc:
            return self._reconnect_reason or f"connection closed: {exc}"
        except (OSError, asyncio.TimeoutError) as exc:
            return f"socket error: {exc!r}"
        finally:
            self.connected.clear()
            for task in helpers:
                task.cancel()
            self.ws = None
            await ws.close()

    async def _watchdog(self, ws: AnyConnection) -> None:
        """Close a connection that stays open but delivers no data (pongs do not count)."""
        loop = asyncio.get_running_loop()
        interval = max(0.05, min(1.0, self.idle_timeout_s / 4))
        while True:
            await asyncio.sleep(interval)
            idle = loop.time() - self.last_data_at
            if idle > self.idle_timeout_s:
                self._reconnect_reason = f"no data for {idle:.1f}s"
                await ws.close(code=1000, reason="idle")
                return

    async def _app_pinger(self, ws: AnyConnection) -> None:
        loop = asyncio.get_running_loop()
        policy = self.heartbeat
        assert policy.app_ping is not None
        quiet_only = policy.ping_only_when_quiet
        last_ping_at = 0.0
        awaiting: float | None = None        # time of an unanswered ping (pong deadline)
        while True:
            await asyncio.sleep(policy.app_ping_interval_s if not quiet_only
                                else max(0.05, policy.app_ping_interval_s / 5))
            now = loop.time()
            if awaiting is not None and policy.app_pong_timeout_s is not None:
                if self.last_message_at > awaiting:
                    awaiting = None
                elif now - awaiting > policy.app_pong_timeout_s:   # no pong, no data
                    self._reconnect_reason = (f"no answer {policy.app_pong_timeout_s:g}s "
                                              f"after an application ping")
                    await ws.close(code=1000, reason="no pong")
                    return
            # Quiet mode: once per quiet period, not every tick.
            if quiet_only and now - max(self.last_message_at, last_ping_at) < \
                    policy.app_ping_interval_s:
                continue
            try:
                await ws.send(policy.app_ping())
            except ConnectionClosed:
                return
            last_ping_at = loop.time()
            if awaiting is None:
                awaiting = last_ping_at
