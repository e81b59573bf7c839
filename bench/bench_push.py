"""Push against polling, over real sockets: upstream status calls per job and detection lag.

One process, two real servers on 127.0.0.1: the four sandboxes and a gateway (``create_app``) with
``make run``'s policies (``config/sandbox.toml``: the providers' guidance and learned-cadence knobs,
divided by the sandbox's speed, 24). Each run submits ``--jobs`` jobs per provider at once and
waits until every one has finished, then reads each job's record: its status calls (the runner's
count per provider, over the jobs) and its detection lag, from the provider's own finish time
(as the sandbox's clock has it) to jobgate's (``finished_at``), in real seconds.

Two runs side by side:
- **push**: ``public_base_url`` set and every pushing provider configured: extract's
  ``callbackUrl``, catchall's webhook (registered once, attached with ``webhook_ids``), pulse's
  Standard Webhooks endpoint (the sandbox signs as Svix does). Polling is the safety net.
- **poll**: the same gateway without push: the cadence alone, cold (nothing learned yet: the
  providers' guidance).
- **learned**: the same, after ``WARMUP`` jobs per provider have finished: the learned schedule.

Targets (issue 12): with push, at most 2 status calls per job and p95 lag under 1 s for catchall,
extract and pulse. A job lasts what it lasts at speed 24 (catchall about 30 s), so the three runs
take about two minutes. Run: ``.venv/bin/python bench/bench_push.py [--jobs 20]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.catchall import sandbox_jobs as catchall_jobs
from adapters.extract import sandbox_jobs as extract_jobs
from adapters.pulse import sandbox_jobs as pulse_jobs
from adapters.registry import PROVIDERS
from adapters.sandboxes import SUBAPPS_KEY, create_sandbox_app
from adapters.simulator import SandboxSettings
from bench.processes import free_port
from gateway.settings import load_settings
from gateway.signatures import generate_secret
from gateway.web.app import create_app
from gateway.web.state import COMPONENTS_KEY

CONFIG = Path(__file__).resolve().parent.parent / "config" / "sandbox.toml"
SPEED = 24.0
REQUESTS: dict[str, dict[str, Any]] = {
    "catchall": {"query": "bench push"},
    "extract": {"url": "https://example.com", "maxPages": 3},
    "pulse": {"fileUrl": "https://example.com/report.pdf"},
}
WARMUP = 20
"""Jobs per provider finished before the "learned" run measures: ``min_jobs``, the default."""
TIMEOUT = 240.0
"""Real seconds a run may take before it gives up (a catchall job takes about 30)."""


async def serve(app: web.Application, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


def settings_for(sandbox_port: int, port: int, db: Path, *, push: bool) -> Any:
    tables = tomllib.loads(CONFIG.read_text())
    tables["sandbox"] = {"embedded": False}
    tables["server"] = {
        "host": "127.0.0.1",
        "port": port,
        "public_base_url": f"http://127.0.0.1:{port}" if push else None,
    }
    tables["store"] = {"kind": "sqlite", "path": str(db)}
    tables["vault"] = {"path": str(db.parent / "results")}
    tables["log"] = {"level": "WARNING"}
    tables["auth"] = {"required": False}  # a bench on loopback, as `make run` is
    for name, provider in tables["providers"].items():
        provider["base_url"] = provider["base_url"].replace(":8700", f":{sandbox_port}")
        provider["api_key"] = "bench-key"
        if push:
            provider["callback_secret"] = (
                generate_secret() if name == "pulse" else "bench-callback-token-" + name
            )
    return load_settings(db.parent / "no-such-config.toml", **tables)


async def run(jobs: int, *, push: bool, warmup: int = 0) -> dict[str, dict[str, float]]:
    sandbox_port, port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        settings = settings_for(sandbox_port, port, Path(tmp) / "jobs.db", push=push)
        sandbox_settings = SandboxSettings(speed=SPEED, seed=7)
        if push:
            secret = settings.providers["pulse"].callback_secret.get_secret_value()
            sandbox_settings.pulse_webhooks.append(
                (f"http://127.0.0.1:{port}/v1/callbacks/pulse", secret)
            )
        sandbox_app = create_sandbox_app(sandbox_settings)
        sandbox = await serve(sandbox_app, sandbox_port)
        app = create_app(settings)
        gateway = await serve(app, port)
        try:
            return await asyncio.wait_for(
                measure(app, sandbox_app, port, jobs, warmup), TIMEOUT + TIMEOUT * bool(warmup)
            )
        finally:
            await gateway.cleanup()
            await sandbox.cleanup()


def true_end(sandbox: web.Application, provider: str, upstream_id: str) -> datetime:
    """When the sandbox's job really ended, on the wall clock: its sandbox (monotonic) end moved
    onto the wall by the two clocks' offset now."""
    sub = sandbox[SUBAPPS_KEY][provider]
    if provider == "catchall":
        ends = sub[catchall_jobs.JOBS_KEY].jobs[upstream_id.lower()].finishes_at()
    elif provider == "extract":
        found = sub[extract_jobs.JOBS_KEY].get(upstream_id)
        assert found is not None
        ends = found.finished_at()
    else:
        found_pulse = sub[pulse_jobs.JOBS_KEY].get(upstream_id)
        assert found_pulse is not None
        ends = found_pulse.finished_at()
    return datetime.now(UTC) - timedelta(seconds=time.monotonic() - ends)


async def measure(
    app: web.Application, sandbox: web.Application, port: int, jobs: int, warmup: int
) -> dict[str, dict[str, float]]:
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:

        async def submit(provider: str) -> str:
            body = {"provider": provider, "request": REQUESTS[provider]}
            async with http.post(f"{base}/v1/jobs", json=body) as response:
                assert response.status == 201, await response.text()
                return str((await response.json())["id"])

        async def finished(job_id: str) -> None:
            while True:
                async with http.get(f"{base}/v1/jobs/{job_id}?wait=30") as response:
                    if (await response.json())["state"] in ("succeeded", "failed", "canceled"):
                        return

        async def batch(count: int) -> dict[str, list[str]]:
            ids = {
                provider: list(await asyncio.gather(*(submit(provider) for _ in range(count))))
                for provider in REQUESTS
            }
            await asyncio.gather(*(finished(job_id) for found in ids.values() for job_id in found))
            return ids

        components = app[COMPONENTS_KEY]
        runner = components.runner
        assert runner is not None
        if warmup:
            # Enough finished jobs of each key for the learned schedule (``min_jobs``).
            await batch(warmup)
            runner.status_calls = dict.fromkeys(runner.status_calls, 0)
        ids = await batch(jobs)
    store = components.require_store()
    figures: dict[str, dict[str, float]] = {}
    for provider, found in ids.items():
        lags = []
        for job_id in found:
            job = await store.get(job_id)
            assert job is not None
            assert job.finished_at is not None
            ended = true_end(sandbox, provider, job.upstream_id)
            lags.append(max(0.0, (job.finished_at - ended).total_seconds()))
        lags.sort()
        figures[provider] = {
            "calls": runner.status_calls[provider] / len(found),
            "lag_mean": statistics.fmean(lags),
            "lag_p95": lags[min(len(lags) - 1, int(0.95 * len(lags)))],
        }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20)
    args = parser.parse_args()
    assert set(REQUESTS) <= set(PROVIDERS)
    pushed = asyncio.run(run(args.jobs, push=True))
    polled = asyncio.run(run(args.jobs, push=False))
    learned = asyncio.run(run(args.jobs, push=False, warmup=WARMUP))
    print(f"{args.jobs} jobs per provider at sandbox speed {SPEED:g}, real sockets, real seconds")
    print(f"{'provider':<9} {'mode':<8} {'calls/job':>9} {'lag mean':>9} {'lag p95':>8}")
    verdicts = []
    for provider in REQUESTS:
        for mode, figures in (("push", pushed), ("poll", polled), ("learned", learned)):
            f = figures[provider]
            print(
                f"{provider:<9} {mode:<8} {f['calls']:>9.2f} {f['lag_mean']:>8.3f}s"
                f" {f['lag_p95']:>7.3f}s"
            )
        f = pushed[provider]
        ok = f["calls"] <= 2 and f["lag_p95"] < 1.0
        verdicts.append(
            f"{provider}: push {f['calls']:.2f} calls/job (goal <= 2), p95 lag"
            f" {f['lag_p95']:.3f}s (goal < 1 s): {'met' if ok else 'missed'}"
        )
    print()
    for line in verdicts:
        print(line)


if __name__ == "__main__":
    main()
