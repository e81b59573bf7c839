"""What the benchmarks that run ``jobgate serve`` and their own helper processes share: a free
port, the TOML config they write, starting ``jobgate serve`` and waiting for its ``/readyz``,
starting a script of theirs as a child, stopping both kinds, and bounding a whole run."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def to_toml(tables: Mapping[str, Mapping[str, Any]]) -> str:
    """Tables of scalars and lists, in order (``providers.pulse.policy`` as a dotted name)."""
    lines: list[str] = []
    for name, values in tables.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in values.items())
        lines.append("")
    return "\n".join(lines)


def spawn_serve(
    config: Path,
    port: int,
    env: Mapping[str, str],
    log: Path,
    *,
    python_args: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """``jobgate serve`` on ``config`` and ``port`` from the repository's root, its stderr (the
    log) in ``log``. ``python_args`` go before ``-m`` (``-m cProfile -o FILE``)."""
    command = [sys.executable, *python_args, "-m", "gateway.cli", "serve", "--config", str(config)]
    command += ["--port", str(port)]
    with log.open("wb") as err:
        return subprocess.Popen(
            command,
            cwd=ROOT,
            env=dict(env),
            stdout=subprocess.DEVNULL,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )


def log_tail(log: Path) -> str:
    """The last 3,000 characters of a log, for an error message."""
    return log.read_text(errors="replace")[-3000:]


async def ready_by(
    session: aiohttp.ClientSession, url: str, process: subprocess.Popen[bytes], deadline: float
) -> bool:
    """Whether ``url``/readyz answers 200 before ``deadline`` (monotonic) while ``process`` runs:
    asked every 0.05 s, 2 s an ask."""
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            async with session.get(
                f"{url}/readyz", timeout=aiohttp.ClientTimeout(total=2)
            ) as response:
                if response.status == 200:
                    return True
        await asyncio.sleep(0.05)
    return False


async def until_ready(
    session: aiohttp.ClientSession,
    url: str,
    process: subprocess.Popen[bytes],
    log: Path,
    within: float,
    *,
    began: float | None = None,
    name: str = "the gateway",
) -> float:
    """Wait for ``url``/readyz (``ready_by``) until ``within`` seconds after ``began`` (monotonic,
    default now) and return the seconds since ``began``; a RuntimeError naming ``name``, with the
    tail of ``log``, when it does not answer."""
    began = time.monotonic() if began is None else began
    if await ready_by(session, url, process, began + within):
        return time.monotonic() - began
    raise RuntimeError(f"{name} did not start:\n{log_tail(log)}")


async def stop_process(process: subprocess.Popen[bytes] | None, grace: float) -> None:
    """SIGTERM (a clean stop: cProfile writes its file), then SIGKILL after ``grace`` seconds."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        await asyncio.wait_for(asyncio.to_thread(process.wait), grace)
    except TimeoutError:
        process.kill()
        await asyncio.to_thread(process.wait)


async def spawn_script(
    script: Path, *argv: str, limit: int = 1 << 16
) -> asyncio.subprocess.Process:
    """``script`` with ``argv`` (a bench script in a hidden mode) from the repository's root, its
    stdin and stdout piped (``limit``: the longest line read from it, asyncio's default 64 KiB);
    such a child says on stdout when it is ready and stops when its stdin closes."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
        limit=limit,
    )


async def read_line(process: asyncio.subprocess.Process, within: float) -> bytes:
    """The child's next stdout line within ``within`` seconds (empty once it has exited)."""
    assert process.stdout is not None
    return await asyncio.wait_for(process.stdout.readline(), within)


async def close_child(process: asyncio.subprocess.Process | None, grace: float) -> None:
    """Close a ``spawn_script`` child's stdin (its signal to stop), then SIGKILL after ``grace``
    seconds."""
    if process is None or process.returncode is not None:
        return
    assert process.stdin is not None
    process.stdin.close()
    try:
        await asyncio.wait_for(process.wait(), grace)
    except TimeoutError:
        process.kill()
        await process.wait()


def run_bounded(bench: Callable[[Path], Awaitable[None]], timeout: float, prefix: str) -> None:
    """``bench(directory)`` under ``asyncio.run``, bounded by ``timeout`` seconds, in a temporary
    directory named with ``prefix`` and removed at the end; past the bound it says so on stderr
    and exits 1."""
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        asyncio.run(asyncio.wait_for(bench(directory), timeout))
    except TimeoutError:
        print(f"stopped after --timeout {timeout:g} s", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        shutil.rmtree(directory, ignore_errors=True)
