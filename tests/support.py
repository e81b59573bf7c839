"""Helpers shared by test modules."""

from __future__ import annotations

import socket
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from gateway.callbacks import CallbackInbox
from gateway.jobs import Job
from gateway.runner import Runner
from gateway.states import JobState
from gateway.web.state import COMPONENTS_KEY


def bumped(job: Job, now: datetime, **changes: Any) -> Job:
    """The next version of ``job`` with any fields changed, ``state`` included.

    For store tests, which write rows as a store sees them: the gateway itself changes a job only
    through its typed changes and ``gateway.jobs.transition``.
    """
    return replace(job, updated_at=now, version=job.version + 1, **changes)


def public_job(**changes: Any) -> dict[str, Any]:
    """A job's body as the API renders it (the gateway's own ``Job.public()``), with ``changes``
    merged in (a dict merges into the dict it replaces): for client and CLI tests that need one
    without a gateway."""
    created = datetime(2026, 1, 2, 3, 2, 5, tzinfo=UTC)
    job = Job(
        id="job_1",
        provider="pulse",
        upstream_id="u1",
        state=JobState.RUNNING,
        created_at=created,
        updated_at=created,
        deadline_at=created + timedelta(days=1),
    )
    body: dict[str, Any] = dict(job.public())
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(body.get(key), dict):
            body[key] = {**body[key], **value}
        else:
            body[key] = value
    return body


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (for a server started in a subprocess)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def bound_socket(port: int = 0, *, reuse: bool = False) -> tuple[socket.socket, str]:
    """A socket bound on 127.0.0.1 (``port``, or any), and its base URL: for a gateway whose
    public URL must be in its settings before it serves. ``reuse`` binds a port another process
    has just left."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if reuse:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock, f"http://127.0.0.1:{sock.getsockname()[1]}"


class GatewayParts:
    """The running parts of a test gateway (``app``), by name: for the push tests' gateways."""

    app: web.Application

    @property
    def runner(self) -> Runner:
        runner = self.app[COMPONENTS_KEY].runner
        assert runner is not None
        return runner

    @property
    def inbox(self) -> CallbackInbox:
        inbox = self.app[COMPONENTS_KEY].callbacks
        assert inbox is not None
        return inbox
