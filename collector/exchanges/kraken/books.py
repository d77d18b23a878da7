"""Kraken spot (v2) books: applied from the orjson floats as they arrive; the CRC32 of the last
update is checked at most ``endpoints.VERIFY_AFTER_S`` later and always before the samplers read
the books (the checksum is the only gap detector v2 has; checking every update cost ~40 % of the
book path). Checksum texts are made only for levels that reach the top 10, each proven exact
from its float; a pair whose number cannot be proven is rebuilt from a fresh snapshot parsed with
exact decimals, as is every pair without a known precision."""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from collector.exchanges.kraken import endpoints as ep
from collector.exchanges.kraken import parsers as p
from collector.kit.books import PARSE_ERRORS

if TYPE_CHECKING:
    from collector.exchanges.kraken.feed import KrakenFeed


class SpotBooks:
    def __init__(self, feed: KrakenFeed) -> None:
        self.feed = feed
        self.price_texts: p.PriceTexts = {}
        self.exact_books: set[str] = set()   # pairs whose numbers once failed the float proof
        # (market, symbol) -> the exchange's checksum of the last update not verified yet
        self.unverified: dict[tuple[str, str], int] = {}
        self._timer = False

    def on_message(self, market: str, msg: dict, raw: str | bytes) -> None:
        feed, kind = self.feed, msg["type"]
        exact: list | None = None           # the message decoded with exact decimals, if needed
        for i, item in enumerate(msg["data"]):
            symbol, expected = item["symbol"], int(item["checksum"])
            book = feed.book(market, symbol, keep_text=True)
            if kind != "snapshot" and not book.synced:
                feed.resync.unsynced_update(market, symbol)
                continue
            try:
                if feed.precision.get(symbol) is None or symbol in self.exact_books:
                    exact = exact or p.decode(raw)["data"]
                    p.apply_book_exact(book, kind, exact[i], feed.precision.get(symbol),
                                       feed.book_depth)
                else:
                    p.apply_book(book, kind, item, feed.book_depth)
            except PARSE_ERRORS as exc:      # possibly half applied: rebuild it, count the message
                feed.resync.lose(market, symbol, "sequence_gap", f"malformed update: {exc!r}")
                raise
            self.unverified[(market, symbol)] = expected
            if kind == "snapshot":               # in sync only once its checksum matches
                self._verify(market, symbol, snapshot=True)
        if self.unverified and not self._timer:
            self._timer = True
            try:
                asyncio.get_running_loop().call_later(ep.VERIFY_AFTER_S, self.verify_all)
            except RuntimeError:                 # no event loop (offline parsing): now
                self.verify_all()

    def verify_all(self) -> None:
        """Verify every book changed since its last check (before the samplers read them)."""
        self._timer = False
        for market, symbol in list(self.unverified):
            self._verify(market, symbol)

    def _verify(self, market: str, symbol: str, snapshot: bool = False) -> None:
        feed = self.feed
        expected = self.unverified.pop((market, symbol), None)
        book = feed.books.get((market, symbol))
        if expected is None or book is None or not book.synced:
            return                               # lost meanwhile: a new snapshot follows
        prec = feed.precision.get(symbol)
        try:
            actual = p.book_crc(book, prec, p.price_texts_of(self.price_texts, symbol, prec)
                                if prec else None)
        except p.Inexact as exc:
            self.exact_books.add(symbol)
            feed.resync.lose(market, symbol, "checksum", f"inexact number {exc}: exact from now")
            return
        if actual == expected:
            if snapshot:
                feed.resync.synced(market, symbol)
            return
        # No sequence numbers on v2 books: the checksum is the only gap detector.
        feed.checksum_failures += 1
        feed.resync.lose(market, symbol, "checksum", f"local {actual} != exchange {expected}")
