"""Where captured results live: a small blob-store protocol and its filesystem implementation.

A blob is written once and never changed. A writer streams into a temporary file beside the
blobs, hashing as it goes; :meth:`BlobWriter.commit` flushes it to disk and renames it into
place, so a crash at any moment leaves either no blob or a whole one, never a half one under the
final name. A job's row holds the key, the size and the SHA-256; the bytes are only here.

Keys are ``<tenant>/<job id>/<name>``: deleting a job deletes its directory, and two replicas
sharing the directory (a ReadWriteMany volume) never pick the same temporary name.

While a writer is open, readers in the same process can follow it (:meth:`BlobWriter.follow`):
that is how the first reader of a single-use provider pointer gets its bytes from the capture
instead of fetching the pointer a second time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol, Self

import structlog

log = structlog.get_logger("jobgate.blobs")

_TMP = ".tmp"
_READ_CHUNK = 256 * 1024


class BlobError(Exception):
    """A blob could not be written or read (disk full, a bad key)."""


@dataclass(frozen=True, slots=True)
class BlobInfo:
    key: str
    size: int
    sha256: str


class BlobWriter(Protocol):
    """An open blob, not yet visible under its key. ``size`` and ``sha256`` cover what was
    written so far."""

    @property
    def size(self) -> int: ...

    async def write(self, data: bytes) -> None: ...

    async def commit(self) -> BlobInfo:
        """Make the blob durable and visible under its key; the writer is closed after."""
        ...

    async def abort(self) -> None:
        """Throw away what was written. Idempotent; a committed blob is left alone."""
        ...

    def follow(self) -> AsyncIterator[bytes]:
        """Every byte written so far and then every byte written later, until the commit
        (the iterator ends) or an abort (it raises :class:`BlobError`)."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc: object) -> None:
        """Aborts unless committed."""
        ...


class BlobStore(Protocol):
    async def open(self) -> None: ...

    def writer(self, key: str) -> BlobWriter: ...

    def path(self, key: str) -> Path:
        """The file holding the blob (for ``sendfile``); it may not exist."""
        ...

    async def exists(self, key: str) -> bool: ...

    async def delete(self, key: str) -> bool: ...

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every blob under ``prefix/`` (a job's directory). Returns how many went."""
        ...

    def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The bytes ``[start, end)`` of a blob."""
        ...


def _check_key(key: str) -> None:
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") or p.startswith(_TMP) for p in parts) or "\\" in key:
        raise BlobError(f"bad blob key {key!r}")


class FilesystemBlobStore:
    """Blobs as files under ``root``. Safe for several processes sharing ``root``: writes go
    through unique temporary names and ``os.replace``, which is atomic within one file system."""

    def __init__(self, root: Path, *, stale_after: float = 24 * 3600.0) -> None:
        self.root = root
        self.stale_after = stale_after
        self._writers: dict[str, _FileWriter] = {}

    async def open(self) -> None:
        try:
            await asyncio.to_thread(self._prepare)
        except OSError as exc:
            raise BlobError(
                f"the result vault at {self.root} cannot be used: {exc.strerror or exc}"
            ) from exc

    def _prepare(self) -> None:
        tmp = self.root / _TMP
        tmp.mkdir(parents=True, exist_ok=True)
        # A crash leaves its temporary files behind. Another replica may be writing its own right
        # now, so only ones untouched for a long time (far past any capture's lease) are removed.
        cutoff = time.time() - self.stale_after
        for entry in tmp.iterdir():
            with contextlib.suppress(OSError):
                if entry.stat().st_mtime < cutoff:
                    entry.unlink()
                    log.info("blobs.stale_temporary_removed", name=entry.name)

    def writer(self, key: str) -> BlobWriter:
        _check_key(key)
        writer = _FileWriter(self, key)
        self._writers[key] = writer
        return writer

    def active(self, key: str) -> BlobWriter | None:
        """The writer still writing ``key`` in this process, if any."""
        writer = self._writers.get(key)
        return writer if writer is not None and not writer.closed else None

    def _closed(self, writer: _FileWriter) -> None:
        if self._writers.get(writer.key) is writer:
            del self._writers[writer.key]

    def path(self, key: str) -> Path:
        _check_key(key)
        return self.root / key

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self.path(key).is_file)

    async def delete(self, key: str) -> bool:
        path = self.path(key)

        def unlink() -> bool:
            try:
                path.unlink()
            except FileNotFoundError:
                return False
            return True

        return await asyncio.to_thread(unlink)

    async def delete_prefix(self, prefix: str) -> int:
        _check_key(prefix)
        directory = self.root / prefix

        def remove() -> int:
            if not directory.is_dir():
                return 0
            count = sum(1 for p in directory.rglob("*") if p.is_file())
            shutil.rmtree(directory, ignore_errors=True)
            return count

        return await asyncio.to_thread(remove)

    async def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        path = self.path(key)
        try:
            handle = await asyncio.to_thread(path.open, "rb")
        except FileNotFoundError as exc:
            raise BlobError(f"blob {key} is missing") from exc
        with handle:
            handle.seek(start)
            left = None if end is None else max(0, end - start)
            while left is None or left > 0:
                want = _READ_CHUNK if left is None else min(_READ_CHUNK, left)
                chunk = await asyncio.to_thread(handle.read, want)
                if not chunk:
                    return
                if left is not None:
                    left -= len(chunk)
                yield chunk

    def read_range(self, key: str, start: int, end: int) -> bytes:
        """``[start, end)`` of a blob, read at once (small ranges: a page of records)."""
        with self.path(key).open("rb") as handle:
            handle.seek(start)
            return handle.read(end - start)


class _FileWriter:
    def __init__(self, store: FilesystemBlobStore, key: str) -> None:
        self.store = store
        self.key = key
        self.temp = store.root / _TMP / f"{uuid.uuid4().hex}.part"
        self._file: IO[bytes] | None = self.temp.open("wb")
        self._hash = hashlib.sha256()
        self._size = 0
        self.closed = False
        self.committed = False
        self._changed = asyncio.Event()

    @property
    def size(self) -> int:
        return self._size

    async def write(self, data: bytes) -> None:
        if self._file is None:
            raise BlobError("the blob writer is closed")
        try:
            # To the page cache: microseconds for a chunk, cheaper than a hop to a thread. The
            # expensive part, fsync, happens once, off the loop, at the commit.
            self._file.write(data)
            self._file.flush()
        except OSError as exc:
            await self.abort()
            raise BlobError(f"could not write the blob ({exc.strerror})") from exc
        self._hash.update(data)
        self._size += len(data)
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def commit(self) -> BlobInfo:
        handle = self._file
        if handle is None:
            raise BlobError("the blob writer is closed")
        final = self.store.path(self.key)

        def finish() -> None:
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.temp, final)
            # The rename itself is durable only once its directory is.
            fd = os.open(final.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

        self._file = None
        try:
            await asyncio.to_thread(finish)
        except OSError as exc:
            with contextlib.suppress(OSError):
                self.temp.unlink()
            self._close()
            raise BlobError(f"could not store the blob ({exc.strerror})") from exc
        self.committed = True
        self._close()
        return BlobInfo(self.key, self._size, self._hash.hexdigest())

    async def abort(self) -> None:
        if self.closed:
            return
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        with contextlib.suppress(OSError):
            self.temp.unlink()
        self._close()

    def _close(self) -> None:
        self.closed = True
        self.store._closed(self)
        self._wake()

    async def follow(self) -> AsyncIterator[bytes]:
        # Opened before anything else can happen: an open file survives the rename at the
        # commit and the unlink at an abort, so every byte already written can still be read.
        try:
            handle = self.temp.open("rb")
        except FileNotFoundError:
            handle = None
        if handle is None:
            # Gone: renamed by a commit (maybe still finishing in its thread) or removed by an
            # abort. Which one, the writer says once it is closed.
            while not self.closed:
                changed = self._changed
                await changed.wait()
            if self.committed:
                async for chunk in self.store.read(self.key):
                    yield chunk
                return
            raise BlobError("the capture was abandoned")
        with handle:
            sent = 0
            while True:
                changed = self._changed
                if sent < self._size:
                    chunk = handle.read(min(_READ_CHUNK, self._size - sent))
                    sent += len(chunk)
                    yield chunk
                    continue
                if self.closed:
                    if self.committed:
                        return
                    raise BlobError("the capture was abandoned")
                await changed.wait()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if not self.committed:
            await self.abort()
