"""Price-level (L2) order book shared by every exchange.

Levels are kept in sorted maps so the best N levels, depth truncation and checksums cost
O(N log n) rather than a full sort. Quantities are absolute; a zero quantity deletes the level and
deleting an absent level is a no-op (exchanges document that it happens). Where an exchange's
checksum is computed over its own text, the book can also keep each level's original strings.
"""
from __future__ import annotations

from typing import Iterable, Iterator

from sortedcontainers import SortedDict


class BookSide:
    """One side of the book. Bids are keyed by -price so both sides iterate best-first."""

    __slots__ = ("is_bid", "levels", "text")

    def __init__(self, is_bid: bool, keep_text: bool = False) -> None:
        self.is_bid = is_bid
        self.levels: SortedDict = SortedDict()
        # price -> (price text, size text), only for checksum protocols that need the raw strings.
        self.text: dict[float, tuple[str, str]] | None = {} if keep_text else None

    def __len__(self) -> int:
        return len(self.levels)

    def clear(self) -> None:
        self.levels.clear()
        if self.text is not None:
            self.text.clear()

    def set(self, price: float, size: float, price_text: str = "", size_text: str = "") -> None:
        key = -price if self.is_bid else price
        if size == 0.0:
            self.levels.pop(key, None)
            if self.text is not None:
                self.text.pop(price, None)
        else:
            self.levels[key] = size
            if self.text is not None:
                self.text[price] = (price_text, size_text)

    def apply(self, levels: Iterable[tuple[float, float]]) -> None:
        if self.text is not None:
            for price, size in levels:
                self.set(price, size)
            return
        # Hot path (diff streams): inlined set(). A size change of an existing level (the most
        # common update) is a plain dict store: the sorted key list does not change.
        book = self.levels
        contains = book.__contains__
        dict_set = dict.__setitem__
        sign = -1.0 if self.is_bid else 1.0
        for price, size in levels:
            key = sign * price
            if size == 0.0:
                if contains(key):
                    del book[key]
            elif contains(key):
                dict_set(book, key, size)
            else:
                book[key] = size

    def best(self) -> tuple[float, float] | None:
        if not self.levels:
            return None
        key, size = self.levels.peekitem(0)
        return (-key if self.is_bid else key), size

    def top(self, n: int) -> list[list[float]]:
        sign = -1.0 if self.is_bid else 1.0
        levels = self.levels
        return [[sign * key, levels[key]] for key in levels.islice(0, n)]

    def iter_levels(self) -> Iterator[tuple[float, float]]:
        sign = -1.0 if self.is_bid else 1.0
        for key, size in self.levels.items():
            yield sign * key, size

    def truncate(self, depth: int) -> None:
        """Drop levels beyond ``depth`` (exchanges such as Kraken/Bybit never delete them)."""
        levels = self.levels
        while len(levels) > depth:
            key, _ = levels.popitem(-1)
            if self.text is not None:
                self.text.pop(-key if self.is_bid else key, None)


class OrderBook:
    """Both sides plus the bookkeeping a feed needs: last update id and sync state."""

    __slots__ = ("bids", "asks", "update_id", "synced", "depth", "changed")

    def __init__(self, depth: int = 1000, keep_text: bool = False) -> None:
        self.bids = BookSide(True, keep_text)
        self.asks = BookSide(False, keep_text)
        self.update_id: int | None = None
        self.synced = False
        self.depth = depth
        # Set on every change; the snapshot sampler clears it after storing a snapshot.
        self.changed = False

    def reset(self) -> None:
        self.bids.clear()
        self.asks.clear()
        self.update_id = None
        self.synced = False
        self.changed = True

    def load_snapshot(self, bids: Iterable[tuple[float, float]], asks: Iterable[tuple[float, float]],
                      update_id: int | None = None) -> None:
        self.bids.clear()
        self.asks.clear()
        self.bids.apply(bids)
        self.asks.apply(asks)
        self.update_id = update_id
        self.synced = True
        self.changed = True

    def apply(self, bids: Iterable[tuple[float, float]], asks: Iterable[tuple[float, float]],
              update_id: int | None = None) -> None:
        self.bids.apply(bids)
        self.asks.apply(asks)
        if update_id is not None:
            self.update_id = update_id
        self.changed = True

    def truncate(self, depth: int | None = None) -> None:
        self.bids.truncate(depth or self.depth)
        self.asks.truncate(depth or self.depth)

    def best_bid(self) -> tuple[float, float] | None:
        return self.bids.best()

    def best_ask(self) -> tuple[float, float] | None:
        return self.asks.best()

    def mid(self) -> float | None:
        bid, ask = self.bids.best(), self.asks.best()
        if bid is None or ask is None:
            return None
        return (bid[0] + ask[0]) / 2.0

    def crossed(self) -> bool:
        bid, ask = self.bids.best(), self.asks.best()
        return bid is not None and ask is not None and bid[0] >= ask[0]


def parse_levels(levels: Iterable[Iterable[str]]) -> list[tuple[float, float]]:
    """``[["price", "qty", ...], ...]`` (the common wire shape) -> ``[(price, qty), ...]``."""
    return [(float(level[0]), float(level[1])) for level in levels]  # type: ignore[index]
