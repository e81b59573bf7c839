"""When to poll next: a schedule learned from the provider's durations, backoff with full jitter,
provider hints, ETA, rate limits, circuit breaking.

Pure: time (``now``) and randomness (``rand``, a float in [0, 1)) are passed in, so every rule is a
table-driven unit test away (azure-core's sans-I/O polling is the model).

Two schedules decide a running job's next poll:

- **learned** (:func:`learned_delay`), once ``min_jobs`` of the provider's jobs (of the same
  cadence key) have finished: polls spread with density ``k * sqrt(h(t))``, where ``h`` is the
  hazard of the learned completion-time distribution at the job's age ``t``. That is the classic
  optimum-checking schedule (Keller 1974): for a poll cost ``c`` and a lag cost ``a`` per second
  the density that minimises calls plus lag is ``sqrt(a * h(t) / 2c)``. Here ``k`` stands for
  ``sqrt(a / 2c)`` and is set from the knob an operator can judge, ``target_lag``: the mean
  detection lag the schedule should give over the learned distribution.
- **guidance** (:func:`next_delay`) before that: exponential backoff between the provider's
  published bounds, pulled towards an ETA from progress.

One rule for the provider's hints on every path (:func:`obey_hints`): a Retry-After or an exhausted
rate-limit window is a "not before"; nothing computed here polls sooner, and ``min_interval`` still
holds when the hint is shorter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final

from adapters.base import Progress, RateHints
from gateway.durations import HALF_LIFE, Distribution


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
    learn: bool = True
    """Schedule by the durations learned from finished jobs once ``min_jobs`` have finished."""
    target_lag: float | None = None
    """The mean detection lag (seconds) the learned schedule aims at; unset: ``min_interval``.
    Smaller costs more polls: about twice the polls for half the lag."""
    max_wait: float | None = None
    """The longest wait of the learned schedule; unset: 10 x ``max_interval``. Longer than
    ``max_interval`` on purpose: where no job of this provider ever finished, waiting is free."""
    min_jobs: int = 20
    """Finished jobs (of one cadence key) before the learned schedule replaces the guidance."""
    half_life_jobs: float = HALF_LIFE
    """Finished jobs after which a duration weighs half: how fast the schedule follows a drift."""

    def __post_init__(self) -> None:
        if not 0 < self.min_interval <= self.max_interval:
            raise ValueError("need 0 < min_interval <= max_interval")
        if self.target_lag is not None and self.target_lag <= 0:
            raise ValueError("target_lag must be positive")
        if self.max_wait is not None and self.max_wait < self.min_interval:
            raise ValueError("max_wait must be at least min_interval")
        if self.min_jobs < 1 or self.half_life_jobs <= 0:
            raise ValueError("min_jobs and half_life_jobs must be positive")
        if self.multiplier < 1:
            raise ValueError("multiplier must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be within 0..1")
        if self.concurrency < 1 or self.rate_per_second <= 0 or self.burst < 1:
            raise ValueError("concurrency, rate_per_second and burst must be positive")

    @property
    def lag_goal(self) -> float:
        return self.target_lag if self.target_lag is not None else self.min_interval

    @property
    def longest_wait(self) -> float:
        return self.max_wait if self.max_wait is not None else 10.0 * self.max_interval


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


def obey_hints(policy: PollPolicy, delay: float, asked: float | None) -> float:
    """``delay`` made to respect the provider's "not before" and ``min_interval``: the one rule for
    hints on every path, after a successful poll and after a fault alike.

    A hint only ever delays: a Retry-After shorter than the computed wait (or than
    ``min_interval``, the operator's floor) does not make a poll sooner, and one longer than
    ``max_interval`` or ``max_wait`` is obeyed in full.
    """
    delay = max(delay, policy.min_interval)
    return delay if asked is None else max(delay, asked)


def next_delay(
    policy: PollPolicy,
    *,
    now: datetime,
    unchanged_polls: int,
    rand: float,
    eta: datetime | None = None,
    hints: RateHints | None = None,
) -> float:
    """Seconds until the next status poll after a successful one, by the provider's guidance.

    The backoff grows while nothing changes. An ETA pulls the poll towards the expected finish
    instead of blindly backing off past it, and never earlier than ``min_interval``. Provider
    hints then apply (:func:`obey_hints`).
    """
    delay = backoff(policy, unchanged_polls, rand)
    if policy.eta_aware and eta is not None:
        until_eta = (eta - now).total_seconds()
        if until_eta > 0:
            # Aim slightly past the ETA so the first poll there most likely sees the finish.
            delay = min(policy.max_interval, max(policy.min_interval, until_eta * ETA_MARGIN))
    return obey_hints(policy, delay, None if hints is None else hint_delay(hints, now))


ETA_MARGIN: Final = 1.05
ETA_TRUSTED_FROM: Final = 0.5
"""The progress fraction from which a linear ETA can delay a learned poll: earlier, one coarse step
of progress (catchall's first of five stages) extrapolates to anything."""
LAG_SPREAD: Final = 4.0
"""Where jobs do finish, polls are never further apart than this many target lags, so the rare
job in a low-hazard stretch (a long tail) is not left waiting minutes."""


def poll_density(dist: Distribution, target_lag: float) -> tuple[float, ...]:
    """Polls per second in each segment of ``dist`` for a mean detection lag of ``target_lag``.

    ``k * sqrt(h)``: a job finishing in a segment waits half its spacing, ``1 / (2 k sqrt(h))``,
    so over the distribution the mean lag is ``sum(p / sqrt(h)) / 2k``; solving for the target
    gives ``k``. A floor of one poll per ``LAG_SPREAD`` target lags bounds the worst lag.
    """
    pairs = zip(dist.mass, dist.hazard, strict=True)
    spread = sum(mass / math.sqrt(h) for mass, h in pairs if h > 0)
    k = spread / (2.0 * target_lag) if spread > 0 else 1.0 / target_lag
    floor = 1.0 / (LAG_SPREAD * target_lag)
    return tuple(max(floor, k * math.sqrt(h)) for h in dist.hazard)


def learned_delay(
    policy: PollPolicy,
    dist: Distribution,
    *,
    elapsed: float,
    eta_in: float | None = None,
    fraction: float | None = None,
    asked: float | None = None,
    density: tuple[float, ...] | None = None,
) -> float:
    """Seconds until the next poll of a job ``elapsed`` seconds old, by the learned schedule.

    The wait is where the poll density, integrated from now, reaches one poll. Before the age
    at which jobs begin to end there is no density at all, so the first poll lands inside the
    distribution, where its density first adds up to one poll; past the longest duration seen,
    the job is slower than all its peers and the wait grows with its age, like a backoff. A
    trusted ETA (``fraction`` at least ``ETA_TRUSTED_FROM``) can only delay the poll: this job
    is slower than the population says. Then the bounds apply:
    ``min_interval``, ``max_wait`` (:attr:`PollPolicy.longest_wait`), and the provider's hint
    (:func:`obey_hints`). ``density`` is :func:`poll_density`'s answer, when the caller keeps it.
    """
    lag = policy.lag_goal
    rates = density if density is not None else poll_density(dist, lag)
    t = max(0.0, elapsed)
    index = dist.segment(t)
    if index < 0:
        t, index = dist.edges[0], 0
    delay: float | None = None
    need = 1.0
    while index < len(rates):
        rate = rates[index]
        room = dist.edges[index + 1] - t
        if rate * room >= need:
            delay = t + need / rate - elapsed
            break
        need -= rate * room
        t = dist.edges[index + 1]
        index += 1
    if delay is None:
        # Past everything learned: wait in proportion to the age, as a backoff would.
        delay = (t - elapsed) + max(2.0 * lag, TAIL_SHARE * max(t, elapsed))
    if (
        policy.eta_aware
        and eta_in is not None
        and eta_in > 0
        and fraction is not None
        and fraction >= ETA_TRUSTED_FROM
    ):
        delay = max(delay, eta_in * LEARNED_ETA_SHARE)
    delay = min(delay, policy.longest_wait)
    return obey_hints(policy, delay, asked)


LEARNED_ETA_SHARE: Final = 0.9
"""A trusted ETA delays a learned poll to this share of the time left: a linear ETA from a stale
step of progress (the pages scraped so far) runs late, and the schedule still polls after it."""
TAIL_SHARE: Final = 0.1
"""Past the longest duration learned, the next poll waits this share of the job's age."""


def expected_lag(delay: float) -> float:
    """The detection lag to expect of a job that ends before its next poll, ``delay`` away: half
    the wait, finishing times being about even across it."""
    return delay / 2.0


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
    """Seconds until the next try after an upstream fault: the fault backoff, up to
    ``error_max_interval``, with the provider's Retry-After obeyed by the same rule as after a
    successful poll (:func:`obey_hints`)."""
    delay = backoff(
        policy, failures, rand, ceiling=max(policy.max_interval, policy.error_max_interval)
    )
    asked = retry_after if retry_after is not None and retry_after > 0 else None
    return obey_hints(policy, delay, asked)


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
