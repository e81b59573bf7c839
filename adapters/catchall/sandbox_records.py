"""Generated content of the CatchAll sandbox: suggested validators and enrichments, and records.

Everything is deterministic: a record is generated from its job's id and its index, so the pages
of ``pull`` are the same however often they are read.
"""

from __future__ import annotations

import random
import re
import uuid
from datetime import datetime, timedelta
from typing import Any, Final

from adapters.catchall.sandbox_jobs import Job, iso

_COMPANIES: Final = (
    "Northwind Robotics",
    "Helios Grid",
    "Aster Bio",
    "Quill Payments",
    "Lumen Freight",
    "Corvid Security",
    "Tessellate AI",
    "Bramble Foods",
)
_EVENTS: Final = (
    "raises Series B funding",
    "announces acquisition of a rival",
    "opens a new European headquarters",
    "files for an initial public offering",
    "names a new chief executive",
    "expands into Latin America",
)
_CONFIDENCE: Final = ("high", "medium", "low")


def suggested_validators(query: str) -> list[dict[str, Any]]:
    return [
        {
            "name": "is_relevant_event",
            "description": f"The page reports a real event matching: {query[:120]}",
            "type": "boolean",
        },
        {
            "name": "is_recent",
            "description": "The event happened inside the requested date range",
            "type": "boolean",
        },
    ]


def suggested_enrichments() -> list[dict[str, Any]]:
    return [
        {"name": "event_summary", "description": "One-sentence summary", "type": "text"},
        {"name": "event_date", "description": "When the event happened", "type": "date"},
        {"name": "company", "description": "The main company involved", "type": "company"},
        {"name": "amount_usd", "description": "Money involved, in USD", "type": "number"},
        {"name": "source_url", "description": "The primary source", "type": "url"},
    ]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _enrichment_value(
    spec: dict[str, Any], rng: random.Random, company: str, title: str, day: datetime
) -> Any:
    kind = spec.get("type")
    if kind == "number":
        return rng.randint(1, 500) * 1_000_000
    if kind == "date":
        return day.strftime("%Y-%m-%d")
    if kind == "url":
        return f"https://{_slug(company)}.example.com/news/{rng.randint(1000, 9999)}"
    if kind == "option":
        options = spec.get("options")
        choices = [str(o) for o in options] if isinstance(options, list) and options else None
        return rng.choice(choices or ["yes", "no", "unclear"])
    if kind == "company":
        return {
            "source_text": company,
            "confidence": round(rng.uniform(0.6, 0.99), 2),
            "metadata": {
                "name": company,
                "domain_url": f"{_slug(company)}.example.com",
                "domain_url_confidence": rng.choice(_CONFIDENCE),
            },
        }
    return title


def make_record(job: Job, index: int) -> dict[str, Any]:
    """Record ``index`` of ``job``: the same on every call."""
    rng = random.Random(f"{job.job_id}:{index}")
    record_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    company = rng.choice(_COMPANIES)
    title = f"{company} {rng.choice(_EVENTS)}"
    span = max(1.0, (job.end_date - job.start_date).total_seconds())
    day = job.start_date + timedelta(seconds=rng.uniform(0, span))
    enrichment: dict[str, Any] = {
        spec["name"]: _enrichment_value(spec, rng, company, title, day) for spec in job.enrichments
    }
    enrichment["enrichment_confidence"] = rng.choice(_CONFIDENCE)
    citations = [
        {
            "title": f"{title} ({source})",
            "link": f"https://{source}.example.com/{_slug(title)}-{record_id[:8]}",
            "published_date": iso(day + timedelta(hours=rng.randint(0, 48))),
        }
        for source in rng.sample(["wire", "daily", "ledger", "herald"], rng.randint(1, 3))
    ]
    return {
        "record_id": record_id,
        "record_title": title,
        "enrichment": enrichment,
        "citations": citations,
    }
