"""/moderation blocklist, end to end: rules, refusals before any spending, the log."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.e2e.conftest import World
from tests.e2e.test_generation import final, imagine, opt
from tests.e2e.test_quota import answer, quota

CHANNEL_MESSAGE = 4
EPHEMERAL = 1 << 6


async def moderation(world: World, subcommand: str, user_id: int, *options: dict[str, Any]):
    interaction = await world.discord.slash(
        "moderation",
        subcommand=subcommand,
        guild_id=world.guild_id,
        channel_id=world.channel_id,
        user_id=user_id,
        options=list(options),
    )
    await interaction.wait_for(lambda r: bool(r.callbacks), timeout=15)
    return interaction


async def member_balance(world: World, user_id: int | None = None):
    """The member's balance once nothing of theirs is reserved any more."""
    ledger: Any = world.bot.runtime.ledger
    for _ in range(200):
        balances = await ledger.balance(str(world.guild_id), str(user_id or world.member_id), ())
        if balances.user.reserved == 0:
            return balances.user
        await asyncio.sleep(0.05)
    raise AssertionError(f"credits still reserved: {balances.user}")


async def with_log_channel(world: World) -> Any:
    """A mod-log channel, set as the guild's log channel by a moderator."""
    log_channel = world.discord.add_channel(world.guild_id, name="mod-log")
    await quota(
        world,
        "log-channel",
        world.moderator_id,
        {"name": "channel", "type": 7, "value": str(log_channel.id)},
    )
    return log_channel


async def test_blocked_words_are_refused_privately_before_anything_is_spent(world: World):
    log_channel = await with_log_channel(world)
    added = await moderation(world, "blocklist add", world.moderator_id, opt("rule", "Gore*"))
    assert "now refused" in answer(added)
    await moderation(world, "blocklist add", world.moderator_id, opt("rule", "café noir"))

    calls_before = len(world.providers.requests)
    for prompt in ("Gorefest at noon", "un CAFE-NOIR sur la table"):
        refused = await imagine(world, prompt)
        callback = await refused.wait_for_callback()
        assert callback.type == CHANNEL_MESSAGE
        assert callback.data["flags"] & EPHEMERAL
        assert "can't be used on this server" in callback.data["content"]
        # Marked as every refusal is, whether it comes before the acknowledgement
        # (here) or after it (the test below where the early checks run late).
        assert callback.data["content"].startswith("❌ ")
        assert "gore" not in callback.data["content"].lower()  # neutral: no rule named
    assert len(world.providers.requests) == calls_before  # no provider call
    user = await member_balance(world)
    assert (user.used, user.reserved) == (0, 0)  # nothing charged or held

    def log_lines() -> list[str]:
        return [m.content for m in world.discord.channel_messages(log_channel.id)]

    await world.discord.wait_for(lambda: len(log_lines()) >= 2, timeout=10)
    first, second = log_lines()[:2]
    assert f"<@{world.member_id}>" in first and "/imagine" in first and "`gore*`" in first
    assert "`cafe noir`" in second

    allowed = await final(await imagine(world, "a GORY scene"))
    assert allowed.embeds
    assert (await member_balance(world)).used == 1


async def test_a_blocked_prompt_is_answered_before_the_log_channel_hears_of_it(world: World):
    """A slow or rate-limited log channel must not cost the member their answer
    (Discord gives 3 s to acknowledge)."""
    log_channel = await with_log_channel(world)
    await moderation(world, "blocklist add", world.moderator_id, opt("rule", "gore*"))
    world.discord.stall_next("POST", rf"/channels/{log_channel.id}/messages$", seconds=10)

    refused = await imagine(world, "gorefest")
    # Within Discord's 3 s, or the emulator rejects the answer as too late.
    callback = await refused.wait_for_callback(timeout=15)
    assert callback.type == CHANNEL_MESSAGE and callback.data["flags"] & EPHEMERAL
    assert "can't be used on this server" in callback.data["content"]
    # The log line went out all the same.
    await world.discord.wait_for(
        lambda: bool(world.discord.channel_messages(log_channel.id)), timeout=10
    )


async def test_moderators_list_and_remove_rules_and_members_cannot(world: World):
    refused = await moderation(world, "blocklist add", world.member_id, opt("rule", "tree"))
    assert "Only moderators" in answer(refused)
    for rule in ("tree*", "Trée*", "owl"):
        await moderation(world, "blocklist add", world.moderator_id, opt("rule", rule))
    listed = answer(await moderation(world, "blocklist list", world.moderator_id))
    assert listed == "Blocked in prompts (2): `owl`, `tree*`"
    bad = await moderation(world, "blocklist add", world.moderator_id, opt("rule", "**"))
    assert "at least 2 letters" in answer(bad)

    removed = await moderation(world, "blocklist remove", world.moderator_id, opt("rule", "TREE*"))
    assert "no longer blocked" in answer(removed)
    missing = await moderation(world, "blocklist remove", world.moderator_id, opt("rule", "elk"))
    assert "not on this server's list" in answer(missing)
    assert (await final(await imagine(world, "trees at dawn"))).embeds


async def test_rules_belong_to_their_guild(world: World):
    await moderation(world, "blocklist add", world.moderator_id, opt("rule", "lighthouse"))
    elsewhere = await world.discord.slash(
        "imagine",
        guild_id=world.other_guild_id,
        channel_id=world.other_channel_id,
        user_id=world.other_member_id,
        options=[opt("prompt", "a lighthouse")],
    )
    assert (await final(elsewhere)).embeds


async def test_blocked_words_apply_to_the_edit_menu_prompt_too(world: World):
    await moderation(world, "blocklist add", world.moderator_id, opt("rule", "skull"))
    result = await final(await imagine(world, "a quiet harbour"))
    menu = await world.discord.message_command(
        "Edit image",
        guild_id=world.guild_id,
        channel_id=world.channel_id,
        user_id=world.member_id,
        message=result,
    )
    await menu.wait_for(lambda r: r.modal is not None, timeout=10)
    assert menu.modal is not None
    submitted = await world.discord.submit_modal(
        menu.modal["custom_id"],
        {"prompt": "add a Skull"},
        guild_id=world.guild_id,
        channel_id=world.channel_id,
        user_id=world.member_id,
    )
    callback = await submitted.wait_for_callback()
    assert callback.data["flags"] & EPHEMERAL
    assert "can't be used" in callback.data["content"]
    assert (await member_balance(world)).used == 1  # the first image only


async def test_blocked_words_are_still_refused_when_early_checks_run_out_of_time(
    world: World, monkeypatch
):
    import cogs._service

    await moderation(world, "blocklist add", world.moderator_id, opt("rule", "kraken"))
    monkeypatch.setattr(cogs._service, "EARLY_CHECKS_BUDGET", 0)  # every early check late
    refused = await imagine(world, "a Kraken at sea")
    await refused.wait_for(lambda r: bool(r.followups), timeout=15)
    told = refused.followups[-1]
    assert told.ephemeral and "can't be used on this server" in told.content
    assert told.content.startswith("❌ ")
    assert not world.providers.requests
    user = await member_balance(world)
    assert (user.used, user.reserved) == (0, 0)
