"""The providers jobgate knows: each adapter class, sandbox factory and sandbox mount prefix."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from aiohttp import web

from adapters.cadence_keys import (
    KeyOf,
    catchall_key,
    extract_key,
    platform_key,
    single_key,
)
from adapters.catchall import adapter as catchall_adapter
from adapters.catchall import sandbox as catchall_sandbox
from adapters.extract import adapter as extract_adapter
from adapters.extract import sandbox as extract_sandbox
from adapters.http import HttpAdapter
from adapters.platform import adapter as platform_adapter
from adapters.platform import sandbox as platform_sandbox
from adapters.pulse import adapter as pulse_adapter
from adapters.pulse import sandbox as pulse_sandbox
from adapters.simulator import SandboxSettings


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    name: str
    adapter: type[HttpAdapter]
    sandbox: Callable[[SandboxSettings], web.Application]
    prefix: str
    """Where the combined sandbox mounts this provider; its native paths follow unchanged."""
    cadence_key: KeyOf = single_key
    """What splits this provider's jobs into separately learned durations."""


PROVIDERS: Final[dict[str, ProviderSpec]] = {
    spec.name: spec
    for spec in (
        ProviderSpec(
            "catchall",
            catchall_adapter.CatchAllAdapter,
            catchall_sandbox.create_app,
            "/catchall",
            catchall_key,
        ),
        ProviderSpec(
            "extract",
            extract_adapter.ExtractAdapter,
            extract_sandbox.create_app,
            "/extract",
            extract_key,
        ),
        ProviderSpec("pulse", pulse_adapter.PulseAdapter, pulse_sandbox.create_app, "/pulse"),
        ProviderSpec(
            "platform",
            platform_adapter.PlatformAdapter,
            platform_sandbox.create_app,
            "/platform/v1/api",
            platform_key,
        ),
    )
}
