"""How jobs look: pure text for logs and pipes, rich renderables for a terminal.

Nothing here talks to the gateway or decides an exit code. Times are passed in (``now``), so the
same job always renders the same way in tests.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from rich.markup import escape
from rich.table import Table
from rich.text import Text

from gateway.web.models import JobOut

FINISHED: Final = frozenset({"succeeded", "failed", "canceled", "expired"})
STATE_STYLES: Final = {
    "queued": "cyan",
    "running": "yellow",
    "succeeded": "bold green",
    "failed": "bold red",
    "canceled": "magenta",
    "expired": "dim",
}
JOB_COLUMNS: Final = ("id", "provider", "state", "native status", "progress", "polls", "age")
RIGHT: Final = frozenset({"progress", "polls", "age"})
DROPPABLE: Final = ("polls", "progress", "age", "native status", "provider")
"""The jobs table's columns a narrow terminal loses, in this order."""
GAP: Final = 2


def parse_time(value: str | None) -> datetime | None:
    """An ISO 8601 timestamp as the gateway writes it (``Z`` or an offset), or ``None``."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def duration(seconds: float) -> str:
    """``4.2s``, ``3m05s``, ``2h10m``, ``3d4h``: short and unambiguous."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours}h"


def eta_text(job: JobOut, now: datetime) -> str | None:
    """``eta 12s`` while the job runs and the gateway has an estimate."""
    if job.state in FINISHED:
        return None
    at = parse_time(job.eta)
    if at is None:
        return None
    left = (at - now).total_seconds()
    return f"eta {duration(left)}" if left > 0 else "eta now"


def fraction(job: JobOut) -> float | None:
    """The job's progress in 0..1: 1 once it succeeded, ``None`` when nobody knows."""
    if job.state == "succeeded":
        return 1.0
    value = job.progress.fraction
    return None if value is None else max(0.0, min(1.0, value))


def percent(job: JobOut) -> str | None:
    value = fraction(job)
    return None if value is None else f"{value * 100:.0f}%"


def step_text(job: JobOut) -> str | None:
    """``step 3/5 fetching``, ``step 3/5``, ``fetching`` or ``None``."""
    progress = job.progress
    where = None
    if progress.step_index is not None:
        where = f"step {progress.step_index}"
        if progress.step_count is not None:
            where += f"/{progress.step_count}"
    # A step named like the native status (pulse: "processing") would only say it twice.
    step = progress.step if progress.step != job.native_status else None
    parts = [part for part in (where, step) if part]
    return " ".join(parts) or None


def progress_cell(job: JobOut) -> str:
    """The jobs table's progress: a percentage, else the step, else ``-``."""
    value = percent(job)
    if value is not None:
        return value
    progress = job.progress
    if progress.step_index is not None and progress.step_count:
        return f"{progress.step_index}/{progress.step_count}"
    return "-"


def age(job: JobOut, now: datetime) -> str:
    created = parse_time(job.created_at)
    return "-" if created is None else duration((now - created).total_seconds())


def elapsed(job: JobOut) -> str | None:
    """From creation to the end, by the gateway's clock."""
    start, end = parse_time(job.created_at), parse_time(job.finished_at)
    if start is None or end is None:
        return None
    return duration((end - start).total_seconds())


def visible(job: JobOut) -> tuple[object, ...]:
    """What is worth a new line in a log: the ETA and poll count alone change too often."""
    progress = job.progress
    return (
        job.state,
        job.native_status,
        progress.step,
        progress.step_index,
        progress.step_count,
        percent(job),
    )


def status_line(job: JobOut, now: datetime) -> str:
    """One log line for a change: ``running    processing  step 3/5 fetching  40%  eta 12s``."""
    cells = [
        f"{job.state:<10}",
        job.native_status or "-",
        step_text(job),
        percent(job),
        eta_text(job, now),
    ]
    return "  ".join(cell for cell in cells if cell).rstrip()


def watching_line(job_id: str, job: JobOut | None) -> str:
    if job is None:
        return f"watching {job_id}"
    return f"watching {job.id} ({job.provider}, upstream {job.upstream_id})"


def result_text(job: JobOut) -> str:
    """``inline``, ``paged, 120 records``, ``pointer, 6.1 MB`` or ``none``."""
    result = job.result
    if not result.available or result.kind is None:
        return "none"
    parts = [result.kind + (" (partial)" if result.partial else "")]
    if result.total_records is not None:
        parts.append(f"{result.total_records} records")
    if result.size is not None:
        parts.append(size_text(result.size))
    return ", ".join(parts)


def size_text(size: int) -> str:
    """``512 B``, ``6.1 MB``: decimal units, as ``rich`` shows transfers."""
    value = float(size)
    for unit in ("B", "kB", "MB"):
        if value < 1000:
            return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def ending_line(job: JobOut) -> str:
    """The summary once a job is finished: how it ended, and what to do next."""
    took = elapsed(job)
    line = f"{job.id} {job.state}"
    if took:
        line += f" in {took}"
    line += f" ({job.polls} poll{'' if job.polls == 1 else 's'})"
    if job.state == "succeeded":
        line += f"; result: {result_text(job)}"
        if job.result.available:
            line += f"; read it: jobgate result {job.id}"
    elif job.error is not None:
        line += f": {job.error.code}: {job.error.message}"
    return line


def action_line(verb: str, job: JobOut) -> str:
    """After an action: ``submitted job_01 (extract, queued; upstream abc)``."""
    return f"{verb} {job.id} ({job.provider}, {job.state}; upstream {job.upstream_id})"


def job_fields(job: JobOut, now: datetime) -> list[tuple[str, str]]:
    """``jobgate get``: the job as labelled lines, in reading order."""
    fields: list[tuple[str, str]] = [
        ("id", job.id),
        ("provider", job.provider),
        ("upstream id", job.upstream_id),
        ("state", job.state),
        ("native status", job.native_status or "-"),
        ("progress", " ".join(p for p in (percent(job), step_text(job)) if p) or "-"),
    ]
    eta = eta_text(job, now)
    if eta:
        fields.append(("eta", eta.removeprefix("eta ") + f" ({job.eta})"))
    fields.append(("result", result_text(job)))
    if job.result.sha256:
        fields.append(("result sha256", job.result.sha256))
    if job.error is not None:
        fields.append(("error", f"{job.error.code}: {job.error.message}"))
    fields += [
        ("created", f"{job.created_at} ({age(job, now)} ago)"),
        ("finished", job.finished_at or "-"),
        ("polls", str(job.polls)),
    ]
    if job.labels:
        fields.append(("labels", " ".join(f"{k}={v}" for k, v in sorted(job.labels.items()))))
    if job.rerun_of:
        fields.append(("rerun of", job.rerun_of))
    return fields


def job_row(job: JobOut, now: datetime) -> tuple[str, ...]:
    return (
        job.id,
        job.provider,
        job.state,
        job.native_status or "-",
        progress_cell(job),
        str(job.polls),
        age(job, now),
    )


def plain_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """Columns aligned with spaces, for pipes: ``awk '{print $1}'`` gets the first column."""
    table = [tuple(header), *(tuple(row) for row in rows)]
    widths = [max(len(row[col]) for row in table) for col in range(len(header))]
    lines = []
    for row in table:
        cells = [
            cell.rjust(widths[col]) if header[col] in RIGHT else cell.ljust(widths[col])
            for col, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def state_text(state: str) -> Text:
    return Text(state, style=STATE_STYLES.get(state, ""))


def rich_jobs_table(jobs: Sequence[JobOut], now: datetime, width: int) -> Table:
    """The jobs table for a terminal ``width`` columns wide: ids and states are never cut (an id
    is copied from here), so on a narrow terminal whole columns go, least useful first."""
    rows = [job_row(job, now) for job in jobs]
    columns = list(JOB_COLUMNS)

    def needed() -> int:
        widths = [
            max(len(column), *(len(row[JOB_COLUMNS.index(column)]) for row in rows))
            for column in columns
        ]
        return sum(widths) + GAP * (len(columns) - 1)

    for column in DROPPABLE:
        if needed() <= width:
            break
        columns.remove(column)
    table = Table(box=None, header_style="bold", pad_edge=False, padding=(0, GAP, 0, 0))
    for column in columns:
        table.add_column(column, justify="right" if column in RIGHT else "left", no_wrap=True)
    for job, row in zip(jobs, rows, strict=True):
        cells: list[str | Text] = [
            state_text(job.state) if column == "state" else row[JOB_COLUMNS.index(column)]
            for column in columns
        ]
        table.add_row(*cells)
    return table


def rich_job_grid(job: JobOut, now: datetime) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    for name, value in job_fields(job, now):
        grid.add_row(name, state_text(value) if name == "state" else Text(value))
    return grid


def rich_description(job: JobOut) -> str:
    """The live bar's text: provider, state, native status and step, as rich markup."""
    style = STATE_STYLES.get(job.state, "")
    parts = [
        f"[bold]{escape(job.provider)}[/]",
        f"[{style}]{job.state}[/]" if style else job.state,
        escape(job.native_status or "-"),
    ]
    step = step_text(job)
    if step:
        parts.append(f"[dim]{escape(step)}[/]")
    return " ".join(parts)


def to_json(value: Any, *, pretty: bool) -> str:
    """One JSON document: indented for a person at a terminal, one line for a pipe."""
    if pretty:
        return json.dumps(value, indent=2, ensure_ascii=False)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def job_json(job: JobOut) -> dict[str, Any]:
    data: dict[str, Any] = job.model_dump(mode="json", by_alias=True)
    return data


def now_utc() -> datetime:
    return datetime.now(UTC)
