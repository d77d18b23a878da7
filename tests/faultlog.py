"""Fault-test figures: printed as ``FAULT name=value`` (run pytest with -s to see them) and, when
``CRYPTODATA_FAULT_RESULTS`` names a file, appended to it as JSON lines."""
from __future__ import annotations

import json
import os
import time


def report(test: str, **figures: float | int | str) -> None:
    text = " ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in figures.items())
    print(f"\nFAULT {test} {text}", flush=True)
    path = os.environ.get("CRYPTODATA_FAULT_RESULTS")
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps({"test": test, "at": time.time(), **figures}) + "\n")
