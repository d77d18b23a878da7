"""``python -m api [--host H] [--port 5001] [--debug]``"""
from __future__ import annotations

import argparse
import logging

from aiohttp import web

from api.app import create_app
from common.settings import Settings


def main() -> None:
    settings = Settings()
    parser = argparse.ArgumentParser(prog="python -m api", description=__doc__)
    parser.add_argument("--host", default=settings.api_host)
    parser.add_argument("--port", type=int, default=settings.api_port)
    parser.add_argument("--debug", action="store_true", help="debug logging")
    args = parser.parse_args()
    logging.basicConfig(level="DEBUG" if args.debug else settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvloop
    from sentry_sdk.integrations.aiohttp import AioHttpIntegration

    from common.sentry import init_sentry
    init_sentry("api", [AioHttpIntegration()], settings)
    web.run_app(create_app(settings), host=args.host, port=args.port,
                loop=uvloop.new_event_loop(), access_log=None if not args.debug else
                logging.getLogger("aiohttp.access"), print=None)


if __name__ == "__main__":
    main()
