"""Two bot processes, one shard each, sharing one PostgreSQL ledger."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from bot.config import Settings
from bot.quota import open_ledger
from tests.e2e.test_generation import answer_of, is_final, opt
from tests.e2e.test_restart import BotProcess
from tests.emulators.discord import DiscordEmulator
from tests.emulators.providers import ProviderEmulator

GUILDS_PER_SHARD = 6
JOBS = 48
BUDGET = 20


async def test_two_shard_processes_never_exceed_the_operator_budget(pg_url, tmp_path):
    async with (
        DiscordEmulator(heartbeat_interval=2.0, shard_count=2) as discord_emu,
        ProviderEmulator(latency=0.05) as providers,
    ):
        places = []
        for shard in (0, 1):
            for g in range(GUILDS_PER_SHARD):
                guild = discord_emu.add_guild(name=f"s{shard}-g{g}", shard_id=shard)
                channel = discord_emu.add_channel(guild.id)
                member = discord_emu.add_member(guild.id, name=f"m{shard}-{g}")
                places.append((guild.id, channel.id, member.id))

        def env_for(shard: int | None) -> dict[str, str]:
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": str(tmp_path),
                "DISCORD_TOKEN": discord_emu.token,
                "DISCORD_API_BASE_URL": discord_emu.api_base,
                "DISCORD_GATEWAY_URL": discord_emu.gateway_url,
                "MODELSLAB_API_KEY": "ml-test-key",
                "MODELSLAB_BASE_URL": providers.modelslab_base_url,
                "DATABASE_URL": pg_url,
                "DATA_DIR": str(tmp_path / f"data-{shard}"),
                "DOWNLOAD_ALLOW_LOOPBACK": "true",
                "GLOBAL_DAILY_BUDGET": str(BUDGET),
                "DEFAULT_POOL_CREDITS": "1000",
                "DEFAULT_USER_ALLOWANCE": "unlimited",
                "MAX_JOBS_IN_FLIGHT_PER_USER": "50",
                "SHARD_COUNT": "2",
            }
            if shard is not None:
                env["SHARD_IDS"] = str(shard)
            return env

        sync = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "--env-file", os.devnull, "sync",
            env=env_for(None), cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await sync.communicate()
        assert sync.returncode == 0, err.decode()

        bots = [
            BotProcess(env_for(shard), tmp_path, tmp_path / f"bot-{shard}.log") for shard in (0, 1)
        ]
        try:
            await bots[0].start(discord_emu, all_shards=False)
            await bots[1].start(discord_emu)
            await discord_emu.wait_for(
                lambda: len(discord_emu.identify_payloads) >= 2, timeout=30, what="both shards"
            )
            shards = sorted(tuple(p.shard) for p in discord_emu.identify_payloads[-2:])
            assert shards == [(0, 2), (1, 2)]

            interactions = await asyncio.gather(
                *(
                    discord_emu.slash(
                        "imagine",
                        guild_id=places[i % len(places)][0],
                        channel_id=places[i % len(places)][1],
                        user_id=places[i % len(places)][2],
                        options=[opt("prompt", f"job {i}")],
                    )
                    for i in range(JOBS)
                )
            )
            await discord_emu.wait_for(
                lambda: all(is_final(answer_of(i)) for i in interactions), timeout=120
            )
            # Graceful stops: a settle that follows the last upload still lands.
            for bot in bots:
                assert await bot.terminate() == 0
        finally:
            for bot in bots:
                await bot.stop()

        answers = {i.id: answer_of(i) for i in interactions}
        delivered = [i for i in interactions if answers[i.id].embeds]
        refused = [i for i in interactions if answers[i.id].content.startswith("❌")]
        assert len(delivered) + len(refused) == JOBS
        other = [answers[i.id].content for i in refused if "budget" not in answers[i.id].content]
        assert other == []
        # A refusal is the member's alone.
        assert all(answers[i.id].ephemeral for i in refused)

        assert len(delivered) == BUDGET  # text2img costs 1: the budget buys exactly 20
        assert all("daily generation budget" in answers[i.id].content for i in refused)
        # Both processes served jobs: each shard's guilds were answered.
        served_guilds = {i.guild_id for i in delivered + refused}
        assert served_guilds == {p[0] for p in places}

        settings = Settings(_env_file=None, database_url=pg_url, data_dir=Path(tmp_path))
        async with open_ledger(settings, sweep=False) as ledger:
            total = 0
            for guild_id, _, _ in places:
                balance = (await ledger.balance(str(guild_id))).guild
                assert balance.reserved == 0
                total += balance.used
        assert total == BUDGET
        discord_emu.assert_no_violations()
