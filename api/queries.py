"""MongoDB reads behind the handlers; each is served by an index from common.indexes."""
from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Awaitable, Callable, cast

from pymongo import DESCENDING

from api.params import EXCHANGES, Filters, NotFound, encode_cursor
from api.status import is_collector_status, merge_status
from common import schema
from common.status import CollectorStatus, MergedStatus
from common.symbols import symbol_key

NO_ID = {"_id": 0}


def comparable(text: str) -> str:
    """Spelling-independent key: BTC-USDT, BTC_USDT, btcusdt, BTC/USDT -> BTCUSDT; XBT -> BTC."""
    key = symbol_key(text)
    if key == "XXBTZUSD":
        return "BTCUSD"
    return key.replace("XBT", "BTC")


def one_or_in(values: list[str]) -> Any:
    return values[0] if len(values) == 1 else {"$in": values}


class SingleFlight:
    """A value re-read at most once per ``max_age_s``; concurrent callers share one read."""

    def __init__(self, load: Callable[[], Awaitable[Any]], max_age_s: float) -> None:
        self._load = load
        self.max_age_s = max_age_s
        self._value: Any = None
        self._at = -1e9
        self._inflight: asyncio.Future | None = None

    async def get(self) -> Any:
        if time.monotonic() - self._at <= self.max_age_s:
            return self._value
        if self._inflight is not None:
            return await asyncio.shield(self._inflight)
        fut = asyncio.get_running_loop().create_future()
        self._inflight = fut
        try:
            value = await self._load()
            self._value, self._at = value, time.monotonic()
            fut.set_result(value)
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()          # retrieved: no "never retrieved" warning
            raise
        finally:
            self._inflight = None
        return value


async def gap_counts(db) -> dict[str, dict[str, int]]:
    """exchange -> {open, last_24h} from the gap ledger."""
    since = datetime.now(timezone.utc) - timedelta(days=1)
    counts: dict[str, dict[str, int]] = {}
    cursor = await db[schema.GAPS].aggregate([
        {"$match": {"$or": [{"start": {"$gte": since}}, {"end": None}]}},
        {"$group": {"_id": "$exchange",
                    "open": {"$sum": {"$cond": [{"$eq": [{"$ifNull": ["$end", None]}, None]}, 1, 0]}},
                    "last_24h": {"$sum": {"$cond": [{"$gte": ["$start", since]}, 1, 0]}}}}])
    async for row in cursor:
        counts[row["_id"]] = {"open": row["open"], "last_24h": row["last_24h"]}
    return counts


class Queries:
    def __init__(self, db, symbol_cache_s: float = 10.0, latest_cache_s: float = 0.25,
                 ledger_cache_s: float = 2.0) -> None:
        self.db = db
        # ``latest`` is small (one document per key) and read by every /realtime request, like
        # the collector status documents (book sync state): both are re-read at most every
        # ``latest_cache_s``.
        self._latest = SingleFlight(lambda: self.db[schema.LATEST].find({}, NO_ID).to_list(5000),
                                    latest_cache_s)
        self._status = SingleFlight(self.status, latest_cache_s)
        # Gap-ledger counts for /health: an aggregation, so shared by the requests of a few
        # seconds (monitors poll it; a count a few seconds old is as good).
        self.gap_counts = SingleFlight(lambda: gap_counts(self.db), ledger_cache_s)
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

    async def ledger_symbols(self) -> dict[str, list[str]]:
        """exchange -> native symbols named in the gap ledger (a symbol can have gaps and no
        record in ``latest``, e.g. one that never delivered data)."""
        found: dict[str, set[str]] = {}
        async for doc in self.db[schema.GAPS].find({"symbol": {"$ne": "*"}},
                                                   {"_id": 0, "exchange": 1, "symbol": 1}):
            found.setdefault(doc["exchange"], set()).add(doc["symbol"])
        return {ex: sorted(symbols) for ex, symbols in found.items()}

    async def resolve(self, exchange: str | None, symbol: str,
                      also_known: dict[str, list[str]] | None = None) -> list[tuple[str, str]]:
        """(exchange, native symbol) pairs matching what the user typed, among the symbols seen
        (and ``also_known``); 404 with the known list if none."""
        wanted = comparable(symbol)
        matches: list[tuple[str, str]] = []
        # A miss re-reads the symbol list (at most once a second) before answering 404, so a
        # symbol that just started streaming is found at once.
        for max_age in (None, 1.0):
            known = dict(await self.known_symbols(max_age))
            for ex, symbols in (also_known or {}).items():
                known[ex] = sorted(set(known.get(ex, [])) | set(symbols))
            scope = {exchange: known.get(exchange, [])} if exchange else known
            matches = sorted({(ex, s) for ex, group in scope.items() for s in group
                              if s == symbol or comparable(s) == wanted})
            if matches:
                break
        if not matches:
            raise NotFound(f"unknown symbol {symbol!r}", known_symbols=scope)
        return matches

    async def resolve_symbols(self, exchange: str | None, symbol: str) -> list[str]:
        """Native symbols matching what the user typed; 404 with the known list if none."""
        return sorted({s for _, s in await self.resolve(exchange, symbol)})

    async def scope_query(self, f: Filters, *, wildcard: bool = False) -> dict[str, Any]:
        """Equality filters of a history query. ``wildcard`` (gap ledger) also matches ``*``.

        A symbol without an exchange is narrowed to the exchanges that have it: with ``$in`` on
        both leading fields of ``{exchange, symbol, ts, _id}`` the planner merges one index scan
        per (exchange, symbol), each already in (ts, _id) order, instead of sorting."""
        query: dict[str, Any] = {}
        star = ["*"] if wildcard else []
        exchanges = [f.exchange] if f.exchange else []
        if f.symbol:
            also = await self.ledger_symbols() if wildcard else None
            pairs = await self.resolve(f.exchange, f.symbol, also)
            exchanges = exchanges or sorted({ex for ex, _ in pairs})
            query["symbol"] = one_or_in(sorted({s for _, s in pairs}) + star)
        if exchanges:
            query["exchange"] = one_or_in(exchanges + star)
        if f.market:
            query["market"] = one_or_in([f.market] + star)
        if f.interval:
            query["interval"] = f.interval
        return query

    def page_query(self, scope: dict[str, Any], f: Filters,
                   time_field: str = "ts") -> tuple[dict[str, Any], list[tuple[str, int]]]:
        """Query and sort of one page, newest first: keyset on ``(time_field, _id)``; the page
        after a cursor is ``t < last_t or (t == last_t and _id < last_id)``."""
        query = dict(scope)
        rng: dict[str, Any] = {}
        if f.since:
            rng["$gte"] = f.since
        upper = f.until
        if f.cursor:
            # Also as a plain bound on the time field, so the index range starts at the cursor.
            upper = min(upper, f.cursor[0]) if upper else f.cursor[0]
        if upper:
            rng["$lte"] = upper
        if rng:
            query[time_field] = rng
        if f.cursor:
            last_t, last_id = f.cursor
            query = {"$and": [query, {"$or": [{time_field: {"$lt": last_t}},
                                              {time_field: last_t, "_id": {"$lt": last_id}}]}]}
        return query, [(time_field, DESCENDING), ("_id", DESCENDING)]

    async def history(self, collection: str, f: Filters, *, time_field: str = "ts",
                      wildcard: bool = False) -> tuple[list[dict[str, Any]], str | None]:
        """One page, newest first; a full page also returns the cursor of its last row."""
        query, sort = self.page_query(await self.scope_query(f, wildcard=wildcard), f, time_field)
        rows = await self.db[collection].find(query).sort(sort).limit(f.limit).to_list(f.limit)
        next_cursor = None
        if len(rows) == f.limit and rows:
            next_cursor = encode_cursor(rows[-1][time_field], rows[-1]["_id"])
        for row in rows:
            row.pop("_id", None)
        return rows, next_cursor

    async def latest_of_type(self, kind: str, exchange: str | None = None,
                             symbols: list[str] | None = None) -> list[dict[str, Any]]:
        query: dict[str, Any] = {"type": kind}
        if exchange:
            query["exchange"] = exchange
        if symbols:
            query["symbol"] = one_or_in(symbols)
        return await self.db[schema.LATEST].find(query, NO_ID).to_list(5000)

    async def latest(self, exchange: str | None = None,
                     symbols: list[str] | None = None) -> list[dict[str, Any]]:
        """Newest record per key (copies: callers may mutate them)."""
        wanted = set(symbols or ())
        return [dict(d) for d in await self._latest.get()
                if (not exchange or d.get("exchange") == exchange)
                and (not wanted or d.get("symbol") in wanted)]

    async def status_docs(self) -> list[CollectorStatus]:
        """Every collector process's status document: ``collector`` (one process) or
        ``collector-<i>-of-<N>`` (partitions)."""
        docs = await self.db[schema.STATUS].find(
            {"$or": [{"_id": "collector"}, {"_id": {"$regex": "^collector-"}}]}).to_list(1000)
        return [cast(CollectorStatus, d) for d in docs if is_collector_status(d.get("_id"))]

    async def status(self) -> MergedStatus | None:
        """The collector status merged over its processes (api.status.merge_status)."""
        return merge_status(await self.status_docs())

    async def status_cached(self) -> MergedStatus | None:
        return await self._status.get()
