"""A fake exchange's own market: trades keep happening whether or not anybody is connected.

``TradeTape`` records every trade per instrument (the fake's REST trade endpoints serve it) and
whether a WebSocket pushed it; ``TradingFake`` runs the tape and can drop every connection and
refuse new ones for a while, so a test can compare what happened with what was stored.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any, Hashable


class TradeTape:
    def __init__(self, first_id: int = 1000, keep: int = 5000) -> None:
        self.first_id = first_id
        self.keep = keep
        self.trades: dict[Hashable, deque[dict[str, Any]]] = {}
        self._next_id: dict[Hashable, int] = {}
        self._lose: dict[Hashable, int] = {}

    def activate(self, key: Hashable) -> None:
        """The instrument trades from now on (its first subscription)."""
        if key not in self.trades:
            self.trades[key] = deque(maxlen=self.keep)
            self._next_id[key] = self.first_id

    def active(self) -> list[Hashable]:
        return list(self.trades)

    def new(self, key: Hashable, *, count: int = 1) -> dict[str, Any]:
        """A trade (``count`` > 1: an aggregate whose id is the first of ``count`` fills)."""
        trade_id = self._next_id[key]
        self._next_id[key] += count
        trade = {"id": trade_id, "count": count, "ts": int(time.time() * 1000), "pushed": False}
        self.trades[key].append(trade)
        return trade

    def lose(self, key: Hashable, count: int) -> None:
        """The next ``count`` trades happen (REST shows them) but are never pushed."""
        self._lose[key] = count

    def take_loss(self, key: Hashable) -> bool:
        left = self._lose.get(key, 0)
        if left:
            self._lose[key] = left - 1
        return bool(left)

    def recent(self, key: Hashable, limit: int) -> list[dict[str, Any]]:
        """Newest first, like the exchanges' recent-trades endpoints."""
        return list(self.trades.get(key, ()))[::-1][:limit]

    def unpushed(self, key: Hashable, after_id: int = -1) -> list[dict[str, Any]]:
        return [t for t in self.trades.get(key, ()) if not t["pushed"] and t["id"] > after_id]


class TradingFake:
    """Mixin for a ``FakeExchange``: a market loop over ``self.tape`` and a connection drop.

    The fake implements ``trade_subscribers(key)`` (live sockets subscribed to the key's trades)
    and ``trade_message(key, trade)`` (the push in the exchange's format)."""

    trade_interval_s = 0.1
    tape: TradeTape
    down_until = 0.0

    def trade_subscribers(self, key: Hashable) -> list[Any]:
        raise NotImplementedError

    def trade_message(self, key: Hashable, trade: dict[str, Any]) -> Any:
        raise NotImplementedError

    async def start(self) -> None:
        await super().start()   # type: ignore[misc]
        task = asyncio.get_running_loop().create_task(self._market())
        self._tasks.add(task)   # type: ignore[attr-defined]

    async def _market(self) -> None:
        while True:
            await asyncio.sleep(self.trade_interval_s)
            for key in self.tape.active():
                trade = self.tape.new(key)
                subscribers = self.trade_subscribers(key)
                if self.tape.take_loss(key) or self.silent or not subscribers:  # type: ignore
                    continue
                trade["pushed"] = True
                for ws in subscribers:
                    await self.send(ws, self.trade_message(key, trade))   # type: ignore

    async def drop_connections(self, down_s: float = 0.0) -> None:
        """Close every socket mid-stream; refuse new connections for ``down_s`` seconds."""
        self.down_until = time.monotonic() + down_s
        for ws in list(self.connections):     # type: ignore[attr-defined]
            await ws.close(1001, "going away")

    def is_down(self) -> bool:
        return time.monotonic() < self.down_until

    async def _handler(self, ws) -> None:
        if self.is_down():
            await ws.close(1013, "try again later")
            return
        await super()._handler(ws)   # type: ignore[misc]
