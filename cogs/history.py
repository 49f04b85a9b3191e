"""/history: a member's recent images, paged, with links and "Run again".

Moderators may look at another member's. The list comes from the job store
(bot/memberstore.py); "Run again" is the result's own re-roll button.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.errors import UserError
from bot.memberstore import HistoryEntry, MemberStore
from bot.quota.service import discord_time
from cogs._service import is_moderator
from cogs._views import JobButton

if TYPE_CHECKING:
    from bot.app import ImageBot

PAGE_SIZE = 5
NO_MENTIONS = discord.AllowedMentions.none()


def message_link(guild_id: int, entry: HistoryEntry) -> str | None:
    # A private result is an ephemeral message or a DM: a channel link to it opens nothing.
    if entry.private or entry.channel_id is None or entry.message_id is None:
        return None
    return f"https://discord.com/channels/{guild_id}/{entry.channel_id}/{entry.message_id}"


def describe_entry(guild_id: int, number: int, entry: HistoryEntry) -> str:
    if entry.delivered:
        charged = entry.charged or 0
        cost = f"{charged} credit{'s' if charged != 1 else ''}"
        link = message_link(guild_id, entry)
        if entry.private:
            where = "result sent privately"
        else:
            where = f"[result]({link})" if link else "result"
        state = f"{cost} · {where}"
    elif entry.unmade:
        state = "not made, refunded"
    else:
        state = f"in progress, {entry.cost} reserved"
    prompt = discord.utils.escape_markdown(" ".join(entry.prompt.split()))
    if len(prompt) > 150:
        prompt = prompt[:149] + "…"
    when = discord_time(entry.created_at, "R")
    return f"**{number}.** {when} · {entry.mode} · {state}\n{prompt}"


class HistoryPage(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"ih:(?P<user>[0-9]{1,20}):(?P<page>[0-9]{1,6})",
):
    """Newer/older buttons; the custom id says whose history and which page."""

    def __init__(self, user_id: int, page: int, *, label: str = "", disabled: bool = False):
        super().__init__(
            discord.ui.Button(
                label=label or None,
                custom_id=f"ih:{user_id}:{page}",
                disabled=disabled,
                row=1,
            )
        )
        self.user_id = user_id
        self.page = page

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
    ) -> HistoryPage:
        return cls(int(match["user"]), int(match["page"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        cog = interaction.client.get_cog("History")
        if not isinstance(cog, History):
            await interaction.response.send_message(
                "The bot is starting up; try again in a moment.", ephemeral=True
            )
            return
        embed, view = await cog.page(interaction, self.user_id, self.page)
        await interaction.response.edit_message(embed=embed, view=view)


class History(commands.Cog, name="History"):
    def __init__(self, bot: ImageBot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(HistoryPage)

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(HistoryPage)

    @app_commands.command(name="history", description="Your recent images")
    @app_commands.describe(member="Moderators: whose images to list")
    @app_commands.guild_only()
    async def history(
        self, interaction: discord.Interaction[ImageBot], member: discord.Member | None = None
    ) -> None:
        target = member.id if member is not None else interaction.user.id
        embed, view = await self.page(interaction, target, 0)
        await interaction.response.send_message(
            embed=embed, view=view, ephemeral=True, allowed_mentions=NO_MENTIONS
        )

    async def page(
        self, interaction: discord.Interaction[ImageBot], user_id: int, page: int
    ) -> tuple[discord.Embed, discord.ui.View]:
        if interaction.guild_id is None:
            raise UserError("History belongs to a server; use this in a server.")
        if user_id != interaction.user.id and not is_moderator(interaction):
            raise UserError("Only moderators (Manage Server) can see another member's images.")
        store = MemberStore(self.bot.jobs.database)
        entries, total = await store.history(
            str(interaction.guild_id), str(user_id), limit=PAGE_SIZE, offset=page * PAGE_SIZE
        )
        pages = max(1, -(-total // PAGE_SIZE))
        whose = "Your images" if user_id == interaction.user.id else "Images"
        embed = discord.Embed(title=whose, colour=discord.Colour.blurple())
        if user_id != interaction.user.id:
            embed.description = f"of <@{user_id}>\n\n"
        else:
            embed.description = ""
        if not entries:
            embed.description += (
                "Nothing yet: make one with /imagine." if total == 0 else "No more images."
            )
        else:
            first = page * PAGE_SIZE + 1
            embed.description += "\n\n".join(
                describe_entry(interaction.guild_id, first + i, entry)
                for i, entry in enumerate(entries)
            )
        embed.set_footer(text=f"Page {min(page + 1, pages)} of {pages} · {total} in all")
        view = discord.ui.View(timeout=None)
        for i, entry in enumerate(entries):
            view.add_item(
                JobButton("reroll", entry.job_id, label=f"Run {page * PAGE_SIZE + i + 1} again")
            )
        if pages > 1:
            view.add_item(
                HistoryPage(user_id, max(page - 1, 0), label="◀ Newer", disabled=page == 0)
            )
            view.add_item(
                HistoryPage(user_id, page + 1, label="Older ▶", disabled=page + 1 >= pages)
            )
        return embed, view


async def setup(bot: ImageBot) -> None:
    await bot.add_cog(History(bot))
