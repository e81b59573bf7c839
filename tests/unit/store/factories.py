"""Jobs with fixed times for the store suites: every store must give back exactly what it got."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from adapters.base import JSON, JobError, Progress, ResultKind, ResultLocator
from gateway.auth import ApiKey, KeyHasher, Scope, new_key_id, new_key_secret, public_prefix
from gateway.jobs import Job, new_id
from gateway.states import Action, JobState
from gateway.store.base import (
    ClaimedIdempotency,
    IdempotencyRecord,
    JobStore,
    NewDelivery,
    NewEvent,
)

# An odd microsecond, so a store that rounds times (to milliseconds, or through a float) fails.
T0 = datetime(2026, 11, 22, 10, 0, 0, 123457, tzinfo=UTC)
LEASE = timedelta(seconds=30)


def make_job(**changes: Any) -> Job:
    """A fresh queued job with fixed times; ``changes`` override any field."""
    fields: dict[str, Any] = {
        "id": new_id(),
        "provider": "pulse",
        "upstream_id": "up-" + new_id(""),
        "state": JobState.QUEUED,
        "created_at": T0,
        "updated_at": T0,
        "deadline_at": T0 + timedelta(days=1),
    }
    fields.update(changes)
    return Job(**fields)


def full_job() -> Job:
    """A job with every field set to something other than its default."""
    return make_job(
        provider="catchall",
        state=JobState.RUNNING,
        tenant="acme",
        native_status="processing",
        progress=Progress(fraction=0.4, step="fetching", step_index=3, step_count=5),
        eta=T0 + timedelta(minutes=10),
        result=ResultLocator(
            kind=ResultKind.POINTER,
            partial=True,
            inline={"preview": [1, 2, 3]},
            url="https://results.example.test/r/1",
            needs_provider_key=True,
            total_records=42,
            meta={"pages": 3, "nested": {"a": [1, None, "x"]}, "ratio": 0.25},
        ),
        error=JobError(code="E_PARTIAL", message="one source failed"),
        updated_at=T0 + timedelta(seconds=5),
        started_at=T0 + timedelta(seconds=1),
        finished_at=T0 + timedelta(seconds=4),
        upstream_finished_at=T0 + timedelta(seconds=3, microseconds=999999),
        next_poll_at=T0 + timedelta(seconds=20),
        polls=7,
        unchanged_polls=2,
        failures=1,
        not_found=1,
        action=Action.CONTINUE,
        rerun_of="job_01PREVIOUS",
        labels={"team": "search", "env": "prod", "dotted.key": "a b"},
        request={"query": "ünïcode ✓", "limit": 10, "flags": [True, False, None]},
        callback_url="https://hooks.example.test/cb",
        records_seen=12,
    )


HASHER = KeyHasher(b"store-tests-secret-of-32-bytes-or-more")


def make_key(plaintext: str | None = None, **changes: Any) -> ApiKey:
    """A stored key for a fresh plaintext (or ``plaintext``): its digest, never the key itself."""
    secret = plaintext or new_key_secret()
    fields: dict[str, Any] = {
        "id": new_key_id(),
        "tenant": "acme",
        "scopes": frozenset({Scope.READ, Scope.WRITE}),
        "digest": HASHER.digest(secret),
        "prefix": public_prefix(secret),
        "name": "ci deploys",
        "created_at": T0,
    }
    fields.update(changes)
    return ApiKey(**fields)


def state_event(state: JobState) -> NewEvent:
    return NewEvent("state", {"state": state.value})


async def create_all(store: JobStore, jobs: Sequence[Job]) -> None:
    for job in jobs:
        await store.create(job, [NewEvent("created", {})])


def new_delivery(event_id: int, url: str = "http://a.test/hook", **changes: Any) -> NewDelivery:
    fields: dict[str, Any] = {
        "event_id": event_id,
        "job_id": "job_1",
        "url": url,
        "kind": "terminal",
        "payload": '{"id":"job_1"}',
        "due_at": T0,
    }
    fields.update(changes)
    return NewDelivery(**fields)


async def claim_key(
    store: JobStore,
    key: str,
    fingerprint: str = "fp",
    now: datetime = T0,
    *,
    lease: timedelta = LEASE,
    token: str | None = None,
    command: Mapping[str, JSON] | None = None,
) -> IdempotencyRecord | ClaimedIdempotency:
    """Claim ``key`` as the service does: a fresh token and job id, a lease from ``now``."""
    return await store.claim_idempotency(
        key,
        fingerprint,
        now,
        lease_until=now + lease,
        job_id=f"job_for_{key}",
        token=token or new_id("tok_"),
        command=command,
    )
