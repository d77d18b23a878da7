"""Session-wide fixtures: a real MongoDB wire-protocol server (nx-27017 started here, or the
server named by MONGODB_URI) and a fresh database per test; the background soak (tests/support/soak.py);
and the fault-figure table at the end of the output (tests/support/faultlog.py)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
import pytest_asyncio
from pymongo import AsyncMongoClient

from tests.support import faultlog
from tests.support.helpers import free_port, wait_port

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def start_nx(data_dir: str, port: int) -> subprocess.Popen:
    exe = shutil.which("nx-27017", path=str(Path(sys.executable).parent)) or "nx-27017"
    proc = subprocess.Popen(
        [exe, "--data-dir", data_dir, "--host", "127.0.0.1", "-p", str(port),
         "--log-file", os.path.join(data_dir, "nx.log"),
         "--pid-file", os.path.join(data_dir, "nx.pid")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc


@pytest.fixture(scope="session")
def mongo_uri() -> str:
    uri = os.environ.get("MONGODB_URI")
    if uri:
        yield uri
        return
    data_dir = tempfile.mkdtemp(prefix="cryptodata-nx-")
    port = free_port()
    proc = start_nx(data_dir, port)
    try:
        yield f"mongodb://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest_asyncio.fixture
async def mongo_db(mongo_uri):
    """A fresh, uniquely named database on the test server, dropped afterwards."""
    client = AsyncMongoClient(mongo_uri, tz_aware=True, serverSelectionTimeoutMS=5000)
    name = f"test_{uuid.uuid4().hex[:12]}"
    db = client[name]
    try:
        yield db
    finally:
        try:
            await client.drop_database(name)
        finally:
            await client.close()


def load_jsonl(relative: str) -> list:
    import orjson
    path = FIXTURES / relative
    return [orjson.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---- the soak overlaps the session ----------------------------------------------------------
# A 10-minute soak run after everything else would add 10 minutes to CI. Instead, when a test
# marked ``soak`` is selected, the soak process starts with the session (first test), runs while
# the other tests run, and the soak test, moved to the end, waits for it and checks the result.
_SOAK_SELECTED = pytest.StashKey[bool]()


@pytest.hookimpl(trylast=True)          # after -k/-m deselection: only what will really run
def pytest_collection_modifyitems(session, config, items) -> None:
    soak = [item for item in items if item.get_closest_marker("soak")]
    if soak:
        items[:] = [item for item in items if item not in soak] + soak
    config.stash[_SOAK_SELECTED] = bool(soak)


@pytest.fixture(scope="session", autouse=True)
def background_soak(request, tmp_path_factory):
    if not request.config.stash.get(_SOAK_SELECTED, False):
        yield None
        return
    from tests.support.soak import BackgroundSoak
    soak = BackgroundSoak(tmp_path_factory.mktemp("soak"))
    soak.start()
    try:
        yield soak
    finally:
        soak.stop()


# ---- fault figures ---------------------------------------------------------------------------
def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Every fault figure of the session, whether the tests passed or not (CI logs show them)."""
    if not faultlog.figures():
        return
    terminalreporter.section("fault figures")
    for line in faultlog.table():
        terminalreporter.write_line(line)
    path = os.environ.get("CRYPTODATA_FAULT_RESULTS")
    if path:
        faultlog.write_json(path)
        terminalreporter.write_line(f"(also written to {path})")
