"""The bot's private files: DATA_DIR and the SQLite database, owner-only."""

from __future__ import annotations

import os
from pathlib import Path

from bot.config import Settings


def prepare_data_dir(settings: Settings) -> None:
    """Create DATA_DIR (0700) and the SQLite file (0600) before anything opens them.

    SQLite creates its -wal and -shm files with the main file's permissions, so
    creating the main file privately keeps every file of the ledger private.
    Blocking; call it at start-up, before the event loop is busy.
    """
    _private_dir(settings.data_dir)
    if settings.database_url is None or settings.database_url.startswith("sqlite:///"):
        path = settings.sqlite_path
        _private_dir(path.parent)
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)
        os.chmod(path, 0o600)


def _private_dir(path: Path) -> None:
    existed = path.exists()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not existed:
        os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask
