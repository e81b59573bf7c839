"""The client commands' arguments: the argparse parsers and the reading of their values.

The values that argparse cannot check on its own (a ``--request`` that must be a JSON object, read
inline or from a file, and ``--label KEY=VALUE`` pairs) are read here into :class:`UsageError`,
which the command runner prints as one line, instead of argparse's usage block.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

DEFAULT_URL: Final = "http://127.0.0.1:8080"
COMMAND_NAMES: Final = (
    "submit",
    "adopt",
    "watch",
    "jobs",
    "get",
    "result",
    "cancel",
    "rerun",
    "continue",
    "delete",
)
STATES: Final = ("queued", "running", "succeeded", "failed", "canceled", "expired")

EXIT_OK: Final = 0
EXIT_UNSUCCESSFUL: Final = 1
EXIT_USAGE: Final = 2
EXIT_PROBLEM: Final = 3
EXIT_UNREACHABLE: Final = 4
EXIT_TIMEOUT: Final = 5
EXIT_INTERRUPTED: Final = 130

EXIT_CODES: Final = f"""\
exit codes:
  {EXIT_OK}    done (watch, --wait: the job succeeded)
  {EXIT_UNSUCCESSFUL}    the job ended failed, canceled or expired (watch, --wait), or was deleted
       while watched; or a local failure: a file could not be read or written, a download
       did not verify (size or SHA-256), stdout was closed (`| head`), an answer could not
       be read (not a jobgate at --url?), or an internal error
  {EXIT_USAGE}    usage: a bad argument (a malformed --request, a missing @file, a bad --label,
       `result --json` for a result that is not JSON)
  {EXIT_PROBLEM}    the gateway refused: it printed "jobgate: <code>: <detail>" (e.g. job_not_found)
  {EXIT_UNREACHABLE}    the gateway cannot be reached at --url
  {EXIT_TIMEOUT}    --timeout passed before the job finished (it keeps running; watch it again)
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)

environment: JOBGATE_URL (default {DEFAULT_URL}), JOBGATE_API_KEY; JOBGATE_DEBUG=1 shows
a traceback for an internal error."""


class UsageError(Exception):
    """A value the user gave cannot be used; the message names the option and the problem."""


Command = Callable[[argparse.Namespace], int]


def read_request(text: str) -> dict[str, Any]:
    """``--request``: a JSON object, inline, from ``@FILE``, or from standard input (``@-``)."""
    if text.startswith("@"):
        name = text[1:]
        if not name:
            raise UsageError("--request @: name a file after @ (or @- for standard input)")
        try:
            text = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UsageError(f"--request {text}: no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise UsageError(f"--request {text}: cannot read it: {reason}") from None
        where = f"--request {text}"
    else:
        where = "--request"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{where} is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    if not isinstance(value, dict):
        raise UsageError(
            f"{where} must be a JSON object (the provider's submit body), "
            f"not {type(value).__name__}"
        )
    return value


def read_labels(pairs: Sequence[str] | None) -> dict[str, str]:
    """``--label KEY=VALUE``, repeated; a key given twice keeps its last value."""
    labels: dict[str, str] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--label {pair!r}: expected KEY=VALUE")
        labels[key.strip()] = value
    return labels


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def _whole(minimum: int, rule: str) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``minimum`` (``rule`` says so when not)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{rule}: {text!r}")
        return value

    return parse


_positive_int = _whole(1, "must be at least 1")
_count = _whole(0, "must not be negative")


def _common() -> argparse.ArgumentParser:
    """Options every client command takes (argparse ``parents``)."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("gateway")
    group.add_argument(
        "--url",
        default=os.environ.get("JOBGATE_URL") or DEFAULT_URL,
        help="the gateway (default: $JOBGATE_URL, else %(default)s)",
    )
    group.add_argument(
        "--api-key",
        default=None,
        metavar="KEY",
        help="a bearer key (default: $JOBGATE_API_KEY; never printed)",
    )
    group.add_argument(
        "--json",
        action="store_true",
        help="machine output: one JSON document on stdout and nothing else there",
    )
    return common


def _id_only(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-q",
        "--id-only",
        action="store_true",
        help="print only the job id on stdout (for shell scripts)",
    )


def _wait_options(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--wait", action="store_true", help=f"then watch {what} until it finishes (as `watch`)"
    )
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=None,
        metavar="S",
        help="with --wait: give up watching after S seconds (exit 5)",
    )


def add_parsers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], commands: dict[str, Command]
) -> None:
    """Register the client commands; ``commands`` maps each command's name to its function."""
    common = [_common()]

    def add(name: str, help_: str, description: str) -> argparse.ArgumentParser:
        parser = sub.add_parser(
            name,
            help=help_,
            description=description,
            parents=common,
            epilog=EXIT_CODES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.set_defaults(func=commands[name])
        return parser

    submit = add(
        "submit",
        "submit a job to a provider",
        "Submit a job: --request is the provider's own submit body.",
    )
    submit.add_argument("provider", help="catchall, extract, pulse, ...")
    submit.add_argument(
        "--request",
        required=True,
        metavar="JSON|@FILE",
        help="the provider's submit body: a JSON object, @FILE, or @- for standard input",
    )
    _labels(submit)
    submit.add_argument("--callback-url", metavar="URL", help="a webhook for the job's events")
    submit.add_argument(
        "--idempotency-key", metavar="K", help="a retried submit with the same key is replayed"
    )
    _wait_options(submit, "the job")
    _id_only(submit)

    adopt = add(
        "adopt",
        "track an existing upstream job (e.g. a platform job)",
        "Adopt a job created upstream (platform jobs are adopted, not submitted).",
    )
    adopt.add_argument("provider")
    adopt.add_argument("upstream_id", metavar="UPSTREAM_ID")
    _labels(adopt)
    adopt.add_argument("--callback-url", metavar="URL", help="a webhook for the job's events")
    adopt.add_argument("--idempotency-key", metavar="K")
    _wait_options(adopt, "the job")
    _id_only(adopt)

    watch = add(
        "watch",
        "follow a job live until it finishes",
        "Follow a job's event stream: state, native status, step, fraction and ETA. "
        "The exit code says how the job ended.",
    )
    watch.add_argument("job_id", metavar="JOB_ID")
    watch.add_argument(
        "--timeout", type=_seconds, default=None, metavar="S", help="give up after S seconds"
    )

    jobs = add("jobs", "list jobs", "List jobs, newest first.")
    jobs.add_argument("--provider", help="only this provider's jobs")
    jobs.add_argument("--state", choices=STATES, help="only jobs in this state")
    _labels(jobs, "only jobs with this label (repeat: all of them)")
    jobs.add_argument(
        "--limit",
        type=_count,
        default=50,
        metavar="N",
        help="at most N jobs (default: %(default)s; 0: all)",
    )

    get = add("get", "show a job", "Show a job.")
    get.add_argument("job_id", metavar="JOB_ID")

    result = add(
        "result",
        "print or download a job's result",
        "Print a job's result: jobgate's JSON (inline, or a page of records), or the provider's "
        "own document, streamed to stdout as it is (with --json only if it is JSON: use -o for "
        "others). Or download it to a file (-o), resuming a partial file and verifying it.",
    )
    result.add_argument("job_id", metavar="JOB_ID")
    result.add_argument(
        "-o", "--output", metavar="FILE", help="download to FILE (resumes a partial FILE)"
    )
    result.add_argument("--page", type=_positive_int, metavar="N", help="one page of records")
    result.add_argument("--page-size", type=_positive_int, metavar="M", help="records per page")
    result.add_argument(
        "--wait",
        type=_seconds,
        default=None,
        metavar="S",
        help="wait up to S seconds for the result to exist",
    )

    cancel = add("cancel", "cancel a job (where the provider can)", "Cancel a job.")
    cancel.add_argument("job_id", metavar="JOB_ID")

    rerun = add(
        "rerun",
        "run a finished job again, as a new linked job",
        "Rerun a finished job: a new job linked by rerun_of.",
    )
    rerun.add_argument("job_id", metavar="JOB_ID")
    _wait_options(rerun, "the new job")
    _id_only(rerun)

    cont = add(
        "continue",
        "continue a finished job for more results",
        "Continue a finished job (catchall: more records, up to --new-limit).",
    )
    cont.add_argument("job_id", metavar="JOB_ID")
    cont.add_argument("--new-limit", type=_positive_int, metavar="N", help="the new record limit")
    _wait_options(cont, "the job")

    delete = add("delete", "stop tracking a job", "Stop tracking a job (the upstream job stays).")
    delete.add_argument("job_id", metavar="JOB_ID")


def _labels(parser: argparse.ArgumentParser, help_: str = "a label (repeat for more)") -> None:
    parser.add_argument(
        "--label", action="append", metavar="KEY=VALUE", dest="label", default=None, help=help_
    )
