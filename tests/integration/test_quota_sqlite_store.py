"""The SQLite store runs each transaction whole in its worker thread."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

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
