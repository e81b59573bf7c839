"""Metrics, logs and request ids through a real stack; and a canary provider key that must never
reach a log line, an error body, a metric or a stored row."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from structlog.typing import EventDict, WrappedLogger

from adapters.sandboxes import create_sandbox_app
from adapters.simulator import SandboxSettings
from gateway.logs import configure_logging, stdlib_handler
from gateway.metrics import Metrics
from gateway.settings import AccessLog, load_settings
from gateway.web.observability import (
    REQUEST_ID_HEADER,
    echo_request_id,
    logged,
    observe_middleware,
    request_id_of,
)
from gateway.web.problems import MAX_BODY_KEY, problem_middleware
from gateway.web.state import COMPONENTS_KEY, Components
from tests.conftest import Serve
from tests.integration.conftest import Stack, StackFactory

pytestmark = pytest.mark.integration

CANARY = "canary-sk_ks_DO_NOT_LEAK_7f3a"
PROVIDERS = ("catchall", "extract", "pulse", "platform")


# -- helpers --------------------------------------------------------------------------------------


async def adopt(stack: Stack, provider: str, upstream_id: str) -> dict[str, Any]:
    async with stack.client.post(
        f"{stack.url}/v1/jobs", json={"provider": provider, "upstream_id": upstream_id}
    ) as response:
        body: dict[str, Any] = await response.json()
        assert response.status == 201, body
    return body


async def one_job_per_provider(stack: Stack) -> list[str]:
    """Submit (or adopt) one job per provider, wait for each to finish and read its result."""
    jobs = [
        await stack.submit("catchall", {"query": "observability in logistics", "limit": 10}),
        await stack.submit("extract", {"url": "https://example.com", "maxPages": 2}),
        await stack.submit("pulse", {"fileUrl": "https://example.com/r.pdf?sandbox=large"}),
        await adopt(stack, "platform", await stack.platform_job("document_processing", key=CANARY)),
    ]
    for job in jobs:
        done = await stack.until_finished(job["id"])
        assert done["state"] == "succeeded", done
        async with stack.client.get(f"{stack.url}/v1/jobs/{job['id']}/result") as response:
            assert response.status == 200
            await response.read()
    return [job["id"] for job in jobs]


async def scrape(stack: Stack) -> str:
    async with stack.client.get(f"{stack.url}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        return await response.text()


def samples(text: str) -> list[Sample]:
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def total(text: str, name: str, **labels: str) -> float:
    return sum(
        sample.value
        for sample in samples(text)
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def table_texts(db: Path) -> Iterator[tuple[str, str]]:
    """Every row of every table, as text, read with a connection of our own."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        tables = [
            name
            for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
        ]
        assert "jobs" in tables
        for table in tables:
            for row in connection.execute(f'SELECT * FROM "{table}"'):
                yield (
                    table,
                    " ".join(
                        value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
                        for value in row
                    ),
                )


class RawEvents:
    """A processor placed first in the real chain: it keeps each event as the code emitted it,
    before redaction, so a test can tell "never logged" from "logged and masked"."""

    def __init__(self) -> None:
        self.events: list[EventDict] = []

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        self.events.append(dict(event_dict))
        return event_dict


# -- the canary -----------------------------------------------------------------------------------


async def test_the_provider_key_never_leaks(
    make_stack: StackFactory, serve: Serve, tmp_path: Path
) -> None:
    out = io.StringIO()
    raw = RawEvents()
    configure_logging("json", "DEBUG", secrets=[CANARY], stream=out, stdlib=False, cache=False)
    structlog.configure(processors=[raw, *structlog.get_config()["processors"]])
    root = logging.getLogger()
    handler = stdlib_handler("json", [CANARY], out)
    root.addHandler(handler)
    try:
        stack = await make_stack(api_key=CANARY)
        job_ids = await one_job_per_provider(stack)

        # A gateway whose key the provider refuses: every upstream call is a 401.
        strict = create_sandbox_app(SandboxSettings(speed=400.0, api_keys=frozenset({"other"})))
        refused = await make_stack(
            api_key=CANARY, sandbox=(strict, await serve(strict)), db=tmp_path / "refused.db"
        )
        bodies: list[str] = []
        for provider, request in (
            ("extract", {"url": "https://example.com"}),
            ("pulse", {"fileUrl": "https://example.com/a.pdf"}),
            ("catchall", {"query": "anything"}),
        ):
            async with refused.client.post(
                f"{refused.url}/v1/jobs", json={"provider": provider, "request": request}
            ) as response:
                assert response.status >= 400
                bodies.append(await response.text())
        async with refused.client.post(
            f"{refused.url}/v1/jobs", json={"provider": "platform", "upstream_id": "job_x"}
        ) as response:
            assert response.status >= 400
            bodies.append(await response.text())
        codes = {json.loads(body)["code"] for body in bodies}
        assert codes == {"upstream_auth_rejected"}, bodies

        # Errors of the gateway's own making, with the job ids and routes around the key.
        first = job_ids[0]
        for method, path, payload in (
            ("GET", "/v1/jobs/job_nope", None),
            ("POST", f"/v1/jobs/{job_ids[1]}/cancel", None),
            ("POST", "/v1/jobs", {"provider": "nope", "request": {}}),
            ("POST", "/v1/jobs", {"provider": "extract", "request": {}, "extra": 1}),
            ("POST", "/v1/jobs", {"provider": "extract", "request": {"maxPages": "x"}}),
            ("GET", f"/v1/jobs/{first}?wait=abc", None),
            ("GET", "/no/such/route", None),
            ("PUT", f"/v1/jobs/{first}", None),
        ):
            async with stack.client.request(method, stack.url + path, json=payload) as response:
                assert response.status >= 400, (method, path)
                bodies.append(await response.text())
        for body in bodies:
            assert CANARY not in body

        # A deliberate leak: redaction must mask it in the output (and it is the only raw one).
        structlog.get_logger("probe").warning(
            "probe.leak",
            api_key=CANARY,
            note=f"upstream said Authorization: Bearer {CANARY}",
            nested={"X-Api-Key": CANARY, "detail": f"key {CANARY} rejected"},
        )
        logging.getLogger("probe.stdlib").warning("stdlib saw %s", CANARY)

        metrics_text = await scrape(stack) + await scrape(refused)
        assert CANARY not in metrics_text
        assert total(metrics_text, "jobgate_upstream_requests_total", outcome="auth_rejected") >= 4

        assert len(list(table_texts(tmp_path / "jobs.db"))) > len(job_ids)
        for db in (tmp_path / "jobs.db", tmp_path / "refused.db"):
            for table, text in table_texts(db):
                assert CANARY not in text, table
            for file in db.parent.glob(db.name + "*"):
                # The raw pages too (WAL included): a deleted row's bytes can outlive the row.
                assert CANARY.encode() not in file.read_bytes(), file
    finally:
        root.removeHandler(handler)
        structlog.reset_defaults()

    leaked = [event for event in raw.events if CANARY in repr(event)]
    assert [event["event"] for event in leaked] == ["probe.leak"]
    rendered = out.getvalue()
    assert CANARY not in rendered
    lines = [json.loads(line) for line in rendered.splitlines() if line.startswith("{")]
    probe = next(line for line in lines if line["event"] == "probe.leak")
    assert probe["api_key"] == "[REDACTED]"
    assert probe["nested"]["X-Api-Key"] == "[REDACTED]"
    assert "[REDACTED]" in probe["note"]
    assert "[REDACTED]" in probe["nested"]["detail"]
    assert any(line.get("event") == "stdlib saw [REDACTED]" for line in lines)
    # The chain is the real one: JSON lines with levels, timestamps and bound context.
    transitions = [line for line in lines if line["event"] == "job.transition"]
    assert {line["provider"] for line in transitions} == set(PROVIDERS)
    assert all({"job_id", "state", "timestamp", "level"} <= set(line) for line in transitions)
    requests = [line for line in lines if line["event"] == "http.request"]
    assert requests
    assert all(re.fullmatch(r"[0-9a-f]{32}", line["request_id"]) for line in requests)


# -- metrics --------------------------------------------------------------------------------------


async def test_metrics_after_a_job_life(make_stack: StackFactory) -> None:
    stack = await make_stack()
    job_ids = await one_job_per_provider(stack)
    text = await scrape(stack)

    for provider in PROVIDERS:
        moves = total(text, "jobgate_job_transitions_total", provider=provider, to="succeeded")
        assert moves == 1, provider
        assert total(text, "jobgate_job_polls_count", provider=provider) == 1
        assert total(text, "jobgate_job_polls_sum", provider=provider) >= 1
        assert total(text, "jobgate_job_duration_seconds_count", provider=provider) == 1
        assert (
            total(
                text,
                "jobgate_upstream_requests_total",
                provider=provider,
                operation="status",
                outcome="ok",
            )
            >= 1
        )
        assert total(text, "jobgate_jobs", provider=provider, state="succeeded") == 1
        assert total(text, "jobgate_circuit_state", provider=provider) == 0
    assert total(text, "jobgate_upstream_request_duration_seconds_count") >= 8

    # Routes are templates: the job ids never become label values.
    assert total(text, "jobgate_http_requests_total", route="/v1/jobs/{job_id}", status="200") > 0
    assert total(text, "jobgate_http_requests_total", route="/v1/jobs", method="POST") >= 3
    assert total(text, "jobgate_http_request_duration_seconds_count", route="/v1/jobs") >= 3
    for job_id in job_ids:
        assert job_id not in text
    async with stack.client.get(f"{stack.url}/v1/jobs/{job_ids[0]}/nothing/here") as response:
        assert response.status == 404
    text = await scrape(stack)
    assert total(text, "jobgate_http_requests_total", route="unmatched", status="404") == 1
    assert total(text, "jobgate_http_requests_total", route="/metrics", status="200") >= 1


async def test_upstream_errors_are_counted_by_outcome(make_stack: StackFactory) -> None:
    stack = await make_stack(faults=0.5, seed=3)
    jobs = [
        await stack.submit("pulse", {"fileUrl": f"https://example.com/{n}.pdf"}) for n in range(4)
    ]
    for job in jobs:
        assert (await stack.until_finished(job["id"]))["state"] == "succeeded"
    text = await scrape(stack)
    outcomes = {
        sample.labels["outcome"]
        for sample in samples(text)
        if sample.name == "jobgate_upstream_requests_total"
        and sample.labels["provider"] == "pulse"
        and sample.value > 0
    }
    assert "ok" in outcomes
    assert outcomes - {"ok"}, "half the status calls fault, so some outcome is an error"


# -- request ids ----------------------------------------------------------------------------------


async def test_request_id_is_echoed_or_generated(make_stack: StackFactory) -> None:
    stack = await make_stack(speed=1)
    url = f"{stack.url}/v1/jobs/job_missing"
    async with stack.client.get(url, headers={REQUEST_ID_HEADER: "trace-01.a_b"}) as response:
        assert response.status == 404
        assert response.content_type == "application/problem+json"
        assert response.headers[REQUEST_ID_HEADER] == "trace-01.a_b"
    generated = set()
    for bad in ("", "x" * 129, "has space", "new\\nline", "é"):
        headers = {REQUEST_ID_HEADER: bad} if bad else {}
        async with stack.client.get(f"{stack.url}/healthz", headers=headers) as response:
            assert response.status == 200
            echoed = response.headers[REQUEST_ID_HEADER]
        assert re.fullmatch(r"[0-9a-f]{32}", echoed), bad
        generated.add(echoed)
    assert len(generated) == 5
    async with stack.client.get(f"{stack.url}/metrics") as response:
        assert REQUEST_ID_HEADER in response.headers
    async with stack.client.post(
        f"{stack.url}/v1/jobs", data=b"{", headers={"Content-Type": "application/json"}
    ) as response:
        assert response.status == 400
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers[REQUEST_ID_HEADER])


async def test_request_ids_on_crashes_and_across_keep_alive(
    serve: Serve, http_session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """The gateway's middlewares on a small app: a crash still echoes the id, and a keep-alive
    connection (one task for all its requests) never carries one request's id into the next."""
    metrics = Metrics(process=False)
    app = web.Application(middlewares=[observe_middleware, problem_middleware])
    app.on_response_prepare.append(echo_request_id)
    app[COMPONENTS_KEY] = Components(settings=load_settings(tmp_path / "no.toml"), metrics=metrics)
    app[MAX_BODY_KEY] = 1024

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("a bug")

    async def context(request: web.Request) -> web.Response:
        return web.json_response(structlog.contextvars.get_contextvars())

    app.router.add_get("/boom", boom)
    app.router.add_get("/context/{name}", context)
    url = await serve(app)

    async with http_session.get(f"{url}/boom", headers={REQUEST_ID_HEADER: "crash-1"}) as response:
        assert response.status == 500
        assert response.headers[REQUEST_ID_HEADER] == "crash-1"
    async with http_session.get(f"{url}/context/a", headers={REQUEST_ID_HEADER: "first"}) as r:
        assert (await r.json()) == {"request_id": "first"}
    async with http_session.get(f"{url}/context/b") as response:
        second = await response.json()
    assert second["request_id"] != "first"
    assert second["request_id"] == response.headers[REQUEST_ID_HEADER]
    assert structlog.contextvars.get_contextvars() == {}

    text = metrics.render().decode()
    assert total(text, "jobgate_http_requests_total", route="/boom", status="500") == 1
    assert total(text, "jobgate_http_requests_total", route="/context/{name}", status="200") == 2


async def test_long_polls_and_streams_are_counted_but_not_timed(make_stack: StackFactory) -> None:
    stack = await make_stack(speed=50)
    job = await stack.submit("pulse", {"fileUrl": "https://example.com/?sandbox=slow"})
    route = "/v1/jobs/{job_id}"
    async with stack.client.get(f"{stack.url}/v1/jobs/{job['id']}") as response:
        assert response.status == 200
    async with stack.client.get(f"{stack.url}/v1/jobs/{job['id']}?wait=0.3") as response:
        assert response.status == 200
    async with stack.client.get(
        f"{stack.url}/v1/jobs/{job['id']}/events", timeout=aiohttp.ClientTimeout(total=0.5)
    ) as response:
        assert response.status == 200
        with contextlib.suppress(TimeoutError):
            await response.content.read()
    await asyncio.sleep(0.1)
    text = await scrape(stack)
    assert total(text, "jobgate_http_requests_total", method="GET", route=route) == 2
    # Only the plain read is in the latency histogram; the long poll waited by design.
    assert total(text, "jobgate_http_request_duration_seconds_count", route=route) == 1
    events = route + "/events"
    assert total(text, "jobgate_http_requests_total", route=events) == 1
    assert total(text, "jobgate_http_request_duration_seconds_count", route=events) == 0


@pytest.mark.parametrize(
    ("access", "method", "status", "seconds", "expected"),
    [
        ("all", "GET", 200, 0.001, True),
        ("reads", "GET", 200, 0.001, False),  # the bulk of a busy gateway's lines
        ("reads", "GET", 304, 0.001, False),
        ("reads", "GET", 404, 0.001, True),
        ("reads", "GET", 200, 2.0, True),  # slow: worth a line
        ("reads", "POST", 201, 0.001, True),
        ("reads", "DELETE", 204, 0.001, True),
        ("off", "POST", 500, 0.001, False),
    ],
)
def test_which_requests_get_an_access_log_line(
    access: AccessLog, method: str, status: int, seconds: float, expected: bool
) -> None:
    assert logged(access, method, status, seconds, slow=1.0) is expected


def test_made_request_ids_look_like_uuids_and_never_repeat() -> None:
    made = {request_id_of(make_mocked_request("GET", "/")) for _ in range(1000)}
    assert len(made) == 1000
    assert all(re.fullmatch(r"[0-9a-f]{32}", request_id) for request_id in made)
