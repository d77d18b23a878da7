"""Query-parameter validation. Every value reaching MongoDB is a validated scalar of a known type,
never a client-supplied document or operator. Errors are ``BadRequest`` (400, JSON body)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from aiohttp import web
from bson import ObjectId

EXCHANGES = ("binance", "bybit", "kraken", "gateio", "okx")
MARKETS = ("spot", "perp")
INTERVALS = ("1m",)
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
# A book snapshot holds 2 x 20 levels, ~8x a trade's size: its default page is smaller, so a
# default page costs about what 100 trades do (and stays within 10 ms on the embedded server).
BOOK_DEFAULT_LIMIT = 20
TYPES = ("market_data", "order_book", "trades", "ohlcv", "funding_rates", "open_interest",
         "volume_liquidity")


# ASCII digits only: str.isdigit() also accepts "²" or "١٢", which int() rejects or reads, and
# an unbounded digit string makes int() raise past Python's 4300-digit limit.
_DIGITS = re.compile(r"[0-9]{1,15}")


def ascii_int(text: str) -> int | None:
    """The value of 1 to 15 ASCII digits, else None."""
    return int(text) if _DIGITS.fullmatch(text) else None


class ApiError(Exception):
    status = 400

    def __init__(self, message: str, **details) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class BadRequest(ApiError):
    status = 400


class NotFound(ApiError):
    status = 404


# The exact grammar the server accepts for since/until, published as the OpenAPI ``pattern``
# (so a schema-valid value is never refused and everything else is): epoch milliseconds (1 to 13
# digits, 1970-2286) or an ISO 8601 date, optionally with a time (minutes, seconds, up to 6
# decimals) and ``Z`` or a +hh:mm offset; years 1970-2999, days valid for their month, leap
# years included, so every match is a real instant.
_LEAP = r"(19(7[26]|8[048]|9[26])|2[0-9](0[48]|[2468][048]|[13579][26])|2000|2400)"
_YEAR = r"(19[7-9][0-9]|2[0-9]{3})"
_DATE = (rf"({_YEAR}-((0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])|(0[13-9]|1[0-2])-(29|30)"
         rf"|(0[13578]|1[02])-31)|{_LEAP}-02-29)")
_TIME = (r"T([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\.[0-9]{1,6})?)?"
         r"(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])?")
TIME_PATTERN = rf"^([0-9]{{1,13}}|{_DATE}({_TIME})?)$"
_TIME_RE = re.compile(TIME_PATTERN)
# Symbols: 1 to 40 printable ASCII characters (every exchange's symbols are ASCII).
SYMBOL_PATTERN = r"^[ -~]{1,40}$"
_SYMBOL_RE = re.compile(SYMBOL_PATTERN)


def parse_time(name: str, value: str) -> datetime:
    """``TIME_PATTERN``: ISO 8601 (``2026-01-01T00:00:00Z``) or epoch milliseconds."""
    if not _TIME_RE.fullmatch(value):
        raise BadRequest(f"{name}: expected ISO 8601 (2026-01-01T00:00:00Z; years 1970-2999) "
                         f"or epoch milliseconds (up to 13 digits), got {value[:64]!r}")
    if value.isdigit():
        return datetime.fromtimestamp(int(value) / 1000, tz=timezone.utc)
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def check_symbol(name: str, value: str) -> str:
    if not _SYMBOL_RE.fullmatch(value):
        raise BadRequest(f"{name}: 1 to 40 printable ASCII characters")
    return value


def _single(query, name: str) -> str | None:
    values = query.getall(name, [])
    if len(values) > 1:
        raise BadRequest(f"{name}: give it once")
    return values[0] if values else None


def choice(query, name: str, allowed: tuple[str, ...]) -> str | None:
    """Exactly one of ``allowed`` (case-sensitive, as the OpenAPI enum says), or absent."""
    value = _single(query, name)
    if value is None:
        return None
    if value not in allowed:
        raise BadRequest(f"{name}: must be one of {', '.join(allowed)}", allowed=list(allowed))
    return value


@dataclass
class Filters:
    exchange: str | None
    symbol: str | None
    market: str | None
    limit: int
    since: datetime | None
    until: datetime | None
    interval: str | None = None
    # (t, _id) of the last row of the previous page (t: epoch ms, common.schema.TIME_KEY): the
    # next page is strictly older; _id None: every row of that millisecond was served.
    cursor: tuple[int, Any] | None = None


# The cursor is ``<epoch_ms>.<kind><id>`` (kind o: ObjectId hex, i: integer, s: ASCII string):
# the last row's time key ``t`` and ``_id``; or ``<epoch_ms>`` alone when the next row is older
# than that millisecond (the next page is then ``t < epoch_ms``: one read instead of two).
# Readable, and a grammar the OpenAPI ``pattern`` states exactly, so every well-formed cursor is
# a valid position (possibly past the end: an empty page) and nothing else is accepted. String
# ids are the gap ledger's ASCII keys (``exchange:market:symbol:stream:ms``); records use
# ObjectIds.
CURSOR_PATTERN = r"^[0-9]{1,13}(\.(o[0-9a-f]{24}|i-?[0-9]{1,18}|s[ -~]{1,200}))?$"
_CURSOR_RE = re.compile(CURSOR_PATTERN)


def encode_cursor(t_ms: int, _id: Any) -> str:
    if _id is None:
        return str(int(t_ms))
    if isinstance(_id, ObjectId):
        return f"{int(t_ms)}.o{_id}"
    if isinstance(_id, int) and not isinstance(_id, bool):
        return f"{int(t_ms)}.i{_id}"
    return f"{int(t_ms)}.s{_id}"


def decode_cursor(text: str) -> tuple[int, Any]:
    if not _CURSOR_RE.fullmatch(text):
        raise BadRequest("cursor: invalid; pass the 'next' value of the previous page unchanged")
    ms, _, ident = text.partition(".")
    if not ident:
        return int(ms), None
    kind, value = ident[0], ident[1:]
    if kind == "o":
        return int(ms), ObjectId(value)
    return int(ms), (int(value) if kind == "i" else value)


def filters(request: web.Request, *, interval: bool = False,
            default_limit: int = DEFAULT_LIMIT) -> Filters:
    query = request.query
    known = {"exchange", "symbol", "market", "limit", "since", "until", "cursor"} | (
        {"interval"} if interval else set())
    unknown = sorted(set(query) - known)
    if unknown:
        raise BadRequest(f"unknown parameter(s): {', '.join(unknown)}", allowed=sorted(known))
    limit_text = _single(query, "limit")
    if limit_text is None:
        limit = default_limit
    else:
        parsed = ascii_int(limit_text)
        if parsed is None:
            raise BadRequest(f"limit: must be an integer between 1 and {MAX_LIMIT}")
        limit = parsed
        if not 1 <= limit <= MAX_LIMIT:
            raise BadRequest(f"limit: must be between 1 and {MAX_LIMIT}")
    since_text, until_text = _single(query, "since"), _single(query, "until")
    since = parse_time("since", since_text) if since_text is not None else None
    until = parse_time("until", until_text) if until_text is not None else None
    # since > until is an empty range: an empty page, not an error.
    cursor_text = _single(query, "cursor")
    cursor = decode_cursor(cursor_text) if cursor_text is not None else None
    symbol = _single(query, "symbol")
    if symbol is not None:
        check_symbol("symbol", symbol)
    return Filters(
        exchange=choice(query, "exchange", EXCHANGES),
        symbol=symbol,
        market=choice(query, "market", MARKETS),
        limit=limit, since=since, until=until,
        interval=(choice(query, "interval", INTERVALS) or "1m") if interval else None,
        cursor=cursor,
    )


def int_param(query, name: str, default: int, low: int, high: int) -> int:
    text = _single(query, name)
    if text is None:
        return default
    value = ascii_int(text)
    if value is None or not low <= value <= high:
        raise BadRequest(f"{name}: must be an integer between {low} and {high}")
    return value


def only(query, allowed: set[str]) -> None:
    unknown = sorted(set(query) - allowed)
    if unknown:
        raise BadRequest(f"unknown parameter(s): {', '.join(unknown)}", allowed=sorted(allowed))


# OpenAPI parameter objects, used by the route table (api.routes) and so by /openapi.json.
def query_param(name: str, schema: dict, description: str) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


def path_param(name: str, schema: dict, description: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": schema,
            "description": description}


P_EXCHANGE = query_param("exchange", {"type": "string", "enum": list(EXCHANGES)}, "exchange id")
P_SYMBOL = query_param("symbol", {"type": "string", "pattern": SYMBOL_PATTERN},
              "native (BTC-USDT) or any spelling (btcusdt, BTC/USDT); unknown -> 404")
P_MARKET = query_param("market", {"type": "string", "enum": list(MARKETS)}, "spot or perp")
def limit_param(default: int) -> dict:
    return query_param("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT,
                                 "default": default}, "rows per page")


P_LIMIT = limit_param(DEFAULT_LIMIT)
P_SINCE = query_param("since", {"type": "string", "pattern": TIME_PATTERN},
                      "ISO 8601 or epoch ms, inclusive; since > until is an empty range")
P_UNTIL = query_param("until", {"type": "string", "pattern": TIME_PATTERN},
                      "ISO 8601 or epoch ms, inclusive")
P_CURSOR = query_param("cursor", {"type": "string", "pattern": CURSOR_PATTERN},
                       "the 'next' value of the previous page, unchanged")
P_INTERVAL = query_param("interval", {"type": "string", "enum": list(INTERVALS)}, "candle interval")
HISTORY_PARAMS = [P_EXCHANGE, P_SYMBOL, P_MARKET, P_LIMIT, P_SINCE, P_UNTIL, P_CURSOR]
BOOK_HISTORY_PARAMS = [limit_param(BOOK_DEFAULT_LIMIT) if p is P_LIMIT else p for p in HISTORY_PARAMS]
PATH_EXCHANGE = {**path_param("exchange", {"type": "string", "enum": list(EXCHANGES)}, "exchange id"),
                 "example": "binance"}
PATH_SYMBOL = {**path_param("symbol", {"type": "string", "pattern": SYMBOL_PATTERN},
                    "symbol, any spelling"), "example": "BTCUSDT"}
