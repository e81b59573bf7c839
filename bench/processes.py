"""What the benchmarks that run ``jobgate serve`` as a process share: a free port and the TOML
config they write for it."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

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
