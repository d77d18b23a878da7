"""A venue's declarative description, and the subscription plan built from it.

An exchange's ``endpoints.py`` exports one ``VenueSpec``: its connections (market, URL setting and
path, channels, heartbeat rule), its limits (connection rate, subscriptions and request size per
connection, REST budget) and its book protocol. The base feed reads it to build connections and
subscriptions, split to the venue's per-connection limits and to this process's partition, and to
pick each connection's idle threshold. Exchange code only formats the subscribe requests.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from collector.connection import HeartbeatPolicy

# Expected worst-case silence per idle class (seconds); a connection's idle watchdog uses the
# shortest among its channels: books/tickers push every 100 ms-1 s, mark price every 1-3 s,
# candles every ~2 s, while trades (and 1-minute statistics) on a quiet symbol pause for minutes.
# "quiet": channels that push only on change and whose venue keep-alive comes about once a
# minute (a no-change book message every ~60 s), so a shorter threshold cuts healthy connections.
IDLE_S = {"book": 10.0, "ticker": 20.0, "funding": 15.0, "kline": 30.0, "trades": 300.0,
          "quiet": 70.0}

SNAPSHOT_DIFF = "snapshot_diff"   # REST snapshot spliced with buffered WS diffs (Binance, Gate.io)
RESUBSCRIBE = "resubscribe"       # a (re)subscription pushes a fresh snapshot (Bybit, OKX, Kraken)


@dataclass(frozen=True)
class Channel:
    """One subscribable channel. ``name`` is the wire name (topic prefix, channel, stream
    template); ``kind`` the data it carries (ticker | trades | book | kline | funding |
    open_interest); ``stream`` the name it is partitioned by (kept per venue so ownership never
    moves) and ``idle`` its ``IDLE_S`` class; both default to ``kind``."""

    name: str
    kind: str
    stream: str = ""
    idle: str = ""

    @property
    def partition_stream(self) -> str:
        return self.stream or self.kind

    @property
    def idle_class(self) -> str:
        return self.idle or self.kind


@dataclass(frozen=True)
class ConnectionSpec:
    """One kind of WebSocket connection: ``url`` names the settings field with the base URL
    (``spot_ws_url`` / ``perp_ws_url``), ``path`` is appended to it; ``headers`` are sent with
    the opening handshake (venue switches that change the wire format)."""

    label: str
    market: str
    url: str
    channels: tuple[Channel, ...]
    path: str = ""
    heartbeat: HeartbeatPolicy = HeartbeatPolicy()
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Limits:
    """Per-venue limits the plan and the connection layer keep to (0 = no limit)."""

    connect_interval_s: float = 0.5          # per IP: multiplied by the partition count
    backoff_max_s: float = 60.0
    subscriptions_per_connection: int = 0    # streams/topics one connection may carry
    arg_chars_per_connection: int = 0        # total length of the subscription arguments
    args_per_request: int = 0                # arguments in one subscribe request
    request_interval_s: float = 0.0          # pause between requests sent on one connection
    rest_weight_per_window: float = 600.0
    rest_window_s: float = 60.0


@dataclass(frozen=True)
class VenueSpec:
    name: str
    connections: tuple[ConnectionSpec, ...]
    limits: Limits = Limits()
    book_protocol: str = RESUBSCRIBE


@dataclass(frozen=True)
class Subscription:
    channel: Channel
    market: str
    symbol: str


@dataclass
class ConnMeta:
    """What the feed knows about one of its connections (typed; set once, at construction)."""

    spec: ConnectionSpec
    label: str
    url: str
    subscriptions: tuple[Subscription, ...]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def market(self) -> str:
        return self.spec.market

    def symbols(self, kind: str | None = None) -> list[str]:
        """Symbols this connection carries (of one data kind), in subscription order."""
        return list(dict.fromkeys(s.symbol for s in self.subscriptions
                                  if kind is None or s.channel.kind == kind))

    @property
    def kinds(self) -> set[str]:
        return {s.channel.kind for s in self.subscriptions}

    @property
    def carries_books(self) -> bool:
        return "book" in self.kinds

    def idle_timeout_s(self, default: float) -> float:
        return min((IDLE_S.get(s.channel.idle_class, default) for s in self.subscriptions),
                   default=default)


def plan_connections(spec: VenueSpec, symbols: Callable[[str], Sequence[str]],
                     owns: Callable[[str, str, str], bool], base_url: Callable[[str], str],
                     arg_text: Callable[[Subscription], str] = lambda s: s.channel.name + s.symbol,
                     ) -> list[tuple[ConnectionSpec, str, str, list[Subscription]]]:
    """(spec, label, url, subscriptions) for every connection this process opens.

    A symbol's channels on one connection kind stay together (its book and ticker share a
    socket); symbols are packed into as many connections as the venue's per-connection limits
    need, labelled ``<label>``, ``<label>-2``, ... Connections without subscriptions are left out.
    """
    limits = spec.limits
    out: list[tuple[ConnectionSpec, str, str, list[Subscription]]] = []
    for conn_spec in spec.connections:
        base = base_url(conn_spec.url)
        if not base:
            continue
        url = base.rstrip("/") + conn_spec.path if conn_spec.path else base
        groups: list[list[Subscription]] = []
        for symbol in symbols(conn_spec.market):
            group = [Subscription(ch, conn_spec.market, symbol) for ch in conn_spec.channels
                     if owns(conn_spec.market, symbol, ch.partition_stream)]
            if group:
                groups.append(group)
        chunks: list[list[Subscription]] = []
        count = chars = 0
        for group in groups:
            size = len(group)
            text = sum(len(arg_text(s)) for s in group)
            full = chunks and (
                (limits.subscriptions_per_connection and
                 count + size > limits.subscriptions_per_connection) or
                (limits.arg_chars_per_connection and
                 chars + text > limits.arg_chars_per_connection))
            if not chunks or full:
                chunks.append([])
                count = chars = 0
            chunks[-1].extend(group)
            count += size
            chars += text
        for i, chunk in enumerate(chunks):
            label = conn_spec.label if i == 0 else f"{conn_spec.label}-{i + 1}"
            out.append((conn_spec, label, url, chunk))
    return out


def batches(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    """``items`` in consecutive batches of at most ``size`` (all in one when ``size`` is 0)."""
    if not size:
        return [items] if items else []
    return [items[i:i + size] for i in range(0, len(items), size)]
