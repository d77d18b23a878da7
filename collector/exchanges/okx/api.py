"""OKX REST calls: the ``{"code","msg","data"}`` envelope and its error codes. A rate limit in
the body (``50011``, also sent with HTTP 200) pauses the shared budget like a 429; an unknown
instrument (``51001``) is ``SymbolUnavailable``, never a default."""
from __future__ import annotations

from typing import Any

from collector.exchanges.okx import endpoints as ep
from collector.kit.books import SymbolUnavailable
from collector.rest import RateLimited, RestClient, RestError


def _code(payload: Any) -> str | None:
    return str(payload.get("code")) if isinstance(payload, dict) else None


async def get_data(client: RestClient, path: str, params: dict[str, Any]) -> list[Any]:
    """``data`` of a successful call; raises ``RateLimited`` (budget paused),
    ``SymbolUnavailable`` or ``RestError``."""
    try:
        payload = await client.get(path, params)
    except RestError as exc:
        payload = exc.payload
        if _code(payload) == ep.UNKNOWN_INSTRUMENT:
            raise SymbolUnavailable(str(payload.get("msg"))) from exc
        raise
    code = _code(payload)
    if code == "0" and isinstance(payload.get("data"), list):
        return payload["data"]
    if code in ep.RATE_LIMIT_CODES:
        client.budget.pause(ep.RATE_LIMIT_PAUSE_S)
        raise RateLimited(200, payload, path)
    if code == ep.UNKNOWN_INSTRUMENT:
        raise SymbolUnavailable(str(payload.get("msg")))
    raise RestError(200, payload, path)
