"""Finishing the jobs of a process that is gone: resume, settle, or refund and say why.

A bot process runs this for the jobs it adopts (``bot.lease``): at start-up
and whenever a lease runs out while it runs. Interaction tokens are never
stored, so whatever is posted goes to the job's channel, mentioning the
requester. Nothing here may stop the process: a job that cannot be handled is
logged, and a notice Discord refuses (a deleted channel, lost permissions)
does not keep the job from being settled or refunded.

The front end (the Discord cog) supplies where a job's messages go and whether
its result was already posted, so this module knows nothing of Discord.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol

from bot.errors import BotError, JobNotResumable, UserError
from bot.jobs import Delivery, Job, JobOutcome, Pipeline
from bot.jobstore import JobRecord, JobStore, job_of
from bot.models import OutputRef
from bot.quota.base import Ledger, Reservation

log = logging.getLogger("bot.recovery")

RESTARTED = (
    "The bot restarted before your image was made, so nothing was charged. Please try again."
)


class RecoveryFront(Protocol):
    def delivery_for(self, record: JobRecord) -> Delivery:
        """Where the job's result or notice goes (its channel)."""
        ...

    async def already_posted(self, record: JobRecord) -> bool:
        """Whether the job's result reached its channel before the process died."""
        ...

    async def already_told(self, record: JobRecord, words: str) -> bool:
        """Whether the job's member was told ``words`` in its channel before the
        process died (False where that cannot be read back: a private answer)."""
        ...


StartJob = Callable[[str, Coroutine[Any, Any, JobOutcome]], object]


class Recovery:
    def __init__(
        self,
        jobs: JobStore,
        ledger: Ledger,
        pipeline: Pipeline,
        front: RecoveryFront,
        start: StartJob,
    ) -> None:
        self.jobs = jobs
        self.ledger = ledger
        self.pipeline = pipeline
        self.front = front
        self.start = start

    async def finish(self, records: Sequence[JobRecord]) -> None:
        """Handle each adopted job; resumed ones run on as jobs of this process."""
        if not records:
            return
        reserved = [r.reservation.id for r in records if r.reservation is not None]
        try:
            states = await self.ledger.states(reserved) if reserved else {}
        except Exception:
            log.exception("could not read the reservations of %d adopted job(s)", len(records))
            states = {}
        for record in records:
            try:
                await self._finish_one(record, states)
            except Exception:
                log.exception("job %s: recovery failed; it stays unfinished", record.id)

    async def _held(
        self, record: JobRecord, states: dict[str, str]
    ) -> tuple[Reservation | None, str | None]:
        """The reservation the job still holds, and what became of it otherwise."""
        if record.reservation is None:
            # Killed between reserving and journaling the reservation.
            held = await self.ledger.held_for(record.id)
            return held, None if held is None else "reserved"
        state = states.get(record.reservation.id)
        return (record.reservation if state == "reserved" else None), state

    async def _finish_one(self, record: JobRecord, states: dict[str, str]) -> None:
        job = job_of(record)
        delivery = self.front.delivery_for(record)
        reservation, state = await self._held(record, states)
        if state == "settled":
            await self.jobs.record(job, "delivered")
            return
        if record.status in ("failing", "refusing"):
            # It had ended without images; its member may not have heard why.
            log.info("job %s ended before its process did; telling the requester", job.id)
            if reservation is not None:  # its refund failed too
                await self.ledger.refund(reservation, "ended before its process did")
            words = record.error or RESTARTED
            if record.status == "refusing":
                await _tell(delivery, job, UserError(words))
            elif await self.front.already_told(record, words):
                log.info("job %s: its requester was told already", job.id)
            else:
                await _tell(delivery, job, BotError(words))
            await self.jobs.record(job, "failed")
            return
        posted = record.status == "posted" or (
            record.status == "delivering" and await self.front.already_posted(record)
        )
        if posted:
            log.info("job %s was posted before its process ended; settling", job.id)
            if reservation is not None:
                charged = record.charged if record.charged is not None else reservation.cost
                await self.ledger.settle(reservation, min(charged, reservation.cost))
            await self.jobs.record(job, "delivered")
            return
        if reservation is None:
            # Never reserved, or its hold already ended: nothing to charge, but
            # the member was left with a "thinking" message and deserves a word.
            log.info("job %s: nothing held; telling the requester", job.id)
            # The words on record first, as the pipeline does (Pipeline._end_unmade).
            await self.jobs.record(job, "failing", error=RESTARTED)
            await _tell(delivery, job, JobNotResumable(RESTARTED, provider=job.provider))
            await self.jobs.record(job, "failed", error="the bot restarted")
            return
        log.info("job %s: resuming from %s", job.id, record.status)
        self.start(
            job.id,
            self.pipeline.resume(
                job,
                reservation,
                delivery,
                provider_job_id=record.provider_job_id,
                fetch_url=record.provider_fetch_url,
                outputs=[OutputRef(url=url) for url in record.outputs],
            ),
        )


async def _tell(delivery: Delivery, job: Job, error: BotError) -> None:
    # A notice Discord refuses (403, 404) is logged; the job is ended all the same.
    try:
        await delivery.fail(job, error)
    except Exception:
        log.exception("job %s: could not tell the requester", job.id)
