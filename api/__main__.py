"""``python -m api [--host H] [--port 5001] [--debug]``"""
from __future__ import annotations

import argparse
import logging

from aiohttp import web

from api.app import create_app
from api.security import auth_config_error, auth_required, is_loopback
from common.settings import Settings

log = logging.getLogger("api")


def bind_settings(settings: Settings, host: str, port: int) -> Settings:
    """The settings the app must be built with: the address actually bound decides whether API
    keys are required, so ``--host`` has to reach ``api_host``."""
    return settings.model_copy(update={"api_host": host, "api_port": port})


def main(argv: list[str] | None = None) -> None:
    settings = Settings()
    parser = argparse.ArgumentParser(prog="python -m api", description=__doc__)
    parser.add_argument("--host", default=settings.api_host)
    parser.add_argument("--port", type=int, default=settings.api_port)
    parser.add_argument("--debug", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    settings = bind_settings(settings, args.host, args.port)
    problem = auth_config_error(settings)
    if problem:
        parser.exit(2, f"python -m api: error: {problem}\n")
    logging.basicConfig(level="DEBUG" if args.debug else settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not auth_required(settings) and not is_loopback(settings.api_host):
        log.warning("API keys are disabled (CRYPTODATA_API_AUTH=%s) on %s: anyone who can reach "
                    "this port can read the API", settings.api_auth, settings.api_host)
    import uvloop
    from sentry_sdk.integrations.aiohttp import AioHttpIntegration

    from common.sentry import init_sentry
    init_sentry("api", [AioHttpIntegration()], settings)
    # Access lines come from the app's own middleware (with request ids), not aiohttp's log.
    web.run_app(create_app(settings), host=args.host, port=args.port,
                loop=uvloop.new_event_loop(), access_log=None, print=None)


if __name__ == "__main__":
    main()
