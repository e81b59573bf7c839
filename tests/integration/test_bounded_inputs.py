"""Bodies a hostile client might send: a nesting depth limit checked while parsing (a 4xx that
names it), and no body of any shape that gets a 5xx from any route that reads one."""

from __future__ import annotations

import json

import pytest

from tests.integration.conftest import Stack, StackFactory

pytestmark = pytest.mark.integration

JSON_CT = {"Content-Type": "application/json"}
CALLBACK_SECRET = "hostile-bodies-secret"


def nested(levels: int) -> str:
    """JSON text ``levels`` containers deep, built as text: Python's own encoder stops at about
    1,000 levels."""
    opens = "".join('{"k": ' if index % 2 else "[" for index in range(levels))
    closes = "".join("}" if index % 2 else "]" for index in reversed(range(levels)))
    return opens + '"leaf"' + closes


def submit_body(depth: int) -> bytes:
    """A catchall submit whose whole body nests ``depth`` levels (the body is 1, request 2)."""
    request = f'{{"query": "deep", "limit": 10, "x_meta": {nested(depth - 2)}}}'
    return f'{{"provider": "catchall", "request": {request}}}'.encode()


async def post(stack: Stack, path: str, body: bytes, **headers: str) -> tuple[int, str, str]:
    async with stack.client.post(
        stack.url + path, data=body, headers={**JSON_CT, **headers}
    ) as response:
        return response.status, response.content_type, await response.text()


async def listed(stack: Stack) -> list[str]:
    async with stack.client.get(f"{stack.url}/v1/jobs") as response:
        return [job["id"] for job in (await response.json())["jobs"]]


async def test_a_body_past_the_default_depth_is_refused_naming_the_limit(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack()
    # 300 was a 500 (the encoder's recursion limit); 2,000 passes orjson's own limit of 1,024.
    for depth in (300, 2000):
        status, content_type, text = await post(stack, "/v1/jobs", submit_body(depth))
        assert status == 400, text
        assert content_type == "application/problem+json"
        problem = json.loads(text)
        assert problem["code"] == "request_too_deep", problem
        assert problem["max_depth"] == 64
        assert "64" in problem["detail"]
        assert "server.max_json_depth" in problem["detail"]
    assert await listed(stack) == []
    assert stack.upstream_jobs("catchall") == 0


async def test_the_configured_depth_is_the_boundary(make_stack: StackFactory) -> None:
    stack = await make_stack(server={"max_json_depth": 12})
    status, _, text = await post(stack, "/v1/jobs", submit_body(12))
    assert status == 201, text
    status, _, text = await post(stack, "/v1/jobs", submit_body(13))
    assert status == 400, text
    assert json.loads(text)["code"] == "request_too_deep"
    assert "12" in json.loads(text)["detail"]
    assert len(await listed(stack)) == 1


HOSTILE: list[tuple[str, bytes, dict[str, str]]] = [
    ("empty", b"", {}),
    ("whitespace", b" \n\t ", {}),
    ("invalid_utf8", b'{"provider": "catchall", "request": {"query": "\xff\xfe"}}', {}),
    ("lone_surrogate", b'{"provider": "catchall", "request": {"query": "\\ud800"}}', {}),
    ("bom", b'\xef\xbb\xbf{"provider": "catchall", "request": {"query": "q"}}', {}),
    ("nan", b'{"provider": "catchall", "request": {"query": "q", "limit": NaN}}', {}),
    ("infinity", b'{"provider": "catchall", "request": {"query": "q", "limit": Infinity}}', {}),
    ("huge_float", b'{"provider": "catchall", "request": {"query": "q", "limit": 1e999}}', {}),
    (
        "huge_int",
        b'{"provider": "catchall", "request": {"query": "q", "limit": ' + b"9" * 400 + b"}}",
        {},
    ),
    (
        "big_int",
        b'{"provider": "catchall", "request": {"query": "q", "limit": 18446744073709551616}}',
        {},
    ),
    (
        "duplicate_keys",
        b'{"provider": "nope", "provider": "catchall", "request": {"query": "q"}}',
        {},
    ),
    ("array", b"[]", {}),
    ("string", b'"catchall"', {}),
    ("number", b"17", {}),
    ("null", b"null", {}),
    ("true", b"true", {}),
    ("request_array", b'{"provider": "catchall", "request": [1, 2]}', {}),
    ("labels_nested", b'{"provider": "catchall", "request": {}, "labels": {"a": {"b": 1}}}', {}),
    ("unclosed_deep", b"[" * 5000, {}),
    ("deep_object", b'{"a":' * 3000 + b"1" + b"}" * 3000, {}),
    ("control_chars", b'{"provider": "catchall\x00", "request": {}}', {}),
    ("trailing_garbage", b'{"provider": "catchall", "request": {}} xyz', {}),
    ("gzip_garbage", b"definitely not gzip", {"Content-Encoding": "gzip"}),
    ("deflate_garbage", b"definitely not deflate", {"Content-Encoding": "deflate"}),
    (
        "charset_latin1",
        b'{"provider": "caf\xe9"}',
        {"Content-Type": "application/json; charset=latin-1"},
    ),
]


PULSE_SIGNING_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


async def test_no_body_gets_a_5xx(make_stack: StackFactory) -> None:
    """Every hostile body on every route that reads one: a 2xx or a problem+json 4xx."""
    stack = await make_stack(
        server={"public_base_url": "http://127.0.0.1:9"},
        provider_options={"callback_secret": CALLBACK_SECRET},
        # Pulse's is a Standard Webhooks signing secret (its pushes are signed).
        per_provider={"pulse": {"callback_secret": PULSE_SIGNING_SECRET}},
    )
    job = await stack.submit("catchall", {"query": "q", "limit": 10})
    paths = (
        "/v1/jobs",
        f"/v1/jobs/{job['id']}/continue",
        f"/v1/callbacks/extract?token={CALLBACK_SECRET}",
    )
    continues = [
        ("continue_huge_limit", b'{"new_limit": 18446744073709551615}', {}),
        ("continue_float_limit", b'{"new_limit": 1e308}', {}),
    ]
    answers: dict[tuple[str, str], int] = {}
    for path in paths:
        for name, body, headers in [*HOSTILE, *continues]:
            status, content_type, text = await post(stack, path, body, **headers)
            answers[(path, name)] = status
            assert status < 500, (path, name, status, text)
            if status >= 400:
                assert content_type == "application/problem+json", (path, name, text)
                assert json.loads(text)["status"] == status
    assert answers[("/v1/jobs", "gzip_garbage")] == 400
    assert answers[("/v1/jobs", "deep_object")] == 400
    assert answers[(paths[2], "gzip_garbage")] == 400
