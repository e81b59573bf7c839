"""Prometheus metrics: one registry per app, fed by the runner, the adapters and the HTTP layer.

``Metrics`` implements the runner's ``RunnerObserver`` protocol and, through
:meth:`Metrics.upstream_call`, the adapters' ``CallObserver``. Every label value comes from a
bounded set: configured provider names, canonical states, adapter operation names, error codes,
route templates and HTTP status codes. A job id, an upstream id or a URL is never a label: each
would make a new time series per job and grow the scrape without bound.

Each app owns its ``CollectorRegistry`` rather than the process-wide default, so two apps in one
process (tests, or a gateway with embedded sandboxes) never share or double-register a series.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.utils import floatToGoString

from gateway.jobs import Job
from gateway.policy import Circuit
from gateway.states import TRANSITIONS, Anomaly, JobState, Refused

__all__ = ["CIRCUIT_VALUES", "CONTENT_TYPE_LATEST", "HTTP_METHODS", "Metrics"]

CIRCUIT_VALUES: dict[Circuit, int] = {Circuit.CLOSED: 0, Circuit.HALF_OPEN: 1, Circuit.OPEN: 2}
VAULT_OUTCOMES = ("stored", "failed", "gave_up", "retired")
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""Methods kept as label values; a client can send any token, so the rest become ``OTHER``."""

# Buckets are chosen for the quantity each histogram measures, from the sandbox's sub-second jobs to
# real providers' hours-long ones; quantiles are only as fine as the buckets around them.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
POLL_BUCKETS = (1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987)
DURATION_BUCKETS = (
    0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800,
)  # fmt: skip
LAG_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class Metrics:
    """Every jobgate series, registered in this instance's own registry."""

    def __init__(self, *, process: bool = True) -> None:
        # A ``_created`` timestamp per series doubles the scrape for nothing a dashboard uses.
        # The switch is process-wide in prometheus_client; every registry here wants it off.
        disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated upstream
        self.registry = CollectorRegistry()
        registry = self.registry
        self._providers: set[str] = set()
        if process:
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)

        self.jobs = Gauge(
            "jobgate_jobs",
            "Tracked jobs by provider and canonical state (read from the store at each scrape)",
            ["provider", "state"],
            registry=registry,
        )
        self.transitions = Counter(
            "jobgate_job_transitions",
            "Canonical state changes applied by the runner",
            ["provider", "from", "to"],
            registry=registry,
        )
        self.anomalies = Counter(
            "jobgate_job_anomalies",
            "Upstream reports not applied (unknown native statuses, backwards or illegal moves), "
            "every one: the log line is written once per job and distinct status",
            ["provider", "kind"],
            registry=registry,
        )
        self.upstream_requests = Counter(
            "jobgate_upstream_requests",
            "Calls to a provider's API by operation and outcome (ok, or the error code)",
            ["provider", "operation", "outcome"],
            registry=registry,
        )
        self.upstream_latency = Histogram(
            "jobgate_upstream_request_duration_seconds",
            "Latency of calls to a provider's API, whatever their outcome",
            ["provider", "operation"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.polls = Histogram(
            "jobgate_job_polls",
            "Status polls a job took, observed when it finishes",
            ["provider"],
            buckets=POLL_BUCKETS,
            registry=registry,
        )
        self.time_to_terminal = Histogram(
            "jobgate_job_duration_seconds",
            "From the job's creation in jobgate (submit or adopt) to a finished state",
            ["provider"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.detection_lag = Histogram(
            "jobgate_job_detection_lag_seconds",
            "From the provider's own finish time to jobgate noticing it (where the provider "
            "reports one)",
            ["provider"],
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self.rate_limit_waits = Counter(
            "jobgate_rate_limit_waits",
            "Times a provider's 429 made a job wait (quota tokens are spent at claim time)",
            ["provider"],
            registry=registry,
        )
        self.push_missed = Counter(
            "jobgate_push_missed",
            "Jobs of a pushing provider seen ending by a safety-net poll, without a callback",
            ["provider"],
            registry=registry,
        )
        self.rate_limit_wait_seconds = Histogram(
            "jobgate_rate_limit_wait_seconds",
            "How long each rate-limit wait was",
            ["provider"],
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self.retry_after_seconds = Histogram(
            "jobgate_upstream_retry_after_seconds",
            "The wait a provider's 429 asked for (Retry-After, else X-RateLimit-Reset; 0 if "
            "neither)",
            ["provider"],
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self.circuit_state = Gauge(
            "jobgate_circuit_state",
            "Each provider's circuit breaker: 0 closed, 1 half-open, 2 open",
            ["provider"],
            registry=registry,
        )
        self.http = HttpTally()
        self._upstream_children: dict[tuple[str, str, str], tuple[Counter, Histogram]] = {}
        registry.register(self.http)

        self.auth_rejections = Counter(
            "jobgate_auth_rejections",
            "Requests refused for their credential, by reason (auth_required, invalid_key, "
            "key_expired, key_revoked, invalid_stream_token)",
            ["reason"],
            registry=registry,
        )
        self.tenant_limited = Counter(
            "jobgate_tenant_limited",
            "Job creations refused for a tenant limit. The tenant label holds configured tenants "
            "only (limits.tenants, auth.keys, default); any other is counted as 'other'",
            ["tenant", "limit"],
            registry=registry,
        )
        self.vault_captures = Counter(
            "jobgate_vault_captures",
            "Result captures into the vault by outcome: stored, failed (retried later), gave_up "
            "(no more attempts), retired (a copy deleted at the end of its retention)",
            ["provider", "outcome"],
            registry=registry,
        )
        self.vault_bytes = Counter(
            "jobgate_vault_captured_bytes",
            "Bytes written to the vault by captures that were stored",
            ["provider"],
            registry=registry,
        )
        self._tenants: frozenset[str] = frozenset()

    # -- set-up and scrape ---------------------------------------------------------------------

    def add_tenants(self, names: Iterable[str]) -> None:
        """The tenants a label may name: configured ones, so the series stay bounded."""
        self._tenants = frozenset(names)
        for name in self._tenants:
            for limit in ("tenant_rate_limited", "tenant_active_limit"):
                self.tenant_limited.labels(name, limit)

    def limited(self, tenant: str, limit: str) -> None:
        label = tenant if tenant in self._tenants else "other"
        self.tenant_limited.labels(label, limit).inc()

    def vault(self, provider: str, outcome: str, size: int = 0) -> None:
        self.vault_captures.labels(provider, outcome).inc()
        if size:
            self.vault_bytes.labels(provider).inc(size)

    def auth_rejected(self, reason: str) -> None:
        self.auth_rejections.labels(reason).inc()

    def add_providers(self, names: Iterable[str]) -> None:
        """Create each provider's series at zero, so rates and dashboards see them before any
        event (an absent series is not a zero in PromQL)."""
        for name in names:
            self._providers.add(name)
            self.circuit_state.labels(name).set(CIRCUIT_VALUES[Circuit.CLOSED])
            self.rate_limit_waits.labels(name)
            self.push_missed.labels(name)
            self.rate_limit_wait_seconds.labels(name)
            self.retry_after_seconds.labels(name)
            self.polls.labels(name)
            self.time_to_terminal.labels(name)
            self.detection_lag.labels(name)
            self.vault_bytes.labels(name)
            for outcome in VAULT_OUTCOMES:
                self.vault_captures.labels(name, outcome)
            for kind in Anomaly:
                self.anomalies.labels(name, kind.value)
            for src, targets in TRANSITIONS.items():
                for dst in targets:
                    self.transitions.labels(name, src.value, dst.value)
            for state in JobState:
                self.jobs.labels(name, state.value).set(0)

    def set_job_counts(self, counts: Mapping[tuple[str, JobState], int]) -> None:
        """Replace the jobs gauge with the store's counts; a state with no jobs reads 0."""
        # A provider seen once stays listed, so its series drop to 0 rather than go stale.
        self._providers.update(provider for provider, _ in counts)
        for provider in self._providers:
            for state in JobState:
                self.jobs.labels(provider, state.value).set(counts.get((provider, state), 0))

    def render(self) -> bytes:
        """The text exposition of every series in this registry."""
        return generate_latest(self.registry)

    # -- adapters.http.CallObserver ------------------------------------------------------------

    def upstream_call(self, provider: str, operation: str, outcome: str, seconds: float) -> None:
        key = (provider, operation, outcome)
        children = self._upstream_children.get(key)
        if children is None:
            # Bound once: a label lookup per poll was a measurable part of a poll's CPU. The
            # labels are configured providers, a fixed set of operations and outcomes.
            children = self._upstream_children[key] = (
                self.upstream_requests.labels(provider, operation, outcome),
                self.upstream_latency.labels(provider, operation),
            )
        children[0].inc()
        children[1].observe(max(0.0, seconds))

    # -- gateway.runner.RunnerObserver ---------------------------------------------------------

    def transition(self, provider: str, src: JobState, dst: JobState) -> None:
        self.transitions.labels(provider, src.value, dst.value).inc()

    def anomaly(self, provider: str, refused: Refused) -> None:
        self.anomalies.labels(provider, refused.anomaly.value).inc()

    def finished(self, job: Job, now: datetime) -> None:
        finished_at = job.finished_at or now
        self.polls.labels(job.provider).observe(job.polls)
        self.time_to_terminal.labels(job.provider).observe(
            max(0.0, (finished_at - job.created_at).total_seconds())
        )
        if job.finished_at is not None and job.upstream_finished_at is not None:
            lag = (job.finished_at - job.upstream_finished_at).total_seconds()
            # A negative lag is clock skew between the provider and us, not a measurement.
            if lag >= 0:
                self.detection_lag.labels(job.provider).observe(lag)

    def rate_limited(self, provider: str, wait: float) -> None:
        self.rate_limit_waits.labels(provider).inc()
        self.rate_limit_wait_seconds.labels(provider).observe(max(0.0, wait))

    def callback_missed(self, provider: str) -> None:
        self.push_missed.labels(provider).inc()

    def retry_after(self, provider: str, seconds: float) -> None:
        self.retry_after_seconds.labels(provider).observe(max(0.0, seconds))

    def circuit(self, provider: str, circuit: Circuit) -> None:
        self.circuit_state.labels(provider).set(CIRCUIT_VALUES[circuit])

    # -- the HTTP server -----------------------------------------------------------------------

    def http_request(
        self, method: str, route: str, status: int, seconds: float, *, timed: bool = True
    ) -> None:
        self.http.add(method, route, status, seconds, timed=timed)


_HTTP_BOUNDS = [floatToGoString(bound) for bound in (*HTTP_BUCKETS, math.inf)]  # type: ignore[no-untyped-call]
"""The buckets' ``le`` labels, written as the client library writes them."""


class HttpTally:
    """``jobgate_http_requests_total`` and ``jobgate_http_request_duration_seconds`` as plain
    numbers, made into Prometheus families only when scraped.

    Every request adds to them, so they are the one hot path of the metrics: a dict lookup and
    two additions here, where a client library child takes a lock per update and a histogram
    walks its buckets. Only the event loop writes them, and the scrape reads them on it too.
    """

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, int], int] = {}
        self.timings: dict[tuple[str, str], list[float]] = {}
        """Per (method, route): a count per bucket (the last one +Inf), then the sum."""

    def add(self, method: str, route: str, status: int, seconds: float, *, timed: bool) -> None:
        if method not in HTTP_METHODS:
            method = "OTHER"
        key = (method, route, status)
        self.counts[key] = self.counts.get(key, 0) + 1
        if timed:
            timing = self.timings.get((method, route))
            if timing is None:
                timing = self.timings[(method, route)] = [0.0] * (len(HTTP_BUCKETS) + 2)
            seconds = max(0.0, seconds)
            timing[bisect_left(HTTP_BUCKETS, seconds)] += 1
            timing[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "jobgate_http_requests",
            "Requests served, by method, route template and status",
            labels=["method", "route", "status"],
        )
        for (method, route, status), count in self.counts.items():
            requests.add_metric([method, route, str(status)], count)
        yield requests
        latency = HistogramMetricFamily(
            "jobgate_http_request_duration_seconds",
            "Time to serve a request; long polls (?wait) and SSE streams are not timed here",
            labels=["method", "route"],
        )
        for (method, route), timing in self.timings.items():
            below = 0.0
            buckets: list[tuple[str, float]] = []
            for bound, times in zip(_HTTP_BOUNDS, timing[:-1], strict=True):
                below += times
                buckets.append((bound, below))
            latency.add_metric([method, route], buckets, sum_value=timing[-1])
        yield latency
