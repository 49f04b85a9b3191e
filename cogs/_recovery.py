"""Finishing what a previous process left: resume, deliver, or refund and say why.

Runs once at start-up, before the gateway connects. Interaction tokens are never
stored, so everything recovered is posted in the job's channel, mentioning the
requester.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord

from bot.errors import JobNotResumable
from bot.jobstore import JobRecord, job_of
from bot.models import OutputRef
from bot.quota.base import Reservation
from cogs._delivery import DiscordDelivery

if TYPE_CHECKING:
    from bot.app import ImageBot

log = logging.getLogger("bot.recovery")
HISTORY_LIMIT = 50


async def recover_jobs(bot: ImageBot) -> None:
    records = await bot.jobs.unfinished()
    if not records:
        return
    adopted = await _adopt(bot, records)
    reserved_ids = [r.reservation.id for r in records if r.reservation is not None]
    states = await bot.runtime.ledger.states(reserved_ids) if reserved_ids else {}
    for record in records:
        job = job_of(record)
        channel_id = int(record.channel_id) if record.channel_id else None
        delivery = DiscordDelivery(bot, None, channel_id=channel_id)
        reservation = adopted.get(record.id)
        if reservation is None and record.reservation is not None:
            state = states.get(record.reservation.id)
            if state == "reserved":
                continue  # another live process holds it and is finishing the job
            if state == "settled":
                await bot.jobs.record(job, "delivered")
                continue
        if reservation is None:
            # Never reserved, or its hold already ended: nothing to charge, but the
            # member was left with a "thinking" message and deserves a word.
            log.info("job %s: nothing held; telling the requester", job.id)
            await bot.jobs.record(job, "failed", error="the bot restarted")
            await delivery.fail(
                job,
                JobNotResumable(
                    "The bot restarted before your image was made, so nothing was charged. "
                    "Please try again.",
                    provider=job.provider,
                ),
            )
            continue
        if record.status == "delivering" and await _already_posted(bot, record):
            log.info("job %s was delivered before the restart; settling", job.id)
            await bot.runtime.ledger.settle(reservation, reservation.cost)
            await bot.jobs.record(job, "delivered")
            continue
        log.info("job %s: resuming from %s", job.id, record.status)
        bot.spawn(
            bot.run_job(
                bot.runtime.pipeline.resume(
                    job,
                    reservation,
                    delivery,
                    provider_job_id=record.provider_job_id,
                    fetch_url=record.provider_fetch_url,
                    outputs=[OutputRef(url=url) for url in record.outputs],
                )
            ),
            name=f"resume-{job.id}",
        )


async def _adopt(bot: ImageBot, records: list[JobRecord]) -> dict[str, Reservation]:
    """The recorded reservations this process now holds, by job id."""
    wanted = {r.id: r.reservation for r in records if r.reservation is not None}
    if not wanted:
        return {}
    held = await bot.runtime.ledger.adopt([r.id for r in wanted.values() if r is not None])
    return {job_id: held[r.id] for job_id, r in wanted.items() if r is not None and r.id in held}


async def _already_posted(bot: ImageBot, record: JobRecord) -> bool:
    """Whether the result message went out just before the crash (footer "Job <id>")."""
    if record.channel_id is None:
        return False
    channel = bot.get_partial_messageable(int(record.channel_id))
    try:
        async for message in channel.history(limit=HISTORY_LIMIT):
            if any((embed.footer.text or "") == f"Job {record.id}" for embed in message.embeds):
                return True
    except discord.HTTPException:
        log.warning("job %s: could not read channel history", record.id)
    return False
