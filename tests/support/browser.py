"""Headless Chromium driven over the DevTools protocol (the system's ``chromium``; no browser
download, no driver binary): enough to load a page, evaluate JavaScript in it, collect
uncaught exceptions and take a screenshot. The websocket client is the project's own
``websockets`` dependency."""
from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    return next((path for name in CANDIDATES if (path := shutil.which(name))), None)


class Browser:
    def __init__(self, executable: str, width: int = 1400, height: int = 1000) -> None:
        self.profile = tempfile.mkdtemp(prefix="cryptodata-chromium-")
        args = [executable, "--headless=new", "--disable-gpu", "--no-first-run",
                "--no-default-browser-check", "--disable-extensions", "--remote-debugging-port=0",
                f"--user-data-dir={self.profile}", f"--window-size={width},{height}",
                "about:blank"]
        if os.geteuid() == 0:
            args.insert(1, "--no-sandbox")     # Chromium refuses to run as root with a sandbox
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
        self.exceptions: list[str] = []
        self._stack = contextlib.ExitStack()
        self._events: list[str] = []
        self._ids = itertools.count(1)
        try:
            port = self._devtools_port(timeout_s=60)
            self.ws = self._stack.enter_context(
                connect(self._page_url(port), max_size=None, open_timeout=30))
            self.call("Runtime.enable")
            self.call("Page.enable")
        except BaseException:
            self.close()
            raise

    def _devtools_port(self, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        assert self.proc.stderr is not None
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode}")
            found = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
            if found:
                # Keep draining stderr so Chromium never blocks on a full pipe.
                threading.Thread(target=self.proc.stderr.read, daemon=True).start()
                return int(found.group(1))
        raise TimeoutError("chromium did not open its DevTools port")

    @staticmethod
    def _page_url(port: int) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
            targets = json.load(resp)
        return next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")

    def _receive(self, deadline: float) -> dict[str, Any]:
        """The next message; events are recorded (uncaught page exceptions kept)."""
        msg = json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic())))
        method = msg.get("method")
        if method:
            self._events.append(method)
        if method == "Runtime.exceptionThrown":
            details = msg["params"]["exceptionDetails"]
            self.exceptions.append(details.get("exception", {}).get("description")
                                   or details.get("text", "?"))
        return msg

    def call(self, method: str, params: dict[str, Any] | None = None,
             timeout_s: float = 30.0) -> dict[str, Any]:
        ident = next(self._ids)
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params or {}}))
        deadline = time.monotonic() + timeout_s
        while True:
            msg = self._receive(deadline)
            if msg.get("id") == ident:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def navigate(self, url: str, timeout_s: float = 30.0) -> None:
        """Load ``url`` and wait for its load event (the old page is gone when this returns)."""
        self._events.clear()
        self.call("Page.navigate", {"url": url})
        deadline = time.monotonic() + timeout_s
        while "Page.loadEventFired" not in self._events:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not load")
            self._receive(deadline)

    def js(self, expression: str) -> Any:
        """The value of a JavaScript expression (promises awaited)."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data["data"]))
        return path

    def close(self) -> None:
        self._stack.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)
