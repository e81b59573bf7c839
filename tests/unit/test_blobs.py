"""The filesystem blob store, on real files: a blob appears whole at its commit or not at all,
readers follow a capture in flight, and nothing is left behind in the temporary directory."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway import blobs
from gateway.blobs import BlobError, BlobInfo, BlobWriter, FilesystemBlobStore

KEY = "acme/job_1/g1.json"
# Larger than the store's read chunk (256 KiB), so reads and follows take several chunks.
BIG = bytes(range(251)) * 3000


@pytest.fixture
async def store(tmp_path: Path) -> FilesystemBlobStore:
    opened = FilesystemBlobStore(tmp_path / "vault")
    await opened.open()
    return opened


def temporaries(store: FilesystemBlobStore) -> list[Path]:
    return sorted((store.root / ".tmp").iterdir())


async def collect(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


async def put(store: FilesystemBlobStore, key: str, data: bytes) -> BlobInfo:
    async with store.writer(key) as writer:
        await writer.write(data)
        return await writer.commit()


async def let_tasks_run() -> None:
    """One turn of the loop: every task already scheduled runs up to its next wait."""
    await asyncio.sleep(0)


class Follower:
    """Reads ``writer.follow()`` in a task of its own; the test takes the bytes as they come."""

    def __init__(self, writer: BlobWriter) -> None:
        self._items: asyncio.Queue[bytes | BlobError | None] = asyncio.Queue()
        self.received = b""
        self.task = asyncio.create_task(self._run(writer))

    async def _run(self, writer: BlobWriter) -> None:
        try:
            async for chunk in writer.follow():
                self._items.put_nowait(chunk)
        except BlobError as error:
            self._items.put_nowait(error)
        else:
            self._items.put_nowait(None)

    async def _next(self) -> bytes | BlobError | None:
        async with asyncio.timeout(5):  # a guard against a hang, never reached when it works
            return await self._items.get()

    async def until(self, size: int) -> bytes:
        """Everything received once at least ``size`` bytes have arrived."""
        while len(self.received) < size:
            item = await self._next()
            assert isinstance(item, bytes), f"ended with {item!r} after {len(self.received)} B"
            self.received += item
        return self.received

    async def end(self) -> tuple[bytes, BlobError | None]:
        """Everything received, and how the follow ended (``None``: at the commit)."""
        while True:
            item = await self._next()
            if not isinstance(item, bytes):
                await self.task
                return self.received, item
            self.received += item


# --------------------------------------------------------------------------------------------------
# writing, committing, reading


async def test_a_blob_appears_whole_at_its_commit_and_not_before(
    store: FilesystemBlobStore,
) -> None:
    writer = store.writer(KEY)
    await writer.write(b"hello ")
    await writer.write(b"world")
    assert writer.size == 11
    assert store.path(KEY) == store.root / "acme" / "job_1" / "g1.json"
    assert not store.path(KEY).exists()
    assert not await store.exists(KEY)
    [temporary] = temporaries(store)
    assert temporary.suffix == ".part"
    assert temporary.read_bytes() == b"hello world"
    assert store.active(KEY) is writer

    info = await writer.commit()

    assert info == BlobInfo(KEY, 11, hashlib.sha256(b"hello world").hexdigest())
    assert store.path(KEY).read_bytes() == b"hello world"
    assert await store.exists(KEY)
    assert temporaries(store) == []
    assert store.active(KEY) is None
    with pytest.raises(BlobError):
        await writer.write(b"more")
    with pytest.raises(BlobError):
        await writer.commit()
    assert store.path(KEY).read_bytes() == b"hello world"


async def test_an_empty_blob_can_be_stored(store: FilesystemBlobStore) -> None:
    info = await put(store, KEY, b"")
    assert info == BlobInfo(KEY, 0, hashlib.sha256(b"").hexdigest())
    assert await store.exists(KEY)
    assert await collect(store.read(KEY)) == b""


async def test_reads_give_back_the_bytes_and_their_ranges(store: FilesystemBlobStore) -> None:
    info = await put(store, KEY, BIG)
    assert info.size == len(BIG)
    assert info.sha256 == hashlib.sha256(BIG).hexdigest()
    assert await collect(store.read(KEY)) == BIG
    assert await collect(store.read(KEY, 10, 20)) == BIG[10:20]
    # Across the store's read chunks.
    assert await collect(store.read(KEY, 200_000, 600_000)) == BIG[200_000:600_000]
    assert await collect(store.read(KEY, 300_001)) == BIG[300_001:]
    assert await collect(store.read(KEY, len(BIG) - 3, len(BIG) + 100)) == BIG[-3:]
    assert await collect(store.read(KEY, len(BIG) + 5)) == b""
    assert await collect(store.read(KEY, 7, 7)) == b""
    assert store.read_range(KEY, 5, 9) == BIG[5:9]
    assert store.read_range(KEY, 262_140, 262_150) == BIG[262_140:262_150]


async def test_reading_a_missing_blob_is_a_blob_error(store: FilesystemBlobStore) -> None:
    with pytest.raises(BlobError):
        await collect(store.read(KEY))
    # Not committed yet is missing too.
    async with store.writer(KEY) as writer:
        await writer.write(b"half")
        with pytest.raises(BlobError):
            await collect(store.read(KEY))


# --------------------------------------------------------------------------------------------------
# aborting


async def test_an_abort_leaves_nothing_behind(store: FilesystemBlobStore) -> None:
    writer = store.writer(KEY)
    await writer.write(b"half a result")
    await writer.abort()
    assert not store.path(KEY).exists()
    assert temporaries(store) == []
    assert store.active(KEY) is None
    await writer.abort()  # idempotent
    with pytest.raises(BlobError):
        await writer.write(b"more")
    with pytest.raises(BlobError):
        await writer.commit()
    assert not store.path(KEY).exists()
    assert temporaries(store) == []


async def test_leaving_the_writer_without_a_commit_aborts(store: FilesystemBlobStore) -> None:
    async with store.writer(KEY) as writer:
        await writer.write(b"half a result")
    assert not store.path(KEY).exists()
    assert temporaries(store) == []

    async def write_then_fail() -> None:
        async with store.writer(KEY) as writer:
            await writer.write(b"half a result")
            raise RuntimeError("upstream broke")

    with pytest.raises(RuntimeError, match="upstream broke"):
        await write_then_fail()
    assert not store.path(KEY).exists()
    assert temporaries(store) == []
    assert store.active(KEY) is None


async def test_an_abort_after_the_commit_leaves_the_blob(store: FilesystemBlobStore) -> None:
    writer = store.writer(KEY)
    await writer.write(b"whole")
    await writer.commit()
    await writer.abort()
    assert store.path(KEY).read_bytes() == b"whole"
    # And the context manager's abort on the way out likewise.
    await put(store, "acme/job_1/g2.json", b"also whole")
    assert store.path("acme/job_1/g2.json").read_bytes() == b"also whole"
    assert temporaries(store) == []


# --------------------------------------------------------------------------------------------------
# following a capture in flight


async def test_followers_get_every_byte_in_order_until_the_commit(
    store: FilesystemBlobStore,
) -> None:
    writer = store.writer(KEY)
    early = Follower(writer)
    await let_tasks_run()
    assert not early.task.done()  # nothing written yet: it waits
    assert early.received == b""

    await writer.write(b"one ")
    assert await early.until(4) == b"one "
    # Two writes before the follower runs again: both arrive, in order.
    await writer.write(b"two ")
    await writer.write(b"three ")
    assert await early.until(14) == b"one two three "

    # A follower started now gets what was written before it came, then the rest.
    late = Follower(writer)
    assert await late.until(14) == b"one two three "
    await writer.write(BIG)
    await writer.write(b" end")
    info = await writer.commit()

    whole = b"one two three " + BIG + b" end"
    assert info.sha256 == hashlib.sha256(whole).hexdigest()
    assert await early.end() == (whole, None)
    assert await late.end() == (whole, None)
    assert store.path(KEY).read_bytes() == whole


async def test_a_follower_of_an_abandoned_capture_gets_its_bytes_then_an_error(
    store: FilesystemBlobStore,
) -> None:
    writer = store.writer(KEY)
    await writer.write(b"partial")
    follower = Follower(writer)
    assert await follower.until(7) == b"partial"
    await writer.write(b" and more")
    await writer.abort()
    received, error = await follower.end()
    assert received == b"partial and more"
    assert isinstance(error, BlobError)
    # One that comes after the abort gets the error at once.
    received, error = await Follower(writer).end()
    assert received == b""
    assert isinstance(error, BlobError)
    assert not store.path(KEY).exists()


async def test_a_follower_after_the_commit_reads_the_blob(store: FilesystemBlobStore) -> None:
    writer = store.writer(KEY)
    await writer.write(BIG)
    await writer.commit()
    assert await collect(writer.follow()) == BIG


async def test_a_follower_arriving_while_the_commit_finishes_gets_the_blob(
    store: FilesystemBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = asyncio.get_running_loop()
    renamed = asyncio.Event()
    release = threading.Event()

    class RenameThenHold:
        """``os`` for gateway.blobs, whose rename holds the commit's thread just after it."""

        def __getattr__(self, name: str) -> object:
            return getattr(os, name)

        def replace(self, source: Path, target: Path) -> None:
            os.replace(source, target)
            loop.call_soon_threadsafe(renamed.set)
            release.wait()

    monkeypatch.setattr(blobs, "os", RenameThenHold())
    writer = store.writer(KEY)
    await writer.write(b"whole result")
    commit = asyncio.create_task(writer.commit())
    try:
        async with asyncio.timeout(5):
            await renamed.wait()
        # The blob is in place, the commit not yet returned: a reader still finds the capture.
        assert store.path(KEY).read_bytes() == b"whole result"
        assert store.active(KEY) is writer
        follower = Follower(writer)
        await let_tasks_run()
    finally:
        release.set()
    await commit
    assert await follower.end() == (b"whole result", None)


# --------------------------------------------------------------------------------------------------
# deleting


async def test_delete_removes_one_blob(store: FilesystemBlobStore) -> None:
    await put(store, KEY, b"x")
    await put(store, "acme/job_1/g2.json", b"y")
    assert await store.delete(KEY) is True
    assert not await store.exists(KEY)
    assert not store.path(KEY).exists()
    assert await store.delete(KEY) is False
    assert await store.exists("acme/job_1/g2.json")


async def test_delete_prefix_removes_a_job_s_directory_only(store: FilesystemBlobStore) -> None:
    mine = ["acme/job_1/g1.json", "acme/job_1/g2.records", "acme/job_1/pages/g2.index"]
    others = ["acme/job_10/g1.json", "acme/job_2/g1.json", "other/job_1/g1.json"]
    for key in mine + others:
        await put(store, key, key.encode())
    # A directory, not a string prefix: job_1 and job_10 share the characters, not the folder.
    assert await store.delete_prefix("acme/job") == 0
    assert await store.delete_prefix("acme/job_1") == len(mine)
    assert not (store.root / "acme" / "job_1").exists()
    for key in mine:
        assert not await store.exists(key)
    for key in others:
        assert store.path(key).read_bytes() == key.encode()
    assert await store.delete_prefix("acme/job_1") == 0


# --------------------------------------------------------------------------------------------------
# keys


BAD_KEYS = ["", "../x", "a//b", ".tmp/x", "a/./b", "a/../../x", "/etc/passwd", "a/", "a\\b"]


@pytest.mark.parametrize("key", BAD_KEYS)
async def test_a_bad_key_is_refused_everywhere(store: FilesystemBlobStore, key: str) -> None:
    with pytest.raises(BlobError):
        store.writer(key)
    with pytest.raises(BlobError):
        store.path(key)
    with pytest.raises(BlobError):
        await store.exists(key)
    with pytest.raises(BlobError):
        await store.delete(key)
    with pytest.raises(BlobError):
        await store.delete_prefix(key)
    with pytest.raises(BlobError):
        await collect(store.read(key))
    assert temporaries(store) == []
    assert store.active(key) is None


async def test_a_bad_key_escapes_nothing(tmp_path: Path) -> None:
    outside = tmp_path / "x"
    outside.write_bytes(b"not the vault's")
    store = FilesystemBlobStore(tmp_path / "vault")
    await store.open()
    with pytest.raises(BlobError):
        await store.delete("../x")
    with pytest.raises(BlobError):
        await store.delete_prefix("..")
    assert outside.read_bytes() == b"not the vault's"


# --------------------------------------------------------------------------------------------------
# opening: the stale temporaries of a crash


async def test_open_removes_stale_temporaries_and_keeps_fresh_ones(tmp_path: Path) -> None:
    root = tmp_path / "vault"
    first = FilesystemBlobStore(root)
    await first.open()
    await put(first, KEY, b"committed long ago")
    tmp = root / ".tmp"
    stale = tmp / "crashed.part"
    stale.write_bytes(b"left by a crash")
    fresh = tmp / "another-replica.part"
    fresh.write_bytes(b"being written right now")
    hour = 3600.0
    now = time.time()
    os.utime(stale, (now - 2 * hour, now - 2 * hour))
    os.utime(fresh, (now - hour / 2, now - hour / 2))
    # Blobs are never swept, however old.
    os.utime(first.path(KEY), (now - 100 * hour, now - 100 * hour))

    await FilesystemBlobStore(root, stale_after=hour).open()

    assert not stale.exists()
    assert fresh.read_bytes() == b"being written right now"
    assert first.path(KEY).read_bytes() == b"committed long ago"


async def test_open_leaves_an_open_writer_of_another_store_alone(tmp_path: Path) -> None:
    root = tmp_path / "vault"
    first = FilesystemBlobStore(root)
    await first.open()
    writer = first.writer(KEY)
    await writer.write(b"in flight")
    await FilesystemBlobStore(root, stale_after=3600.0).open()
    await writer.write(b", still")
    info = await writer.commit()
    assert info.size == len(b"in flight, still")
    assert first.path(KEY).read_bytes() == b"in flight, still"


# --------------------------------------------------------------------------------------------------
# two writers of one key


@pytest.mark.parametrize("last", ["first", "second"])
async def test_two_writers_of_one_key_the_last_commit_wins(
    store: FilesystemBlobStore, last: str
) -> None:
    writers = {"first": store.writer(KEY), "second": store.writer(KEY)}
    for name, writer in writers.items():
        await writer.write(name.encode() * 1000)
    assert len(temporaries(store)) == 2  # each its own temporary name
    other = "first" if last == "second" else "second"
    await writers[other].commit()
    assert store.path(KEY).read_bytes() == other.encode() * 1000
    info = await writers[last].commit()
    assert store.path(KEY).read_bytes() == last.encode() * 1000
    assert info.sha256 == hashlib.sha256(last.encode() * 1000).hexdigest()
    assert temporaries(store) == []
    assert store.active(KEY) is None
