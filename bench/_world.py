"""The emulated world the bot (or the baseline) runs against, in the orchestrator process.

Both emulators are the test suite's own, subclassed only to time things:

* ``TimedDiscord`` notes when each interaction's original message becomes final
  (a result or a failure), at the moment the request that made it was handled;
* ``TimedProviders`` adds up, per prompt, the time its own handlers spent on a job
  (the generate call and every file download), the "provider time".

They run in this process, so their CPU is never counted as the bot's.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from PIL import Image

from tests.emulators.discord import DiscordEmulator, InteractionRecord
from tests.emulators.providers import ProviderEmulator

MEMBER_PERMISSIONS = (1 << 10) | (1 << 11) | (1 << 15) | (1 << 31)  # view, send, attach, apps


def is_failure(record: InteractionRecord) -> bool:
    """A job failure ("❌ …") or an error answer (private, "Something went wrong…")."""
    message = record.original
    if message is None or message.loading:
        return False
    return message.content.startswith("❌") or message.ephemeral or "went wrong" in message.content


def is_final(record: InteractionRecord) -> bool:
    """A result (embed or files) or a failure, not a progress line."""
    message = record.original
    if message is None or message.loading:
        return False
    return bool(message.embeds or message.attachments) or is_failure(record)


class TimedDiscord(DiscordEmulator):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.final_at: dict[int, float] = {}
        self._final_waiters: dict[int, asyncio.Future[float]] = {}

    def expect(self, interaction_id: int) -> asyncio.Future[float]:
        future = self._final_waiters.get(interaction_id)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._final_waiters[interaction_id] = future
        return future

    def _check_final(self, interaction: InteractionRecord) -> None:
        if interaction.id in self.final_at or not is_final(interaction):
            return
        now = asyncio.get_running_loop().time()
        self.final_at[interaction.id] = now
        future = self.expect(interaction.id)
        if not future.done():
            future.set_result(now)

    async def _edit_interaction_message(self, ctx: Any) -> web.StreamResponse:
        response = await super()._edit_interaction_message(ctx)
        interaction = self._interactions_by_token.get(ctx.params["webhook_token"])
        if interaction is not None:
            self._check_final(interaction)
        return response

    async def _post_followup(self, ctx: Any) -> web.StreamResponse:
        response = await super()._post_followup(ctx)
        interaction = self._interactions_by_token.get(ctx.params["webhook_token"])
        if interaction is not None:
            self._check_final(interaction)
        return response

    def forget(self) -> None:
        """Drop what past runs recorded (messages, uploads, requests): memory only."""
        self.requests.clear()
        self.messages.clear()
        self.attachments.clear()
        self.interactions.clear()
        self._interactions_by_token.clear()
        self.cdn_downloads.clear()
        self.final_at.clear()
        self._final_waiters.clear()
        for session in self._sessions.values():
            session.log.clear()


GENERATE_ENDPOINTS = ("text2img", "img2img", "multi_ref", "nbpro")


class TimedProviders(ProviderEmulator):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.busy: dict[str, float] = {}  # prompt -> seconds spent in handlers
        self.generation_time = 0.0  # a simulated model's time, on generate calls only
        self._file_prompt: dict[str, str] = {}

    async def _prelude(self, endpoint: str) -> Any:
        if self.generation_time and endpoint in GENERATE_ENDPOINTS:
            await asyncio.sleep(self.generation_time)
        return await super()._prelude(endpoint)

    async def _ml_generate(self, request: web.Request, endpoint: str) -> web.StreamResponse:
        started = time.perf_counter()
        response = await super()._ml_generate(request, endpoint)
        spent = time.perf_counter() - started
        prompt = ""
        try:
            prompt = str(json.loads(await request.read()).get("prompt", ""))
            if isinstance(response, web.Response) and response.body is not None:
                body = json.loads(bytes(response.body))  # type: ignore[arg-type]
                for url in body.get("output", []) + body.get("future_links", []):
                    self._file_prompt[str(url).rsplit("/", 1)[-1]] = prompt
        except (ValueError, AttributeError, TypeError):
            pass
        self.busy[prompt] = self.busy.get(prompt, 0.0) + spent
        return response

    async def _file(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        response = await super()._file(request)
        prompt = self._file_prompt.get(request.match_info["name"], "")
        self.busy[prompt] = self.busy.get(prompt, 0.0) + time.perf_counter() - started
        return response

    def forget(self) -> None:
        self.requests.clear()
        self.busy.clear()
        self._file_prompt.clear()
        self._files.clear()
        self._jobs.clear()


@dataclass
class World:
    discord: TimedDiscord
    providers: TimedProviders
    guild_id: int
    channel_id: int
    member_ids: list[int] = field(default_factory=list)

    def bot_settings(self, data_dir: str, **overrides: Any) -> dict[str, Any]:
        """Settings for the bot child process, as plain JSON values."""
        values: dict[str, Any] = {
            "discord_token": self.discord.token,
            "discord_api_base_url": self.discord.api_base,
            "discord_gateway_url": self.discord.gateway_url,
            "modelslab_api_key": self.providers.modelslab_key,
            "modelslab_base_url": self.providers.modelslab_base_url,
            "data_dir": data_dir,
            "download_allow_loopback": True,
            # Credits and per-member limits must not refuse benchmark jobs.
            "default_pool_credits": 1_000_000_000,
            "default_user_allowance": "unlimited",
            "max_jobs_in_flight_per_user": 50,
            # ModelsLab's plan limit queues calls in the bot; the benchmark measures
            # the bot, not a plan, so the limit is set above the concurrency used.
            "modelslab_max_queued": 100,
            "log_level": "INFO",
        }
        values.update(overrides)
        return values

    def endpoints(self) -> dict[str, Any]:
        return {
            "api_base": self.discord.api_base,
            "gateway_url": self.discord.gateway_url,
            "token": self.discord.token,
            "modelslab_base_url": self.providers.modelslab_base_url,
            "modelslab_key": self.providers.modelslab_key,
        }


def populate(discord: TimedDiscord, members: int) -> tuple[int, int, list[int]]:
    guild = discord.add_guild(name="Bench")
    channel = discord.add_channel(guild.id, name="art")
    ids = [
        discord.add_member(guild.id, name=f"m{n}", permissions=MEMBER_PERMISSIONS).id
        for n in range(members)
    ]
    return guild.id, channel.id, ids


def small_png(size: int = 512) -> bytes:
    image = Image.linear_gradient("L").resize((size, size)).convert("RGB")
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()
