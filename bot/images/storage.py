"""Stored originals on disk, and their retention."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pyvips

from bot.errors import DeliveryError
from bot.images.codec import _load
from bot.images.formats import _EXT
from bot.images.uncached import drop_cached, start_writeback, write_new_file
from bot.models import ResultImage

if TYPE_CHECKING:
    from bot.config import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")


# A job id is one safe path component: no separators, no leading dot (no "..").
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def _make_private_dir(path: Path) -> bool:
    """Create ``path`` readable by the bot only; False if it already existed."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return False
    os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask
    return True


def _check_key(job_id: str, index: int) -> None:
    if not _JOB_ID.fullmatch(job_id):
        raise ValueError(f"unsafe job id {job_id!r}")
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"bad image index {index!r}")


class ImageStore:
    """Originals under ``root/<job_id>/<index>.<ext>``, readable only by the bot."""

    def __init__(self, root: Path, *, retention_days: int) -> None:
        if retention_days < 0:
            raise ValueError("retention_days must be 0 or more")
        self.root = Path(root)
        self.retention_days = retention_days

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageStore:
        return cls(settings.images_dir, retention_days=settings.image_retention_days)

    async def save(self, job_id: str, index: int, image: ResultImage) -> ResultImage:
        """Write the original and return it with ``path`` set; with retention 0 keep
        nothing. Raises DeliveryError when the disk refuses."""
        _check_key(job_id, index)
        if self.retention_days == 0:
            return image
        try:
            path = await asyncio.to_thread(self._write, job_id, index, image)
        except OSError as exc:
            raise DeliveryError("The result could not be saved on the bot's disk.") from exc
        return dataclasses.replace(image, path=str(path))

    def path_for(self, job_id: str, index: int, image: ResultImage) -> Path | None:
        """Where ``save`` keeps this original; None when nothing is kept."""
        _check_key(job_id, index)
        if self.retention_days == 0:
            return None
        return self._path(job_id, index, image.mime)

    def _path(self, job_id: str, index: int, mime: str) -> Path:
        return self.root / job_id / f"{index}.{_EXT.get(mime, 'bin')}"

    def _write(self, job_id: str, index: int, image: ResultImage) -> Path:
        if image.data is None:
            raise ValueError("an image without its bytes is kept already")
        # Write then rename: a crash never leaves a half file under the final name.
        fd, tmp, created = self._open_temp(job_id, index)
        try:
            try:
                write_new_file(fd, image.data)
            finally:
                os.close(fd)
            return self._put_in_place(tmp, job_id, index, image.mime, created=created)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _open_temp(self, job_id: str, index: int) -> tuple[int, Path, bool]:
        """A new hidden file in the job's folder: (descriptor, path, whether the
        folder was made just now)."""
        job_dir = self.root / job_id
        try:
            created = _make_private_dir(job_dir)
        except FileNotFoundError:
            # First save, or the root was removed: the root only now, not every time.
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            created = _make_private_dir(job_dir)
        tmp = job_dir / f".{index}.{uuid.uuid4().hex}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        return os.open(tmp, flags, 0o600), tmp, created

    def _put_in_place(
        self, tmp: Path, job_id: str, index: int, mime: str, *, created: bool
    ) -> Path:
        """``tmp`` under the original's final name (``_path``)."""
        final = self._path(job_id, index, mime)
        os.replace(tmp, final)
        if not created:
            ext = final.suffix[1:]
            for other in set(_EXT.values()) - {ext}:
                # A re-save in another format must not leave the old one for load() to find.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(final.parent / f"{index}.{other}")
        return final

    def release_cache(self, images: Iterable[ResultImage]) -> None:
        """The page cache of originals kept on disk and done with (delivered, or
        in no message), given back (``bot.images.uncached``). Not awaited:
        nothing waits on a hint to the kernel, and a job that has ended must
        not be held up by one."""
        paths = [image.path for image in images if image.data is None and image.path]
        if paths:
            # A loop whose executor is already shut down (the very end of a
            # stop) leaves the pages to the kernel.
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().run_in_executor(None, drop_cached, paths)

    def incoming(self, job_id: str, index: int) -> Incoming:
        """A file in the job's folder a result is downloaded into (``Incoming``)."""
        _check_key(job_id, index)
        if self.retention_days == 0:
            raise ValueError("nothing is kept with retention 0")
        return Incoming(self, job_id, index)

    async def load(self, job_id: str, index: int) -> ResultImage | None:
        """The stored original, or None if it was never kept or has been swept."""
        _check_key(job_id, index)
        return await asyncio.to_thread(self._read, job_id, index)

    def _read(self, job_id: str, index: int) -> ResultImage | None:
        for mime, ext in _EXT.items():
            path = self.root / job_id / f"{index}.{ext}"
            try:
                data = path.read_bytes()
            except (FileNotFoundError, NotADirectoryError):
                continue
            try:
                # Header only: the bytes were validated before they were saved.
                im = _load(data, mime)
                width, height = im.width, im.height
            except pyvips.Error:  # a damaged file reads as missing
                log.warning("stored image %s is unreadable", path)
                return None
            return ResultImage(data=data, mime=mime, width=width, height=height, path=str(path))
        return None

    async def sweep(self, now: datetime | None = None) -> int:
        """Delete job directories last written more than ``retention_days`` ago."""
        now = now or datetime.now(UTC)
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        cutoff = (now - timedelta(days=self.retention_days)).timestamp()
        return await asyncio.to_thread(self._sweep, cutoff)

    def _sweep(self, cutoff: float) -> int:
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return 0
        removed = 0
        for entry in entries:
            # Only what save() could have made: a misconfigured root loses nothing else.
            if not _JOB_ID.fullmatch(entry.name) or not entry.is_dir(follow_symlinks=False):
                continue
            try:
                newest = max(
                    [entry.stat(follow_symlinks=False).st_mtime]
                    + [f.stat(follow_symlinks=False).st_mtime for f in os.scandir(entry.path)]
                )
                if newest < cutoff:
                    shutil.rmtree(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue  # swept concurrently
        return removed


class DiskRefused(Exception):
    """The disk refused a result being downloaded into the store."""


class Incoming:
    """A result downloaded straight into the store: pieces are written as they
    arrive (``write``, the sink of ``download_into``), so a 7 MB original never
    sits whole in memory before it is checked and kept. ``finish`` closes the
    file, ``install`` gives it its final name once its format is known (rename:
    a crash never leaves a half file under it), ``discard`` removes it.
    Disk errors raise DiskRefused.

    A result of at most ``IN_MEMORY_BYTES`` stays in memory instead (``finish``
    returns its bytes): writing it, reading it back to check it and again to
    upload it cost more CPU than its memory is worth (bench: 1.7 MB results)."""

    # Pieces of a few KiB gathered into one write per thread hop.
    _FLUSH_BYTES = 1 << 20
    IN_MEMORY_BYTES = 2 << 20

    def __init__(self, store: ImageStore, job_id: str, index: int) -> None:
        self._store = store
        self.job_id = job_id
        self.index = index
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._fd: int | None = None
        self._tmp: Path | None = None
        self._created = False
        self._busy: asyncio.Future[Any] | None = None
        self._spilling = False  # to disk, once the result is known to be large

    def expect(self, size: int | None) -> None:
        """The size announced (Content-Length): a large result goes to disk from
        its first piece, not after ``IN_MEMORY_BYTES`` of it were held."""
        if size is not None and size > self.IN_MEMORY_BYTES:
            self._spilling = True

    async def write(self, chunk: bytes) -> None:
        self._pending.append(chunk)
        self._pending_bytes += len(chunk)
        if not self._spilling and self._pending_bytes > self.IN_MEMORY_BYTES:
            self._spilling = True
        if self._spilling and self._pending_bytes >= self._FLUSH_BYTES:
            await self._flush()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        # One thread call at a time, tracked: a cancelled caller leaves it running,
        # and ``discard`` must not close the descriptor under it.
        work = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        self._busy = work
        try:
            return await asyncio.shield(work)
        except OSError as exc:
            raise DiskRefused(str(exc)) from exc

    async def _flush(self) -> None:
        pieces, self._pending, self._pending_bytes = self._pending, [], 0
        await self._run(self._write, pieces)

    def _write(self, pieces: list[bytes]) -> None:
        if self._fd is None:
            self._fd, self._tmp, self._created = self._store._open_temp(self.job_id, self.index)
        for piece in pieces:
            view = memoryview(piece)
            while view:
                view = view[os.write(self._fd, view) :]

    async def finish(self) -> Path | bytes:
        """Write what is left and close the file: its (temporary) path; or the
        result's bytes when it was small enough to stay in memory."""
        pieces, self._pending, self._pending_bytes = self._pending, [], 0
        if not self._spilling:
            return b"".join(pieces)
        await self._run(self._close, pieces)
        assert self._tmp is not None
        return self._tmp

    def _close(self, pieces: list[bytes]) -> None:
        self._write(pieces)  # opens the file for an empty body too: the checks refuse it
        assert self._fd is not None
        fd, self._fd = self._fd, None
        try:
            start_writeback(fd)
        finally:
            os.close(fd)

    async def install(self, mime: str) -> Path:
        """The finished file under its final name, as ``ImageStore.save`` names it."""
        return await self._run(self._install, mime)

    def _install(self, mime: str) -> Path:
        assert self._tmp is not None and self._fd is None
        final = self._store._put_in_place(
            self._tmp, self.job_id, self.index, mime, created=self._created
        )
        self._tmp = None
        return final

    def discard(self) -> None:
        """Close and remove the file, if any, now or once the thread call in
        progress ends. Synchronous (two system calls, no data): it runs on error
        paths, cancellation included, where awaiting could itself be cancelled."""
        if self._busy is not None and not self._busy.done():
            self._busy.add_done_callback(lambda _: self.discard())
            return
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        tmp, self._tmp = self._tmp, None
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
