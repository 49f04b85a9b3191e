"""How much of a file sits in the page cache (``mincore``), for the tests of
originals given back to the kernel once delivered (``bot.images.uncached``)."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import mmap
import os
from pathlib import Path

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
# Linux's: elsewhere the tests that need them skip (``cache_can_be_dropped``).
_mincore = getattr(_libc, "mincore", None)
_sync_file_range = getattr(_libc, "sync_file_range", None)
if _mincore is not None:
    _mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
if _sync_file_range is not None:
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
_WAIT_BEFORE, _WAIT_AFTER = 1, 4  # no SYNC_FILE_RANGE_WRITE: nothing is started here


def cached_pages(path: str | Path) -> int:
    """The pages of ``path`` in the page cache now. Mapping the file faults
    nothing in, and a private mapping shares the cache's pages until written."""
    size = os.path.getsize(path)
    if size == 0:
        return 0
    with open(path, "rb") as file:
        mapped = mmap.mmap(file.fileno(), size, access=mmap.ACCESS_COPY)
    try:
        anchor = ctypes.c_char.from_buffer(mapped)
        try:
            pages = -(-size // mmap.PAGESIZE)
            vector = (ctypes.c_ubyte * pages)()
            assert _mincore is not None
            if _mincore(ctypes.addressof(anchor), size, vector) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed")
            return sum(flag & 1 for flag in vector)
        finally:
            del anchor
    finally:
        mapped.close()


def wait_for_writeback(path: str | Path) -> None:
    """Wait until the writes of ``path`` already on their way to the disk have
    landed, without starting any: pages nobody asked to write out stay dirty."""
    fd = os.open(path, os.O_RDONLY)
    try:
        assert _sync_file_range is not None
        if _sync_file_range(fd, 0, 0, _WAIT_BEFORE | _WAIT_AFTER) != 0:
            raise OSError(ctypes.get_errno(), "sync_file_range failed")
    finally:
        os.close(fd)


def cache_can_be_dropped(folder: Path) -> bool:
    """Whether this filesystem gives clean pages back on request (tmpfs keeps
    them: they are the file), and whether this system lets a test see it."""
    if _mincore is None or _sync_file_range is None or not hasattr(os, "posix_fadvise"):
        return False
    probe = folder / ".page-cache-probe"
    probe.write_bytes(os.urandom(64 << 10))
    try:
        fd = os.open(probe, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        return cached_pages(probe) == 0
    finally:
        probe.unlink()


async def until_uncached(paths: list[str], *, within: float = 10.0) -> list[int]:
    """Wait until none of ``paths`` has a page in the cache; the pages left per
    path when ``within`` runs out."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        left = await asyncio.to_thread(lambda: [cached_pages(p) for p in paths])
        if not any(left) or loop.time() > deadline:
            return left
        await asyncio.sleep(0.02)
