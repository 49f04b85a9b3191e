"""Owner-only maintenance: registering the slash commands without a restart."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands
from discord.ext import commands

if TYPE_CHECKING:
    from bot.app import ImageBot


class Admin(commands.Cog):
    def __init__(self, bot: ImageBot) -> None:
        self.bot = bot

    @app_commands.command(name="sync", description="Register the bot's commands (owner only)")
    @app_commands.default_permissions(administrator=True)
    async def sync(
        self,
        interaction: discord.Interaction[ImageBot],
        scope: Literal["global", "here"] = "here",
    ) -> None:
        if not await self.bot.is_owner(interaction.user):
            raise app_commands.CheckFailure("Only the bot's owner can sync commands.")
        await interaction.response.defer(ephemeral=True, thinking=True)
        guild_id = interaction.guild_id if scope == "here" else None
        count = await self.bot.sync_commands(guild_id)
        await interaction.followup.send(
            f"Synced {count} commands {'here' if guild_id else 'globally'}.", ephemeral=True
        )


async def setup(bot: ImageBot) -> None:
    await bot.add_cog(Admin(bot))
