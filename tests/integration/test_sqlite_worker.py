"""The process's one SQLite connection per file, shared by the ledger and the job store."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from bot import sqlite_worker
from bot.jobstore import JobStore
from bot.quota.sqlite_store import SqliteLedgerStore


async def test_ledger_and_job_store_share_the_files_worker(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite"
    ledger = SqliteLedgerStore(path)
    await ledger.open()
    try:
        async with JobStore.connect(path) as jobs:
            (worker,) = [w for key, w in sqlite_worker._shared.items() if key == path.resolve()]
            assert worker._users == 2
            before = ledger.commits
            # Queued together, the journal's and the ledger's writes share commits.
            await asyncio.gather(
                *(jobs.allow_channel("g", f"c{n}", "mod") for n in range(20)),
                *(ledger.write(lambda tx: tx.max_entry_id()) for _ in range(20)),
            )
            assert ledger.commits - before < 40
            assert await jobs.allowed_channels("g") == {f"c{n}" for n in range(20)}
        assert worker._users == 1
    finally:
        await ledger.close()
    assert path.resolve() not in sqlite_worker._shared
    with pytest.raises(RuntimeError, match="stopped"):
        await worker.write(lambda conn: conn.execute("SELECT 1"))


async def test_a_failed_commit_fails_every_body_it_carried(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite"
    worker = await sqlite_worker.acquire(path)
    try:
        await worker.write(lambda conn: conn.execute("CREATE TABLE t (x INTEGER PRIMARY KEY)"))
        await worker.write(
            lambda conn: conn.execute(
                "CREATE TABLE child (p INTEGER REFERENCES t (x) DEFERRABLE INITIALLY DEFERRED)"
            )
        )
        holding, release = threading.Event(), threading.Event()

        def hold(conn: sqlite3.Connection) -> None:
            holding.set()
            release.wait(10)

        blocker = asyncio.create_task(worker.write(hold))
        assert await asyncio.to_thread(holding.wait, 10)
        # Queued behind the blocker, these two share a commit. The deferred
        # foreign key is checked only at COMMIT, so the violation fails the whole
        # batch, the innocent body included, and nothing of either is kept.
        innocent = asyncio.create_task(
            worker.write(lambda conn: conn.execute("INSERT INTO t VALUES (1)").rowcount)
        )
        guilty = asyncio.create_task(
            worker.write(lambda conn: conn.execute("INSERT INTO child VALUES (99)").rowcount)
        )
        await asyncio.sleep(0)
        release.set()
        await blocker
        results = await asyncio.gather(innocent, guilty, return_exceptions=True)
        assert all(isinstance(r, sqlite3.IntegrityError) for r in results), results
        count = await worker.read(lambda conn: conn.execute("SELECT COUNT(*) FROM t").fetchone())
        assert tuple(count) == (0,)
    finally:
        await sqlite_worker.release(worker)


async def test_the_log_is_checkpointed_in_the_background_not_by_a_commit(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite"
    async with JobStore.connect(path) as jobs:
        (worker,) = [w for key, w in sqlite_worker._shared.items() if key == path.resolve()]
        # A commit would checkpoint inline only far past SQLite's usual 1000 pages.
        threshold = await worker.read(
            lambda conn: conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        )
        assert threshold == sqlite_worker.BACKSTOP_CHECKPOINT_PAGES
        for n in range(50):
            await jobs.allow_channel("g", f"c{n}", "mod")
        written = worker.checkpoints
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10 * sqlite_worker.CHECKPOINT_INTERVAL
        while worker.checkpoints <= written:
            assert loop.time() < deadline, "no background checkpoint ran"
            await asyncio.sleep(0.02)
        busy, log_pages, copied = worker.last_checkpoint or (1, 0, 0)
        assert busy == 0 and log_pages > 0 and copied == log_pages
    assert not worker._checkpointer.is_alive()
