"""When to poll next: backoff, full jitter, provider hints, ETA, rate limits, circuit breaking.

Pure: time (``now``) and randomness (``rand``, a float in [0, 1)) are passed in, so every rule is a
table-driven unit test away (azure-core's sans-I/O polling is the model).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

from adapters.base import Progress, RateHints


@dataclass(frozen=True, slots=True)
class PollPolicy:
    """One provider's polling manners. Seconds throughout."""

    first_delay: float = 5.0
    min_interval: float = 5.0
    max_interval: float = 60.0
    multiplier: float = 1.5
    jitter: float = 1.0
    """Share of the backoff window drawn at random: 1.0 is full jitter, 0 none."""
    deadline: float = 24 * 3600.0
    """Give up (``poll_deadline_exceeded``) this long after the job was created."""
    error_max_interval: float = 300.0
    """The ceiling for the backoff after upstream faults (5xx, timeouts, malformed bodies)."""
    not_found_limit: int = 3
    """Consecutive upstream 404s before the job ends ``upstream_not_found``."""
    concurrency: int = 16
    """Upstream calls in flight at once for this provider."""
    rate_per_second: float = 20.0
    burst: int = 20
    breaker_threshold: int = 5
    """Consecutive failed calls that open the provider's circuit."""
    breaker_cooldown: float = 30.0
    eta_aware: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.min_interval <= self.max_interval:
            raise ValueError("need 0 < min_interval <= max_interval")
        if self.multiplier < 1:
            raise ValueError("multiplier must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be within 0..1")
        if self.concurrency < 1 or self.rate_per_second <= 0 or self.burst < 1:
            raise ValueError("concurrency, rate_per_second and burst must be positive")


def backoff(
    policy: PollPolicy, attempt: int, rand: float, *, ceiling: float | None = None
) -> float:
    """Exponential backoff from ``min_interval``, capped, with (full) jitter inside the window.

    Jitter never goes below ``min_interval``: the floor is the provider's stated minimum cadence.
    """
    cap = policy.max_interval if ceiling is None else ceiling
    try:
        grown = policy.min_interval * policy.multiplier ** max(0, attempt)
    except OverflowError:
        # A job unchanged for thousands of polls (1.5 ** 1751 > float max, about 16 h at the
        # default cadence) must saturate at the cap, not crash the poll with OverflowError.
        grown = cap
    window = min(cap, grown)
    low = window - policy.jitter * (window - policy.min_interval)
    return low + rand * (window - low)


def hint_delay(hints: RateHints, now: datetime) -> float | None:
    """Seconds the provider asked us to wait, if it did: Retry-After, else an exhausted quota."""
    if hints.retry_at is not None:
        return max(0.0, (hints.retry_at - now).total_seconds())
    if hints.reset_at is not None and hints.remaining is not None and hints.remaining <= 0:
        return max(0.0, (hints.reset_at - now).total_seconds())
    return None


def estimate_eta(progress: Progress, started_at: datetime | None, now: datetime) -> datetime | None:
    """Linear extrapolation of the reported fraction since the job started running.

    Returns ``None`` without a usable fraction: a guess from nothing is worse than backoff.
    """
    fraction = progress.fraction
    if started_at is None or fraction is None or fraction <= 0.0:
        return None
    if fraction >= 1.0:
        return now
    elapsed = (now - started_at).total_seconds()
    if elapsed <= 0:
        return None
    return now + timedelta(seconds=elapsed * (1.0 - fraction) / fraction)


def next_delay(
    policy: PollPolicy,
    *,
    now: datetime,
    unchanged_polls: int,
    rand: float,
    eta: datetime | None = None,
    hints: RateHints | None = None,
) -> float:
    """Seconds until the next status poll after a successful one.

    The backoff grows while nothing changes. An ETA pulls the poll towards the expected finish
    instead of blindly backing off past it, and never earlier than ``min_interval``. Provider
    hints win over everything computed here.
    """
    delay = backoff(policy, unchanged_polls, rand)
    if policy.eta_aware and eta is not None:
        until_eta = (eta - now).total_seconds()
        if until_eta > 0:
            # Aim slightly past the ETA so the first poll there most likely sees the finish.
            delay = min(policy.max_interval, max(policy.min_interval, until_eta * 1.05))
    if hints is not None:
        asked = hint_delay(hints, now)
        if asked is not None:
            delay = max(delay, asked) if asked < policy.min_interval else asked
    return delay


def refused_delay(policy: PollPolicy, *, refusals: int, rand: float) -> float:
    """The least wait before polling a job whose last ``refusals`` reports in a row could not be
    applied (backwards, illegal, or an unknown native status); 0 when nothing need be added.

    A single refusal may be a glitch (a lagging replica upstream, one odd answer), so it keeps the
    normal cadence. From the second, polling faster learns nothing until the provider's answer
    changes: the wait starts at ``max_interval`` and doubles up to the fault ceiling
    (``error_max_interval``). It doubles whatever the provider's ``multiplier``, which says how fast
    its jobs change; a refused answer says ours cannot follow them.
    """
    if refusals < 2:
        return 0.0
    floor = policy.max_interval
    ceiling = max(policy.max_interval, policy.error_max_interval)
    # Capped before the power: a job refused for days must saturate, not overflow.
    window = min(ceiling, floor * 2.0 ** min(refusals - 2, 64))
    low = window - policy.jitter * (window - floor)
    return low + rand * (window - low)


def error_delay(
    policy: PollPolicy, *, failures: int, rand: float, retry_after: float | None = None
) -> float:
    """Seconds until the next try after an upstream fault; a Retry-After is obeyed as given."""
    if retry_after is not None and retry_after > 0:
        return retry_after
    return backoff(
        policy, failures, rand, ceiling=max(policy.max_interval, policy.error_max_interval)
    )


# --------------------------------------------------------------------------------------------------
# Rate limiting: a token bucket per provider


@dataclass(frozen=True, slots=True)
class Bucket:
    tokens: float
    updated: float
    """Monotonic seconds of the last refill."""


def take_tokens(policy: PollPolicy, bucket: Bucket, want: int, now: float) -> tuple[Bucket, int]:
    """Take up to ``want`` whole tokens, never waiting. Returns the new bucket and how many were
    granted: a claim takes only what it can spend at once, so a claimed job is never held waiting
    for a token past its lease."""
    tokens = min(
        float(policy.burst), bucket.tokens + (now - bucket.updated) * policy.rate_per_second
    )
    granted = max(0, min(want, int(tokens)))
    return Bucket(tokens - granted, now), granted


def give_back(policy: PollPolicy, bucket: Bucket, tokens: int) -> Bucket:
    """Return tokens taken but not spent (fewer jobs were due than tokens granted)."""
    return replace(bucket, tokens=min(float(policy.burst), bucket.tokens + tokens))


# --------------------------------------------------------------------------------------------------
# Circuit breaker


class Circuit(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class Breaker:
    circuit: Circuit = Circuit.CLOSED
    failures: int = 0
    opened_at: float | None = None
    probing: bool = False


def breaker_allows(policy: PollPolicy, breaker: Breaker, now: float) -> tuple[Breaker, bool]:
    """Whether a call may go out now; an open circuit lets one probe through after the cooldown."""
    if breaker.circuit is Circuit.CLOSED:
        return breaker, True
    if breaker.circuit is Circuit.OPEN:
        assert breaker.opened_at is not None
        if now - breaker.opened_at >= policy.breaker_cooldown:
            return replace(breaker, circuit=Circuit.HALF_OPEN, probing=True), True
        return breaker, False
    # Half open: exactly one probe is in flight; everyone else waits for its verdict.
    if breaker.probing:
        return breaker, False
    return replace(breaker, probing=True), True


def breaker_record(policy: PollPolicy, breaker: Breaker, *, ok: bool, now: float) -> Breaker:
    """Fold a call's outcome in. Only faults of the provider itself (not 404s or 4xx) count."""
    if ok:
        return Breaker()
    failures = breaker.failures + 1
    if breaker.circuit is Circuit.HALF_OPEN or failures >= policy.breaker_threshold:
        return Breaker(Circuit.OPEN, failures, now, probing=False)
    return replace(breaker, failures=failures)


def breaker_retry_in(policy: PollPolicy, breaker: Breaker, now: float) -> float:
    """Seconds until an open circuit will let a probe through."""
    if breaker.circuit is not Circuit.OPEN or breaker.opened_at is None:
        return 0.0
    return max(0.0, policy.breaker_cooldown - (now - breaker.opened_at))
