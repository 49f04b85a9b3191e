"""During and after a job, end to end: Cancel, Info, and their refusals and ledger figures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.e2e.conftest import MEMBER_PERMISSIONS as MEMBER
from tests.e2e.conftest import World, make_settings, populate, running_bot
from tests.e2e.test_generation import JOB_BUTTON, final, imagine, job_id_of
from tests.emulators.discord import MessageRecord
from tests.emulators.providers import Processing

CHANNEL_MESSAGE = 4
EPHEMERAL = 1 << 6


@pytest.fixture
async def world(emulators, tmp_path) -> AsyncIterator[World]:
    """Progress shown at every change, so Cancel appears at once."""
    discord_emu, providers = emulators
    ids = populate(discord_emu)
    settings = make_settings(discord_emu, providers, tmp_path / "data", progress_interval=0.0)
    async with running_bot(settings, discord_emu) as bot:
        await bot.sync_commands()
        yield World(discord_emu, providers, bot, settings, **ids)
    discord_emu.assert_no_violations()


async def balance(world: World, user_id: int | None = None):
    """The member's balance once nothing of theirs is reserved any more."""
    ledger: Any = world.bot.runtime.ledger
    for _ in range(200):
        balances = await ledger.balance(str(world.guild_id), str(user_id or world.member_id), ())
        if balances.user.reserved == 0:
            return balances.user
        await asyncio.sleep(0.05)
    raise AssertionError(f"credits still reserved: {balances.user}")


def cancel_id(message: MessageRecord) -> str | None:
    for custom_id in message.custom_ids():
        match = JOB_BUTTON.fullmatch(custom_id)
        if match and match["action"] == "cancel":
            return custom_id
    return None


async def with_cancel(interaction):
    await interaction.wait_for(
        lambda r: r.original is not None and cancel_id(r.original) is not None, timeout=15
    )
    return interaction.original


def bystander(world: World) -> int:
    return world.discord.add_member(world.guild_id, name="bystander", permissions=MEMBER).id


async def press(world: World, message, custom_id: str, user_id: int):
    click = await world.discord.click(message, custom_id, user_id=user_id)
    await click.wait_for(lambda r: bool(r.callbacks), timeout=15)
    return click


async def test_requester_cancels_a_polling_job_and_is_refunded(world: World):
    world.providers.script("text2img", Processing(polls=1000, eta=0.05))
    interaction = await imagine(world, "a slow lighthouse", samples=2)
    progress = await with_cancel(interaction)
    custom_id = cancel_id(progress)
    assert custom_id is not None

    other = await press(world, progress, custom_id, bystander(world))
    assert "Only the person who asked" in other.callbacks[0].data["content"]

    click = await press(world, progress, custom_id, world.member_id)
    answer = click.callbacks[0]
    assert answer.type == CHANNEL_MESSAGE and answer.data["flags"] & EPHEMERAL
    assert "Cancelled" in answer.data["content"]
    message = await final(interaction)
    assert message.content == f"❌ Cancelled by <@{world.member_id}>; nothing was charged."
    assert message.components == []  # the Cancel button is gone
    user = await balance(world)
    assert (user.used, user.reserved, user.remaining) == (0, 0, 40)


async def test_a_moderator_cancels_a_queued_job(world: World):
    world.bot.runtime.pipeline.slots["modelslab"]._free = 0  # every slot busy elsewhere
    try:
        interaction = await imagine(world, "waiting in line")
        progress = await with_cancel(interaction)
        assert "position 1 in the queue" in progress.content
        custom_id = cancel_id(progress)
        assert custom_id is not None
        await press(world, progress, custom_id, world.moderator_id)
        message = await final(interaction)
        assert message.content == f"❌ Cancelled by <@{world.moderator_id}>; nothing was charged."
        assert world.bot.runtime.pipeline.slots["modelslab"].waiting == 0
    finally:
        world.bot.runtime.pipeline.slots["modelslab"]._free = 5
    assert not world.providers.requests_to("text2img")  # the provider never saw it
    assert (await balance(world)).used == 0


async def test_info_shows_everyone_how_to_make_the_image_again(world: World):
    interaction = await imagine(
        world,
        "a red fox",
        negative_prompt="blur",
        aspect_ratio="16:9",
        seed=4242,
    )
    result = await final(interaction)
    job_id = job_id_of(result)
    assert cancel_id(result) is None
    info = await press(world, result, f"ib:info:{job_id}:0", bystander(world))
    answer = info.callbacks[0]
    assert answer.type == CHANNEL_MESSAGE and answer.data["flags"] & EPHEMERAL
    embed = answer.data["embeds"][0]
    fields = {field["name"]: field["value"] for field in embed["fields"]}
    assert embed["description"] == "a red fox"
    assert fields["Negative prompt"] == "blur"
    assert fields["Seed"] == "4242"
    assert fields["Provider"] == "modelslab"
    assert fields["Model"] == "flux"
    assert "16:9" in fields["Size"] and "×" in fields["Size"]
    assert fields["Style"] == "none"
    assert fields["Parameters"] == "`--ar 16:9 --no blur --seed 4242`"
    assert "Credits" not in str(fields) and str(world.member_id) not in str(embed)


async def test_info_names_the_style_and_the_options_in_effect(world: World):
    result = await final(
        await imagine(world, "a red fox --steps 31 --guidance 7.5", style="anime", seed=7)
    )
    job_id = job_id_of(result)
    info = await press(world, result, f"ib:info:{job_id}:0", world.member_id)
    embed = info.callbacks[0].data["embeds"][0]
    fields = {field["name"]: field["value"] for field in embed["fields"]}
    assert fields["Style"] == "anime"
    assert embed["description"].startswith("anime illustration of a red fox")
    # The stored prompt carries the style already: pasting these back repeats it.
    assert "--style" not in fields["Parameters"]
    assert "--seed 7 --steps 31 --guidance 7.5" in fields["Parameters"]
    assert "--no photo, realistic" in fields["Parameters"]


async def test_info_of_another_guilds_result_is_refused(world: World):
    result = await final(await imagine(world, "ours"))
    job_id = job_id_of(result)
    stranger = await world.discord.click(
        result,
        f"ib:info:{job_id}:0",
        user_id=world.other_member_id,
        guild_id=world.other_guild_id,
        channel_id=world.other_channel_id,
    )
    await stranger.wait_for(lambda r: bool(r.callbacks), timeout=15)
    assert "unknown to this bot" in stranger.callbacks[0].data["content"]


async def test_moderators_generation_info_keeps_requester_and_cost(world: World):
    result = await final(await imagine(world, "a tally", samples=2))
    assert (await balance(world)).used == 2  # settled
    menu = await world.discord.message_command(
        "Generation info",
        guild_id=world.guild_id,
        channel_id=world.channel_id,
        user_id=world.moderator_id,
        message=result,
    )
    await menu.wait_for(lambda r: bool(r.callbacks), timeout=15)
    text = menu.callbacks[0].data["content"]
    assert f"<@{world.member_id}>" in text and "cost: 2" in text
