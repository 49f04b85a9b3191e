"""Autocomplete end to end: Discord's type-4 interactions and the bot's type-8 answers."""

from __future__ import annotations

from tests.e2e.conftest import World
from tests.e2e.test_bad_input import custom_world
from tests.e2e.test_generation import opt

AUTOCOMPLETE_RESULT = 8


async def choices(world: World, command: str, focused: str, typed: str = "", *options, **kw):
    interaction = await world.discord.autocomplete(
        command,
        guild_id=world.guild_id,
        channel_id=world.channel_id,
        user_id=kw.get("user_id", world.member_id),
        focused=focused,
        typed=typed,
        options=list(options),
        subcommand=kw.get("subcommand"),
    )
    callback = await interaction.wait_for_callback()
    assert callback.type == AUTOCOMPLETE_RESULT
    assert interaction.autocomplete_choices is not None
    return [(c["name"], c["value"]) for c in interaction.autocomplete_choices]


async def test_providers_and_models(world: World):
    assert await choices(world, "imagine", "provider") == [
        ("modelslab", "modelslab"),
        ("nanobanana", "nanobanana"),
    ]
    assert await choices(world, "blend", "provider", "nano") == [("nanobanana", "nanobanana")]
    assert await choices(world, "imagine", "model") == [("flux", "flux")]


async def test_sizes_follow_the_chosen_provider_with_their_price(world: World):
    costs = world.settings.costs
    nano = [
        (f"{size} · {costs[f'nbpro_{size}']} credits per image", size)
        for size in ("1k", "2k", "4k")
    ]
    assert await choices(world, "imagine", "size", "", opt("provider", "nanobanana")) == nano
    # No provider typed: the mode's default (ModelsLab here), whose text to image stops at 1k.
    one = costs["text2img"]
    assert await choices(world, "imagine", "size") == [
        (f"1k · {one} credit{'s' if one != 1 else ''} per image", "1k")
    ]
    edit = costs["nano_banana_img2img"]
    assert [v for _, v in await choices(world, "edit", "size")] == ["1k", "2k"]
    assert (await choices(world, "edit", "size", "2"))[0] == (
        f"2k · {edit} credits per image",
        "2k",
    )
    # A provider name that is not configured: nothing to offer rather than a guess.
    assert await choices(world, "imagine", "size", "", opt("provider", "dalle")) == []


async def test_sizes_without_the_4k_plan(emulators, tmp_path):
    async with custom_world(emulators, tmp_path, nanobanana_allow_4k=False) as world:
        offered = await choices(world, "blend", "size", "", opt("provider", "nanobanana"))
        assert [value for _, value in offered] == ["1k", "2k"]


async def test_styles_and_schedulers(world: World):
    styles = await choices(world, "imagine", "style")
    assert [value for _, value in styles] == [
        "photo",
        "cinematic",
        "anime",
        "watercolor",
        "pixel-art",
    ]
    assert styles[1][0].startswith("cinematic · film still, dramatic light, wide (ar 21:9)")
    added = await world.discord.slash(
        "style",
        guild_id=world.guild_id,
        channel_id=world.channel_id,
        user_id=world.moderator_id,
        options=[opt("name", "noir"), opt("template", "film noir still of {prompt}")],
        subcommand="add",
    )
    await added.wait_for_original()
    assert await choices(world, "blend", "style", "no") == [
        ("noir · film noir still of {prompt}", "noir")
    ]
    # /style edit and remove offer only the server's own styles.
    assert await choices(world, "style", "name", "", subcommand="remove") == [
        ("noir · film noir still of {prompt}", "noir")
    ]
    assert await choices(world, "imagine", "scheduler", "euler") == [
        ("EulerDiscreteScheduler", "EulerDiscreteScheduler"),
        ("EulerAncestralDiscreteScheduler", "EulerAncestralDiscreteScheduler"),
    ]
    assert len(await choices(world, "imagine", "scheduler")) == 18
