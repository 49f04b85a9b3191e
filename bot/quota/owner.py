"""Which process holds a reservation, and whether that process still runs.

Rule for start-up and the periodic sweep: a reservation is refunded when it is
older than ``reservation_timeout``, or when its owner is *known* to be gone: the
owner ran on this machine since its last boot (same host name and boot id) and
its pid no longer runs, is a zombie, or now belongs to a process started at a
different time (pid reuse). When in doubt (another machine, no /proc, rows from
before owners were recorded) only the deadline applies, so a live process that
shares the file, such as the bot while an operator runs the CLI, never loses a
reservation it still holds.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from bot.quota.models import Owner


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None


def _stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) from /proc, if there is one."""
    text = _read(f"/proc/{pid}/stat")
    if not text:
        return None
    # The command name (field 2) may hold spaces and parentheses; fields after
    # the last ")" are plain.
    fields = text[text.rfind(")") + 2 :].split()
    if len(fields) < 20:
        return None
    return fields[0], fields[19]


def current_owner() -> Owner:
    """This process. Blocking reads of /proc: call from a thread."""
    boot_id = _read("/proc/sys/kernel/random/boot_id") or "-"
    pid = os.getpid()
    stat = _stat(pid)
    return Owner(
        host=f"{socket.gethostname()}/{boot_id}",
        pid=pid,
        started=None if stat is None else stat[1],
    )


def owner_gone(owner: Owner, me: Owner) -> bool:
    """True only when the owner process is known not to run. Blocking: use a thread."""
    if owner.pid is None or owner.host is None or owner.host != me.host:
        return False
    if owner.pid == me.pid and owner.started == me.started:
        return False
    try:
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # it exists, under another user
    stat = _stat(owner.pid)
    if stat is None:
        return False
    state, started = stat
    if state == "Z":
        return True
    return owner.started is not None and started != owner.started
