"""``jobgate serve`` refusing to start: one clear line for the operator, never a traceback, never
the DSN's password."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.support import free_port

pytestmark = pytest.mark.integration


async def serve(tmp_path: Path, port: int, **env: str) -> asyncio.subprocess.Process:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[store]\npath = "{tmp_path / "jobs.db"}"\n[sandbox]\nembedded = false\n'
        '[providers.pulse]\nbase_url = "http://127.0.0.1:9/pulse"\n'
    )
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        "serve",
        "--config",
        str(config),
        "--port",
        str(port),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "JOBGATE_PROVIDERS__PULSE__API_KEY": "k", **env},
    )


async def refusal(process: asyncio.subprocess.Process) -> tuple[int, str]:
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, (out + err).decode()


@pytest.mark.parametrize(
    ("dsn", "reason"),
    [
        ("postgresql://jobgate:hunter2@127.0.0.1:1/jobgate", "ConnectionRefusedError"),
        ("postgresql://jobgate:hunter2@[unclosed/jobgate", "Invalid IPv6 URL"),
    ],
)
async def test_an_unreachable_or_malformed_dsn_is_one_line_without_the_password(
    tmp_path: Path, dsn: str, reason: str
) -> None:
    process = await serve(
        tmp_path, free_port(), JOBGATE_STORE__KIND="postgres", JOBGATE_STORE__DSN=dsn
    )
    code, output = await refusal(process)
    assert code == 1
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("jobgate: cannot open the store: PostgreSQL at ")
    assert reason in lines[0]
    assert "hunter2" not in output
    assert "Traceback" not in output


async def test_postgres_without_a_dsn_is_a_configuration_error(tmp_path: Path) -> None:
    code, output = await refusal(await serve(tmp_path, free_port(), JOBGATE_STORE__KIND="postgres"))
    assert code == 2
    assert output.strip() == (
        "jobgate: invalid configuration: store: Value error, store.kind = 'postgres' needs a "
        "DSN: set JOBGATE_STORE__DSN or store.dsn_file"
    )


async def test_a_second_gateway_on_one_sqlite_file_is_refused(
    tmp_path: Path, http_session: aiohttp.ClientSession
) -> None:
    port = free_port()
    first = await serve(tmp_path, port)
    try:
        for _ in range(200):  # bounded: about 20 s
            try:
                async with http_session.get(f"http://127.0.0.1:{port}/healthz") as response:
                    if response.status == 200:
                        break
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the first gateway did not start")
        code, output = await refusal(await serve(tmp_path, free_port()))
        assert code == 1
        assert "is in use by another jobgate process (pid " in output
        assert "store.kind = 'postgres'" in output
        assert "Traceback" not in output
    finally:
        first.terminate()
        await first.wait()


async def test_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, output = await refusal(await serve(tmp_path, port))
    assert code == 1
    last = output.strip().splitlines()[-1]
    assert last.startswith("jobgate: cannot listen: ")
    assert last.endswith(f"('127.0.0.1', {port}): address already in use")
    assert "Traceback" not in output


async def test_a_vault_directory_that_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the vault should be")
    code, output = await refusal(
        await serve(tmp_path, free_port(), JOBGATE_VAULT__PATH=str(blocker / "results"))
    )
    assert code == 1
    last = output.strip().splitlines()[-1]
    assert last.startswith(f"jobgate: the result vault at {blocker / 'results'} cannot be used: ")
    assert "Traceback" not in output


async def test_a_pulse_secret_that_is_not_whsec_is_one_line_without_the_secret(
    tmp_path: Path,
) -> None:
    process = await serve(
        tmp_path, free_port(), JOBGATE_PROVIDERS__PULSE__CALLBACK_SECRET="plain-token-0d9e"
    )
    code, output = await refusal(process)
    assert code == 2
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("jobgate: invalid configuration: ")
    assert "providers.pulse.callback_secret" in lines[0]
    assert "whsec_" in lines[0]
    assert "plain-token-0d9e" not in output
    assert "Traceback" not in output
