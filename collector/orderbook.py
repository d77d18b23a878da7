"""Price-level (L2) order book shared by every exchange.

Levels are kept in a dict plus a sorted key list so the best N levels, depth truncation and
checksums cost O(N) list reads rather than a full sort. Quantities are absolute; a zero quantity
deletes the level and deleting an absent level is a no-op (exchanges document that it happens).
Where an exchange's checksum is computed over its own text, the book can also keep each level's
original strings.
"""
from __future__ import annotations

from bisect import bisect_left, insort
from operator import itemgetter
from typing import Any, Iterable, Iterator, Sequence


class BookSide:
    """One side of the book. Bids are keyed by -price so both sides iterate best-first.

    Representation (chosen for the diff hot path): ``levels`` is a plain dict key -> size and
    ``keys`` the same keys in ascending order (a Python list maintained with ``bisect``). A size
    change of an existing level, the most common update, is one dict store; only inserting or
    deleting a level touches the sorted list (a C-level memmove, cheap for the few thousand
    levels a book holds). Best level and top-N are list reads.
    """

    __slots__ = ("is_bid", "levels", "keys", "text", "frags", "_key_cache")

    def __init__(self, is_bid: bool, keep_text: bool = False,
                 keep_fragments: bool = False) -> None:
        self.is_bid = is_bid
        self.levels: dict[float, float] = {}
        self.keys: list[float] = []
        self._key_cache: dict[str, float] = {}
        # key -> (price text, size text) or one checksum-form string (None: still to be made,
        # see kraken.parsers.book_crc), only for checksum protocols that need the raw strings.
        self.text: dict[float, Any] | None = {} if keep_text else None
        # key -> "price:size" as sent: the pieces of a checksum string (OKX), joined without
        # any float formatting; kept only when asked for.
        self.frags: dict[float, str] | None = {} if keep_fragments else None

    def __len__(self) -> int:
        return len(self.levels)

    def clear(self) -> None:
        self.levels.clear()
        self.keys.clear()
        if self.text is not None:
            self.text.clear()
        if self.frags is not None:
            self.frags.clear()

    def set(self, price: float, size: float, price_text: str = "", size_text: str = "") -> None:
        key = -price if self.is_bid else price
        levels = self.levels
        if size == 0.0:
            if key in levels:
                del levels[key]
                keys = self.keys
                del keys[bisect_left(keys, key)]
            if self.text is not None:
                self.text.pop(key, None)
            if self.frags is not None:
                self.frags.pop(key, None)
        else:
            if key not in levels:
                insort(self.keys, key)
            levels[key] = size
            if self.text is not None:
                self.text[key] = (price_text, size_text)
            if self.frags is not None:
                self.frags[key] = price_text + ":" + size_text

    def apply(self, levels: Iterable[tuple[float, float]]) -> None:
        if self.text is not None or self.frags is not None:
            for price, size in levels:
                self.set(price, size)
            return
        # Hot path (diff streams): set() inlined.
        book = self.levels
        keys = self.keys
        sign = -1.0 if self.is_bid else 1.0
        for price, size in levels:
            key = sign * price
            if size == 0.0:
                if key in book:
                    del book[key]
                    del keys[bisect_left(keys, key)]
            else:
                if key not in book:
                    insort(keys, key)
                book[key] = size

    def apply_text(self, levels: Sequence[Sequence[str]]) -> None:
        """Like ``apply`` for levels still in wire form (``[["price", "qty", ...], ...]``):
        converts while applying, without building intermediate tuples."""
        if self.frags is not None and self.text is None:
            self.apply_text_scaled(levels)
            return
        if self.text is not None or self.frags is not None:
            for level in levels:
                self.set(float(level[0]), float(level[1]), level[0], level[1])
            return
        book = self.levels
        keys = self.keys
        sign = -1.0 if self.is_bid else 1.0
        # Price text -> key: the same few hundred price strings recur in every diff, and a dict
        # hit is cheaper than float() + sign. Pure mapping, so it never goes stale; bounded.
        cache = self._key_cache
        if len(cache) > 16384:
            cache.clear()
        # [price, qty] pairs (Binance) unpack faster than indexing; longer levels (OKX-style
        # [price, qty, ...]) are sliced. All levels of one message must have the same shape.
        pairs = levels if levels and len(levels[0]) == 2 else [lv[:2] for lv in levels]
        for price, qty in pairs:
            # A subscript in a try (free in 3.11 unless it raises) beats cache.get(): misses
            # are rare once the book is warm.
            try:
                key = cache[price]
            except KeyError:
                key = cache[price] = sign * float(price)
            size = float(qty)
            if size == 0.0:
                if key in book:
                    del book[key]
                    del keys[bisect_left(keys, key)]
            else:
                if key not in book:
                    insort(keys, key)
                book[key] = size

    def apply_text_scaled(self, levels: Sequence[Sequence[str]], factor: float = 1.0) -> None:
        """Wire-form levels (``[["price", "size", ...], ...]``, any length) with sizes scaled to
        ``float(size) * factor`` (contracts -> base units); on a side that keeps checksum
        fragments each level's ``"price:size"`` text is kept as sent. ``set`` inlined, prices
        through the key cache."""
        frags = self.frags
        assert self.text is None
        book = self.levels
        keys = self.keys
        sign = -1.0 if self.is_bid else 1.0
        cache = self._key_cache
        if len(cache) > 16384:
            cache.clear()
        for level in levels:
            price_text = level[0]
            try:                                    # see apply_text
                key = cache[price_text]
            except KeyError:
                key = cache[price_text] = sign * float(price_text)
            size = float(level[1]) * factor
            if size == 0.0:
                if key in book:
                    del book[key]
                    del keys[bisect_left(keys, key)]
                    if frags is not None:
                        del frags[key]
            else:
                if key not in book:
                    insort(keys, key)
                book[key] = size
                if frags is not None:
                    frags[key] = price_text + ":" + level[1]

    def keep_fragments(self, keep: bool) -> None:
        """Start or stop keeping checksum fragments; the side is emptied (a snapshot follows)."""
        self.clear()
        self.frags = {} if keep else None

    def top_fragments(self, n: int) -> Sequence[str]:
        """The best ``n`` levels' ``"price:size"`` wire text, best first."""
        frags = self.frags
        assert frags is not None
        top = self.keys[:n]
        if len(top) > 1:
            return itemgetter(*top)(frags)     # one C call for all lookups (a tuple)
        return [frags[key] for key in top]

    def best(self) -> tuple[float, float] | None:
        if not self.keys:
            return None
        key = self.keys[0]
        return (-key if self.is_bid else key), self.levels[key]

    def top(self, n: int) -> list[list[float]]:
        sign = -1.0 if self.is_bid else 1.0
        levels = self.levels
        return [[sign * key, levels[key]] for key in self.keys[:n]]

    def iter_levels(self) -> Iterator[tuple[float, float]]:
        sign = -1.0 if self.is_bid else 1.0
        levels = self.levels
        for key in self.keys:
            yield sign * key, levels[key]

    def truncate(self, depth: int) -> None:
        """Drop levels beyond ``depth`` (exchanges such as Kraken/Bybit never delete them)."""
        keys = self.keys
        if len(keys) <= depth:
            return
        dropped = keys[depth:]
        del keys[depth:]
        levels, text, frags = self.levels, self.text, self.frags
        for key in dropped:
            del levels[key]
            if text is not None:
                text.pop(key, None)
            if frags is not None:
                del frags[key]


class OrderBook:
    """Both sides plus the bookkeeping a feed needs: last update id and sync state."""

    __slots__ = ("bids", "asks", "update_id", "synced", "depth", "changed")

    def __init__(self, depth: int = 1000, keep_text: bool = False,
                 keep_fragments: bool = False) -> None:
        self.bids = BookSide(True, keep_text, keep_fragments)
        self.asks = BookSide(False, keep_text, keep_fragments)
        self.update_id: int | None = None
        self.synced = False
        self.depth = depth
        # Set on every change; the snapshot sampler clears it after storing a snapshot.
        self.changed = False

    def keep_fragments(self, keep: bool) -> None:
        """Checksum fragments on or off on both sides; the book is emptied (a snapshot follows)."""
        self.bids.keep_fragments(keep)
        self.asks.keep_fragments(keep)

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

    def apply_text(self, bids: Sequence[Sequence[str]], asks: Sequence[Sequence[str]],
                   update_id: int | None = None) -> None:
        """``apply`` for wire-form levels. A malformed level raises ValueError/TypeError with
        the book partly updated: the caller must then resync the book."""
        self.bids.apply_text(bids)
        self.asks.apply_text(asks)
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


def apply_text_levels(side: BookSide, levels: Iterable[tuple[float, float, str | None]]) -> None:
    """(price, size, text) levels onto a kept-text side with one text string per level (a
    checksum form made by the parser); size 0 deletes. ``BookSide.set`` inlined: the hot path of
    checksummed books (Kraken)."""
    book, keys, text = side.levels, side.keys, side.text
    assert text is not None
    sign = -1.0 if side.is_bid else 1.0
    for price, size, level_text in levels:
        key = sign * price
        if size == 0.0:
            if key in book:
                del book[key]
                del keys[bisect_left(keys, key)]
            text.pop(key, None)
        else:
            if key not in book:
                insort(keys, key)
            book[key] = size
            text[key] = level_text


def parse_levels(levels: Iterable[Iterable[str]]) -> list[tuple[float, float]]:
    """``[["price", "qty", ...], ...]`` (the common wire shape) -> ``[(price, qty), ...]``."""
    return [(float(level[0]), float(level[1])) for level in levels]  # type: ignore[index]
