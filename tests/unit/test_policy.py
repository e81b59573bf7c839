"""The pure polling rules: backoff, jitter, hints, ETA, error backoff, token bucket, breaker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.base import NO_HINTS, Progress, RateHints
from gateway.policy import (
    Breaker,
    Bucket,
    Circuit,
    PollPolicy,
    backoff,
    breaker_allows,
    breaker_record,
    breaker_retry_in,
    error_delay,
    estimate_eta,
    give_back,
    hint_delay,
    next_delay,
    refused_delay,
    take_tokens,
)

NOW = datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC)
ALMOST_ONE = 1.0 - 1e-12

# Round numbers so that every expected value below is exact: windows 5, 10, 20, 40, 60 (capped).
P = PollPolicy(min_interval=5.0, max_interval=60.0, multiplier=2.0, jitter=0.0)
FULL = PollPolicy(min_interval=5.0, max_interval=60.0, multiplier=2.0, jitter=1.0)
HALF = PollPolicy(min_interval=5.0, max_interval=60.0, multiplier=2.0, jitter=0.5)


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


# --------------------------------------------------------------------------------------------------
# PollPolicy


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"min_interval": 0.0}, "min_interval"),
        ({"min_interval": -1.0}, "min_interval"),
        ({"min_interval": 10.0, "max_interval": 5.0}, "min_interval <= max_interval"),
        ({"multiplier": 0.99}, "multiplier"),
        ({"jitter": -0.1}, "jitter"),
        ({"jitter": 1.01}, "jitter"),
        ({"concurrency": 0}, "concurrency"),
        ({"rate_per_second": 0.0}, "rate_per_second"),
        ({"rate_per_second": -2.0}, "rate_per_second"),
        ({"burst": 0}, "burst"),
    ],
)
def test_policy_rejects_nonsense(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PollPolicy(**changes)


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"min_interval": 7.0, "max_interval": 7.0},
        {"multiplier": 1.0},
        {"jitter": 0.0},
        {"jitter": 1.0},
        {"concurrency": 1, "burst": 1, "rate_per_second": 0.01},
    ],
)
def test_policy_accepts_edges(changes: dict[str, Any]) -> None:
    policy = PollPolicy(**changes)
    for key, value in changes.items():
        assert getattr(policy, key) == value


def test_policy_is_immutable() -> None:
    with pytest.raises(AttributeError):
        P.min_interval = 1.0  # type: ignore[misc]


# --------------------------------------------------------------------------------------------------
# backoff


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [(-3, 5.0), (0, 5.0), (1, 10.0), (2, 20.0), (3, 40.0), (4, 60.0), (5, 60.0), (50, 60.0)],
)
def test_backoff_grows_then_caps_without_jitter(attempt: int, expected: float) -> None:
    assert backoff(P, attempt, 0.0) == expected
    # No jitter: the random draw changes nothing.
    assert backoff(P, attempt, ALMOST_ONE) == expected
    assert backoff(P, attempt, 0.5) == expected


@pytest.mark.parametrize(
    ("policy", "attempt", "rand", "expected"),
    [
        # Full jitter: anywhere between the floor (min_interval) and the window.
        (FULL, 0, 0.0, 5.0),
        (FULL, 3, 0.0, 5.0),
        (FULL, 3, 0.5, 22.5),
        (FULL, 10, 0.0, 5.0),
        (FULL, 10, 0.5, 32.5),
        # Half jitter: the lower half of the window above the floor is never drawn.
        (HALF, 3, 0.0, 22.5),
        (HALF, 3, 0.5, 31.25),
        (HALF, 10, 0.0, 32.5),
    ],
)
def test_backoff_jitter_draws_inside_the_window(
    policy: PollPolicy, attempt: int, rand: float, expected: float
) -> None:
    assert backoff(policy, attempt, rand) == pytest.approx(expected)


@pytest.mark.parametrize("policy", [FULL, HALF, P])
@pytest.mark.parametrize("attempt", [0, 1, 3, 4, 20])
def test_backoff_jitter_bounds_at_the_extremes(policy: PollPolicy, attempt: int) -> None:
    window = min(policy.max_interval, policy.min_interval * policy.multiplier**attempt)
    low = backoff(policy, attempt, 0.0)
    high = backoff(policy, attempt, ALMOST_ONE)
    assert policy.min_interval <= low <= high <= window
    assert high == pytest.approx(window)
    assert low == pytest.approx(window - policy.jitter * (window - policy.min_interval))


def test_backoff_ceiling_overrides_max_interval() -> None:
    assert backoff(P, 6, 0.0, ceiling=300.0) == 300.0
    assert backoff(P, 5, 0.0, ceiling=300.0) == 160.0
    assert backoff(P, 1, 0.0, ceiling=300.0) == 10.0


def test_backoff_with_multiplier_one_is_constant() -> None:
    flat = PollPolicy(min_interval=3.0, max_interval=60.0, multiplier=1.0, jitter=1.0)
    assert {backoff(flat, n, r) for n in range(20) for r in (0.0, 0.5, ALMOST_ONE)} == {3.0}


@pytest.mark.parametrize("attempt", [1_000, 2_000, 10_000, 10**9])
def test_backoff_survives_a_very_long_unchanged_streak(attempt: int) -> None:
    # A job that sits unchanged for a day is polled thousands of times; the growth must saturate at
    # the cap instead of overflowing the float power.
    policy = PollPolicy()
    assert backoff(policy, attempt, 0.0, ceiling=None) == policy.min_interval
    assert backoff(policy, attempt, ALMOST_ONE) == pytest.approx(policy.max_interval)
    assert backoff(P, attempt, 0.3) == 60.0


policies = st.builds(
    lambda low, spread, multiplier, jitter: PollPolicy(
        min_interval=low, max_interval=low + spread, multiplier=multiplier, jitter=jitter
    ),
    st.floats(0.01, 600.0),
    st.floats(0.0, 3600.0),
    st.floats(1.0, 10.0),
    st.floats(0.0, 1.0),
)
rands = st.floats(0.0, 1.0, exclude_max=True)


@given(policy=policies, attempt=st.integers(-5, 100_000), rand=rands)
def test_backoff_always_within_min_and_cap(policy: PollPolicy, attempt: int, rand: float) -> None:
    delay = backoff(policy, attempt, rand)
    # Relative slack of a few ulps for float rounding; nothing more.
    assert policy.min_interval * (1 - 1e-12) <= delay <= policy.max_interval * (1 + 1e-12)


@given(policy=policies, attempt=st.integers(0, 60), rand=rands)
def test_backoff_never_shrinks_as_attempts_grow(
    policy: PollPolicy, attempt: int, rand: float
) -> None:
    assert backoff(policy, attempt + 1, rand) >= backoff(policy, attempt, rand) * (1 - 1e-12)


# --------------------------------------------------------------------------------------------------
# hint_delay


@pytest.mark.parametrize(
    ("hints", "expected"),
    [
        (NO_HINTS, None),
        (RateHints(retry_at=at(30)), 30.0),
        (RateHints(retry_at=at(0.25)), 0.25),
        (RateHints(retry_at=at(-10)), 0.0),
        # Retry-After wins over a quota reset, even a later one.
        (RateHints(retry_at=at(7), reset_at=at(90), remaining=0), 7.0),
        # An exhausted quota: wait until it resets.
        (RateHints(reset_at=at(90), remaining=0, limit=100), 90.0),
        (RateHints(reset_at=at(90), remaining=-1), 90.0),
        (RateHints(reset_at=at(-5), remaining=0), 0.0),
        # Quota left: nothing to wait for.
        (RateHints(reset_at=at(90), remaining=1, limit=100), None),
        (RateHints(reset_at=at(90), remaining=57), None),
        # Half a hint is no hint.
        (RateHints(reset_at=at(90)), None),
        (RateHints(remaining=0), None),
        (RateHints(limit=100), None),
    ],
)
def test_hint_delay(hints: RateHints, expected: float | None) -> None:
    assert hint_delay(hints, NOW) == expected


# --------------------------------------------------------------------------------------------------
# estimate_eta


@pytest.mark.parametrize(
    ("fraction", "started", "expected"),
    [
        (0.25, at(-10), at(30)),
        (0.5, at(-100), at(100)),
        (0.8, at(-40), at(10)),
        (1.0, at(-40), NOW),
        (1.0, at(-0.001), NOW),
        (None, at(-40), None),
        (0.0, at(-40), None),
        (0.5, None, None),
        (1.0, None, None),
        # Started "now" or in the future (clock skew): no rate to extrapolate from.
        (0.5, NOW, None),
        (0.5, at(5), None),
    ],
)
def test_estimate_eta(fraction: float | None, started: datetime | None, expected: object) -> None:
    eta = estimate_eta(Progress(fraction=fraction), started, NOW)
    if expected is None:
        assert eta is None
    else:
        assert isinstance(expected, datetime)
        assert eta is not None
        assert abs((eta - expected).total_seconds()) < 1e-6


def test_estimate_eta_ignores_steps_without_fraction() -> None:
    progress = Progress(step="fetching", step_index=3, step_count=5)
    assert estimate_eta(progress, at(-60), NOW) is None


# --------------------------------------------------------------------------------------------------
# next_delay


@pytest.mark.parametrize(
    ("policy", "unchanged", "eta", "hints", "expected"),
    [
        # Plain backoff while nothing changes.
        (P, 0, None, None, 5.0),
        (P, 2, None, None, 20.0),
        (P, 9, None, None, 60.0),
        # An ETA pulls the poll to just past the expected finish...
        (P, 9, at(20), None, 21.0),
        (P, 0, at(20), None, 21.0),
        # ...but never sooner than min_interval...
        (P, 3, at(2), None, 5.0),
        # ...nor later than max_interval.
        (P, 0, at(1000), None, 60.0),
        # An ETA already past is no guide: back off as usual.
        (P, 2, at(-30), None, 20.0),
        (P, 2, NOW, None, 20.0),
        # A policy that ignores ETAs.
        (
            PollPolicy(min_interval=5, max_interval=60, multiplier=2, jitter=0, eta_aware=False),
            2,
            at(100),
            None,
            20.0,
        ),
        # Hints win: a Retry-After longer than the computed delay is obeyed, past max_interval too.
        (P, 0, None, RateHints(retry_at=at(120)), 120.0),
        (P, 0, at(20), RateHints(retry_at=at(600)), 600.0),
        # One rule on every path: a hint only delays. A Retry-After shorter than the computed
        # delay changes nothing, whether or not it is above min_interval.
        (P, 9, None, RateHints(retry_at=at(10)), 60.0),
        (P, 0, at(50), RateHints(retry_at=at(5)), 52.5),
        (P, 0, None, RateHints(retry_at=at(2)), 5.0),
        (P, 2, None, RateHints(retry_at=at(2)), 20.0),
        (P, 2, None, RateHints(retry_at=at(-30)), 20.0),
        # An exhausted quota: wait for the reset; quota left: ignore the reset.
        (P, 0, None, RateHints(reset_at=at(90), remaining=0), 90.0),
        (P, 2, None, RateHints(reset_at=at(90), remaining=5), 20.0),
        (P, 0, None, NO_HINTS, 5.0),
    ],
)
def test_next_delay(
    policy: PollPolicy,
    unchanged: int,
    eta: datetime | None,
    hints: RateHints | None,
    expected: float,
) -> None:
    delay = next_delay(policy, now=NOW, unchanged_polls=unchanged, rand=0.0, eta=eta, hints=hints)
    assert delay == pytest.approx(expected)


def test_next_delay_uses_the_jittered_backoff() -> None:
    low = next_delay(FULL, now=NOW, unchanged_polls=3, rand=0.0)
    high = next_delay(FULL, now=NOW, unchanged_polls=3, rand=ALMOST_ONE)
    assert low == 5.0
    assert high == pytest.approx(40.0)


offsets = st.floats(-10_000.0, 10_000.0)
maybe_hints = st.one_of(
    st.none(),
    st.builds(
        lambda retry, reset, remaining: RateHints(
            retry_at=None if retry is None else at(retry),
            reset_at=None if reset is None else at(reset),
            remaining=remaining,
        ),
        st.one_of(st.none(), offsets),
        st.one_of(st.none(), offsets),
        st.one_of(st.none(), st.integers(-1, 5)),
    ),
)


@given(
    policy=policies,
    unchanged=st.integers(0, 100_000),
    rand=rands,
    eta=st.one_of(st.none(), offsets.map(at)),
    hints=maybe_hints,
)
def test_next_delay_is_positive_and_respects_the_floor(
    policy: PollPolicy,
    unchanged: int,
    rand: float,
    eta: datetime | None,
    hints: RateHints | None,
) -> None:
    delay = next_delay(policy, now=NOW, unchanged_polls=unchanged, rand=rand, eta=eta, hints=hints)
    assert delay > 0
    assert delay >= policy.min_interval * (1 - 1e-12)
    asked = hint_delay(hints, NOW) if hints is not None else None
    if asked is None:
        assert delay <= policy.max_interval * (1 + 1e-12)
    else:
        # The one hint rule: a "not before", never a "sooner".
        plain = next_delay(policy, now=NOW, unchanged_polls=unchanged, rand=rand, eta=eta)
        assert delay == max(plain, asked)


# --------------------------------------------------------------------------------------------------
# error_delay

E = PollPolicy(
    min_interval=5.0, max_interval=60.0, multiplier=2.0, jitter=0.0, error_max_interval=300.0
)


@pytest.mark.parametrize(
    ("failures", "retry_after", "expected"),
    [
        # A Retry-After is a "not before", as after a successful poll: a longer one is obeyed in
        # full, a shorter one leaves the backoff standing.
        (1, 42.0, 42.0),
        (7, 42.0, 300.0),
        (1, 0.5, 10.0),
        (1, 3600.0, 3600.0),
        # Otherwise exponential, past max_interval, up to error_max_interval.
        (1, None, 10.0),
        (3, None, 40.0),
        (4, None, 80.0),
        (5, None, 160.0),
        (6, None, 300.0),
        (40, None, 300.0),
        (10_000, None, 300.0),
        # A zero or negative Retry-After is no advice.
        (3, 0.0, 40.0),
        (3, -5.0, 40.0),
    ],
)
def test_error_delay(failures: int, retry_after: float | None, expected: float) -> None:
    assert error_delay(E, failures=failures, rand=0.0, retry_after=retry_after) == expected


def test_error_delay_ceiling_is_never_below_max_interval() -> None:
    policy = PollPolicy(
        min_interval=5.0, max_interval=60.0, multiplier=2.0, jitter=0.0, error_max_interval=10.0
    )
    assert error_delay(policy, failures=10, rand=0.0) == 60.0


def test_error_delay_is_jittered_within_the_error_window() -> None:
    policy = PollPolicy(
        min_interval=5.0, max_interval=60.0, multiplier=2.0, jitter=1.0, error_max_interval=300.0
    )
    assert error_delay(policy, failures=10, rand=0.0) == 5.0
    assert error_delay(policy, failures=10, rand=ALMOST_ONE) == pytest.approx(300.0)


@pytest.mark.parametrize(
    ("refusals", "expected"),
    [(0, 0.0), (1, 0.0), (2, 60.0), (3, 120.0), (4, 240.0), (5, 300.0), (10_000, 300.0)],
)
def test_refused_delay_doubles_from_max_interval_to_the_error_ceiling(
    refusals: int, expected: float
) -> None:
    # A single refusal may be a glitch; a repeat is polled no faster than the slowest cadence.
    assert refused_delay(E, refusals=refusals, rand=0.5) == expected


def test_refused_delay_backs_off_even_where_the_provider_wants_a_constant_cadence() -> None:
    constant = PollPolicy(min_interval=5.0, max_interval=5.0, multiplier=1.0, jitter=0.0)
    assert refused_delay(constant, refusals=4, rand=0.0) == 20.0


def test_refused_delay_is_jittered_above_max_interval() -> None:
    jittered = PollPolicy(min_interval=5.0, max_interval=60.0, multiplier=2.0, jitter=1.0)
    assert refused_delay(jittered, refusals=4, rand=0.0) == 60.0
    assert refused_delay(jittered, refusals=4, rand=ALMOST_ONE) == pytest.approx(240.0)


# --------------------------------------------------------------------------------------------------
# Token bucket

B = PollPolicy(rate_per_second=2.0, burst=3)


def test_a_claim_takes_the_burst_then_nothing_until_tokens_accrue() -> None:
    bucket, granted = take_tokens(B, Bucket(tokens=3.0, updated=0.0), 5, 0.0)
    assert (granted, bucket.tokens) == (3, 0.0)
    bucket, granted = take_tokens(B, bucket, 5, 0.0)
    assert granted == 0  # never a debt: a job without a token is simply not claimed
    bucket, granted = take_tokens(B, bucket, 5, 0.75)  # 1.5 tokens accrued at 2/s
    assert (granted, bucket.tokens) == (1, pytest.approx(0.5))
    assert bucket.updated == 0.75


def test_the_refill_is_capped_at_the_burst_and_fractions_are_kept() -> None:
    bucket, granted = take_tokens(B, Bucket(tokens=0.0, updated=0.0), 10, 1_000_000.0)
    assert granted == 3
    bucket, granted = take_tokens(B, Bucket(tokens=0.4, updated=0.0), 1, 0.2)
    assert (granted, bucket.tokens) == (0, pytest.approx(0.8))


def test_unspent_tokens_come_back_capped_at_the_burst() -> None:
    bucket = Bucket(tokens=1.0, updated=5.0)
    assert give_back(B, bucket, 1) == Bucket(tokens=2.0, updated=5.0)
    assert give_back(B, bucket, 10).tokens == 3.0


@given(
    rate=st.floats(0.1, 100.0),
    burst=st.integers(1, 50),
    wants=st.lists(st.tuples(st.integers(0, 20), st.floats(0.0, 2.0)), max_size=100),
)
def test_claims_never_exceed_the_burst_plus_the_rate(
    rate: float, burst: int, wants: list[tuple[int, float]]
) -> None:
    policy = PollPolicy(rate_per_second=rate, burst=burst)
    bucket = Bucket(float(burst), 0.0)
    now = total = 0.0
    for want, step in wants:
        now += step
        bucket, granted = take_tokens(policy, bucket, want, now)
        assert 0 <= granted <= want
        total += granted
        assert total <= burst + rate * now + 1e-6


# --------------------------------------------------------------------------------------------------
# Circuit breaker

K = PollPolicy(breaker_threshold=3, breaker_cooldown=30.0)


def fail(breaker: Breaker, now: float) -> Breaker:
    return breaker_record(K, breaker, ok=False, now=now)


def test_breaker_opens_after_threshold_consecutive_failures() -> None:
    breaker = Breaker()
    for now in (1.0, 2.0):
        breaker = fail(breaker, now)
        assert breaker.circuit is Circuit.CLOSED
        assert breaker_allows(K, breaker, now)[1]
    breaker = fail(breaker, 3.0)
    assert breaker.circuit is Circuit.OPEN
    assert breaker.opened_at == 3.0
    assert breaker.failures == 3


def test_breaker_success_resets_the_count() -> None:
    breaker = fail(fail(Breaker(), 1.0), 2.0)
    breaker = breaker_record(K, breaker, ok=True, now=3.0)
    assert breaker == Breaker()
    breaker = fail(fail(breaker, 4.0), 5.0)
    assert breaker.circuit is Circuit.CLOSED  # two in a row again, not four


def test_open_breaker_refuses_calls_during_the_cooldown() -> None:
    breaker = fail(fail(fail(Breaker(), 0.0), 0.0), 100.0)
    for now in (100.0, 110.0, 129.999):
        after, allowed = breaker_allows(K, breaker, now)
        assert not allowed
        assert after == breaker
    assert breaker_retry_in(K, breaker, 100.0) == 30.0
    assert breaker_retry_in(K, breaker, 120.0) == 10.0
    assert breaker_retry_in(K, breaker, 500.0) == 0.0


def test_half_open_lets_exactly_one_probe_through() -> None:
    breaker = fail(fail(fail(Breaker(), 0.0), 0.0), 0.0)
    breaker, allowed = breaker_allows(K, breaker, 30.0)
    assert allowed
    assert breaker.circuit is Circuit.HALF_OPEN
    assert breaker.probing
    for now in (30.0, 31.0, 1000.0):
        again, allowed = breaker_allows(K, breaker, now)
        assert not allowed
        assert again == breaker
    assert breaker_retry_in(K, breaker, 31.0) == 0.0


def test_probe_success_closes_the_circuit() -> None:
    breaker = fail(fail(fail(Breaker(), 0.0), 0.0), 0.0)
    breaker, _ = breaker_allows(K, breaker, 30.0)
    breaker = breaker_record(K, breaker, ok=True, now=31.0)
    assert breaker == Breaker()
    assert breaker_allows(K, breaker, 31.0) == (breaker, True)


def test_probe_failure_reopens_for_another_cooldown() -> None:
    breaker = fail(fail(fail(Breaker(), 0.0), 0.0), 0.0)
    breaker, _ = breaker_allows(K, breaker, 30.0)
    breaker = fail(breaker, 31.0)
    assert breaker.circuit is Circuit.OPEN
    assert breaker.opened_at == 31.0
    assert not breaker.probing
    assert not breaker_allows(K, breaker, 60.0)[1]
    breaker, allowed = breaker_allows(K, breaker, 61.0)
    assert allowed
    assert breaker.circuit is Circuit.HALF_OPEN


def test_half_open_without_a_probe_in_flight_lets_one_through() -> None:
    breaker = Breaker(Circuit.HALF_OPEN, 3, 0.0, probing=False)
    breaker, allowed = breaker_allows(K, breaker, 1.0)
    assert allowed
    assert breaker.probing
    assert not breaker_allows(K, breaker, 1.0)[1]


def test_breaker_retry_in_is_zero_unless_open() -> None:
    assert breaker_retry_in(K, Breaker(), 5.0) == 0.0
    assert breaker_retry_in(K, Breaker(Circuit.HALF_OPEN, 3, 0.0, True), 5.0) == 0.0


def test_a_failed_probe_reopens_whatever_the_count() -> None:
    probing = Breaker(Circuit.HALF_OPEN, failures=0, opened_at=0.0, probing=True)
    reopened = breaker_record(K, probing, ok=False, now=50.0)
    assert reopened.circuit is Circuit.OPEN
    assert reopened.opened_at == 50.0
