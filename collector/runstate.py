"""The collector's local run state: how far the data it received is durable, without MongoDB.

One small JSON file next to the spool (``<spool_dir>/state.json``)::

    {"durable_until": <epoch s>, "pid": ..., "outage": {"id": <db_outage gap id>,
     "records_lost": n, "lost_by_type": {collection: n}} | null}

``durable_until``: every record received before that instant was written to MongoDB or fsync'd
to the spool (collector.writer sets it after each flush). After a crash (SIGKILL, OOM kill,
reboot) the next process opens its restart gap from there, even while MongoDB is unreachable:
the restart gap never depends on the database. ``outage``: the db_outage gap that was open and
what it had lost so far, so the next process can close it with an exact ``records_lost``.

Written atomically (temp file + ``os.replace``) without fsync: a process kill keeps the page
cache; after a power loss the file may be older or unreadable, and an older ``durable_until``
only makes the restart gap longer (more is re-fetched), never shorter.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FILENAME = "state.json"


class RunState:
    def __init__(self, directory: str | os.PathLike) -> None:
        self.path = Path(directory) / FILENAME
        self._tmp = self.path.with_name(f".{FILENAME}.{os.getpid()}.tmp")
        self._last: dict[str, Any] | None = None

    def load(self) -> dict[str, Any] | None:
        """The previous run's state, or None (first start, or unreadable: then the caller falls
        back to the database's status document)."""
        try:
            state = json.loads(self.path.read_text())
            float(state["durable_until"])
            return state
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("run state %s unreadable (restart gap from the database instead): %r",
                      self.path, exc)
            return None

    def save(self, state: dict[str, Any]) -> None:
        """Replace the file if anything changed (a crash mid-write leaves the old one)."""
        if state == self._last:
            return
        try:
            self._tmp.write_text(json.dumps(state))
            os.replace(self._tmp, self.path)
            self._last = state
        except OSError as exc:
            log.error("could not write the run state %s: %r", self.path, exc)
