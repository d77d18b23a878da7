"""Fault-test figures. Each fault test calls ``report`` (one figure) or ``tally`` (counts summed
over many examples, e.g. fuzzing); tests/conftest.py prints every figure of the session as a
table at the end of the pytest output (so CI logs show them even when everything passes) and,
when ``CRYPTODATA_FAULT_RESULTS`` names a file, writes them there as a JSON array."""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field

Value = float | int | str | bool | None


@dataclass
class Figure:
    fault: str
    expected: str
    recovery_s: float | None = None
    records_lost: int | None = None
    details: dict[str, Value] = field(default_factory=dict)
    test: str = ""
    at: float = 0.0


_FIGURES: list[Figure] = []
_TALLIES: dict[str, Figure] = {}


def _current_test() -> str:
    # "tests/x.py::test_y (call)" while a test runs.
    return os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]


def _fmt(value: Value) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def report(fault: str, *, expected: str, recovery_s: float | None = None,
           records_lost: int | None = None, **details: Value) -> Figure:
    """Record one fault figure. ``recovery_s``: from the injected fault until the stated
    behaviour was observed; ``records_lost``: measured, never assumed (None = not applicable)."""
    figure = Figure(fault, expected, recovery_s, records_lost, details, _current_test(),
                    time.time())
    _FIGURES.append(figure)
    # Also inline (visible with -s) for whoever watches a single test run.
    text = " ".join(f"{k}={_fmt(v)}" for k, v in
                    {"recovery_s": recovery_s, "records_lost": records_lost, **details}.items()
                    if v is not None)
    print(f"\nFAULT {fault} {text}", flush=True)
    return figure


def tally(fault: str, *, expected: str, **counts: int) -> None:
    """Add ``counts`` to the session-wide figure ``fault`` (one row however many calls)."""
    figure = _TALLIES.get(fault)
    if figure is None:
        figure = _TALLIES[fault] = Figure(fault, expected, test=_current_test().split("::")[0],
                                          at=time.time())
        _FIGURES.append(figure)
    for key, n in counts.items():
        figure.details[key] = int(figure.details.get(key) or 0) + n


def figures() -> list[Figure]:
    return list(_FIGURES)


def table() -> list[str]:
    """The session's figures, one row each (details on an indented second line)."""
    rows = [(f.fault, "-" if f.recovery_s is None else f"{f.recovery_s:.2f}",
             "-" if f.records_lost is None else str(f.records_lost), f.expected) for f in _FIGURES]
    head = ("fault", "recovery_s", "records_lost", "expected behaviour")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(3)]
    lines = ["  ".join([head[0].ljust(widths[0]), head[1].rjust(widths[1]),
                        head[2].rjust(widths[2]), head[3]])]
    for figure, row in zip(_FIGURES, rows):
        lines.append("  ".join([row[0].ljust(widths[0]), row[1].rjust(widths[1]),
                                row[2].rjust(widths[2]), row[3]]))
        if figure.details:
            lines.append(" " * (widths[0] + 2) + " ".join(
                f"{k}={_fmt(v)}" for k, v in figure.details.items()))
    return lines


def write_json(path: str) -> None:
    with open(path, "w") as fh:
        json.dump([asdict(f) for f in _FIGURES], fh, indent=1)
        fh.write("\n")
