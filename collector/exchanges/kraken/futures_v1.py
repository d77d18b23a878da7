"""The Derivatives WebSocket v1 side of the Kraken feed (``perp_transport: v1``): control
replies, trades, the book with its ``seq`` rule. Deprecated by Kraken, decommissioned on
1 March 2027 (docs/exchanges/kraken.md): this module goes with it."""
from __future__ import annotations

from typing import Any

from collector.connection import WsConnection
from collector.exchanges.base import Feed
from collector.exchanges.kraken import parsers as p
from collector.exchanges.kraken.requests import FuturesRequests
from collector.kit.books import ResubscribeBooks
from common.schema import PERP, received_now


class FuturesV1(Feed):
    """Mixin of ``KrakenFeed`` (which sets ``resync`` and ``fut_seq``)."""

    resync: ResubscribeBooks
    fut_seq: dict[str, int]      # last book seq per product (+1 per message per product)

    def _fut_control(self, conn: WsConnection, msg: dict) -> None:
        event = msg.get("event")
        if event in ("error", "alert", "subscribed_failed", "unsubscribed_failed"):
            self.stats.error_once(self.name, f"futures {event}: {msg.get('message', '')}")
        feed, symbol = self.meta(conn).extra.setdefault("requests", FuturesRequests()).answered(msg)
        if msg.get("message") == "Invalid product id" and symbol is not None:
            self.mark_unavailable(PERP, symbol, f"Invalid product id ({feed})")

    def _on_fut_trade(self, conn: WsConnection, msg: dict, raw: Any) -> None:
        self.emit(p.parse_futures_trade(msg, received_now()))

    def _on_fut_trades(self, conn: WsConnection, msg: dict, raw: Any) -> None:
        received_at = received_now()
        for trade in msg["trades"]:
            self.emit(p.parse_futures_trade({"product_id": msg["product_id"], **trade},
                                            received_at))

    def _on_fut_snapshot(self, conn: WsConnection, msg: dict, raw: Any) -> None:
        symbol = msg["product_id"]
        bids, asks, seq = p.parse_futures_book_snapshot(msg)
        self.book(PERP, symbol).load_snapshot(bids, asks, seq)
        self.fut_seq[symbol] = seq
        self.resync.synced(PERP, symbol)

    def _on_fut_book(self, conn: WsConnection, msg: dict, raw: Any) -> None:
        symbol = msg["product_id"]
        side, price, qty, seq = p.parse_futures_book_delta(msg)
        book, last = self.books.get((PERP, symbol)), self.fut_seq.get(symbol)
        if book is None or not book.synced or last is None or seq <= last:
            return      # before the snapshot of a (re)subscription, or a repeat
        if seq != last + 1:
            self.fut_seq.pop(symbol, None)
            self.resync.lose(PERP, symbol, "sequence_gap", f"seq {last} -> {seq}")
            return
        self.fut_seq[symbol] = seq
        p.apply_futures_delta(book, side, price, qty, seq)
