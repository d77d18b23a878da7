"""Shared Sentry setup for every cryptodata program.

Configuration comes from ``common.settings.Settings`` (so the environment, ``.env`` and
``CRYPTODATA_CONFIG_FILE`` all work):

- ``sentry_dsn`` (``CRYPTODATA_SENTRY_DSN``): empty -> Sentry is not initialised, nothing is sent;
- ``environment`` (``CRYPTODATA_ENVIRONMENT``, default ``production``): every event's environment;
- ``release`` (``CRYPTODATA_RELEASE``): default ``cryptodata@<git short sha>`` in a git checkout,
  else the deployed ``REVISION``, else ``cryptodata@unknown``.

Calls (one line each):

- API (before ``web.run_app``): ``init_sentry("api", [AioHttpIntegration()], settings)``
- collector (first statement of the coroutine run by ``uvloop.run``, i.e. INSIDE the running
  loop, so unhandled task exceptions get the ``asyncio`` mechanism, and before the Collector is
  built, so its constructor's errors are reported): ``init_sentry("collector",
  [AsyncioIntegration()], settings)``
"""
from __future__ import annotations

import logging
import os
import re
import subprocess
from pathlib import Path
from typing import Any, Iterable

from common.settings import Settings

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
FILTERED = "[Filtered]"

# user:password@ in any URI (mongodb://, mongodb+srv://, http://, amqp://, ...).
_URI_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/@\s:]+(?::[^/@\s]*)?)@")
# key=value / key: value pairs whose name looks secret (api_key=..., "password": "...", token ...).
_SECRET_NAME = r"(?:api[_-]?key|apikey|secret|password|passwd|pwd|token|auth|dsn|mongodb_uri|private[_-]?key)"
_SECRET_PAIR = re.compile(
    r"(?P<name>[\"']?[A-Za-z0-9_.-]*" + _SECRET_NAME + r"[A-Za-z0-9_.-]*[\"']?\s*[=:]\s*[\"']?)"
    r"(?P<value>[^\s\"',;&}]+)", re.IGNORECASE)
_SECRET_KEY = re.compile(_SECRET_NAME, re.IGNORECASE)


def get_config(settings: Settings | None = None) -> dict[str, str]:
    settings = settings or Settings()
    return {
        "dsn": settings.sentry_dsn.strip(),
        "environment": settings.environment.strip() or "production",
        "release": settings.release.strip() or default_release(),
    }


def default_release() -> str:
    try:
        sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    if not sha:
        # Deployed without .git: the Ansible role writes the deployed commit to REVISION.
        try:
            sha = (ROOT / "REVISION").read_text().strip()[:12]
        except OSError:
            sha = ""
    return f"cryptodata@{sha or 'unknown'}"


def scrub_text(text: str) -> str:
    text = _URI_CREDENTIALS.sub(lambda m: f"{m.group('scheme')}{FILTERED}@", text)
    return _SECRET_PAIR.sub(lambda m: f"{m.group('name')}{FILTERED}", text)


def scrub(value: Any, _depth: int = 0) -> Any:
    """Recursively remove credentials from strings and secret-named keys from mappings."""
    if _depth > 20:
        return value
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if isinstance(key, str) and _SECRET_KEY.search(key) and isinstance(item, (str, bytes)) and item:
                out[key] = FILTERED
            else:
                out[key] = scrub(item, _depth + 1)
        return out
    if isinstance(value, list):
        return [scrub(item, _depth + 1) for item in value]
    if isinstance(value, tuple):
        return tuple(scrub(item, _depth + 1) for item in value)
    return value


def before_send(event: dict, hint: dict) -> dict:
    return scrub(event)


def before_breadcrumb(crumb: dict, hint: dict) -> dict:
    return scrub(crumb)


def init_sentry(program: str, integrations: Iterable[Any] = (), settings: Settings | None = None,
                **options: Any) -> bool:
    """Initialise sentry_sdk for ``program``; returns False (and sends nothing) without a DSN."""
    config = get_config(settings)
    if not config["dsn"]:
        log.debug("Sentry disabled: no sentry_dsn (CRYPTODATA_SENTRY_DSN)")
        return False
    import sentry_sdk
    from sentry_sdk.integrations.logging import LoggingIntegration

    integrations = list(integrations)
    if not any(isinstance(i, LoggingIntegration) for i in integrations):
        integrations.append(LoggingIntegration(level=logging.INFO, event_level=logging.ERROR))
    kwargs: dict[str, Any] = dict(
        dsn=config["dsn"],
        environment=config["environment"],
        release=config["release"],
        integrations=integrations,
        send_default_pii=False,
        include_local_variables=False,   # locals could hold URIs/keys
        before_send=before_send,
        before_breadcrumb=before_breadcrumb,
        traces_sample_rate=0.0,
        server_name=os.uname().nodename,
    )
    kwargs.update(options)
    sentry_sdk.init(**kwargs)
    sentry_sdk.set_tag("program", program)
    return True
