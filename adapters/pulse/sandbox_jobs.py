"""The Pulse sandbox's jobs: their lifecycle, the job store, and the bodies rendered from a job.

A job's status is computed from the clock on every read (``PulseJob.status_at``). ``PulseJobs``
holds every accepted job and the per-application secret that signs presigned URLs. The inline
extraction and the retention stub of an expired job are rendered here; the large result is in
``sandbox_large_results``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Final

from aiohttp import web

from adapters.simulator import SandboxSettings, Scenario, Stage, Timeline

JSON = Any

STAGES: Final[tuple[Stage, ...]] = (Stage("pending", 5.0), Stage("processing", 45.0))
RETENTION_SECONDS: Final = 60.0
"""How long after completion an ``expire`` job's output is purged (scaled)."""
PROXY_TTL_SECONDS: Final = 3600.0
"""How long after completion the proxy URL answers (scaled); 410 Gone after."""
PRESIGNED_TTL_SECONDS: Final = 86400
"""``X-Amz-Expires`` of presigned URLs (scaled when checked)."""
INLINE_PAGES: Final = 3
LARGE_PAGES: Final = 120


class Pointer(StrEnum):
    """Which kind of ``is_url`` pointer a large job reports."""

    PRESIGNED = "presigned"
    PROXY = "proxy"


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class PulseJob:
    job_id: str
    scenario: Scenario
    pointer: Pointer
    timeline: Timeline
    created_wall: datetime
    extraction_id: str
    source: str
    warnings: list[str] = field(default_factory=list)
    options: dict[str, JSON] = field(default_factory=dict)
    """The submitted fields as parsed (JSON-valued parts decoded); kept for inspection."""
    canceled_at: float | None = None
    downloads: int = 0
    notify: bool = True
    """Whether webhooks announce its changes: not for a synchronous extraction, answered whole."""

    @property
    def large(self) -> bool:
        return self.scenario is Scenario.LARGE

    @property
    def page_count(self) -> int:
        return LARGE_PAGES if self.large else INLINE_PAGES

    def wall(self, mono: float) -> datetime:
        """The wall-clock time of a moment on the sandbox's monotonic clock."""
        return self.created_wall + timedelta(seconds=mono - self.timeline.started)

    def finished_at(self) -> float:
        return self.timeline.finished_at()

    def expires_at(self, settings: SandboxSettings) -> float | None:
        if self.scenario is not Scenario.EXPIRE:
            return None
        return self.finished_at() + settings.scaled(RETENTION_SECONDS)

    def status_at(self, now: float, settings: SandboxSettings) -> tuple[str, float]:
        """The native status and the monotonic time it began."""
        if self.canceled_at is not None:
            return "canceled", self.canceled_at
        index, _ = self.timeline.position(now)
        if index < len(self.timeline.stages):
            before = self.timeline.stages[:index]
            started = self.timeline.started + sum(s.seconds for s in before) * self.timeline.scale
            return self.timeline.stages[index].name, started
        finished = self.finished_at()
        if self.scenario is Scenario.FAIL:
            return "failed", finished
        expires = self.expires_at(settings)
        if expires is not None and now >= expires:
            return "expired", expires
        return "completed", finished


@dataclass
class PulseJobs:
    """Every job this sandbox accepted, and the secret that signs its presigned URLs."""

    jobs: dict[str, PulseJob] = field(default_factory=dict)
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    stall: asyncio.Event | None = None
    """Tests: while set to an event, a large download sends half its body, sets ``stalled`` and
    waits for ``stall`` before the rest (a crash or a reader landing mid-download, on cue)."""
    stalled: asyncio.Event = field(default_factory=asyncio.Event)
    served: int = 0
    """Large-result downloads started, presigned and proxy alike."""

    def __len__(self) -> int:
        return len(self.jobs)

    def add(self, job: PulseJob) -> None:
        self.jobs[job.job_id] = job

    def get(self, job_id: str) -> PulseJob | None:
        return self.jobs.get(job_id)

    def sign(self, job_id: str, amz_date: str, expires: str) -> str:
        message = f"{job_id}\n{amz_date}\n{expires}".encode()
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()


JOBS_KEY = web.AppKey("pulse_jobs", PulseJobs)


def lookup(request: web.Request) -> tuple[PulseJob | None, str]:
    job_id = request.match_info["job_id"]
    return request.app[JOBS_KEY].get(job_id), job_id


# --------------------------------------------------------------------------------------------------
# Bodies


def plan_info(pages: int) -> dict[str, JSON]:
    return {"tier": "sandbox", "total_credits_used": float(pages), "pages_used": pages}


def extraction_meta(job: PulseJob) -> dict[str, JSON]:
    return {
        "page_count": job.page_count,
        "extraction_id": job.extraction_id,
        "extraction_url": f"https://platform.runpulse.com/extractions/{job.extraction_id}",
        "plan_info": plan_info(job.page_count),
        "warnings": list(job.warnings),
        "credits_used": float(job.page_count),
    }


def inline_extraction(job: PulseJob) -> dict[str, JSON]:
    pages = [
        f"## Page {n}\n\nSandbox extraction of {job.source}, page {n} of {job.page_count}.\n"
        for n in range(1, job.page_count + 1)
    ]
    return {"markdown": "\n".join(pages), **extraction_meta(job)}


def retention_stub(job: PulseJob, settings: SandboxSettings) -> dict[str, JSON]:
    expires = job.expires_at(settings)
    return {
        "extraction_id": job.extraction_id,
        "page_count": job.page_count,
        "purged_at": iso(job.wall(expires)) if expires is not None else None,
        "message": "The retention window for this job has passed and its stored output was "
        "purged. Run a new extraction to regenerate it.",
    }
