"""``python -m bot migrate-data``: an SQLite database written by this release,
copied into PostgreSQL with ids and balances intact."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiosqlite
import asyncpg  # type: ignore[import-untyped]

from bot.jobs import Job
from bot.jobstore import JobStore
from bot.models import GenerationRequest, Mode, Requester
from bot.quota import Balances, QuotaPolicy, QuotaService, ThresholdEvent, store_for_url
from tests.conftest import sqlite_db

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2024, 6, 12, 15, 0, tzinfo=UTC)
POLICY = QuotaPolicy(default_pool_credits=40, default_user_allowance=10, reservation_timeout=3600)
MEMBERS = [("g1", "alice", ()), ("g1", "bob", ("vip",)), ("g2", "carol", ()), ("g3", "dan", ())]


def service(url: str) -> QuotaService:
    return QuotaService(store_for_url(url), POLICY, now=lambda: NOW)


async def write_sqlite(path: Path) -> None:
    """Ledger activity of every kind, and job-store rows, by the current code."""
    ledger = service(f"sqlite:///{path}")
    await ledger.start()
    try:
        await ledger.set_pool("g1", 30, "week", "Europe/Paris")
        await ledger.set_role_limit("g1", "vip", None)
        await ledger.set_user_limit("g2", "carol", 6)
        await ledger.set_user_default("g3", 4)
        a = await ledger.reserve("g1", "alice", [], 5, "i1", channel_id="c1", job_id="job-1")
        await ledger.settle(a, 4)
        b = await ledger.reserve("g1", "bob", ["vip"], 12, "i2", prompt="a ship", mode="text")
        await ledger.refund(b, "provider failed")
        await ledger.reserve("g1", "bob", ["vip"], 20, "i3")  # held: pool past 80 %
        c = await ledger.reserve("g2", "carol", [], 3, "i4")
        await ledger.settle(c, 3)
        await ledger.reset("g2", "carol", by="mod", reason="sorry")
        await ledger.reserve("g2", "carol", [], 2, "i5")
        await ledger.grant("g1", 5, user_id="alice", by="mod", reason="contest")
        await ledger.grant("g3", 7, by="mod")
        await ledger.ban("g3", "dan", NOW + timedelta(days=1), "spam", by="mod")
    finally:
        await ledger.close()
    async with JobStore.connect(path) as jobs:
        for n in range(3):
            request = GenerationRequest(
                mode=Mode.TEXT,
                prompt=f"picture {n}",
                seed=2**40 + n,
                requester=Requester(guild_id="g1", user_id="alice", channel_id="c1"),
                idempotency_key=f"interaction-{n}",
            )
            assert await jobs.record_accepted(f"job-{n}", request, "modelslab", 1)
            if n == 2:
                job = Job(f"job-{n}", request, request, "modelslab", 1, 1, started_at=0.0)
                await jobs.record(job, "failed", error="provider down")
        await jobs.allow_channel("g1", "c1", "mod")
        await jobs.allow_channel("g1", "c2", "mod")
        await jobs.set_log_channel("g1", "c9")


async def snapshot(url: str) -> tuple[list[Balances], str]:
    ledger = service(url)
    await ledger.start()
    try:
        balances = [await ledger.balance(g, u, roles) for g, u, roles in MEMBERS]
        return balances, await ledger.export_csv()
    finally:
        await ledger.close()


JOB_TABLES = {"jobs": "id", "guild_channels": "guild_id, channel_id", "guild_settings": "guild_id"}
Rows = dict[str, list[tuple[object, ...]]]


async def sqlite_job_rows(path: Path) -> Rows:
    async with aiosqlite.connect(path) as db:
        return {
            table: [
                tuple(row)
                for row in await db.execute_fetchall(f"SELECT * FROM {table} ORDER BY {order}")
            ]
            for table, order in JOB_TABLES.items()
        }


async def pg_job_rows(url: str) -> Rows:
    conn = await asyncpg.connect(url)
    try:
        return {
            table: [
                tuple(row) for row in await conn.fetch(f"SELECT * FROM {table} ORDER BY {order}")
            ]
            for table, order in JOB_TABLES.items()
        }
    finally:
        await conn.close()


def migrate_data(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["PYTHONPATH"] = str(ROOT)
    env["DATA_DIR"] = str(tmp_path / "data")
    return subprocess.run(
        [sys.executable, "-m", "bot", "migrate-data", *argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_sqlite_database_moves_to_postgres_with_balances_intact(
    pg_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "bot.db"
    await write_sqlite(path)
    sqlite_url = sqlite_db(path).url
    before, before_csv = await snapshot(sqlite_url)
    assert before[1].user is not None and before[1].user.limit is None  # the vip role
    assert before[0].guild.reserved == 20 and before[0].guild.used == 4

    result = migrate_data(tmp_path, "--from", sqlite_url, "--to", pg_url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"copied SQLite file {path} to PostgreSQL database ")
    counts = {line.split()[0]: int(line.split()[1]) for line in lines if line.startswith("  ")}
    assert counts["quota_entries"] == 5 and counts["quota_grants"] == 2
    assert (counts["jobs"], counts["guild_channels"], counts["guild_settings"]) == (3, 2, 1)
    assert lines[-1] == f"{sum(counts.values())} rows in {len(counts)} tables"

    after, after_csv = await snapshot(pg_url)
    assert after == before
    assert after_csv == before_csv
    jobs = await pg_job_rows(pg_url)
    assert jobs == await sqlite_job_rows(path)

    # The copy goes on where SQLite stopped: new ids follow the copied ones,
    # held reservations are still held, thresholds already sent stay sent.
    fired: list[ThresholdEvent] = []
    ledger = service(pg_url)

    async def record(event: ThresholdEvent) -> None:
        fired.append(event)

    ledger.on_threshold = record
    await ledger.start()
    try:
        reservation = await ledger.reserve("g1", "erin", [], 1, "i6")
        rows = list(csv.DictReader(io.StringIO(await ledger.export_csv())))
        new = next(row for row in rows if row["reservation_id"] == reservation.id)
        assert new["id"] == "6"
        # g1's pool passed 80 % before the move; that event is not sent again.
        assert fired == []
        assert (await ledger.balance("g1")).guild.reserved == 21
    finally:
        await ledger.close()


async def test_refuses_a_target_with_data_unless_forced(pg_url: str, tmp_path: Path) -> None:
    path = tmp_path / "bot.db"
    await write_sqlite(path)
    sqlite_url = sqlite_db(path).url
    assert migrate_data(tmp_path, "--from", sqlite_url, "--to", pg_url).returncode == 0

    again = migrate_data(tmp_path, "--from", sqlite_url, "--to", pg_url)
    assert again.returncode == 1
    assert "already holds data" in again.stderr and "--force" in again.stderr
    assert "Traceback" not in again.stderr

    forced = migrate_data(tmp_path, "--from", sqlite_url, "--to", pg_url, "--force")
    assert forced.returncode == 0, forced.stderr
    assert "replaced the earlier contents of" in forced.stdout
    balances, _ = await snapshot(pg_url)
    assert balances == (await snapshot(sqlite_url))[0]


def test_bad_arguments(tmp_path: Path) -> None:
    missing = migrate_data(
        tmp_path, "--from", f"sqlite:///{tmp_path / 'nope.db'}", "--to", "postgresql://x/y"
    )
    assert missing.returncode == 1 and "no SQLite database at" in missing.stderr
    no_target = migrate_data(tmp_path, "--from", f"sqlite:///{tmp_path / 'nope.db'}")
    assert no_target.returncode == 2 and "--to" in no_target.stderr
    not_sqlite = migrate_data(tmp_path, "--from", "postgresql://x/y", "--to", "postgresql://x/z")
    assert not_sqlite.returncode == 2 and "--from" in not_sqlite.stderr
