"""The Discord side of recovery (``bot.recovery``): a job's channel, and whether
its result is already there. Loaded as an extension so that ``bot.app`` finds
it without importing anything from ``cogs``."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord

from bot.jobs import Delivery
from bot.jobstore import JobRecord
from cogs._delivery import DiscordDelivery

if TYPE_CHECKING:
    from bot.app import ImageBot

log = logging.getLogger("bot.recovery")
HISTORY_LIMIT = 50


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
        footer says "Job <id>")."""
        channel: discord.abc.Messageable
        try:
            if record.request.private:
                # An ephemeral answer cannot be read back; one sent by DM can.
                channel = await self.bot.create_dm(discord.Object(id=int(record.user_id)))
            elif record.channel_id is None:
                return False
            else:
                channel = self.bot.get_partial_messageable(int(record.channel_id))
            async for message in channel.history(limit=HISTORY_LIMIT):
                if any((embed.footer.text or "") == f"Job {record.id}" for embed in message.embeds):
                    return True
        except discord.HTTPException:
            log.warning("job %s: could not read channel history", record.id)
        return False


async def setup(bot: ImageBot) -> None:
    bot.recovery_front = DiscordRecoveryFront(bot)
