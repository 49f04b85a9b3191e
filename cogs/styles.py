"""/style: everyone lists the styles; moderators add, edit and remove the guild's own.

Thin over ``bot.styles``. As with /quota, ``list`` shares the group with the
moderator commands, so those are checked by the bot itself (Manage Server)
whatever a guild's integration settings say.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.app_commands import Choice, Range
from discord.ext import commands

from bot.config import PROVIDER_NAMES
from bot.errors import UserError
from bot.prompt_params import SIZES
from bot.providers.base import ASPECT_RATIOS
from bot.styles import Style
from cogs.quota import moderator_only

if TYPE_CHECKING:
    from bot.app import ImageBot

NO_MENTIONS = discord.AllowedMentions.none()
ASPECT_CHOICES = [Choice(name=ratio, value=ratio) for ratio in ASPECT_RATIOS]
SIZE_CHOICES = [Choice(name=size, value=size) for size in SIZES]
PROVIDER_CHOICES = [Choice(name=name, value=name) for name in PROVIDER_NAMES]
MAX_EMBED_DESCRIPTION = 4000


def _optional(value: str | None) -> str | None:
    """``-`` clears an optional field in /style edit (Discord cannot send empty text)."""
    if value is None:
        return None
    return "" if value.strip() == "-" else value


class Styles(commands.GroupCog, group_name="style", group_description="Saved image styles"):
    def __init__(self, bot: ImageBot) -> None:
        self.bot = bot

    def _guild(self, interaction: discord.Interaction[Any]) -> str:
        if interaction.guild_id is None:
            raise UserError("Styles belong to servers; use this in a server.")
        return str(interaction.guild_id)

    async def _reply(self, interaction: discord.Interaction[Any], content: str) -> None:
        await interaction.response.send_message(
            content, ephemeral=True, allowed_mentions=NO_MENTIONS
        )

    async def guild_style_autocomplete(
        self, interaction: discord.Interaction[Any], current: str
    ) -> list[Choice[str]]:
        wanted = current.strip().lower()
        styles = await self.bot.styles.list(str(interaction.guild_id))
        return [
            Choice(name=f"{s.name} · {s.summary()}"[:100], value=s.name)
            for s in styles
            if not s.builtin and wanted in s.name
        ][:25]

    @app_commands.command(name="list", description="The styles you can use here")
    @app_commands.guild_only()
    async def list_styles(self, interaction: discord.Interaction[ImageBot]) -> None:
        styles = await self.bot.styles.list(self._guild(interaction))
        lines = []
        for style in styles:
            kind = "built-in" if style.builtin else "this server"
            line = f"**{style.name}** ({kind}): {discord.utils.escape_markdown(style.summary())}"
            lines.append(line[:300])
        embeds = []
        page: list[str] = []
        for line in lines:
            if sum(len(x) + 1 for x in page) + len(line) > MAX_EMBED_DESCRIPTION:
                embeds.append(page)
                page = []
            page.append(line)
        embeds.append(page)
        await interaction.response.send_message(
            "Use one with the `style` option or `--style NAME` in a prompt.",
            embeds=[
                discord.Embed(
                    title="Styles" if n == 0 else None,
                    description="\n".join(page),
                    colour=discord.Colour.blurple(),
                )
                for n, page in enumerate(embeds[:10])
            ],
            ephemeral=True,
            allowed_mentions=NO_MENTIONS,
        )

    @app_commands.command(name="add", description="Add a style to this server (moderators)")
    @app_commands.describe(
        name="Short name: lower-case letters, digits, - or _",
        template="The prompt with {prompt} where the member's prompt goes",
        negative_prompt="What to leave out (added to the member's)",
        aspect_ratio="Default shape",
        size="Default size tier",
        provider="Default image service",
        model="Default ModelsLab model",
        description="One line shown in lists",
    )
    @app_commands.choices(aspect_ratio=ASPECT_CHOICES, size=SIZE_CHOICES, provider=PROVIDER_CHOICES)
    @moderator_only()
    async def add(
        self,
        interaction: discord.Interaction[ImageBot],
        name: Range[str, 1, 32],
        template: Range[str, 1, 1000],
        negative_prompt: Range[str, 1, 1000] | None = None,
        aspect_ratio: str | None = None,
        size: str | None = None,
        provider: str | None = None,
        model: Range[str, 1, 100] | None = None,
        description: Range[str, 1, 100] | None = None,
    ) -> None:
        style = await self.bot.styles.add(
            self._guild(interaction),
            Style(
                name=name,
                template=template,
                negative_prompt=negative_prompt,
                aspect_ratio=aspect_ratio,
                size=size,
                provider=provider,
                model=model,
                description=description,
            ),
            by=str(interaction.user.id),
        )
        await self._reply(
            interaction,
            f"Added style **{style.name}**: {discord.utils.escape_markdown(style.summary())}",
        )

    @app_commands.command(name="edit", description="Change a style of this server (moderators)")
    @app_commands.describe(
        name="The style to change",
        template="The prompt with {prompt} where the member's prompt goes",
        negative_prompt="What to leave out; - clears it",
        aspect_ratio="Default shape",
        size="Default size tier",
        provider="Default image service",
        model="Default ModelsLab model; - clears it",
        description="One line shown in lists; - clears it",
        clear_defaults="Remove the default aspect ratio, size and provider",
    )
    @app_commands.choices(aspect_ratio=ASPECT_CHOICES, size=SIZE_CHOICES, provider=PROVIDER_CHOICES)
    @app_commands.autocomplete(name=guild_style_autocomplete)
    @moderator_only()
    async def edit(
        self,
        interaction: discord.Interaction[ImageBot],
        name: Range[str, 1, 32],
        template: Range[str, 1, 1000] | None = None,
        negative_prompt: Range[str, 1, 1000] | None = None,
        aspect_ratio: str | None = None,
        size: str | None = None,
        provider: str | None = None,
        model: Range[str, 1, 100] | None = None,
        description: Range[str, 1, 100] | None = None,
        clear_defaults: bool = False,
    ) -> None:
        cleared = "" if clear_defaults else None
        style = await self.bot.styles.edit(
            self._guild(interaction),
            name,
            by=str(interaction.user.id),
            template=template,
            negative_prompt=_optional(negative_prompt),
            aspect_ratio=aspect_ratio or cleared,
            size=size or cleared,
            provider=provider or cleared,
            model=_optional(model),
            description=_optional(description),
        )
        await self._reply(
            interaction,
            f"Style **{style.name}** is now: {discord.utils.escape_markdown(style.summary())}",
        )

    @app_commands.command(name="remove", description="Remove a style of this server (moderators)")
    @app_commands.autocomplete(name=guild_style_autocomplete)
    @moderator_only()
    async def remove(
        self, interaction: discord.Interaction[ImageBot], name: Range[str, 1, 32]
    ) -> None:
        await self.bot.styles.remove(self._guild(interaction), name)
        await self._reply(interaction, f"Removed style **{name.strip().lower()}**.")


async def setup(bot: ImageBot) -> None:
    await bot.add_cog(Styles(bot))
