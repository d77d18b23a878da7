"""Scale-out: split one exchange's subscriptions across N collector processes.

``Settings.partition`` is ``"i/N"`` (index ``i`` of ``N`` processes, 0-based) or ``""`` (one
process owns everything). Each subscription, identified by (exchange, market, symbol, stream), is
owned by exactly one partition: ``crc32(key) % N == i``. crc32 is stable across processes, hosts
and Python versions (unlike ``hash()``, which is salted per process), so every process computes the
same split without coordinating, and adding symbols never moves the others' ownership unless N
changes.

Feeds call :func:`owns` (or :func:`select`) while building their subscription lists.
"""
from __future__ import annotations

import zlib
from typing import Iterable, TypeVar

T = TypeVar("T")


def parse_partition(spec: str | None) -> tuple[int, int]:
    """``"i/N"`` -> ``(i, N)``; empty/None -> ``(0, 1)``. Raises ValueError on nonsense."""
    if not spec:
        return 0, 1
    try:
        index_text, count_text = spec.split("/")
        index, count = int(index_text), int(count_text)
    except ValueError:
        raise ValueError(f"partition must look like 'i/N', got {spec!r}") from None
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"partition index must satisfy 0 <= i < N, got {spec!r}")
    return index, count


def subscription_key(exchange: str, market: str, symbol: str, stream: str) -> str:
    return f"{exchange}|{market}|{symbol.upper()}|{stream}"


def owner(exchange: str, market: str, symbol: str, stream: str, count: int) -> int:
    """Index of the partition that owns this subscription among ``count`` partitions."""
    if count <= 1:
        return 0
    key = subscription_key(exchange, market, symbol, stream).encode()
    return zlib.crc32(key) % count


def owns(spec: str | None, exchange: str, market: str, symbol: str, stream: str) -> bool:
    index, count = parse_partition(spec)
    return owner(exchange, market, symbol, stream, count) == index


def select(spec: str | None, exchange: str, market: str,
           subscriptions: Iterable[tuple[str, str, T]]) -> list[T]:
    """Keep the items whose (symbol, stream) this partition owns.

    ``subscriptions`` yields ``(symbol, stream, item)``; the items are returned in order.
    """
    index, count = parse_partition(spec)
    return [item for symbol, stream, item in subscriptions
            if owner(exchange, market, symbol, stream, count) == index]
