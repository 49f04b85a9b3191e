"""/quota for members and moderators, refusals, and guild isolation, end to end."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Any

import pytest
from PIL import Image

from tests.e2e.conftest import (
    MANAGE_GUILD,
    MEMBER_PERMISSIONS,
    World,
    make_settings,
    populate,
    running_bot,
)
from tests.e2e.test_generation import final, imagine, job_id_of, opt, settled_balance
from tests.emulators.providers import Hang, Processing, ServerError

CHANNEL_MESSAGE = 4


async def quota(
    world: World,
    subcommand: str,
    user_id: int,
    *options: dict[str, Any],
    within: float = 15,
    **where,
):
    interaction = await world.discord.slash(
        "quota",
        subcommand=subcommand,
        guild_id=where.get("guild_id", world.guild_id),
        channel_id=where.get("channel_id", world.channel_id),
        user_id=user_id,
        options=list(options),
    )
    await interaction.wait_for(
        lambda r: (
            bool(r.callbacks and r.callbacks[0].type == CHANNEL_MESSAGE)
            or bool(r.original and not r.original.loading)
            or bool(r.followups)
        ),
        timeout=within,
    )
    return interaction


def answer(interaction) -> str:
    if interaction.callbacks and interaction.callbacks[0].type == CHANNEL_MESSAGE:
        return str(interaction.callbacks[0].data.get("content", ""))
    if interaction.followups:
        return str(interaction.followups[-1].content)
    return str(interaction.original.content) if interaction.original else ""


async def refusal(world: World, **options: object) -> str:
    interaction = await imagine(world, "a refused picture", **options)
    message = await final(interaction)
    assert message.content.startswith("❌"), message.content
    assert_private(world, message)
    return str(message.content)


def assert_private(world: World, message) -> None:
    """The refusal reached its member privately and no public message ever carried it."""
    assert message.ephemeral, message.content
    reason = message.content.removeprefix("❌ ")
    for public in world.discord.messages.values():
        if public.ephemeral:
            continue
        said = [public.content, *(str(edit.get("content") or "") for edit in public.edits)]
        assert not any(reason in text for text in said), (public.id, said)


async def test_member_sees_their_credits(world: World):
    shown = answer(await quota(world, "me", world.member_id))
    assert "You: **40** of 40 left" in shown
    assert "Server pool: **100** of 100 left" in shown


@pytest.mark.parametrize(
    ("subcommand", "options"),
    [
        ("set-pool", [opt("credits", 5, 4)]),
        ("grant", [opt("credits", 5, 4)]),
        ("reset", []),
        ("usage", []),
        ("show", []),
    ],
)
async def test_moderator_commands_are_refused_for_members(world: World, subcommand, options):
    text = answer(await quota(world, subcommand, world.member_id, *options))
    assert "Only moderators" in text


async def test_moderator_sets_and_reads_the_pool(world: World):
    text = answer(
        await quota(
            world,
            "set-pool",
            world.moderator_id,
            opt("credits", 250, 4),
            opt("period", "week"),
            opt("timezone", "Europe/Paris"),
        )
    )
    assert "250 credits per week (Europe/Paris)" in text
    shown = answer(await quota(world, "show", world.moderator_id))
    assert "of 250 left" in shown and "week" in shown


async def test_bad_timezone_is_named(world: World):
    text = answer(
        await quota(
            world,
            "set-pool",
            world.moderator_id,
            opt("credits", 5, 4),
            opt("timezone", "Mars/Base"),
        )
    )
    assert "timezone must be an IANA time zone" in text


async def test_pool_refusal_and_grant(world: World):
    await quota(world, "set-pool", world.moderator_id, opt("credits", 1, 4))
    text = await refusal(world, samples=2)
    assert "pool" in text.lower()
    await quota(world, "grant", world.moderator_id, opt("credits", 5, 4))
    message = await final(await imagine(world, "now it fits", samples=2))
    assert message.embeds


async def test_member_allowance_refusal(world: World):
    member = {"name": "member", "type": 6, "value": str(world.member_id)}
    await quota(world, "user-limit", world.moderator_id, member, opt("credits", 1, 4))
    text = await refusal(world, samples=2)
    assert "You have 1 credit left today and this costs 2" in text


async def test_ban_refusal_names_the_reason(world: World):
    member = {"name": "member", "type": 6, "value": str(world.member_id)}
    await quota(
        world,
        "ban",
        world.moderator_id,
        member,
        {"name": "hours", "type": 10, "value": 2},
        opt("reason", "spamming"),
    )
    text = await refusal(world)
    assert "banned" in text and "spamming" in text
    await quota(world, "unban", world.moderator_id, member)
    assert (await final(await imagine(world, "welcome back"))).embeds


async def test_channel_restriction(world: World):
    channel = {"name": "channel", "type": 7, "value": str(world.nsfw_channel_id)}
    await quota(world, "channels", world.moderator_id, opt("action", "add"), channel)
    text = await refusal(world)
    assert "only in" in text


async def test_usage_report_has_chart_and_csv(world: World):
    started = datetime.now(UTC).date()
    emile = world.discord.add_member(
        world.guild_id, name="emile", nick="Émile Zola", permissions=MEMBER_PERMISSIONS
    )
    assert (await final(await imagine(world, "for the report", samples=2))).embeds
    by_emile = await world.discord.slash(
        "imagine",
        guild_id=world.guild_id,
        channel_id=world.channel_id,
        user_id=emile.user.id,
        options=[opt("prompt", "Émile's picture")],
    )
    assert (await final(by_emile)).embeds
    # A result is posted before its credits are settled; the report counts settled ones.
    await settled_balance(world)
    # Generous guards: the first chart loads matplotlib, slow on a busy machine.
    interaction = await quota(world, "usage", world.moderator_id, within=60)
    await interaction.wait_for(lambda r: bool(r.original and r.original.attachments), timeout=60)
    names = sorted(a.filename for a in interaction.original.attachments)
    assert names == ["usage.csv", "usage.png"]
    csv_text = next(a for a in interaction.original.attachments if a.filename == "usage.csv")
    assert str(world.member_id) in csv_text.data.decode()
    chart = next(a for a in interaction.original.attachments if a.filename == "usage.png")
    # The chart names members as the guild shows them (a nickname, accents
    # included), largest first, never by their raw ids.
    assert chart.description == "Credits by member, this day: ada 2, Émile Zola 1"
    assert Image.open(io.BytesIO(chart.data)).width == 1100

    by_day = await quota(
        world, "usage", world.moderator_id, opt("by", "day"), opt("days", 7, 4), within=60
    )
    await by_day.wait_for(lambda r: bool(r.original and r.original.attachments), timeout=60)
    chart = next(a for a in by_day.original.attachments if a.filename == "usage.png")
    # The jobs' day (UTC, the default pool time zone), read around the run so
    # that a run across midnight cannot fail.
    days = {day.isoformat() for day in (started, datetime.now(UTC).date())}
    assert chart.description in {f"Credits by day, last 7 days: {day} 3" for day in days}


async def test_generation_info_for_moderators_only(world: World):
    result = await final(await imagine(world, "whose is this"))
    job = job_id_of(result)
    for user_id, expected in ((world.member_id, "Only moderators"), (world.moderator_id, job)):
        interaction = await world.discord.message_command(
            "Generation info",
            guild_id=world.guild_id,
            channel_id=world.channel_id,
            user_id=user_id,
            message=result,
        )
        callback = await interaction.wait_for_callback()
        assert expected in callback.data["content"]


async def test_guilds_are_isolated(world: World):
    await quota(world, "set-pool", world.moderator_id, opt("credits", 3, 4))
    result = await final(await imagine(world, "guild A only"))
    job = job_id_of(result)
    elsewhere = answer(
        await quota(
            world,
            "me",
            world.other_member_id,
            guild_id=world.other_guild_id,
            channel_id=world.other_channel_id,
        )
    )
    assert "of 100 left" in elsewhere  # the default pool, not guild A's 3
    # A job id from guild A means nothing in guild B.
    record = await world.bot.jobs.get(job)
    assert record is not None and record.guild_id == str(world.guild_id)
    # A moderator of guild B, or the moderator check alone would refuse.
    b_moderator = world.discord.add_member(
        world.other_guild_id, name="b-mod", permissions=MEMBER_PERMISSIONS | MANAGE_GUILD
    )
    info = await world.discord.message_command(
        "Generation info",
        guild_id=world.other_guild_id,
        channel_id=world.other_channel_id,
        user_id=b_moderator.id,
        message=world.discord.add_message(
            world.other_channel_id,
            author_id=world.discord.bot_user_id,
            embeds=result.embeds,
        ),
    )
    callback = await info.wait_for_callback()
    assert job not in callback.data["content"]


async def _run_imagine(discord_emu, ids, user_id: int, prompt: str):
    return await discord_emu.slash(
        "imagine",
        guild_id=ids["guild_id"],
        channel_id=ids["channel_id"],
        user_id=user_id,
        options=[opt("prompt", prompt)],
    )


async def test_in_flight_and_global_budget_refusals(emulators, tmp_path):
    discord_emu, providers = emulators
    ids = populate(discord_emu)
    settings = make_settings(
        discord_emu,
        providers,
        tmp_path / "data",
        max_jobs_in_flight_per_user=1,
        global_daily_budget=2,
    )
    async with running_bot(settings, discord_emu) as bot:
        await bot.sync_commands()
        providers.script("text2img", Processing(polls=4, eta=0.2))
        providers.latency = 0.2
        slow = await _run_imagine(discord_emu, ids, ids["member_id"], "slow")
        # The provider call comes after the reservation: the slot is taken now.
        await discord_emu.wait_for(
            lambda: bool(providers.requests_to("text2img")), timeout=20, what="slow submitted"
        )
        busy = await final(await _run_imagine(discord_emu, ids, ids["member_id"], "too soon"))
        assert "You already have 1 image in progress" in busy.content
        assert (await final(slow, within=30)).embeds
        # The very moment the result appears, before its credits are settled, the
        # member's next image is welcome: it is no longer "in progress".
        providers.latency = 0
        again = await final(await _run_imagine(discord_emu, ids, ids["member_id"], "again"))
        assert again.embeds, again.content
        budget = await final(await _run_imagine(discord_emu, ids, ids["moderator_id"], "three"))
        assert "daily generation budget" in budget.content
    discord_emu.assert_no_violations()


async def test_a_job_failing_over_after_its_links_failed_is_still_in_progress(emulators, tmp_path):
    discord_emu, providers = emulators
    ids = populate(discord_emu)
    settings = make_settings(
        discord_emu, providers, tmp_path / "data", max_jobs_in_flight_per_user=1, failover=True
    )
    async with running_bot(settings, discord_emu) as bot:
        await bot.sync_commands()
        # ModelsLab makes the image but its link fails (503): the job goes to
        # Nano Banana Pro, which takes long enough for the member's next command
        # to be answered meanwhile, however loaded the machine.
        providers.script("file", ServerError(503))
        providers.script("nbpro", Hang(seconds=6))
        first = await _run_imagine(discord_emu, ids, ids["member_id"], "a lighthouse")
        await discord_emu.wait_for(
            lambda: bool(providers.requests_to("nbpro")), timeout=20, what="the failover"
        )
        # Still one job in progress, as the member's limit counts it.
        busy = await final(await _run_imagine(discord_emu, ids, ids["member_id"], "too soon"))
        assert "You already have 1 image in progress" in busy.content
        # A restart now must not fetch ModelsLab's failed link under the next provider.
        (record,) = [r for r in await bot.jobs.unfinished() if r.request.prompt == "a lighthouse"]
        assert record.provider == "nanobanana"
        assert (record.outputs, record.provider_job_id, record.provider_fetch_url) == (
            (),
            None,
            None,
        )

        result = await final(first, within=30)
        assert result.embeds, result.content
        job = job_id_of(result)
        assert (await bot.jobs.get(job)).provider == "nanobanana"
        assert len(providers.requests_to("text2img")) == 1
    discord_emu.assert_no_violations()


async def test_cooldown_refusal(emulators, tmp_path):
    discord_emu, providers = emulators
    ids = populate(discord_emu)
    settings = make_settings(discord_emu, providers, tmp_path / "data", cooldown_seconds=60)
    async with running_bot(settings, discord_emu) as bot:
        await bot.sync_commands()
        first = await final(await _run_imagine(discord_emu, ids, ids["member_id"], "one"))
        assert first.embeds
        again = await final(await _run_imagine(discord_emu, ids, ids["member_id"], "two"))
        assert "before starting another image" in again.content
    discord_emu.assert_no_violations()


async def test_role_limits_user_default_and_reset(world: World):
    artist = world.discord.add_role(world.guild_id, name="artist")
    patron = world.discord.add_role(world.guild_id, name="patron")
    both = world.discord.add_member(world.guild_id, name="both", roles=[artist.id, patron.id])
    plain = world.discord.add_member(world.guild_id, name="plain")
    role = {"name": "role", "type": 8, "value": str(artist.id)}
    await quota(world, "role-limit", world.moderator_id, role, opt("credits", 3, 4))
    role = {"name": "role", "type": 8, "value": str(patron.id)}
    await quota(world, "role-limit", world.moderator_id, role, opt("unlimited", True, 5))
    await quota(world, "user-default", world.moderator_id, opt("credits", 2, 4))

    def member(user) -> dict[str, Any]:
        return {"name": "member", "type": 6, "value": str(user.id)}

    shown = answer(await quota(world, "show", world.moderator_id, member(both)))
    assert "unlimited" in shown  # the highest role wins, and unlimited beats all
    shown = answer(await quota(world, "show", world.moderator_id, member(plain)))
    assert "of 2 left" in shown

    interaction = await world.discord.slash(
        "imagine",
        guild_id=world.guild_id,
        channel_id=world.channel_id,
        user_id=plain.id,
        options=[opt("prompt", "two of two"), opt("samples", 2, 4)],
    )
    assert (await final(interaction)).embeds
    assert "**0** of 2 left" in answer(
        await quota(world, "show", world.moderator_id, member(plain))
    )
    await quota(world, "reset", world.moderator_id, member(plain))
    assert "**2** of 2 left" in answer(
        await quota(world, "show", world.moderator_id, member(plain))
    )


async def test_costs_are_listed_for_everyone(world: World):
    text = answer(await quota(world, "costs", world.member_id))
    assert "`text2img`: 1" in text and "`nbpro_4k`: 8" in text


async def test_pool_alerts_go_to_the_log_channel(world: World):
    log_channel = world.discord.add_channel(world.guild_id, name="mod-log")
    channel = {"name": "channel", "type": 7, "value": str(log_channel.id)}
    await quota(world, "log-channel", world.moderator_id, channel)
    await quota(world, "set-pool", world.moderator_id, opt("credits", 5, 4))
    await quota(world, "user-default", world.moderator_id, opt("unlimited", True, 5))
    assert (await final(await imagine(world, "four of five", samples=4))).embeds

    def alerts() -> list[str]:
        return [m.content for m in world.discord.channel_messages(log_channel.id)]

    await world.discord.wait_for(lambda: any("80 %" in a for a in alerts()), timeout=10)
    assert (await final(await imagine(world, "five of five"))).embeds
    await world.discord.wait_for(lambda: any("100 %" in a for a in alerts()), timeout=10)
    assert sum("80 %" in a for a in alerts()) == 1


async def test_sync_command_is_for_the_owner_only(world: World):
    async def sync_as(user_id: int):
        interaction = await world.discord.slash(
            "sync", guild_id=world.guild_id, channel_id=world.channel_id, user_id=user_id
        )
        await interaction.wait_for(
            lambda r: (
                bool(r.callbacks) and (r.callbacks[0].type == CHANNEL_MESSAGE or bool(r.followups))
            ),
            timeout=15,
        )
        return interaction

    refused = await sync_as(world.moderator_id)
    assert "Only the bot's owner" in answer(refused)
    owner = world.discord.add_member(
        world.guild_id, user_id=world.discord.owner_user.id, name="app-owner"
    )
    synced = await sync_as(owner.id)
    assert "Synced" in answer(synced)
    assert world.discord.registered_commands(world.guild_id)
