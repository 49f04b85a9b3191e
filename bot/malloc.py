"""How many glibc malloc arenas the bot's threads share.

glibc gives threads that allocate at the same moment arenas of their own, up to
eight per core, and memory freed in one arena is not reused by another: with the
image pool, libvips's workers, the SQLite thread and the file writes all handling
megabytes, the bot's peak RSS carried several arenas' worth of free memory.
bench, 50 jobs × 4 × 2048²: peak 251–264 MB with glibc's default, 225–228 MB
with two arenas, 200–206 MB with one, CPU per job 0.42–0.44 s in all three
(bench/RESULTS.md). An operator's own MALLOC_ARENA_MAX wins; elsewhere than
glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

ARENAS = 1
_M_ARENA_MAX = -8  # mallopt's parameter number, from glibc's malloc.h


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap the arenas; call before the process starts its threads. True if done."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl, macOS)
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(_M_ARENA_MAX, arenas))
    if not done:
        log.debug("mallopt(M_ARENA_MAX) refused")
    return done
