"""Nagios-style health check for a cryptodata host.

    python -m monitoring.healthcheck --api http://127.0.0.1:5001 \
        --supervisor-socket var/supervisor.sock [--json]

Checks
- the API ``/health`` endpoint (``status`` healthy/degraded/unhealthy, MongoDB reachability,
  collector heartbeat age, per-exchange stream freshness: ``stream_age_s``/``stale_streams``);
- every supervisord program state, via XML-RPC over the unix socket.

Exit codes (Nagios plugin convention): 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (bad usage or
the check itself failed).

When a Sentry DSN is configured (settings ``sentry_dsn``: ``CRYPTODATA_SENTRY_DSN``, ``.env``,
or ``--sentry-dsn``), each problem is reported to Sentry with a stable fingerprint per component
(``healthcheck``, component) so one incident stays one issue however often the timer fires, and
a cron check-in (monitor ``cryptodata-healthcheck``) is sent
on every run: ``in_progress`` then ``ok`` (OK/WARNING) or ``error`` (CRITICAL).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
import xmlrpc.client
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sentry_sdk._types import MonitorConfig

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
API_STATUS = {"healthy": OK, "degraded": WARNING, "unhealthy": CRITICAL}
MONITOR_SLUG = "cryptodata-healthcheck"

# supervisord process states -> severity (STOPPED is judged separately: see --allow-stopped).
PROC_STATE = {"RUNNING": OK, "STARTING": WARNING, "BACKOFF": WARNING, "STOPPING": WARNING,
              "STOPPED": CRITICAL, "EXITED": CRITICAL, "FATAL": CRITICAL, "UNKNOWN": CRITICAL}


@dataclass
class Check:
    component: str          # stable id, used in the Sentry fingerprint: "api", "supervisor:collector"
    status: int
    message: str
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["status"] = NAMES[self.status]
        return out


# ---------------------------------------------------------------------------------------- API

def fetch_health(api: str, timeout: float) -> tuple[int | None, dict | None, str]:
    """GET {api}/health; returns (http status, parsed JSON or None, error text)."""
    url = api.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = resp.read()
            code = resp.status
    except urllib.error.HTTPError as exc:   # 503 with a JSON body is the "unhealthy" answer
        code, body = exc.code, exc.read()
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        return None, None, f"{url} unreachable: {reason}"
    try:
        doc = json.loads(body)
    except ValueError:
        return code, None, f"{url} returned HTTP {code} with a non-JSON body"
    if not isinstance(doc, dict):
        return code, None, f"{url} returned HTTP {code} with unexpected JSON"
    return code, doc, ""


def check_api(api: str, timeout: float, args: argparse.Namespace) -> list[Check]:
    code, doc, error = fetch_health(api, timeout)
    if doc is None:
        return [Check("api", CRITICAL, error or f"HTTP {code}", {"http_status": code})]
    checks: list[Check] = []
    status_text = str(doc.get("status", "")).lower()
    status = API_STATUS.get(status_text, CRITICAL)
    checks.append(Check("api", status, f"/health status={status_text or 'missing'} (HTTP {code})",
                        {"http_status": code, "health": doc}))

    mongodb = doc.get("mongodb") or {}
    if isinstance(mongodb, dict) and "reachable" in mongodb:
        reachable = bool(mongodb.get("reachable"))
        checks.append(Check("mongodb", OK if reachable else CRITICAL,
                            f"MongoDB reachable ping_ms={mongodb.get('ping_ms')}" if reachable
                            else "MongoDB unreachable from the API", dict(mongodb)))

    collector = doc.get("collector") or {}
    age = collector.get("heartbeat_age_s") if isinstance(collector, dict) else None
    if isinstance(collector, dict) and "heartbeat_age_s" in collector:
        if age is None:
            checks.append(Check("collector", CRITICAL, "no collector heartbeat", dict(collector)))
        else:
            sev = CRITICAL if age > args.heartbeat_crit else WARNING if age > args.heartbeat_warn else OK
            checks.append(Check("collector", sev, f"collector heartbeat age {age:.0f}s", dict(collector)))

    exchanges = doc.get("exchanges") or {}
    if isinstance(exchanges, dict):
        for name, info in sorted(exchanges.items()):
            checks.append(check_exchange(name, info, args))
    return checks


def check_exchange(name: str, info: Any, args: argparse.Namespace) -> Check:
    """Freshness of one exchange from its /health entry (api/handlers.py ``health``):
    ``stream_age_s`` maps each stream ("trades:spot:BTCUSDT") to the seconds since its newest
    stored record, ``fresh`` is false when even the newest stream is older than the API's
    ``stale_after_s``, and ``stale_streams`` lists the streams older than that. The OLDEST stream
    sets the severity (--stale-warn/--stale-crit): one silent stream is lost data too."""
    component = f"freshness:{name}"
    streams = info.get("stream_age_s") if isinstance(info, dict) else None
    if not isinstance(streams, dict):
        return Check(component, WARNING, f"{name}: unexpected /health entry {info!r:.200}")
    ages = {key: float(age) for key, age in streams.items()
            if isinstance(age, (int, float)) and not isinstance(age, bool)}
    stale = [str(key) for key in info.get("stale_streams") or []]
    data: dict[str, Any] = {"fresh": info.get("fresh"), "streams": len(ages), "stale_streams": stale}
    if not ages:
        return Check(component, CRITICAL, f"{name}: no stream has stored data", data)
    newest = min(ages.values())
    oldest_key, oldest = max(ages.items(), key=lambda kv: kv[1])
    data.update(newest_age_s=newest, oldest_age_s=oldest, oldest_stream=oldest_key)
    sev = CRITICAL if oldest > args.stale_crit else WARNING if oldest > args.stale_warn else OK
    if info.get("fresh") is False or stale:   # the API's own threshold (stale_after_s)
        sev = max(sev, WARNING)
    if info.get("fresh") is False:
        text = f"{name}: no fresh stream, newest {newest:.0f}s old"
    else:
        text = f"{name}: {len(ages)} streams, oldest {oldest:.0f}s ({oldest_key})"
    if stale:
        text += f"; {len(stale)} stale: {', '.join(stale[:5])}" + (", ..." if len(stale) > 5 else "")
    return Check(component, sev, text, data)


# --------------------------------------------------------------------------------- supervisord

def supervisor_proxy(socket_path: str) -> Any:
    from supervisor.xmlrpc import SupervisorTransport

    transport = SupervisorTransport(None, None, serverurl="unix://" + os.path.abspath(socket_path))
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)


def check_supervisor(socket_path: str, allow_stopped: set[str]) -> list[Check]:
    try:
        infos = supervisor_proxy(socket_path).supervisor.getAllProcessInfo()
    except Exception as exc:  # socket missing, permission, supervisord down
        return [Check("supervisor", CRITICAL, f"supervisord not reachable at {socket_path}: {exc}")]
    checks = [Check("supervisor", OK, f"supervisord answers ({len(infos)} processes)")]
    for info in infos:
        name = info["name"] if info["group"] == info["name"] else f"{info['group']}:{info['name']}"
        state = info.get("statename", "UNKNOWN")
        sev = PROC_STATE.get(state, CRITICAL)
        if state == "STOPPED" and (info["name"] in allow_stopped or name in allow_stopped):
            sev = OK   # e.g. the embedded mongodb program when an external MongoDB is used
        detail = info.get("description") or ""
        checks.append(Check(f"supervisor:{name}", sev, f"{name} {state} {detail}".strip(),
                            {"state": state, "pid": info.get("pid"),
                             "exitstatus": info.get("exitstatus")}))
    return checks


# ------------------------------------------------------------------------------------ reporting

def overall(checks: list[Check]) -> int:
    return max((c.status for c in checks), default=UNKNOWN)


def human(checks: list[Check], status: int) -> str:
    problems = [c for c in checks if c.status != OK]
    head = "; ".join(c.message for c in problems) if problems else f"{len(checks)} checks passed"
    lines = [f"CRYPTODATA {NAMES[status]} - {head}"]
    lines += [f"  [{NAMES[c.status]:8}] {c.component}: {c.message}" for c in checks]
    return "\n".join(lines)


def report_sentry(checks: list[Check], status: int, duration: float, check_in_id: str | None,
                  schedule: str) -> None:
    import sentry_sdk
    from sentry_sdk.crons import capture_checkin
    from sentry_sdk.crons.consts import MonitorStatus

    for check in checks:
        if check.status == OK:
            continue
        with sentry_sdk.new_scope() as scope:
            # Stable: the component only, never the message (ages/pids change on every run).
            scope.fingerprint = ["cryptodata-healthcheck", check.component]
            scope.set_tag("healthcheck.component", check.component)
            scope.set_tag("healthcheck.status", NAMES[check.status])
            scope.set_context("healthcheck", {"message": check.message, "data": check.data})
            sentry_sdk.capture_message(f"healthcheck {check.component}: {check.message}",
                                       level="error" if check.status >= CRITICAL else "warning")
    capture_checkin(monitor_slug=MONITOR_SLUG, check_in_id=check_in_id,
                    status=MonitorStatus.ERROR if status >= CRITICAL else MonitorStatus.OK,
                    duration=duration, monitor_config=monitor_config(schedule))
    sentry_sdk.flush(timeout=10)


def monitor_config(schedule: str) -> MonitorConfig:
    return {"schedule": {"type": "crontab", "value": schedule}, "checkin_margin": 2,
            "max_runtime": 2, "timezone": "UTC"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse exits 2, which a Nagios-style caller reads as CRITICAL; bad usage is UNKNOWN.
        self.print_usage(sys.stderr)
        self.exit(UNKNOWN, f"{self.prog}: error: {message}\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = _Parser(prog="python -m monitoring.healthcheck", description=__doc__.split("\n")[0])
    p.add_argument("--api", default=os.environ.get("CRYPTODATA_HEALTHCHECK_API", "http://127.0.0.1:5001"),
                   help="API base URL (default %(default)s)")
    p.add_argument("--supervisor-socket", default=os.environ.get("CRYPTODATA_SUPERVISOR_SOCKET"),
                   help="supervisord unix socket; omit to skip the process check")
    p.add_argument("--allow-stopped", default="mongodb",
                   help="comma-separated programs allowed to be STOPPED (default %(default)s)")
    p.add_argument("--timeout", type=float, default=10.0, help="HTTP timeout in seconds")
    p.add_argument("--heartbeat-warn", type=float, default=30.0)
    p.add_argument("--heartbeat-crit", type=float, default=120.0)
    p.add_argument("--stale-warn", type=float, default=120.0,
                   help="age (s) of an exchange's oldest stream for WARNING")
    p.add_argument("--stale-crit", type=float, default=600.0,
                   help="age (s) of an exchange's oldest stream for CRITICAL")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    p.add_argument("--sentry-dsn", default=None, help="override CRYPTODATA_SENTRY_DSN")
    p.add_argument("--no-sentry", action="store_true", help="never report to Sentry")
    p.add_argument("--schedule", default="* * * * *", help="cron schedule sent with the check-in")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except Exception as exc:  # a crash would exit 1 (= WARNING): say UNKNOWN instead
        print(f"CRYPTODATA UNKNOWN - health check failed: {exc!r}")
        return UNKNOWN


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    sentry_on = False
    check_in_id = None
    if not args.no_sentry:
        from common.sentry import init_sentry
        from common.settings import Settings

        settings = Settings()
        if args.sentry_dsn is not None:
            settings = settings.model_copy(update={"sentry_dsn": args.sentry_dsn})
        # Only report_sentry() creates events (default integrations off; logging ERROR only).
        sentry_on = init_sentry("healthcheck", [], settings, default_integrations=False)
        if sentry_on:
            from sentry_sdk.crons import capture_checkin
            from sentry_sdk.crons.consts import MonitorStatus
            check_in_id = capture_checkin(monitor_slug=MONITOR_SLUG, status=MonitorStatus.IN_PROGRESS,
                                          monitor_config=monitor_config(args.schedule))

    checks = check_api(args.api, args.timeout, args)
    if args.supervisor_socket:
        allow = {p.strip() for p in args.allow_stopped.split(",") if p.strip()}
        checks += check_supervisor(args.supervisor_socket, allow)
    status = overall(checks)
    duration = time.monotonic() - started

    if args.json:
        print(json.dumps({"status": NAMES[status], "exit_code": status, "duration_s": round(duration, 3),
                          "checks": [c.as_dict() for c in checks]}, default=str, indent=1))
    else:
        print(human(checks, status))
    if sentry_on:
        try:
            report_sentry(checks, status, duration, check_in_id, args.schedule)
        except Exception as exc:  # reporting must never change the check's verdict
            print(f"sentry reporting failed: {exc!r}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
