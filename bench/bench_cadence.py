"""Upstream calls against detection lag: jobgate's cadence, fixed pollers and push, in virtual time.

A discrete-event simulation: no sockets, no sleeping. It imports the real pure policy
(``gateway.policy``: the guidance backoff, the learned ``sqrt(hazard)`` schedule, the hint rule)
and the real duration sketch (``gateway.durations``), and runs 1,000 jobs per provider through
them, with durations modelled on the providers' documentation:

- catchall: 10-15 min (log-normal, median 12.5 min), 7 % of them a tail around 25 min (to 30+);
  ``lite`` jobs (30 %) take 0.6 of that. Progress: five stages, the last one (enriching) reports a
  validated share. Cadence key: ``mode``.
- extract: ``maxPages`` 5..20 pages of about 4.5 s each (each page log-normal, sigma 0.3) after
  a 1-3 s queue: about a minute. Progress: pages scraped / total. Key: ``maxPages``.
- pulse: about a minute (log-normal, median 55 s, sigma 0.35). No progress. One key.
- platform: by type, 30 to 120 s (sigma 0.15), after up to 5 s pending. Progress: 0..100 %.
  Key: ``type``.

Each job arrives a little after the previous one (Poisson, about ten in flight at once), so the
learned schedule only knows the jobs that finished before the poll it decides. A duration is
learned as jobgate's runner learns it: detection time less half the last wait.

Strategies, per provider:
- ``jobgate cold``: the guidance schedule alone (``next_delay``, the production defaults in
  ``config/production.example.toml``): what every job gets before ``min_jobs`` have finished.
- ``jobgate learned``: the learned schedule, learning online from job one; figures over the jobs
  after the first 400 (by then every cadence key has passed ``min_jobs``).
- ``fixed 5 s``: the seeds' example loop.
- ``advised``: the provider's own documented cadence (catchall first check at 90 s then every
  60 s; extract every 5 s; pulse exponential backoff from 2 s, x2, to 60 s; platform every 10 s).
- ``push``: the floor: one status call, when the callback arrives (lag: the callback's latency).

And a drift case: the true durations grow by 30 % for the second half of the jobs.

Run: ``.venv/bin/python bench/bench_cadence.py`` (``--jobs``, ``--seeds``). About a minute.
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import statistics
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.durations import Distribution, DurationSketch
from gateway.policy import (
    PollPolicy,
    learned_delay,
    next_delay,
    poll_density,
)
from gateway.settings import PolicySettings

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class SimJob:
    key: str
    duration: float
    started: float
    """Seconds after submission that the job reports running (its ETA counts from here)."""
    progress: Callable[[float], float | None]


Maker = Callable[[random.Random, float], SimJob]


def _catchall(rng: random.Random, scale: float) -> SimJob:
    lite = rng.random() < 0.3
    if rng.random() < 0.07:
        duration = rng.lognormvariate(math.log(25 * 60), 0.25)
    else:
        duration = rng.lognormvariate(math.log(12.5 * 60), 0.12)
    duration *= (0.6 if lite else 1.0) * scale
    # The sandbox's stage lengths (30, 90, 240, 150, 210 s of 720), stretched to this job.
    ends = [30 / 720, 120 / 720, 360 / 720, 510 / 720, 1.0]

    def progress(t: float) -> float | None:
        share = t / duration
        for index, end in enumerate(ends):
            if share < end:
                if index == 4:
                    start = ends[3]
                    return (4 + (share - start) / (1.0 - start)) / 5
                return index / 5
        return 1.0

    return SimJob("lite" if lite else "base", duration, ends[0] * duration, progress)


def _extract(rng: random.Random, scale: float) -> SimJob:
    pages = rng.randint(5, 20)
    queue = rng.uniform(1.0, 3.0)
    page_ends: list[float] = []
    at = queue
    for _ in range(pages):
        at += rng.lognormvariate(math.log(4.5), 0.3) * scale
        page_ends.append(at)
    duration = at

    def progress(t: float) -> float | None:
        if t < queue:
            return None
        return sum(1 for end in page_ends if end <= t) / pages

    return SimJob(str(pages), duration, queue, progress)


def _pulse(rng: random.Random, scale: float) -> SimJob:
    duration = rng.lognormvariate(math.log(55.0), 0.35) * scale
    return SimJob("", duration, 0.0, lambda t: None)


PLATFORM_TYPES = {
    "document_processing": 60.0,
    "web_crawling": 120.0,
    "batch_embedding": 90.0,
    "export": 30.0,
    "import": 45.0,
}


def _platform(rng: random.Random, scale: float) -> SimJob:
    kind = rng.choice(sorted(PLATFORM_TYPES))
    pending = rng.uniform(0.0, 5.0)
    running = rng.lognormvariate(math.log(PLATFORM_TYPES[kind]), 0.15) * scale

    def progress(t: float) -> float | None:
        if t < pending:
            return 0.0
        return math.floor(100 * min(1.0, (t - pending) / running)) / 100

    return SimJob(kind, pending + running, pending, progress)


MAKERS: dict[str, Maker] = {
    "catchall": _catchall,
    "extract": _extract,
    "pulse": _pulse,
    "platform": _platform,
}

# The production defaults, read from the file operators copy: the guidance and the learned knobs.
CONFIG = Path(__file__).resolve().parent.parent / "config" / "production.example.toml"


def production_policies() -> dict[str, PollPolicy]:
    providers = tomllib.loads(CONFIG.read_text())["providers"]
    return {
        name: PolicySettings(**providers[name].get("policy", {})).to_policy() for name in MAKERS
    }


POLICIES: dict[str, PollPolicy] = production_policies()

PUSH_LATENCY = 0.2
"""Seconds from a job's end to its callback's status call (the sandbox over loopback: ~ms)."""


# --------------------------------------------------------------------------------------------------
# Strategies: each says when a job's next poll is, given what the poller knows


@dataclass
class Learner:
    """The learned sketches of one provider, by cadence key, and their fitted distributions."""

    policy: PollPolicy
    sketches: dict[str, DurationSketch] = field(default_factory=dict)
    fitted: dict[str, tuple[Distribution, tuple[float, ...]] | None] = field(default_factory=dict)

    def learn(self, key: str, seconds: float) -> None:
        sketch = self.sketches.get(key, DurationSketch())
        self.sketches[key] = sketch.observe(seconds, half_life=self.policy.half_life_jobs)
        self.fitted.pop(key, None)

    def distribution(self, key: str) -> tuple[Distribution, tuple[float, ...]] | None:
        if key not in self.fitted:
            sketch = self.sketches.get(key)
            dist = (
                Distribution.fit(sketch)
                if sketch is not None and sketch.observed >= self.policy.min_jobs
                else None
            )
            self.fitted[key] = (
                None if dist is None else (dist, poll_density(dist, self.policy.lag_goal))
            )
        return self.fitted[key]


@dataclass
class Tracked:
    job: SimJob
    submitted: float
    polls: int = 0
    unchanged: int = 0
    last_fraction: float | None = None
    last_wait: float = 0.0


def _eta_in(tracked: Tracked, t: float) -> tuple[float | None, float | None]:
    """Seconds to the linear ETA from progress (as ``gateway.policy.estimate_eta``), and the
    fraction it came from."""
    fraction = tracked.job.progress(t - tracked.submitted)
    running = t - tracked.submitted - tracked.job.started
    if fraction is None or fraction <= 0 or running <= 0:
        return None, fraction
    if fraction >= 1:
        return 0.0, fraction
    return running * (1 - fraction) / fraction, fraction


def jobgate_wait(
    provider: str, learner: Learner | None, tracked: Tracked, t: float, rng: random.Random
) -> float:
    policy = POLICIES[provider]
    elapsed = t - tracked.submitted
    if tracked.polls == 0 and learner is None:
        return policy.first_delay
    eta_in, fraction = _eta_in(tracked, t)
    fitted = learner.distribution(tracked.job.key) if learner is not None else None
    if fitted is not None:
        dist, density = fitted
        return learned_delay(
            policy, dist, elapsed=elapsed, eta_in=eta_in, fraction=fraction, density=density
        )
    if tracked.polls == 0:
        return policy.first_delay
    now = EPOCH + timedelta(seconds=t)
    eta = None if eta_in is None else now + timedelta(seconds=eta_in)
    return next_delay(
        policy, now=now, unchanged_polls=tracked.unchanged, rand=rng.random(), eta=eta
    )


def fixed(first: float, every: float) -> Callable[[Tracked], float]:
    return lambda tracked: first if tracked.polls == 0 else every


def doubling(first: float, factor: float, cap: float) -> Callable[[Tracked], float]:
    return lambda tracked: min(cap, first * factor**tracked.polls)


ADVISED: dict[str, Callable[[Tracked], float]] = {
    "catchall": fixed(90.0, 60.0),
    "extract": fixed(5.0, 5.0),
    "pulse": doubling(2.0, 2.0, 60.0),
    "platform": fixed(10.0, 10.0),
}


# --------------------------------------------------------------------------------------------------
# The simulation


@dataclass(frozen=True)
class Outcome:
    calls: float
    lag_mean: float
    lag_p95: float


def simulate(
    provider: str,
    strategy: str,
    *,
    jobs: int,
    seed: int,
    drift: bool = False,
    skip: int = 0,
) -> Outcome:
    """Run ``jobs`` jobs of ``provider`` under ``strategy``; figures over jobs after ``skip``."""
    rng = random.Random(seed)
    jitter = random.Random(seed + 1)
    maker = MAKERS[provider]
    made = [maker(rng, 1.3 if drift and n >= jobs // 2 else 1.0) for n in range(jobs)]
    mean = statistics.fmean(job.duration for job in made)
    gap = mean / 10.0  # about ten jobs in flight
    arrivals: list[float] = []
    at = 0.0
    for _ in made:
        at += rng.expovariate(1.0 / gap)
        arrivals.append(at)
    if strategy == "push":
        tail = made[skip:]
        return Outcome(1.0, PUSH_LATENCY, PUSH_LATENCY) if tail else Outcome(0, 0, 0)
    learner = Learner(POLICIES[provider]) if strategy == "learned" else None
    heap: list[tuple[float, int]] = []
    tracked: dict[int, Tracked] = {}
    calls: list[int] = [0] * jobs
    lags: list[float] = [0.0] * jobs

    def wait(item: Tracked, t: float) -> float:
        if strategy in ("cold", "learned"):
            return jobgate_wait(provider, learner, item, t, jitter)
        if strategy == "fixed5":
            return fixed(5.0, 5.0)(item)
        return ADVISED[provider](item)

    for n, arrival in enumerate(arrivals):
        heapq.heappush(heap, (arrival, -1 - n))  # an arrival: negative ids
    while heap:
        t, code = heapq.heappop(heap)
        if code < 0:
            n = -1 - code
            item = Tracked(made[n], t)
            tracked[n] = item
            first = wait(item, t)
            item.last_wait = first
            heapq.heappush(heap, (t + first, n))
            continue
        item = tracked[code]
        item.polls += 1
        age = t - item.submitted
        if age >= item.job.duration:
            calls[code] = item.polls
            lags[code] = age - item.job.duration
            if learner is not None:
                # What the runner learns: the detection time less half the last wait.
                learner.learn(item.job.key, max(0.0, age - item.last_wait / 2.0))
            del tracked[code]
            continue
        fraction = item.job.progress(age)
        item.unchanged = item.unchanged + 1 if fraction == item.last_fraction else 0
        item.last_fraction = fraction
        delay = wait(item, t)
        item.last_wait = delay
        heapq.heappush(heap, (t + delay, code))
    kept_calls = calls[skip:]
    kept_lags = sorted(lags[skip:])
    return Outcome(
        statistics.fmean(kept_calls),
        statistics.fmean(kept_lags),
        kept_lags[min(len(kept_lags) - 1, int(0.95 * len(kept_lags)))],
    )


def averaged(provider: str, strategy: str, *, jobs: int, seeds: int, **kw: object) -> Outcome:
    runs = [
        simulate(provider, strategy, jobs=jobs, seed=seed, **kw)  # type: ignore[arg-type]
        for seed in range(seeds)
    ]
    return Outcome(
        statistics.fmean(r.calls for r in runs),
        statistics.fmean(r.lag_mean for r in runs),
        statistics.fmean(r.lag_p95 for r in runs),
    )


STRATEGIES = (
    ("jobgate cold", "cold"),
    ("jobgate learned", "learned"),
    ("fixed 5 s", "fixed5"),
    ("advised", "advised"),
    ("push (floor)", "push"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--only", default="catchall,extract,pulse,platform")
    args = parser.parse_args()
    skip = args.jobs * 2 // 5
    print(f"{args.jobs} jobs per provider, {args.seeds} seeds; learned figures skip {skip} jobs")
    print(
        f"{'provider':<9} {'strategy':<16} {'calls/job':>9} {'lag mean':>9} {'lag p95':>8}"
        f" {'calls vs advised':>16} {'vs fixed 5 s':>12}"
    )
    verdicts: list[str] = []
    for provider in args.only.split(","):
        figures: dict[str, Outcome] = {}
        for _label, strategy in STRATEGIES:
            figures[strategy] = averaged(
                provider,
                strategy,
                jobs=args.jobs,
                seeds=args.seeds,
                skip=skip if strategy == "learned" else 0,
            )
        for label, strategy in STRATEGIES:
            o = figures[strategy]
            print(
                f"{provider:<9} {label:<16} {o.calls:>9.2f} {o.lag_mean:>8.1f}s {o.lag_p95:>7.1f}s"
                f" {o.calls / figures['advised'].calls:>15.2f}x"
                f" {o.calls / figures['fixed5'].calls:>11.2f}x"
            )
        drift = averaged(
            provider, "learned", jobs=args.jobs, seeds=args.seeds, skip=skip, drift=True
        )
        print(
            f"{provider:<9} {'learned, drift':<16} {drift.calls:>9.2f} {drift.lag_mean:>8.1f}s"
            f" {drift.lag_p95:>7.1f}s   (calls {drift.calls / figures['learned'].calls:.2f}x"
            " the no-drift figure)"
        )
        learned, advised, five = figures["learned"], figures["advised"], figures["fixed5"]
        verdicts.append(
            f"{provider}: learned calls {learned.calls / advised.calls:.2f}x advised (goal <= 0.5),"
            f" {learned.calls / five.calls:.2f}x fixed 5 s (goal <= 0.2); p95 lag"
            f" {learned.lag_p95:.1f}s vs advised {advised.lag_p95:.1f}s (goal: no worse);"
            f" drift {drift.calls / learned.calls:.2f}x (goal <= 1.3)"
        )
    print()
    for line in verdicts:
        print(line)


if __name__ == "__main__":
    main()
