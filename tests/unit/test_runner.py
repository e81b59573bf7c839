"""The poll loop, driven tick by tick: a MemoryStore, a scripted adapter and clocks we move by hand.

Every test calls ``runner.step()`` and ``runner.drain()`` with a fake ``now`` and ``mono``, so no
test sleeps for a poll interval or asserts on wall-clock time. One bounded test runs ``run()``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from structlog.testing import capture_logs
from structlog.typing import EventDict

from adapters.base import (
    JSON,
    AuthRejected,
    Capabilities,
    JobError,
    MalformedResponse,
    NotFound,
    Progress,
    RateHints,
    RateLimited,
    RequestRejected,
    ResultKind,
    ResultLocator,
    ResultPayload,
    StatusReport,
    Submission,
    UnsupportedAction,
    UpstreamUnavailable,
)
from gateway.events import EventHub
from gateway.jobs import Job
from gateway.policy import Circuit, PollPolicy
from gateway.runner import Runner
from gateway.states import Action, Anomaly, JobState, Refused
from gateway.store.base import Event, NewEvent
from gateway.store.memory import MemoryStore

T0 = datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC)
Q, R, S, F = JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED, JobState.FAILED
E = JobState.EXPIRED
TICK = 0.02

# Deterministic manners: no jitter, windows of 5, 10, 20, 40, 60 s; errors up to 300 s.
POLICY = PollPolicy(
    first_delay=5.0,
    min_interval=5.0,
    max_interval=60.0,
    multiplier=2.0,
    jitter=0.0,
    error_max_interval=300.0,
    not_found_limit=3,
    breaker_threshold=3,
    breaker_cooldown=30.0,
    rate_per_second=1000.0,
    burst=1000,
    concurrency=16,
)
NO_BREAKER = replace(POLICY, breaker_threshold=1000)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def report(
    state: JobState | None, native: str = "native", upstream_id: str = "", **changes: Any
) -> StatusReport:
    return replace(StatusReport(upstream_id, state, native), **changes)


# --------------------------------------------------------------------------------------------------
# Fakes


class FakeClock:
    """Wall time for due dates and monotonic time for the breaker and bucket, moved together."""

    def __init__(self) -> None:
        self.now = T0
        self.mono = 10_000.0

    def wall(self) -> datetime:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        self.mono += seconds

    def advance_to(self, when: datetime) -> None:
        self.advance(max(0.0, (when - self.now).total_seconds()))


Step = StatusReport | Exception


class ScriptedAdapter:
    """An Adapter whose fetch_status answers from a script per upstream id (the last item sticks).

    ``failing`` overrides every script while set; ``gate`` holds every call until it is set.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self.scripts: dict[str, list[Step]] = {}
        self.calls: Counter[str] = Counter()
        self.failing: Exception | None = None
        self.gate: asyncio.Event | None = None

    def script(self, upstream_id: str, *steps: Step) -> None:
        assert steps
        self.scripts[upstream_id] = list(steps)

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    @property
    def name(self) -> str:
        return self._name

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(submit=False)

    @property
    def status_table(self) -> Mapping[str, JobState]:
        return {}

    def auth_headers(self) -> dict[str, str]:
        return {}

    async def submit(self, request: Mapping[str, JSON]) -> Submission:
        raise UnsupportedAction("not in this fake")

    async def fetch_status(self, upstream_id: str) -> StatusReport:
        self.calls[upstream_id] += 1
        if self.gate is not None:
            await self.gate.wait()
        script = self.scripts[upstream_id]
        step = script.pop(0) if len(script) > 1 else script[0]
        if self.failing is not None:
            step = self.failing
        if isinstance(step, Exception):
            raise step.with_traceback(None)
        return replace(step, upstream_id=upstream_id)

    async def fetch_result(
        self, upstream_id: str, *, page: int = 1, page_size: int | None = None
    ) -> ResultPayload:
        raise UnsupportedAction("not in this fake")

    async def cancel(self, upstream_id: str) -> Submission:
        raise UnsupportedAction("not in this fake")

    async def rerun(self, upstream_id: str) -> Submission:
        raise UnsupportedAction("not in this fake")

    async def continue_(self, upstream_id: str, params: Mapping[str, JSON]) -> Submission:
        raise UnsupportedAction("not in this fake")


@dataclass
class RecordingObserver:
    transitions: list[tuple[str, JobState, JobState]] = field(default_factory=list)
    anomalies: list[tuple[str, Refused]] = field(default_factory=list)
    finished_jobs: list[str] = field(default_factory=list)
    rate_limits: list[tuple[str, float]] = field(default_factory=list)
    circuit_changes: list[tuple[str, Circuit]] = field(default_factory=list)
    retry_afters: list[tuple[str, float]] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)

    def transition(self, provider: str, src: JobState, dst: JobState) -> None:
        self.transitions.append((provider, src, dst))

    def anomaly(self, provider: str, refused: Refused) -> None:
        self.anomalies.append((provider, refused))

    def finished(self, job: Job, now: datetime) -> None:
        self.finished_jobs.append(job.id)

    def rate_limited(self, provider: str, wait: float) -> None:
        self.rate_limits.append((provider, wait))

    def circuit(self, provider: str, circuit: Circuit) -> None:
        self.circuit_changes.append((provider, circuit))

    def retry_after(self, provider: str, seconds: float) -> None:
        self.retry_afters.append((provider, seconds))

    def callback_missed(self, provider: str) -> None:
        self.missed.append(provider)


@dataclass
class Harness:
    store: MemoryStore
    hub: EventHub
    clock: FakeClock
    adapters: dict[str, ScriptedAdapter]
    observer: RecordingObserver
    runner: Runner
    count: int = 0

    async def add(
        self,
        upstream_id: str,
        *steps: Step,
        provider: str = "a",
        state: JobState = Q,
        due_in: float = 0.0,
        deadline_in: float = 86_400.0,
        **changes: Any,
    ) -> Job:
        if steps:
            self.adapters[provider].script(upstream_id, *steps)
        self.count += 1
        now = self.clock.now
        job = Job(
            id=f"job_{self.count:04d}",
            provider=provider,
            upstream_id=upstream_id,
            state=state,
            created_at=now,
            updated_at=now,
            deadline_at=now + timedelta(seconds=deadline_in),
            next_poll_at=now + timedelta(seconds=due_in),
        )
        job = replace(job, **changes)
        await self.store.create(job, [NewEvent("created", job.public())])
        return job

    async def job(self, job_id: str) -> Job:
        job = await self.store.get(job_id)
        assert job is not None, f"{job_id} is gone"
        return job

    async def tick(self) -> int:
        claimed = await self.runner.step()
        await self.runner.drain()
        return claimed

    async def poll_next(self, job_id: str) -> Job:
        """Move the clocks to the job's next due time, run one tick and return the job."""
        due = (await self.job(job_id)).next_poll_at
        assert due is not None, "the job is no longer scheduled"
        self.clock.advance_to(due)
        assert await self.tick() >= 1
        return await self.job(job_id)

    async def events(self, job_id: str) -> list[Event]:
        return await self.store.events_after(0, job_id=job_id)

    async def kinds(self, job_id: str) -> list[str]:
        return [event.kind for event in await self.events(job_id)]


def build(
    *,
    policies: Mapping[str, PollPolicy] | None = None,
    batch: int = 500,
) -> Harness:
    policies = dict(policies or {"a": POLICY, "b": POLICY})
    clock = FakeClock()
    adapters = {name: ScriptedAdapter(name) for name in policies}
    store = MemoryStore()
    hub = EventHub()
    observer = RecordingObserver()
    runner = Runner(
        store,
        adapters,
        policies,
        hub,
        tick=TICK,
        batch=batch,
        clock=clock.wall,
        mono=clock.monotonic,
        rand=lambda: 0.5,
        observer=observer,
    )
    return Harness(store, hub, clock, adapters, observer, runner)


async def settle() -> None:
    """Let every started poll task run up to its first real suspension (a held gate)."""
    for _ in range(20):
        await asyncio.sleep(0)


def logged(logs: Sequence[EventDict], event: str) -> list[EventDict]:
    return [entry for entry in logs if entry["event"] == event]


# --------------------------------------------------------------------------------------------------
# A job's life


async def test_job_goes_queued_running_succeeded_with_events() -> None:
    h = build()
    result = ResultLocator(ResultKind.INLINE, inline={"answer": 42})
    job = await h.add(
        "u1",
        report(R, "processing", progress=Progress(fraction=0.3)),
        report(R, "processing", progress=Progress(fraction=0.6)),
        report(S, "done", progress=Progress(fraction=1.0), result=result),
    )

    assert await h.tick() == 1
    first = await h.job(job.id)
    assert first.state is R
    assert first.started_at == T0
    assert first.polls == 1
    assert first.next_poll_at == at(5)  # min_interval: it just changed

    second = await h.poll_next(job.id)
    assert second.progress.fraction == 0.6
    # 60% in 5 s: the ETA is 3.33 s out, so the next poll is at min_interval, not sooner.
    assert second.eta is not None
    assert abs((second.eta - at(5 + 5 * 0.4 / 0.6)).total_seconds()) < 1e-3
    assert second.next_poll_at == at(10)

    done = await h.poll_next(job.id)
    assert done.state is S
    assert done.native_status == "done"
    assert done.finished_at == at(10)
    assert done.next_poll_at is None
    assert done.eta is None
    assert done.result == result
    assert done.polls == 3

    events = await h.events(job.id)
    assert [event.kind for event in events] == ["created", "state", "progress", "state"]
    assert (events[1].data["from"], events[1].data["state"]) == ("queued", "running")
    assert events[2].data["progress"]["fraction"] == 0.6
    assert (events[3].data["from"], events[3].data["state"]) == ("running", "succeeded")
    assert events[3].state is S
    assert [event.id for event in events] == sorted(event.id for event in events)

    assert h.observer.transitions == [("a", Q, R), ("a", R, S)]
    assert h.observer.finished_jobs == [job.id]

    # Finished: never polled again, however long we wait.
    h.clock.advance(10 * 86_400)
    assert await h.tick() == 0
    assert h.adapters["a"].calls["u1"] == 3
    assert h.runner.status_calls == {"a": 3, "b": 0}


async def test_unchanged_polls_back_off() -> None:
    h = build()
    job = await h.add("u1", report(R))
    await h.tick()
    gaps = []
    for _ in range(5):
        before = h.clock.now
        polled = await h.poll_next(job.id)
        assert polled.next_poll_at is not None
        gaps.append((polled.next_poll_at - h.clock.now).total_seconds())
        assert h.clock.now > before
    assert gaps == [10.0, 20.0, 40.0, 60.0, 60.0]
    assert await h.kinds(job.id) == ["created", "state"]  # no event for a poll that saw nothing


async def test_eta_and_retry_after_shape_the_next_poll() -> None:
    h = build()
    eta_job = await h.add(
        "u1", report(R, progress=Progress(fraction=0.25)), state=R, started_at=at(-10)
    )
    hinted = await h.add("u2", report(R, hints=RateHints(retry_at=at(120))), state=R)
    await h.tick()
    polled = await h.job(eta_job.id)
    assert polled.eta is not None
    assert abs((polled.eta - at(30)).total_seconds()) < 1e-3  # 25% in 10 s
    assert polled.next_poll_at is not None
    assert abs((polled.next_poll_at - at(31.5)).total_seconds()) < 1e-3  # just past the ETA
    assert (await h.job(hinted.id)).next_poll_at == at(120)


async def test_continue_reopens_a_succeeded_job() -> None:
    h = build()
    job = await h.add(
        "u1",
        report(R, "enriching"),
        report(S, "completed"),
        state=S,
        started_at=at(-100),
        finished_at=at(-10),
        action=Action.CONTINUE,
    )
    await h.tick()
    running = await h.job(job.id)
    assert running.state is R
    assert running.finished_at is None
    assert running.action is None
    assert running.next_poll_at == at(5)
    done = await h.poll_next(job.id)
    assert done.state is S
    assert done.finished_at == at(5)


# --------------------------------------------------------------------------------------------------
# Anomalies


@pytest.mark.parametrize(
    ("observed", "native", "anomaly"),
    [
        (None, "reticulating", Anomaly.UNKNOWN_STATUS),
        (Q, "pending", Anomaly.BACKWARDS),
    ],
)
async def test_anomalous_report_keeps_state_is_logged_and_polling_continues(
    observed: JobState | None, native: str, anomaly: Anomaly
) -> None:
    h = build()
    job = await h.add(
        "u1",
        report(R, "processing"),
        report(observed, native),
        report(S, "done"),
    )
    await h.tick()
    events_before = await h.kinds(job.id)

    with capture_logs() as logs:
        odd = await h.poll_next(job.id)
    assert odd.state is R
    assert odd.native_status == native
    assert odd.polls == 2
    assert odd.next_poll_at is not None
    assert odd.next_poll_at > h.clock.now
    [entry] = logged(logs, "runner.anomaly")
    assert entry["log_level"] == "warning"
    assert entry["anomaly"] == anomaly.value
    assert entry["job_id"] == job.id
    assert entry["state"] == "running"
    assert native in entry["detail"]
    [(provider, refused)] = h.observer.anomalies
    assert provider == "a"
    assert refused.anomaly is anomaly
    assert await h.kinds(job.id) == events_before  # no state or progress event

    done = await h.poll_next(job.id)
    assert done.state is S
    assert h.adapters["a"].calls["u1"] == 3


async def test_a_refusal_is_logged_once_per_job_and_status_but_counted_every_time() -> None:
    h = build()
    job = await h.add(
        "u1",
        report(None, "reticulating"),
        report(None, "reticulating"),
        report(Q, "pending"),
        report(None, "reticulating"),
        report(Q, "pending"),
        report(R, "processing"),
        report(None, "reticulating"),  # after a report that applied: still not news
        state=R,
        started_at=at(-10),
    )
    # Another job with the same odd status gets its own line (provider "b" to tell them apart).
    other = await h.add("u2", report(None, "reticulating"), provider="b", state=R)

    with capture_logs() as logs:
        await h.tick()
        for _ in range(6):
            await h.poll_next(job.id)
    assert h.adapters["a"].calls["u1"] == 7
    assert h.adapters["b"].calls["u2"] >= 2
    lines = [
        (entry["job_id"], entry["anomaly"], entry["native_status"])
        for entry in logged(logs, "runner.anomaly")
    ]
    assert lines == [
        (job.id, "unknown_status", "reticulating"),
        (other.id, "unknown_status", "reticulating"),
        (job.id, "backwards", "pending"),
    ]
    # The metric counts every refused report: it is a rate, and a stuck job should show as one.
    counted = [refused.anomaly for name, refused in h.observer.anomalies if name == "a"]
    assert Counter(counted) == {Anomaly.UNKNOWN_STATUS: 4, Anomaly.BACKWARDS: 2}
    assert (await h.job(job.id)).anomalies == ("unknown_status:reticulating", "backwards:pending")

    # The memory is in the job's record: a restarted process (or another replica) does not log
    # the same refusal again.
    h.runner = Runner(
        h.store,
        h.adapters,
        {"a": POLICY, "b": POLICY},
        h.hub,
        tick=TICK,
        clock=h.clock.wall,
        mono=h.clock.monotonic,
        rand=lambda: 0.5,
        observer=h.observer,
    )
    with capture_logs() as logs:
        again = await h.poll_next(job.id)
    assert again.polls == 8
    assert logged(logs, "runner.anomaly") == []


async def test_a_refusal_that_repeats_backs_the_cadence_off_until_a_report_applies() -> None:
    h = build()
    odd = [report(None, "reticulating")] * 6
    job = await h.add(
        "u1", report(R, "processing"), *odd, report(R, "processing"), state=R, started_at=at(-1)
    )
    await h.tick()
    gaps = []
    for _ in range(7):
        polled = await h.poll_next(job.id)
        assert polled.next_poll_at is not None
        gaps.append((polled.next_poll_at - h.clock.now).total_seconds())
    # The first refusal keeps the cadence (20 s: the unchanged backoff); from the second the wait is
    # at least max_interval (60) and doubles up to error_max_interval (300). The report that
    # applies brings back the normal backoff, which had kept growing meanwhile (capped at 60).
    assert gaps == [20.0, 60.0, 120.0, 240.0, 300.0, 300.0, 60.0]


@pytest.mark.parametrize("state", [Q, R])
async def test_upstream_expiry_ends_an_unfinished_job_at_its_first_poll(state: JobState) -> None:
    # The job completed and was purged upstream while nothing polled it (an outage).
    h = build()
    job = await h.add("u1", report(E, "expired"), state=state)
    with capture_logs() as logs:
        assert await h.tick() == 1
    done = await h.job(job.id)
    assert (done.state, done.native_status, done.next_poll_at) == (E, "expired", None)
    assert done.finished_at == T0
    assert logged(logs, "runner.anomaly") == []
    assert h.observer.anomalies == []
    assert h.observer.transitions == [("a", state, E)]
    assert h.observer.finished_jobs == [job.id]
    assert await h.kinds(job.id) == ["created", "state"]
    h.clock.advance(10 * 86_400)  # past its deadline too: nothing is polled any more
    assert await h.tick() == 0
    assert h.adapters["a"].calls["u1"] == 1


# --------------------------------------------------------------------------------------------------
# Upstream faults


@pytest.mark.parametrize(
    "error",
    [
        UpstreamUnavailable("502 Bad Gateway", status=502),
        UpstreamUnavailable("read timeout"),
        MalformedResponse("body is not JSON", status=200),
        AuthRejected("key revoked", status=401),
        RequestRejected("bad id", status=400),
    ],
    ids=["5xx", "timeout", "malformed", "auth", "rejected"],
)
async def test_transient_fault_reschedules_with_backoff(error: Exception) -> None:
    h = build(policies={"a": NO_BREAKER})
    job = await h.add("u1", error, error, error, report(R, "processing"))
    with capture_logs() as logs:
        await h.tick()
    first = await h.job(job.id)
    assert first.state is Q
    assert first.failures == 1
    assert first.polls == 0
    assert first.next_poll_at == at(10)
    [entry] = logged(logs, "runner.upstream_error")
    assert entry["code"] == getattr(error, "code", None)
    assert entry["retry_in"] == 10.0

    second = await h.poll_next(job.id)
    assert (second.failures, second.next_poll_at) == (2, at(10 + 20))
    third = await h.poll_next(job.id)
    assert (third.failures, third.next_poll_at) == (3, at(30 + 40))

    recovered = await h.poll_next(job.id)
    assert recovered.state is R
    assert recovered.failures == 0
    assert await h.kinds(job.id) == ["created", "state"]
    assert h.adapters["a"].calls["u1"] == 4


async def test_error_backoff_is_capped_at_error_max_interval() -> None:
    h = build(policies={"a": NO_BREAKER})
    job = await h.add("u1", UpstreamUnavailable("down"))
    await h.tick()
    gaps = []
    for _ in range(7):
        polled = await h.poll_next(job.id)
        assert polled.next_poll_at is not None
        gaps.append((polled.next_poll_at - h.clock.now).total_seconds())
    assert gaps == [20.0, 40.0, 80.0, 160.0, 300.0, 300.0, 300.0]
    assert (await h.job(job.id)).state is Q  # never lost, never failed


async def test_rate_limited_waits_at_least_retry_after_and_does_not_trip_the_breaker() -> None:
    h = build()
    limited = RateLimited("slow down", retry_after=42.0, status=429)
    job = await h.add("u1", limited)
    await h.tick()
    polled = await h.job(job.id)
    assert polled.next_poll_at == at(42)
    assert polled.failures == 1
    assert h.observer.rate_limits == [("a", 42.0)]
    assert h.observer.retry_afters == [("a", 42.0)]
    assert h.observer.retry_afters == [("a", 42.0)]
    for _ in range(5):
        polled = await h.poll_next(job.id)
        # The one hint rule: never sooner than asked; the growing fault backoff may be later.
        assert polled.next_poll_at is not None
        assert polled.next_poll_at >= h.clock.now + timedelta(seconds=42)
        assert polled.cadence is not None
        assert polled.cadence.schedule == "retry"
    assert h.runner.circuits()["a"] == "closed"
    assert h.adapters["a"].calls["u1"] == 6


async def test_repeated_not_found_fails_the_job() -> None:
    h = build()
    job = await h.add("u1", NotFound("no such job", status=404))
    await h.tick()
    once = await h.job(job.id)
    assert (once.state, once.not_found, once.failures) == (Q, 1, 0)
    assert once.next_poll_at == at(10)
    twice = await h.poll_next(job.id)
    assert (twice.state, twice.not_found) == (Q, 2)

    gone = await h.poll_next(job.id)
    assert gone.state is F
    assert gone.error == JobError(
        "upstream_not_found", "the provider answered 404 for this job 3 times in a row"
    )
    assert gone.next_poll_at is None
    assert gone.finished_at == h.clock.now
    events = await h.events(job.id)
    assert [event.kind for event in events] == ["created", "state"]
    assert events[-1].data["error"] == {"code": "upstream_not_found", "message": gone.error.message}
    assert h.adapters["a"].calls["u1"] == POLICY.not_found_limit
    assert h.runner.circuits()["a"] == "closed"  # a 404 says nothing about the provider
    assert h.observer.transitions == [("a", Q, F)]
    assert h.observer.finished_jobs == [job.id]


async def test_not_found_must_be_consecutive() -> None:
    h = build()
    missing = NotFound("eventually consistent", status=404)
    job = await h.add("u1", missing, missing, report(R), missing, missing, report(R))
    for _ in range(6):
        await h.poll_next(job.id)
    final = await h.job(job.id)
    assert final.state is R
    assert final.not_found == 0


async def test_deadline_fails_the_job_without_an_upstream_call() -> None:
    h = build()
    job = await h.add("u1", report(R), deadline_in=60.0)
    h.clock.advance(61)
    with capture_logs() as logs:
        assert await h.tick() == 1
    failed = await h.job(job.id)
    assert failed.state is F
    assert failed.error is not None
    assert failed.error.code == "poll_deadline_exceeded"
    assert failed.next_poll_at is None
    assert failed.finished_at == at(61)
    assert h.adapters["a"].total == 0
    assert any(entry.get("code") == "poll_deadline_exceeded" for entry in logs)
    assert await h.kinds(job.id) == ["created", "state"]


async def test_a_job_of_an_unconfigured_provider_is_left_to_a_process_that_has_it() -> None:
    # A replica without the provider (a rolling deploy adding one) must not fail its jobs: it
    # never claims them, so a replica that has the provider polls them.
    h = build()
    job = await h.add("x1", provider="ghost")
    assert await h.tick() == 0
    untouched = await h.job(job.id)
    assert (untouched.state, untouched.version, untouched.next_poll_at) == (
        Q,
        job.version,
        job.next_poll_at,
    )
    assert sum(adapter.total for adapter in h.adapters.values()) == 0


async def test_adapter_crash_is_contained_and_the_job_rescheduled() -> None:
    h = build()
    crashing = await h.add("boom", RuntimeError("adapter bug"))
    fine = await h.add("ok", report(R))
    with capture_logs() as logs:
        assert await h.tick() == 2
    crashed = await h.job(crashing.id)
    assert crashed.state is Q
    assert crashed.failures == 1
    assert crashed.next_poll_at == at(POLICY.error_max_interval)
    assert (await h.job(fine.id)).state is R
    [entry] = logged(logs, "runner.poll_crashed")
    assert entry["job_id"] == crashing.id
    assert entry["log_level"] == "error"


# --------------------------------------------------------------------------------------------------
# Circuit breaker


async def open_circuit(h: Harness, count: int = 3) -> list[Job]:
    """Three jobs of provider ``a`` fail at once, which opens its circuit at T0."""
    adapter = h.adapters["a"]
    jobs = [await h.add(f"u{n}", report(R, "processing")) for n in range(count)]
    adapter.failing = UpstreamUnavailable("503", status=503)
    await h.tick()
    assert adapter.total == POLICY.breaker_threshold
    assert h.runner.circuits()["a"] == "open"
    return jobs


async def test_breaker_opens_and_stops_calls_until_cooldown_then_one_probe() -> None:
    h = build()
    adapter = h.adapters["a"]
    other = await h.add("v1", report(R), provider="b")
    with capture_logs() as logs:
        jobs = await open_circuit(h)
    assert h.observer.circuit_changes == [("a", Circuit.OPEN)]
    [entry] = logged(logs, "runner.circuit")
    assert (entry["provider"], entry["circuit"]) == ("a", "open")
    # The other provider's job went through in the same tick.
    assert (await h.job(other.id)).state is R
    assert h.runner.circuits() == {"a": "open", "b": "closed"}

    # During the cooldown: provider a's due jobs are not even claimed (no row rewritten every
    # tick, no lease taken that could not be used), while provider b keeps being polled.
    adapter.failing = None
    h.clock.advance(10)
    held = [await h.job(job.id) for job in jobs]
    assert await h.tick() == 1
    assert adapter.total == 3
    assert [await h.job(job.id) for job in jobs] == held
    assert all(job.failures == 1 for job in held)
    assert h.adapters["b"].calls["v1"] == 2

    # Cooldown over: exactly one probe is claimed and goes out; the others wait for its verdict.
    adapter.gate = asyncio.Event()
    h.clock.advance_to(at(30 + TICK))
    assert await h.runner.step() == 2  # one of provider a, and b's job
    await settle()
    assert adapter.total == 4
    assert h.runner.circuits()["a"] == "half_open"
    adapter.gate.set()
    await h.runner.drain()
    assert h.runner.circuits()["a"] == "closed"
    assert h.observer.circuit_changes[-1] == ("a", Circuit.CLOSED)
    states = [(await h.job(job.id)).state for job in jobs]
    assert sorted(states) == sorted([R, Q, Q])

    # Closed again: the two that waited are still due, and the next tick polls them.
    h.clock.advance(TICK)
    assert await h.tick() == 2
    assert adapter.total == 6
    assert all([(await h.job(job.id)).state is R for job in jobs])


async def test_failed_probe_reopens_the_circuit() -> None:
    h = build()
    adapter = h.adapters["a"]
    jobs = await open_circuit(h)

    adapter.gate = asyncio.Event()
    h.clock.advance(30)
    assert await h.runner.step() == 1  # one probe is claimed, the others stay due
    await settle()
    assert adapter.total == 4  # one probe...
    adapter.gate.set()
    await h.runner.drain()
    assert h.runner.circuits()["a"] == "open"  # ...which failed
    assert h.observer.circuit_changes == [
        ("a", Circuit.OPEN),
        ("a", Circuit.HALF_OPEN),  # the probe going out is reported too
        ("a", Circuit.OPEN),
    ]

    # A fresh cooldown from the failed probe: nothing goes out before it ends.
    adapter.failing = None
    h.clock.advance(29)
    await h.tick()
    assert adapter.total == 4

    adapter.gate = asyncio.Event()
    h.clock.advance(1 + TICK)
    await h.runner.step()
    await settle()
    assert adapter.total == 5
    adapter.gate.set()
    await h.runner.drain()
    assert h.runner.circuits()["a"] == "closed"
    h.clock.advance(300)
    await h.tick()
    assert all([(await h.job(job.id)).state is R for job in jobs])


async def test_a_crashing_probe_does_not_wedge_the_circuit() -> None:
    h = build()
    adapter = h.adapters["a"]
    jobs = await open_circuit(h)

    adapter.failing = RuntimeError("adapter bug on an odd body")
    h.clock.advance(30)
    await h.tick()
    assert adapter.total == 4  # the probe, which crashed

    # The provider recovers; after a cooldown another probe must be let through.
    adapter.failing = None
    for _ in range(4):
        h.clock.advance(POLICY.breaker_cooldown)
        await h.tick()
    assert h.runner.circuits()["a"] == "closed"
    assert adapter.total > 4
    h.clock.advance(POLICY.error_max_interval)
    await h.tick()
    assert all([(await h.job(job.id)).state is R for job in jobs])


async def test_one_providers_breaker_does_not_affect_another() -> None:
    h = build()
    b_jobs = [await h.add(f"v{n}", report(R), provider="b") for n in range(3)]
    await open_circuit(h)
    for _ in range(3):
        h.clock.advance(5)
        await h.tick()
    assert h.runner.circuits() == {"a": "open", "b": "closed"}
    assert h.adapters["a"].total == 3
    assert all(h.adapters["b"].calls[job.upstream_id] >= 3 for job in b_jobs)


async def test_not_found_and_rate_limits_do_not_open_the_circuit() -> None:
    h = build()
    for n in range(5):
        await h.add(f"n{n}", NotFound("gone", status=404))
        await h.add(f"r{n}", RateLimited("slow", retry_after=1.0, status=429))
    await h.tick()
    assert h.adapters["a"].total == 10
    assert h.runner.circuits()["a"] == "closed"


# --------------------------------------------------------------------------------------------------
# Store and scheduling


async def test_fenced_write_does_not_resurrect_a_deleted_job() -> None:
    h = build()
    adapter = h.adapters["a"]
    adapter.gate = asyncio.Event()
    job = await h.add("u1", report(S, "done"))
    assert await h.runner.step() == 1
    await settle()
    assert adapter.calls["u1"] == 1  # in flight

    assert await h.store.delete(job.id)
    adapter.gate.set()
    with capture_logs() as logs, h.hub.listen(job.id) as waiter:
        await h.runner.drain()
    assert await h.store.get(job.id) is None
    [entry] = logged(logs, "runner.write_fenced")
    assert entry["job_id"] == job.id
    assert await h.events(job.id) == []
    assert not waiter.is_set()
    assert h.observer.transitions == []

    h.clock.advance(86_400)
    assert await h.tick() == 0
    assert await h.store.next_due() is None
    assert adapter.calls["u1"] == 1


async def test_fenced_write_leaves_a_user_action_standing() -> None:
    h = build()
    adapter = h.adapters["a"]
    adapter.gate = asyncio.Event()
    job = await h.add("u1", report(R))
    await h.runner.step()
    await settle()

    # A user action writes while the poll is in flight (it read the leased version).
    leased = await h.job(job.id)
    mine = replace(leased, labels={"team": "x"}, next_poll_at=at(100), version=leased.version + 1)
    [saved] = await h.store.save_many([(mine, [])])
    assert saved is not None

    adapter.gate.set()
    await h.runner.drain()
    stored = await h.job(job.id)
    assert stored.version == mine.version
    assert stored.labels == {"team": "x"}
    assert stored.state is Q  # the runner's stale copy did not land
    assert stored.next_poll_at == at(100)

    polled = await h.poll_next(job.id)
    assert polled.state is R
    assert polled.labels == {"team": "x"}


async def test_batch_limit_bounds_claims_per_step() -> None:
    h = build(batch=2)
    adapter = h.adapters["a"]
    adapter.gate = asyncio.Event()
    jobs = [await h.add(f"u{n}", report(R)) for n in range(5)]

    assert await h.runner.step() == 2
    await settle()
    assert adapter.total == 2
    assert await h.runner.step() == 0  # both slots still in flight
    assert adapter.total == 2

    adapter.gate.set()
    await h.runner.drain()
    assert await h.tick() == 2
    assert await h.tick() == 1
    assert await h.tick() == 0
    assert sorted(adapter.calls.values()) == [1] * 5
    assert all([(await h.job(job.id)).state is R for job in jobs])


async def test_one_upstream_call_per_job_per_due_time_however_many_waiters() -> None:
    h = build()
    adapter = h.adapters["a"]
    adapter.gate = asyncio.Event()
    job = await h.add("u1", report(R))
    with contextlib.ExitStack() as stack:
        waiters = [stack.enter_context(h.hub.listen(job.id)) for _ in range(25)]
        everyone = stack.enter_context(h.hub.listen())
        assert h.hub.listeners == 26
        assert await h.runner.step() == 1
        for _ in range(5):
            assert await h.runner.step() == 0  # leased while in flight
        await settle()
        assert adapter.calls["u1"] == 1
        adapter.gate.set()
        await h.runner.drain()
        assert await h.tick() == 0  # same due time: nothing more
        assert adapter.calls["u1"] == 1
        assert all(waiter.is_set() for waiter in waiters)
        assert everyone.is_set()

    # The next due time brings exactly one more call.
    await h.poll_next(job.id)
    assert adapter.calls["u1"] == 2


async def test_hub_is_notified_on_changes_only() -> None:
    h = build()
    job = await h.add(
        "u1",
        report(R),
        report(R),
        report(R, progress=Progress(fraction=0.5)),
        report(S),
    )
    with h.hub.listen(job.id) as mine, h.hub.listen() as anyone:
        await h.tick()  # queued -> running
        assert mine.is_set()
        assert anyone.is_set()
        published = h.hub.last_id
        assert published == (await h.events(job.id))[-1].id
        mine.clear()
        anyone.clear()

        await h.poll_next(job.id)  # nothing changed
        assert not mine.is_set()
        assert not anyone.is_set()

        await h.poll_next(job.id)  # progress
        assert mine.is_set()
        mine.clear()

        await h.poll_next(job.id)  # succeeded
        assert mine.is_set()
        assert h.hub.last_id > published


async def test_hub_is_not_woken_for_another_job() -> None:
    h = build()
    job = await h.add("u1", report(R))
    other = await h.add("u2", report(Q), due_in=1000)
    with h.hub.listen(other.id) as theirs:
        await h.tick()
        assert (await h.job(job.id)).state is R
        assert not theirs.is_set()


async def test_claims_never_outrun_the_tokens() -> None:
    # A claimed job is polled at once: a claim takes a token for each job, and a job without one
    # stays due and untouched (it was once claimed, held waiting past its lease, claimed again
    # elsewhere, and its poll's answer fenced away).
    tight = replace(POLICY, burst=2, rate_per_second=10.0)
    h = build(policies={"a": tight})
    jobs = [await h.add(f"u{n}", report(R)) for n in range(5)]
    assert await h.tick() == 2
    assert h.adapters["a"].total == 2
    waiting = [await h.job(job.id) for job in jobs[2:]]
    assert all(job.version == 1 and job.state is Q for job in waiting)
    assert await h.tick() == 0  # no token has come back yet
    h.clock.advance(0.1)  # one token at 10/s
    assert await h.tick() == 1
    h.clock.advance(1.0)  # the bucket holds at most its burst
    assert await h.tick() == 2
    assert h.adapters["a"].total == 5
    assert all([(await h.job(job.id)).state is R for job in jobs])


async def test_claims_stay_within_the_concurrency_and_give_back_unused_tokens() -> None:
    narrow = replace(POLICY, concurrency=2, burst=3, rate_per_second=0.001)
    h = build(policies={"a": narrow})
    adapter = h.adapters["a"]
    adapter.gate = asyncio.Event()
    await h.add("u0", report(R))
    # One job due: the tokens granted for a second claim are given back, not lost.
    assert await h.runner.step() == 1
    await h.add("u1", report(R))
    await h.add("u2", report(R))
    assert await h.runner.step() == 1  # the concurrency has room for one more only
    assert await h.runner.step() == 0
    adapter.gate.set()
    await h.runner.drain()
    assert await h.tick() == 1  # the third token: given back at the first claim
    assert adapter.total == 3


async def test_run_survives_a_crashing_adapter_and_keeps_polling_others() -> None:
    h = build()
    runner = Runner(
        h.store,
        h.adapters,
        {"a": POLICY, "b": POLICY},
        h.hub,
        tick=0.001,
        clock=h.clock.wall,
        mono=h.clock.monotonic,
        rand=lambda: 0.5,
    )
    adapter = h.adapters["a"]
    crashing = await h.add("boom", RuntimeError("not an AdapterError"))
    # Each poll of the healthy job reports progress, so each one publishes an event to wait on.
    fine = await h.add("ok", *[report(R, progress=Progress(fraction=n / 10)) for n in (1, 2, 3)])

    with capture_logs() as logs, h.hub.listen(fine.id) as changed:

        async def polled(times: int) -> Job:
            async with asyncio.timeout(10):  # a safety net for a hang, not a timing assertion
                while (job := await h.job(fine.id)).polls < times:
                    await changed.wait()
                    changed.clear()
            return job

        task = asyncio.create_task(runner.run())
        try:
            job = await polled(1)
            assert job.state is R
            assert logged(logs, "runner.poll_crashed")
            # Time passes: the healthy job is due again and the same loop polls it again.
            for times in (2, 3):
                assert job.next_poll_at is not None
                h.clock.advance_to(job.next_poll_at)
                runner.wake()
                job = await polled(times)
            assert not task.done()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert adapter.calls["ok"] == 3
    assert adapter.calls["boom"] == 1  # its retry is error_max_interval away
    assert (await h.job(crashing.id)).failures == 1
