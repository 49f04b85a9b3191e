"""The job pipeline: request → validate → reserve → provider → download → deliver → settle.

It knows nothing about Discord. A ``Delivery`` (the Discord cog, the CLI's file
writer) receives progress, the result or the failure. Credits are reserved before
any provider call and are settled only for images that reached the person;
every other ending refunds them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

import aiohttp

from bot.config import Settings
from bot.errors import (
    BotError,
    DeliveryError,
    ImageError,
    JobCancelled,
    JobDeadlineExceeded,
    JobNotResumable,
    LeaseLost,
    ProviderBadResponse,
    ProviderError,
    UserError,
    ValidationError,
)
from bot.images import DiskRefused, ImageProcessor, ImageStore, download, download_into
from bot.images.storage import Incoming
from bot.logs import bind_job
from bot.metrics import Observer
from bot.models import (
    GenerationRequest,
    Mode,
    OutputRef,
    Progress,
    ProgressCallback,
    ProviderOutput,
    ResultImage,
    ResumeHandle,
    Stage,
    StoredImage,
)
from bot.providers.base import Provider
from bot.providers.validation import check_choice
from bot.quota.base import AlreadyAdmitted, JournalStep, Ledger, Reservation

log = logging.getLogger("bot.jobs")
T = TypeVar("T")

STOPPED_MESSAGE = (
    "The bot is restarting, so your image was stopped before it was made; "
    "nothing was charged. Please try again in a minute."
)


@dataclass(frozen=True, slots=True)
class Job:
    """One accepted request, with the provider chosen and the price fixed."""

    id: str
    request: GenerationRequest  # as validated by the chosen provider
    original: GenerationRequest  # as the member asked; failover starts from this
    provider: str
    cost: int
    unit_cost: int
    started_at: float  # monotonic


@dataclass(frozen=True, slots=True)
class JobResult:
    job: Job
    request: GenerationRequest  # as validated by the provider that delivered
    provider: str
    images: tuple[ResultImage, ...]
    credits_charged: int
    model: str | None = None
    seed: int | None = None
    provider_job_id: str | None = None
    generation_time: float | None = None  # the provider's own figure
    elapsed: float = 0.0  # from acceptance to download done
    nsfw_detected: bool = False
    # Credits left after this job is settled; None means unlimited.
    user_remaining: int | None = None
    guild_remaining: int | None = None


@dataclass(frozen=True, slots=True)
class Posted:
    """What a job's record keeps of its delivered result: where it went (the
    buttons and /history find it there) and what it cost."""

    message_id: str | None
    images: tuple[StoredImage, ...]
    charged: int
    seed: int | None = None
    model: str | None = None


class Delivery(Protocol):
    """Where a job's progress and outcome go (a Discord interaction, a directory)."""

    async def progress(self, job: Job, progress: Progress) -> None: ...

    async def deliver(self, job: Job, result: JobResult) -> Posted | None:
        """Hand the images to the person. Raising means they did not get them.
        Returns what the job's record is to keep of the delivery, if anything:
        the pipeline writes it with the settlement."""
        ...

    async def fail(self, job: Job | None, error: BotError) -> None:
        """Tell the person why nothing was made. ``job`` is None before acceptance."""
        ...


@dataclass(frozen=True, slots=True)
class JobOutcome:
    job: Job | None
    result: JobResult | None = None
    error: BotError | None = None
    duplicate: bool = False
    # Another process adopted the job (this one's lease ran out): it answers.
    abandoned: bool = False

    @property
    def ok(self) -> bool:
        return self.result is not None


class ProviderSlots:
    """A FIFO limit on calls in flight to one provider, reporting queue positions.

    ModelsLab refuses past 5/10/15 queued requests by plan, so waiting here is
    cheaper and fairer than collecting 429s.
    """

    def __init__(self, limit: int) -> None:
        self._free = limit
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._watchers: dict[asyncio.Future[None], Callable[[int], Awaitable[None]]] = {}
        # Position updates run on their own; the references keep them from being
        # collected before they finish.
        self._notifications: set[asyncio.Task[None]] = set()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @contextlib.asynccontextmanager
    async def slot(
        self, on_position: Callable[[int], Awaitable[None]] | None = None
    ) -> AsyncIterator[None]:
        await self._acquire(on_position)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, on_position: Callable[[int], Awaitable[None]] | None) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            # Inside the try: a job cancelled while its first position is being
            # shown (a Discord edit) must leave the queue too, or the slot it
            # would later be handed is lost for good.
            if on_position is not None:
                self._watchers[waiter] = on_position
                await on_position(len(self._waiters))
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                # We were handed a slot just as we were cancelled: pass it on.
                self._release()
            else:
                waiter.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
                self._notify_positions()
            raise
        finally:
            self._watchers.pop(waiter, None)

    def _release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._notify_positions()
                return
        self._free += 1

    def _notify_positions(self) -> None:
        for position, waiter in enumerate(self._waiters, start=1):
            watcher = self._watchers.get(waiter)
            if watcher is not None:
                self._spawn(watcher(position))

    def _spawn(self, coro: Awaitable[None]) -> None:
        """Run a position update without making the releaser wait for it."""

        async def guarded() -> None:
            try:
                await coro
            except Exception:
                log.exception("progress notification failed")

        task = asyncio.get_running_loop().create_task(guarded())
        self._notifications.add(task)
        task.add_done_callback(self._notifications.discard)


class Journal(Protocol):
    """Where accepted jobs are recorded (the job store), step by step."""

    @property
    def database_id(self) -> str | None:
        """The database the journal is in: where it is the ledger's
        (``Ledger.database_id``), its steps ride on the ledger's transactions."""
        ...

    async def admit(self, job: Job) -> bool:
        """Record a new job; False when its idempotency key is already taken."""
        ...

    def admission(self, job: Job) -> JournalStep:
        """``admit`` as a step for the ledger's transaction."""
        ...

    async def record(self, job: Job, status: str, **fields: Any) -> None:
        """Record a step: ``reservation``, ``provider``, ``provider_job_id``,
        ``fetch_url``, ``outputs``, ``error`` or ``posted`` (``Posted``) may come
        with it; ``while_status`` makes it apply only while the job's status is
        still that one."""
        ...

    def step(self, job: Job, status: str, **fields: Any) -> JournalStep:
        """``record`` as a step for the ledger's transaction."""
        ...


@dataclass
class _Attempt:
    provider: Provider
    request: GenerationRequest
    unit_cost: int


@dataclass
class Pipeline:
    settings: Settings
    providers: Mapping[str, Provider]
    ledger: Ledger
    images: ImageProcessor
    store: ImageStore
    session: aiohttp.ClientSession
    journal: Journal | None = None
    observer: Observer = field(default_factory=Observer)
    slots: dict[str, ProviderSlots] = field(default_factory=dict)
    handing_over: bool = False
    # Set while the jobs of a lease that was taken over are being stopped.
    abandoning: bool = False
    # Jobs whose provider job id is known (and recorded), so a restart can resume them.
    _resumable: set[str] = field(default_factory=set)
    # Full-size results are large (4-8 MB a PNG, more decoded): only a few jobs at a
    # time may hold them, from download to upload, which bounds the bot's memory.
    _image_phase: asyncio.Semaphore = field(init=False)
    _in_image_phase: set[str] = field(default_factory=set)
    # Originals being written to disk, by job (see _keep).
    _saving: dict[str, list[asyncio.Future[str | None]]] = field(default_factory=dict)
    # Jobs that may still be cancelled (queued, submitting, polling), by the task
    # running them; a job leaves when its images start downloading.
    _cancellable: dict[str, asyncio.Task[Any]] = field(default_factory=dict)
    _cancelled_by: dict[str, str] = field(default_factory=dict)
    # Reservations the journal has yet to hear of, by job: each goes with the
    # job's next step (see run).
    _unrecorded_holds: dict[str, Reservation] = field(default_factory=dict)
    # The reservation of every job running here, by job.
    _holds: dict[str, Reservation] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._image_phase = asyncio.Semaphore(self.settings.image_jobs)
        limits = {
            "modelslab": self.settings.modelslab_max_queued,
            "nanobanana": self.settings.nanobanana_concurrency,
        }
        for name in self.providers:
            self.slots.setdefault(name, ProviderSlots(limits.get(name, 5)))

    # --- choosing and pricing (no network) ---------------------------------
    def choose_provider(self, request: GenerationRequest) -> Provider:
        if not self.providers:
            raise UserError("No image provider is configured on this bot; ask its operator.")
        if request.provider is not None:
            provider = self.providers[
                check_choice("provider", request.provider, tuple(self.providers))
            ]
            if not provider.capabilities.supports(request.mode):
                raise ValidationError(
                    "provider",
                    f"{request.provider} cannot do {request.mode.value}; "
                    f"use {', '.join(self._supporting(request.mode)) or 'another mode'}.",
                )
            return provider
        preferred = self.settings.provider_for(request.mode)
        if preferred is not None and preferred in self.providers:
            return self.providers[preferred]
        for name in self._supporting(request.mode):
            return self.providers[name]
        raise UserError(f"No configured provider can do {request.mode.value} here.")

    def _supporting(self, mode: Mode) -> list[str]:
        return [n for n, p in self.providers.items() if p.capabilities.supports(mode)]

    def price(self, provider: Provider, request: GenerationRequest) -> int:
        """Credits for one image of a validated request."""
        tier = provider.cost_tier(request)
        return self.settings.costs[tier]

    def prepare(self, request: GenerationRequest) -> Job:
        """Validate and price a request; raises UserError before anything is spent."""
        provider = self.choose_provider(request)
        validated = provider.validate(request)
        unit = self.price(provider, validated)
        return Job(
            id=uuid.uuid4().hex,
            request=validated,
            original=request,
            provider=provider.name,
            cost=unit * validated.samples,
            unit_cost=unit,
            started_at=time.monotonic(),
        )

    # --- running -------------------------------------------------------------
    async def run(self, request: GenerationRequest, delivery: Delivery) -> JobOutcome:
        """Run one request to its end. With a journal the job is recorded before
        anything is spent; a duplicate (same idempotency key) stops here without a
        word, since the first copy is already being handled."""
        try:
            job = self.prepare(request)
        except BotError as error:
            self.observer.request_refused(request, error)
            await _tell_failure(delivery, None, error)
            return JobOutcome(job=None, error=error)
        bind_job(job.id)
        # Where the journal shares the ledger's database, the job is recorded in
        # the reservation's transaction: one round trip fewer on every job's way
        # to the provider.
        riding = self._riding_journal()
        if riding is None and self.journal is not None and not await self.journal.admit(job):
            log.info("job for key %s is a duplicate; ignored", request.idempotency_key)
            return JobOutcome(job=None, duplicate=True)

        try:
            reservation = await self.ledger.reserve(
                job.request.requester.guild_id,
                job.request.requester.user_id,
                job.request.requester.roles,
                job.cost,
                job.request.idempotency_key or job.id,
                channel_id=job.request.requester.channel_id,
                job_id=job.id,
                prompt=job.request.prompt,
                mode=job.request.mode.value,
                admit=None if riding is None else riding.admission(job),
            )
        except AlreadyAdmitted:
            log.info("job for key %s is a duplicate; ignored", request.idempotency_key)
            return JobOutcome(job=None, duplicate=True)
        except BotError as error:
            # A refusal undid the job's record with the rest: written now, so
            # that /history shows the refused attempt. A copy of the same
            # interaction that got in meanwhile answers for it instead.
            if riding is not None and not await riding.admit(job):
                log.info("job for key %s is a duplicate; ignored", request.idempotency_key)
                return JobOutcome(job=None, duplicate=True)
            self.observer.job_ended(job, "refused", error=error)
            await self._end_unmade(delivery, job, error)
            return JobOutcome(job=job, error=error)
        if reservation.replayed:
            # The key already paid (or was refunded) for a job: never run it twice.
            log.info("job for key %s was already reserved; ignored", request.idempotency_key)
            return JobOutcome(job=None, duplicate=True)
        # Not a journal write of its own, on every job's way to the provider: the
        # reservation is written with the job's next step. A crash before that
        # finds it in the ledger by job id (bot.recovery), as for a crash between
        # reserving and any journal write.
        self._unrecorded_holds[job.id] = reservation
        return await self._run_reserved(
            job, reservation, delivery, lambda: self._produce(job, delivery)
        )

    async def resume(
        self,
        job: Job,
        reservation: Reservation,
        delivery: Delivery,
        *,
        provider_job_id: str | None,
        fetch_url: str | None,
        outputs: Sequence[OutputRef] = (),
    ) -> JobOutcome:
        """Finish a job a previous process started: download outputs already known,
        or poll the provider's queued job again; refund if neither is possible."""
        bind_job(job.id)
        provider = self.providers.get(job.provider)

        async def produce() -> JobResult:
            if outputs:
                output = ProviderOutput(
                    provider=job.provider, outputs=tuple(outputs), provider_job_id=provider_job_id
                )
                return await self._finish_output(job, job.request, job.unit_cost, output, delivery)
            if provider is None or (provider_job_id is None and fetch_url is None):
                raise JobNotResumable(
                    "The bot restarted before your image was started, so nothing was "
                    "charged. Please try again.",
                    provider=job.provider,
                )
            async with asyncio.timeout(self.settings.job_deadline):
                with self.observer.provider_call(provider.name):
                    output = await provider.resume(
                        job.request,
                        ResumeHandle(job_id=provider_job_id, fetch_url=fetch_url),
                        self._progress_reporter(job, delivery),
                    )
            return await self._finish_output(job, job.request, job.unit_cost, output, delivery)

        return await self._run_reserved(job, reservation, delivery, produce)

    def cancel(self, job_id: str, by: str) -> bool:
        """Stop a job that is queued or with its provider; it is refunded and its
        requester told. False when it is not running here or already delivering."""
        task = self._cancellable.get(job_id)
        if task is None or job_id in self._cancelled_by:
            return False
        self._cancelled_by[job_id] = by
        task.cancel()
        return True

    async def _until_cancelled(
        self, job: Job, produce: Callable[[], Awaitable[JobResult]]
    ) -> JobResult:
        """Run ``produce`` so that ``cancel`` can stop it; a cancel becomes JobCancelled."""
        task = asyncio.current_task()
        assert task is not None
        self._cancellable[job.id] = task
        try:
            return await produce()
        except asyncio.CancelledError:
            by = self._cancelled_by.get(job.id)
            if by is None:
                raise  # shutdown or the caller: not ours to swallow
            task.uncancel()
            raise JobCancelled(f"Cancelled by {by}; nothing was charged.") from None
        finally:
            self._cancellable.pop(job.id, None)
            self._cancelled_by.pop(job.id, None)

    @contextlib.asynccontextmanager
    async def image_slot(
        self, on_wait: Callable[[], Awaitable[None]] | None = None
    ) -> AsyncIterator[None]:
        """One of the IMAGE_JOBS places that bound image memory, for image work
        outside a job (a full-size pick); ``on_wait`` runs if it has to queue."""
        if self._image_phase.locked() and on_wait is not None:
            await on_wait()
        async with self._image_phase:
            yield

    def hand_over(self) -> None:
        """Shutting down: jobs cancelled from now on whose provider job or results
        are recorded are left for the next start to resume; the others are
        refunded, and their members told."""
        self.handing_over = True

    def _riding_journal(self) -> Journal | None:
        """The journal, when its steps can ride on the ledger's transactions."""
        journal = self.journal
        if journal is None or self.ledger.database_id is None:
            return None
        return journal if journal.database_id == self.ledger.database_id else None

    def _step(self, job: Job, status: str, **fields: Any) -> JournalStep | None:
        """``_record`` as a step of the ledger's next transaction, or None when
        the journal cannot ride on it (then ``_record`` after it)."""
        journal = self._riding_journal()
        if journal is None:
            return None
        held = self._unrecorded_holds.pop(job.id, None)
        if held is not None:
            fields.setdefault("reservation", held)
        return journal.step(job, status, **fields)

    async def _record(self, job: Job, status: str, **fields: Any) -> None:
        held = self._unrecorded_holds.pop(job.id, None)
        if self.journal is None:
            return
        if held is not None:
            fields.setdefault("reservation", held)
        try:
            await asyncio.shield(self.journal.record(job, status, **fields))
        except Exception:
            log.exception("job %s: could not record status %s", job.id, status)

    async def _run_reserved(
        self,
        job: Job,
        reservation: Reservation,
        delivery: Delivery,
        produce: Callable[[], Awaitable[JobResult]],
    ) -> JobOutcome:
        self._holds[job.id] = reservation
        try:
            return await self._produce_and_deliver(job, reservation, delivery, produce)
        except LeaseLost:
            log.warning("job %s was adopted by another process; leaving it to that one", job.id)
            return JobOutcome(job=job, abandoned=True)
        finally:
            self._resumable.discard(job.id)
            self._unrecorded_holds.pop(job.id, None)
            self._holds.pop(job.id, None)
            try:
                # Before the image phase ends: the writes hold the images' bytes.
                await self._saved(job)
            finally:
                if job.id in self._in_image_phase:
                    self._in_image_phase.discard(job.id)
                    self._image_phase.release()

    async def _produce_and_deliver(
        self,
        job: Job,
        reservation: Reservation,
        delivery: Delivery,
        produce: Callable[[], Awaitable[JobResult]],
    ) -> JobOutcome:
        result: JobResult | None = None
        try:
            result = await self._until_cancelled(job, produce)
            charged = min(result.credits_charged, reservation.cost)
            result = replace(
                result,
                credits_charged=charged,
                user_remaining=_after_settle(reservation.user_remaining, reservation.cost, charged),
                guild_remaining=_after_settle(
                    reservation.guild_remaining, reservation.cost, charged
                ),
            )
            await _to_the_end(self._deliver(job, reservation, delivery, result))
        except LeaseLost:
            raise
        except BotError as error:
            log.info("job %s failed: %s", job.id, type(error).__name__)
            self.observer.job_ended(job, "failed", error=error)
            if result is not None:
                # Kept, but in no message: no button will read them soon.
                self.store.release_cache(result.images)
            await self._refund(reservation, f"{type(error).__name__}: {error.user_message}")
            await self._end_unmade(delivery, job, error)
            return JobOutcome(job=job, error=error)
        except asyncio.CancelledError:
            await self._stopped(job, reservation, delivery)
            raise
        except Exception as exc:
            log.exception("job %s failed unexpectedly", job.id)
            self.observer.job_ended(job, "error", error=exc)
            await self._refund(reservation, f"internal error: {type(exc).__name__}")
            internal = BotError("Something went wrong on the bot's side; nothing was charged.")
            await self._end_unmade(delivery, job, internal)
            return JobOutcome(job=job, error=internal)
        # The member has the images: the pages of their originals on disk are cold.
        self.store.release_cache(result.images)
        return JobOutcome(job=job, result=result)

    async def _deliver(
        self, job: Job, reservation: Reservation, delivery: Delivery, result: JobResult
    ) -> None:
        """From "about to post" to "settled" (the hold was confirmed with the
        download: ``_begin_delivery``). Once begun it runs to its end even if
        the job is cancelled (a deploy, a shutdown): a posted result is always
        charged, once."""
        await _report(delivery, job, Progress(stage=Stage.DELIVERING))
        posted = await delivery.deliver(job, result)
        log.info(
            "job %s delivered %d image(s) by %s for %d credit(s)",
            job.id,
            len(result.images),
            result.provider,
            result.credits_charged,
        )
        self.observer.job_ended(job, "delivered", provider=result.provider)
        # The person has the images: a failing settle must not be reported as a
        # failed job; the job stays unfinished, so the next look settles it.
        # Where the message went rides on the settlement's transaction: one
        # round trip to the database fewer on every job (bench/RESULTS.md).
        details = {} if posted is None else {"posted": posted}
        delivered = self._step(job, "delivered", **details)
        if delivered is None and posted is not None:
            await self._record(job, "posted", **details)
        try:
            await self.ledger.settle(reservation, result.credits_charged, journal=delivered)
        except LeaseLost:
            log.warning("job %s: adopted by another process, which settles it", job.id)
            await self._posted_unsettled(job, delivered, posted)
            return
        except Exception:
            log.exception("job %s: settling reservation %s failed", job.id, reservation.id)
            await self._posted_unsettled(job, delivered, posted)
            return
        if delivered is None:
            await self._record(job, "delivered")

    async def _posted_unsettled(
        self, job: Job, undone: JournalStep | None, posted: Posted | None
    ) -> None:
        """A settlement that did not go through took the record of the posted
        message with it: written on its own, so that whoever settles the job
        (its adopter, or the next start) knows the message is out."""
        if undone is not None and posted is not None:
            await self._record(job, "posted", posted=posted, while_status="delivering")

    async def _stopped(self, job: Job, reservation: Reservation, delivery: Delivery) -> None:
        """A job cancelled before its result was posted."""
        if self.abandoning:
            log.info("job %s stopped: another process adopted it", job.id)
            self.observer.job_ended(job, "handed_over")
            return
        if self.handing_over and job.id in self._resumable:
            log.info("job %s handed over to the next start", job.id)
            self.observer.job_ended(job, "handed_over")
            return
        self.observer.job_ended(job, "cancelled")
        try:
            await self._refund(reservation, "cancelled")
        except LeaseLost:
            return
        stopped = BotError(STOPPED_MESSAGE if self.handing_over else "Your image was cancelled.")
        await self._end_unmade(delivery, job, stopped, reason="cancelled")

    async def _end_unmade(
        self, delivery: Delivery, job: Job, error: BotError, *, reason: str | None = None
    ) -> None:
        """Tell the member why their job ended without images. The words are on
        record first ("failing", or "refusing" for a refusal, which goes to the
        member alone): a process that dies before they went out leaves the
        telling to the next start (``bot.recovery``), not to no one. ``reason``
        is what the journal keeps afterwards, if not the words."""
        unmade = "refusing" if isinstance(error, UserError) else "failing"
        await self._record(job, unmade, error=error.user_message)
        await _tell_failure(delivery, job, error)
        await self._record(job, "failed", **({} if reason is None else {"error": reason}))

    async def _refund(self, reservation: Reservation, reason: str) -> None:
        # A refund must not be skipped because the task is being cancelled.
        try:
            await asyncio.shield(self.ledger.refund(reservation, reason))
        except LeaseLost:
            raise
        except Exception:
            log.exception("refund of reservation %s failed; the sweep will retry", reservation.id)

    async def _produce(self, job: Job, delivery: Delivery) -> JobResult:
        attempts = [
            _Attempt(self.providers[job.provider], job.request, job.unit_cost),
            *self._failover_candidates(job),
        ]
        last_error: ProviderError | None = None
        try:
            async with asyncio.timeout(self.settings.job_deadline):
                for attempt in attempts:
                    if last_error is not None:
                        log.warning(
                            "job %s: %s failed (%s); failing over to %s",
                            job.id,
                            last_error.provider,
                            type(last_error).__name__,
                            attempt.provider.name,
                        )
                    try:
                        return await self._attempt(job, attempt, delivery)
                    except ProviderError as error:
                        if not error.retryable:
                            raise
                        last_error = error
        except TimeoutError:
            raise JobDeadlineExceeded(
                "The image took too long to make, so the job was stopped; "
                "nothing was charged. Please try again.",
                provider=job.provider,
            ) from None
        assert last_error is not None
        raise last_error

    async def _failing_over(self, job: Job, provider: str) -> None:
        """The journal names the provider a restart would poll (the first one
        was recorded on admission) and forgets the first one's job and links,
        which a restart must not take for the next one's; and a job whose
        first results could not be fetched (``_begin_delivery`` ran) counts as
        in progress again. In one transaction where the journal rides on the
        ledger's."""
        # Resumable again once the next provider's job is on record.
        self._resumable.discard(job.id)
        fields: dict[str, Any] = {
            "provider": provider,
            "provider_job_id": None,
            "fetch_url": None,
            "outputs": [],
        }
        submitting = self._step(job, "submitting", **fields)
        await self.ledger.back_in_progress(self._holds[job.id], journal=submitting)
        if submitting is None:
            await self._record(job, "submitting", **fields)

    def _failover_candidates(self, job: Job) -> list[_Attempt]:
        if not self.settings.failover or job.original.provider is not None:
            return []  # the member chose this provider
        candidates = []
        for name, provider in self.providers.items():
            if name == job.provider or not provider.capabilities.supports(job.request.mode):
                continue
            try:
                request = provider.validate(job.original)
            except UserError:
                continue  # the other provider cannot take this exact request
            candidates.append(_Attempt(provider, request, self.price(provider, request)))
        return candidates

    def _progress_reporter(self, job: Job, delivery: Delivery) -> ProgressCallback:
        recorded: set[tuple[str | None, str | None]] = set()

        async def on_progress(progress: Progress) -> None:
            handle = (progress.provider_job_id, progress.provider_fetch_url)
            if handle != (None, None) and handle not in recorded:
                # Recorded before the next poll: a crash from here on can resume.
                recorded.add(handle)
                self._resumable.add(job.id)
                await self._record(
                    job,
                    "polling",
                    provider_job_id=progress.provider_job_id,
                    fetch_url=progress.provider_fetch_url,
                )
            await _report(delivery, job, progress)

        return on_progress

    async def _attempt(self, job: Job, attempt: _Attempt, delivery: Delivery) -> JobResult:
        provider = attempt.provider

        async def on_position(position: int) -> None:
            await _report(delivery, job, Progress(stage=Stage.QUEUED, queue_position=position))

        if provider.capabilities.one_image_per_call and attempt.request.samples > 1:
            output = await self._fan_out(job, attempt, delivery, on_position)
            return await self._finish_output(
                job, attempt.request, attempt.unit_cost, output, delivery
            )
        async with self.slots[provider.name].slot(on_position):
            if provider.name != job.provider:
                await self._failing_over(job, provider.name)
            await _report(delivery, job, Progress(stage=Stage.SUBMITTING))
            with self.observer.provider_call(provider.name):
                output = await provider.generate(
                    attempt.request, self._progress_reporter(job, delivery)
                )
        return await self._finish_output(job, attempt.request, attempt.unit_cost, output, delivery)

    async def _fan_out(
        self,
        job: Job,
        attempt: _Attempt,
        delivery: Delivery,
        on_position: Callable[[int], Awaitable[None]],
    ) -> ProviderOutput:
        """One call per image for a provider that makes one image per call, each
        in its own provider slot (so NANOBANANA_CONCURRENCY bounds calls, not
        jobs). The images that arrive make one result; only they are charged.
        Fails only when every call failed, with the first call's error."""
        provider = attempt.provider
        single = replace(attempt.request, samples=1)
        reporter = self._progress_reporter(job, delivery)
        if provider.name != job.provider:
            await self._failing_over(job, provider.name)

        async def one(index: int) -> ProviderOutput:
            # Queue positions of the first call stand for the job's.
            async with self.slots[provider.name].slot(on_position if index == 0 else None):
                if index == 0:
                    await _report(delivery, job, Progress(stage=Stage.SUBMITTING))
                return await provider.generate(single, reporter)

        results = await asyncio.gather(
            *(one(index) for index in range(attempt.request.samples)), return_exceptions=True
        )
        outputs: list[OutputRef] = []
        first: ProviderOutput | None = None
        errors: list[ProviderError] = []
        for result in results:
            if isinstance(result, ProviderError):
                errors.append(result)
            elif isinstance(result, BaseException):
                raise result
            else:
                first = first or result
                outputs.extend(result.outputs[:1])
        if first is None:
            raise errors[0]
        if errors:
            log.warning(
                "job %s: %d of %d calls to %s failed (%s); delivering the rest",
                job.id,
                len(errors),
                len(results),
                provider.name,
                type(errors[0]).__name__,
            )
        return replace(first, outputs=tuple(outputs))

    async def _finish_output(
        self,
        job: Job,
        request: GenerationRequest,
        unit_cost: int,
        output: ProviderOutput,
        delivery: Delivery,
    ) -> JobResult:
        # The provider has made the images: from here on the job finishes.
        self._cancellable.pop(job.id, None)
        if job.id not in self._in_image_phase:  # a failover's second try holds it already
            await self._image_phase.acquire()
            self._in_image_phase.add(job.id)
        # The hold is confirmed and "delivering" recorded with the result links
        # while the results download: neither waits for the other, and nothing
        # is posted before both are done (the ``finally`` below).
        urls = [ref.url for ref in output.outputs if ref.url is not None]
        recorded = asyncio.ensure_future(self._begin_delivery(job, output.provider, urls))
        if urls and len(urls) == len(output.outputs):
            # A shutdown from here on hands the job over: the next start fetches these.
            def resumable(done: asyncio.Future[None]) -> None:
                if not done.cancelled() and done.exception() is None:
                    self._resumable.add(job.id)

            recorded.add_done_callback(resumable)
        try:
            await _report(
                delivery,
                job,
                Progress(stage=Stage.DOWNLOADING, provider_job_id=output.provider_job_id),
            )
            images = await self._collect(job, output)
        finally:
            await _completed(recorded)
        return JobResult(
            job=job,
            request=request,
            provider=output.provider,
            images=images,
            credits_charged=unit_cost * len(images),
            model=output.model,
            seed=output.seed if output.seed is not None else request.seed,
            provider_job_id=output.provider_job_id,
            generation_time=output.generation_time,
            elapsed=time.monotonic() - job.started_at,
            nsfw_detected=output.nsfw_detected,
        )

    async def _begin_delivery(self, job: Job, provider: str, urls: list[str]) -> None:
        """Before anything is posted: the credits confirmed as still held by this
        process (raises LeaseLost or DeliveryError if not: nothing is posted that
        it cannot charge for), and "delivering" recorded with the result links,
        so that a crash from here on either finds the message out
        (``bot.recovery``) or fetches the results again. In one transaction
        where the journal rides on the ledger's: a process whose job was adopted
        does not write over its adopter's record."""
        reservation = self._holds[job.id]
        delivering = self._step(job, "delivering", provider=provider, outputs=urls)
        await self.ledger.begin_delivery(reservation, journal=delivering)
        if delivering is None:
            await self._record(job, "delivering", provider=provider, outputs=urls)

    async def _collect(self, job: Job, output: ProviderOutput) -> tuple[ResultImage, ...]:
        """Download and keep every result; images that fail are dropped, not charged."""
        fetched: list[ResultImage | BaseException]
        if len(output.outputs) == 1:
            # The usual single result: awaited here, without a task of its own to
            # schedule and gather (a third of a millisecond of a member's wait).
            try:
                fetched = [await self._fetch_and_keep(job, 1, output.provider, output.outputs[0])]
            except BotError as error:
                fetched = [error]
        else:
            fetched = await asyncio.gather(
                *(
                    self._fetch_and_keep(job, index, output.provider, ref)
                    for index, ref in enumerate(output.outputs, start=1)
                ),
                return_exceptions=True,
            )
        images: list[ResultImage] = []
        first_error: BaseException | None = None
        for index, item in enumerate(fetched, start=1):
            if isinstance(item, BaseException):
                if not isinstance(item, BotError):
                    raise item
                log.warning("job %s: result %d unusable: %s", job.id, index, item.user_message)
                first_error = first_error or item
                continue
            images.append(item)
        if images:
            return tuple(images)
        if isinstance(first_error, ProviderError):
            raise first_error
        raise ProviderBadResponse(
            "The provider's result could not be read, so nothing was charged. Please try again.",
            provider=output.provider,
            retryable=False,
        )

    async def _fetch_and_keep(
        self, job: Job, index: int, provider: str, ref: OutputRef
    ) -> ResultImage:
        if ref.data is None and ref.url is not None and self.store.retention_days > 0:
            try:
                return await self._download_and_keep(job, index, provider, ref.url)
            except DiskRefused as error:
                # As in _save: the disk's trouble must not cost the member the
                # images. Fetched again, into memory this time, and not kept.
                log.error("job %s: could not keep result %d: %s", job.id, index, error)
                return await self._fetch_one(provider, ref)
        return await self._keep(job, index, await self._fetch_one(provider, ref))

    async def _download_and_keep(
        self, job: Job, index: int, provider: str, url: str
    ) -> ResultImage:
        """Download a result straight into the store, check it there and keep it:
        its bytes are never whole in memory (the bot's peak RSS with many large
        results in flight, bench/RESULTS.md)."""
        incoming = self.store.incoming(job.id, index)
        try:
            await download_into(
                self.session,
                url,
                incoming.write,
                expect=incoming.expect,
                max_bytes=self.settings.download_max_bytes,
                timeout=self.settings.download_timeout,
                allow_loopback=self.settings.download_allow_loopback,
                provider=provider,
                allowed_hosts=self.settings.result_hosts(),
            )
            downloaded = await incoming.finish()
            try:
                if isinstance(downloaded, bytes):
                    image = await self.images.decode_result(downloaded, source_url=url)
                else:
                    image = await self.images.decode_result_file(downloaded, source_url=url)
            except ImageError as error:
                raise ProviderBadResponse(
                    error.user_message, provider=provider, retryable=False
                ) from None
            if image.data is not None:  # small, or a base64 body: kept from memory
                incoming.discard()
                return await self._keep(job, index, image)
            return image.on_disk(str(await incoming.install(image.mime)))
        except BaseException:
            incoming.discard()
            raise

    async def _keep(self, job: Job, index: int, image: ResultImage) -> ResultImage:
        """Write the original to disk. A small one keeps its bytes and is returned
        with its path at once: the upload need not wait for the disk, and
        ``_run_reserved`` waits for the write before the job ends (a path whose
        write failed reads as "not kept", and the buttons then use the posted
        copy). A large one is returned once written, without its bytes: planning
        and the upload read it from there, so that a job's originals are not all
        in memory from download to upload (bench: peak RSS of 50 jobs × 4 ×
        2048²); if its write fails it keeps them, and no path."""
        path = self.store.path_for(job.id, index, image)
        if path is None:
            return image
        saving = asyncio.ensure_future(self._save(job, index, image))
        self._saving.setdefault(job.id, []).append(saving)
        if image.nbytes <= Incoming.IN_MEMORY_BYTES:
            return replace(image, path=str(path))
        # Shielded: a cancelled job still finishes writing what it started.
        saved = await asyncio.shield(saving)
        return image if saved is None else image.on_disk(saved)

    async def _save(self, job: Job, index: int, image: ResultImage) -> str | None:
        # The path, not the saved image: ``_saving`` keeps this result until the
        # job ends, and the image's bytes must not stay alive with it.
        try:
            return (await self.store.save(job.id, index, image)).path
        except DeliveryError as error:
            # Keeping the original is a convenience (U1-U4 later); a full or
            # read-only disk must not cost the member the images in hand.
            log.error("job %s: could not keep result %d: %s", job.id, index, error)
            return None

    async def _saved(self, job: Job) -> None:
        writes = self._saving.pop(job.id, [])
        if writes:
            # Shielded: a cancelled job still finishes writing what it started.
            await asyncio.shield(asyncio.gather(*writes))

    async def _fetch_one(self, provider: str, ref: OutputRef) -> ResultImage:
        if ref.data is not None:
            data = ref.data
        elif ref.url is not None:
            data = await download(
                self.session,
                ref.url,
                max_bytes=self.settings.download_max_bytes,
                timeout=self.settings.download_timeout,
                allow_loopback=self.settings.download_allow_loopback,
                provider=provider,
                allowed_hosts=self.settings.result_hosts(),
            )
        else:
            raise ProviderBadResponse(
                "The provider returned an empty result.", provider=provider, retryable=False
            )
        try:
            return await self.images.decode_result(data, source_url=ref.url)
        except ImageError as error:
            raise ProviderBadResponse(
                error.user_message, provider=provider, retryable=False
            ) from None


async def _to_the_end(coro: Coroutine[Any, Any, T]) -> T:
    """Await ``coro`` in a task of its own that cancelling the caller cannot stop;
    a cancellation that arrives meanwhile is dropped, since the work it would
    have stopped is done."""
    task = asyncio.ensure_future(coro)
    interrupted = await _wait_through_cancellations(task)
    current = asyncio.current_task()
    if current is not None:
        for _ in range(interrupted):
            current.uncancel()
    return task.result()


async def _completed(future: asyncio.Future[T]) -> T:
    """``future``'s result, waited for even through a cancellation, which is
    raised once it is done: what it decides (a job whose links are recorded is
    handed over by a shutdown, not refunded) must be known by then."""
    if await _wait_through_cancellations(future):
        raise asyncio.CancelledError
    return future.result()


async def _wait_through_cancellations(future: asyncio.Future[Any]) -> int:
    """Wait until ``future`` is done, however often the caller is cancelled
    meanwhile; how often it was."""
    interrupted = 0
    while not future.done():
        try:
            await asyncio.wait([future])  # cancelling this wait leaves the future be
        except asyncio.CancelledError:
            interrupted += 1
    return interrupted


def _after_settle(remaining: int | None, reserved: int, charged: int) -> int | None:
    return None if remaining is None else remaining + (reserved - charged)


async def _report(delivery: Delivery, job: Job, progress: Progress) -> None:
    # A progress message that cannot be shown must never fail the job.
    try:
        await delivery.progress(job, progress)
    except Exception:
        log.warning("job %s: progress update failed", job.id, exc_info=True)


async def _tell_failure(delivery: Delivery, job: Job | None, error: BotError) -> None:
    try:
        await delivery.fail(job, error)
    except Exception:
        log.exception("could not tell the requester that job %s failed", job and job.id)


def summarise_references(request: GenerationRequest) -> Sequence[dict[str, object]]:
    """The references of a request without their bytes, for logs and result.json."""
    return [
        {
            "url": ref.url,
            "filename": ref.filename,
            "mime": ref.mime,
            "width": ref.width,
            "height": ref.height,
        }
        for ref in request.references
    ]
