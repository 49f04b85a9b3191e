"""Instance leases: who owns a job, who adopts it, what a stalled owner finds, and
when the row of a gone instance is deleted.

Every test runs on SQLite and on PostgreSQL (where ``TEST_DATABASE_URL`` is set).
Two stores on one database stand for two processes, on any machines: nothing
here depends on host names or pids.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiosqlite
import asyncpg  # type: ignore[import-untyped]
import pytest

from bot.config import Settings
from bot.errors import DeliveryError, LeaseLost, QuotaRefused
from bot.jobs import Job
from bot.jobstore import JobStore
from bot.lease import Lease
from bot.models import GenerationRequest, Mode, Requester
from bot.quota import QuotaPolicy, QuotaService
from tests.conftest import LedgerDb

# A lease short enough to run out within a test; never waited on by the clock.
SETTINGS = Settings(_env_file=None, lease_timeout=3, lease_interval=1)
# A lease that cannot run out during a test however slow the machine: the gone
# instances of a test are expired by hand.
LASTING = Settings(_env_file=None, lease_timeout=3600, lease_interval=1)


@contextlib.asynccontextmanager
async def process(db: LedgerDb, tmp_path: Path) -> AsyncIterator[tuple[JobStore, QuotaService]]:
    """The job store and ledger of one bot process."""
    ledger = QuotaService(
        db.store(), QuotaPolicy(default_user_allowance=None, max_jobs_in_flight_per_user=1)
    )
    await ledger.start()
    opener = JobStore.connect(db.path) if db.path is not None else JobStore.connect_postgres(db.url)
    try:
        async with opener as jobs:
            yield jobs, ledger
    finally:
        await ledger.close()


def make_job(user: str = "u1") -> Job:
    job_id = uuid.uuid4().hex
    request = GenerationRequest(
        mode=Mode.TEXT,
        prompt="a lighthouse",
        requester=Requester(guild_id="g1", user_id=user, channel_id="c1"),
        idempotency_key=job_id,
    )
    return Job(
        id=job_id,
        request=request,
        original=request,
        provider="modelslab",
        cost=1,
        unit_cost=1,
        started_at=time.monotonic(),
    )


async def start_job(jobs: JobStore, ledger: QuotaService, user: str = "u1") -> Job:
    job = make_job(user)
    assert await jobs.admit(job)
    reservation = await ledger.reserve("g1", user, [], 1, job.id, job_id=job.id)
    await jobs.record(job, "reserved", reservation=reservation)
    return job


async def expire(db: LedgerDb, instance: str) -> None:
    """The owner stops renewing: its lease ends as if LEASE_TIMEOUT had passed."""
    await run_sql(db, "UPDATE instances SET expires_at = ? WHERE id = ?", time.time() - 1, instance)


async def run_sql(db: LedgerDb, sql: str, *params: object) -> None:
    if db.path is None:
        await db.fetch(sql, *params)
        return
    async with aiosqlite.connect(db.path) as conn:
        await conn.execute(sql, params)
        await conn.commit()


async def job_owner(db: LedgerDb, job_id: str) -> str | None:
    ((owner,),) = await db.fetch("SELECT owner_instance FROM jobs WHERE id = ?", job_id)
    return None if owner is None else str(owner)


async def instance_ids(db: LedgerDb) -> set[str]:
    return {str(row[0]) for row in await db.fetch("SELECT id FROM instances")}


async def test_a_job_outlives_its_process_and_is_adopted_once(
    ledger_db: LedgerDb, tmp_path: Path
) -> None:
    async with process(ledger_db, tmp_path) as (jobs_a, ledger_a):
        lease_a = Lease(jobs_a, SETTINGS, (ledger_a,))
        await lease_a.acquire()
        job = await start_job(jobs_a, ledger_a)
        async with process(ledger_db, tmp_path) as (jobs_b, ledger_b):
            lease_b = Lease(jobs_b, SETTINGS, (ledger_b,))
            await lease_b.acquire()
            # A live owner keeps its jobs, wherever it runs.
            assert await lease_b.adopt() == []
            await expire(ledger_db, lease_a.id or "")
            (adopted,) = await lease_b.adopt()
            assert adopted.id == job.id and adopted.reservation is not None
            assert await lease_b.adopt() == []  # nothing is adopted twice
            # The stalled owner learns it at its next renewal, and can no longer
            # settle or post what it held.
            assert not await lease_a.renew()
            with pytest.raises(LeaseLost):
                await ledger_a.settle(adopted.reservation, 1)
            with pytest.raises(LeaseLost):
                await ledger_a.begin_delivery(adopted.reservation)
            await ledger_b.begin_delivery(adopted.reservation)
            await ledger_b.settle(adopted.reservation, 1)
            assert (await ledger_b.states([adopted.reservation.id])) == {
                adopted.reservation.id: "settled"
            }


async def test_a_clean_stop_hands_jobs_over_at_once(ledger_db: LedgerDb, tmp_path: Path) -> None:
    async with process(ledger_db, tmp_path) as (jobs_a, ledger_a):
        lease_a = Lease(jobs_a, SETTINGS, (ledger_a,))
        await lease_a.acquire()
        job = await start_job(jobs_a, ledger_a)
        await lease_a.release()
    async with process(ledger_db, tmp_path) as (jobs_b, ledger_b):
        lease_b = Lease(jobs_b, SETTINGS, (ledger_b,))
        await lease_b.acquire()
        assert [r.id for r in await lease_b.adopt()] == [job.id]


async def test_a_process_whose_lease_was_taken_carries_on_under_a_new_one(
    ledger_db: LedgerDb, tmp_path: Path
) -> None:
    async with process(ledger_db, tmp_path) as (jobs, ledger):
        lease = Lease(jobs, SETTINGS, (ledger,))
        first = await lease.acquire()
        job = await start_job(jobs, ledger)
        await expire(ledger_db, first)
        # Run out but not yet taken: a late renewal still wins it back.
        assert await lease.renew()
        await expire(ledger_db, first)
        # Any adopter marks it expired, this one too, which then takes nothing:
        # under its expired id the job would be an orphan again at once.
        assert await lease.adopt() == []
        assert await job_owner(ledger_db, job.id) == first
        # Gone, but it still owns the job: its row stays.
        assert first in await instance_ids(ledger_db)
        assert not await lease.renew()
        second = await lease.acquire()
        assert second != first and jobs.instance == ledger.instance == second
        (adopted,) = await lease.adopt()
        assert adopted.id == job.id
        assert await job_owner(ledger_db, job.id) == second
        assert await lease.renew()
        assert await instance_ids(ledger_db) == {second}


async def test_many_adopters_at_once_take_each_job_exactly_once(
    ledger_db: LedgerDb, tmp_path: Path
) -> None:
    async with process(ledger_db, tmp_path) as (jobs, ledger):
        lease = Lease(jobs, SETTINGS, (ledger,))
        dead = await lease.acquire()
        created = {(await start_job(jobs, ledger, user=f"u{i}")).id for i in range(12)}
        await expire(ledger_db, dead)
        async with contextlib.AsyncExitStack() as stack:
            leases = []
            for _ in range(4):
                other_jobs, other_ledger = await stack.enter_async_context(
                    process(ledger_db, tmp_path)
                )
                other = Lease(other_jobs, SETTINGS, (other_ledger,))
                await other.acquire()
                leases.append(other)
            taken = await asyncio.gather(*(other.adopt() for other in leases))
        ids = [record.id for records in taken for record in records]
        assert sorted(ids) == sorted(created)  # every job once, none twice
        owners = await ledger_db.fetch(
            "SELECT COUNT(DISTINCT owner_instance) FROM quota_entries WHERE state = 'reserved'"
        )
        assert owners[0][0] >= 1
        mismatched = await ledger_db.fetch(
            "SELECT COUNT(*) FROM jobs JOIN quota_entries ON quota_entries.job_id = jobs.id"
            " WHERE jobs.owner_instance <> quota_entries.owner_instance"
        )
        assert mismatched == [(0,)]  # each job's reservation went with it


async def test_a_result_being_posted_is_no_longer_in_progress(
    ledger_db: LedgerDb, tmp_path: Path
) -> None:
    """The member's next image may start the moment the last one appears, before
    it is settled; its credits stay held until then."""
    async with process(ledger_db, tmp_path) as (jobs, ledger):
        lease = Lease(jobs, SETTINGS, (ledger,))
        await lease.acquire()
        first = await ledger.reserve("g1", "u1", [], 2, "first")
        with pytest.raises(QuotaRefused, match="1 image in progress"):
            await ledger.reserve("g1", "u1", [], 2, "too-soon")
        await ledger.begin_delivery(first)
        second = await ledger.reserve("g1", "u1", [], 2, "next")
        balance = (await ledger.balance("g1")).guild
        assert balance.reserved == 4  # both still held
        await ledger.settle(first, 2)
        await ledger.refund(second, "test")
        # A hold that ended (swept, refunded) cannot be posted against.
        with pytest.raises(DeliveryError):
            await ledger.begin_delivery(second)


async def test_a_failover_after_a_failed_download_is_in_progress_again(
    ledger_db: LedgerDb, tmp_path: Path
) -> None:
    """The first provider's results could not be fetched: the job goes to the
    next provider and counts as in progress again, with its credits still held."""
    async with process(ledger_db, tmp_path) as (jobs, ledger):
        lease = Lease(jobs, SETTINGS, (ledger,))
        await lease.acquire()
        first = await ledger.reserve("g1", "u1", [], 2, "first")
        await ledger.begin_delivery(first)
        await ledger.back_in_progress(first)
        with pytest.raises(QuotaRefused, match="1 image in progress"):
            await ledger.reserve("g1", "u1", [], 2, "too-soon")
        assert (await ledger.balance("g1")).guild.reserved == 2
        await ledger.begin_delivery(first)  # the next provider's results arrive
        second = await ledger.reserve("g1", "u1", [], 2, "next")
        await ledger.settle(first, 2)
        await ledger.refund(second, "test")
        # A hold that ended cannot go back to a provider either.
        with pytest.raises(DeliveryError):
            await ledger.back_in_progress(second)


async def test_gone_instances_are_forgotten_once_they_own_nothing(
    ledger_db: LedgerDb, tmp_path: Path
) -> None:
    """Every start registers an instance: the rows of gone ones are deleted by
    the next adopter, except while they still own work."""
    async with contextlib.AsyncExitStack() as stack:

        async def start() -> tuple[JobStore, QuotaService, Lease]:
            jobs, ledger = await stack.enter_async_context(process(ledger_db, tmp_path))
            lease = Lease(jobs, LASTING, (ledger,))
            await lease.acquire()
            return jobs, ledger, lease

        jobs_live, ledger_live, live = await start()
        live_job = await start_job(jobs_live, ledger_live, user="live")
        _, _, stopped = await start()
        await stopped.release()
        _, _, idle = await start()
        jobs_busy, ledger_busy, busy = await start()
        busy_job = await start_job(jobs_busy, ledger_busy, user="busy")
        # Its job ended but its refund never happened: the credits stay held,
        # owned by it, until RESERVATION_TIMEOUT.
        jobs_held, ledger_held, held = await start()
        held_job = await start_job(jobs_held, ledger_held, user="held")
        await jobs_held.record(held_job, "failed", error="the refund was lost")
        for gone in (idle, busy, held):
            await expire(ledger_db, gone.id or "")
        _, ledger_adopter, adopter = await start()

        (adopted,) = await adopter.adopt()
        assert adopted.id == busy_job.id
        # The busy one's job moved on, so its row went in the same transaction.
        assert await instance_ids(ledger_db) == {live.id, held.id, adopter.id}
        owners = dict(await ledger_db.fetch("SELECT id, owner_instance FROM jobs"))
        assert owners[live_job.id] == live.id and owners[busy_job.id] == adopter.id

        await ledger_adopter.sweep_expired(datetime.now(UTC) + timedelta(hours=1))
        assert await adopter.adopt() == []
        assert await instance_ids(ledger_db) == {live.id, adopter.id}
        # The live one, its job and its lease untouched.
        assert await live.renew()
        assert (await jobs_live.get(live_job.id)) is not None


async def test_an_instance_keeps_its_row_while_another_adopter_holds_its_job(
    ledger_db: LedgerDb, tmp_path: Path
) -> None:
    """PostgreSQL: an adopter skips the jobs another one is taking (SKIP LOCKED),
    so the owner of a skipped job still owns it and keeps its row."""
    if ledger_db.backend != "postgresql":
        pytest.skip("SQLite adopters run one at a time")
    async with process(ledger_db, tmp_path) as (jobs, ledger):
        dead = Lease(jobs, LASTING, (ledger,))
        dead_id = await dead.acquire()
        job = await start_job(jobs, ledger)
        await expire(ledger_db, dead_id)
        async with process(ledger_db, tmp_path) as (jobs_b, ledger_b):
            adopter = Lease(jobs_b, LASTING, (ledger_b,))
            await adopter.acquire()
            conn = await asyncpg.connect(ledger_db.url)
            try:
                other = conn.transaction()
                await other.start()
                await conn.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", job.id)
                assert await adopter.adopt() == []
                assert dead_id in await instance_ids(ledger_db)
                await other.rollback()
            finally:
                await conn.close()
            (adopted,) = await adopter.adopt()
            assert adopted.id == job.id
            assert await instance_ids(ledger_db) == {adopter.id}
