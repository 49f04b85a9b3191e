"""Result buttons check the member before anything public happens, end to end.

A re-roll or a variation answered with a public "thinking…" first shows the
whole channel that someone pressed a button, then refuses them privately. The
buttons run the member checks (ban, allowed channels, blocked words) before they
acknowledge, so a refusal is the private first response, as for the commands.
The full-size picks (U1–U4) too: they make no new image, but a ban or a channel
rule stops them like the rest. The message menus check before opening their
prompt form, so that nobody types a prompt for nothing.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.e2e.conftest import MEMBER_PERMISSIONS, World
from tests.e2e.test_generation import final, imagine, job_id_of, opt, settled_balance
from tests.e2e.test_member import balance
from tests.e2e.test_moderation import moderation
from tests.e2e.test_quota import quota
from tests.emulators.discord import InteractionRecord, MessageRecord
from tests.emulators.providers import make_png

CHANNEL_MESSAGE = 4
DEFERRED = 5
MODAL = 9
EPHEMERAL = 1 << 6
GENERATIONS = ("text2img", "img2img", "multi_ref", "nbpro")


def generations(world: World) -> int:
    """Jobs the providers were asked to run (not their polls or downloads)."""
    return sum(len(world.providers.requests_to(endpoint)) for endpoint in GENERATIONS)


def public_messages(world: World) -> list[tuple[int, str]]:
    """What everyone in the channel can see, placeholders ("thinking…") included."""
    return [
        (m.id, m.content)
        for m in world.discord.channel_messages(world.channel_id, include_deleted=True)
        if not m.ephemeral
    ]


async def refused_privately(press: InteractionRecord) -> str:
    """The refusal, asserted to be the interaction's first and only response and
    for the presser alone: an ephemeral message (4, flag 64), not a deferral (5)."""
    callback = await press.wait_for_callback(timeout=15)
    assert callback.type == CHANNEL_MESSAGE, f"first response {callback.type}: {callback.data}"
    assert int(callback.data.get("flags") or 0) & EPHEMERAL, callback.data
    assert press.original is not None and press.original.ephemeral
    assert len(press.callbacks) == 1
    return str(callback.data["content"])


async def public_result(world: World, prompt: str, samples: int = 2) -> tuple[MessageRecord, str]:
    result = await final(await imagine(world, prompt, samples=samples))
    assert result.embeds and not result.ephemeral, result.content
    return result, job_id_of(result)


async def ban(world: World, user_id: int, reason: str) -> None:
    member = {"name": "member", "type": 6, "value": str(user_id)}
    hours = {"name": "hours", "type": 10, "value": 2}
    await quota(world, "ban", world.moderator_id, member, hours, opt("reason", reason))
    ledger: Any = world.bot.runtime.ledger
    assert await ledger.active_ban(str(world.guild_id), str(user_id)) is not None


async def nothing_spent_by(world: World, user_id: int, *, generations_before: int) -> None:
    """After a later job of someone else has run (so anything the refused presses
    could have started would have reached the ledger and the provider by now)."""
    barrier = await final(await imagine(world, "a barrier after the presses"))
    assert barrier.embeds
    await settled_balance(world)
    theirs = await balance(world, user_id)
    assert (theirs.used, theirs.reserved) == (0, 0)
    assert generations(world) == generations_before + 1  # the barrier's only


@pytest.mark.parametrize("button", ["reroll:{job}:0", "var:{job}:1", "up:{job}:1"])
async def test_a_banned_member_pressing_a_result_button_is_refused_privately_first(
    world: World, button: str
):
    result, job = await public_result(world, "a harbour at dawn")
    bruno = world.discord.add_member(world.guild_id, name="bruno", permissions=MEMBER_PERMISSIONS)
    await ban(world, bruno.id, "spamming re-rolls")
    seen_before = public_messages(world)
    generations_before = generations(world)

    press = await world.discord.click(result, "ib:" + button.format(job=job), user_id=bruno.id)
    text = await refused_privately(press)

    assert "banned" in text and "spamming re-rolls" in text
    assert public_messages(world) == seen_before  # no "thinking…", no refusal, no result
    await nothing_spent_by(world, bruno.id, generations_before=generations_before)


@pytest.mark.parametrize("button", ["reroll:{job}:0", "var:{job}:2", "edit:{job}:0", "up:{job}:2"])
async def test_a_button_in_a_channel_no_longer_allowed_is_refused_privately_first(
    world: World, button: str
):
    result, job = await public_result(world, "a lantern in the rain")
    channel = {"name": "channel", "type": 7, "value": str(world.nsfw_channel_id)}
    await quota(world, "channels", world.moderator_id, opt("action", "add"), channel)
    seen_before = public_messages(world)
    generations_before = generations(world)

    custom_id = "ib:" + button.format(job=job)
    press = await world.discord.click(result, custom_id, user_id=world.member_id)
    text = await refused_privately(press)  # for Edit: no form to type a prompt into

    assert f"only in <#{world.nsfw_channel_id}>" in text
    assert public_messages(world) == seen_before
    assert generations(world) == generations_before
    mine = await balance(world)
    assert (mine.used, mine.reserved) == (2 * world.settings.costs["text2img"], 0)


async def test_a_member_banned_while_the_edit_form_is_open_is_refused_privately_first(
    world: World,
):
    result, job = await public_result(world, "a quiet garden")
    bruno = world.discord.add_member(world.guild_id, name="bruno", permissions=MEMBER_PERMISSIONS)
    opened = await world.discord.click(result, f"ib:edit:{job}:0", user_id=bruno.id)
    form = await opened.wait_for_callback(timeout=15)
    assert form.type == MODAL
    await ban(world, bruno.id, "off-topic edits")
    seen_before = public_messages(world)
    generations_before = generations(world)

    submitted = await world.discord.submit_modal(
        form.data["custom_id"],
        {"prompt": "the garden at night", "image": "1"},
        guild_id=world.guild_id,
        channel_id=world.channel_id,
        user_id=bruno.id,
        message=result,
    )
    text = await refused_privately(submitted)

    assert "banned" in text and "off-topic edits" in text
    assert public_messages(world) == seen_before
    await nothing_spent_by(world, bruno.id, generations_before=generations_before)


async def test_a_re_roll_of_a_prompt_blocked_since_is_refused_privately_first(world: World):
    result, job = await public_result(world, "a kraken in the bay")
    await moderation(world, "blocklist add", world.moderator_id, opt("rule", "kraken"))
    seen_before = public_messages(world)

    press = await world.discord.click(result, f"ib:reroll:{job}:0", user_id=world.member_id)
    text = await refused_privately(press)

    assert "can't be used on this server" in text
    assert public_messages(world) == seen_before
    mine = await balance(world)
    assert (mine.used, mine.reserved) == (2 * world.settings.costs["text2img"], 0)


async def test_a_banned_member_is_still_refused_when_the_early_checks_run_out_of_time(
    world: World, monkeypatch
):
    import cogs._service

    result, job = await public_result(world, "a windmill")
    bruno = world.discord.add_member(world.guild_id, name="bruno", permissions=MEMBER_PERMISSIONS)
    await ban(world, bruno.id, "too many windmills")
    generations_before = generations(world)
    monkeypatch.setattr(cogs._service, "EARLY_CHECKS_BUDGET", 0)  # every early check late

    press = await world.discord.click(result, f"ib:reroll:{job}:0", user_id=bruno.id)
    # Acknowledged first, as before the early checks existed; refused by the ledger.
    told = await final(press)
    assert press.callbacks[0].type == DEFERRED
    assert told.ephemeral and "too many windmills" in told.content
    assert press.original is not None and press.original.deleted  # the placeholder went
    monkeypatch.undo()
    await nothing_spent_by(world, bruno.id, generations_before=generations_before)


@pytest.mark.parametrize("menu", ["Edit image", "Blend images"])
async def test_a_banned_member_opening_a_message_menu_is_refused_before_its_form(
    world: World, menu: str
):
    png = await asyncio.to_thread(make_png, 640, 480)
    attachments = [
        world.discord.add_attachment(world.channel_id, png, f"cat{n}.png", "image/png")
        for n in range(2)
    ]
    target = world.discord.add_message(
        world.channel_id, author_id=world.member_id, attachments=attachments
    )
    bruno = world.discord.add_member(world.guild_id, name="bruno", permissions=MEMBER_PERMISSIONS)
    await ban(world, bruno.id, "photo spam")
    seen_before = public_messages(world)

    opened = await world.discord.message_command(
        menu,
        guild_id=world.guild_id,
        channel_id=world.channel_id,
        user_id=bruno.id,
        message=target,
    )
    text = await refused_privately(opened)  # not a form to type a prompt into

    assert "banned" in text and "photo spam" in text
    assert public_messages(world) == seen_before
