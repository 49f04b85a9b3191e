"""discord.py's own cost: ``python -m bench._minimal ENDPOINTS_JSON``.

A minimal discord.py bot doing the same four exchanges as the bare script and the
bot, through discord.py as the bot uses it: an ``AutoShardedClient`` with the
bot's intents and one ``/imagine`` application command that defers, calls
ModelsLab text2img with aiohttp, downloads the result and puts it in the
original response with ``edit_original_response`` (an embed and the file). No
ledger, no journal, no validation or decoding, no disk: the gap between this
column and the bare script's is discord.py's, the gap to the bot's is the bot's.
It runs on the same event loop as the bot (asyncio's own; see ``bench._child.run``).
"""

from __future__ import annotations

import asyncio
import io
import json
import sys
from typing import Any

import aiohttp
import discord
import yarl
from discord import app_commands

from bench._child import Meter, reply, run, serve


class Minimal(discord.AutoShardedClient):
    def __init__(self, endpoints: dict[str, Any]) -> None:
        intents = discord.Intents.none()
        intents.guilds = True  # as the bot
        super().__init__(
            intents=intents, shard_count=1, allowed_mentions=discord.AllowedMentions.none()
        )
        self.ml = endpoints["modelslab_base_url"]
        self.ml_key = endpoints["modelslab_key"]
        self.failures = 0
        self.session: aiohttp.ClientSession | None = None
        self.tree = app_commands.CommandTree(self)
        self.tree.command(name="imagine", description="Generate an image")(self.imagine)
        self.tree.on_error = self.on_command_error  # type: ignore[method-assign]

    async def setup_hook(self) -> None:
        self.session = aiohttp.ClientSession()
        await self.tree.sync()

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
        await super().close()

    async def on_command_error(
        self, interaction: discord.Interaction[Any], error: app_commands.AppCommandError
    ) -> None:
        self.failures += 1

    async def imagine(
        self, interaction: discord.Interaction[Any], prompt: str, aspect_ratio: str = "1:1"
    ) -> None:
        assert self.session is not None
        await interaction.response.defer(thinking=True)
        body = {
            "key": self.ml_key,
            "model_id": "flux",
            "prompt": prompt,
            "width": 1024,
            "height": 1024,
            "samples": 1,
            "safety_checker": "yes",
        }
        async with self.session.post(f"{self.ml}/text2img", json=body) as response:
            response.raise_for_status()
            result = await response.json()
        async with self.session.get(result["output"][0]) as response:
            response.raise_for_status()
            data = await response.read()
        embed = discord.Embed(title="Imagine", description=prompt)
        embed.set_image(url="attachment://image_1.png")
        await interaction.edit_original_response(
            embed=embed, attachments=[discord.File(io.BytesIO(data), filename="image_1.png")]
        )


async def main(endpoints_json: str) -> None:
    endpoints = json.loads(endpoints_json)
    discord.http.Route.BASE = str(endpoints["api_base"]).rstrip("/")
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(endpoints["gateway_url"])
    client = Minimal(endpoints)
    meter = Meter()

    async def handle(command: dict[str, Any]) -> dict[str, Any] | None:
        answer = await meter.handle(command)
        if answer is not None and command.get("cmd") == "end":
            answer["failures"] = client.failures
        return answer

    async with client:
        task = asyncio.create_task(client.start(endpoints["token"]))
        ready = asyncio.create_task(client.wait_until_ready())
        await asyncio.wait({task, ready}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            raise RuntimeError("the minimal bot did not become ready")
        reply({"ready": True})
        try:
            await serve(handle)
        finally:
            await meter.probe.stop()
            await client.close()


if __name__ == "__main__":
    run(main(sys.argv[1]))
