"""/settings, private results and NSFW-flagged results, end to end."""

from __future__ import annotations

from typing import Any

from tests.e2e.conftest import World
from tests.e2e.test_button_checks import public_messages, public_result
from tests.e2e.test_generation import final, imagine, job_id_of, opt, posted_record
from tests.e2e.test_history_help import slash
from tests.e2e.test_member import EPHEMERAL, balance, press
from tests.e2e.test_moderation import moderation
from tests.emulators.providers import Success

UPDATE_MESSAGE = 7


async def open_settings(world: World, user_id: int | None = None):
    shown = await slash(world, "settings", user_id or world.member_id)
    callback = shown.callbacks[0]
    assert callback.data["flags"] & EPHEMERAL
    assert shown.original is not None
    return shown.original


def fields(embed: dict[str, Any]) -> dict[str, str]:
    return {f["name"]: f["value"] for f in embed["fields"]}


async def choose(world: World, message, custom_id: str, value: str, user_id: int | None = None):
    click = await world.discord.click(
        message, custom_id, user_id=user_id or world.member_id, values=[value]
    )
    await click.wait_for(lambda r: bool(r.callbacks), timeout=15)
    return click


async def test_settings_fill_gaps_and_explicit_options_win(world: World):
    me = world.member_id
    page = await open_settings(world)
    assert f"is:style:{me}" in page.custom_ids()
    assert f"is:private:{me}:1" not in page.custom_ids()  # the guild has not allowed it
    await choose(world, page, f"is:aspect_ratio:{me}", "16:9")
    await choose(world, page, f"is:provider:{me}", "nanobanana")
    await choose(world, page, f"is:size:{me}", "2k")
    await choose(world, page, f"is:style:{me}", "watercolor")
    click = await press(world, page, f"is:samples:{me}:2", me)
    assert click.callbacks[0].type == UPDATE_MESSAGE
    shown = fields(click.callbacks[0].data["embeds"][0])
    assert shown == {
        "Style": "watercolor",
        "Aspect ratio": "16:9",
        "Size": "2k",
        "Provider": "nanobanana",
        "Images per job": "2",
    }

    # Nothing given: every default applies (Nano Banana Pro, 2k, 16:9, two images, the style).
    result = await final(await imagine(world, "a heron"))
    assert result.embeds, result.content
    calls = world.providers.requests_to("nbpro")
    assert len(calls) == 2  # one call per image
    body = calls[-1].json or {k: v[0] for k, v in calls[-1].form.items()}
    assert body["size"] == "2k" and body["aspectRatio"] == "16:9"
    assert "watercolour painting of a heron" in body["prompt"]
    assert (await balance(world)).used == 8  # two 2k images at 4

    # Explicit options and prompt parameters win over every default.
    before = len(world.providers.requests_to("text2img"))
    explicit = await final(
        await imagine(world, "a heron --ar 1:1", provider="modelslab", samples=1, style="photo")
    )
    assert explicit.embeds
    sent = world.providers.requests_to("text2img")[before:][0].json
    assert sent["width"] == sent["height"] and sent["samples"] == 1
    assert "watercolour" not in sent["prompt"] and "photograph" in sent["prompt"]

    # Pressing the chosen number again clears the default; so does "no default".
    cleared = await press(world, page, f"is:samples:{me}:0", me)
    assert fields(cleared.callbacks[0].data["embeds"][0])["Images per job"] == "no default"
    await choose(world, page, f"is:style:{me}", "-")
    settings = await open_settings(world)
    assert "no default" in str(settings.embeds[0]["fields"][0])


async def test_settings_are_per_member_and_per_guild(world: World):
    page = await open_settings(world)
    await choose(world, page, f"is:aspect_ratio:{world.member_id}", "9:16")
    theirs = await world.discord.click(
        page, f"is:aspect_ratio:{world.member_id}", user_id=world.moderator_id, values=["1:1"]
    )
    await theirs.wait_for(lambda r: bool(r.callbacks), timeout=15)
    assert "someone else's settings" in theirs.callbacks[0].data["content"]
    mine = await open_settings(world, world.moderator_id)
    assert fields(mine.embeds[0])["Aspect ratio"] == "no default"
    elsewhere = await world.discord.slash(
        "settings",
        guild_id=world.other_guild_id,
        channel_id=world.other_channel_id,
        user_id=world.other_member_id,
    )
    await elsewhere.wait_for(lambda r: bool(r.callbacks), timeout=15)
    assert fields(elsewhere.callbacks[0].data["embeds"][0])["Aspect ratio"] == "no default"


async def test_private_results_only_where_the_guild_allows_them(world: World):
    me = world.member_id
    page = await open_settings(world)
    assert f"is:private:{me}:1" not in page.custom_ids()
    refused = await moderation(world, "private-results", me, opt("allowed", True, 5))
    assert "Only moderators" in refused.callbacks[0].data["content"]
    await moderation(world, "private-results", world.moderator_id, opt("allowed", True, 5))
    page = await open_settings(world)
    toggled = await press(world, page, f"is:private:{me}:1", me)
    assert fields(toggled.callbacks[0].data["embeds"][0])["Private results"] == "on"

    interaction = await imagine(world, "a secret lantern", samples=2)
    deferred = await interaction.wait_for_callback()
    assert deferred.data["flags"] & EPHEMERAL
    result = await final(interaction)
    assert result.ephemeral and result.embeds
    job_id = job_id_of(result)
    assert f"ib:del:{job_id}:0" not in result.custom_ids()  # dismissed, not deleted
    public = [m for m in world.discord.channel_messages(world.channel_id) if not m.ephemeral]
    assert not any("secret lantern" in str(m.embeds) for m in public)

    info = await press(world, result, f"ib:info:{job_id}:0", me)
    assert info.callbacks[0].data["flags"] & EPHEMERAL
    pick = await world.discord.click(result, f"ib:up:{job_id}:1", user_id=me)
    picked = await pick.wait_for_original(timeout=20)
    assert picked.ephemeral and picked.attachments
    reroll = await world.discord.click(result, f"ib:reroll:{job_id}:0", user_id=me)
    again = await final(reroll)
    assert again.ephemeral and again.embeds
    assert (await balance(world)).used == 4

    # Moderators turn it off: results are public again, whatever members chose.
    await moderation(world, "private-results", world.moderator_id, opt("allowed", False, 5))
    public_again = await final(await imagine(world, "a public lantern"))
    assert not public_again.ephemeral


async def test_nsfw_results_are_withheld_outside_age_restricted_channels(world: World):
    world.providers.script("text2img", Success(nsfw=True))
    interaction = await imagine(world, "a flagged picture", samples=2)
    await interaction.wait_for(lambda r: bool(r.followups), timeout=20)
    told = interaction.followups[-1]
    assert told.ephemeral and "flagged this result as not safe for work" in told.content
    assert not any(m.attachments for m in world.discord.channel_messages(world.channel_id))
    user = await balance(world)
    assert (user.used, user.reserved) == (0, 0)

    world.providers.script("text2img", Success(nsfw=True))
    restricted = await world.discord.slash(
        "imagine",
        guild_id=world.guild_id,
        channel_id=world.nsfw_channel_id,
        user_id=world.member_id,
        options=[opt("prompt", "a flagged picture"), opt("samples", 2, 4)],
    )
    result = await final(restricted)
    assert result.attachments
    assert all(a.filename.startswith("SPOILER_") for a in result.attachments)
    assert "image" not in result.embeds[0]  # the embed does not show it unblurred
    assert (await balance(world)).used == 2
    job_id = job_id_of(result)
    record = await posted_record(world, job_id)
    assert record.image(1) is not None
    assert record.image(1).url is not None and "SPOILER_image_1" in record.image(1).url


async def test_a_private_choice_is_kept_when_the_early_checks_run_out_of_time(
    world: World, monkeypatch
):
    import cogs._service

    me = world.member_id
    made_public, job_id = await public_result(world, "a harbour at noon", samples=1)
    await moderation(world, "private-results", world.moderator_id, opt("allowed", True, 5))
    page = await open_settings(world)
    await press(world, page, f"is:private:{me}:1", me)
    # The member's settings cannot be read in time (a busy database): the
    # acknowledgement may not guess that they are public.
    monkeypatch.setattr(cogs._service, "EARLY_CHECKS_BUDGET", 0)

    interaction = await imagine(world, "a secret lantern")
    deferred = await interaction.wait_for_callback()
    assert deferred.data.get("flags", 0) & EPHEMERAL
    result = await final(interaction)
    assert result.ephemeral and result.embeds and result.attachments

    # A button on a result posted publicly before: its new result is private too.
    reroll = await world.discord.click(made_public, f"ib:reroll:{job_id}:0", user_id=me)
    assert (await reroll.wait_for_callback()).data.get("flags", 0) & EPHEMERAL
    again = await final(reroll)
    assert again.ephemeral and again.embeds

    seen = [(mid, text) for mid, text in public_messages(world) if mid != made_public.id]
    assert not seen
    assert (await balance(world)).used == 3


async def test_a_public_result_reaches_the_channel_when_the_early_checks_run_out_of_time(
    world: World, monkeypatch
):
    import cogs._service

    monkeypatch.setattr(cogs._service, "EARLY_CHECKS_BUDGET", 0)
    interaction = await imagine(world, "a lantern for everyone", samples=2)
    # Unread settings: acknowledged privately, in case the member chose so.
    assert (await interaction.wait_for_callback()).data.get("flags", 0) & EPHEMERAL

    def posted() -> list[Any]:
        return [
            m
            for m in world.discord.channel_messages(world.channel_id)
            if not m.ephemeral and m.embeds
        ]

    await world.discord.wait_for(lambda: bool(posted()), timeout=20, what="the public result")
    (result,) = posted()
    assert result.content == f"<@{world.member_id}> your images are ready."
    assert "lantern for everyone" in result.embeds[0]["description"]
    assert len(result.attachments) == 3  # the grid and both images
    job_id = job_id_of(result)
    assert f"ib:del:{job_id}:0" in result.custom_ids()  # a public result can be deleted
    await interaction.wait_for(lambda r: r.original is not None and r.original.deleted)
    record = await posted_record(world, job_id)
    assert not record.request.private
    assert record.message_id == str(result.id)
    assert (await balance(world)).used == 2


async def test_a_public_result_the_channel_refuses_reaches_the_member_privately(
    world: World, monkeypatch
):
    """The bot may not post in the channel (no Send Messages there), which the
    interaction's own answer does not need: the member still gets the images."""
    import cogs._service

    monkeypatch.setattr(cogs._service, "EARLY_CHECKS_BUDGET", 0)
    world.discord.channels_closed_to_bot.add(world.channel_id)
    result = await final(await imagine(world, "a lantern for everyone"))
    assert result.ephemeral and result.embeds and result.attachments
    assert not [m for m in world.discord.channel_messages(world.channel_id) if not m.ephemeral]
    assert (await balance(world)).used == 1
