"""/moderation: content rules for moderators (blocked words, private results).

Hidden from members by default (Manage Server) and checked by the bot itself on
every command, whatever a guild's integration settings say. The rules live in
bot/blocklist.py and bot/memberstore.py; this cog parses and replies.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.app_commands import Range
from discord.ext import commands

from bot.blocklist import MAX_RULE_LENGTH, parse_rule
from bot.errors import UserError
from bot.memberstore import MemberStore
from bot.preferences import PreferenceStore
from cogs.quota import moderator_only

if TYPE_CHECKING:
    from bot.app import ImageBot

NO_MENTIONS = discord.AllowedMentions.none()


@app_commands.default_permissions(manage_guild=True)
@app_commands.guild_only()
class Moderation(
    commands.GroupCog, group_name="moderation", group_description="Content rules for this server"
):
    blocklist = app_commands.Group(
        name="blocklist", description="Words and phrases refused in prompts"
    )

    def __init__(self, bot: ImageBot) -> None:
        self.bot = bot
        super().__init__()

    @property
    def store(self) -> MemberStore:
        return MemberStore(self.bot.jobs.database)

    async def _reply(self, interaction: discord.Interaction[ImageBot], content: str) -> None:
        await interaction.response.send_message(
            content, ephemeral=True, allowed_mentions=NO_MENTIONS
        )

    @app_commands.command(
        name="private-results", description="Let members receive their images privately"
    )
    @app_commands.describe(allowed="True: members may turn on private results in /settings")
    @moderator_only()
    async def private_results(
        self, interaction: discord.Interaction[ImageBot], allowed: bool
    ) -> None:
        store = PreferenceStore(self.bot.jobs.database)
        await store.allow_private(str(interaction.guild_id), allowed)
        await self._reply(
            interaction,
            "Members may now choose private results in /settings: only they see their images."
            if allowed
            else "Private results are off: every result is posted in its channel.",
        )

    @blocklist.command(name="add", description="Refuse prompts containing a word or phrase")
    @app_commands.describe(
        rule="A word or short phrase; * means any letters, ? one letter (e.g. gore*)"
    )
    @moderator_only()
    async def block_add(
        self, interaction: discord.Interaction[ImageBot], rule: Range[str, 1, MAX_RULE_LENGTH]
    ) -> None:
        parsed = parse_rule(rule)
        guild = str(interaction.guild_id)
        if await self.store.block(guild, parsed, str(interaction.user.id)):
            await self._reply(
                interaction,
                f"Prompts matching `{parsed.text}` are now refused here "
                "(any case, with or without accents).",
            )
        else:
            await self._reply(interaction, f"`{parsed.text}` is blocked already.")

    @blocklist.command(name="remove", description="Allow a blocked word or phrase again")
    @app_commands.describe(rule="The rule as /moderation blocklist list shows it")
    @moderator_only()
    async def block_remove(
        self, interaction: discord.Interaction[ImageBot], rule: Range[str, 1, MAX_RULE_LENGTH]
    ) -> None:
        parsed = parse_rule(rule)
        if not await self.store.unblock(str(interaction.guild_id), parsed):
            raise UserError(
                f"`{parsed.text}` is not on this server's list; see /moderation blocklist list."
            )
        await self._reply(interaction, f"`{parsed.text}` is no longer blocked.")

    @blocklist.command(name="list", description="The words and phrases refused in prompts")
    @moderator_only()
    async def block_list(self, interaction: discord.Interaction[ImageBot]) -> None:
        rules = await self.store.blocked_rules(str(interaction.guild_id))
        if not rules:
            await self._reply(interaction, "No words are blocked on this server.")
            return
        listed = ", ".join(f"`{rule}`" for rule in rules)
        text = f"Blocked in prompts ({len(rules)}): {listed}"
        if len(text) <= 2000:
            await self._reply(interaction, text)
            return
        await interaction.response.send_message(
            f"{len(rules)} words and phrases are blocked; the list is attached.",
            file=discord.File(io.BytesIO("\n".join(rules).encode()), "blocklist.txt"),
            ephemeral=True,
            allowed_mentions=NO_MENTIONS,
        )


async def setup(bot: ImageBot) -> None:
    await bot.add_cog(Moderation(bot))
