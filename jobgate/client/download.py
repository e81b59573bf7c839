"""The resumable download's state machine (sans-I/O): which Range to ask for, what each answer
means for the partial file, and whether the bytes are the ones the gateway promised."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import httpx

from gateway.web.models import JobOut
from jobgate.client.core import (
    Attempts,
    Call,
    ResultWait,
    Retry,
    RetryPolicy,
    job_path,
    nothing,
    number,
    problem_from,
)
from jobgate.client.errors import DownloadError

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*$", re.IGNORECASE)
_SHA256_ETAG = re.compile(r'^"([0-9a-f]{64})"$')


def parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """``Content-Range: bytes a-b/total`` or ``bytes */total``: (a, total), or None if unknown."""
    if not value:
        return None, None
    match = _CONTENT_RANGE.match(value)
    if match is None:
        return None, None
    first = int(match.group(1)) if match.group(1) is not None else None
    total = int(match.group(3)) if match.group(3) != "*" else None
    return first, total


def sha256_etag(value: str | None) -> str | None:
    """The SHA-256 a strong ETag names, for jobgate's copies (``"<64 hex>"``); else ``None``."""
    if not value:
        return None
    match = _SHA256_ETAG.match(value.strip())
    return match.group(1) if match else None


@dataclass(frozen=True, slots=True)
class Download:
    """A finished download: where, how many bytes, their SHA-256, the offset it resumed from
    (0 for a whole download) and the status of the answer that completed it."""

    path: str
    size: int
    sha256: str
    resumed_from: int
    status: int


@dataclass(frozen=True, slots=True)
class Write:
    """Write the answer's body at ``offset`` (truncate the partial file there). ``rehash``: the
    bytes before ``offset`` are the partial file's, not yet hashed: feed them to
    :meth:`DownloadPlan.existing` first."""

    offset: int
    rehash: bool


@dataclass(frozen=True, slots=True)
class Again:
    """Drop this answer and send :meth:`DownloadPlan.next_call` again (from byte 0 now)."""


@dataclass(frozen=True, slots=True)
class Complete:
    """The partial file is already whole (a 416 whose size is the file's): verify it."""

    rehash: bool


Opened = Write | Again | Complete | None
"""``None``: an error answer: read its body and hand it to :meth:`DownloadPlan.refused`."""


def _strong(etag: str | None) -> str | None:
    """An ETag fit for If-Range, which compares strongly: a weak one would never match."""
    if not etag or not etag.startswith('"'):
        return None
    return etag


class DownloadPlan:
    """A resumable download of ``/v1/jobs/{id}/result`` to a partial file.

    The driver's loop: ``while (call := plan.next_call(clock)) is not None``, send it; hand the
    answer's status and headers to :meth:`opened` and do what it says (write the body, verify
    the file, drop the answer, or read an error answer for :meth:`refused`); :meth:`ended`
    once a body is written; :meth:`failed` when the connection breaks; sleep what
    :meth:`refused` and :meth:`failed` return. At the end, :attr:`download` is the result.

    - The partial file's bytes are resumed with ``Range: bytes=<size>-`` (when ``partial`` > 0),
      and ``If-Range`` with the ETag of the answer that started the download (or of the stored
      copy the job names), so bytes of two different copies are never spliced together.
    - 206 from that offset (and of that ETag): append. 200: the server sent everything (a copy
      that does not do ranges, a new result, or an If-Range that no longer matches): start
      over. 416 with ``bytes */<size>`` equal to the partial's size: it was whole already. Any
      other 416 or a 206 from elsewhere: start over.
    - The end is verified against what the gateway promised: the job's ``result.size`` and
      ``result.sha256`` (for a stored whole copy) or the answer's ETag and length. A resumed
      download (from a partial file, or after a cut) that does not match starts over (its
      partial may have been of an older copy); a whole one that does not match raises
      :class:`DownloadError`.
    - A connection cut mid-body resumes from the bytes written. The retry budget
      (``policy.max_retries``) counts failures in a row: a cut after new bytes starts it over,
      so a long download on a flaky link goes on while each try makes progress.
    - ``wait``: seconds to wait for the result to exist, as long polls (:class:`ResultWait`).
    """

    MAX_RESTARTS = 2

    def __init__(
        self,
        job_id: str,
        *,
        partial: int = 0,
        expected_size: int | None = None,
        expected_sha256: str | None = None,
        wait: float | None = None,
        path: str = "",
        policy: RetryPolicy | None = None,
        url: str = "",
        now: float = 0.0,
    ) -> None:
        self.job_id = job_id
        self.path = path
        self.offset = partial
        """Bytes of the partial file that the download keeps."""
        self.resumed_from = partial
        self.expected_size = expected_size
        self.expected_sha256 = expected_sha256
        self.total: int | None = expected_size
        self.status = 0
        self.restarts = 0
        self.download: Download | None = None
        """The finished download, once :meth:`next_call` returns ``None``."""
        self._expected_etag = f'"{expected_sha256}"' if expected_sha256 else None
        self.etag = self._expected_etag
        """The ETag the download's bytes are of: sent as If-Range with each Range."""
        self.waiting = ResultWait(self._call, wait, now)
        self.attempts = Attempts(policy or RetryPolicy(), url)
        self._hash = hashlib.sha256()
        self._hashed = 0
        self._answer_sha256: str | None = None
        self._fed = 0
        """Bytes received since the last failure: progress resets the retry budget."""

    @staticmethod
    def expectations(job: JobOut) -> tuple[int | None, str | None]:
        """What a whole download of ``job``'s result must be: a stored copy served whole (not a
        page, whose bytes are not the copy's) has the job's size and SHA-256."""
        summary = job.result
        if summary.stored and summary.kind in ("pointer", "inline"):
            return summary.size, summary.sha256
        return None, None

    def next_call(self, clock: float) -> Call[None] | None:
        """The request to send next, or ``None``: the download is done (:attr:`download`)."""
        if self.download is not None:
            return None
        return self.waiting.next_call(clock)

    def _call(self, wait: float | None) -> Call[None]:
        headers: list[tuple[str, str]] = [("Accept-Encoding", "identity")]
        if self.offset > 0:
            headers.append(("Range", f"bytes={self.offset}-"))
            if self.etag is not None:
                headers.append(("If-Range", self.etag))
        params = (("wait", number(wait)),) if wait else ()
        return Call(
            "GET",
            job_path(self.job_id, "/result"),
            nothing,
            params=params,
            headers=tuple(headers),
            idempotent=True,
            ok=(200, 206),
            wait=wait or 0.0,
        )

    def opened(self, status: int, headers: Mapping[str, str]) -> Opened:
        self.status = status
        etag = headers.get("etag")
        etag_sha = sha256_etag(etag)
        if status == 200:
            self._start_over()
            self._answer_sha256 = etag_sha
            self.etag = _strong(etag) or self._expected_etag
            length = headers.get("content-length")
            if length is not None and length.isdigit():
                self.total = int(length)
            return Write(0, rehash=False)
        if status == 206:
            first, total = parse_content_range(headers.get("content-range"))
            stale = (
                etag_sha is not None
                and self.expected_sha256 is not None
                and etag_sha != self.expected_sha256
            ) or (etag is not None and self.etag is not None and etag != self.etag)
            if first != self.offset or stale:
                return self._again()
            self._answer_sha256 = etag_sha
            if self.etag is None:
                self.etag = _strong(etag)
            if total is not None:
                self.total = total
            return Write(self.offset, rehash=self._hashed < self.offset)
        if status == 416:
            _, total = parse_content_range(headers.get("content-range"))
            if total is not None and total == self.offset and self.offset > 0:
                self.total = total
                return Complete(rehash=self._hashed < self.offset)
            return self._again()
        return None

    def existing(self, chunk: bytes) -> None:
        """Bytes of the partial file, in order from 0, hashed before the new ones."""
        self._hash.update(chunk)
        self._hashed += len(chunk)

    def feed(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self._hashed += len(chunk)
        self.offset += len(chunk)
        self._fed += len(chunk)

    def ended(self) -> None:
        """The body of a :class:`Write` (or the file of a :class:`Complete`) is all there:
        verify it. Whole: :meth:`next_call` returns ``None`` now. Else it starts over, or
        raises :class:`DownloadError`."""
        done = self.finish(self.path)
        if isinstance(done, Download):
            self.download = done

    def refused(self, response: httpx.Response, now: datetime, clock: float) -> Retry:
        """An error answer, its body read: ask again (a result not ready yet, time left), retry
        (a 503), or raise its problem."""
        problem = problem_from(response, now)
        if self.waiting.again(problem, clock):
            return Retry(0.0)
        return self.attempts.refused(self._call(None), problem, clock)

    def failed(self, reason: str, clock: float) -> Retry:
        """The connection broke (before or mid-body): resume from what was written, or raise
        :class:`GatewayUnreachable` after ``max_retries`` failures without progress."""
        self.status = 0
        if self.offset > 0:
            self.resumed_from = self.offset
        if self._fed > 0:
            self.attempts.attempt = 0
        self._fed = 0
        return self.attempts.failed(self._call(None), reason, clock)

    def finish(self, path: str) -> Download | Again:
        digest = self._hash.hexdigest()
        want_size = self.expected_size if self.expected_size is not None else self.total
        want_sha = self.expected_sha256 or self._answer_sha256
        problem: DownloadError | None = None
        if want_size is not None and self.offset != want_size:
            problem = DownloadError(
                f"job {self.job_id}: downloaded {self.offset} bytes, expected {want_size}",
                expected=want_size,
                got=self.offset,
            )
        elif want_sha is not None and digest != want_sha:
            problem = DownloadError(
                f"job {self.job_id}: the download's SHA-256 is {digest}, expected {want_sha}",
                expected=want_sha,
                got=digest,
            )
        if problem is None:
            return Download(path, self.offset, digest, self.resumed_from, self.status)
        if self.resumed_from > 0 and self.restarts < self.MAX_RESTARTS:
            return self._again()
        raise problem

    def _again(self) -> Again:
        if self.restarts >= self.MAX_RESTARTS:
            raise DownloadError(
                f"job {self.job_id}: the gateway's answers to a resumed download kept "
                f"disagreeing (status {self.status})",
                expected=self.expected_sha256,
                got=self.status,
            )
        self.restarts += 1
        self._start_over()
        return Again()

    def _start_over(self) -> None:
        self.offset = 0
        self.resumed_from = 0
        self._hash = hashlib.sha256()
        self._hashed = 0
        self.total = self.expected_size
        self.etag = self._expected_etag
