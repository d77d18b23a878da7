"""The status contract between the collector and the API.

Each collector process upserts one document into the ``status`` collection (``_id``:
``collector`` or ``collector-<i>-of-<N>``) every ``status_interval_s``; the API merges them
(``api.status.merge_status``) for ``/health``, ``/realtime``, ``/orderbook`` and ``/metrics``.
These types are that document's shape, written by the collector and read by the API, so a
renamed or missing field is a type error on both sides rather than a silent ``.get()`` default.
Datetimes are timezone-aware UTC (BSON dates).
"""
from __future__ import annotations

from datetime import datetime
from typing import TypedDict


class SpoolStatus(TypedDict):
    """The disk spool that holds documents while MongoDB is unavailable (collector.spool)."""

    records: int
    bytes: int
    segments: int
    max_bytes: int
    policy: str             # reject | drop_oldest (what a full spool does)
    dropped: int
    rejected: int
    spooled: int
    replayed: int


class WriterStatus(TypedDict):
    stored: int
    pending: int
    duplicates: int
    dropped: int
    write_errors: int
    last_write_ms: float
    db_available: bool
    spool: SpoolStatus | None


class GapCounters(TypedDict):
    open: int
    opened: int
    closed: int


class ConnectionStatus(TypedDict):
    connected: bool
    connects: int
    disconnects: int
    last_error: str | None


class BookState(TypedDict):
    state: str              # live | syncing (first snapshot pending) | resyncing
    since: datetime | None
    update_id: int | None


class ExchangeStatus(TypedDict):
    """One exchange's counters in one process (collector.stats.ExchangeStats plus live state)."""

    messages: int
    malformed: int
    reconnects: int
    gaps: int
    resyncs: int
    backfills: int
    backfilled_trades: int
    records: dict[str, int]                 # collection -> records emitted
    unavailable_symbols: dict[str, str]     # "market:symbol" -> reason
    errors: dict[str, int]                  # exchange-reported error text -> count
    connections: dict[str, ConnectionStatus]
    books: dict[str, BookState]             # "market:symbol" -> state
    last_record_at: dict[str, dict[str, datetime]]   # collection -> "market:symbol" -> time


class CollectorStatus(TypedDict):
    """One collector process's status document."""

    _id: str
    partition: str | None
    updated_at: datetime
    started_at: datetime
    host: str
    pid: int
    running: bool
    writer: WriterStatus
    gaps: GapCounters
    exchanges: dict[str, ExchangeStatus]


class ProcessSummary(TypedDict):
    id: str
    updated_at: datetime
    running: bool
    host: str | None
    pid: int | None
    started_at: datetime | None
    writer: WriterStatus | dict


class MergedStatus(TypedDict):
    """Every process merged: counters summed, newest timestamps, books/connections united; the
    heartbeat is the oldest running process's (one stuck partition shows)."""

    updated_at: datetime
    running: bool
    writer: dict
    exchanges: dict[str, dict]
    processes: list[ProcessSummary]
