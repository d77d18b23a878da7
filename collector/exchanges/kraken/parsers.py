"""Pure Kraken parsers: decoded message (+ local receive time) -> normalized records.

Spot v2 sends numbers as JSON numbers "with the engine's precision". ``decode`` keeps them as
``Decimal`` (exact digits, trailing zeros kept); the feed's hot path decodes with orjson (floats),
applies book levels as floats and makes checksum texts only for levels that reach the top 10
(``book_crc``), each proven exact or ``Inexact`` (that book is then rebuilt from ``decode``d
exact decimals). Every function raises
(KeyError/TypeError/ValueError/...) on malformed input; the feed counts and skips such messages.
"""
from __future__ import annotations

import json
import time
from bisect import bisect_left, insort
import zlib
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from operator import itemgetter
from typing import Any, Iterable

from collector.orderbook import BookSide, OrderBook, apply_text_levels
from common.schema import (
    PERP, SPOT, UTC, Candle, Funding, OpenInterest, Ticker, Trade, ms_to_dt, s_to_dt, strict_int,
)
from common.symbols import pair_from_symbol

EXCHANGE = "kraken"
_pair = lru_cache(maxsize=4096)(pair_from_symbol)


def decode(raw: str | bytes) -> Any:
    """JSON with floats as Decimal (exact engine precision, trailing zeros kept)."""
    return json.loads(raw, parse_float=Decimal)


def v2_symbol(configured: str) -> str:
    """Configured spot symbol (``BTC/USD``, ``XBT/USD``, ``XXBTZUSD``) -> WebSocket v2 name."""
    return pair_from_symbol(configured)


def rest_pair(symbol: str, assets: dict[str, str]) -> str:
    """v2 symbol -> the REST ``pair`` parameter (``BTC/USD`` -> ``XBTUSD``): REST keeps the
    legacy asset codes (``assets``: v2 code -> REST code)."""
    base, quote = symbol.split("/")
    return assets.get(base, base) + assets.get(quote, quote)


def parse_time(text: str) -> datetime:
    """RFC 3339 with up to nanosecond digits (``2023-10-04T16:25:00.000000000Z``) -> UTC."""
    text = text.strip()
    if text.endswith("Z"):
        text = text[:-1]
    if "." in text:
        head, frac = text.split(".", 1)
        text = f"{head}.{(frac + '000000')[:6]}"
    dt = datetime.fromisoformat(text)
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


_fromisoformat = datetime.fromisoformat
_UTC = timezone.utc


def parse_time_fast(text: str) -> datetime:
    """``parse_time`` for the usual ``...Z`` form: Python's own parser (3.11+: any number of
    fractional digits, truncated to microseconds, 'Z' = UTC) gives the same datetime; any other
    form (no zone, another offset, not text) goes through ``parse_time``."""
    try:
        dt = _fromisoformat(text)
    except (ValueError, TypeError):
        return parse_time(text)
    return dt if dt.tzinfo is _UTC else parse_time(text)


def _f(value: Any) -> float | None:
    return None if value is None or value == "" else float(value)


_int = strict_int


# ---- spot v2 -------------------------------------------------------------------------------------
def parse_instrument_pairs(msg: dict) -> dict[str, tuple[int, int]]:
    """``instrument`` snapshot/update -> {symbol: (price_precision, qty_precision)}."""
    pairs = msg["data"].get("pairs") or []
    return {p["symbol"]: (int(p["price_precision"]), int(p["qty_precision"])) for p in pairs}


def parse_ticker(item: dict, received_at: datetime, market: str = SPOT) -> Ticker:
    symbol = item["symbol"]
    get = item.get
    # orjson floats as they are (float(x) of a float is x); anything else by _f's rule.
    last = v if type(v := get("last")) is float else _f(v)
    volume = v if type(v := get("volume")) is float else _f(v)
    vwap = v if type(v := get("vwap")) is float else _f(v)
    change = v if type(v := get("change")) is float else _f(v)
    ts = parse_time_fast(v) if (v := get("timestamp")) else received_at
    return Ticker(
        EXCHANGE, symbol, _pair(symbol), market, ts, received_at,
        last,
        v if type(v := item["bid"]) is float else _f(v),
        v if type(v := get("bid_qty")) is float else _f(v),
        v if type(v := item["ask"]) is float else _f(v),
        v if type(v := get("ask_qty")) is float else _f(v),
        (last - change) if last is not None and change is not None else None,
        v if type(v := get("high")) is float else _f(v),
        v if type(v := get("low")) is float else _f(v),
        volume,
        # Kraken has no quote-volume field: 24 h volume x 24 h VWAP is the quote volume.
        volume * vwap if volume is not None and vwap is not None else None,
        v if type(v := get("change_pct")) is float else _f(v))


def parse_trades(msg: dict, received_at: datetime, market: str = SPOT) -> list[Trade]:
    out = []
    for item in msg["data"]:
        symbol = item["symbol"]
        side = item["side"]
        if side != "buy" and side != "sell":
            raise ValueError(f"bad side {side!r}")
        # Positional construction (trade_id, price, size, side): cheaper than keywords.
        out.append(Trade(EXCHANGE, symbol, _pair(symbol), market,
                         parse_time_fast(item["timestamp"]), received_at,
                         str(int(item["trade_id"])), float(item["price"]),
                         float(item["qty"]), side))
    return out


def parse_unified_ticker(item: dict, received_at: datetime
                         ) -> tuple[Ticker, Funding | None, OpenInterest | None]:
    """Unified WebSocket ``ticker`` of a perpetual (asset_class derivatives): the spot v2 ticker
    fields, plus -- names INFERRED from the v2 conventions, no source documents them yet --
    ``mark_price``, ``index_price``, ``funding_rate`` (relative, dimensionless, as v1's
    ``relative_funding_rate``), ``funding_rate_prediction``, ``next_funding_time`` (RFC 3339)
    and ``open_interest`` (contracts = base units on PF_)."""
    ticker = parse_ticker(item, received_at, PERP)
    ticker.mark_price, ticker.index_price = _f(item.get("mark_price")), _f(item.get("index_price"))
    symbol, pair, ts = ticker.symbol, ticker.pair, ticker.ts
    funding = None
    if item.get("funding_rate") is not None:
        nxt = item.get("next_funding_time")
        funding = Funding(EXCHANGE, symbol, pair, PERP, ts, received_at,
                          rate=float(item["funding_rate"]),
                          next_funding_time=parse_time(nxt) if nxt else None,
                          predicted_rate=_f(item.get("funding_rate_prediction")),
                          mark_price=ticker.mark_price, index_price=ticker.index_price,
                          interval_hours=1.0)
    oi = _open_interest(item.get("open_interest"), symbol, pair, ts, received_at,
                        ticker.mark_price)
    return ticker, funding, oi


def parse_candle(item: dict, received_at: datetime) -> Candle:
    symbol = item["symbol"]
    return Candle(EXCHANGE, symbol, pair_from_symbol(symbol), SPOT,
                  parse_time(item["interval_begin"]), received_at,
                  interval=f"{int(item['interval'])}m", open=float(item["open"]),
                  high=float(item["high"]), low=float(item["low"]), close=float(item["close"]),
                  volume=float(item["volume"]),
                  quote_volume=float(item["volume"]) * float(item["vwap"])
                  if item.get("vwap") is not None else None,
                  trades=int(item["trades"]) if item.get("trades") is not None else None,
                  closed=False)


def checksum_text(value: Decimal | int | float | str, precision: int | None) -> str:
    """One number as the checksum wants it: fixed to the pair's precision, '.' removed, leading
    zeros stripped (``45285.2`` -> ``452852``; ``0.00100000`` -> ``100000``)."""
    dec = value if isinstance(value, Decimal) else Decimal(str(value))
    if precision is not None:
        try:
            dec = dec.quantize(Decimal(1).scaleb(-precision))
        except InvalidOperation as exc:   # more digits than the decimal context holds
            raise ValueError(f"cannot fix {value!r} to {precision} places") from exc
    return format(dec, "f").replace(".", "").lstrip("0")


Level = tuple[float, float, str, str]   # price, qty, price checksum text, qty checksum text


def parse_levels(levels: Iterable[dict], price_precision: int | None,
                 qty_precision: int | None) -> list[Level]:
    out = []
    for level in levels:
        price, qty = level["price"], level["qty"]
        out.append((float(price), float(qty), checksum_text(price, price_precision),
                    checksum_text(qty, qty_precision)))
    return out


class Inexact(ValueError):
    """A number whose checksum text cannot be proven exact from its float."""


def _exact_text(value: float | int, precision: int, scale: float) -> str:
    """Checksum text of a number decoded by orjson (a correctly rounded float, or an int) fixed
    to ``precision`` places, i.e. the decimal digits of N = round(D x 10^precision) for the
    received decimal D (``checksum_text`` computes the same with exact decimals).

    For a float x: m = x * 10^p (``scale``) and r = int(m + 0.5). Proven equal to the exact
    path when 1 <= r < 10^15 and |m - r| <= 0.1: then |D x 10^p - m| <= 2 x 2^-52 x 10^15 < 0.45
    - 0.1 (decoding and the product each within an ulp, allowing one more than correct rounding),
    so D x 10^p lies within 0.45 of r and quantizing D to p places (any round-to-nearest) gives r.
    Anything else (a value near a rounding tie, too many digits, <= 0, bool, str) raises
    ``Inexact``."""
    if type(value) is float:
        if value > 0.0:
            m = value * scale
            if m < 1e15:
                r = int(m + 0.5)
                d = m - r
                if r and -0.1 <= d <= 0.1:
                    return str(r)
    elif type(value) is int and 0 < value < 10 ** (15 - precision):
        return str(value * 10 ** precision)
    raise Inexact(repr(value))


CHECKSUM_LEVELS = 10


def levels_exact(levels: Iterable[dict], price_precision: int | None,
                 qty_precision: int | None) -> list[tuple[float, float, str]]:
    """A ``decode``d (Decimal) message's levels -> (price, qty, checksum text of the level)."""
    return [(price, qty, pt + qt)
            for price, qty, pt, qt in parse_levels(levels, price_precision, qty_precision)]


def book_checksum(asks: Iterable[tuple[str, str]], bids: Iterable[tuple[str, str]]) -> int:
    """CRC32 over the top 10 asks (ascending) then top 10 bids (descending), each level as
    price text + qty text (already in checksum form)."""
    text = "".join(p + q for p, q in asks) + "".join(p + q for p, q in bids)
    return zlib.crc32(text.encode()) & 0xFFFFFFFF


# symbol -> (its precision, price -> checksum text at that precision)
PriceTexts = dict[str, tuple[tuple[int, int], dict[float, str]]]
_PRICE_TEXTS_MAX = 16384


def price_texts_of(caches: PriceTexts, symbol: str, precision: tuple[int, int]) -> dict[float, str]:
    entry = caches.get(symbol)
    if entry is None or entry[0] != precision:
        entry = caches[symbol] = (precision, {})
    return entry[1]


def level_text(price: float, qty: float, precision: tuple[int, int] | None,
               price_texts: dict[float, str]) -> str:
    """A level's checksum text from its orjson floats, proven exact (``_exact_text``) or
    ``Inexact``; prices recur on the tick grid, so their texts are cached."""
    if precision is None:
        raise Inexact("no instrument precision")
    pp, qp = precision
    if pp > 22 or qp > 22:                      # 10^p no longer exact as a float
        raise Inexact("precision")
    ptext = price_texts.get(price)
    if ptext is None:
        ptext = _exact_text(price, pp, 10.0 ** pp)
        if len(price_texts) >= _PRICE_TEXTS_MAX:
            price_texts.clear()
        price_texts[price] = ptext
    return ptext + _exact_text(qty, qp, 10.0 ** qp)


def book_crc(book: OrderBook, precision: tuple[int, int] | None = None,
             price_texts: dict[float, str] | None = None) -> int:
    """The v2 checksum of a kept-text book: CRC32 of the top 10 asks then the top 10 bids. A
    level whose text is still to be made (``None``: applied by ``apply_levels``) gets it here,
    once: only levels that reach the top 10 are ever formatted."""
    parts: list[str] = []
    for side in (book.asks, book.bids):
        text = side.text
        assert text is not None
        top = side.keys[:CHECKSUM_LEVELS]
        texts = itemgetter(*top)(text) if len(top) > 1 else [text[key] for key in top]
        if None in texts or (texts and type(texts[0]) is tuple):
            texts = [t if type(t) is str else _level_text_of(side, key, precision, price_texts)
                     for key, t in zip(top, texts)]
        parts += texts
    return zlib.crc32("".join(parts).encode()) & 0xFFFFFFFF


def _level_text_of(side: BookSide, key: float, precision: tuple[int, int] | None,
                   price_texts: dict[float, str] | None) -> str:
    text = side.text
    assert text is not None
    level = text[key]
    if level is None:
        level = text[key] = level_text(-key if side.is_bid else key, side.levels[key], precision,
                                       {} if price_texts is None else price_texts)
    elif type(level) is tuple:                  # (price text, qty text): BookSide.set
        level = "".join(level)
    return level


_NUMBERS = (float, int)


def apply_levels(side: BookSide, levels: Iterable[dict]) -> None:
    """The hot path: an orjson-decoded item's levels straight onto a kept-text side (qty 0
    deletes); a changed level's checksum text is left to ``book_crc``. A level that is not a
    pair of numbers raises with the side possibly half changed: the caller resyncs."""
    book, keys, text = side.levels, side.keys, side.text
    assert text is not None
    sign = -1.0 if side.is_bid else 1.0
    for level in levels:
        price = level["price"]
        qty = level["qty"]
        if type(price) not in _NUMBERS or type(qty) not in _NUMBERS or price <= 0 or qty < 0:
            raise ValueError(f"bad book level {level!r}")
        key = sign * price
        if qty == 0:
            if key in book:
                del book[key]
                del keys[bisect_left(keys, key)]
            text.pop(key, None)
        else:
            if key not in book:
                insort(keys, key)
            book[key] = float(qty)
            text[key] = None


def apply_book(book: OrderBook, kind: str, item: dict, depth: int) -> None:
    """One orjson-decoded ``book`` item onto a kept-text book (a snapshot replaces it), then
    truncated to the subscribed depth (Kraken never deletes levels that fall out of it). The
    checksum is the caller's to verify (``book_crc``), when it chooses."""
    if kind == "snapshot":
        book.load_snapshot((), ())
    apply_levels(book.asks, item["asks"])
    apply_levels(book.bids, item["bids"])
    book.changed = True
    book.truncate(depth)


def apply_book_exact(book: OrderBook, kind: str, item: dict,
                     precision: tuple[int, int] | None, depth: int) -> None:
    """``apply_book`` for an item of a ``decode``d (Decimal) message: every level's text made
    with exact decimals before the book changes (pairs without a known precision, or whose
    numbers once could not be proven from floats)."""
    pp, qp = precision or (None, None)
    asks, bids = levels_exact(item["asks"], pp, qp), levels_exact(item["bids"], pp, qp)
    if kind == "snapshot":
        book.load_snapshot((), ())
    apply_text_levels(book.asks, asks)
    apply_text_levels(book.bids, bids)
    book.changed = True
    book.truncate(depth)


# ---- spot REST -----------------------------------------------------------------------------------
# Rate-limit errors Kraken REST answers with HTTP 200 (matched by prefix; a ": <detail>" may
# follow). ``EService:Throttled: <unix time>`` names the instant to wait until.
RATE_LIMIT_ERRORS = ("EAPI:Rate limit exceeded", "EAuth:Rate limit exceeded",
                     "EGeneral:Too many requests")
THROTTLED = "EService:Throttled"
RATE_LIMIT_PAUSE_S = 30.0


def rest_rate_limit(body: Any) -> float | None:
    """Seconds to pause all REST calls when a body says the client is rate limited (None when
    it does not), so that these answers back off like an HTTP 429."""
    errors = body.get("error") if isinstance(body, dict) else None
    if not errors or not isinstance(errors, list):
        return None
    for error in errors:
        text = str(error)
        if text.startswith(RATE_LIMIT_ERRORS):
            return RATE_LIMIT_PAUSE_S
        if text.startswith(THROTTLED):
            try:
                return max(1.0, float(text.rsplit(":", 1)[1]) - time.time())
            except (ValueError, IndexError):
                return RATE_LIMIT_PAUSE_S
    return None


def _rest_result(body: dict) -> tuple[list, Any]:
    """``{"error": [...], "result": {<pair key>: rows, "last": cursor}}`` -> (rows, last). The pair
    key is Kraken's own (``XXBTZUSD``), so it is taken as the only key besides ``last``."""
    if body.get("error"):
        raise ValueError(f"Kraken REST error: {body['error']!r}")
    result = body["result"]
    rows = [value for key, value in result.items() if key != "last"]
    if len(rows) != 1:
        raise ValueError(f"expected one pair in the result, got {list(result)!r}")
    return rows[0], result.get("last")


def parse_rest_trades(body: dict, symbol: str, received_at: datetime) -> tuple[list[Trade], str]:
    """``/0/public/Trades`` -> (trades oldest first, ``last`` cursor). Rows are
    ``[price, volume, time, "b"|"s", "l"|"m", misc, trade_id]``; ``trade_id`` is the id the v2
    ``trade`` channel sends, so backfilled and streamed trades share their unique key."""
    rows, last = _rest_result(body)
    pair = pair_from_symbol(symbol)
    out = []
    for row in rows:
        side = {"b": "buy", "s": "sell"}[row[3]]
        out.append(Trade(EXCHANGE, symbol, pair, SPOT, s_to_dt(row[2]), received_at,
                         trade_id=str(_int(row[6])), price=float(row[0]), size=float(row[1]),
                         side=side))
    return out, str(last)


def parse_rest_ohlc(body: dict, symbol: str, received_at: datetime) -> list[Candle]:
    """``/0/public/OHLC`` -> the closed candles. Rows are ``[time, open, high, low, close, vwap,
    volume, count]``; the last row is the running candle and is left out."""
    rows, _ = _rest_result(body)
    pair = pair_from_symbol(symbol)
    out = []
    for row in rows[:-1]:
        volume, vwap = float(row[6]), float(row[5])
        out.append(Candle(EXCHANGE, symbol, pair, SPOT, s_to_dt(row[0]), received_at,
                          interval="1m", open=float(row[1]), high=float(row[2]),
                          low=float(row[3]), close=float(row[4]), volume=volume,
                          quote_volume=volume * vwap, trades=_int(row[7]), closed=True))
    return out


# ---- futures v1 ----------------------------------------------------------------------------------
def parse_futures_ticker(msg: dict, received_at: datetime
                         ) -> tuple[Ticker, Funding | None, OpenInterest | None]:
    """Futures ``ticker`` -> ticker, funding and open interest.

    Funding: ``relative_funding_rate`` is the dimensionless rate comparable to other venues and is
    stored as ``rate``; ``funding_rate`` is Kraken's *absolute* rate (USD per contract per period,
    e.g. 0.0327 on PF_ETHUSD vs a relative 0.0000187) and is not comparable, so it is not stored.
    Funding fields are omitted by Kraken when zero.
    """
    symbol = msg["product_id"]
    pair = pair_from_symbol(symbol)
    ts = ms_to_dt(msg["time"])
    mark, index = _f(msg.get("markPrice")), _f(msg.get("index"))
    last = _f(msg.get("last"))
    ticker = Ticker(EXCHANGE, symbol, pair, PERP, ts, received_at, last=last,
                    bid=_f(msg.get("bid")), bid_size=_f(msg.get("bid_size")),
                    ask=_f(msg.get("ask")), ask_size=_f(msg.get("ask_size")),
                    open_24h=_f(msg.get("open")), high_24h=_f(msg.get("high")),
                    low_24h=_f(msg.get("low")), volume_24h=_f(msg.get("volume")),
                    quote_volume_24h=_f(msg.get("volumeQuote")),
                    change_pct_24h=_f(msg.get("change")), mark_price=mark, index_price=index)
    funding = None
    if msg.get("tag", "perpetual") == "perpetual":
        nxt = msg.get("next_funding_rate_time")
        funding = Funding(EXCHANGE, symbol, pair, PERP, ts, received_at,
                          rate=float(msg.get("relative_funding_rate") or 0.0),
                          next_funding_time=ms_to_dt(nxt) if nxt else None,
                          predicted_rate=_f(msg.get("relative_funding_rate_prediction")),
                          mark_price=mark, index_price=index, interval_hours=1.0)
    oi = _open_interest(msg.get("openInterest"), symbol, pair, ts, received_at, mark)
    return ticker, funding, oi


def _open_interest(amount: Any, symbol: str, pair: str, ts: datetime, received_at: datetime,
                   mark: float | None) -> OpenInterest | None:
    """Futures open interest (WebSocket ticker and REST tickers alike): PF_ (linear) contracts
    are 1 unit of base; the value uses the mark price."""
    if amount is None:
        return None
    oi = float(amount)
    return OpenInterest(EXCHANGE, symbol, pair, PERP, ts, received_at, open_interest=oi,
                        open_interest_value=oi * mark if mark is not None else None)


def parse_futures_instruments(body: dict) -> set[str]:
    """REST ``/derivatives/api/v3/instruments`` -> upper-case tradeable symbols."""
    if body.get("result") != "success":
        raise ValueError(f"instruments request failed: {body.get('error')!r}")
    return {item["symbol"].upper() for item in body["instruments"]
            if item.get("tradeable", True)}


def parse_futures_trade(msg: dict, received_at: datetime) -> Trade:
    symbol = msg["product_id"]
    side = msg["side"]
    if side not in ("buy", "sell"):
        raise ValueError(f"bad side {side!r}")
    return Trade(EXCHANGE, symbol, pair_from_symbol(symbol), PERP, ms_to_dt(msg["time"]),
                 received_at, trade_id=str(msg.get("uid") or msg["seq"]),
                 price=float(msg["price"]), size=float(msg["qty"]), side=side)


def parse_futures_book_snapshot(msg: dict) -> tuple[list[tuple[float, float]],
                                                    list[tuple[float, float]], int]:
    bids = [(float(lv["price"]), float(lv["qty"])) for lv in msg["bids"] if float(lv["qty"]) > 0]
    asks = [(float(lv["price"]), float(lv["qty"])) for lv in msg["asks"] if float(lv["qty"]) > 0]
    return bids, asks, int(msg["seq"])


def parse_futures_book_delta(msg: dict) -> tuple[str, float, float, int]:
    side = msg["side"]
    if side not in ("buy", "sell"):
        raise ValueError(f"bad side {side!r}")
    qty = float(msg["qty"])
    if qty < 0:
        raise ValueError("negative qty")
    return side, float(msg["price"]), qty, int(msg["seq"])


def apply_futures_delta(book: OrderBook, side: str, price: float, qty: float, seq: int) -> None:
    """One futures ``book`` level (absolute qty, 0 deletes; ``buy`` = bid) onto a synced book."""
    level = ((price, qty),)
    if side == "buy":
        book.apply(level, (), seq)
    else:
        book.apply((), level, seq)


# ---- futures REST --------------------------------------------------------------------------------
def _futures_ok(body: dict) -> dict:
    if body.get("result") != "success":
        raise ValueError(f"Kraken Futures REST error: {body.get('error')!r}")
    return body


def parse_futures_history(body: dict, symbol: str, received_at: datetime) -> list[Trade]:
    """``/derivatives/api/v3/history`` -> trades, newest first. ``uid`` is the id the WebSocket
    ``trade`` feed sends (the streamed trades' key). ``trade_id`` is the row's position in the
    page (100, 99, ...), not an id: a row without ``uid`` is keyed by its time, price, size and
    side instead."""
    pair = pair_from_symbol(symbol)
    out = []
    for row in _futures_ok(body)["history"]:
        side = row["side"]
        if side not in ("buy", "sell"):
            raise ValueError(f"bad side {side!r}")
        out.append(Trade(EXCHANGE, symbol, pair, PERP, parse_time(row["time"]), received_at,
                         trade_id=str(row.get("uid") or
                                      f"{row['time']}|{row['price']}|{row['size']}|{side}"),
                         price=float(row["price"]), size=float(row["size"]), side=side))
    return out


def parse_futures_rest_ticker(body: dict, symbol: str, received_at: datetime
                              ) -> tuple[Funding | None, OpenInterest | None]:
    """``/derivatives/api/v3/tickers`` -> funding and open interest of ``symbol``.

    REST gives only the absolute ``fundingRate`` (per contract); the stored rate is the relative
    one, i.e. absolute / index price (the WebSocket ``relative_funding_rate`` is defined as the
    absolute rate relative to the spot price)."""
    body = _futures_ok(body)
    row = next((t for t in body["tickers"] if str(t.get("symbol", "")).upper() == symbol), None)
    if row is None:
        raise ValueError(f"{symbol} not in the futures tickers")
    pair = pair_from_symbol(symbol)
    ts = parse_time(body["serverTime"]) if body.get("serverTime") else received_at
    mark, index = _f(row.get("markPrice")), _f(row.get("indexPrice"))
    funding = None
    if row.get("tag", "perpetual") == "perpetual" and index:
        absolute = _f(row.get("fundingRate")) or 0.0
        predicted = _f(row.get("fundingRatePrediction"))
        funding = Funding(EXCHANGE, symbol, pair, PERP, ts, received_at, rate=absolute / index,
                          predicted_rate=predicted / index if predicted is not None else None,
                          mark_price=mark, index_price=index, interval_hours=1.0)
    return funding, _open_interest(row.get("openInterest"), symbol, pair, ts, received_at, mark)
