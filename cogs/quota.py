"""/quota: members see what they have left; moderators manage the guild's credits.

Discord cannot give one subcommand of a group a different default permission,
so ``/quota me`` shares the group with the moderator commands, and every
moderator command is checked by the bot itself (Manage Server), whatever a
guild's integration settings say.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import discord
from discord import app_commands
from discord.app_commands import Range
from discord.ext import commands

from bot.errors import UserError
from bot.quota.models import Balance, ThresholdEvent
from bot.quota.service import discord_time
from cogs._service import is_moderator

if TYPE_CHECKING:
    from bot.app import ImageBot
    from bot.quota.service import QuotaService

NO_MENTIONS = discord.AllowedMentions.none()
T = TypeVar("T")
USAGE_LABELS: dict[str, Callable[[str], str]] = {
    "member": lambda key: f"<@{key}>",
    "channel": lambda key: f"<#{key}>",
    "day": str,
}
TIMEZONE_HINT = "an IANA time zone such as UTC, Europe/Paris or America/New_York"


def moderator_only() -> Callable[[T], T]:
    async def predicate(interaction: discord.Interaction[Any]) -> bool:
        if interaction.guild_id is None or not is_moderator(interaction):
            raise app_commands.CheckFailure("Only moderators (Manage Server) can do that.")
        return True

    return app_commands.check(predicate)


def describe(balance: Balance) -> str:
    if balance.limit is None:
        return f"unlimited ({balance.used} used, {balance.reserved} in progress)"
    return (
        f"**{balance.remaining}** of {balance.limit} left "
        f"({balance.used} used, {balance.reserved} in progress); "
        f"resets {discord_time(balance.resets_at)}"
    )


def _user_value(value: int | None, unlimited: bool) -> int | None:
    if unlimited:
        return None
    if value is None:
        raise UserError("Give a number of credits, or set unlimited to True.")
    return value


class Quota(commands.GroupCog, group_name="quota", group_description="Image credits"):
    def __init__(self, bot: ImageBot) -> None:
        self.bot = bot
        self.info_menu = app_commands.ContextMenu(
            name="Generation info", callback=self.generation_info
        )

    @property
    def ledger(self) -> QuotaService:
        return self.bot.runtime.ledger  # type: ignore[return-value]

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.info_menu)
        self.ledger.on_threshold = self.on_threshold

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.info_menu.name, type=self.info_menu.type)

    def _guild(self, interaction: discord.Interaction[Any]) -> str:
        if interaction.guild_id is None:
            raise UserError("Quotas belong to servers; use this in a server.")
        return str(interaction.guild_id)

    async def _reply(
        self, interaction: discord.Interaction[Any], content: str, **extra: Any
    ) -> None:
        await interaction.response.send_message(
            content, ephemeral=True, allowed_mentions=NO_MENTIONS, **extra
        )

    # --- members ---------------------------------------------------------------
    @app_commands.command(name="me", description="How many image credits you have left")
    @app_commands.guild_only()
    async def me(self, interaction: discord.Interaction[ImageBot]) -> None:
        guild = self._guild(interaction)
        roles = _roles(interaction.user)
        balances = await self.ledger.balance(guild, str(interaction.user.id), roles)
        lines = [f"Server pool: {describe(balances.guild)}"]
        if balances.user is not None:
            lines.insert(0, f"You: {describe(balances.user)}")
        ban = await self.ledger.active_ban(guild, str(interaction.user.id))
        if ban is not None:
            lines.append(f"You are banned from generating until {discord_time(ban.until, 'f')}.")
        await self._reply(interaction, "\n".join(lines))

    # --- moderators ------------------------------------------------------------
    @app_commands.command(name="show", description="The pool, or a member's credits")
    @app_commands.describe(member="A member; empty: the server's pool")
    @moderator_only()
    async def show(
        self, interaction: discord.Interaction[ImageBot], member: discord.Member | None = None
    ) -> None:
        guild = self._guild(interaction)
        if member is None:
            balances = await self.ledger.balance(guild)
            config = await self.ledger.guild_config(guild)
            await self._reply(
                interaction,
                f"Pool: {describe(balances.guild)}\nPeriod: {config.period}, time zone "
                f"{config.timezone}; member default: "
                f"{'unlimited' if config.user_default is None else config.user_default}.",
            )
            return
        balances = await self.ledger.balance(guild, str(member.id), _roles(member))
        assert balances.user is not None
        await self._reply(interaction, f"{member.mention}: {describe(balances.user)}")

    @app_commands.command(name="set-pool", description="Credits per period for this server")
    @app_commands.describe(
        credits="Credits the whole server may spend per period",
        period="How often the pool resets",
        timezone="The time zone it resets in, e.g. Europe/Paris",
    )
    @moderator_only()
    async def set_pool(
        self,
        interaction: discord.Interaction[ImageBot],
        credits: Range[int, 0, 10_000_000],
        period: Literal["day", "week", "month"] | None = None,
        timezone: str | None = None,
    ) -> None:
        try:
            config = await self.ledger.set_pool(self._guild(interaction), credits, period, timezone)
        except ValueError:
            raise UserError(f"timezone must be {TIMEZONE_HINT} (got {timezone}).") from None
        await self._reply(
            interaction,
            f"Pool set to {config.pool_credits} credits per {config.period} ({config.timezone}).",
        )

    @app_commands.command(name="user-default", description="Credits per member per period")
    @app_commands.describe(
        credits="Credits each member may spend per period",
        unlimited="True: members have no limit of their own",
    )
    @moderator_only()
    async def user_default(
        self,
        interaction: discord.Interaction[ImageBot],
        credits: Range[int, 0, 10_000_000] | None = None,
        unlimited: bool = False,
    ) -> None:
        value = _user_value(credits, unlimited)
        await self.ledger.set_user_default(self._guild(interaction), value)
        await self._reply(
            interaction, f"Members now get {'unlimited' if value is None else value} credits."
        )

    @app_commands.command(name="role-limit", description="Credits per period for a role")
    @app_commands.describe(
        role="The role",
        credits="Credits per period for members with this role",
        unlimited="True: no limit for this role",
        remove="True: the role no longer has its own allowance",
    )
    @moderator_only()
    async def role_limit(
        self,
        interaction: discord.Interaction[ImageBot],
        role: discord.Role,
        credits: Range[int, 0, 10_000_000] | None = None,
        unlimited: bool = False,
        remove: bool = False,
    ) -> None:
        await self._set_limit(
            interaction,
            # The ledger makes @everyone's limit the member default: say so.
            "@everyone (the member default, as `/quota user-default` sets it)"
            if role.is_default()
            else role.mention,
            lambda guild, value: self.ledger.set_role_limit(guild, str(role.id), value),
            lambda guild: self.ledger.remove_role_limit(guild, str(role.id)),
            credits=credits,
            unlimited=unlimited,
            remove=remove,
            removed="is back to the bot's default allowance"
            if role.is_default()
            else "no longer has its own allowance",
        )

    @app_commands.command(name="user-limit", description="Credits per period for one member")
    @app_commands.describe(
        member="The member",
        credits="Credits per period for this member (beats their roles)",
        unlimited="True: no limit for this member",
        remove="True: the member no longer has their own allowance",
    )
    @moderator_only()
    async def user_limit(
        self,
        interaction: discord.Interaction[ImageBot],
        member: discord.Member,
        credits: Range[int, 0, 10_000_000] | None = None,
        unlimited: bool = False,
        remove: bool = False,
    ) -> None:
        await self._set_limit(
            interaction,
            member.mention,
            lambda guild, value: self.ledger.set_user_limit(guild, str(member.id), value),
            lambda guild: self.ledger.remove_user_limit(guild, str(member.id)),
            credits=credits,
            unlimited=unlimited,
            remove=remove,
            removed="follows the roles again",
        )

    async def _set_limit(
        self,
        interaction: discord.Interaction[ImageBot],
        who: str,
        set_limit: Callable[[str, int | None], Awaitable[object]],
        remove_limit: Callable[[str], Awaitable[object]],
        *,
        credits: int | None,
        unlimited: bool,
        remove: bool,
        removed: str,
    ) -> None:
        guild = self._guild(interaction)
        if remove:
            await remove_limit(guild)
            await self._reply(interaction, f"{who} {removed}.")
            return
        value = _user_value(credits, unlimited)
        await set_limit(guild, value)
        await self._reply(interaction, f"{who}: {'unlimited' if value is None else value} credits.")

    @app_commands.command(name="grant", description="Extra credits for this period")
    @app_commands.describe(
        credits="Extra credits, for this period only",
        member="Who gets them; empty: the server's pool",
        reason="Why, for the ledger",
    )
    @moderator_only()
    async def grant(
        self,
        interaction: discord.Interaction[ImageBot],
        credits: Range[int, 1, 10_000_000],
        member: discord.Member | None = None,
        reason: Range[str, 1, 200] | None = None,
    ) -> None:
        await self.ledger.grant(
            self._guild(interaction),
            credits,
            user_id=str(member.id) if member else None,
            by=str(interaction.user.id),
            reason=reason,
        )
        target = member.mention if member else "the server pool"
        await self._reply(interaction, f"Granted {credits} credits to {target} for this period.")

    @app_commands.command(name="reset", description="Zero this period's usage")
    @app_commands.describe(member="Whose usage; empty: the whole server's")
    @moderator_only()
    async def reset(
        self, interaction: discord.Interaction[ImageBot], member: discord.Member | None = None
    ) -> None:
        await self.ledger.reset(
            self._guild(interaction),
            str(member.id) if member else None,
            by=str(interaction.user.id),
        )
        await self._reply(
            interaction, f"Usage reset for {member.mention if member else 'the whole server'}."
        )

    @app_commands.command(name="ban", description="Stop a member generating for a while")
    @app_commands.describe(
        member="The member", hours="How long, in hours", reason="Why (the member is shown it)"
    )
    @moderator_only()
    async def ban(
        self,
        interaction: discord.Interaction[ImageBot],
        member: discord.Member,
        hours: Range[float, 0.01, 8760.0],
        reason: Range[str, 1, 200],
    ) -> None:
        until = datetime.now(UTC) + timedelta(hours=hours)
        await self.ledger.ban(
            self._guild(interaction), str(member.id), until, reason, str(interaction.user.id)
        )
        await self._reply(
            interaction, f"{member.mention} cannot generate until {discord_time(until, 'f')}."
        )

    @app_commands.command(name="unban", description="Lift a member's ban")
    @app_commands.describe(member="The member")
    @moderator_only()
    async def unban(
        self, interaction: discord.Interaction[ImageBot], member: discord.Member
    ) -> None:
        lifted = await self.ledger.unban(
            self._guild(interaction), str(member.id), str(interaction.user.id)
        )
        await self._reply(
            interaction,
            f"{member.mention} can generate again."
            if lifted
            else f"{member.mention} was not banned.",
        )

    @app_commands.command(name="usage", description="Who or where credits went")
    @app_commands.describe(
        by="Group the credits by member, channel or day", days="The last N days; empty: this period"
    )
    @moderator_only()
    async def usage(
        self,
        interaction: discord.Interaction[ImageBot],
        by: Literal["member", "channel", "day"] = "member",
        days: Range[int, 1, 366] | None = None,
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        guild = self._guild(interaction)
        since = datetime.now(UTC) - timedelta(days=days) if days else None
        until = datetime.now(UTC) if days else None
        rows = await self.ledger.usage(guild, since, until, by="user" if by == "member" else by)
        if days:
            span = f"last {days} day{'s' if days > 1 else ''}"
        else:
            span = f"this {(await self.ledger.guild_config(guild)).period}"
        title = f"Credits by {by}, {span}"
        label = USAGE_LABELS[by]
        if by == "day":
            # Calendar order; the listing keeps the most recent days.
            rows = sorted(rows, key=lambda r: r.key)
            listed = rows[-14:]
            names = {row.key: row.key for row in rows}
            chart = await asyncio.to_thread(
                _daily_png, title, [(date.fromisoformat(r.key), r.credits) for r in rows]
            )
        else:
            rows = sorted(rows, key=lambda r: r.credits, reverse=True)
            listed = rows[:10]
            names = await _display_names(interaction.guild, by, [r.key for r in listed])
            chart = await asyncio.to_thread(
                _ranking_png, title, [(names[r.key], r.credits) for r in listed]
            )
        embed = discord.Embed(
            title=title,
            description="\n".join(
                f"{label(r.key)}: {r.credits} credits, {r.jobs} jobs" for r in listed
            )
            or "No usage in this period.",
        )
        # The alt text says what the chart shows, for screen readers.
        alt = f"{title}: " + (
            ", ".join(f"{names[r.key]} {r.credits}" for r in listed) or "no usage"
        )
        await interaction.followup.send(
            embed=embed,
            files=[
                discord.File(io.BytesIO(chart), filename="usage.png", description=alt[:1024]),
                discord.File(io.BytesIO(_usage_csv(rows).encode()), filename="usage.csv"),
            ],
            ephemeral=True,
            allowed_mentions=NO_MENTIONS,
        )

    @app_commands.command(name="costs", description="What each kind of image costs")
    async def costs(self, interaction: discord.Interaction[ImageBot]) -> None:
        lines = [f"`{tier}`: {price}" for tier, price in self.bot.settings.costs.items()]
        await self._reply(interaction, "Credits per image:\n" + "\n".join(lines))

    @app_commands.command(name="log-channel", description="Where pool alerts (80 %, 100 %) go")
    @app_commands.describe(channel="Where alerts go; empty: no alerts")
    @moderator_only()
    async def log_channel(
        self,
        interaction: discord.Interaction[ImageBot],
        channel: discord.TextChannel | None = None,
    ) -> None:
        guild = self._guild(interaction)
        await self.bot.jobs.set_log_channel(guild, str(channel.id) if channel else None)
        await self._reply(
            interaction,
            f"Pool alerts go to {channel.mention}." if channel else "Pool alerts are off.",
        )

    @app_commands.command(name="channels", description="Limit image commands to some channels")
    @app_commands.describe(
        action="Add or remove a channel, or list them", channel="The channel to add or remove"
    )
    @moderator_only()
    async def channels(
        self,
        interaction: discord.Interaction[ImageBot],
        action: Literal["add", "remove", "list"],
        channel: discord.TextChannel | None = None,
    ) -> None:
        guild = self._guild(interaction)
        if action != "list":
            if channel is None:
                raise UserError("Pick a channel to add or remove.")
            if action == "add":
                await self.bot.jobs.allow_channel(guild, str(channel.id), str(interaction.user.id))
            else:
                await self.bot.jobs.disallow_channel(guild, str(channel.id))
        allowed = await self.bot.jobs.allowed_channels(guild)
        listed = ", ".join(f"<#{c}>" for c in sorted(allowed)) or "every channel"
        await self._reply(interaction, f"Image commands are allowed in {listed}.")

    # --- context menu and alerts ------------------------------------------------
    @app_commands.guild_only()
    async def generation_info(
        self, interaction: discord.Interaction[ImageBot], message: discord.Message
    ) -> None:
        if not is_moderator(interaction):
            raise UserError("Only moderators (Manage Server) can see who made an image.")
        job_id = _job_id_of(message)
        info = await self.ledger.job_info(job_id) if job_id else None
        if info is None or info.guild_id != str(interaction.guild_id):
            raise UserError("That message is not an image result of this bot.")
        await self._reply(
            interaction,
            f"Made by <@{info.user_id}> in <#{info.channel_id}> "
            f"{discord_time(info.created_at, 'f')}\n"
            f"Mode: {info.mode}; cost: {info.cost_settled or 0} of {info.cost_reserved} "
            f"reserved ({info.state})\nJob: `{info.job_id}`\n"
            f"Prompt: {discord.utils.escape_markdown(info.prompt or '')[:1500]}",
        )

    async def on_threshold(self, event: ThresholdEvent) -> None:
        channel_id = await self.bot.jobs.log_channel(event.guild_id)
        if channel_id is None:
            return
        channel = self.bot.get_partial_messageable(int(channel_id))
        text = (
            f"⚠️ The image pool has passed {event.percent} % this {event.period}: "
            f"{event.used} of {event.limit} credits. It resets {discord_time(event.resets_at)}."
        )
        # An alert that cannot be posted must not disturb the job that crossed it.
        with contextlib.suppress(discord.HTTPException):
            await channel.send(text, allowed_mentions=NO_MENTIONS)


def _roles(user: discord.abc.User) -> tuple[str, ...]:
    if isinstance(user, discord.Member):
        return tuple(str(role.id) for role in user.roles if not role.is_default())
    return ()


async def _display_names(guild: discord.Guild | None, by: str, keys: list[str]) -> dict[str, str]:
    """What a chart calls each member or channel: their name in the guild, or
    the id of one that left or was deleted."""

    async def name(key: str) -> str:
        if guild is None or not key.isdigit():
            return key
        if by == "channel":
            channel = guild.get_channel_or_thread(int(key))
            return f"#{channel.name}" if channel is not None else key
        # Without the members intent only members seen lately are cached.
        member = guild.get_member(int(key))
        if member is None:
            try:
                member = await guild.fetch_member(int(key))
            except discord.HTTPException:
                return key
        return member.display_name

    found = await asyncio.gather(*(name(key) for key in keys))
    return dict(zip(keys, found, strict=True))


def _job_id_of(message: discord.Message) -> str | None:
    for embed in message.embeds:
        footer = embed.footer.text or ""
        if footer.startswith("Job "):
            return footer.removeprefix("Job ").strip()
    return None


# matplotlib takes about a second and 40 MB to import: it is loaded (in the
# drawing thread) by the first chart a moderator asks for, not at every start.
def _daily_png(title: str, days: list[tuple[date, int]]) -> bytes:
    from bot.charts import daily_png

    return daily_png(title, days)


def _ranking_png(title: str, rows: list[tuple[str, int]]) -> bytes:
    from bot.charts import ranking_png

    return ranking_png(title, rows)


def _usage_csv(rows: list[Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["key", "jobs", "credits", "reserved", "refunded_jobs"])
    for row in rows:
        writer.writerow([row.key, row.jobs, row.credits, row.reserved, row.refunded_jobs])
    return out.getvalue()


async def setup(bot: ImageBot) -> None:
    await bot.add_cog(Quota(bot))
