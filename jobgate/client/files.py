"""The download's partial file, for both drivers: blocking file calls (the asyncio driver runs
the slow ones in a thread). Kept apart from :mod:`jobgate.client.download`, which stays free of
I/O, and from :mod:`jobgate.client.sync`, so the asyncio driver need not import the blocking
one."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import BinaryIO

from jobgate.client.download import Complete, DownloadPlan, Write

CHUNK = 1 << 16

Progress = Callable[[int, int | None], None]
"""``progress(bytes_so_far, total_or_None)``, called as the bytes arrive."""


def part_path(path: str | os.PathLike[str]) -> tuple[str, str]:
    """The target's path and its partial file's: the bytes go to ``<path>.part`` until whole."""
    target = os.fspath(path)
    return target, target + ".part"


def partial_size(part: str, *, resume: bool) -> int:
    """The bytes of ``part`` to resume from; without ``resume`` the file is removed."""
    if not resume:
        with contextlib.suppress(FileNotFoundError):
            os.remove(part)
        return 0
    try:
        return os.path.getsize(part)
    except FileNotFoundError:
        return 0


def open_part(part: str) -> BinaryIO:
    """The partial file, opened for writing anywhere in it (created if need be)."""
    try:
        return open(part, "r+b")
    except FileNotFoundError:
        return open(part, "wb")


def rehash(file: BinaryIO, plan: DownloadPlan) -> None:
    """Feed the partial file's bytes before ``plan.offset`` to the plan's SHA-256."""
    file.seek(0)
    left = plan.offset
    while left > 0 and (chunk := file.read(min(CHUNK, left))):
        plan.existing(chunk)
        left -= len(chunk)


def prepare(part: str, plan: DownloadPlan, todo: Write | Complete) -> BinaryIO | None:
    """Get the partial file ready for what :meth:`DownloadPlan.opened` said: hash the bytes it
    keeps, and for a :class:`Write` cut it at the offset and return it open there (the caller
    writes the body and closes it); ``None`` for a :class:`Complete`, which writes nothing."""
    file = open_part(part)
    try:
        if todo.rehash:
            rehash(file, plan)
        if isinstance(todo, Complete):
            file.close()
            return None
        file.seek(todo.offset)
        file.truncate()
    except BaseException:
        file.close()
        raise
    return file
