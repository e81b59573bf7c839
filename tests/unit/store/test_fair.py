"""Tenants taking turns (``gateway.store.fair``): the lazy reading gives what the rule says, and
reads no more than it must."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.store.fair import Due, take_turns

Item = Due[int, str]


def by_the_rule(
    pairs: Mapping[tuple[str, str], list[int]], limit: int, caps: Mapping[str, int] | None
) -> list[Item]:
    """The rule as the module states it, read eagerly: turns over everything offered, caps in
    turn order, then the turns counted again and the first ``limit`` taken."""
    offered: dict[str, list[Item]] = {}
    for (tenant, provider), times in pairs.items():
        if caps is not None and caps.get(provider, 0) < 1:
            continue
        cut = limit if caps is None else min(caps[provider], limit)
        for when in sorted(times)[:cut]:
            offered.setdefault(tenant, []).append(Due(when, tenant, provider, f"{tenant}{when}"))

    def in_turns(by_tenant: Mapping[str, list[Item]]) -> list[Item]:
        ranked = [
            (turn, item.order, item)
            for items in by_tenant.values()
            for turn, item in enumerate(sorted(items, key=lambda i: i.order), start=1)
        ]
        return [item for _, _, item in sorted(ranked, key=lambda r: (r[0], r[1]))]

    kept: dict[str, list[Item]] = {}
    left = None if caps is None else dict(caps)
    for item in in_turns(offered):
        if left is not None:
            if left.get(item.provider, 0) < 1:
                continue
            left[item.provider] -= 1
        kept.setdefault(item.tenant, []).append(item)
    return in_turns(kept)[:limit]


class Counted:
    """A stream that counts what is read from it."""

    def __init__(self, items: list[Item]) -> None:
        self._items = iter(items)
        self.read = 0

    def __iter__(self) -> Iterator[Item]:
        return self

    def __next__(self) -> Item:
        item = next(self._items)
        self.read += 1
        return item


def streams_of(
    pairs: Mapping[tuple[str, str], list[int]], limit: int, caps: Mapping[str, int] | None
) -> tuple[dict[str, list[Counted]], list[Counted]]:
    streams: dict[str, list[Counted]] = {}
    every: list[Counted] = []
    for (tenant, provider), times in pairs.items():
        if caps is not None and caps.get(provider, 0) < 1:
            continue
        cut = limit if caps is None else min(caps[provider], limit)
        items = [Due(when, tenant, provider, f"{tenant}{when}") for when in sorted(times)[:cut]]
        stream = Counted(items)
        streams.setdefault(tenant, []).append(stream)
        every.append(stream)
    return streams, every


# Due times unique across the whole claim: a total order, as (next_poll_at, id) is in a store.
times = st.lists(st.integers(0, 10_000), unique=True, max_size=60)
tenants = st.sampled_from(["a", "b", "c", "d", "e", "f"])
providers = st.sampled_from(["p", "q", "r"])


@st.composite
def claims(
    draw: st.DrawFn,
) -> tuple[dict[tuple[str, str], list[int]], int, dict[str, int] | None]:
    moments = draw(times)
    pairs: dict[tuple[str, str], list[int]] = {}
    for when in moments:
        pairs.setdefault((draw(tenants), draw(providers)), []).append(when)
    limit = draw(st.integers(1, 12))
    caps = draw(st.none() | st.dictionaries(providers, st.integers(0, 6), max_size=3))
    return pairs, limit, caps


@settings(max_examples=400, deadline=None)
@given(claims())
def test_reading_lazily_takes_what_the_rule_says(
    claim: tuple[dict[tuple[str, str], list[int]], int, dict[str, int] | None],
) -> None:
    pairs, limit, caps = claim
    streams, _ = streams_of(pairs, limit, caps)
    taken = take_turns(streams, limit=limit, caps=caps)
    assert taken == by_the_rule(pairs, limit, caps)
    assert len(taken) <= limit
    if caps is not None:
        for provider, cap in caps.items():
            assert sum(item.provider == provider for item in taken) <= cap


def test_a_backlog_is_not_read() -> None:
    """Without caps, or with one tenant, a claim reads about ``limit`` jobs plus one per tenant
    and stream, however deep the backlogs."""
    # 20 tenants x 2 providers x 5,000 due jobs, interleaved in time, every due time unique.
    pairs = {
        (f"t{n}", p): [i * 40 + n * 2 + "pq".index(p) for i in range(5_000)]
        for n in range(20)
        for p in "pq"
    }
    streams, every = streams_of(pairs, 100, None)
    taken = take_turns(streams, limit=100, caps=None)
    assert len(taken) == 100
    assert sum(stream.read for stream in every) <= 100 + 2 * len(every)
    one = {("t0", "p"): pairs["t0", "p"], ("t0", "q"): pairs["t0", "q"]}
    streams, every = streams_of(one, 100, {"p": 100, "q": 100})
    assert len(take_turns(streams, limit=100, caps={"p": 100, "q": 100})) == 100
    assert sum(stream.read for stream in every) <= 100 + 2


def test_with_caps_and_many_tenants_reading_stops_once_the_caps_are_full() -> None:
    pairs = {
        (f"t{n:02d}", p): [n * 1000 + i * 3 + "pqr".index(p) for i in range(300)]
        for n in range(50)
        for p in "pqr"
    }
    caps = {"p": 20, "q": 20, "r": 20}
    streams, every = streams_of(pairs, 60, caps)
    taken = take_turns(streams, limit=60, caps=caps)
    assert len(taken) == 60
    assert taken == by_the_rule(pairs, 60, caps)
    # 150 streams of 20 could be read (3,000 jobs); a turn or two settles it.
    assert sum(stream.read for stream in every) <= 3 * 150
