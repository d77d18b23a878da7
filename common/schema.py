"""The normalized record schema: the contract between the collector and the API.

Every record, whatever the exchange, carries:

- ``exchange``    lower-case exchange id: binance, bybit, kraken, gateio, okx.
- ``symbol``      the exchange's native instrument name (``BTCUSDT``, ``BTC/USD``, ``BTC_USDT``,
                  ``BTC-USDT-SWAP``, ``PF_XBTUSD``).
- ``pair``        normalized ``BASE/QUOTE`` with exchange aliases resolved (XBT -> BTC).
- ``market``      ``spot`` or ``perp`` (linear perpetual swap).
- ``ts``          exchange event time, UTC (BSON date, millisecond precision).
- ``received_at`` local receive time, UTC (BSON date).
- ``t``           ``ts`` as integer epoch milliseconds (stored documents only, added by
                  ``to_doc``): the key history reads sort, range and page on and retention deletes
                  by. An integer because nx-27017 serves integer ranges from its indexes and scans
                  for date ranges; ``ts`` stays a BSON date for users and the TTL index.
- ``rt``          ``received_at`` as integer epoch milliseconds (stored documents only, added by
                  ``to_doc``): the key the ``/ws`` poller follows new records by, for the same
                  reason.

Numbers: prices, sizes and rates are stored as BSON doubles. Exchanges send decimal strings with at
most ~12 significant digits for these instruments; a double holds 15-17, so ``float(text)`` keeps
the exact decimal value (``repr`` gives the original text back, minus trailing zeros). Order-book
checksums are computed from the exchange's own strings inside the collector and never from stored
doubles. Sizes are always in **base-asset units**: adapters multiply contract counts by the
contract size (OKX ``ctVal``, Gate ``quanto_multiplier``) before a record is built.

Sides: ``side`` on a trade is the **taker** (aggressor) side, ``buy`` or ``sell``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar

UTC = timezone.utc

SPOT = "spot"
PERP = "perp"

# Collection names, one per data type.
MARKET_DATA = "market_data"
ORDER_BOOK = "order_book"
TRADES = "trades"
OHLCV = "ohlcv"
FUNDING_RATES = "funding_rates"
OPEN_INTEREST = "open_interest"
VOLUME_LIQUIDITY = "volume_liquidity"
DATA_COLLECTIONS = (
    MARKET_DATA, ORDER_BOOK, TRADES, OHLCV, FUNDING_RATES, OPEN_INTEREST, VOLUME_LIQUIDITY,
)
# One document per (exchange, market, symbol, type): the newest record of each data type.
LATEST = "latest"
# Collector heartbeat/status documents (one per collector process).
STATUS = "status"
# Interruptions of streams (see collector.gaps).
GAPS = "gaps"


_fromtimestamp = datetime.fromtimestamp     # positional tz: ~2x cheaper than tz=UTC
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_MS = timedelta(milliseconds=1)
# The integer time keys of stored documents (see the module docstring).
TIME_KEY = "t"
RECEIVED_KEY = "rt"
# Storage keys, not record fields: the API leaves them out of its answers.
STORAGE_KEYS = (TIME_KEY, RECEIVED_KEY)


def time_key(dt: datetime) -> int:
    """Aware datetime -> epoch milliseconds, floored exactly as BSON stores the date (integer
    arithmetic: no float rounding at microsecond boundaries)."""
    return (dt - EPOCH) // ONE_MS


# (datetime, its time key) of the last conversion: always a true pair, as to_doc trusts it.
_ts_ms = 0
_ts_dt = EPOCH


def ms_to_dt(ms: int | float | str) -> datetime:
    """Epoch milliseconds (number or numeric string) -> aware UTC datetime. Out-of-range values
    raise ValueError (not OverflowError/OSError), like every other malformed field.

    The last conversion is kept: the records of one burst (one match's fills, a ticker and its
    funding) share one datetime, and ``to_doc`` reads its time key back instead of computing it.
    """
    global _ts_ms, _ts_dt
    try:
        n = int(ms)
        if n != _ts_ms:
            _ts_dt, _ts_ms = _fromtimestamp(n / 1000.0, UTC), n
    except (OverflowError, OSError) as exc:
        raise ValueError(f"timestamp out of range: {ms!r}") from exc
    return _ts_dt


def s_to_dt(seconds: int | float | str) -> datetime:
    try:
        return datetime.fromtimestamp(float(seconds), tz=UTC)
    except (OverflowError, OSError) as exc:
        raise ValueError(f"timestamp out of range: {seconds!r}") from exc


def now_utc() -> datetime:
    return datetime.now(UTC)


_received_ms = 0
_received_dt = datetime.fromtimestamp(0, UTC)


def received_now(_time=time.time) -> datetime:
    """Receive timestamp for the message hot path: now, truncated to the millisecond.

    BSON dates hold milliseconds, so truncating loses nothing that is stored; the datetime is
    built once per millisecond and shared by every message received in it (a burst read from one
    socket buffer), instead of once per message.
    """
    global _received_ms, _received_dt
    ms = int(_time() * 1000)
    if ms != _received_ms:
        _received_ms = ms
        _received_dt = _fromtimestamp(ms / 1000.0, UTC)
    return _received_dt


# Price text -> float, shared by the parsers' hot paths. Prices on a live stream recur (they sit
# on the tick grid near the current price; 24 h open/high/low change rarely), so a dict hit
# (~50 ns) replaces float() of a decimal string (~200 ns). Sizes and volumes almost never
# repeat: not cached. Bounded: cleared when full. Use ``price_hit(text) or price_miss(text)``:
# a miss (or a cached 0.0) converts with float(), so malformed text raises exactly as float().
_PRICES: dict[str, float] = {}
_PRICES_MAX = 8192
price_hit = _PRICES.get


def price_miss(text: str) -> float:
    value = float(text)
    if len(_PRICES) >= _PRICES_MAX:
        _PRICES.clear()
    _PRICES[text] = value
    return value


def opt_float(value: Any) -> float | None:
    """Exchange numeric text -> float; empty strings and None mean 'not provided'."""
    if value is None or value == "":
        return None
    return float(value)


def strict_int(value: Any) -> int:
    """``int()`` whose overflow (``int(inf)``) is a ValueError like any other malformed number."""
    try:
        return int(value)
    except OverflowError as exc:
        raise ValueError(f"not an integer: {value!r}") from exc


@dataclass(slots=True)
class Record:
    """Fields every record shares. Subclasses set ``collection``."""

    collection: ClassVar[str] = ""
    # Extra fields that make a record unique in its collection besides exchange/market/symbol.
    unique_fields: ClassVar[tuple[str, ...]] = ()

    exchange: str
    symbol: str
    pair: str
    market: str
    ts: datetime
    received_at: datetime

    def to_doc(self) -> dict[str, Any]:
        return to_doc(self)


def _all_slots(cls: type) -> tuple[str, ...]:
    names: list[str] = []
    for klass in reversed(cls.__mro__):
        names.extend(getattr(klass, "__slots__", ()))
    return tuple(names)


@dataclass(slots=True)
class Ticker(Record):
    """Best bid/ask, last trade and 24 h rolling statistics (``market_data``).

    ``volume_24h`` is in base units, ``quote_volume_24h`` in quote units, ``change_pct_24h`` in
    percent. ``mark_price``/``index_price`` only for perps. Missing fields are None.
    """

    collection: ClassVar[str] = MARKET_DATA

    last: float | None = None
    bid: float | None = None
    bid_size: float | None = None
    ask: float | None = None
    ask_size: float | None = None
    open_24h: float | None = None
    high_24h: float | None = None
    low_24h: float | None = None
    volume_24h: float | None = None
    quote_volume_24h: float | None = None
    change_pct_24h: float | None = None
    mark_price: float | None = None
    index_price: float | None = None


@dataclass(slots=True)
class Trade(Record):
    """One public trade (``trades``). ``side`` is the taker side; ``size`` in base units.

    ``trade_id`` is the exchange's id as text; with exchange/market/symbol it is unique, so
    re-inserting trades after a reconnect or backfill is harmless.
    """

    collection: ClassVar[str] = TRADES
    unique_fields: ClassVar[tuple[str, ...]] = ("trade_id",)

    trade_id: str = ""
    price: float = 0.0
    size: float = 0.0
    side: str = ""


@dataclass(slots=True)
class BookSnapshot(Record):
    """Top-N levels of the live L2 book (``order_book``).

    ``bids`` high->low and ``asks`` low->high as ``[price, size]`` pairs, size in base units.
    ``update_id`` is the exchange's book sequence (update id / seqId) when it has one.
    """

    collection: ClassVar[str] = ORDER_BOOK

    bids: list[list[float]] = field(default_factory=list)
    asks: list[list[float]] = field(default_factory=list)
    depth: int = 0
    update_id: int | None = None


@dataclass(slots=True)
class Candle(Record):
    """OHLCV candle (``ohlcv``). ``ts`` is the candle open time; upserted until ``closed``.

    ``volume`` in base units, ``quote_volume`` in quote units, ``trades`` the trade count when
    the exchange gives one. ``source`` is ``exchange`` (the exchange's own candles) or
    ``trades`` (built by the collector from the stored trades where the exchange serves no
    candles for that market).
    """

    collection: ClassVar[str] = OHLCV
    unique_fields: ClassVar[tuple[str, ...]] = ("interval", "ts")

    interval: str = "1m"
    open: float = 0.0
    high: float = 0.0
    low: float = 0.0
    close: float = 0.0
    volume: float | None = None
    quote_volume: float | None = None
    trades: int | None = None
    closed: bool = False
    source: str = "exchange"


@dataclass(slots=True)
class Funding(Record):
    """Perpetual funding (``funding_rates``).

    ``rate`` is the current period's funding rate as a fraction of position value per funding
    interval (0.0001 = 0.01 %), comparable across exchanges. ``interval_hours`` when known.
    """

    collection: ClassVar[str] = FUNDING_RATES
    unique_fields: ClassVar[tuple[str, ...]] = ("ts",)

    rate: float = 0.0
    next_funding_time: datetime | None = None
    predicted_rate: float | None = None
    mark_price: float | None = None
    index_price: float | None = None
    interval_hours: float | None = None


@dataclass(slots=True)
class OpenInterest(Record):
    """Open interest of a perpetual (``open_interest``): ``open_interest`` in base units,
    ``open_interest_value`` in quote (USD-like) units when the exchange provides or implies it."""

    collection: ClassVar[str] = OPEN_INTEREST
    unique_fields: ClassVar[tuple[str, ...]] = ("ts",)

    open_interest: float = 0.0
    open_interest_value: float | None = None


@dataclass(slots=True)
class Liquidity(Record):
    """Volume and liquidity derived from the live book and ticker (``volume_liquidity``).

    ``spread_bps`` = (ask - bid) / mid * 10^4. ``bid_depth_<N>bps`` / ``ask_depth_<N>bps``: base
    units resting within N basis points of mid (10 = 0.1 %, 50 = 0.5 %, 100 = 1 %);
    ``*_quote`` fields: the same in quote units (sum of price * size). 24 h volumes come from the
    latest ticker (base / quote units).
    """

    collection: ClassVar[str] = VOLUME_LIQUIDITY

    mid: float | None = None
    spread_bps: float | None = None
    bid_depth_10bps: float = 0.0
    ask_depth_10bps: float = 0.0
    bid_depth_50bps: float = 0.0
    ask_depth_50bps: float = 0.0
    bid_depth_100bps: float = 0.0
    ask_depth_100bps: float = 0.0
    bid_depth_10bps_quote: float = 0.0
    ask_depth_10bps_quote: float = 0.0
    bid_depth_50bps_quote: float = 0.0
    ask_depth_50bps_quote: float = 0.0
    bid_depth_100bps_quote: float = 0.0
    ask_depth_100bps_quote: float = 0.0
    volume_24h: float | None = None
    quote_volume_24h: float | None = None


RECORD_TYPES: tuple[type[Record], ...] = (
    Ticker, Trade, BookSnapshot, Candle, Funding, OpenInterest, Liquidity,
)
# Field names per record class, computed once (dataclass slots are split along the hierarchy).
FIELDS: dict[type[Record], tuple[str, ...]] = {cls: _all_slots(cls) for cls in RECORD_TYPES}


def _compile_to_doc(cls: type[Record]):
    """A per-class ``record -> dict`` function with the field names unrolled (one dict display,
    no getattr loop): about 2x cheaper than the generic comprehension on the hot path. The
    document also gets the integer time keys (``time_key`` of ``ts`` and ``received_at``
    inlined). ``received_at`` is almost always the datetime ``received_now`` shares for the
    current millisecond and ``ts`` often the one ``ms_to_dt`` made last, whose keys they already
    know: an identity test instead of the datetime arithmetic (~150 ns each)."""
    fields = FIELDS[cls]
    body = ", ".join(f"{name!r}: r.{name}" for name in fields)
    # time_key(ts), exact: days and seconds are whole milliseconds (~40 ns under ``// ONE_MS``)
    body += (f", {TIME_KEY!r}: _ts_ms if r.ts is _ts_dt else"
             " (d := r.ts - EPOCH).days * 86400000 + d.seconds * 1000 + d.microseconds // 1000")
    body += (f", {RECEIVED_KEY!r}: _received_ms if r.received_at is _received_dt"
             f" else (r.received_at - EPOCH) // ONE_MS")
    # Compiled in this module's namespace: the function reads received_now's current globals.
    exec(f"def to_doc_{cls.__name__}(r):\n    return {{{body}}}\n", globals())  # noqa: S102
    return globals()[f"to_doc_{cls.__name__}"]


_TO_DOC = {cls: _compile_to_doc(cls) for cls in RECORD_TYPES}
# ... and installed as each class's ``to_doc`` method, so ``record.to_doc()`` (the writer's
# per-record call) is one call with no type lookup (Record.to_doc stays the generic fallback).
for _cls, _fn in _TO_DOC.items():
    _cls.to_doc = _fn  # type: ignore[method-assign]


def to_doc(record: Record) -> dict[str, Any]:
    """Record -> MongoDB document (a flat dict of its fields plus the time keys ``t``, ``rt``)."""
    convert = _TO_DOC.get(type(record))
    if convert is None:
        doc = {name: getattr(record, name) for name in _all_slots(type(record))}
        doc[TIME_KEY] = time_key(record.ts)
        doc[RECEIVED_KEY] = time_key(record.received_at)
        return doc
    return convert(record)


def latest_id(record: Record) -> str:
    """_id of the record's document in the ``latest`` collection."""
    return f"{record.exchange}:{record.market}:{record.symbol}:{record.collection}"
