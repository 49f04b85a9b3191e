"""Numbered migrations: applied once, in order, atomically; old files upgrade in place."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import aiosqlite
import pytest

from bot.migrate import MIGRATIONS_DIR, apply_migrations, load_migrations, split_statements
from bot.quota import QuotaPolicy, QuotaService, SqliteLedgerStore


async def connect(path: Path) -> aiosqlite.Connection:
    conn = await aiosqlite.connect(path, isolation_level=None)
    conn.row_factory = sqlite3.Row
    return conn


async def versions(conn: aiosqlite.Connection) -> list[int]:
    rows = await conn.execute_fetchall("SELECT version FROM schema_migrations ORDER BY version")
    return [row[0] for row in rows]


def test_shipped_migrations_are_numbered_in_order() -> None:
    migrations = load_migrations(MIGRATIONS_DIR)
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert migrations[0].name == "001_quota"
    assert len(migrations) >= 2


async def test_migrations_apply_once(tmp_path: Path) -> None:
    conn = await connect(tmp_path / "db.sqlite")
    try:
        all_versions = [m.version for m in load_migrations()]
        assert await apply_migrations(conn) == all_versions
        assert await apply_migrations(conn) == []
        assert await versions(conn) == all_versions
    finally:
        await conn.close()


async def test_older_database_upgrades_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    conn = await connect(path)
    try:
        assert await apply_migrations(conn, upto=1) == [1]
        # A reservation written by the old version, before owners were recorded.
        await conn.execute(
            "INSERT INTO quota_entries (reservation_id, guild_id, user_id, idempotency_key,"
            " cost_reserved, state, period_start, created_at, updated_at) VALUES"
            " ('r1', 'g', 'u', 'k1', 5, 'reserved', ?, ?, ?)",
            ("2024-06-12T00:00:00.000000Z",) + ("2024-06-12T15:00:00.000000Z",) * 2,
        )
    finally:
        await conn.close()

    store = SqliteLedgerStore(path)
    service = QuotaService(
        store,
        QuotaPolicy(default_pool_credits=10),
        now=lambda: datetime(2024, 6, 12, 15, 5, tzinfo=UTC),
    )
    swept = await service.start()
    try:
        # Unknown owner: only the deadline may refund it, and it has not passed.
        assert swept == []
        assert (await service.balance("g")).guild.reserved == 5
        info = await service.job_info("k1")
        assert info is not None and info.user_id == "u"
        conn = store.connection
        assert await versions(conn) == [m.version for m in load_migrations()]
        columns = {
            row[1] for row in await conn.execute_fetchall("PRAGMA table_info(quota_entries)")
        }
        assert {"owner_host", "owner_pid", "owner_started"} <= columns
    finally:
        await service.close()


async def test_failed_migration_leaves_nothing_behind(tmp_path: Path) -> None:
    directory = tmp_path / "migrations"
    directory.mkdir()
    (directory / "001_first.sql").write_text("CREATE TABLE a (x INTEGER);\n")
    (directory / "002_broken.sql").write_text(
        "CREATE TABLE b (x INTEGER);\nINSERT INTO no_such_table VALUES (1);\n"
    )
    conn = await connect(tmp_path / "db.sqlite")
    try:
        with pytest.raises(sqlite3.OperationalError):
            await apply_migrations(conn, directory=directory)
        assert await versions(conn) == [1]
        tables = {row[0] for row in await conn.execute_fetchall("SELECT name FROM sqlite_master")}
        assert "a" in tables and "b" not in tables
    finally:
        await conn.close()


def test_load_migrations_refuses_gaps_and_bad_names(tmp_path: Path) -> None:
    (tmp_path / "001_a.sql").write_text("SELECT 1;")
    (tmp_path / "003_c.sql").write_text("SELECT 1;")
    with pytest.raises(ValueError, match="without gaps"):
        load_migrations(tmp_path)
    (tmp_path / "oops.sql").write_text("SELECT 1;")
    with pytest.raises(ValueError, match="NNN_name"):
        load_migrations(tmp_path)


def test_split_statements() -> None:
    sql = (
        "-- a comment; with a semicolon\n"
        "CREATE TABLE t (x TEXT DEFAULT 'a;b');\n"
        "\n"
        "CREATE TRIGGER tr AFTER INSERT ON t BEGIN\n"
        "  UPDATE t SET x = 'c';\n"
        "END;\n"
        "-- trailing comment\n"
    )
    statements = split_statements(sql)
    assert len(statements) == 2
    assert statements[1].startswith("CREATE TRIGGER") and statements[1].endswith("END;")
    with pytest.raises(ValueError, match="incomplete"):
        split_statements("CREATE TABLE t (x TEXT)")
