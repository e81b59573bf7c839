"""The learned durations' contract, for every store: sketches round-trip, merges fold in order,
and (PostgreSQL) two replicas see one sketch, with concurrent merges all counted."""

from __future__ import annotations

import asyncio

import pytest

from gateway.durations import DurationDelta, DurationSketch
from gateway.store.base import JobStore
from tests.unit.store.conftest import PgStores


def _sketch(*seconds: float) -> DurationSketch:
    sketch = DurationSketch()
    for value in seconds:
        sketch = sketch.observe(value, half_life=50.0)
    return sketch


async def test_a_merged_sketch_reads_back_as_folded(store: JobStore) -> None:
    assert await store.durations() == {}
    first, second = _sketch(10.0, 11.0, 12.0), _sketch(30.0)
    await store.merge_durations([DurationDelta("catchall/base", first, 50.0)])
    await store.merge_durations(
        [DurationDelta("catchall/base", second, 50.0), DurationDelta("pulse/", second, 50.0)]
    )
    found = await store.durations()
    assert set(found) == {"catchall/base", "pulse/"}
    expected = first.absorb(second, half_life=50.0)
    assert found["catchall/base"].observed == 4
    assert found["catchall/base"].weights.keys() == expected.weights.keys()
    for index, weight in expected.weights.items():
        assert found["catchall/base"].weights[index] == pytest.approx(weight, rel=1e-6)
    # Folding one by one equals observing in order: the decayed older weights are below 1.
    assert found["catchall/base"].weights == pytest.approx(
        _sketch(10.0, 11.0, 12.0, 30.0).weights, rel=1e-6
    )
    assert found["pulse/"].observed == 1


async def test_an_empty_merge_changes_nothing(store: JobStore) -> None:
    await store.merge_durations([])
    assert await store.durations() == {}


async def test_two_replicas_see_one_sketch_and_lose_no_merge(pg_stores: PgStores) -> None:
    one, two = await pg_stores(), await pg_stores()
    merges = [
        store.merge_durations([DurationDelta("extract/12", _sketch(50.0 + n), 50.0)])
        for n in range(10)
        for store in (one, two)
    ]
    await asyncio.gather(*merges)
    seen_by_one, seen_by_two = await one.durations(), await two.durations()
    assert seen_by_one == seen_by_two
    assert seen_by_one["extract/12"].observed == 20
