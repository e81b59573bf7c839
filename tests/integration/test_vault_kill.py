"""A gateway SIGKILLed halfway through a capture: no partial blob is ever served, and the capture
runs again after the restart.

The sandbox runs in this process with the pulse stall hook on: a large download sends half its
body, sets ``stalled`` and waits. The gateway is a ``jobgate serve`` subprocess on a SQLite file
with its vault in ``tmp_path``. Once the capture holds every byte the sandbox sent before the
stall, the gateway is killed with SIGKILL (on that cue, never on a timer). What the crash leaves
is checked on disk: nothing under a final blob name, only the temporary ``.tmp/<uuid>.part``. The
downloads are then let through, the gateway starts again on the same file and vault, and the
capture is retried from the start against the (reusable) presigned pointer: the job ends with a
whole copy, whose bytes are the provider's, and the dead attempt's temporary file stays until the
store's stale sweep (24 h) without getting in the way.

The lease: a SQLite restart ends the dead process's idempotency-key leases when it opens the
file (``END_IDEMPOTENCY_LEASES`` in ``SqliteStore._open_sync``), but not its job claims: a claimed
job's ``next_poll_at`` is its lease's end, and nothing brings it forward at start-up. So the retry
waits for the killed claim's lease to run out, and this test shortens the lease explicitly
(``LEASE_SECONDS``) rather than wait out the default 120 s. The settings require the lease to
exceed the providers' ``total_timeout``, hence ``TOTAL_TIMEOUT``; the capture's own timeout is
80 % of the lease, far more than a 6 MB download over loopback takes.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from adapters.pulse import sandbox as pulse_sandbox
from adapters.pulse.sandbox_jobs import LARGE_PAGES
from adapters.pulse.sandbox_large_results import _large_page
from adapters.registry import PROVIDERS
from adapters.sandboxes import SUBAPPS_KEY, create_sandbox_app
from adapters.simulator import SandboxSettings
from tests.conftest import Serve
from tests.integration.conftest import FAST_POLICY
from tests.integration.replica_harness import Replica, launch, stop_replicas, to_toml

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

API_KEY = "vault-kill-key"
SPEED = 400.0
"""A pulse job lives about 0.125 s."""
WITHIN = 30.0
"""The bound on every wait: a start, the stall reached, a process reaped, the copy stored."""
LEASE_SECONDS = 6.0
"""The runner's claim lease: how long the killed capture's job stays claimed (see the module's
docstring). Short so that the restarted gateway retries within the test."""
TOTAL_TIMEOUT = 4.0
"""The providers' total_timeout, which the settings require to be under the lease."""
LARGE = "https://example.com/k.pdf?sandbox=large"
"""A presigned pointer (the default): reusable, so the retry can fetch it again."""
HALF = len(b'{"markdown":"') + sum(len(_large_page(n)) for n in range(1, LARGE_PAGES // 2))
"""The bytes a stalled large download sends before it waits: its opening and the pages before
the middle one (``_stream_large`` stalls before writing chunk ``LARGE_PAGES // 2``)."""
BLOB_NAME = re.compile(r"^g\d+\.bin$")


def gateway_config(sandbox_url: str, db: Path, vault: Path) -> str:
    tables: dict[str, dict[str, Any]] = {
        "server": {"host": "127.0.0.1"},
        "store": {"kind": "sqlite", "path": str(db)},
        "runner": {"tick_ms": 20, "lease_seconds": LEASE_SECONDS},
        "sandbox": {"embedded": False},
        "log": {"format": "json", "level": "INFO"},
        "auth": {"required": False},  # open on loopback: this is about crashes, not keys
        "vault": {"path": str(vault)},
    }
    for name, spec in sorted(PROVIDERS.items()):
        tables[f"providers.{name}"] = {
            "base_url": sandbox_url + spec.prefix,
            "connect_timeout": 1.0,
            "read_timeout": TOTAL_TIMEOUT,
            "total_timeout": TOTAL_TIMEOUT,
            "result_hosts": ["127.0.0.1"],
            "result_networks": ["127.0.0.1/32"],
        }
        tables[f"providers.{name}.policy"] = dict(FAST_POLICY)
    return to_toml(tables)


def gateway_env() -> dict[str, str]:
    """This environment without any ``JOBGATE_`` variable of its own, plus the providers' key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBGATE_")}
    env["PYTHONUNBUFFERED"] = "1"
    for name in PROVIDERS:
        env[f"JOBGATE_PROVIDERS__{name.upper()}__API_KEY"] = API_KEY
    return env


def final_files(vault: Path) -> list[Path]:
    """Every file in the vault outside ``.tmp/``: the blobs under their final names."""
    return sorted(
        path
        for path in vault.rglob("*")
        if path.is_file() and path.relative_to(vault).parts[0] != ".tmp"
    )


def temporaries(vault: Path) -> list[Path]:
    tmp = vault / ".tmp"
    return sorted(tmp.iterdir()) if tmp.is_dir() else []


async def get_job(session: aiohttp.ClientSession, gateway: Replica, job_id: str) -> dict[str, Any]:
    async with session.get(
        f"{gateway.url}/v1/jobs/{job_id}", timeout=aiohttp.ClientTimeout(total=WITHIN)
    ) as response:
        assert response.status == 200, await response.text()
        job: dict[str, Any] = await response.json()
        return job


async def until_part_holds(vault: Path, size: int, gateway: Replica) -> Path:
    """Until the capture's one temporary file holds ``size`` bytes (the gateway has written all
    the sandbox sent before stalling); bounded by ``WITHIN``."""
    deadline = time.monotonic() + WITHIN
    while time.monotonic() < deadline:
        parts = temporaries(vault)
        if len(parts) == 1 and parts[0].stat().st_size >= size:
            return parts[0]
        await asyncio.sleep(0.02)
    raise AssertionError(
        f"the capture never wrote {size} bytes: {[(p, p.stat().st_size) for p in parts]}\n"
        f"{gateway.tail()}"
    )


async def until_stored(
    session: aiohttp.ClientSession, gateway: Replica, job_id: str
) -> dict[str, Any]:
    """Until the job says its copy is stored; bounded by ``WITHIN``."""
    deadline = time.monotonic() + WITHIN
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = await get_job(session, gateway, job_id)
        if job["result"]["stored"]:
            return job
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {job_id} never stored its result: {job}\n{gateway.tail()}")


async def test_a_capture_killed_midway_leaves_no_blob_and_is_retried_after_a_restart(
    serve: Serve, tmp_path: Path, http_session: aiohttp.ClientSession
) -> None:
    sandbox = create_sandbox_app(SandboxSettings(speed=SPEED, seed=29))
    store = sandbox[SUBAPPS_KEY]["pulse"][pulse_sandbox.JOBS_KEY]
    stall = asyncio.Event()
    store.stall = stall
    sandbox_url = await serve(sandbox)
    vault = tmp_path / "vault"
    config = tmp_path / "gateway.toml"
    config.write_text(gateway_config(sandbox_url, tmp_path / "jobs.db", vault))
    env = gateway_env()
    started: list[Replica] = []
    try:
        first = await launch(http_session, started, "first", config, env, API_KEY, within=WITHIN)
        async with http_session.post(
            f"{first.url}/v1/jobs",
            json={"provider": "pulse", "request": {"fileUrl": LARGE}},
            timeout=aiohttp.ClientTimeout(total=WITHIN),
        ) as response:
            assert response.status == 201, await response.text()
            submitted = await response.json()
        job_id, upstream_id = submitted["id"], submitted["upstream_id"]

        # -- the capture is halfway: the sandbox has sent half the body and waits ---------------
        try:
            async with asyncio.timeout(WITHIN):
                await store.stalled.wait()
        except TimeoutError:
            raise AssertionError(f"the capture never started:\n{first.tail()}") from None
        part = await until_part_holds(vault, HALF, first)
        midway = await get_job(http_session, first, job_id)
        assert midway["state"] == "succeeded", midway
        assert (midway["result"]["capturing"], midway["result"]["stored"]) == (True, False)
        assert store.served == 1

        first.kill()
        await asyncio.wait_for(asyncio.to_thread(first.process.wait), WITHIN)

        # -- what the crash leaves: nothing under a final name, one temporary file -------------
        assert final_files(vault) == [], "a half-written blob sits under its final name"
        # The temporary file the writer streamed into (fsync and the rename to the blob's key
        # only come at the commit): exactly the bytes that had arrived, and nothing serves it.
        assert temporaries(vault) == [part]
        assert part.suffix == ".part"
        assert part.stat().st_size == HALF
        partial = part.read_bytes()
        assert not [e for e in first.log_events() if e.get("event") == "vault.stored"]

        # -- downloads run through now; the gateway again, on the same file and vault ----------
        store.stall = None
        store.stalled.clear()
        stall.set()  # the killed download's handler, still waiting, ends into a dead socket
        second = await launch(http_session, started, "second", config, env, API_KEY, within=WITHIN)
        # The dead attempt's temporary file survives the start-up's stale sweep (it is fresh). The
        # retry may already be streaming into a temporary file of its own beside it.
        assert part in temporaries(vault)
        done = await until_stored(http_session, second, job_id)
        result = done["result"]
        assert done["state"] == "succeeded", done
        assert (result["source"], result["capturing"], result["error"]) == ("jobgate", False, None)
        assert result["size"] > 1_000_000
        assert store.served == 2, "the killed attempt and the retry, nothing more"

        # The retry's blob is whole and under its final name; the stale temporary file is the
        # killed attempt's, left for the 24 h sweep, and took no part in the new copy.
        (blob,) = final_files(vault)
        assert blob.parent.name == job_id
        assert BLOB_NAME.match(blob.name), blob
        assert temporaries(vault) == [part]
        assert part.read_bytes() == partial

        async with http_session.get(
            f"{second.url}/v1/jobs/{job_id}/result", timeout=aiohttp.ClientTimeout(total=WITHIN)
        ) as response:
            assert response.status == 200, await response.text()
            body = await response.read()
            headers = response.headers.copy()
        assert headers["X-Jobgate-Result-Source"] == "jobgate"
        assert headers["ETag"] == f'"{result["sha256"]}"'
        assert (len(body), hashlib.sha256(body).hexdigest()) == (result["size"], result["sha256"])
        assert blob.read_bytes() == body
        assert body.startswith(partial)
        assert len(partial) < len(body)
        assert "markdown" in orjson.loads(body)

        # The bytes are the provider's: the same pointer, downloaded directly.
        async with http_session.get(
            f"{sandbox_url}/pulse/job/{upstream_id}",
            headers={"x-api-key": API_KEY},
            timeout=aiohttp.ClientTimeout(total=WITHIN),
        ) as response:
            assert response.status == 200, await response.text()
            pointer = (await response.json())["result"]
        assert pointer["is_url"] is True
        async with http_session.get(
            pointer["url"], timeout=aiohttp.ClientTimeout(total=WITHIN)
        ) as response:
            assert response.status == 200, await response.text()
            direct = await response.read()
        assert hashlib.sha256(direct).hexdigest() == result["sha256"]

        events = second.log_events()
        stored = [e for e in events if e.get("event") == "vault.stored"]
        assert [e.get("job_id") for e in stored] == [job_id], second.tail()
        failed = [e for e in events if e.get("event") == "vault.capture_failed"]
        assert failed == [], second.tail()
    finally:
        stall.set()  # a download still held would keep the sandbox's server from closing
        await stop_replicas(started)
