"""/style end to end: moderators manage a server's styles, everyone lists and uses them."""

from __future__ import annotations

from tests.e2e.conftest import World
from tests.e2e.test_bad_input import nothing_spent, refusal, slash_imagine, success
from tests.e2e.test_generation import opt, settled_balance


async def style(world: World, sub: str, *options, user_id: int | None = None, guild: str = ""):
    other = guild == "other"
    interaction = await world.discord.slash(
        "style",
        guild_id=world.other_guild_id if other else world.guild_id,
        channel_id=world.other_channel_id if other else world.channel_id,
        user_id=user_id or (world.other_member_id if other else world.moderator_id),
        options=list(options),
        subcommand=sub,
    )
    return await interaction.wait_for_original()


async def test_moderators_add_edit_and_remove_styles_members_use_them(world: World):
    added = await style(
        world,
        "add",
        opt("name", "Noir"),
        opt("template", "film noir still of {prompt}, high contrast"),
        opt("negative_prompt", "colour"),
        opt("aspect_ratio", "3:2"),
        opt("description", "black and white, hard shadows"),
    )
    assert added.ephemeral
    assert added.content == ("Added style **noir**: black and white, hard shadows (ar 3:2)")

    listing = await style(world, "list", user_id=world.member_id)
    assert listing.ephemeral
    text = "\n".join(embed["description"] for embed in listing.embeds)
    assert "**noir** (this server): black and white, hard shadows (ar 3:2)" in text
    assert "**anime** (built-in)" in text

    await success(await slash_imagine(world, "a detective --style noir"))
    body = world.providers.requests_to("text2img")[-1].json
    assert body["prompt"] == "film noir still of a detective, high contrast"
    assert body["negative_prompt"] == "colour"
    assert (body["width"], body["height"]) == (1024, 680)
    used = (await settled_balance(world)).used
    assert used == world.settings.costs["text2img"]

    edited = await style(
        world, "edit", opt("name", "noir"), opt("negative_prompt", "-"), opt("aspect_ratio", "1:1")
    )
    assert edited.content == "Style **noir** is now: black and white, hard shadows (ar 1:1)"
    await success(await slash_imagine(world, "a detective", opt("style", "noir")))
    body = world.providers.requests_to("text2img")[-1].json
    assert "negative_prompt" not in body
    assert (body["width"], body["height"]) == (1024, 1024)

    # Another server neither lists nor uses it.
    other = await style(world, "list", guild="other")
    assert "noir" not in "\n".join(e["description"] for e in other.embeds)
    interaction = await world.discord.slash(
        "imagine",
        guild_id=world.other_guild_id,
        channel_id=world.other_channel_id,
        user_id=world.other_member_id,
        options=[opt("prompt", "a detective --style noir")],
    )
    answer = await refusal(interaction)
    assert answer.startswith("❌ There is no style called noir here. Styles: photo, cinematic")

    removed = await style(world, "remove", opt("name", "noir"))
    assert removed.content == "Removed style **noir**."
    answer = await refusal(await slash_imagine(world, "a detective --style noir"))
    assert answer.startswith("❌ There is no style called noir here.")


async def test_members_cannot_change_styles_and_bad_styles_are_refused(world: World):
    denied = await style(
        world, "add", opt("name", "mine"), opt("template", "{prompt}"), user_id=world.member_id
    )
    assert denied.ephemeral
    assert denied.content == "❌ Only moderators (Manage Server) can do that."
    for options, expected in [
        ([opt("name", "x"), opt("template", "no placeholder")], "A template needs {prompt}"),
        (
            [opt("name", "x"), opt("template", "{prompt} --ar 16:9")],
            "A template cannot contain parameters such as --ar",
        ),
        ([opt("name", "anime"), opt("template", "{prompt}")], "anime is a built-in style"),
        ([opt("name", "no spaces"), opt("template", "{prompt}")], "A style name is 1 to 32"),
    ]:
        answer = await style(world, "add", *options)
        assert answer.ephemeral and answer.content.startswith(f"❌ {expected}"), answer.content
    removed = await style(world, "remove", opt("name", "anime"))
    assert removed.content == "❌ anime is a built-in style and cannot be removed."
    listing = await style(world, "list", user_id=world.member_id)
    assert "this server" not in "\n".join(e["description"] for e in listing.embeds)
    await nothing_spent(world)
