"""The vault's work in the runner, on a fake clock: a paged result captured in the poll that sees
it complete, a failed capture retried after the provider's backoff, a copy deleted when its
retention ends."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path

import pytest

from adapters.base import ResultKind, ResultLocator, ResultPage, ResultPayload, StatusReport
from gateway.blobs import FilesystemBlobStore
from gateway.capturer import Capturer
from gateway.events import EventHub
from gateway.jobs import Job
from gateway.policy import error_delay
from gateway.runner import Runner
from gateway.states import JobState
from gateway.vault import CAPTURE_ATTEMPTS, CapturePolicy
from tests.unit.test_runner import POLICY
from tests.unit.test_runner_records import PARTIAL, RecordsAdapter, Rig, data

DONE = ResultLocator(kind=ResultKind.PAGED, partial=False)
RETENTION = timedelta(hours=2)


def done() -> StatusReport:
    return StatusReport("", JobState.SUCCEEDED, "completed", result=DONE)


def running() -> StatusReport:
    return StatusReport("", JobState.RUNNING, "enriching", result=PARTIAL)


class ShortAdapter(RecordsAdapter):
    """Its pages hold one record fewer than the total it reports."""

    async def fetch_result(
        self, upstream_id: str, *, page: int = 1, page_size: int | None = None
    ) -> ResultPayload:
        page_ = await super().fetch_result(upstream_id, page=page, page_size=page_size)
        assert isinstance(page_, ResultPage)
        return ResultPage(
            records=page_.records[:-1],
            page=page_.page,
            page_size=page_.page_size,
            total_pages=page_.total_pages,
            total_records=page_.total_records,
            partial=False,
        )


class VaultRig(Rig):
    def __init__(self, root: Path, *, capture: bool = True, short: bool = False) -> None:
        super().__init__()
        if short:
            self.adapter = ShortAdapter()
        self.blobs = FilesystemBlobStore(root)
        self.capturer = Capturer(
            self.blobs,
            {"a": self.adapter},
            {},
            {"a": CapturePolicy(capture=capture, retention=RETENTION)},
            {"a": POLICY},
            clock=self.clock.wall,
            rand=lambda: 0.5,
        )
        self.runner = Runner(
            self.store,
            {"a": self.adapter},
            {"a": POLICY},
            EventHub(),
            clock=self.clock.wall,
            mono=self.clock.monotonic,
            rand=lambda: 0.5,
            capturer=self.capturer,
        )

    async def job(self) -> Job:
        job = await self.store.get("job_1")
        assert job is not None
        return job


@pytest.fixture
async def rig(tmp_path: Path) -> VaultRig:
    rig = VaultRig(tmp_path / "vault")
    await rig.blobs.open()
    return rig


async def test_a_paged_result_is_captured_with_its_last_records_in_one_write(
    rig: VaultRig,
) -> None:
    await rig.add(running(), done())
    rig.adapter.available = 30
    await rig.poll()  # running: 30 records so far, as events
    rig.adapter.available = 250
    job = await rig.poll()  # completed: 220 more arrive with it

    assert job.state is JobState.SUCCEEDED
    copy = job.vault.copy
    assert copy is not None
    assert copy.total_records == 250
    assert not job.vault.pending
    assert job.next_poll_at == copy.expires_at == rig.clock.now + RETENTION
    records = await rig.records()
    delivered = [r for event in records for r in data(event)["records"]]
    assert delivered == [{"n": n} for n in range(250)]
    assert all(data(event)["count"] <= 100 for event in records)
    # The success and the tail of records were saved together: the tail is numbered after it.
    events = await rig.store.events_after(0)
    success = next(e for e in events if e.kind == "state" and e.state is JobState.SUCCEEDED)
    tail = [e for e in records if e.id > success.id]
    assert sum(data(e)["count"] for e in tail) == 220
    assert copy.key is not None
    stored = rig.blobs.path(copy.key).read_bytes()
    assert hashlib.sha256(stored).hexdigest() == copy.sha256
    assert stored.count(b"\n") == 250


async def test_a_failed_capture_is_retried_after_the_providers_backoff(rig: VaultRig) -> None:
    await rig.add(done())
    rig.adapter.available = 12
    rig.adapter.failing_results = True
    job = await rig.poll()
    assert job.state is JobState.SUCCEEDED
    assert job.vault.pending
    assert job.vault.attempts == 1
    assert job.vault.error is not None
    assert job.vault.error.code == "upstream_unavailable"
    assert job.public()["result"]["error"]["code"] == "upstream_unavailable"
    assert job.public()["result"]["capturing"] is True
    backoff = error_delay(POLICY, failures=1, rand=0.5)
    assert job.next_poll_at == rig.clock.now + timedelta(seconds=backoff)

    rig.adapter.failing_results = False
    job = await rig.poll()  # at the retry time: captured, error cleared
    assert job.vault.copy is not None
    assert job.vault.copy.total_records == 12
    assert job.vault.error is None
    assert job.state is JobState.SUCCEEDED


async def test_captures_give_up_after_the_last_attempt(rig: VaultRig) -> None:
    await rig.add(done())
    rig.adapter.available = 5
    rig.adapter.failing_results = True
    job = await rig.poll()
    for _ in range(CAPTURE_ATTEMPTS - 1):
        job = await rig.poll()
    assert job.vault.attempts == CAPTURE_ATTEMPTS
    assert not job.vault.pending
    assert job.vault.copy is None
    # The provider still has it: the job stays succeeded, read from upstream, and is not due.
    assert job.state is JobState.SUCCEEDED
    assert job.public()["result"]["source"] == "provider"
    assert job.next_poll_at is None


async def test_a_short_count_is_a_failed_capture(tmp_path: Path) -> None:
    rig = VaultRig(tmp_path / "vault", short=True)
    await rig.blobs.open()
    await rig.add(done())
    rig.adapter.available = 40
    job = await rig.poll()
    assert job.vault.copy is None
    assert job.vault.error is not None
    assert job.vault.error.code == "record_count_mismatch"
    assert "40" in job.vault.error.message
    assert list((tmp_path / "vault").rglob("*.jsonl")) == []


async def test_retention_deletes_the_copy_and_the_job_reads_upstream_again(
    rig: VaultRig,
) -> None:
    await rig.add(done())
    rig.adapter.available = 3
    job = await rig.poll()
    copy = job.vault.copy
    assert copy is not None
    assert copy.key is not None
    assert copy.index_key is not None
    files = [rig.blobs.path(copy.key), rig.blobs.path(copy.index_key)]
    assert all(f.exists() for f in files)

    job = await rig.poll()  # the clock moves to expires_at
    assert job.vault.copy is None
    assert job.vault.retired
    assert not any(f.exists() for f in files)
    assert job.state is JobState.SUCCEEDED
    assert job.public()["result"]["source"] == "provider"
    assert job.next_poll_at is None


async def test_capture_off_still_delivers_the_last_records_and_keeps_nothing(
    tmp_path: Path,
) -> None:
    rig = VaultRig(tmp_path / "vault", capture=False)
    await rig.blobs.open()
    await rig.add(running(), done())
    rig.adapter.available = 20
    await rig.poll()
    rig.adapter.available = 45
    job = await rig.poll()
    delivered = [r for event in await rig.records() for r in data(event)["records"]]
    assert delivered == [{"n": n} for n in range(45)]
    assert job.vault.copy is None
    assert not job.vault.pending
    assert [p for p in (tmp_path / "vault").rglob("*") if p.is_file()] == []
