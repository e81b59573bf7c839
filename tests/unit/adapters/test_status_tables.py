"""One contract test over every adapter's status table (botocore's waiter acceptors are the model).

The expected values are copied from ``providers.md`` by hand, independently of the adapters, so a
status dropped from a table, or mapped twice, fails here.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from adapters.base import Capabilities
from adapters.catchall.adapter import STATUS_TABLE as CATCHALL
from adapters.extract.adapter import STATUS_TABLE as EXTRACT
from adapters.platform.adapter import STATUS_TABLE as PLATFORM
from adapters.pulse.adapter import STATUS_TABLE as PULSE
from adapters.registry import PROVIDERS
from gateway.states import JobState

Q, R, S, F, C, E = (
    JobState.QUEUED,
    JobState.RUNNING,
    JobState.SUCCEEDED,
    JobState.FAILED,
    JobState.CANCELED,
    JobState.EXPIRED,
)

# providers.md, status by status. Variants the adapters must also accept are marked.
DOCUMENTED: dict[str, dict[str, JobState]] = {
    "catchall": {
        "submitted": Q,
        "analyzing": R,
        "fetching": R,
        "clustering": R,
        "enriching": R,
        "completed": S,
        "failed": F,
    },
    "extract": {"pending": Q, "processing": R, "completed": S, "failed": F},
    "pulse": {
        "pending": Q,
        "processing": R,
        "completed": S,
        "failed": F,
        "canceled": C,
        "expired": E,
    },
    "platform": {
        "pending": Q,
        "running": R,
        "completed": S,
        "failed": F,
        "cancelled": C,
        "canceled": C,  # variant: accepted although the docs spell it with two l's
    },
}

TABLES: dict[str, Mapping[str, JobState]] = {
    "catchall": CATCHALL,
    "extract": EXTRACT,
    "pulse": PULSE,
    "platform": PLATFORM,
}


def test_every_provider_has_a_table() -> None:
    assert set(TABLES) == set(PROVIDERS) == set(DOCUMENTED)


@pytest.mark.parametrize("provider", sorted(DOCUMENTED))
def test_table_is_exactly_the_documented_statuses(provider: str) -> None:
    assert dict(TABLES[provider]) == DOCUMENTED[provider]


@pytest.mark.parametrize("provider", sorted(DOCUMENTED))
def test_table_is_well_formed(provider: str) -> None:
    table = TABLES[provider]
    for native, state in table.items():
        assert native == native.strip().lower(), f"{provider}: key {native!r} must be lower case"
        assert isinstance(state, JobState)
    # Every provider can finish both ways, and has a way to be waiting or working.
    assert {S, F} <= set(table.values())
    assert set(table.values()) & {Q, R}


@pytest.mark.parametrize("provider", sorted(DOCUMENTED))
def test_adapter_class_exposes_its_table_and_capabilities(provider: str) -> None:
    adapter_cls = PROVIDERS[provider].adapter
    assert adapter_cls.status_table is TABLES[provider]
    assert adapter_cls.name == provider
    assert isinstance(adapter_cls.capabilities, Capabilities)
    for attr in ("submit", "fetch_status", "fetch_result", "cancel", "rerun", "continue_"):
        assert callable(getattr(adapter_cls, attr))


def test_capabilities_match_the_provider_matrix() -> None:
    caps = {name: spec.adapter.capabilities for name, spec in PROVIDERS.items()}
    assert [n for n, c in caps.items() if c.submit] == ["catchall", "extract", "pulse"]
    assert [n for n, c in caps.items() if c.cancel] == ["pulse"]
    assert [n for n, c in caps.items() if c.rerun] == ["platform"]
    assert [n for n, c in caps.items() if c.continue_] == ["catchall"]
    assert [n for n, c in caps.items() if c.partial_results] == ["catchall"]
