"""The real bot, unmodified discord.py, against both emulators on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import discord
import pytest

from bot.app import ImageBot, open_bot
from bot.config import Settings
from tests.emulators.discord import DiscordEmulator
from tests.emulators.providers import ProviderEmulator

MANAGE_GUILD = 1 << 5
MEMBER_PERMISSIONS = (1 << 10) | (1 << 11) | (1 << 15) | (1 << 31)  # view, send, attach, use apps


@dataclass
class World:
    discord: DiscordEmulator
    providers: ProviderEmulator
    bot: ImageBot
    settings: Settings
    guild_id: int
    channel_id: int
    nsfw_channel_id: int
    member_id: int
    moderator_id: int
    other_guild_id: int
    other_channel_id: int
    other_member_id: int


def make_settings(
    discord_emu: DiscordEmulator, providers: ProviderEmulator, data_dir: Path, **overrides: Any
) -> Settings:
    values: dict[str, Any] = {
        "discord_token": discord_emu.token,
        "discord_api_base_url": discord_emu.api_base,
        "discord_gateway_url": discord_emu.gateway_url,
        "modelslab_api_key": "ml-test-key",
        "modelslab_base_url": providers.modelslab_base_url,
        "nanobanana_api_key": "sk-test-key",
        "nanobanana_base_url": providers.nanobanana_base_url,
        "data_dir": data_dir,
        "download_allow_loopback": True,
        "poll_initial": 0.01,
        "poll_max": 0.05,
        "retry_backoff_max": 0.05,
        "default_pool_credits": 100,
        "default_user_allowance": 40,
        "max_jobs_in_flight_per_user": 4,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


# discord.py announces READY only once no GUILD_CREATE has come for
# guild_ready_timeout (2 s by default, a pause sized for Discord's pace): two of
# every in-process start's seconds went there. The emulator sends all of a
# shard's GUILD_CREATEs straight after READY, so the bots started here listen
# for a much shorter pause, and running_bot then waits until the bot holds every
# guild the emulator sent it: a guild arriving after a load-stretched pause is
# still in the cache before any test acts (the bot itself never waits for READY).
GUILD_READY_TIMEOUT = 0.1


def _has_every_guild(bot: ImageBot, discord_emu: DiscordEmulator) -> bool:
    shards = set(bot.shard_ids) if bot.shard_ids is not None else set(range(bot.shard_count or 1))
    return all(
        bot.get_guild(guild_id) is not None
        for guild_id in discord_emu.guilds
        if discord_emu.shard_for(guild_id) in shards
    )


@contextlib.asynccontextmanager
async def running_bot(settings: Settings, discord_emu: DiscordEmulator) -> AsyncIterator[ImageBot]:
    saved_base = discord.http.Route.BASE
    saved_gateway = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    try:
        async with open_bot(settings) as bot:
            bot._connection.guild_ready_timeout = GUILD_READY_TIMEOUT
            token = settings.discord_token
            assert token is not None
            task = asyncio.create_task(bot.start(token.get_secret_value()))
            try:
                ready = asyncio.create_task(bot.wait_until_ready())
                await asyncio.wait({task, ready}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
                if task.done():
                    ready.cancel()
                    task.result()  # start() ended early: raise its exception
                    raise AssertionError("the bot stopped before it was ready")
                if not ready.done():
                    ready.cancel()
                    raise AssertionError("the bot did not become ready within 20 s")
                await discord_emu.wait_until_ready()
                await discord_emu.wait_for(
                    lambda: _has_every_guild(bot, discord_emu),
                    what="every guild cached",
                )
                yield bot
            finally:
                await bot.close()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(task, 10)
    finally:
        discord.http.Route.BASE = saved_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = saved_gateway


def process_env(
    discord_emu: DiscordEmulator,
    providers: ProviderEmulator,
    home: Path,
    data_dir: Path,
    **settings: str,
) -> dict[str, str]:
    """The environment of a bot started as its own process (``python -m bot``)
    against the emulators, as an operator's container would get it: nothing
    inherited but PATH, then ``settings`` (setting name: value)."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "DISCORD_TOKEN": discord_emu.token,
        "DISCORD_API_BASE_URL": discord_emu.api_base,
        "DISCORD_GATEWAY_URL": discord_emu.gateway_url,
        "MODELSLAB_API_KEY": "ml-test-key",
        "MODELSLAB_BASE_URL": providers.modelslab_base_url,
        "DATA_DIR": str(data_dir),
        "DOWNLOAD_ALLOW_LOOPBACK": "true",
        **settings,
    }


@pytest.fixture
async def emulators() -> AsyncIterator[tuple[DiscordEmulator, ProviderEmulator]]:
    async with (
        DiscordEmulator(heartbeat_interval=2.0) as discord_emu,
        ProviderEmulator() as providers,
    ):
        yield discord_emu, providers


def populate(discord_emu: DiscordEmulator) -> dict[str, int]:
    guild = discord_emu.add_guild(name="Artists")
    channel = discord_emu.add_channel(guild.id, name="art")
    nsfw = discord_emu.add_channel(guild.id, name="after-dark", nsfw=True)
    member = discord_emu.add_member(guild.id, name="ada", permissions=MEMBER_PERMISSIONS)
    moderator = discord_emu.add_member(
        guild.id, name="mod", permissions=MEMBER_PERMISSIONS | MANAGE_GUILD
    )
    other = discord_emu.add_guild(name="Elsewhere")
    other_channel = discord_emu.add_channel(other.id, name="general")
    other_member = discord_emu.add_member(other.id, name="eve", permissions=MEMBER_PERMISSIONS)
    return {
        "guild_id": guild.id,
        "channel_id": channel.id,
        "nsfw_channel_id": nsfw.id,
        "member_id": member.id,
        "moderator_id": moderator.id,
        "other_guild_id": other.id,
        "other_channel_id": other_channel.id,
        "other_member_id": other_member.id,
    }


@pytest.fixture
async def world(emulators, tmp_path) -> AsyncIterator[World]:
    discord_emu, providers = emulators
    ids = populate(discord_emu)
    settings = make_settings(discord_emu, providers, tmp_path / "data")
    async with running_bot(settings, discord_emu) as bot:
        await bot.sync_commands()
        yield World(discord_emu, providers, bot, settings, **ids)
    discord_emu.assert_no_violations()
