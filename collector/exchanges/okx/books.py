"""OKX order books in both protocols the exchange documents: a WS ``snapshot`` when one comes
(then a break resubscribes that book alone: ``ResubscribeBooks``), otherwise - the announced
"delist initial snapshot" change - updates are buffered and spliced onto a REST
``/api/v5/market/books`` snapshot on prevSeqId (``SnapshotBooks``; a break re-fetches the
snapshot without resubscribing, so the 480 requests/hour budget is not spent on it). Synced books
of either kind take the parser's fast path (``parsers.apply_books_update``)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from collector.exchanges.okx import endpoints as ep
from collector.exchanges.okx import parsers
from collector.exchanges.okx.api import get_data
from collector.kit.books import PARSE_ERRORS, ResubscribeBooks, SnapshotBooks

if TYPE_CHECKING:
    from collector.exchanges.okx.feed import OkxFeed


class OkxBooks:
    def __init__(self, feed: OkxFeed) -> None:
        self.feed = feed
        self.resubscribe = ResubscribeBooks(feed, feed.resubscribe_book,
                                            cooldown_s=ep.RESYNC_COOLDOWN_S)
        self.rest = SnapshotBooks(feed, self._fetch, use_prev_id=lambda market: True)
        self.ws_synced: set[tuple[str, str]] = set()     # books built from a WS snapshot

    def on_message(self, msg: dict[str, Any]) -> None:
        feed = self.feed
        inst = msg["arg"]["instId"]
        market = parsers.market_of(inst)
        if (factor := feed.ct(inst)) is None:
            return                      # held back until the contract value is known
        book = feed.book(market, inst)
        action = msg.get("action")
        try:
            if action == "update" and book.synced:
                broken = parsers.apply_books_update(book, msg, factor, feed.depth)
            elif action == "snapshot":
                [item] = msg["data"]
                self.rest.reset(market, [inst])       # a WS snapshot wins over a REST fetch
                broken = parsers.load_books_snapshot(book, item, factor, feed.depth)
                self.ws_synced.add((market, inst))
                self.resubscribe.synced(market, inst)
            elif action == "update":
                # Updates of the old subscription while a resubscription is pending are dropped.
                if not self.resubscribe.scheduler.pending((market, inst)):
                    self._buffer(market, inst, msg, factor)
                return
            else:
                raise ValueError(f"unknown book action {action!r}")
        except PARSE_ERRORS as exc:
            if book.synced:   # possibly half applied: rebuild this book, count the message
                self.lost(market, inst, "sequence_gap", f"malformed update: {exc!r}")
            raise
        if broken:
            self.lost(market, inst, *broken)

    def _buffer(self, market: str, inst: str, msg: dict[str, Any], factor: float) -> None:
        """No WS snapshot: buffer the updates, a REST snapshot fetch starts."""
        self.ws_synced.discard((market, inst))
        book = self.feed.book(market, inst)
        if book.bids.frags is not None:
            book.keep_fragments(False)       # a REST snapshot carries no checksum
        for item in parsers.data_of(msg):
            diff = parsers.books_diff(item, factor)
            self.rest.on_diff(market, inst, diff.first_id, diff.last_id, diff.prev_id, diff,
                              lambda book, d, last: book.apply(d.bids, d.asks, last),
                              lambda d: d)

    def lost(self, market: str, inst: str, cause: str, detail: str) -> None:
        if (market, inst) in self.ws_synced:
            self.resubscribe.lose(market, inst, cause, detail)   # a new WS snapshot
        else:
            self.rest.resync(market, inst, cause, detail)        # the next update re-fetches

    async def _fetch(self, market: str, inst: str):
        data = await get_data(self.feed.rest_for(market), ep.REST_BOOKS,
                              {"instId": inst, "sz": ep.BOOK_DEPTH})
        return parsers.parse_rest_books(data, self.feed.ct(inst) or 1.0)

    def reset(self, market: str, symbols: list[str]) -> None:
        """Their connection dropped: the reconnect brings them back (either way)."""
        self.resubscribe.reset(market, symbols)
        self.rest.reset(market, symbols)

    def cancel_all(self) -> None:
        self.resubscribe.cancel_all()
        self.rest.cancel_all()
