"""Turning interactions into jobs: defer, gather references, build the request, run it.

Shared by the slash commands, the context menus and the result buttons.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import discord

from bot.app import refuse_privately
from bot.blocklist import REFUSAL, Blocklist, Rule
from bot.compose import compose as compose_request
from bot.config import DISCORD_CDN_HOSTS
from bot.errors import BotError, ImageError, UserError
from bot.gate import Gate, open_gate
from bot.images import download, too_large_message
from bot.jobs import JobOutcome
from bot.jobstore import UNMADE, JobRecord
from bot.models import GenerationRequest, Mode, ReferenceImage, Requester, StoredImage
from bot.picks import PickLimiter
from bot.preferences import Preferences
from bot.prompt_params import parse as parse_params
from bot.quota.service import QuotaService
from cogs._cdn import fresh_urls
from cogs._delivery import NO_MENTIONS, DiscordDelivery, to_files
from cogs._info import info_embed

if TYPE_CHECKING:
    from bot.app import ImageBot

log = logging.getLogger("bot.generation")

RESTARTING = "The bot is restarting; please try again in a minute."
# Of Discord's 3 s to acknowledge, what the checks before the acknowledgement may take.
EARLY_CHECKS_BUDGET = 1.0
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif")
UNKNOWN_RESULT = "That result is unknown to this bot; make a new one."
IN_A_DM = (
    "The buttons on a result sent by direct message don't work here. "
    "Run the command again in {place}, and use the buttons on that result."
)


def requester_of(interaction: discord.Interaction[Any]) -> Requester:
    member = interaction.user
    roles: tuple[str, ...] = ()
    if isinstance(member, discord.Member):
        roles = tuple(str(role.id) for role in member.roles if not role.is_default())
    return Requester(
        guild_id=str(interaction.guild_id) if interaction.guild_id else f"dm:{member.id}",
        user_id=str(member.id),
        roles=roles,
        channel_id=str(interaction.channel_id) if interaction.channel_id else None,
    )


def _channel_id(interaction: discord.Interaction[Any]) -> str | None:
    return str(interaction.channel_id) if interaction.channel_id is not None else None


def is_age_restricted(interaction: discord.Interaction[Any]) -> bool:
    channel = interaction.channel
    checker = getattr(channel, "is_nsfw", None)
    return bool(checker()) if callable(checker) else False


def command_label(interaction: discord.Interaction[Any]) -> str:
    """How a moderator would name what the member used: /imagine, a menu, a button."""
    command = interaction.command
    if isinstance(command, discord.app_commands.Command):
        return f"/{command.qualified_name}"
    if command is not None:
        return f"the “{command.name}” menu"
    if interaction.type is discord.InteractionType.modal_submit:
        return "a prompt form"
    return "a result button"


def is_moderator(interaction: discord.Interaction[Any]) -> bool:
    permissions = interaction.permissions
    return permissions.manage_guild or permissions.administrator


class GenerationService:
    def __init__(self, bot: ImageBot) -> None:
        self.bot = bot
        self.picks = PickLimiter(lambda: bot.settings.pick_cooldown_seconds)

    # --- entry points ----------------------------------------------------
    async def start(
        self,
        interaction: discord.Interaction[ImageBot],
        request: GenerationRequest,
        attachments: Sequence[discord.Attachment] = (),
        *,
        style: str | None = None,
        compose: bool = True,
        restyle: bool = True,
    ) -> JobOutcome | None:
        """Check the member, acknowledge at once, then run the job; every failure
        reaches the member. ``interaction`` is one not answered yet (a command or
        a form); the result buttons check and acknowledge for themselves.

        ``compose`` reads the prompt's parameters and applies ``style`` (see
        ``bot.compose``)."""
        if not self.bot.accepting:
            raise UserError(RESTARTING)
        gate = await self._early_gate(interaction)
        if gate is not None:
            if not await self._prompt_allowed(
                interaction, request.prompt, gate.blocklist, parsed=compose
            ):
                return None
            # The refusals that need no request come before the public "thinking…",
            # so that the first answer is the private refusal.
            if await self._refused(interaction, gate):
                return None
        # Out of time, the member's choice is unknown: acknowledged privately,
        # since a private result must never show in the channel, not even as
        # "thinking…". The checks run again once acknowledged, and the result
        # goes where the member chose (``DiscordDelivery._private_placeholder``).
        private = gate.private if gate is not None else True
        if not await self._acknowledge(interaction, private=private):
            return None
        return await self._launch(
            interaction,
            request,
            attachments,
            gate=gate,
            private=private,
            style=style,
            compose=compose,
            restyle=restyle,
        )

    async def _early_gate(self, interaction: discord.Interaction[ImageBot]) -> Gate | None:
        """The member checks, if they fit in what Discord's 3 s leave before the
        acknowledgement; None if not (they are read again once acknowledged)."""
        try:
            async with asyncio.timeout(EARLY_CHECKS_BUDGET):
                return await self._gate(interaction)
        except TimeoutError:
            log.warning("member checks for interaction %s took too long", interaction.id)
            return None

    async def _refused(self, interaction: discord.Interaction[ImageBot], gate: Gate) -> bool:
        """A channel rule or a ban, answered as the private first response."""
        refusal = gate.refusal(_channel_id(interaction))
        if refusal is None:
            return False
        await DiscordDelivery(self.bot, interaction).fail(None, refusal)
        return True

    async def _acknowledge(
        self, interaction: discord.Interaction[ImageBot], *, private: bool
    ) -> bool:
        try:
            await interaction.response.defer(thinking=True, ephemeral=private)
        except discord.HTTPException as exc:
            # A duplicate event (already acknowledged) or one that arrived too
            # late to answer: the member's first copy, if any, is being handled.
            log.warning("could not acknowledge interaction %s: %s", interaction.id, exc)
            return False
        return True

    async def _launch(
        self,
        interaction: discord.Interaction[ImageBot],
        request: GenerationRequest,
        attachments: Sequence[discord.Attachment] = (),
        *,
        gate: Gate | None,
        private: bool,
        style: str | None = None,
        compose: bool = True,
        restyle: bool = True,
    ) -> JobOutcome | None:
        """The job of an acknowledged interaction. ``restyle`` False keeps the
        member's default style off a prompt that comes from an earlier result
        (already styled): the Vary and Edit buttons."""
        delivery = DiscordDelivery(self.bot, interaction, private=private)
        if not self.bot.accepting:
            # A button's references took the time a shutdown needed to begin.
            await delivery.fail(None, UserError(RESTARTING))
            return None
        request = replace(
            request,
            requester=requester_of(interaction),
            idempotency_key=str(interaction.id),
            private=private,
            # The provider's safety checker stays on outside age-restricted channels.
            safety_checker=None if is_age_restricted(interaction) else True,
        )
        # A job task from the acknowledgement on: a shutdown waits for the
        # preparation (attachments may take a while) as for the job itself.
        return await self.bot.run_job(
            self._prepare_and_run(
                interaction,
                request,
                attachments,
                delivery,
                style=style,
                compose=compose,
                gate=gate,
                restyle=restyle,
            )
        )

    async def _prepare_and_run(
        self,
        interaction: discord.Interaction[ImageBot],
        request: GenerationRequest,
        attachments: Sequence[discord.Attachment],
        delivery: DiscordDelivery,
        *,
        style: str | None,
        compose: bool,
        gate: Gate | None,
        restyle: bool = True,
    ) -> JobOutcome | None:
        try:
            if gate is None:  # the early checks ran out of time
                gate = await self._gate(interaction)
                if not await self._prompt_allowed(
                    interaction, request.prompt, gate.blocklist, parsed=compose
                ):
                    return None
                # Acknowledged privately while the choice was unknown: now known.
                delivery.private = gate.private
                request = replace(request, private=gate.private)
            # Bans are the ledger's to refuse from here on, at the reservation.
            refusal = gate.channel_refusal(_channel_id(interaction))
            if refusal is not None:
                raise refusal
            preferences = gate.preferences
            if not restyle:
                preferences = replace(preferences, style=None)
            if compose:
                request = await self.compose(
                    interaction, request, style=style, preferences=preferences
                )
            references = await self.load_attachments(attachments)
        except BotError as error:
            await delivery.fail(None, error)
            return None
        except asyncio.CancelledError:
            # Stopped (a deploy) before the job was accepted: nothing was held,
            # but the member is waiting on "thinking…" and must hear why.
            try:
                await delivery.fail(None, UserError(RESTARTING))
            except discord.HTTPException:
                log.warning("could not tell interaction %s about the restart", interaction.id)
            raise
        request = replace(request, references=request.references + tuple(references))
        return await self.bot.runtime.pipeline.run(request, delivery)

    async def _gate(self, interaction: discord.Interaction[ImageBot]) -> Gate:
        guild_id = str(interaction.guild_id) if interaction.guild_id is not None else None
        user_id = str(interaction.user.id)
        ledger = self.bot.runtime.ledger
        ban = (
            ledger.active_ban(guild_id, user_id)
            if isinstance(ledger, QuotaService) and guild_id is not None
            else None
        )
        return await open_gate(self.bot.jobs.database, guild_id, user_id, ban)

    async def _prompt_allowed(
        self,
        interaction: discord.Interaction[ImageBot],
        prompt: str,
        blocklist: Blocklist,
        *,
        parsed: bool,
    ) -> bool:
        """The guild's blocked words, checked before anything is reserved or sent.
        The member gets a neutral refusal, privately when nothing was deferred yet;
        the log channel gets who, where and which rule. Prompt parameters are not
        part of the check (``--no gore`` asks for less of it, not more)."""
        if interaction.guild_id is None:
            return True
        guild = str(interaction.guild_id)
        if parsed and blocklist.rules:
            # Bad parameters are refused by compose; the words are checked as typed.
            with contextlib.suppress(UserError):
                prompt = parse_params(prompt).prompt
        rule = blocklist.match(prompt)
        if rule is None:
            return True
        log.info("guild %s: prompt refused by a blocked-word rule", guild)
        # The member's answer first: a slow or rate-limited log channel must not
        # spend Discord's 3 s to acknowledge.
        if not interaction.response.is_done():
            await refuse_privately(interaction, REFUSAL)
        else:
            await DiscordDelivery(self.bot, interaction).fail(None, UserError(REFUSAL))
        await self._log_blocked(interaction, guild, rule)
        return False

    async def _log_blocked(
        self, interaction: discord.Interaction[ImageBot], guild: str, rule: Rule
    ) -> None:
        channel_id = await self.bot.jobs.log_channel(guild)
        if channel_id is None:
            return
        text = (
            f"🚫 Refused a prompt from <@{interaction.user.id}> in <#{interaction.channel_id}> "
            f"({command_label(interaction)}): it matched the blocked rule "
            f"`{rule.text}`."
        )
        # The refusal stands whether or not the log channel can be written to.
        with contextlib.suppress(discord.HTTPException):
            await self.bot.get_partial_messageable(int(channel_id)).send(
                text, allowed_mentions=NO_MENTIONS
            )

    async def compose(
        self,
        interaction: discord.Interaction[ImageBot],
        request: GenerationRequest,
        *,
        style: str | None,
        preferences: Preferences | None = None,
    ) -> GenerationRequest:
        """Prompt parameters, the style and defaults applied (``bot.compose``), the
        member's /settings under whatever the command itself gives."""
        preferences = preferences or Preferences()
        default_style = preferences.style
        if default_style is not None:
            # A default style a moderator has since removed is dropped, not refused.
            found = await self.bot.styles.get(request.requester.guild_id, default_style)
            default_style = found.name if found is not None else None
        pipeline = self.bot.runtime.pipeline
        request = await compose_request(
            request,
            pipeline=pipeline,
            styles=self.bot.styles,
            style=style,
            default_style=default_style,
            member_defaults=preferences.defaults(),
        )
        if preferences.samples is not None and "samples" not in interaction.namespace:
            most = pipeline.choose_provider(request).capabilities.max_samples
            request = replace(request, samples=min(preferences.samples, most))
        return request

    # --- references --------------------------------------------------------
    async def load_attachments(
        self, attachments: Sequence[discord.Attachment]
    ) -> list[ReferenceImage]:
        try:
            return list(await asyncio.gather(*(self._load_attachment(a) for a in attachments)))
        except ImageError as error:
            if len(attachments) < 2 or error.filename is None:
                raise
            # Among several files, "that file is a PDF" must say which one.
            raise ImageError(f"{error.filename}: {error.user_message}") from None

    async def _load_attachment(self, attachment: discord.Attachment) -> ReferenceImage:
        settings = self.bot.settings
        if attachment.size > settings.input_max_bytes:
            raise ImageError(
                too_large_message(attachment.filename, attachment.size, settings.input_max_bytes)
            )
        try:
            data = await attachment.read()
        except discord.HTTPException as exc:
            raise ImageError(
                f"Could not download {attachment.filename} from Discord (HTTP {exc.status}); "
                "please attach it again."
            ) from exc
        try:
            return await self.bot.runtime.images.load_reference(
                data, filename=attachment.filename, url=attachment.url
            )
        except ImageError as error:
            error.filename = attachment.filename
            raise

    async def image_of(self, record: JobRecord, n: int) -> ReferenceImage:
        """Result image N of an earlier job, as a reference for a new one."""
        stored = record.image(n)
        if stored is None:
            raise UserError(f"That result has no image {n}.")
        if stored.url is not None:
            # The provider is handed this link, maybe a day after Discord signed it.
            url = (await fresh_urls(self.bot, [stored.url])).get(stored.url, stored.url)
            stored = replace(stored, url=url)
        data = await self._stored_bytes(stored)
        return await self.bot.runtime.images.load_reference(
            data, filename=f"image_{n}.png", url=stored.url
        )

    async def _stored_bytes(self, stored: StoredImage) -> bytes:
        if stored.path is not None:
            try:
                return await asyncio.to_thread(_read, stored.path)
            except OSError:
                pass  # retention removed it; fall back to the posted copy
        if stored.url is None:
            raise UserError("That image is no longer available.")
        settings = self.bot.settings
        url = (await fresh_urls(self.bot, [stored.url])).get(stored.url, stored.url)
        try:
            return await download(
                self.bot.runtime.session,
                url,
                max_bytes=settings.download_max_bytes,
                timeout=settings.download_timeout,
                allow_loopback=settings.download_allow_loopback,
                provider="discord",
                allowed_hosts=DISCORD_CDN_HOSTS,
            )
        except BotError:
            raise UserError(
                "That image is no longer available on Discord; make a new one."
            ) from None

    async def rehydrate(self, request: GenerationRequest) -> GenerationRequest:
        """Fetch the bytes of a stored request's references again (for re-rolls)."""
        if not request.references:
            return request
        settings = self.bot.settings
        # Discord's links to the member's files expire after about a day.
        fresh = await fresh_urls(self.bot, [ref.url for ref in request.references])
        refs = []
        for ref in request.references:
            if ref.url is None:
                raise UserError("The original reference images are no longer available.")
            url = fresh.get(ref.url, ref.url)
            try:
                data = await download(
                    self.bot.runtime.session,
                    url,
                    max_bytes=settings.input_max_bytes,
                    timeout=settings.download_timeout,
                    allow_loopback=settings.download_allow_loopback,
                    provider="discord",
                    allowed_hosts=DISCORD_CDN_HOSTS,
                )
            except BotError:
                raise UserError(
                    "The original reference images are no longer available on Discord; "
                    "attach them again with /edit or /blend."
                ) from None
            refs.append(
                await self.bot.runtime.images.load_reference(data, filename=ref.filename, url=url)
            )
        return replace(request, references=tuple(refs))

    # --- buttons -------------------------------------------------------------
    async def record_for(
        self, interaction: discord.Interaction[ImageBot], job_id: str
    ) -> JobRecord:
        return self._known(interaction, await self.bot.jobs.get(job_id))

    def _known(
        self, interaction: discord.Interaction[ImageBot], record: JobRecord | None
    ) -> JobRecord:
        if interaction.guild_id is None:
            raise UserError(self._in_a_dm(interaction, record))
        if record is None or record.guild_id != str(interaction.guild_id):
            raise UserError(UNKNOWN_RESULT)
        return record

    def _in_a_dm(self, interaction: discord.Interaction[ImageBot], record: JobRecord | None) -> str:
        """A private result goes by DM when its interaction token has expired; its
        buttons cannot work there (no server: no credits, rules or channel)."""
        place = "the server"
        # The server is named to the member whose result it is, and only to them.
        if record is not None and record.user_id == str(interaction.user.id):
            guild = self.bot.get_guild(int(record.guild_id)) if record.guild_id.isdigit() else None
            if guild is not None:
                place = f"**{guild.name}**"
        return IN_A_DM.format(place=place)

    async def _check_press(
        self, interaction: discord.Interaction[ImageBot], job_id: str
    ) -> _Pressed:
        """What a result button (or its form) must know before it is acknowledged,
        read together within the early budget: the member checks and the job's
        record. Out of time, both are read again once acknowledged."""
        if interaction.guild_id is None:
            raise UserError(self._in_a_dm(interaction, await self.bot.jobs.get(job_id)))
        if not self.bot.accepting:
            raise UserError(RESTARTING)
        try:
            async with asyncio.timeout(EARLY_CHECKS_BUDGET):
                gate, found = await asyncio.gather(
                    self._gate(interaction), self.bot.jobs.get(job_id)
                )
        except TimeoutError:
            log.warning("member checks for interaction %s took too long", interaction.id)
            return _Pressed(None, None)
        return _Pressed(gate, self._known(interaction, found))

    async def _acknowledge_press(
        self,
        interaction: discord.Interaction[ImageBot],
        pressed: _Pressed,
        prompt: str | None,
        *,
        parsed: bool = False,
    ) -> bool:
        """The rest of the early checks, on the prompt the job will run with, then
        the acknowledgement; False if refused (answered privately) or unanswerable."""
        gate = pressed.gate
        if gate is not None:
            if prompt is not None and not await self._prompt_allowed(
                interaction, prompt, gate.blocklist, parsed=parsed
            ):
                return False
            if await self._refused(interaction, gate):
                return False
        return await self._acknowledge(interaction, private=pressed.private)

    async def reroll(self, interaction: discord.Interaction[ImageBot], job_id: str) -> None:
        pressed = await self._check_press(interaction, job_id)
        record = pressed.record
        prompt = record.request.prompt if record is not None else None
        if not await self._acknowledge_press(interaction, pressed, prompt):
            return
        try:
            if record is None:
                record = await self.record_for(interaction, job_id)
            # Downloads: after the acknowledgement, never before it.
            request = await self.rehydrate(replace(record.request, seed=None))
        except BotError as error:
            await DiscordDelivery(self.bot, interaction).fail(None, error)
            return
        await self._launch(
            interaction,
            request,
            gate=pressed.gate,
            private=pressed.private,
            compose=False,
        )

    async def vary(
        self,
        interaction: discord.Interaction[ImageBot],
        job_id: str,
        n: int,
        prompt: str | None = None,
    ) -> None:
        pressed = await self._check_press(interaction, job_id)
        record = pressed.record
        if record is not None and record.image(n) is None:
            raise UserError(f"That result has no image {n}.")
        checked = prompt if prompt is not None or record is None else record.request.prompt
        # A typed prompt is read for parameters; one from the result is composed already.
        if not await self._acknowledge_press(
            interaction, pressed, checked, parsed=prompt is not None
        ):
            return
        try:
            if record is None:
                record = await self.record_for(interaction, job_id)
            reference = await self.image_of(record, n)
        except BotError as error:
            await DiscordDelivery(self.bot, interaction).fail(None, error)
            return
        request = GenerationRequest(
            mode=Mode.EDIT,
            prompt=prompt if prompt is not None else record.request.prompt,
            negative_prompt=record.request.negative_prompt if prompt is None else None,
            references=(reference,),
        )
        # The prompt comes from the result, styled already: a plain variation is
        # composed already (like a re-roll); a typed one is read for parameters.
        await self._launch(
            interaction,
            request,
            gate=pressed.gate,
            private=pressed.private,
            compose=prompt is not None,
            restyle=False,
        )

    async def checked_record(
        self, interaction: discord.Interaction[ImageBot], job_id: str
    ) -> JobRecord | None:
        """The result a button acts on, once the member may use it; None if a ban
        or a channel rule refused them, privately and before anything else (a
        banned member is told before typing a prompt in the Edit form, not after)."""
        pressed = await self._check_press(interaction, job_id)
        if pressed.gate is not None and await self._refused(interaction, pressed.gate):
            return None
        return pressed.record or await self.record_for(interaction, job_id)

    async def may_open_form(self, interaction: discord.Interaction[ImageBot]) -> bool:
        """Before a message menu opens its prompt form: False if a ban or a channel
        rule refused the member, privately, so that nobody types a prompt for
        nothing. Out of time, the form opens; its submit checks again."""
        if not self.bot.accepting:
            raise UserError(RESTARTING)
        gate = await self._early_gate(interaction)
        return gate is None or not await self._refused(interaction, gate)

    async def upscale_pick(
        self, interaction: discord.Interaction[ImageBot], job_id: str, n: int
    ) -> None:
        # A ban or a channel rule refuses a pick too, as on the other buttons. A
        # pick makes no new image, so its prompt is not checked again, and with the
        # checks out of time it goes ahead.
        record = await self.checked_record(interaction, job_id)
        if record is None:
            return
        # Refused before deferring, so the reason is a private first answer.
        with self.picks.hold(str(interaction.user.id)):
            await interaction.response.defer(
                thinking=True, ephemeral=_on_private_message(interaction)
            )

            async def waiting() -> None:
                with contextlib.suppress(discord.HTTPException):
                    await interaction.edit_original_response(
                        content="⏳ Waiting for the images ahead of yours…",
                        allowed_mentions=NO_MENTIONS,
                    )

            # A pick decodes a whole original: it queues for an image place like a job.
            async with self.bot.runtime.pipeline.image_slot(on_wait=waiting):
                await self._send_pick(interaction, record, n)

    async def _send_pick(
        self, interaction: discord.Interaction[ImageBot], record: JobRecord, n: int
    ) -> None:
        try:
            stored = record.image(n)
            if stored is None:
                raise UserError(f"That result has no image {n}.")
            data = await self._stored_bytes(stored)
            image = await self.bot.runtime.images.decode_result(data, source_url=stored.url)
            plan = await self.bot.runtime.images.fit_for_upload(
                [image], max_bytes=interaction.filesize_limit, grid=False
            )
            # Named after its place in the result, not its place in this message.
            plan[0] = [
                replace(upload, filename=f"image_{n}." + upload.filename.rsplit(".", 1)[-1])
                for upload in plan[0]
            ]
        except BotError as error:
            await DiscordDelivery(self.bot, interaction).fail(None, error)
            return
        await interaction.edit_original_response(
            content=f"Image {n} at full size ({image.width}×{image.height}).",
            attachments=await to_files(plan[0]),
            allowed_mentions=NO_MENTIONS,
        )

    async def cancel(self, interaction: discord.Interaction[ImageBot], job_id: str) -> None:
        record = await self.record_for(interaction, job_id)
        if record.user_id != str(interaction.user.id) and not is_moderator(interaction):
            raise UserError(
                "Only the person who asked for this image or a moderator can cancel it."
            )
        if self.bot.runtime.pipeline.cancel(job_id, by=interaction.user.mention):
            text = "Cancelled: the job stops now and its credits are refunded."
        elif record.status in ("posted", "delivered") or record.status in UNMADE:
            text = "This job has already ended."
        elif record.status in ("downloading", "delivering"):
            text = "Too late to cancel: the images are already on their way."
        else:
            # Another process of the bot runs it (shards, or one that adopted it).
            text = "This job is run by another instance of the bot; it can't be cancelled here."
        await interaction.response.send_message(text, ephemeral=True, allowed_mentions=NO_MENTIONS)

    async def info(self, interaction: discord.Interaction[ImageBot], job_id: str) -> None:
        record = await self.record_for(interaction, job_id)
        default = self.bot.settings.modelslab_model_id if record.provider == "modelslab" else None
        await interaction.response.send_message(
            embed=info_embed(record, default), ephemeral=True, allowed_mentions=NO_MENTIONS
        )

    async def delete(self, interaction: discord.Interaction[ImageBot], job_id: str) -> None:
        record = await self.record_for(interaction, job_id)
        if record.user_id != str(interaction.user.id) and not is_moderator(interaction):
            raise UserError("Only the person who made this image or a moderator can delete it.")
        await interaction.response.defer(ephemeral=True, thinking=True)
        if interaction.message is not None:
            await interaction.message.delete()
        await interaction.followup.send("Deleted.", ephemeral=True)


@dataclass(frozen=True, slots=True)
class _Pressed:
    """A result button's early reads; both None when they ran out of time."""

    gate: Gate | None
    record: JobRecord | None

    @property
    def private(self) -> bool:
        if self.gate is not None:
            return self.gate.private
        # Unread settings: acknowledged privately, as a command is (``start``),
        # whatever the message the button is on; the result then goes where the
        # member chose.
        return True


def _on_private_message(interaction: discord.Interaction[Any]) -> bool:
    """A button on a private result answers privately too."""
    message = interaction.message
    return message is not None and message.flags.ephemeral


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()
