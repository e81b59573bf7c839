"""The client commands: each parses its inputs, makes its client calls and hands the answer to
:mod:`jobgate.cli.render`. :func:`runs` turns every failure into one line and an exit code.

Where output goes:
- stdout carries the answer: human text, or with ``--json`` one JSON document, or with ``-q`` the
  job id alone; a live display goes there too unless ``--json``/``-q`` reserve stdout, in which
  case it goes to stderr when that is a terminal and nowhere otherwise;
- a terminal gets rich tables and bars, anything else plain lines without escape codes;
- stderr carries errors, one line each: ``jobgate: <code>: <detail>``.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from gateway.web.models import JobOut
from jobgate.cli import render
from jobgate.cli.parsing import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PROBLEM,
    EXIT_TIMEOUT,
    EXIT_UNREACHABLE,
    EXIT_UNSUCCESSFUL,
    EXIT_USAGE,
    UsageError,
    read_labels,
    read_request,
)
from jobgate.cli.watch import Display, NoDisplay, PlainDisplay, RichDisplay, Watched, watch
from jobgate.client import Client, GatewayUnreachable, JobgateError, ProblemError, ResultOut


class LocalError(Exception):
    """A local file could not be written or read (not the user's syntax, not the gateway)."""


UNREACHABLE_HINT = "is the gateway running (`make run`, `jobgate serve`)? --url or JOBGATE_URL"


@dataclass
class Ctx:
    """One command's inputs and outputs."""

    args: argparse.Namespace
    client: Client
    stdout: TextIO
    stderr: TextIO

    @property
    def json(self) -> bool:
        """``--json``, unless ``-q`` asked for the id alone (``-q`` wins, for ``$(...)``)."""
        return bool(self.args.json) and not self.id_only

    @property
    def id_only(self) -> bool:
        return bool(getattr(self.args, "id_only", False))

    @property
    def tty(self) -> bool:
        """Human output to a terminal: rich; else plain lines."""
        return self.stdout.isatty()

    def console(self, out: TextIO | None = None) -> Console:
        # highlight=False: rich would colour numbers and ids in plain messages.
        return Console(file=out or self.stdout, highlight=False, soft_wrap=False)

    def say(self, line: str, style: str = "") -> None:
        """A human line on stdout (never with ``--json`` or ``-q``)."""
        if self.json or self.id_only:
            return
        if self.tty:
            self.console().print(Text(line, style=style))
        else:
            print(line, file=self.stdout, flush=True)

    def emit(self, value: Any) -> None:
        """The ``--json`` document."""
        print(render.to_json(value, pretty=self.tty), file=self.stdout, flush=True)

    def display(self) -> Display:
        """The live display for watching: stdout's, unless stdout is reserved for the answer."""
        if self.json or self.id_only:
            return RichDisplay(self.console(self.stderr)) if self.stderr.isatty() else NoDisplay()
        return RichDisplay(self.console()) if self.tty else PlainDisplay(self.stdout)


Run = Callable[[Ctx], int]

INTERNAL_ERROR_CHARS = 300


def one_line(text: str, limit: int = INTERNAL_ERROR_CHARS) -> str:
    """``text`` on one line and at most ``limit`` characters: an exception's text can hold a
    whole answer body (pydantic's does), and stderr's contract is one line per error."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def runs(command: Run) -> Callable[[argparse.Namespace], int]:
    """Wrap a command: a client for it, and one line on stderr for whatever goes wrong."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        stdout, stderr = sys.stdout, sys.stderr

        def fail(message: str, code: int) -> int:
            print(f"jobgate: {message}", file=stderr, flush=True)
            return code

        try:
            with Client(args.url, args.api_key) as client:
                return command(Ctx(args, client, stdout, stderr))
        except UsageError as exc:
            return fail(str(exc), EXIT_USAGE)
        except LocalError as exc:
            return fail(str(exc), EXIT_UNSUCCESSFUL)
        except ProblemError as exc:
            message = str(exc)
            if exc.retry_after is not None:
                message += f" (retry after {exc.retry_after:g} s)"
            return fail(message, EXIT_PROBLEM)
        except GatewayUnreachable as exc:
            return fail(
                f"cannot reach {exc.url}: {exc.reason}; {UNREACHABLE_HINT}", EXIT_UNREACHABLE
            )
        except JobgateError as exc:
            return fail(str(exc), EXIT_UNSUCCESSFUL)
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        except BrokenPipeError:
            # A reader that went away (`| head`): nothing left to say to it, and nobody to hear it.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return EXIT_UNSUCCESSFUL
        except Exception as exc:
            # The boundary between a bug and the user's terminal: one line, unless asked for more.
            if os.environ.get("JOBGATE_DEBUG"):
                raise
            return fail(
                f"internal error: {one_line(f'{type(exc).__name__}: {exc}')} "
                "(JOBGATE_DEBUG=1 shows where)",
                EXIT_UNSUCCESSFUL,
            )

    return run


# -- creating and following jobs ---------------------------------------------------------------


def _created(ctx: Ctx, job: JobOut, verb: str) -> int:
    """After a submit, adopt, rerun or continue: the answer, then the watch if ``--wait``."""
    if ctx.id_only:
        print(job.id, file=ctx.stdout, flush=True)
    if not getattr(ctx.args, "wait", False):
        if ctx.json:
            ctx.emit(render.job_json(job))
        else:
            ctx.say(render.action_line(verb, job), render.STATE_STYLES.get(job.state, ""))
            ctx.say(f"follow it: jobgate watch {job.id}", "dim")
        return EXIT_OK
    ctx.say(render.action_line(verb, job), "bold")
    return _follow(ctx, job.id, job)


def _follow(ctx: Ctx, job_id: str, job: JobOut | None) -> int:
    watched = watch(ctx.client, job_id, ctx.display(), job=job, timeout=ctx.args.timeout)
    if ctx.json:
        ctx.emit(None if watched.job is None else render.job_json(watched.job))
    return _exit_code(ctx, watched, job_id)


def _exit_code(ctx: Ctx, watched: Watched, job_id: str) -> int:
    if watched.outcome == "timeout":
        print(
            f"jobgate: timeout: {job_id} did not finish within {ctx.args.timeout:g} s "
            f"(it keeps running: jobgate watch {job_id})",
            file=ctx.stderr,
            flush=True,
        )
        return EXIT_TIMEOUT
    if watched.outcome == "finished" and watched.job is not None:
        return EXIT_OK if watched.job.state == "succeeded" else EXIT_UNSUCCESSFUL
    return EXIT_UNSUCCESSFUL


@runs
def submit(ctx: Ctx) -> int:
    args = ctx.args
    request = read_request(args.request)
    labels = read_labels(args.label)
    job = ctx.client.submit(
        args.provider,
        request,
        labels=labels or None,
        callback_url=args.callback_url,
        idempotency_key=args.idempotency_key,
    )
    return _created(ctx, job, "submitted")


@runs
def adopt(ctx: Ctx) -> int:
    args = ctx.args
    job = ctx.client.adopt(
        args.provider,
        args.upstream_id,
        labels=read_labels(args.label) or None,
        callback_url=args.callback_url,
        idempotency_key=args.idempotency_key,
    )
    return _created(ctx, job, "adopted")


@runs
def watch_command(ctx: Ctx) -> int:
    # Read first: an unknown job is a one-line error before any display starts.
    job = ctx.client.get(ctx.args.job_id)
    return _follow(ctx, job.id, job)


@runs
def rerun(ctx: Ctx) -> int:
    job = ctx.client.rerun(ctx.args.job_id)
    return _created(ctx, job, f"rerun of {ctx.args.job_id}:")


@runs
def continue_(ctx: Ctx) -> int:
    job = ctx.client.continue_(ctx.args.job_id, new_limit=ctx.args.new_limit)
    return _created(ctx, job, "continued")


# -- reading ------------------------------------------------------------------------------------


@runs
def jobs(ctx: Ctx) -> int:
    args = ctx.args
    limit: int = args.limit
    found = list(
        ctx.client.jobs(
            provider=args.provider,
            state=args.state,
            labels=read_labels(args.label) or None,
            # One more than shown, to know whether to say there are more.
            limit=limit + 1 if limit else None,
        )
    )
    more = bool(limit) and len(found) > limit
    if more:
        found = found[:limit]
    if ctx.json:
        ctx.emit([render.job_json(job) for job in found])
        return EXIT_OK
    now = render.now_utc()
    if ctx.tty:
        console = ctx.console()
        if found:
            console.print(render.rich_jobs_table(found, now, console.width))
        else:
            console.print("no jobs", style="dim")
    else:
        if found:
            for line in render.plain_table(
                render.JOB_COLUMNS, (render.job_row(job, now) for job in found)
            ):
                print(line, file=ctx.stdout)
        else:
            print("no jobs", file=ctx.stdout)
    if more:
        print(
            f"jobgate: showing the first {limit} jobs; --limit N for more (0: all)",
            file=ctx.stderr,
        )
    return EXIT_OK


@runs
def get(ctx: Ctx) -> int:
    job = ctx.client.get(ctx.args.job_id)
    if ctx.json:
        ctx.emit(render.job_json(job))
    elif ctx.tty:
        ctx.console().print(render.rich_job_grid(job, render.now_utc()))
    else:
        fields = render.job_fields(job, render.now_utc())
        width = max(len(name) for name, _ in fields)
        for name, value in fields:
            print(f"{name + ':':<{width + 1}} {value}", file=ctx.stdout)
    return EXIT_OK


@runs
def result(ctx: Ctx) -> int:
    args = ctx.args
    if args.output is not None:
        if args.page is not None or args.page_size is not None:
            raise UsageError("--page and --page-size print one page; they do not go with -o")
        return _download(ctx, Path(args.output))
    with ctx.client.open_result(
        args.job_id, wait=args.wait, page=args.page, page_size=args.page_size
    ) as answer:
        if isinstance(answer, ResultOut):
            ctx.emit(answer.model_dump(mode="json", exclude_unset=True))
            return EXIT_OK
        # The provider's own document, streamed through as it is, never held whole. With
        # --json it goes out only if it is JSON: stdout then still holds one JSON document.
        if ctx.json and not answer.is_json:
            raise UsageError(
                f"{args.job_id}'s result is {answer.content_type or 'not JSON'}, not JSON: "
                f"save it with -o FILE"
            )
        ctx.stdout.flush()
        out = sys.stdout.buffer
        for chunk in answer.chunks:
            out.write(chunk)
        out.flush()
    return EXIT_OK


def _download(ctx: Ctx, path: Path) -> int:
    job_id: str = ctx.args.job_id
    use_bar = ctx.stderr.isatty() if (ctx.json or ctx.id_only) else ctx.tty
    bar: Progress | None = None
    if use_bar:
        bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=30),
            TaskProgressColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=ctx.console(ctx.stderr if ctx.json else ctx.stdout),
            transient=False,
        )
    task = bar.add_task(path.name, total=None) if bar is not None else None

    def progress(done: int, total: int | None) -> None:
        if bar is not None and task is not None:
            bar.update(task, completed=done, total=total)

    if bar is not None:
        bar.start()
    try:
        try:
            saved = ctx.client.download(
                job_id, path, resume=True, progress=progress, wait=ctx.args.wait
            )
        except OSError as exc:
            raise LocalError(f"-o {path}: {exc.strerror or exc}") from None
    finally:
        if bar is not None:
            bar.stop()
    if ctx.json:
        ctx.emit(
            {
                "path": str(saved.path),
                "size": saved.size,
                "sha256": saved.sha256,
                "resumed_from": saved.resumed_from,
                "status": saved.status,
            }
        )
        return EXIT_OK
    line = f"saved {saved.path}: {saved.size} bytes ({render.size_text(saved.size)})"
    if saved.resumed_from:
        line += f", resumed from {saved.resumed_from}"
    line += f", sha256 {saved.sha256}"
    ctx.say(line, "green")
    return EXIT_OK


# -- actions ------------------------------------------------------------------------------------


@runs
def cancel(ctx: Ctx) -> int:
    job = ctx.client.cancel(ctx.args.job_id)
    if ctx.json:
        ctx.emit(render.job_json(job))
    else:
        verb = "canceled" if job.state == "canceled" else "cancel requested:"
        ctx.say(render.action_line(verb, job), render.STATE_STYLES.get(job.state, ""))
    return EXIT_OK


@runs
def delete(ctx: Ctx) -> int:
    job_id: str = ctx.args.job_id
    ctx.client.delete(job_id)
    if ctx.json:
        ctx.emit({"id": job_id, "deleted": True})
    else:
        ctx.say(f"deleted {job_id} (no longer tracked; the upstream job is untouched)")
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "submit": submit,
    "adopt": adopt,
    "watch": watch_command,
    "jobs": jobs,
    "get": get,
    "result": result,
    "cancel": cancel,
    "rerun": rerun,
    "continue": continue_,
    "delete": delete,
}
