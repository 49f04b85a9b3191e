"""/settings: a member's defaults in this server, chosen from select menus.

Stored by bot/preferences.py; applied under a command's own options by
bot/compose.py (an explicit option or prompt parameter always wins).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.errors import UserError
from bot.preferences import Preferences, PreferenceStore

if TYPE_CHECKING:
    from bot.app import ImageBot

NO_MENTIONS = discord.AllowedMentions.none()
UNSET = "-"  # the "no default" choice of every menu
SELECTS = ("style", "aspect_ratio", "size", "provider")
LABELS = {
    "style": "Style",
    "aspect_ratio": "Aspect ratio",
    "size": "Size",
    "provider": "Provider",
    "samples": "Images per job",
    "private": "Private results",
}


class SettingSelect(
    discord.ui.DynamicItem[discord.ui.Select[Any]],
    template=r"is:(?P<name>style|aspect_ratio|size|provider):(?P<user>[0-9]{1,20})",
):
    def __init__(self, name: str, user_id: int, select: discord.ui.Select[Any] | None = None):
        super().__init__(select or discord.ui.Select(custom_id=f"is:{name}:{user_id}"))
        self.name = name
        self.user_id = user_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str]
    ) -> SettingSelect:
        return cls(match["name"], int(match["user"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        data: dict[str, Any] = dict(interaction.data or {})
        values = list(data.get("values") or [UNSET])
        value = None if values[0] == UNSET else str(values[0])
        await _change(interaction, self.user_id, self.name, value)


class SettingButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"is:(?P<name>samples|private):(?P<user>[0-9]{1,20}):(?P<value>[0-9])",
):
    def __init__(
        self,
        name: str,
        user_id: int,
        value: int,
        *,
        label: str = "",
        style: discord.ButtonStyle = discord.ButtonStyle.secondary,
    ) -> None:
        super().__init__(
            discord.ui.Button(
                label=label or None, style=style, custom_id=f"is:{name}:{user_id}:{value}", row=4
            )
        )
        self.name = name
        self.user_id = user_id
        self.value = value

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str]
    ) -> SettingButton:
        return cls(match["name"], int(match["user"]), int(match["value"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        # Pressing the chosen number again clears the default.
        await _change(interaction, self.user_id, self.name, self.value or None)


async def _change(
    interaction: discord.Interaction[Any], user_id: int, name: str, value: Any
) -> None:
    from bot.app import report_error

    try:
        cog = interaction.client.get_cog("Settings")
        if not isinstance(cog, Settings):
            raise UserError("The bot is starting up; try again in a moment.")
        await cog.change(interaction, user_id, name, value)
    except Exception as error:  # noqa: BLE001 - a component has no command tree to report it
        await report_error(interaction, error)


def _option(label: str, value: str, chosen: bool, description: str | None = None) -> Any:
    return discord.SelectOption(
        label=label[:100], value=value, default=chosen, description=description
    )


class Settings(commands.Cog, name="Settings"):
    def __init__(self, bot: ImageBot) -> None:
        self.bot = bot

    @property
    def store(self) -> PreferenceStore:
        return PreferenceStore(self.bot.jobs.database)

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(SettingSelect, SettingButton)

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(SettingSelect, SettingButton)

    @app_commands.command(name="settings", description="Your defaults for image commands here")
    @app_commands.guild_only()
    async def settings(self, interaction: discord.Interaction[ImageBot]) -> None:
        guild, user = str(interaction.guild_id), interaction.user.id
        preferences = await self.store.get(guild, str(user))
        embed, view = await self.render(guild, user, preferences)
        await interaction.response.send_message(
            embed=embed, view=view, ephemeral=True, allowed_mentions=NO_MENTIONS
        )

    async def change(
        self, interaction: discord.Interaction[Any], user_id: int, name: str, value: Any
    ) -> None:
        if interaction.guild_id is None or interaction.user.id != user_id:
            raise UserError("These are someone else's settings; use /settings for yours.")
        guild = str(interaction.guild_id)
        preferences = await self.store.get(guild, str(user_id))
        if name == "private":
            value = not preferences.private
            if value and not await self.store.private_allowed(guild):
                raise UserError("The moderators of this server do not allow private results.")
        updated = preferences.changed(name, value)
        await self.store.save(guild, str(user_id), updated)
        embed, view = await self.render(guild, user_id, updated)
        await interaction.response.edit_message(embed=embed, view=view)

    async def render(
        self, guild: str, user_id: int, preferences: Preferences
    ) -> tuple[discord.Embed, discord.ui.View]:
        providers = self.bot.runtime.providers
        private_allowed = await self.store.private_allowed(guild)
        embed = discord.Embed(
            title="Your defaults here",
            description=(
                "Used when a command leaves an option empty; anything you type in a "
                "command (or as `--ar`, `--style`, ... in the prompt) wins."
            ),
            colour=discord.Colour.blurple(),
        )
        for name in (*SELECTS, "samples"):
            value = getattr(preferences, name)
            embed.add_field(name=LABELS[name], value=str(value) if value else "no default")
        if private_allowed:
            embed.add_field(name=LABELS["private"], value="on" if preferences.private else "off")

        view = discord.ui.View(timeout=None)
        styles = await self.bot.styles.list(guild)
        ratios = [r for p in providers.values() for r in p.capabilities.aspect_ratios]
        sizes = [s for p in providers.values() for s in p.capabilities.size_tiers]
        menus: dict[str, list[tuple[str, str | None]]] = {
            "style": [(style.name, style.summary()[:100]) for style in styles],
            "aspect_ratio": [(ratio, None) for ratio in dict.fromkeys(ratios)],
            "size": [(size, None) for size in dict.fromkeys(sizes)],
            "provider": [(name, None) for name in providers],
        }
        for row, name in enumerate(SELECTS):
            current = getattr(preferences, name)
            select: discord.ui.Select[Any] = discord.ui.Select(
                custom_id=f"is:{name}:{user_id}",
                placeholder=f"{LABELS[name]}: {current or 'no default'}",
                row=row,
                options=[
                    _option(f"{LABELS[name]}: no default", UNSET, current is None),
                    *(
                        _option(value, value, value == current, description)
                        for value, description in menus[name][:24]
                    ),
                ],
            )
            view.add_item(SettingSelect(name, user_id, select))
        for n in range(1, 5):
            chosen = preferences.samples == n
            view.add_item(
                SettingButton(
                    "samples",
                    user_id,
                    0 if chosen else n,
                    label=f"{n} image{'s' if n > 1 else ''}",
                    style=discord.ButtonStyle.success if chosen else discord.ButtonStyle.secondary,
                )
            )
        if private_allowed:
            view.add_item(
                SettingButton(
                    "private",
                    user_id,
                    1,
                    label=f"Private results: {'on' if preferences.private else 'off'}",
                    style=discord.ButtonStyle.primary,
                )
            )
        return embed, view


async def setup(bot: ImageBot) -> None:
    await bot.add_cog(Settings(bot))
