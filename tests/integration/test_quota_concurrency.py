"""Concurrent reservations across tasks and processes on one SQLite file; crashes."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from bot.errors import QuotaRefused
from bot.quota import QuotaPolicy, QuotaService, SqliteLedgerStore
from bot.quota.models import Owner
from bot.quota.owner import current_owner, owner_gone

ROOT = Path(__file__).resolve().parents[2]

POLICY = QuotaPolicy(
    default_pool_credits=100, default_user_allowance=None, max_jobs_in_flight_per_user=50
)

# Run by each worker process: open the shared file, wait for the go signal so
# that every process hammers the file at once, then do ``mode``.
WORKER = textwrap.dedent(
    """
    import asyncio, json, os, sys
    from bot.errors import QuotaRefused
    from bot.quota import QuotaPolicy, QuotaService, SqliteLedgerStore

    db, mode, worker, count, go = sys.argv[1:6]
    worker, count = int(worker), int(count)

    async def one(service, user, key):
        try:
            return (await service.reserve("g", user, [], 1, key)).id
        except QuotaRefused as exc:
            return exc.limit

    async def main():
        policy = QuotaPolicy(
            default_pool_credits=100, default_user_allowance=None,
            max_jobs_in_flight_per_user=50,
        )
        service = QuotaService(SqliteLedgerStore(db), policy)
        await service.start()
        print("ready", flush=True)
        while not os.path.exists(go):
            await asyncio.sleep(0.005)
        if mode == "race":
            keys = [(f"u{worker}-{i}", f"k{worker}-{i}") for i in range(count)]
        elif mode == "same-keys":
            keys = [(f"u{i}", f"shared-{i}") for i in range(count)]
        else:  # "crash" and "hold": one reservation, never settled
            reservation = await service.reserve("g", "crasher", [], 3, f"{mode}-{worker}")
            print(json.dumps({"id": reservation.id}), flush=True)
            if mode == "hold":
                sys.stdin.readline()
            os._exit(0)  # no settle, no refund, no close: as if killed
        results = await asyncio.gather(*(one(service, u, k) for u, k in keys))
        await service.close()
        print(json.dumps(dict(zip([k for _, k in keys], results))), flush=True)

    asyncio.run(main())
    """
)


class Workers:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.db = tmp_path / "shared.db"
        self.go = tmp_path / "go"
        self.script = tmp_path / "worker.py"
        self.script.write_text(WORKER, encoding="utf-8")
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, mode: str, n: int, count: int = 0) -> list[subprocess.Popen[str]]:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        procs = [
            subprocess.Popen(
                [sys.executable, self.script, self.db, mode, str(w), str(count), self.go],
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
def workers(tmp_path: Path) -> Any:
    pool = Workers(tmp_path)
    yield pool
    pool.close()


def held(path: Path) -> tuple[int, int]:
    """(entries, credits) still reserved in the file."""
    with closing(sqlite3.connect(path)) as db:
        count, credits = db.execute(
            "SELECT COUNT(*), SUM(cost_reserved) FROM quota_entries WHERE state = 'reserved'"
        ).fetchone()
    return int(count), int(credits)


async def open_service(path: Path, policy: QuotaPolicy = POLICY) -> QuotaService:
    service = QuotaService(SqliteLedgerStore(path), policy)
    await service.start()
    return service


async def test_500_concurrent_tasks_get_exactly_100_credits(tmp_path: Path) -> None:
    service = await open_service(tmp_path / "q.db")
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


async def test_repeated_keys_in_one_process_reserve_once(tmp_path: Path) -> None:
    service = await open_service(tmp_path / "q.db")
    try:
        reservations = await asyncio.gather(
            *(service.reserve("g", "u", [], 2, f"k{i % 5}") for i in range(100))
        )
        assert len({r.id for r in reservations}) == 5
        assert (await service.balance("g")).guild.reserved == 10
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
    # Read the file directly: opening a service would (rightly) refund these
    # holds, since the processes that made them have exited.
    assert held(workers.db) == (100, 100)


def test_same_keys_from_4_processes_reserve_once(workers: Workers) -> None:
    procs = workers.start("same-keys", 4, 50)
    maps = [workers.result(proc) for proc in procs]
    for proc in procs:
        assert proc.wait(timeout=120) == 0
    assert all(m == maps[0] for m in maps)  # every process got the same reservation ids
    assert len(set(maps[0].values())) == 50
    assert held(workers.db) == (50, 50)


def test_crash_between_reserve_and_settle_is_refunded_on_next_start(
    workers: Workers, caplog: pytest.LogCaptureFixture
) -> None:
    (proc,) = workers.start("crash", 1)
    crashed_id = workers.result(proc)["id"]
    assert proc.wait(timeout=60) == 0

    async def restart() -> None:
        with caplog.at_level(logging.WARNING, logger="bot.quota"):
            service = QuotaService(SqliteLedgerStore(workers.db), POLICY)
            swept = await service.start()
        try:
            assert [r.id for r in swept] == [crashed_id]
            assert (await service.balance("g")).guild.reserved == 0
            info = await service.job_info(crashed_id)
            assert info is not None and info.state == "refunded"
            assert info.reason is not None and info.reason.startswith("crashed")
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
            assert proc.stdin is not None
            proc.stdin.write("exit\n")
            proc.stdin.flush()
            await asyncio.to_thread(proc.wait, 60)
            swept = await service.sweep_expired()  # the periodic sweep
            assert [r.id for r in swept] == [held_id]
            assert (await service.balance("g")).guild.reserved == 0
        finally:
            await service.close()

    asyncio.run(scenario())


def test_owner_liveness_rules() -> None:
    me = current_owner()
    assert me.pid == os.getpid()
    assert not owner_gone(me, me)
    assert not owner_gone(Owner(host=None, pid=None, started=None), me)
    assert not owner_gone(Owner(host="elsewhere/boot", pid=1, started="1"), me)
    # A pid that now belongs to a process started at another time was reused.
    if me.started is not None:
        assert owner_gone(Owner(host=me.host, pid=me.pid, started="1"), me)
    finished = subprocess.run([sys.executable, "-c", "pass"], check=True)
    assert finished.returncode == 0
    # Find a pid that is not running; pids are not reused this quickly.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    time.sleep(0.01)
    assert owner_gone(Owner(host=me.host, pid=dead.pid, started="0"), me)
