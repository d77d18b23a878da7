"""The OpenAPI document says exactly what the server accepts: schemathesis (all checks, 30
examples per operation, every phase) against a real ``python -m api`` on seeded data, with API
keys off (loopback, as ``make run``) and on; 0 failures."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from api.routes import ROUTES
from tests.support.live_api import api_process, seed

SCHEMATHESIS = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) \
    or shutil.which("schemathesis")


def run_schemathesis(url: str, *args: str) -> tuple[int, str]:
    # A fixed seed: the same cases on every run (CI must not flake); change it to explore.
    proc = subprocess.run(
        [SCHEMATHESIS, "run", f"{url}/openapi.json", "--checks", "all", "--max-examples", "30",
         "--workers", "1", "--seed", "16", "--request-timeout", "10", "--no-color", *args],
        capture_output=True, text=True, timeout=240)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.parametrize("auth", ["off", "on"])
@pytest.mark.timeout(300)
async def test_schemathesis_all_checks_zero_failures(mongo_uri, mongo_db, tmp_path, auth):
    await seed(mongo_db)
    env = {"CRYPTODATA_API_RATE_PER_S": "0", "CRYPTODATA_API_AUTH": auth}
    args: list[str] = []
    if auth == "on":
        env["CRYPTODATA_API_KEYS"] = '["contract-key"]'
        args = ["--header", "X-API-Key: contract-key"]
    with api_process(mongo_uri, mongo_db.name, tmp_path / "api.log", **env) as url:
        code, out = run_schemathesis(url, *args)
    summary = [line for line in out.splitlines()
               if re.search(r"generated|issues found|failures in", line)]
    print("\n".join(summary))
    assert code == 0, out[-6000:]
    assert re.search(r"No issues found in", out), out[-3000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", out)
    assert counts and counts.group(1) == counts.group(2), summary
    # Every HTTP operation but /ws (not in the document) and /openapi.json (the CLI does not
    # fuzz the document it was loaded from).
    operations = len([r for r in ROUTES if r.path not in ("/ws", "/openapi.json")])
    assert f"Selected: {operations}/{operations}" in out and f"Tested: {operations}" in out, \
        out[-3000:]
