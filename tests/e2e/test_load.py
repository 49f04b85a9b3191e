"""500 interactions in 10 s from 20 guilds and 100 members, with a flaky provider."""

from __future__ import annotations

import asyncio
import random

import pytest

from tests.e2e.conftest import make_settings, running_bot
from tests.e2e.test_generation import is_final, opt
from tests.emulators.discord import DiscordEmulator
from tests.emulators.providers import Behaviour, Error, Processing, ProviderEmulator, Success

INTERACTIONS = 500
GUILDS = 20
MEMBERS_PER_GUILD = 5
SPREAD_SECONDS = 10.0


@pytest.mark.slow
async def test_load_every_job_delivered_or_refunded_and_ledger_balanced(tmp_path):
    rng = random.Random(20261121)
    behaviours: list[Behaviour] = []
    for _ in range(INTERACTIONS):
        roll = rng.random()
        if roll < 0.10:
            behaviours.append(Error(http_status=400, message="Prompt rejected"))
        elif roll < 0.40:
            behaviours.append(Processing(polls=rng.randint(1, 3), eta=rng.uniform(0.05, 0.3)))
        else:
            behaviours.append(Success())
    async with (
        DiscordEmulator(heartbeat_interval=5.0, validate_spec=False) as discord_emu,
        ProviderEmulator(latency=0.0) as providers,
    ):
        providers.script("text2img", *behaviours)
        places = []
        for g in range(GUILDS):
            guild = discord_emu.add_guild(name=f"guild-{g}")
            channel = discord_emu.add_channel(guild.id)
            for m in range(MEMBERS_PER_GUILD):
                member = discord_emu.add_member(guild.id, name=f"m{g}-{m}")
                places.append((guild.id, channel.id, member.id))
        settings = make_settings(
            discord_emu,
            providers,
            tmp_path / "data",
            default_pool_credits=10_000,
            default_user_allowance="unlimited",
            max_jobs_in_flight_per_user=50,
            modelslab_max_queued=15,
            progress_interval=5.0,
        )
        async with running_bot(settings, discord_emu) as bot:
            await bot.sync_commands()
            interactions = []
            started = asyncio.get_running_loop().time()
            for index in range(INTERACTIONS):
                guild_id, channel_id, user_id = places[index % len(places)]
                interactions.append(
                    await discord_emu.slash(
                        "imagine",
                        guild_id=guild_id,
                        channel_id=channel_id,
                        user_id=user_id,
                        options=[opt("prompt", f"job {index}"), opt("provider", "modelslab")],
                    )
                )
                target = started + SPREAD_SECONDS * (index + 1) / INTERACTIONS
                await asyncio.sleep(max(0.0, target - asyncio.get_running_loop().time()))

            await discord_emu.wait_for(
                lambda: all(is_final(i.original) for i in interactions), timeout=240
            )
            assert all(i.acknowledged for i in interactions), "an interaction was not acknowledged"
            delivered = [i for i in interactions if i.original and i.original.embeds]
            refused = [
                i for i in interactions if i.original and i.original.content.startswith("❌")
            ]
            assert len(delivered) + len(refused) == INTERACTIONS
            failures = sum(isinstance(b, Error) for b in behaviours)
            assert len(refused) == failures
            assert all("Prompt rejected" in i.original.content for i in refused)

            ledger = bot.runtime.ledger
            for _ in range(100):  # settles land just after the uploads
                balances = [await ledger.balance(str(g)) for g in {p[0] for p in places}]  # type: ignore[attr-defined]
                if all(b.guild.reserved == 0 for b in balances):
                    break
                await asyncio.sleep(0.1)
            charged = sum(b.guild.used for b in balances)
            assert all(b.guild.reserved == 0 for b in balances)
            assert charged == len(delivered) * settings.costs["text2img"]
            assert sum(isinstance(b, Success | Processing) for b in behaviours) == len(delivered)
