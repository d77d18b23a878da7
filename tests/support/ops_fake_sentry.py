"""A local Sentry ingest endpoint for the ops tests: accepts real envelopes (gzip or plain) on
``POST /api/<project>/envelope/`` and keeps every item for assertions."""
from __future__ import annotations

import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def parse_envelope(body: bytes) -> tuple[dict, list[tuple[dict, Any]]]:
    header_line, _, rest = body.partition(b"\n")
    header = json.loads(header_line)
    items: list[tuple[dict, Any]] = []
    while rest.strip():
        item_line, _, rest = rest.partition(b"\n")
        item_header = json.loads(item_line)
        length = item_header.get("length")
        if length is None:
            payload, _, rest = rest.partition(b"\n")
        else:
            payload, rest = rest[:length], rest[length:]
            rest = rest[1:] if rest.startswith(b"\n") else rest
        try:
            items.append((item_header, json.loads(payload)))
        except ValueError:
            items.append((item_header, payload))
    return header, items


class FakeSentry:
    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                raw = gzip.decompress(body) if self.headers.get("Content-Encoding") == "gzip" else body
                header, items = parse_envelope(raw)
                with outer.lock:
                    outer.requests.append({"path": self.path, "auth": self.headers.get("X-Sentry-Auth"),
                                           "gzip": self.headers.get("Content-Encoding") == "gzip",
                                           "raw": raw, "header": header, "items": items})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.dsn = f"http://public@127.0.0.1:{self.port}/1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeSentry":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def items(self, kind: str | None = None) -> list[Any]:
        with self.lock:
            return [payload for req in self.requests for head, payload in req["items"]
                    if kind is None or head.get("type") == kind]

    def events(self) -> list[dict]:
        return self.items("event")

    def check_ins(self) -> list[dict]:
        return self.items("check_in")

    def raw(self) -> bytes:
        with self.lock:
            return b"\n".join(req["raw"] for req in self.requests)
