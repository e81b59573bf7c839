"""``gateway.cli.main``: what every ``jobgate`` command shares."""

from __future__ import annotations

import argparse
import sys

import pytest

from gateway import cli


def test_a_reader_that_went_away_is_exit_1_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    def writes_to_a_closed_pipe(args: argparse.Namespace) -> int:
        print("a line nobody reads")
        raise BrokenPipeError  # what `jobgate ... | head` meets once head has exited

    monkeypatch.setattr(cli, "_demo", writes_to_a_closed_pipe)
    assert cli.main(["demo"]) == 1
    # Standard output now goes nowhere, so the interpreter's own flush at exit cannot fail again.
    print("after", file=sys.stdout, flush=True)
    assert "Traceback" not in capfd.readouterr().err


def test_demo_aims_at_jobgate_url_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def demo(args: argparse.Namespace) -> int:
        seen.append(args.url)
        return 0

    monkeypatch.setattr(cli, "_demo", demo)
    monkeypatch.setenv("JOBGATE_URL", "http://127.0.0.1:18080")
    assert cli.main(["demo"]) == 0
    monkeypatch.delenv("JOBGATE_URL")
    assert cli.main(["demo"]) == 0
    assert seen == ["http://127.0.0.1:18080", "http://127.0.0.1:8080"]
