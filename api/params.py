"""Query-parameter validation. Every value reaching MongoDB is a validated scalar of a known type,
never a client-supplied document or operator. Errors are ``BadRequest`` (400, JSON body)."""
from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
from bson import ObjectId

from aiohttp import web

EXCHANGES = ("binance", "bybit", "kraken", "gateio", "okx")
MARKETS = ("spot", "perp")
INTERVALS = ("1m",)
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
# Longest since..until window one request may scan; longer ranges are walked with ``cursor``.
MAX_RANGE = timedelta(days=31)
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


def parse_time(name: str, value: str) -> datetime:
    """ISO 8601 (``2026-01-01T00:00:00Z``) or epoch milliseconds."""
    text = value.strip()
    if text.isascii() and text.isdigit():
        ms = ascii_int(text)
        try:
            if ms is not None:
                return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            pass
        raise BadRequest(f"{name}: epoch milliseconds out of range")
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise BadRequest(f"{name}: expected ISO 8601 or epoch milliseconds, got {value!r}") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _single(query, name: str) -> str | None:
    values = query.getall(name, [])
    if len(values) > 1:
        raise BadRequest(f"{name}: give it once")
    return values[0] if values else None


def choice(query, name: str, allowed: tuple[str, ...]) -> str | None:
    value = _single(query, name)
    if value is None or value == "":
        return None
    value = value.lower()
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
    # next page is strictly older.
    cursor: tuple[int, Any] | None = None


def encode_cursor(t_ms: int, _id: Any) -> str:
    """Opaque cursor: urlsafe base64 of ``[epoch_ms, id_kind, id]``."""
    if isinstance(_id, ObjectId):
        ident = ["o", str(_id)]
    elif isinstance(_id, int):
        ident = ["i", _id]
    else:
        ident = ["s", str(_id)]
    raw = orjson.dumps([int(t_ms), *ident])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str) -> tuple[int, Any]:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        ms, kind, ident = orjson.loads(raw)
        ts = int(ms)
        datetime.fromtimestamp(ts / 1000, tz=timezone.utc)     # in range, like since/until
        if kind == "o":
            return ts, ObjectId(str(ident))
        if kind == "i" and isinstance(ident, int) and not isinstance(ident, bool):
            return ts, ident
        if kind == "s" and isinstance(ident, str):
            return ts, ident
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError, OverflowError, OSError):
        pass
    except Exception:   # noqa: BLE001  (bson.errors.InvalidId and friends)
        pass
    raise BadRequest("cursor: invalid; pass the 'next' value of the previous page unchanged")


def filters(request: web.Request, *, interval: bool = False) -> Filters:
    query = request.query
    known = {"exchange", "symbol", "market", "limit", "since", "until", "cursor"} | ({"interval"} if interval else set())
    unknown = sorted(set(query) - known)
    if unknown:
        raise BadRequest(f"unknown parameter(s): {', '.join(unknown)}", allowed=sorted(known))
    limit_text = _single(query, "limit")
    if limit_text is None:
        limit = DEFAULT_LIMIT
    else:
        parsed = ascii_int(limit_text)
        if parsed is None:
            raise BadRequest(f"limit: must be an integer between 1 and {MAX_LIMIT}")
        limit = parsed
        if not 1 <= limit <= MAX_LIMIT:
            raise BadRequest(f"limit: must be between 1 and {MAX_LIMIT}")
    since_text, until_text = _single(query, "since"), _single(query, "until")
    since = parse_time("since", since_text) if since_text else None
    until = parse_time("until", until_text) if until_text else None
    if since and until and since > until:
        raise BadRequest("since must not be after until")
    cursor_text = _single(query, "cursor")
    cursor = decode_cursor(cursor_text) if cursor_text else None
    if since and cursor is None:
        end = until or datetime.now(timezone.utc)
        if end - since > MAX_RANGE:
            raise BadRequest(f"since..until spans more than {MAX_RANGE.days} days; narrow it "
                             "or page through it with 'cursor'")
    symbol = _single(query, "symbol")
    if symbol is not None and not (0 < len(symbol) <= 40 and symbol.isprintable()):
        raise BadRequest("symbol: 1 to 40 printable characters")
    return Filters(
        exchange=choice(query, "exchange", EXCHANGES),
        symbol=symbol or None,
        market=choice(query, "market", MARKETS),
        limit=limit, since=since, until=until,
        interval=(choice(query, "interval", INTERVALS) or "1m") if interval else None,
        cursor=cursor,
    )


def int_param(query, name: str, default: int, low: int, high: int) -> int:
    text = _single(query, name)
    if text is None or text == "":
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
P_SYMBOL = query_param("symbol", {"type": "string", "minLength": 1, "maxLength": 40},
              "native (BTC-USDT) or any spelling (btcusdt, BTC/USDT); unknown -> 404")
P_MARKET = query_param("market", {"type": "string", "enum": list(MARKETS)}, "spot or perp")
P_LIMIT = query_param("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT,
                       "default": DEFAULT_LIMIT}, "rows per page")
P_SINCE = query_param("since", {"type": "string"}, "ISO 8601 or epoch ms, inclusive")
P_UNTIL = query_param("until", {"type": "string"}, "ISO 8601 or epoch ms, inclusive")
P_CURSOR = query_param("cursor", {"type": "string"}, "the 'next' value of the previous page")
P_INTERVAL = query_param("interval", {"type": "string", "enum": list(INTERVALS)}, "candle interval")
HISTORY_PARAMS = [P_EXCHANGE, P_SYMBOL, P_MARKET, P_LIMIT, P_SINCE, P_UNTIL, P_CURSOR]
PATH_EXCHANGE = {**path_param("exchange", {"type": "string", "enum": list(EXCHANGES)}, "exchange id"),
                 "example": "binance"}
PATH_SYMBOL = {**path_param("symbol", {"type": "string", "minLength": 1, "maxLength": 40},
                    "symbol, any spelling"), "example": "BTCUSDT"}
