"""Detection: how soon the gateway notices that an upstream job finished, and what it costs.

    python bench/bench_detection.py [--jobs-per-provider N] [--speed 24] [--timeout 100]

One process on 127.0.0.1: the four sandboxes and a gateway configured as ``config/sandbox.toml``
(its poll policies, tuned for speed 24; a temporary SQLite store). N jobs per provider are submitted
through the REST API (platform jobs through the sandbox's side door, then adopted) and watched to
the end. Per provider it prints the upstream status calls per completed job (the runner's own
count) and the detection lag: the gateway job's ``finished_at`` minus the instant the sandbox job
finished, read from the sandbox's own timeline. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import socket
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import aiohttp
from aiohttp import web

from adapters.catchall import sandbox as catchall_sandbox
from adapters.extract import sandbox as extract_sandbox
from adapters.platform import sandbox as platform_sandbox
from adapters.pulse import sandbox as pulse_sandbox
from adapters.registry import PROVIDERS
from adapters.sandboxes import SUBAPPS_KEY, create_sandbox_app
from adapters.simulator import SandboxSettings, Timeline
from gateway.logs import configure_logging
from gateway.settings import Settings, load_settings
from gateway.web.app import create_app
from gateway.web.state import COMPONENTS_KEY

ORDER: Final = ("catchall", "extract", "pulse", "platform")
FINISHED: Final = frozenset({"succeeded", "failed", "canceled", "expired"})
KEY: Final = "bench-key"
LONG_POLL: Final = 10.0
MAX_JOBS: Final = 20
"""CatchAll refuses a key's 21st unfinished job (``Jobs_Concurrency``)."""
SEED: Final = 7


def catchall_timeline(sandbox: web.Application, upstream_id: str) -> Timeline | None:
    job = sandbox[SUBAPPS_KEY]["catchall"][catchall_sandbox.JOBS_KEY].jobs.get(upstream_id.lower())
    return job.timeline if job else None


def extract_timeline(sandbox: web.Application, upstream_id: str) -> Timeline | None:
    job = sandbox[SUBAPPS_KEY]["extract"][extract_sandbox.JOBS_KEY].get(upstream_id)
    return job.timeline if job else None


def pulse_timeline(sandbox: web.Application, upstream_id: str) -> Timeline | None:
    job = sandbox[SUBAPPS_KEY]["pulse"][pulse_sandbox.JOBS_KEY].get(upstream_id)
    return job.timeline if job else None


def platform_timeline(sandbox: web.Application, upstream_id: str) -> Timeline | None:
    job = sandbox[SUBAPPS_KEY]["platform"][platform_sandbox.JOBS_KEY].jobs.get(upstream_id)
    return job.timeline if job else None


# Every sandbox computes a job's state from its Timeline on each request, so a job (never
# cancelled or continued here) has finished exactly at ``timeline.finished_at()``, on the sandbox
# clock (time.monotonic).
TIMELINES: Final[Mapping[str, Callable[[web.Application, str], Timeline | None]]] = {
    "catchall": catchall_timeline,
    "extract": extract_timeline,
    "pulse": pulse_timeline,
    "platform": platform_timeline,
}


def request_for(provider: str, index: int) -> dict[str, Any]:
    if provider == "catchall":
        return {"query": f"acquisitions in fintech, batch {index}", "limit": 10}
    if provider == "extract":
        return {"url": f"https://example.com/{index}", "maxPages": 5}
    if provider == "pulse":
        return {"fileUrl": f"https://example.com/report-{index}.pdf"}
    return {"type": "document_processing"}


@dataclass
class Watched:
    provider: str
    id: str
    upstream_id: str
    job: dict[str, Any]

    @property
    def finished(self) -> bool:
        return self.job.get("state") in FINISHED


def listening_socket() -> socket.socket:
    """Bound before the gateway starts, so its settings can name its own URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def gateway_settings(sandbox_url: str, gateway_url: str, db: Path) -> Settings:
    """``config/sandbox.toml`` as ``make run`` uses it, pointed at this process's sandbox."""
    providers = {
        name: {"base_url": sandbox_url + spec.prefix, "api_key": KEY}
        for name, spec in PROVIDERS.items()
    }
    return load_settings(
        store={"kind": "sqlite", "path": str(db)},
        sandbox={"embedded": False},
        server={"public_base_url": gateway_url},
        providers=providers,
    )


async def submit(
    session: aiohttp.ClientSession, gateway: str, sandbox: str, provider: str, index: int
) -> Watched:
    body: dict[str, Any] = {"provider": provider, "labels": {"source": "bench"}}
    if provider == "platform":
        async with session.post(
            f"{sandbox}{PROVIDERS['platform'].prefix}/sandbox/jobs",
            json=request_for(provider, index),
            headers={"Authorization": f"Bearer {KEY}"},
        ) as response:
            created = await response.json()
            if response.status != 201:
                raise RuntimeError(f"platform side door answered {response.status}: {created}")
        body["upstream_id"] = created["data"]["id"]
    else:
        body["request"] = request_for(provider, index)
    async with session.post(f"{gateway}/v1/jobs", json=body) as response:
        job = await response.json()
        if response.status != 201:
            raise RuntimeError(f"{provider} submit answered {response.status}: {job}")
    return Watched(provider, job["id"], job["upstream_id"], job)


async def watch(session: aiohttp.ClientSession, gateway: str, watched: Watched) -> None:
    while not watched.finished:
        async with session.get(
            f"{gateway}/v1/jobs/{watched.id}", params={"wait": str(LONG_POLL)}
        ) as response:
            response.raise_for_status()
            watched.job = await response.json()


def percentile(values: Sequence[float], share: float) -> float:
    """Nearest rank: with five samples, p95 is the largest, not an interpolation."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def report(
    jobs: Sequence[Watched],
    sandbox: web.Application,
    status_calls: Mapping[str, int],
) -> None:
    # One anchor maps the sandbox's monotonic clock onto the wall clock of ``finished_at``; taken
    # right after the last job, it is seconds from every finish, so clock slew is negligible.
    wall_now, mono_now = time.time(), time.monotonic()
    rows: list[tuple[str, ...]] = [
        ("provider", "done", "job length", "calls/job", "lag mean", "lag p95", "lag max")
    ]
    for provider in ORDER:
        mine = [job for job in jobs if job.provider == provider]
        done = [job for job in mine if job.job.get("state") == "succeeded"]
        lags: list[float] = []
        lengths: list[float] = []
        for job in done:
            timeline = TIMELINES[provider](sandbox, job.upstream_id)
            finished_at = job.job.get("finished_at")
            if timeline is None or not isinstance(finished_at, str):
                continue
            upstream_done = wall_now - (mono_now - timeline.finished_at())
            lags.append(parse_time(finished_at).timestamp() - upstream_done)
            lengths.append(timeline.total())
        calls = status_calls.get(provider, 0)
        lag = [statistics.fmean(lags), percentile(lags, 0.95), max(lags)] if lags else [None] * 3
        rows.append(
            (
                provider,
                f"{len(done)}/{len(mine)}",
                f"{statistics.fmean(lengths):.1f} s" if lengths else "-",
                f"{calls / len(done):.1f}" if done else "-",
                *("-" if value is None else f"{value * 1000:.0f} ms" for value in lag),
            )
        )
    widths = [max(len(row[col]) for row in rows) for col in range(len(rows[0]))]
    for number, row in enumerate(rows):
        cells = [
            row[0].ljust(widths[0]),
            *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)),
        ]
        print("  ".join(cells))
        if number == 0:
            print("  ".join("-" * width for width in widths))


def bound_socket(stack: contextlib.ExitStack | contextlib.AsyncExitStack) -> socket.socket:
    sock = listening_socket()
    stack.callback(sock.close)
    return sock


def url_of(sock: socket.socket) -> str:
    return f"http://127.0.0.1:{sock.getsockname()[1]}"


async def serve(
    stack: contextlib.AsyncExitStack, app: web.Application, sock: socket.socket
) -> None:
    """Serve ``app`` on ``sock`` until ``stack`` closes."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    await web.SockSite(runner, sock).start()


async def run(per_provider: int, speed: float, patience: float) -> int:
    began = time.perf_counter()
    # Closed in reverse: the gateway, then the sandbox, then the directory holding the store.
    async with contextlib.AsyncExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="jobgate-bench-")))
        sandbox_app = create_sandbox_app(SandboxSettings(speed=speed, seed=SEED))
        sandbox_sock = bound_socket(stack)
        sandbox_url = url_of(sandbox_sock)
        await serve(stack, sandbox_app, sandbox_sock)
        # The gateway names its own URL in its settings (public_base_url, as make run does), so
        # its socket is bound before the app is built.
        gateway_sock = bound_socket(stack)
        gateway_url = url_of(gateway_sock)
        app = create_app(gateway_settings(sandbox_url, gateway_url, tmp / "jobs.db"))
        await serve(stack, app, gateway_sock)
        runner = app[COMPONENTS_KEY].runner
        assert runner is not None
        print(
            f"jobgate detection bench: {per_provider} jobs per provider, sandbox speed "
            f"x{speed:g}, poll policies from config/sandbox.toml"
        )
        timeouts = aiohttp.ClientTimeout(total=LONG_POLL + 30, connect=5)
        session = await stack.enter_async_context(aiohttp.ClientSession(timeout=timeouts))
        jobs = await asyncio.gather(
            *(
                submit(session, gateway_url, sandbox_url, provider, index)
                for index in range(per_provider)
                for provider in ORDER
            )
        )
        try:
            async with asyncio.timeout(patience):
                await asyncio.gather(*(watch(session, gateway_url, job) for job in jobs))
        except TimeoutError:
            print(f"stopped after {patience:g} s with jobs still running")
        # The runner keeps no finished job due, so its count is final once all are seen done.
        status_calls = dict(runner.status_calls)
        print()
        report(jobs, sandbox_app, status_calls)
        unfinished = sum(1 for job in jobs if not job.finished)
        print()
        print(
            "lag: gateway finished_at minus the sandbox's own finish instant; calls/job: "
            "runner status calls / completed jobs"
        )
        print(f"total {time.perf_counter() - began:.1f} s; {unfinished} jobs unfinished")
        return 1 if unfinished else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--jobs-per-provider",
        type=int,
        default=5,
        help=f"jobs per provider, 1..{MAX_JOBS} (default 5)",
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=24.0,
        help="sandbox time acceleration; the policies are tuned for 24 (default)",
    )
    parser.add_argument(
        "--timeout", type=float, default=100.0, help="stop waiting after this many seconds"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.jobs_per_provider <= MAX_JOBS:
        parser.error(f"--jobs-per-provider must be between 1 and {MAX_JOBS}")
    if args.speed <= 0 or args.timeout <= 0:
        parser.error("--speed and --timeout must be positive")
    configure_logging("console", "WARNING")
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(run(args.jobs_per_provider, args.speed, args.timeout))
    return 130


if __name__ == "__main__":
    raise SystemExit(main())
