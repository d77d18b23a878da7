"""Query-parameter validation. Every value reaching MongoDB is a validated scalar of a known type,
never a client-supplied document or operator. Errors are ``BadRequest`` (400, JSON body)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from aiohttp import web

EXCHANGES = ("binance", "bybit", "kraken", "gateio", "okx")
MARKETS = ("spot", "perp")
INTERVALS = ("1m",)
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


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
    if text.isdigit():
        try:
            return datetime.fromtimestamp(int(text) / 1000, tz=timezone.utc)
        except (OverflowError, OSError, ValueError) as exc:
            raise BadRequest(f"{name}: epoch milliseconds out of range") from exc
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


def filters(request: web.Request, *, interval: bool = False) -> Filters:
    query = request.query
    known = {"exchange", "symbol", "market", "limit", "since", "until"} | ({"interval"} if interval else set())
    unknown = sorted(set(query) - known)
    if unknown:
        raise BadRequest(f"unknown parameter(s): {', '.join(unknown)}", allowed=sorted(known))
    limit_text = _single(query, "limit")
    if limit_text is None:
        limit = DEFAULT_LIMIT
    else:
        if not limit_text.isdigit():
            raise BadRequest("limit: must be an integer between 1 and 1000")
        limit = int(limit_text)
        if not 1 <= limit <= MAX_LIMIT:
            raise BadRequest(f"limit: must be between 1 and {MAX_LIMIT}")
    since_text, until_text = _single(query, "since"), _single(query, "until")
    since = parse_time("since", since_text) if since_text else None
    until = parse_time("until", until_text) if until_text else None
    if since and until and since > until:
        raise BadRequest("since must not be after until")
    symbol = _single(query, "symbol")
    if symbol is not None and not (0 < len(symbol) <= 40 and symbol.isprintable()):
        raise BadRequest("symbol: 1 to 40 printable characters")
    return Filters(
        exchange=choice(query, "exchange", EXCHANGES),
        symbol=symbol or None,
        market=choice(query, "market", MARKETS),
        limit=limit, since=since, until=until,
        interval=(choice(query, "interval", INTERVALS) or "1m") if interval else None,
    )
