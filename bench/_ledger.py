"""Ledger throughput: reserve+settle pairs per second, the bot's ledger against plain sqlite3.

``python -m bench._ledger PAIRS CALLERS`` prints one JSON line. Both sides get a
fresh database file with the bot's own schema and connection settings (WAL,
synchronous=NORMAL):

* bot: ``QuotaService.reserve`` then ``settle`` through ``open_ledger``, from
  CALLERS concurrent tasks (one member each) until PAIRS pairs are done;
* baseline: one plain ``sqlite3`` loop doing the same two writes per pair (the
  INSERT of a reservation, the UPDATE that settles it), each in its own
  ``BEGIN IMMEDIATE`` transaction, without the balance checks.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
import sqlite3
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

GUILD = "100000000000000001"


def _settings(data_dir: Path) -> Any:
    from bot.config import Settings

    return Settings(
        _env_file=None,
        data_dir=data_dir,
        default_pool_credits=1_000_000_000,
        default_user_allowance="unlimited",
        max_jobs_in_flight_per_user=50,
    )


async def bot_pairs(data_dir: Path, pairs: int, callers: int) -> float:
    from bot.quota import open_ledger

    async with open_ledger(_settings(data_dir), sweep=False) as ledger:
        counter = itertools.count()

        async def caller(user: str) -> None:
            while (n := next(counter)) < pairs:
                reservation = await ledger.reserve(
                    GUILD,
                    user,
                    (),
                    1,
                    f"bench-{n}",
                    channel_id="200000000000000001",
                    job_id=uuid.uuid4().hex,
                    prompt="a red fox",
                    mode="text",
                )
                await ledger.settle(reservation, 1)

        started = time.perf_counter()
        await asyncio.gather(*(caller(str(300000000000000000 + i)) for i in range(callers)))
        return pairs / (time.perf_counter() - started)


async def make_schema(data_dir: Path) -> Path:
    from bot.quota import open_ledger

    settings = _settings(data_dir)
    async with open_ledger(settings, sweep=False):
        pass
    return Path(settings.sqlite_path)


def plain_pairs(path: Path, pairs: int) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    host, pid = socket.gethostname(), os.getpid()
    period = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0).isoformat()
    started = time.perf_counter()
    for n in range(pairs):
        stamp = datetime.now(UTC).isoformat()
        reservation = uuid.uuid4().hex
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "INSERT INTO quota_entries (reservation_id, guild_id, user_id, channel_id, job_id,"
            " idempotency_key, mode, prompt, cost_reserved, state, period_start, created_at,"
            " updated_at, owner_host, owner_pid, owner_started)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'reserved', ?, ?, ?, ?, ?, ?)",
            (
                reservation,
                GUILD,
                str(300000000000000000 + n % 200),
                "200000000000000001",
                uuid.uuid4().hex,
                f"bench-{n}",
                "text",
                "a red fox",
                1,
                period,
                stamp,
                stamp,
                host,
                pid,
                stamp,
            ),
        )
        conn.execute("COMMIT")
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "UPDATE quota_entries SET state = ?, cost_settled = ?, reason = ?, updated_at = ?"
            " WHERE reservation_id = ? AND state = 'reserved'",
            ("settled", 1, None, datetime.now(UTC).isoformat(), reservation),
        )
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return pairs / elapsed


async def main(pairs: int, callers: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-ledger-") as tmp:
        root = Path(tmp)
        bot_rate = await bot_pairs(root / "bot", pairs, callers)
        path = await make_schema(root / "plain")
        plain_rate = plain_pairs(path, pairs)
    print(json.dumps({"bot": bot_rate, "baseline": plain_rate}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
