"""Each provider's cadence key: the small, bounded part of a job that predicts how long it takes.

The gateway learns one completion-time distribution per provider and key (``gateway.cadence``), so
a key must split jobs whose durations differ (a one-page extract from a twenty-page one) and must
stay bounded (every key costs a stored sketch and ``min_jobs`` finished jobs before it helps). A
value outside the known set falls into one shared bucket, never a new key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final

from adapters.base import JSON

KeyOf = Callable[[JSON, str | None], str]

CATCHALL_MODES: Final = frozenset({"base", "lite"})
EXTRACT_MAX_PAGES: Final = 20
PLATFORM_TYPES: Final = frozenset(
    {"document_processing", "web_crawling", "batch_embedding", "export", "import"}
)
OTHER: Final = "other"


def _field(request: JSON, name: str) -> JSON:
    return request.get(name) if isinstance(request, Mapping) else None


def catchall_key(request: JSON, job_type: str | None) -> str:
    """``mode``: ``lite`` jobs run a shorter pipeline than ``base`` (the default)."""
    mode = _field(request, "mode")
    if mode is None:
        return "base"
    return mode if isinstance(mode, str) and mode in CATCHALL_MODES else OTHER


def extract_key(request: JSON, job_type: str | None) -> str:
    """``maxPages`` (1..20): an extract takes about as long as the pages it scrapes."""
    pages = _field(request, "maxPages")
    if _field(request, "singlePage") is True:
        return "1"
    if isinstance(pages, int) and not isinstance(pages, bool) and 1 <= pages <= EXTRACT_MAX_PAGES:
        return str(pages)
    return OTHER


def platform_key(request: JSON, job_type: str | None) -> str:
    """The job's ``type``, as its status reports it: an export and a crawl differ tenfold."""
    if job_type is None:
        return OTHER
    return job_type if job_type in PLATFORM_TYPES else OTHER


def single_key(request: JSON, job_type: str | None) -> str:
    """One distribution for all of a provider's jobs (pulse: nothing in its request predicts a
    duration that the gateway can see before the job runs)."""
    return ""
