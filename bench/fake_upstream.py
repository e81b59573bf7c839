"""The benches' provider: the adapter protocol without I/O, so that the runner and the store are
what a bench measures. Every status call answers RUNNING at once."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from adapters.base import (
    JSON,
    Capabilities,
    Progress,
    ResultPayload,
    StatusReport,
    Submission,
    UnsupportedAction,
)
from gateway.states import JobState

PROVIDER: Final = "fake"
IDLE: Final = Progress(fraction=0.1, step="fetching", step_index=1, step_count=5)


class InstantAdapter:
    @property
    def name(self) -> str:
        return PROVIDER

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(submit=False)

    @property
    def status_table(self) -> Mapping[str, JobState]:
        return {"running": JobState.RUNNING}

    def auth_headers(self) -> dict[str, str]:
        return {}

    async def submit(self, request: Mapping[str, JSON]) -> Submission:
        raise UnsupportedAction("the bench adapter only answers status calls")

    async def fetch_status(self, upstream_id: str) -> StatusReport:
        return StatusReport(
            upstream_id=upstream_id,
            state=JobState.RUNNING,
            native_status="running",
            progress=IDLE,
        )

    async def fetch_result(
        self, upstream_id: str, *, page: int = 1, page_size: int | None = None
    ) -> ResultPayload:
        raise UnsupportedAction("the bench adapter only answers status calls")

    async def cancel(self, upstream_id: str) -> Submission:
        raise UnsupportedAction("the bench adapter only answers status calls")

    async def rerun(self, upstream_id: str) -> Submission:
        raise UnsupportedAction("the bench adapter only answers status calls")

    async def continue_(self, upstream_id: str, params: Mapping[str, JSON]) -> Submission:
        raise UnsupportedAction("the bench adapter only answers status calls")
