"""Schemathesis against the running gateway and its sandboxes: every documented operation, with
inputs generated from ``/openapi.json`` (valid and invalid ones), must never answer a 5xx, and
every answer must be one the document lists, in the documented shape. The SSE streams are read
(until they end, 20 events or the request timeout) and each event is checked against the
documented ``itemSchema`` and its data's ``contentSchema``.

Bounded: a few examples per operation, derandomized (the same inputs every run), no example
database. Schemathesis is synchronous (requests), so it runs in a worker thread while the
gateway serves on the test's event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.integration.conftest import Stack, StackFactory

pytestmark = pytest.mark.integration

EXAMPLES = 30
"""Per operation."""
REQUEST_TIMEOUT = 10.0
"""Seconds per call: generous, the calls answer at once (every long-poll names a finished job)."""
STREAM_TIMEOUT = 0.5
"""Seconds an SSE stream that does not end is read (20 events end it sooner), then checked."""
SECRET = "schemathesis-callback-secret"
CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
]


async def seed_jobs(stack: Stack) -> list[str]:
    """Jobs of every provider for the path parameters to name, in every phase: finished with
    records (catchall), inline (extract), a large result (pulse), adopted (platform)."""
    catchall = await stack.submit("catchall", {"query": "Series B rounds", "limit": 20})
    extract = await stack.submit("extract", {"url": "https://example.com"})
    pulse = await stack.submit("pulse", {"fileUrl": "https://example.com/a.pdf?sandbox=large"})
    upstream_id = await stack.platform_job()
    async with stack.client.post(
        f"{stack.url}/v1/jobs", json={"provider": "platform", "upstream_id": upstream_id}
    ) as response:
        assert response.status == 201
        platform = await response.json()
    # Finished, so that a generated long-poll (?wait=60) answers at once instead of timing out.
    for job in (catchall, extract, pulse, platform):
        await stack.until_finished(job["id"])
    return [catchall["id"], extract["id"], pulse["id"], platform["id"]]


def fuzz(spec: dict[str, Any], url: str, job_ids: list[str]) -> list[str]:
    """Run every operation; the failures, one line each (empty: all held)."""
    schema = schemathesis.openapi.from_dict(spec)
    failures: list[str] = []
    # DELETE last: it would leave the other operations no seeded job to name.
    operations = sorted((result.ok() for result in schema.get_all_operations()), key=is_delete)
    for operation in operations:
        streams = "text/event-stream" in str(operation.definition.raw.get("responses"))
        timeout = STREAM_TIMEOUT if streams else REQUEST_TIMEOUT
        run = examples(operation.label, st.one_of(strategies(operation, job_ids)), url, timeout)
        try:
            run()
        except (Exception, FailureGroup) as exc:
            # A group's own message only counts its members: name them, so a failure says what.
            inner = "; ".join(str(e) for e in getattr(exc, "exceptions", ()))
            failures.append(f"{operation.label}: {exc}" + (f" ({inner})" if inner else ""))
    return failures


def strategies(
    operation: schemathesis.APIOperation, job_ids: list[str]
) -> list[st.SearchStrategy[Any]]:
    """Valid and invalid inputs; path parameters aimed at the seeded jobs and at a provider that
    takes callbacks (with its token), besides generated ones. Hypothesis favours the earlier
    strategies of a ``one_of``, so the aimed ones come first."""
    aimed: list[dict[str, Any]] = []
    if "{job_id}" in operation.path:
        aimed = [{"path_parameters": {"job_id": job}} for job in job_ids]
    if "{provider}" in operation.path:
        aimed = [{"path_parameters": {"provider": "extract"}, "query": {"token": SECRET}}]
    modes = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
    return [
        *(
            operation.as_strategy(generation_mode=mode, **fixed)
            for fixed in aimed
            for mode in modes
        ),
        *(operation.as_strategy(generation_mode=mode) for mode in modes),
    ]


def is_delete(operation: schemathesis.APIOperation) -> bool:
    return operation.method.upper() == "DELETE"


def examples(
    label: str, strategy: st.SearchStrategy[Any], url: str, timeout: float
) -> Callable[[], None]:
    @hypothesis.settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        suppress_health_check=list(hypothesis.HealthCheck),
        print_blob=False,
    )
    @hypothesis.given(case=strategy)
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=url, checks=CHECKS, timeout=timeout)

    run.__name__ = label
    return run


async def test_schemathesis_finds_no_server_error_and_no_undocumented_answer(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(
        server={"sse_heartbeat_seconds": 0.5, "public_base_url": "http://127.0.0.1:9"},
        provider_options={"callback_secret": SECRET},
        # Pulse's is a Standard Webhooks signing secret (its pushes are signed).
        per_provider={"pulse": {"callback_secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}},
    )
    job_ids = await seed_jobs(stack)
    async with stack.client.get(f"{stack.url}/openapi.json") as response:
        spec = await response.json()
    # The stack runs with auth off, where credentials schemathesis would generate for the declared
    # schemes change nothing; keys and scopes have their own tests (test_auth.py, test_tenants.py).
    spec["components"].pop("securitySchemes")
    spec.pop("security")
    for operations in spec["paths"].values():
        for operation in operations.values():
            operation.pop("security", None)
    async with asyncio.timeout(50):
        failures = await asyncio.to_thread(fuzz, spec, stack.url, job_ids)
    assert failures == [], "\n\n".join(failures)
