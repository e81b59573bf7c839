"""All four sandboxes on one port, each under its own prefix (``jobgate sandbox``)."""

from __future__ import annotations

from aiohttp import web

from adapters.registry import PROVIDERS
from adapters.simulator import PREFIX_KEY, SETTINGS_KEY, SandboxSettings

SUBAPPS_KEY = web.AppKey("sandbox_subapps", dict[str, web.Application])


async def _index(request: web.Request) -> web.Response:
    origin = request.url.origin()
    return web.json_response(
        {
            "sandboxes": {
                name: f"{origin}{spec.prefix}" for name, spec in sorted(PROVIDERS.items())
            },
            "scenario_header": "X-Sandbox-Scenario",
            "scenarios": ["succeed", "fail", "slow", "large", "expire", "flaky"],
        }
    )


def create_sandbox_app(settings: SandboxSettings) -> web.Application:
    """One application serving every provider's sandbox under ``/<prefix>``.

    The sub-applications are kept under ``SUBAPPS_KEY`` so tests can inspect a sandbox's jobs.
    """
    root = web.Application()
    root[SETTINGS_KEY] = settings
    subapps: dict[str, web.Application] = {}
    for name, spec in PROVIDERS.items():
        sub = spec.sandbox(settings)
        sub[PREFIX_KEY] = spec.prefix
        root.add_subapp(spec.prefix, sub)
        subapps[name] = sub
    root[SUBAPPS_KEY] = subapps
    root.router.add_get("/", _index)
    return root
