"""Shared plumbing of the fake exchanges: a websockets server, an aiohttp REST app, a periodic
streamer per connection and helpers the tests use to push messages."""
from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson
from aiohttp import web
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from tests.support.helpers import free_port


def dumps(obj: Any) -> str:
    return obj if isinstance(obj, str) else orjson.dumps(obj).decode()


class FakeExchange:
    stream_interval_s = 0.1

    def __init__(self) -> None:
        self.ws_port = free_port()
        self.rest_port = free_port()
        self.connections: list[ServerConnection] = []
        self.received: list[tuple[str, str]] = []       # (path, text)
        self.rest_requests: list[str] = []
        self.connects = 0
        # silent: acks and pongs only, no data (the idle-watchdog scenario)
        self.silent = False
        self._server = None
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task] = set()

    @property
    def ws_base(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}"

    @property
    def rest_base(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    async def start(self) -> None:
        self._server = await serve(self._handler, "127.0.0.1", self.ws_port)
        app = web.Application()
        self.routes(app)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.rest_port).start()

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 3)
        if self._runner is not None:
            await self._runner.cleanup()

    # ---- to implement ------------------------------------------------------------------------
    def routes(self, app: web.Application) -> None:
        pass

    def new_state(self, path: str) -> dict[str, Any]:
        return {}

    async def on_text(self, ws: ServerConnection, path: str, state: dict[str, Any],
                      text: str) -> None:
        raise NotImplementedError

    async def stream_once(self, ws: ServerConnection, path: str, state: dict[str, Any]) -> None:
        pass

    # ---- plumbing ----------------------------------------------------------------------------
    async def _handler(self, ws: ServerConnection) -> None:
        path = ws.request.path
        state = self.new_state(path)
        ws.state_dict = state          # type: ignore[attr-defined]
        ws.path = path                 # type: ignore[attr-defined]
        self.connections.append(ws)
        self.connects += 1
        streamer = asyncio.get_running_loop().create_task(self._stream(ws, path, state))
        self._tasks.add(streamer)
        try:
            async for text in ws:
                self.received.append((path, text))
                await self.on_text(ws, path, state, text)
        except ConnectionClosed:
            pass
        finally:
            streamer.cancel()
            self._tasks.discard(streamer)
            if ws in self.connections:
                self.connections.remove(ws)

    async def _stream(self, ws: ServerConnection, path: str, state: dict[str, Any]) -> None:
        try:
            while True:
                await asyncio.sleep(self.stream_interval_s)
                if not self.silent:
                    await self.stream_once(ws, path, state)
        except (ConnectionClosed, asyncio.CancelledError):
            return

    async def send(self, ws: ServerConnection, obj: Any) -> None:
        with contextlib.suppress(ConnectionClosed):
            await ws.send(dumps(obj))

    def live(self, path_suffix: str) -> list[ServerConnection]:
        return [ws for ws in self.connections if ws.path.endswith(path_suffix)]  # type: ignore

    def sent_ops(self, op: str) -> list[tuple[str, dict]]:
        out = []
        for path, text in self.received:
            if text.startswith("{"):
                msg = orjson.loads(text)
                if msg.get("op") == op:
                    out.append((path, msg))
        return out


def fixture(relative: str) -> list[dict[str, Any]]:
    from pathlib import Path
    path = Path(__file__).resolve().parents[2] / "fixtures" / relative
    return [orjson.loads(line) for line in path.read_text().splitlines() if line.strip()]
