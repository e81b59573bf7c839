"""The webhook delivery queue's contract, for every store: idempotent enqueueing with the tailer's
cursor, leased claims, fenced finishes, disabled endpoints and purging.

The same tests as ``tests/unit/test_webhooks.py``'s "delivery rows" part, which runs them against
the memory and SQLite stores only; here they run against every store.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from gateway.store.base import JobStore
from tests.unit.store.factories import T0, new_delivery

CURSOR = "webhooks"


async def test_enqueue_is_idempotent_and_moves_the_cursor(store: JobStore) -> None:
    assert await store.get_cursor(CURSOR) is None
    added = await store.enqueue_deliveries(
        [new_delivery(1), new_delivery(1, "http://b.test/hook")], cursor=(CURSOR, 5)
    )
    assert added == 2
    assert await store.get_cursor(CURSOR) == 5
    # A replay after a crash (same event, same URL) adds nothing.
    assert await store.enqueue_deliveries([new_delivery(1)], cursor=(CURSOR, 6)) == 0
    assert await store.get_cursor(CURSOR) == 6
    await store.set_cursor(CURSOR, 9)
    assert await store.get_cursor(CURSOR) == 9
    rows = await store.list_deliveries()
    assert [(d.event_id, d.url, d.status, d.attempts) for d in rows] == [
        (1, "http://a.test/hook", "pending", 0),
        (1, "http://b.test/hook", "pending", 0),
    ]
    assert rows[0].payload == '{"id":"job_1"}'
    assert await store.list_deliveries(job_id="job_2") == []
    assert await store.next_delivery_due() == T0


async def test_claims_lease_and_finishes_are_fenced(store: JobStore) -> None:
    await store.enqueue_deliveries(
        [new_delivery(1), new_delivery(2, due_at=T0 + timedelta(seconds=10))]
    )
    lease = T0 + timedelta(seconds=30)
    claimed = await store.claim_due_deliveries(T0, limit=10, lease_until=lease)
    assert [(d.event_id, d.next_attempt_at) for d in claimed] == [(1, lease)]
    # Leased: not claimed again until the lease runs out (the second one is due by then).
    (second,) = await store.claim_due_deliveries(
        T0 + timedelta(seconds=20), limit=10, lease_until=lease
    )
    assert second.event_id == 2
    assert await store.finish_delivery(
        second.id, leased_until=lease, outcome="delivered", attempts=1, now=T0
    )
    assert await store.next_delivery_due() == lease

    # The lease ran out and someone else claimed it: the first sender's write is fenced off.
    later = T0 + timedelta(seconds=31)
    again = await store.claim_due_deliveries(
        later, limit=1, lease_until=later + timedelta(seconds=60)
    )
    assert [d.id for d in again] == [claimed[0].id]
    stale = await store.finish_delivery(
        claimed[0].id, leased_until=lease, outcome="delivered", attempts=1, now=later
    )
    assert stale is False
    retry_at = later + timedelta(seconds=5)
    assert await store.finish_delivery(
        again[0].id,
        leased_until=again[0].next_attempt_at or T0,
        outcome="retry",
        attempts=1,
        now=later,
        retry_at=retry_at,
        last_status=500,
        last_error="answered 500",
    )
    row = (await store.list_deliveries())[0]
    assert (row.status, row.attempts, row.next_attempt_at, row.last_status, row.last_error) == (
        "pending",
        1,
        retry_at,
        500,
        "answered 500",
    )
    with pytest.raises(ValueError, match="retry_at"):
        await store.finish_delivery(
            row.id, leased_until=retry_at, outcome="retry", attempts=2, now=later
        )

    (claimed_again,) = await store.claim_due_deliveries(retry_at, limit=1, lease_until=lease)
    assert claimed_again.id == row.id
    assert await store.finish_delivery(
        row.id,
        leased_until=lease,
        outcome="delivered",
        attempts=2,
        now=retry_at,
        last_status=204,
    )
    done = (await store.list_deliveries())[0]
    assert (done.status, done.attempts, done.next_attempt_at, done.last_status) == (
        "delivered",
        2,
        None,
        204,
    )
    # Finished is final.
    assert not await store.finish_delivery(
        row.id, leased_until=lease, outcome="failed", attempts=3, now=retry_at
    )


async def test_a_410_disables_the_url_and_everything_pending_to_it(store: JobStore) -> None:
    gone, other = "http://gone.test/hook", "http://other.test/hook"
    await store.enqueue_deliveries(
        [
            new_delivery(1, gone),
            new_delivery(2, gone, due_at=T0 + timedelta(seconds=1)),
            new_delivery(3, other),
        ]
    )
    lease = T0 + timedelta(seconds=30)
    first = (await store.claim_due_deliveries(T0, limit=1, lease_until=lease))[0]
    assert first.url == gone
    assert not await store.endpoint_disabled(gone)
    assert await store.finish_delivery(
        first.id, leased_until=lease, outcome="disabled", attempts=1, now=T0, last_status=410
    )
    assert await store.endpoint_disabled(gone)
    assert not await store.endpoint_disabled(other)
    rows = {d.event_id: d for d in await store.list_deliveries()}
    assert rows[1].status == rows[2].status == "disabled"
    assert rows[2].next_attempt_at is None
    assert rows[3].status == "pending"
    # Nothing new is enqueued for a disabled URL.
    assert await store.enqueue_deliveries([new_delivery(4, gone), new_delivery(4, other)]) == 1
    assert {d.event_id for d in await store.list_deliveries() if d.url == gone} == {1, 2}


async def test_finished_deliveries_are_purged_pending_ones_kept(store: JobStore) -> None:
    await store.enqueue_deliveries([new_delivery(1), new_delivery(2)])
    lease = T0 + timedelta(seconds=30)
    first, _ = await store.claim_due_deliveries(T0, limit=2, lease_until=lease)
    await store.finish_delivery(
        first.id, leased_until=lease, outcome="delivered", attempts=1, now=T0
    )
    assert await store.purge_deliveries(T0) == 0
    assert await store.purge_deliveries(T0 + timedelta(seconds=1)) == 1
    assert [d.event_id for d in await store.list_deliveries()] == [2]
