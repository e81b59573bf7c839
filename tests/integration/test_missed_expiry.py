"""A pulse job whose completion the gateway missed: stopped while the job completes and its output
is purged upstream, then started again (the real pulse sandbox and gateway over HTTP).

The sandbox runs on a clock the test moves by hand, so the whole outage (completion at 50 s,
expiry 60 s later) takes no wall-clock time, and nothing here waits for a timer: each wait below
is a long poll that answers at the job's next visible change.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.sandboxes import create_sandbox_app
from adapters.simulator import SandboxSettings
from gateway.web.state import COMPONENTS_KEY
from tests.conftest import Serve
from tests.integration.conftest import Stack, StackFactory

pytestmark = pytest.mark.integration

EXPIRING = {"fileUrl": "https://example.com/report.pdf?sandbox=expire"}


class HandClock:
    """The sandbox's monotonic clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def until_state(stack: Stack, job_id: str, state: str) -> dict[str, object]:
    """Long-poll until the gateway shows ``state`` (each wait answers at a visible change)."""
    job = await stack.job(job_id)
    for _ in range(10):
        if job["state"] == state:
            return job
        job = await stack.job(job_id, wait=5)
    raise AssertionError(f"job {job_id} never became {state}: {job}")


def status_calls(stack: Stack) -> int:
    runner = stack.app[COMPONENTS_KEY].runner
    assert runner is not None
    return runner.status_calls["pulse"]


@pytest.mark.parametrize("seen", ["queued", "running"])
async def test_a_missed_completion_ends_expired_at_the_first_poll_after_a_restart(
    make_stack: StackFactory, serve: Serve, tmp_path: Path, seen: str
) -> None:
    clock = HandClock()
    sandbox = create_sandbox_app(SandboxSettings(speed=1.0, seed=3, clock=clock))
    upstream = (sandbox, await serve(sandbox))
    db = tmp_path / "jobs.db"

    first = await make_stack(sandbox=upstream, db=db)
    job_id = str((await first.submit("pulse", EXPIRING))["id"])
    if seen == "running":
        clock.advance(10.0)  # past "pending" (5 s) into "processing"
    before = await until_state(first, job_id, seen)
    assert before["native_status"] == ("pending" if seen == "queued" else "processing")

    # The outage: a clean stop hands the job back (due now); meanwhile the job completes (50 s)
    # and its output is purged (60 s later), so "completed" is never seen.
    await first.server.close()
    clock.advance(200.0)

    second = await make_stack(sandbox=upstream, db=db)
    after = await until_state(second, job_id, "expired")
    assert status_calls(second) == 1  # the first poll after the restart ended it
    assert after["native_status"] == "expired"
    assert after["finished_at"] is not None
    assert after["next_poll_at"] is None  # no more polls until a deadline
    assert after["result"] == {
        "available": False,
        "partial": False,
        "kind": None,
        "total_records": None,
        "source": None,
        "stored": False,
        "capturing": False,
        "size": None,
        "sha256": None,
        "expires_at": None,
        "error": None,
    }
    # Its result is gone for good: 410, not "not ready" (which would invite a wait).
    async with second.client.get(f"{second.url}/v1/jobs/{job_id}/result") as response:
        assert response.status == 410
        assert (await response.json())["code"] == "result_expired"
