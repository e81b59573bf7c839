"""The vault's record and its pure rules: what a report owes the vault, when a finished job is next
due for the vault's work, when its result is gone, and what the job says about its result."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import datetime, timedelta

import orjson
import pytest

from adapters.base import JobError, ResultKind, ResultLocator, StatusReport
from gateway.jobs import Job, apply_report
from gateway.policy import PollPolicy
from gateway.states import Action, JobState
from gateway.vault import (
    CAPTURE_ATTEMPTS,
    EMPTY,
    WATCH_MAX,
    CapturePolicy,
    StoredCopy,
    Vault,
    envelope,
    gone,
    next_due,
    settle,
    watch_delay,
)
from tests.unit.store.factories import T0, full_job, make_job

R, S, F, E = JobState.RUNNING, JobState.SUCCEEDED, JobState.FAILED, JobState.EXPIRED
NOW = T0 + timedelta(minutes=5)
LATER = NOW + timedelta(hours=1)
RETENTION = timedelta(days=2)
THRESHOLD = 1024
CAPTURING = CapturePolicy(retention=RETENTION, inline_threshold=THRESHOLD)
NO_CAPTURE = CapturePolicy(capture=False, retention=RETENTION, inline_threshold=THRESHOLD)
POLL = PollPolicy(min_interval=5.0, max_interval=60.0)

SMALL = {"markdown": "# Title\n\nünïcode ✓", "pages": [1, 2, 3]}
LARGE = {"markdown": "x" * (THRESHOLD * 3)}
PRESIGNED = ResultLocator(ResultKind.POINTER, url="https://bucket.example.test/r?sig=abc")
PROXIED = ResultLocator(
    ResultKind.POINTER, url="https://api.example.test/jobs/1/result", needs_provider_key=True
)
PAGED = ResultLocator(ResultKind.PAGED, total_records=40, meta={"page_size": 10})


def inline(data: object, *, partial: bool = False) -> ResultLocator:
    return ResultLocator(ResultKind.INLINE, partial=partial, inline=data)


def fold(job: Job, state: JobState, result: ResultLocator | None = None, at: datetime = NOW) -> Job:
    """``job`` after one status report, as the runner folds it in (before the vault's rules)."""
    report = StatusReport(job.upstream_id, state, state.value, result=result)
    return apply_report(job, report, at).job


def blob_copy(**changes: object) -> StoredCopy:
    fields: dict[str, object] = {
        "kind": ResultKind.POINTER,
        "size": 123_456,
        "sha256": hashlib.sha256(b"the provider's bytes").hexdigest(),
        "stored_at": NOW,
        "expires_at": NOW + RETENTION,
        "key": "default/job_1/g1.bin",
        "content_type": "application/pdf",
    }
    fields.update(changes)
    return StoredCopy(**fields)  # type: ignore[arg-type]


def succeeded(vault: Vault = EMPTY, **changes: object) -> Job:
    """A finished, succeeded job holding ``vault``."""
    fields: dict[str, object] = {
        "state": S,
        "result": PROXIED,
        "started_at": T0,
        "finished_at": NOW,
        "vault": vault,
    }
    fields.update(changes)
    return make_job(**fields)


def roundtrip(record: object) -> object:
    """Through JSON, as every store keeps it."""
    return orjson.loads(orjson.dumps(record))


# --------------------------------------------------------------------------------------------------
# the record


def test_a_vault_with_a_copy_an_error_and_flags_survives_its_record() -> None:
    copy = blob_copy(
        kind=ResultKind.PAGED,
        total_records=40,
        index_key="default/job_1/g3.index",
        meta={"page_size": 10, "nested": {"a": [1, None, "x"]}},
    )
    vault = Vault(
        copy=copy,
        pending=True,
        generation=3,
        attempts=2,
        error=JobError("capture_timeout", "the capture did not finish"),
        upstream_gone=True,
    )
    back = Vault.from_record(roundtrip(vault.to_record()))  # type: ignore[arg-type]
    assert back == vault
    assert back.copy is not None
    assert back.copy.stored_at == NOW  # microseconds and the zone kept
    assert back.copy.blob_keys() == ("default/job_1/g1.bin", "default/job_1/g3.index")


def test_a_retired_vault_without_a_copy_survives_its_record() -> None:
    vault = Vault(generation=1, retired=True, upstream_gone=True)
    assert Vault.from_record(roundtrip(vault.to_record())) == vault  # type: ignore[arg-type]


def test_a_copy_without_retention_or_key_survives_its_record() -> None:
    copy = StoredCopy(
        kind=ResultKind.INLINE, size=10, sha256="0" * 64, stored_at=NOW, expires_at=None
    )
    vault = Vault(copy=copy, generation=1)
    back = Vault.from_record(roundtrip(vault.to_record()))  # type: ignore[arg-type]
    assert back == vault
    assert back.copy is not None
    assert back.copy.blob_keys() == ()


def test_the_vault_travels_in_the_job_record() -> None:
    vault = Vault(
        copy=blob_copy(),
        pending=True,
        generation=2,
        attempts=1,
        error=JobError("vault_unavailable", "disk full"),
        upstream_gone=True,
    )
    job = replace(full_job(), state=S, vault=vault)
    record = job.to_record()
    assert record["vault"] == vault.to_record()
    back = Job.from_record(roundtrip(record))  # type: ignore[arg-type]
    assert back.vault == vault
    assert back == job


def test_a_job_without_vault_work_records_none_and_reads_back_empty() -> None:
    job = make_job()
    record = job.to_record()
    assert record["vault"] is None
    assert Job.from_record(roundtrip(record)).vault == EMPTY  # type: ignore[arg-type]
    # Rows written before the vault existed have no "vault" at all.
    del record["vault"]
    assert Job.from_record(record).vault == Vault()


def test_any_vault_work_makes_the_record_carry_it() -> None:
    # Owed once and dropped again: nothing pending, but the generation must not be lost, or the
    # next capture would reuse (and overwrite) the blob names of an earlier one.
    job = make_job(vault=EMPTY.owe().dropped())
    record = job.to_record()
    assert record["vault"] is not None
    assert Job.from_record(roundtrip(record)).vault.generation == 1  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# settle: what a report owes


def test_a_small_inline_success_is_stored_at_once() -> None:
    before = make_job(state=R, started_at=T0)
    after = fold(before, S, inline(SMALL))
    settled = settle(before, after, CAPTURING, NOW, pages=False)
    body = envelope(SMALL)
    assert orjson.loads(body) == {"kind": "inline", "partial": False, "data": SMALL}
    copy = settled.vault.copy
    assert copy is not None
    assert copy.kind is ResultKind.INLINE
    assert copy.key is None  # kept in the job's own record, no blob
    assert copy.blob_keys() == ()
    assert copy.size == len(body)
    assert copy.sha256 == hashlib.sha256(body).hexdigest()
    assert copy.stored_at == NOW
    assert copy.expires_at == NOW + RETENTION
    assert settled.vault.generation == 1
    assert not settled.vault.pending
    # Nothing else about the job moves.
    assert replace(settled, vault=after.vault) == after
    assert settled.result == inline(SMALL)


def test_a_small_inline_copy_kept_forever_has_no_expiry() -> None:
    before = make_job(state=R)
    policy = replace(CAPTURING, retention=None)
    settled = settle(before, fold(before, S, inline(SMALL)), policy, NOW, pages=False)
    assert settled.vault.copy is not None
    assert settled.vault.copy.expires_at is None


def _inline_of_size(size: int) -> object:
    """Data whose envelope is exactly ``size`` bytes."""
    base = len(envelope({"t": ""}))
    return {"t": "x" * (size - base)}


def test_the_inline_threshold_is_the_largest_envelope_kept_in_the_record() -> None:
    before = make_job(state=R)
    at = _inline_of_size(THRESHOLD)
    over = _inline_of_size(THRESHOLD + 1)
    assert len(envelope(at)) == THRESHOLD
    kept = settle(before, fold(before, S, inline(at)), CAPTURING, NOW, pages=False)
    assert kept.vault.copy is not None
    assert not kept.vault.pending
    moved = settle(before, fold(before, S, inline(over)), CAPTURING, NOW, pages=False)
    assert moved.vault.copy is None
    assert moved.vault.pending


def test_a_large_inline_success_is_owed_a_capture() -> None:
    before = make_job(state=R)
    settled = settle(before, fold(before, S, inline(LARGE)), CAPTURING, NOW, pages=False)
    assert settled.vault == Vault(pending=True, generation=1)
    assert settled.result == inline(LARGE)  # the capture moves it out, not the rule


@pytest.mark.parametrize(
    ("locator", "redirect", "owed"),
    [
        (PROXIED, False, True),
        # A pointer that needs the provider's key cannot be handed to a client: always captured.
        (PROXIED, True, True),
        # A presigned pointer can be redirected to instead.
        (PRESIGNED, True, False),
        (PRESIGNED, False, True),
    ],
    ids=["key-no-redirect", "key-redirect", "presigned-redirect", "presigned-no-redirect"],
)
def test_pointers_are_owed_a_capture_unless_they_can_be_redirected_to(
    locator: ResultLocator, redirect: bool, owed: bool
) -> None:
    before = make_job(state=R)
    policy = replace(CAPTURING, redirect=redirect)
    settled = settle(before, fold(before, S, locator), policy, NOW, pages=False)
    assert settled.vault.pending is owed
    assert settled.vault.generation == (1 if owed else 0)
    assert settled.vault.copy is None


def test_a_paged_success_is_owed_a_capture() -> None:
    before = make_job(state=R)
    settled = settle(before, fold(before, S, PAGED), CAPTURING, NOW, pages=False)
    assert settled.vault == Vault(pending=True, generation=1)


@pytest.mark.parametrize(
    ("locator", "pages"),
    [
        (inline(SMALL), True),
        (inline(LARGE), True),
        (PROXIED, True),
        (PRESIGNED, True),
        (PAGED, False),
    ],
    ids=["small-inline", "large-inline", "proxied", "presigned", "paged-no-records"],
)
def test_capture_off_owes_nothing(locator: ResultLocator, pages: bool) -> None:
    before = make_job(state=R)
    settled = settle(before, fold(before, S, locator), NO_CAPTURE, NOW, pages=pages)
    assert settled.vault.copy is None
    assert not settled.vault.pending
    assert settled.vault.generation == 0


def test_capture_off_still_reads_the_pages_of_a_provider_with_records_events() -> None:
    # The last records arrive only with completion: the pages are read for the events.
    before = make_job(state=R)
    settled = settle(before, fold(before, S, PAGED), NO_CAPTURE, NOW, pages=True)
    assert settled.vault.pending
    assert settled.vault.copy is None


def test_a_partial_result_owes_nothing() -> None:
    running = make_job(state=R)
    partial = replace(PAGED, partial=True, total_records=12)
    still_running = fold(running, R, partial)
    assert settle(running, still_running, CAPTURING, NOW, pages=True) == still_running
    # Even a success whose result is still partial is no complete result to keep.
    done = fold(running, S, inline(SMALL, partial=True))
    settled = settle(running, done, CAPTURING, NOW, pages=True)
    assert settled.vault == EMPTY
    assert settled == done


def test_a_success_without_a_result_owes_nothing() -> None:
    before = make_job(state=R)
    after = fold(before, S)
    assert settle(before, after, CAPTURING, NOW, pages=True) == after


@pytest.mark.parametrize("result", [inline(SMALL), inline(LARGE), PROXIED, PAGED])
def test_a_repeated_report_of_the_same_result_changes_nothing(result: ResultLocator) -> None:
    first = make_job(state=R)
    done = settle(first, fold(first, S, result), CAPTURING, NOW, pages=True)
    assert done.vault.generation == 1
    again = fold(done, S, result, at=LATER)
    settled = settle(done, again, CAPTURING, LATER, pages=True)
    assert settled.vault == done.vault  # same generation, same copy stored at NOW, not LATER


def test_an_adoption_settles_a_finished_job_seen_for_the_first_time() -> None:
    # The service settles an adopted job against itself: the same object before and after.
    job = succeeded(result=PROXIED)
    settled = settle(job, job, CAPTURING, NOW, pages=False)
    assert settled.vault == Vault(pending=True, generation=1)


def test_a_continue_drops_the_capture_owed_but_keeps_the_copy() -> None:
    held = blob_copy()
    vault = Vault(copy=held, pending=True, generation=2, attempts=3)
    done = succeeded(vault, action=Action.CONTINUE)
    resumed = fold(done, R)
    assert resumed.state is R
    settled = settle(done, resumed, CAPTURING, NOW, pages=False)
    assert not settled.vault.pending
    assert settled.vault.copy == held  # still served while the job runs again
    assert settled.vault.generation == 2


def test_a_continue_without_a_capture_owed_leaves_the_vault_alone() -> None:
    done = succeeded(Vault(copy=blob_copy(), generation=1), action=Action.CONTINUE)
    resumed = fold(done, R)
    assert settle(done, resumed, CAPTURING, NOW, pages=False) == resumed


@pytest.mark.parametrize("result", [inline(LARGE), PROXIED, PAGED])
def test_a_success_after_a_continue_owes_a_new_capture_and_keeps_the_old_copy(
    result: ResultLocator,
) -> None:
    held = blob_copy()
    running = make_job(state=R, result=PROXIED, vault=Vault(copy=held, generation=1))
    settled = settle(running, fold(running, S, result, at=LATER), CAPTURING, LATER, pages=False)
    assert settled.vault.pending
    assert settled.vault.generation == 2  # new blob names: the copy served is never overwritten
    assert settled.vault.copy == held


def test_a_new_capture_clears_the_last_one_s_failure() -> None:
    failed = Vault(copy=blob_copy(), generation=1).owe().failed(JobError("x", "y"), final=True)
    running = make_job(state=R, vault=failed)
    settled = settle(running, fold(running, S, PROXIED), CAPTURING, NOW, pages=False)
    assert settled.vault.pending
    assert settled.vault.error is None
    assert settled.vault.attempts == 0


def test_a_retired_inline_copy_is_not_stored_again_by_a_watch_poll() -> None:
    # A small inline result, kept in the record, reaches the end of its retention: the capturer's
    # retire() removes the copy and the inline data from the record.
    first = make_job(state=R)
    done = settle(first, fold(first, S, inline(SMALL)), CAPTURING, NOW, pages=False)
    assert done.vault.copy is not None
    end = NOW + RETENTION
    retired = replace(done, result=inline(None), vault=done.vault.retire())
    # The provider can say "expired", so the job is watched with status polls; the next one
    # reports the same completed result it always did.
    watched = fold(retired, S, inline(SMALL), at=end + timedelta(minutes=1))
    settled = settle(retired, watched, CAPTURING, end + timedelta(minutes=1), pages=False)
    assert settled.vault.copy is None
    assert settled.vault.retired
    # Nor does the provider's repeat put the deleted body back into the record.
    assert settled.result is not None
    assert settled.result.inline is None


# --------------------------------------------------------------------------------------------------
# Vault changes


def test_a_failed_capture_is_retried_until_the_attempts_run_out() -> None:
    error = JobError("upstream_unavailable", "502 from the provider")
    vault = EMPTY.owe()
    for attempt in range(1, CAPTURE_ATTEMPTS):
        vault = vault.failed(error, final=False)
        assert vault.pending, attempt
        assert vault.attempts == attempt
        assert vault.error == error
    vault = vault.failed(error, final=False)
    assert not vault.pending
    assert vault.attempts == CAPTURE_ATTEMPTS
    assert vault.error == error  # kept after giving up: the job says why it has no copy
    assert vault.generation == 1


def test_a_final_failure_gives_up_at_once() -> None:
    vault = EMPTY.owe().failed(JobError("result_too_large", "over the cap"), final=True)
    assert not vault.pending
    assert vault.attempts == 1
    assert vault.error == JobError("result_too_large", "over the cap")


def test_the_provider_s_copy_once_gone_stays_gone() -> None:
    vault = EMPTY.owe().failed(JobError("result_expired", "410"), final=False, upstream_gone=True)
    assert vault.upstream_gone
    vault = vault.failed(JobError("timeout", "slow"), final=False)
    assert vault.upstream_gone
    vault = vault.stored(blob_copy())
    assert vault.upstream_gone
    assert vault.owe().dropped().upstream_gone
    assert EMPTY.mark_gone().upstream_gone


def test_a_stored_copy_clears_the_failure_and_the_capture_owed() -> None:
    vault = Vault(generation=1, retired=True).owe().failed(JobError("x", "y"), final=False)
    copy = blob_copy()
    stored = vault.stored(copy, upstream_gone=True)
    assert stored == Vault(copy=copy, generation=2, upstream_gone=True)


def test_retiring_forgets_the_copy_and_says_so() -> None:
    vault = Vault(copy=blob_copy(), generation=4).retire()
    assert vault == Vault(generation=4, retired=True)


def test_owing_a_capture_keeps_the_copy_and_bumps_the_generation() -> None:
    held = blob_copy()
    vault = Vault(copy=held, generation=1, attempts=5, error=JobError("x", "y")).owe()
    assert vault == Vault(copy=held, pending=True, generation=2)


# --------------------------------------------------------------------------------------------------
# next_due


def test_a_capture_owed_is_due_now_or_after_its_backoff() -> None:
    job = succeeded(Vault(copy=blob_copy(), pending=True, generation=2))
    assert next_due(job, POLL, NOW, can_expire=True) == NOW
    assert next_due(job, POLL, NOW, can_expire=False, retry_in=12.5) == NOW + timedelta(
        seconds=12.5
    )


def test_a_held_copy_is_due_at_the_end_of_its_retention() -> None:
    expires = NOW + timedelta(days=3)
    job = succeeded(Vault(copy=blob_copy(expires_at=expires), generation=1))
    assert next_due(job, POLL, LATER, can_expire=True) == expires


def test_a_copy_kept_forever_is_never_due() -> None:
    job = succeeded(Vault(copy=blob_copy(expires_at=None), generation=1))
    assert next_due(job, POLL, NOW, can_expire=True) is None


def test_a_job_without_a_copy_is_watched_for_the_provider_s_expiry() -> None:
    job = succeeded(EMPTY, unchanged_polls=0)
    assert next_due(job, POLL, NOW, can_expire=True) == NOW + timedelta(seconds=POLL.max_interval)
    later = replace(job, unchanged_polls=3)
    assert next_due(later, POLL, NOW, can_expire=True) == NOW + timedelta(
        seconds=8 * POLL.max_interval
    )
    assert next_due(job, POLL, NOW, can_expire=False) is None


def test_the_watch_interval_grows_to_its_cap() -> None:
    delays = [watch_delay(POLL, unchanged) for unchanged in range(12)]
    assert delays[0] == POLL.max_interval
    assert delays[1] == 2 * POLL.max_interval
    assert delays == sorted(delays)
    assert delays[-1] == WATCH_MAX
    assert WATCH_MAX in delays[:7]  # 60 s doubling passes an hour after 6 unchanged polls
    assert all(d <= WATCH_MAX for d in delays)
    assert watch_delay(POLL, 10**9) == WATCH_MAX


def test_a_job_whose_provider_copy_is_gone_is_not_watched() -> None:
    job = succeeded(Vault(upstream_gone=True))
    assert next_due(job, POLL, NOW, can_expire=True) is None


@pytest.mark.parametrize("state", [R, F, E])
def test_only_a_succeeded_job_has_vault_work(state: JobState) -> None:
    job = succeeded(Vault(copy=blob_copy(), pending=True, generation=1), state=state)
    assert next_due(job, POLL, NOW, can_expire=True, retry_in=3.0) is None


# --------------------------------------------------------------------------------------------------
# gone


def test_gone_when_neither_the_provider_nor_jobgate_holds_the_result() -> None:
    assert gone(succeeded(Vault(generation=1, upstream_gone=True, retired=True)))


@pytest.mark.parametrize(
    "job",
    [
        succeeded(Vault(generation=1)),
        succeeded(Vault(copy=blob_copy(), generation=1, upstream_gone=True)),
        succeeded(Vault(pending=True, generation=1, upstream_gone=True)),
        succeeded(Vault(upstream_gone=True), state=R),
        succeeded(Vault(upstream_gone=True), state=E),
        succeeded(Vault(upstream_gone=True), state=F),
    ],
    ids=["provider-has-it", "copy-held", "capture-owed", "running", "expired", "failed"],
)
def test_not_gone_while_a_copy_is_held_owed_or_upstream(job: Job) -> None:
    assert not gone(job)


# --------------------------------------------------------------------------------------------------
# what the job says about its result


def test_a_stored_copy_is_the_source_even_after_the_inline_moved_out() -> None:
    copy = StoredCopy(
        kind=ResultKind.INLINE,
        size=70_000,
        sha256=hashlib.sha256(b"the envelope").hexdigest(),
        stored_at=NOW,
        expires_at=NOW + RETENTION,
        key="default/job_1/g1.json",
    )
    # The capture moved the data to its blob: the record keeps only the locator.
    job = succeeded(Vault(copy=copy, generation=1), result=inline(None))
    assert job.public()["result"] == {
        "available": True,
        "partial": False,
        "kind": "inline",
        "total_records": None,
        "source": "jobgate",
        "stored": True,
        "capturing": False,
        "size": 70_000,
        "sha256": copy.sha256,
        "expires_at": "2026-11-24T10:05:00.123457Z",
        "error": None,
    }


def test_a_copy_stays_the_source_while_a_newer_capture_runs() -> None:
    copy = blob_copy(kind=ResultKind.PAGED, total_records=40, expires_at=None)
    job = succeeded(
        Vault(copy=copy, pending=True, generation=2, error=JobError("timeout", "slow")),
        result=replace(PAGED, partial=True, total_records=55),
    )
    result = job.public()["result"]
    assert result["source"] == "jobgate"
    assert result["capturing"] is True
    assert result["partial"] is False  # the copy is whole, whatever the locator says
    assert result["total_records"] == 40  # the copy's count, not the newer locator's
    assert result["kind"] == "paged"
    assert result["expires_at"] is None
    assert result["error"] == {"code": "timeout", "message": "slow"}


def test_an_expired_job_without_a_copy_has_no_result() -> None:
    job = succeeded(Vault(generation=1, upstream_gone=True, retired=True), state=E)
    result = job.public()["result"]
    assert result["available"] is False
    assert result["source"] is None
    assert result["stored"] is False
    assert result["size"] is None
    assert result["sha256"] is None
    assert result["expires_at"] is None


def test_a_succeeded_job_without_a_copy_is_served_by_the_provider() -> None:
    result = succeeded(EMPTY).public()["result"]
    assert result["available"] is True
    assert result["source"] == "provider"
    assert result["stored"] is False


def test_a_finished_job_s_due_time_is_not_a_poll() -> None:
    # A finished job's next_poll_at is the vault's (a capture, a retention's end)...
    done = succeeded(Vault(copy=blob_copy(), generation=1), next_poll_at=NOW + RETENTION)
    assert not done.polling
    assert done.public()["next_poll_at"] is None
    # ...unless a continue was asked for: then it is the poll that sees the job run again.
    continuing = done.continuing(LATER)
    assert continuing.polling
    assert continuing.public()["next_poll_at"] is not None
    assert make_job(state=R, next_poll_at=LATER).polling
