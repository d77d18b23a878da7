"""OpenAPI 3 document generated from the route table, and a plain HTML rendering of it."""
from __future__ import annotations

import html
import re
from typing import Any

from api import stream

ERROR = {"$ref": "#/components/schemas/Error"}


def openapi_path(path: str) -> str:
    """aiohttp ``/x/{symbol:.+}`` -> OpenAPI ``/x/{symbol}``."""
    return re.sub(r"\{(\w+):[^}]*\}", r"{\1}", path)


def build_spec(routes, auth: bool) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for r in routes:
        responses: dict[str, Any] = {
            "200": {"description": "OK", "content": {r.content_type: {"schema": {
                "type": "object"} if r.content_type == "application/json" else {
                "type": "string"}}}},
            "400": {"description": "bad parameter",
                    "content": {"application/json": {"schema": ERROR}}},
            "429": {"description": "rate limited (see Retry-After)",
                    "content": {"application/json": {"schema": ERROR}}},
        }
        if r.path == "/ws":
            responses["101"] = {"description": "WebSocket upgrade"}
        if any(p["in"] == "path" for p in r.params) or any(p["name"] == "symbol"
                                                           for p in r.params):
            responses["404"] = {"description": "unknown symbol (body lists the known ones)",
                                "content": {"application/json": {"schema": ERROR}}}
        op: dict[str, Any] = {"summary": r.summary, "operationId": r.handler.__name__,
                              "tags": [r.tag], "parameters": r.params, "responses": responses}
        if r.path not in ("/health", "/docs", "/openapi.json"):
            responses["401"] = {"description": "missing or invalid X-API-Key (when auth is on)",
                                "content": {"application/json": {"schema": ERROR}}}
        paths.setdefault(openapi_path(r.path), {})[r.method.lower()] = op
    spec: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {"title": "cryptodata API", "version": "1.0.0",
                 "description": "Normalized market data (binance, bybit, kraken, gateio, okx). "
                                "History endpoints return newest first with a `next` cursor."},
        "paths": paths,
        "components": {
            "schemas": {"Error": {"type": "object", "required": ["error"], "properties": {
                "error": {"type": "object", "required": ["status", "message"], "properties": {
                    "status": {"type": "integer"}, "message": {"type": "string"}}}}}},
            "securitySchemes": {"ApiKey": {"type": "apiKey", "in": "header",
                                           "name": "X-API-Key"}},
        },
    }
    if auth:
        spec["security"] = [{"ApiKey": []}]
    return spec


def render_docs(spec: dict[str, Any]) -> str:
    e = html.escape
    out = ["<!doctype html><html><head><meta charset='utf-8'><title>cryptodata API</title>",
           "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
           "code,pre{background:#f4f4f4;padding:2px 4px}table{border-collapse:collapse}"
           "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
           "h2{border-bottom:1px solid #ddd;margin-top:2em}</style></head><body>",
           f"<h1>{e(spec['info']['title'])} {e(spec['info']['version'])}</h1>",
           f"<p>{e(spec['info']['description'])}</p>",
           "<p>Machine-readable: <a href='/openapi.json'>/openapi.json</a>. "
           "Auth: header <code>X-API-Key</code> when enabled. Errors: "
           "<code>{\"error\": {\"status\", \"message\", ...}}</code>.</p>"]
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            out.append(f"<h2><code>{e(method.upper())} {e(path)}</code></h2><p>{e(op['summary'])}</p>")
            if op["parameters"]:
                out.append("<table><tr><th>name</th><th>in</th><th>schema</th>"
                           "<th>description</th></tr>")
                for p in op["parameters"]:
                    schema = ", ".join(f"{k}={v}" for k, v in p["schema"].items())
                    out.append(f"<tr><td>{e(p['name'])}</td><td>{e(p['in'])}</td>"
                               f"<td>{e(schema)}</td><td>{e(p.get('description', ''))}</td></tr>")
                out.append("</table>")
            codes = ", ".join(sorted(op["responses"]))
            out.append(f"<p>Responses: {e(codes)}</p>")
            if path == "/ws":
                out.append(f"<pre>{e(stream.__doc__ or '')}</pre>")
    out.append("</body></html>")
    return "".join(out)
