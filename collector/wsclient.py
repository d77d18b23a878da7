"""WebSocket client transport for ``WsConnection``.

The per-message cost of the receive path dominates the collector's CPU budget. Measured with
``tests/bench`` on the same machine and run: the ``websockets`` library's asyncio client costs
~5.5 us CPU per received frame (pure-Python frame parser, per-message futures), aiohttp's client
(C frame reader) ~1.8 us including the JSON decode. So the collector uses aiohttp (already a
dependency for REST) by default, behind the small subset of the ``websockets`` client API that
``WsConnection`` uses: ``await connect(...)``, ``async for raw in ws``, ``send``, ``close``,
``close_code``; connect failures raise the same ``websockets`` exception types, and a dropped
connection ends the iteration (or raises ``OSError``) just as ``WsConnection`` expects.

``CRYPTODATA_WS_CLIENT=websockets`` switches back to the ``websockets`` library (read once, at
import).
"""
from __future__ import annotations

import asyncio
import os
from typing import Any, AsyncIterator, Mapping

import aiohttp
from websockets.asyncio.client import connect as websockets_connect
from websockets.exceptions import InvalidHandshake, InvalidURI

_TEXT = aiohttp.WSMsgType.TEXT
_BINARY = aiohttp.WSMsgType.BINARY
_ERROR = aiohttp.WSMsgType.ERROR


class AiohttpClientConnection:
    """An open aiohttp WebSocket presented like ``websockets.asyncio.client.ClientConnection``."""

    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._session = session
        self._ws = ws

    @property
    def close_code(self) -> int | None:
        return self._ws.close_code

    async def send(self, message: str | bytes) -> None:
        if isinstance(message, str):
            await self._ws.send_str(message)
        else:
            await self._ws.send_bytes(message)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        try:
            await self._ws.close(code=code, message=reason.encode())
        finally:
            await self._session.close()

    async def __aiter__(self) -> AsyncIterator[str | bytes]:
        receive = self._ws.receive
        while True:
            msg = await receive()
            kind = msg.type
            if kind is _TEXT or kind is _BINARY:
                yield msg.data
            elif kind is _ERROR:
                raise OSError(f"websocket error: {msg.data!r}")
            else:       # CLOSE / CLOSING / CLOSED: the session ends normally
                return


async def aiohttp_connect(url: str, *, open_timeout: float = 10.0,
                          ping_interval: float | None = None, ping_timeout: float | None = None,
                          close_timeout: float = 2.0, max_size: int = 2 ** 24,
                          additional_headers: Mapping[str, str] | None = None,
                          **_: Any) -> AiohttpClientConnection:
    """Open ``url``. ``ping_interval`` -> client protocol pings (aiohttp closes the connection if
    the pong is not back within half the interval); server pings are answered automatically.
    ``additional_headers`` go with the handshake (the websockets keyword)."""
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
    try:
        ws = await asyncio.wait_for(session.ws_connect(
            url, heartbeat=ping_interval, max_msg_size=max_size, autoping=True,
            headers=additional_headers,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=close_timeout),
            compress=15), open_timeout)
    except aiohttp.InvalidURL as exc:
        await session.close()
        raise InvalidURI(url, str(exc)) from exc
    except (aiohttp.WSServerHandshakeError, aiohttp.ClientResponseError) as exc:
        await session.close()
        raise InvalidHandshake(f"handshake failed: {exc}") from exc
    except aiohttp.ClientConnectionError as exc:
        await session.close()
        raise OSError(f"connect failed: {exc}") from exc
    except BaseException:
        await session.close()
        raise
    return AiohttpClientConnection(session, ws)


WS_CLIENT = os.environ.get("CRYPTODATA_WS_CLIENT", "aiohttp").strip().lower()
connect = websockets_connect if WS_CLIENT == "websockets" else aiohttp_connect
