"""Role allowances set from Discord, including Discord's own @everyone role."""

from __future__ import annotations

from tests.e2e.conftest import World
from tests.e2e.test_generation import final, opt
from tests.e2e.test_quota import answer, quota, refusal


async def test_role_limit_on_everyone_is_the_default_for_everyone(world: World):
    # Discord gives @everyone the guild's id; members never list it among their roles.
    everyone = {"name": "role", "type": 8, "value": str(world.guild_id)}
    confirmed = answer(
        await quota(world, "role-limit", world.moderator_id, everyone, opt("credits", 1, 4))
    )
    assert "You: **1** of 1 left" in answer(await quota(world, "me", world.member_id))
    assert "member default" in confirmed
    assert "1 credit left" in await refusal(world, samples=2)

    await quota(world, "role-limit", world.moderator_id, everyone, opt("remove", True, 5))
    assert "of 40 left" in answer(await quota(world, "me", world.member_id))
    assert (await final(await _imagine_two(world))).embeds


async def _imagine_two(world: World):
    return await world.discord.slash(
        "imagine",
        guild_id=world.guild_id,
        channel_id=world.channel_id,
        user_id=world.member_id,
        options=[opt("prompt", "two now"), opt("samples", 2, 4)],
    )
