"""Instance leases: who owns a job, who adopts it, and what a stalled owner finds.

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
from pathlib import Path

import aiosqlite
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
    sql, params = "UPDATE instances SET expires_at = ? WHERE id = ?", (time.time() - 1, instance)
    if db.path is None:
        await db.fetch(sql, *params)
        return
    async with aiosqlite.connect(db.path) as conn:
        await conn.execute(sql, params)
        await conn.commit()


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
        (taken,) = await lease.adopt()  # any adopter marks it expired, this one too
        assert taken.id == job.id
        assert not await lease.renew()
        second = await lease.acquire()
        assert second != first and jobs.instance == ledger.instance == second
        (adopted,) = await lease.adopt()
        assert adopted.id == job.id
        assert await lease.renew()


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
