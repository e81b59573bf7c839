"""The client commands (``jobgate submit|adopt|watch|jobs|get|result|...``) as real subprocesses
against a real gateway and the sandboxes: through pipes (plain lines) and through a
pseudo-terminal (rich output)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import pty
import select
import signal
import socket
import struct
import sys
import termios
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import Serve
from tests.integration.conftest import Stack, StackFactory

pytestmark = pytest.mark.integration

RUN_TIMEOUT = 90.0
"""A bound on one command: far above what any takes, so a hang fails the test instead of the run."""
ESC = "\x1b"


@dataclass
class Ran:
    code: int
    out: str
    err: str
    raw: bytes = b""
    """stdout's bytes as they came (``out`` is their text)."""

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()

    def json(self) -> Any:
        return json.loads(self.out)


def _env(url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBGATE_")}
    env.update({"JOBGATE_URL": url, "PYTHONUNBUFFERED": "1", **extra})
    env.pop("TERM", None)
    return env


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway.cli", *args]


async def cli(stack: Stack | str, *args: str, stdin: bytes | None = None) -> Ran:
    """Run ``jobgate ARGS`` with pipes for stdin, stdout and stderr."""
    url = stack if isinstance(stack, str) else stack.url
    proc = await asyncio.create_subprocess_exec(
        *_command(*args),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(url),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), RUN_TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return Ran(proc.returncode, out.decode(errors="replace"), err.decode(), out)


async def cli_tty(stack: Stack, *args: str) -> Ran:
    """Run ``jobgate ARGS`` on a pseudo-terminal (stdout and stderr both); ``out`` is all of it."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    env = _env(stack.url, TERM="xterm-256color")
    env.pop("NO_COLOR", None)
    try:
        proc = await asyncio.create_subprocess_exec(
            *_command(*args), stdin=slave, stdout=slave, stderr=slave, env=env
        )
    finally:
        os.close(slave)
    chunks: list[bytes] = []
    stop = threading.Event()

    def drain() -> None:
        # select() with a short timeout rather than a blocking read, so that the thread can be
        # told to stop: the master is closed only once this thread is done with it.
        while not stop.is_set():
            if not select.select([master], [], [], 0.1)[0]:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer of the terminal is gone
                return
            if not data:
                return
            chunks.append(data)

    reader = asyncio.ensure_future(asyncio.to_thread(drain))
    try:
        await asyncio.wait_for(proc.wait(), RUN_TIMEOUT)
        # shield: a timeout here must not cancel the future while its thread still runs.
        await asyncio.wait_for(asyncio.shield(reader), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        stop.set()
        with contextlib.suppress(Exception):
            await reader
        os.close(master)
    assert proc.returncode is not None
    return Ran(proc.returncode, b"".join(chunks).decode(errors="replace"), "")


@contextlib.asynccontextmanager
async def background(stack: Stack, *args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """``jobgate ARGS`` left running with piped output; killed on the way out if still alive."""
    proc = await asyncio.create_subprocess_exec(
        *_command(*args),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(stack.url),
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def read_until(proc: asyncio.subprocess.Process, needle: str, seen: list[str]) -> None:
    """Read the process's stdout lines into ``seen`` until one contains ``needle``."""
    assert proc.stdout is not None

    async def scan() -> None:
        assert proc.stdout is not None
        while True:
            line = (await proc.stdout.readline()).decode()
            if not line:
                raise AssertionError(f"no {needle!r} before the output ended: {seen}")
            seen.append(line)
            if needle in line:
                return

    await asyncio.wait_for(scan(), RUN_TIMEOUT)


def assert_plain(ran: Ran) -> None:
    """Pipes get plain lines: no escape code, no carriage-return redraw, no traceback."""
    for text in (ran.out, ran.err):
        assert ESC not in text, text
        assert "\r" not in text, text
        assert "Traceback" not in text, text


def assert_one_line_error(ran: Ran, code: int, starts: str) -> None:
    assert ran.code == code, ran
    assert ran.out == "", ran
    lines = ran.err.splitlines()
    assert len(lines) == 1, ran.err
    assert lines[0].startswith(starts), ran.err
    assert "Traceback" not in ran.err


async def finished_with_copy(stack: Stack, job_id: str) -> dict[str, Any]:
    """The finished job once jobgate holds its result's copy (captured after the job ends)."""
    job = await stack.until_finished(job_id)
    for _ in range(20):
        if job["result"]["sha256"]:
            return job
        # A long poll: the gateway holds a result read until a capture under way has ended.
        async with stack.client.get(f"{stack.url}/v1/jobs/{job_id}/result?wait=5") as response:
            await response.read()
        job = await stack.job(job_id)
    raise AssertionError(f"no stored copy: {job}")


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


REQUESTS: dict[str, dict[str, Any]] = {
    "catchall": {"query": "acquisitions in fintech", "limit": 10},
    "extract": {"url": "https://example.com", "maxPages": 3},
    "pulse": {"fileUrl": "https://example.com/report.pdf"},
}


# -- submit --wait, adopt --wait, watch ---------------------------------------------------------


@pytest.mark.parametrize("provider", sorted(REQUESTS))
async def test_submit_wait_follows_each_provider_to_success(
    make_stack: StackFactory, provider: str
) -> None:
    stack = await make_stack()
    ran = await cli(
        stack,
        "submit",
        provider,
        "--request",
        json.dumps(REQUESTS[provider]),
        "--label",
        "team=cli",
        "--wait",
    )
    assert ran.code == 0, ran
    assert_plain(ran)
    assert ran.err == ""
    lines = ran.lines
    assert lines[0].startswith("submitted job_"), ran.out
    job_id = lines[0].split()[1]
    assert lines[1].startswith(f"watching {job_id} ({provider}, upstream "), ran.out
    states = [line.split()[0] for line in lines[2:-1] if not line.startswith("records ")]
    assert states[-1] == "succeeded", ran.out
    assert set(states) <= {"queued", "running", "succeeded"}, ran.out
    assert lines[-1].startswith(f"{job_id} succeeded in "), ran.out
    assert f"jobgate result {job_id}" in lines[-1]
    job = await stack.job(job_id)
    assert job["state"] == "succeeded"
    assert job["labels"] == {"team": "cli"}


async def test_adopt_wait_follows_a_platform_job(make_stack: StackFactory) -> None:
    stack = await make_stack()
    upstream_id = await stack.platform_job()
    ran = await cli(stack, "adopt", "platform", upstream_id, "--wait", "--json")
    assert ran.code == 0, ran
    assert_plain(ran)
    # --json: the final job, and nothing else on stdout.
    job = ran.json()
    assert job["provider"] == "platform"
    assert job["upstream_id"] == upstream_id
    assert job["state"] == "succeeded"


async def test_submit_wait_on_a_terminal_shows_rich_progress(make_stack: StackFactory) -> None:
    stack = await make_stack()
    ran = await cli_tty(
        stack, "submit", "extract", "--request", '{"url": "https://example.com"}', "--wait"
    )
    assert ran.code == 0, ran.out
    assert ESC in ran.out  # rich's colours and its live redraws
    assert "succeeded" in ran.out
    assert "Traceback" not in ran.out
    assert "━" in ran.out  # the bar


async def test_watch_on_a_terminal_and_in_a_pipe(make_stack: StackFactory) -> None:
    stack = await make_stack()
    job = await stack.submit("pulse", REQUESTS["pulse"])
    tty = await cli_tty(stack, "watch", job["id"])
    assert tty.code == 0, tty.out
    assert "succeeded" in tty.out
    assert ESC in tty.out
    # Watching a finished job shows it as it is and ends at once: the history its stream opens
    # with is not replayed after it (no "queued" line after "succeeded").
    piped = await cli(stack, "watch", job["id"])
    assert piped.code == 0, piped
    assert_plain(piped)
    assert piped.lines[0].startswith(f"watching {job['id']} (pulse, upstream ")
    assert piped.lines[-1].startswith(f"{job['id']} succeeded")
    states = [line.split()[0] for line in piped.lines[1:-1]]
    assert states == ["succeeded"], piped.out


async def test_watch_exits_1_on_a_failed_job(make_stack: StackFactory) -> None:
    stack = await make_stack()
    job = await stack.submit("extract", {"url": "https://example.com/?sandbox=fail"})
    ran = await cli(stack, "watch", job["id"])
    assert ran.code == 1, ran
    assert_plain(ran)
    last = ran.lines[-1]
    assert last.startswith(f"{job['id']} failed"), ran.out
    # The job's error, as the gateway gives it.
    done = await stack.job(job["id"])
    assert done["error"]["message"] in last


async def test_watch_exits_1_when_the_job_is_canceled_meanwhile(make_stack: StackFactory) -> None:
    # Slow enough that the job is still running when it is canceled (pulse slow: 200 s / 10).
    stack = await make_stack(speed=10)
    job = await stack.submit("pulse", {"fileUrl": "https://example.com/report.pdf?sandbox=slow"})
    seen: list[str] = []
    async with background(stack, "watch", job["id"]) as watcher:
        await read_until(watcher, "running", seen)
        canceled = await cli(stack, "cancel", job["id"])
        assert canceled.code == 0, canceled
        assert_plain(canceled)
        # The cancel is asked of the provider; the job is canceled at once or by its next poll.
        assert canceled.out.startswith(
            (f"canceled {job['id']} (pulse, canceled;", f"cancel requested: {job['id']} (pulse, ")
        ), canceled.out
        out, err = await asyncio.wait_for(watcher.communicate(), RUN_TIMEOUT)
    ran = Ran(watcher.returncode or 0, "".join(seen) + out.decode(), err.decode())
    assert ran.code == 1, ran
    assert_plain(ran)
    assert ran.lines[-1].startswith(f"{job['id']} canceled"), ran.out


async def test_watch_timeout_exits_5_and_ctrl_c_exits_130_quietly(
    make_stack: StackFactory,
) -> None:
    # pulse slow: 200 s / 2, far more than two cold starts of the CLI on a loaded machine take,
    # so the job is surely still running throughout; it is canceled at the end.
    stack = await make_stack(speed=2)
    job = await stack.submit("pulse", {"fileUrl": "https://example.com/report.pdf?sandbox=slow"})
    ran = await cli(stack, "watch", job["id"], "--timeout", "0.5", "--json")
    assert ran.code == 5, ran
    assert_plain(ran)
    assert ran.json()["id"] == job["id"]  # the job as it is, for a script
    assert ran.err.startswith(f"jobgate: timeout: {job['id']} did not finish"), ran.err
    assert len(ran.err.splitlines()) == 1

    seen: list[str] = []
    async with background(stack, "watch", job["id"]) as watcher:
        await read_until(watcher, "watching", seen)
        watcher.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(watcher.communicate(), RUN_TIMEOUT)
    assert watcher.returncode == 130
    assert err.decode() == ""
    async with stack.client.post(f"{stack.url}/v1/jobs/{job['id']}/cancel") as response:
        assert response.status in (200, 202), await response.text()


# -- jobs, get, result --------------------------------------------------------------------------


async def test_jobs_lists_with_filters(make_stack: StackFactory) -> None:
    stack = await make_stack()
    ids: dict[str, list[str]] = {"a": [], "b": []}
    for team in ("a", "a", "b"):
        ran = await cli(
            stack, "submit", "extract", "--request", '{"url": "https://example.com"}',
            "--label", f"team={team}", "-q",
        )  # fmt: skip
        assert ran.code == 0, ran
        assert_plain(ran)
        # -q: the id alone, for $(...)
        assert ran.out.count("\n") == 1, ran.out
        assert ran.out.startswith("job_"), ran.out
        ids[team].append(ran.out.strip())
    pulse = await stack.submit("pulse", REQUESTS["pulse"])
    for job_id in [*ids["a"], *ids["b"], pulse["id"]]:
        await stack.until_finished(job_id)

    listed = await cli(stack, "jobs", "--label", "team=a", "--json")
    assert listed.code == 0, listed
    assert sorted(job["id"] for job in listed.json()) == sorted(ids["a"])

    table = await cli(stack, "jobs", "--provider", "extract", "--state", "succeeded")
    assert table.code == 0, table
    assert_plain(table)
    header, *rows = table.lines
    assert header.split() == ["id", "provider", "state", "native", "status", "progress", "polls",
                              "age"]  # fmt: skip
    assert sorted(row.split()[0] for row in rows) == sorted(ids["a"] + ids["b"])
    assert all(row.split()[1:3] == ["extract", "succeeded"] for row in rows)

    pulses = await cli(stack, "jobs", "--provider", "pulse", "--json")
    assert [job["id"] for job in pulses.json()] == [pulse["id"]]
    none = await cli(stack, "jobs", "--state", "failed")
    assert (none.code, none.out) == (0, "no jobs\n")

    limited = await cli(stack, "jobs", "--limit", "1")
    assert limited.code == 0
    assert len(limited.lines) == 2  # the header and one job
    assert "--limit" in limited.err

    tty = await cli_tty(stack, "jobs", "--provider", "extract")
    assert tty.code == 0
    for job_id in ids["a"] + ids["b"]:
        assert job_id in tty.out


async def test_get_and_result_to_stdout(make_stack: StackFactory) -> None:
    stack = await make_stack()
    job = await stack.submit("catchall", REQUESTS["catchall"], labels={"team": "x"})
    await stack.until_finished(job["id"])

    shown = await cli(stack, "get", job["id"])
    assert shown.code == 0, shown
    assert_plain(shown)
    fields = dict(line.split(":", 1) for line in shown.lines)
    assert fields["id"].strip() == job["id"]
    assert fields["state"].strip() == "succeeded"
    assert fields["labels"].strip() == "team=x"
    as_json = await cli(stack, "get", job["id"], "--json")
    assert as_json.json()["id"] == job["id"]

    page = await cli(stack, "result", job["id"], "--page", "1", "--page-size", "4")
    assert page.code == 0, page
    body = page.json()
    assert body["kind"] == "paged"
    assert len(body["records"]) == 4
    assert body["total_records"] == 10

    extract = await stack.submit("extract", REQUESTS["extract"])
    await stack.until_finished(extract["id"])
    inline = await cli(stack, "result", extract["id"])
    assert inline.code == 0, inline
    assert inline.json()["kind"] == "inline"


async def test_result_downloads_a_large_result_and_resumes(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    stack = await make_stack()
    job = await stack.submit("pulse", {"fileUrl": "https://example.com/report.pdf?sandbox=large"})
    done = await finished_with_copy(stack, job["id"])
    target = tmp_path / "out" / "result.json"
    target.parent.mkdir()

    ran = await cli(stack, "result", job["id"], "-o", str(target))
    assert ran.code == 0, ran
    assert_plain(ran)
    assert ran.out.startswith(f"saved {target}: "), ran.out
    data = target.read_bytes()
    assert hashlib.sha256(data).hexdigest() == done["result"]["sha256"]
    assert len(data) == done["result"]["size"]

    # A partial download (the client keeps it in FILE.part until it is whole) is resumed.
    target.unlink()
    target.with_name(target.name + ".part").write_bytes(data[: len(data) // 3])
    again = await cli(stack, "result", job["id"], "-o", str(target), "--json")
    assert again.code == 0, again
    saved = again.json()
    assert saved["resumed_from"] == len(data) // 3
    assert saved["sha256"] == done["result"]["sha256"]
    assert target.read_bytes() == data

    # Without -o: the document streamed to stdout, byte for byte; --json passes it (it is JSON).
    printed = await cli(stack, "result", job["id"])
    assert printed.code == 0, printed.err
    assert printed.raw == data
    as_json = await cli(stack, "result", job["id"], "--json")
    assert as_json.code == 0, as_json.err
    assert as_json.raw == data

    # On a terminal: a download bar.
    target.unlink()
    tty = await cli_tty(stack, "result", job["id"], "-o", str(target))
    assert tty.code == 0, tty.out
    assert "saved" in tty.out
    assert hashlib.sha256(target.read_bytes()).hexdigest() == done["result"]["sha256"]


# -- actions ------------------------------------------------------------------------------------


async def test_rerun_continue_and_delete(make_stack: StackFactory) -> None:
    stack = await make_stack()
    first = await stack.submit("extract", REQUESTS["extract"])
    await stack.until_finished(first["id"])

    rerun = await cli(stack, "rerun", first["id"], "-q")
    assert rerun.code == 0, rerun
    new_id = rerun.out.strip()
    assert new_id.startswith("job_")
    assert new_id != first["id"]
    assert (await stack.job(new_id))["rerun_of"] == first["id"]
    waited = await cli(stack, "rerun", new_id, "--wait")
    assert waited.code == 0, waited
    assert_plain(waited)
    assert waited.lines[0].startswith(f"rerun of {new_id}: job_")

    catchall = await stack.submit("catchall", {"query": "fintech", "limit": 10})
    await stack.until_finished(catchall["id"])
    more = await cli(stack, "continue", catchall["id"], "--new-limit", "20", "--wait", "--json")
    assert more.code == 0, more
    job = more.json()
    assert job["state"] == "succeeded"
    assert job["result"]["total_records"] == 20

    deleted = await cli(stack, "delete", first["id"])
    assert deleted.code == 0, deleted
    assert deleted.out.startswith(f"deleted {first['id']}")
    gone = await cli(stack, "get", first["id"])
    assert_one_line_error(gone, 3, "jobgate: job_not_found: ")


async def test_cancel_where_the_provider_cannot_is_a_one_line_error(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(speed=10)
    job = await stack.submit("extract", {"url": "https://example.com/?sandbox=slow"})
    ran = await cli(stack, "cancel", job["id"])
    assert_one_line_error(ran, 3, "jobgate: action_not_supported: ")


# -- errors -------------------------------------------------------------------------------------


async def test_bad_input_is_a_one_line_usage_error(make_stack: StackFactory) -> None:
    stack = await make_stack()
    cases = [
        (("submit", "extract", "--request", "{"), "jobgate: --request is not JSON: "),
        (("submit", "extract", "--request", "[1]"), "jobgate: --request must be a JSON object"),
        (("submit", "extract", "--request", "@/no/such.json"), "jobgate: --request @/no/such"),
        (("submit", "extract", "--request", "{}", "--label", "team"), "jobgate: --label 'team'"),
        (("jobs", "--label", "=x"), "jobgate: --label '=x'"),
    ]
    for args, starts in cases:
        ran = await cli(stack, *args)
        assert_one_line_error(ran, 2, starts)
    assert stack.upstream_jobs("extract") == 0


async def test_request_from_a_file_and_from_stdin(make_stack: StackFactory, tmp_path: Path) -> None:
    stack = await make_stack()
    body = tmp_path / "request.json"
    body.write_text(json.dumps(REQUESTS["extract"]))
    from_file = await cli(stack, "submit", "extract", "--request", f"@{body}", "--json")
    assert from_file.code == 0, from_file
    assert from_file.json()["provider"] == "extract"
    # -q --wait: the id alone on stdout (nothing on stderr either, which is no terminal here).
    from_stdin = await cli(
        stack, "submit", "extract", "--request", "@-", "-q", "--wait", stdin=body.read_bytes()
    )
    assert from_stdin.code == 0, from_stdin
    assert from_stdin.err == ""
    job_id = from_stdin.out.removesuffix("\n")
    assert job_id.startswith("job_")
    assert "\n" not in job_id
    assert (await stack.job(job_id))["state"] == "succeeded"


def not_a_gateway(document: bytes) -> web.Application:
    """A server that is not jobgate: HTML for any job (a proxy's sign-in page, a wrong --url),
    and ``document`` (a PDF, streamed) as job_pdf's result."""

    async def page(request: web.Request) -> web.Response:
        return web.Response(
            text="<html>\n<body>\nSign in</body>\n</html>", content_type="text/html"
        )

    async def result(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/pdf"})
        await response.prepare(request)
        for start in range(0, len(document), 100_000):
            await response.write(document[start : start + 100_000])
        return response

    app = web.Application()
    app.router.add_get("/v1/jobs/job_pdf/result", result)
    app.router.add_get("/v1/jobs/{job_id}", page)
    return app


async def test_a_document_streams_and_an_unreadable_answer_is_one_line(serve: Serve) -> None:
    pdf = b"%PDF-1.7\n" + bytes(range(256)) * 8192  # 2 MiB, binary, of unknown length
    url = await serve(not_a_gateway(pdf))
    printed = await cli(url, "result", "job_pdf")
    assert printed.code == 0, printed.err
    assert printed.raw == pdf
    refused = await cli(url, "result", "job_pdf", "--json")
    assert_one_line_error(refused, 2, "jobgate: job_pdf's result is application/pdf, not JSON")
    assert "-o FILE" in refused.err
    html = await cli(url, "get", "job_x")
    assert_one_line_error(html, 1, "jobgate: unexpected answer: HTTP 200, text/html")
    assert "Sign in" in html.err


async def test_gateway_errors_are_one_line(make_stack: StackFactory) -> None:
    stack = await make_stack()
    missing = await cli(stack, "watch", "job_nope")
    assert_one_line_error(missing, 3, "jobgate: job_not_found: ")
    unknown = await cli(stack, "submit", "nope", "--request", "{}")
    assert unknown.code == 3, unknown
    assert len(unknown.err.splitlines()) == 1
    assert "Traceback" not in unknown.err

    url = f"http://127.0.0.1:{_closed_port()}"
    for args in (("jobs",), ("get", "job_x"), ("submit", "extract", "--request", "{}")):
        ran = await cli(url, *args)
        assert_one_line_error(ran, 4, f"jobgate: cannot reach {url}")
    # --url wins over the environment.
    flag = await cli(stack, "jobs", "--url", url)
    assert_one_line_error(flag, 4, f"jobgate: cannot reach {url}")
