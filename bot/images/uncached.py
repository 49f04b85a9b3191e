"""Stored originals kept out of the page cache.

An original is written once and read again only if a member presses one of its
buttons later, so it has no claim on the page cache. Filling fresh page-cache
pages is also what writing one cost most: 4-5 ms of CPU per 1.7 MB original on
the VMs the bot runs on, against 0.3-0.5 ms for a direct write from a reused
aligned buffer (bench/RESULTS.md, round 6). Where the filesystem refuses direct
I/O (tmpfs before Linux 6.6, some FUSE and network filesystems, other systems)
the file is written through the cache as before.

A large result downloaded into the store goes through the cache instead: its
job reads it back (the checks, the image work, perhaps the upload). Its pages
are written out early (``start_writeback``) and given back once the job has
delivered it, or failed to (``drop_cached``), so that the next job's download
fills recycled pages rather than fresh ones, and a container's memory limit is
not spent on cold originals (bench/RESULTS.md, round 8).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import threading
from collections.abc import Iterable

# Direct I/O wants the buffer's address, the length and the offset aligned to the
# device's logical block; 4096 covers 512-byte devices as well.
BLOCK = 4096
_DIRECT = getattr(os, "O_DIRECT", 0)

# Aligned buffers kept between writes: a new anonymous mapping would pay the same
# fresh-page cost the direct write avoids. Two are enough for two cores; a larger
# one (an unusually big in-memory result) is not kept.
_KEEP = 2
_KEEP_AT_MOST = 4 << 20
_GRAIN = 1 << 20
_spare: list[mmap.mmap] = []
_spare_lock = threading.Lock()


def write_new_file(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write all of ``data`` to ``fd``, a file just created and still empty."""
    if _DIRECT and _set_direct(fd, on=True):
        try:
            _write_direct(fd, data)
            return
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            # A device whose blocks are larger than BLOCK: start again through the cache.
            _set_direct(fd, on=False)
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
    _write_all(fd, memoryview(data))


def _set_direct(fd: int, *, on: bool) -> bool:
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, (flags | _DIRECT) if on else (flags & ~_DIRECT))
    except OSError:
        return False  # the filesystem has no direct I/O
    return True


def _write_direct(fd: int, data: bytes | bytearray | memoryview) -> None:
    size = len(data)
    padded = -(-size // BLOCK) * BLOCK
    buffer = _take(padded)
    try:
        with memoryview(buffer) as view:
            view[:size] = data
            view[size:padded] = bytes(padded - size)  # no stale bytes, even for a moment
            _write_all(fd, view[:padded])
    finally:
        _give_back(buffer)
    os.ftruncate(fd, size)


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view) :]


def _take(size: int) -> mmap.mmap:
    with _spare_lock:
        for i, buffer in enumerate(_spare):
            if len(buffer) >= size:
                return _spare.pop(i)
    return mmap.mmap(-1, -(-size // _GRAIN) * _GRAIN)  # page-aligned, hence block-aligned


def _give_back(buffer: mmap.mmap) -> None:
    with _spare_lock:
        if len(_spare) < _KEEP and len(buffer) <= _KEEP_AT_MOST:
            _spare.append(buffer)
            return
    buffer.close()


def start_writeback(fd: int) -> None:
    """Have the kernel write ``fd``'s dirty pages now rather than when they
    expire (30 s by default): clean by the time ``drop_cached`` comes, they can
    be given back. Does not wait for the disk."""
    if hasattr(os, "posix_fadvise"):
        # DONTNEED starts the writeback of dirty pages and drops only clean ones,
        # none of which this new file has yet. A hint: refused, nothing is lost.
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def drop_cached(paths: Iterable[str]) -> None:
    """Give back the clean cached pages of files no one is about to read. Best
    effort: a file gone or unreadable is skipped, and pages not yet on the disk
    stay until they are."""
    if not hasattr(os, "posix_fadvise"):
        return
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            continue
        try:
            with contextlib.suppress(OSError):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
