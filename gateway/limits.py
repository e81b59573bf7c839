"""Per-tenant limits: pure rules over what the store counts (``JobRows.tenant_usage``).

Both limits are checked against the shared store, so they hold across replicas. They are soft by
the width of a race: two submits checked at the same instant may both pass and overshoot by one.
A lock per tenant would make every submit of a tenant queue behind the others for that precision.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

WINDOW = timedelta(minutes=1)
ACTIVE_RETRY_AFTER = 5.0
"""When a tenant is at its active-job limit, nobody knows when a job will finish: retry soon."""


@dataclass(frozen=True, slots=True)
class TenantLimits:
    max_active_jobs: int | None = None
    submits_per_minute: int | None = None

    @property
    def any(self) -> bool:
        return self.max_active_jobs is not None or self.submits_per_minute is not None


@dataclass(frozen=True, slots=True)
class Breach:
    code: str
    message: str
    retry_after: float


def breach(
    limits: TenantLimits,
    *,
    active: int,
    recent: int,
    oldest_recent: datetime | None,
    now: datetime,
) -> Breach | None:
    """Which limit one more job would break, if any (the rate first: its wait is known)."""
    rate = limits.submits_per_minute
    if rate is not None and recent >= rate:
        # The window frees a place when its oldest job ages out of it.
        frees_at = (oldest_recent or now) + WINDOW
        return Breach(
            "tenant_rate_limited",
            f"this tenant may create {rate} jobs per minute; retry after the Retry-After seconds",
            max(1.0, (frees_at - now).total_seconds()),
        )
    most = limits.max_active_jobs
    if most is not None and active >= most:
        return Breach(
            "tenant_active_limit",
            f"this tenant already has {active} unfinished jobs, its limit is {most}: wait for "
            "some to finish, or cancel or delete some",
            ACTIVE_RETRY_AFTER,
        )
    return None
