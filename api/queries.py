"""MongoDB reads behind the handlers; each is served by an index from common.indexes."""
from __future__ import annotations

import asyncio
import time
from typing import Any

from pymongo import DESCENDING

from api.params import EXCHANGES, Filters, NotFound, encode_cursor
from common import schema
from common.symbols import symbol_key

NO_ID = {"_id": 0}


def comparable(text: str) -> str:
    """Spelling-independent key: BTC-USDT, BTC_USDT, btcusdt, BTC/USDT -> BTCUSDT; XBT -> BTC."""
    key = symbol_key(text)
    if key == "XXBTZUSD":
        return "BTCUSD"
    return key.replace("XBT", "BTC")


class Queries:
    def __init__(self, db, symbol_cache_s: float = 10.0, latest_cache_s: float = 0.25) -> None:
        self.db = db
        # ``latest`` is small (one document per key) and read by every /realtime request: it is
        # read once per ``latest_cache_s`` (single flight: concurrent requests share one read).
        self._latest_cache_s = latest_cache_s
        self._latest_docs: list[dict[str, Any]] = []
        self._latest_at = -1e9
        self._latest_inflight: asyncio.Future | None = None
        self._symbols: dict[str, list[str]] = {}
        self._symbols_at = 0.0
        self._cache_s = symbol_cache_s

    async def known_symbols(self, max_age_s: float | None = None) -> dict[str, list[str]]:
        """exchange -> native symbols seen (from ``latest``; cached for a few seconds)."""
        max_age = self._cache_s if max_age_s is None else max_age_s
        if time.monotonic() - self._symbols_at > max_age:
            found: dict[str, set[str]] = {}
            cursor = self.db[schema.LATEST].find({}, {"_id": 0, "exchange": 1, "symbol": 1})
            async for doc in cursor:
                found.setdefault(doc["exchange"], set()).add(doc["symbol"])
            self._symbols = {ex: sorted(found[ex]) for ex in EXCHANGES if ex in found}
            self._symbols_at = time.monotonic()
        return self._symbols

    async def resolve_symbols(self, exchange: str | None, symbol: str) -> list[str]:
        """Native symbols matching what the user typed; 404 with the known list if none."""
        wanted = comparable(symbol)
        matches: list[str] = []
        # A miss re-reads the symbol list (at most once a second) before answering 404, so a
        # symbol that just started streaming is found at once.
        for max_age in (None, 1.0):
            known = await self.known_symbols(max_age)
            candidates = [known.get(exchange, [])] if exchange else list(known.values())
            matches = sorted({s for group in candidates for s in group
                              if s == symbol or comparable(s) == wanted})
            if matches:
                break
        if not matches:
            scope = {exchange: known.get(exchange, [])} if exchange else known
            raise NotFound(f"unknown symbol {symbol!r}", known_symbols=scope)
        return matches

    async def history(self, collection: str, f: Filters) -> tuple[list[dict[str, Any]], str | None]:
        """Newest first; a full page also returns the cursor of its last row (keyset paging on
        ``(ts, _id)``: the next page is ``ts < last_ts or (ts == last_ts and _id < last_id)``)."""
        query: dict[str, Any] = {}
        if f.exchange:
            query["exchange"] = f.exchange
        if f.symbol:
            symbols = await self.resolve_symbols(f.exchange, f.symbol)
            query["symbol"] = symbols[0] if len(symbols) == 1 else {"$in": symbols}
        if f.market:
            query["market"] = f.market
        if f.interval:
            query["interval"] = f.interval
        if f.since or f.until:
            rng: dict[str, Any] = {}
            if f.since:
                rng["$gte"] = f.since
            if f.until:
                rng["$lte"] = f.until
            query["ts"] = rng
        if f.cursor:
            last_ts, last_id = f.cursor
            query = {"$and": [query, {"$or": [{"ts": {"$lt": last_ts}},
                                              {"ts": last_ts, "_id": {"$lt": last_id}}]}]}
        cursor = self.db[collection].find(query).sort(
            [("ts", DESCENDING), ("_id", DESCENDING)]).limit(f.limit)
        rows = await cursor.to_list(f.limit)
        next_cursor = None
        if len(rows) == f.limit and rows:
            next_cursor = encode_cursor(rows[-1]["ts"], rows[-1]["_id"])
        for row in rows:
            row.pop("_id", None)
        return rows, next_cursor

    async def latest_of_type(self, kind: str, exchange: str | None = None,
                             symbols: list[str] | None = None) -> list[dict[str, Any]]:
        query: dict[str, Any] = {"type": kind}
        if exchange:
            query["exchange"] = exchange
        if symbols:
            query["symbol"] = symbols[0] if len(symbols) == 1 else {"$in": symbols}
        return await self.db[schema.LATEST].find(query, NO_ID).to_list(5000)

    async def _all_latest(self) -> list[dict[str, Any]]:
        if time.monotonic() - self._latest_at <= self._latest_cache_s:
            return self._latest_docs
        if self._latest_inflight is None:
            fut = asyncio.get_running_loop().create_future()
            self._latest_inflight = fut
            try:
                docs = await self.db[schema.LATEST].find({}, NO_ID).to_list(5000)
                self._latest_docs, self._latest_at = docs, time.monotonic()
                fut.set_result(docs)
            except BaseException as exc:
                fut.set_exception(exc)
                fut.exception()          # retrieved: no "never retrieved" warning
                raise
            finally:
                self._latest_inflight = None
            return docs
        return await asyncio.shield(self._latest_inflight)

    async def latest(self, exchange: str | None = None,
                     symbols: list[str] | None = None) -> list[dict[str, Any]]:
        """Newest record per key (copies: callers may mutate them)."""
        wanted = set(symbols or ())
        return [dict(d) for d in await self._all_latest()
                if (not exchange or d.get("exchange") == exchange)
                and (not wanted or d.get("symbol") in wanted)]

    async def status(self) -> dict[str, Any] | None:
        return await self.db[schema.STATUS].find_one({"_id": "collector"})
