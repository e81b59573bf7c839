"""Kill run: keyed submits and adopts through a gateway SIGKILLed while submits are in flight.

    python bench/bench_kill.py [--intents 200] [--kills 4] [--seed 8] [--speed 100]
                               [--latency 0.15] [--spread 24] [--timeout 150] [--dir DIR]

The four sandboxes run in this process behind a middleware that delays every submit's answer by
up to ``--latency`` seconds (after the provider made the job), so submits are in flight long
enough for a kill to land among them. One ``jobgate serve`` process runs on a SQLite file; it is
SIGKILLed ``--kills`` times, each at a seeded random moment once a submit is in flight, and
started again on the same file and port at once (the sandbox keeps running).

``--intents`` clients start over ``--spread`` seconds, a quarter each of catchall submit, pulse
submit, extract submit and platform adopt (the platform job is made first through the sandbox's
side door). Each has its own Idempotency-Key and a marker in its request, so every upstream job
maps back to one intent. A client repeats its same request with its same key (backing off,
honouring Retry-After; at most ``MAX_ATTEMPTS`` times) until it gets a final answer: 201, or a
4xx other than 409 ``idempotency_key_in_flight`` and 429.

At the end every key is sent once more (a replay must answer the same), the gateway's jobs are
listed, and per provider it prints: intents, 201s, ``idempotency_outcome_unknown`` answers,
stuck keys (409 in flight at the end), upstream jobs made, orphans (upstream jobs no gateway job
tracks; those of outcome-unknown intents apart: pulse and extract cannot be asked whether a lost
call made a job, and the client was told so), lost jobs (a 201's job the gateway no longer has),
duplicates (an intent with more than one upstream job or gateway job), then the kills and the
wall time. Prints figures; asserts nothing. Exit status 1 if some client had no final answer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import processes  # bench/ is sys.path[0]
from aiohttp import web
from processes import free_port, spawn_serve, to_toml

from adapters.catchall import sandbox as catchall_sandbox
from adapters.extract import sandbox as extract_sandbox
from adapters.platform import sandbox as platform_sandbox
from adapters.pulse import sandbox as pulse_sandbox
from adapters.registry import PROVIDERS
from adapters.sandboxes import SUBAPPS_KEY, create_sandbox_app
from adapters.simulator import SandboxSettings
from gateway.logs import configure_logging

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
KINDS: Final = ("catchall", "pulse", "extract", "platform")
API_KEY: Final = "bench-kill-key"
SUBMIT_PATHS: Final = {
    "/catchall/catchAll/submit": "catchall",
    "/pulse/extract": "pulse",
    "/extract/v1/extract/async": "extract",
}
"""Where each adapter's submit lands on the combined sandbox."""
SIDE_DOOR: Final = "/platform/v1/api/sandbox/jobs"
MARKER: Final = re.compile(r"intent-(\d+)-")
FINISHED: Final = frozenset({"succeeded", "failed", "canceled", "expired"})
IN_FLIGHT: Final = "idempotency_key_in_flight"
UNKNOWN: Final = "idempotency_outcome_unknown"
RETRY_STATUSES: Final = frozenset({429, 502, 503, 504})
"""Answers that ask for the same request again later (with Retry-After where the gateway has
one): the key was freed, or the outcome is being reconciled."""
MAX_ATTEMPTS: Final = 60
START_WITHIN: Final = 30.0
"""How long a gateway may take to answer /readyz."""
REQUEST_TIMEOUT: Final = 20.0
TOTAL_TIMEOUT: Final = 3.0
"""Providers' total_timeout in the gateway: the key lease below must exceed it."""
KEY_LEASE: Final = 6.0
"""store.idempotency_lease_seconds. Short, so that a 409 in flight (a retry meeting the start-up
sweep) sends its client away for seconds, not two minutes; it exceeds every provider call."""
SETTLE: Final = 30.0
"""After the last answer, how long tracked jobs may take to finish before the states are read."""
POLICY: Final[dict[str, Any]] = {
    "first_delay": 0.2,
    "min_interval": 0.2,
    "max_interval": 1.0,
    "multiplier": 1.5,
    "deadline": 600,
    "error_max_interval": 1.0,
    "breaker_cooldown": 0.5,
    "rate_per_second": 100,
    "burst": 50,
}


# --------------------------------------------------------------------------------------------------
# The sandbox's side


@dataclass
class Recorder:
    """A middleware for the sandbox's root app: every submit waits a little before the provider
    reads it and up to ``latency`` seconds after the provider made the job, as a remote API's
    answer would, and is counted while it is in flight."""

    latency: float
    rng: random.Random
    arriving: int = 0
    """Submits received that the provider has not run yet."""
    answering: int = 0
    """Submits the provider ran whose answer is not sent yet: a kill now loses a made job."""
    received: Counter[str] = field(default_factory=Counter)
    made: Counter[str] = field(default_factory=Counter)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def in_flight(self) -> int:
        return self.arriving + self.answering

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        provider = SUBMIT_PATHS.get(request.path) if request.method == "POST" else None
        if provider is None:
            return await handler(request)
        self.received[provider] += 1
        self.arriving += 1
        self.changed.set()
        try:
            await asyncio.sleep(self.rng.uniform(0.0, self.latency / 5))
        finally:
            self.arriving -= 1
        response = await handler(request)
        if 200 <= response.status < 300:
            self.made[provider] += 1
        self.answering += 1
        try:
            await asyncio.sleep(self.rng.uniform(self.latency / 2, self.latency))
        finally:
            self.answering -= 1
        return response

    async def until_in_flight(self, within: float) -> bool:
        deadline = time.monotonic() + within
        while self.in_flight == 0:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self.changed.wait()
        return True


def upstream_jobs(sandbox: web.Application) -> dict[str, dict[str, int | None]]:
    """Every upstream job by provider: its id and the intent its request names (``None`` if it
    names none)."""
    subapps = sandbox[SUBAPPS_KEY]
    texts: dict[str, dict[str, str]] = {
        "catchall": {
            job_id: job.query
            for job_id, job in subapps["catchall"][catchall_sandbox.JOBS_KEY].jobs.items()
        },
        "pulse": {
            job_id: job.source
            for job_id, job in subapps["pulse"][pulse_sandbox.JOBS_KEY].jobs.items()
        },
        "extract": {
            job_id: job.request.url
            for job_id, job in subapps["extract"][extract_sandbox.JOBS_KEY].jobs.items()
        },
        "platform": {
            job_id: json.dumps(job.input)
            for job_id, job in subapps["platform"][platform_sandbox.JOBS_KEY].jobs.items()
        },
    }
    found: dict[str, dict[str, int | None]] = {}
    for provider, by_id in texts.items():
        found[provider] = {}
        for job_id, text in by_id.items():
            match = MARKER.search(text)
            found[provider][job_id] = int(match[1]) if match else None
    return found


async def serve_sandbox(stack: contextlib.AsyncExitStack, app: web.Application) -> str:
    # Closed after the runner (the stack unwinds in reverse): the site stops serving it first.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stack.callback(sock.close)
    sock.bind(("127.0.0.1", 0))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    await web.SockSite(runner, sock).start()
    return f"http://127.0.0.1:{sock.getsockname()[1]}"


# --------------------------------------------------------------------------------------------------
# The gateway process


def gateway_config(sandbox_url: str, db: Path) -> str:
    tables: dict[str, dict[str, Any]] = {
        "server": {"host": "127.0.0.1"},
        "store": {
            "kind": "sqlite",
            "path": str(db),
            "idempotency_lease_seconds": KEY_LEASE,
        },
        "runner": {"tick_ms": 20, "lease_seconds": KEY_LEASE},
        "sandbox": {"embedded": False},
        "log": {"format": "json", "level": "INFO"},
        "auth": {"required": False},  # open on loopback: this is about crashes, not keys
    }
    for name, spec in sorted(PROVIDERS.items()):
        tables[f"providers.{name}"] = {
            "base_url": sandbox_url + spec.prefix,
            "connect_timeout": 1.0,
            "read_timeout": TOTAL_TIMEOUT,
            "total_timeout": TOTAL_TIMEOUT,
            "result_hosts": ["127.0.0.1"],
            "result_networks": ["127.0.0.1/32"],
        }
        tables[f"providers.{name}.policy"] = dict(POLICY)
    return to_toml(tables)


@dataclass
class Gateway:
    """One ``jobgate serve`` at a time, on the same file, on the same port when it is free."""

    config: Path
    directory: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    logs: list[Path] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOBGATE_")}
        env["PYTHONUNBUFFERED"] = "1"
        for name in PROVIDERS:
            env[f"JOBGATE_PROVIDERS__{name.upper()}__API_KEY"] = API_KEY
        log = self.directory / f"gateway.{self.starts}.stderr.log"
        self.logs.append(log)
        self.starts += 1
        self.process = spawn_serve(self.config, self.port, env, log)

    async def start(self, session: aiohttp.ClientSession) -> float:
        """Start and wait for /readyz; returns the seconds that took. A port taken meanwhile by
        someone else is the one failure tried again, on another port."""
        began = time.monotonic()
        for _ in range(3):
            self._spawn()
            if await self._ready(session):
                return time.monotonic() - began
            assert self.process is not None
            if self.process.poll() is None or "in use" not in self.logs[-1].read_text():
                break
            self.port = free_port()
        raise RuntimeError(f"the gateway did not start:\n{processes.log_tail(self.logs[-1])}")

    async def _ready(self, session: aiohttp.ClientSession) -> bool:
        assert self.process is not None
        return await processes.ready_by(
            session, self.url, self.process, time.monotonic() + START_WITHIN
        )

    async def kill(self) -> None:
        """SIGKILL, then reap: the file lock is the dead process's until the kernel frees it."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        await asyncio.wait_for(asyncio.to_thread(self.process.wait), START_WITHIN)

    async def stop(self) -> None:
        await processes.stop_process(self.process, 10)

    def log_events(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for path in self.logs:
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith("{"):
                    with contextlib.suppress(ValueError):
                        found.append(json.loads(line))
        return found


# --------------------------------------------------------------------------------------------------
# Clients


@dataclass
class Intent:
    n: int
    kind: str
    start_at: float
    key: str
    body: dict[str, Any] = field(default_factory=dict)
    final: tuple[int, dict[str, Any]] | None = None
    last: tuple[int, str | None] | None = None
    """The last answer seen, final or not (``(0, error)`` for no answer)."""
    attempts: int = 0
    in_flight_answers: int = 0
    retry_after_max: float = 0.0
    probe: tuple[int, dict[str, Any]] | None = None

    @property
    def marker(self) -> str:
        return f"intent-{self.n:03d}-"

    @property
    def code(self) -> str | None:
        if self.final is None:
            return None
        code = self.final[1].get("code")
        return code if isinstance(code, str) else None

    @property
    def last_code(self) -> str | None:
        return None if self.last is None else self.last[1]

    @property
    def settled(self) -> bool:
        """Whether the key holds an outcome the gateway replays (others are freed, and sending
        them again would run them again)."""
        return self.final is not None and (self.final[0] == 201 or self.code == UNKNOWN)

    @property
    def job_id(self) -> str | None:
        if self.final is None or self.final[0] != 201:
            return None
        job_id = self.final[1].get("id")
        return job_id if isinstance(job_id, str) else None


def make_intents(count: int, spread: float, seed: int) -> list[Intent]:
    rng = random.Random(seed)
    starts = sorted(rng.uniform(0.0, spread) for _ in range(count))
    return [
        Intent(n, KINDS[n % len(KINDS)], starts[n], f"bench-kill-{seed}-{n:03d}")
        for n in range(count)
    ]


def request_of(intent: Intent) -> dict[str, Any]:
    marker = intent.marker
    if intent.kind == "catchall":
        return {"query": f"{marker} funding rounds in logistics", "limit": 10}
    if intent.kind == "pulse":
        return {"fileUrl": f"https://example.com/{marker}report.pdf"}
    return {"url": f"https://example.com/{marker}page", "maxPages": 2}


async def make_platform_job(
    session: aiohttp.ClientSession, sandbox_url: str, intent: Intent
) -> str:
    """The platform job an adopt intent adopts, made where platform jobs are made: upstream."""
    for _ in range(MAX_ATTEMPTS):
        async with session.post(
            sandbox_url + SIDE_DOOR,
            json={"type": "export", "input": {"marker": intent.marker}},
            headers={"Authorization": f"Bearer {API_KEY}"},
        ) as response:
            if response.status == 201:
                upstream_id: str = (await response.json())["data"]["id"]
                return upstream_id
        await asyncio.sleep(0.2)
    raise RuntimeError("the platform sandbox made no job")


async def drive(
    intent: Intent,
    session: aiohttp.ClientSession,
    gateway: Gateway,
    sandbox_url: str,
    began: float,
    deadline: float,
    rng: random.Random,
) -> None:
    """Send the intent's request with its key until a final answer, the attempts or the time
    run out."""
    await asyncio.sleep(max(0.0, began + intent.start_at - time.monotonic()))
    if intent.kind == "platform":
        upstream_id = await make_platform_job(session, sandbox_url, intent)
        intent.body = {"provider": "platform", "upstream_id": upstream_id}
    else:
        intent.body = {"provider": intent.kind, "request": request_of(intent)}
    backoff = 0.2
    while intent.attempts < MAX_ATTEMPTS and time.monotonic() < deadline:
        intent.attempts += 1
        wait: float | None = None
        try:
            async with session.post(
                f"{gateway.url}/v1/jobs",
                json=intent.body,
                headers={"Idempotency-Key": intent.key},
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
            ) as response:
                status = response.status
                body: dict[str, Any] = await response.json(content_type=None)
                header = response.headers.get("Retry-After")
                wait = float(header) if header else None
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as error:
            # The gateway is down (killed, restarting): try again after a jittered backoff.
            intent.last = (0, type(error).__name__)
        else:
            code = body.get("code")
            intent.last = (status, code if isinstance(code, str) else None)
            if status == 409 and code == IN_FLIGHT:
                intent.in_flight_answers += 1
            elif status not in RETRY_STATUSES:
                intent.final = (status, body)
                return
        if wait is not None:
            intent.retry_after_max = max(intent.retry_after_max, wait)
            pause = wait
        else:
            pause = backoff * rng.uniform(0.5, 1.5)
            backoff = min(2.0, backoff * 1.6)
        await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))


async def probe(session: aiohttp.ClientSession, gateway: Gateway, intent: Intent) -> None:
    """The same request with the same key once more: a settled key replays its answer."""
    with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError, ValueError):
        async with session.post(
            f"{gateway.url}/v1/jobs",
            json=intent.body,
            headers={"Idempotency-Key": intent.key},
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
        ) as response:
            intent.probe = (response.status, await response.json(content_type=None))


async def list_jobs(session: aiohttp.ClientSession, gateway: Gateway) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(1000):
        query = "?limit=500" + (f"&cursor={cursor}" if cursor else "")
        async with session.get(
            f"{gateway.url}/v1/jobs{query}", timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        ) as response:
            page = await response.json()
        jobs.extend(page["jobs"])
        cursor = page.get("next_cursor")
        if not cursor:
            break
    return jobs


# --------------------------------------------------------------------------------------------------
# The kills


@dataclass
class Kill:
    at: float
    arriving: int
    answering: int
    restart_s: float = 0.0


async def killer(
    gateway: Gateway,
    session: aiohttp.ClientSession,
    recorder: Recorder,
    moments: Sequence[float],
    began: float,
    latency: float,
    rng: random.Random,
    kills: list[Kill],
) -> None:
    """At each moment, once a submit is in flight (and a seeded fraction of a latency later, so
    the kill falls anywhere in it), SIGKILL the gateway and start it again."""
    for moment in moments:
        await asyncio.sleep(max(0.0, began + moment - time.monotonic()))
        if not await recorder.until_in_flight(within=10.0):
            print(f"  (no submit in flight by {time.monotonic() - began:.1f} s: killed anyway)")
        await asyncio.sleep(rng.uniform(0.0, latency / 2))
        kill = Kill(time.monotonic() - began, recorder.arriving, recorder.answering)
        await gateway.kill()
        kills.append(kill)
        kill.restart_s = await gateway.start(session)


def kill_moments(count: int, spread: float, rng: random.Random) -> list[float]:
    """One moment in each of ``count`` equal parts of the spread, away from its edges."""
    part = spread / count
    return [i * part + rng.uniform(0.25 * part, 0.75 * part) for i in range(count)]


# --------------------------------------------------------------------------------------------------
# Figures


@dataclass
class Row:
    intents: int = 0
    created: int = 0
    unknown: int = 0
    other: int = 0
    unanswered: int = 0
    stuck: int = 0
    upstream: int = 0
    orphans: int = 0
    orphans_unknown: int = 0
    lost: int = 0
    duplicates: int = 0
    replay_mismatch: int = 0

    def add(self, other: Row) -> None:
        for name in vars(self):
            setattr(self, name, getattr(self, name) + getattr(other, name))


COLUMNS: Final = (
    ("intents", "intents"),
    ("created", "201"),
    ("unknown", "unknown"),
    ("other", "other"),
    ("unanswered", "no answer"),
    ("stuck", "stuck"),
    ("upstream", "upstream"),
    ("orphans", "orphans"),
    ("orphans_unknown", "of unknown"),
    ("lost", "lost"),
    ("duplicates", "dup"),
    ("replay_mismatch", "replay !="),
)


def figures(
    intents: Sequence[Intent],
    upstream: Mapping[str, Mapping[str, int | None]],
    jobs: Sequence[dict[str, Any]],
) -> dict[str, Row]:
    by_n = {intent.n: intent for intent in intents}
    tracked: dict[str, set[str]] = {kind: set() for kind in KINDS}
    gateway_jobs_of: Counter[int] = Counter()
    for job in jobs:
        tracked[job["provider"]].add(job["upstream_id"])
        owner = upstream.get(job["provider"], {}).get(job["upstream_id"])
        if owner is not None:
            gateway_jobs_of[owner] += 1
    job_ids = {job["id"] for job in jobs}
    upstream_of: Counter[int] = Counter()
    rows = {kind: Row() for kind in KINDS}
    for provider, by_id in upstream.items():
        for upstream_id, owner in by_id.items():
            row = rows[provider]
            row.upstream += 1
            if owner is not None:
                upstream_of[owner] += 1
            if upstream_id not in tracked[provider]:
                row.orphans += 1
                if owner is not None and by_n[owner].code == UNKNOWN:
                    row.orphans_unknown += 1
    for intent in intents:
        row = rows[intent.kind]
        row.intents += 1
        probed = intent.probe[1].get("code") if intent.probe is not None else None
        if probed == IN_FLIGHT or (intent.final is None and intent.last_code == IN_FLIGHT):
            row.stuck += 1
        if intent.final is None:
            row.unanswered += 1
        elif intent.final[0] == 201:
            row.created += 1
        elif intent.code == UNKNOWN:
            row.unknown += 1
        else:
            row.other += 1
        if intent.job_id is not None and intent.job_id not in job_ids:
            row.lost += 1
        if upstream_of[intent.n] > 1 or gateway_jobs_of[intent.n] > 1:
            row.duplicates += 1
        if intent.final is not None and intent.probe is not None:
            first, again = intent.final, intent.probe
            same = first[0] == again[0] and (
                first[1].get("id") == again[1].get("id")
                if first[0] == 201
                else first[1].get("code") == again[1].get("code")
            )
            row.replay_mismatch += 0 if same else 1
    return rows


def print_table(rows: Mapping[str, Row]) -> None:
    total = Row()
    for row in rows.values():
        total.add(row)
    header = ["provider", *(title for _, title in COLUMNS)]
    lines = [
        [kind, *(str(getattr(row, name)) for name, _ in COLUMNS)] for kind, row in rows.items()
    ]
    lines.append(["total", *(str(getattr(total, name)) for name, _ in COLUMNS)])
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
    for number, line in enumerate([header, *lines]):
        print("  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)))
        if number == 0 or number == len(lines) - 1:
            print("  ".join("-" * width for width in widths))


# --------------------------------------------------------------------------------------------------
# The run


async def settle(
    session: aiohttp.ClientSession, gateway: Gateway, within: float
) -> list[dict[str, Any]]:
    """The gateway's jobs once every one has finished, or as they are after ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        jobs = await list_jobs(session, gateway)
        if all(job["state"] in FINISHED for job in jobs) or time.monotonic() >= deadline:
            return jobs
        await asyncio.sleep(0.5)


async def run(args: argparse.Namespace) -> int:
    began = time.monotonic()
    rng = random.Random(args.seed)
    async with contextlib.AsyncExitStack() as stack:
        if args.dir is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="jobgate-")))
        else:
            directory = Path(args.dir)
            directory.mkdir(parents=True, exist_ok=True)
            if (directory / "jobs.db").exists():
                # Its keys would replay another run's answers, about another sandbox's jobs.
                print(f"{directory / 'jobs.db'} exists: give a new --dir", file=sys.stderr)
                return 2
        recorder = Recorder(args.latency, random.Random(args.seed + 1))
        sandbox = create_sandbox_app(SandboxSettings(speed=args.speed, seed=args.seed))
        sandbox.middlewares.append(recorder.middleware)
        sandbox_url = await serve_sandbox(stack, sandbox)
        config = directory / "gateway.toml"
        db = directory / "jobs.db"
        config.write_text(gateway_config(sandbox_url, db))
        session = await stack.enter_async_context(
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        )
        gateway = Gateway(config, directory)
        stack.push_async_callback(gateway.stop)
        first_start = await gateway.start(session)
        print(
            f"jobgate kill bench: {args.intents} intents over {args.spread:g} s, {args.kills} "
            f"SIGKILLs, seed {args.seed}, sandbox x{args.speed:g}, submit latency up to "
            f"{args.latency:g} s, key lease {KEY_LEASE:g} s; SQLite at {db}"
        )
        print(f"gateway ready in {first_start:.2f} s")

        intents = make_intents(args.intents, args.spread, args.seed)
        clock0 = time.monotonic()
        deadline = began + args.timeout - SETTLE - 10.0
        kills: list[Kill] = []
        moments = kill_moments(args.kills, args.spread, rng)
        kill_task = asyncio.create_task(
            killer(gateway, session, recorder, moments, clock0, args.latency, rng, kills)
        )
        client_rngs = [random.Random(args.seed * 1000 + intent.n) for intent in intents]
        try:
            await asyncio.gather(
                *(
                    drive(intent, session, gateway, sandbox_url, clock0, deadline, client_rng)
                    for intent, client_rng in zip(intents, client_rngs, strict=True)
                )
            )
            answered_at = time.monotonic() - clock0
            await asyncio.wait_for(kill_task, START_WITHIN * 2)
        finally:
            kill_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await kill_task

        await asyncio.gather(
            *(
                probe(session, gateway, intent)
                for intent in intents
                if intent.settled or (intent.final is None and intent.last_code == IN_FLIGHT)
            )
        )
        jobs = await settle(session, gateway, SETTLE)
        upstream = upstream_jobs(sandbox)
        rows = figures(intents, upstream, jobs)
        wall = time.monotonic() - began

        print()
        for number, kill in enumerate(kills, start=1):
            print(
                f"kill {number} at {kill.at:5.2f} s: {kill.arriving} submits arriving, "
                f"{kill.answering} answers on their way (jobs made); restart took "
                f"{kill.restart_s:.2f} s"
            )
        print(f"last final answer {answered_at:.1f} s after the first client started")
        print()
        print_table(rows)
        print()
        attempts = sum(i.attempts for i in intents)
        in_flight = sum(i.in_flight_answers for i in intents)
        waited = max((i.retry_after_max for i in intents), default=0.0)
        others = Counter(f"{i.final[0]} {i.code}" for i in intents if i.final and i.code)
        others.pop(f"409 {UNKNOWN}", None)
        states = Counter(f"{job['provider']}:{job['state']}" for job in jobs)
        events = Counter(str(e.get("event")) for e in gateway.log_events())
        print(
            f"requests {attempts} ({attempts - len(intents)} retries); 409 in flight answered "
            f"{in_flight} times mid-run; longest Retry-After {waited:g} s; submits reaching the "
            f"sandbox {recorder.received.total()}, of which the provider made a job "
            f"{recorder.made.total()}"
        )
        if others:
            print("other final answers: " + ", ".join(f"{k} x{v}" for k, v in others.items()))
        print(
            "gateway jobs: "
            + ", ".join(f"{name} {count}" for name, count in sorted(states.items()))
        )
        print(
            "gateway log: "
            + ", ".join(
                f"{name} {events[name]}"
                for name in (
                    "idempotency.recovering",
                    "idempotency.reconciled",
                    "idempotency.outcome_unknown",
                    "idempotency.recovered",
                )
            )
        )
        print(f"wall time {wall:.1f} s")
        print()
        print(
            "unknown: 409 idempotency_outcome_unknown (a kill while a pulse/extract submit was "
            "out; the provider cannot be asked); stuck: 409 in flight at the end; orphans: "
            "upstream jobs no gateway job tracks; of unknown: how many of those orphans belong "
            "to outcome-unknown intents (the client was told, and may adopt them); lost: a "
            "201's job the gateway no longer has; dup: intents with more than one upstream or "
            "gateway job; replay !=: the key's replay differs from its final answer"
        )
        return 1 if any(intent.final is None for intent in intents) else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--intents", type=int, default=200, help="client intents (default 200)")
    parser.add_argument("--kills", type=int, default=4, help="SIGKILLs (default 4)")
    parser.add_argument("--seed", type=int, default=8, help="seeds every random choice")
    parser.add_argument("--speed", type=float, default=100.0, help="sandbox speed (default 100)")
    parser.add_argument(
        "--latency",
        type=float,
        default=0.15,
        help="a submit's answer is held up to this many seconds (default 0.15)",
    )
    parser.add_argument(
        "--spread", type=float, default=24.0, help="clients start over this many seconds"
    )
    parser.add_argument(
        "--timeout", type=float, default=150.0, help="the whole run's bound in seconds"
    )
    parser.add_argument("--dir", help="keep the SQLite file and the gateway logs here")
    args = parser.parse_args(argv)
    if args.intents < len(KINDS) or args.kills < 0:
        parser.error(f"--intents must be at least {len(KINDS)} and --kills not negative")
    if min(args.speed, args.latency, args.spread) <= 0:
        parser.error("--speed, --latency and --spread must be positive")
    if args.timeout < args.spread + SETTLE + 30:
        parser.error(f"--timeout must leave {SETTLE + 30:g} s after --spread")
    configure_logging("console", "WARNING")
    # A killed gateway leaves the sandbox reading half a request: that is the point, not an error.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(asyncio.wait_for(run(args), args.timeout + 30))
    return 130


if __name__ == "__main__":
    raise SystemExit(main())
