"""``jobgate demo`` against a real sandbox + gateway pair, and against nothing at all."""

from __future__ import annotations

import io
import socket

import pytest

from gateway.demo import run_demo
from tests.integration.conftest import StackFactory

pytestmark = pytest.mark.integration

PROVIDERS = ("catchall", "extract", "pulse", "platform")


def _summary_rows(output: str) -> dict[str, list[str]]:
    """The summary table's rows by provider: the lines after the ``provider  job id`` header."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("provider  job id"))
    rows: dict[str, list[str]] = {}
    for line in lines[start + 1 :]:
        cells = line.split()
        if not cells:
            break
        rows[cells[0]] = cells
    return rows


async def test_demo_runs_every_provider_to_success(make_stack: StackFactory) -> None:
    # The gateway's providers point at the test sandbox, so the platform side door is found there.
    stack = await make_stack(speed=400)
    out = io.StringIO()
    code = await run_demo(stack.url, timeout=60, out=out)
    output = out.getvalue()
    assert code == 0, output
    rows = _summary_rows(output)
    assert set(rows) == set(PROVIDERS), output
    for provider in PROVIDERS:
        _, job_id, state, _native, polls, records, size, _elapsed = rows[provider]
        assert job_id.startswith("job_"), output
        assert state == "succeeded", output
        assert int(polls) >= 1, output
        assert int(size) > 0, output
        if provider == "catchall":
            assert int(records) == 10, output
    assert "all 4 jobs succeeded" in output
    # Not a terminal: progress is logged a line per change, never redrawn with escape codes.
    assert "\x1b[" not in output
    assert stack.upstream_jobs("platform") == 1


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_unreachable_gateway_exits_2_with_a_hint() -> None:
    out = io.StringIO()
    code = await run_demo(f"http://127.0.0.1:{_closed_port()}", timeout=5, out=out)
    assert code == 2
    output = out.getvalue()
    assert "is `make run` running?" in output
    assert len(output.strip().splitlines()) == 1
