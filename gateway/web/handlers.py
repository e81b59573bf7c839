"""Route handlers: parse, call the service, render. Domain errors become problem+json in the
middleware, so each handler is the happy path only."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel

from gateway.service import (
    FollowResult,
    JobService,
    JsonResult,
    RedirectResult,
    StoredBytes,
    StoredFile,
    SubmitCommand,
)
from gateway.states import JobState
from gateway.store.base import JobFilter
from gateway.web.bodies import read_body
from gateway.web.models import ContinueBody, SubmitBody
from gateway.web.problems import BadInput
from gateway.web.state import COMPONENTS_KEY, tenant_of
from gateway.web.stored import follow_capture, serve_bytes, serve_file
from gateway.web.streaming import stream_pointer

M = TypeVar("M", bound=BaseModel)

_JSON = {"Content-Type": "application/json"}
"""The headers of a body that is JSON already (encoded once, served as bytes)."""


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


async def read_json(request: web.Request) -> Any:
    # aiohttp reports a missing Content-Type as application/octet-stream: only a given one counts.
    given = "Content-Type" in request.headers
    if (
        given
        and request.content_type not in ("application/json", "")
        and not request.content_type.endswith("+json")
    ):
        raise BadInput(
            "unsupported_media_type",
            f"expected Content-Type application/json, got {request.content_type}",
            status=415,
        )
    server = request.app[COMPONENTS_KEY].settings.server
    return await read_body(request, server.max_json_depth, server.body_timeout_seconds)


def parse(model: type[M], data: Any) -> M:
    if not isinstance(data, dict):
        raise BadInput("invalid_json", "the request body must be a JSON object")
    return model.model_validate(data)


def query_number(request: web.Request, name: str, default: float, low: float, high: float) -> float:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise BadInput("invalid_query", f"{name} must be a number, got {raw!r}") from exc
    if not low <= value <= high:
        raise BadInput("invalid_query", f"{name} must be between {_num(low)} and {_num(high)}")
    return value


def _num(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:g}"


def query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    value = query_number(request, name, default, low, high)
    if value != int(value):
        raise BadInput("invalid_query", f"{name} must be a whole number")
    return int(value)


def query_bool(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "false").lower()
    if raw not in ("true", "false", "1", "0", "yes", "no"):
        raise BadInput("invalid_query", f"{name} must be true or false, got {raw!r}")
    return raw in ("true", "1", "yes")


def service(request: web.Request) -> JobService:
    return request.app[COMPONENTS_KEY].require_service()


def max_wait(request: web.Request) -> float:
    return request.app[COMPONENTS_KEY].settings.server.max_wait_seconds


# -- jobs -----------------------------------------------------------------------------------------


async def submit_job(request: web.Request) -> web.Response:
    body = parse(SubmitBody, await read_json(request))
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key) <= 255:
        raise BadInput("invalid_header", "Idempotency-Key must be 1-255 characters", status=400)
    command = SubmitCommand(
        provider=body.provider,
        request=body.request,
        upstream_id=body.upstream_id,
        labels=body.labels,
        callback_url=body.callback_url,
        tenant=tenant_of(request),
    )
    answer = await service(request).submit(command, key)
    headers = {"Idempotent-Replayed": "true"} if answer.replayed else {}
    if answer.status == 201 and "id" in answer.body:
        headers["Location"] = f"/v1/jobs/{answer.body['id']}"
    return json_response(answer.body, status=answer.status, headers=headers)


async def list_jobs(request: web.Request) -> web.Response:
    state = request.query.get("state")
    if state is not None and state not in JobState.__members__.values():
        allowed = ", ".join(s.value for s in JobState)
        raise BadInput("invalid_query", f"state must be one of {allowed}, got {state!r}")
    labels: dict[str, str] = {}
    for item in request.query.getall("label", []):
        key, sep, value = item.partition(":")
        if not sep or not key:
            raise BadInput("invalid_query", f"label filters look like key:value, got {item!r}")
        labels[key] = value
    provider = request.query.get("provider")
    if provider is not None and provider not in service(request).adapters:
        known = ", ".join(sorted(service(request).adapters))
        raise BadInput("invalid_query", f"provider must be one of {known}, got {provider!r}")
    where = JobFilter(
        tenant=tenant_of(request),
        provider=provider,
        state=JobState(state) if state else None,
        labels=labels,
    )
    limit = query_int(request, "limit", 50, 1, 500)
    cursor = request.query.get("cursor")
    try:
        body = await service(request).list_encoded(where, limit=limit, cursor=cursor)
    except ValueError as exc:  # the store's answer to a cursor it did not make
        if cursor is None:
            raise
        raise BadInput(
            "invalid_query", f"cursor must be a next_cursor from a previous page, got {cursor!r}"
        ) from exc
    return web.Response(body=body, headers=_JSON)


async def get_job(request: web.Request) -> web.Response:
    wait = query_number(request, "wait", 0, 0, max_wait(request))
    held, anything = if_none_match(request)
    snapshot = await service(request).watch(
        request.match_info["job_id"], wait, tenant_of(request), at_least=max(held, default=0)
    )
    if anything or snapshot.job.version in held:
        return web.Response(status=304, headers={"ETag": snapshot.etag})
    return web.Response(body=snapshot.body, headers={**_JSON, "ETag": snapshot.etag})


def if_none_match(request: web.Request) -> tuple[set[int], bool]:
    """The job versions ``If-None-Match`` names (``"7"``, ``W/"7"``, a list of them), and whether
    it is ``*``. The client holds those versions, so a read may not answer with anything older.
    Tags that are not ours are ignored, as RFC 9110 has it."""
    raw = request.headers.get("If-None-Match")
    held: set[int] = set()
    if not raw:
        return held, False
    for item in raw.split(","):
        tag = item.strip().removeprefix("W/")
        if tag == "*":
            return held, True
        digits = tag[1:-1]
        if tag[:1] == tag[-1:] == '"' and digits.isascii() and digits.isdigit() and len(tag) < 21:
            held.add(int(digits))
    return held, False


async def delete_job(request: web.Request) -> web.Response:
    await service(request).delete(request.match_info["job_id"], tenant_of(request))
    return web.Response(status=204)


async def cancel_job(request: web.Request) -> web.Response:
    job = await service(request).cancel(request.match_info["job_id"], tenant_of(request))
    return json_response(job.public(), status=202)


async def rerun_job(request: web.Request) -> web.Response:
    job = await service(request).rerun(request.match_info["job_id"], tenant_of(request))
    return json_response(job.public(), status=201, headers={"Location": f"/v1/jobs/{job.id}"})


async def continue_job(request: web.Request) -> web.Response:
    params: dict[str, Any] = {}
    if request.can_read_body:
        params = parse(ContinueBody, await read_json(request)).model_dump(exclude_none=True)
    job = await service(request).continue_(request.match_info["job_id"], params, tenant_of(request))
    return json_response(job.public(), status=202)


async def job_result(request: web.Request) -> web.StreamResponse:
    job_id = request.match_info["job_id"]
    wait = query_number(request, "wait", 0, 0, max_wait(request))
    page = query_int(request, "page", 1, 1, 1_000_000)
    page_size = (
        query_int(request, "page_size", 100, 1, 1000) if "page_size" in request.query else None
    )
    redirect = query_bool(request, "redirect")
    tenant = tenant_of(request)
    if wait > 0:
        await service(request).wait_result(job_id, wait, tenant)
    answer = await service(request).result(
        job_id, page=page, page_size=page_size, redirect=redirect, tenant=tenant
    )
    if isinstance(answer, JsonResult):
        return json_response(answer.body)
    if isinstance(answer, RedirectResult):
        raise web.HTTPTemporaryRedirect(answer.url)
    if isinstance(answer, StoredFile):
        return await serve_file(request, answer)
    if isinstance(answer, StoredBytes):
        return serve_bytes(request, answer)
    if isinstance(answer, FollowResult):
        return await follow_capture(request, answer)
    return await stream_pointer(request, answer, job_id, tenant)


# -- providers and health -------------------------------------------------------------------------


async def list_providers(request: web.Request) -> web.Response:
    components = request.app[COMPONENTS_KEY]
    svc = components.require_service()
    circuits = components.runner.circuits() if components.runner else {}
    providers = []
    for name, adapter in sorted(svc.adapters.items()):
        providers.append(
            {
                "name": name,
                "base_url": components.settings.providers[name].base_url,
                "capabilities": adapter.capabilities.as_dict(),
                "policy": asdict(svc.policies[name]),
                "circuit": circuits.get(name, "closed"),
            }
        )
    return json_response({"providers": providers})


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    ok = await service(request).store.ping()
    return json_response({"status": "ready" if ok else "store unavailable"}, 200 if ok else 503)
