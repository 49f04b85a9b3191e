"""A moderator of guild A reaches nothing of guild B: not its jobs, not its members' credits.

Guild B's job ids travel (a copied or forwarded result carries its buttons and
its "Job …" footer), and members belong to several guilds. Each test acts as a
moderator of A, where every moderator check passes, so only the guild check
stands between them and B.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest

from tests.e2e.conftest import World
from tests.e2e.test_generation import answer_of, final, is_final, job_id_of, opt
from tests.e2e.test_quota import answer, quota

CHANNEL_MESSAGE = 4
EPHEMERAL = 1 << 6


async def _eve_result_in_b(world: World, prompt: str):
    interaction = await world.discord.slash(
        "imagine",
        guild_id=world.other_guild_id,
        channel_id=world.other_channel_id,
        user_id=world.other_member_id,
        options=[opt("prompt", prompt), opt("samples", 2, 4)],
    )
    result = await final(interaction)
    assert result.embeds, result.content
    return result


def _carried_into_a(world: World, result) -> Any:
    """Guild B's result as it might reach guild A: its embed and its buttons."""
    payload = world.discord.add_message(
        world.channel_id, author_id=world.discord.bot_user_id, embeds=result.embeds
    )
    record = world.discord.messages[int(payload["id"])]
    record.components = copy.deepcopy(result.components)
    return record


async def _private_answer(interaction) -> str:
    """The text of an answer only the presser sees (a first reply or a follow-up)."""

    def answered(r) -> bool:
        first = r.callbacks and r.callbacks[0].type == CHANNEL_MESSAGE
        return bool(first or (r.callbacks and r.callbacks[0].type == 9) or is_final(answer_of(r)))

    await interaction.wait_for(answered, timeout=20)
    kind, data = interaction.callbacks[0]
    assert kind != 9, f"a modal opened on another guild's job: {data}"
    if kind == CHANNEL_MESSAGE:
        assert int(data.get("flags") or 0) & EPHEMERAL
        return str(data.get("content", ""))
    message = answer_of(interaction)
    assert message.ephemeral, message.content
    return str(message.content)


async def _settled(ledger: Any, guild_id: str, user_id: str) -> Any:
    """The balance once the last job's reservation is settled (just after its post)."""
    for _ in range(200):
        balance = await ledger.balance(guild_id, user_id)
        if balance.guild.reserved == 0:
            return balance
        await asyncio.sleep(0.05)
    raise AssertionError(f"credits still reserved: {balance}")


@pytest.mark.parametrize(
    "action", ["reroll:{job}:0", "up:{job}:1", "var:{job}:2", "edit:{job}:0", "del:{job}:0"]
)
async def test_a_moderator_of_a_cannot_use_buttons_of_bs_jobs(world: World, action: str):
    result = await _eve_result_in_b(world, "eve's private garden")
    copied = _carried_into_a(world, result)
    sent_before = len(world.providers.requests)

    custom_id = "ib:" + action.format(job=job_id_of(result))
    press = await world.discord.click(copied, custom_id, user_id=world.moderator_id)
    text = await _private_answer(press)
    assert "unknown to this bot" in text, text

    assert len(world.providers.requests) == sent_before  # nothing ran on B's job
    assert not copied.deleted and not result.deleted
    for message in world.discord.channel_messages(world.channel_id):
        assert "garden" not in message.content
        assert not message.attachments, "an image of guild B reached guild A"


async def test_a_moderator_of_a_cannot_read_bs_generation_info(world: World):
    result = await _eve_result_in_b(world, "eve's secret recipe")
    copied = _carried_into_a(world, result)
    info = await world.discord.message_command(
        "Generation info",
        guild_id=world.guild_id,
        channel_id=world.channel_id,
        user_id=world.moderator_id,
        message=copied,
    )
    callback = await info.wait_for_callback()
    text = callback.data["content"]
    assert "not an image result of this bot" in text
    assert job_id_of(result) not in text and "recipe" not in text
    assert str(world.other_member_id) not in text


async def test_a_moderator_of_a_changes_nothing_of_b_with_any_quota_command(world: World):
    ledger: Any = world.bot.runtime.ledger
    guild_b, eve = str(world.other_guild_id), str(world.other_member_id)
    # Eve is a member of both guilds, has generated in B, and is banned in B.
    world.discord.add_member(world.guild_id, user_id=world.other_member_id, name="eve")
    await _eve_result_in_b(world, "eve's usage in B")
    before = await _settled(ledger, guild_b, eve)
    config_before = await ledger.guild_config(guild_b)
    member = {"name": "member", "type": 6, "value": str(world.other_member_id)}
    everyone_a = {"name": "role", "type": 8, "value": str(world.guild_id)}
    channel_a = {"name": "channel", "type": 7, "value": str(world.channel_id)}

    mod = world.moderator_id
    shown = answer(await quota(world, "show", mod, member))
    assert "of 40 left (0 used" in shown  # eve's credits here, not her use in B
    assert "guild_id" not in answer(await quota(world, "show", mod))
    usage = await quota(world, "usage", mod)
    await usage.wait_for(lambda r: bool(r.original and r.original.attachments), timeout=15)
    csv_text = next(a for a in usage.original.attachments if a.filename == "usage.csv")
    assert eve not in csv_text.data.decode()  # B's jobs are not A's usage
    for subcommand, options in (
        ("set-pool", [opt("credits", 0, 4)]),
        ("user-default", [opt("credits", 0, 4)]),
        ("role-limit", [everyone_a, opt("credits", 0, 4)]),
        ("user-limit", [member, opt("credits", 0, 4)]),
        ("grant", [member, opt("credits", 7, 4)]),
        ("grant", [opt("credits", 7, 4)]),
        ("reset", [member]),
        ("reset", []),
        ("ban", [member, {"name": "hours", "type": 10, "value": 2}, opt("reason", "in A")]),
        ("log-channel", [channel_a]),
        ("channels", [opt("action", "add"), channel_a]),
    ):
        reply = answer(await quota(world, subcommand, mod, *options))
        assert "Only moderators" not in reply and "went wrong" not in reply, (subcommand, reply)

    after = await ledger.balance(guild_b, eve)
    assert after.guild == before.guild
    assert after.user == before.user
    assert await ledger.guild_config(guild_b) == config_before
    assert await ledger.active_ban(guild_b, eve) is None
    assert await world.bot.jobs.allowed_channels(guild_b) == set()
    assert await world.bot.jobs.log_channel(guild_b) is None
    # And Eve still generates in B, in B's channel, on B's credits.
    assert (await _eve_result_in_b(world, "still fine in B")).embeds

    # A ban in B is not A's to lift.
    await ledger.ban(guild_b, eve, after.user.resets_at, "in B", by="b-mod")
    await quota(world, "unban", mod, member)
    assert await ledger.active_ban(guild_b, eve) is not None
