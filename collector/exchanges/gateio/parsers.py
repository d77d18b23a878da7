"""Pure Gate.io v4 parsers: decoded message (+ receive time) -> normalized records.

Futures sizes are contract counts, decimal strings with ``X-Gate-Size-Decimal: 1`` (integers
without it); every function that returns a size takes the contract's ``multiplier``
(``quanto_multiplier``) and returns base units. Malformed input raises; the batch parsers
(``futures.*`` results are lists) take a ``skipped`` list instead, where a bad row is noted and
left out so the rest of its batch is kept. The synced-book fast path (``book_ids``,
``apply_spot_book``, ``apply_futures_book``) reads diffs straight from the decoded message.
"""
from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Any, Callable, TypeVar

import orjson

from collector.booksync import Diff
from collector.orderbook import OrderBook
from common.schema import (
    PERP, SPOT, Candle, Funding, OpenInterest, Ticker, Trade, ms_to_dt, opt_float, price_hit,
    price_miss, s_to_dt,
)
from common.symbols import pair_from_symbol

EXCHANGE = "gateio"
_pair = lru_cache(maxsize=4096)(pair_from_symbol)

# Price text -> float through the shared bounded cache (common.schema.price_hit/price_miss).
_price, _price_miss = price_hit, price_miss

Levels = list[tuple[float, float]]
R = TypeVar("R")
ROW_ERRORS = (KeyError, IndexError, TypeError, ValueError, AttributeError)
Skipped = list[tuple[Any, Exception]]


def _rows(rows: list, build: Callable[[dict], R | None], skipped: Skipped | None) -> list[R]:
    """``build`` each row of a batch; a row that does not parse raises, or with ``skipped``
    is noted there and left out (one bad row must not cost its batch)."""
    out = []
    for row in rows:
        try:
            record = build(row)
        except ROW_ERRORS as exc:
            if skipped is None:
                raise
            skipped.append((row, exc))
            continue
        if record is not None:
            out.append(record)
    return out


def msg_time(msg: dict, received_at: datetime) -> datetime:
    if msg.get("time_ms"):
        return ms_to_dt(msg["time_ms"])
    if msg.get("time"):
        return s_to_dt(msg["time"])
    return received_at


# ---- requests, control messages ----------------------------------------------------------------
UNKNOWN_SYMBOL_PREFIXES = ("unknown currency pair ", "unknown contract ")


def subscribe_request(channel: str, payload: list[str], request_id: int, now_s: int) -> str:
    """``{"time", "id", "channel", "event": "subscribe", "payload"}``; Gate echoes ``id``."""
    return orjson.dumps({"time": now_s, "id": request_id, "channel": channel,
                         "event": "subscribe", "payload": payload}).decode()


def is_upgrade(msg: dict) -> bool:
    """The service-upgrade notice, in each shape seen: top-level ``type`` or ``event``
    "upgrade", or a ``*.system`` push whose ``result.type`` is "upgrade"."""
    result = msg.get("result")
    return msg.get("type") == "upgrade" or msg.get("event") == "upgrade" or (
        isinstance(result, dict) and result.get("type") == "upgrade")


def parse_error(msg: dict) -> tuple[str, str | None]:
    """An error ack ``{"error": {"code", "message"}, ...}`` -> (message, the symbol an
    "unknown currency pair X" / "unknown contract X" names, else None)."""
    error = msg["error"]
    text = str(error.get("message", error)) if isinstance(error, dict) else str(error)
    named = next((text[len(pre):].strip() for pre in UNKNOWN_SYMBOL_PREFIXES
                  if text.startswith(pre)), "")
    return text, named or None


# ---- spot ----------------------------------------------------------------------------------------
def parse_spot_ticker(msg: dict, received_at: datetime) -> Ticker:
    r = msg["result"]
    symbol = r["currency_pair"]
    get = r.get
    price, miss = _price, _price_miss
    # opt_float's rule (None and "" mean absent) inlined; prices through the text cache.
    return Ticker(EXCHANGE, symbol, _pair(symbol), SPOT, msg_time(msg, received_at), received_at,
                  None if (v := get("last")) is None or v == "" else (price(v) or miss(v)),
                  None if (v := get("highest_bid")) is None or v == "" else (price(v) or miss(v)),
                  None,
                  None if (v := get("lowest_ask")) is None or v == "" else (price(v) or miss(v)),
                  None, None,
                  None if (v := get("high_24h")) is None or v == "" else (price(v) or miss(v)),
                  None if (v := get("low_24h")) is None or v == "" else (price(v) or miss(v)),
                  None if (v := get("base_volume")) is None or v == "" else float(v),
                  None if (v := get("quote_volume")) is None or v == "" else float(v),
                  None if (v := get("change_percentage")) is None or v == "" else float(v))


def parse_spot_trade(msg: dict, received_at: datetime) -> Trade:
    return _spot_trade(msg["result"], received_at)


def parse_rest_spot_trades(body: list, received_at: datetime) -> list[Trade]:
    """REST ``/spot/trades`` (newest first): the same fields as the ``spot.trades`` push, so the
    ids match the streamed trades' unique key."""
    return [_spot_trade(r, received_at) for r in body]


def spot_trade_id(r: dict) -> str:
    """``id`` (unique per market since 2025-05); ``id_market`` (WS) / ``sequence_id`` (REST),
    the per-market consecutive id, only if ``id`` is ever left out (N-TRADEID)."""
    trade_id = r.get("id")
    if trade_id is None:
        trade_id = r["id_market"] if "id_market" in r else r["sequence_id"]
    return str(int(trade_id))


def _spot_trade(r: dict, received_at: datetime) -> Trade:
    symbol = r["currency_pair"]
    side = r["side"]
    if side not in ("buy", "sell"):
        raise ValueError(f"bad side {side!r}")
    ts = ms_to_dt(float(r["create_time_ms"])) if r.get("create_time_ms") else \
        s_to_dt(r["create_time"])
    price = r["price"]
    # Positional (trade_id, price, size, side): cheaper than keywords on the hot path.
    return Trade(EXCHANGE, symbol, _pair(symbol), SPOT, ts, received_at,
                 str(int(trade_id)) if (trade_id := r.get("id")) is not None else spot_trade_id(r),
                 _price(price) or _price_miss(price), float(r["amount"]),
                 side)


def parse_spot_candle(msg: dict, received_at: datetime) -> Candle:
    """``n`` = ``<interval>_<pair>``; ``a`` = base amount, ``v`` = total (quote) volume;
    ``w`` = window closed (may be missing)."""
    r = msg["result"]
    interval, symbol = r["n"].split("_", 1)
    return Candle(EXCHANGE, symbol, pair_from_symbol(symbol), SPOT, s_to_dt(int(r["t"])),
                  received_at, interval=interval, open=float(r["o"]), high=float(r["h"]),
                  low=float(r["l"]), close=float(r["c"]), volume=opt_float(r.get("a")),
                  quote_volume=opt_float(r.get("v")), closed=bool(r.get("w", False)))


def parse_rest_spot_candles(body: list, symbol: str, received_at: datetime) -> list[Candle]:
    """REST ``/spot/candlesticks`` rows ``[t, quote volume, close, high, low, open, base volume,
    window closed]`` -> the closed 1m candles (without the flag: see ``_closed_rows``)."""
    pair = pair_from_symbol(symbol)
    out = []
    for row, closed in _closed_rows(body, received_at, lambda row: row[0],
                                    lambda row: row[7] if len(row) > 7 else None):
        if closed:
            out.append(Candle(EXCHANGE, symbol, pair, SPOT, s_to_dt(row[0]), received_at,
                              interval="1m", open=float(row[5]), high=float(row[3]),
                              low=float(row[4]), close=float(row[2]), volume=float(row[6]),
                              quote_volume=float(row[1]), closed=True))
    return out


def _closed_rows(rows: list, now: datetime, start_of, flag_of) -> list[tuple[Any, bool]]:
    """Which 1m rows are final: the window-closed flag when the row has one; else every row but
    the newest (the running candle when the range reaches the present), and the newest too once
    its minute is over by the local clock (5 s margin for clock skew)."""
    out = []
    for i, row in enumerate(rows):
        flag = flag_of(row)
        if flag is not None:
            closed = flag is True or flag == "true"
        else:
            closed = i < len(rows) - 1 or float(start_of(row)) + 65 <= now.timestamp()
        out.append((row, closed))
    return out


def parse_spot_levels(levels: list) -> Levels:
    return [(float(level[0]), float(level[1])) for level in levels]


def parse_spot_book_update(msg: dict) -> tuple[str, int, int, Levels, Levels, bool]:
    """-> (symbol, U, u, bids, asks, full)."""
    r = msg["result"]
    return (r["s"], int(r["U"]), int(r["u"]), parse_spot_levels(r.get("b") or []),
            parse_spot_levels(r.get("a") or []), bool(r.get("full", False)))


def book_ids(r: dict) -> tuple[int, int]:
    """``order_book_update`` result: first id ``U``, last id ``u`` (continuity is
    ``U == previous u + 1``; no previous-id field)."""
    return int(r["U"]), int(r["u"])


def apply_spot_book(book: OrderBook, r: dict, last_id: int) -> None:
    """The hot path: a ``spot.order_book_update`` diff that continues a synced book, applied from
    the decoded result (absolute base amounts, "0" deletes the level)."""
    book.apply_text(r.get("b") or (), r.get("a") or (), last_id)


def spot_book_diff(r: dict) -> Diff:
    """A ``spot.order_book_update`` result to buffer until the snapshot splices."""
    return Diff(int(r["U"]), int(r["u"]), None, parse_spot_levels(r.get("b") or []),
                parse_spot_levels(r.get("a") or []))


def parse_spot_book_snapshot(body: dict) -> tuple[Levels, Levels, int]:
    """REST ``/spot/order_book?with_id=true`` -> (bids, asks, id)."""
    return parse_spot_levels(body["bids"]), parse_spot_levels(body["asks"]), int(body["id"])


# ---- futures -------------------------------------------------------------------------------------
def parse_futures_levels(levels: list, multiplier: float) -> Levels:
    return [(float(level["p"]), float(level["s"]) * multiplier) for level in levels]


def apply_futures_book(book: OrderBook, r: dict, last_id: int, multiplier: float) -> None:
    """The hot path of ``futures.order_book_update``: ``{"p", "s"}`` levels, contracts x
    ``multiplier``."""
    book.apply(parse_futures_levels(r.get("b") or [], multiplier),
               parse_futures_levels(r.get("a") or [], multiplier), last_id)


def futures_book_diff(r: dict, multiplier: float) -> Diff:
    return Diff(int(r["U"]), int(r["u"]), None, parse_futures_levels(r.get("b") or [], multiplier),
                parse_futures_levels(r.get("a") or [], multiplier))


def parse_futures_book_update(msg: dict, multiplier: float
                              ) -> tuple[str, int, int, Levels, Levels, bool]:
    r = msg["result"]
    return (r["s"], int(r["U"]), int(r["u"]), parse_futures_levels(r.get("b") or [], multiplier),
            parse_futures_levels(r.get("a") or [], multiplier), bool(r.get("full", False)))


def parse_futures_book_snapshot(body: dict, multiplier: float) -> tuple[Levels, Levels, int]:
    """REST ``/futures/usdt/order_book?with_id=true`` -> (bids, asks, id), sizes in base units."""
    return (parse_futures_levels(body["bids"], multiplier),
            parse_futures_levels(body["asks"], multiplier), int(body["id"]))


def parse_futures_tickers(msg: dict, received_at: datetime, multipliers: dict[str, float],
                          funding_info: dict[str, dict[str, Any]] | None = None,
                          skipped: Skipped | None = None) -> list[tuple[Ticker, Funding]]:
    """``futures.tickers`` (result is a list) -> ticker and funding (``funding_rate`` = current
    period rate, a fraction). Its ``total_size`` (open interest) is not used: stored open
    interest comes from ``futures.contract_stats`` only (see the feed)."""
    ts = msg_time(msg, received_at)
    info_of = funding_info or {}

    def build(r: dict) -> tuple[Ticker, Funding]:
        symbol = r["contract"]
        pair = pair_from_symbol(symbol)
        mult = multipliers[symbol]
        mark, index = opt_float(r.get("mark_price")), opt_float(r.get("index_price"))
        volume = opt_float(r.get("volume_24h_base"))
        if volume is None and r.get("volume_24h") not in (None, ""):
            volume = float(r["volume_24h"]) * mult
        ticker = Ticker(EXCHANGE, symbol, pair, PERP, ts, received_at,
                        last=opt_float(r.get("last")), high_24h=opt_float(r.get("high_24h")),
                        low_24h=opt_float(r.get("low_24h")), volume_24h=volume,
                        quote_volume_24h=opt_float(r.get("volume_24h_quote")),
                        change_pct_24h=opt_float(r.get("change_percentage")),
                        mark_price=mark, index_price=index)
        info = info_of.get(symbol, {})
        funding = Funding(EXCHANGE, symbol, pair, PERP, ts, received_at,
                          rate=float(r["funding_rate"]),
                          next_funding_time=info.get("next_funding_time"),
                          mark_price=mark, index_price=index,
                          interval_hours=info.get("interval_hours"))
        return ticker, funding
    return _rows(msg["result"], build, skipped)


def parse_futures_trades(msg: dict, received_at: datetime, multipliers: dict[str, float],
                         skipped: Skipped | None = None) -> list[Trade]:
    return _futures_trades(msg["result"], received_at, multipliers, skipped)


def parse_rest_futures_trades(body: list, received_at: datetime, multipliers: dict[str, float],
                              skipped: Skipped | None = None) -> list[Trade]:
    """REST ``/futures/usdt/trades`` (newest first), same fields and ids as the push."""
    return _futures_trades(body, received_at, multipliers, skipped)


def _futures_trades(rows: list, received_at: datetime, multipliers: dict[str, float],
                    skipped: Skipped | None) -> list[Trade]:
    """``size`` sign is the taker side (+ buy, - sell); |size| x multiplier = base units.
    ``is_internal`` trades (insurance fund / ADL takeovers, not matched on the order book and
    left out of Gate's own candles) are skipped: they are not market trades. A zero size (a
    sub-contract fill truncated by a client without the decimal header) is a bad row."""
    def build(r: dict) -> Trade | None:
        if r.get("is_internal"):
            return None
        symbol = r["contract"]
        size = float(r["size"])
        if size == 0:
            raise ValueError("zero trade size")
        ts = ms_to_dt(float(r["create_time_ms"])) if r.get("create_time_ms") else \
            s_to_dt(r["create_time"])
        return Trade(EXCHANGE, symbol, pair_from_symbol(symbol), PERP, ts, received_at,
                     trade_id=str(int(r["id"])), price=float(r["price"]),
                     size=abs(size) * multipliers[symbol], side="buy" if size > 0 else "sell")
    return _rows(rows, build, skipped)


def parse_futures_candles(msg: dict, received_at: datetime, multipliers: dict[str, float],
                          skipped: Skipped | None = None) -> list[Candle]:
    """``futures.candlesticks``: ``v`` in contracts (x multiplier = base units); ``mark_`` /
    ``index_`` candles (no volume) are left out."""
    def build(r: dict) -> Candle | None:
        interval, symbol = r["n"].split("_", 1)
        if symbol.startswith(("mark_", "index_")):
            return None
        return Candle(EXCHANGE, symbol, pair_from_symbol(symbol), PERP, s_to_dt(int(r["t"])),
                      received_at, interval=interval, open=float(r["o"]), high=float(r["h"]),
                      low=float(r["l"]), close=float(r["c"]),
                      volume=float(r["v"]) * multipliers[symbol],
                      closed=bool(r.get("w", False)))
    return _rows(msg["result"], build, skipped)


def parse_contract_stats(msg: dict, received_at: datetime, multipliers: dict[str, float],
                         skipped: Skipped | None = None) -> list[OpenInterest]:
    """``futures.contract_stats``: open interest in contracts (x multiplier = base units) and in
    USD, at the interval's bucket time."""
    return _rows(msg["result"], lambda r: _stats(r, r["contract"], received_at, multipliers),
                 skipped)


def parse_rest_contract_stats(body: list, symbol: str, received_at: datetime,
                              multipliers: dict[str, float]) -> list[OpenInterest]:
    """REST ``/futures/usdt/contract_stats`` rows (same fields; the contract is the query's)."""
    return [_stats(r, symbol, received_at, multipliers) for r in body]


def _stats(r: dict, symbol: str, received_at: datetime,
           multipliers: dict[str, float]) -> OpenInterest:
    return OpenInterest(EXCHANGE, symbol, pair_from_symbol(symbol), PERP, s_to_dt(r["time"]),
                        received_at,
                        open_interest=float(r["open_interest"]) * multipliers[symbol],
                        open_interest_value=opt_float(r.get("open_interest_usd")))


def parse_rest_futures_candles(body: list, symbol: str, received_at: datetime,
                               multipliers: dict[str, float]) -> list[Candle]:
    """REST ``/futures/usdt/candlesticks`` ``{t, v (contracts), c, h, l, o, sum (quote)}`` ->
    the closed 1m candles (no closed flag here: see ``_closed_rows``)."""
    pair = pair_from_symbol(symbol)
    mult = multipliers[symbol]
    out = []
    for row, closed in _closed_rows(body, received_at, lambda row: row["t"], lambda row: None):
        if closed:
            out.append(Candle(EXCHANGE, symbol, pair, PERP, s_to_dt(row["t"]), received_at,
                              interval="1m", open=float(row["o"]), high=float(row["h"]),
                              low=float(row["l"]), close=float(row["c"]),
                              volume=float(row["v"]) * mult, quote_volume=opt_float(row.get("sum")),
                              closed=True))
    return out


def parse_contract_funding(body: dict, received_at: datetime) -> Funding:
    """REST ``/futures/usdt/contracts/{c}`` -> the current funding (re-poll after a gap)."""
    symbol = body["name"]
    info = parse_contract(body)
    return Funding(EXCHANGE, symbol, pair_from_symbol(symbol), PERP, received_at, received_at,
                   rate=float(body["funding_rate"]),
                   next_funding_time=info.get("next_funding_time"),
                   mark_price=opt_float(body.get("mark_price")),
                   index_price=opt_float(body.get("index_price")),
                   interval_hours=info.get("interval_hours"))


def parse_contract(body: dict) -> dict[str, Any]:
    """REST ``/futures/usdt/contracts/{c}`` -> multiplier and funding schedule."""
    info: dict[str, Any] = {"multiplier": float(body["quanto_multiplier"])}
    if body.get("funding_interval"):
        info["interval_hours"] = float(body["funding_interval"]) / 3600.0
    if body.get("funding_next_apply"):
        info["next_funding_time"] = s_to_dt(body["funding_next_apply"])
    return info
