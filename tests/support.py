"""Helpers shared by test modules."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from gateway.jobs import Job


def bumped(job: Job, now: datetime, **changes: Any) -> Job:
    """The next version of ``job`` with any fields changed, ``state`` included.

    For store tests, which write rows as a store sees them: the gateway itself changes a job only
    through its typed changes and ``gateway.jobs.transition``.
    """
    return replace(job, updated_at=now, version=job.version + 1, **changes)
