"""Limits on full-size picks (U1-U4): free for the member, not for the bot.

A pick decodes and re-encodes an original of up to 64 MP, so it takes an image
place like a job (``Pipeline.image_slot``); this module adds what a job gets
from the ledger and a pick, being free, does not: one at a time per member and
a cooldown between them (``PICK_COOLDOWN_SECONDS``), counted per process.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator

from bot.errors import UserError


class PickLimiter:
    def __init__(self, cooldown: Callable[[], float], clock: Callable[[], float] = time.monotonic):
        # A callable, so a changed setting applies without a restart of the cog.
        self._cooldown = cooldown
        self._clock = clock
        self._busy: set[str] = set()
        self._last: dict[str, float] = {}

    @contextlib.contextmanager
    def hold(self, member: str) -> Iterator[None]:
        """Take the member's pick place, or raise UserError saying why not."""
        if member in self._busy:
            raise UserError("Your previous full-size image is still on its way; wait for it first.")
        now = self._clock()
        wait = self._last.get(member, -math.inf) + self._cooldown() - now
        if wait > 0:
            raise UserError(f"Please wait {math.ceil(wait)} s before another full-size image.")
        self._forget_before(now)
        self._busy.add(member)
        self._last[member] = now
        try:
            yield
        finally:
            self._busy.discard(member)

    def _forget_before(self, now: float) -> None:
        # Keeps the table to the members of the last cooldown, not everyone ever.
        cutoff = now - self._cooldown()
        for member in [m for m, at in self._last.items() if at <= cutoff]:
            del self._last[member]
