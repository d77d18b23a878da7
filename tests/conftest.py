"""Session-wide fixtures: a real MongoDB wire-protocol server (nx-27017 started here, or the
server named by MONGODB_URI) and a fresh database per test."""
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

from tests.helpers import free_port, wait_port

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
