"""``jobgate demo``: one job per provider through a running gateway, watched live to the end.

Everything goes through the gateway's REST API except the creation of the platform job: the
platform API creates jobs elsewhere, so the demo asks the platform sandbox's side door for one (at
the platform ``base_url`` that ``GET /v1/providers`` reports) and then adopts it.

Exit codes: 0 when every job succeeded, 1 when one did not (or the timeout ran out first), 2 when
the gateway cannot be reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TextIO

import aiohttp
import orjson

FINISHED: Final = frozenset({"succeeded", "failed", "canceled", "expired"})
DEMO_JOBS: Final[tuple[tuple[str, Mapping[str, Any]], ...]] = (
    ("catchall", {"query": "acquisitions in fintech", "limit": 10}),
    ("extract", {"url": "https://example.com", "maxPages": 5}),
    ("pulse", {"fileUrl": "https://example.com/report.pdf"}),
    ("platform", {"type": "document_processing"}),
)
"""Submit bodies; platform's is the sandbox side door's, since the gateway cannot submit there."""
LABELS: Final = {"source": "jobgate-demo"}
HINT: Final = "is `make run` running?"
NOT_SUBMITTED: Final = "not submitted before the timeout"
SANDBOX_KEY: Final = "jobgate-demo"
"""The sandbox accepts any non-empty key; the gateway holds the real ones."""

LONG_POLL: Final = 10.0
"""Seconds per long poll: short enough to notice the demo's own timeout promptly."""
CONNECT_TIMEOUT: Final = 5.0
READ_TIMEOUT: Final = 30.0
"""Longer than any long poll, so a slow answer is never mistaken for a dead gateway."""
RETRY_PAUSE: Final = 0.5
MAX_ERRORS: Final = 5
"""Consecutive failed long polls before the demo stops watching a job."""
PAGE_SIZE: Final = 1000
MAX_PAGES: Final = 10_000
"""A bound on draining pages, in case a gateway keeps answering ``total_pages`` it never ends."""
FRAME_SECONDS: Final = 0.1
BAR_WIDTH: Final = 20
BLOCK: Final = 4
SPINNER: Final = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


class Unreachable(Exception):
    """The gateway does not answer at all (as opposed to answering with an error)."""


@dataclass
class Tracked:
    """One demo job, as last seen."""

    provider: str
    request: Mapping[str, Any]
    id: str | None = None
    job: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None
    started: float = 0.0
    ended: float | None = None
    records: int | None = None
    size: int | None = None

    @property
    def state(self) -> str:
        if self.id is None:
            return "not-started"
        return str(self.job.get("state") or "?")

    @property
    def native(self) -> str:
        return str(self.job.get("native_status") or "-")

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def fraction(self) -> float | None:
        progress = self.job.get("progress") or {}
        value = progress.get("fraction")
        return float(value) if isinstance(value, int | float) else None

    @property
    def polls(self) -> int:
        value = self.job.get("polls")
        return value if isinstance(value, int) else 0

    def elapsed(self, now: float) -> float:
        return (self.ended if self.ended is not None else now) - self.started


# The whole demo, submission to summary, runs against this one deadline; the CLI passes it in.
async def run_demo(url: str, *, timeout: float, out: TextIO = sys.stdout) -> int:  # noqa: ASYNC109
    """Submit one job per provider through the gateway at ``url`` and watch them finish."""
    base = url.rstrip("/")
    limits = aiohttp.ClientTimeout(
        total=None, connect=CONNECT_TIMEOUT, sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT
    )
    try:
        # Under auth, the key comes from the environment, as for every jobgate client.
        key = os.environ.get("JOBGATE_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else None
        async with aiohttp.ClientSession(timeout=limits, headers=headers) as session:
            return await _Demo(session, base, out, timeout).run()
    except Unreachable as exc:
        print(f"jobgate demo: cannot reach the gateway at {base} ({exc}); {HINT}", file=out)
        return 2


class _Demo:
    def __init__(
        self, session: aiohttp.ClientSession, url: str, out: TextIO, timeout: float
    ) -> None:
        self.session = session
        self.url = url
        self.out = out
        self.timeout = timeout
        self.loop = asyncio.get_running_loop()
        self.began = self.loop.time()
        self.deadline = self.began + timeout
        self.changed = asyncio.Event()
        self.lost: str | None = None
        """Why the gateway stopped answering mid-demo, if it did."""

    async def run(self) -> int:
        providers = await self._providers()
        jobs = [Tracked(name, request) for name, request in DEMO_JOBS]
        for job in jobs:
            if job.provider not in providers:
                job.problem = "not enabled on this gateway"
        print(
            f"jobgate demo: {len(jobs)} jobs through {self.url} (timeout {self.timeout:g} s)",
            file=self.out,
        )
        try:
            async with asyncio.timeout_at(self.deadline):
                await asyncio.gather(
                    *(self._start(job, providers) for job in jobs if job.problem is None)
                )
        except TimeoutError:
            for job in jobs:
                if job.id is None and job.problem is None:
                    job.problem = NOT_SUBMITTED
        if self.lost is not None:
            raise Unreachable(self.lost)
        watchers = [asyncio.create_task(self._watch(job)) for job in jobs if job.id is not None]
        try:
            await self._show(jobs, watchers)
        finally:
            for task in watchers:
                task.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
        if self.lost is not None:
            raise Unreachable(self.lost)
        await asyncio.gather(*(self._measure(job) for job in jobs if job.state == "succeeded"))
        return self._summary(jobs)

    # -- talking to the gateway ----------------------------------------------------------------

    async def _call(
        self, method: str, path: str, *, json: Any = None, params: Mapping[str, str] | None = None
    ) -> tuple[int, Any]:
        """One gateway call and its JSON body (``None`` if it has none)."""
        try:
            async with self.session.request(
                method, self.url + path, json=json, params=params
            ) as response:
                raw = await response.read()
        except aiohttp.InvalidURL as exc:
            raise Unreachable(f"invalid URL {exc}") from exc
        except aiohttp.ClientConnectorError as exc:
            raise Unreachable(str(exc.os_error) or "connection refused") from exc
        try:
            return response.status, orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            return response.status, None

    async def _providers(self) -> dict[str, str]:
        try:
            status, body = await self._call("GET", "/v1/providers")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Unreachable(f"{type(exc).__name__}: {exc}") from exc
        listed = body.get("providers") if isinstance(body, dict) else None
        if status != 200 or not isinstance(listed, list):
            raise Unreachable(f"GET /v1/providers answered HTTP {status}, not a provider list")
        return {
            str(item["name"]): str(item.get("base_url", ""))
            for item in listed
            if isinstance(item, dict) and "name" in item
        }

    async def _start(self, job: Tracked, providers: Mapping[str, str]) -> None:
        job.started = self.loop.time()
        body: dict[str, Any] = {"provider": job.provider, "labels": LABELS}
        try:
            if job.provider == "platform":
                upstream_id = await self._platform_job(providers["platform"], job)
                if upstream_id is None:
                    return
                body["upstream_id"] = upstream_id
            else:
                body["request"] = dict(job.request)
            status, answer = await self._call("POST", "/v1/jobs", json=body)
        except Unreachable as exc:
            self.lost = str(exc)
            return
        except (aiohttp.ClientError, TimeoutError) as exc:
            job.problem = f"submit failed: {type(exc).__name__}: {exc}"
            return
        if status != 201 or not isinstance(answer, dict):
            job.problem = f"submit answered HTTP {status}: {_problem(answer)}"
            return
        job.id = str(answer["id"])
        job.job = answer

    async def _platform_job(self, base_url: str, job: Tracked) -> str | None:
        """A platform job from the sandbox's side door (the real platform creates them itself)."""
        door = f"{base_url.rstrip('/')}/sandbox/jobs"
        try:
            async with self.session.post(
                door, json=dict(job.request), headers={"Authorization": f"Bearer {SANDBOX_KEY}"}
            ) as response:
                status, raw = response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            job.problem = f"cannot reach the platform sandbox at {door}: {type(exc).__name__}"
            return None
        try:
            upstream_id = orjson.loads(raw)["data"]["id"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            upstream_id = None
        if status != 201 or not isinstance(upstream_id, str):
            job.problem = f"{door} answered HTTP {status}; is the platform a sandbox?"
            return None
        return upstream_id

    async def _watch(self, job: Tracked) -> None:
        """Long-poll one job until it finishes, the deadline passes or the gateway goes away."""
        errors = 0
        try:
            while not job.finished:
                left = self.deadline - self.loop.time()
                if left <= 0:
                    return
                wait = f"{min(LONG_POLL, left):.2f}"
                try:
                    status, body = await self._call(
                        "GET", f"/v1/jobs/{job.id}", params={"wait": wait}
                    )
                except Unreachable as exc:
                    self.lost = str(exc)
                    return
                except (aiohttp.ClientError, TimeoutError) as exc:
                    status, body = 0, f"{type(exc).__name__}: {exc}"
                if status == 200 and isinstance(body, dict):
                    errors = 0
                    job.job = body
                    job.problem = None
                    if job.finished:
                        job.ended = self.loop.time()
                    self.changed.set()
                    continue
                errors += 1
                job.problem = f"watching failed: HTTP {status}: {_problem(body)}"
                if status == 404 or errors >= MAX_ERRORS:
                    return
                self.changed.set()
                await asyncio.sleep(min(RETRY_PAUSE, max(0.0, left)))
        finally:
            self.changed.set()

    async def _measure(self, job: Tracked) -> None:
        """The result's size: records and bytes over every page, or the body's bytes."""
        result = job.job.get("result") or {}
        try:
            if result.get("kind") == "paged":
                await self._drain_pages(job)
            else:
                await self._count_body(job)
        except Unreachable as exc:
            job.problem = f"result: gateway unreachable ({exc})"
        except (aiohttp.ClientError, TimeoutError) as exc:
            job.problem = f"result: {type(exc).__name__}: {exc}"

    async def _drain_pages(self, job: Tracked) -> None:
        records = size = 0
        for page in range(1, MAX_PAGES + 1):
            try:
                async with self.session.get(
                    f"{self.url}/v1/jobs/{job.id}/result",
                    params={"page": str(page), "page_size": str(PAGE_SIZE)},
                ) as response:
                    status, raw = response.status, await response.read()
            except aiohttp.ClientConnectorError as exc:
                raise Unreachable(str(exc.os_error)) from exc
            if status != 200:
                job.problem = f"result page {page}: HTTP {status}"
                return
            body = orjson.loads(raw)
            size += len(raw)
            records += len(body.get("records") or [])
            if page >= int(body.get("total_pages") or 0):
                break
        job.records, job.size = records, size

    async def _count_body(self, job: Tracked) -> None:
        """Counted as it streams: a large-result pointer can be many megabytes."""
        size = 0
        try:
            async with self.session.get(f"{self.url}/v1/jobs/{job.id}/result") as response:
                if response.status != 200:
                    job.problem = f"result: HTTP {response.status}"
                    return
                async for chunk in response.content.iter_chunked(65536):
                    size += len(chunk)
        except aiohttp.ClientConnectorError as exc:
            raise Unreachable(str(exc.os_error)) from exc
        job.size = size

    # -- display -------------------------------------------------------------------------------

    async def _show(self, jobs: list[Tracked], watchers: list[asyncio.Task[None]]) -> None:
        """Redraw in place on a terminal; elsewhere, print a job's line when it changes."""
        tty = self.out.isatty()
        # A wrapped line would break the cursor arithmetic of the redraw.
        width = shutil.get_terminal_size().columns - 1
        frame = 0
        drawn = 0
        seen: dict[int, tuple[object, ...]] = {}
        if tty:
            self.out.write("\x1b[?25l")
        try:
            while True:
                # Cleared before drawing, so a change made while drawing wakes the next round.
                self.changed.clear()
                done = all(task.done() for task in watchers)
                if tty:
                    if drawn:
                        self.out.write(f"\x1b[{drawn}F")
                    for job in jobs:
                        self.out.write(f"\x1b[2K{_line(job, frame, tty=True)[:width]}\n")
                    drawn = len(jobs)
                else:
                    for index, job in enumerate(jobs):
                        key = _visible(job)
                        if seen.get(index) != key:
                            seen[index] = key
                            self.out.write(_line(job, frame, tty=False) + "\n")
                self.out.flush()
                if done:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), FRAME_SECONDS if tty else None)
                frame += 1
        finally:
            if tty:
                self.out.write("\x1b[?25h")
                self.out.flush()

    def _summary(self, jobs: list[Tracked]) -> int:
        now = self.loop.time()
        header: tuple[str, ...] = ("provider", "job id", "state", "native status", "polls")
        header += ("records", "bytes", "elapsed")
        rows: list[tuple[str, ...]] = [header]
        for job in jobs:
            rows.append(
                (
                    job.provider,
                    job.id or "-",
                    job.state,
                    job.native,
                    str(job.polls) if job.id else "-",
                    "-" if job.records is None else str(job.records),
                    "-" if job.size is None else str(job.size),
                    f"{job.elapsed(now):.1f}s" if job.id else "-",
                )
            )
        widths = [max(len(row[col]) for row in rows) for col in range(len(header))]
        right = {4, 5, 6, 7}
        print(file=self.out)
        for row in rows:
            cells = [
                cell.rjust(widths[col]) if col in right else cell.ljust(widths[col])
                for col, cell in enumerate(row)
            ]
            print("  ".join(cells).rstrip(), file=self.out)
        print(file=self.out)
        for job in jobs:
            if job.problem:
                print(f"{job.provider}: {job.problem}", file=self.out)
        unfinished = [
            job
            for job in jobs
            if not job.finished and (job.id is not None or job.problem == NOT_SUBMITTED)
        ]
        if unfinished and self.loop.time() >= self.deadline:
            print(
                f"timed out after {self.timeout:g} s; {len(unfinished)} of {len(jobs)} jobs did "
                "not finish:",
                file=self.out,
            )
            for job in unfinished:
                print(f"  {job.provider:<9} {job.id or '-'}  {job.state}", file=self.out)
            return 1
        failed = [job for job in jobs if job.state != "succeeded" or job.problem]
        if failed:
            names = ", ".join(f"{job.provider} ({job.state})" for job in failed)
            print(f"{len(failed)} of {len(jobs)} jobs did not succeed: {names}", file=self.out)
            return 1
        print(f"all {len(jobs)} jobs succeeded in {now - self.began:.1f} s", file=self.out)
        return 0


def _visible(job: Tracked) -> tuple[object, ...]:
    """What is worth a new line in a log: polls alone change too often to be news."""
    progress = job.job.get("progress") or {}
    fraction = job.fraction
    percent = None if fraction is None else int(fraction * 100)
    return (job.state, job.native, progress.get("step"), percent, job.problem)


def _bar(fraction: float | None, frame: int, *, tty: bool) -> str:
    full, empty = ("█", "░") if tty else ("#", ".")
    if fraction is not None:
        filled = round(max(0.0, min(1.0, fraction)) * BAR_WIDTH)
        return "[" + full * filled + empty * (BAR_WIDTH - filled) + "]"
    if not tty:
        return "[" + "?" * BAR_WIDTH + "]"
    # Indeterminate: a block bouncing between the ends, one cell per frame.
    span = BAR_WIDTH - BLOCK
    step = frame % (2 * span)
    at = step if step <= span else 2 * span - step
    return "[" + empty * at + full * BLOCK + empty * (span - at) + "]"


def _line(job: Tracked, frame: int, *, tty: bool) -> str:
    fraction = job.fraction
    if job.state == "succeeded":
        fraction = 1.0
    if fraction is not None:
        amount = f"{fraction * 100:3.0f}%"
    elif tty and not job.finished and job.id is not None:
        amount = f"   {SPINNER[frame % len(SPINNER)]}"
    else:
        amount = "   ?"
    line = (
        f"{job.provider:<9} {job.state:<10} {job.native[:14]:<14} "
        f"{_bar(fraction, frame, tty=tty)} {amount}  polls {job.polls:>3}"
    )
    if job.problem:
        line += f"  ! {job.problem}"
    return line


def _problem(body: Any) -> str:
    """The gist of a problem+json body, or of whatever else came back."""
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("code") or body.get("title") or body)
    return str(body)[:200]
