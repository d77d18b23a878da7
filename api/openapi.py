"""OpenAPI 3 document generated from the route table, and a plain HTML rendering of it."""
from __future__ import annotations

import html
import re
from typing import Any

from api import stream
from api.security import AUTH_EXEMPT

ERROR = {"$ref": "#/components/schemas/Error"}


def openapi_path(path: str) -> str:
    """aiohttp ``/x/{symbol:.+}`` -> OpenAPI ``/x/{symbol}``."""
    return re.sub(r"\{(\w+):[^}]*\}", r"{\1}", path)


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ERROR}}}


def build_spec(routes, auth: bool) -> dict[str, Any]:
    """Every answer a route can give is declared: 400 (bad parameter), 404 (unknown symbol or
    path), 405 (with ``Allow``), 429, 500, 503 (database unreachable), 401 where a key applies.
    ``/ws`` is left out: OpenAPI 3.0 cannot describe a WebSocket (its protocol is in /docs)."""
    paths: dict[str, Any] = {}
    used_ids: set[str] = set()
    for r in routes:
        if r.path == "/ws":
            continue
        # operationId must be unique; a handler serving two paths gets the path in the second.
        op_id = r.handler.__name__
        if op_id in used_ids:
            op_id = f"{op_id}_{re.sub(r'[^A-Za-z0-9]+', '_', r.path).strip('_') or 'root'}"
        used_ids.add(op_id)
        responses: dict[str, Any] = {
            "200": {"description": "OK", "content": {r.content_type: {"schema": {
                "type": "object"} if r.content_type == "application/json" else {
                "type": "string"}}}},
            "400": _error("bad parameter"),
            "404": _error("unknown symbol (body lists the known ones) or path"),
            "405": {**_error("method not allowed"), "headers": {"Allow": {
                "description": "the methods this path answers", "schema": {"type": "string"}}}},
            "429": _error("rate limited (see Retry-After)"),
            "500": _error("internal error (body has the request id)"),
            "503": _error("database unavailable"),
        }
        op: dict[str, Any] = {"summary": r.summary, "operationId": op_id,
                              "tags": [r.tag], "parameters": r.params, "responses": responses}
        if auth:
            if r.path in AUTH_EXEMPT:
                op["security"] = []         # answered without a key
            else:
                responses["401"] = _error("missing or invalid X-API-Key")
        paths.setdefault(openapi_path(r.path), {})[r.method.lower()] = op
    spec: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {"title": "cryptodata API", "version": "1.0.0",
                 "description": "Normalized market data (binance, bybit, kraken, gateio, okx). "
                                "History endpoints return newest first with a `next` cursor. "
                                "Live stream: WebSocket at /ws (protocol in /docs)."},
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
    out.append("<h2><code>GET /ws</code> (WebSocket)</h2><p>Live stream of stored records.</p>"
               f"<pre>{e(stream.__doc__ or '')}</pre>")
    out.append("</body></html>")
    return "".join(out)
