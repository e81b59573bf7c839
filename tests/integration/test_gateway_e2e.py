"""End to end through the REST API, against the sandboxes over 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from gateway.web.app import create_app
from gateway.web.state import COMPONENTS_KEY
from tests.integration.conftest import Stack, StackFactory

pytestmark = pytest.mark.integration


async def test_extract_job_to_inline_result(make_stack: StackFactory) -> None:
    stack = await make_stack()
    job = await stack.submit("extract", {"url": "https://example.com", "maxPages": 3})
    assert job["state"] == "queued"
    assert job["upstream_id"].startswith("job_")
    done = await stack.until_finished(job["id"])
    assert done["state"] == "succeeded"
    assert done["native_status"] == "completed"
    assert done["progress"]["fraction"] == 1.0
    summary = done["result"]
    assert {k: summary[k] for k in ("available", "partial", "kind", "total_records")} == {
        "available": True,
        "partial": False,
        "kind": "inline",
        "total_records": None,
    }
    # A small inline result is kept in the job's row: stored from the moment the job succeeds.
    assert summary["stored"] is True
    assert summary["source"] == "jobgate"
    async with stack.client.get(f"{stack.url}/v1/jobs/{job['id']}/result") as response:
        assert response.status == 200
        assert response.headers["ETag"] == f'"{summary["sha256"]}"'
        result = await response.json()
    assert result["kind"] == "inline"
    assert result["data"]["pagesScraped"] == 3
    assert stack.upstream_jobs("extract") == 1


async def test_failed_job_reports_the_provider_error(make_stack: StackFactory) -> None:
    stack = await make_stack()
    job = await stack.submit("extract", {"url": "https://example.com/?sandbox=fail"})
    done = await stack.until_finished(job["id"])
    assert done["state"] == "failed"
    assert done["error"]["code"] == "extract_failed"
    assert "Connection timeout" in done["error"]["message"]
    async with stack.client.get(f"{stack.url}/v1/jobs/{job['id']}/result") as response:
        assert response.status == 409
        assert response.content_type == "application/problem+json"
        assert (await response.json())["code"] == "result_not_ready"


async def test_pulse_inline_and_large_results(make_stack: StackFactory) -> None:
    stack = await make_stack()
    inline = await stack.submit("pulse", {"fileUrl": "https://example.com/a.pdf"})
    presigned = await stack.submit("pulse", {"fileUrl": "https://example.com/b.pdf?sandbox=large"})
    proxied = await stack.submit(
        "pulse", {"fileUrl": "https://example.com/c.pdf?sandbox=large&sandbox_pointer=proxy"}
    )
    for job in (inline, presigned, proxied):
        assert (await stack.until_finished(job["id"]))["state"] == "succeeded"

    async with stack.client.get(f"{stack.url}/v1/jobs/{inline['id']}/result") as response:
        assert response.status == 200
        assert "markdown" in (await response.json())["data"]

    # Streamed through (default): the body is the full extraction, several MB, in chunks.
    digest = hashlib.sha256()
    size = 0
    async with stack.client.get(f"{stack.url}/v1/jobs/{presigned['id']}/result") as response:
        assert response.status == 200
        async for chunk in response.content.iter_chunked(65536):
            digest.update(chunk)
            size += len(chunk)
    assert size > 1_000_000

    # Redirected: a presigned pointer needs no key, so the client may fetch it itself.
    async with stack.client.get(
        f"{stack.url}/v1/jobs/{presigned['id']}/result?redirect=true", allow_redirects=False
    ) as response:
        assert response.status == 307
        location = response.headers["Location"]
    assert "/presigned/" in location
    async with stack.client.get(location) as response:
        assert response.status == 200
        assert hashlib.sha256(await response.read()).hexdigest() == digest.hexdigest()

    # The proxy pointer needs the provider key: never redirected. jobgate fetched it once, into
    # its vault, so every read gets the same bytes although the pointer upstream is single-use.
    async with stack.client.get(
        f"{stack.url}/v1/jobs/{proxied['id']}/result?redirect=true", allow_redirects=False
    ) as response:
        assert response.status == 200
        first = await response.read()
    assert len(first) > 1_000_000
    async with stack.client.get(f"{stack.url}/v1/jobs/{proxied['id']}/result") as response:
        assert response.status == 200
        assert await response.read() == first


async def test_pulse_cancel(make_stack: StackFactory) -> None:
    stack = await make_stack(speed=20)
    job = await stack.submit("pulse", {"fileUrl": "https://example.com/?sandbox=slow"})
    async with stack.client.post(f"{stack.url}/v1/jobs/{job['id']}/cancel") as response:
        assert response.status == 202
    done = await stack.until_finished(job["id"])
    assert done["state"] == "canceled"
    assert done["native_status"] == "canceled"


async def test_catchall_partial_pages_and_continue(make_stack: StackFactory) -> None:
    stack = await make_stack(speed=100)
    job = await stack.submit("catchall", {"query": "acquisitions in fintech", "limit": 10})
    saw_partial = False
    for _ in range(400):
        current = await stack.job(job["id"], wait=1)
        if current["result"]["partial"] and current["state"] == "running":
            async with stack.client.get(
                f"{stack.url}/v1/jobs/{job['id']}/result?page=1&page_size=5"
            ) as response:
                assert response.status == 200
                page = await response.json()
            # The upstream may have finished since the last poll; then the page is complete.
            saw_partial = saw_partial or (page["partial"] and len(page["records"]) > 0)
        if current["state"] == "succeeded":
            break
    assert saw_partial, "partial records were never offered while the job was enriching"
    first, total = await _all_records(stack, job["id"])
    assert len(first) == total == 10

    async with stack.client.post(
        f"{stack.url}/v1/jobs/{job['id']}/continue", json={"new_limit": 30}
    ) as response:
        assert response.status == 202, await response.text()
        assert (await response.json())["state"] == "running"
    again = await stack.until_finished(job["id"])
    assert again["state"] == "succeeded"
    second, total = await _all_records(stack, job["id"])
    assert len(second) == total == 30
    assert {r["record_id"] for r in first} <= {r["record_id"] for r in second}


async def _all_records(stack: Stack, job_id: str) -> tuple[list[dict[str, Any]], int]:
    """Drain every page; the count must match the provider's valid_records."""
    records: list[dict[str, Any]] = []
    page = 1
    while True:
        async with stack.client.get(
            f"{stack.url}/v1/jobs/{job_id}/result?page={page}&page_size=7"
        ) as response:
            assert response.status == 200
            body = await response.json()
        records.extend(body["records"])
        if page >= body["total_pages"]:
            return records, body["total_records"]
        page += 1


async def test_platform_adopt_result_and_native_rerun(make_stack: StackFactory) -> None:
    stack = await make_stack()
    upstream_id = await stack.platform_job("document_processing")
    async with stack.client.post(
        f"{stack.url}/v1/jobs",
        json={"provider": "platform", "upstream_id": upstream_id, "labels": {"team": "docs"}},
    ) as response:
        assert response.status == 201
        job = await response.json()
    done = await stack.until_finished(job["id"])
    assert done["state"] == "succeeded"
    async with stack.client.get(f"{stack.url}/v1/jobs/{job['id']}/result") as response:
        assert response.status == 200
    async with stack.client.post(f"{stack.url}/v1/jobs/{job['id']}/rerun") as response:
        assert response.status == 201
        rerun = await response.json()
    assert rerun["rerun_of"] == job["id"]
    assert rerun["upstream_id"] != upstream_id
    assert rerun["labels"] == {"team": "docs"}
    assert (await stack.until_finished(rerun["id"]))["state"] == "succeeded"


async def test_rerun_resubmits_the_stored_request(make_stack: StackFactory) -> None:
    stack = await make_stack()
    job = await stack.submit("extract", {"url": "https://example.com", "maxPages": 2})
    await stack.until_finished(job["id"])
    async with stack.client.post(f"{stack.url}/v1/jobs/{job['id']}/rerun") as response:
        assert response.status == 201
        rerun = await response.json()
    assert rerun["rerun_of"] == job["id"]
    assert stack.upstream_jobs("extract") == 2
    assert (await stack.until_finished(rerun["id"]))["state"] == "succeeded"


async def test_unsupported_actions_are_409(make_stack: StackFactory) -> None:
    stack = await make_stack()
    job = await stack.submit("extract", {"url": "https://example.com"})
    for action in ("cancel", "continue"):
        async with stack.client.post(f"{stack.url}/v1/jobs/{job['id']}/{action}") as response:
            assert response.status == 409
            assert response.content_type == "application/problem+json"
            assert (await response.json())["code"] == "action_not_supported"
    async with stack.client.post(
        f"{stack.url}/v1/jobs", json={"provider": "platform", "request": {"type": "export"}}
    ) as response:
        assert response.status == 409
        assert (await response.json())["code"] == "action_not_supported"


async def test_twenty_concurrent_submits_make_one_upstream_job(make_stack: StackFactory) -> None:
    stack = await make_stack()
    body = {"provider": "extract", "request": {"url": "https://example.com/idem"}}

    async def submit() -> tuple[int, dict[str, Any]]:
        async with stack.client.post(
            f"{stack.url}/v1/jobs", json=body, headers={"Idempotency-Key": "order-42"}
        ) as response:
            return response.status, await response.json()

    answers = await asyncio.gather(*(submit() for _ in range(20)))
    statuses = [status for status, _ in answers]
    assert statuses.count(201) >= 1
    assert set(statuses) <= {201, 409}
    created = {b["id"] for s, b in answers if s == 201}
    assert len(created) == 1
    assert stack.upstream_jobs("extract") == 1
    # Once finished, a retry replays the first answer, and a different body is refused.
    status, replay = await submit()
    assert (status, replay["id"]) == (201, created.pop())
    async with stack.client.post(
        f"{stack.url}/v1/jobs",
        json={**body, "labels": {"x": "y"}},
        headers={"Idempotency-Key": "order-42"},
    ) as response:
        assert response.status == 422
        assert (await response.json())["code"] == "idempotency_key_reused"
    assert stack.upstream_jobs("extract") == 1


async def test_restart_with_fifty_tracked_jobs_loses_none(make_stack: StackFactory) -> None:
    stack = await make_stack(speed=60)
    ids = []
    for index in range(50):
        scenario = ("succeed", "slow")[index % 2]
        request = {"fileUrl": f"https://example.com/{index}.pdf?sandbox={scenario}"}
        ids.append((await stack.submit("pulse", request))["id"])
    await asyncio.sleep(0.3)
    # Stop the first gateway abruptly and start a second one on the same SQLite file.
    await stack.server.close()
    second_app = create_app(stack.settings)
    second = TestServer(second_app, host="127.0.0.1")
    await second.start_server()
    try:
        restarted = Stack(
            stack.sandbox,
            stack.sandbox_url,
            str(second.make_url("")).rstrip("/"),
            stack.client,
            stack.settings,
            second_app,
            second,
        )
        async with restarted.client.get(f"{restarted.url}/v1/jobs?limit=500") as response:
            listed = {job["id"] for job in (await response.json())["jobs"]}
        assert listed == set(ids)
        for job_id in ids:
            assert (await restarted.until_finished(job_id))["state"] == "succeeded"
    finally:
        await second.close()


async def test_faults_never_lose_a_job(make_stack: StackFactory) -> None:
    stack = await make_stack(faults=0.3, seed=5)
    expected: dict[str, str] = {}
    for index in range(6):
        ok = await stack.submit("extract", {"url": f"https://example.com/{index}", "maxPages": 2})
        expected[ok["id"]] = "succeeded"
        bad = await stack.submit("pulse", {"fileUrl": f"https://example.com/{index}?sandbox=fail"})
        expected[bad["id"]] = "failed"
        flaky = await stack.submit("pulse", {"fileUrl": f"https://x.test/{index}?sandbox=flaky"})
        expected[flaky["id"]] = "succeeded"
    for upstream_id in [await stack.platform_job("document_processing") for _ in range(3)]:
        async with stack.client.post(
            f"{stack.url}/v1/jobs", json={"provider": "platform", "upstream_id": upstream_id}
        ) as response:
            if response.status == 201:
                expected[(await response.json())["id"]] = "succeeded"
    for job_id, state in expected.items():
        assert (await stack.until_finished(job_id))["state"] == state


async def test_a_burst_of_jobs_wastes_no_status_call(make_stack: StackFactory) -> None:
    # 300 jobs at once against a provider allowing 100 calls/s: the old runner claimed a batch of
    # 500, its polls queued for tokens past their 2 s lease, the jobs were claimed again, and the
    # first polls' answers were fenced away. A claim now takes a token per job, so every status
    # call the provider answers is one the gateway keeps.
    stack = await make_stack(
        speed=2000,
        policy={"rate_per_second": 100, "burst": 10, "concurrency": 16},
        provider_options={"total_timeout": 1.5},
        runner={"lease_seconds": 2, "batch": 500},
    )
    with capture_logs() as logs:
        ids = await asyncio.gather(
            *(
                stack.submit("pulse", {"fileUrl": f"https://example.com/burst-{n}.pdf"})
                for n in range(300)
            )
        )
        for job in ids:
            assert (await stack.until_finished(job["id"], rounds=120))["state"] == "succeeded"
    runner = stack.app[COMPONENTS_KEY].runner
    assert runner is not None
    fenced = [entry for entry in logs if entry["event"] == "runner.write_fenced"]
    assert fenced == []
    polls = sum(job["polls"] for job in [await stack.job(j["id"]) for j in ids])
    assert runner.status_calls["pulse"] == polls  # every call made was folded into its job
