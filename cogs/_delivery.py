"""Delivery to a Discord interaction: progress edits, result messages, failures.

The interaction token lives 15 minutes; a job that ends after
``INTERACTION_WINDOW`` seconds posts in the channel instead, and only then mentions the
requester (they would otherwise never learn the images arrived).
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import discord

from bot.errors import BotError, DeliveryError
from bot.images import ImageProcessor, UploadFile
from bot.jobs import Job, JobResult
from bot.jobstore import StoredImage
from bot.models import Mode, Progress, ResultImage, Stage
from cogs._views import result_view

if TYPE_CHECKING:
    from bot.app import ImageBot

log = logging.getLogger("bot.delivery")

NO_MENTIONS = discord.AllowedMentions.none()
TITLES = {Mode.TEXT: "Imagine", Mode.EDIT: "Edit", Mode.BLEND: "Blend"}


def token_expiring(interaction: discord.Interaction[Any], window: float) -> bool:
    return discord.utils.utcnow() - interaction.created_at > timedelta(seconds=window)


def describe_progress(progress: Progress, provider: str) -> str:
    if progress.stage is Stage.QUEUED:
        position = progress.queue_position or 1
        return f"⏳ Waiting for {provider}: position {position} in the queue."
    if progress.stage is Stage.SUBMITTING:
        return f"🎨 Sending your request to {provider}…"
    if progress.stage is Stage.PROCESSING:
        if progress.eta_seconds:
            return f"🎨 {provider} is working on it, about {progress.eta_seconds:.0f} s left…"
        return f"🎨 {provider} is working on it…"
    if progress.stage is Stage.DOWNLOADING:
        return "📥 Fetching your images…"
    return "📤 Uploading your images…"


def result_embed(result: JobResult) -> discord.Embed:
    request = result.request
    embed = discord.Embed(
        title=TITLES[request.mode],
        description=discord.utils.escape_markdown(request.prompt)[:3900],
        colour=discord.Colour.blurple(),
    )
    if request.negative_prompt:
        embed.add_field(
            name="Negative prompt",
            value=discord.utils.escape_markdown(request.negative_prompt)[:1000],
            inline=False,
        )
    embed.add_field(name="Seed", value=str(result.seed) if result.seed is not None else "random")
    provider = result.provider + (f" · {result.model}" if result.model else "")
    embed.add_field(name="Provider", value=provider)
    embed.add_field(name="Time taken", value=f"{result.elapsed:.1f} s")
    embed.add_field(name="Credits charged", value=str(result.credits_charged))
    left = []
    if result.user_remaining is not None:
        left.append(f"you: {result.user_remaining}")
    if result.guild_remaining is not None:
        left.append(f"server: {result.guild_remaining}")
    embed.add_field(name="Credits left", value=", ".join(left) or "unlimited")
    embed.set_footer(text=f"Job {result.job.id}")
    return embed


def to_files(uploads: Sequence[UploadFile]) -> list[discord.File]:
    return [discord.File(io.BytesIO(upload.data), filename=upload.filename) for upload in uploads]


async def plan_messages(
    images: ImageProcessor, results: Sequence[ResultImage], limit: int
) -> list[list[UploadFile]]:
    """One message with the grid and every sample when re-encoding is enough;
    more messages rather than smaller pictures when it is not. U1-U4 still post
    each untouched original on its own."""
    grid = len(results) > 1
    single = await images.fit_for_upload(
        results, max_bytes=limit, max_files=10, grid=grid, max_messages=1
    )
    samples = single[0][1:] if grid else single[0]
    if all(
        (u.width, u.height) == (r.width, r.height) for u, r in zip(samples, results, strict=True)
    ):
        return single
    return await images.fit_for_upload(results, max_bytes=limit, max_files=10, grid=grid)


class InteractionDelivery:
    """Implements bot.jobs.Delivery for a deferred interaction."""

    def __init__(self, bot: ImageBot, interaction: discord.Interaction[ImageBot]) -> None:
        self.bot = bot
        self.interaction = interaction
        self._last_edit = 0.0
        self._last_text = ""
        self.messages: list[discord.Message] = []

    def _expiring(self) -> bool:
        return token_expiring(self.interaction, self.bot.settings.interaction_window)

    async def progress(self, job: Job, progress: Progress) -> None:
        text = describe_progress(progress, job.provider)
        now = time.monotonic()
        # Discord rate-limits edits; a courtesy update is never worth a 429.
        if text == self._last_text or now - self._last_edit < self.bot.settings.progress_interval:
            return
        if self._expiring():
            return  # progress is a courtesy; never spend a channel message on it
        self._last_edit, self._last_text = now, text
        await self.interaction.edit_original_response(content=text, allowed_mentions=NO_MENTIONS)

    async def deliver(self, job: Job, result: JobResult) -> None:
        limit = self.interaction.filesize_limit
        plan = await plan_messages(self.bot.runtime.images, result.images, limit)
        embed = result_embed(result)
        first = plan[0]
        preview = first[0].filename
        embed.set_image(url=f"attachment://{preview}")
        view = result_view(job.id, len(result.images), can_vary=self._can_vary())
        try:
            message = await self._send_first(job, embed, first, view)
            self.messages.append(message)
            for extra in plan[1:]:
                self.messages.append(await self._send_more(extra))
        except discord.HTTPException as exc:
            raise DeliveryError(
                "Discord refused the upload of your images, so nothing was charged "
                f"(HTTP {exc.status})."
            ) from exc
        await self.bot.jobs.mark_delivered(
            job.id,
            charged=result.credits_charged,
            seed=result.seed,
            images=self._stored_images(result),
            message_id=str(message.id),
        )

    def _can_vary(self) -> bool:
        return any(p.capabilities.supports(Mode.EDIT) for p in self.bot.runtime.providers.values())

    async def _send_first(
        self, job: Job, embed: discord.Embed, uploads: Sequence[UploadFile], view: discord.ui.View
    ) -> discord.Message:
        if not self._expiring():
            return await self.interaction.edit_original_response(
                content=None,
                embed=embed,
                attachments=to_files(uploads),
                view=view,
                allowed_mentions=NO_MENTIONS,
            )
        channel = self._channel()
        requester = discord.Object(id=int(job.request.requester.user_id))
        message = await channel.send(
            content=f"<@{requester.id}> your images are ready.",
            embed=embed,
            files=to_files(uploads),
            view=view,
            allowed_mentions=discord.AllowedMentions(
                users=[requester], everyone=False, roles=False
            ),
        )
        await self._drop_placeholder()
        return message

    async def _send_more(self, uploads: Sequence[UploadFile]) -> discord.Message:
        if not self._expiring():
            return await self.interaction.followup.send(
                files=to_files(uploads), wait=True, allowed_mentions=NO_MENTIONS
            )
        return await self._channel().send(files=to_files(uploads), allowed_mentions=NO_MENTIONS)

    def _channel(self) -> discord.abc.Messageable:
        channel = self.interaction.channel
        if isinstance(channel, discord.abc.Messageable):
            return channel
        return self.bot.get_partial_messageable(self.interaction.channel_id or 0)

    async def _drop_placeholder(self) -> None:
        # With an expired token the "thinking" placeholder simply stays.
        with contextlib.suppress(discord.HTTPException):
            await self.interaction.delete_original_response()

    def _stored_images(self, result: JobResult) -> list[StoredImage]:
        urls: dict[str, str] = {}
        for message in self.messages:
            for attachment in message.attachments:
                urls[attachment.filename] = attachment.url
        stored = []
        for index, image in enumerate(result.images, start=1):
            url = next(
                (u for name, u in urls.items() if name.startswith(f"image_{index}.")),
                image.source_url,
            )
            stored.append(
                StoredImage(
                    index=index,
                    mime=image.mime,
                    width=image.width,
                    height=image.height,
                    url=url,
                    path=image.path,
                )
            )
        return stored

    async def fail(self, job: Job | None, error: BotError) -> None:
        if job is not None:
            await self.bot.jobs.mark_failed(job.id, error.user_message)
        text = f"❌ {error.user_message}"
        if not self._expiring():
            # After a public defer Discord turns the first follow-up into the
            # placeholder itself, so the placeholder is where the answer goes.
            await self.interaction.edit_original_response(
                content=text, embeds=[], attachments=[], view=None, allowed_mentions=NO_MENTIONS
            )
            return
        user_id = int(job.request.requester.user_id) if job else self.interaction.user.id
        requester = discord.Object(id=user_id)
        await self._channel().send(
            f"<@{user_id}> {text}",
            allowed_mentions=discord.AllowedMentions(
                users=[requester], everyone=False, roles=False
            ),
        )
        await self._drop_placeholder()
