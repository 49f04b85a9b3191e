"""Members generate, edit and blend through the real discord.py client."""

from __future__ import annotations

import asyncio
import io
import re
import sys
from typing import Any

import pytest
from PIL import Image

from tests.e2e.conftest import World, make_settings, populate, running_bot
from tests.emulators.providers import Hang, Processing, make_png

DEFERRED = 5
CPYTHON_DEFAULT_SWITCH_INTERVAL = 0.005
MODAL = 9
JOB_BUTTON = re.compile(r"ib:(?P<action>\w+):(?P<job>[0-9a-f]{32}):(?P<n>\d)")


def is_final(message) -> bool:
    """A result (embed or files) or a failure, not a progress line."""
    if message is None or message.loading:
        return False
    return bool(message.embeds or message.attachments or message.content.startswith("❌"))


def answer_of(interaction):
    """What the member sees as the answer: the reply, or, for a refusal, the
    private follow-up that replaced the public "thinking…" placeholder."""
    original = interaction.original
    if original is not None and original.deleted:
        private = [m for m in interaction.followups if m.ephemeral and not m.deleted]
        return private[-1] if private else None
    return original


async def final(interaction, within: float = 20):
    await interaction.wait_for(lambda r: is_final(answer_of(r)), timeout=within)
    return answer_of(interaction)


async def posted_record(world: World, job_id: str) -> Any:
    """The job's record once its result is on record: the message appears first,
    and the images' paths and links are written just after it."""
    for _ in range(200):
        record = await world.bot.jobs.get(job_id)
        if record is not None and record.status in ("posted", "delivered"):
            return record
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} was never recorded as posted")


async def settled_balance(world: World):
    """The guild balance once every job has been settled or refunded."""
    ledger = world.bot.runtime.ledger
    for _ in range(200):
        balance = await ledger.balance(str(world.guild_id))  # type: ignore[attr-defined]
        if balance.guild.reserved == 0:
            return balance.guild
        await asyncio.sleep(0.05)
    raise AssertionError(f"credits still reserved: {balance}")


async def submit_menu_prompt(world: World, menu: str, target, prompt: str):
    """A member opens a message menu ("Edit image", "Blend images") on ``target``
    and submits its prompt form; the submission's interaction."""
    guild_id, channel_id, user_id = world.guild_id, world.channel_id, world.member_id
    opened = await world.discord.message_command(
        menu, guild_id=guild_id, channel_id=channel_id, user_id=user_id, message=target
    )
    callback = await opened.wait_for_callback()
    return await world.discord.submit_modal(
        callback.data["custom_id"],
        {"prompt": prompt},
        guild_id=guild_id,
        channel_id=channel_id,
        user_id=user_id,
    )


def opt(name: str, value: object, kind: int = 3) -> dict[str, object]:
    return {"name": name, "type": kind, "value": value}


def job_id_of(message) -> str:
    for custom_id in message.custom_ids():
        match = JOB_BUTTON.fullmatch(custom_id)
        if match:
            return match["job"]
    raise AssertionError(f"no job buttons on {message.custom_ids()}")


def decoded_sizes(message) -> list[tuple[int, int]]:
    sizes = []
    for attachment in message.attachments:
        with Image.open(io.BytesIO(attachment.data)) as image:
            image.load()
            sizes.append(image.size)
    return sizes


def no_one_pinged(world: World) -> None:
    for request in world.discord.requests:
        body = request.json if isinstance(request.json, dict) else None
        if body and "allowed_mentions" in body and body.get("content"):
            mentions = body["allowed_mentions"]
            assert "everyone" not in mentions.get("parse", []), request.path


async def imagine(world: World, prompt: str = "a red fox", **options: object):
    wire = [opt("prompt", prompt)]
    for name, value in options.items():
        wire.append(opt(name, value, 4 if isinstance(value, int) else 3))
    return await world.discord.slash(
        "imagine",
        guild_id=world.guild_id,
        channel_id=world.channel_id,
        user_id=world.member_id,
        options=wire,
    )


async def edit_photo(world: World, prompt: str = "make it winter"):
    """/edit of a 640×480 photo the member attached: the interaction and the attachment."""
    png = await asyncio.to_thread(make_png, 640, 480)
    attachment = world.discord.add_attachment(world.channel_id, png, "photo.png", "image/png")
    interaction = await world.discord.slash(
        "edit",
        guild_id=world.guild_id,
        channel_id=world.channel_id,
        user_id=world.member_id,
        options=[opt("image", attachment["id"], 11), opt("prompt", prompt)],
        attachments={"image": attachment},
    )
    return interaction, attachment


async def test_commands_are_registered(world: World):
    names = {command["name"] for command in world.discord.registered_commands()}
    assert {"imagine", "edit", "blend", "quota", "Edit image", "Blend images"} <= names
    assert "Generation info" in names


async def test_imagine_delivers_uploaded_files_with_buttons(world: World):
    interaction = await imagine(world, "a red fox @everyone", samples=2)
    callback = await interaction.wait_for_callback()
    assert callback.type == DEFERRED
    message = await final(interaction, within=20)
    embed = message.embeds[0]
    assert embed["title"] == "Imagine"
    assert "a red fox" in embed["description"]
    fields = {field["name"]: field["value"] for field in embed["fields"]}
    assert fields["Credits charged"] == "2"
    assert fields["Provider"].startswith("modelslab")
    names = [a.filename for a in message.attachments]
    assert names[0].startswith("grid.")
    assert len(names) == 3
    assert all(w > 0 for w, _ in decoded_sizes(message))
    actions = {JOB_BUTTON.fullmatch(c)["action"] for c in message.custom_ids()}
    assert actions == {"up", "var", "reroll", "edit", "info", "del"}
    sent = world.providers.requests_to("text2img")[-1].json
    assert sent["safety_checker"] == "yes"  # not an age-restricted channel
    no_one_pinged(world)


async def test_age_restricted_channel_leaves_the_safety_checker_to_the_provider(world: World):
    interaction = await world.discord.slash(
        "imagine",
        guild_id=world.guild_id,
        channel_id=world.nsfw_channel_id,
        user_id=world.member_id,
        options=[opt("prompt", "a moody street")],
    )
    await final(interaction, within=20)
    # Not forced on: the provider's own default applies.
    assert "safety_checker" not in world.providers.requests_to("text2img")[-1].json


async def test_progress_is_shown_while_the_provider_works(world: World):
    world.bot.settings.progress_interval = 0.2
    # The e2e settings poll every 0.05 s at most: about a second of "processing".
    world.providers.script("text2img", Processing(polls=20, eta=0.3))
    interaction = await imagine(world, "a slow painting")
    message = await final(interaction, within=20)
    contents = [edit.get("content") or "" for edit in message.edits]
    assert any("working on it" in c for c in contents), contents
    assert message.embeds


async def test_lines_of_brief_stages_are_not_shown_when_the_result_follows_at_once(
    world: World,
):
    """Fetching and uploading a result take moments: their progress lines would be
    replaced before anyone reads them, so none is sent (the provider's is)."""
    world.bot.settings.progress_interval = 0.2
    world.providers.script("text2img", Processing(polls=20, eta=0.3))
    interaction = await imagine(world, "a slow painting, quickly fetched")
    message = await final(interaction, within=20)
    contents = [edit.get("content") or "" for edit in message.edits]
    assert any("working on it" in c for c in contents), contents
    assert not any("Fetching" in c or "Uploading" in c for c in contents), contents
    assert message.embeds


async def test_lines_of_brief_stages_are_shown_when_they_last(
    world: World, monkeypatch: pytest.MonkeyPatch
):
    """The same line is sent once its stage outlasts the grace (here none), and
    always before the result, never over it."""
    import cogs._delivery

    monkeypatch.setattr(cogs._delivery, "BRIEF_GRACE", 0.0)
    world.bot.settings.progress_interval = 0.0
    interaction = await imagine(world, "a painting, slowly fetched")
    message = await final(interaction, within=20)
    contents = [edit.get("content") or "" for edit in message.edits]
    assert any("Fetching" in c or "Uploading" in c for c in contents), contents
    assert message.embeds and not message.content


async def test_a_line_shown_earlier_does_not_hold_up_the_answer(
    world: World, monkeypatch: pytest.MonkeyPatch
):
    """A slow download shows its line; the upload right after it shows none and
    does not wait for one. (A line sent earlier once made the answer wait out
    the next stage's grace, then show that line just before the result.)"""
    import cogs._delivery

    monkeypatch.setattr(cogs._delivery, "BRIEF_GRACE", 0.5)
    world.bot.settings.progress_interval = 0.0
    world.providers.script("file", Hang(seconds=1.5))
    interaction = await imagine(world, "a painting, slowly fetched, quickly posted")
    message = await final(interaction, within=20)
    contents = [edit.get("content") or "" for edit in message.edits]
    assert any("Fetching" in c for c in contents), contents
    assert not any("Uploading" in c for c in contents), contents
    assert message.embeds and not message.content


async def test_a_quick_job_goes_straight_to_its_result(world: World):
    """No progress edit before the first interval: the "thinking" reply suffices."""
    interaction = await imagine(world, "a quick sketch")
    message = await final(interaction, within=20)
    assert [edit.get("content") for edit in message.edits if edit.get("content")] == []
    assert message.embeds


async def test_edit_uses_the_attachment_as_reference(world: World):
    interaction, attachment = await edit_photo(world)
    message = await final(interaction, within=20)
    assert message.embeds[0]["title"] == "Edit"
    assert len(message.attachments) == 1
    sent = world.providers.requests_to("img2img")[-1].json
    assert sent["ref_image"] in (attachment["url"], [attachment["url"]])


async def test_blend_takes_several_attachments(world: World):
    refs = []
    for index, size in enumerate(((512, 512), (800, 600), (600, 800))):
        png = await asyncio.to_thread(make_png, *size)
        refs.append(
            world.discord.add_attachment(world.channel_id, png, f"r{index}.png", "image/png")
        )
    interaction = await world.discord.slash(
        "blend",
        guild_id=world.guild_id,
        channel_id=world.channel_id,
        user_id=world.member_id,
        options=[
            opt("image1", refs[0]["id"], 11),
            opt("image2", refs[1]["id"], 11),
            opt("image3", refs[2]["id"], 11),
            opt("prompt", "one scene"),
        ],
        attachments={"image1": refs[0], "image2": refs[1], "image3": refs[2]},
    )
    message = await final(interaction, within=20)
    assert message.embeds[0]["title"] == "Blend"
    sent = world.providers.requests_to("multi_ref")[-1].json
    assert sent["ref_image"] == [ref["url"] for ref in refs]


async def test_bad_attachment_gets_a_private_message_and_costs_nothing(world: World):
    attachment = world.discord.add_attachment(
        world.channel_id, b"%PDF-1.7 not an image", "cat.png", "image/png"
    )
    interaction = await world.discord.slash(
        "edit",
        guild_id=world.guild_id,
        channel_id=world.channel_id,
        user_id=world.member_id,
        options=[opt("image", attachment["id"], 11), opt("prompt", "x")],
        attachments={"image": attachment},
    )
    answer = await final(interaction, within=20)
    assert "PDF" in answer.content
    assert not answer.attachments and not answer.embeds
    assert world.providers.requests_to("img2img") == []
    assert (await settled_balance(world)).used == 0


async def test_edit_image_context_menu_asks_for_a_prompt(world: World):
    png = await asyncio.to_thread(make_png, 700, 700)
    attachment = world.discord.add_attachment(
        world.channel_id, png, "cat.png", "image/png", ephemeral=False
    )
    target = world.discord.add_message(
        world.channel_id, author_id=world.member_id, attachments=[attachment]
    )
    menu = await world.discord.message_command(
        "Edit image",
        guild_id=world.guild_id,
        channel_id=world.channel_id,
        user_id=world.member_id,
        message=target,
    )
    callback = await menu.wait_for_callback()
    assert callback.type == MODAL
    submitted = await world.discord.submit_modal(
        callback.data["custom_id"],
        {"prompt": "give it a hat"},
        guild_id=world.guild_id,
        channel_id=world.channel_id,
        user_id=world.member_id,
    )
    message = await final(submitted, within=20)
    assert message.embeds[0]["title"] == "Edit"
    assert world.providers.requests_to("img2img")[-1].json["prompt"] == "give it a hat"


async def test_blend_images_menu_needs_two_images(world: World):
    png = await asyncio.to_thread(make_png, 300, 300)
    one = world.discord.add_attachment(world.channel_id, png, "a.png", "image/png", ephemeral=False)
    target = world.discord.add_message(
        world.channel_id, author_id=world.member_id, attachments=[one]
    )
    menu = await world.discord.message_command(
        "Blend images",
        guild_id=world.guild_id,
        channel_id=world.channel_id,
        user_id=world.member_id,
        message=target,
    )
    callback = await menu.wait_for_callback()
    assert callback.type == 4
    assert "two images" in callback.data["content"]


async def test_buttons_reroll_pick_vary_and_delete(world: World):
    interaction = await imagine(world, "a lighthouse", samples=2, seed=7)
    result = await final(interaction, within=20)
    job = job_id_of(result)
    discord_emu = world.discord

    reroll = await discord_emu.click(result, f"ib:reroll:{job}:0", user_id=world.member_id)
    rerolled = await final(reroll, within=20)
    assert rerolled.embeds[0]["title"] == "Imagine"
    assert world.providers.requests_to("text2img")[-1].json["seed"] in (None, 0)

    pick = await discord_emu.click(result, f"ib:up:{job}:2", user_id=world.member_id)
    picked = await final(pick, within=20)
    assert len(picked.attachments) == 1
    assert picked.attachments[0].filename.startswith("image_2.")
    assert "Image 2" in picked.content

    vary = await discord_emu.click(result, f"ib:var:{job}:1", user_id=world.member_id)
    varied = await final(vary, within=20)
    assert varied.embeds[0]["title"] == "Edit"
    assert world.providers.requests_to("img2img")[-1].json["prompt"] == "a lighthouse"

    balance = await settled_balance(world)
    costs = world.settings.costs
    # Two images, two re-rolled images, one variation; full-size picks are free.
    assert balance.used == 2 * costs["text2img"] * 2 + costs["nano_banana_img2img"]

    deleted = await discord_emu.click(result, f"ib:del:{job}:0", user_id=world.moderator_id)
    await deleted.wait_for(lambda _: result.deleted, timeout=10)


async def test_only_requester_or_moderator_deletes(world: World):
    stranger = world.discord.add_member(world.guild_id, name="stranger")
    interaction = await imagine(world, "a small boat")
    result = await final(interaction, within=20)
    job = job_id_of(result)
    refused = await world.discord.click(result, f"ib:del:{job}:0", user_id=stranger.id)
    callback = await refused.wait_for_callback()
    assert "Only the person who made" in callback.data["content"]
    assert not result.deleted
    allowed = await world.discord.click(result, f"ib:del:{job}:0", user_id=world.member_id)
    await allowed.wait_for(lambda _: result.deleted, timeout=10)


async def test_edit_button_opens_a_modal_for_a_new_prompt(world: World):
    interaction = await imagine(world, "a castle", samples=2)
    result = await final(interaction, within=20)
    job = job_id_of(result)
    press = await world.discord.click(result, f"ib:edit:{job}:0", user_id=world.member_id)
    callback = await press.wait_for_callback()
    assert callback.type == MODAL
    submitted = await world.discord.submit_modal(
        callback.data["custom_id"],
        {"prompt": "a castle at night", "image": "2"},
        user_id=world.member_id,
        guild_id=world.guild_id,
        channel_id=world.channel_id,
    )
    edited = await final(submitted, within=20)
    assert edited.embeds[0]["title"] == "Edit"
    assert world.providers.requests_to("img2img")[-1].json["prompt"] == "a castle at night"


async def test_results_fit_a_small_upload_limit(emulators, tmp_path):
    discord_emu, providers = emulators
    ids = populate(discord_emu)
    small = discord_emu.add_guild(name="Tiny", filesize_limit=1024 * 1024)
    channel = discord_emu.add_channel(small.id)
    member = discord_emu.add_member(small.id, name="tiny")
    providers.photo_like = True
    settings = make_settings(discord_emu, providers, tmp_path / "data")
    async with running_bot(settings, discord_emu) as bot:
        await bot.sync_commands()
        interaction = await discord_emu.slash(
            "imagine",
            guild_id=small.id,
            channel_id=channel.id,
            user_id=member.id,
            options=[opt("prompt", "noise"), opt("samples", 2, 4)],
        )
        message = await final(interaction, within=30)
        assert sum(a.size for a in message.attachments) <= 1024 * 1024
        assert len(message.attachments) == 3
    assert ids
    discord_emu.assert_no_violations()


async def test_late_results_go_to_the_channel_mentioning_the_requester(emulators, tmp_path):
    discord_emu, providers = emulators
    ids = populate(discord_emu)
    settings = make_settings(discord_emu, providers, tmp_path / "data", interaction_window=1.0)
    providers.script("text2img", Processing(polls=2, eta=0.3))
    providers.latency = 0.4  # submit, two polls and the download: well past the window
    async with running_bot(settings, discord_emu) as bot:
        await bot.sync_commands()
        interaction = await discord_emu.slash(
            "imagine",
            guild_id=ids["guild_id"],
            channel_id=ids["channel_id"],
            user_id=ids["member_id"],
            options=[opt("prompt", "patience")],
        )

        def late_post() -> Any:
            return next(
                (
                    m
                    for m in discord_emu.channel_messages(ids["channel_id"])
                    if m.embeds and m.webhook_id is None
                ),
                None,
            )

        await discord_emu.wait_for(lambda: late_post() is not None, timeout=30)
        posted = late_post()
        assert posted is not None
        assert f"<@{ids['member_id']}>" in posted.content
        assert posted.allowed_mentions is not None
        assert [str(u) for u in posted.allowed_mentions["users"]] == [str(ids["member_id"])]
        assert posted.allowed_mentions.get("parse") == []
        assert posted.attachments
        assert interaction.original is None or not interaction.original.embeds
    discord_emu.assert_no_violations()


async def test_buttons_work_after_a_restart(emulators, tmp_path):
    discord_emu, providers = emulators
    ids = populate(discord_emu)
    settings = make_settings(discord_emu, providers, tmp_path / "data")
    async with running_bot(settings, discord_emu) as bot:
        await bot.sync_commands()
        interaction = await discord_emu.slash(
            "imagine",
            guild_id=ids["guild_id"],
            channel_id=ids["channel_id"],
            user_id=ids["member_id"],
            options=[opt("prompt", "a windmill"), opt("samples", 2, 4)],
        )
        result = await final(interaction, within=20)
    job = job_id_of(result)
    async with running_bot(settings, discord_emu):
        pick = await discord_emu.click(result, f"ib:up:{job}:1", user_id=ids["member_id"])
        picked = await final(pick, within=20)
        assert len(picked.attachments) == 1
        reroll = await discord_emu.click(result, f"ib:reroll:{job}:0", user_id=ids["member_id"])
        rerolled = await final(reroll, within=20)
        assert rerolled.embeds
    discord_emu.assert_no_violations()


async def test_duplicate_interaction_event_makes_one_job(world: World):
    interaction = await imagine(world, "only once")
    await final(interaction, within=20)
    count = len(world.providers.requests_to("text2img"))
    await world.discord.redispatch(interaction)
    # The copy's acknowledgement is refused (Discord's "already acknowledged"),
    # which is where the bot drops it.
    await interaction.wait_for_rejection()
    assert len(world.providers.requests_to("text2img")) == count
    assert len(interaction.callbacks) == 1


async def test_the_running_bot_hands_the_gil_back_quickly(emulators, tmp_path):
    # Thread hand-backs (SQLite, image work, file writes) are on every member's
    # path; CPython's default lets each wait up to 5 ms for the busy event loop.
    discord_emu, providers = emulators
    settings = make_settings(discord_emu, providers, tmp_path / "data")
    saved = sys.getswitchinterval()
    sys.setswitchinterval(CPYTHON_DEFAULT_SWITCH_INTERVAL)  # as a fresh process starts
    try:
        async with running_bot(settings, discord_emu):
            assert sys.getswitchinterval() <= CPYTHON_DEFAULT_SWITCH_INTERVAL / 5
    finally:
        sys.setswitchinterval(saved)
