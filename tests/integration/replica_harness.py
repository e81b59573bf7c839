"""What ``test_replicas.py`` needs around real gateway processes: a recorder of the sandbox's
upstream traffic, the processes themselves (config, environment, logs, readiness, SIGKILL), SSE
clients that resume with ``Last-Event-ID``, and the arithmetic over what was recorded.

Nothing here asserts: the test reads the figures and decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from adapters.registry import PROVIDERS
from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]
STATUS_PATH = re.compile(r"^/pulse/job/(?P<id>[^/]+)$")
SUBMIT_PATHS = frozenset({"/pulse/extract", "/pulse/extract_async"})
FINISHED = frozenset({"succeeded", "failed", "canceled", "expired"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --------------------------------------------------------------------------------------------------
# The sandbox's side: every upstream request, who made it, and when


@dataclass
class UpstreamCall:
    method: str
    path: str
    kind: str
    """``submit`` (POST /pulse/extract[_async]), ``status`` (GET /pulse/job/{id}) or ``other``."""
    key: str
    """The ``x-api-key`` it carried: each replica has its own, so this names the caller."""
    upstream_id: str | None
    start: float
    """``time.monotonic()`` when the sandbox received it."""
    end: float = math.nan
    """When its handler returned (or was cancelled)."""
    status: int | None = None


@dataclass
class UpstreamRecorder:
    """A middleware for the sandbox's root app. Status calls answer after ``status_latency``
    seconds, as a real API's would, so that a poll holds its lease long enough to be seen."""

    status_latency: float = 0.0
    calls: list[UpstreamCall] = field(default_factory=list)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.monotonic()
        match = STATUS_PATH.match(request.path)
        if match and request.method == "GET":
            kind, upstream_id = "status", match["id"]
        elif request.method == "POST" and request.path in SUBMIT_PATHS:
            kind, upstream_id = "submit", None
        else:
            kind, upstream_id = "other", None
        call = UpstreamCall(
            request.method,
            request.path,
            kind,
            request.headers.get("x-api-key", ""),
            upstream_id,
            start,
        )
        self.calls.append(call)
        try:
            if kind == "status" and self.status_latency > 0:
                await asyncio.sleep(self.status_latency)
            response = await handler(request)
            call.status = response.status
            if kind == "submit" and isinstance(response, web.Response) and response.body:
                with contextlib.suppress(ValueError, TypeError):
                    body = orjson.loads(response.body)  # type: ignore[arg-type]
                    call.upstream_id = body.get("job_id")
            return response
        finally:
            call.end = time.monotonic()

    def of_kind(self, kind: str) -> list[UpstreamCall]:
        return [call for call in self.calls if call.kind == kind]


# --------------------------------------------------------------------------------------------------
# Gateway processes


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def to_toml(tables: Mapping[str, Mapping[str, Any]]) -> str:
    """``{"a.b": {"key": value}}`` as TOML tables (flat values only: enough for a config)."""
    lines: list[str] = []
    for name, values in tables.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
        lines.append("")
    return "\n".join(lines)


def replica_config(
    sandbox_url: str,
    *,
    tick_ms: int,
    lease_seconds: float,
    total_timeout: float,
    policy: Mapping[str, Any],
    pulse_policy: Mapping[str, Any],
    heartbeat: float,
    auth: Mapping[str, Any] | None = None,
) -> str:
    """The config file every replica shares: no keys, no DSN (those come from the environment).

    ``auth``: the ``[auth]`` table's values over the default (off, on loopback), e.g.
    ``{"required": True}``; the secret never goes in the file (``JOBGATE_AUTH__SECRET``)."""
    tables: dict[str, dict[str, Any]] = {
        "server": {"host": "127.0.0.1", "sse_heartbeat_seconds": heartbeat},
        "store": {"kind": "postgres"},
        "runner": {"tick_ms": tick_ms, "lease_seconds": lease_seconds},
        "sandbox": {"embedded": False},
        "log": {"format": "json", "level": "INFO"},
        # Open on loopback: these tests are about replicas, not keys (test_auth_replicas.py).
        "auth": {"required": False, **(auth or {})},
    }
    for name, spec in sorted(PROVIDERS.items()):
        tables[f"providers.{name}"] = {
            "base_url": sandbox_url + spec.prefix,
            "connect_timeout": min(1.0, total_timeout),
            "read_timeout": total_timeout,
            "total_timeout": total_timeout,
            "result_hosts": ["127.0.0.1"],
            "result_networks": ["127.0.0.1/32"],
        }
        tables[f"providers.{name}.policy"] = dict(pulse_policy if name == "pulse" else policy)
    return to_toml(tables)


@dataclass
class Replica:
    name: str
    port: int
    api_key: str
    process: subprocess.Popen[bytes]
    log_path: Path
    """stderr, where the JSON log lines go."""
    out_path: Path
    killed_at: float | None = None
    """``time.monotonic()`` just after the SIGKILL was sent."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.killed_at is None and self.process.poll() is None

    def kill(self) -> float:
        """SIGKILL: no hand-back, no goodbye. Returns the time it was sent."""
        os.kill(self.pid, signal.SIGKILL)
        self.killed_at = time.monotonic()
        return self.killed_at

    def log_events(self) -> list[dict[str, Any]]:
        """The JSON log lines (anything else on stderr, such as a traceback, is skipped)."""
        found: list[dict[str, Any]] = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    found.append(json.loads(line))
        return found

    def tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


def replica_env(
    dsn: str, schema: str, api_key: str, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """This environment without any ``JOBGATE_`` variable of its own, plus the store and keys."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBGATE_")}
    env.update(
        {
            "JOBGATE_STORE__KIND": "postgres",
            "JOBGATE_STORE__DSN": dsn,
            "JOBGATE_STORE__SCHEMA": schema,
            "PYTHONUNBUFFERED": "1",
        }
    )
    for name in PROVIDERS:
        env[f"JOBGATE_PROVIDERS__{name.upper()}__API_KEY"] = api_key
    env.update(extra or {})
    return env


def start_replica(
    name: str, config: Path, env: Mapping[str, str], api_key: str, *, attempt: int = 0
) -> Replica:
    port = free_port()
    suffix = f".{attempt}" if attempt else ""
    log_path = config.parent / f"{name}{suffix}.stderr.log"
    out_path = config.parent / f"{name}{suffix}.stdout.log"
    command = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)]
    command += ["--port", str(port)]
    with log_path.open("wb") as err, out_path.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env=dict(env), stdout=out, stderr=err, stdin=subprocess.DEVNULL
        )
    return Replica(name, port, api_key, process, log_path, out_path)


def run_jobgate(
    env: Mapping[str, str], *args: str, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """``jobgate <args>`` (e.g. ``keys --config FILE create ...``) as its own process, in the
    replicas' environment, for at most ``timeout`` seconds; its output as text."""
    command = [sys.executable, "-m", "gateway.cli", *args]
    return subprocess.run(
        command,
        cwd=ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


async def wait_ready(session: aiohttp.ClientSession, replica: Replica, within: float) -> None:
    """Until ``/readyz`` answers 200 (the store is open and migrated), for at most ``within`` s."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if replica.process.poll() is not None:
            raise AssertionError(f"{replica.name} exited at start-up:\n{replica.tail()}")
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            async with session.get(
                f"{replica.url}/readyz", timeout=aiohttp.ClientTimeout(total=2)
            ) as response:
                if response.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{replica.name} not ready after {within} s:\n{replica.tail()}")


async def launch(
    session: aiohttp.ClientSession,
    started: list[Replica],
    name: str,
    config: Path,
    env: Mapping[str, str],
    api_key: str,
    *,
    within: float,
) -> Replica:
    """Start a replica and wait until it is ready. Every process started is put in ``started``
    (the caller stops them all). A free port taken by someone else before the replica bound it
    is the one failure tried again, on another port."""
    for attempt in range(3):
        replica = start_replica(name, config, env, api_key, attempt=attempt)
        started.append(replica)
        try:
            await wait_ready(session, replica, within)
        except AssertionError:
            lost_port = "address already in use" in replica.tail().lower()
            if replica.process.poll() is None or not lost_port or attempt == 2:
                raise
            continue
        return replica
    raise AssertionError("unreachable")


async def stop_replicas(replicas: Iterable[Replica], grace: float = 10.0) -> None:
    """SIGTERM whatever still runs (a clean stop), SIGKILL after ``grace``; reap every one."""
    running = [r for r in replicas if r.process.poll() is None]
    for replica in running:
        with contextlib.suppress(ProcessLookupError):
            replica.process.terminate()
    deadline = time.monotonic() + grace
    for replica in running:
        left = max(0.0, deadline - time.monotonic())
        try:
            await asyncio.to_thread(replica.process.wait, left)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                replica.process.kill()
    for replica in replicas:
        await asyncio.to_thread(replica.process.wait)


# --------------------------------------------------------------------------------------------------
# SSE clients


@dataclass
class SseClient:
    """A client of ``GET /v1/events`` that, like ``EventSource``, reconnects with the id of the
    last complete event it received. Only complete events (ended by a blank line) count."""

    name: str
    session: aiohttp.ClientSession
    ids: list[int] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)
    connections: list[tuple[str, int]] = field(default_factory=list)
    """``(url, Last-Event-ID sent)`` for each connection made."""
    endings: list[str] = field(default_factory=list)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    received: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def last_id(self) -> int:
        return self.ids[-1] if self.ids else 0

    async def stream(self, url: str, after: int) -> str:
        """Read one connection until it ends; returns how it ended."""
        self.connections.append((url, after))
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=None)
        try:
            async with self.session.get(
                f"{url}/v1/events", headers={"Last-Event-ID": str(after)}, timeout=timeout
            ) as response:
                if response.status != 200:
                    return f"status {response.status}"
                self.connected.set()
                event_id: int | None = None
                kind = "message"
                async for raw in response.content:
                    line = raw.decode().rstrip("\r\n")
                    if not line:
                        if event_id is not None:
                            self.ids.append(event_id)
                            self.kinds[kind] += 1
                            self.received.set()
                        event_id, kind = None, "message"
                        continue
                    if line.startswith(":"):
                        continue  # a comment: keep-alive
                    name, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    if name == "id":
                        event_id = int(value)
                    elif name == "event":
                        kind = value
                return "eof"
        except (aiohttp.ClientError, OSError) as exc:
            return type(exc).__name__

    async def follow(self, pick: Callable[[], str]) -> None:
        """Stream from ``pick()``'s replica, reconnecting (to ``pick()`` again) whenever the
        connection ends, until cancelled."""
        while True:
            self.endings.append(await self.stream(pick(), self.last_id))
            await asyncio.sleep(0.05)

    async def until(self, last_id: int, within: float) -> bool:
        """Wait (``within`` seconds at most) until an event with id ``last_id`` or later has
        arrived."""
        deadline = time.monotonic() + within
        while self.last_id < last_id:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.received.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, 0.5)):
                    await self.received.wait()
        return True


def stream_gaps(received: Sequence[int], expected: Sequence[int]) -> dict[str, Any]:
    """How a client's ids compare with the log's: order, repeats, misses, extras."""
    counts = Counter(received)
    return {
        "received": len(received),
        "expected": len(expected),
        "increasing": all(a < b for a, b in itertools.pairwise(received)),
        "duplicates": sum(n - 1 for n in counts.values() if n > 1),
        "missing": sorted(set(expected) - set(received)),
        "unexpected": sorted(set(received) - set(expected)),
    }


# --------------------------------------------------------------------------------------------------
# Arithmetic over the recorded calls


def max_in_window(times: Iterable[float], window: float) -> int:
    """The most ``times`` falling in any half-open interval ``[t, t + window)``."""
    ordered = sorted(times)
    best = 0
    low = 0
    for high, moment in enumerate(ordered):
        while ordered[low] <= moment - window:
            low += 1
        best = max(best, high - low + 1)
    return best


def max_concurrent(intervals: Iterable[tuple[float, float]]) -> int:
    """The most intervals open at one instant (an end at the same time as a start closes first)."""
    listed = list(intervals)
    edges = sorted(
        [(start, 1) for start, _ in listed] + [(end, -1) for _, end in listed],
        key=lambda edge: (edge[0], edge[1]),
    )
    best = current = 0
    for _, step in edges:
        current += step
        best = max(best, current)
    return best


def bucket_excess(times: Iterable[float], rate: float) -> float:
    """The most calls in any window ``[a, b]`` beyond what ``rate`` refills in it: the maximum
    over ``i <= j`` of ``(j - i + 1) - rate * (t_j - t_i)``. A token bucket ``burst`` deep keeps
    this at or under ``burst``, at every window length at once."""
    best = 0.0
    low = math.inf  # the least ``i - rate * t_i`` so far
    for j, moment in enumerate(sorted(times)):
        low = min(low, j - rate * moment)
        best = max(best, j - rate * moment - low + 1)
    return best


def overlapping_pairs(calls: Sequence[UpstreamCall]) -> list[tuple[UpstreamCall, UpstreamCall]]:
    """Pairs of status calls for the same upstream job whose ``[start, end]`` intersect."""
    by_job: dict[str, list[UpstreamCall]] = {}
    for call in calls:
        if call.kind == "status" and call.upstream_id is not None:
            by_job.setdefault(call.upstream_id, []).append(call)
    pairs: list[tuple[UpstreamCall, UpstreamCall]] = []
    for job_calls in by_job.values():
        job_calls.sort(key=lambda c: c.start)
        for i, first in enumerate(job_calls):
            for second in job_calls[i + 1 :]:
                if second.start > first.end:
                    break  # sorted by start: no later call can meet ``first`` either
                pairs.append((first, second))
    return pairs
