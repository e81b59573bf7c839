"""The runner's cadence: it learns each provider's durations from the jobs it sees end, schedules
by them once enough have ended, says why on the job, and watches whether pushes arrive."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from adapters.base import Timestamps
from gateway.jobs import CALLBACK, Cadence, Job
from gateway.policy import PollPolicy
from gateway.runner import Runner
from gateway.states import JobState
from tests.unit.test_runner import POLICY, Harness, Q, R, S, build, report

LEARNING = replace(POLICY, min_jobs=3, target_lag=2.0, max_wait=600.0)


async def run_to_end(h: Harness, upstream_id: str, polls_running: int) -> Job:
    """A job that reports running ``polls_running`` times, then succeeded; polled to its end."""
    steps = [report(R, "running")] * polls_running + [report(S, "done")]
    # Submitted by jobgate (a request): it saw the job start, so its length can be learned.
    job = await h.add(upstream_id, *steps, request={"q": upstream_id})
    await h.tick()
    while (await h.job(job.id)).polling:
        await h.poll_next(job.id)
    return await h.job(job.id)


async def test_the_schedule_is_learned_once_min_jobs_have_ended() -> None:
    h = build(policies={"a": LEARNING})
    first = await h.add("u0", report(R, "running"))
    await h.tick()
    polled = await h.job(first.id)
    assert polled.cadence is not None
    assert polled.cadence.schedule == "guidance"
    assert polled.cadence.expected_lag == (polled.next_poll_at - h.clock.now).total_seconds() / 2
    assert h.runner.first_poll(probe(h))[1].schedule == "guidance"
    for n in range(3):
        await run_to_end(h, f"u{n + 1}", polls_running=2)
    # Each job was seen ending 15 s after it began (polls at 0, 5 and 15 s): the keeper learns
    # 10 s, the detection time less half the last wait.
    sketch = h.runner.cadence.sketch("a/")
    assert sketch.observed == 3
    median = sketch.quantile(0.5)
    assert median is not None
    assert 8 < median < 12
    delay, why = h.runner.first_poll(probe(h))
    assert why.schedule == "learned"
    assert delay > LEARNING.first_delay  # nothing ends in the first seconds: no poll spent there
    job = await h.add("u9", report(R, "running"))
    await h.tick()
    learned = await h.job(job.id)
    assert learned.cadence is not None
    assert learned.cadence.schedule == "learned"
    assert learned.public()["cadence"] == {
        "schedule": "learned",
        "expected_lag_seconds": round(learned.cadence.expected_lag, 3),
    }


async def test_a_policy_that_does_not_learn_keeps_the_guidance() -> None:
    h = build(policies={"a": replace(LEARNING, learn=False)})
    for n in range(4):
        await run_to_end(h, f"u{n}", polls_running=1)
    assert h.runner.cadence.sketch("a/").observed == 4
    assert h.runner.first_poll(probe(h))[1].schedule == "guidance"


async def test_the_learned_durations_reach_the_store_and_another_runner() -> None:
    h = build(policies={"a": LEARNING})
    for n in range(3):
        await run_to_end(h, f"u{n}", polls_running=1)
    await h.runner.cadence.flush()
    other = Runner(h.store, h.adapters, {"a": LEARNING}, h.hub, clock=h.clock.wall)
    await other.cadence.load()
    assert other.cadence.sketch("a/").observed == 3
    assert other.first_poll(probe(h))[1].schedule == "learned"


def probe(h: Harness) -> Job:
    """A new job of provider "a" with no request, as the service asks about before saving it."""
    now = h.clock.now
    return Job("job_new", "a", "u_new", Q, now, now, now + timedelta(days=1))


def pushing(h: Harness) -> None:
    h.runner.push_expected = lambda job: True


async def test_push_jobs_wait_at_the_slow_end_and_missed_pushes_restore_the_cadence() -> None:
    h = build(policies={"a": LEARNING})
    pushing(h)
    # A job that expects a push waits for the safety net from its first poll on.
    assert h.runner.first_poll(probe(h)) == (
        LEARNING.longest_wait,
        Cadence("push", LEARNING.longest_wait / 2),
    )
    job = await h.add("p0", report(R, "running"), report(S, "done"))
    await h.tick()
    waiting = await h.job(job.id)
    assert waiting.cadence == Cadence("push", LEARNING.longest_wait / 2)
    assert waiting.next_poll_at == h.clock.now + timedelta(seconds=LEARNING.longest_wait)
    # The job ends upstream and no callback comes: the safety net finds it. A miss.
    await h.poll_next(job.id)
    assert h.observer.missed == ["a"]
    assert h.runner.push_watch.trusted("a")  # one race is not a pattern
    second = await h.add("p1", report(R, "running"), report(S, "done"))
    await h.tick()
    await h.poll_next(second.id)
    assert h.observer.missed == ["a", "a"]
    assert not h.runner.push_watch.trusted("a")
    # Distrusted: the next job is polled at its normal cadence.
    third = await h.add("p2", report(R, "running"), report(S, "done"))
    await h.tick()
    normal = await h.job(third.id)
    assert normal.cadence is not None
    assert normal.cadence.schedule == "guidance"  # nothing learned: both ends were safety nets
    # A callback ends a job again: the provider is trusted again.
    await h.store.save_many([(normal.called_back(h.clock.now), [])])
    assert (await h.job(third.id)).cadence == Cadence(CALLBACK, 0.0)
    await h.tick()
    assert (await h.job(third.id)).finished
    assert h.runner.push_watch.trusted("a")
    assert h.observer.missed == ["a", "a"]


def test_policy_defaults_for_learning() -> None:
    policy = PollPolicy(min_interval=2.0, max_interval=30.0)
    assert policy.lag_goal == 2.0
    assert policy.longest_wait == 300.0


async def test_a_continuation_is_scheduled_from_its_continue_and_not_learned() -> None:
    h = build(policies={"a": LEARNING})
    done = await run_to_end(h, "c0", polls_running=1)
    assert h.runner.cadence.sketch("a/").observed == 1
    h.clock.advance(3600.0)
    h.adapters["a"].script("c0", report(R, "running"), report(S, "done"))
    await h.store.save_many([(done.continuing(h.clock.now), [])])
    await h.tick()
    reopened = await h.job(done.id)
    assert reopened.state is R
    assert reopened.continued_at == h.clock.now
    while (await h.job(done.id)).polling:
        await h.poll_next(done.id)
    # The hour before the continue is not a duration, and the continuation is not a whole job.
    assert h.runner.cadence.sketch("a/").observed == 1


async def test_a_cancel_is_neither_a_missed_push_nor_a_duration() -> None:
    h = build(policies={"a": LEARNING})
    pushing(h)
    job = await h.add("k0", report(R, "running"), request={"q": 1})
    await h.tick()
    waiting = await h.job(job.id)
    assert waiting.cadence is not None
    assert waiting.cadence.schedule == "push"
    # A client's cancel: the service makes the job due now to confirm it (due_now).
    h.adapters["a"].script("k0", report(JobState.CANCELED, "canceled"))
    await h.store.save_many([(waiting.due_now(h.clock.now), [])])
    assert (await h.job(job.id)).cadence is None
    await h.tick()
    assert (await h.job(job.id)).state is JobState.CANCELED
    assert h.observer.missed == []
    assert h.runner.cadence.sketch("a/").observed == 0


async def test_only_lengths_that_can_be_told_are_learned() -> None:
    h = build(policies={"a": LEARNING})
    # The provider's own times, but backwards (a clock gone wrong): nothing learned.
    backwards = Timestamps(created_at=h.clock.now, finished_at=h.clock.now - timedelta(hours=1))
    job = await h.add("t0", report(S, "done", times=backwards), request={"q": 1})
    await h.tick()
    assert (await h.job(job.id)).finished
    assert h.runner.cadence.sketch("a/").observed == 0
    # An adopted job (no request): jobgate did not see it start, and the provider gives no times.
    await run_to_end_adopted(h, "t1")
    assert h.runner.cadence.sketch("a/").observed == 0
    # Found ended by a safety-net poll: its wait says little of when the job ended.
    pushing(h)
    job = await h.add("t2", report(R, "running"), report(S, "done"), request={"q": 2})
    await h.tick()
    await h.poll_next(job.id)
    assert (await h.job(job.id)).finished
    assert h.runner.cadence.sketch("a/").observed == 0
    # The provider's own times, forwards: learned whatever the schedule.
    forwards = Timestamps(created_at=h.clock.now, finished_at=h.clock.now + timedelta(seconds=42))
    job = await h.add("t3", report(R, "running"), report(S, "done", times=forwards), request={})
    await h.tick()
    await h.poll_next(job.id)
    sketch = h.runner.cadence.sketch("a/")
    assert sketch.observed == 1
    median = sketch.quantile(0.5)
    assert median is not None
    assert 35 < median < 50


async def run_to_end_adopted(h: Harness, upstream_id: str) -> None:
    job = await h.add(upstream_id, report(R, "running"), report(S, "done"))
    await h.tick()
    while (await h.job(job.id)).polling:
        await h.poll_next(job.id)


async def test_a_callback_that_outruns_the_status_answer_falls_back_to_the_cadence() -> None:
    h = build(policies={"a": LEARNING})
    pushing(h)
    job = await h.add("s0", report(R, "running"), request={"q": 1})
    await h.tick()
    waiting = await h.job(job.id)
    # The provider's webhook says "completed", but its status answer still says running.
    await h.store.save_many([(waiting.called_back(h.clock.now), [])])
    await h.tick()
    lagging = await h.job(job.id)
    assert lagging.cadence is not None
    assert lagging.cadence.schedule == "guidance"  # not the safety net: no callback comes again
    assert lagging.next_poll_at is not None
    assert lagging.next_poll_at - h.clock.now < timedelta(seconds=LEARNING.longest_wait)
    # The poll after that, with no new callback, is the safety net's again.
    again = await h.poll_next(job.id)
    assert again.cadence is not None
    assert again.cadence.schedule == "push"
