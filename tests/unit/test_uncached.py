"""Stored originals are written past the page cache where the filesystem allows it,
and whole in every case; those downloaded through it give its pages back."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import mmap
import os
import threading
from pathlib import Path

import pytest

from bot.images import uncached
from bot.images.storage import ImageStore
from bot.images.uncached import BLOCK, drop_cached, write_new_file
from bot.models import ResultImage
from tests.page_cache import cache_can_be_dropped, cached_pages, wait_for_writeback

SIZES = [1, BLOCK - 1, BLOCK, BLOCK + 1, 1_700_000, 3 << 20, 5 << 20]


def new_file(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)


def direct_io_here(folder: Path) -> bool:
    probe = folder / "probe"
    fd = new_file(probe)
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT)
    except OSError:
        return False
    finally:
        os.close(fd)
        probe.unlink()
    return True


@pytest.mark.parametrize("size", SIZES)
def test_a_file_written_directly_holds_exactly_its_bytes(tmp_path: Path, size: int) -> None:
    if not hasattr(os, "O_DIRECT") or not direct_io_here(tmp_path):
        pytest.skip("this filesystem has no direct I/O")
    data = os.urandom(size)
    fd = new_file(tmp_path / "original.png")
    try:
        write_new_file(fd, data)
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT  # it went past the cache
    finally:
        os.close(fd)
    assert (tmp_path / "original.png").read_bytes() == data


def test_writers_in_several_threads_never_share_a_buffer(tmp_path: Path) -> None:
    sizes = [1_700_000, 900_000, 2 << 20, 12_345]
    failures: list[str] = []

    def writer(n: int) -> None:
        for round_ in range(15):
            data = bytes([n * 16 + round_ % 16]) * sizes[(n + round_) % len(sizes)]
            path = tmp_path / f"{n}-{round_}.png"
            fd = new_file(path)
            try:
                write_new_file(fd, data)
            finally:
                os.close(fd)
            if path.read_bytes() != data:
                failures.append(path.name)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert len(uncached._spare) <= 2  # what is kept between writes stays bounded


def test_a_filesystem_without_direct_io_is_written_through_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No filesystem refusing direct I/O can be mounted in a test: fcntl answers as
    # one does (EINVAL from F_SETFL with O_DIRECT).
    real_fcntl = fcntl.fcntl

    def refusing(fd: int, cmd: int, arg: int = 0) -> int:
        if cmd == fcntl.F_SETFL and arg & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_fcntl(fd, cmd, arg)

    monkeypatch.setattr(fcntl, "fcntl", refusing)
    data = os.urandom(1_700_000)
    fd = new_file(tmp_path / "original.png")
    try:
        write_new_file(fd, data)
    finally:
        os.close(fd)
    assert (tmp_path / "original.png").read_bytes() == data


def test_a_device_refusing_the_alignment_gets_the_file_whole_through_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not hasattr(os, "O_DIRECT") or not direct_io_here(tmp_path):
        pytest.skip("this filesystem has no direct I/O")
    real_write = os.write
    refused: list[int] = []

    def blocks_over_4096(fd: int, data: memoryview) -> int:
        # A device with 8 KiB logical blocks refuses a direct write after some of
        # the file went through: the file must not keep that part twice.
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            if not refused:
                refused.append(real_write(fd, data[:BLOCK]))
                return refused[0]
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", blocks_over_4096)
    data = os.urandom(3 * BLOCK + 7)
    fd = new_file(tmp_path / "original.png")
    try:
        write_new_file(fd, data)
    finally:
        os.close(fd)
    assert refused == [BLOCK]
    assert (tmp_path / "original.png").read_bytes() == data


def test_dropping_gives_back_a_written_files_pages(tmp_path: Path) -> None:
    if not cache_can_be_dropped(tmp_path):
        pytest.skip("this filesystem keeps its pages")
    kept, other = tmp_path / "kept.png", tmp_path / "other.png"
    for path in (kept, other):
        path.write_bytes(os.urandom(3 << 20))
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # clean pages: only those can be given back
        finally:
            os.close(fd)
    assert cached_pages(kept) == cached_pages(other) == (3 << 20) // mmap.PAGESIZE
    drop_cached([str(kept), str(tmp_path / "gone.png")])  # a missing file is skipped
    assert cached_pages(kept) == 0
    assert cached_pages(other) == (3 << 20) // mmap.PAGESIZE  # only what was named
    assert kept.stat().st_size == 3 << 20


async def test_a_downloaded_original_is_written_out_early_so_its_pages_can_go(
    tmp_path: Path,
) -> None:
    """Left to the kernel, a new file's pages stay dirty, so undroppable, for
    30 s; a result downloaded into the store is on its way to the disk as soon
    as it is whole, and one request then gives its pages back."""
    if not cache_can_be_dropped(tmp_path):
        pytest.skip("this filesystem keeps its pages")
    store = ImageStore(tmp_path / "images", retention_days=7)
    incoming = store.incoming("job-1", 1)
    incoming.expect(8 << 20)
    body = os.urandom(8 << 20)
    for start in range(0, len(body), 64 << 10):
        await incoming.write(body[start : start + (64 << 10)])
    downloaded = await incoming.finish()
    assert isinstance(downloaded, Path)
    path = await incoming.install("image/png")
    assert cached_pages(path) > 0
    await asyncio.to_thread(wait_for_writeback, path)  # starts nothing itself
    drop_cached([str(path)])
    assert cached_pages(path) == 0
    assert path.read_bytes() == body


async def test_giving_pages_back_after_the_executor_stopped_is_skipped(tmp_path: Path) -> None:
    """At the very end of a stop the loop's executor is gone: a job that has just
    delivered must not fail on a hint to the kernel."""
    store = ImageStore(tmp_path, retention_days=7)
    kept = tmp_path / "1.png"
    kept.write_bytes(b"x" * 10)
    await asyncio.get_running_loop().shutdown_default_executor()
    store.release_cache([ResultImage(b"x" * 10, "image/png", 1, 1).on_disk(str(kept))])
    assert kept.read_bytes() == b"x" * 10
