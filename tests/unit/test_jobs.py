"""The canonical job record: folding reports in (apply_report), persistence and the public shape."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest

from adapters.base import (
    NO_PROGRESS,
    JobError,
    Progress,
    ResultKind,
    ResultLocator,
    StatusReport,
    Timestamps,
)
from gateway.jobs import (
    ANOMALIES_KEPT,
    Job,
    anomaly_key,
    apply_report,
    job_events,
    new_id,
    note_anomaly,
    transition,
)
from gateway.states import Action, Anomaly, IllegalTransition, JobState, Refused

T0 = datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC)
Q, R, S, F, C, E = (
    JobState.QUEUED,
    JobState.RUNNING,
    JobState.SUCCEEDED,
    JobState.FAILED,
    JobState.CANCELED,
    JobState.EXPIRED,
)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def make_job(state: JobState = Q, **changes: object) -> Job:
    job = Job(
        id="job_01TEST",
        provider="pulse",
        upstream_id="up-1",
        state=state,
        created_at=T0,
        updated_at=T0,
        deadline_at=at(86400),
        next_poll_at=at(5),
    )
    return replace(job, **changes)  # type: ignore[arg-type]


def report(
    state: JobState | None,
    native: str = "native",
    **changes: object,
) -> StatusReport:
    return replace(StatusReport("up-1", state, native), **changes)  # type: ignore[arg-type]


PAGED = ResultLocator(ResultKind.PAGED, partial=True, total_records=10, meta={"page_size": 5})


# --------------------------------------------------------------------------------------------------
# apply_report: states and timestamps


def test_queued_to_running_sets_started_at_and_bumps() -> None:
    job = make_job()
    applied = apply_report(job, report(R, "processing"), at(10))
    new = applied.job
    assert applied.state_changed
    assert applied.refused is None
    assert new.state is R
    assert new.native_status == "processing"
    assert new.started_at == at(10)
    assert new.finished_at is None
    assert new.updated_at == at(10)
    assert new.version == job.version + 1
    assert new.polls == 1
    # Identity and bookkeeping the fold must not touch.
    assert (new.id, new.created_at, new.deadline_at, new.next_poll_at) == (
        job.id,
        job.created_at,
        job.deadline_at,
        job.next_poll_at,
    )


def test_started_at_prefers_the_upstream_timestamp() -> None:
    applied = apply_report(make_job(), report(R, times=Timestamps(started_at=at(3))), at(10))
    assert applied.job.started_at == at(3)


def test_started_at_is_kept_once_set() -> None:
    job = make_job(R, started_at=at(1))
    applied = apply_report(job, report(S, times=Timestamps(started_at=at(7))), at(10))
    assert applied.job.started_at == at(1)


def test_queued_report_leaves_started_at_unset() -> None:
    applied = apply_report(make_job(), report(Q, "pending"), at(10))
    assert applied.job.started_at is None
    assert not applied.state_changed


@pytest.mark.parametrize("final", [S, F, C])
def test_finishing_sets_finished_at(final: JobState) -> None:
    job = make_job(R, started_at=at(1))
    applied = apply_report(job, report(final), at(20))
    assert applied.state_changed
    assert applied.job.state is final
    assert applied.job.finished_at == at(20)
    assert applied.job.finished


def test_finished_at_is_not_moved_by_later_reports() -> None:
    job = make_job(S, started_at=at(1), finished_at=at(20))
    applied = apply_report(job, report(S), at(99))
    assert not applied.state_changed
    assert applied.job.finished_at == at(20)


def test_upstream_finished_at_is_recorded_and_kept() -> None:
    job = make_job(R, started_at=at(1))
    first = apply_report(job, report(S, times=Timestamps(finished_at=at(18))), at(20)).job
    assert first.upstream_finished_at == at(18)
    later = apply_report(first, report(S), at(30)).job
    assert later.upstream_finished_at == at(18)


def test_expiry_of_a_succeeded_job_is_applied() -> None:
    job = make_job(S, started_at=at(1), finished_at=at(20))
    applied = apply_report(job, report(E, "expired"), at(50))
    assert applied.job.state is E
    assert applied.state_changed


@pytest.mark.parametrize("current", [Q, R])
def test_upstream_expiry_of_a_job_never_seen_finished_ends_it(current: JobState) -> None:
    # The completion fell into an outage; the next poll already reads "expired".
    job = make_job(current, started_at=at(1) if current is R else None, eta=at(99))
    applied = apply_report(job, report(E, "expired"), at(500))
    new = applied.job
    assert applied.refused is None
    assert applied.state_changed
    assert (new.state, new.native_status, new.finished_at) == (E, "expired", at(500))
    assert new.finished
    assert (new.next_poll_at, new.eta, new.result) == (None, None, None)
    assert [event.kind for event in job_events(job, new)] == ["state"]


# --------------------------------------------------------------------------------------------------
# apply_report: progress, results, errors


def test_progress_change_is_applied_and_flagged() -> None:
    job = make_job(R, started_at=at(1), progress=Progress(fraction=0.2))
    applied = apply_report(job, report(R, progress=Progress(fraction=0.6, step="b")), at(10))
    assert applied.progress_changed
    assert not applied.state_changed
    assert applied.job.progress == Progress(fraction=0.6, step="b")


def test_same_progress_is_not_a_change() -> None:
    job = make_job(R, started_at=at(1), progress=Progress(fraction=0.2))
    applied = apply_report(job, report(R, progress=Progress(fraction=0.2)), at(10))
    assert not applied.progress_changed
    assert not applied.state_changed


def test_result_locator_is_kept_when_a_later_report_has_none() -> None:
    job = make_job(R, started_at=at(1))
    with_result = apply_report(job, report(R, result=PAGED), at(10)).job
    assert with_result.result == PAGED
    later = apply_report(with_result, report(S), at(20)).job
    assert later.result == PAGED
    final = ResultLocator(ResultKind.PAGED, total_records=12)
    replaced = apply_report(later, report(S, result=final), at(30)).job
    assert replaced.result == final


def test_error_is_recorded() -> None:
    error = JobError("out_of_memory", "the worker ran out of memory")
    job = make_job(R, started_at=at(1))
    applied = apply_report(job, report(F, "failed", error=error), at(10))
    assert applied.job.state is F
    assert applied.job.error == error
    assert applied.job.finished_at == at(10)


def test_error_is_kept_when_a_later_report_carries_none() -> None:
    error = JobError("boom", "it broke")
    job = make_job(F, started_at=at(1), finished_at=at(10), error=error)
    applied = apply_report(job, report(F, "failed"), at(20))
    assert applied.job.error == error


# --------------------------------------------------------------------------------------------------
# apply_report: refused observations


@pytest.mark.parametrize(
    ("current", "observed", "anomaly"),
    [
        (R, Q, Anomaly.BACKWARDS),
        (R, None, Anomaly.UNKNOWN_STATUS),
        (Q, None, Anomaly.UNKNOWN_STATUS),
        (S, R, Anomaly.BACKWARDS),  # no continue in effect
        (S, Q, Anomaly.BACKWARDS),
        (F, S, Anomaly.ILLEGAL),
        (C, E, Anomaly.ILLEGAL),
    ],
)
def test_refused_report_keeps_state_but_counts_the_poll(
    current: JobState, observed: JobState | None, anomaly: Anomaly
) -> None:
    progress = Progress(fraction=0.5)
    job = make_job(
        current,
        started_at=at(1),
        finished_at=at(2) if current in (S, F, C) else None,
        progress=progress,
        native_status="before",
        polls=4,
        unchanged_polls=2,
        failures=3,
        not_found=1,
    )
    bad = report(
        observed,
        "weird-status",
        progress=Progress(fraction=0.9),
        result=PAGED,
        error=JobError("x", "y"),
    )
    applied = apply_report(job, bad, at(10))
    new = applied.job
    assert applied.refused is not None
    assert applied.refused.anomaly is anomaly
    assert applied.refused.current is current
    assert applied.refused.native_status == "weird-status"
    assert not applied.state_changed
    assert not applied.progress_changed
    assert new.state is current
    assert new.native_status == "weird-status"  # the anomaly is visible on the job
    assert new.polls == 5
    assert new.unchanged_polls == 3
    assert new.version == job.version + 1
    assert new.updated_at == at(10)
    # Nothing else of the refused report is taken.
    assert new.progress == progress
    assert new.result is None
    assert new.error is None
    assert new.finished_at == job.finished_at
    # It was still a successful call: the fault counters reset.
    assert (new.failures, new.not_found) == (0, 0)


def test_refusals_count_reports_refused_in_a_row_and_reset_when_one_applies() -> None:
    job = make_job(R, started_at=at(1))
    steps: list[tuple[StatusReport, int]] = [
        (report(None, "reticulating"), 1),
        (report(None, "reticulating"), 2),
        (report(Q, "pending"), 3),  # another kind of refusal still extends the run
        (report(R, "processing"), 0),
        (report(None, "reticulating"), 1),
        (report(E, "expired"), 0),
    ]
    for index, (item, expected) in enumerate(steps, start=1):
        job = apply_report(job, item, at(index)).job
        assert job.refusals == expected, index


def test_apply_report_does_not_mark_a_refusal_as_logged() -> None:
    # Only the runner, which logs, remembers; an adoption folds a report in without logging it.
    applied = apply_report(make_job(R), report(None, "reticulating"), at(1))
    assert applied.refused is not None
    assert applied.job.anomalies == ()


def test_an_anomaly_is_new_once_per_kind_and_native_status() -> None:
    job = make_job(R)
    unknown = Refused(Anomaly.UNKNOWN_STATUS, R, None, "reticulating")
    backwards = Refused(Anomaly.BACKWARDS, R, Q, "pending")
    job, first = note_anomaly(job, unknown)
    assert first
    assert job.anomalies == ("unknown_status:reticulating",)
    again, repeat = note_anomaly(job, unknown)
    assert not repeat
    assert again is job
    job, other = note_anomaly(job, backwards)
    assert other
    assert job.anomalies == ("unknown_status:reticulating", "backwards:pending")
    # The memory is part of the record, so a restarted process or another replica reads it.
    back = Job.from_record(orjson.loads(orjson.dumps(job.to_record())))
    assert not note_anomaly(back, unknown)[1]


def test_anomaly_memory_is_bounded_per_job() -> None:
    job = make_job(R)
    for index in range(ANOMALIES_KEPT + 3):
        job, first = note_anomaly(job, Refused(Anomaly.UNKNOWN_STATUS, R, None, f"s{index}"))
        assert first
    assert len(job.anomalies) == ANOMALIES_KEPT
    assert job.anomalies[-1] == "unknown_status:s10"
    # The oldest are forgotten first (and would be logged again if they came back).
    assert note_anomaly(job, Refused(Anomaly.UNKNOWN_STATUS, R, None, "s0"))[1]
    assert not note_anomaly(job, Refused(Anomaly.UNKNOWN_STATUS, R, None, "s10"))[1]
    # A provider's status of any length costs a bounded key.
    long = Refused(Anomaly.UNKNOWN_STATUS, R, None, "x" * 10_000)
    assert len(anomaly_key(long)) < 100


# --------------------------------------------------------------------------------------------------
# apply_report: continue


def test_continue_allows_succeeded_to_running_and_clears_finished_at() -> None:
    job = make_job(S, started_at=at(1), finished_at=at(20), action=Action.CONTINUE)
    applied = apply_report(job, report(R, "enriching", progress=Progress(0.1)), at(30))
    new = applied.job
    assert applied.refused is None
    assert applied.state_changed
    assert new.state is R
    assert new.finished_at is None
    assert not new.finished
    assert new.started_at == at(1)
    assert new.action is None  # used up once the job is seen running


def test_continue_opens_the_exit_for_one_report_only() -> None:
    job = make_job(S, started_at=at(1), finished_at=at(20), action=Action.CONTINUE)
    still_done = apply_report(job, report(S, "completed"), at(30))
    # The continue did not restart the job upstream: the exit closes again and nothing moves.
    assert still_done.job.state is S
    assert still_done.job.action is None
    assert still_done.job.finished_at == at(20)
    refused = apply_report(still_done.job, report(R, "enriching"), at(40))
    assert refused.refused is not None
    assert refused.job.state is S
    restarted = apply_report(job, report(R, "enriching"), at(40))
    assert restarted.job.state is R
    assert restarted.job.action is None


def test_continued_job_finishes_again_with_a_new_finished_at() -> None:
    job = make_job(S, started_at=at(1), finished_at=at(20), action=Action.CONTINUE)
    running = apply_report(job, report(R), at(30)).job
    done = apply_report(running, report(S), at(40)).job
    assert done.state is S
    assert done.finished_at == at(40)


# --------------------------------------------------------------------------------------------------
# apply_report: unchanged_polls


def test_unchanged_polls_count_and_reset() -> None:
    job = make_job()
    steps: list[tuple[StatusReport, int]] = [
        (report(Q, "pending"), 1),
        (report(Q, "pending"), 2),
        (report(R, "running"), 0),  # state change
        (report(R, "running"), 1),
        (report(R, "running", progress=Progress(fraction=0.3)), 0),  # progress change
        (report(R, "running", progress=Progress(fraction=0.3)), 1),
        (report(None, "huh", progress=Progress(fraction=0.9)), 2),  # refused: no change
        (report(Q, "pending"), 3),  # backwards: refused
        (report(R, "running", progress=Progress(fraction=0.3)), 4),
        (report(S, "done", progress=Progress(fraction=1.0)), 0),
    ]
    for index, (item, expected) in enumerate(steps, start=1):
        job = apply_report(job, item, at(index)).job
        assert job.unchanged_polls == expected, index
        assert job.polls == index


def test_success_resets_fault_counters() -> None:
    job = make_job(R, started_at=at(1), failures=4, not_found=2)
    new = apply_report(job, report(R), at(10)).job
    assert (new.failures, new.not_found) == (0, 0)


def test_apply_report_is_pure() -> None:
    job = make_job(R, started_at=at(1))
    snapshot = job.to_record()
    apply_report(job, report(S, result=PAGED), at(10))
    assert job.to_record() == snapshot


# --------------------------------------------------------------------------------------------------
# Persistence and the public shape


def full_job() -> Job:
    return Job(
        id="job_01JDFULL",
        provider="catchall",
        upstream_id="abc-123",
        state=JobState.SUCCEEDED,
        created_at=at(0),
        updated_at=at(100.123456),
        deadline_at=at(86400),
        tenant="acme",
        native_status="completed",
        progress=Progress(fraction=1.0, step="enriching", step_index=5, step_count=5),
        eta=at(90),
        result=ResultLocator(
            ResultKind.POINTER,
            partial=True,
            inline={"a": [1, 2, None]},
            url="https://files.example.com/r.jsonl",
            needs_provider_key=True,
            total_records=12,
            meta={"format": "jsonl", "n": 3},
        ),
        error=JobError("late", "finished after the soft limit"),
        started_at=at(1.5),
        finished_at=at(100),
        upstream_finished_at=at(99),
        next_poll_at=at(200),
        polls=17,
        unchanged_polls=3,
        failures=2,
        not_found=1,
        action=Action.CONTINUE,
        rerun_of="job_01JDOLD",
        labels={"team": "search", "env": "prod"},
        request={"query": "x", "limit": 10, "nested": {"k": [1, 2]}},
        callback_url="https://hooks.example.com/cb",
        anomalies=("unknown_status:reticulating", "backwards:pending"),
        refusals=2,
        version=42,
    )


def test_round_trip_of_a_fully_populated_job() -> None:
    job = full_job()
    assert Job.from_record(job.to_record()) == job
    # Through JSON bytes, as every store keeps it.
    assert Job.from_record(orjson.loads(orjson.dumps(job.to_record()))) == job


def test_round_trip_of_a_minimal_job() -> None:
    job = make_job(next_poll_at=None)
    assert Job.from_record(orjson.loads(orjson.dumps(job.to_record()))) == job


def test_record_times_are_utc_z_strings() -> None:
    plus_two = timezone(timedelta(hours=2))
    job = make_job(created_at=datetime(2026, 11, 22, 12, 0, tzinfo=plus_two))
    record = job.to_record()
    assert record["created_at"] == "2026-11-22T10:00:00Z"
    back = Job.from_record(record)
    assert back.created_at == job.created_at
    assert back.created_at.utcoffset() == timedelta(0)


def test_record_covers_every_field() -> None:
    record = full_job().to_record()
    assert set(record) == set(Job.__dataclass_fields__)


def test_from_record_rejects_a_missing_timestamp() -> None:
    record = full_job().to_record()
    record["created_at"] = None
    with pytest.raises(ValueError, match="missing timestamp"):
        Job.from_record(record)


def test_public_shape() -> None:
    public = full_job().public()
    assert set(public) == {
        "id",
        "provider",
        "upstream_id",
        "state",
        "native_status",
        "progress",
        "eta",
        "result",
        "error",
        "created_at",
        "updated_at",
        "started_at",
        "finished_at",
        "next_poll_at",
        "cadence",
        "polls",
        "rerun_of",
        "labels",
        "version",
    }
    assert public["id"] == "job_01JDFULL"
    assert public["state"] == "succeeded"
    assert public["native_status"] == "completed"
    assert public["progress"] == {
        "fraction": 1.0,
        "step": "enriching",
        "step_index": 5,
        "step_count": 5,
    }
    assert public["eta"] == "2026-11-22T10:01:30Z"
    assert public["updated_at"] == "2026-11-22T10:01:40.123456Z"
    assert public["result"] == {
        "available": True,
        "partial": True,
        "kind": "pointer",
        "total_records": 12,
        # No copy in the vault: the provider serves it.
        "source": "provider",
        "stored": False,
        "capturing": False,
        "size": None,
        "sha256": None,
        "expires_at": None,
        "error": None,
    }
    assert public["error"] == {"code": "late", "message": "finished after the soft limit"}
    assert public["polls"] == 17
    assert public["rerun_of"] == "job_01JDOLD"
    assert public["labels"] == {"team": "search", "env": "prod"}
    assert public["version"] == 42
    # JSON-serialisable as is.
    assert orjson.loads(orjson.dumps(public)) == public


def test_public_never_exposes_internals() -> None:
    public = full_job().public()
    for secret in (
        "request",
        "callback_url",
        "tenant",
        "deadline_at",
        "failures",
        "action",
        "anomalies",
        "refusals",
    ):
        assert secret not in public
    # The result's location (a presigned or proxy URL) is served by the result endpoint only.
    assert "files.example.com" not in orjson.dumps(public).decode()


def test_public_of_a_fresh_job() -> None:
    public = make_job().public()
    assert public["result"] == {
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
    assert public["progress"] == {
        "fraction": None,
        "step": None,
        "step_index": None,
        "step_count": None,
    }
    assert public["error"] is None
    assert public["eta"] is None
    assert public["started_at"] is None
    assert public["next_poll_at"] == "2026-11-22T10:00:05Z"
    assert make_job().progress == NO_PROGRESS


def test_typed_changes_make_a_new_version_and_never_touch_the_state() -> None:
    job = make_job(R, failures=2, not_found=1)
    later = job.rescheduled(at(3), at(60), failures=3)
    assert (later.version, later.updated_at, later.next_poll_at) == (2, at(3), at(60))
    assert (later.failures, later.not_found, later.state) == (3, 1, R)
    due = job.due_now(at(4))
    assert (due.version, due.next_poll_at, due.state) == (2, at(4), R)
    continued = make_job(S, finished_at=at(2), next_poll_at=None).continuing(at(5))
    assert (continued.action, continued.next_poll_at, continued.state) == (
        Action.CONTINUE,
        at(5),
        S,
    )
    stopped = continued.stopped(at(6))
    assert (stopped.action, stopped.next_poll_at, stopped.version) == (None, None, 3)
    assert job.version == 1


@pytest.mark.parametrize("final", [S, F, C])
def test_transition_to_a_finish_stamps_it_and_stops_polling(final: JobState) -> None:
    job = make_job(R, started_at=at(1), eta=at(50))
    done = transition(job, final, at(9), error=JobError("x", "y") if final is F else None)
    assert (done.state, done.finished_at, done.next_poll_at, done.eta) == (final, at(9), None, None)
    assert (done.version, done.updated_at, done.started_at) == (2, at(9), at(1))


def test_an_illegal_transition_raises_and_changes_nothing() -> None:
    job = make_job(F, finished_at=at(2))
    with pytest.raises(IllegalTransition):
        transition(job, R, at(3))
    with pytest.raises(IllegalTransition):
        transition(make_job(S), R, at(3))  # succeeded -> running needs the continue action
    assert (job.state, job.version) == (F, 1)


def test_transition_to_the_same_state_is_no_change() -> None:
    job = make_job(R)
    assert transition(job, R, at(3)) is job


def test_continue_transition_reopens_the_job() -> None:
    job = make_job(S, finished_at=at(2), next_poll_at=None, action=Action.CONTINUE)
    running = transition(job, R, at(3), action=Action.CONTINUE)
    assert (running.state, running.finished_at, running.action) == (R, None, None)


def test_job_events_come_from_the_change() -> None:
    job = make_job()
    [created] = job_events(None, job)
    assert (created.kind, created.data["state"]) == ("created", "queued")
    moved = transition(job, R, at(1))
    [state] = job_events(job, moved)
    assert (state.kind, state.data["from"], state.data["state"]) == ("state", "queued", "running")
    stepped = replace(moved, progress=Progress(fraction=0.5), version=3)
    assert [e.kind for e in job_events(moved, stepped)] == ["progress"]
    assert job_events(stepped, stepped.due_now(at(2))) == []


def test_new_ids_are_prefixed_and_unique() -> None:
    ids = [new_id() for _ in range(200)]
    assert len(set(ids)) == 200
    assert all(i.startswith("job_") and len(i) == 30 for i in ids)
    assert new_id("run_").startswith("run_")
