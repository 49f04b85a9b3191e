"""/help: generated from this bot's commands, providers, prices and the member's credits."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.helptext import Section, listing_section, provider_section, shapes_section
from bot.prompt_params import describe
from bot.quota.service import discord_time
from cogs._service import is_moderator, requester_of

if TYPE_CHECKING:
    from bot.app import ImageBot

NO_MENTIONS = discord.AllowedMentions.none()
FIELD_LIMIT = 1024


def _field(lines: tuple[str, ...] | list[str]) -> str:
    """Whole lines up to Discord's field limit."""
    kept: list[str] = []
    size = 0
    for line in lines:
        if size + len(line) + 1 > FIELD_LIMIT - 2:
            kept.append("…")
            break
        kept.append(line)
        size += len(line) + 1
    return "\n".join(kept)


class Help(commands.Cog, name="Help"):
    def __init__(self, bot: ImageBot) -> None:
        self.bot = bot

    @app_commands.command(name="help", description="What this bot can do, its prices, your credits")
    @app_commands.guild_only()
    async def help_command(self, interaction: discord.Interaction[ImageBot]) -> None:
        embed = discord.Embed(
            title="Making images here",
            description=(
                "Every image is paid from this server's credits; nothing is charged for "
                "images that fail. Buttons under a result re-roll it, vary it (V1–V4), post "
                "an image at full size (U1–U4), show how it was made (Info) or delete it."
            ),
            colour=discord.Colour.blurple(),
        )
        sections = [
            self._commands(is_moderator(interaction)),
            provider_section(self.bot.runtime.providers, self.bot.settings.costs),
            shapes_section(self.bot.runtime.providers),
            listing_section(
                "Parameters (at the end of a prompt)",
                [(f"--{spec.name}", f"{spec.description} ({spec.values})") for spec in describe()],
                "Set options with the command's fields.",
            ),
            listing_section(
                "Styles (`style` option or --style)",
                [
                    (style.name, style.summary())
                    for style in await self.bot.styles.list(str(interaction.guild_id))
                ],
                "No styles here yet.",
            ),
            await self._credits(interaction),
        ]
        for section in sections:
            embed.add_field(name=section.title, value=_field(section.lines), inline=False)
        await interaction.response.send_message(
            embed=embed, ephemeral=True, allowed_mentions=NO_MENTIONS
        )

    def _commands(self, moderator: bool) -> Section:
        lines = []
        for command in self.bot.tree.get_commands():
            if isinstance(command, app_commands.ContextMenu):
                lines.append(f"“{command.name}”: message menu (right-click a message → Apps)")
                continue
            permissions = command.default_permissions
            if permissions is not None and permissions.manage_guild and not moderator:
                continue
            if isinstance(command, app_commands.Group):
                subcommands = ", ".join(
                    sub.name
                    for sub in command.walk_commands()
                    if isinstance(sub, app_commands.Command)
                )
                lines.append(f"`/{command.name}` {subcommands}: {command.description}")
            else:
                lines.append(f"`/{command.name}`: {command.description}")
        return Section("Commands", tuple(sorted(lines, key=lambda line: line.lstrip("`“"))))

    async def _credits(self, interaction: discord.Interaction[ImageBot]) -> Section:
        requester = requester_of(interaction)
        balances = await self.bot.runtime.ledger.balance(  # type: ignore[attr-defined]
            requester.guild_id, requester.user_id, requester.roles
        )
        lines = []
        user = balances.user
        if user is not None:
            if user.limit is None:
                lines.append("You: unlimited")
            else:
                lines.append(
                    f"You: **{user.remaining}** of {user.limit} left, "
                    f"resets {discord_time(user.resets_at)}"
                )
        pool = balances.guild
        if pool.limit is None:
            lines.append("Server pool: unlimited")
        else:
            lines.append(f"Server pool: **{pool.remaining}** of {pool.limit} left")
        return Section("Your credits", tuple(lines))


async def setup(bot: ImageBot) -> None:
    await bot.add_cog(Help(bot))
