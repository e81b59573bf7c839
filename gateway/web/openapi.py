"""OpenAPI 3.1, generated from the route table and the same pydantic models the handlers use."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel

import gateway
from gateway.web.models import Problem
from gateway.web.routes import ROUTES

REF = "#/components/schemas/{model}"


def build_spec() -> dict[str, Any]:
    schemas: dict[str, Any] = {}

    def ref(model: type[BaseModel]) -> dict[str, str]:
        schema = model.model_json_schema(ref_template=REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
        return {"$ref": REF.format(model=model.__name__)}

    problem_ref = ref(Problem)
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        operation: dict[str, Any] = {
            "summary": route.summary,
            "operationId": route.handler.__name__,
            "tags": [route.tag],
            "parameters": [
                {
                    "name": p.name,
                    "in": p.where,
                    "required": p.required,
                    "schema": p.schema,
                    "description": p.description,
                }
                for p in route.params
            ],
            "responses": {},
        }
        if route.body is not None:
            operation["requestBody"] = {
                "required": route.method == "POST" and route.body.__name__ == "SubmitBody",
                "content": {"application/json": {"schema": ref(route.body)}},
            }
        for status, answer in route.responses.items():
            if isinstance(answer, str):
                content = (
                    {"application/problem+json": {"schema": problem_ref}} if status >= 400 else None
                )
                if 200 <= status < 300 and route.media != "application/json":
                    content = {route.media: {"schema": {"type": "string"}}}
                entry: dict[str, Any] = {"description": answer}
                if content:
                    entry["content"] = content
            else:
                entry = {
                    "description": answer.__doc__.strip().splitlines()[0]
                    if answer.__doc__
                    else answer.__name__,
                    "content": {"application/json": {"schema": ref(answer)}},
                }
            operation["responses"][str(status)] = entry
        operation["responses"].setdefault(
            "default",
            {
                "description": "A problem (RFC 9457)",
                "content": {"application/problem+json": {"schema": problem_ref}},
            },
        )
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "jobgate",
            "version": gateway.__version__,
            "description": "One REST interface in front of many asynchronous-job APIs.",
        },
        "paths": paths,
        "components": {"schemas": schemas},
    }


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(build_spec())


# A self-contained page: the gateway often runs where no CDN is reachable.
DOCS_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>jobgate API</title>
<style>
body{font:14px/1.5 system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:0}.op{border:1px solid #ddd;border-radius:6px;margin:.8em 0;padding:.6em 1em}
.m{display:inline-block;min-width:4.5em;font-weight:700}.GET{color:#0a6}.POST{color:#06c}
.DELETE{color:#c30}code{background:#f4f4f4;padding:0 .3em}table{border-collapse:collapse}
td{padding:.1em .6em;border-bottom:1px solid #eee;vertical-align:top}
</style></head><body>
<h1>jobgate API</h1><p>Generated from <a href="/openapi.json">/openapi.json</a>.</p>
<div id="ops"></div>
<script>
fetch('/openapi.json').then(r => r.json()).then(spec => {
  const root = document.getElementById('ops');
  const esc = s => String(s ?? '').replace(/[&<>]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;'}[c]));
  for (const [path, ops] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(ops)) {
      const m = method.toUpperCase();
      const params = (op.parameters || []).map(p =>
        `<tr><td><code>${esc(p.name)}</code></td><td>${p.in}</td><td>${esc(p.description)}</td></tr>`
      ).join('');
      const body = op.requestBody ? `<p>Body: <code>${esc(
        op.requestBody.content['application/json'].schema.$ref.split('/').pop())}</code></p>` : '';
      const resp = Object.entries(op.responses).map(([s, r]) =>
        `<tr><td>${s}</td><td colspan=2>${esc(r.description)}</td></tr>`).join('');
      root.insertAdjacentHTML('beforeend', `<div class="op"><span class="m ${m}">${m}</span>
        <code>${esc(path)}</code><p>${esc(op.summary)}</p>${body}
        <table>${params}${resp}</table></div>`);
    }
  }
});
</script></body></html>
"""


async def docs_page(request: web.Request) -> web.Response:
    return web.Response(text=DOCS_HTML, content_type="text/html")
