"""A bot that stalls past its lease: its job is adopted elsewhere, it stops
working on it without a word, and carries on under a new lease.

The bot runs in this process; a second job store and lease on the same
database stand for another process (on any machine) that adopts the job and
then dies itself, so the bot, now under its new lease, adopts it back and
delivers it once.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiosqlite

from bot.jobstore import JobStore
from bot.lease import Lease
from tests.e2e.conftest import make_settings, populate, running_bot
from tests.e2e.test_generation import is_final, opt
from tests.e2e.test_restart import results_in
from tests.emulators.providers import Processing


async def settled_balance_of(bot: Any, guild_id: int) -> Any:
    for _ in range(200):
        balance = (await bot.runtime.ledger.balance(str(guild_id))).guild
        if balance.reserved == 0:
            return balance
        await asyncio.sleep(0.05)
    raise AssertionError(f"credits still held: {balance}")


async def test_a_bot_whose_lease_was_taken_stops_its_jobs_and_goes_on(emulators, tmp_path):
    discord_emu, providers = emulators
    ids = populate(discord_emu)
    settings = make_settings(
        discord_emu, providers, tmp_path / "data", lease_timeout=3, lease_interval=0.5
    )
    async with running_bot(settings, discord_emu) as bot:
        await bot.sync_commands()
        assert bot.lease is not None and bot.lease.id is not None
        first_lease = bot.lease.id
        providers.script("text2img", Processing(polls=60, eta=0.1))
        interaction = await discord_emu.slash(
            "imagine",
            guild_id=ids["guild_id"],
            channel_id=ids["channel_id"],
            user_id=ids["member_id"],
            options=[opt("prompt", "taken over"), opt("provider", "modelslab")],
        )
        await discord_emu.wait_for(
            lambda: len(providers.requests_to("fetch")) >= 2, timeout=20, what="polling"
        )

        # The bot's lease runs out (as if it had stalled) and another process adopts.
        async with JobStore.connect(settings.sqlite_path) as other_jobs:
            other = Lease(other_jobs, settings, ())
            await other.acquire()
            async with aiosqlite.connect(settings.sqlite_path) as db:
                await db.execute(
                    "UPDATE instances SET expires_at = ? WHERE id = ?",
                    (time.time() - 1, first_lease),
                )
                await db.commit()
            (taken,) = await other.adopt()
            assert taken.reservation is not None

            # At its next renewal the bot finds out, stops the job silently and
            # takes a new lease.
            await discord_emu.wait_for(
                lambda: bot.lease is not None and bot.lease.id != first_lease,
                timeout=20,
                what="a new lease",
            )
            assert not bot._job_tasks
            assert not is_final(interaction.original)
            assert results_in(discord_emu, ids["channel_id"]) == []
            # The adopter dies without renewing: once its lease runs out, the bot
            # adopts the job back and delivers it, once.
        await discord_emu.wait_for(
            lambda: bool(results_in(discord_emu, ids["channel_id"])),
            timeout=30,
            what="the result after re-adoption",
        )
        balance = await settled_balance_of(bot, ids["guild_id"])
        assert (balance.used, balance.reserved) == (1, 0)
    assert len(results_in(discord_emu, ids["channel_id"])) == 1
    assert len(providers.requests_to("text2img")) == 1
    assert not is_final(interaction.original)  # never told it failed
    discord_emu.assert_no_violations()
