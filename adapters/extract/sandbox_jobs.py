"""The extract sandbox's jobs: their plan of stages, their state at a moment, and the store.

A job's state is computed from the clock on every read (``ExtractJob.snapshot``). The same job
renders the status body, the callback body and the events of a streamed run. ``JobStore.build``
plans a job (pages, stages, generated business and knowledge items) from a request and a scenario.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import urlsplit

from aiohttp import web

from adapters.extract.sandbox_callbacks import CallbackState
from adapters.extract.sandbox_requests import MAX_PAGES, ExtractRequest
from adapters.simulator import SandboxSettings, Scenario, Stage, Timeline, stage_durations

LARGE_ITEMS: Final = 400
"""How many knowledge items a ``large`` job's result holds."""
FAIL_MESSAGE: Final = "Failed to scrape URL: Connection timeout after 30s"

QUEUE: Final = Stage("Queued", 3.0)
CLASSIFY: Final = Stage("Classifying business", 6.0)
PLAN: Final = Stage("Planning pages", 4.0)
PAGE_SECONDS: Final = 3.5
TIMEOUT_SECONDS: Final = 12.0
"""How long the page that fails in the ``fail`` scenario hangs before the job gives up."""
TRIAGE: Final = Stage("Triaging URLs", 5.0)
EXTRACT: Final = Stage("Extracting knowledge", 10.0)
FIRST_PAGE: Final = 3
"""The index of the first page's stage: after queue, classify and plan."""

_SLUGS: Final = (
    "features",
    "pricing",
    "about",
    "customers",
    "integrations",
    "docs",
    "blog",
    "changelog",
    "security",
    "careers",
    "contact",
    "enterprise",
    "faq",
    "partners",
    "api",
    "status",
    "press",
    "legal/terms",
    "legal/privacy",
)
"""The pages a job plans after the URL it was given (so at most ``MAX_PAGES`` in all)."""
_CATEGORIES: Final = ("Project Management", "Developer Tools", "Analytics", "Customer Support")
_ITEM_KINDS: Final = ("FEATURE", "PRICING", "FAQ", "INTEGRATION", "USE_CASE", "COMPANY")


def iso(moment: datetime) -> str:
    """``2026-03-20T10:00:00.000Z``, as the provider writes times."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A job as it is at one moment."""

    status: str
    stage: int
    pages_scraped: int
    current_step: str | None
    started_at: datetime | None
    finished_at: datetime | None
    result: dict[str, Any] | None
    error: str | None


@dataclass
class ExtractJob:
    """One extraction. Its state is computed from the clock on every read."""

    id: str
    request: ExtractRequest
    scenario: Scenario
    pages: tuple[str, ...]
    timeline: Timeline
    created_wall: datetime
    fail_after: int | None
    """Pages scraped before the job fails (``fail`` scenario); ``None`` when it completes."""
    business: dict[str, Any]
    knowledge_items: list[dict[str, Any]]
    urls_discovered: int
    callback: CallbackState = field(default_factory=CallbackState)

    @property
    def total_pages(self) -> int:
        return len(self.pages)

    def wall(self, mono: float) -> datetime:
        return self.created_wall + timedelta(seconds=mono - self.timeline.started)

    def stage_start(self, index: int) -> float:
        seconds = sum(stage.seconds for stage in self.timeline.stages[:index])
        return self.timeline.started + seconds * self.timeline.scale

    def finished_at(self) -> float:
        return self.timeline.finished_at()

    def snapshot(self, now: float) -> Snapshot:
        index, _ = self.timeline.position(now)
        stages = self.timeline.stages
        started = self.wall(self.stage_start(1)) if index >= 1 else None
        if index == 0:
            return Snapshot("pending", 0, 0, None, None, None, None, None)
        if index < len(stages):
            scraped = min(max(0, index - FIRST_PAGE), self.total_pages)
            return Snapshot(
                "processing", index, scraped, stages[index].name, started, None, None, None
            )
        finished = self.wall(self.finished_at())
        if self.fail_after is not None:
            return Snapshot(
                "failed", index, self.fail_after, "Failed", started, finished, None, FAIL_MESSAGE
            )
        assert started is not None
        result = self.result(started, finished)
        return Snapshot(
            "completed", index, self.total_pages, "Complete", started, finished, result, None
        )

    def result(self, started: datetime, finished: datetime) -> dict[str, Any]:
        return {
            "business": self.business,
            "knowledgeItems": self.knowledge_items,
            "pagesScraped": self.total_pages,
            "urlsDiscovered": self.urls_discovered,
            "durationMs": _millis(started, finished),
            "startedAt": iso(started),
            "finishedAt": iso(finished),
        }

    def status_body(self, now: float, *, status: str | None = None) -> dict[str, Any]:
        """The ``GET /v1/jobs/{jobId}`` body, shaped like the provider's examples."""
        snap = self.snapshot(now)
        progress = None
        if snap.status != "pending":
            progress = {
                "pagesScraped": snap.pages_scraped,
                "totalPages": self.total_pages,
                "currentStep": snap.current_step,
            }
        duration = (
            _millis(snap.started_at, snap.finished_at)
            if snap.started_at and snap.finished_at
            else None
        )
        return {
            "id": self.id,
            "status": status or snap.status,
            "progress": progress,
            "result": snap.result,
            "error": snap.error,
            "startedAt": iso(snap.started_at) if snap.started_at else None,
            "finishedAt": iso(snap.finished_at) if snap.finished_at else None,
            "durationMs": duration,
        }

    def callback_body(self, now: float) -> dict[str, Any]:
        snap = self.snapshot(now)
        return {"jobId": self.id, "status": snap.status, "result": snap.result}

    def events_entering(self, index: int, now: float) -> list[tuple[str, dict[str, Any]]]:
        """The stream events a run emits as it enters stage ``index`` (``len(stages)``: the end).

        Stages: 0 queued, 1 classifying, 2 planning, ``FIRST_PAGE + n`` scraping page ``n``, then
        triaging and extracting (or, for a failing run, the page that times out, then the end).
        """
        stages = self.timeline.stages
        end = len(stages)
        triage = FIRST_PAGE + self.total_pages
        if index == end and self.fail_after is not None:
            return [self._page_event(self.fail_after, "failed"), ("error", {"error": FAIL_MESSAGE})]
        events: list[tuple[str, dict[str, Any]]] = []
        if FIRST_PAGE < index <= triage:
            events.append(self._page_event(index - FIRST_PAGE - 1, "success"))
        if index == end:
            events.append(("complete", {"result": self.snapshot(now).result}))
            return events
        if index == FIRST_PAGE - 1:
            events.append(("business_classified", {"business": self.business}))
        elif index == FIRST_PAGE:
            events.append(("pages_planned", {"total": self.total_pages, "urls": list(self.pages)}))
        elif index == triage:
            events.append(
                (
                    "urls_triaged",
                    {"urlsDiscovered": self.urls_discovered, "selected": self.total_pages},
                )
            )
        if index > 0:
            events.append(
                (
                    "progress",
                    {
                        "pagesScraped": min(max(0, index - FIRST_PAGE), self.total_pages),
                        "totalPages": self.total_pages,
                        "currentStep": stages[index].name,
                    },
                )
            )
        return events

    def _page_event(self, page: int, status: str) -> tuple[str, dict[str, Any]]:
        return (
            "page_scraped",
            {"url": self.pages[page], "index": page, "total": self.total_pages, "status": status},
        )


def _millis(start: datetime, end: datetime) -> int:
    return round((end - start).total_seconds() * 1000)


class JobStore:
    """Every job this sandbox holds, by id; ``len()`` counts them."""

    def __init__(self, settings: SandboxSettings) -> None:
        self.settings = settings
        self.jobs: dict[str, ExtractJob] = {}
        self.rng = random.Random(settings.seed)
        self.awaiting_callback: set[str] = set()

    def __len__(self) -> int:
        return len(self.jobs)

    def get(self, job_id: str) -> ExtractJob | None:
        return self.jobs.get(job_id)

    def new_id(self) -> str:
        while True:
            job_id = f"job_{self.rng.getrandbits(48):012x}"
            if job_id not in self.jobs:
                return job_id

    def build(self, request: ExtractRequest, scenario: Scenario) -> ExtractJob:
        """A job that starts now, not yet registered (a streamed run is never registered)."""
        large = scenario is Scenario.LARGE
        count = MAX_PAGES if large else 1 if request.single_page else request.max_pages
        parts = urlsplit(request.url)
        origin = f"{parts.scheme}://{parts.netloc}"
        pages = (request.url, *(f"{origin}/{slug}" for slug in _SLUGS))[:count]
        fail_after = count // 4 if scenario is Scenario.FAIL else None
        stages: list[Stage] = [QUEUE, CLASSIFY, PLAN]
        if fail_after is None:
            stages += [Stage(f"Scraping {page}", PAGE_SECONDS) for page in pages]
            stages += [TRIAGE, EXTRACT]
        else:
            stages += [Stage(f"Scraping {page}", PAGE_SECONDS) for page in pages[:fail_after]]
            stages.append(Stage(f"Scraping {pages[fail_after]}", TIMEOUT_SECONDS))
        timeline = stage_durations(self.settings, scenario, stages)
        host = parts.hostname or "example.com"
        return ExtractJob(
            id=self.new_id(),
            request=request,
            scenario=scenario,
            pages=pages,
            timeline=timeline,
            created_wall=datetime.now(UTC),
            fail_after=fail_after,
            business=_business(self.rng, host),
            knowledge_items=_items(self.rng, pages, LARGE_ITEMS if large else 2 * count),
            urls_discovered=count * 3 + self.rng.randint(2, 9),
        )

    def add(self, job: ExtractJob) -> None:
        self.jobs[job.id] = job
        if job.request.callback_url:
            self.awaiting_callback.add(job.id)


def _business(rng: random.Random, host: str) -> dict[str, Any]:
    label = host.removeprefix("www.").split(".")[0] or "example"
    name = label.replace("-", " ").title()
    return {
        "name": name,
        "domain": host.removeprefix("www."),
        "category": rng.choice(_CATEGORIES),
        "description": f"{name} helps teams do their best work.",
    }


def _items(rng: random.Random, pages: Sequence[str], count: int) -> list[dict[str, Any]]:
    items = []
    for number in range(count):
        kind = rng.choice(_ITEM_KINDS)
        source = pages[number % len(pages)]
        items.append(
            {
                "title": f"{kind.replace('_', ' ').title()} #{number + 1}",
                "description": f"What the page {source} says about {kind.lower()}.",
                "content": " ".join(f"Fact {number}.{n} from {source}." for n in range(8)),
                "category": kind,
                "source": source,
            }
        )
    return items


JOBS_KEY: Final = web.AppKey("extract_jobs", JobStore)
