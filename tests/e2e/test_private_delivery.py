"""Private results that outlive their interaction token go by DM, never to the channel.

A token dies after 15 minutes, and a restarted bot never had it. A private job
then goes to the member by direct message, and so does its failure; if their
DMs are closed it is refunded, and the channel hears only that (no prompt, no
image).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.conftest import World
from tests.e2e.test_generation import job_id_of, opt
from tests.e2e.test_member import balance
from tests.e2e.test_restart import BotProcess, imagine, settled_balance, setup
from tests.emulators.discord import DiscordEmulator, MessageRecord
from tests.emulators.providers import Error, Processing

__all__ = ["setup"]  # the restart tests' fixture: a bot run as a real subprocess

PROMPT = "a lighthouse only I may see"
CHANNEL_MESSAGE = 4
EPHEMERAL = 1 << 6


async def choose_private_results(discord_emu: DiscordEmulator, ids: dict[str, int]) -> None:
    """The moderators allow private results and the member turns them on in /settings."""
    allow = await discord_emu.slash(
        "moderation",
        subcommand="private-results",
        guild_id=ids["guild_id"],
        channel_id=ids["channel_id"],
        user_id=ids["moderator_id"],
        options=[opt("allowed", True, 5)],
    )
    await allow.wait_for(lambda r: bool(r.callbacks), timeout=15)
    shown = await discord_emu.slash(
        "settings", guild_id=ids["guild_id"], channel_id=ids["channel_id"], user_id=ids["member_id"]
    )
    page = await shown.wait_for_original(timeout=15)
    toggle = await discord_emu.click(
        page, f"is:private:{ids['member_id']}:1", user_id=ids["member_id"]
    )
    await toggle.wait_for(lambda r: bool(r.callbacks), timeout=15)
    assert "on" in str(toggle.callbacks[0].data["embeds"])


def ids_of(world: World) -> dict[str, int]:
    return {
        "guild_id": world.guild_id,
        "channel_id": world.channel_id,
        "member_id": world.member_id,
        "moderator_id": world.moderator_id,
    }


def dm_results(discord_emu: DiscordEmulator, user_id: int) -> list[MessageRecord]:
    return [m for m in discord_emu.dm_messages(user_id) if m.embeds]


def public(discord_emu: DiscordEmulator, channel_id: int) -> list[MessageRecord]:
    return [m for m in discord_emu.channel_messages(channel_id) if not m.ephemeral]


def assert_nothing_public(discord_emu: DiscordEmulator, channel_id: int) -> None:
    for message in public(discord_emu, channel_id):
        assert not message.attachments and not message.embeds, message.to_payload()
        assert PROMPT not in message.content


async def _late_private_job(world: World, *, scripted: bool = False) -> Any:
    """``scripted``: the test has scripted the provider's answer already."""
    await choose_private_results(world.discord, ids_of(world))
    # The token dies while the provider still works: the job outlives it.
    world.discord.token_ttl = 0.5
    if not scripted:
        world.providers.script("text2img", Processing(polls=3, eta=0.3))
    world.providers.latency = 0.3
    return await world.discord.slash(
        "imagine",
        guild_id=world.guild_id,
        channel_id=world.channel_id,
        user_id=world.member_id,
        options=[opt("prompt", PROMPT), opt("provider", "modelslab")],
    )


async def test_a_private_job_past_its_token_arrives_by_dm(world: World):
    await _late_private_job(world)
    await world.discord.wait_for(
        lambda: bool(dm_results(world.discord, world.member_id)), timeout=30, what="a DM"
    )
    (message,) = dm_results(world.discord, world.member_id)
    assert message.attachments
    assert PROMPT in message.embeds[0]["description"]
    assert any(c.startswith("ib:") for c in message.custom_ids())  # the result buttons
    assert (await balance(world)).used == 1
    assert_nothing_public(world.discord, world.channel_id)


async def test_a_private_job_failing_past_its_token_is_told_by_dm(world: World):
    world.providers.script(
        "text2img", Processing(polls=3, eta=0.3, then=Error(http_status=400, message="nope"))
    )
    await _late_private_job(world, scripted=True)

    def dms() -> list[MessageRecord]:
        return [m for m in world.discord.dm_messages(world.member_id) if m.content]

    await world.discord.wait_for(lambda: bool(dms()), timeout=30, what="a DM")
    (notice,) = dms()
    assert notice.content.startswith("❌ ModelsLab rejected the request: nope.")
    assert f"in <#{world.channel_id}>: “{PROMPT}”" in notice.content
    mine = await balance(world)
    assert (mine.used, mine.reserved) == (0, 0)
    mentions = [
        m for m in public(world.discord, world.channel_id) if str(world.member_id) in m.content
    ]
    assert not mentions
    assert_nothing_public(world.discord, world.channel_id)


@pytest.mark.parametrize("button", ["reroll:{job}:0", "var:{job}:1", "up:{job}:1", "info:{job}:0"])
async def test_buttons_on_a_result_sent_by_dm_say_where_they_work(world: World, button: str):
    await _late_private_job(world)
    await world.discord.wait_for(
        lambda: bool(dm_results(world.discord, world.member_id)), timeout=30, what="a DM"
    )
    (message,) = dm_results(world.discord, world.member_id)
    asked = len(world.providers.requests_to("text2img"))

    custom_id = "ib:" + button.format(job=job_id_of(message))
    press = await world.discord.click(message, custom_id, user_id=world.member_id)
    callback = await press.wait_for_callback(timeout=15)

    # Privately, as the first response: not "thinking…", not "unknown to this bot".
    assert callback.type == CHANNEL_MESSAGE, callback
    assert int(callback.data.get("flags") or 0) & EPHEMERAL
    text = callback.data["content"]
    assert "sent by direct message" in text and "**Artists**" in text, text
    assert "unknown" not in text
    assert len(world.providers.requests_to("text2img")) == asked
    mine = await balance(world)
    assert (mine.used, mine.reserved) == (1, 0)  # the result itself, nothing more
    assert_nothing_public(world.discord, world.channel_id)


async def test_closed_dms_refund_and_the_channel_hears_only_that(world: World):
    world.discord.dms_closed.add(world.member_id)
    await _late_private_job(world)

    def notices() -> list[MessageRecord]:
        return [
            m
            for m in public(world.discord, world.channel_id)
            if m.content.startswith(f"<@{world.member_id}>")
        ]

    await world.discord.wait_for(lambda: bool(notices()), timeout=30, what="a notice")
    (notice,) = notices()
    assert "direct messages are closed" in notice.content
    assert "nothing was charged" in notice.content
    mine = await balance(world)
    assert (mine.used, mine.reserved) == (0, 0)
    assert not dm_results(world.discord, world.member_id)
    assert_nothing_public(world.discord, world.channel_id)


async def test_a_private_job_resumed_after_a_kill_arrives_by_dm(setup: Any):
    discord_emu, providers, ids, bot, env = setup
    assert isinstance(bot, BotProcess)
    await bot.start(discord_emu)
    await choose_private_results(discord_emu, ids)
    providers.script("text2img", Processing(polls=40, eta=0.1))
    await imagine(discord_emu, ids, PROMPT)
    await discord_emu.wait_for(lambda: len(providers.requests_to("fetch")) >= 2, timeout=20)
    bot.kill()
    await bot.wait()

    await bot.start(discord_emu)
    await discord_emu.wait_for(
        lambda: bool(dm_results(discord_emu, ids["member_id"])), timeout=60, what="a DM"
    )
    balance_after = await settled_balance(env, ids["guild_id"])
    (message,) = dm_results(discord_emu, ids["member_id"])
    assert message.attachments
    assert len(providers.requests_to("text2img")) == 1
    assert (balance_after.used, balance_after.reserved) == (1, 0)
    assert_nothing_public(discord_emu, ids["channel_id"])
