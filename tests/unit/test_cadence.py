"""The learned cadence: the duration sketch, the sqrt(hazard) schedule, the keeper that shares
what replicas learn, and the runner's use of them."""

from __future__ import annotations

import math
import random
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.cadence_keys import catchall_key, extract_key, platform_key
from gateway.cadence import DurationBook
from gateway.durations import (
    BUCKETS,
    Distribution,
    DurationSketch,
    bucket_low,
    bucket_of,
)
from gateway.policy import (
    PollPolicy,
    learned_delay,
    obey_hints,
    poll_density,
)
from gateway.store.memory import MemoryStore


def sketch_of(*seconds: float, half_life: float = 200.0) -> DurationSketch:
    sketch = DurationSketch()
    for value in seconds:
        sketch = sketch.observe(value, half_life=half_life)
    return sketch


def around(median: float, n: int = 200, sigma: float = 0.1, seed: int = 1) -> DurationSketch:
    rng = random.Random(seed)
    return sketch_of(*(rng.lognormvariate(math.log(median), sigma) for _ in range(n)))


# --------------------------------------------------------------------------------------------------
# The sketch


def test_buckets_cover_ten_milliseconds_to_months_and_clamp() -> None:
    assert bucket_of(0.0) == 0
    assert bucket_of(float("nan")) == 0
    assert bucket_of(1e12) == BUCKETS - 1
    for seconds in (0.05, 1.0, 60.0, 750.0, 86_400.0):
        index = bucket_of(seconds)
        assert bucket_low(index) <= seconds < bucket_low(index + 1)


def test_merging_deltas_equals_observing_in_order() -> None:
    whole = sketch_of(10, 12, 14, 300, 310)
    merged = sketch_of(10, 12, 14).absorb(sketch_of(300, 310), half_life=200.0)
    assert merged.observed == whole.observed == 5
    assert merged.weights == pytest.approx(whole.weights)


def test_decay_follows_a_drift() -> None:
    before = sketch_of(*([60.0] * 200), half_life=50.0)
    after = before.absorb(sketch_of(*([78.0] * 200), half_life=50.0), half_life=50.0)
    median = after.quantile(0.5)
    assert median is not None
    assert 70 < median < 90


def test_a_record_round_trips_and_junk_reads_as_empty() -> None:
    sketch = around(45.0)
    again = DurationSketch.from_record(sketch.to_record())
    assert again.observed == sketch.observed
    assert again.weights == pytest.approx(sketch.weights, rel=1e-6)
    assert DurationSketch.from_record({"weights": "no", "observed": 3}).empty
    assert DurationSketch.from_record({"weights": {"x": 1, "999": 2}, "observed": 1}).weights == {}


def test_the_fitted_distribution_sums_to_one_and_starts_where_jobs_end() -> None:
    dist = Distribution.fit(around(600.0))
    assert dist is not None
    assert sum(dist.mass) == pytest.approx(1.0)
    # 3 sigma is 440..815 s; the smoothing adds a bucket either side.
    assert 300 < dist.edges[0] < 440
    assert 815 < dist.end < 1000
    assert all(h >= 0 for h in dist.hazard)
    assert Distribution.fit(DurationSketch()) is None


# --------------------------------------------------------------------------------------------------
# The schedule

P = PollPolicy(min_interval=5.0, max_interval=60.0, target_lag=10.0)
DIST = Distribution.fit(around(600.0))
assert DIST is not None


def polls_until(policy: PollPolicy, dist: Distribution, end: float) -> tuple[int, float]:
    """Polls a job ending at ``end`` gets from the learned schedule, and its detection lag."""
    t, polls = 0.0, 0
    while True:
        t += learned_delay(policy, dist, elapsed=t)
        polls += 1
        if t >= end:
            return polls, t - end


def test_no_poll_before_any_job_ever_finished() -> None:
    first = learned_delay(P, DIST, elapsed=0.0)
    # Nothing ever ended before the distribution's first edge: no poll is spent there.
    assert DIST.edges[0] < first < 600.0
    assert learned_delay(replace_policy(max_wait=120.0), DIST, elapsed=0.0) == 120.0


def replace_policy(**changes: float) -> PollPolicy:
    from dataclasses import replace

    return replace(P, **changes)


def test_polls_are_dense_where_jobs_end_and_sparse_elsewhere() -> None:
    policy = replace_policy(max_wait=3600.0)
    at_median = learned_delay(policy, DIST, elapsed=600.0)
    early = learned_delay(policy, DIST, elapsed=100.0)
    assert at_median < early
    assert policy.min_interval <= at_median <= 4 * policy.lag_goal + 1e-9


def test_a_typical_job_costs_a_handful_of_calls_at_about_the_target_lag() -> None:
    policy = replace_policy(max_wait=3600.0)
    rng = random.Random(7)
    outcomes = [
        polls_until(policy, DIST, rng.lognormvariate(math.log(600), 0.1)) for _ in range(300)
    ]
    calls = sum(p for p, _ in outcomes) / len(outcomes)
    lag = sum(lag for _, lag in outcomes) / len(outcomes)
    # A fixed poller at the same mean lag (every 20 s) would make 30 calls.
    assert calls < 12
    assert lag < 2 * policy.lag_goal


def test_past_everything_learned_the_wait_grows_with_age() -> None:
    policy = replace_policy(max_wait=3600.0)
    assert learned_delay(policy, DIST, elapsed=2000.0) < learned_delay(policy, DIST, elapsed=3000.0)


def test_a_trusted_eta_can_only_delay() -> None:
    policy = replace_policy(max_wait=3600.0)
    plain = learned_delay(policy, DIST, elapsed=600.0)
    assert learned_delay(policy, DIST, elapsed=600.0, eta_in=300.0, fraction=0.7) > plain
    assert learned_delay(policy, DIST, elapsed=600.0, eta_in=1.0, fraction=0.9) == plain
    # A coarse early fraction is not trusted.
    assert learned_delay(policy, DIST, elapsed=600.0, eta_in=300.0, fraction=0.2) == plain


def test_obey_hints_is_one_rule() -> None:
    assert obey_hints(P, 2.0, None) == 5.0  # min_interval holds
    assert obey_hints(P, 20.0, 3.0) == 20.0  # a shorter Retry-After never makes us sooner
    assert obey_hints(P, 20.0, 90.0) == 90.0  # a longer one is obeyed, past max_interval too


LAGS = st.floats(min_value=0.5, max_value=120.0)


@settings(max_examples=200, deadline=None)
@given(
    median=st.floats(min_value=0.5, max_value=5000.0),
    elapsed=st.floats(min_value=0.0, max_value=20000.0),
    min_interval=st.floats(min_value=0.1, max_value=60.0),
    spread=st.floats(min_value=1.0, max_value=20.0),
    target=LAGS,
    asked=st.none() | st.floats(min_value=0.0, max_value=10000.0),
    eta_in=st.none() | st.floats(min_value=0.0, max_value=10000.0),
    fraction=st.none() | st.floats(min_value=0.0, max_value=1.0),
)
def test_learned_delay_bounds(
    median: float,
    elapsed: float,
    min_interval: float,
    spread: float,
    target: float,
    asked: float | None,
    eta_in: float | None,
    fraction: float | None,
) -> None:
    policy = PollPolicy(
        min_interval=min_interval, max_interval=min_interval * spread, target_lag=target
    )
    dist = Distribution.fit(around(median, n=40))
    assert dist is not None
    delay = learned_delay(
        policy, dist, elapsed=elapsed, asked=asked, eta_in=eta_in, fraction=fraction
    )
    # Never earlier than min_interval; never later than the longest wait, unless the provider
    # asked for longer; a Retry-After is always respected.
    assert delay >= policy.min_interval
    assert delay <= max(policy.longest_wait, asked or 0.0) + 1e-9
    if asked is not None:
        assert delay >= asked


@settings(max_examples=100, deadline=None)
@given(
    median=st.floats(min_value=1.0, max_value=3000.0),
    elapsed=st.floats(min_value=0.0, max_value=5000.0),
    lags=st.tuples(LAGS, LAGS),
)
def test_learned_delay_is_monotonic_in_the_target_lag(
    median: float, elapsed: float, lags: tuple[float, float]
) -> None:
    dist = Distribution.fit(around(median, n=40))
    assert dist is not None
    small, large = sorted(lags)
    delays = [
        learned_delay(
            PollPolicy(min_interval=0.1, max_interval=10_000.0, target_lag=lag),
            dist,
            elapsed=elapsed,
        )
        for lag in (small, large)
    ]
    assert delays[0] <= delays[1] + 1e-9


def test_poll_density_gives_about_the_target_mean_lag() -> None:
    dist = Distribution.fit(around(600.0, sigma=0.3))
    assert dist is not None
    density = poll_density(dist, 10.0)
    mean_lag = sum(m / (2 * n) for m, n in zip(dist.mass, density, strict=True))
    # The floor (one poll per 4 target lags) binds only at the thin early edge, and only lowers
    # the lag there: the mean is the target, a little under. A k off by 2 would give 5 or 20.
    assert 9.0 < mean_lag <= 10.0 + 1e-9


# --------------------------------------------------------------------------------------------------
# Keys and the keeper


def test_cadence_keys_are_bounded() -> None:
    assert catchall_key({"query": "q"}, None) == "base"
    assert catchall_key({"mode": "lite"}, None) == "lite"
    assert catchall_key({"mode": "x" * 1000}, None) == "other"
    assert extract_key({"maxPages": 7}, None) == "7"
    assert extract_key({"maxPages": 7, "singlePage": True}, None) == "1"
    assert {extract_key({"maxPages": n}, None) for n in (0, 21, "3", True, None)} == {"other"}
    assert platform_key(None, "export") == "export"
    assert platform_key(None, "mystery") == platform_key(None, None) == "other"


async def test_two_keepers_on_one_store_learn_together() -> None:
    store = MemoryStore()
    policies = {"pulse": PollPolicy(min_interval=1.0, max_interval=5.0, min_jobs=20)}
    one, two = DurationBook(store, policies), DurationBook(store, policies)
    for n in range(12):
        one.observe("pulse", "", 50.0 + n)
        two.observe("pulse", "", 51.0 + n)
    # Each alone has fewer than min_jobs: no learned schedule yet.
    assert one.schedule("pulse", "") is None
    await one.flush()
    await two.flush()
    await one.load()
    assert one.sketch("pulse/").observed == two.sketch("pulse/").observed == 24
    assert one.sketch("pulse/").weights == pytest.approx(two.sketch("pulse/").weights)
    assert one.schedule("pulse", "") is not None
    # Unknown providers and negative durations are ignored.
    one.observe("nobody", "", 5.0)
    one.observe("pulse", "", -1.0)
    assert one.sketch("pulse/").observed == 24


def test_the_simulation_bench_runs_the_real_policy() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    import bench_cadence

    learned = bench_cadence.averaged("pulse", "learned", jobs=300, seeds=1, skip=100)
    fixed = bench_cadence.averaged("pulse", "fixed5", jobs=300, seeds=1)
    assert learned.calls < fixed.calls


def test_what_is_left_of_old_durations_does_not_start_the_distribution() -> None:
    # 300 jobs of 60 s, then 1,000 of 120 s: the 60 s ones weigh about 0.2 % now.
    sketch = sketch_of(*([60.0] * 300), *([120.0] * 1000), half_life=100.0)
    assert bucket_of(60.0) in sketch.weights  # still held...
    dist = Distribution.fit(sketch)
    assert dist is not None
    assert dist.edges[0] > 80.0  # ...but no poll is spent where only they ended
    assert dist.edges[0] < 120.0 < dist.end
