"""Kraken subscribe requests and how their replies are attributed.

Spot v2 echoes the ``req_id``; a reply is judged by the request it answers, not by its own
``method``: a failed unsubscribe comes back as ``{"error":"Subscription Not Found",
"method":"subscribe",...}``. Futures v1 errors name no product (``{"event":"error",
"message":"Invalid product id"}``): one request per product and feed, and an error belongs to
the oldest request not answered yet (v1 answers in order).
"""
from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any

import orjson

SENT_KEPT = 4096       # spot requests remembered by req_id


class SpotRequests:
    def __init__(self) -> None:
        self.last_id = 0
        self.sent: OrderedDict[int, tuple[str, str]] = OrderedDict()   # req_id -> (method, channel)

    def request(self, channel: str, symbols: list[str] | None, method: str = "subscribe",
                **params: Any) -> str:
        self.last_id += 1
        self.sent[self.last_id] = (method, channel)
        if len(self.sent) > SENT_KEPT:
            self.sent.popitem(last=False)
        body: dict[str, Any] = {"channel": channel, **params}
        if symbols is not None:
            body["symbol"] = symbols
        return orjson.dumps({"method": method, "params": body, "req_id": self.last_id}).decode()

    def asked(self, reply: dict) -> tuple[Any, Any]:
        """(method, channel) of the request ``reply`` answers (the reply's own without a known
        ``req_id``)."""
        asked = self.sent.get(reply.get("req_id"))    # type: ignore[arg-type]
        if asked is not None:
            return asked
        return reply.get("method"), (reply.get("result") or {}).get("channel")


class FuturesRequests:
    def __init__(self) -> None:
        self.pending: deque[tuple[str, str | None]] = deque()     # (feed, product) in order

    def request(self, event: str, feed: str, product: str | None) -> str:
        self.pending.append((feed, product))
        body: dict[str, Any] = {"event": event, "feed": feed}
        if product is not None:
            body["product_ids"] = [product]
        return orjson.dumps(body).decode()

    def answered(self, reply: dict) -> tuple[str | None, str | None]:
        """Forget the request ``reply`` answers; for an error, the (feed, product) it is about."""
        event = reply.get("event")
        if event in ("subscribed", "unsubscribed"):
            feed = str(reply.get("feed"))
            for product in reply.get("product_ids") or [None]:
                if (feed, product) in self.pending:
                    self.pending.remove((feed, product))
        elif event in ("error", "subscribed_failed", "unsubscribed_failed") and self.pending:
            return self.pending.popleft()
        return None, None
