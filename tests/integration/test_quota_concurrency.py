"""Concurrent reservations across tasks and processes on one database; crashes.

Every test runs on SQLite and on PostgreSQL (where ``TEST_DATABASE_URL`` is set).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.errors import QuotaRefused
from bot.quota import QuotaPolicy, QuotaService
from tests.conftest import LedgerDb, run_sync

ROOT = Path(__file__).resolve().parents[2]

POLICY = QuotaPolicy(
    default_pool_credits=100, default_user_allowance=None, max_jobs_in_flight_per_user=50
)
# 100 credits a day across guilds, and pools that never run out first.
BUDGET_POLICY = QuotaPolicy(
    default_pool_credits=1000,
    default_user_allowance=None,
    max_jobs_in_flight_per_user=50,
    global_daily_budget=100,
)

# Run by each worker process: open the shared database, wait for the go signal
# so that every process hammers it at once, then do ``mode``.
WORKER = textwrap.dedent(
    """
    import asyncio, json, os, sys
    from bot.errors import QuotaRefused
    from bot.quota import QuotaPolicy, QuotaService, store_for_url

    url, mode, worker, count, go = sys.argv[1:6]
    worker, count = int(worker), int(count)

    async def one(service, guild, user, key):
        try:
            return (await service.reserve(guild, user, [], 1, key)).id
        except QuotaRefused as exc:
            return exc.limit

    async def main():
        policy = QuotaPolicy(
            default_pool_credits=1000 if mode == "budget" else 100,
            default_user_allowance=None,
            max_jobs_in_flight_per_user=50,
            global_daily_budget=100 if mode == "budget" else None,
        )
        service = QuotaService(store_for_url(url, pool_size=5), policy)
        await service.start()
        print("ready", flush=True)
        while not os.path.exists(go):
            await asyncio.sleep(0.005)
        if mode == "race":
            keys = [("g", f"u{worker}-{i}", f"k{worker}-{i}") for i in range(count)]
        elif mode == "budget":
            keys = [(f"g{i % 7}", f"u{worker}-{i}", f"k{worker}-{i}") for i in range(count)]
        elif mode == "same-keys":
            keys = [("g", f"u{i}", f"shared-{i}") for i in range(count)]
        else:  # "crash" and "hold": one reservation, never settled
            reservation = await service.reserve("g", "crasher", [], 3, f"{mode}-{worker}")
            print(json.dumps({"id": reservation.id}), flush=True)
            if mode == "hold":
                sys.stdin.readline()
            os._exit(0)  # no settle, no refund, no close: as if killed
        results = await asyncio.gather(*(one(service, g, u, k) for g, u, k in keys))
        await service.close()
        print(json.dumps(dict(zip([k for _, _, k in keys], results))), flush=True)

    asyncio.run(main())
    """
)


class Workers:
    def __init__(self, tmp_path: Path, db: LedgerDb) -> None:
        self.tmp_path = tmp_path
        self.db = db
        self.go = tmp_path / "go"
        self.script = tmp_path / "worker.py"
        self.script.write_text(WORKER, encoding="utf-8")
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, mode: str, n: int, count: int = 0) -> list[subprocess.Popen[str]]:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        procs = [
            subprocess.Popen(
                [sys.executable, self.script, self.db.url, mode, str(w), str(count), self.go],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=env,
                cwd=self.tmp_path,
            )
            for w in range(n)
        ]
        self.procs.extend(procs)
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        self.go.touch()
        return procs

    @staticmethod
    def result(proc: subprocess.Popen[str]) -> Any:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        return json.loads(line)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()


@pytest.fixture
def workers(tmp_path: Path, ledger_db: LedgerDb) -> Any:
    pool = Workers(tmp_path, ledger_db)
    yield pool
    pool.close()


def held(db: LedgerDb) -> tuple[int, int]:
    """(entries, credits) still reserved in the database."""
    ((count, credits),) = run_sync(
        db.fetch("SELECT COUNT(*), SUM(cost_reserved) FROM quota_entries WHERE state = 'reserved'")
    )
    return int(count), int(credits)


async def open_service(db: LedgerDb, policy: QuotaPolicy = POLICY) -> QuotaService:
    service = QuotaService(db.store(), policy)
    await service.start()
    return service


async def test_500_concurrent_tasks_get_exactly_100_credits(ledger_db: LedgerDb) -> None:
    service = await open_service(ledger_db)
    try:

        async def one(i: int) -> str:
            try:
                await service.reserve("g", f"u{i}", [], 1, f"k{i}")
            except QuotaRefused as exc:
                return exc.limit
            return "ok"

        results = await asyncio.gather(*(one(i) for i in range(500)))
        assert results.count("ok") == 100
        assert set(results) == {"ok", "guild_pool"}
        balance = (await service.balance("g")).guild
        assert (balance.reserved, balance.remaining) == (100, 0)
    finally:
        await service.close()


async def test_500_tasks_in_many_guilds_share_the_daily_budget(ledger_db: LedgerDb) -> None:
    service = await open_service(ledger_db, BUDGET_POLICY)
    try:

        async def one(i: int) -> str:
            try:
                await service.reserve(f"g{i % 13}", f"u{i}", [], 1, f"k{i}")
            except QuotaRefused as exc:
                return exc.limit
            return "ok"

        results = await asyncio.gather(*(one(i) for i in range(500)))
        assert results.count("ok") == 100
        assert set(results) == {"ok", "global_budget"}
    finally:
        await service.close()


async def test_repeated_keys_in_one_process_reserve_once(ledger_db: LedgerDb) -> None:
    service = await open_service(ledger_db)
    try:
        reservations = await asyncio.gather(
            *(service.reserve("g", "u", [], 2, f"k{i % 5}") for i in range(100))
        )
        assert len({r.id for r in reservations}) == 5
        assert (await service.balance("g")).guild.reserved == 10
    finally:
        await service.close()


async def test_one_key_sent_from_many_guilds_at_once_reserves_once(ledger_db: LedgerDb) -> None:
    """The scopes differ, so on PostgreSQL these run in parallel and all but one
    insert hit the unique key; their retries must find the one reservation."""
    service = await open_service(ledger_db)
    try:
        results = await asyncio.gather(
            *(service.reserve(f"g{i}", f"u{i}", [], 1, "same-key") for i in range(10))
        )
        assert len({r.id for r in results}) == 1
        assert sum(not r.replayed for r in results) == 1
        entries = await ledger_db.fetch("SELECT COUNT(*) FROM quota_entries")
        assert entries == [(1,)]
    finally:
        await service.close()


def test_500_reservations_from_4_processes_get_exactly_100(workers: Workers) -> None:
    procs = workers.start("race", 4, 125)
    results: dict[str, str] = {}
    for proc in procs:
        results.update(workers.result(proc))
        assert proc.wait(timeout=120) == 0
    outcomes = list(results.values())
    assert len(outcomes) == 500
    assert sum(1 for o in outcomes if o not in ("guild_pool",)) == 100
    assert outcomes.count("guild_pool") == 400
    # Read the database directly: opening a service would (rightly) refund
    # these holds, since the processes that made them have exited.
    assert held(workers.db) == (100, 100)


def test_daily_budget_holds_across_4_processes_and_many_guilds(workers: Workers) -> None:
    procs = workers.start("budget", 4, 125)
    results: dict[str, str] = {}
    for proc in procs:
        results.update(workers.result(proc))
        assert proc.wait(timeout=120) == 0
    outcomes = list(results.values())
    assert len(outcomes) == 500
    assert outcomes.count("global_budget") == 400
    assert held(workers.db) == (100, 100)


def test_same_keys_from_4_processes_reserve_once(workers: Workers) -> None:
    procs = workers.start("same-keys", 4, 50)
    maps = [workers.result(proc) for proc in procs]
    for proc in procs:
        assert proc.wait(timeout=120) == 0
    assert all(m == maps[0] for m in maps)  # every process got the same reservation ids
    assert len(set(maps[0].values())) == 50
    assert held(workers.db) == (50, 50)


def test_a_hold_left_without_a_lease_ends_at_its_deadline(
    workers: Workers, caplog: pytest.LogCaptureFixture
) -> None:
    """A process without a lease (the CLI) killed between reserve and settle:
    nobody adopts its hold, so the deadline refunds it; nothing sooner guesses
    from host names or pids whether it still runs."""
    (proc,) = workers.start("crash", 1)
    crashed_id = workers.result(proc)["id"]
    assert proc.wait(timeout=60) == 0

    async def restart() -> None:
        policy = QuotaPolicy(reservation_timeout=600)
        with caplog.at_level(logging.WARNING, logger="bot.quota"):
            service = QuotaService(workers.db.store(), policy)
            assert await service.start() == []
        try:
            later = datetime.now(UTC) + timedelta(seconds=600)
            swept = await service.sweep_expired(later)
            assert [r.id for r in swept] == [crashed_id]
            assert (await service.balance("g")).guild.reserved == 0
            info = await service.job_info(crashed_id)
            assert info is not None and info.state == "refunded"
            assert info.reason is not None and info.reason.startswith("expired")
        finally:
            await service.close()

    asyncio.run(restart())
    assert f"refunded reservation {crashed_id}" in caplog.text


def test_live_process_keeps_its_reservation(workers: Workers) -> None:
    (proc,) = workers.start("hold", 1)
    held_id = workers.result(proc)["id"]

    async def scenario() -> None:
        # A second process starting (the operator's CLI) must not refund it.
        service = await open_service(workers.db)
        try:
            assert (await service.balance("g")).guild.reserved == 3
            assert await service.sweep_expired() == []
            assert proc.stdin is not None
            proc.stdin.write("exit\n")
            proc.stdin.flush()
            await asyncio.to_thread(proc.wait, 60)
            later = datetime.now(UTC) + timedelta(seconds=POLICY.reservation_timeout)
            swept = await service.sweep_expired(later)
            assert [r.id for r in swept] == [held_id]
            assert (await service.balance("g")).guild.reserved == 0
        finally:
            await service.close()

    asyncio.run(scenario())


async def test_holder_elsewhere_is_only_expired(ledger_db: LedgerDb) -> None:
    """A holder elsewhere (another bot replica on PostgreSQL) is never refunded
    by a sweep before the deadline; its jobs are adopted only through leases."""
    now = datetime(2024, 6, 12, 15, tzinfo=UTC)
    policy = QuotaPolicy(reservation_timeout=600)
    remote = QuotaService(ledger_db.store(), policy, now=lambda: now)
    await remote.start()
    remote.instance = "an-instance-elsewhere"
    try:
        reservation = await remote.reserve("g", "u", [], 2, "k")
    finally:
        await remote.close()
    local = QuotaService(ledger_db.store(), policy, now=lambda: now)
    assert await local.start() == []
    try:
        assert await local.sweep_expired(now + timedelta(seconds=599)) == []
        swept = await local.sweep_expired(now + timedelta(seconds=600))
        assert [r.id for r in swept] == [reservation.id]
        info = await local.job_info("k")
        assert info is not None and info.reason is not None and info.reason.startswith("expired")
    finally:
        await local.close()
