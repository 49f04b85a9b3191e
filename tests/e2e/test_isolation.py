"""One member's action never reaches another member's image, words or guild."""

from __future__ import annotations

import asyncio

import pytest

from cogs._views import PromptModal
from tests.e2e.conftest import World
from tests.e2e.test_generation import MODAL, final, imagine, job_id_of, opt
from tests.e2e.test_quota import assert_private, quota
from tests.emulators.providers import make_png


def open_modals(world: World) -> set[str]:
    """The custom ids of the modals discord.py would route a submission to."""
    return set(world.bot._connection._view_store._modals)


async def _image_message(world: World, guild_id: int, channel_id: int, user_id: int, size):
    png = await asyncio.to_thread(make_png, *size)
    attachment = world.discord.add_attachment(
        channel_id, png, f"photo_{user_id}.png", "image/png", ephemeral=False
    )
    message = world.discord.add_message(channel_id, author_id=user_id, attachments=[attachment])
    return message, attachment["url"]


async def _open_edit_modal(world: World, guild_id: int, channel_id: int, user_id: int, message):
    menu = await world.discord.message_command(
        "Edit image", guild_id=guild_id, channel_id=channel_id, user_id=user_id, message=message
    )
    callback = await menu.wait_for_callback()
    assert callback.type == MODAL
    return str(callback.data["custom_id"])


def _sent_reference(world: World, prompt: str) -> object:
    sent = [r.json for r in world.providers.requests_to("img2img") if r.json["prompt"] == prompt]
    assert len(sent) == 1, sent
    return sent[0]["ref_image"]


async def test_two_members_edit_modals_open_at_once_act_on_their_own_images(world: World):
    ada = (world.guild_id, world.channel_id, world.member_id)
    eve = (world.other_guild_id, world.other_channel_id, world.other_member_id)
    ada_message, ada_url = await _image_message(world, *ada, (640, 480))
    eve_message, eve_url = await _image_message(world, *eve, (480, 640))

    ada_modal = await _open_edit_modal(world, *ada, ada_message)
    eve_modal = await _open_edit_modal(world, *eve, eve_message)

    # Both forms are open; the first opened is submitted first.
    ada_submit = await world.discord.submit_modal(
        ada_modal,
        {"prompt": "ada's hat"},
        guild_id=world.guild_id,
        channel_id=world.channel_id,
        user_id=world.member_id,
    )
    eve_submit = await world.discord.submit_modal(
        eve_modal,
        {"prompt": "eve's scarf"},
        guild_id=world.other_guild_id,
        channel_id=world.other_channel_id,
        user_id=world.other_member_id,
    )
    ada_result = await final(ada_submit)
    eve_result = await final(eve_submit)
    assert ada_result.embeds and eve_result.embeds
    assert ada_result.channel_id == world.channel_id
    assert eve_result.channel_id == world.other_channel_id
    assert _sent_reference(world, "ada's hat") in (ada_url, [ada_url])
    assert _sent_reference(world, "eve's scarf") in (eve_url, [eve_url])
    # Each form is bound to its member and their image.
    assert str(world.member_id) in ada_modal and str(ada_message["id"]) in ada_modal


async def test_one_modal_timing_out_leaves_the_others_open(
    world: World, monkeypatch: pytest.MonkeyPatch
):
    ada = (world.guild_id, world.channel_id, world.member_id)
    eve = (world.other_guild_id, world.other_channel_id, world.other_member_id)
    ada_message, ada_url = await _image_message(world, *ada, (640, 480))
    eve_message, _ = await _image_message(world, *eve, (480, 640))

    # Eve takes her time; Ada opens hers after and walks away from it.
    eve_modal = await _open_edit_modal(world, *eve, eve_message)
    monkeypatch.setattr(PromptModal, "TIMEOUT", 0.3)
    ada_modal = await _open_edit_modal(world, *ada, ada_message)
    await world.discord.wait_for(lambda: ada_modal not in open_modals(world), timeout=10)

    eve_submit = await world.discord.submit_modal(
        eve_modal,
        {"prompt": "eve, after ada left"},
        guild_id=world.other_guild_id,
        channel_id=world.other_channel_id,
        user_id=world.other_member_id,
    )
    result = await final(eve_submit)
    assert result.embeds and result.channel_id == world.other_channel_id
    assert _sent_reference(world, "eve, after ada left") != ada_url


async def test_refusals_reach_only_the_member_who_was_refused(world: World):
    earlier = await final(await imagine(world, "made before the ban"))
    job = job_id_of(earlier)
    member = {"name": "member", "type": 6, "value": str(world.member_id)}
    reason = "posted a neighbour's photo"
    await quota(
        world,
        "ban",
        world.moderator_id,
        member,
        {"name": "hours", "type": 10, "value": 2},
        opt("reason", reason),
    )
    refused = [
        await imagine(world, "while banned"),
        await world.discord.click(earlier, f"ib:reroll:{job}:0", user_id=world.member_id),
        await world.discord.click(earlier, f"ib:var:{job}:1", user_id=world.member_id),
    ]
    for interaction in refused:
        answer = await final(interaction)
        assert reason in answer.content
        assert_private(world, answer)
        # No public "thinking…" placeholder is left hanging.
        original = interaction.original
        assert original is None or original.deleted or original.ephemeral

    assert refused[0].callbacks[0].type == 4  # the ban, too, was the very first answer

    # A channel rule and a bad file are refused privately too.
    await quota(world, "unban", world.moderator_id, member)
    elsewhere = {"name": "channel", "type": 7, "value": str(world.nsfw_channel_id)}
    await quota(world, "channels", world.moderator_id, opt("action", "add"), elsewhere)
    wrong_channel = await imagine(world, "in the wrong channel")
    answer = await final(wrong_channel)
    assert "only in" in answer.content
    assert_private(world, answer)
    # Known before answering at all: no public "thinking…" ever appeared.
    assert wrong_channel.callbacks[0].type == 4
    pdf = world.discord.add_attachment(world.nsfw_channel_id, b"%PDF-1.7", "cat.png", "image/png")
    edit = await world.discord.slash(
        "edit",
        guild_id=world.guild_id,
        channel_id=world.nsfw_channel_id,
        user_id=world.member_id,
        options=[opt("image", pdf["id"], 11), opt("prompt", "x")],
        attachments={"image": pdf},
    )
    answer = await final(edit)
    assert "PDF" in answer.content
    assert_private(world, answer)
