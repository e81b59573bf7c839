"""SSE fan-out: one job's event stream through jobgate, against a bare aiohttp app.

    python bench/bench_sse.py [--clients 1000,10000] [--rounds 3] [--workers 2] [--in-flight 64]
                              [--timeout 900]

Issue 11. Besides this one, these processes, all on 127.0.0.1 (each raises its open-file limit):

- ``jobgate serve`` on a temporary SQLite file, with the embedded sandbox and only the ``pulse``
  provider, whose poll policy waits an hour: a submitted job stays ``queued`` with its one
  ``created`` event until the bench cancels it. The cancel (``POST /v1/jobs/{id}/cancel``) is the
  trigger: it calls the sandbox, polls the job at once and commits one ``state`` event
  (``canceled``), which every stream sends, then ``event: end``.
- the bare baseline (this script, ``--serve bare``, hidden): ``GET /v1/jobs/{id}/events`` prepares
  a ``web.StreamResponse`` with jobgate's SSE headers and holds it; ``POST /trigger`` writes the
  body it is given (a canceled job's ``state`` frame and ``end`` frame, copied byte for byte from
  jobgate's stream of a calibration job) to every held response, in a loop of
  ``await response.write(...)``, then ``write_eof``.
- ``--workers`` client processes (this script, ``--client``, hidden), each opening its share of the
  N connections as raw asyncio protocols (no HTTP client library: the client must cost less than
  either server), at most ``--in-flight`` connects at a time each (aiohttp listens with a backlog of
  128), each sending ``GET`` with ``Last-Event-ID`` equal to the job's last event id (so nothing is
  owed but what comes next) and noting when its response head arrived and when the trigger's
  ``"canceled"`` first appeared in its stream. Timestamps are ``CLOCK_MONOTONIC``, which every
  process on the machine shares.

Each round starts a fresh jobgate and a fresh bare server (the order alternates between rounds),
warms each up with 20 clients, then for each N (largest first, so the RSS figure is of a process
that has not held connections before): wait until the server is idle, connect N clients, wait a
second, read VmRSS, trigger, wait for every client's receipt, close every client (RST, so no
TIME_WAIT piles up). Figures:

1. connect: from the first connect to the last client's response head, and the server's CPU
   (utime + stime from /proc) per connection meanwhile.
2. fan-out: from the event's making to the last client's receipt. jobgate's event is made when
   the cancel's poll is applied (the job's ``updated_at``, read back after the run; the commit and
   the publish follow at once); the bare event when the trigger arrives (the bare server says
   when). The first and median receipts, the time from the trigger request (with the cancel's own
   work, a sandbox call and a poll) and the server's CPU per subscriber are printed too.
3. RSS per connection: VmRSS after connecting N minus before, over N.

The clients count receipts in one callback per connection and schedule nothing per connection,
so being told to wait costs them nothing while the event arrives (jobgate's cancel answers before
its event is out, the bare trigger after). Each run also prints the CPU the machine's other
processes used meanwhile, and the run starts by naming the commit and the gateway files changed
in the work tree (figures are of the code on disk).

Prints each run, then medians with their spread (min-max) over ``--rounds`` and the ratio to the
bare baseline next to issue 11's goals (times: bare / jobgate, >= 0.8; memory: jobgate / bare,
<= 1.2). Asserts nothing. Everything is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import aiohttp
import processes  # bench/ is sys.path[0]
from aiohttp import web
from processes import free_port, spawn_serve, to_toml

SCRIPT: Final = Path(__file__).resolve()
ROOT: Final = SCRIPT.parents[1]
KiB: Final = 1024
HEADERS: Final = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
"""jobgate's SSE response headers (``gateway/web/fanout.py``)."""
MARKER: Final = b'"canceled"'
"""What a client waits for: in the trigger's event, in no frame before it."""
START_WITHIN: Final = 30.0
CONNECT_WITHIN: Final = 180.0
RECEIVE_WITHIN: Final = 60.0
SETTLE: Final = 1.0
"""Seconds between the last response head and the RSS reading."""
WARM_UP: Final = 20
QUIESCE_WITHIN: Final = 10.0
IDLE_CPU: Final = 0.005
"""CPU seconds in a tenth of a second below which a server counts as idle."""
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
SLOW_POLICY: Final[dict[str, Any]] = {
    "first_delay": 3600,
    "min_interval": 3600,
    "max_interval": 3600,
    "deadline": 86400,
}
"""No poll until the trigger: the job's stream carries nothing but what the bench causes."""
NAN: Final = float("nan")
GOAL_TIME: Final = 0.8
GOAL_MEMORY: Final = 1.2


def code_under_test() -> str:
    """The commit the work tree is on and the gateway files changed in it (a shared tree may
    hold others' edits in progress: figures are of the code on disk)."""

    def git(*args: str) -> list[str]:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.splitlines()

    edits = ", ".join(line[3:] for line in git("status", "--short", "--", "gateway", "adapters"))
    commit = git("rev-parse", "--short", "HEAD") or ["?"]
    return f"commit {commit[0]}; uncommitted: {edits or 'none'}"


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * KiB
    return 0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        text = stat.read()
    user, system = (int(value) for value in text[text.rfind(")") + 2 :].split()[11:13])
    return (user + system) / CLOCK_TICKS


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies over every CPU since boot, from the first line of /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal
    return total - idle, total


# --------------------------------------------------------------------------------------------------
# The bare baseline (``--serve bare``)


def bare_app() -> web.Application:
    held: set[web.StreamResponse] = set()
    ends = [asyncio.Event()]
    """The current wave's end: set by the trigger, then replaced for the next wave."""

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers=HEADERS)
        await response.prepare(request)
        held.add(response)
        try:
            await ends[-1].wait()
        finally:
            held.discard(response)
        return response

    async def trigger(request: web.Request) -> web.Response:
        arrived = time.monotonic()
        body = await request.read()
        for response in list(held):
            with contextlib.suppress(ConnectionError):
                await response.write(body)
                await response.write_eof()
        held.clear()
        ends.append(asyncio.Event())
        ends.pop(0).set()
        return web.json_response({"at": arrived}, status=202)

    app = web.Application()
    app.router.add_get("/v1/jobs/{job_id}/events", events)
    app.router.add_post("/trigger", trigger)
    return app


def serve_main() -> None:
    """Serve on a free port of 127.0.0.1, print ``{"port": N}``, stop when stdin closes."""
    raise_fd_limit()

    async def serve() -> None:
        runner = web.AppRunner(bare_app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        print(json.dumps({"port": runner.addresses[0][1]}), flush=True)
        try:
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        finally:
            await runner.cleanup()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


# --------------------------------------------------------------------------------------------------
# The client worker (``--client``): commands on stdin, one JSON line each; answers on stdout


class Subscriber(asyncio.Protocol):
    """One SSE connection: sends its request, notes its response head and the marker's arrival
    (or the connection's loss) and tells its worker, which counts them: nothing is scheduled per
    connection, so that waiting costs the client nothing while the event arrives."""

    def __init__(self, worker: Worker, request: bytes, headed: asyncio.Future[None]) -> None:
        self.worker = worker
        self.request = request
        self.headed = headed
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.head_at: float | None = None
        self.got_at: float | None = None
        self.tail = b""
        self.settled = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.head_at is None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            data = self.head[end + 4 :]
            status = self.head.split(b" ", 2)[1] if self.head.count(b" ") >= 2 else b""
            self.head = b""
            self.head_at = time.monotonic()
            if not self.headed.done():
                if status == b"200":
                    self.headed.set_result(None)
                else:
                    self.headed.set_exception(RuntimeError(f"status {status.decode()}"))
        if self.got_at is None and data:
            window = self.tail + data
            if MARKER in window:
                self.got_at = time.monotonic()
                self.settle()
            self.tail = window[-len(MARKER) :]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.headed.done():
            self.headed.set_exception(exc or ConnectionResetError("closed before the head"))
        self.settle()  # nothing more can come

    def settle(self) -> None:
        if not self.settled:
            self.settled = True
            self.worker.settled()

    def abort(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:  # RST on close: no TIME_WAIT for the next run's ports
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()


class Worker:
    def __init__(self) -> None:
        self.clients: list[Subscriber] = []
        self.unsettled = 0
        self.all_settled = asyncio.Event()

    def settled(self) -> None:
        self.unsettled -= 1
        if self.unsettled <= 0:
            self.all_settled.set()

    async def connect(self, command: dict[str, Any]) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        host, port, count = command["host"], command["port"], command["n"]
        request = (
            f"GET {command['path']} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Accept: text/event-stream\r\nLast-Event-ID: {command['last_event_id']}\r\n\r\n"
        ).encode()
        gate = asyncio.Semaphore(command["in_flight"])
        errors: list[str] = []

        async def one() -> None:
            async with gate:
                headed: asyncio.Future[None] = loop.create_future()
                client = Subscriber(self, request, headed)
                try:
                    await loop.create_connection(lambda: client, host, port)
                    self.clients.append(client)
                    self.unsettled += 1
                    await asyncio.wait_for(headed, CONNECT_WITHIN)
                except (OSError, RuntimeError, TimeoutError) as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    client.abort()

        started = time.monotonic()
        self.all_settled.clear()
        await asyncio.gather(*(one() for _ in range(count)))
        heads = [c.head_at for c in self.clients if c.head_at is not None]
        return {
            "started": started,
            "last_head": max(heads, default=started),
            "connected": len(heads),
            "errors": errors[:3],
            "failed": len(errors),
        }

    async def wait(self, command: dict[str, Any]) -> dict[str, Any]:
        if self.unsettled > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.all_settled.wait(), command["within"])
        got = sorted(c.got_at for c in self.clients if c.got_at is not None)
        return {
            "received": len(got),
            "first": got[0] if got else None,
            "median": statistics.median(got) if got else None,
            "last": got[-1] if got else None,
        }

    def close(self) -> dict[str, Any]:
        for client in self.clients:
            client.settled = True  # not counted again when the loss is reported
            client.abort()
        closed = len(self.clients)
        self.clients, self.unsettled = [], 0
        return {"closed": closed}


def client_main() -> None:
    raise_fd_limit()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 20)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        worker = Worker()
        print(json.dumps({"ready": True}), flush=True)
        while line := await reader.readline():
            command = json.loads(line)
            if command["op"] == "connect":
                answer = await worker.connect(command)
            elif command["op"] == "wait":
                answer = await worker.wait(command)
            else:
                answer = worker.close()
            print(json.dumps(answer), flush=True)
        worker.close()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


# --------------------------------------------------------------------------------------------------
# The parent's processes


class Child:
    """This script in a hidden mode, talking JSON lines over its stdin and stdout."""

    def __init__(self, *argv: str) -> None:
        self.argv = argv
        self.process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self) -> dict[str, Any]:
        self.process = await processes.spawn_script(SCRIPT, *self.argv, limit=1 << 20)
        return await self.read(START_WITHIN)

    async def read(self, within: float) -> dict[str, Any]:
        assert self.process is not None
        line = await processes.read_line(self.process, within)
        if not line:
            raise RuntimeError(f"{' '.join(self.argv)} exited (its stderr is above)")
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def ask(self, command: dict[str, Any], within: float) -> dict[str, Any]:
        assert self.process is not None
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command).encode() + b"\n")
        await self.process.stdin.drain()
        return await self.read(within)

    async def stop(self) -> None:
        await processes.close_child(self.process, 10)


def gateway_config(directory: Path, sandbox_port: int) -> str:
    tables: dict[str, dict[str, Any]] = {
        "server": {"host": "127.0.0.1"},
        "store": {"kind": "sqlite", "path": str(directory / "jobs.db")},
        "sandbox": {"embedded": True, "host": "127.0.0.1", "port": sandbox_port, "speed": 1.0},
        "log": {"format": "json", "level": "WARNING"},
        "auth": {"required": False},
        "providers.pulse": {"base_url": f"http://127.0.0.1:{sandbox_port}/pulse"},
        "providers.pulse.policy": dict(SLOW_POLICY),
        "vault": {"path": str(directory / "results")},
    }
    return to_toml(tables)


@dataclass
class Target:
    """The server under test: jobgate or the bare app."""

    kind: str
    directory: Path
    session: aiohttp.ClientSession
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    bare: Child | None = None
    end_frames: bytes = b""
    """For the bare server's trigger: the frames jobgate sends on a cancel."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        if self.bare is not None:
            return self.bare.pid
        assert self.process is not None
        return self.process.pid

    async def start(self) -> None:
        if self.kind == "bare":
            self.bare = Child("--serve", "bare")
            self.port = (await self.bare.start())["port"]
            return
        self.port = free_port()
        config = self.directory / "gateway.toml"
        config.write_text(gateway_config(self.directory, free_port()))
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOBGATE_")}
        env["JOBGATE_PROVIDERS__PULSE__API_KEY"] = "bench-sse-key"
        log = self.directory / "gateway.stderr.log"
        self.process = spawn_serve(config, self.port, env, log)
        await processes.until_ready(
            self.session, self.url, self.process, log, START_WITHIN, name="jobgate"
        )

    async def stop(self) -> None:
        if self.bare is not None:
            await self.bare.stop()
            self.bare = None
        await processes.stop_process(self.process, 10)
        self.process = None
        # A fresh database for the next round's gateway.
        for name in ("jobs.db", "jobs.db-wal", "jobs.db-shm"):
            (self.directory / name).unlink(missing_ok=True)

    async def new_stream(self) -> tuple[str, int]:
        """A stream to subscribe to: its path and the id of its last event."""
        if self.kind == "bare":
            return "/v1/jobs/bare/events", 1
        body = {"provider": "pulse", "request": {"fileUrl": "https://example.com/bench.pdf"}}
        async with self.session.post(f"{self.url}/v1/jobs", json=body) as response:
            assert response.status in (200, 201, 202), await response.text()
            job = await response.json()
        path = f"/v1/jobs/{job['id']}/events"
        # The job's one event so far: its id is the head the clients resume from.
        async with self.session.get(self.url + path) as response:
            while line := await response.content.readline():
                if line.startswith(b"id: "):
                    return path, int(line[4:])
        raise RuntimeError("the new job's stream sent no event")

    async def trigger(self, path: str) -> float | None:
        """Make the event; the bare server says when (monotonic), jobgate's is read after."""
        if self.kind == "bare":
            url, data = f"{self.url}/trigger", self.end_frames
        else:
            url, data = f"{self.url}{path.removesuffix('/events')}/cancel", b""
        async with self.session.post(url, data=data) as response:
            assert response.status == 202, await response.text()
            if self.kind == "bare":
                at: float = (await response.json())["at"]
                return at
        return None

    async def event_made(self, path: str) -> float:
        """When the canceled job changed (its ``updated_at``, on this process's monotonic clock;
        the job's write to the store and the event's commit follow at once)."""
        async with self.session.get(f"{self.url}{path.removesuffix('/events')}") as response:
            job = await response.json()
        updated = datetime.fromisoformat(job["updated_at"].replace("Z", "+00:00")).timestamp()
        return updated - (time.time() - time.monotonic())


async def calibration_frames(gateway: Target) -> bytes:
    """What jobgate sends when a job is canceled: its ``state`` frame and ``end``, byte for byte."""
    path, _ = await gateway.new_stream()
    await gateway.trigger(path)
    async with gateway.session.get(gateway.url + path) as response:
        body = await response.read()
    frames = [frame + b"\n\n" for frame in body.split(b"\n\n") if frame]
    last = [frame for frame in frames if MARKER in frame or frame.startswith(b"event: end")]
    if len(last) != 2:
        raise RuntimeError(f"unexpected stream for a canceled job: {body!r}")
    return b"".join(last)


# --------------------------------------------------------------------------------------------------
# Runs


@dataclass
class Run:
    kind: str
    clients: int
    connected: int = 0
    received: int = 0
    connect_s: float = NAN
    connect_cpu_us: float = NAN
    """Server CPU per connection while the clients connected."""
    fanout_s: float = NAN
    """From the event's making (jobgate: its job's ``updated_at``; bare: the trigger's arrival)
    to the last client's receipt."""
    first_s: float = NAN
    median_s: float = NAN
    trigger_s: float = NAN
    """From the trigger request leaving this process to the last receipt (jobgate: with the
    cancel's own work, a sandbox call, a poll and a commit)."""
    fanout_cpu_us: float = NAN
    rss_per_conn: float = NAN
    others: float = NAN
    """CPUs kept busy by processes other than the bench's during the run."""
    errors: list[str] = field(default_factory=list)


async def run_once(target: Target, workers: Sequence[Child], clients: int, in_flight: int) -> Run:
    run = Run(target.kind, clients)
    path, head = await target.new_stream()
    shares = [clients // len(workers) + (i < clients % len(workers)) for i in range(len(workers))]
    ours = [os.getpid(), target.pid, *(worker.pid for worker in workers)]
    await quiesce(target.pid)  # the last run's closed connections are cleaned up, not timed here
    busy0, ours0 = machine_jiffies(), sum(cpu_seconds(pid) for pid in ours)
    rss0, cpu0 = rss_bytes(target.pid), cpu_seconds(target.pid)
    answers = await asyncio.gather(
        *(
            worker.ask(
                {
                    "op": "connect",
                    "host": "127.0.0.1",
                    "port": target.port,
                    "path": path,
                    "last_event_id": head,
                    "n": share,
                    "in_flight": in_flight,
                },
                CONNECT_WITHIN * 2,
            )
            for worker, share in zip(workers, shares, strict=True)
            if share
        )
    )
    run.connect_cpu_us = (cpu_seconds(target.pid) - cpu0) / clients * 1e6
    run.connected = sum(a["connected"] for a in answers)
    run.errors = [e for a in answers for e in a["errors"]]
    run.connect_s = max(a["last_head"] for a in answers) - min(a["started"] for a in answers)
    await asyncio.sleep(SETTLE)
    run.rss_per_conn = (rss_bytes(target.pid) - rss0) / max(run.connected, 1)
    cpu0 = cpu_seconds(target.pid)
    triggered = time.monotonic()
    made = await target.trigger(path)
    waits = await asyncio.gather(
        *(w.ask({"op": "wait", "within": RECEIVE_WITHIN}, RECEIVE_WITHIN + 10) for w in workers)
    )
    run.fanout_cpu_us = (cpu_seconds(target.pid) - cpu0) / clients * 1e6
    if made is None:
        made = await target.event_made(path)
    run.received = sum(w["received"] for w in waits)
    firsts = [w["first"] for w in waits if w["first"] is not None]
    if firsts:
        run.first_s = min(firsts) - made
        run.median_s = statistics.median(w["median"] for w in waits if w["median"]) - made
        run.fanout_s = max(w["last"] for w in waits if w["last"]) - made
        run.trigger_s = max(w["last"] for w in waits if w["last"]) - triggered
    busy1, ours1 = machine_jiffies(), sum(cpu_seconds(pid) for pid in ours)
    elapsed = (busy1[1] - busy0[1]) / (os.cpu_count() or 1) / CLOCK_TICKS
    if elapsed > 0:
        others = (busy1[0] - busy0[0]) / CLOCK_TICKS - (ours1 - ours0)
        run.others = max(0.0, others) / elapsed
    await asyncio.gather(*(w.ask({"op": "close"}, 30) for w in workers))
    return run


async def quiesce(pid: int) -> None:
    """Until the process has been idle for a tenth of a second (at most ``QUIESCE_WITHIN``)."""
    deadline = time.monotonic() + QUIESCE_WITHIN
    while time.monotonic() < deadline:
        before = cpu_seconds(pid)
        await asyncio.sleep(0.1)
        if cpu_seconds(pid) - before < IDLE_CPU:
            return


def print_run(number: int, run: Run) -> None:
    lost = run.clients - run.received
    ms = 1000
    print(
        f"  round {number} {run.kind:7} N={run.clients:>6,}: connect {run.connect_s:5.2f} s "
        f"({run.connect_cpu_us:3.0f} us CPU each); event to first {run.first_s * ms:4.0f} ms, "
        f"median {run.median_s * ms:4.0f} ms, last {run.fanout_s * ms:5.0f} ms "
        f"({run.fanout_cpu_us:3.0f} us CPU each; from the trigger {run.trigger_s * ms:5.0f} ms); "
        f"RSS {run.rss_per_conn / KiB:4.1f} KiB/conn; others {run.others:.1f} CPUs"
        + (f"; {lost} missed the event" if lost else "")
        + (f"; errors: {run.errors}" if run.errors else ""),
        flush=True,
    )


def spread(values: Sequence[float], scale: float, unit: str, digits: int) -> str:
    ok = [v * scale for v in values if v == v]  # NaN is not equal to itself
    if not ok:
        return "n/a"
    low, high = min(ok), max(ok)
    return f"{statistics.median(ok):.{digits}f} {unit} ({low:.{digits}f}-{high:.{digits}f})"


def median(values: Sequence[float]) -> float:
    ok = [v for v in values if v == v]
    return statistics.median(ok) if ok else NAN


def report(runs: Sequence[Run], sizes: Sequence[int]) -> None:
    def of(kind: str, clients: int, name: str) -> list[float]:
        return [getattr(r, name) for r in runs if r.kind == kind and r.clients == clients]

    # (what, attribute, scale, unit, digits, bare over jobgate (times) or jobgate over bare, goal)
    rows: list[tuple[str, str, float, str, int, bool, str]] = []
    for n in sizes:
        what = f"one event to {n:,} subscribers, last delivery"
        rows.append((what, "fanout_s", 1, "s", 3, True, f">= {GOAL_TIME}x"))
    for n in sizes:
        what = f"connecting {n:,} SSE clients"
        rows.append((what, "connect_s", 1, "s", 2, True, f">= {GOAL_TIME}x"))
    big = max(sizes)
    what = f"server memory per SSE connection (N={big:,})"
    rows.append((what, "rss_per_conn", 1 / KiB, "KiB", 1, False, f"<= {GOAL_MEMORY}x"))
    print()
    print("Medians (min-max) over the rounds. Ratio: bare / jobgate for times, jobgate / bare")
    print("for memory and CPU. A fan-out runs from the event's making to the last receipt.")
    print()
    print("| what | jobgate | bare baseline | ratio | goal |")
    print("|---|---|---|---|---|")
    for what, name, scale, unit, digits, faster, goal in rows:
        sizes_of = [big] if name == "rss_per_conn" else sizes
        n = next(n for n in sizes_of if f"{n:,} " in what or f"N={n:,}" in what)
        mine, bare = of("jobgate", n, name), of("bare", n, name)
        ratio = median(bare) / median(mine) if faster else median(mine) / median(bare)
        print(
            f"| {what} | {spread(mine, scale, unit, digits)} | {spread(bare, scale, unit, digits)}"
            f" | {ratio:.2f}x | {goal} |"
        )
    print()
    print("| also | jobgate | bare baseline |")
    print("|---|---|---|")
    for n in sizes:
        for what, name, scale, unit, digits in (
            ("event to first receipt", "first_s", 1000, "ms", 0),
            ("event to median receipt", "median_s", 1000, "ms", 0),
            ("trigger request to last receipt", "trigger_s", 1000, "ms", 0),
            ("server CPU per subscriber, fan-out", "fanout_cpu_us", 1, "us", 1),
            ("server CPU per connection, connect", "connect_cpu_us", 1, "us", 0),
            ("other processes' load", "others", 1, "CPUs", 1),
        ):
            mine, bare = of("jobgate", n, name), of("bare", n, name)
            print(
                f"| {what} (N={n:,}) | {spread(mine, scale, unit, digits)} "
                f"| {spread(bare, scale, unit, digits)} |"
            )


async def bench(args: argparse.Namespace, directory: Path) -> None:
    sizes = sorted(args.clients, reverse=True)
    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        )
        workers = [Child("--client") for _ in range(args.workers)]
        for worker in workers:
            stack.push_async_callback(worker.stop)
            await worker.start()
        gateway = Target("jobgate", directory, session)
        bare = Target("bare", directory, session)
        stack.push_async_callback(gateway.stop)
        stack.push_async_callback(bare.stop)
        await gateway.start()
        bare.end_frames = await calibration_frames(gateway)
        await gateway.stop()
        print(
            f"jobgate SSE bench: N = {', '.join(f'{n:,}' for n in sizes)}, {args.rounds} rounds, "
            f"{args.workers} client processes, {args.in_flight} connects in flight each, "
            f"{os.cpu_count()} CPUs; the event: {len(bare.end_frames)} bytes with its end frame",
            flush=True,
        )
        print(f"code: {code_under_test()}", flush=True)
        runs: list[Run] = []
        for number in range(1, args.rounds + 1):
            order = (gateway, bare) if number % 2 else (bare, gateway)
            for target in order:
                await target.start()
                try:
                    await run_once(target, workers, WARM_UP, args.in_flight)
                    for clients in sizes:
                        run = await run_once(target, workers, clients, args.in_flight)
                        print_run(number, run)
                        runs.append(run)
                finally:
                    await target.stop()
        report(runs, sizes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--clients",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1000, 10000],
        help="subscriber counts, comma-separated (default 1000,10000)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds, medians (default 3)")
    parser.add_argument("--workers", type=int, default=2, help="client processes (default 2)")
    parser.add_argument(
        "--in-flight", type=int, default=64, help="connects in flight per client process"
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="the whole run's bound, s")
    parser.add_argument("--serve", choices=("bare",), help=argparse.SUPPRESS)
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve_main()
        return
    if args.client:
        client_main()
        return
    if args.rounds < 1 or args.workers < 1 or min(args.clients) < 1 or args.timeout <= 0:
        parser.error("need --rounds >= 1, --workers >= 1, --clients >= 1 and --timeout > 0")
    raise_fd_limit()  # inherited by jobgate serve, which cannot be asked to raise its own
    processes.run_bounded(lambda directory: bench(args, directory), args.timeout, "jobgate-sse-")


if __name__ == "__main__":
    main()
