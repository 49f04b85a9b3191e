"""Full-size picks (U1-U4) are free, so they are limited like the work they are."""

from __future__ import annotations

import contextlib

from tests.e2e.conftest import World
from tests.e2e.test_generation import final, imagine, job_id_of

CHANNEL_MESSAGE = 4
EPHEMERAL = 1 << 6


async def _two_image_result(world: World):
    result = await final(await imagine(world, "two lighthouses", samples=2))
    assert result.embeds, result.content
    return result, job_id_of(result)


async def test_repeated_picks_are_refused_privately_until_the_cooldown_ends(world: World):
    world.bot.settings.pick_cooldown_seconds = 3600
    result, job = await _two_image_result(world)
    first = await world.discord.click(result, f"ib:up:{job}:1", user_id=world.member_id)
    assert "Image 1 at full size" in (await final(first)).content

    again = await world.discord.click(result, f"ib:up:{job}:2", user_id=world.member_id)
    kind, data = await again.wait_for_callback()
    assert kind == CHANNEL_MESSAGE and int(data["flags"]) & EPHEMERAL
    assert "before another full-size image" in data["content"]
    # Another member is not held up by the first one's cooldown.
    other = await world.discord.click(result, f"ib:up:{job}:2", user_id=world.moderator_id)
    assert "Image 2 at full size" in (await final(other)).content


async def test_a_pick_waits_for_a_free_image_place(world: World):
    world.bot.settings.pick_cooldown_seconds = 0
    result, job = await _two_image_result(world)
    pipeline = world.bot.runtime.pipeline
    async with contextlib.AsyncExitStack() as held:
        # Every image place is taken, as by IMAGE_JOBS jobs uploading at once.
        for _ in range(world.settings.image_jobs):
            await held.enter_async_context(pipeline.image_slot())
        pick = await world.discord.click(result, f"ib:up:{job}:1", user_id=world.member_id)
        await pick.wait_for(
            lambda r: bool(r.original and "Waiting for the images" in r.original.content)
        )
        assert not pick.original.attachments
        # One pick at a time per member, even without a cooldown.
        second = await world.discord.click(result, f"ib:up:{job}:2", user_id=world.member_id)
        kind, data = await second.wait_for_callback()
        assert kind == CHANNEL_MESSAGE and int(data["flags"]) & EPHEMERAL
        assert "still on its way" in data["content"]
    assert "Image 1 at full size" in (await final(pick)).content
