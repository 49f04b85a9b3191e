"""The job journal's steps riding on the ledger's transactions (``JournalStep``).

Where the journal and the ledger share a database (always, in the bot), the
job's record goes in with its reservation, "delivering" with the check that the
credits are still held, and "delivered", with where the message went, with the
settlement: one round trip each instead of two, and both writes or neither.

Every test runs on SQLite and on PostgreSQL (where ``TEST_DATABASE_URL`` is set).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from bot.errors import DeliveryError, LeaseLost, QuotaRefused
from bot.jobs import Job, JobResult, Posted
from bot.jobstore import JobRecord, JobStore
from bot.lease import Lease
from bot.models import Progress, Stage, StoredImage
from bot.quota import QuotaPolicy, QuotaService, store_for_url
from bot.quota.base import AlreadyAdmitted, JournalStep
from bot.runtime import open_runtime
from bot.sql import postgres_database_id
from tests.conftest import LedgerDb
from tests.emulators.providers import ProviderEmulator
from tests.integration.test_leases import SETTINGS, expire, make_job, process
from tests.integration.test_pipeline import (
    MemoryJournal,
    RecordingDelivery,
    settings_for,
    text_request,
)


async def job_row(db: LedgerDb, job_id: str) -> tuple[Any, ...] | None:
    rows = await db.fetch(
        "SELECT status, owner_instance, error, reservation_json FROM jobs WHERE id = ?", job_id
    )
    return rows[0] if rows else None


async def entries(db: LedgerDb) -> list[tuple[Any, ...]]:
    return await db.fetch("SELECT job_id, state, delivering FROM quota_entries ORDER BY id")


async def test_the_journal_names_the_ledgers_database(ledger_db: LedgerDb, tmp_path: Path) -> None:
    async with process(ledger_db, tmp_path) as (jobs, ledger):
        assert jobs.database_id == ledger.database_id is not None
    if ledger_db.path is None:
        return
    # The same file by another name (a relative path, a link) is the same database...
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    async with JobStore.connect(link / ledger_db.path.name) as aliased:
        assert aliased.database_id == jobs.database_id
    # ...and another file is not.
    async with JobStore.connect(tmp_path / "other.db") as elsewhere:
        assert elsewhere.database_id != jobs.database_id


def test_a_postgres_database_is_named_without_its_password() -> None:
    with_password = postgres_database_id("postgresql://bot:s3cret@db.internal:5432/imagebot")
    assert with_password == postgres_database_id("postgresql://bot@db.internal/imagebot")
    assert "s3cret" not in with_password
    assert with_password != postgres_database_id("postgresql://bot@db.internal/other")


async def test_a_job_is_recorded_with_its_reservation_or_not_at_all(
    ledger_db: LedgerDb, tmp_path: Path
) -> None:
    async with process(ledger_db, tmp_path) as (jobs, ledger):
        job = make_job()
        reservation = await ledger.reserve("g1", "u1", [], 1, job.id, admit=jobs.admission(job))
        row = await job_row(ledger_db, job.id)
        assert row is not None and row[0] == "accepted"
        assert await entries(ledger_db) == [(None, "reserved", 0)]

        # The same interaction again: nothing new is held, nothing new recorded.
        with pytest.raises(AlreadyAdmitted):
            await ledger.reserve("g1", "u1", [], 1, job.id, admit=jobs.admission(job))
        assert len(await entries(ledger_db)) == 1

        # A refusal (one job in flight at most) undoes the job's record too.
        second = make_job()
        with pytest.raises(QuotaRefused):
            await ledger.reserve("g1", "u1", [], 1, second.id, admit=jobs.admission(second))
        assert await job_row(ledger_db, second.id) is None
        assert len(await entries(ledger_db)) == 1
        await ledger.refund(reservation, "test")


async def test_delivering_is_recorded_only_while_the_credits_are_held_here(
    ledger_db: LedgerDb, tmp_path: Path
) -> None:
    async with process(ledger_db, tmp_path) as (jobs_a, ledger_a):
        lease_a = Lease(jobs_a, SETTINGS, (ledger_a,))
        await lease_a.acquire()
        job = make_job()
        reservation = await ledger_a.reserve(
            "g1", "u1", [], 1, job.id, job_id=job.id, admit=jobs_a.admission(job)
        )
        await jobs_a.record(job, "downloading", reservation=reservation)
        async with process(ledger_db, tmp_path) as (jobs_b, ledger_b):
            lease_b = Lease(jobs_b, SETTINGS, (ledger_b,))
            await lease_b.acquire()
            await expire(ledger_db, lease_a.id or "")
            (adopted,) = await lease_b.adopt()
            # The stalled first owner reaches its upload: refused, and the
            # adopter's record is left as the adopter has it.
            with pytest.raises(LeaseLost):
                await ledger_a.begin_delivery(reservation, journal=jobs_a.step(job, "delivering"))
            row = await job_row(ledger_db, job.id)
            assert row is not None and row[:2] == ("downloading", lease_b.id)
            with pytest.raises(LeaseLost):
                await ledger_a.settle(reservation, 1, journal=jobs_a.step(job, "delivered"))
            assert (await job_row(ledger_db, job.id) or ())[0] == "downloading"

            # The adopter posts and settles, each with its record.
            await ledger_b.begin_delivery(reservation, journal=jobs_b.step(job, "delivering"))
            assert (await job_row(ledger_db, job.id) or ())[0] == "delivering"
            await ledger_b.settle(reservation, 1, journal=jobs_b.step(job, "delivered"))
            assert (await job_row(ledger_db, job.id) or ())[0] == "delivered"
            assert await entries(ledger_db) == [(job.id, "settled", 1)]
            assert adopted.id == job.id


async def test_a_hold_that_ended_records_no_delivery(ledger_db: LedgerDb, tmp_path: Path) -> None:
    async with process(ledger_db, tmp_path) as (jobs, ledger):
        job = make_job()
        reservation = await ledger.reserve(
            "g1", "u1", [], 1, job.id, job_id=job.id, admit=jobs.admission(job)
        )
        await ledger.refund(reservation, "swept")
        with pytest.raises(DeliveryError):
            await ledger.begin_delivery(reservation, journal=jobs.step(job, "delivering"))
        assert (await job_row(ledger_db, job.id) or ())[0] == "accepted"


async def test_a_journal_step_that_fails_undoes_the_ledgers_change(
    ledger_db: LedgerDb, tmp_path: Path
) -> None:
    async with process(ledger_db, tmp_path) as (jobs, ledger):
        job = make_job()
        reservation = await ledger.reserve(
            "g1", "u1", [], 1, job.id, job_id=job.id, admit=jobs.admission(job)
        )
        broken = JournalStep("UPDATE jobs SET no_such_column = ? WHERE id = ?", (1, job.id))
        with pytest.raises(Exception, match="no_such_column"):
            await ledger.begin_delivery(reservation, journal=broken)
        # Still counted as in progress: the mark was undone with the step.
        assert await entries(ledger_db) == [(job.id, "reserved", 0)]
        with pytest.raises(Exception, match="no_such_column"):
            await ledger.settle(reservation, 1, journal=broken)
        assert await entries(ledger_db) == [(job.id, "reserved", 0)]
        await ledger.refund(reservation, "test")


@contextlib.asynccontextmanager
async def bot_pipeline(
    db: LedgerDb, tmp_path: Path, emu: ProviderEmulator, policy: QuotaPolicy
) -> AsyncIterator[tuple[Any, JobStore]]:
    """The bot's pipeline, with the journal and the ledger in one database."""
    ledger = QuotaService(store_for_url(db.url), policy)
    await ledger.start()
    opener = JobStore.connect(db.path) if db.path is not None else JobStore.connect_postgres(db.url)
    try:
        async with opener as jobs, open_runtime(settings_for(emu, tmp_path), ledger) as runtime:
            runtime.pipeline.journal = jobs
            yield runtime.pipeline, jobs
    finally:
        await ledger.close()


@pytest.fixture
async def emu() -> AsyncIterator[ProviderEmulator]:
    async with ProviderEmulator() as emulator:
        yield emulator


async def test_the_bots_jobs_ride_on_the_ledger(
    ledger_db: LedgerDb, tmp_path: Path, emu: ProviderEmulator
) -> None:
    policy = QuotaPolicy(default_user_allowance=None, max_jobs_in_flight_per_user=5)
    async with bot_pipeline(ledger_db, tmp_path, emu, policy) as (pipeline, jobs):
        assert pipeline._riding_journal() is jobs
        # The same interaction twice at once (a duplicate event): one job, one charge.
        first, second = await asyncio.gather(
            pipeline.run(text_request("dup"), RecordingDelivery()),
            pipeline.run(text_request("dup"), RecordingDelivery()),
        )
        assert sorted([first.duplicate, second.duplicate]) == [False, True]
        done = first if second.duplicate else second
        assert done.result is not None
        row = await job_row(ledger_db, done.job.id if done.job else "")
        assert row is not None and row[0] == "delivered" and row[3] is not None
        assert await entries(ledger_db) == [(done.job.id if done.job else "", "settled", 1)]


async def test_a_refused_job_is_in_the_journal_with_its_reason(
    ledger_db: LedgerDb, tmp_path: Path, emu: ProviderEmulator
) -> None:
    policy = QuotaPolicy(default_user_allowance=0)
    async with bot_pipeline(ledger_db, tmp_path, emu, policy) as (pipeline, _jobs):
        delivery = RecordingDelivery()
        outcome = await pipeline.run(text_request("refused"), delivery)
        assert outcome.job is not None and outcome.error is not None
        row = await job_row(ledger_db, outcome.job.id)
        assert row is not None and row[0] == "failed"
        assert row[2] == outcome.error.user_message
        assert delivery.failures and delivery.failures[0] is outcome.error
        assert await entries(ledger_db) == []
        assert emu.requests_to("text2img") == []


class PostingDelivery(RecordingDelivery):
    """Posts the result as message "m1" and says where; ``while_posting`` runs
    while the message is on its way (what another process does meanwhile)."""

    def __init__(self, while_posting: Any = None) -> None:
        super().__init__()
        self.while_posting = while_posting

    async def deliver(self, job: Job, result: JobResult) -> Posted:  # type: ignore[override]
        await super().deliver(job, result)
        if self.while_posting is not None:
            await self.while_posting(job)
        return Posted(
            message_id="m1",
            images=(StoredImage(index=1, mime="image/png", width=64, height=64, url="u1"),),
            charged=result.credits_charged,
            seed=result.seed,
            model=result.model,
        )


async def posted_row(db: LedgerDb, job_id: str) -> tuple[Any, ...]:
    ((row),) = await db.fetch(
        "SELECT status, message_id, charged, images_json FROM jobs WHERE id = ?", job_id
    )
    return tuple(row)


async def test_where_the_result_went_is_recorded_with_the_settlement(
    ledger_db: LedgerDb, tmp_path: Path, emu: ProviderEmulator
) -> None:
    policy = QuotaPolicy(default_user_allowance=None)
    async with bot_pipeline(ledger_db, tmp_path, emu, policy) as (pipeline, jobs):
        commits: list[int] = []
        worker = getattr(jobs._db, "_worker", None)  # SQLite: one commit per round trip
        before = worker.commits if worker is not None else 0

        async def while_posting(job: Job) -> None:
            # The hold was confirmed with "delivering" and the result links,
            # in the transaction written beside the download.
            ((status, outputs),) = await ledger_db.fetch(
                "SELECT status, outputs_json FROM jobs WHERE id = ?", job.id
            )
            assert status == "delivering" and "http" in outputs
            assert await entries(ledger_db) == [(job.id, "reserved", 1)]
            if worker is not None:
                commits.append(worker.commits)

        outcome = await pipeline.run(text_request("posted"), PostingDelivery(while_posting))
        assert outcome.job is not None and outcome.result is not None
        status, message_id, charged, images = await posted_row(ledger_db, outcome.job.id)
        assert (status, message_id, charged) == ("delivered", "m1", 1)
        assert '"url": "u1"' in images
        assert await entries(ledger_db) == [(outcome.job.id, "settled", 1)]
        if worker is not None:
            await pipeline._saved(outcome.job)
            # The reservation with the job's record, then "delivering" with the
            # links; after the message, the settlement alone.
            assert (commits[0] - before, worker.commits - commits[0]) == (2, 1)


@contextlib.asynccontextmanager
async def stalled_and_adopter(
    db: LedgerDb, tmp_path: Path, emu: ProviderEmulator
) -> AsyncIterator[tuple[Any, Callable[[], Awaitable[list[JobRecord]]], JobStore, QuotaService]]:
    """Process A, the bot's pipeline, and process B, each under a lease:
    ``take_over()`` ends A's lease as if it had stalled and has B adopt its jobs."""
    policy = QuotaPolicy(default_user_allowance=None)
    async with (
        bot_pipeline(db, tmp_path, emu, policy) as (pipeline, jobs_a),
        process(db, tmp_path) as (jobs_b, ledger_b),
    ):
        lease_a = Lease(jobs_a, SETTINGS, (pipeline.ledger,))
        await lease_a.acquire()
        lease_b = Lease(jobs_b, SETTINGS, (ledger_b,))
        await lease_b.acquire()

        async def take_over() -> list[JobRecord]:
            await expire(db, lease_a.id or "")
            return await lease_b.adopt()

        yield pipeline, take_over, jobs_b, ledger_b


async def test_a_job_adopted_before_its_download_posts_nothing_and_writes_nothing(
    ledger_db: LedgerDb, tmp_path: Path, emu: ProviderEmulator
) -> None:
    """The process stalled past its lease while the provider worked: the
    adopter owns the job when the results come. The hold's check refuses, and
    "delivering" with it: the adopter's record stays as the adopter has it."""
    async with stalled_and_adopter(ledger_db, tmp_path, emu) as (pipeline, take_over, _, adopter):
        adopted: list[str] = []

        class AdoptedWhileSubmitting(PostingDelivery):
            async def progress(self, job: Job, progress: Progress) -> None:
                await super().progress(job, progress)
                if progress.stage is Stage.SUBMITTING:
                    adopted.extend(record.id for record in await take_over())

        delivery = AdoptedWhileSubmitting()
        outcome = await pipeline.run(text_request("adopted"), delivery)
        assert outcome.abandoned and outcome.job is not None
        assert adopted == [outcome.job.id]
        assert delivery.results == [] and delivery.failures == []
        row = await job_row(ledger_db, outcome.job.id)
        assert row is not None and row[:2] == ("accepted", adopter.instance)
        # Held still, for the adopter to resume.
        assert await entries(ledger_db) == [(outcome.job.id, "reserved", 0)]


@pytest.mark.parametrize("adopter_finished", [False, True])
async def test_a_result_posted_after_the_hold_moved_on_is_recorded_for_its_adopter(
    ledger_db: LedgerDb, tmp_path: Path, emu: ProviderEmulator, adopter_finished: bool
) -> None:
    """The process stalled past its lease while uploading: another one adopted
    the job meanwhile, so the settlement is refused, and "posted" with the
    message goes in on its own, for the adopter (or the next start) to settle
    instead of posting again. An adopter that has moved the job on already
    keeps its record."""
    async with stalled_and_adopter(ledger_db, tmp_path, emu) as (
        pipeline,
        take_over,
        jobs_b,
        ledger_b,
    ):

        async def adopted_meanwhile(job: Job) -> None:
            (adopted,) = await take_over()
            assert adopted.id == job.id
            if adopter_finished:
                # It found the message in the channel and settled it (bot.recovery).
                assert adopted.reservation is not None
                step = jobs_b.step(job, "delivered")
                await ledger_b.settle(adopted.reservation, 1, journal=step)

        outcome = await pipeline.run(text_request("stalled"), PostingDelivery(adopted_meanwhile))
        assert outcome.job is not None
        status, message_id, _, _ = await posted_row(ledger_db, outcome.job.id)
        if adopter_finished:
            assert (status, message_id) == ("delivered", None)
            assert await entries(ledger_db) == [(outcome.job.id, "settled", 1)]
        else:
            assert (status, message_id) == ("posted", "m1")
            # Held still: its adopter settles it.
            assert await entries(ledger_db) == [(outcome.job.id, "reserved", 1)]


async def test_a_journal_elsewhere_records_where_the_result_went_before_the_settlement(
    ledger_db: LedgerDb, tmp_path: Path, emu: ProviderEmulator
) -> None:
    """Without a transaction to ride on, "posted" goes first, on its own: a
    settlement that then fails leaves a job the next start settles."""
    policy = QuotaPolicy(default_user_allowance=None)
    async with bot_pipeline(ledger_db, tmp_path, emu, policy) as (pipeline, _jobs):
        journal = pipeline.journal = MemoryJournal()
        outcome = await pipeline.run(text_request("elsewhere"), PostingDelivery())
        assert outcome.result is not None
        statuses = [status for _, status in journal.steps]
        assert statuses[-3:] == ["delivering", "posted", "delivered"]
        posted = journal.fields[-2]["posted"]
        assert (posted.message_id, posted.charged) == ("m1", 1)
