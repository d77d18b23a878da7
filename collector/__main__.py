"""``python -m collector [DURATION_S] [POLL_INTERVAL_S]`` (0 = run forever)."""
from __future__ import annotations

import argparse

from collector.app import run


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m collector", description=__doc__)
    parser.add_argument("duration_s", nargs="?", type=float, default=0.0,
                        help="seconds to run, 0 = forever (default)")
    parser.add_argument("poll_interval_s", nargs="?", type=float, default=None,
                        help="REST polling interval in seconds (default: settings)")
    args = parser.parse_args()
    run(args.duration_s, args.poll_interval_s)


if __name__ == "__main__":
    main()
