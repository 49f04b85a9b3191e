"""The Discord side of recovery (``bot.recovery``): a job's channel, and whether
its result is already there. Loaded as an extension so that ``bot.app`` finds
it without importing anything from ``cogs``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING

import discord

from bot.errors import failure_text
from bot.jobs import Delivery
from bot.jobstore import JobRecord
from cogs._delivery import DiscordDelivery, mention_text

if TYPE_CHECKING:
    from bot.app import ImageBot

log = logging.getLogger("bot.recovery")
HISTORY_LIMIT = 50
# How far the bot's clock and Discord's may differ, for "since the job began".
CLOCK_SLACK = timedelta(minutes=1)


class DiscordRecoveryFront:
    def __init__(self, bot: ImageBot) -> None:
        self.bot = bot

    def delivery_for(self, record: JobRecord) -> Delivery:
        channel_id = int(record.channel_id) if record.channel_id else None
        return DiscordDelivery(
            self.bot, None, channel_id=channel_id, private=record.request.private
        )

    async def already_posted(self, record: JobRecord) -> bool:
        """Whether the result message went out before the process ended (its
        footer says "Job <id>"). An ephemeral answer cannot be read back; one
        sent by DM can."""
        footer = f"Job {record.id}"
        return await self._in_history(
            record,
            lambda message: any((e.footer.text or "") == footer for e in message.embeds),
            dm=record.request.private,
        )

    async def already_told(self, record: JobRecord, words: str) -> bool:
        """Whether the failure notice went out before the process ended: as the
        answer to the job's interaction, or as a message for its member since
        the job began."""
        if record.request.private:
            return False  # an ephemeral answer cannot be read back
        notice = failure_text(words)
        for_member = mention_text(record.user_id, notice)
        since = record.created_at - CLOCK_SLACK
        me = self.bot.user

        def told(message: discord.Message) -> bool:
            if me is None or message.author.id != me.id:
                return False
            answered = message.interaction_metadata
            if answered is not None and str(answered.id) == record.idempotency_key:
                return message.content == notice
            return message.content == for_member and message.created_at >= since

        return await self._in_history(record, told, dm=False)

    async def _in_history(
        self, record: JobRecord, matches: Callable[[discord.Message], bool], *, dm: bool
    ) -> bool:
        """Whether a recent message in the job's channel (or the member's DMs) matches."""
        channel: discord.abc.Messageable
        try:
            if dm:
                channel = await self.bot.create_dm(discord.Object(id=int(record.user_id)))
            elif record.channel_id is None:
                return False
            else:
                channel = self.bot.get_partial_messageable(int(record.channel_id))
            async for message in channel.history(limit=HISTORY_LIMIT):
                if matches(message):
                    return True
        except discord.HTTPException:
            log.warning("job %s: could not read channel history", record.id)
        return False


async def setup(bot: ImageBot) -> None:
    bot.recovery_front = DiscordRecoveryFront(bot)
