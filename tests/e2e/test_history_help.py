"""/history and /help end to end: paging, links, Run again, refusals, live figures."""

from __future__ import annotations

from typing import Any

from tests.e2e.conftest import World
from tests.e2e.test_generation import final, imagine
from tests.e2e.test_member import EPHEMERAL, balance, press
from tests.e2e.test_private_delivery import choose_private_results, ids_of
from tests.emulators.providers import Error

CHANNEL_MESSAGE = 4
UPDATE_MESSAGE = 7


async def slash(world: World, name: str, user_id: int, *options: dict[str, Any]):
    interaction = await world.discord.slash(
        name,
        guild_id=world.guild_id,
        channel_id=world.channel_id,
        user_id=user_id,
        options=list(options),
    )
    await interaction.wait_for(lambda r: bool(r.callbacks), timeout=15)
    return interaction


def member_option(user_id: int) -> dict[str, Any]:
    return {"name": "member", "type": 6, "value": str(user_id)}


async def test_history_pages_links_and_runs_again(world: World):
    results = []
    for n in range(6):
        results.append(await final(await imagine(world, f"harbour number {n}")))
    world.providers.script("text2img", Error(http_status=400, message="bad prompt"))
    failed = await final(await imagine(world, "harbour that fails"))
    assert failed.content.startswith("❌")

    shown = await slash(world, "history", world.member_id)
    callback = shown.callbacks[0]
    assert callback.type == CHANNEL_MESSAGE and callback.data["flags"] & EPHEMERAL
    embed = callback.data["embeds"][0]
    assert embed["title"] == "Your images"
    assert embed["footer"]["text"] == "Page 1 of 2 · 7 in all"
    text = embed["description"]
    assert text.index("harbour that fails") < text.index("harbour number 5")  # newest first
    assert "not made, refunded" in text
    link = f"/channels/{world.guild_id}/{world.channel_id}/{results[5].id})"
    assert link in text and "1 credit ·" in text
    page = shown.original
    assert page is not None and page.ephemeral
    labels = [c.get("label") for row in page.components for c in row["components"]]
    assert labels == [*(f"Run {n} again" for n in range(1, 6)), "◀ Newer", "Older ▶"]

    older = await press(world, page, f"ih:{world.member_id}:1", world.member_id)
    update = older.callbacks[0]
    assert update.type == UPDATE_MESSAGE
    second = update.data["embeds"][0]
    assert second["footer"]["text"] == "Page 2 of 2 · 7 in all"
    assert "harbour number 0" in second["description"]
    assert "harbour number 5" not in second["description"]

    before = (await balance(world)).used
    # The page now shows entries 6 and 7; "Run 6 again" is harbour number 1.
    run_again = next(c for c in page.custom_ids() if c.startswith("ib:reroll:"))
    again = await world.discord.click(page, run_again, user_id=world.member_id)
    rerun = await final(again)
    assert rerun.embeds and rerun.embeds[0]["description"] == "harbour number 1"
    assert (await balance(world)).used == before + 1


async def test_a_private_result_is_listed_without_a_link(world: World):
    """A private result is an ephemeral message: a channel link to it would open nothing."""
    public_result = await final(await imagine(world, "harbour for everyone"))
    await choose_private_results(world.discord, ids_of(world))
    private_result = await final(await imagine(world, "harbour for me alone"))
    assert private_result.ephemeral

    shown = await slash(world, "history", world.member_id)
    text = shown.callbacks[0].data["embeds"][0]["description"]
    mine = next(line for line in text.split("\n\n") if "harbour for me alone" in line)
    assert "result sent privately" in mine and "](" not in mine
    assert str(private_result.id) not in text
    assert f"/channels/{world.guild_id}/{world.channel_id}/{public_result.id})" in text


async def test_history_of_another_member_is_for_moderators(world: World):
    await final(await imagine(world, "a moth"))
    refused = await slash(world, "history", world.member_id, member_option(world.moderator_id))
    assert "Only moderators" in refused.callbacks[0].data["content"]
    seen = await slash(world, "history", world.moderator_id, member_option(world.member_id))
    embed = seen.callbacks[0].data["embeds"][0]
    assert embed["title"] == "Images" and f"<@{world.member_id}>" in embed["description"]
    assert "a moth" in embed["description"]
    empty = await slash(world, "history", world.moderator_id)
    assert "Nothing yet" in empty.callbacks[0].data["embeds"][0]["description"]


async def test_history_belongs_to_its_guild(world: World):
    await final(await imagine(world, "a secret garden"))
    elsewhere = await world.discord.slash(
        "history",
        guild_id=world.other_guild_id,
        channel_id=world.other_channel_id,
        user_id=world.other_member_id,
    )
    await elsewhere.wait_for(lambda r: bool(r.callbacks), timeout=15)
    assert "secret garden" not in str(elsewhere.callbacks[0].data)


async def test_help_is_built_from_the_configuration_and_credits(world: World):
    await final(await imagine(world, "a lamp", samples=2))
    await balance(world)
    shown = await slash(world, "help", world.member_id)
    callback = shown.callbacks[0]
    assert callback.data["flags"] & EPHEMERAL
    fields = {f["name"]: f["value"] for f in callback.data["embeds"][0]["fields"]}
    assert "`/imagine`" in fields["Commands"] and "`/history`" in fields["Commands"]
    assert "/moderation" not in fields["Commands"]  # members do not see moderator tools
    providers = fields["Providers and prices"]
    assert "**modelslab**: /imagine 1 credit; /edit 2 credits; /blend 3 credits" in providers
    assert "1k 3 credits, 2k 4 credits, 4k 8 credits" in providers
    assert "16:9" in fields["Shapes and sizes"]
    assert "`--ar`" in fields["Parameters (at the end of a prompt)"]
    assert "`--no`" in fields["Parameters (at the end of a prompt)"]
    assert "`watercolor`" in fields["Styles (`style` option or --style)"]
    assert "You: **38** of 40 left" in fields["Your credits"]
    assert "Server pool: **98** of 100 left" in fields["Your credits"]

    moderator = await slash(world, "help", world.moderator_id)
    mod_fields = {f["name"]: f["value"] for f in moderator.callbacks[0].data["embeds"][0]["fields"]}
    assert "`/moderation` add, remove, list" in mod_fields["Commands"]
