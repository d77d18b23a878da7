"""Counters the collector keeps for its status document, logs and /health."""
from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from common.status import BookState, ConnectionStatus, ExchangeStatus

log = logging.getLogger(__name__)


@dataclass
class ExchangeStats:
    messages: int = 0
    malformed: int = 0
    reconnects: int = 0
    gaps: int = 0
    resyncs: int = 0
    backfills: int = 0              # gaps fully backfilled over REST
    backfilled_trades: int = 0      # trades re-fetched (overlaps included; the DB dedupes)
    records: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    unavailable_symbols: dict[str, str] = field(default_factory=dict)   # symbol -> reason
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # message -> count

    def error_once(self, exchange: str, message: str) -> None:
        """Count an exchange-reported error; log only its first occurrence."""
        key = message[:300]
        if key not in self.errors:
            log.error("%s: %s", exchange, key)
        self.errors[key] += 1

    def as_doc(self, connections: dict[str, ConnectionStatus], books: dict[str, BookState],
               fresh: dict[str, dict[tuple[str, str], datetime]]) -> ExchangeStatus:
        """``fresh``: the writer's newest record per stream (``Writer.fresh``)."""
        return {
            "messages": self.messages,
            "malformed": self.malformed,
            "reconnects": self.reconnects,
            "gaps": self.gaps,
            "resyncs": self.resyncs,
            "backfills": self.backfills,
            "backfilled_trades": self.backfilled_trades,
            "records": dict(self.records),
            "unavailable_symbols": dict(self.unavailable_symbols),
            "errors": dict(self.errors),
            "connections": connections,
            "books": books,
            "last_record_at": {coll: {f"{market}:{symbol}": at
                                      for (market, symbol), at in per.items()}
                               for coll, per in fresh.items()},
        }


class Stats:
    def __init__(self) -> None:
        self.started_at = time.time()
        self.exchanges: dict[str, ExchangeStats] = defaultdict(ExchangeStats)

    def exchange(self, name: str) -> ExchangeStats:
        return self.exchanges[name]
