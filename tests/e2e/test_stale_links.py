"""Buttons keep working once Discord's signed links to the images have expired."""

from __future__ import annotations

import os

from tests.e2e.conftest import World
from tests.e2e.test_generation import MODAL, edit_photo, final, job_id_of, posted_record

LIFETIME = 600.0  # Discord's is about a day; the test's CDN signs for ten minutes


async def _edit_result(world: World):
    interaction, attachment = await edit_photo(world)
    result = await final(interaction)
    assert result.embeds, result.content
    return result, attachment["url"]


def _sent_refs(world: World) -> list[str]:
    ref = world.providers.requests_to("img2img")[-1].json["ref_image"]
    return ref if isinstance(ref, list) else [ref]


async def test_reroll_vary_and_edit_after_the_links_expired(world: World):
    world.discord.cdn_link_lifetime = LIFETIME
    result, original_url = await _edit_result(world)
    job = job_id_of(result)
    world.discord.advance_cdn_clock(LIFETIME + 1)  # every link signed so far is dead

    reroll = await world.discord.click(result, f"ib:reroll:{job}:0", user_id=world.member_id)
    rerolled = await final(reroll)
    assert rerolled.embeds, rerolled.content
    assert original_url in world.discord.refreshed_urls
    assert _sent_refs(world) != [original_url]

    vary = await world.discord.click(result, f"ib:var:{job}:1", user_id=world.member_id)
    varied = await final(vary)
    assert varied.embeds, varied.content

    press = await world.discord.click(result, f"ib:edit:{job}:0", user_id=world.member_id)
    callback = await press.wait_for_callback()
    assert callback.type == MODAL
    submitted = await world.discord.submit_modal(
        callback.data["custom_id"],
        {"prompt": "and now in spring"},
        guild_id=world.guild_id,
        channel_id=world.channel_id,
        user_id=world.member_id,
    )
    edited = await final(submitted)
    assert edited.embeds, edited.content
    assert world.providers.requests_to("img2img")[-1].json["prompt"] == "and now in spring"


async def test_full_size_pick_after_the_original_and_the_link_are_gone(world: World):
    world.bot.settings.pick_cooldown_seconds = 0
    world.discord.cdn_link_lifetime = LIFETIME
    result, _ = await _edit_result(world)
    job = job_id_of(result)
    record = await posted_record(world, job)
    paths = [image.path for image in record.images if image.path is not None]
    assert paths
    # The originals are written (then renamed into place) while the result uploads;
    # once there, retention removes them.
    await world.discord.wait_for(lambda: all(os.path.exists(p) for p in paths))
    for path in paths:
        os.remove(path)
    world.discord.advance_cdn_clock(LIFETIME + 1)

    pick = await world.discord.click(result, f"ib:up:{job}:1", user_id=world.member_id)
    picked = await final(pick)
    assert "Image 1 at full size" in picked.content, picked.content
    assert picked.attachments
