"""The collector's status documents, merged into one view for /health, /realtime, /orderbook and
/metrics.

One collector process writes ``_id: "collector"``; a partitioned collector (``partition = i/N``)
writes one document per process, ``_id: "collector-<i>-of-<N>"``. Merged per exchange: counters
are summed, per-stream timestamps keep the newest, books / unavailable symbols / connections are
united (a book belongs to one partition); the heartbeat is the oldest running process's.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from common.status import BookState, CollectorStatus, MergedStatus, ProcessSummary

COLLECTOR_ID = "collector"
PARTITION_PREFIX = "collector-"
# Summed per key across processes; every other nested dict is united (newest document wins).
SUMMED_DICTS = ("records", "errors")
SPOOL_TEXT = ("policy",)


def is_collector_status(doc_id: Any) -> bool:
    return isinstance(doc_id, str) and (doc_id == COLLECTOR_ID
                                        or doc_id.startswith(PARTITION_PREFIX))


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _add(into: dict[str, Any], key: str, value: Any) -> None:
    into[key] = into.get(key, 0) + value


def _merge_exchange(into: dict[str, Any], info: dict[str, Any], process: str,
                    several: bool) -> None:
    for key, value in info.items():
        if _number(value):
            _add(into, key, value)
        elif key in SUMMED_DICTS and isinstance(value, dict):
            target = into.setdefault(key, {})
            for k, v in value.items():
                if _number(v):
                    _add(target, k, v)
        elif key == "last_record_at" and isinstance(value, dict):
            target = into.setdefault(key, {})
            for coll, per_key in value.items():
                merged = target.setdefault(coll, {})
                for k, at in (per_key or {}).items():
                    if isinstance(at, datetime) and (k not in merged or at > merged[k]):
                        merged[k] = at
        elif key == "connections" and isinstance(value, dict):
            # Every partition has its own "binance:spot" connection: name them by process.
            target = into.setdefault(key, {})
            for name, conn in value.items():
                target[f"{process}/{name}" if several else name] = conn
        elif isinstance(value, dict):
            into.setdefault(key, {}).update(value)
        else:
            into.setdefault(key, value)


def _merge_writer(writers: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    spools = [w["spool"] for w in writers if isinstance(w.get("spool"), dict)]
    for writer in writers:
        for key, value in writer.items():
            if key == "last_write_ms" and _number(value):
                merged[key] = max(merged.get(key, 0.0), value)
            elif isinstance(value, bool):
                merged[key] = merged.get(key, True) and value
            elif _number(value):
                _add(merged, key, value)
    if spools:
        spool: dict[str, Any] = {}
        for one in spools:
            for key, value in one.items():
                if _number(value):
                    _add(spool, key, value)
                elif key in SPOOL_TEXT:
                    spool[key] = value if spool.get(key, value) == value else "mixed"
        merged["spool"] = spool
    elif writers:
        merged["spool"] = None
    return merged


def merge_status(docs: list[CollectorStatus]) -> MergedStatus | None:
    """One status view over every collector process; ``processes`` lists each one."""
    docs = [d for d in docs if isinstance(d.get("updated_at"), datetime)]
    if not docs:
        return None
    docs.sort(key=lambda d: d["updated_at"])          # newer documents win unions
    running = [d for d in docs if d.get("running", True)]
    several = len(docs) > 1
    exchanges: dict[str, dict[str, Any]] = {}
    for doc in docs:
        for name, info in (doc.get("exchanges") or {}).items():
            if isinstance(info, dict):
                _merge_exchange(exchanges.setdefault(name, {}), dict(info), str(doc["_id"]),
                                several)
    return MergedStatus(
        # The oldest heartbeat among running processes: one stuck partition shows.
        updated_at=min(d["updated_at"] for d in (running or docs)),
        running=bool(running),
        writer=_merge_writer([dict(d["writer"]) for d in docs
                              if isinstance(d.get("writer"), dict)]),
        exchanges=exchanges,
        processes=[ProcessSummary(id=d["_id"], updated_at=d["updated_at"],
                                  running=d.get("running", True), host=d.get("host"),
                                  pid=d.get("pid"), started_at=d.get("started_at"),
                                  writer=d.get("writer", {}))
                   for d in sorted(docs, key=lambda d: str(d["_id"]))],
    )


def book_state(status: MergedStatus | None, exchange: str, market: str,
               symbol: str) -> BookState | None:
    """The collector's sync state of one book (``{"state", "since", "update_id"}``), if reported."""
    books = exchange_status(status, exchange).get("books") or {}
    book = books.get(f"{market}:{symbol}")
    return cast(BookState, book) if isinstance(book, dict) else None


def exchange_status(status: MergedStatus | None, exchange: str) -> dict[str, Any]:
    """One exchange's merged counters and state (empty when the collector reported none)."""
    if status is None:
        return {}
    return status["exchanges"].get(exchange) or {}
