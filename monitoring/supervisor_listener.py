"""supervisord event listener: reports crashed programs to Sentry.

supervisord.conf (the DSN is inherited from supervisord's environment, i.e. the unit's
EnvironmentFile, or read from ``.env`` / ``CRYPTODATA_CONFIG_FILE`` like every setting)::

    [eventlistener:sentry_listener]
    command=%(ENV_CRYPTODATA_VENV)s/bin/python -m monitoring.supervisor_listener
    directory=%(here)s
    events=PROCESS_STATE_FATAL,PROCESS_STATE_EXITED
    stderr_logfile=%(here)s/logs/sentry_listener.log

Reported: ``PROCESS_STATE_FATAL`` (gave up restarting) and ``PROCESS_STATE_EXITED`` with
``expected:0`` (died unexpectedly; supervisord restarts it). Expected exits, ``stop`` (STOPPED)
and start failures (BACKOFF) are not reported. Fingerprint ``(supervisor, program, event)``.

Protocol: stdout is the channel to supervisord (``READY``, ``RESULT 2\\nOK``), so this program
logs only to stderr. Without a DSN it still acknowledges every event (and logs it).
"""
from __future__ import annotations

import logging
import os
import sys
from typing import IO

log = logging.getLogger("cryptodata.supervisor_listener")

REPORTED = ("PROCESS_STATE_FATAL", "PROCESS_STATE_EXITED")


def parse_tokens(line: str) -> dict[str, str]:
    return dict(token.split(":", 1) for token in line.split() if ":" in token)


def read_event(stdin: IO[str]) -> tuple[dict[str, str], dict[str, str], str] | None:
    line = stdin.readline()
    if not line:
        return None  # supervisord closed stdin: shutting down
    headers = parse_tokens(line)
    payload = stdin.read(int(headers.get("len", "0")))
    first, _, data = payload.partition("\n")
    return headers, parse_tokens(first), data


def should_report(event: str, payload: dict[str, str]) -> bool:
    if event == "PROCESS_STATE_FATAL":
        return True
    return event == "PROCESS_STATE_EXITED" and payload.get("expected") == "0"


def log_tail(process: str, nbytes: int = 2000) -> str:
    """Last bytes of the program's stderr log via supervisord's XML-RPC (best effort)."""
    try:
        from supervisor import childutils

        rpc = childutils.getRPCInterface(os.environ)
        text = rpc.supervisor.tailProcessStderrLog(process, 0, nbytes)[0]
        if not text:
            text = rpc.supervisor.tailProcessStdoutLog(process, 0, nbytes)[0]
        return text
    except Exception as exc:
        return f"(log tail unavailable: {exc!r})"


def report(event: str, payload: dict[str, str], sentry_on: bool) -> None:
    group, name = payload.get("groupname", ""), payload.get("processname", "")
    process = name if group in ("", name) else f"{group}:{name}"
    what = "FATAL (gave up restarting)" if event == "PROCESS_STATE_FATAL" else "exited unexpectedly"
    message = f"supervisor: {process} {what} (from {payload.get('from_state', '?')})"
    log.warning("%s %s", message, payload)
    if not sentry_on:
        return
    import sentry_sdk

    with sentry_sdk.new_scope() as scope:
        scope.fingerprint = ["supervisor", process, event]
        scope.set_tag("supervisor.program", process)
        scope.set_tag("supervisor.event", event)
        scope.set_context("supervisor", {**payload, "event": event, "log_tail": log_tail(process)})
        sentry_sdk.capture_message(message, level="error")
    sentry_sdk.flush(timeout=5)


def run(stdin: IO[str] = sys.stdin, stdout: IO[str] = sys.stdout, sentry_on: bool = False) -> None:
    while True:
        stdout.write("READY\n")
        stdout.flush()
        event = read_event(stdin)
        if event is None:
            return
        headers, payload, _ = event
        name = headers.get("eventname", "")
        try:
            if name in REPORTED and should_report(name, payload):
                report(name, payload, sentry_on)
        except Exception:  # never block supervisord's event queue
            log.exception("failed to handle %s", name)
        stdout.write("RESULT 2\nOK")
        stdout.flush()


def main() -> None:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from common.sentry import init_sentry

    # Only report() creates events: no default integrations, and the logging integration that
    # init_sentry adds turns ERROR lines into events but keeps report()'s warnings breadcrumbs.
    try:
        sentry_on = init_sentry("supervisor_listener", [], default_integrations=False)
    except Exception:  # bad settings must not stop the acknowledgements supervisord waits for
        log.exception("Sentry setup failed; events are only logged")
        sentry_on = False
    log.info("listening (sentry %s)", "on" if sentry_on else "off: no CRYPTODATA_SENTRY_DSN")
    run(sys.stdin, sys.stdout, sentry_on)


if __name__ == "__main__":
    main()
