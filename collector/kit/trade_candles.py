"""1-minute OHLCV built from trades, for markets whose exchange serves no candles on the
transport in use (records carry ``source: "trades"`` so a user can tell them apart).

A minute's candle is a pure function of the distinct trades (by trade id) seen for it, live or
backfilled: open = price of the earliest trade, close = of the latest, high/low, volume (base),
quote volume (price x size) and trade count. A trade for a minute already closed (a backfill
after a gap) re-opens that minute's aggregate and its candle is stored again, replacing the
earlier one (candles are upserted on their open time). ``due`` hands out, once a second, the
candles that changed: running ones with ``closed=False``, and those whose minute ended more
than ``grace_s`` ago with ``closed=True``; closed minutes are forgotten after ``keep_s``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from common.schema import Candle, Trade, ms_to_dt


@dataclass(slots=True)
class _Minute:
    exchange: str
    symbol: str
    pair: str
    market: str
    start_ms: int
    ids: set[str] = field(default_factory=set)
    first: tuple[float, float] = (0.0, 0.0)       # (trade time ms, price) of the earliest
    last: tuple[float, float] = (0.0, 0.0)
    high: float = float("-inf")
    low: float = float("inf")
    volume: float = 0.0
    quote_volume: float = 0.0
    dirty: bool = True
    closed: bool = False

    def add(self, trade: Trade, at_ms: float) -> bool:
        if trade.trade_id in self.ids:
            return False
        if not self.ids or at_ms < self.first[0]:
            self.first = (at_ms, trade.price)
        if not self.ids or at_ms >= self.last[0]:
            self.last = (at_ms, trade.price)
        self.ids.add(trade.trade_id)
        self.high = max(self.high, trade.price)
        self.low = min(self.low, trade.price)
        self.volume += trade.size
        self.quote_volume += trade.price * trade.size
        self.dirty = True
        self.closed = False
        return True

    def candle(self, received_at, closed: bool) -> Candle:
        return Candle(self.exchange, self.symbol, self.pair, self.market, ms_to_dt(self.start_ms),
                      received_at, interval="1m", open=self.first[1], high=self.high,
                      low=self.low, close=self.last[1], volume=self.volume,
                      quote_volume=self.quote_volume, trades=len(self.ids), closed=closed,
                      source="trades")


class TradeCandles:
    def __init__(self, markets: set[str], *, grace_s: float = 2.0, keep_s: float = 6 * 3600.0
                 ) -> None:
        self.markets = markets
        self.grace_ms = grace_s * 1000
        self.keep_ms = keep_s * 1000
        self._minutes: dict[tuple[str, str, int], _Minute] = {}

    def add(self, trade: Trade) -> None:
        if trade.market not in self.markets:
            return
        at_ms = trade.ts.timestamp() * 1000
        start = int(at_ms // 60_000 * 60_000)
        key = (trade.market, trade.symbol, start)
        minute = self._minutes.get(key)
        if minute is None:
            minute = self._minutes[key] = _Minute(trade.exchange, trade.symbol, trade.pair,
                                                  trade.market, start)
        minute.add(trade, at_ms)

    def due(self, now_ms: float, received_at=None) -> list[Candle]:
        """Candles to store now (changed since the last call), oldest first."""
        received_at = received_at or ms_to_dt(now_ms)
        out = []
        for key in sorted(self._minutes, key=lambda k: k[2]):
            minute = self._minutes[key]
            ended = now_ms >= minute.start_ms + 60_000 + self.grace_ms
            if minute.dirty or (ended and not minute.closed):
                out.append(minute.candle(received_at, closed=ended))
                minute.dirty = False
                minute.closed = ended
            if ended and now_ms >= minute.start_ms + 60_000 + self.keep_ms:
                del self._minutes[key]
        return out
