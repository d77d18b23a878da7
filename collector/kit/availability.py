"""Symbols the exchange rejected (unknown, delisted, not in this market), keyed by
(market, symbol): BTCUSDT / BTC_USDT exist as spot and perpetual symbols alike, and a rejection
of one must never drop the other."""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def unavailable_key(market: str, symbol: str) -> str:
    """The key shown in ``/health`` (``unavailable_symbols``): ``market:symbol``."""
    return f"{market}:{symbol}"


class Availability:
    def __init__(self, exchange: str, reasons: dict[str, str]) -> None:
        self.exchange = exchange
        self.reasons = reasons          # the exchange's stats dict: reported in /health

    def mark(self, market: str, symbol: str, reason: str) -> None:
        """Report a rejected symbol once; it is skipped from then on (also after reconnects)."""
        key = unavailable_key(market, symbol)
        if key not in self.reasons:
            log.error("%s: %s %s unavailable, skipping it: %s", self.exchange, market, symbol,
                      reason)
        self.reasons[key] = reason[:200]

    def ok(self, market: str, symbol: str) -> bool:
        return unavailable_key(market, symbol) not in self.reasons
