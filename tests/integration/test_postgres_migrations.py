"""PostgreSQL migrations: one numbered sequence with SQLite's, applied once, atomically,
and ``python -m bot migrate`` on either backend."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiosqlite
import asyncpg  # type: ignore[import-untyped]
import pytest

from bot.migrate import (
    MIGRATIONS_DIR,
    POSTGRES_MIGRATIONS_DIR,
    apply_migrations,
    apply_postgres_migrations,
    describe_database,
    load_migrations,
    pg_applied_versions,
)

ROOT = Path(__file__).resolve().parents[2]


def test_both_backends_share_one_numbered_sequence() -> None:
    sqlite = [(m.version, m.name) for m in load_migrations(MIGRATIONS_DIR)]
    postgres = [(m.version, m.name) for m in load_migrations(POSTGRES_MIGRATIONS_DIR)]
    assert sqlite == postgres


def test_describe_database_hides_credentials() -> None:
    url = "postgresql://bot:pa%40ss@db.internal:6543/ledger?sslmode=require"
    assert describe_database(url) == "PostgreSQL database ledger on db.internal:6543"
    assert describe_database("postgresql:///ledger") == (
        "PostgreSQL database ledger on the local socket"
    )
    assert describe_database(None, Path("data/bot.db")) == "SQLite file data/bot.db"


async def test_schemas_match_table_for_table(pg_url: str, tmp_path: Path) -> None:
    """What migrate-data relies on: the same tables with the same columns."""
    async with aiosqlite.connect(tmp_path / "db.sqlite", isolation_level=None) as sqlite:
        await apply_migrations(sqlite)
        names = await sqlite.execute_fetchall(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
        sqlite_tables = {}
        for (name,) in names:
            columns = await sqlite.execute_fetchall(f"PRAGMA table_info({name})")
            sqlite_tables[name] = [column[1] for column in columns]
    conn = await asyncpg.connect(pg_url)
    try:
        await apply_postgres_migrations(conn)
        rows = await conn.fetch(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"
        )
    finally:
        await conn.close()
    pg_tables: dict[str, list[str]] = {}
    for row in rows:
        pg_tables.setdefault(row["table_name"], []).append(row["column_name"])
    # quota_locks: PostgreSQL's row locks stand in for SQLite's file lock.
    assert pg_tables.pop("quota_locks") == ["scope"]
    assert pg_tables == sqlite_tables


async def test_postgres_migrations_apply_once(pg_url: str) -> None:
    conn = await asyncpg.connect(pg_url)
    try:
        every = [m.version for m in load_migrations(POSTGRES_MIGRATIONS_DIR)]
        assert await apply_postgres_migrations(conn, upto=1) == [1]
        assert await apply_postgres_migrations(conn) == every[1:]
        assert await apply_postgres_migrations(conn) == []
        assert await pg_applied_versions(conn) == every
    finally:
        await conn.close()


async def test_processes_starting_together_apply_each_migration_once(pg_url: str) -> None:
    conns = [await asyncpg.connect(pg_url) for _ in range(5)]
    try:
        results = await asyncio.gather(*(apply_postgres_migrations(c) for c in conns))
        applied = sorted(v for result in results for v in result)
        assert applied == [m.version for m in load_migrations(POSTGRES_MIGRATIONS_DIR)]
    finally:
        for conn in conns:
            await conn.close()


async def test_failed_postgres_migration_leaves_nothing_behind(pg_url: str, tmp_path: Path) -> None:
    (tmp_path / "001_first.sql").write_text("CREATE TABLE a (x INTEGER);\n")
    (tmp_path / "002_broken.sql").write_text(
        "CREATE TABLE b (x INTEGER);\nINSERT INTO no_such_table VALUES (1);\n"
    )
    conn = await asyncpg.connect(pg_url)
    try:
        with pytest.raises(asyncpg.UndefinedTableError):
            await apply_postgres_migrations(conn, directory=tmp_path)
        assert await pg_applied_versions(conn) == [1]
        assert await conn.fetchval("SELECT to_regclass('a') IS NOT NULL")
        assert not await conn.fetchval("SELECT to_regclass('b') IS NOT NULL")
    finally:
        await conn.close()


def run_bot(
    tmp_path: Path, *argv: str, database_url: str | None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["PYTHONPATH"] = str(ROOT)
    env["DATA_DIR"] = str(tmp_path / "data")
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "bot", *argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_migrate_command_on_sqlite(tmp_path: Path) -> None:
    first = run_bot(tmp_path, "migrate", database_url=None)
    assert first.returncode == 0, first.stderr
    names = [m.name for m in load_migrations(MIGRATIONS_DIR)]
    assert f"database: SQLite file {tmp_path / 'data' / 'bot.db'}" in first.stdout
    assert [f"applied {name}" for name in names] == [
        line for line in first.stdout.splitlines() if line.startswith("applied")
    ]
    again = run_bot(tmp_path, "migrate", database_url=None)
    assert again.returncode == 0
    assert "nothing to apply" in again.stdout
    assert f"schema version {len(names)}" in again.stdout


def test_migrate_command_on_postgres_never_prints_the_password(pg_url: str, tmp_path: Path) -> None:
    parts = urlsplit(pg_url)
    secret = parts.password
    url = pg_url
    if secret is None:
        # CI's server trusts local connections and ignores a password; it is in
        # the URL all the same and must appear nowhere.
        secret = "not-a-real-secret"
        host = f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)
        url = urlunsplit(parts._replace(netloc=f"{parts.username or 'root'}:{secret}@{host}"))
    first = run_bot(tmp_path, "migrate", database_url=url)
    assert first.returncode == 0, first.stderr
    assert "database: PostgreSQL database" in first.stdout
    assert "applied 001_quota" in first.stdout
    again = run_bot(tmp_path, "migrate", database_url=url)
    assert "nothing to apply" in again.stdout
    for output in (first.stdout, first.stderr, again.stdout, again.stderr):
        assert secret not in output
    assert not (tmp_path / "data" / "bot.db").exists()


def test_migrate_command_reports_an_unreachable_server(tmp_path: Path) -> None:
    result = run_bot(
        tmp_path, "migrate", database_url="postgresql://bot:hunter22@127.0.0.1:1/ledger"
    )
    assert result.returncode == 3
    assert "cannot connect to PostgreSQL database ledger on 127.0.0.1:1" in result.stderr
    assert "hunter22" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
