"""The CatchAll sandbox's jobs: the stage walk, what a job shows at a moment, and the job store.

A job's state is computed from the clock on every read (``Job.view``); a continue re-enters
``enriching`` from the records the job already holds. ``JobStore`` keeps every accepted job,
soft-deleted ones included.
"""

from __future__ import annotations

import math
import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from aiohttp import web

from adapters.simulator import Scenario, Stage, Timeline

STAGES: Final[tuple[Stage, ...]] = (
    Stage("submitted", 30.0),
    Stage("analyzing", 90.0),
    Stage("fetching", 240.0),
    Stage("clustering", 150.0),
    Stage("enriching", 210.0),
)
FAIL_STAGES: Final[tuple[Stage, ...]] = STAGES[:4]
"""A failing job stops after clustering."""
CONTINUE_STAGES: Final[tuple[Stage, ...]] = (Stage("enriching", 180.0),)
STEP_NAMES: Final[tuple[str, ...]] = (*(s.name for s in STAGES), "completed", "failed")
"""The seven ``steps`` of a status body, in ``order`` 1..7."""


def iso(moment: datetime) -> str:
    """``2026-03-20T10:00:00Z``, as CatchAll writes times."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class View:
    """A job as the clock sees it now."""

    status: str
    valid: int
    validated: int
    candidates: int

    @property
    def finished(self) -> bool:
        return self.status in ("completed", "failed")


@dataclass
class Job:
    job_id: str
    owner: str
    seq: int
    created_at: datetime
    submitted: float
    scenario: Scenario
    query: str
    context: str | None
    mode: str
    limit: int
    limit_given: bool
    validators: list[dict[str, Any]]
    enrichments: list[dict[str, Any]]
    start_date: datetime
    end_date: datetime
    pool: int
    candidates: int
    timeline: Timeline
    base_valid: int = 0
    base_validated: int = 0
    deleted: bool = False
    webhook_ids: tuple[str, ...] = ()
    round: int = 0
    """How many times a continue re-opened the job: each round's end is delivered to webhooks."""

    def target_valid(self) -> int:
        return 0 if self.scenario is Scenario.FAIL else min(self.limit, self.pool)

    def target_validated(self) -> int:
        target = self.target_valid()
        if target >= self.pool:
            return self.candidates
        return min(self.candidates, math.ceil(target * self.candidates / self.pool))

    def view(self, now: float) -> View:
        index, _ = self.timeline.position(now)
        stages = self.timeline.stages
        if index >= len(stages):
            if self.scenario is Scenario.FAIL:
                return View("failed", 0, 0, 0)
            return View("completed", self.target_valid(), self.target_validated(), self.candidates)
        stage = stages[index]
        if stage.name != "enriching":
            return View(stage.name, 0, 0, 0)
        elapsed = now - self.timeline.started
        elapsed -= sum(s.seconds for s in stages[:index]) * self.timeline.scale
        share = min(1.0, max(0.0, elapsed / (stage.seconds * self.timeline.scale)))
        valid = self.base_valid + math.floor(share * (self.target_valid() - self.base_valid))
        validated = self.base_validated + math.floor(
            share * (self.target_validated() - self.base_validated)
        )
        return View("enriching", valid, validated, self.candidates)

    def finishes_at(self) -> float:
        return self.timeline.finished_at()

    def continue_to(self, new_limit: int, now: float) -> None:
        """Raise the limit and walk ``enriching`` again from what the job already holds."""
        self.base_valid = self.target_valid()
        self.base_validated = self.target_validated()
        self.limit = new_limit
        self.round += 1
        self.timeline = Timeline(stages=CONTINUE_STAGES, started=now, scale=self.timeline.scale)


@dataclass
class JobStore:
    """Every job the sandbox has accepted, deleted ones included (a soft delete keeps the data)."""

    seed: int | None = None
    jobs: dict[str, Job] = field(default_factory=dict)
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def __len__(self) -> int:
        return len(self.jobs)

    def new_id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def owned(self, job_id: str, owner: str) -> Job | None:
        job = self.jobs.get(job_id.lower())
        return job if job is not None and job.owner == owner else None

    def unfinished(self, owner: str, now: float) -> list[Job]:
        return [j for j in self.jobs.values() if j.owner == owner and not j.view(now).finished]


JOBS_KEY = web.AppKey("catchall_jobs", JobStore)
