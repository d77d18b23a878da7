"""``python -m api.tools.bitcoin [--uri URI] [--json]``: BTC price per exchange, spread between
exchanges, volume share, funding comparison and perp-vs-spot basis (the same query code as
``GET /analysis/bitcoin``)."""
from __future__ import annotations

import argparse

import orjson

from api.analysis import bitcoin, table
from api.tools import run


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m api.tools.bitcoin", description=__doc__)
    parser.add_argument("--uri", help="MongoDB URI (default: settings / MONGODB_URI)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args()

    async def show(db, settings) -> None:
        result = await bitcoin(db, settings.stale_after_s)
        if args.json:
            print(orjson.dumps(result, option=orjson.OPT_UTC_Z | orjson.OPT_INDENT_2).decode())
            return
        sections = [
            ("Price per exchange", result["prices"],
             ["exchange", "market", "symbol", "price", "bid", "ask", "stale"]),
            ("Spread between exchanges", result["spreads"], None),
            ("Volume share (24 h, quote units)", result["volume_share"], None),
            ("Funding", result["funding"],
             ["exchange", "symbol", "rate", "interval_hours", "annualized_pct"]),
            ("Basis perp vs spot", result["basis"], None),
        ]
        for title, rows, cols in sections:
            print(f"\n== {title} ==")
            print(table(rows, cols))
    run(show, args.uri)


if __name__ == "__main__":
    main()
