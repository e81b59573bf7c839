"""The record the stores keep: the fast encoder and decoder (``Job.to_json``, ``Job.from_json``)
and the fast copies (``Job.scheduled``, ``Job.leased``) must agree with the plain ones exactly."""

from __future__ import annotations

from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from adapters.base import JobError, ResultKind
from gateway.jobs import Job
from gateway.states import Action, JobState
from gateway.vault import EMPTY, StoredCopy, Vault
from tests.unit.store.factories import LEASE, T0, full_job, make_job


def jobs() -> list[Job]:
    copy = StoredCopy(
        kind=ResultKind.INLINE,
        size=12,
        sha256="0" * 64,
        stored_at=T0,
        expires_at=T0 + timedelta(days=1),
        key="k/1",
        meta={"a": 1},
    )
    return [
        make_job(),
        full_job(),
        make_job(state=JobState.SUCCEEDED, finished_at=T0, next_poll_at=None),
        make_job(action=Action.CONTINUE, anomalies=("backwards:queued",), refusals=2),
        make_job(vault=Vault(copy=copy, generation=2, error=JobError("vault_failed", "x"))),
        # Times not in UTC, and one without microseconds: written as UTC, as _iso writes them.
        make_job(
            created_at=datetime(2026, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=2))),
            updated_at=datetime(2026, 1, 1, 10, 0, 0, 5, tzinfo=UTC),
            next_poll_at=datetime(2026, 1, 1, 3, 0, 0, 1, tzinfo=timezone(timedelta(hours=-7))),
        ),
    ]


@pytest.mark.parametrize("job", jobs())
def test_to_json_is_the_record(job: Job) -> None:
    assert orjson.loads(job.to_json()) == job.to_record()


@pytest.mark.parametrize("job", jobs())
def test_from_json_reads_what_from_record_reads(job: Job) -> None:
    text = orjson.dumps(job.to_record())
    assert Job.from_json(text) == Job.from_record(orjson.loads(text))
    assert Job.from_json(job.to_json()) == Job.from_record(job.to_record())


def test_from_json_keeps_from_records_defaults_and_refusals() -> None:
    """An old record lacks the newer keys: each gets from_record's default."""
    sparse: dict[str, Any] = {
        "id": "job_1",
        "provider": "pulse",
        "upstream_id": "u",
        "state": "running",
        "created_at": "2026-11-22T10:00:00Z",
        "updated_at": "2026-11-22T10:00:00Z",
        "deadline_at": "2026-11-23T10:00:00Z",
    }
    text = orjson.dumps(sparse)
    assert Job.from_json(text) == Job.from_record(sparse)
    assert Job.from_json(text).vault == EMPTY
    for missing in ("id", "created_at"):
        broken = {k: v for k, v in sparse.items() if k != missing}
        with pytest.raises((KeyError, ValueError)):
            Job.from_record(broken)
        with pytest.raises((KeyError, ValueError)):
            Job.from_json(orjson.dumps(broken))


@pytest.mark.parametrize("job", jobs())
def test_the_fast_copies_are_replace(job: Job) -> None:
    at = T0 + timedelta(seconds=7)
    assert job.scheduled(at, T0) == replace(job, next_poll_at=at, eta=T0)
    assert job.leased(T0 + LEASE) == replace(job, next_poll_at=T0 + LEASE, version=job.version + 1)
    assert job.leased(T0 + LEASE, 9) == replace(job, next_poll_at=T0 + LEASE, version=9)


def test_every_field_is_copied() -> None:
    """The copy is generated from the fields: each one, changed alone, survives a copy."""
    base = full_job()
    for item in fields(Job):
        if item.name in ("next_poll_at", "eta", "version"):
            continue
        changed = replace(base, **{item.name: getattr(make_job(), item.name)})
        assert changed.scheduled(T0, None) == replace(changed, next_poll_at=T0, eta=None)
