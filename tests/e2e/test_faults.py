"""Faults of Discord, the providers, the disk and the database, end to end.

Each job ends delivered, or refunded with a message that says what happened,
and the bot goes on serving the next member.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import threading

from tests.e2e.conftest import World, make_settings, populate, running_bot
from tests.e2e.test_generation import final, imagine, is_final, opt, settled_balance
from tests.emulators.providers import Hang, NBError, Processing

ORIGINAL = r"/webhooks/\d+/[^/]+/messages/@original"
# A quick job makes no progress edit before its result (the first waits
# PROGRESS_INTERVAL), so the result is the first PATCH of the original response.
PROGRESS_EDITS = 0


async def still_serving(world: World) -> None:
    after = await final(await imagine(world, "business as usual"))
    assert after.embeds, after.content


async def test_discord_429_on_the_result_edit_is_retried(world: World):
    world.discord.fail_next("PATCH", ORIGINAL, status=429, retry_after=0.2, times=1)
    message = await final(await imagine(world, "patience with discord"))
    assert message.embeds
    assert (await settled_balance(world)).used == 1


async def test_discord_5xx_on_upload_is_retried(world: World):
    world.discord.fail_next("PATCH", ORIGINAL, status=502, times=2)
    message = await final(await imagine(world, "flaky gateway"), within=40)
    assert message.embeds
    assert (await settled_balance(world)).used == 1


async def test_413_on_upload_refits_smaller_and_delivers(world: World):
    world.discord.fail_next(
        "PATCH",
        ORIGINAL,
        status=413,
        body={"code": 40005, "message": "Request entity too large"},
        times=PROGRESS_EDITS + 1,
    )
    message = await final(await imagine(world, "too big at first", samples=2))
    assert message.embeds and message.attachments
    assert (await settled_balance(world)).used == 2
    uploads = [
        r
        for r in world.discord.requests
        if r.method == "PATCH" and re.fullmatch(ORIGINAL, r.path) and r.files
    ]
    refused, delivered = uploads[0], uploads[-1]
    assert (refused.injected, refused.status) == (True, 413)
    assert (delivered.injected, delivered.status) == (False, 200)
    # The retry was fitted again, smaller, not the same bytes sent twice.
    assert sum(f.size for f in delivered.files) < sum(f.size for f in refused.files)
    assert [f.size for f in message.attachments] == [f.size for f in delivered.files]


async def test_upload_refused_for_good_refunds_with_a_message(world: World):
    world.discord.fail_next(
        "PATCH",
        ORIGINAL,
        status=413,
        body={"code": 40005, "message": "Request entity too large"},
        times=PROGRESS_EDITS + 3,
    )
    message = await final(await imagine(world, "never fits"))
    assert message.content.startswith("❌")
    assert "refused the upload" in message.content
    assert (await settled_balance(world)).used == 0
    await still_serving(world)


async def test_provider_hang_ends_at_the_deadline_with_a_refund(emulators, tmp_path):
    discord_emu, providers = emulators
    ids = populate(discord_emu)
    settings = make_settings(discord_emu, providers, tmp_path / "data", job_deadline=1.0)
    async with running_bot(settings, discord_emu) as bot:
        await bot.sync_commands()
        providers.script("text2img", Hang(60))
        interaction = await discord_emu.slash(
            "imagine",
            guild_id=ids["guild_id"],
            channel_id=ids["channel_id"],
            user_id=ids["member_id"],
            options=[opt("prompt", "forever")],
        )
        await interaction.wait_for(
            lambda r: bool(r.original and r.original.content.startswith("❌")), timeout=20
        )
        assert interaction.original is not None
        assert "took too long" in interaction.original.content
        balance = await bot.runtime.ledger.balance(str(ids["guild_id"]))  # type: ignore[attr-defined]
        assert balance.guild.used == 0


async def test_nano_banana_pro_generation_failed_refunds_once_with_its_message(world: World):
    # Seed 004: HTTP 500 is "Generation failed". Each try can take minutes and
    # may be billed, so it is not sent again; the member reads the provider's words.
    world.providers.script("nbpro", NBError(500, "Generation failed: prompt blocked by filter"))
    before = await settled_balance(world)
    message = await final(await imagine(world, "a forbidden scene", provider="nanobanana"))
    assert message.content.startswith("❌")
    assert "Generation failed: prompt blocked by filter" in message.content
    assert len(world.providers.requests_to("nbpro")) == 1
    after = await settled_balance(world)
    assert after.used == before.used
    await still_serving(world)


async def test_unreachable_provider_refunds_with_a_message(emulators, tmp_path):
    discord_emu, providers = emulators
    ids = populate(discord_emu)
    settings = make_settings(
        discord_emu,
        providers,
        tmp_path / "data",
        modelslab_base_url="http://127.0.0.1:9/api/v1/enterprise",  # nothing listens on 9
        retry_attempts=1,
    )
    async with running_bot(settings, discord_emu) as bot:
        await bot.sync_commands()
        interaction = await discord_emu.slash(
            "imagine",
            guild_id=ids["guild_id"],
            channel_id=ids["channel_id"],
            user_id=ids["member_id"],
            options=[opt("prompt", "nobody home"), opt("provider", "modelslab")],
        )
        await interaction.wait_for(
            lambda r: bool(r.original and r.original.content.startswith("❌")), timeout=30
        )
        balance = await bot.runtime.ledger.balance(str(ids["guild_id"]))  # type: ignore[attr-defined]
        assert balance.guild.used == 0 and balance.guild.reserved == 0


async def test_expired_token_falls_back_to_the_channel(emulators, tmp_path):
    discord_emu, providers = emulators
    discord_emu.token_ttl = 0.5
    ids = populate(discord_emu)
    settings = make_settings(discord_emu, providers, tmp_path / "data", progress_interval=60)
    providers.script("text2img", Processing(polls=3, eta=0.3))
    providers.latency = 0.3  # four provider calls: the job outlives the token
    async with running_bot(settings, discord_emu) as bot:
        await bot.sync_commands()
        await discord_emu.slash(
            "imagine",
            guild_id=ids["guild_id"],
            channel_id=ids["channel_id"],
            user_id=ids["member_id"],
            options=[opt("prompt", "slow enough to outlive the token")],
        )

        def posted():
            return [
                m
                for m in discord_emu.channel_messages(ids["channel_id"])
                if m.embeds and m.webhook_id is None
            ]

        await discord_emu.wait_for(lambda: bool(posted()), timeout=30)
        assert posted()[0].content.startswith(f"<@{ids['member_id']}>")
    discord_emu.assert_no_violations()


async def test_gateway_drop_during_a_job_resumes_and_delivers(world: World):
    world.providers.script("text2img", Processing(polls=4, eta=0.2))
    interaction = await imagine(world, "through a reconnect")
    await world.discord.wait_for(lambda: bool(world.providers.requests_to("fetch")), timeout=20)
    await world.discord.drop_connection(0)
    await world.discord.wait_for(lambda: world.discord.resumes >= 1, timeout=30)
    assert (await final(interaction, within=30)).embeds
    await still_serving(world)


async def test_sqlite_locked_for_a_while_only_delays(world: World):
    path = world.settings.sqlite_path
    locked = threading.Event()
    release = threading.Event()

    def hold_lock() -> None:
        conn = sqlite3.connect(path, timeout=30)
        conn.execute("BEGIN EXCLUSIVE")
        locked.set()
        release.wait(10)
        conn.rollback()
        conn.close()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    await asyncio.to_thread(locked.wait, 10)
    interaction = await imagine(world, "wait for the lock")
    # Acknowledged at once, but the reservation cannot be written while the lock
    # is held: the job is waiting (busy_timeout), not failed or past the provider.
    await interaction.wait_for_callback()
    assert world.providers.requests_to("text2img") == []
    assert not is_final(interaction.original)
    release.set()
    await asyncio.to_thread(holder.join, 10)
    assert (await final(interaction, within=40)).embeds
    assert (await settled_balance(world)).used == 1


async def test_image_store_that_cannot_write_still_delivers(emulators, tmp_path):
    discord_emu, providers = emulators
    ids = populate(discord_emu)
    data = tmp_path / "data"
    data.mkdir()
    (data / "images").write_text("a file where the image folder should be")
    settings = make_settings(discord_emu, providers, data)
    async with running_bot(settings, discord_emu) as bot:
        await bot.sync_commands()
        interaction = await discord_emu.slash(
            "imagine",
            guild_id=ids["guild_id"],
            channel_id=ids["channel_id"],
            user_id=ids["member_id"],
            options=[opt("prompt", "no room to keep it")],
        )
        message = await final(interaction)
        assert message.embeds and message.attachments
    discord_emu.assert_no_violations()
