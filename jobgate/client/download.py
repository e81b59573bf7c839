"""The resumable download's state machine (sans-I/O): which Range to ask for, what each answer
means for the partial file, and whether the bytes are the ones the gateway promised."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.web.models import JobOut
from jobgate.client.core import Call, job_path, nothing, number
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
"""``None``: an error answer, for the exchange to retry or raise."""


class DownloadPlan:
    """A resumable download of ``/v1/jobs/{id}/result`` to a partial file.

    - The partial file's bytes are resumed with ``Range: bytes=<size>-`` (when ``partial`` > 0).
    - 206 from that offset: append. 200: the server sent everything (a copy that does not do
      ranges, or a new result): start over. 416 with ``bytes */<size>`` equal to the partial's
      size: it was whole already. Any other 416 or a 206 from elsewhere: start over.
    - The end is verified against what the gateway promised: the job's ``result.size`` and
      ``result.sha256`` (for a stored whole copy) or the answer's ETag and length. A resumed
      download that does not match starts over once (its partial may have been of an older
      copy); a whole one that does not match raises :class:`DownloadError`.
    - A connection cut mid-body resumes from the bytes written (the driver counts those tries
      against its retry budget).
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
    ) -> None:
        self.job_id = job_id
        self.offset = partial
        """Bytes of the partial file that the download keeps."""
        self.resumed_from = partial
        self.expected_size = expected_size
        self.expected_sha256 = expected_sha256
        self.wait = wait
        self.total: int | None = expected_size
        self.status = 0
        self.restarts = 0
        self._hash = hashlib.sha256()
        self._hashed = 0
        self._answer_sha256: str | None = None

    @staticmethod
    def expectations(job: JobOut) -> tuple[int | None, str | None]:
        """What a whole download of ``job``'s result must be: a stored copy served whole (not a
        page, whose bytes are not the copy's) has the job's size and SHA-256."""
        summary = job.result
        if summary.stored and summary.kind in ("pointer", "inline"):
            return summary.size, summary.sha256
        return None, None

    def next_call(self) -> Call[None]:
        headers: list[tuple[str, str]] = [("Accept-Encoding", "identity")]
        if self.offset > 0:
            headers.append(("Range", f"bytes={self.offset}-"))
        params = (("wait", number(self.wait)),) if self.wait else ()
        return Call(
            "GET",
            job_path(self.job_id, "/result"),
            nothing,
            params=params,
            headers=tuple(headers),
            idempotent=True,
            ok=(200, 206),
            wait=self.wait or 0.0,
        )

    def opened(self, status: int, headers: Mapping[str, str]) -> Opened:
        self.status = status
        etag_sha = sha256_etag(headers.get("etag"))
        if status == 200:
            self._start_over()
            self._answer_sha256 = etag_sha
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
            )
            if first != self.offset or stale:
                return self._again()
            self._answer_sha256 = etag_sha
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

    def interrupted(self) -> None:
        """The connection broke mid-body: the next call resumes from what was written."""
        self.status = 0

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
