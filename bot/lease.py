"""Which running process owns which jobs: instance leases in the database.

Each bot process registers an instance (a random id) and renews its lease every
``LEASE_INTERVAL`` seconds; the lease runs out ``LEASE_TIMEOUT`` seconds after
the last renewal. Jobs and their reservations carry the id of the instance that
works on them. When a process dies (SIGKILL, a lost machine, a recreated
container with a new host name) its lease runs out and the next live process to
look (at start-up, then at every renewal) adopts its unfinished jobs, exactly
one adopter per job, and resumes or refunds each with a word to its member. A
clean stop releases the lease at once, so a restart adopts without waiting.

Nothing here asks which host or pid an owner had: those are recorded only for
operators reading the table. A process whose renewal fails finds its lease
taken over (it stalled past the timeout and its jobs were adopted): it stops
working on them and carries on under a new lease.

Times are this machine's clock in epoch seconds; processes sharing PostgreSQL
from several machines need clocks kept in step (NTP) to well under the timeout.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from typing import Protocol

from bot.config import Settings
from bot.jobstore import JobRecord, JobStore

log = logging.getLogger("bot.lease")


class Holder(Protocol):
    """Something that stamps new work with the current instance (jobs, reservations)."""

    instance: str | None


class Lease:
    def __init__(self, jobs: JobStore, settings: Settings, holders: tuple[Holder, ...]) -> None:
        self._jobs = jobs
        self._timeout = settings.lease_timeout
        self._holders = (jobs, *holders)
        self.id: str | None = None
        self._renewed = 0.0  # monotonic time of the last renewal

    async def acquire(self) -> str:
        """Register a fresh instance and stamp everything new with it."""
        instance = uuid.uuid4().hex
        now = time.time()
        await self._jobs.register_instance(
            instance, socket.gethostname(), os.getpid(), now, now + self._timeout
        )
        self._renewed = time.monotonic()
        self.id = instance
        for holder in self._holders:
            holder.instance = instance
        log.info("instance %s holds a lease of %g s", instance, self._timeout)
        return instance

    async def renew(self) -> bool:
        """Extend the lease; False when it was taken over meanwhile."""
        assert self.id is not None
        # From the time the write was sent: the lease must not be counted as
        # longer than the database records it.
        started = time.monotonic()
        now = time.time()
        if await self._jobs.renew_instance(self.id, now, now + self._timeout):
            self._renewed = started
            return True
        log.error("instance %s: lease taken over; its jobs now belong to another process", self.id)
        return False

    def surely_held(self) -> bool:
        """Whether the lease cannot have run out yet (renewals may be failing)."""
        return time.monotonic() - self._renewed < self._timeout

    async def adopt(self) -> list[JobRecord]:
        """The unfinished jobs of gone instances, now owned by this one."""
        assert self.id is not None
        records = await self._jobs.adopt(self.id, time.time())
        if records:
            log.info("instance %s adopted %d job(s) of gone processes", self.id, len(records))
        return records

    async def release(self) -> None:
        if self.id is not None:
            await self._jobs.release_instance(self.id, time.time())
            log.info("instance %s released its lease", self.id)
