"""``gateway.metrics``: each series, its labels, and the runner and adapters feeding it."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from adapters.base import RateLimited, Timestamps
from adapters.http import CallObserver
from gateway.events import EventHub
from gateway.jobs import Job
from gateway.metrics import HTTP_BUCKETS, Metrics
from gateway.policy import Circuit
from gateway.runner import Runner, RunnerObserver
from gateway.states import Anomaly, JobState, Refused
from gateway.store.base import NewEvent
from gateway.store.memory import MemoryStore
from tests.unit.test_runner import POLICY, T0, FakeClock, ScriptedAdapter, at, report

Q, R, S, F = JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED, JobState.FAILED


def value(metrics: Metrics, name: str, **labels: str) -> float:
    """One sample's value from the text exposition, 0 if the series is absent."""
    text = metrics.render().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def names(metrics: Metrics) -> set[str]:
    text = metrics.render().decode()
    return {family.name for family in text_string_to_metric_families(text)}


def job(**changes: object) -> Job:
    base = Job(
        id="job_1",
        provider="a",
        upstream_id="u1",
        state=S,
        created_at=T0,
        updated_at=T0,
        deadline_at=at(3600),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_it_satisfies_both_observer_protocols() -> None:
    metrics = Metrics(process=False)
    observer: RunnerObserver = metrics
    call: CallObserver = metrics.upstream_call
    assert observer is metrics
    assert call == metrics.upstream_call


def test_each_app_has_its_own_registry() -> None:
    one, two = Metrics(process=False), Metrics(process=False)
    one.transition("a", Q, R)
    assert (
        value(
            one, "jobgate_job_transitions_total", provider="a", **{"from": "queued"}, to="running"
        )
        == 1
    )
    assert (
        value(
            two, "jobgate_job_transitions_total", provider="a", **{"from": "queued"}, to="running"
        )
        == 0
    )


def test_every_jobgate_series_is_named_and_process_series_are_optional() -> None:
    bare = Metrics(process=False)
    expected = {
        "jobgate_jobs",
        "jobgate_job_transitions",
        "jobgate_job_anomalies",
        "jobgate_upstream_requests",
        "jobgate_upstream_request_duration_seconds",
        "jobgate_job_polls",
        "jobgate_job_duration_seconds",
        "jobgate_job_detection_lag_seconds",
        "jobgate_rate_limit_waits",
        "jobgate_push_missed",
        "jobgate_rate_limit_wait_seconds",
        "jobgate_upstream_retry_after_seconds",
        "jobgate_vault_captured_bytes",
        "jobgate_vault_captures",
        "jobgate_circuit_state",
        "jobgate_http_requests",
        "jobgate_http_request_duration_seconds",
        "jobgate_auth_rejections",
        "jobgate_tenant_limited",
    }
    assert names(bare) == expected


def test_the_tenant_label_names_configured_tenants_only() -> None:
    metrics = Metrics(process=False)
    metrics.add_tenants({"default", "growth"})
    metrics.limited("growth", "tenant_rate_limited")
    metrics.limited("made-up-by-a-cli", "tenant_rate_limited")
    metrics.limited("another-one", "tenant_active_limit")
    rate = "jobgate_tenant_limited_total"
    assert value(metrics, rate, tenant="growth", limit="tenant_rate_limited") == 1
    assert value(metrics, rate, tenant="other", limit="tenant_rate_limited") == 1
    assert value(metrics, rate, tenant="other", limit="tenant_active_limit") == 1
    # Created at zero for every configured tenant, so dashboards see them before a refusal.
    assert value(metrics, rate, tenant="default", limit="tenant_active_limit") == 0
    assert "process_cpu_seconds" in names(Metrics())


def test_providers_start_at_zero() -> None:
    metrics = Metrics(process=False)
    metrics.add_providers(["a", "b"])
    text = metrics.render().decode()
    assert 'jobgate_circuit_state{provider="b"} 0.0' in text
    assert 'jobgate_job_anomalies_total{kind="unknown_status",provider="a"} 0.0' in text
    assert 'jobgate_job_transitions_total{from="queued",provider="b",to="running"} 0.0' in text
    assert 'jobgate_job_polls_count{provider="a"} 0.0' in text
    assert 'jobgate_rate_limit_waits_total{provider="a"} 0.0' in text
    assert 'jobgate_jobs{provider="a",state="expired"} 0.0' in text
    assert "_created" not in text


def test_job_counts_replace_the_gauge() -> None:
    metrics = Metrics(process=False)
    metrics.add_providers(["a"])
    metrics.set_job_counts({("a", R): 3, ("b", Q): 1})
    assert value(metrics, "jobgate_jobs", provider="a", state="running") == 3
    assert value(metrics, "jobgate_jobs", provider="b", state="queued") == 1
    metrics.set_job_counts({("a", S): 3})
    assert value(metrics, "jobgate_jobs", provider="a", state="running") == 0
    assert value(metrics, "jobgate_jobs", provider="a", state="succeeded") == 3
    assert value(metrics, "jobgate_jobs", provider="b", state="queued") == 0


def test_upstream_calls_count_by_outcome_and_time_by_operation() -> None:
    metrics = Metrics(process=False)
    metrics.upstream_call("a", "status", "ok", 0.02)
    metrics.upstream_call("a", "status", "rate_limited", 0.004)
    metrics.upstream_call("a", "submit", "ok", 0.3)
    total = "jobgate_upstream_requests_total"
    assert value(metrics, total, provider="a", operation="status", outcome="ok") == 1
    assert value(metrics, total, provider="a", operation="status", outcome="rate_limited") == 1
    latency = "jobgate_upstream_request_duration_seconds"
    assert value(metrics, latency + "_count", provider="a", operation="status") == 2
    assert value(metrics, latency + "_bucket", provider="a", operation="status", le="0.005") == 1
    assert value(metrics, latency + "_bucket", provider="a", operation="submit", le="0.25") == 0
    assert value(metrics, latency + "_bucket", provider="a", operation="submit", le="0.5") == 1


def test_finished_observes_polls_duration_and_detection_lag() -> None:
    metrics = Metrics(process=False)
    metrics.finished(job(polls=7, finished_at=at(90), upstream_finished_at=at(88)), now=at(91))
    assert value(metrics, "jobgate_job_polls_sum", provider="a") == 7
    assert value(metrics, "jobgate_job_polls_bucket", provider="a", le="8.0") == 1
    assert value(metrics, "jobgate_job_polls_bucket", provider="a", le="5.0") == 0
    assert value(metrics, "jobgate_job_duration_seconds_sum", provider="a") == 90
    assert value(metrics, "jobgate_job_detection_lag_seconds_sum", provider="a") == 2
    # No provider finish time, or one after ours (skew): no lag is observed.
    metrics.finished(job(finished_at=at(10)), now=at(10))
    metrics.finished(job(finished_at=at(10), upstream_finished_at=at(11)), now=at(10))
    assert value(metrics, "jobgate_job_detection_lag_seconds_count", provider="a") == 1
    assert value(metrics, "jobgate_job_duration_seconds_count", provider="a") == 3
    # A finished job without a finish time (should not happen) is timed to ``now``.
    metrics.finished(job(finished_at=None), now=at(5))
    assert value(metrics, "jobgate_job_duration_seconds_sum", provider="a") == 90 + 10 + 10 + 5


def test_anomalies_rate_limits_and_circuits() -> None:
    metrics = Metrics(process=False)
    metrics.anomaly("a", Refused(Anomaly.UNKNOWN_STATUS, R, None, "weird"))
    metrics.anomaly("a", Refused(Anomaly.BACKWARDS, R, Q, "pending"))
    metrics.anomaly("a", Refused(Anomaly.BACKWARDS, R, Q, "pending"))
    assert value(metrics, "jobgate_job_anomalies_total", provider="a", kind="backwards") == 2
    assert value(metrics, "jobgate_job_anomalies_total", provider="a", kind="unknown_status") == 1

    metrics.rate_limited("a", 0.5)
    metrics.rate_limited("a", 42.0)
    metrics.retry_after("a", 42.0)
    assert value(metrics, "jobgate_rate_limit_waits_total", provider="a") == 2
    assert value(metrics, "jobgate_rate_limit_wait_seconds_sum", provider="a") == 42.5
    assert value(metrics, "jobgate_upstream_retry_after_seconds_count", provider="a") == 1

    for circuit, expected in ((Circuit.OPEN, 2), (Circuit.HALF_OPEN, 1), (Circuit.CLOSED, 0)):
        metrics.circuit("a", circuit)
        assert value(metrics, "jobgate_circuit_state", provider="a") == expected


def test_http_labels_are_bounded() -> None:
    metrics = Metrics(process=False)
    metrics.http_request("GET", "/v1/jobs/{job_id}", 200, 0.01)
    metrics.http_request("BREW", "unmatched", 405, 0.001)
    total = "jobgate_http_requests_total"
    assert value(metrics, total, method="GET", route="/v1/jobs/{job_id}", status="200") == 1
    assert value(metrics, total, method="OTHER", route="unmatched", status="405") == 1
    assert "BREW" not in metrics.render().decode()


async def test_the_runner_feeds_it() -> None:
    clock = FakeClock()
    adapter = ScriptedAdapter("a")
    store = MemoryStore()
    metrics = Metrics(process=False)
    metrics.add_providers(["a"])
    runner = Runner(
        store,
        {"a": adapter},
        {"a": POLICY},
        EventHub(),
        clock=clock.wall,
        mono=clock.monotonic,
        rand=lambda: 0.5,
        observer=metrics,
    )
    adapter.script(
        "u1",
        RateLimited("slow down", retry_after=7.0, status=429),
        report(R),
        report(None, "mystery"),
        report(S, times=Timestamps(finished_at=T0)),
    )
    created = job(state=Q, next_poll_at=T0)
    await store.create(created, [NewEvent("created", created.public())])
    for _ in range(4):
        polled = await store.get("job_1")
        assert polled is not None
        assert polled.next_poll_at is not None
        clock.advance_to(polled.next_poll_at)
        await runner.step()
        await runner.drain()
    done = await store.get("job_1")
    assert done is not None
    assert done.state is S
    transitions = "jobgate_job_transitions_total"
    assert value(metrics, transitions, provider="a", **{"from": "queued"}, to="running") == 1
    assert value(metrics, transitions, provider="a", **{"from": "running"}, to="succeeded") == 1
    assert value(metrics, "jobgate_job_anomalies_total", provider="a", kind="unknown_status") == 1
    assert value(metrics, "jobgate_upstream_retry_after_seconds_sum", provider="a") == 7
    assert value(metrics, "jobgate_job_polls_sum", provider="a") == done.polls
    lag = (clock.now - T0).total_seconds()
    assert lag > 0
    assert value(metrics, "jobgate_job_detection_lag_seconds_sum", provider="a") == lag
    assert value(metrics, "jobgate_job_duration_seconds_sum", provider="a") == lag
    assert done.finished_at == T0 + timedelta(seconds=lag)


def test_http_series_render_as_the_client_librarys_own_would() -> None:
    """The HTTP tally is plain numbers; scraped, it must read exactly like a Counter and a
    Histogram of the client library fed the same requests."""
    metrics = Metrics(process=False)
    registry = CollectorRegistry()
    counter = Counter(
        "jobgate_http_requests",
        "Requests served, by method, route template and status",
        ["method", "route", "status"],
        registry=registry,
    )
    histogram = Histogram(
        "jobgate_http_request_duration_seconds",
        "Time to serve a request; long polls (?wait) and SSE streams are not timed here",
        ["method", "route"],
        buckets=HTTP_BUCKETS,
        registry=registry,
    )
    served = [
        ("GET", "/v1/jobs/{job_id}", 200, 0.0004, True),
        ("GET", "/v1/jobs/{job_id}", 200, 0.005, True),  # on a bucket's bound: counted in it
        ("GET", "/v1/jobs/{job_id}", 304, 0.3, True),
        ("GET", "/v1/jobs/{job_id}", 200, 12.0, False),  # a long poll: counted, not timed
        ("POST", "/v1/jobs", 201, 200.0, True),  # past the last bound: +Inf only
        ("BREW", "unmatched", 405, -1.0, True),  # an odd method; a clock that went back
    ]
    for method, route, status, seconds, timed in served:
        metrics.http_request(method, route, status, seconds, timed=timed)
        label = method if method != "BREW" else "OTHER"
        counter.labels(label, route, str(status)).inc()
        if timed:
            histogram.labels(label, route).observe(max(0.0, seconds))

    def samples(text: str) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
        return {
            (sample.name, tuple(sorted(sample.labels.items())), sample.value)
            for family in text_string_to_metric_families(text)
            if family.name.startswith("jobgate_http_")
            for sample in family.samples
        }

    ours = samples(metrics.render().decode())
    theirs = samples(generate_latest(registry).decode())
    assert ours == theirs
    assert any(name.endswith("_bucket") for name, _, _ in ours)
