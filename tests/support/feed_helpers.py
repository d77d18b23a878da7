"""Helpers for exchange feed tests: an in-memory writer and a FeedContext without MongoDB."""
from __future__ import annotations

from collector.exchanges.base import FeedContext
from collector.stats import Stats
from common.settings import Settings


class ListWriter:
    """Collects submitted records (stands in for collector.writer.Writer in unit tests)."""

    def __init__(self) -> None:
        self.records = []
        self.docs: list[tuple[str, dict]] = []     # ready documents (gap ledger entries)

    def submit(self, record, history: bool = True) -> None:
        self.records.append(record)

    def submit_doc(self, collection: str, doc: dict) -> None:
        self.docs.append((collection, doc))

    def of(self, cls):
        return [r for r in self.records if isinstance(r, cls)]


def offline_context(settings: Settings | None = None) -> FeedContext:
    return FeedContext(settings=settings or Settings(), writer=ListWriter(), stats=Stats(),
                       session=None, poll_interval_s=30.0)  # type: ignore[arg-type]
