"""The SQLite store runs each transaction whole in its worker thread."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Awaitable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.errors import QuotaRefused
from bot.quota.sqlite_store import SqliteLedgerStore, SqliteTx


async def test_body_awaiting_the_event_loop_is_rolled_back(tmp_path: Path) -> None:
    store = SqliteLedgerStore(tmp_path / "db.sqlite")
    await store.open()
    try:
        never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def body(tx: SqliteTx) -> None:
            await tx.max_entry_id()
            await never

        with pytest.raises(RuntimeError):
            await store.write(body)
        # The connection is out of the transaction: the next one works.
        assert await store.read(lambda tx: tx.max_entry_id()) == 0
    finally:
        await store.close()


async def test_cancelled_caller_leaves_no_open_transaction(tmp_path: Path) -> None:
    store = SqliteLedgerStore(tmp_path / "db.sqlite")
    await store.open()
    try:
        tasks = [asyncio.create_task(store.write(lambda tx: tx.max_entry_id())) for _ in range(50)]
        await asyncio.sleep(0)
        for task in tasks[::2]:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert await store.write(lambda tx: tx.max_entry_id()) == 0
    finally:
        await store.close()


async def test_queued_bodies_share_a_commit_but_fail_alone(tmp_path: Path) -> None:
    """A burst of transactions runs in one commit; a refusal undoes only its own body,
    and a caller cancelled before its turn never runs at all."""
    store = SqliteLedgerStore(tmp_path / "db.sqlite")
    await store.open()
    try:
        now = datetime.now(UTC)
        holding, release = threading.Event(), threading.Event()

        def hold_the_worker(tx: SqliteTx) -> Awaitable[None]:
            # Runs synchronously in the worker thread: everything queued behind
            # it is then taken as one batch.
            holding.set()
            release.wait(timeout=10)
            return tx.lock()

        async def grant(tx: SqliteTx, n: int) -> int:
            made = await tx.add_grant("g", f"u{n}", n, now, "mod", None, now)
            if n % 3 == 0:
                raise QuotaRefused(f"body {n} refused", limit="test")
            return made.credits

        commits_before = store.commits
        blocker = asyncio.create_task(store.write(hold_the_worker))
        assert await asyncio.to_thread(holding.wait, 10)
        tasks = {
            n: asyncio.create_task(store.write(functools.partial(grant, n=n))) for n in range(1, 13)
        }
        queue = store._open_worker()._queue
        for _ in range(100):  # until every body is queued behind the blocker
            if queue.qsize() == len(tasks):
                break
            await asyncio.sleep(0)
        assert queue.qsize() == len(tasks)
        tasks[5].cancel()
        tasks[7].cancel()
        await asyncio.wait([tasks[5], tasks[7]])
        await asyncio.sleep(0)  # the cancellation reaches the queued bodies
        release.set()
        await blocker
        results = dict(
            zip(tasks, await asyncio.gather(*tasks.values(), return_exceptions=True), strict=True)
        )

        for n, outcome in results.items():
            if n in (5, 7):
                assert isinstance(outcome, asyncio.CancelledError)
            elif n % 3 == 0:
                assert isinstance(outcome, QuotaRefused)
                assert str(outcome) == f"body {n} refused"
            else:
                assert outcome == n
        # The blocker's commit, then one for all ten bodies that ran.
        assert store.commits == commits_before + 2
        kept = await store.read(lambda tx: tx.grants("g"))
        assert sorted(g.credits for g in kept) == [1, 2, 4, 8, 10, 11]
    finally:
        await store.close()
