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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pyvips

from bot.errors import DeliveryError
from bot.images.codec import _load
from bot.images.formats import _EXT
from bot.models import ResultImage

if TYPE_CHECKING:
    from bot.config import Settings

log = logging.getLogger(__name__)


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
        final = self._path(job_id, index, image.mime)
        job_dir = final.parent
        try:
            created = _make_private_dir(job_dir)
        except FileNotFoundError:
            # First save, or the root was removed: the root only now, not every time.
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            created = _make_private_dir(job_dir)
        ext = final.suffix[1:]
        # Write then rename: a crash never leaves a half file under the final name.
        tmp = job_dir / f".{index}.{uuid.uuid4().hex}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(tmp, flags, 0o600)
        try:
            try:
                view = memoryview(image.data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        if not created:
            for other in set(_EXT.values()) - {ext}:
                # A re-save in another format must not leave the old one for load() to find.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(job_dir / f"{index}.{other}")
        return final

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
