"""Result vault: a large pointer result read through the gateway, against bare aiohttp baselines.

    python bench/bench_vault.py [--mib 512] [--rounds 3] [--timeout 300] [--profile]

Three processes besides this one, all on 127.0.0.1:

- the origin (this script again, ``--serve origin``, hidden): a fake Pulse API that the real pulse
  adapter accepts. ``POST /extract`` answers ``pending``; ``GET /job/{id}`` answers ``completed``
  with an ``is_url`` pointer to ``/large_results/{id}`` on its own base URL (the proxy pointer, so
  the gateway sends ``x-api-key``). ``GET /large_results/{id}`` streams ``--mib`` MiB (one 1 MiB
  block of seeded bytes, repeated) with a ``Content-Length``; like Pulse's proxy it is single-use
  (410 the second time). ``GET /blob`` serves the same bytes to the baselines, any number of times;
  ``GET /counts`` says how often each was downloaded.
- the bare server (``--serve bare``, hidden): ``/proxy`` is the bare aiohttp streaming proxy
  (``session.get`` of the origin's ``/blob``, each 64 KiB read, the gateway's fetcher's chunk
  size, written into a ``web.StreamResponse``), and ``/file`` is ``web.FileResponse`` of a file of
  the same bytes.
- ``jobgate serve`` on a temporary SQLite file, with only the ``pulse`` provider, pointed at the
  origin, a fast poll policy, ``[vault] path`` in the temporary directory and
  ``providers.pulse.results.max_bytes`` above the result's size.

Each round submits a pulse job, waits for ``succeeded`` and reads ``/v1/jobs/{id}/result`` at
once (the first fetch: the capture is under way); then a second job whose result is read only once
the origin has seen the capture's request (a reader joining a capture in flight, which must follow
it); then the first job's result again (the stored copy, served from the vault). Both jobs are
deleted at the end of the round, their blobs with them. Each gateway read sits between two reads
of its baseline, and its ratio is to their mean (so a change in how busy the machine is weighs on
both); the summary gives the median ratio over the rounds:

1. first fetch: the gateway's, read by an aiohttp client hashing every chunk, against the same
   client reading the bare proxy. The client reading the origin directly is the ceiling of both.
   A read answered with an ``ETag`` did not follow the capture (a capture still streaming has no
   hash yet): it waited for the capture's end and got the stored copy. The bench says which.
2. stored copy: ``curl -s -o /dev/null`` of the gateway's ``/result`` against ``curl`` of the bare
   ``FileResponse`` (both files were just written, so both come from the page cache). A second read
   of the stored copy, by the hashing client, checks its bytes.
3. RSS: the gateway's VmRSS (from /proc, every 50 ms, in a thread) during the first fetches (from
   before the submit, so the whole capture is in the window) and during the stored read; the
   figure is the peak minus the sample taken before. The bare server's the same way.

Every gateway read is checked: its SHA-256 (hashed while streaming) against the origin's bytes,
and the origin's count of ``/large_results`` downloads for the job (1: the capture's); the stored
copy's ``ETag`` is its SHA-256. Each line also gives the time to the answer's head, the CPU time
the serving process took (utime + stime per GiB, the kernel's share, and every bench process's
together) and the CPUs the rest of the machine kept busy meanwhile ("others": work that is not the
bench's competes with its figures). Prints medians over ``--rounds``; asserts nothing. Everything
is removed at the end. ``--profile`` runs the gateway under cProfile and prints where its time went.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import pstats
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import aiohttp
import processes  # bench/ is sys.path[0]
from aiohttp import web
from processes import free_port, spawn_serve, to_toml

SCRIPT: Final = Path(__file__).resolve()
MiB: Final = 1024 * 1024
BLOCK: Final = hashlib.shake_256(b"jobgate bench_vault").digest(MiB)
"""The result's bytes: this 1 MiB block, ``--mib`` times."""
PROXY_CHUNK: Final = 64 * 1024
"""The bare proxy's read size: the gateway's fetcher's (``FetchPolicy.chunk_size``)."""
API_KEY: Final = "bench-vault-key"
SOURCE_HEADER: Final = "X-Jobgate-Result-Source"
PROFILE_LINES: Final = 25
START_WITHIN: Final = 30.0
"""How long a process may take to say where it listens (the gateway: to answer /readyz)."""
SUCCEED_WITHIN: Final = 30.0
"""How long a submitted job may take to reach ``succeeded``."""
STORED_WITHIN: Final = 10.0
"""How long after the first fetch the stored copy may take to be served (200)."""
SAMPLE_EVERY: Final = 0.05
JOIN_AFTER: Final = 0.05
"""A joining reader asks this long after the origin saw the capture's request: the capture
registers as followable once the answer's head is in."""
RSS_TARGET_MIB: Final = 64.0
FIRST_TARGET: Final = 0.9
STORED_TARGET: Final = 0.8
FINISHED: Final = frozenset({"succeeded", "failed", "canceled", "expired"})
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
POLICY: Final[dict[str, Any]] = {
    "first_delay": 0.05,
    "min_interval": 0.05,
    "max_interval": 0.2,
    "multiplier": 1.5,
    "deadline": 120,
    "error_max_interval": 0.3,
    "breaker_cooldown": 0.2,
    "rate_per_second": 500,
    "burst": 100,
}
"""tests/integration/conftest.py's FAST_POLICY."""


def expected_sha256(mib: int) -> str:
    digest = hashlib.sha256()
    for _ in range(mib):
        digest.update(BLOCK)
    return digest.hexdigest()


def iso_now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


# --------------------------------------------------------------------------------------------------
# The origin: a fake Pulse API and the bytes (``--serve origin``)


def origin_app(mib: int) -> web.Application:
    counts: Counter[str] = Counter()
    jobs: dict[str, str] = {}
    """Upstream job id -> its creation time."""
    moments: dict[str, float] = {}
    """``completed:{id}``: when a status call first answered ``completed`` (wall clock, as
    ``time.time()``); ``fetched:{id}``: when the pointer's download started."""

    async def stream_bytes(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=200)
        response.content_type = "application/octet-stream"
        response.content_length = mib * MiB
        await response.prepare(request)
        for _ in range(mib):
            await response.write(BLOCK)
        await response.write_eof()
        return response

    async def submit(request: web.Request) -> web.Response:
        if not request.headers.get("x-api-key"):
            return web.json_response({"error": {"code": "MISSING_API_KEY"}}, status=401)
        await request.read()
        job_id = uuid.uuid4().hex
        jobs[job_id] = iso_now()
        body = {"job_id": job_id, "status": "pending", "message": "queued", "queuedAt": iso_now()}
        return web.json_response(body)

    async def status(request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        if job_id not in jobs:
            return web.json_response({"error": {"code": "NOT_FOUND"}}, status=404)
        moments.setdefault(f"completed:{job_id}", time.time())
        pointer = {
            "is_url": True,
            "url": str(request.url.origin() / "large_results" / job_id),
            "extraction_id": job_id,
            "page_count": 1,
        }
        body = {
            "job_id": job_id,
            "status": "completed",
            "created_at": jobs[job_id],
            "updated_at": jobs[job_id],
            "result": pointer,
            "error": None,
        }
        return web.json_response(body)

    async def large_result(request: web.Request) -> web.StreamResponse:
        job_id = request.match_info["job_id"]
        if request.headers.get("x-api-key") != API_KEY:
            return web.json_response({"error": {"code": "INVALID_API_KEY"}}, status=401)
        if job_id not in jobs:
            return web.json_response({"error": {"code": "NOT_FOUND"}}, status=404)
        counts[f"large:{job_id}"] += 1
        moments.setdefault(f"fetched:{job_id}", time.time())
        if counts[f"large:{job_id}"] > 1:  # single-use, as Pulse's proxy download is
            return web.json_response({"error": {"code": "GONE"}}, status=410)
        return await stream_bytes(request)

    async def blob(request: web.Request) -> web.StreamResponse:
        counts["blob"] += 1
        return await stream_bytes(request)

    async def read_counts(request: web.Request) -> web.Response:
        return web.json_response({"counts": dict(counts), "moments": moments})

    app = web.Application()
    app.router.add_post("/extract", submit)
    app.router.add_get("/job/{job_id}", status)
    app.router.add_get("/large_results/{job_id}", large_result)
    app.router.add_get("/blob", blob)
    app.router.add_get("/counts", read_counts)
    return app


# --------------------------------------------------------------------------------------------------
# The bare baselines (``--serve bare``)


def bare_app(origin: str, path: Path) -> web.Application:
    session_key = web.AppKey("session", aiohttp.ClientSession)

    async def session_context(app: web.Application) -> AsyncIterator[None]:
        app[session_key] = aiohttp.ClientSession()
        yield
        await app[session_key].close()

    async def proxy(request: web.Request) -> web.StreamResponse:
        async with request.app[session_key].get(f"{origin}/blob") as upstream:
            response = web.StreamResponse(status=upstream.status)
            response.content_type = upstream.content_type
            if upstream.content_length is not None:
                response.content_length = upstream.content_length
            await response.prepare(request)
            async for chunk in upstream.content.iter_chunked(PROXY_CHUNK):
                await response.write(chunk)
            await response.write_eof()
            return response

    async def file(request: web.Request) -> web.FileResponse:
        return web.FileResponse(path)

    app = web.Application()
    app.cleanup_ctx.append(session_context)
    app.router.add_get("/proxy", proxy)
    app.router.add_get("/file", file)
    return app


def serve_main(args: argparse.Namespace) -> None:
    """A hidden mode: serve on a free port of 127.0.0.1 and print ``{"port": N}`` once listening."""
    app = origin_app(args.mib) if args.serve == "origin" else bare_app(args.origin, Path(args.file))

    async def serve() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        print(json.dumps({"port": port}), flush=True)
        try:
            # Until the parent closes our stdin (or dies).
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        finally:
            await runner.cleanup()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


# --------------------------------------------------------------------------------------------------
# Processes, /proc


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int, *, children: bool = False) -> tuple[float, float]:
    """(utime, stime) of the process (every thread), in seconds; with ``children``, those of its
    children it has waited for as well."""
    with open(f"/proc/{pid}/stat") as stat:
        text = stat.read()
    rest = [int(value) for value in text[text.rfind(")") + 2 :].split()[11:15]]
    user, system = rest[0] + (rest[2] if children else 0), rest[1] + (rest[3] if children else 0)
    return user / CLOCK_TICKS, system / CLOCK_TICKS


OURS: list[int] = []
"""The bench's processes (origin, bare server, gateway): the CPU the machine spends on anything
else is the rest, with this process and its curls."""


def our_cpu() -> float:
    total = sum(cpu_seconds(os.getpid(), children=True))
    for pid in OURS:
        with contextlib.suppress(OSError):
            total += sum(cpu_seconds(pid))
    return total


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies over every CPU since boot, from the first line of /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal
    return total - idle, total


@dataclass
class Window:
    """A process's RSS peak over a window (sampled in a thread every ``SAMPLE_EVERY`` s, so a
    busy event loop in this process does not skip samples), the CPU it took, and how busy the
    whole machine was meanwhile."""

    pid: int
    before: int = 0
    peak: int = 0
    cpu: float = 0.0
    system: float = 0.0
    """Of ``cpu``, the kernel's (stime): socket and page-cache copies, sendfile."""
    ours: float = 0.0
    """CPU seconds every process of the bench took over the window (origin, bare server,
    gateway, this process and its curls)."""
    others: float = 0.0
    """CPUs busy over the window with anything but the bench's processes (other work on the
    machine competing with the figures)."""
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _cpu0: tuple[float, float] = (0.0, 0.0)
    _machine0: tuple[int, int] = (0, 0)
    _ours0: float = 0.0

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.before) / MiB

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY):
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, rss_bytes(self.pid))

    def __enter__(self) -> Window:
        self.before = self.peak = rss_bytes(self.pid)
        self._cpu0 = cpu_seconds(self.pid)
        self._machine0 = machine_jiffies()
        self._ours0 = our_cpu()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        busy, total = machine_jiffies()
        ours = self.ours = our_cpu() - self._ours0
        if total > self._machine0[1]:
            cpus = os.cpu_count() or 1
            elapsed = (total - self._machine0[1]) / cpus / CLOCK_TICKS
            busy_s = (busy - self._machine0[0]) / CLOCK_TICKS
            self.others = max(0.0, busy_s - ours) / elapsed
        with contextlib.suppress(OSError):
            self.peak = max(self.peak, rss_bytes(self.pid))
            user, system = cpu_seconds(self.pid)
            self.cpu = user + system - sum(self._cpu0)
            self.system = system - self._cpu0[1]


class Server:
    """This script in a hidden ``--serve`` mode, as a child process."""

    def __init__(self, *argv: str) -> None:
        self.argv = argv
        self.process: asyncio.subprocess.Process | None = None
        self.url = ""

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self) -> str:
        self.process = await processes.spawn_script(SCRIPT, *self.argv)
        line = await processes.read_line(self.process, START_WITHIN)
        if not line:
            raise RuntimeError(f"{' '.join(self.argv[:2])} did not start (its stderr is above)")
        self.url = f"http://127.0.0.1:{json.loads(line)['port']}"
        return self.url

    async def stop(self) -> None:
        await processes.close_child(self.process, 10)


def gateway_config(origin: str, directory: Path, size: int) -> str:
    port = int(origin.rsplit(":", 1)[1])
    tables: dict[str, dict[str, Any]] = {
        "server": {"host": "127.0.0.1"},
        "store": {"kind": "sqlite", "path": str(directory / "jobs.db")},
        "runner": {"tick_ms": 10},
        "sandbox": {"embedded": False},
        "log": {"format": "json", "level": "WARNING"},
        "auth": {"required": False},
        "providers.pulse": {
            "base_url": origin,
            "result_hosts": ["127.0.0.1"],
            "result_networks": ["127.0.0.1/32"],
            "result_ports": [port],
        },
        "providers.pulse.policy": dict(POLICY),
        "providers.pulse.results": {"max_bytes": 2 * size},
        "vault": {"path": str(directory / "results")},
    }
    return to_toml(tables)


@dataclass
class Gateway:
    config: Path
    log: Path
    profile: Path | None = None
    """Run under cProfile, its stats written here when the gateway stops."""
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def _spawn(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOBGATE_")}
        env["PYTHONUNBUFFERED"] = "1"
        env["JOBGATE_PROVIDERS__PULSE__API_KEY"] = API_KEY
        profile = ["-m", "cProfile", "-o", str(self.profile)] if self.profile is not None else []
        self.process = spawn_serve(self.config, self.port, env, self.log, python_args=profile)

    async def start(self, session: aiohttp.ClientSession) -> float:
        """Start and wait for /readyz; returns the seconds that took."""
        began = time.monotonic()
        self._spawn()
        assert self.process is not None
        return await processes.until_ready(
            session, self.url, self.process, self.log, START_WITHIN, began=began
        )

    def tail(self) -> str:
        return processes.log_tail(self.log)

    async def stop(self) -> None:
        await processes.stop_process(self.process, 10)


# --------------------------------------------------------------------------------------------------
# Reads


@dataclass
class Read:
    """One download: what came back and how fast (``seconds`` from the request to the last byte)."""

    status: int
    size: int
    seconds: float
    first_byte: float = float("nan")
    """Seconds from the request to the answer's head (curl: to its first byte)."""
    sha256: str | None = None
    etag: str | None = None
    source: str | None = None
    """The gateway's ``X-Jobgate-Result-Source`` header (``jobgate``: the vault's bytes)."""
    error: str | None = None
    window: Window | None = None
    """The serving process's RSS and CPU over the read (or over the job, for a first fetch)."""

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None

    @property
    def mib_s(self) -> float:
        return self.size / MiB / self.seconds if self.ok and self.seconds > 0 else float("nan")

    @property
    def cpu_per_gib(self) -> float:
        if self.window is None or not self.ok or not self.size:
            return float("nan")
        return self.window.cpu / (self.size / (1024 * MiB))

    @property
    def all_cpu_per_gib(self) -> float:
        """Every bench process's CPU over the read, per GiB: what the pipeline costs."""
        if self.window is None or not self.ok or not self.size:
            return float("nan")
        return self.window.ours / (self.size / (1024 * MiB))


async def hashed_read(session: aiohttp.ClientSession, url: str, within: float) -> Read:
    """GET ``url`` with aiohttp, hashing every chunk as it arrives (nothing is kept)."""
    digest = hashlib.sha256()
    size = 0
    began = time.perf_counter()
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=within)) as response:
            first_byte = time.perf_counter() - began
            if response.status != 200:
                text = (await response.read())[:300].decode(errors="replace")
                return Read(response.status, 0, time.perf_counter() - began, error=text)
            async for chunk in response.content.iter_any():
                digest.update(chunk)
                size += len(chunk)
            return Read(
                200,
                size,
                time.perf_counter() - began,
                first_byte=first_byte,
                sha256=digest.hexdigest(),
                etag=response.headers.get("ETag"),
                source=response.headers.get(SOURCE_HEADER),
            )
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Read(0, size, time.perf_counter() - began, error=f"{type(exc).__name__}: {exc}")


async def curl_read(url: str, within: float) -> Read:
    """``curl -s -o /dev/null``: curl's own figures (status, bytes, total time)."""
    process = await asyncio.create_subprocess_exec(
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "--max-time",
        f"{within:g}",
        "-w",
        "%{http_code} %{size_download} %{time_total} %{time_starttransfer}",
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), within + 5)
    except TimeoutError:
        process.kill()
        await process.wait()
        return Read(0, 0, within, error="curl did not finish")
    code, size, seconds, first_byte = out.decode().split()
    error = None if process.returncode == 0 else f"curl exited {process.returncode}"
    return Read(int(code), int(size), float(seconds), float(first_byte), error=error)


async def measured(pid: int, read: Awaitable[Read]) -> Read:
    """``read``, with the serving process's RSS peak and CPU over it."""
    with Window(pid) as window:
        result = await read
    result.window = window
    return result


# --------------------------------------------------------------------------------------------------
# A round


@dataclass
class First:
    """One job's first fetch through the gateway."""

    read: Read
    job_id: str
    succeeded_s: float
    """From the submit to the job read as ``succeeded``."""
    downloads: int = 0
    """The origin's ``/large_results`` downloads for the job (1: the capture's)."""
    capture_delay: float = float("nan")
    """From the status call that answered ``completed`` to the capture's request for the pointer
    (both as the origin saw them)."""
    head_start: float = float("nan")
    """From the capture's request for the pointer to the reader's request (negative: the reader
    asked first)."""

    @property
    def followed(self) -> bool:
        """Served from the capture as it streamed: the stored copy carries an ETag, a capture
        still streaming cannot (its hash is not known yet)."""
        return self.read.ok and self.read.source == "jobgate" and self.read.etag is None


@dataclass
class Round:
    direct: Read
    proxy: tuple[Read, Read, Read]
    """The bare proxy, read before, between and after the gateway's two first fetches."""
    at_once: First
    """Read as soon as the job is seen ``succeeded``."""
    joined: First
    """Read once the capture has started streaming (the origin saw its request)."""
    file: tuple[Read, Read]
    """The bare FileResponse, read just before and just after the gateway's stored copy."""
    stored: Read | None
    """The stored copy (of ``at_once``'s job), by curl (``None`` when it never answered 200)."""
    check: Read | None
    """The stored copy again, by the hashing client (``None`` with ``stored``)."""
    stored_after: float
    """From the end of the first fetch until the stored copy answered 200."""
    stored_refusal: str = ""
    """What the gateway answered instead, when the stored copy never did."""

    @property
    def at_once_ratio(self) -> float:
        """The first fetch's MiB/s over the mean of the two bare proxy reads around it."""
        return self.at_once.read.mib_s / mean_speed(self.proxy[:2])

    @property
    def joined_ratio(self) -> float:
        return self.joined.read.mib_s / mean_speed(self.proxy[1:])

    @property
    def stored_ratio(self) -> float:
        if self.stored is None:
            return float("nan")
        return self.stored.mib_s / mean_speed(self.file)


def mean_speed(reads: Sequence[Read]) -> float:
    speeds = [read.mib_s for read in reads if read.ok]
    return statistics.fmean(speeds) if speeds else float("nan")


@dataclass
class Bench:
    session: aiohttp.ClientSession
    origin: Server
    bare: Server
    gateway: Gateway
    per_read: float
    """A read's bound in seconds."""

    async def submit_and_wait(self) -> tuple[dict[str, Any], float]:
        """A pulse job, submitted and waited for until ``succeeded``; the seconds that took."""
        began = time.perf_counter()
        body = {
            "provider": "pulse",
            "request": {"fileUrl": "https://example.com/x.pdf", "async": True},
        }
        async with self.session.post(f"{self.gateway.url}/v1/jobs", json=body) as response:
            job: dict[str, Any] = await response.json()
            if response.status != 201:
                raise RuntimeError(f"submit answered {response.status}: {job}")
        deadline = time.monotonic() + SUCCEED_WITHIN
        while job["state"] not in FINISHED:
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {job['id']} still {job['state']} after {SUCCEED_WITHIN} s")
            async with self.session.get(f"{self.gateway.url}/v1/jobs/{job['id']}?wait=5") as r:
                job = await r.json()
        if job["state"] != "succeeded":
            raise RuntimeError(f"job {job['id']} ended {job['state']}: {job.get('error')}")
        return job, time.perf_counter() - began

    async def origin_seen(self) -> dict[str, Any]:
        async with self.session.get(f"{self.origin.url}/counts") as response:
            seen: dict[str, Any] = await response.json()
            return seen

    async def until_fetched(self, upstream_id: str) -> None:
        """Until the origin has seen the capture's request for the pointer (or 5 s)."""
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            if f"fetched:{upstream_id}" in (await self.origin_seen())["moments"]:
                return
            await asyncio.sleep(0.005)

    async def gateway_first(self, *, join: bool) -> First:
        """Submit, wait for ``succeeded``, read the result: at once, or (``join``) once the
        capture has asked the origin for the pointer and had ``JOIN_AFTER`` s to get its answer's
        head. The window opens before the submit, so the whole capture is in it."""
        with Window(self.gateway.pid) as window:
            job, succeeded_s = await self.submit_and_wait()
            if join:
                await self.until_fetched(job["upstream_id"])
                await asyncio.sleep(JOIN_AFTER)
            asked = time.time()
            url = f"{self.gateway.url}/v1/jobs/{job['id']}/result"
            read = await hashed_read(self.session, url, self.per_read)
        read.window = window
        first = First(read, job["id"], succeeded_s)
        seen = await self.origin_seen()
        upstream_id = job["upstream_id"]
        first.downloads = seen["counts"].get(f"large:{upstream_id}", 0)
        fetched = seen["moments"].get(f"fetched:{upstream_id}")
        completed = seen["moments"].get(f"completed:{upstream_id}")
        if fetched is not None and completed is not None:
            first.capture_delay = fetched - completed
            first.head_start = asked - fetched
        return first

    async def gateway_stored(self, job_id: str) -> tuple[Read | None, float, str]:
        """The stored copy, read by curl once it answers 200 (within ``STORED_WITHIN``)."""
        url = f"{self.gateway.url}/v1/jobs/{job_id}/result"
        began = time.monotonic()
        while True:
            stored = await measured(self.gateway.pid, curl_read(url, self.per_read))
            if stored.ok:
                return stored, time.monotonic() - began - stored.seconds, ""
            if time.monotonic() - began > STORED_WITHIN:
                return None, time.monotonic() - began, f"HTTP {stored.status}"
            await asyncio.sleep(0.05)

    def proxy_read(self) -> Awaitable[Read]:
        read = hashed_read(self.session, f"{self.bare.url}/proxy", self.per_read)
        return measured(self.bare.pid, read)

    def file_read(self) -> Awaitable[Read]:
        return measured(self.bare.pid, curl_read(f"{self.bare.url}/file", self.per_read))

    async def round(self) -> Round:
        """Each gateway read between two reads of its baseline, so that a change in how busy the
        machine is shows in both."""
        direct = await hashed_read(self.session, f"{self.origin.url}/blob", self.per_read)
        proxy_before = await self.proxy_read()
        at_once = await self.gateway_first(join=False)
        proxy_between = await self.proxy_read()
        joined = await self.gateway_first(join=True)
        proxy_after = await self.proxy_read()
        file_before = await self.file_read()
        stored, waited, refusal = await self.gateway_stored(at_once.job_id)
        file_after = await self.file_read()
        check = None
        if stored is not None:
            url = f"{self.gateway.url}/v1/jobs/{at_once.job_id}/result"
            check = await hashed_read(self.session, url, self.per_read)
        for job_id in (at_once.job_id, joined.job_id):
            # Its blobs go with it: the disk holds one round's, not every round's.
            async with self.session.delete(f"{self.gateway.url}/v1/jobs/{job_id}") as response:
                if response.status != 204:
                    print(f"  (deleting job {job_id} answered {response.status})")
        return Round(
            direct=direct,
            proxy=(proxy_before, proxy_between, proxy_after),
            at_once=at_once,
            joined=joined,
            file=(file_before, file_after),
            stored=stored,
            check=check,
            stored_after=waited,
            stored_refusal=refusal,
        )


# --------------------------------------------------------------------------------------------------
# Figures


def median(values: Sequence[float]) -> float:
    clean = [v for v in values if v == v]
    return statistics.median(clean) if clean else float("nan")


def fmt(value: float, spec: str = ".0f") -> str:
    return "-" if value != value else format(value, spec)


def verdict(value: float, target: float, *, below: bool = False) -> str:
    if value != value:
        return "n/a"
    met = value < target if below else value >= target
    return "met" if met else "MISSED"


def describe(read: Read | None) -> str:
    if read is None:
        return "not served"
    if not read.ok:
        return f"failed ({read.status}: {(read.error or '')[:120]})"
    text = f"{read.mib_s:5.0f} MiB/s  head {read.first_byte * 1000:4.0f} ms"
    if read.window is not None:
        window = read.window
        kernel = window.system / window.cpu if window.cpu else 0.0
        text += (
            f"  RSS {window.growth_mib:+5.1f} MiB  CPU {read.cpu_per_gib:4.2f} s/GiB "
            f"({kernel:3.0%} kernel; all {read.all_cpu_per_gib:4.2f})  others "
            f"{window.others:.1f} CPUs"
        )
    return text


def how(first: First) -> str:
    served = "followed the capture" if first.followed else "not followed (stored copy)"
    return (
        f"    {served}; capture asked the origin {fmt(first.capture_delay * 1000)} ms after "
        f"'completed', the reader {fmt(first.head_start * 1000)} ms after the capture; origin "
        f"downloads {first.downloads}"
    )


def print_round(number: int, done: Round) -> None:
    print(f"round {number}:")
    print(f"  origin direct        {describe(done.direct)}")
    print(f"  bare proxy           {describe(done.proxy[0])}")
    print(f"  gateway, at once     {describe(done.at_once.read)}")
    print(how(done.at_once))
    print(f"  bare proxy           {describe(done.proxy[1])}")
    print(f"  gateway, joining     {describe(done.joined.read)}")
    print(how(done.joined))
    print(f"  bare proxy           {describe(done.proxy[2])}")
    print(f"  bare FileResponse    {describe(done.file[0])}")
    stored = describe(done.stored)
    if done.stored is None:
        stored += f" (it answered {done.stored_refusal} for {STORED_WITHIN:g} s)"
    print(f"  gateway stored       {stored}")
    print(f"  bare FileResponse    {describe(done.file[1])}")
    if done.check is not None and not done.check.ok:
        print(f"  stored check         {describe(done.check)}")
    print(
        f"  ratios: first fetch at once {fmt(done.at_once_ratio, '.2f')}, joining "
        f"{fmt(done.joined_ratio, '.2f')}; stored {fmt(done.stored_ratio, '.2f')}"
    )


def report(rounds: Sequence[Round], size: int, sha: str) -> None:
    direct = [r.direct for r in rounds]
    proxy = [read for r in rounds for read in r.proxy]
    firsts = [first for r in rounds for first in (r.at_once, r.joined)]
    at_once = [r.at_once.read for r in rounds]
    joined = [r.joined.read for r in rounds]
    file = [read for r in rounds for read in r.file]
    stored = [r.stored for r in rounds if r.stored is not None]
    check = [r.check for r in rounds if r.check is not None]
    at_once_ratio = median([r.at_once_ratio for r in rounds])
    joined_ratio = median([r.joined_ratio for r in rounds])
    stored_ratio = median([r.stored_ratio for r in rounds])

    def row(name: str, reads: Sequence[Read], ratio: float | None = None, target: str = "") -> None:
        ok = [read for read in reads if read.ok]
        speed = median([read.mib_s for read in ok])
        cpu = median([read.cpu_per_gib for read in ok])
        everyone = median([read.all_cpu_per_gib for read in ok])
        head = median([read.first_byte * 1000 for read in ok])
        rss = max((r.window.growth_mib for r in ok if r.window), default=float("nan"))
        shown = "" if ratio is None else fmt(ratio, ".2f")
        print(
            f"  {name:<40} {fmt(speed):>6} {shown:>6} {target:>7} {fmt(head):>8}"
            f"  {fmt(cpu, '.2f'):>6} {fmt(everyone, '.2f'):>6}  {fmt(rss, '.1f'):>8}"
        )

    n = len(rounds)
    print()
    print(
        f"Summary over {n} rounds of {size // MiB} MiB: medians; a ratio is the median of each "
        "round's gateway read over the mean of the two baseline reads around it"
    )
    print(
        f"  {'read':<40} {'MiB/s':>6} {'ratio':>6} {'target':>7} {'head ms':>8}  "
        f"{'CPU s/GiB':>13}  {'RSS +MiB':>8}"
    )
    print(f"  {'':<40} {'':>6} {'':>6} {'':>7} {'':>8}  {'server':>6} {'all':>6}")
    row("origin direct (the client's ceiling)", direct)
    row("1. bare aiohttp streaming proxy", proxy)
    row("   gateway first fetch, read at once", at_once, at_once_ratio, f">= {FIRST_TARGET:g}")
    row("   gateway first fetch, joining capture", joined, joined_ratio, f">= {FIRST_TARGET:g}")
    row("2. bare web.FileResponse (curl)", file)
    row("   gateway stored copy (curl)", stored, stored_ratio, f">= {STORED_TARGET:g}")
    print(
        "  (head: request to the answer's head; server: the serving process's CPU per GiB, the "
        "gateway's from before the submit; all: every bench process's, the client's included)"
    )
    growth = [r.window.growth_mib for r in [*at_once, *joined, *stored] if r.window and r.ok]
    rss_max = max(growth, default=float("nan"))
    bare_growth = [r.window.growth_mib for r in [*proxy, *file] if r.window is not None and r.ok]
    print()
    print(
        f"1. first fetch vs bare proxy: {fmt(at_once_ratio, '.2f')}x read at once, "
        f"{fmt(joined_ratio, '.2f')}x joining the capture (target >= {FIRST_TARGET:g}x): "
        f"{verdict(at_once_ratio, FIRST_TARGET)} / {verdict(joined_ratio, FIRST_TARGET)}"
    )
    print(
        f"2. stored copy vs bare FileResponse: {fmt(stored_ratio, '.2f')}x "
        f"(target >= {STORED_TARGET:g}x): {verdict(stored_ratio, STORED_TARGET)}"
    )
    print(
        f"3. gateway RSS growth, max over every read: {fmt(rss_max, '.1f')} MiB (target < "
        f"{RSS_TARGET_MIB:g} MiB): {verdict(rss_max, RSS_TARGET_MIB, below=True)}; the bare "
        f"server's: {fmt(max(bare_growth, default=float('nan')), '.1f')} MiB"
    )
    firsts_ok = sum(1 for f in firsts if f.read.ok and f.read.sha256 == sha and f.read.size == size)
    checks_ok = sum(1 for r in check if r.ok and r.sha256 == sha and r.size == size)
    etags_ok = sum(1 for r in check if r.ok and (r.etag or "").strip('W/"') == sha)
    print(
        f"checks: SHA-256 of the first fetches {firsts_ok}/{2 * n}, of the stored copies "
        f"{checks_ok}/{n}, ETag is the SHA-256 {etags_ok}/{n}; origin downloads of each pointer "
        f"{[f.downloads for f in firsts]} (1: the capture's); the baselines' SHA-256 "
        f"{sum(1 for r in [*direct, *proxy] if r.sha256 == sha)}/{4 * n}"
    )
    followed = [sum(r.at_once.followed for r in rounds), sum(r.joined.followed for r in rounds)]
    print(
        f"followed the capture as it streamed: read at once {followed[0]}/{n}, joining "
        f"{followed[1]}/{n} "
        f"(a read not following waited for the capture's end and got the stored copy); the "
        f"reader's request after the capture's: at once median "
        f"{fmt(median([r.at_once.head_start * 1000 for r in rounds]))} ms, joining "
        f"{fmt(median([r.joined.head_start * 1000 for r in rounds]))} ms"
    )
    others = [r.window.others for r in [*proxy, *at_once, *joined, *file, *stored] if r.window]
    print(
        f"other work on the machine during the reads: median {fmt(median(others), '.1f')} CPUs, "
        f"max {fmt(max(others, default=float('nan')), '.1f')} (of {os.cpu_count()})"
    )
    print(
        f"submit to succeeded: median {median([f.succeeded_s for f in firsts]):.2f} s; the "
        f"capture's request after 'completed': median "
        f"{fmt(median([f.capture_delay * 1000 for f in firsts]))} ms; the first fetch's end to "
        f"the stored copy served: median {median([r.stored_after for r in rounds]):.2f} s"
    )


# --------------------------------------------------------------------------------------------------
# The run


async def bench(args: argparse.Namespace, directory: Path) -> None:
    size = args.mib * MiB
    sha = expected_sha256(args.mib)
    source = directory / "bare.bin"
    with source.open("wb") as out:
        for _ in range(args.mib):
            out.write(BLOCK)
    per_read = max(60.0, args.mib / 10)  # a read's bound: 10 MiB/s at the slowest
    async with contextlib.AsyncExitStack() as stack:
        origin = Server("--serve", "origin", "--mib", str(args.mib))
        stack.push_async_callback(origin.stop)
        await origin.start()
        OURS.append(origin.pid)
        bare = Server("--serve", "bare", "--origin", origin.url, "--file", str(source))
        stack.push_async_callback(bare.stop)
        await bare.start()
        OURS.append(bare.pid)
        config = directory / "gateway.toml"
        config.write_text(gateway_config(origin.url, directory, size))
        session = await stack.enter_async_context(
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        )
        profile = directory / "gateway.prof" if args.profile else None
        gateway = Gateway(config, directory / "gateway.stderr.log", profile=profile)
        stack.push_async_callback(gateway.stop)
        ready = await gateway.start(session)
        OURS.append(gateway.pid)
        print(
            f"jobgate vault bench: a {args.mib} MiB pointer result (a 1 MiB block repeated), "
            f"{args.rounds} rounds, {os.cpu_count()} CPUs; gateway ready in {ready:.2f} s"
        )
        runs = Bench(session, origin, bare, gateway, per_read)
        # Untimed: the bare server's first request opens its session and the files' pages are
        # read once, so round 1 is not the one that pays for starting up.
        await runs.proxy_read()
        await runs.file_read()
        rounds: list[Round] = []
        for number in range(1, args.rounds + 1):
            done = await runs.round()
            rounds.append(done)
            print_round(number, done)
        report(rounds, size, sha)
        if any(not (r.at_once.read.ok and r.joined.read.ok) for r in rounds):
            print(f"gateway log (tail):\n{gateway.tail()}")
        if profile is not None:
            await gateway.stop()  # cProfile writes its stats as the process exits
            print()
            print("cProfile of the gateway process, the whole run (sorted by own time; under the")
            print("profiler every figure above is slower than without it):")
            stats = pstats.Stats(str(profile), stream=sys.stdout)
            stats.sort_stats("tottime").print_stats(PROFILE_LINES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mib", type=int, default=512, help="the result's size (default 512)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, medians (default 3)")
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="the whole run's bound in seconds"
    )
    parser.add_argument(
        "--profile", action="store_true", help="run the gateway under cProfile and print it"
    )
    parser.add_argument("--serve", choices=("origin", "bare"), help=argparse.SUPPRESS)
    parser.add_argument("--origin", help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve_main(args)
        return
    if args.mib < 1 or args.rounds < 1 or args.timeout <= 0:
        parser.error("need --mib >= 1, --rounds >= 1 and --timeout > 0")
    processes.run_bounded(lambda directory: bench(args, directory), args.timeout, "jobgate-vault-")


if __name__ == "__main__":
    main()
