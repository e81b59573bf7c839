"""The README's shell and Python examples, run end to end as pasted and in order, so the README
cannot drift.

Every ```sh and ```python block of README.md runs, in README order, unless the HTML comment right
above it says otherwise:

- ``<!-- readme-test: skip: <why> -->``: not run here (docker compose, kubectl, PostgreSQL, a
  command that serves until stopped), and the reason says why;
- ``<!-- readme-test: keys-on: <why> -->``: run, but against a second gateway started with
  ``JOBGATE_AUTH__REQUIRED=true`` (the "Keys and tenants" examples, which need keys on).

Any other ``readme-test`` comment, a skip without a reason, or a shell example in a ```bash (or
```shell, ```console) fence, which would escape the test, fails it.

Each gateway is started as ``make run`` starts it, ``<venv>/bin/jobgate serve`` with the default
configuration (config/sandbox.toml: SQLite in ``var/jobgate.db``, the four sandboxes embedded at
24x), in a fresh temporary working directory that holds a ``.venv`` link to this virtualenv (so
``.venv/bin/jobgate ...`` runs as pasted). Only these settings differ, from the environment:

- the ports. The README hard-codes ``localhost:8080`` (the gateway) and ``localhost:8700`` (the
  embedded sandboxes); a developer's ``make run`` may hold them, so the gateway takes free ports
  (``JOBGATE_SERVER__PORT``, ``JOBGATE_SANDBOX__PORT``, and the providers' ``base_url`` and
  ``server.public_base_url`` that config/sandbox.toml writes with those ports), and the script
  has exactly those two addresses rewritten to ``127.0.0.1:<port>``. Any other mention of 8080 or
  8700 left in a running block fails the test rather than reach a gateway that is not the test's;
- the log: JSON lines with an ``http.request`` line for every request (``log.format = "json"``,
  ``log.access = "all"``), so the test can read every answer's status.

The blocks of each gateway run as one bash script (``set -euo pipefail``) in its directory, with
``JOBGATE_API_KEY=x``, ``JOBGATE_URL`` naming the test's gateway (where the CLI and the Python
client look for it; their default is make run's ``http://127.0.0.1:8080``) and the virtualenv's
``bin`` first on ``PATH``. A Python block runs there as ``python - <<'README_PY'``, so its
``print``s land in the same output and a raised exception stops the script. In the script,
``curl`` is a function that adds ``--fail-with-body`` (a 4xx or 5xx answer stops the run, its body
in the output) and ``--max-time``, except for calls that print their own status with
``-w '%{http_code}...'``: those must carry a ``# -> NNN`` comment, checked against what they print.
Lines that only make sense outside a test are replaced, each by an equivalent (``SUBSTITUTIONS``);
a substitution whose line is gone from the README fails the test, so it cannot go stale. A block
that only defines shell functions (``get_id``) runs in both scripts, as it stays defined in a
reader's shell. A failure names the README block and the command where the script stopped.

Afterwards: the script exited 0, every ``X && echo WORD`` printed WORD, every ``# -> NNN`` status
matched, and the gateway logged no 5xx answer and no error. The gateways are stopped (SIGTERM, then
SIGKILL) whatever happens. The whole module takes about two and a half minutes: the main script's
three catchall waits (two examples and the demo) take about 30 s each at 24x; the keys-on one ~10 s.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.settings import DEFAULT_CONFIG, ROOT
from tests.support import free_port

pytestmark = pytest.mark.integration

README = ROOT / "README.md"
BIN = Path(sys.executable).parent
VENV = BIN.parent

GATEWAY_PORT, SANDBOX_PORT = 8080, 8700
"""The ports the README's examples name (`make run`'s)."""

SCRIPT_TIMEOUT = 300.0
"""Seconds for one gateway's whole script; the README's main one takes about two minutes."""
CURL_MAX_TIME = 90
"""Seconds for any one curl call (the longest wait in the README is ``?wait=60``); a call that
sets ``--max-time`` itself keeps its own, which comes later on the command line."""
PORT_ATTEMPTS = 3
"""Starts on fresh ports after a start that found a port taken."""
READY_ATTEMPTS = 600
"""Polls of ``/readyz``, 0.1 s apart, before the gateway is declared stuck."""

FENCE = re.compile(r"^```(?P<lang>\S*)\s*$")
MARKER = re.compile(r"^<!--\s*readme-test:\s*(?P<body>.*?)\s*-->\s*$")
DIRECTIVE = re.compile(r"^(?P<kind>skip|keys-on):\s*(?P<why>\S.*)$")
STATUS_CALL = "%{http_code}"
EXPECTED = re.compile(r"#\s*->\s*(?P<expected>\d{3}(?: \d+)*)")
HELPER = re.compile(r"^\w+\(\) \{.*\}\s*;?\s*$")
ECHOED = re.compile(r"&&\s*echo\s+(?P<word>\w+)\s*$")
BEGIN, END, FAILED = "@@readme-begin", "@@readme-end", "@@readme-failed"
BLOCK_HEADER = "# README.md, the block at line"

SUBSTITUTIONS: dict[str, dict[str, str]] = {
    # `make demo` is `.venv/bin/jobgate demo` aimed at 127.0.0.1:8080: the same, at the test's port.
    "run": {"make demo": "jobgate demo --url http://localhost:8080"},
    # That gateway is the one the test started, with keys on.
    "keys-on": {"JOBGATE_AUTH__REQUIRED=true make run": ":"},
}
"""Per script: the start of a README line, and what replaces that command (its comment kept)."""

TRAP = f"""\
# Where the script stopped: the failing command's line at the top level, whoever failed below it.
set -E
failed_at() {{ echo "{FAILED} ${{BASH_LINENO[-2]}}" >&2; }}
trap failed_at ERR
"""
CURL = f"""\
# Every answer is checked: --fail-with-body stops the run on a 4xx or 5xx, showing its body; a
# call that prints its own status (-w '%{{http_code}}') is checked against its "# -> NNN" instead.
curl() {{
  local arg
  for arg in "$@"; do
    case "$arg" in
      *'{STATUS_CALL}'*) command curl --max-time {CURL_MAX_TIME} "$@"; return;;
    esac
  done
  command curl --fail-with-body --max-time {CURL_MAX_TIME} "$@"
}}
"""


RUN_LANGS = ("sh", "python")
"""The fences whose blocks run; others (``text``, ``toml``, ``mermaid``) are output or data."""
PYTHON_END = "README_PY"


@dataclass(frozen=True)
class Block:
    line: int
    """The README line of its opening fence."""
    text: str
    mode: str
    """``run``, ``keys-on`` or ``skip``."""
    why: str = ""
    lang: str = "sh"


def readme_blocks(text: str) -> list[Block]:
    """Every ```sh and ```python block, in order, with what the comment right above it asks."""
    blocks: list[Block] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        fence = FENCE.match(lines[index])
        if fence is None:
            index += 1
            continue
        end = next(
            (i for i in range(index + 1, len(lines)) if lines[i].startswith("```")), len(lines)
        )
        if fence["lang"] in RUN_LANGS:
            above = index - 1
            while above >= 0 and not lines[above].strip():
                above -= 1
            marker = MARKER.match(lines[above]) if above >= 0 else None
            mode, why = "run", ""
            if marker is not None:
                directive = DIRECTIVE.match(marker["body"])
                if directive is None:
                    raise AssertionError(
                        f"README.md:{above + 1}: {lines[above]!r} is neither "
                        "'readme-test: skip: <why>' nor 'readme-test: keys-on: <why>'"
                    )
                mode, why = directive["kind"], directive["why"]
            text_of = "\n".join(lines[index + 1 : end])
            blocks.append(Block(index + 1, text_of, mode, why, fence["lang"]))
        index = end + 1
    return blocks


def defines_helpers(block: Block) -> bool:
    """Whether ``block`` only defines shell functions."""
    if block.lang != "sh":
        return False
    lines = [line for line in block.text.splitlines() if line.strip() and not line.startswith("#")]
    return bool(lines) and all(HELPER.match(line) for line in lines)


def substitute(text: str, substitutions: dict[str, str], used: set[str]) -> str:
    out = []
    for line in text.splitlines():
        for start, replacement in substitutions.items():
            if line.startswith(start):
                used.add(start)
                line = replacement + line[len(start) :]
        out.append(line)
    return "\n".join(out)


def rewrite_ports(text: str, gateway: int, sandbox: int) -> str:
    for readme_port, port in ((GATEWAY_PORT, gateway), (SANDBOX_PORT, sandbox)):
        text = re.sub(rf"\b(?:localhost|127\.0\.0\.1):{readme_port}\b", f"127.0.0.1:{port}", text)
    return text


@dataclass(frozen=True)
class Check:
    """A ``-w '%{http_code}'`` call: the status it must print (``# -> NNN``)."""

    block: int
    expected: str
    command: str


def with_status_checks(block: Block, text: str, checks: list[Check]) -> str:
    """``text`` with every status-printing call between two markers, so its output can be found.

    A command is its lines joined by trailing backslashes; the markers go around the whole of it.
    """
    lines = text.splitlines()
    out: list[str] = []
    start = 0
    while start < len(lines):
        stop = start
        while lines[stop].rstrip().endswith("\\") and stop + 1 < len(lines):
            stop += 1
        command = "\n".join(lines[start : stop + 1])
        if STATUS_CALL in command:
            expected = EXPECTED.search(command)
            assert expected is not None, (
                f"README.md block at line {block.line}: a call that prints its status needs a "
                f"'# -> NNN' comment saying which:\n{command}"
            )
            number = len(checks)
            checks.append(Check(block.line, expected["expected"], command))
            out += [f"printf '\\n{BEGIN} {number}\\n'", command, f"printf '\\n{END} {number}\\n'"]
        else:
            out.append(command)
        start = stop + 1
    return "\n".join(out)


@dataclass
class Script:
    text: str
    checks: list[Check]
    echoed: list[str]


def build_script(blocks: list[Block], mode: str, gateway: int, sandbox: int) -> Script:
    substitutions = SUBSTITUTIONS[mode]
    used: set[str] = set()
    checks: list[Check] = []
    echoed: list[str] = []
    parts = ["set -euo pipefail", TRAP, CURL, f"export JOBGATE_URL=http://127.0.0.1:{gateway}"]
    for block in blocks:
        # A block of helper functions (get_id) runs in every script, as it stays defined in a
        # reader's shell: the keys-on examples use it too.
        if block.mode != mode and not (block.mode == "run" and defines_helpers(block)):
            continue
        text = substitute(block.text, substitutions, used)
        text = rewrite_ports(text, gateway, sandbox)
        stray = re.search(rf"\b({GATEWAY_PORT}|{SANDBOX_PORT})\b", text)
        assert stray is None, (
            f"README.md block at line {block.line} names port {stray[1]} other than as "
            f"localhost:{stray[1]}: the test cannot point it at its own gateway"
        )
        echoed += [m["word"] for line in text.splitlines() if (m := ECHOED.search(line))]
        parts.append(f"{BLOCK_HEADER} {block.line}")
        if block.lang == "python":
            assert PYTHON_END not in text, f"README.md block at line {block.line}: {PYTHON_END}"
            parts.append(f"python - <<'{PYTHON_END}'\n{text}\n{PYTHON_END}")
        else:
            parts.append(with_status_checks(block, text, checks))
    missing = set(substitutions) - used
    assert not missing, f"no README line starts with {sorted(missing)}: update SUBSTITUTIONS"
    return Script("\n".join(parts) + "\n", checks, echoed)


@dataclass
class Gateway:
    port: int
    sandbox_port: int
    directory: Path
    log: Path
    process: subprocess.Popen[bytes]

    def log_events(self) -> list[dict[str, object]]:
        events = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                events.append(event)
        return events

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def clean_environment() -> dict[str, str]:
    """This environment without any JOBGATE_ setting a developer may have exported."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBGATE_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def gateway_environment(port: int, sandbox_port: int, **extra: str) -> dict[str, str]:
    config = tomllib.loads(DEFAULT_CONFIG.read_text())
    env = clean_environment()
    env |= {
        "JOBGATE_SERVER__PORT": str(port),
        "JOBGATE_SERVER__PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "JOBGATE_SANDBOX__PORT": str(sandbox_port),
        "JOBGATE_LOG__FORMAT": "json",
        "JOBGATE_LOG__ACCESS": "all",
        **extra,
    }
    for name, provider in config["providers"].items():
        base_url = rewrite_ports(provider["base_url"], port, sandbox_port)
        assert f":{sandbox_port}/" in base_url, f"{name}'s base_url is not the embedded sandbox"
        env[f"JOBGATE_PROVIDERS__{name.upper()}__BASE_URL"] = base_url
    return env


def wait_ready(gateway: Gateway) -> None:
    url = f"http://127.0.0.1:{gateway.port}/readyz"
    for _ in range(READY_ATTEMPTS):
        if gateway.process.poll() is not None:
            raise AssertionError(f"the gateway exited at start-up:\n{gateway.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"the gateway was not ready after {READY_ATTEMPTS} polls of /readyz")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextmanager
def running_gateway(directory: Path, **extra: str) -> Iterator[Gateway]:
    """``<venv>/bin/jobgate serve`` in ``directory``, as `make run` starts it, on free ports."""
    directory.mkdir()
    (directory / ".venv").symlink_to(VENV, target_is_directory=True)
    log = directory / "gateway.log"
    for attempt in range(PORT_ATTEMPTS):
        port = free_port()
        sandbox_port = next(p for p in iter(free_port, None) if p != port)
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [str(BIN / "jobgate"), "serve"],
                cwd=directory,
                env=gateway_environment(port, sandbox_port, **extra),
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        gateway = Gateway(port, sandbox_port, directory, log, process)
        try:
            wait_ready(gateway)
        except AssertionError:
            stop(process)
            # free_port only found the ports free: another process may have bound one since.
            if "cannot listen" in gateway.log_tail() and attempt + 1 < PORT_ATTEMPTS:
                continue
            raise
        break
    try:
        yield gateway
    finally:
        stop(process)


def run_script(gateway: Gateway, script: Script) -> str:
    """Run ``script`` in the gateway's directory; its output, once it exited 0."""
    path = gateway.directory / "readme.sh"
    path.write_text(script.text)
    syntax = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, check=False)
    assert syntax.returncode == 0, f"the README's blocks do not parse as bash:\n{syntax.stderr}"
    # Files, not pipes: nothing blocks, and what a stuck script printed is still there. They stay
    # beside the script, for a look at what the README printed (pytest --basetemp=DIR).
    out, err = gateway.directory / "readme.out", gateway.directory / "readme.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        # A session of its own, so a timeout stops the curl calls too, not only bash.
        process = subprocess.Popen(
            ["bash", str(path)],
            cwd=gateway.directory,
            env=clean_environment() | {"JOBGATE_API_KEY": "x"},
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
        try:
            code = process.wait(timeout=SCRIPT_TIMEOUT)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
    output = out.read_text(errors="replace")
    errors = err.read_text(errors="replace")
    if code != 0:
        where = re.findall(rf"^{FAILED} (\d+)$", errors, re.MULTILINE)
        lines = script.text.splitlines()
        around = ""
        if where:
            line = int(where[-1])
            block = next(
                (text for text in reversed(lines[:line]) if text.startswith(BLOCK_HEADER)), ""
            )
            around = f"{block}, the command marked >:\n" + "\n".join(
                ("> " if number == line else "  ") + lines[number - 1]
                for number in range(max(1, line - 2), min(len(lines), line + 1) + 1)
            )
        outcome = f"did not finish in {SCRIPT_TIMEOUT:g} s" if code is None else f"exit {code}"
        raise AssertionError(
            f"the README's script failed ({outcome}) at {around or 'an unknown line'}\n"
            f"--- stdout (end) ---\n{output[-6000:]}\n--- stderr (end) ---\n{errors[-4000:]}"
            f"\n--- gateway log (end) ---\n{gateway.log_tail()}\n(the script: {path})"
        )
    return output


def check_output(script: Script, output: str) -> None:
    lines = output.splitlines()
    for number, check in enumerate(script.checks):
        begin = lines.index(f"{BEGIN} {number}")
        end = lines.index(f"{END} {number}", begin)
        printed = [line for line in lines[begin + 1 : end] if line.strip()]
        assert printed, f"README.md block at line {check.block} printed nothing:\n{check.command}"
        assert printed[-1].strip() == check.expected, (
            f"README.md block at line {check.block}: printed {printed[-1]!r}, its comment says "
            f"{check.expected!r}:\n{check.command}"
        )
    for word in script.echoed:
        assert word in (line.strip() for line in lines), f"no line {word!r} in:\n{output[-4000:]}"


def check_log(gateway: Gateway) -> None:
    events = gateway.log_events()
    requests = [e for e in events if e.get("event") == "http.request"]
    assert requests, f"the gateway logged no requests:\n{gateway.log_tail()}"
    failed = [e for e in requests if int(str(e.get("status", 0))) >= 500]
    assert not failed, f"the gateway answered 5xx: {failed}"
    errors = [e for e in events if e.get("level") in ("error", "critical", "exception")]
    assert not errors, f"the gateway logged errors: {errors}"


def test_every_sh_block_runs_or_says_why_not() -> None:
    text = README.read_text()
    blocks = readme_blocks(text)  # raises on a readme-test comment it cannot read
    assert any(block.mode == "run" for block in blocks), "README.md has no ```sh block to run"
    for block in blocks:
        assert block.text.strip(), f"README.md:{block.line}: an empty ```sh block"
    # Shell examples in another fence would escape this test: they are ```sh (or ```text, output).
    other = [
        f"README.md:{number}: {line}"
        for number, line in enumerate(text.splitlines(), 1)
        if re.match(r"^```(bash|shell|console|zsh|shell-session)\s*$", line)
    ]
    assert not other, "shell examples go in ```sh blocks, so that they are run:\n" + "\n".join(
        other
    )


def test_blocks_are_read_with_the_comment_right_above_them() -> None:
    text = (
        "<!-- readme-test: skip: needs docker -->\n```sh\ndocker ps\n```\n"
        "<!-- readme-test: keys-on: keys -->\n\n```sh\njobgate keys list\n```\n"
        "```toml\n[a]\n```\n```sh\ncurl -s localhost:8080/healthz\n```\n"
        "```python\nprint(1)\n```\n"
    )
    assert readme_blocks(text) == [
        Block(2, "docker ps", "skip", "needs docker"),
        Block(7, "jobgate keys list", "keys-on", "keys"),
        Block(13, "curl -s localhost:8080/healthz", "run"),
        Block(16, "print(1)", "run", lang="python"),
    ]
    with pytest.raises(AssertionError, match="neither"):
        readme_blocks("<!-- readme-test: skip -->\n```sh\nmake run\n```\n")


@pytest.mark.timeout(SCRIPT_TIMEOUT + 90)
def test_the_readme_runs_against_make_runs_gateway(tmp_path: Path) -> None:
    blocks = readme_blocks(README.read_text())
    with running_gateway(tmp_path / "run") as gateway:
        script = build_script(blocks, "run", gateway.port, gateway.sandbox_port)
        output = run_script(gateway, script)
    check_output(script, output)
    check_log(gateway)


@pytest.mark.timeout(SCRIPT_TIMEOUT + 90)
def test_the_keys_examples_run_against_a_gateway_with_keys_on(tmp_path: Path) -> None:
    blocks = readme_blocks(README.read_text())
    assert any(block.mode == "keys-on" for block in blocks)
    with running_gateway(tmp_path / "keys-on", JOBGATE_AUTH__REQUIRED="true") as gateway:
        script = build_script(blocks, "keys-on", gateway.port, gateway.sandbox_port)
        output = run_script(gateway, script)
    check_output(script, output)
    check_log(gateway)
