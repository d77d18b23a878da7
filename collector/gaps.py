"""The gap ledger: every interruption of a stream, as a document in the ``gaps`` collection.

    {_id, exchange, symbol, market, stream, start, end, cause, backfilled, duration_s, detail,
     collector, t}

- ``t``: ``start`` as integer epoch ms (common.schema.time_key), the key /gaps pages on and the
  retention deleter ranges on, like ``t`` of the data collections.

- ``symbol`` is ``"*"`` when a whole connection (or the whole collector / database) was affected.
- ``market``: spot | perp | ``"*"``; ``stream``: the connection name (``binance:spot``), a data
  stream (``depth``, ``trade``), ``collector`` (restart) or ``mongodb`` (db_outage).
- ``cause``: disconnect | idle | sequence_gap | checksum | crossed (a book whose best bid reached
  its best ask) | restart | db_outage | overflow (documents dropped at ``queue_max`` while the
  database answered, too slowly; ``stream`` ``writer``).
- ``collector``: the status-document id of the recording process (``collector`` or
  ``collector-<i>-of-<N>`` when partitioned).
- ``end`` is None while the gap is open; ``duration_s`` is set when it closes.
- ``backfilled``: True once the missed data was fetched again (REST backfill), or for a
  ``db_outage`` when the spool replayed everything (nothing was lost).
- ``records_lost`` / ``lost_by_type`` (``db_outage``, ``overflow``): documents dropped for good
  (memory or spool limit), in total and per collection (only those that lost something); a
  db_outage gap counts from the last successful write to the end of the outage. A collector
  killed during an outage leaves them in its run state file (collector.runstate); its successor
  closes the gap with them.

A gap is written when it opens and again when it closes / is marked backfilled (same ``_id``,
replaced). The documents go through the writer, so during a MongoDB outage they are spooled to
disk like market data and reach the database when it returns.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from common import schema
from common.schema import now_utc
from common.status import GapCounters

log = logging.getLogger(__name__)

CAUSES = ("disconnect", "idle", "sequence_gap", "checksum", "crossed", "restart", "db_outage",
          "overflow")


@dataclass
class Gap:
    exchange: str
    symbol: str
    market: str
    stream: str
    cause: str
    start: datetime
    end: datetime | None = None
    backfilled: bool = False
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.exchange, self.market, self.symbol, self.stream)

    @property
    def id(self) -> str:
        return (f"{self.exchange}:{self.market}:{self.symbol}:{self.stream}:"
                f"{int(self.start.timestamp() * 1000)}")

    @property
    def duration_s(self) -> float | None:
        return None if self.end is None else round((self.end - self.start).total_seconds(), 3)

    def to_doc(self) -> dict[str, Any]:
        return {"_id": self.id, "exchange": self.exchange, "symbol": self.symbol,
                "market": self.market, "stream": self.stream, "start": self.start,
                "end": self.end, "cause": self.cause, "backfilled": self.backfilled,
                "duration_s": self.duration_s, "detail": self.detail[:300],
                schema.TIME_KEY: schema.time_key(self.start), **self.extra}


class GapLedger:
    """Open/close bookkeeping; one per collector, shared by every feed and the writer."""

    def __init__(self, writer, owner: str = "collector") -> None:
        self.writer = writer
        # The status-document id of the process that records these gaps (partitions): on a
        # restart a process closes only the gaps it left open itself.
        self.owner = owner
        self.open_gaps: dict[tuple[str, str, str, str], Gap] = {}
        self.opened = 0
        self.closed = 0
        self.recent: list[Gap] = []       # the last closed gaps (tests, status)
        # Ids of the gaps this process saved, until it has closed the previous run's open gaps
        # (collector.app sets it to None then): those are not the previous run's.
        self.own_ids: set[str] | None = set()
        self._attributed: Counter = Counter()     # drops already in a gap's records_lost
        self._attributed_total = 0

    def _save(self, gap: Gap) -> None:
        doc = gap.to_doc()
        doc["collector"] = self.owner
        if self.own_ids is not None:
            self.own_ids.add(doc["_id"])
        self.writer.submit_doc(schema.GAPS, doc)

    def open(self, exchange: str, symbol: str, market: str, stream: str, cause: str, *,
             start: datetime | None = None, detail: str = "") -> Gap:
        """Open a gap (idempotent: an already open gap on the same stream is kept)."""
        gap = Gap(exchange, symbol, market, stream, cause, start or now_utc(), detail=detail)
        existing = self.open_gaps.get(gap.key)
        if existing is not None:
            return existing
        self.open_gaps[gap.key] = gap
        self.opened += 1
        self._save(gap)
        log.info("gap opened: %s %s %s %s (%s)", exchange, market, symbol, stream, cause)
        return gap

    def close(self, gap: Gap, *, end: datetime | None = None, backfilled: bool | None = None) -> Gap:
        if gap.end is None:
            gap.end = end or now_utc()
            self.closed += 1
            self.recent = (self.recent + [gap])[-100:]
        if backfilled is not None:
            gap.backfilled = backfilled
        self.open_gaps.pop(gap.key, None)
        self._save(gap)
        log.info("gap closed: %s %s %s %s (%s) %.3fs%s", gap.exchange, gap.market, gap.symbol,
                 gap.stream, gap.cause, gap.duration_s or 0.0,
                 " backfilled" if gap.backfilled else "")
        return gap

    def record(self, exchange: str, symbol: str, market: str, stream: str, cause: str, *,
               start: datetime, end: datetime, detail: str = "") -> Gap:
        """A gap already over when detected (e.g. a hole in trade ids)."""
        gap = Gap(exchange, symbol, market, stream, cause, start, detail=detail)
        self.opened += 1
        return self.close(gap, end=end)

    def mark_backfilled(self, gap: Gap, backfilled: bool = True) -> None:
        gap.backfilled = backfilled
        self._save(gap)

    def find_open(self, exchange: str, market: str, symbol: str, stream: str) -> Gap | None:
        return self.open_gaps.get((exchange, market, symbol, stream))

    # ---- database outages and overflow (writer listeners) ------------------------------------
    # Every document the writer or the spool drops is attributed to exactly one gap: the open
    # db_outage gap when it closes (including drops while a write hung before failing), else an
    # ``overflow`` gap recorded after the flush that followed the drops (a slow database).
    def on_db_availability(self, available: bool) -> None:
        key = ("*", "*", "*", "mongodb")
        if not available:
            self.open("*", "*", "*", "mongodb", "db_outage")
            return
        gap = self.open_gaps.get(key)
        if gap is None:
            return
        lost = self._attribute()
        gap.extra["records_lost"] = sum(lost.values())
        gap.extra["lost_by_type"] = lost
        # Nothing lost: the spool took everything and replayed it (backfilled = complete).
        self.close(gap, backfilled=getattr(self.writer, "spool", None) is not None and not lost)

    def on_flush(self) -> None:
        """After a successful flush: drops not covered by an outage are an ``overflow`` gap
        (``queue_max`` reached while the database answered, but too slowly)."""
        now = now_utc()
        since, self._last_flush_at = getattr(self, "_last_flush_at", now), now
        if self._dropped_total() == self._attributed_total or \
                ("*", "*", "*", "mongodb") in self.open_gaps:
            return
        lost = self._attribute()
        gap = Gap("*", "*", "*", "writer", "overflow", since,
                  detail=f"queue_max reached: {sum(lost.values())} documents dropped",
                  extra={"records_lost": sum(lost.values()), "lost_by_type": lost})
        self.opened += 1
        self.close(gap, end=now)

    def outage_lost(self) -> dict[str, int]:
        """Documents dropped (memory or spool limit) and not yet attributed to a gap, per
        collection (only collections that lost something)."""
        lost = self._dropped_by_type()
        lost.subtract(self._attributed)
        return {coll: n for coll, n in sorted(lost.items()) if n > 0}

    def outage_state(self) -> dict[str, Any] | None:
        """The open db_outage gap and its loss so far (for the run state file): a process
        killed during an outage cannot close its gap, the next one does with these figures."""
        gap = self.open_gaps.get(("*", "*", "*", "mongodb"))
        if gap is None:
            return None
        lost = self.outage_lost()
        return {"id": gap.id, "records_lost": sum(lost.values()), "lost_by_type": lost}

    def _attribute(self) -> dict[str, int]:
        lost = self.outage_lost()
        self._attributed.update(lost)
        self._attributed_total += sum(lost.values())
        return lost

    def _dropped_total(self) -> int:
        spool = getattr(self.writer, "spool", None)
        return getattr(self.writer, "dropped", 0) + (spool.dropped if spool is not None else 0)

    def _dropped_by_type(self) -> Counter:
        lost: Counter = Counter(getattr(self.writer, "dropped_by", {}))
        spool = getattr(self.writer, "spool", None)
        if spool is not None:
            lost.update(spool.dropped_by)
        return lost

    def status(self) -> GapCounters:
        return {"open": len(self.open_gaps), "opened": self.opened, "closed": self.closed}
