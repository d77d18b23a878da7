"""MongoDB reads behind the handlers; each is served by an index from common.indexes."""
from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Awaitable, Callable, cast

from pymongo import DESCENDING

from api.analysis import collection_totals
from api.params import EXCHANGES, BadRequest, Filters, NotFound, encode_cursor
from api.status import is_collector_status, merge_status
from common import schema
from common.indexes import HISTORY_SORT
from common.status import CollectorStatus, MergedStatus
from common.symbols import symbol_key

NO_ID = {"_id": 0}
T = schema.TIME_KEY


def comparable(text: str) -> str:
    """Spelling-independent key: BTC-USDT, BTC_USDT, btcusdt, BTC/USDT -> BTCUSDT; XBT -> BTC."""
    key = symbol_key(text)
    if key == "XXBTZUSD":
        return "BTCUSD"
    return key.replace("XBT", "BTC")


def one_or_in(values: list[str]) -> Any:
    return values[0] if len(values) == 1 else {"$in": values}


TOTALS_CACHE_S = 60.0


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
        # Collection totals for /analysis/data-check (a row count on nx-27017): a minute old
        # at most, like the rest of that report's hourly figures are coarse.
        self.totals = SingleFlight(lambda: collection_totals(self.db), TOTALS_CACHE_S)
        self._symbols: dict[str, list[str]] = {}
        self._symbols_at = 0.0
        self._ledger: dict[str, list[str]] = {}
        self._ledger_at = -1e9
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

    async def ledger_symbols(self, max_age_s: float | None = None) -> dict[str, list[str]]:
        """exchange -> native symbols named in the gap ledger (a symbol can have gaps and no
        record in ``latest``, e.g. one that never delivered data); cached like
        ``known_symbols`` (a read of the whole ledger: not once per request)."""
        max_age = self._cache_s if max_age_s is None else max_age_s
        if time.monotonic() - self._ledger_at > max_age:
            found: dict[str, set[str]] = {}
            async for doc in self.db[schema.GAPS].find({"symbol": {"$ne": "*"}},
                                                       {"_id": 0, "exchange": 1, "symbol": 1}):
                found.setdefault(doc["exchange"], set()).add(doc["symbol"])
            self._ledger = {ex: sorted(symbols) for ex, symbols in found.items()}
            self._ledger_at = time.monotonic()
        return self._ledger

    async def resolve(self, exchange: str | None, symbol: str,
                      ledger: bool = False) -> list[tuple[str, str]]:
        """(exchange, native symbol) pairs matching what the user typed, among the symbols seen
        (and with ``ledger`` those in the gap ledger); 404 with the known list if none."""
        wanted = comparable(symbol)
        matches: list[tuple[str, str]] = []
        # A miss re-reads the symbol lists (``latest`` at most once a second, the ledger every
        # time: a 404 path) before answering 404, so a symbol that just started streaming, or
        # just got a gap, is found at once.
        for max_age in (None, 1.0):
            known = dict(await self.known_symbols(max_age))
            ledger_age = None if max_age is None else 0.0
            for ex, symbols in (await self.ledger_symbols(ledger_age) if ledger else {}).items():
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
            pairs = await self.resolve(f.exchange, f.symbol, ledger=wildcard)
            exchanges = exchanges or sorted({ex for ex, _ in pairs})
            query["symbol"] = one_or_in(sorted({s for _, s in pairs}) + star)
        if exchanges:
            query["exchange"] = one_or_in(exchanges + star)
        if f.market:
            query["market"] = one_or_in([f.market] + star)
        if f.interval:
            query["interval"] = f.interval
        return query

    def page_queries(self, scope: dict[str, Any], f: Filters) -> list[tuple[dict[str, Any], list]]:
        """The reads of one page, newest first, in order until ``limit`` rows: each a flat
        filter (equalities and one integer range on ``t``, never ``$and``/``$or``, which
        nx-27017 evaluates by scanning) and a sort that an index from common.indexes serves.

        Keyset paging after a cursor ``(last_t, last_id)``: first the rows of ``last_t`` itself
        (equality on ``t``, sorted by ``_id``; the caller keeps those with ``_id < last_id``,
        one millisecond's rows), then ``t < last_t``. A cursor without ``last_id`` (that
        millisecond is done) needs only the second read."""
        rng: dict[str, Any] = {}
        if f.since:
            rng["$gte"] = schema.time_key(f.since)
        if f.until:
            rng["$lte"] = schema.time_key(f.until)
        reads: list[tuple[dict[str, Any], list]] = []
        if f.cursor:
            last_t, last_id = f.cursor
            if last_id is not None and rng.get("$gte", last_t) <= last_t <= rng.get("$lte", last_t):
                reads.append(({**scope, T: last_t}, [("_id", DESCENDING)]))
            if rng.get("$lte", last_t) >= last_t:
                rng.pop("$lte", None)
                rng["$lt"] = last_t
        query = dict(scope)
        if rng:
            query[T] = rng
        reads.append((query, HISTORY_SORT))
        return reads

    async def history(self, collection: str, f: Filters, *,
                      wildcard: bool = False) -> tuple[list[dict[str, Any]], str | None]:
        """One page, newest first, and the cursor of its last row when more rows follow (one
        row more than the page is read to know that, and whether the next page starts in
        another millisecond)."""
        coll = self.db[collection]
        rows: list[dict[str, Any]] = []
        for query, sort in self.page_queries(await self.scope_query(f, wildcard=wildcard), f):
            need = f.limit + 1 - len(rows)
            if need <= 0:
                break
            if sort is HISTORY_SORT:
                rows += await coll.find(query).sort(sort).limit(need).to_list(need)
                continue
            assert f.cursor is not None
            last_id = f.cursor[1]
            try:
                rows += [r for r in await coll.find(query).sort(sort).to_list(None)
                         if r["_id"] < last_id][:need]
            except TypeError:        # a cursor of another collection (other _id type)
                raise BadRequest("cursor: invalid; pass the 'next' value of the previous page "
                                 "unchanged") from None
        rows, following = rows[:f.limit], rows[f.limit:]
        next_cursor = None
        if following:
            last_t = self._time_key(collection, rows[-1])
            same_ms = self._time_key(collection, following[0]) == last_t
            next_cursor = encode_cursor(last_t, rows[-1]["_id"] if same_ms else None)
        for row in rows:
            row.pop("_id", None)
            for storage_key in schema.STORAGE_KEYS:
                row.pop(storage_key, None)
        return rows, next_cursor

    @staticmethod
    def _time_key(collection: str, row: dict[str, Any]) -> int:
        # A row written before t existed (not migrated yet): its t from the date it keys.
        t = row.get(T)
        return schema.time_key(row["start" if collection == schema.GAPS else "ts"]) if t is None else t

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
