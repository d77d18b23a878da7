"""Analysis queries shared by the API (/analysis/...) and the CLIs (python -m api.tools.*)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from pymongo import DESCENDING

from common import schema

USD_QUOTES = ("USDT", "USDC", "USD")


async def _count_since(coll, since: datetime) -> int:
    """Documents with ``t >= since``, by the ``count`` command: a count of index entries on both
    servers (nx-27017 runs it as one SQL COUNT over the ``t`` index; count_documents' $group and
    an aggregate $count load every matching document there)."""
    reply = await coll.database.command(
        "count", coll.name, query={schema.TIME_KEY: {"$gte": schema.time_key(since)}})
    return int(reply["n"])


async def collection_totals(db) -> dict[str, int]:
    """Documents per data collection: collection metadata on a mongod, but a row count on
    nx-27017 (O(n): ~0.03 us per document, 0.4 s at 10M), so the API shares one for a minute."""
    return {coll: await db[coll].estimated_document_count() for coll in schema.DATA_COLLECTIONS}


async def data_check(db, now: datetime | None = None,
                     totals: dict[str, int] | None = None) -> dict[str, Any]:
    """Per collection: document count (``totals``, else counted now), newest record and its age,
    records in the last hour (growth per hour) and in the last 24 h (average per hour)."""
    now = now or datetime.now(timezone.utc)
    totals = totals if totals is not None else await collection_totals(db)
    hour_ago, day_ago = now - timedelta(hours=1), now - timedelta(hours=24)
    rows = []
    for coll in schema.DATA_COLLECTIONS:
        c = db[coll]
        count = totals[coll]
        newest = await c.find({}, {"_id": 0, "ts": 1, "received_at": 1}).sort(
            schema.TIME_KEY, DESCENDING).limit(1).to_list(1)
        last_hour = await _count_since(c, hour_ago) if count else 0
        last_day = await _count_since(c, day_ago) if count else 0
        newest_ts = newest[0]["ts"] if newest else None
        rows.append({
            "collection": coll, "count": count, "newest_ts": newest_ts,
            "newest_age_s": round((now - newest_ts).total_seconds(), 1) if newest_ts else None,
            "per_hour_last_1h": last_hour, "per_hour_avg_24h": round(last_day / 24, 1),
        })
    latest = await db[schema.LATEST].estimated_document_count()
    return {"checked_at": now, "collections": rows, "latest_keys": latest,
            "total": sum(r["count"] for r in rows)}


def _quote(pair: str) -> str:
    return pair.split("/", 1)[1] if "/" in pair else ""


def _bps(a: float, b: float) -> float:
    return round((a - b) / b * 1e4, 2)


async def bitcoin(db, stale_after_s: float = 120.0, now: datetime | None = None) -> dict[str, Any]:
    """BTC across exchanges from the ``latest`` collection: price per exchange/market/symbol,
    spread between exchanges (per quote), volume share, funding comparison, perp-vs-spot basis."""
    now = now or datetime.now(timezone.utc)
    tickers = await db[schema.LATEST].find(
        {"type": schema.MARKET_DATA}, {"_id": 0}).to_list(5000)
    fundings = await db[schema.LATEST].find(
        {"type": schema.FUNDING_RATES}, {"_id": 0}).to_list(5000)
    prices = []
    for t in tickers:
        pair = t.get("pair") or ""
        if not pair.startswith("BTC/") or _quote(pair) not in USD_QUOTES:
            continue
        bid, ask, last = t.get("bid"), t.get("ask"), t.get("last")
        price = last if last is not None else (
            (bid + ask) / 2 if bid is not None and ask is not None else None)
        if price is None:
            continue
        received = t.get("received_at")
        prices.append({
            "exchange": t["exchange"], "market": t.get("market", "spot"), "symbol": t["symbol"],
            "quote": _quote(pair), "price": price, "bid": bid, "ask": ask,
            "mark_price": t.get("mark_price"),
            "quote_volume_24h": t.get("quote_volume_24h") or (
                (t.get("volume_24h") or 0.0) * price),
            "stale": bool(received is None or (now - received).total_seconds() > stale_after_s),
        })
    prices.sort(key=lambda r: (r["market"], r["quote"], r["exchange"], r["symbol"]))

    spreads = []
    for market in ("spot", "perp"):
        for quote in USD_QUOTES:
            group = [p for p in prices if p["market"] == market and p["quote"] == quote]
            if len({p["exchange"] for p in group}) < 2:
                continue
            lo = min(group, key=lambda p: p["price"])
            hi = max(group, key=lambda p: p["price"])
            spreads.append({"market": market, "quote": quote, "exchanges": len(group),
                            "min": lo["price"], "min_exchange": lo["exchange"],
                            "max": hi["price"], "max_exchange": hi["exchange"],
                            "spread": round(hi["price"] - lo["price"], 8),
                            "spread_bps": _bps(hi["price"], lo["price"])})

    total = sum(p["quote_volume_24h"] or 0.0 for p in prices)
    volume = []
    for p in prices:
        vol = p["quote_volume_24h"] or 0.0
        volume.append({"exchange": p["exchange"], "market": p["market"], "symbol": p["symbol"],
                       "quote_volume_24h": round(vol, 2),
                       "share_pct": round(vol / total * 100, 2) if total else None})
    volume.sort(key=lambda r: -(r["quote_volume_24h"] or 0))

    funding = []
    for f in fundings:
        if not (f.get("pair") or "").startswith("BTC/"):
            continue
        hours = f.get("interval_hours") or 8.0
        rate = f.get("rate")
        funding.append({"exchange": f["exchange"], "symbol": f["symbol"], "rate": rate,
                        "interval_hours": hours, "predicted_rate": f.get("predicted_rate"),
                        "next_funding_time": f.get("next_funding_time"),
                        "annualized_pct": round(rate * (24 / hours) * 365 * 100, 4)
                        if rate is not None else None})
    funding.sort(key=lambda r: r["exchange"])

    basis = []
    for perp in (p for p in prices if p["market"] == "perp"):
        spots = [p for p in prices if p["market"] == "spot" and p["exchange"] == perp["exchange"]
                 and p["quote"] == perp["quote"]]
        if not spots:
            continue
        spot = spots[0]
        perp_price = perp["mark_price"] or perp["price"]
        basis.append({"exchange": perp["exchange"], "quote": perp["quote"],
                      "perp_symbol": perp["symbol"], "spot_symbol": spot["symbol"],
                      "perp": perp_price, "spot": spot["price"],
                      "basis": round(perp_price - spot["price"], 8),
                      "basis_bps": _bps(perp_price, spot["price"])})
    return {"as_of": now, "prices": prices, "spreads": spreads, "volume_share": volume,
            "funding": funding, "basis": basis}


def table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """Plain-text table for the CLIs."""
    if not rows:
        return "(none)"
    columns = columns or list(rows[0])

    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, datetime):
            return v.strftime("%Y-%m-%d %H:%M:%S")
        if isinstance(v, float):
            return f"{v:,.6g}" if abs(v) < 1e6 else f"{v:,.0f}"
        return str(v)
    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)
