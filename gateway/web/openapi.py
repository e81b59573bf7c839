"""OpenAPI 3.2, generated from the route table and the same pydantic models the handlers use.

3.2 because it is the first version that can describe Server-Sent Events: a ``text/event-stream``
answer's ``itemSchema`` is one event (``event``, ``data``, ``id``), and each event's ``data`` is
JSON whose ``contentSchema`` is the model of that event. Every status an operation answers is
listed; there is no ``default``, so a status missing from the document is a bug of the document.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from pydantic import BaseModel

import gateway
from gateway.web.models import (
    CONTINUE_EXAMPLES,
    KEY_EXAMPLES,
    SUBMIT_EXAMPLES,
    ContinueBody,
    Example,
    KeyCreateBody,
    Problem,
    SubmitBody,
)
from gateway.web.routes import ROUTES, Answer, Bytes, EventStream, OrStreamed, Route

REF = "#/components/schemas/{model}"
JSON_DATA = {"contentMediaType": "application/json"}
BODY_EXAMPLES: dict[type[BaseModel], dict[str, Example]] = {
    SubmitBody: SUBMIT_EXAMPLES,
    ContinueBody: CONTINUE_EXAMPLES,
    KeyCreateBody: KEY_EXAMPLES,
}


def build_spec() -> dict[str, Any]:
    schemas: dict[str, Any] = {}

    def ref(model: type[BaseModel]) -> dict[str, str]:
        schema = model.model_json_schema(ref_template=REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
        return {"$ref": REF.format(model=model.__name__)}

    def response(status: int, answer: Answer) -> dict[str, Any]:
        if isinstance(answer, EventStream):
            return {
                "description": answer.description,
                "content": {"text/event-stream": {"itemSchema": event_schema(answer, ref)}},
            }
        if isinstance(answer, OrStreamed):
            either = {"anyOf": [ref(answer.model), {"description": "the provider's document"}]}
            content = {"application/json": {"schema": either}}
            return {"description": answer.description, "content": content}
        if isinstance(answer, Bytes):
            binary = {"schema": {"type": "string", "format": "binary"}}
            return {
                "description": answer.description,
                "content": {"application/octet-stream": binary},
            }
        if isinstance(answer, str):
            if status < 400:
                return {"description": answer}
            problem = {"application/problem+json": {"schema": ref(Problem)}}
            return {"description": answer, "content": problem}
        return {
            "description": _first_line(answer),
            "content": {"application/json": {"schema": ref(answer)}},
        }

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
            "responses": {
                str(status): response(status, answer)
                for status, answer in sorted({**route.responses, **_auth_answers(route)}.items())
            },
        }
        if route.scope is None:
            operation["security"] = []
        else:
            operation["security"] = [{"bearer": [route.scope.value]}]
            if route.stream:
                operation["security"].append({"streamToken": [route.scope.value]})
            operation["x-scope"] = route.scope.value
        if route.body is not None:
            media: dict[str, Any] = {"schema": ref(route.body)}
            if examples := BODY_EXAMPLES.get(route.body):
                media["examples"] = {
                    name: {"summary": summary, "value": value}
                    for name, (summary, value) in examples.items()
                }
            operation["requestBody"] = {
                "required": route.method == "POST" and route.body is SubmitBody,
                "content": {"application/json": media},
            }
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.2.0",
        "info": {
            "title": "jobgate",
            "version": gateway.__version__,
            "description": "One REST interface in front of many asynchronous-job APIs.",
        },
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": SECURITY_SCHEMES},
        # Every operation names its own (an empty list: public), so none inherits by mistake.
        "security": [{"bearer": []}],
    }


SECURITY_SCHEMES: dict[str, Any] = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "jg_ followed by 43 characters",
        "description": "An API key from `jobgate keys create` or POST /v1/keys. Each key has a "
        "tenant and scopes: jobs:read, jobs:write (submit, adopt, cancel, rerun, continue, "
        "delete) and admin (the tenant's keys). Unset auth.required in the embedded sandbox "
        "profile: no key is needed.",
    },
    "streamToken": {
        "type": "apiKey",
        "in": "query",
        "name": "access_token",
        "description": "A short-lived read-only token from POST /v1/stream-tokens, accepted on "
        "the SSE routes only (EventSource cannot send Authorization).",
    },
}


def _auth_answers(route: Route) -> dict[int, Answer]:
    if route.scope is None:
        return {}
    return {
        401: "auth_required, invalid_key, key_expired, key_revoked"
        + (" or invalid_stream_token" if route.stream else "")
        + ": no usable credential (WWW-Authenticate says Bearer)",
        403: f"insufficient_scope: the key lacks {route.scope.value}",
    }


def event_schema(
    stream: EventStream, ref: Callable[[type[BaseModel]], dict[str, str]]
) -> dict[str, Any]:
    """One Server-Sent Event as OpenAPI 3.2 reads it (``event``, ``data``, ``id``), with the JSON
    schema of ``data`` chosen by ``event``."""
    required: dict[str, Any] = {"required": ["event", "data"]}
    if stream.opens_with_id:
        alone = {"required": ["id"], "properties": {"event": False, "data": False}}
        required = {"anyOf": [required, alone]}
    return {
        "type": "object",
        **required,
        "properties": {
            "event": {"enum": [name for name, _ in stream.events]},
            "data": {"type": "string", **JSON_DATA},
            "id": {
                "type": "string",
                "pattern": "^[0-9]+$",
                "description": "The event's id in the store: reconnect with Last-Event-ID",
            },
        },
        "allOf": [
            {
                "if": {"properties": {"event": {"const": name}}},
                "then": {"properties": {"data": {**JSON_DATA, "contentSchema": ref(model)}}},
            }
            for name, model in stream.events
        ],
    }


def _first_line(model: type[BaseModel]) -> str:
    return model.__doc__.strip().splitlines()[0] if model.__doc__ else model.__name__


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(build_spec())
