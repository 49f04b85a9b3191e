"""The job pipeline with real providers (against the emulator), real images and a real ledger."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bot.config import Settings
from bot.errors import (
    BotError,
    DeliveryError,
    JobDeadlineExceeded,
    ProviderCreditsError,
    QuotaRefused,
)
from bot.images.storage import Incoming
from bot.jobs import Job, JobResult
from bot.models import GenerationRequest, Mode, Progress, Requester, ResultImage, Stage
from bot.quota import open_ledger
from bot.quota.base import JournalStep
from bot.runtime import Runtime, open_runtime
from tests.emulators.providers import (
    Error,
    Hang,
    Processing,
    ProviderEmulator,
    ServerError,
    Success,
    make_png,
)
from tests.page_cache import cache_can_be_dropped, until_uncached, wait_for_writeback


@dataclass
class RecordingDelivery:
    progress_seen: list[Progress] = field(default_factory=list)
    results: list[JobResult] = field(default_factory=list)
    failures: list[BotError] = field(default_factory=list)
    refuse_delivery: bool = False

    async def progress(self, job: Job, progress: Progress) -> None:
        self.progress_seen.append(progress)

    async def deliver(self, job: Job, result: JobResult) -> None:
        if self.refuse_delivery:
            raise DeliveryError("Discord refused the upload.")
        self.results.append(result)

    async def fail(self, job: Job | None, error: BotError) -> None:
        self.failures.append(error)


def settings_for(emu: ProviderEmulator, tmp_path: Any, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "modelslab_api_key": "ml-test-key",
        "modelslab_base_url": emu.modelslab_base_url,
        "nanobanana_api_key": "sk-test-key",
        "nanobanana_base_url": emu.nanobanana_base_url,
        "data_dir": tmp_path / "data",
        "download_allow_loopback": True,
        "poll_initial": 0.01,
        "poll_max": 0.05,
        "retry_attempts": 2,
        "retry_backoff_max": 0.02,
        "default_pool_credits": 20,
        "default_user_allowance": None,
        "max_jobs_in_flight_per_user": 50,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture
async def emu() -> AsyncIterator[ProviderEmulator]:
    async with ProviderEmulator() as emulator:
        yield emulator


@pytest.fixture
async def make_runtime(emu, tmp_path):
    async with contextlib.AsyncExitStack() as stack:

        async def make(**overrides: Any) -> Runtime:
            settings = settings_for(emu, tmp_path, **overrides)
            ledger = await stack.enter_async_context(open_ledger(settings))
            return await stack.enter_async_context(open_runtime(settings, ledger))

        yield make


def text_request(key: str, samples: int = 1, **extra: Any) -> GenerationRequest:
    return GenerationRequest(
        mode=Mode.TEXT,
        prompt="a red fox",
        samples=samples,
        provider=extra.pop("provider", "modelslab"),
        requester=Requester(guild_id="g1", user_id="u1"),
        idempotency_key=key,
        **extra,
    )


async def guild_used(runtime: Runtime) -> tuple[int, int]:
    balance = await runtime.ledger.balance("g1")  # type: ignore[attr-defined]
    return balance.guild.used, balance.guild.reserved


async def test_success_charges_the_images_delivered(make_runtime):
    runtime = await make_runtime()
    delivery = RecordingDelivery()
    outcome = await runtime.pipeline.run(text_request("k1", samples=3), delivery)
    assert outcome.ok, delivery.failures
    (result,) = delivery.results
    assert len(result.images) == 3
    assert result.credits_charged == 3
    assert all(image.path for image in result.images)
    stages = [p.stage for p in delivery.progress_seen]
    assert stages[0] is Stage.SUBMITTING
    assert Stage.DOWNLOADING in stages and stages[-1] is Stage.DELIVERING
    assert await guild_used(runtime) == (3, 0)


async def test_queued_job_reports_eta_and_provider_job_id(make_runtime, emu):
    runtime = await make_runtime()
    emu.script("text2img", Processing(polls=2, eta=0.02))
    delivery = RecordingDelivery()
    outcome = await runtime.pipeline.run(text_request("k2"), delivery)
    assert outcome.ok
    processing = [p for p in delivery.progress_seen if p.stage is Stage.PROCESSING]
    assert processing and processing[0].provider_job_id
    assert len(emu.requests_to("fetch")) >= 2


async def test_failed_download_of_one_sample_charges_only_the_other(make_runtime, emu):
    runtime = await make_runtime()
    emu.script("file", Success(result="404"))
    delivery = RecordingDelivery()
    outcome = await runtime.pipeline.run(text_request("k3", samples=2), delivery)
    assert outcome.ok
    assert len(delivery.results[0].images) == 1
    assert delivery.results[0].credits_charged == 1
    assert await guild_used(runtime) == (1, 0)


@pytest.mark.parametrize(
    "behaviour",
    [
        Error(http_status=402, message="Insufficient credits"),
        Success(result="corrupt"),
        Success(result="404"),
    ],
)
@pytest.mark.parametrize("samples", [1, 2])
async def test_every_failure_refunds(make_runtime, emu, behaviour, samples):
    runtime = await make_runtime()
    if isinstance(behaviour, Success):
        emu.script("file", *[behaviour] * samples)
    else:
        emu.script("text2img", behaviour)
    delivery = RecordingDelivery()
    outcome = await runtime.pipeline.run(text_request("k4", samples=samples), delivery)
    assert not outcome.ok
    assert len(delivery.failures) == 1
    assert delivery.failures[0].user_message
    if isinstance(behaviour, Success) and behaviour.result == "404":
        assert "expired or does not exist" in delivery.failures[0].user_message
    assert await guild_used(runtime) == (0, 0)


async def test_provider_error_type_reaches_the_delivery(make_runtime, emu):
    runtime = await make_runtime()
    emu.script("text2img", Error(http_status=402, message="Insufficient credits"))
    delivery = RecordingDelivery()
    await runtime.pipeline.run(text_request("k5"), delivery)
    assert isinstance(delivery.failures[0], ProviderCreditsError)


async def test_refused_delivery_refunds(make_runtime):
    runtime = await make_runtime()
    delivery = RecordingDelivery(refuse_delivery=True)
    outcome = await runtime.pipeline.run(text_request("k6"), delivery)
    assert not outcome.ok
    assert isinstance(delivery.failures[0], DeliveryError)
    assert await guild_used(runtime) == (0, 0)


async def test_validation_error_spends_nothing_and_calls_nobody(make_runtime, emu):
    runtime = await make_runtime()
    delivery = RecordingDelivery()
    outcome = await runtime.pipeline.run(text_request("k7", samples=9), delivery)
    assert not outcome.ok
    assert "samples" in delivery.failures[0].user_message
    assert emu.requests_to("text2img") == []
    assert await guild_used(runtime) == (0, 0)


async def test_quota_refusal_calls_no_provider(make_runtime, emu):
    runtime = await make_runtime(default_pool_credits=2)
    delivery = RecordingDelivery()
    outcome = await runtime.pipeline.run(text_request("k8", samples=3), delivery)
    assert isinstance(outcome.error, QuotaRefused)
    assert outcome.error.limit == "guild_pool"
    assert emu.requests_to("text2img") == []


async def test_deadline_stops_a_hung_job_and_refunds(make_runtime, emu):
    runtime = await make_runtime(job_deadline=0.5, request_timeout=30)
    emu.script("text2img", Hang(30))
    delivery = RecordingDelivery()
    outcome = await runtime.pipeline.run(text_request("k9"), delivery)
    assert isinstance(outcome.error, JobDeadlineExceeded)
    assert await guild_used(runtime) == (0, 0)


async def test_cancellation_refunds(make_runtime, emu):
    runtime = await make_runtime()
    emu.script("text2img", Hang(30))
    task = asyncio.create_task(runtime.pipeline.run(text_request("k10"), RecordingDelivery()))
    await emu_wait(emu, "text2img")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await guild_used(runtime) == (0, 0)


async def emu_wait(emu: ProviderEmulator, endpoint: str) -> None:
    for _ in range(500):
        if emu.requests_to(endpoint):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"no request to {endpoint}")


async def test_failover_to_the_other_provider_after_retryable_failures(make_runtime, emu):
    runtime = await make_runtime(failover=True, retry_attempts=1)
    journal = MemoryJournal()
    runtime.pipeline.journal = journal
    emu.script("text2img", ServerError(503), ServerError(503))
    delivery = RecordingDelivery()
    request = text_request("k11", provider=None)
    outcome = await runtime.pipeline.run(request, delivery)
    assert outcome.ok, delivery.failures
    assert delivery.results[0].provider == "nanobanana"
    # The journal names the provider a restart would have to ask.
    submitted = [
        f
        for (_, status), f in zip(journal.steps, journal.fields, strict=True)
        if status == "submitting"
    ]
    assert [fields["provider"] for fields in submitted] == ["nanobanana"]
    assert len(emu.requests_to("text2img")) == 2
    # Charged at most what was reserved for the first provider's price.
    assert delivery.results[0].credits_charged <= runtime.settings.costs["text2img"]


async def test_no_failover_when_disabled(make_runtime, emu):
    runtime = await make_runtime(failover=False, retry_attempts=1)
    emu.script("text2img", ServerError(503), ServerError(503))
    delivery = RecordingDelivery()
    outcome = await runtime.pipeline.run(text_request("k12", provider=None), delivery)
    assert not outcome.ok
    assert delivery.failures[0].retryable if hasattr(delivery.failures[0], "retryable") else True
    assert emu.requests_to("nbpro") == []


async def test_calls_in_flight_are_limited_and_queue_positions_reported(make_runtime, emu):
    runtime = await make_runtime(modelslab_max_queued=1)
    emu.script("text2img", Processing(polls=3, eta=0.05), Processing(polls=3, eta=0.05))
    deliveries = [RecordingDelivery() for _ in range(3)]
    outcomes = await asyncio.gather(
        *(
            runtime.pipeline.run(text_request(f"q{i}"), delivery)
            for i, delivery in enumerate(deliveries)
        )
    )
    assert all(outcome.ok for outcome in outcomes)
    queued = [
        p.queue_position
        for delivery in deliveries
        for p in delivery.progress_seen
        if p.stage is Stage.QUEUED
    ]
    assert 2 in queued and 1 in queued


@dataclass
class MemoryJournal:
    seen: set[str] = field(default_factory=set)
    steps: list[tuple[str, str]] = field(default_factory=list)
    fields: list[dict[str, Any]] = field(default_factory=list)
    database_id: str | None = None  # in no database: its steps never ride on the ledger's

    def admission(self, job: Job) -> JournalStep:
        raise AssertionError("a journal in no database has no SQL steps")

    def step(self, job: Job, status: str, **fields: Any) -> JournalStep:
        raise AssertionError("a journal in no database has no SQL steps")

    async def admit(self, job: Job) -> bool:
        key = job.request.idempotency_key
        if key in self.seen:
            return False
        self.seen.add(key)
        return True

    async def record(self, job: Job, status: str, **fields: Any) -> None:
        self.steps.append((job.id, status))
        self.fields.append(fields)


async def test_duplicate_admission_runs_once(make_runtime, emu):
    runtime = await make_runtime()
    runtime.pipeline.journal = MemoryJournal()
    first, second = await asyncio.gather(
        runtime.pipeline.run(text_request("dup"), RecordingDelivery()),
        runtime.pipeline.run(text_request("dup"), RecordingDelivery()),
    )
    assert sorted([first.duplicate, second.duplicate]) == [False, True]
    assert len(emu.requests_to("text2img")) == 1
    assert await guild_used(runtime) == (1, 0)


async def test_journal_records_every_step_and_the_provider_handle(make_runtime, emu):
    runtime = await make_runtime()
    journal = MemoryJournal()
    runtime.pipeline.journal = journal
    emu.script("text2img", Processing(polls=2, eta=0.02))
    outcome = await runtime.pipeline.run(text_request("steps"), RecordingDelivery())
    assert outcome.ok
    statuses = [status for _, status in journal.steps]
    # The provider was recorded on admission: no separate "submitting" write; the
    # reservation goes with the first step instead of a write of its own.
    assert statuses[0] == "polling"
    assert "reservation" in journal.fields[0]
    assert not any("reservation" in fields for fields in journal.fields[1:])
    # The result links go with "delivering", written while they download.
    assert statuses[-2:] == ["delivering", "delivered"]
    assert "downloading" not in statuses
    assert journal.fields[-2]["outputs"] and journal.fields[-2]["provider"] == "modelslab"


async def test_a_replayed_key_never_runs_twice(make_runtime, emu):
    runtime = await make_runtime()
    first = await runtime.pipeline.run(text_request("same-key"), RecordingDelivery())
    again = await runtime.pipeline.run(text_request("same-key"), RecordingDelivery())
    assert first.ok and again.duplicate
    assert len(emu.requests_to("text2img")) == 1
    assert await guild_used(runtime) == (1, 0)


async def test_originals_are_on_disk_when_the_job_ends(make_runtime, emu):
    """The upload of a small result does not wait for the disk, but the job does."""
    runtime = await make_runtime()
    delivery = RecordingDelivery()
    outcome = await runtime.pipeline.run(text_request("kept", samples=2), delivery)
    assert outcome.ok, delivery.failures
    paths = [image.path for image in delivery.results[0].images]
    assert all(path is not None for path in paths)
    originals = [image.data for image in delivery.results[0].images]
    kept = [await asyncio.to_thread(Path(path).read_bytes) for path in paths if path]
    assert kept == originals


async def test_originals_are_kept_when_the_message_could_not_go_out(make_runtime, emu):
    """The member is not charged, and what the provider made is still on disk
    (under the names the buttons look for) when the job ends."""
    runtime = await make_runtime()
    delivery = RecordingDelivery(refuse_delivery=True)
    outcome = await runtime.pipeline.run(text_request("refused", samples=2), delivery)
    assert outcome.error is not None and await guild_used(runtime) == (0, 0)
    job_dir = runtime.store.root / (outcome.job.id if outcome.job else "")
    kept = await asyncio.to_thread(lambda: sorted(p.name for p in job_dir.iterdir()))
    assert kept == ["1.png", "2.png"]


async def deliver_large_results(
    make_runtime, monkeypatch, delivery: RecordingDelivery, prompt: str
) -> tuple[ResultImage, ...]:
    """A two-image job whose results count as large: downloaded into the store."""
    monkeypatch.setattr(Incoming, "IN_MEMORY_BYTES", 1000)
    runtime = await make_runtime()
    outcome = await runtime.pipeline.run(text_request(prompt, samples=2), delivery)
    assert outcome.ok, delivery.failures
    return delivery.results[0].images


async def test_large_originals_go_from_the_download_to_the_disk(make_runtime, emu, monkeypatch):
    """Large results are downloaded into the store and delivered from there:
    kept as the provider sent them, and not held in memory."""
    images = await deliver_large_results(make_runtime, monkeypatch, RecordingDelivery(), "kept")
    paths = [image.path for image in images]
    assert all(path is not None for path in paths)
    assert all(image.data is None for image in images)
    kept = [await asyncio.to_thread(Path(path).read_bytes) for path in paths if path]
    served = [await asyncio.to_thread(make_png, im.width, im.height) for im in images]
    assert kept == served
    assert [image.nbytes for image in images] == [len(data) for data in kept]
    assert await asyncio.to_thread(hidden_files, paths) == []  # no download left behind


@dataclass
class UploadOutlastingTheDisk(RecordingDelivery):
    """An upload as long as a real one (seconds, to Discord): by its end what
    the store had on its way to the disk has landed. Nothing is written out
    here that was not already on its way."""

    async def deliver(self, job: Job, result: JobResult) -> None:
        for image in result.images:
            if image.path:
                await asyncio.to_thread(wait_for_writeback, image.path)
        await super().deliver(job, result)


async def test_delivered_large_originals_give_their_page_cache_back(
    make_runtime, emu, monkeypatch, tmp_path
):
    """Once delivered, the originals downloaded into the store are cold: their
    pages go back to the kernel, for the next download to reuse (round 8 in
    bench/RESULTS.md), and the files stay whole for the buttons."""
    if not cache_can_be_dropped(tmp_path):
        pytest.skip("this filesystem keeps its pages")
    images = await deliver_large_results(
        make_runtime, monkeypatch, UploadOutlastingTheDisk(), "cold"
    )
    paths = [image.path for image in images if image.path and image.data is None]
    assert len(paths) == 2
    assert await until_uncached(paths) == [0, 0]
    kept = [await asyncio.to_thread(Path(path).read_bytes) for path in paths]
    assert [len(data) for data in kept] == [image.nbytes for image in images]


@dataclass
class UploadRefusedAfterTheDisk(UploadOutlastingTheDisk):
    """As long an upload, which Discord then refuses; what it was given is noted."""

    given: list[ResultImage] = field(default_factory=list)

    async def deliver(self, job: Job, result: JobResult) -> None:
        self.given.extend(result.images)
        self.refuse_delivery = True
        await super().deliver(job, result)


async def test_originals_of_an_undelivered_job_give_their_page_cache_back_too(
    make_runtime, emu, monkeypatch, tmp_path
):
    """No message carries them, so no button will read them soon: a refused
    upload leaves the originals on disk, refunded, and out of the page cache."""
    if not cache_can_be_dropped(tmp_path):
        pytest.skip("this filesystem keeps its pages")
    monkeypatch.setattr(Incoming, "IN_MEMORY_BYTES", 1000)
    runtime = await make_runtime()
    delivery = UploadRefusedAfterTheDisk()
    outcome = await runtime.pipeline.run(text_request("refused", samples=2), delivery)
    assert not outcome.ok and isinstance(delivery.failures[0], DeliveryError)
    paths = [image.path for image in delivery.given if image.path and image.data is None]
    assert len(paths) == 2
    assert await until_uncached(paths) == [0, 0]
    assert await guild_used(runtime) == (0, 0)


def hidden_files(paths: list[str | None]) -> list[str]:
    assert paths[0] is not None
    return [p.name for p in Path(paths[0]).parent.iterdir() if p.name.startswith(".")]
