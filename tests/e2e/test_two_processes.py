"""Two bot processes, one shard each, sharing one PostgreSQL ledger."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]

from bot.config import Settings
from bot.quota import open_ledger
from tests.e2e.conftest import process_env
from tests.e2e.test_generation import answer_of, is_final, opt
from tests.e2e.test_restart import BotProcess, can_rename_host
from tests.emulators.discord import DiscordEmulator
from tests.emulators.providers import Processing, ProviderEmulator

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
            env = process_env(
                discord_emu,
                providers,
                tmp_path,
                tmp_path / f"data-{shard}",
                DATABASE_URL=pg_url,
                GLOBAL_DAILY_BUDGET=str(BUDGET),
                DEFAULT_POOL_CREDITS="1000",
                DEFAULT_USER_ALLOWANCE="unlimited",
                MAX_JOBS_IN_FLIGHT_PER_USER="50",
                SHARD_COUNT="2",
            )
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


async def test_a_lost_shard_process_s_jobs_are_delivered_by_the_other(pg_url, tmp_path):
    """Two shard processes on "different machines" (host names of their own where
    this machine allows it, separate data directories) share PostgreSQL. One is
    killed mid-job; the other adopts its job once the lease runs out and posts
    the result in the job's channel, charged once. The lost one's instance is
    forgotten once its job has moved on."""
    lease_timeout, lease_interval = 3.0, 0.5
    async with (
        DiscordEmulator(heartbeat_interval=2.0, shard_count=2) as discord_emu,
        ProviderEmulator() as providers,
    ):
        places = []
        for shard in (0, 1):
            guild = discord_emu.add_guild(name=f"shard-{shard}", shard_id=shard)
            channel = discord_emu.add_channel(guild.id)
            member = discord_emu.add_member(guild.id, name=f"member-{shard}")
            places.append((guild.id, channel.id, member.id))

        def env_for(shard: int | None) -> dict[str, str]:
            env = process_env(
                discord_emu,
                providers,
                tmp_path,
                tmp_path / f"data-{shard}",
                DATABASE_URL=pg_url,
                POLL_INITIAL="0.05",
                POLL_MAX="0.2",
                SHARD_COUNT="2",
                LEASE_TIMEOUT=str(lease_timeout),
                LEASE_INTERVAL=str(lease_interval),
            )
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

        rename = can_rename_host()
        bots = [
            BotProcess(env_for(shard), tmp_path, tmp_path / f"bot-{shard}.log") for shard in (0, 1)
        ]
        for shard, bot in enumerate(bots):
            bot.hostname = f"machine-{shard}" if rename else None
        try:
            await bots[0].start(discord_emu, all_shards=False)
            await bots[1].start(discord_emu)
            await discord_emu.wait_for(
                lambda: len(discord_emu.identify_payloads) >= 2, timeout=30, what="both shards"
            )
            # The job on shard 0 is slow at the provider: still polling when its
            # process is lost.
            providers.script("text2img", Processing(polls=30, eta=0.1))
            guild_id, channel_id, member_id = places[0]
            lost = await discord_emu.slash(
                "imagine",
                guild_id=guild_id,
                channel_id=channel_id,
                user_id=member_id,
                options=[opt("prompt", "on the lost machine")],
            )
            await discord_emu.wait_for(
                lambda: len(providers.requests_to("fetch")) >= 2, timeout=30, what="polling"
            )
            bots[0].kill()
            await bots[0].wait()

            def posted() -> list[object]:
                return [
                    m
                    for m in discord_emu.channel_messages(channel_id)
                    if m.content.startswith(f"<@{member_id}>") and m.embeds
                ]

            # The lease runs out, the survivor's next look adopts it and polls on
            # (the provider needs a few more polls), then posts.
            await discord_emu.wait_for(
                lambda: bool(posted()),
                timeout=lease_timeout + lease_interval + 20,
                what="the result posted by the other process",
            )
            # Meanwhile the survivor serves its own shard as before.
            guild_1, channel_1, member_1 = places[1]
            own = await discord_emu.slash(
                "imagine",
                guild_id=guild_1,
                channel_id=channel_1,
                user_id=member_1,
                options=[opt("prompt", "on the surviving machine")],
            )
            await discord_emu.wait_for(lambda: is_final(own.original), timeout=30)
            assert own.original.embeds
            assert await bots[1].terminate() == 0
        finally:
            for bot in bots:
                await bot.stop()

        assert len(posted()) == 1
        assert not is_final(lost.original)  # its token died with the lost process
        assert len(providers.requests_to("text2img")) == 2  # one per job, none twice
        settings = Settings(_env_file=None, database_url=pg_url, data_dir=Path(tmp_path))
        async with open_ledger(settings, sweep=False) as ledger:
            balance = (await ledger.balance(str(guild_id))).guild
            assert (balance.used, balance.reserved) == (1, 0)
        conn = await asyncpg.connect(pg_url)
        try:
            instances = [
                tuple(row) for row in await conn.fetch("SELECT host, state FROM instances")
            ]
        finally:
            await conn.close()
        assert instances == [(bots[1].hostname or socket.gethostname(), "stopped")]
        discord_emu.assert_no_violations()
