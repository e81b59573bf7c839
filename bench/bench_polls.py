"""Polls per second in one process: the real Runner and adapter HTTP against a fast fake upstream,
next to a bare aiohttp client loop making the same GETs at the same concurrency.

    python bench/bench_polls.py [--seconds 5] [--warmup 1.5] [--runs 3] [--jobs 2000]
                                [--concurrency 100] [--store sqlite|memory]
                                [--loop asyncio|uvloop|both] [--profile]

Issue 11's first row: a poll's CPU in the gateway against the same HTTP call made bare.

- The upstream is a tiny aiohttp server in its own process (``--upstream``, hidden) that answers
  the ``platform`` provider's ``GET /v1/api/jobs/{id}`` at once: the envelope and status JSON of a
  running job, with the platform's ``X-RateLimit-*`` headers (limits that never bind).
- ``jobgate``: a worker process (``--worker runner``, hidden) runs the real
  :class:`~gateway.runner.Runner` with the real :class:`~adapters.platform.adapter.PlatformAdapter`
  on an ``aiohttp.ClientSession``, wired as ``create_app`` wires them (the metrics as the runner's
  and the adapter's observer, a ``JobWriter``, a ``Capturer``), over ``--jobs`` running jobs in a
  store opened as the gateway opens it (SQLite: one file, exclusive). The policy never binds:
  concurrency ``--concurrency``, rate and burst in the millions, the next poll 1 ms after the last,
  so a job is due again as soon as its poll is saved.
- ``raw``, the baseline: a worker process (``--worker raw``) with ``--concurrency`` coroutines on
  one ``aiohttp.ClientSession`` making the same GETs (same URLs, same headers) in a loop, reading
  and decoding each body: what a poll costs with nothing around the HTTP call.

Each worker warms up for ``--warmup`` s, then counts upstream calls for ``--seconds``. CPU is the
worker process's (every thread: the store's too) over that window, per poll. Runs are interleaved
(raw, jobgate, jobgate, raw, ...) ``--runs`` times per event loop; the table gives each run, the
medians and spreads (min-max), and the ratio of the medians against the goal (>= 0.7x). With
``--loop both`` every figure is taken under asyncio's default loop and under uvloop, and the ratio
compares like with like. The upstream's CPU and the rest of the machine's are printed per run: on
a shared 2-core machine they say whether a run was starved. ``--profile`` prints a cProfile of
one extra jobgate window. Everything listens on 127.0.0.1 free ports and is killed at the end.
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import aiohttp
import orjson
from aiohttp import web
from processes import ROOT, free_port  # bench/ is sys.path[0]

GOAL: Final = 0.7
PROVIDER: Final = "platform"
BASE_PATH: Final = "/v1/api"
KEY: Final = "bench-platform-key-0123456789"
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
RESET_AFTER: Final = 3600
TICK: Final = 0.02
"""The runner's tick (its default, as the gateway ships it)."""


# --------------------------------------------------------------------------------------------------
# The fake upstream (its own process)


def platform_body(job_id: str) -> bytes:
    """What the platform answers for a running job (``adapters/platform/sandbox.py``'s shape)."""
    data = {
        "id": job_id,
        "type": "scrape",
        "status": "running",
        "progress": 40,
        "result": None,
        "createdAt": "2026-11-22T10:00:00Z",
        "completedAt": None,
    }
    return orjson.dumps({"data": data, "error": None})


async def serve_upstream(port: int) -> None:
    reset = str(int(time.time()) + RESET_AFTER)
    headers = {
        "Content-Type": "application/json",
        "X-RateLimit-Limit": "1000000",
        "X-RateLimit-Remaining": "999999",
        "X-RateLimit-Reset": reset,
    }
    prefix = BASE_PATH + "/jobs/"

    async def handle(request: web.BaseRequest) -> web.Response:
        path = request.path
        if request.method != "GET" or not path.startswith(prefix):
            return web.Response(status=404)
        return web.Response(body=platform_body(path[len(prefix) :]), headers=headers)

    server = web.Server(handle, access_log=None)
    loop = asyncio.get_running_loop()
    listening = await loop.create_server(server, "127.0.0.1", port, backlog=1024)
    print("ready", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        listening.close()


# --------------------------------------------------------------------------------------------------
# Measuring


def cpu_of(pid: int) -> float:
    """utime + stime of a process (every thread), in seconds."""
    with open(f"/proc/{pid}/stat") as stat:
        text = stat.read()
    user, system = (int(v) for v in text[text.rfind(")") + 2 :].split()[11:13])
    return (user + system) / CLOCK_TICKS


def machine_busy() -> float:
    """Busy CPU seconds over every core since boot (the first line of /proc/stat)."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLOCK_TICKS


@dataclass
class Sample:
    polls: int
    wall: float
    cpu: float
    upstream_cpu: float
    machine: float

    @classmethod
    def take(cls, polls: int, upstream: int) -> Sample:
        return cls(
            polls, time.perf_counter(), time.process_time(), cpu_of(upstream), machine_busy()
        )


def window(start: Sample, end: Sample, errors: int) -> dict[str, Any]:
    wall = end.wall - start.wall
    ours = end.cpu - start.cpu
    upstream = end.upstream_cpu - start.upstream_cpu
    return {
        "polls": end.polls - start.polls,
        "wall": wall,
        "cpu": ours,
        "upstream_cpu": upstream,
        "others_cpu": max(0.0, end.machine - start.machine - ours - upstream),
        "errors": errors,
    }


async def measure(
    count: Callable[[], int],
    errors: Callable[[], int],
    upstream: int,
    warmup: float,
    seconds: float,
    profile: bool = False,
) -> dict[str, Any]:
    await asyncio.sleep(warmup)
    profiler = cProfile.Profile() if profile else None
    start = Sample.take(count(), upstream)
    if profiler is not None:
        profiler.enable()
    await asyncio.sleep(seconds)
    if profiler is not None:
        profiler.disable()
    result = window(start, Sample.take(count(), upstream), errors())
    if profiler is not None:
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("tottime").print_stats(30)
        stats.sort_stats("cumulative").print_stats(45)
        result["profile"] = out.getvalue()
    return result


# --------------------------------------------------------------------------------------------------
# The workers (one process each)


def job_ids(jobs: int) -> list[str]:
    return [f"up-{index:07d}" for index in range(jobs)]


async def raw_worker(args: argparse.Namespace) -> dict[str, Any]:
    """The baseline: the same GETs, bare."""
    base = f"http://127.0.0.1:{args.port}{BASE_PATH}/jobs/"
    urls = [base + upstream_id for upstream_id in job_ids(args.jobs)]
    headers = {"Accept": "application/json", "Authorization": f"Bearer {KEY}"}
    done = 0
    failed = 0

    async def one(first: int) -> None:
        nonlocal done, failed
        index = first
        while True:
            try:
                async with session.get(urls[index % len(urls)], headers=headers) as response:
                    body = await response.read()
                    orjson.loads(body)
                    done += 1
            except aiohttp.ClientError:
                failed += 1
            index += args.concurrency

    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(one(i)) for i in range(args.concurrency)]
        try:
            return await measure(
                lambda: done, lambda: failed, args.upstream_pid, args.warmup, args.seconds
            )
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def runner_worker(args: argparse.Namespace) -> dict[str, Any]:
    """The real Runner and adapter, wired as ``create_app`` wires them."""
    from adapters.base import Progress
    from adapters.http import Connection
    from adapters.platform.adapter import PlatformAdapter
    from gateway.blobs import FilesystemBlobStore
    from gateway.capturer import Capturer
    from gateway.events import EventHub
    from gateway.jobs import Job, new_id
    from gateway.logs import configure_logging
    from gateway.metrics import Metrics
    from gateway.policy import PollPolicy
    from gateway.runner import Runner
    from gateway.states import JobState
    from gateway.store.base import JobStore
    from gateway.store.memory import MemoryStore
    from gateway.store.sqlite import SqliteStore
    from gateway.web.app import provider_session
    from gateway.writer import JobWriter

    configure_logging("json", "INFO")
    directory = Path(tempfile.mkdtemp(prefix="jobgate-polls-"))
    store: JobStore = (
        SqliteStore(directory / "polls.db", exclusive=True)
        if args.store == "sqlite"
        else MemoryStore()
    )
    await store.open()
    now = datetime.now(UTC)
    jobs = [
        Job(
            id=new_id(),
            provider=PROVIDER,
            upstream_id=upstream_id,
            state=JobState.RUNNING,
            created_at=now,
            updated_at=now,
            deadline_at=now + timedelta(days=1),
            native_status="running",
            progress=Progress(fraction=0.4, step="running"),
            started_at=now,
            next_poll_at=now,
            polls=1,
            labels={"team": "bench"},
        )
        for upstream_id in job_ids(args.jobs)
    ]
    if isinstance(store, SqliteStore | MemoryStore):
        await store._create_many([(job, ()) for job in jobs])
    blobs = FilesystemBlobStore(directory / "vault")
    await blobs.open()
    metrics = Metrics(process=False)
    policy = PollPolicy(
        first_delay=0.001,
        min_interval=0.001,
        max_interval=0.001,
        multiplier=1.0,
        jitter=0.0,
        concurrency=args.concurrency,
        rate_per_second=1e6,
        burst=1_000_000,
        eta_aware=False,
    )
    hub = EventHub()
    async with provider_session(args.concurrency) as session:
        adapter = PlatformAdapter(
            session,
            Connection(f"http://127.0.0.1:{args.port}{BASE_PATH}", KEY),
            observer=metrics.upstream_call,
            secrets=[KEY],
        )
        adapters = {PROVIDER: adapter}
        policies = {PROVIDER: policy}
        metrics.add_providers(adapters)
        capturer = Capturer(blobs, adapters, {}, {}, policies)
        runner = Runner(
            store,
            adapters,
            policies,
            hub,
            tick=TICK,
            observer=metrics,
            writer=JobWriter(store, hub, observer=metrics),
            capturer=capturer,
        )
        task = asyncio.create_task(runner.run())
        try:
            result = await measure(
                lambda: runner.status_calls[PROVIDER],
                lambda: 0,
                args.upstream_pid,
                args.warmup,
                args.seconds,
                profile=args.profile,
            )
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await store.close()
            shutil.rmtree(directory, ignore_errors=True)
    return result


def run_worker(args: argparse.Namespace) -> None:
    work: Callable[[argparse.Namespace], Coroutine[Any, Any, dict[str, Any]]]
    work = raw_worker if args.worker == "raw" else runner_worker
    if args.loop == "uvloop":
        import uvloop

        result = uvloop.run(work(args))
    else:
        result = asyncio.run(work(args))
    print(json.dumps(result), flush=True)


# --------------------------------------------------------------------------------------------------
# The parent


@dataclass
class Run:
    kind: str
    loop: str
    polls: int
    wall: float
    cpu: float
    upstream_cpu: float
    others_cpu: float
    errors: int

    @property
    def rate(self) -> float:
        return self.polls / self.wall

    @property
    def us_per_poll(self) -> float:
        return self.cpu * 1e6 / max(1, self.polls)


def start_upstream(port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, __file__, "--upstream", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    assert process.stdout is not None
    if process.stdout.readline().strip() != b"ready":
        process.kill()
        raise RuntimeError("the fake upstream did not start")
    return process


def run_one(
    args: argparse.Namespace, kind: str, loop: str, port: int, upstream: int, profile: bool = False
) -> tuple[Run, str]:
    command = [
        sys.executable,
        __file__,
        "--worker",
        kind,
        "--loop",
        loop,
        "--port",
        str(port),
        "--upstream-pid",
        str(upstream),
        "--seconds",
        str(args.seconds),
        "--warmup",
        str(args.warmup),
        "--jobs",
        str(args.jobs),
        "--concurrency",
        str(args.concurrency),
        "--store",
        args.store,
    ]
    if profile:
        command.append("--profile")
    limit = args.warmup + args.seconds + 120
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, timeout=limit, check=False, stdin=subprocess.DEVNULL
    )
    if done.returncode != 0:
        sys.stderr.write(done.stderr.decode(errors="replace")[-4000:])
        raise RuntimeError(f"the {kind} worker ({loop}) failed with {done.returncode}")
    last = done.stdout.decode().strip().splitlines()[-1]
    data = json.loads(last)
    text = data.pop("profile", "")
    return Run(kind=kind, loop=loop, **data), text


def spread(values: list[float]) -> str:
    return f"{min(values):,.0f}-{max(values):,.0f}"


def report(runs: list[Run], loops: list[str], concurrency: int) -> None:
    print()
    print(
        f"  {'run':<4} {'loop':<8} {'what':<8} {'polls/s':>9} {'CPU us/poll':>12} "
        f"{'CPU cores':>10} {'upstream':>9} {'others':>7} {'errors':>7}"
    )
    for index, run in enumerate(runs):
        print(
            f"  {index + 1:<4} {run.loop:<8} {run.kind:<8} {run.rate:>9,.0f} "
            f"{run.us_per_poll:>12,.0f} {run.cpu / run.wall:>10.2f} "
            f"{run.upstream_cpu / run.wall:>9.2f} {run.others_cpu / run.wall:>7.2f} "
            f"{run.errors:>7}"
        )
    print("  (CPU cores: the worker process, every thread; upstream: the fake upstream's process;")
    print("   others: the rest of the machine meanwhile)")
    print()
    print(
        f"  {'loop':<8} {'what':<8} {'polls/s median':>15} {'spread':>13} "
        f"{'us/poll median':>15} {'spread':>11}"
    )
    medians: dict[tuple[str, str], tuple[float, float]] = {}
    for loop in loops:
        for kind in ("raw", "runner"):
            mine = [run for run in runs if run.loop == loop and run.kind == kind]
            if not mine:
                continue
            rates = [run.rate for run in mine]
            costs = [run.us_per_poll for run in mine]
            medians[loop, kind] = (statistics.median(rates), statistics.median(costs))
            name = "jobgate" if kind == "runner" else "raw"
            print(
                f"  {loop:<8} {name:<8} {medians[loop, kind][0]:>15,.0f} {spread(rates):>13} "
                f"{medians[loop, kind][1]:>15,.0f} {spread(costs):>11}"
            )
    print(
        f"  (jobgate's ceiling here: {concurrency} polls in flight, claimed at most once a "
        f"{TICK * 1000:g} ms tick = {concurrency / TICK:,.0f} polls/s)"
    )
    print()
    for loop in loops:
        if (loop, "raw") not in medians or (loop, "runner") not in medians:
            continue
        ratio = medians[loop, "runner"][0] / medians[loop, "raw"][0]
        cost = medians[loop, "raw"][1] / medians[loop, "runner"][1]
        verdict = "ok" if ratio >= GOAL else "MISS"
        print(
            f"  [{verdict}] {loop}: jobgate / raw polls/s = {ratio:.2f}x "
            f"(CPU per poll: raw / jobgate = {cost:.2f}x); goal >= {GOAL}x"
        )
    if "asyncio" in loops and "uvloop" in loops:
        for kind, name in (("runner", "jobgate"), ("raw", "raw")):
            if ("asyncio", kind) in medians and ("uvloop", kind) in medians:
                gain = medians["uvloop", kind][0] / medians["asyncio", kind][0]
                print(f"  uvloop / asyncio, {name}: {gain:.2f}x polls/s")
        if ("uvloop", "runner") in medians and ("asyncio", "raw") in medians:
            mixed = medians["uvloop", "runner"][0] / medians["asyncio", "raw"][0]
            print(f"  jobgate on uvloop / raw on asyncio: {mixed:.2f}x")


def parent(args: argparse.Namespace) -> None:
    loops = ["asyncio", "uvloop"] if args.loop == "both" else [args.loop]
    if "uvloop" in loops:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            print("  uvloop is not installed: asyncio only")
            loops = ["asyncio"]
    port = free_port()
    print(
        f"jobgate poll bench: {args.jobs:,} jobs, concurrency {args.concurrency}, store "
        f"{args.store}, {args.runs} interleaved runs of {args.seconds:g} s (+{args.warmup:g} s "
        f"warm-up) per loop ({', '.join(loops)}); {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.2f}",
        flush=True,
    )
    upstream = start_upstream(port)
    runs: list[Run] = []
    try:
        for index in range(args.runs):
            for loop in loops:
                order = ("raw", "runner") if index % 2 == 0 else ("runner", "raw")
                for kind in order:
                    run, _ = run_one(args, kind, loop, port, upstream.pid)
                    runs.append(run)
                    name = "jobgate" if kind == "runner" else "raw"
                    print(
                        f"  run {index + 1} {loop:<8} {name:<8} {run.rate:>8,.0f} polls/s "
                        f"{run.us_per_poll:>6,.0f} us CPU/poll",
                        flush=True,
                    )
        report(runs, loops, args.concurrency)
        if args.profile:
            _, text = run_one(args, "runner", loops[-1], port, upstream.pid, profile=True)
            print()
            print(f"cProfile of one jobgate window ({loops[-1]}):")
            print(text)
    finally:
        upstream.kill()
        upstream.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--store", choices=("sqlite", "memory"), default="sqlite")
    parser.add_argument("--loop", choices=("asyncio", "uvloop", "both"), default="both")
    parser.add_argument("--profile", action="store_true", help="cProfile one more jobgate window")
    parser.add_argument("--upstream", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=("raw", "runner"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--upstream-pid", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.upstream:
        asyncio.run(serve_upstream(args.port))
        return
    if args.worker:
        run_worker(args)
        return
    if not 1 <= args.seconds <= 120 or args.runs < 1 or args.jobs < 1 or args.concurrency < 1:
        parser.error("need 1 <= --seconds <= 120, --runs >= 1, --jobs >= 1, --concurrency >= 1")
    parent(args)


if __name__ == "__main__":
    main()
