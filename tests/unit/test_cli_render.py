"""The CLI's pure parts: reading ``--request``/``--label``, and how a job renders as plain text."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.web.models import JobOut
from jobgate.cli import render
from jobgate.cli.parsing import UsageError, read_labels, read_request
from jobgate.cli.watch import PlainDisplay, Watched
from tests.support import public_job

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def job(**changes: Any) -> JobOut:
    base: dict[str, Any] = {
        "provider": "extract",
        "upstream_id": "up_1",
        "native_status": "processing",
        "progress": {"fraction": 0.4, "step": "scraping", "step_index": 3, "step_count": 5},
        "eta": "2026-01-02T03:04:17Z",
        "started_at": "2026-01-02T03:02:06Z",
        "polls": 7,
        "version": 7,
    }
    return JobOut.model_validate(public_job(**{**base, **changes}))


def test_status_line_shows_state_native_step_fraction_and_eta() -> None:
    line = render.status_line(job(), NOW)
    assert line == "running     processing  step 3/5 scraping  40%  eta 12s"


def test_status_line_leaves_out_what_is_unknown() -> None:
    line = render.status_line(
        job(
            state="queued",
            native_status=None,
            eta=None,
            progress={"fraction": None, "step": None, "step_index": None, "step_count": None},
        ),
        NOW,
    )
    assert line == "queued      -"


def test_a_succeeded_job_is_whole_and_has_no_eta() -> None:
    done = job(state="succeeded", native_status="completed", finished_at="2026-01-02T03:03:05Z")
    assert render.percent(done) == "100%"
    assert render.eta_text(done, NOW) is None
    assert render.ending_line(done) == "job_1 succeeded in 1m00s (7 polls); result: none"


def test_ending_line_of_a_failed_job_carries_its_error() -> None:
    failed = job(state="failed", error={"code": "upstream_failed", "message": "timeout"})
    assert render.ending_line(failed) == "job_1 failed (7 polls): upstream_failed: timeout"


def test_visible_ignores_polls_and_eta() -> None:
    assert render.visible(job()) == render.visible(job(polls=9, eta="2026-01-02T03:09:00Z"))
    assert render.visible(job()) != render.visible(job(progress={"fraction": 0.5}))


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.25, "0.2s"), (42, "42s"), (65, "1m05s"), (7260, "2h01m"), (200_000, "2d7h")],
)
def test_duration(seconds: float, text: str) -> None:
    assert render.duration(seconds) == text


@pytest.mark.parametrize(
    ("size", "text"), [(512, "512 B"), (6_100_000, "6.1 MB"), (2_500_000_000, "2.5 GB")]
)
def test_size_text(size: int, text: str) -> None:
    assert render.size_text(size) == text


def test_plain_table_aligns_columns_and_right_aligns_numbers() -> None:
    rows = [render.job_row(job(), NOW), render.job_row(job(id="job_22", polls=12), NOW)]
    lines = render.plain_table(render.JOB_COLUMNS, rows)
    assert lines[0].split() == ["id", "provider", "state", "native", "status", "progress",
                                "polls", "age"]  # fmt: skip
    assert lines[1].split() == ["job_1", "extract", "running", "processing", "40%", "7", "2m00s"]
    assert len({len(line) for line in lines}) == 1


def test_plain_display_prints_a_line_per_visible_change_only() -> None:
    out = io.StringIO()
    display = PlainDisplay(out, now=lambda: NOW)
    display.start("job_1", None)
    display.update(job())
    display.update(job(polls=8))
    display.update(job(progress={"fraction": 0.6}))
    display.finish(Watched("finished", job(state="failed")), "job_1")
    lines = out.getvalue().splitlines()
    assert lines[0] == "watching job_1"
    assert [line.split()[-3] for line in lines[1:3]] == ["40%", "60%"]
    assert lines[3] == "job_1 failed (7 polls)"
    assert "\x1b" not in out.getvalue()


def test_read_request_inline_file_and_errors(tmp_path: Path) -> None:
    assert read_request('{"url": "x"}') == {"url": "x"}
    body = tmp_path / "body.json"
    body.write_text('{"limit": 3}')
    assert read_request(f"@{body}") == {"limit": 3}
    with pytest.raises(UsageError, match=r"^--request is not JSON: Expecting"):
        read_request("{")
    with pytest.raises(UsageError, match=r"must be a JSON object.*not list"):
        read_request("[]")
    with pytest.raises(UsageError, match=r"no such file"):
        read_request(f"@{tmp_path / 'missing.json'}")
    with pytest.raises(UsageError, match=r"name a file"):
        read_request("@")


def test_read_labels() -> None:
    assert read_labels(["team=growth", "env=a=b", "empty="]) == {
        "team": "growth",
        "env": "a=b",
        "empty": "",
    }
    assert read_labels(None) == {}
    for bad in ("team", "=x", " =x"):
        with pytest.raises(UsageError, match="expected KEY=VALUE"):
            read_labels([bad])


def test_rich_jobs_table_keeps_ids_whole_on_a_narrow_terminal() -> None:
    from rich.console import Console

    jobs = [job(id="job_01M8SA7REKKN398VYSJ9T1567R"), job(id="job_01M8SA7MVVAQSPN1599RRAKEWT")]
    for width, shown, gone in ((120, ["polls", "age"], []), (60, ["state"], ["polls", "age"])):
        out = io.StringIO()
        console = Console(file=out, width=width, color_system=None)
        console.print(render.rich_jobs_table(jobs, NOW, console.width))
        text = out.getvalue()
        assert all(len(line.rstrip()) <= width for line in text.splitlines())
        for item in jobs:
            assert item.id in text
        header = text.splitlines()[0].split()
        assert all(column in header for column in shown), text
        assert not any(column in header for column in gone), text


# -- the runner's last words ----------------------------------------------------------------------


def test_an_internal_error_is_squashed_to_one_short_line() -> None:
    from jobgate.cli.commands import INTERNAL_ERROR_CHARS, one_line

    assert one_line("ValidationError: 3 errors\n  id\n    missing") == (
        "ValidationError: 3 errors id missing"
    )
    long = one_line("x " * 1000)
    assert len(long) == INTERNAL_ERROR_CHARS
    assert long.endswith("...")


class Refreshing:
    """A client whose ``get`` raises ``error`` (or returns the job), recording its arguments."""

    def __init__(self, error: Exception | None) -> None:
        self.error = error
        self.calls: list[dict[str, Any]] = []

    def get(self, job_id: str, **options: Any) -> JobOut:
        self.calls.append({"job_id": job_id, **options})
        if self.error is not None:
            raise self.error
        return job(state="running", version=9)


@pytest.mark.parametrize(
    ("error", "outcome", "version"),
    [
        (None, "timeout", 9),
        ("not_found", "deleted", 7),
        ("unreachable", "timeout", 7),
        ("busy", "timeout", 7),
    ],
)
def test_a_timeout_refreshes_once_and_a_failed_refresh_keeps_the_outcome(
    error: str | None, outcome: str, version: int
) -> None:
    from jobgate.cli.watch import NoDisplay, _stop
    from jobgate.client import GatewayUnreachable, NotFound, Unavailable

    errors: dict[str, Exception] = {
        "not_found": NotFound(status=404, code="job_not_found", detail="gone"),
        "unreachable": GatewayUnreachable("http://gw", "ConnectError"),
        "busy": Unavailable(status=503, code="upstream_unavailable", detail="later"),
    }
    client = Refreshing(None if error is None else errors[error])
    watched = _stop(client, "job_1", NoDisplay(), Watched("timeout", job()))  # type: ignore[arg-type]
    assert watched.outcome == outcome
    assert watched.job is not None
    assert watched.job.version == version
    assert client.calls == [{"job_id": "job_1", "retry": False}]  # one try: time is up already
