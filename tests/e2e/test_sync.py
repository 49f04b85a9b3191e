"""`python -m bot sync` registers the commands and exits, as a real subprocess."""

from __future__ import annotations

import asyncio
import os
import sys

from tests.emulators.discord import DiscordEmulator
from tests.emulators.providers import ProviderEmulator


async def test_sync_command_registers_commands_and_exits(tmp_path):
    async with DiscordEmulator() as discord_emu, ProviderEmulator() as providers:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(tmp_path),
            "DISCORD_TOKEN": discord_emu.token,
            "DISCORD_API_BASE_URL": discord_emu.api_base,
            "DISCORD_GATEWAY_URL": discord_emu.gateway_url,
            "MODELSLAB_API_KEY": "ml-test-key",
            "MODELSLAB_BASE_URL": providers.modelslab_base_url,
            "DATA_DIR": str(tmp_path / "data"),
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "--env-file", os.devnull, "sync",
            env=env, cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, stderr = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, stderr.decode()
        names = {command["name"] for command in discord_emu.registered_commands()}
        assert {"imagine", "edit", "blend", "quota", "Edit image", "Generation info"} <= names
        assert discord_emu.identifies == 0  # synced over REST without connecting
        assert discord_emu.token not in stderr.decode()
        discord_emu.assert_no_violations()
