"""Read path: job status reads and list pages through the gateway, against a bare aiohttp app
serving the same bytes (issue 11).

    python bench/bench_reads.py [--store sqlite|postgres|both] [--seconds 5] [--rounds 3]
        [--jobs 200] [--connections 50] [--rows 1,2,3,4] [--log-format default|console|json]
        [--log-access default|all|reads|off] [--timeout 600] [--profile]
        [--dsn postgresql://postgres@127.0.0.1:5432/test]

Two servers besides this process, both on 127.0.0.1, and ``wrk`` as the load generator:

- ``jobgate serve`` (A), on a temporary SQLite file or a fresh PostgreSQL schema
  ``bench_reads_<hex>`` (dropped at the end), holding ``--jobs`` finished jobs written through the
  store's own API before the gateway starts (``succeeded``, a small inline result, two labels, no
  ``next_poll_at``: nothing is due, so the runner, enabled, polls nothing while the figures are
  taken). The embedded sandbox is off, the four providers point at a port nothing listens on, auth
  is off (``auth.required = false``: on by default without the embedded sandbox). Logging is what
  ``jobgate serve`` ships (no ``[log]`` in the config: console, INFO, and ``log.access``'s default
  for which requests get an ``http.request`` line); the bench prints what was in effect.
  ``--log-format json`` measures the container image's ``JOBGATE_LOG__FORMAT=json``,
  ``--log-access all`` the cost of a line for every request.
- the bare baseline (B): this script again (``--baseline-server PORT FILE``, hidden), a tiny
  aiohttp app with one catch-all route and no middleware that serves, from a dict keyed by path and
  query, the bytes the gateway answered for the same URLs (fetched once after it started), with the
  same ``Content-Type`` (and ``ETag``, when the gateway sent one). No access log.

Rows (the issue's table), each measured with ``wrk --latency -t1 -cN -d{seconds}s``:

1. ``GET /v1/jobs/{id}`` with ``--connections`` (50) connections: req/s and p99 latency.
2. ``GET /v1/jobs/{id}`` with 1 connection: req/s (p99 shown too).
3. ``GET /v1/jobs?limit=100`` with ``--connections`` connections: req/s and p99.
4. (informative) ``GET /v1/jobs/{id}`` with ``If-None-Match`` of its current ``ETag``: a 304, when
   the gateway answers one; "n/a" otherwise.

Every row warms both servers up (1 s of wrk each), then runs A, B, A, B, ... ``--rounds`` times
each, one ``--seconds`` run at a time, so that a change in how busy the machine is weighs on both.
Each run prints its req/s and p99, the serving process's CPU per request (from /proc: what the
request costs, much less sensitive to how busy the machine was than req/s; "loop" is the main
thread's share), how many CPUs the server, wrk and everything else on the machine kept busy
meanwhile, and any non-2xx/3xx answers or socket errors. The summary
gives medians, spreads (min-max) and the ratio of the medians, jobgate over bare, next to the
issue's goal (req/s ratio >= goal; p99 ratio <= 1 / goal). Nothing is pinned: wrk, both servers
and whatever else runs share the machine's CPUs.

At the end the gateway's log is scanned for warnings, errors and 5xx, and its size per request is
shown. The gateway runs from the work tree: each store's run prints the commit, the changed files
and a digest of the code on disk. ``--profile`` runs the gateway under cProfile (its figures are
then not comparable) and prints its top functions. Everything runs under ``--timeout``; every
process is stopped at the end; the script asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import pstats
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import aiohttp
import asyncpg  # type: ignore[import-untyped]
import processes  # bench/ is sys.path[0]
from aiohttp import web
from processes import free_port, spawn_serve, to_toml

from adapters.base import Progress, ResultKind, ResultLocator
from gateway.jobs import Job, new_id
from gateway.logs import configure_logging
from gateway.states import JobState
from gateway.store.base import NewEvent
from gateway.store.postgres import PostgresStore
from gateway.store.sqlite import SqliteStore

SCRIPT: Final = Path(__file__).resolve()
ROOT: Final = SCRIPT.parents[1]
DEFAULT_DSN: Final = "postgresql://postgres@127.0.0.1:5432/test"
PROVIDERS: Final = ("catchall", "extract", "pulse", "platform")
LIST_LIMIT: Final = 100
WARM_UP: Final = 1
"""Seconds of wrk on each server before a row's runs."""
START_WITHIN: Final = 30.0
PROFILE_LINES: Final = 30
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
WRK_INSTALL: Final = "apt-get install -y wrk (or: make bench, which installs it)"


# --------------------------------------------------------------------------------------------------
# The bare baseline (``--baseline-server PORT FILE``)


def baseline_app(pages: dict[str, Any]) -> web.Application:
    """One catch-all route answering from a dict: path and query -> (body, headers, ETag)."""
    entries: dict[str, tuple[bytes, dict[str, str], str | None]] = {}
    for path, page in pages.items():
        headers = {"Content-Type": page["content_type"]}
        if page.get("etag"):
            headers["ETag"] = page["etag"]
        entries[path] = (base64.b64decode(page["body"]), headers, page.get("etag"))

    async def serve_page(request: web.Request) -> web.Response:
        entry = entries.get(request.path_qs)
        if entry is None:
            return web.Response(status=404)
        body, headers, etag = entry
        if etag is not None and request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        return web.Response(body=body, headers=headers)

    app = web.Application()
    app.router.add_get("/{tail:.*}", serve_page)
    return app


def baseline_main(port: int, file: Path) -> None:
    """Serve on 127.0.0.1:``port``, print ``ready`` once listening, stop when stdin closes."""
    app = baseline_app(json.loads(file.read_text()))

    async def serve() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        print("ready", flush=True)
        try:
            # Until the parent closes our stdin (or dies).
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        finally:
            await runner.cleanup()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


# --------------------------------------------------------------------------------------------------
# The jobs: finished, written through the store's API before the gateway starts


def make_jobs(count: int, rng: random.Random) -> list[Job]:
    """Finished jobs as the runner leaves them: ``succeeded``, polled a dozen times, a small
    inline result, two labels, the submit body kept, nothing due."""
    now = datetime.now(UTC)
    jobs: list[Job] = []
    for number in range(count):
        created = now - timedelta(minutes=60) + timedelta(seconds=number * 3600 / count)
        started = created + timedelta(seconds=2)
        finished = started + timedelta(seconds=rng.uniform(20, 600))
        provider = PROVIDERS[number % len(PROVIDERS)]
        records = [
            {"id": f"r{i}", "name": f"Company {rng.randrange(10**6)}", "score": rng.random()}
            for i in range(5)
        ]
        jobs.append(
            Job(
                id=new_id(),
                provider=provider,
                upstream_id=f"up-{rng.getrandbits(64):016x}",
                state=JobState.SUCCEEDED,
                created_at=created,
                updated_at=finished,
                deadline_at=created + timedelta(hours=24),
                native_status="completed",
                progress=Progress(fraction=1.0, step="done", step_index=4, step_count=4),
                result=ResultLocator(kind=ResultKind.INLINE, inline={"records": records}),
                started_at=started,
                finished_at=finished,
                upstream_finished_at=finished,
                next_poll_at=None,
                polls=12,
                unchanged_polls=3,
                labels={"team": rng.choice(("search", "ingest", "ml")), "env": "prod"},
                request={"query": "companies hiring in Berlin", "limit": 100},
                version=14,
            )
        )
    return jobs


async def write_jobs(store: SqliteStore | PostgresStore, jobs: Sequence[Job]) -> None:
    await store.open()
    try:
        for job in jobs:
            await store.create(job, [NewEvent("created", {}), NewEvent("state", {"state": "done"})])
    finally:
        await store.close()


async def connect(dsn: str) -> Any:
    """A connection of the bench's own, named so it is told apart from the gateway's."""
    return await asyncpg.connect(
        dsn, timeout=5, server_settings={"application_name": "jobgate-bench"}
    )


@contextlib.asynccontextmanager
async def fresh_schema(dsn: str) -> AsyncIterator[str]:
    """A schema name no one else uses, dropped (with everything in it) at the end."""
    name = f"bench_reads_{uuid.uuid4().hex[:12]}"
    try:
        yield name
    finally:
        conn = await connect(dsn)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
        finally:
            await conn.close()


async def postgres_answers(dsn: str) -> str | None:
    """The server's version, or None (said why) when it cannot be reached."""
    try:
        conn = await connect(dsn)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        print(f"PostgreSQL at {dsn} does not answer ({type(exc).__name__}): skipping it")
        return None
    try:
        version: str = await conn.fetchval("SHOW server_version")
        return version
    finally:
        await conn.close()


# --------------------------------------------------------------------------------------------------
# Processes and /proc


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """utime + stime of the process (every thread, the dead ones too), or of its thread ``tid``,
    in seconds."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    with open(path) as stat:
        text = stat.read()
    user, system = (int(v) for v in text[text.rfind(")") + 2 :].split()[11:13])
    return (user + system) / CLOCK_TICKS


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies over every CPU since boot, from the first line of /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])
    return total - idle, total


def waited_children_cpu() -> float:
    """CPU seconds of this process's children that have been waited for (each wrk, once done)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def size_of(path: Path | None) -> int:
    return path.stat().st_size if path is not None else 0


def wrk_version() -> str:
    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    return ((out.stdout or out.stderr).splitlines() or ["wrk"])[0]


def tree_state() -> str:
    """The commit the gateway's code is at, and how many of its files differ from it (the work
    tree is what runs)."""
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    changed = subprocess.run(
        ["git", "status", "--porcelain", "--", "gateway", "adapters"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if head.returncode != 0:
        return "not a git checkout"
    files = [line[3:] for line in changed.stdout.splitlines()]
    return f"commit {head.stdout.strip()}" + (
        f" + {len(files)} changed files ({', '.join(files[:6])}{', ...' if len(files) > 6 else ''})"
        if files
        else ", clean"
    )


def code_digest() -> str:
    """A digest of every Python file under gateway/ and adapters/ as they are on disk: two runs
    with the same digest ran the same code, whatever git says."""
    digest = hashlib.sha256()
    for path in sorted([*ROOT.glob("gateway/**/*.py"), *ROOT.glob("adapters/**/*.py")]):
        digest.update(str(path.relative_to(ROOT)).encode())
        with contextlib.suppress(OSError):
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Gateway:
    config: Path
    log: Path
    env: dict[str, str]
    profile: Path | None = None
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self, session: aiohttp.ClientSession) -> float:
        """Start and wait for /readyz; returns the seconds that took."""
        began = time.monotonic()
        profile = ["-m", "cProfile", "-o", str(self.profile)] if self.profile is not None else []
        self.process = spawn_serve(self.config, self.port, self.env, self.log, python_args=profile)
        return await processes.until_ready(
            session, self.url, self.process, self.log, START_WITHIN, began=began
        )

    async def stop(self) -> None:
        # SIGTERM: a clean stop, so cProfile writes its file.
        await processes.stop_process(self.process, 15)


@dataclass
class Baseline:
    pages: Path
    port: int = field(default_factory=free_port)
    process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self) -> None:
        self.process = await processes.spawn_script(
            SCRIPT, "--baseline-server", str(self.port), str(self.pages)
        )
        line = await processes.read_line(self.process, START_WITHIN)
        if line.strip() != b"ready":
            raise RuntimeError("the bare baseline did not start (its stderr is above)")

    async def stop(self) -> None:
        await processes.close_child(self.process, 10)


# --------------------------------------------------------------------------------------------------
# wrk


@dataclass
class Run:
    """One wrk run against one server."""

    rps: float
    p99_ms: float
    requests: int
    bad: int
    """Non-2xx-or-3xx answers."""
    socket_errors: int
    server_cpu: float
    """The serving process's CPU seconds over the run."""
    loop_cpu: float
    """Of ``server_cpu``, its main thread's: the event loop (the rest is worker threads, such as
    the SQLite store's calls, and the kernel's work charged to them)."""
    wrk_cpu: float
    others_cpu: float
    """CPU seconds the rest of the machine used meanwhile (not the server, wrk or this script)."""
    elapsed: float
    log_bytes: int = 0
    error: str = ""

    @property
    def us_per_request(self) -> float:
        return self.server_cpu / self.requests * 1e6 if self.requests else float("nan")

    @property
    def loop_us_per_request(self) -> float:
        return self.loop_cpu / self.requests * 1e6 if self.requests else float("nan")


UNITS: Final = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def parse_wrk(text: str) -> tuple[float, float, int, int, int]:
    """(req/s, p99 ms, requests, non-2xx/3xx, socket errors) from wrk's report."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    p99 = re.search(r"^\s*99(?:\.0+)?%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.MULTILINE)
    requests = re.search(r"(\d+) requests in", text)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    return (
        float(rps.group(1)) if rps else float("nan"),
        float(p99.group(1)) * UNITS[p99.group(2)] if p99 else float("nan"),
        int(requests.group(1)) if requests else 0,
        int(bad.group(1)) if bad else 0,
        sum(int(n) for n in errors.groups()) if errors else 0,
    )


async def wrk(
    url: str,
    *,
    connections: int,
    seconds: int,
    headers: Sequence[str],
    server_pid: int,
    log: Path | None = None,
) -> Run:
    command = ["wrk", "--latency", "-t1", f"-c{connections}", f"-d{seconds}s"]
    for header in headers:
        command += ["-H", header]
    command.append(url)
    log_before = size_of(log)
    server0, loop0 = cpu_seconds(server_pid), cpu_seconds(server_pid, server_pid)
    wrk0, own0 = waited_children_cpu(), own_cpu()
    busy0 = machine_jiffies()[0]
    began = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), seconds + 15)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    elapsed = time.perf_counter() - began
    busy1 = machine_jiffies()[0]
    server_cpu = cpu_seconds(server_pid) - server0
    # Both are read in clock ticks, one after the other: the thread's may read a tick ahead.
    loop_cpu = min(server_cpu, cpu_seconds(server_pid, server_pid) - loop0)
    wrk_cpu = waited_children_cpu() - wrk0
    own = own_cpu() - own0
    busy = (busy1 - busy0) / CLOCK_TICKS
    text = out.decode(errors="replace")
    rps, p99, requests, bad, socket_errors = parse_wrk(text)
    run = Run(
        rps=rps,
        p99_ms=p99,
        requests=requests,
        bad=bad,
        socket_errors=socket_errors,
        server_cpu=server_cpu,
        loop_cpu=loop_cpu,
        wrk_cpu=wrk_cpu,
        others_cpu=max(0.0, busy - server_cpu - wrk_cpu - own),
        elapsed=elapsed,
        log_bytes=size_of(log) - log_before,
    )
    if process.returncode != 0 or rps != rps:
        run.error = f"wrk exited {process.returncode}: {text.strip()[-300:]}"
    return run


# --------------------------------------------------------------------------------------------------
# Rows


@dataclass(frozen=True)
class Row:
    name: str
    path: str
    connections: int
    goal: float | None
    """The req/s ratio's goal (jobgate / bare >= goal); None: informative."""
    p99_goal: bool
    """Whether the p99 ratio has a goal too (<= 1 / goal)."""
    headers: tuple[str, ...] = ()


@dataclass
class Measured:
    row: Row
    gateway: list[Run] = field(default_factory=list)
    bare: list[Run] = field(default_factory=list)
    skipped: str = ""


def fmt(value: float, spec: str = ",.0f") -> str:
    return "-" if value != value else format(value, spec)


def describe(run: Run, cpus: float) -> str:
    if run.error:
        return f"FAILED: {run.error}"
    seconds = run.elapsed
    text = (
        f"{fmt(run.rps):>8} req/s  p99 {fmt(run.p99_ms, '.2f'):>7} ms  server "
        f"{fmt(run.us_per_request):>5} us/req (loop {fmt(run.loop_us_per_request):>5}; "
        f"{run.server_cpu / seconds:.2f} CPU)  wrk "
        f"{run.wrk_cpu / seconds:.2f} CPU  others {run.others_cpu / seconds:.2f} of {cpus:g}"
    )
    if run.bad or run.socket_errors:
        text += f"  [non-2xx/3xx {run.bad}, socket errors {run.socket_errors}]"
    return text


async def measure_row(
    row: Row,
    gateway: Gateway,
    bare: Baseline,
    args: argparse.Namespace,
) -> Measured:
    done = Measured(row)
    cpus = float(os.cpu_count() or 1)
    print(f"\n  {row.name}: {row.path}" + (f"  ({', '.join(row.headers)})" if row.headers else ""))
    common: dict[str, Any] = {"connections": row.connections, "headers": row.headers}
    for server_url, pid in ((gateway.url, gateway.pid), (bare.url, bare.pid)):
        await wrk(server_url + row.path, seconds=WARM_UP, server_pid=pid, **common)
    for number in range(1, args.rounds + 1):
        a = await wrk(
            gateway.url + row.path,
            seconds=args.seconds,
            server_pid=gateway.pid,
            log=gateway.log,
            **common,
        )
        done.gateway.append(a)
        print(f"    run {number}  jobgate {describe(a, cpus)}", flush=True)
        b = await wrk(bare.url + row.path, seconds=args.seconds, server_pid=bare.pid, **common)
        done.bare.append(b)
        print(f"    run {number}  bare    {describe(b, cpus)}", flush=True)
    return done


# --------------------------------------------------------------------------------------------------
# One store


@dataclass
class Page:
    status: int
    body: bytes
    content_type: str
    etag: str | None
    head_bytes: int
    """The response head's header lines, as sent (``Name: value\\r\\n`` each)."""


async def fetch(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> Page:
    async with session.get(url, headers=headers or {}) as response:
        body = await response.read()
        head = sum(len(name) + len(value) + 4 for name, value in response.raw_headers)
        return Page(
            response.status,
            body,
            response.headers.get("Content-Type", ""),
            response.headers.get("ETag"),
            head,
        )


def gateway_config(directory: Path, store: dict[str, Any], log_format: str, log_access: str) -> str:
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens: no job is ever polled
    tables: dict[str, dict[str, Any]] = {
        "server": {"host": "127.0.0.1"},
        "store": store,
        "runner": {"enabled": True},
        "sandbox": {"embedded": False},
        "auth": {"required": False},
        "vault": {"path": str(directory / "results")},
    }
    log: dict[str, Any] = {}
    if log_format != "default":
        log.update(format=log_format, level="INFO")
    if log_access != "default":
        log["access"] = log_access
    if log:
        tables["log"] = log
    for name in PROVIDERS:
        tables[f"providers.{name}"] = {"base_url": f"{nowhere}/{name}"}
    return to_toml(tables)


def gateway_env(dsn: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBGATE_")}
    env["PYTHONUNBUFFERED"] = "1"
    for name in PROVIDERS:
        env[f"JOBGATE_PROVIDERS__{name.upper()}__API_KEY"] = f"bench-reads-{name}"
    if dsn is not None:
        env["JOBGATE_STORE__DSN"] = dsn
    return env


def log_in_effect(config: Path, env: dict[str, str]) -> str:
    """The log format and level ``jobgate serve`` runs with, as its own settings load them."""
    code = (
        "from gateway.settings import load_settings; import sys; "
        "s = load_settings(sys.argv[1]).log; "
        'print(f\'format {s.format}, level {s.level}, access {getattr(s, "access", "all")}\')'
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(config)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return out.stdout.strip() or f"unknown ({out.stderr.strip()[-200:]})"


LOG_PROBLEM: Final = re.compile(
    r"\[(warning|error|critical|exception)\s*\]|\"level\": \"(warning|error|critical)\"|"
    r"Traceback|status[\"=: ]+5\d\d\b",
    re.IGNORECASE,
)


EXPECTED: Final = ("auth.off",)
"""Warnings the bench's own configuration causes (auth is off on purpose)."""


def scan_log(log: Path) -> list[str]:
    return [
        line
        for line in log.read_text(errors="replace").splitlines()
        if LOG_PROBLEM.search(line) and not any(name in line for name in EXPECTED)
    ]


def print_profile(profile: Path | None) -> None:
    if profile is None:
        return
    if not profile.exists():
        print("  (no profile written: the gateway did not stop cleanly)")
        return
    print(f"\n  cProfile of the gateway, whole run, top {PROFILE_LINES} by own time:")
    stats = pstats.Stats(str(profile), stream=sys.stdout)
    stats.sort_stats("tottime").print_stats(PROFILE_LINES)
    print(f"  top {PROFILE_LINES} by cumulative time:")
    stats.sort_stats("cumulative").print_stats(PROFILE_LINES)


async def bench_store(
    kind: str, args: argparse.Namespace, directory: Path
) -> list[Measured] | None:
    """Seed, start both servers, measure every row, stop everything; None if skipped."""
    print(f"\n=== store: {kind} ===")
    work = directory / kind
    work.mkdir()
    jobs = make_jobs(args.jobs, random.Random(11))
    async with contextlib.AsyncExitStack() as stack:
        if kind == "postgres":
            version = await postgres_answers(args.dsn)
            if version is None:
                return None
            schema = await stack.enter_async_context(fresh_schema(args.dsn))
            began = time.perf_counter()
            await write_jobs(PostgresStore(args.dsn, schema=schema), jobs)
            conn = await connect(args.dsn)
            try:
                await conn.execute(f"VACUUM ANALYZE {schema}.jobs")
            finally:
                await conn.close()
            store: dict[str, Any] = {"kind": "postgres", "schema": schema}
            where = f"PostgreSQL {version}, schema {schema}"
            dsn: str | None = args.dsn
        else:
            began = time.perf_counter()
            path = work / "jobs.db"
            await write_jobs(SqliteStore(path), jobs)
            store = {"kind": "sqlite", "path": str(path)}
            where = f"SQLite {path}"
            dsn = None
        print(
            f"  {len(jobs)} finished jobs written in {time.perf_counter() - began:.1f} s ({where})"
        )
        config = work / "jobgate.toml"
        config.write_text(gateway_config(work, store, args.log_format, args.log_access))
        env = gateway_env(dsn)
        effective = await asyncio.to_thread(log_in_effect, config, env)
        chosen = args.log_format != "default" or args.log_access != "default"
        shipped = "as given by --log-format/--log-access" if chosen else "no [log] in the config"
        print(f"  gateway log: {effective} ({shipped})")
        profile = work / "gateway.prof" if args.profile else None
        gateway = Gateway(config, work / "gateway.log", env, profile)
        bare = Baseline(work / "pages.json")
        session = await stack.enter_async_context(aiohttp.ClientSession())
        digest = await asyncio.to_thread(code_digest)
        print(f"  gateway code: {await asyncio.to_thread(tree_state)}; digest {digest}")
        try:
            started = await gateway.start(session)
            print(f"  jobgate serve on {gateway.url} (pid {gateway.pid}), ready in {started:.1f} s")
            rows, pages = await gateway_pages(session, gateway, jobs, args.connections)
            rows = [row for number, row in enumerate(rows, 1) if number in args.rows]
            bare.pages.write_text(json.dumps(pages))
            await bare.start()
            print(f"  bare baseline on {bare.url} (pid {bare.pid})")
            await check_baseline(session, gateway, bare, rows)
            measured: list[Measured] = []
            for row in rows:
                if isinstance(row, Measured):
                    print(f"\n  {row.row.name}: n/a ({row.skipped})")
                    measured.append(row)
                    continue
                measured.append(await measure_row(row, gateway, bare, args))
        finally:
            await bare.stop()
            await gateway.stop()
        now = await asyncio.to_thread(code_digest)
        if now != digest:
            print(
                f"  NOTE: the code on disk changed during the run (digest {now} now); the gateway "
                "ran what it imported at its start"
            )
        report_log(gateway.log, measured)
        print_profile(profile)
        summary(f"{kind}: {where}", measured, args)
        return measured


async def gateway_pages(
    session: aiohttp.ClientSession, gateway: Gateway, jobs: Sequence[Job], connections: int
) -> tuple[list[Row | Measured], dict[str, Any]]:
    """The rows to run (a skipped one as its ``Measured``), and the gateway's answers for their
    URLs: the bare app's dict."""
    job_path = f"/v1/jobs/{jobs[len(jobs) // 2].id}"
    list_path = f"/v1/jobs?limit={LIST_LIMIT}"
    pages: dict[str, Any] = {}
    for path in (job_path, list_path):
        page = await fetch(session, gateway.url + path)
        if page.status != 200:
            text = page.body[:300].decode(errors="replace")
            raise RuntimeError(f"GET {path} answered {page.status}: {text}")
        pages[path] = {
            "body": base64.b64encode(page.body).decode(),
            "content_type": page.content_type,
            "etag": page.etag,
        }
        listed = f", {len(json.loads(page.body)['jobs'])} jobs" if path == list_path else ""
        print(
            f"  GET {path}: {len(page.body):,} bytes of {page.content_type}{listed}; "
            f"header lines {page.head_bytes} bytes; ETag {page.etag or 'none'}"
        )
    rows: list[Row | Measured] = [
        Row(f"1. GET /v1/jobs/{{id}}, {connections} connections", job_path, connections, 0.8, True),
        Row("2. GET /v1/jobs/{id}, 1 connection", job_path, 1, 0.8, False),
        Row(
            f"3. GET /v1/jobs?limit={LIST_LIMIT}, {connections} connections",
            list_path,
            connections,
            0.5,
            True,
        ),
    ]
    etag_row = Row(
        f"4. GET /v1/jobs/{{id}} If-None-Match, {connections} connections",
        job_path,
        connections,
        None,
        False,
    )
    etag = pages[job_path]["etag"]
    if etag is None:
        rows.append(Measured(etag_row, skipped="the gateway sends no ETag on a job"))
    else:
        again = await fetch(session, gateway.url + job_path, {"If-None-Match": etag})
        if again.status == 304:
            rows.append(replace(etag_row, headers=(f"If-None-Match: {etag}",)))
        else:
            reason = f"If-None-Match of its ETag answered {again.status}, not 304"
            rows.append(Measured(etag_row, skipped=reason))
    return rows, pages


async def check_baseline(
    session: aiohttp.ClientSession, gateway: Gateway, bare: Baseline, rows: Sequence[Row | Measured]
) -> None:
    """Each row's URL once from both: the same status, body and Content-Type."""
    for row in rows:
        if isinstance(row, Measured):
            continue
        headers = dict(header.split(": ", 1) for header in row.headers)
        a = await fetch(session, gateway.url + row.path, headers)
        b = await fetch(session, bare.url + row.path, headers)
        same = (a.status, a.body, a.content_type) == (b.status, b.body, b.content_type)
        verdict = "the same bytes" if same else "DIFFERENT answers"
        print(
            f"  {row.name[:2]} jobgate {a.status} / bare {b.status}: {verdict} "
            f"({len(a.body):,} body bytes; header lines {a.head_bytes} vs {b.head_bytes} bytes)"
        )


def report_log(log: Path, measured: Sequence[Measured]) -> None:
    runs = [run for done in measured for run in done.gateway]
    requests = sum(run.requests for run in runs)
    written = sum(run.log_bytes for run in runs)
    lines = log.read_text(errors="replace").splitlines()
    problems = scan_log(log)
    per = written / requests if requests else float("nan")
    print(
        f"\n  gateway log: {len(lines):,} lines, {log.stat().st_size / 1e6:.1f} MB; "
        f"{fmt(per)} bytes a measured request; warnings, errors and 5xx: {len(problems)} "
        "(auth.off, expected here, left out)"
    )
    for line in problems[:10]:
        print(f"    {line[:240]}")
    bad = sum(run.bad + run.socket_errors for done in measured for run in done.gateway + done.bare)
    if bad:
        print(f"  non-2xx/3xx answers or socket errors during the runs: {bad} (per run above)")


def spread(values: Sequence[float], spec: str) -> str:
    clean = [v for v in values if v == v]
    if not clean:
        return "-"
    return (
        f"{fmt(statistics.median(clean), spec)} [{fmt(min(clean), spec)}-{fmt(max(clean), spec)}]"
    )


def median(values: Sequence[float]) -> float:
    clean = [v for v in values if v == v]
    return statistics.median(clean) if clean else float("nan")


def summary(title: str, measured: Sequence[Measured], args: argparse.Namespace) -> None:
    print(
        f"\nSummary, {title}: medians [min-max] over {args.rounds} runs of {args.seconds} s each; "
        "ratio = jobgate median / bare median"
    )
    print(
        f"  {'row':<50} {'figure':<9} {'jobgate':>24} {'bare':>24} {'ratio':>6} "
        f"{'goal':>8}  verdict"
    )
    for done in measured:
        row = done.row
        if done.skipped:
            print(f"  {row.name:<50} {'n/a':<9} {done.skipped}")
            continue
        a = [run for run in done.gateway if not run.error]
        b = [run for run in done.bare if not run.error]
        figures: list[tuple[str, list[float], list[float], str, str, float | None, bool]] = [
            ("req/s", [r.rps for r in a], [r.rps for r in b], ",.0f", ">=", row.goal, False),
            (
                "p99 ms",
                [r.p99_ms for r in a],
                [r.p99_ms for r in b],
                ".2f",
                "<=",
                1 / row.goal if row.goal and row.p99_goal else None,
                True,
            ),
            (
                "CPU us/rq",
                [r.us_per_request for r in a],
                [r.us_per_request for r in b],
                ",.0f",
                "",
                None,
                True,
            ),
            (
                "  loop",
                [r.loop_us_per_request for r in a],
                [r.loop_us_per_request for r in b],
                ",.0f",
                "",
                None,
                True,
            ),
        ]
        for number, (name, xs, ys, spec, sign, goal, lower) in enumerate(figures):
            ratio = median(xs) / median(ys) if ys and xs else float("nan")
            goal_text = f"{sign} {goal:.2f}" if goal is not None else ""
            verdict = ""
            if goal is not None and ratio == ratio:
                met = ratio <= goal if lower else ratio >= goal
                verdict = "met" if met else "MISSED"
            label = row.name if number == 0 else ""
            print(
                f"  {label:<50} {name:<9} {spread(xs, spec):>24} {spread(ys, spec):>24} "
                f"{fmt(ratio, '.2f'):>6} {goal_text:>8}  {verdict}"
            )
    print(
        "  (CPU us/rq: the serving process's CPU time per request, from /proc, over the run; loop: "
        "its main thread's share, the rest is worker threads; p99 is wrk's, its own time in it)"
    )


# --------------------------------------------------------------------------------------------------
# Main


def machine_busy(seconds: float = 1.0) -> float:
    busy0, total0 = machine_jiffies()
    time.sleep(seconds)
    busy1, total1 = machine_jiffies()
    cpus = os.cpu_count() or 1
    return (busy1 - busy0) / max(1, total1 - total0) * cpus


async def bench(args: argparse.Namespace, directory: Path) -> None:
    stores = ("sqlite", "postgres") if args.store == "both" else (args.store,)
    busy = await asyncio.to_thread(machine_busy)
    print(
        f"bench_reads: {args.jobs} jobs, {args.rounds} rounds of {args.seconds} s a server and "
        f"row, {args.connections} connections; {os.cpu_count()} CPUs, {busy:.2f} busy in the "
        f"second before the start; {wrk_version()}"
    )
    if args.profile:
        print("  --profile: the gateway runs under cProfile; its figures are not comparable")
    results: list[tuple[str, list[Measured]]] = []
    for kind in stores:
        measured = await bench_store(kind, args, directory)
        if measured is not None:
            results.append((kind, measured))
    if len(results) > 1:
        print("\n=== all stores ===")
        for kind, measured in results:
            summary(kind, measured, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--store", choices=("sqlite", "postgres", "both"), default="sqlite")
    parser.add_argument("--seconds", type=int, default=5, help="one wrk run (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per server and row (3)")
    parser.add_argument("--jobs", type=int, default=200, help="finished jobs in the store (200)")
    parser.add_argument("--connections", type=int, default=50, help="rows 1, 3, 4 (default 50)")
    parser.add_argument(
        "--rows", default="1,2,3,4", help="which rows to run, by number (default 1,2,3,4)"
    )
    parser.add_argument(
        "--log-format",
        choices=("default", "console", "json"),
        default="default",
        help="default: what jobgate serve ships (no [log] in the config)",
    )
    parser.add_argument(
        "--log-access",
        choices=("default", "all", "reads", "off"),
        default="default",
        help="log.access (default: what jobgate serve ships)",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="the whole run's bound (s)")
    parser.add_argument("--profile", action="store_true", help="the gateway under cProfile")
    parser.add_argument("--dsn", default=DEFAULT_DSN, help=f"PostgreSQL (default {DEFAULT_DSN})")
    parser.add_argument(
        "--baseline-server", nargs=2, metavar=("PORT", "FILE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.baseline_server is not None:
        baseline_main(int(args.baseline_server[0]), Path(args.baseline_server[1]))
        return
    if args.seconds < 1 or args.rounds < 1 or args.jobs < LIST_LIMIT or args.timeout <= 0:
        parser.error(f"need --seconds >= 1, --rounds >= 1, --jobs >= {LIST_LIMIT}, --timeout > 0")
    try:
        args.rows = {int(number) for number in args.rows.split(",")}
    except ValueError:
        parser.error("--rows takes numbers from 1 to 4, comma-separated")
    if not args.rows or not args.rows <= {1, 2, 3, 4}:
        parser.error("--rows takes numbers from 1 to 4, comma-separated")
    if shutil.which("wrk") is None:
        parser.error(f"wrk is not installed: {WRK_INSTALL}")
    # The stores opened here to write the jobs log their migrations: not the bench's figures.
    configure_logging("console", "WARNING")
    processes.run_bounded(lambda directory: bench(args, directory), args.timeout, "jobgate-reads-")


if __name__ == "__main__":
    main()
