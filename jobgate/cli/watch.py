"""``jobgate watch`` (and ``--wait``): a job's event stream, shown live until the job finishes.

The stream is read on a worker thread that hands events over a queue, so the main thread can give
up at ``--timeout`` and stays interruptible by Ctrl-C whatever the socket is doing. Displays only
show: what the job became and what the exit code is are decided here.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal, Protocol, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
)
from rich.text import Text

from gateway.web.models import (
    EndEventData,
    JobEventData,
    JobOut,
    RecordsEventData,
)
from jobgate.cli import render
from jobgate.client import Client, Event, JobgateError, NotFound, ProblemError

Outcome = Literal["finished", "deleted", "timeout"]
_STREAM_ENDED: Final = object()


@dataclass(frozen=True)
class Watched:
    """How watching ended, and the job as last seen (``None`` once it was deleted unseen)."""

    outcome: Outcome
    job: JobOut | None


class Display(Protocol):
    def start(self, job_id: str, job: JobOut | None) -> None: ...
    def update(self, job: JobOut) -> None: ...
    def records(self, total: int | None) -> None: ...
    def stop(self) -> None: ...
    def finish(self, watched: Watched, job_id: str) -> None: ...


class NoDisplay:
    """For ``--json`` and ``-q`` when standard error is no terminal: nothing but the answer."""

    def start(self, job_id: str, job: JobOut | None) -> None:
        pass

    def update(self, job: JobOut) -> None:
        pass

    def records(self, total: int | None) -> None:
        pass

    def stop(self) -> None:
        pass

    def finish(self, watched: Watched, job_id: str) -> None:
        pass


class PlainDisplay:
    """Logs and pipes: one line per visible change, never a redraw or an escape code."""

    def __init__(self, out: TextIO, now: Callable[[], datetime] = render.now_utc) -> None:
        self.out = out
        self.now = now
        self.seen: tuple[object, ...] | None = None
        self.total_records: int | None = None

    def _print(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def start(self, job_id: str, job: JobOut | None) -> None:
        self._print(render.watching_line(job_id, job))
        if job is not None:
            self.update(job)

    def update(self, job: JobOut) -> None:
        key = render.visible(job)
        if key != self.seen:
            self.seen = key
            self._print(render.status_line(job, self.now()))

    def records(self, total: int | None) -> None:
        if total is not None and total != self.total_records:
            self.total_records = total
            self._print(f"{'records':<10}  {total} so far")

    def stop(self) -> None:
        pass

    def finish(self, watched: Watched, job_id: str) -> None:
        self._print(ending(watched, job_id))


class EtaColumn(ProgressColumn):
    """Counts down to the gateway's ETA between updates, rather than freezing it."""

    def render(self, task: Task) -> Text:
        at = task.fields.get("eta_at")
        if not isinstance(at, datetime):
            return Text("")
        left = (at - render.now_utc()).total_seconds()
        return Text(f"eta {render.duration(left)}" if left > 0 else "eta now", style="cyan")


class RichDisplay:
    """A terminal: one live bar with the state, native status, step, fraction and ETA."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            SpinnerColumn(finished_text="[green]✓[/]"),
            TextColumn("{task.description}"),
            BarColumn(bar_width=30),
            TextColumn("{task.fields[percent]:>4}"),
            EtaColumn(),
            TextColumn("[dim]{task.fields[extra]}[/]"),
            console=console,
            transient=False,
        )
        self.task = self.progress.add_task("", total=None, percent="", eta_at=None, extra="")
        self.total_records: int | None = None
        self.started = False

    def start(self, job_id: str, job: JobOut | None) -> None:
        self.console.print(Text(render.watching_line(job_id, job), style="dim"))
        self.progress.update(self.task, description=f"[dim]{job_id}[/] connecting")
        self.progress.start()
        self.started = True
        if job is not None:
            self.update(job)

    def update(self, job: JobOut) -> None:
        fraction = render.fraction(job)
        extra = f"polls {job.polls}"
        if self.total_records is not None:
            extra += f", {self.total_records} records"
        self.progress.update(
            self.task,
            description=render.rich_description(job),
            total=None if fraction is None else 1.0,
            completed=fraction or 0.0,
            percent=render.percent(job) or "",
            eta_at=None if job.state in render.FINISHED else render.parse_time(job.eta),
            extra=extra,
        )

    def records(self, total: int | None) -> None:
        self.total_records = total

    def stop(self) -> None:
        if self.started:
            self.started = False
            self.progress.stop()

    def finish(self, watched: Watched, job_id: str) -> None:
        state = watched.job.state if watched.job is not None else ""
        style = render.STATE_STYLES.get(state, "bold")
        self.console.print(Text(ending(watched, job_id), style=style))


def ending(watched: Watched, job_id: str) -> str:
    if watched.outcome == "deleted":
        return f"{job_id} was deleted while watched"
    assert watched.job is not None
    if watched.outcome == "timeout":
        return f"{job_id} is still {watched.job.state}: stopped watching (it keeps running)"
    return render.ending_line(watched.job)


def _pump(client: Client, job_id: str, into: queue.Queue[object]) -> None:
    """The worker: every event of the job's stream, then a marker (or what went wrong)."""
    try:
        for event in client.events(job_id):
            into.put(event)
        into.put(_STREAM_ENDED)
    except BaseException as exc:  # handed to the main thread, which raises or ignores it
        into.put(exc)


def watch(
    client: Client,
    job_id: str,
    display: Display,
    *,
    job: JobOut | None = None,
    timeout: float | None = None,
) -> Watched:
    """Follow ``job_id`` until its stream ends (the job finished or was deleted) or ``timeout``."""
    deadline = None if timeout is None else time.monotonic() + timeout
    events: queue.Queue[object] = queue.Queue()
    threading.Thread(
        target=_pump, args=(client, job_id, events), name="jobgate-watch", daemon=True
    ).start()
    last = job
    records_seen = (job.result.total_records or 0) if job is not None else 0
    end: EndEventData | None = None
    display.start(job_id, job)
    try:
        while end is None:
            left = None if deadline is None else deadline - time.monotonic()
            try:
                if left is not None and left <= 0:
                    raise queue.Empty
                item = events.get(timeout=left)
            except queue.Empty:
                return _stop(client, job_id, display, Watched("timeout", last))
            if item is _STREAM_ENDED:
                break
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, Event)
            data = item.data
            if isinstance(data, JobEventData):
                if last is not None and data.version <= last.version:
                    continue  # the stream opens with the job's history: shown already, or older
                last = data
                display.update(data)
            elif isinstance(data, RecordsEventData):
                if data.offset + data.count <= records_seen:
                    continue  # records the snapshot already counts, replayed with the history
                records_seen = data.offset + data.count
                display.records(data.total_records)
            elif isinstance(data, EndEventData):
                end = data
        if end is not None and end.reason == "deleted":
            return _stop(client, job_id, display, Watched("deleted", last), refresh=False)
        try:
            final = client.get(job_id)
        except ProblemError as exc:
            if exc.status != 404:
                raise
            return _stop(client, job_id, display, Watched("deleted", last), refresh=False)
        if final.state not in render.FINISHED:
            # The stream ended without the job finishing (a continue reopened it): wait it out.
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            final = _wait(client, job_id, left)
        display.update(final)
        outcome: Outcome = "finished" if final.state in render.FINISHED else "timeout"
        watched = Watched(outcome, final)
    finally:
        display.stop()
    display.finish(watched, job_id)
    return watched


def _wait(client: Client, job_id: str, timeout: float | None) -> JobOut:
    from jobgate.client import WaitTimeout

    try:
        return client.wait(job_id, timeout=timeout)
    except WaitTimeout as exc:
        return exc.job


def _stop(
    client: Client, job_id: str, display: Display, watched: Watched, *, refresh: bool = True
) -> Watched:
    """End watching early: the job as it is now (for ``--json``), then the display's last word.

    The refresh is one try (no retries): ``--timeout`` has passed already. A job deleted
    meanwhile ends the watch as deleted; any other failure keeps the job as last seen, so the
    exit code is still the timeout's, not the refresh's."""
    if refresh:
        try:
            watched = Watched(watched.outcome, client.get(job_id, retry=False))
        except NotFound:
            watched = Watched("deleted", watched.job)
        except JobgateError:
            pass
    display.stop()
    display.finish(watched, job_id)
    return watched
