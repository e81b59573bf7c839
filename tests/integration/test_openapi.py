"""``/openapi.json`` against the running app: OpenAPI 3.2, every served route listed, every ``$ref``
resolvable, and the documented schemas the ones the handlers enforce and the API returns (the SSE
streams' events included).

No JSON Schema library is a dependency, so a small validator below checks the subset of JSON Schema
that pydantic emits; it refuses any keyword it does not know rather than ignore a constraint."""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.web.models import ContinueBody, JobList, JobOut, KeyCreateBody, Problem, SubmitBody
from gateway.web.openapi import build_spec
from tests.integration.conftest import Stack, StackFactory
from tests.unit.test_webhooks import SECRET

pytestmark = pytest.mark.integration

# Served beside the API, not in it: the spec itself, its page and the page's files, the jobs page,
# and the Prometheus exposition.
SPEC_ROUTES = {
    "/openapi.json",
    "/docs",
    "/docs/assets/{name}",
    "/",
    "/ui/",
    "/ui/{file}",
    "/metrics",
}
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
REF_PREFIX = "#/components/schemas/"


# -- a small JSON Schema (2020-12 subset) validator ----------------------------------------------

# contentMediaType and contentSchema are annotations in JSON Schema 2020-12: check_event below
# applies an SSE event's contentSchema to its parsed data itself.
ANNOTATIONS = {
    "title",
    "description",
    "default",
    "examples",
    "deprecated",
    "format",
    "contentMediaType",
}
TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
    "null": (type(None),),
}


def _is_type(value: Any, name: str) -> bool:
    if isinstance(value, bool) and name in ("integer", "number"):
        return False
    if name == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, TYPES[name])


def validate(
    value: Any, schema: dict[str, Any] | bool, spec: dict[str, Any], at: str = "$"
) -> list[str]:
    """Every way ``value`` breaks ``schema``; ``$ref`` resolves inside ``spec``."""
    if schema is True:
        return []
    if schema is False:
        return [f"{at}: not allowed"]
    errors: list[str] = []
    for keyword, rule in schema.items():
        if keyword in ANNOTATIONS:
            continue
        if keyword == "$ref":
            errors += validate(value, resolve(spec, rule), spec, at)
        elif keyword == "type":
            names = rule if isinstance(rule, list) else [rule]
            if not any(_is_type(value, name) for name in names):
                errors.append(f"{at}: expected {rule}, got {type(value).__name__}")
        elif keyword == "enum":
            if value not in rule:
                errors.append(f"{at}: {value!r} not in {rule}")
        elif keyword == "const":
            if value != rule:
                errors.append(f"{at}: {value!r} is not {rule!r}")
        elif keyword == "anyOf":
            if all(validate(value, option, spec, at) for option in rule):
                errors.append(f"{at}: matches none of anyOf")
        elif keyword == "oneOf":
            if sum(not validate(value, option, spec, at) for option in rule) != 1:
                errors.append(f"{at}: does not match exactly one of oneOf")
        elif keyword == "allOf":
            for option in rule:
                errors += validate(value, option, spec, at)
        elif keyword in ("properties", "additionalProperties", "required"):
            if isinstance(value, dict):
                errors += _object(value, keyword, rule, schema, spec, at)
        elif keyword in ("minProperties", "maxProperties"):
            if isinstance(value, dict):
                bad = len(value) < rule if keyword == "minProperties" else len(value) > rule
                if bad:
                    errors.append(f"{at}: {keyword} {rule}")
        elif keyword == "items":
            if isinstance(value, list):
                for index, item in enumerate(value):
                    errors += validate(item, rule, spec, f"{at}[{index}]")
        elif keyword in ("minItems", "maxItems"):
            if isinstance(value, list):
                bad = len(value) < rule if keyword == "minItems" else len(value) > rule
                if bad:
                    errors.append(f"{at}: {keyword} {rule}")
        elif keyword in ("minLength", "maxLength"):
            if isinstance(value, str):
                bad = len(value) < rule if keyword == "minLength" else len(value) > rule
                if bad:
                    errors.append(f"{at}: {keyword} {rule}")
        elif keyword == "pattern":
            if isinstance(value, str) and not re.search(rule, value):
                errors.append(f"{at}: does not match {rule}")
        elif keyword in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            if _is_type(value, "number"):
                errors += _bound(value, keyword, rule, at)
        else:
            raise AssertionError(f"{at}: the test validator does not know {keyword!r}")
    return errors


def _object(
    value: dict[str, Any],
    keyword: str,
    rule: Any,
    schema: dict[str, Any],
    spec: dict[str, Any],
    at: str,
) -> list[str]:
    errors: list[str] = []
    if keyword == "required":
        errors += [f"{at}: missing {name}" for name in rule if name not in value]
    elif keyword == "properties":
        for name, sub in rule.items():
            if name in value:
                errors += validate(value[name], sub, spec, f"{at}.{name}")
    else:
        known = schema.get("properties", {})
        for name, item in value.items():
            if name not in known:
                errors += validate(item, rule, spec, f"{at}.{name}")
    return errors


def _bound(value: float, keyword: str, rule: float, at: str) -> list[str]:
    ok = {
        "minimum": value >= rule,
        "maximum": value <= rule,
        "exclusiveMinimum": value > rule,
        "exclusiveMaximum": value < rule,
    }[keyword]
    return [] if ok and not math.isnan(value) else [f"{at}: {keyword} {rule}"]


def resolve(spec: dict[str, Any], ref: str) -> dict[str, Any]:
    assert ref.startswith(REF_PREFIX), ref
    schema: dict[str, Any] = spec["components"]["schemas"][ref.removeprefix(REF_PREFIX)]
    return schema


def refs(node: Any, where: str = "$") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield where, value
            else:
                yield from refs(value, f"{where}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from refs(value, f"{where}[{index}]")


def test_the_validator_itself() -> None:
    spec: dict[str, Any] = {"components": {"schemas": {"N": {"type": "integer", "minimum": 1}}}}
    schema = {
        "type": "object",
        "properties": {
            "n": {"$ref": REF_PREFIX + "N"},
            "s": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        },
        "required": ["n"],
        "additionalProperties": False,
    }
    assert validate({"n": 1, "s": None}, schema, spec) == []
    assert validate({"n": 0}, schema, spec)
    assert validate({"n": True}, schema, spec)
    assert validate({"s": "x"}, schema, spec)
    assert validate({"n": 2, "s": 3}, schema, spec)
    assert validate({"n": 2, "x": 3}, schema, spec)
    with pytest.raises(AssertionError, match="does not know"):
        validate(1, {"multipleOf": 2}, spec)


# -- fixtures --------------------------------------------------------------------------------------


async def fetch_spec(stack: Stack) -> dict[str, Any]:
    async with stack.client.get(f"{stack.url}/openapi.json") as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        spec: dict[str, Any] = await response.json()
    return spec


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield path, method.upper(), operation


# -- the document --------------------------------------------------------------------------------


async def test_openapi_is_3_2_and_lists_every_served_route(make_stack: StackFactory) -> None:
    """3.2: the first version that can describe an event stream's events (``itemSchema``)."""
    stack = await make_stack()
    spec = await fetch_spec(stack)
    assert spec["openapi"].startswith("3.2")
    assert spec["info"]["title"]
    assert spec["info"]["version"]

    served: set[tuple[str, str]] = set()
    for route in stack.app.router.routes():
        resource = route.resource
        assert resource is not None
        path = resource.canonical
        if route.method == "HEAD" or path in SPEC_ROUTES:
            continue
        served.add((path, route.method))
    documented = {(path, method) for path, method, _ in operations(spec)}
    assert served - documented == set(), "served but not documented"
    assert documented - served == set(), "documented but not served"
    assert ("/v1/jobs", "POST") in documented


async def test_operations_are_complete(make_stack: StackFactory) -> None:
    stack = await make_stack()
    spec = await fetch_spec(stack)
    ids = [operation["operationId"] for _, _, operation in operations(spec)]
    assert len(ids) == len(set(ids)), "operationIds repeat"
    for path, method, operation in operations(spec):
        where = f"{method} {path}"
        assert operation["summary"], where
        assert operation["responses"], where
        declared = {p["name"] for p in operation["parameters"] if p["in"] == "path"}
        assert declared == set(re.findall(r"{(\w+)}", path)), where
        for parameter in operation["parameters"]:
            assert parameter["in"] in ("query", "path", "header"), where
            if parameter["in"] == "path":
                assert parameter["required"] is True, where
        # Every status is listed: a catch-all would hide the ones the document misses.
        assert "default" not in operation["responses"], where
        for status, response in operation["responses"].items():
            assert response["description"], (where, status)
            content = response.get("content", {})
            if 200 <= int(status) < 300 and status != "204":
                media = {"application/json", "text/event-stream", "application/octet-stream"}
                assert media & set(content), (where, status)
            if int(status) >= 400:
                # A problem, except /readyz's 503, which is its own JSON document.
                assert {"application/problem+json", "application/json"} & set(content), (
                    where,
                    status,
                )


async def test_every_ref_resolves(make_stack: StackFactory) -> None:
    stack = await make_stack()
    spec = await fetch_spec(stack)
    schemas = spec["components"]["schemas"]
    found = list(refs(spec))
    assert found
    for where, ref in found:
        assert ref.startswith(REF_PREFIX), f"{where}: {ref}"
        assert ref.removeprefix(REF_PREFIX) in schemas, f"{where}: {ref} does not resolve"
    assert not any("$defs" in schema for schema in schemas.values())
    for name in ("SubmitBody", "ContinueBody", "JobOut", "JobList", "Problem"):
        assert name in schemas


async def test_docs_page_points_at_the_document(make_stack: StackFactory) -> None:
    stack = await make_stack()
    async with stack.client.get(f"{stack.url}/docs") as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        assert "script-src 'self'" in response.headers["Content-Security-Policy"]
        html = await response.text()
    assert html.lstrip().lower().startswith("<!doctype html>")
    assert "/openapi.json" in html
    # Swagger UI from this gateway (make install fetched it), never from a CDN.
    assert "/docs/assets/swagger-ui-bundle.js" in html
    assert not re.search(r"(src|href)=\"(https?:)?//", html)
    async with stack.client.get(f"{stack.url}/docs/assets/swagger-ui-bundle.js") as response:
        assert response.status == 200
        assert "javascript" in response.content_type
        assert b"SwaggerUIBundle" in await response.read()
    async with stack.client.get(f"{stack.url}/docs/assets/init.js") as response:
        assert response.status == 200
        assert "validatorUrl: null" in await response.text()


@pytest.mark.parametrize(
    "name", ["nope.js", "..%2F..%2Fdocs.py", "%2e%2e", ".version", "LICENSE", "swagger-ui"]
)
async def test_docs_assets_serve_only_their_files(make_stack: StackFactory, name: str) -> None:
    stack = await make_stack()
    async with stack.client.get(f"{stack.url}/docs/assets/{name}") as response:
        assert response.status == 404


def test_docs_page_without_swagger_ui_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from gateway.web import docs

    monkeypatch.setattr(docs, "SWAGGER_UI", tmp_path)
    assert docs.swagger_version() is None
    assert "make install" in docs.MISSING


def test_request_body_examples_are_valid_bodies() -> None:
    spec = build_spec()
    bodies = {
        "SubmitBody": SubmitBody,
        "ContinueBody": ContinueBody,
        "KeyCreateBody": KeyCreateBody,
    }
    seen = 0
    for _, _, operation in operations(spec):
        content = operation.get("requestBody", {}).get("content", {}).get("application/json")
        if content is None:
            continue
        model = bodies[content["schema"]["$ref"].removeprefix(REF_PREFIX)]
        for example in content["examples"].values():
            model.model_validate(example["value"])
            seen += 1
        schema = spec["components"]["schemas"][model.__name__]
        assert schema["examples"] == [e["value"] for e in content["examples"].values()]
    assert seen >= 6


# -- documented request bodies are the enforced ones ---------------------------------------------

SCHEMA_REJECTS_SUBMIT: list[dict[str, Any]] = [
    {"provider": "extract", "request": {"url": "https://example.com"}, "bogus": 1},
    {"request": {"url": "https://example.com"}},
    {"provider": "", "request": {}},
    {"provider": 7, "request": {}},
    {"provider": None, "request": {}},
    {"provider": "extract", "request": [1]},
    {"provider": "extract", "request": "url=https://example.com"},
    {"provider": "platform", "upstream_id": ""},
    {"provider": "platform", "upstream_id": "x" * 257},
    {"provider": "platform", "upstream_id": 12},
    {"provider": "extract", "request": {}, "labels": ["team"]},
    {"provider": "extract", "request": {}, "labels": {"team": 1}},
    {"provider": "extract", "request": {}, "callback_url": 5},
    {"provider": "extract", "request": {}, "callback_url": "https://example.com/" + "x" * 2048},
]

SCHEMA_REJECTS_CONTINUE: list[dict[str, Any]] = [
    {"new_limit": 0},
    {"new_limit": 1.5},
    {"new_limit": "more"},
    {"new_limit": True},
    {"new_limit": "30"},
    {"limit": 20},
]


async def test_submit_body_schema_matches_the_handler(make_stack: StackFactory) -> None:
    # A callback_url is vetted at submit by the webhook rules, so the accepted one is allowed here.
    hooks = {"secret": SECRET, "allowed_hosts": ["127.0.0.1"], "allowed_networks": ["127.0.0.1/32"]}
    stack = await make_stack(speed=1, webhooks=hooks)
    spec = await fetch_spec(stack)
    submit = spec["paths"]["/v1/jobs"]["post"]
    assert submit["requestBody"]["required"] is True
    schema = resolve(spec, submit["requestBody"]["content"]["application/json"]["schema"]["$ref"])
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["provider"]
    assert set(schema["properties"]) == {
        "provider",
        "request",
        "upstream_id",
        "labels",
        "callback_url",
    }

    for body in SCHEMA_REJECTS_SUBMIT:
        assert validate(body, schema, spec), f"the schema accepts {body}"
        async with stack.client.post(f"{stack.url}/v1/jobs", json=body) as response:
            problem = await response.json()
            assert response.status == 422, (body, problem)
            assert response.content_type == "application/problem+json"
        assert problem["code"] == "validation_error", problem
        assert validate(problem, resolve(spec, REF_PREFIX + "Problem"), spec) == []

    accepted = {
        "provider": "extract",
        "request": {"url": "https://example.com", "maxPages": 2},
        "labels": {"team": "docs"},
        "callback_url": "http://127.0.0.1/jobgate",
    }
    assert validate(accepted, schema, spec) == []
    async with stack.client.post(f"{stack.url}/v1/jobs", json=accepted) as response:
        assert response.status == 201, await response.text()
        created = await response.json()
    job_schema = submit["responses"]["201"]["content"]["application/json"]["schema"]
    assert validate(created, job_schema, spec) == []

    # Nothing the schema refused was written.
    async with stack.client.get(f"{stack.url}/v1/jobs") as response:
        assert [job["id"] for job in (await response.json())["jobs"]] == [created["id"]]


async def test_continue_body_schema_matches_the_handler(make_stack: StackFactory) -> None:
    stack = await make_stack(speed=1)
    spec = await fetch_spec(stack)
    operation = spec["paths"]["/v1/jobs/{job_id}/continue"]["post"]
    schema = resolve(
        spec, operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    )
    assert schema["additionalProperties"] is False
    job = await stack.submit("catchall", {"query": "q", "limit": 10})
    for body in SCHEMA_REJECTS_CONTINUE:
        assert validate(body, schema, spec), f"the schema accepts {body}"
        async with stack.client.post(
            f"{stack.url}/v1/jobs/{job['id']}/continue", json=body
        ) as response:
            problem = await response.json()
            assert response.status == 422, (body, problem)
        assert problem["code"] == "validation_error", problem
    assert (await stack.job(job["id"]))["version"] == job["version"]


async def test_documented_parameter_bounds_are_enforced(make_stack: StackFactory) -> None:
    """Each documented bound on a query parameter or header: a value past it gets a 400."""
    stack = await make_stack(speed=1)
    spec = await fetch_spec(stack)
    job = await stack.submit("extract", {"url": "https://example.com"})
    checked = 0
    for path, method, operation in operations(spec):
        url = stack.url + path.replace("{job_id}", job["id"])
        for parameter in operation["parameters"]:
            name, schema = parameter["name"], parameter["schema"]
            bad: list[str] = []
            if "maximum" in schema:
                bad.append(str(schema["maximum"] + 1))
            if "minimum" in schema:
                bad.append(str(schema["minimum"] - 1))
            if schema.get("type") == "integer":
                bad.append("1.5")
            if schema.get("type") in ("integer", "number", "boolean"):
                bad.append("abc")
            if "maxLength" in schema:
                bad.append("k" * (schema["maxLength"] + 1))
            for value in bad:
                if parameter["in"] == "query":
                    kwargs: dict[str, Any] = {"params": {name: value}}
                elif parameter["in"] == "header":
                    kwargs = {
                        "headers": {name: value},
                        "json": {"provider": "extract", "request": {}},
                    }
                else:
                    continue
                async with stack.client.request(method, url, **kwargs) as response:
                    text = await response.text()
                    assert response.status == 400, (method, path, name, value, text)
                    assert response.content_type == "application/problem+json"
                problem = json.loads(text)
                assert name in problem["detail"], problem
                checked += 1
    assert checked >= 10


# -- documented responses are the returned ones ---------------------------------------------------


async def test_jobs_validate_against_the_documented_schemas(make_stack: StackFactory) -> None:
    stack = await make_stack()
    spec = await fetch_spec(stack)
    job_schema = resolve(spec, REF_PREFIX + "JobOut")
    queued = await stack.submit("extract", {"url": "https://example.com"}, labels={"a": "b"})
    done = await stack.until_finished(queued["id"])
    async with stack.client.get(f"{stack.url}/v1/jobs?label=a:b") as response:
        assert response.status == 200
        listed = await response.json()

    for job in (queued, done, *listed["jobs"]):
        model = JobOut.model_validate(job)
        assert model.model_dump() == job, "the API returns fields the model does not declare"
        assert set(job) == set(job_schema["properties"])
        assert set(job_schema["required"]) <= set(job)
        assert validate(job, job_schema, spec) == []
    assert done["state"] == "succeeded"
    assert done["result"]["available"] is True
    JobList.model_validate(listed)
    assert validate(listed, resolve(spec, REF_PREFIX + "JobList"), spec) == []

    for path, ref in (
        ("/v1/providers", "ProviderList"),
        ("/healthz", "Health"),
        ("/readyz", "Health"),
    ):
        async with stack.client.get(stack.url + path) as response:
            assert response.status == 200
            assert validate(await response.json(), resolve(spec, REF_PREFIX + ref), spec) == []

    async with stack.client.get(f"{stack.url}/v1/jobs/{done['id']}/result") as response:
        assert response.status == 200
        result = await response.json()
    assert validate(result, resolve(spec, REF_PREFIX + "ResultOut"), spec) == []

    async with stack.client.get(f"{stack.url}/v1/jobs/job_nope") as response:
        assert response.status == 404
        problem = await response.json()
    Problem.model_validate(problem)
    assert validate(problem, resolve(spec, REF_PREFIX + "Problem"), spec) == []


# -- documented events are the streamed ones -------------------------------------------------------


def parse_events(raw: bytes) -> list[dict[str, str]]:
    """Server-Sent Events as an EventSource reads them (comments skipped)."""
    events = []
    for block in raw.decode().split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith(":"):
                continue
            name, _, value = line.partition(": ")
            fields[name] = fields[name] + "\n" + value if name in fields else value
        if "data" in fields:
            events.append(fields)
    return events


def check_event(event: dict[str, str], item: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    """Every way ``event`` breaks the stream's ``itemSchema``, its JSON ``data`` included."""
    where = f"event {event.get('event')} {event.get('id')}"
    errors = validate(event, {k: v for k, v in item.items() if k != "allOf"}, spec, where)
    branches = [
        branch["then"]["properties"]["data"]
        for branch in item["allOf"]
        if branch["if"]["properties"]["event"]["const"] == event["event"]
    ]
    assert len(branches) == 1, (where, branches)
    assert branches[0]["contentMediaType"] == "application/json"
    return errors + validate(json.loads(event["data"]), branches[0]["contentSchema"], spec, where)


async def test_sse_events_validate_against_the_documented_schemas(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack()
    spec = await fetch_spec(stack)

    def item_schema(path: str) -> dict[str, Any]:
        content = spec["paths"][path]["get"]["responses"]["200"]["content"]
        assert list(content) == ["text/event-stream"], path
        schema: dict[str, Any] = content["text/event-stream"]["itemSchema"]
        return schema

    # A catchall job sends every kind: created, state, progress, records while enriching, end.
    job = await stack.submit("catchall", {"query": "Series B rounds in logistics", "limit": 30})
    await stack.until_finished(job["id"])
    async with stack.client.get(f"{stack.url}/v1/jobs/{job['id']}/events") as response:
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        async with asyncio.timeout(30):
            job_stream = parse_events(await response.read())
    kinds = {event["event"] for event in job_stream}
    assert kinds == {"created", "state", "progress", "records", "end"}, kinds
    assert job_stream[-1]["event"] == "end"
    item = item_schema("/v1/jobs/{job_id}/events")
    for event in job_stream:
        assert check_event(event, item, spec) == [], event

    # The tenant stream from its start: the same events (no end), read as far as they go.
    logged = [event for event in job_stream if "id" in event]
    async with stack.client.get(f"{stack.url}/v1/events?last_event_id=0") as response:
        assert response.status == 200
        tenant_stream: list[dict[str, str]] = []
        async with asyncio.timeout(30):
            while len(tenant_stream) < len(logged):
                tenant_stream += parse_events(await response.content.readuntil(b"\n\n"))
    assert [event["id"] for event in tenant_stream] == [event["id"] for event in logged]
    item = item_schema("/v1/events")
    assert "end" not in item["properties"]["event"]["enum"]
    for event in tenant_stream:
        assert check_event(event, item, spec) == [], event
    # From now, it opens with an id alone (where now was): documented, and nothing else alone.
    async with stack.client.get(f"{stack.url}/v1/events") as response:
        async with asyncio.timeout(30):
            raw = await response.content.readuntil(b"\n\n")
    assert raw == f"id: {logged[-1]['id']}\n\n".encode()
    opening = {"id": logged[-1]["id"]}
    without_events = {k: v for k, v in item.items() if k != "allOf"}
    assert validate(opening, without_events, spec) == []
    assert validate({"data": "{}"}, without_events, spec) != []
    assert validate({"id": "1", "data": "{}"}, without_events, spec) != []

    # A stream whose data no longer matches its schema is caught.
    broken = {**logged[0], "data": json.dumps({**json.loads(logged[0]["data"]), "extra": 1})}
    assert check_event(broken, item, spec)
