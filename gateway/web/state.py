"""The live parts of a running app, filled in at startup (the app's mapping is frozen by then)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from gateway.auth import OPEN, Principal
from gateway.metrics import Metrics

if TYPE_CHECKING:
    from gateway.access import Access
    from gateway.callbacks import CallbackInbox
    from gateway.results import ResultFetcher
    from gateway.runner import Runner
    from gateway.service import JobService
    from gateway.settings import Settings
    from gateway.store.base import JobStore


@dataclass
class Components:
    settings: Settings
    store: JobStore | None = None
    service: JobService | None = None
    runner: Runner | None = None
    fetchers: dict[str, ResultFetcher] = field(default_factory=dict)
    sandbox_url: str | None = None
    callbacks: CallbackInbox | None = None
    access: Access | None = None
    metrics: Metrics = field(default_factory=Metrics)

    def require_store(self) -> JobStore:
        if self.store is None:
            raise RuntimeError("the store is not open")
        return self.store

    def require_service(self) -> JobService:
        if self.service is None:
            raise RuntimeError("the application has not started")
        return self.service

    def require_access(self) -> Access:
        if self.access is None:
            raise RuntimeError("the application has not started")
        return self.access


COMPONENTS_KEY = web.AppKey("components", Components)

PRINCIPAL = "jobgate.principal"
"""The request's key for its :class:`Principal` (aiohttp has no typed request keys)."""


def principal_of(request: web.Request) -> Principal:
    """Who is calling, as the auth middleware found (an app without it: the open principal)."""
    found = request.get(PRINCIPAL)
    return found if isinstance(found, Principal) else OPEN


def tenant_of(request: web.Request) -> str:
    return principal_of(request).tenant
