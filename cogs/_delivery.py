"""Delivery to a Discord interaction: progress edits, result messages, failures.

The interaction token lives 15 minutes; a job that ends after
``INTERACTION_WINDOW`` seconds posts in the channel instead, and only then mentions the
requester (they would otherwise never learn the images arrived). A private job never
falls back to the channel: it goes to the member by direct message, and if their DMs
are closed it fails (refunded) with a notice that shows neither prompt nor image.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import discord

from bot.errors import BotError, ContentFlagged, DeliveryError, UserError, failure_text
from bot.images import ImageProcessor, UploadFile
from bot.jobs import Job, JobResult, Posted
from bot.models import Mode, Progress, ResultImage, Stage, StoredImage
from cogs._upload_buffer import DiscordUpload, StoredUpload, open_stored
from cogs._views import progress_view, result_view

if TYPE_CHECKING:
    from bot.app import ImageBot

log = logging.getLogger("bot.delivery")

NO_MENTIONS = discord.AllowedMentions.none()
TITLES = {Mode.TEXT: "Imagine", Mode.EDIT: "Edit", Mode.BLEND: "Blend"}
DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024  # Discord's lowest tier, when the guild is unknown
UPLOAD_ATTEMPTS = 3
CANCELLABLE = (Stage.QUEUED, Stage.SUBMITTING, Stage.PROCESSING)
PRIVATE_READY = "Your private images are ready."
SPOILER = "SPOILER_"  # Discord blurs attachments named so until clicked
NSFW_REFUSAL = (
    "The image service flagged this result as not safe for work, so it is not posted "
    "in this channel and nothing was charged. Age-restricted channels show such "
    "results as spoilers."
)
# Stages that end within moments once the provider is done: their line is posted
# only if it is still current after BRIEF_GRACE seconds. A "Downloading…" that the
# result replaces a few milliseconds later costs an edit (a request and a parsed
# Message) and delays the result by its round trip, and nobody gets to read it.
BRIEF_STAGES = (Stage.DOWNLOADING, Stage.DELIVERING)
BRIEF_GRACE = 1.0
CANNOT_MESSAGE_USER = 50007  # Discord's code for a member whose DMs are closed to the bot
DMS_CLOSED = (
    "Your private images could not be delivered because your direct messages are "
    "closed, so nothing was charged. Allow direct messages from this server's members, "
    "or turn private results off in /settings, and try again."
)


def _too_large(exc: discord.HTTPException) -> bool:
    return exc.status == 413 or exc.code == 40005


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


def mention_text(user_id: int | str, text: str) -> str:
    """``text`` in the channel, for the member it is about."""
    return f"<@{user_id}> {text}"


async def to_files(uploads: Sequence[UploadFile]) -> list[discord.File]:
    """The message's files; stored originals are sent from their files, read a
    piece at a time while the message goes out (``StoredUpload``)."""
    if all(upload.data is not None for upload in uploads):
        return [DiscordUpload(upload.read_data(), upload.filename) for upload in uploads]
    return await asyncio.to_thread(_open_all, uploads)


def _open_all(uploads: Sequence[UploadFile]) -> list[discord.File]:
    files: list[discord.File] = []
    try:
        for upload in uploads:
            if upload.data is not None or upload.path is None:
                files.append(DiscordUpload(upload.read_data(), upload.filename))
                continue
            try:
                reader = open_stored(upload.path)
            except OSError as exc:
                raise DeliveryError("A result image could not be read for upload.") from exc
            files.append(StoredUpload(reader, upload.filename))
    except BaseException:
        for file in files:
            file.close()
        raise
    return files


async def plan_messages(
    images: ImageProcessor, results: Sequence[ResultImage], limit: int
) -> list[list[UploadFile]]:
    """One message with the grid and every sample when re-encoding is enough;
    more messages rather than smaller pictures when it is not. U1-U4 still post
    each untouched original on its own."""
    grid = len(results) > 1
    return await images.plan_messages(results, max_bytes=limit, max_files=10, grid=grid)


class DiscordDelivery:
    """Implements bot.jobs.Delivery for a deferred interaction, or, without one
    (a job resumed after a restart), for the channel the job came from."""

    def __init__(
        self,
        bot: ImageBot,
        interaction: discord.Interaction[ImageBot] | None,
        *,
        channel_id: int | None = None,
        private: bool = False,
    ) -> None:
        self.bot = bot
        self.interaction = interaction
        # Results for the requester alone (their /settings, where the guild allows).
        self.private = private
        # Whether "thinking…" was for the requester alone. ``private`` may be
        # settled later (the member checks ran out of time before the
        # acknowledgement): a public result is then posted in the channel,
        # mentioning them, rather than into the private placeholder.
        self._private_placeholder = private
        self.channel_id = channel_id or (interaction.channel_id if interaction else None)
        # The deferred reply already says the bot is thinking, so the first
        # progress edit waits an interval like the others: a quick job goes
        # straight to its result without an edit (and a Message parse) of its own.
        self._last_edit = time.monotonic()
        self._last_text = ""
        self.messages: list[discord.Message] = []
        self._dead_token = False
        self._brief: asyncio.Task[None] | None = None  # the latest brief stage's line
        # Lines past their grace, until Discord has them: the answer waits for
        # these, and for no line still in its grace.
        self._lines_on_their_way: set[asyncio.Task[None]] = set()
        self._dm: discord.DMChannel | None = None

    def _in_placeholder(self) -> bool:
        """Whether the answer can replace "thinking…": the token is alive and
        the placeholder is no more private than the answer."""
        if self.interaction is None or self._expiring():
            return False
        return self.private or not self._private_placeholder

    def _token_died(self, exc: discord.HTTPException) -> bool:
        """Invalid Webhook Token (50027) or Unknown Webhook (10015): the token is
        gone sooner than expected, so everything further goes to the channel."""
        if exc.code in (50027, 10015) or exc.status == 401:
            self._dead_token = True
            log.warning("interaction token no longer valid; posting in the channel")
            return True
        return False

    def _expiring(self) -> bool:
        if self.interaction is None or self._dead_token:
            return True
        return token_expiring(self.interaction, self.bot.settings.interaction_window)

    def _upload_limit(self) -> int:
        if self.interaction is not None:
            return self.interaction.filesize_limit
        channel = self.bot.get_channel(self.channel_id or 0)
        guild = getattr(channel, "guild", None)
        return guild.filesize_limit if guild is not None else DEFAULT_UPLOAD_LIMIT

    async def progress(self, job: Job, progress: Progress) -> None:
        text = describe_progress(progress, job.provider)
        now = time.monotonic()
        # Discord rate-limits edits; a courtesy update is never worth a 429.
        if text == self._last_text or now - self._last_edit < self.bot.settings.progress_interval:
            return
        if self.interaction is None or self._expiring():
            return  # progress is a courtesy; never spend a channel message on it
        if progress.stage in BRIEF_STAGES:
            self._show_later(text)
            return
        self._last_edit, self._last_text = now, text
        # Cancel is offered while the job waits or the provider works, not after.
        view = progress_view(job.id) if progress.stage in CANCELLABLE else None
        await self.interaction.edit_original_response(
            content=text, view=view, allowed_mentions=NO_MENTIONS
        )

    def _show_later(self, text: str) -> None:
        if self._brief is not None and self._brief not in self._lines_on_their_way:
            self._brief.cancel()
        brief = asyncio.create_task(self._show_brief(text), name="brief-progress")
        self._brief = brief
        job_task = asyncio.current_task()
        if job_task is not None:
            # Never after the job: a line landing on its final message would hide it.
            job_task.add_done_callback(lambda _task: brief.cancel())

    async def _show_brief(self, text: str) -> None:
        await asyncio.sleep(BRIEF_GRACE)
        if self.interaction is None or self._expiring():
            return
        line = asyncio.current_task()
        assert line is not None
        self._lines_on_their_way.add(line)
        self._last_edit, self._last_text = time.monotonic(), text
        try:
            await self.interaction.edit_original_response(
                content=text, view=None, allowed_mentions=NO_MENTIONS
            )
        except discord.HTTPException:
            log.debug("a progress line could not be shown", exc_info=True)
        finally:
            self._lines_on_their_way.discard(line)

    async def _settle_brief(self) -> None:
        """Before the answer: a brief stage's line still in its grace is dropped;
        every one on its way is let arrive first, so that none lands after the
        answer."""
        brief, self._brief = self._brief, None
        if brief is not None and brief not in self._lines_on_their_way:
            # Still in its grace: cancelled there, it can send nothing, and the
            # answer need not wait the loop's turns its cancellation takes.
            brief.cancel()
        if self._lines_on_their_way:
            # wait(), not await: a line's own cancellation must not end this job.
            await asyncio.wait(set(self._lines_on_their_way))

    async def deliver(self, job: Job, result: JobResult) -> Posted:
        if result.nsfw_detected and not self._age_restricted():
            raise ContentFlagged(NSFW_REFUSAL)
        limit = self._upload_limit()
        for attempt in range(1, UPLOAD_ATTEMPTS + 1):
            plan = await plan_messages(self.bot.runtime.images, result.images, limit)
            try:
                await self._send_plan(job, result, plan)
                break
            except discord.HTTPException as exc:
                # A 413 before anything was posted means the guild's real limit is
                # lower than Discord told us: fit again, smaller, and retry. Half of
                # what was refused, not of the nominal limit: files already under
                # half the limit would otherwise be sent again unchanged.
                if _too_large(exc) and not self.messages and attempt < UPLOAD_ATTEMPTS:
                    refused = sum(upload.nbytes for upload in plan[0])
                    log.warning("job %s: upload of %d bytes refused; retrying", job.id, refused)
                    limit = min(limit, refused) // 2
                    continue
                raise DeliveryError(
                    "Discord refused the upload of your images, so nothing was charged "
                    f"(HTTP {exc.status})."
                ) from exc
        return Posted(
            message_id=str(self.messages[0].id),
            images=self._stored_images(result),
            charged=result.credits_charged,
            seed=result.seed,
            model=result.model,
        )

    def _age_restricted(self) -> bool:
        channel: object = self.interaction.channel if self.interaction else None
        if channel is None:
            channel = self.bot.get_channel(self.channel_id or 0)
        checker = getattr(channel, "is_nsfw", None)
        return bool(checker()) if callable(checker) else False

    async def _send_plan(self, job: Job, result: JobResult, plan: list[list[UploadFile]]) -> None:
        await self._settle_brief()
        embed = result_embed(result)
        if result.nsfw_detected:
            # Only reached in an age-restricted channel: hidden until clicked, and
            # not as the embed's picture, which Discord would show unblurred.
            plan = [[replace(u, filename=SPOILER + u.filename) for u in part] for part in plan]
        else:
            embed.set_image(url=f"attachment://{plan[0][0].filename}")
        view = result_view(
            job.id, len(result.images), can_vary=self._can_vary(), can_delete=not self.private
        )
        self.messages.append(await self._send_first(job, embed, plan[0], view))
        for extra in plan[1:]:
            self.messages.append(await self._send_more(job, extra))

    def _can_vary(self) -> bool:
        return any(p.capabilities.supports(Mode.EDIT) for p in self.bot.runtime.providers.values())

    async def _send_first(
        self, job: Job, embed: discord.Embed, uploads: Sequence[UploadFile], view: discord.ui.View
    ) -> discord.Message:
        if self.interaction is not None and self._in_placeholder():
            try:
                return await self.interaction.edit_original_response(
                    content=None,
                    embed=embed,
                    attachments=await to_files(uploads),
                    view=view,
                    allowed_mentions=NO_MENTIONS,
                )
            except discord.HTTPException as exc:
                if not self._token_died(exc):
                    raise
        if self.private:
            message = await self._send_dm(
                job, content=PRIVATE_READY, embed=embed, files=await to_files(uploads), view=view
            )
            await self._drop_placeholder()
            return message
        channel = self._channel()
        requester = discord.Object(id=int(job.request.requester.user_id))
        try:
            message = await channel.send(
                content=f"<@{requester.id}> your images are ready.",
                embed=embed,
                files=await to_files(uploads),
                view=view,
                allowed_mentions=discord.AllowedMentions(
                    users=[requester], everyone=False, roles=False
                ),
            )
        except discord.Forbidden:
            if self.interaction is None or self._expiring():
                raise
            # The bot may not post in this channel, where an interaction's own
            # answer needs no permission: the private "thinking…" gets the
            # images rather than the member none.
            log.warning("job %s: may not post in the channel; answering privately", job.id)
            self.private = True
            return await self._send_first(job, embed, uploads, view)
        await self._drop_placeholder()
        return message

    async def _send_dm(self, job: Job, **message: Any) -> discord.Message:
        """A private result whose token is gone goes to the member alone."""
        try:
            if self._dm is None:
                requester = discord.Object(id=int(job.request.requester.user_id))
                self._dm = await self.bot.create_dm(requester)
            return await self._dm.send(allowed_mentions=NO_MENTIONS, **message)
        except discord.Forbidden as exc:
            if exc.code != CANNOT_MESSAGE_USER:
                raise
            log.info("job %s: the requester's DMs are closed", job.id)
            raise DeliveryError(DMS_CLOSED) from exc

    async def _send_more(self, job: Job, uploads: Sequence[UploadFile]) -> discord.Message:
        if self.interaction is not None and self._in_placeholder():
            try:
                return await self.interaction.followup.send(
                    files=await to_files(uploads),
                    wait=True,
                    ephemeral=self.private,
                    allowed_mentions=NO_MENTIONS,
                )
            except discord.HTTPException as exc:
                if not self._token_died(exc):
                    raise
        if self.private:
            return await self._send_dm(job, files=await to_files(uploads))
        return await self._channel().send(
            files=await to_files(uploads), allowed_mentions=NO_MENTIONS
        )

    def _channel(self) -> discord.abc.Messageable:
        channel = self.interaction.channel if self.interaction else None
        if isinstance(channel, discord.abc.Messageable):
            return channel
        return self.bot.get_partial_messageable(self.channel_id or 0)

    async def _drop_placeholder(self) -> None:
        # With an expired token (or none, after a restart) the placeholder stays.
        if self.interaction is None:
            return
        with contextlib.suppress(discord.HTTPException):
            await self.interaction.delete_original_response()

    def _stored_images(self, result: JobResult) -> tuple[StoredImage, ...]:
        urls: dict[str, str] = {}
        for message in self.messages:
            for attachment in message.attachments:
                urls[attachment.filename.removeprefix(SPOILER)] = attachment.url
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
        return tuple(stored)

    async def fail(self, job: Job | None, error: BotError) -> None:
        text = failure_text(error.user_message)
        await self._settle_brief()
        if isinstance(error, UserError):
            # A refusal (a ban and its reason, an allowance, a channel rule, a
            # bad file) is for the member alone, never for the channel.
            await self._refuse_privately(text, job)
            return
        if self.interaction is not None and not self._expiring():
            # After a public defer Discord turns the first follow-up into the
            # placeholder itself, so the placeholder is where the answer goes.
            try:
                await self.interaction.edit_original_response(
                    content=text,
                    embeds=[],
                    attachments=[],
                    view=None,
                    allowed_mentions=NO_MENTIONS,
                )
                return
            except discord.HTTPException as exc:
                if not self._token_died(exc):
                    raise
        if self.private and job is not None:
            # Like its result, a private job's failure is for the member alone.
            try:
                await self._send_dm(job, content=f"{text}\n-# {self._which_job(job)}")
                return
            except (DeliveryError, discord.HTTPException):
                log.info("job %s: the failure could not go by DM; telling the channel", job.id)
        if job is not None:
            user_id = int(job.request.requester.user_id)
        elif self.interaction is not None:
            user_id = self.interaction.user.id
        else:
            return
        requester = discord.Object(id=user_id)
        await self._channel().send(
            mention_text(user_id, text),
            allowed_mentions=discord.AllowedMentions(
                users=[requester], everyone=False, roles=False
            ),
        )
        await self._drop_placeholder()

    def _which_job(self, job: Job) -> str:
        """A DM stands apart from the command: which request it answers. The
        prompt may be shown here, to the member alone."""
        prompt = " ".join(job.request.prompt.split())
        if len(prompt) > 100:
            prompt = prompt[:99] + "…"
        where = f" in <#{self.channel_id}>" if self.channel_id else ""
        return f"Your private image{where}: “{discord.utils.escape_markdown(prompt)}”"

    async def _refuse_privately(self, text: str, job: Job | None = None) -> None:
        interaction = self.interaction
        if interaction is None or self._expiring():
            if job is not None:
                # A job's refusal after its token is gone (told after a restart):
                # by DM, to the member alone; never in the channel.
                try:
                    await self._send_dm(job, content=f"{text}\n-# {self._which_job(job)}")
                    return
                except (DeliveryError, discord.HTTPException):
                    pass
            log.warning("a refusal could not be sent privately: no live interaction token")
            return
        try:
            if not interaction.response.is_done():
                await interaction.response.send_message(
                    text, ephemeral=True, allowed_mentions=NO_MENTIONS
                )
                return
            # Discord turns the first follow-up after a public "thinking…" into
            # that public reply, so the placeholder goes before the answer.
            await self._end_placeholder()
            await interaction.followup.send(text, ephemeral=True, allowed_mentions=NO_MENTIONS)
        except discord.HTTPException as exc:
            self._token_died(exc)
            log.warning("a refusal could not be sent privately: HTTP %s", exc.status)

    async def _end_placeholder(self) -> None:
        assert self.interaction is not None
        try:
            await self.interaction.delete_original_response()
        except discord.NotFound:
            pass  # already gone
        except discord.HTTPException:
            # Still there: a neutral line ends it, so the follow-up is a message of its own.
            await self.interaction.edit_original_response(
                content="❌ Not started.", embeds=[], attachments=[], view=None
            )
