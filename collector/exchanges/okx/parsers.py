"""Pure OKX v5 parsers: decoded message (+ receive time, contract value) -> normalized records.

No sockets, clocks or I/O. Malformed input raises KeyError/ValueError/TypeError.
SWAP sizes are contracts on the wire; they are multiplied by ``ct_val`` (ctVal, base units per
contract; 0.01 BTC for BTC-USDT-SWAP) so that every record holds base units.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable, Sequence

from collector.booksync import Diff
from collector.exchanges.okx import endpoints
from collector.orderbook import OrderBook
from common.schema import (
    Candle, Funding, OpenInterest, Ticker, Trade, ms_to_dt, opt_float, price_hit, price_miss,
    strict_int,
)
from common.symbols import pair_from_symbol

EXCHANGE = "okx"


_int = strict_int


def market_of(inst_id: str) -> str:
    return "perp" if inst_id.endswith(endpoints.SWAP_SUFFIX) else "spot"


def _mul(value: Any, factor: float) -> float | None:
    v = opt_float(value)
    return None if v is None else v * factor


def data_of(msg: dict[str, Any]) -> list[Any]:
    data = msg["data"]
    if not isinstance(data, list):
        raise TypeError("data is not an array")
    return data


# ---- tickers ---------------------------------------------------------------------------------
def parse_tickers(msg: dict[str, Any], received_at: datetime, ct_val: float = 1.0) -> list[Ticker]:
    out = []
    hit, miss = price_hit, price_miss
    for item in data_of(msg):
        inst = item["instId"]
        get = item.get
        market = market_of(inst)
        factor = ct_val if market == "perp" else 1.0
        # OKX sends decimal strings; absent and "" mean "not provided" (opt_float's rule,
        # inlined: ten fields per ticker). Prices through the shared text -> float cache.
        last = (hit(v) or miss(v)) if (v := get("last")) else None
        open_24h = (hit(v) or miss(v)) if (v := get("open24h")) else None
        if market == "perp":
            # SWAP: vol24h in contracts, volCcy24h in base coin; quote volume = base * price.
            volume = opt_float(get("volCcy24h"))
            if volume is None:
                volume = _mul(get("vol24h"), factor)
            quote = volume * last if volume is not None and last is not None else None
        else:
            volume = float(v) if (v := get("vol24h")) else None
            quote = float(v) if (v := get("volCcy24h")) else None
        change = (last - open_24h) / open_24h * 100.0 if last is not None and open_24h else None
        out.append(Ticker(
            EXCHANGE, inst, pair_from_symbol(inst), market, ms_to_dt(item["ts"]), received_at,
            last,
            (hit(v) or miss(v)) if (v := get("bidPx")) else None,
            float(v) * factor if (v := get("bidSz")) else None,
            (hit(v) or miss(v)) if (v := get("askPx")) else None,
            float(v) * factor if (v := get("askSz")) else None,
            open_24h,
            (hit(v) or miss(v)) if (v := get("high24h")) else None,
            (hit(v) or miss(v)) if (v := get("low24h")) else None,
            volume, quote, change))
    return out


# ---- trades ----------------------------------------------------------------------------------
def parse_trades(msg: dict[str, Any], received_at: datetime, ct_val: float = 1.0) -> list[Trade]:
    out = []
    for item in data_of(msg):
        inst = item["instId"]
        market = market_of(inst)
        side = item["side"]
        if side not in ("buy", "sell"):
            raise ValueError(f"unknown side {side!r}")
        size = float(item["sz"]) * (ct_val if market == "perp" else 1.0)
        out.append(Trade(EXCHANGE, inst, pair_from_symbol(inst), market, ms_to_dt(item["ts"]),
                         received_at, trade_id=str(item["tradeId"]), price=float(item["px"]),
                         size=size, side=side))
    return out


def rest_data(payload: dict[str, Any]) -> list[Any]:
    """``{"code":"0","msg":"","data":[...]}`` -> data; any other code raises ValueError."""
    if str(payload.get("code")) != "0":
        raise ValueError(f"code {payload.get('code')}: {payload.get('msg')}")
    return data_of(payload)


def parse_rest_trades(payload: dict[str, Any], received_at: datetime,
                      ct_val: float = 1.0) -> list[Trade]:
    """``GET /api/v5/market/trades``: the same objects as the ``trades`` channel."""
    rest_data(payload)
    return parse_trades(payload, received_at, ct_val)


def parse_rest_candles(payload: dict[str, Any], inst_id: str, bar: str, received_at: datetime,
                       ct_val: float = 1.0) -> list[Candle]:
    """``GET /api/v5/market/candles`` rows (newest first, the WS row layout with ``confirm``)
    -> candles oldest first."""
    rows = rest_data(payload)
    candles = parse_candles({"arg": {"channel": f"candle{bar}", "instId": inst_id},
                             "data": rows}, received_at, ct_val)
    return sorted(candles, key=lambda c: c.ts)


def trade_id_range(item: dict[str, Any]) -> tuple[int, int]:
    """The fill ids one trade object stands for: ``trades-all`` (and REST) objects are one fill;
    a ``trades`` aggregate (``count`` > 1) covers ``count`` fills ending at its ``tradeId``
    (documented: ``tradeId`` is the LAST fill id; 123 with count 3 covers 121..123)."""
    trade_id = _int(item["tradeId"])
    count = item.get("count")
    if not count:
        return trade_id, trade_id
    return trade_id - (_int(count) - 1), trade_id


# ---- candles ---------------------------------------------------------------------------------
def candle_interval(channel: str) -> str:
    """``candle1m`` -> ``1m``; ``candle1H`` -> ``1h``; ``candle1D`` -> ``1d``; ``candle1M`` stays."""
    if not channel.startswith("candle"):
        raise ValueError(f"not a candle channel: {channel!r}")
    bar = channel[len("candle"):]
    if bar[-1:] in ("H", "D", "W"):
        return bar.lower()
    return bar


def parse_candles(msg: dict[str, Any], received_at: datetime, ct_val: float = 1.0) -> list[Candle]:
    arg = msg["arg"]
    inst = arg["instId"]
    market = market_of(inst)
    interval = candle_interval(arg["channel"])
    out = []
    for row in data_of(msg):
        ts, o, h, low, c, vol, vol_ccy = row[:7]
        vol_quote = row[7] if len(row) > 8 else None
        confirm = row[-1]
        if market == "perp":
            volume = opt_float(vol_ccy)           # base coin for derivatives
            if volume is None:
                volume = _mul(vol, ct_val)
            quote = opt_float(vol_quote)
        else:
            volume = float(vol)                   # base for spot
            quote = opt_float(vol_quote)
            if quote is None:
                quote = opt_float(vol_ccy)        # quote for spot
        out.append(Candle(EXCHANGE, inst, pair_from_symbol(inst), market, ms_to_dt(ts),
                          received_at, interval=interval, open=float(o), high=float(h),
                          low=float(low), close=float(c), volume=volume, quote_volume=quote,
                          closed=str(confirm) == "1"))
    return out


# ---- funding / open interest -----------------------------------------------------------------
def parse_funding(msg: dict[str, Any], received_at: datetime) -> list[Funding]:
    out = []
    for item in data_of(msg):
        inst = item["instId"]
        funding_time = opt_float(item.get("fundingTime"))
        next_time = opt_float(item.get("nextFundingTime"))
        interval = (next_time - funding_time) / 3_600_000 if funding_time and next_time else None
        out.append(Funding(
            EXCHANGE, inst, pair_from_symbol(inst), "perp", ms_to_dt(item["ts"]), received_at,
            rate=float(item["fundingRate"]),
            # fundingTime is the settlement time of the current period's rate.
            next_funding_time=ms_to_dt(_int(funding_time)) if funding_time else None,
            predicted_rate=opt_float(item.get("nextFundingRate")),
            interval_hours=interval))
    return out


def parse_open_interest(msg: dict[str, Any], received_at: datetime,
                        ct_val: float = 1.0) -> list[OpenInterest]:
    out = []
    for item in data_of(msg):
        inst = item["instId"]
        oi = opt_float(item.get("oiCcy"))          # coin (base) units
        if oi is None:
            oi = float(item["oi"]) * ct_val        # contracts -> base
        out.append(OpenInterest(EXCHANGE, inst, pair_from_symbol(inst), "perp",
                                ms_to_dt(item["ts"]), received_at, open_interest=oi,
                                open_interest_value=opt_float(item.get("oiUsd"))))
    return out


# ---- order book ------------------------------------------------------------------------------
# (price, size in base units, price text, size text)
Level = tuple[float, float, str, str]


@dataclass(slots=True)
class BookMessage:
    inst_id: str
    snapshot: bool
    bids: list[Level]
    asks: list[Level]
    seq_id: int
    prev_seq_id: int
    checksum: int
    ts: datetime


def _levels(levels: Any, factor: float) -> list[Level]:
    return [(float(level[0]), float(level[1]) * factor, level[0], level[1]) for level in levels]


def parse_books(msg: dict[str, Any], ct_val: float = 1.0) -> list[BookMessage]:
    inst = msg["arg"]["instId"]
    action = msg.get("action", "snapshot")
    if action not in ("snapshot", "update"):
        raise ValueError(f"unknown book action {action!r}")
    factor = ct_val if market_of(inst) == "perp" else 1.0
    out = []
    for item in data_of(msg):
        out.append(BookMessage(
            inst_id=inst, snapshot=action == "snapshot", bids=_levels(item["bids"], factor),
            asks=_levels(item["asks"], factor), seq_id=_int(item["seqId"]),
            prev_seq_id=_int(item.get("prevSeqId", -1)),
            checksum=_int(item.get("checksum") or 0),
            ts=ms_to_dt(item["ts"])))
    return out


def load_books_snapshot(book: OrderBook, item: dict[str, Any], factor: float,
                        depth: int) -> tuple[str, str] | None:
    """A ``snapshot`` item replaces the whole book; returns ``(cause, detail)`` if its checksum
    does not match. Level text is kept for the checksum only while the exchange sends one: the
    field is always ``0`` since 2026-06-23, and keeping the text costs a third of an update."""
    seq_id = _int(item["seqId"])
    book.keep_fragments(bool(item.get("checksum")))
    book.bids.apply_text_scaled(item["bids"], factor)
    book.asks.apply_text_scaled(item["asks"], factor)
    book.update_id = seq_id
    book.synced = True
    book.changed = True
    book.truncate(depth)
    return _checksum_break(book, item)


def apply_books_update(book: OrderBook, msg: dict[str, Any], factor: float,
                       depth: int) -> tuple[str, str] | None:
    """The hot path: the ``update`` items of a synced book applied straight from the decoded
    message (no per-level tuples; text kept as sent where checksummed). Returns ``(cause,
    detail)`` at the first item that breaks the sequence or the checksum: the book must then
    be resynced. A malformed level raises with the book possibly half applied (resync too)."""
    bids, asks = book.bids, book.asks
    for item in data_of(msg):
        # int(): an absurd number (inf) raises before anything is applied; the feed's message
        # loop counts it as malformed like any other bad value.
        prev_seq_id = int(item.get("prevSeqId", -1))
        if prev_seq_id != book.update_id:          # sequence_ok, inlined (hot path)
            return "sequence_gap", f"last seqId {book.update_id}, prevSeqId {prev_seq_id}"
        seq_id = int(item["seqId"])
        bids.apply_text_scaled(item["bids"], factor)
        asks.apply_text_scaled(item["asks"], factor)
        book.update_id = seq_id
        book.changed = True
        book.truncate(depth)
        # 0 / absent: not provided (deprecated). A book built from a snapshot without one has
        # no level text to check against.
        if item.get("checksum") and bids.frags is not None:
            broken = _checksum_break(book, item)
            if broken:
                return broken
    return None


def _checksum_break(book: OrderBook, item: dict[str, Any]) -> tuple[str, str] | None:
    """OKX's CRC32 of the top 25 levels; ``0`` (or absent) means not provided (the field is
    deprecated and always 0 since 2026-06-23), never a mismatch."""
    expected = _int(item.get("checksum") or 0)
    if not expected:
        return None
    local = checksum_fragments(book.bids.top_fragments(endpoints.CHECKSUM_LEVELS),
                               book.asks.top_fragments(endpoints.CHECKSUM_LEVELS))
    return None if local == expected else ("checksum", f"local {local}, exchange {expected}")


def parse_rest_books(data: list[Any], factor: float = 1.0
                     ) -> tuple[list[tuple[float, float]], list[tuple[float, float]], int]:
    """``GET /api/v5/market/books`` data -> (bids, asks, seqId), sizes in base units."""
    [item] = data
    return _levels_base(item["bids"], factor), _levels_base(item["asks"], factor), \
        _int(item["seqId"])


def _levels_base(levels: Any, factor: float) -> list[tuple[float, float]]:
    return [(float(level[0]), float(level[1]) * factor) for level in levels]


def books_diff(item: dict[str, Any], factor: float) -> Diff:
    """An ``update`` item buffered for a REST snapshot: OKX's ``prevSeqId`` -> ``seqId`` as the
    splice's ids (first ``prevSeqId + 1``, last ``seqId``, previous ``prevSeqId``)."""
    prev_seq_id = _int(item["prevSeqId"])
    return Diff(prev_seq_id + 1, _int(item["seqId"]), prev_seq_id,
                _levels_base(item["bids"], factor), _levels_base(item["asks"], factor))


def sequence_ok(last_seq_id: int | None, prev_seq_id: int, seq_id: int) -> bool:
    """OKX rule for an *update*: its prevSeqId must equal the last applied seqId. This accepts the
    no-change heartbeat (seqId == prevSeqId == last) and the post-maintenance reset
    (seqId < prevSeqId while prevSeqId == last)."""
    return last_seq_id is not None and prev_seq_id == last_seq_id


def checksum_string(bids: Iterable[tuple[str, str]], asks: Iterable[tuple[str, str]]) -> str:
    """Interleave the best 25 bids/asks as ``bidPx:bidSz:askPx:askSz:...`` (raw strings); a side
    with fewer levels simply contributes nothing for the missing indexes."""
    return fragments_string([f"{p}:{s}" for p, s in list(bids)[: endpoints.CHECKSUM_LEVELS]],
                            [f"{p}:{s}" for p, s in list(asks)[: endpoints.CHECKSUM_LEVELS]])


def fragments_string(bids: Sequence[str], asks: Sequence[str]) -> str:
    """``checksum_string`` from each level's ``"price:size"`` text (best first, at most 25 a
    side, as ``BookSide.top_fragments`` keeps them): one interleave and one join."""
    n = min(len(bids), len(asks))
    parts = [""] * (2 * n)
    parts[0::2] = bids[:n]
    parts[1::2] = asks[:n]
    # Past the shorter side only the longer one's levels remain, in order.
    parts += bids[n:] or asks[n:]
    return ":".join(parts)


def crc32_signed(text: str) -> int:
    """CRC-32 (IEEE) of ``text`` as a signed 32-bit integer (OKX's checksum form)."""
    crc = zlib.crc32(text.encode())
    return crc - (1 << 32) if crc >= (1 << 31) else crc


def checksum(bids: Iterable[tuple[str, str]], asks: Iterable[tuple[str, str]]) -> int:
    """CRC-32 (IEEE) of the checksum string as a signed 32-bit integer."""
    return crc32_signed(checksum_string(bids, asks))


def checksum_fragments(bids: Sequence[str], asks: Sequence[str]) -> int:
    """``checksum`` from ``"price:size"`` fragments (``fragments_string``)."""
    return crc32_signed(fragments_string(bids, asks))
