"""Every 4xx of the v1 API: RFC 9457 problem+json with a stable code and a detail that names the
problem, nothing half-written after a refusal, and never a provider key in an error body."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from adapters.registry import PROVIDERS
from adapters.sandboxes import create_sandbox_app
from adapters.simulator import SandboxSettings
from tests.conftest import Serve
from tests.integration.conftest import Stack, StackFactory

pytestmark = pytest.mark.integration

PROVIDER_KEY = "test-key"  # what conftest.gateway_settings gives every provider
JSON_CT = {"Content-Type": "application/json"}
EXTRACT_OK = {"provider": "extract", "request": {"url": "https://example.com", "maxPages": 2}}


async def expect_problem(
    stack: Stack,
    method: str,
    path: str,
    status: int,
    code: str,
    *names: str,
    **kwargs: Any,
) -> dict[str, Any]:
    """Call the gateway and check the problem+json answer; ``names`` must appear in ``detail``."""
    async with stack.client.request(method, stack.url + path, **kwargs) as response:
        text = await response.text()
        assert response.status == status, f"{method} {path}: {response.status} {text}"
        assert response.content_type == "application/problem+json", text
    assert PROVIDER_KEY not in text, f"a provider key leaked into an error body: {text}"
    body: dict[str, Any] = json.loads(text)
    assert body["status"] == status, body
    assert body["code"] == code, body
    assert isinstance(body["type"], str), body
    assert body["type"].endswith("/" + code), body
    for member in ("title", "detail"):
        assert isinstance(body[member], str), body
        assert body[member].strip(), body
    for name in names:
        assert name in body["detail"], f"{name!r} not named in {body['detail']!r}"
    return body


async def snapshot(stack: Stack) -> tuple[list[str], dict[str, int]]:
    """The jobs the gateway lists and the jobs each sandbox holds."""
    async with stack.client.get(f"{stack.url}/v1/jobs?limit=500") as response:
        assert response.status == 200
        jobs = [job["id"] for job in (await response.json())["jobs"]]
    return jobs, {name: stack.upstream_jobs(name) for name in PROVIDERS}


async def platform_upstream_job(stack: Stack) -> str:
    async with stack.client.post(
        f"{stack.sandbox_url}/platform/v1/api/sandbox/jobs",
        json={"type": "document_processing", "scenario": "succeed"},
        headers={"Authorization": f"Bearer {PROVIDER_KEY}"},
    ) as response:
        assert response.status == 201
        upstream_id: str = (await response.json())["data"]["id"]
    return upstream_id


# -- POST /v1/jobs: every refusal, and nothing written ---------------------------------------------

RAW_BODIES = [
    # id, raw body, headers, status, code, names in detail
    ("truncated_json", '{"provider":', JSON_CT, 400, "invalid_json", ("not valid JSON",)),
    ("json_array", "[1]", JSON_CT, 400, "invalid_json", ("JSON object",)),
    ("json_string", '"extract"', JSON_CT, 400, "invalid_json", ("JSON object",)),
    ("empty_body", "", JSON_CT, 400, "invalid_json", ("empty",)),
    ("blank_body", "  \n ", JSON_CT, 400, "invalid_json", ("empty",)),
    ("bad_utf8", b'{"provider": "\xff"}', JSON_CT, 400, "invalid_json", ("not valid JSON",)),
    (
        "text_plain",
        json.dumps(EXTRACT_OK),
        {"Content-Type": "text/plain"},
        415,
        "unsupported_media_type",
        ("text/plain", "application/json"),
    ),
    (
        "form_encoded",
        "provider=extract",
        {"Content-Type": "application/x-www-form-urlencoded"},
        415,
        "unsupported_media_type",
        ("application/x-www-form-urlencoded",),
    ),
]


@pytest.mark.parametrize(
    ("raw", "headers", "status", "code", "names"),
    [case[1:] for case in RAW_BODIES],
    ids=[case[0] for case in RAW_BODIES],
)
async def test_unreadable_submit_bodies(
    make_stack: StackFactory,
    raw: str | bytes,
    headers: dict[str, str],
    status: int,
    code: str,
    names: tuple[str, ...],
) -> None:
    stack = await make_stack()
    before = await snapshot(stack)
    await expect_problem(stack, "POST", "/v1/jobs", status, code, *names, data=raw, headers=headers)
    assert await snapshot(stack) == before


async def test_empty_body_without_content_type_is_an_empty_body(make_stack: StackFactory) -> None:
    """No Content-Type at all is not a wrong one: the answer is about the missing body."""
    stack = await make_stack()
    await expect_problem(
        stack,
        "POST",
        "/v1/jobs",
        400,
        "invalid_json",
        "empty",
        data=b"",
        skip_auto_headers=("Content-Type",),
    )
    # ... and a JSON body without a Content-Type is read as JSON.
    await expect_problem(
        stack,
        "POST",
        "/v1/jobs",
        422,
        "validation_error",
        "bogus",
        data=b'{"provider": "extract", "request": {}, "bogus": 1}',
        skip_auto_headers=("Content-Type",),
    )


INVALID_BODIES: list[tuple[str, dict[str, Any], int, str, tuple[str, ...]]] = [
    (
        "unknown_provider",
        {"provider": "nope", "request": {"url": "https://example.com"}},
        422,
        "unknown_provider",
        ("nope", "catchall", "extract", "platform", "pulse"),
    ),
    (
        "unknown_field",
        {"provider": "extract", "request": {}, "bogus": 1},
        422,
        "validation_error",
        ("bogus",),
    ),
    ("missing_provider", {"request": {}}, 422, "validation_error", ("provider",)),
    ("empty_provider", {"provider": "", "request": {}}, 422, "validation_error", ("provider",)),
    ("provider_not_string", {"provider": 7, "request": {}}, 422, "validation_error", ("provider",)),
    (
        "request_and_upstream_id",
        {"provider": "extract", "request": {}, "upstream_id": "job_1"},
        422,
        "validation_error",
        ("request", "upstream_id"),
    ),
    (
        "neither_request_nor_upstream_id",
        {"provider": "extract"},
        422,
        "validation_error",
        ("request", "upstream_id"),
    ),
    (
        "request_not_object",
        {"provider": "extract", "request": [1]},
        422,
        "validation_error",
        ("request",),
    ),
    (
        "upstream_id_too_long",
        {"provider": "platform", "upstream_id": "x" * 257},
        422,
        "validation_error",
        ("upstream_id",),
    ),
    (
        "labels_not_object",
        {**EXTRACT_OK, "labels": "team=docs"},
        422,
        "validation_error",
        ("labels",),
    ),
    (
        "label_key_with_colon",
        {**EXTRACT_OK, "labels": {"a:b": "c"}},
        422,
        "validation_error",
        ("labels",),
    ),
    ("label_key_empty", {**EXTRACT_OK, "labels": {"": "c"}}, 422, "validation_error", ("labels",)),
    (
        "label_value_not_string",
        {**EXTRACT_OK, "labels": {"team": 1}},
        422,
        "validation_error",
        ("labels.team",),
    ),
    (
        "label_value_too_long",
        {**EXTRACT_OK, "labels": {"team": "x" * 257}},
        422,
        "validation_error",
        ("labels",),
    ),
    (
        "too_many_labels",
        {**EXTRACT_OK, "labels": {f"k{i}": "v" for i in range(33)}},
        422,
        "validation_error",
        ("labels", "32"),
    ),
    (
        "callback_url_not_http",
        {**EXTRACT_OK, "callback_url": "ftp://example.com/hook"},
        422,
        "validation_error",
        ("callback_url",),
    ),
    (
        "callback_url_relative",
        {**EXTRACT_OK, "callback_url": "/hook"},
        422,
        "validation_error",
        ("callback_url",),
    ),
    (
        "callback_url_not_string",
        {**EXTRACT_OK, "callback_url": 5},
        422,
        "validation_error",
        ("callback_url",),
    ),
    (
        "platform_submit",
        {"provider": "platform", "request": {"type": "export"}},
        409,
        "action_not_supported",
        ("platform", "upstream_id"),
    ),
    (
        "upstream_rejected",
        {"provider": "extract", "request": {"url": "notaurl"}},
        422,
        "upstream_rejected",
        ("url",),
    ),
    (
        "upstream_rejected_catchall",
        {"provider": "catchall", "request": {"query": "q", "limit": 1}},
        422,
        "upstream_rejected",
        ("limit",),
    ),
    (
        "upstream_rejected_pulse",
        {"provider": "pulse", "request": {}},
        422,
        "upstream_rejected",
        ("fileUrl",),
    ),
]


@pytest.mark.parametrize(
    ("body", "status", "code", "names"),
    [case[1:] for case in INVALID_BODIES],
    ids=[case[0] for case in INVALID_BODIES],
)
async def test_invalid_submit_bodies(
    make_stack: StackFactory,
    body: dict[str, Any],
    status: int,
    code: str,
    names: tuple[str, ...],
) -> None:
    stack = await make_stack()
    before = await snapshot(stack)
    problem = await expect_problem(stack, "POST", "/v1/jobs", status, code, *names, json=body)
    if code == "validation_error":
        assert problem["errors"], problem
        assert all(set(item) >= {"field", "type", "message"} for item in problem["errors"])
    assert await snapshot(stack) == before
    # The same body under an Idempotency-Key is refused the same way, and the key stays free.
    await expect_problem(
        stack, "POST", "/v1/jobs", status, code, json=body, headers={"Idempotency-Key": "k-1"}
    )
    assert await snapshot(stack) == before


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
async def test_adopting_an_unknown_upstream_id(make_stack: StackFactory, provider: str) -> None:
    stack = await make_stack()
    before = await snapshot(stack)
    await expect_problem(
        stack,
        "POST",
        "/v1/jobs",
        422,
        "upstream_not_found",
        provider,
        json={"provider": provider, "upstream_id": "no-such-upstream-job"},
    )
    assert await snapshot(stack) == before


@pytest.mark.parametrize("key", ["", "k" * 256])
async def test_bad_idempotency_key(make_stack: StackFactory, key: str) -> None:
    stack = await make_stack()
    before = await snapshot(stack)
    await expect_problem(
        stack,
        "POST",
        "/v1/jobs",
        400,
        "invalid_header",
        "Idempotency-Key",
        json=EXTRACT_OK,
        headers={"Idempotency-Key": key},
    )
    assert await snapshot(stack) == before


async def test_idempotency_key_reused_with_another_body(make_stack: StackFactory) -> None:
    stack = await make_stack()
    headers = {"Idempotency-Key": "order-7"}
    async with stack.client.post(f"{stack.url}/v1/jobs", json=EXTRACT_OK, headers=headers) as r:
        assert r.status == 201
        first = await r.json()
    before = await snapshot(stack)
    assert before == ([first["id"]], {**before[1], "extract": 1})
    other = {**EXTRACT_OK, "request": {"url": "https://example.org"}}
    await expect_problem(
        stack,
        "POST",
        "/v1/jobs",
        422,
        "idempotency_key_reused",
        "Idempotency-Key",
        json=other,
        headers=headers,
    )
    await expect_problem(
        stack,
        "POST",
        "/v1/jobs",
        422,
        "idempotency_key_reused",
        json={**EXTRACT_OK, "labels": {"a": "b"}},
        headers=headers,
    )
    assert await snapshot(stack) == before


async def test_body_over_the_size_limit(make_stack: StackFactory) -> None:
    stack = await make_stack(server={"max_body_bytes": 2048})
    before = await snapshot(stack)
    big = {"provider": "extract", "request": {"url": "https://example.com", "pad": "x" * 4096}}
    await expect_problem(stack, "POST", "/v1/jobs", 413, "body_too_large", "2048", json=big)
    # Sent chunked, with no Content-Length to refuse up front: the limit holds on the bytes read.

    async def chunks() -> AsyncIterator[bytes]:
        payload = json.dumps(big).encode()
        for start in range(0, len(payload), 512):
            yield payload[start : start + 512]

    await expect_problem(
        stack, "POST", "/v1/jobs", 413, "body_too_large", "2048", data=chunks(), headers=JSON_CT
    )
    assert await snapshot(stack) == before
    # A body within the limit is still accepted.
    small = {"provider": "extract", "request": {"url": "https://example.com", "maxPages": 1}}
    async with stack.client.post(f"{stack.url}/v1/jobs", json=small) as response:
        assert response.status == 201
        job = await response.json()
    await expect_problem(
        stack,
        "POST",
        f"/v1/jobs/{job['id']}/continue",
        413,
        "body_too_large",
        "2048",
        json={"new_limit": 1, "pad": "x" * 4096},
    )


# -- job ids, routes and methods -----------------------------------------------------------------

UNKNOWN_JOB = "job_00000000000000000000000000"


@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        ("GET", ""),
        ("GET", "?wait=0.2"),
        ("DELETE", ""),
        ("POST", "/cancel"),
        ("POST", "/rerun"),
        ("POST", "/continue"),
        ("GET", "/result"),
        ("GET", "/result?wait=0.2"),
    ],
)
async def test_unknown_job_id(make_stack: StackFactory, method: str, suffix: str) -> None:
    stack = await make_stack()
    await expect_problem(
        stack, method, f"/v1/jobs/{UNKNOWN_JOB}{suffix}", 404, "job_not_found", UNKNOWN_JOB
    )
    assert await snapshot(stack) == ([], {name: 0 for name in PROVIDERS})


async def test_continue_with_a_body_on_an_unknown_job(make_stack: StackFactory) -> None:
    stack = await make_stack()
    await expect_problem(
        stack,
        "POST",
        f"/v1/jobs/{UNKNOWN_JOB}/continue",
        404,
        "job_not_found",
        UNKNOWN_JOB,
        json={"new_limit": 20},
    )


@pytest.mark.parametrize("path", ["/nope", "/v1", "/v1/job", "/v1/jobs/x/bogus", "/v2/jobs"])
async def test_unknown_route(make_stack: StackFactory, path: str) -> None:
    stack = await make_stack()
    await expect_problem(stack, "GET", path, 404, "not_found", path)
    await expect_problem(stack, "POST", path, 404, "not_found", path, json={})


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/v1/jobs", {"GET", "POST"}),
        ("DELETE", "/v1/jobs", {"GET", "POST"}),
        ("PATCH", "/v1/jobs/job_x", {"GET", "DELETE"}),
        ("GET", "/v1/jobs/job_x/cancel", {"POST"}),
        ("DELETE", "/v1/providers", {"GET"}),
        ("POST", "/healthz", {"GET"}),
    ],
)
async def test_wrong_method(
    make_stack: StackFactory, method: str, path: str, allowed: set[str]
) -> None:
    stack = await make_stack()
    async with stack.client.request(method, stack.url + path) as response:
        assert response.status == 405
        allow = {m.strip() for m in response.headers["Allow"].split(",")}
    assert allowed <= allow
    await expect_problem(stack, method, path, 405, "method_not_allowed", method, *sorted(allowed))


# -- query parameters ------------------------------------------------------------------------------

QUERIES = [
    # path (JOB is replaced by a real job id), query, the parameter the detail must name
    ("/v1/jobs/JOB", "wait=abc", "wait"),
    ("/v1/jobs/JOB", "wait=999", "wait"),
    ("/v1/jobs/JOB", "wait=-1", "wait"),
    ("/v1/jobs/JOB", "wait=nan", "wait"),
    ("/v1/jobs/JOB/result", "wait=abc", "wait"),
    ("/v1/jobs/JOB/result", "page=0", "page"),
    ("/v1/jobs/JOB/result", "page=abc", "page"),
    ("/v1/jobs/JOB/result", "page=1.5", "page"),
    ("/v1/jobs/JOB/result", "page_size=5000", "page_size"),
    ("/v1/jobs/JOB/result", "page_size=0", "page_size"),
    ("/v1/jobs/JOB/result", "redirect=maybe", "redirect"),
    ("/v1/jobs", "limit=0", "limit"),
    ("/v1/jobs", "limit=501", "limit"),
    ("/v1/jobs", "limit=ten", "limit"),
    ("/v1/jobs", "state=bogus", "state"),
    ("/v1/jobs", "label=nocolon", "label"),
    ("/v1/jobs", "label=:value", "label"),
    ("/v1/jobs", "provider=bogus", "provider"),
    ("/v1/jobs", "cursor=garbage", "cursor"),
    ("/v1/jobs", "cursor=" + "A" * 40, "cursor"),
]


async def test_bad_query_parameters(make_stack: StackFactory) -> None:
    stack = await make_stack()
    job = await stack.submit("extract", {"url": "https://example.com"})
    for path, query, name in QUERIES:
        target = path.replace("JOB", job["id"]) + "?" + query
        await expect_problem(stack, "GET", target, 400, "invalid_query", name)
        # An unknown job with a bad parameter: the parameter is reported (it is checked first).
        if "JOB" in path:
            await expect_problem(
                stack,
                "GET",
                path.replace("JOB", UNKNOWN_JOB) + "?" + query,
                400,
                "invalid_query",
                name,
            )
    assert (await snapshot(stack))[0] == [job["id"]]


# -- actions the provider does not have, or the job's state does not allow -------------------------


async def test_actions_not_supported(make_stack: StackFactory) -> None:
    stack = await make_stack(speed=1)
    extract = await stack.submit("extract", {"url": "https://example.com"})
    pulse = await stack.submit("pulse", {"fileUrl": "https://example.com/a.pdf"})
    # Adopted, not submitted: pulse has no native rerun and there is no stored request.
    async with stack.client.post(
        f"{stack.url}/v1/jobs", json={"provider": "pulse", "upstream_id": pulse["upstream_id"]}
    ) as response:
        assert response.status == 201, await response.text()
        adopted = await response.json()
    before = await snapshot(stack)
    for job_id, action, provider in (
        (extract["id"], "cancel", "extract"),
        (extract["id"], "continue", "extract"),
        (pulse["id"], "continue", "pulse"),
        (adopted["id"], "rerun", "pulse"),
    ):
        problem = await expect_problem(
            stack,
            "POST",
            f"/v1/jobs/{job_id}/{action}",
            409,
            "action_not_supported",
            provider,
            action,
        )
        assert problem["action"] == action
    assert await snapshot(stack) == before


async def test_result_not_ready(make_stack: StackFactory) -> None:
    stack = await make_stack(speed=1)
    job = await stack.submit("extract", {"url": "https://example.com"})
    problem = await expect_problem(
        stack, "GET", f"/v1/jobs/{job['id']}/result", 409, "result_not_ready", "no result"
    )
    assert problem["state"] in ("queued", "running")
    # A short wait that ends before the result exists gives the same answer.
    await expect_problem(
        stack, "GET", f"/v1/jobs/{job['id']}/result?wait=0.2", 409, "result_not_ready"
    )


async def test_finished_jobs_refuse_cancel_and_continue(make_stack: StackFactory) -> None:
    stack = await make_stack()
    pulse = await stack.submit("pulse", {"fileUrl": "https://example.com/a.pdf"})
    failed = await stack.submit("catchall", {"query": "x?sandbox=fail", "limit": 10})
    assert (await stack.until_finished(pulse["id"]))["state"] == "succeeded"
    await expect_problem(
        stack, "POST", f"/v1/jobs/{pulse['id']}/cancel", 409, "invalid_state", "succeeded"
    )
    assert (await stack.until_finished(failed["id"]))["state"] == "failed"
    await expect_problem(
        stack, "POST", f"/v1/jobs/{failed['id']}/continue", 409, "invalid_state", "failed"
    )


async def test_continue_refusals_on_a_finished_catchall_job(make_stack: StackFactory) -> None:
    stack = await make_stack()
    job = await stack.submit("catchall", {"query": "acquisitions in fintech", "limit": 10})
    done = await stack.until_finished(job["id"])
    assert done["state"] == "succeeded"
    path = f"/v1/jobs/{job['id']}/continue"
    # Refused by the gateway: the body is checked before anything goes upstream.
    await expect_problem(
        stack, "POST", path, 422, "validation_error", "new_limit", json={"new_limit": 0}
    )
    await expect_problem(
        stack, "POST", path, 422, "validation_error", "new_limit", json={"new_limit": "more"}
    )
    await expect_problem(stack, "POST", path, 422, "validation_error", "bogus", json={"bogus": 1})
    await expect_problem(stack, "POST", path, 400, "invalid_json", "JSON object", json=[30])
    await expect_problem(
        stack, "POST", path, 400, "invalid_json", "not valid JSON", data="{", headers=JSON_CT
    )
    await expect_problem(
        stack,
        "POST",
        path,
        415,
        "unsupported_media_type",
        "text/plain",
        data="{}",
        headers={"Content-Type": "text/plain"},
    )
    # Refused upstream: a new limit that is not above the old one.
    for new_limit in (10, 5):
        await expect_problem(
            stack,
            "POST",
            path,
            422,
            "upstream_rejected",
            "new_limit",
            json={"new_limit": new_limit},
        )
    after = await stack.job(job["id"])
    # continue writes its intent ahead and withdraws it when refused: nothing is left pending.
    visible = ("state", "native_status", "progress", "result", "error", "next_poll_at")
    assert {k: after[k] for k in visible} == {k: done[k] for k in visible}
    assert await snapshot(stack) == ([job["id"]], {**{n: 0 for n in PROVIDERS}, "catchall": 1})


# -- no provider key in any error body ---------------------------------------------------------


async def test_no_provider_key_in_error_bodies(
    make_stack: StackFactory, serve: Serve, tmp_path: Path
) -> None:
    """Collect error bodies from every layer (parsing, service, upstream refusals, upstream auth
    failures) and look for the key the gateway sends upstream."""
    stack = await make_stack()
    bodies: list[str] = []

    async def collect(method: str, path: str, **kwargs: Any) -> None:
        async with stack.client.request(method, stack.url + path, **kwargs) as response:
            assert response.status >= 400, (method, path, response.status)
            bodies.append(await response.text())

    await collect("POST", "/v1/jobs", data='{"provider":', headers=JSON_CT)
    await collect("POST", "/v1/jobs", json={"provider": "nope", "request": {}})
    await collect("POST", "/v1/jobs", json={"provider": "extract", "request": {"url": "x"}})
    await collect("POST", "/v1/jobs", json={"provider": "pulse", "request": {"fileUrl": 3}})
    await collect("POST", "/v1/jobs", json={"provider": "catchall", "request": {"limit": 1}})
    for provider in PROVIDERS:
        await collect("POST", "/v1/jobs", json={"provider": provider, "upstream_id": "nope"})
    await collect("GET", f"/v1/jobs/{UNKNOWN_JOB}/result")
    await collect("GET", "/v1/jobs?cursor=garbage")

    # A sandbox that accepts another key: every upstream call is refused as unauthorised.
    locked = create_sandbox_app(SandboxSettings(speed=400, api_keys=frozenset({"other-key"})))
    locked_stack = await make_stack(
        sandbox=(locked, await serve(locked)), db=tmp_path / "locked.db"
    )
    for body in (
        {"provider": "extract", "request": {"url": "https://example.com"}},
        {"provider": "pulse", "request": {"fileUrl": "https://example.com/a.pdf"}},
        {"provider": "catchall", "request": {"query": "q", "limit": 10}},
        {"provider": "platform", "upstream_id": "job_1"},
    ):
        async with locked_stack.client.post(f"{locked_stack.url}/v1/jobs", json=body) as response:
            assert response.status >= 400
            assert response.content_type == "application/problem+json"
            bodies.append(await response.text())
    assert len(bodies) == 15
    for text in bodies:
        assert PROVIDER_KEY not in text, text
        assert "other-key" not in text, text
