"""The result vault against the sandboxes over real sockets: a result is fetched from the provider
once and served from jobgate's copy after that, however many read it, and after the provider
forgets it."""

from __future__ import annotations

import asyncio
import hashlib

from adapters.pulse.sandbox import JOBS_KEY as PULSE_JOBS
from adapters.sandboxes import SUBAPPS_KEY
from tests.integration.conftest import Stack, StackFactory

PROXY_LARGE = "https://example.com/c.pdf?sandbox=large&sandbox_pointer=proxy"


async def _download(
    stack: Stack, job_id: str, **headers: str
) -> tuple[int, str, int, CIMultiDict[str]]:
    digest = hashlib.sha256()
    size = 0
    async with stack.client.get(
        f"{stack.url}/v1/jobs/{job_id}/result", headers=headers
    ) as response:
        async for chunk in response.content.iter_chunked(65536):
            digest.update(chunk)
            size += len(chunk)
        return response.status, digest.hexdigest(), size, response.headers.copy()


def _pulse_downloads(stack: Stack, upstream_id: str) -> int:
    return stack.sandbox[SUBAPPS_KEY]["pulse"][PULSE_JOBS].jobs[upstream_id].downloads


async def test_a_single_use_pointer_is_fetched_once_and_served_to_every_reader(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack()
    job = await stack.submit("pulse", {"fileUrl": PROXY_LARGE})
    done = await stack.until_finished(job["id"])
    assert done["state"] == "succeeded"

    sequential = [await _download(stack, job["id"]) for _ in range(5)]
    concurrent = await asyncio.gather(*(_download(stack, job["id"]) for _ in range(20)))
    answers = [*sequential, *concurrent]
    assert {status for status, *_ in answers} == {200}
    assert len({digest for _, digest, *_ in answers}) == 1
    assert all(size > 1_000_000 for _, _, size, _ in answers)
    assert _pulse_downloads(stack, job["upstream_id"]) == 1

    stored = await stack.job(job["id"])
    digest = sequential[0][1]
    assert stored["result"]["stored"] is True
    assert stored["result"]["source"] == "jobgate"
    assert stored["result"]["sha256"] == digest
    assert stored["result"]["size"] == sequential[0][2]
    assert sequential[-1][3]["ETag"] == f'"{digest}"'
