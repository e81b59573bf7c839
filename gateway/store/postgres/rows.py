"""Values to statement parameters and rows back to values: the only place where the driver's
``Any`` meets the domain's types.

JSON travels as text both ways (asyncpg's default for ``json``/``jsonb``), encoded and decoded with
orjson like the other stores do, so a value one store can keep every store can keep.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

import orjson

from adapters.base import JSON
from gateway.auth import ApiKey, Scope
from gateway.jobs import Job
from gateway.states import JobState
from gateway.store.base import Delivery, Event, NewDelivery, NewEvent
from gateway.store.postgres.driver import Record


def dumps(value: JSON | Mapping[str, JSON]) -> str:
    return orjson.dumps(value).decode()


def loads_object(text: Any) -> dict[str, JSON]:
    value = orjson.loads(text)
    if not isinstance(value, dict):
        raise TypeError(f"expected a JSON object, got {type(value).__name__}")
    return value


def job(row: Record) -> Job:
    """A job from ``record, version, next_poll_at``: the columns win over the record's copies,
    since a claim changes only the columns."""
    decoded = Job.from_record(orjson.loads(row[0]))
    return replace(decoded, version=int(row[1]), next_poll_at=_when(row[2]))


def job_columns(jobs: Sequence[Job]) -> tuple[list[Any], ...]:
    """INSERT_JOBS's ten parameter arrays, in its column order."""
    return (
        [j.id for j in jobs],
        [j.tenant for j in jobs],
        [j.provider for j in jobs],
        [j.upstream_id for j in jobs],
        [j.state.value for j in jobs],
        [j.next_poll_at for j in jobs],
        [j.version for j in jobs],
        [j.created_at for j in jobs],
        [dumps(dict(j.labels)) for j in jobs],
        [j.to_json() for j in jobs],
    )


def saved_columns(writes: Sequence[tuple[int, Job]]) -> tuple[list[Any], ...]:
    """SAVE_JOBS's parameter arrays for ``(stored version, new job)`` pairs."""
    jobs = [j for _, j in writes]
    ids, tenants, providers, upstreams, states, polls, versions, _, labels, records = job_columns(
        jobs
    )
    stored = [version for version, _ in writes]
    return (ids, stored, tenants, providers, upstreams, states, polls, versions, labels, records)


def event_columns(flat: Sequence[tuple[Job, NewEvent]]) -> tuple[list[Any], ...]:
    """APPEND_EVENTS's parameter arrays. An event is stamped with its job's ``updated_at``."""
    return (
        [j.id for j, _ in flat],
        [j.tenant for j, _ in flat],
        [j.provider for j, _ in flat],
        [j.state.value for j, _ in flat],
        [e.kind for _, e in flat],
        [dumps(dict(e.data)) for _, e in flat],
        [j.updated_at for j, _ in flat],
    )


def numbered(items: Sequence[tuple[Job, Sequence[NewEvent]]], first_id: int) -> list[list[Event]]:
    """The events of ``items`` as APPEND_EVENTS numbered them: in order, from ``first_id``."""
    result: list[list[Event]] = []
    next_id = first_id
    for j, events in items:
        batch: list[Event] = []
        for new in events:
            batch.append(
                Event(
                    id=next_id,
                    job_id=j.id,
                    tenant=j.tenant,
                    provider=j.provider,
                    state=j.state,
                    kind=new.kind,
                    data=new.data,
                    created_at=j.updated_at,
                )
            )
            next_id += 1
        result.append(batch)
    return result


def event(row: Record) -> Event:
    return Event(
        id=int(row[0]),
        job_id=str(row[1]),
        tenant=str(row[2]),
        provider=str(row[3]),
        state=JobState(row[4]),
        kind=str(row[5]),
        data=orjson.loads(row[6]),
        created_at=_required(row[7]),
    )


def delivery_columns(deliveries: Iterable[NewDelivery]) -> tuple[list[Any], ...]:
    """ENQUEUE_DELIVERIES's parameter arrays."""
    listed = list(deliveries)
    return (
        [d.event_id for d in listed],
        [d.job_id for d in listed],
        [d.url for d in listed],
        [d.kind for d in listed],
        [d.payload for d in listed],
        [d.due_at for d in listed],
    )


def delivery(row: Record) -> Delivery:
    return Delivery(
        id=int(row[0]),
        event_id=int(row[1]),
        job_id=str(row[2]),
        url=str(row[3]),
        kind=str(row[4]),
        payload=str(row[5]),
        status=row[6],
        attempts=int(row[7]),
        next_attempt_at=_when(row[8]),
        last_status=None if row[9] is None else int(row[9]),
        last_error=None if row[10] is None else str(row[10]),
        created_at=_required(row[11]),
        updated_at=_required(row[12]),
    )


def api_key_values(key: ApiKey) -> tuple[Any, ...]:
    """INSERT_API_KEY's parameters, in API_KEY_COLUMNS's order (``source`` is not stored: a
    stored key is always ``store``'s)."""
    return (
        key.id,
        key.tenant,
        sorted(scope.value for scope in key.scopes),
        key.digest,
        key.prefix,
        key.name,
        key.created_at,
        key.expires_at,
        key.revoked_at,
        key.last_used_at,
    )


def api_key(row: Record) -> ApiKey:
    return ApiKey(
        id=str(row[0]),
        tenant=str(row[1]),
        scopes=frozenset(Scope(name) for name in row[2]),
        digest=str(row[3]),
        prefix=str(row[4]),
        name=str(row[5]),
        created_at=_required(row[6]),
        expires_at=_when(row[7]),
        revoked_at=_when(row[8]),
        last_used_at=_when(row[9]),
    )


def command_count(tag: str) -> int:
    """The row count of a command tag such as ``DELETE 3`` or ``INSERT 0 2``."""
    return int(tag.rsplit(" ", 1)[-1])


def _when(value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise TypeError(f"expected a timestamp, got {type(value).__name__}")
    return value


def _required(value: Any) -> datetime:
    when = _when(value)
    if when is None:
        raise TypeError("expected a timestamp, got NULL")
    return when
