"""Pure Bybit v5 parsers: decoded message (+ receive time) -> normalized records.

No sockets, clocks or I/O. Malformed input raises KeyError/ValueError/TypeError.
Bybit BTCUSDT spot and linear sizes are already in base units (BTC).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from collector.exchanges.bybit import endpoints
from collector.orderbook import OrderBook
from common.schema import (
    Candle, Funding, OpenInterest, Ticker, Trade, ms_to_dt, opt_float, price_hit, price_miss,
    strict_int,
)
from common.symbols import pair_from_symbol

EXCHANGE = "bybit"


_int = strict_int


class NotSupportedSymbol(ValueError):
    """A REST market endpoint answered ``retCode 10001 "Not supported symbols"``."""


def check_response(payload: dict[str, Any]) -> None:
    code = payload.get("retCode")
    if code != 0:
        text = f"retCode {code}: {payload.get('retMsg')}"
        if code == endpoints.PARAMS_ERROR and payload.get("retMsg") == \
                endpoints.NOT_SUPPORTED_SYMBOLS:
            raise NotSupportedSymbol(text)
        raise ValueError(text)


# Subscribe rejections name the topics: spot ``Invalid symbol :[kline.1.X]`` (one or more,
# comma separated), linear ``error:handler not found,topic:X`` / ``error:already
# subscribed,topic:X``, older ``Invalid topic: X``.
_SPOT_REJECTED = re.compile(r"Invalid symbol\s*:\s*\[([^\]]*)\]")
_TOPIC_REJECTED = re.compile(r"topic\s*:\s*([\w.\-]+)")


def rejected_topics(reason: str) -> list[str]:
    """The topics a failed subscribe's ``ret_msg`` names (none if it names none)."""
    match = _SPOT_REJECTED.search(reason)
    if match:
        return [t.strip() for t in match.group(1).split(",") if t.strip()]
    match = _TOPIC_REJECTED.search(reason)
    return [match.group(1)] if match else []


def topic_parts(msg: dict[str, Any]) -> tuple[str, str]:
    """``orderbook.200.BTCUSDT`` -> ("orderbook", "BTCUSDT")."""
    topic = msg["topic"]
    if not isinstance(topic, str) or "." not in topic:
        raise ValueError(f"bad topic {topic!r}")
    return topic.partition(".")[0], topic.rpartition(".")[2]


# ---- tickers ---------------------------------------------------------------------------------
def merge_ticker(previous: dict[str, Any] | None, msg: dict[str, Any]) -> dict[str, Any]:
    """Linear tickers are a snapshot followed by partial deltas: fields absent from a delta are
    unchanged. Returns the merged field dict (a new dict; ``previous`` is not modified).
    A delta without a previous snapshot raises ValueError (caller waits for a snapshot)."""
    data = msg["data"]
    if not isinstance(data, dict):
        raise TypeError("ticker data is not an object")
    kind = msg.get("type", "snapshot")
    if kind == "snapshot" or previous is None:
        if kind == "delta":
            raise ValueError("ticker delta before any snapshot")
        merged = dict(data)
    else:
        merged = dict(previous)
        merged.update(data)
    merged["_ts"] = _int(msg["ts"])
    return merged



def ticker_from_fields(fields: dict[str, Any], market: str, received_at: datetime) -> Ticker:
    symbol = fields["symbol"]
    get = fields.get
    hit, miss = price_hit, price_miss
    # Bybit sends decimal strings; absent and "" mean "not provided" (opt_float's rule, inlined:
    # thirteen fields per ticker). Prices through the shared text -> float cache.
    return Ticker(
        EXCHANGE, symbol, pair_from_symbol(symbol), market, ms_to_dt(fields["_ts"]), received_at,
        (hit(v) or miss(v)) if (v := get("lastPrice")) else None,
        (hit(v) or miss(v)) if (v := get("bid1Price")) else None,
        float(v) if (v := get("bid1Size")) else None,
        (hit(v) or miss(v)) if (v := get("ask1Price")) else None,
        float(v) if (v := get("ask1Size")) else None,
        (hit(v) or miss(v)) if (v := get("prevPrice24h")) else None,
        (hit(v) or miss(v)) if (v := get("highPrice24h")) else None,
        (hit(v) or miss(v)) if (v := get("lowPrice24h")) else None,
        float(v) if (v := get("volume24h")) else None,
        float(v) if (v := get("turnover24h")) else None,
        float(v) * 100.0 if (v := get("price24hPcnt")) else None,
        (hit(v) or miss(v)) if (v := get("markPrice")) else None,
        (hit(v) or miss(v)) if (v := get("indexPrice")) else None,
    )


def funding_from_fields(fields: dict[str, Any], received_at: datetime) -> Funding | None:
    rate = opt_float(fields.get("fundingRate"))
    if rate is None:
        return None
    symbol = fields["symbol"]
    nft = fields.get("nextFundingTime")
    return Funding(
        EXCHANGE, symbol, pair_from_symbol(symbol), "perp", ms_to_dt(fields["_ts"]), received_at,
        rate=rate,
        next_funding_time=ms_to_dt(nft) if nft not in (None, "", "0") else None,
        mark_price=opt_float(fields.get("markPrice")),
        index_price=opt_float(fields.get("indexPrice")),
        interval_hours=opt_float(fields.get("fundingIntervalHour")),
    )


def open_interest_from_fields(fields: dict[str, Any],
                              received_at: datetime) -> OpenInterest | None:
    """One side, as every other venue reports it: ``singleOpenInterest`` (base units) and
    ``singleOpenInterestValue`` (quote). ``openInterest(Value)`` count both sides (v5 changelog
    2026-06-11): never stored; without the single-side fields there is no record."""
    oi = opt_float(fields.get("singleOpenInterest"))
    if oi is None:
        return None
    symbol = fields["symbol"]
    return OpenInterest(EXCHANGE, symbol, pair_from_symbol(symbol), "perp",
                        ms_to_dt(fields["_ts"]), received_at, open_interest=oi,
                        open_interest_value=opt_float(fields.get("singleOpenInterestValue")))


def lacks_single_open_interest(fields: dict[str, Any]) -> bool:
    """A linear ticker with the two-sided open interest but not the one-sided one."""
    return fields.get("openInterest") not in (None, "") and \
        fields.get("singleOpenInterest") in (None, "")


def parse_ticker(msg: dict[str, Any], market: str, received_at: datetime,
                 previous: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[Any]]:
    """-> (merged fields, [Ticker] + [Funding, OpenInterest] for linear)."""
    fields = merge_ticker(previous, msg)
    records: list[Any] = [ticker_from_fields(fields, market, received_at)]
    if market == "perp":
        for record in (funding_from_fields(fields, received_at),
                       open_interest_from_fields(fields, received_at)):
            if record is not None:
                records.append(record)
    return fields, records


class TickerMerge:
    """Tickers per (market, symbol): linear pushes a snapshot, then deltas carrying only what
    changed (merged into the last snapshot); spot pushes snapshots only."""

    def __init__(self) -> None:
        self.fields: dict[tuple[str, str], dict[str, Any]] = {}

    def parse(self, msg: dict[str, Any], market: str, received_at: datetime) -> list[Any]:
        """[Ticker] (+ Funding, OpenInterest on linear); none for a delta before the snapshot."""
        key = (market, msg["topic"].rpartition(".")[2])      # tickers.BTCUSDT
        previous = self.fields.get(key)
        if previous is None and msg.get("type") == "delta":
            return []
        self.fields[key], records = parse_ticker(msg, market, received_at, previous)
        return records

    def forget(self, market: str, symbols: list[str]) -> None:
        for symbol in symbols:
            self.fields.pop((market, symbol), None)


def parse_rest_ticker(payload: dict[str, Any], market: str,
                      received_at: datetime) -> list[Any]:
    """``GET /v5/market/tickers`` -> [Ticker, Funding?, OpenInterest?] per listed symbol."""
    check_response(payload)
    records: list[Any] = []
    ts = _int(payload["time"])
    for item in payload["result"]["list"]:
        fields = dict(item)
        fields["_ts"] = ts
        records.append(ticker_from_fields(fields, market, received_at))
        if market == "perp":
            for record in (funding_from_fields(fields, received_at),
                           open_interest_from_fields(fields, received_at)):
                if record is not None:
                    records.append(record)
    return records


# ---- trades ----------------------------------------------------------------------------------
_SIDES = {"Buy": "buy", "Sell": "sell"}


def parse_trades(msg: dict[str, Any], market: str, received_at: datetime) -> list[Trade]:
    out = []
    for item in msg["data"]:
        symbol = item["s"]
        out.append(Trade(EXCHANGE, symbol, pair_from_symbol(symbol), market, ms_to_dt(item["T"]),
                         received_at, trade_id=str(item["i"]), price=float(item["p"]),
                         size=float(item["v"]), side=_SIDES[item["S"]]))
    return out


def _rest_list(payload: dict[str, Any]) -> list[Any]:
    check_response(payload)
    rows = payload["result"]["list"]
    if not isinstance(rows, list):
        raise TypeError("result.list is not an array")
    return rows


def parse_rest_trades(payload: dict[str, Any], market: str,
                      received_at: datetime) -> list[Trade]:
    """``GET /v5/market/recent-trade`` -> trades (``execId`` is the stream's trade id ``i``)."""
    out = []
    for item in _rest_list(payload):
        symbol = item["symbol"]
        out.append(Trade(EXCHANGE, symbol, pair_from_symbol(symbol), market,
                         ms_to_dt(_int(item["time"])), received_at,
                         trade_id=str(item["execId"]), price=float(item["price"]),
                         size=float(item["size"]), side=_SIDES[item["side"]]))
    return out


# ---- klines ----------------------------------------------------------------------------------
def parse_rest_klines(payload: dict[str, Any], symbol: str, market: str, interval: str,
                      received_at: datetime) -> list[Candle]:
    """``GET /v5/market/kline`` rows ``[start, open, high, low, close, volume, turnover]``
    (newest first) -> candles oldest first. REST rows carry no ``confirm`` flag: a candle is
    closed when its end is not after the response's server ``time``."""
    server_ms = _int(payload["time"])
    span_ms = _INTERVAL_MS[interval]
    out = []
    for row in _rest_list(payload):
        start = _int(row[0])
        out.append(Candle(
            EXCHANGE, symbol, pair_from_symbol(symbol), market, ms_to_dt(start), received_at,
            interval=endpoints.KLINE_INTERVALS[interval], open=float(row[1]),
            high=float(row[2]), low=float(row[3]), close=float(row[4]), volume=float(row[5]),
            quote_volume=opt_float(row[6]), closed=start + span_ms <= server_ms))
    out.sort(key=lambda c: c.ts)
    return out


_INTERVAL_MS = {"1": 60_000, "3": 180_000, "5": 300_000, "15": 900_000, "30": 1_800_000,
                "60": 3_600_000, "120": 7_200_000, "240": 14_400_000, "360": 21_600_000,
                "720": 43_200_000, "D": 86_400_000, "W": 604_800_000}


def parse_kline(msg: dict[str, Any], market: str, received_at: datetime) -> list[Candle]:
    _, symbol = topic_parts(msg)
    out = []
    for item in msg["data"]:
        out.append(Candle(
            EXCHANGE, symbol, pair_from_symbol(symbol), market, ms_to_dt(item["start"]),
            received_at, interval=endpoints.KLINE_INTERVALS[str(item["interval"])],
            open=float(item["open"]), high=float(item["high"]), low=float(item["low"]),
            close=float(item["close"]), volume=float(item["volume"]),
            quote_volume=opt_float(item.get("turnover")), closed=bool(item["confirm"])))
    return out


# ---- order book ------------------------------------------------------------------------------
@dataclass(slots=True)
class BookMessage:
    symbol: str
    snapshot: bool
    bids: list[tuple[float, float]]
    asks: list[tuple[float, float]]
    update_id: int
    seq: int | None
    ts: datetime


def _levels(levels: Any) -> list[tuple[float, float]]:
    return [(float(price), float(size)) for price, size in levels]


def parse_orderbook(msg: dict[str, Any]) -> BookMessage:
    kind = msg["type"]
    if kind not in ("snapshot", "delta"):
        raise ValueError(f"unknown orderbook type {kind!r}")
    data = msg["data"]
    seq = data.get("seq")
    return BookMessage(symbol=data["s"], snapshot=kind == "snapshot", bids=_levels(data["b"]),
                       asks=_levels(data["a"]), update_id=_int(data["u"]),
                       seq=_int(seq) if seq is not None else None, ts=ms_to_dt(msg["ts"]))


def book_update_id(data: dict[str, Any]) -> int:
    return _int(data["u"])


def apply_delta(book: OrderBook, data: dict[str, Any], depth: int) -> bool:
    """The hot path: a delta that moves a synced book forward, applied straight from the
    decoded message (absolute sizes, "0" deletes; ``OrderBook.apply_text``). False, with nothing
    done, for a duplicate or backwards update id (``parse_orderbook`` and the feed's rules
    handle those)."""
    update_id = int(data["u"])
    if book.update_id is None or update_id <= book.update_id:
        return False
    book.apply_text(data["b"], data["a"], update_id)
    book.truncate(depth)
    return True
