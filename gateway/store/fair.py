"""Which due jobs a claim takes when several tenants have some: tenants take turns.

The rule, the same in every store (PostgreSQL states it in SQL: ``postgres/sql.py``, CLAIM_DUE):

- A tenant's turns are its due jobs, soonest first: its soonest is its turn 1, its next its turn 2,
  and so on (each (provider, tenant) offering at most ``min(cap, limit)`` of its soonest).
- With caps per provider, each provider's cap goes to its jobs in turn order (turn, then due
  time): each tenant's first turn before anyone's second. A job its provider's cap has no room
  for stays due.
- Of the jobs a cap let through, the claim takes ``limit`` in turn order, the turns counted again
  among them (so a tenant whose turn a cap took comes first in the next).

So one tenant's backlog never holds back another tenant's job, however much sooner its jobs fell
due. :func:`take_turns` reads each tenant's jobs lazily, a turn at a time, and stops as soon as
what it has read decides the answer: about ``limit`` plus one job per tenant without caps or with
one tenant; with caps and several tenants, until the caps are full or the answer is settled. Its
cost never depends on the backlog.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Generic, NamedTuple, TypeVar

if TYPE_CHECKING:
    from _typeshed import SupportsRichComparison

K = TypeVar("K", bound="SupportsRichComparison")
P = TypeVar("P")


class Due(NamedTuple, Generic[K, P]):
    """A due job offered to a claim."""

    order: K
    """When it fell due, then a unique tie-break (the job's id or row id): a total order."""
    tenant: str
    provider: str
    payload: P
    """What the store needs back (a job, a row id)."""


def take_turns(
    streams: Mapping[str, Sequence[Iterator[Due[K, P]]]],
    *,
    limit: int,
    caps: Mapping[str, int] | None = None,
) -> list[Due[K, P]]:
    """The jobs a claim takes, in turn order: at most ``limit``, and with ``caps`` at most
    ``caps[p]`` of provider ``p``.

    ``streams`` holds each tenant's due jobs, one stream per provider, soonest first and each cut
    to ``min(caps[p], limit)`` (``limit`` without caps); with caps, only the providers named. A
    stream is read only as far as the answer needs.
    """
    if limit < 1:
        return []
    left = None if caps is None else dict(caps)
    reading = {
        tenant: heapq.merge(*tenant_streams, key=_order)
        for tenant, tenant_streams in streams.items()
        if tenant_streams
    }
    kept: dict[str, list[Due[K, P]]] = {}  # each tenant's jobs a cap let through, soonest first
    last: dict[str, K] = {}  # the due time of each tenant's last job read
    while reading:
        # One turn: every tenant's next job; a cap's room goes to them soonest first.
        offered: list[Due[K, P]] = []
        for tenant, merged in list(reading.items()):
            item = next(merged, None)
            if item is None:
                del reading[tenant]
                continue
            offered.append(item)
            last[tenant] = item.order
        offered.sort(key=_order)
        for item in offered:
            if left is not None:
                if left.get(item.provider, 0) < 1:
                    continue
                left[item.provider] -= 1
            kept.setdefault(item.tenant, []).append(item)
        if left is not None and not any(room > 0 for room in left.values()):
            break  # every cap is full: no later job can be let through
        if _settled(kept, reading, last, limit):
            break
    return _in_turns(kept)[:limit]


def _settled(
    kept: Mapping[str, list[Due[K, P]]],
    reading: Mapping[str, Iterator[Due[K, P]]],
    last: Mapping[str, K],
    limit: int,
) -> bool:
    """Whether jobs not read yet can no longer be among the first ``limit`` in turn order: a
    tenant's next one would be its turn ``len(kept) + 1``, due after the last one read."""
    if sum(len(items) for items in kept.values()) < limit:
        return False
    turn, order, _ = _ranked(kept)[limit - 1]
    return all((len(kept.get(tenant, ())) + 1, last[tenant]) > (turn, order) for tenant in reading)


def _in_turns(kept: Mapping[str, list[Due[K, P]]]) -> list[Due[K, P]]:
    """Every tenant's first, then every tenant's second, and so on; soonest first in a turn."""
    return [item for _, _, item in _ranked(kept)]


def _ranked(kept: Mapping[str, list[Due[K, P]]]) -> list[tuple[int, K, Due[K, P]]]:
    ranked = [
        (turn, item.order, item)
        for items in kept.values()
        for turn, item in enumerate(items, start=1)
    ]
    ranked.sort(key=_by_turn)
    return ranked


def _order(item: Due[K, P]) -> K:
    return item.order


def _by_turn(entry: tuple[int, K, Due[K, P]]) -> tuple[int, K]:
    return entry[0], entry[1]
