"""``python -m api.tools.data_check [--uri URI] [--json]``: per-collection counts, newest record
age and growth per hour (the same query code as ``GET /analysis/data-check``)."""
from __future__ import annotations

import argparse

import orjson

from api.analysis import data_check, table
from api.tools import run


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m api.tools.data_check", description=__doc__)
    parser.add_argument("--uri", help="MongoDB URI (default: settings / MONGODB_URI)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()

    async def show(db, settings) -> None:
        result = await data_check(db)
        if args.json:
            print(orjson.dumps(result, option=orjson.OPT_UTC_Z | orjson.OPT_INDENT_2).decode())
            return
        print(f"data check at {result['checked_at']:%Y-%m-%d %H:%M:%S} UTC "
              f"({settings.mongodb_db}); latest keys: {result['latest_keys']}")
        print(table(result["collections"]))
        print(f"total documents: {result['total']}")
    run(show, args.uri)


if __name__ == "__main__":
    main()
