"""Schema migrations: ``bot/migrations/NNN_name.sql`` for SQLite and
``bot/migrations/postgres/NNN_name.sql`` for PostgreSQL.

The two folders hold one numbered sequence: the same numbers and names, each
file doing the same thing in its dialect (a test checks that they match), so a
version number means the same schema on either database and
``python -m bot migrate-data`` can copy one into the other.

Files are applied in number order, each in its own transaction together with its
row in ``schema_migrations``, so a crash leaves either all of a migration or none
of it, and several processes starting at once apply each file exactly once (the
second one waits for the lock, then sees the row): ``BEGIN IMMEDIATE`` in SQLite,
a transaction-level advisory lock in PostgreSQL. A database from an older
version therefore upgrades in place.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import aiosqlite

from bot.errors import BotError

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
POSTGRES_MIGRATIONS_DIR = MIGRATIONS_DIR / "postgres"

# An arbitrary advisory-lock key ("imgbotmg"): taken while migrating, so that
# processes starting together apply each PostgreSQL migration once.
PG_MIGRATION_LOCK = 0x696D67626F746D67

_NAME = re.compile(r"^(\d{3})_[A-Za-z0-9_]+\.sql$")

logger = logging.getLogger("bot.migrate")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Read and order the migration files; refuse gaps and duplicate numbers.

    Blocking file reads: call it from a thread when an event loop is running.
    """
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if match is None:
            raise ValueError(f"migration file name not NNN_name.sql: {path.name}")
        version = int(match.group(1))
        if version in found:
            raise ValueError(f"two migrations numbered {version:03d}: {path.name}")
        found[version] = Migration(version, path.stem, path.read_text(encoding="utf-8"))
    versions = sorted(found)
    if versions != list(range(1, len(versions) + 1)):
        raise ValueError(f"migration numbers must run 001, 002, ... without gaps: {versions}")
    return [found[v] for v in versions]


def split_statements(sql: str) -> list[str]:
    """Split a script into statements.

    ``executescript`` would commit behind our back, which breaks applying a file
    and its ``schema_migrations`` row atomically, so statements run one by one.
    """
    statements: list[str] = []
    buffer = ""
    for line in sql.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statement = buffer.strip()
            if statement and statement != ";":
                statements.append(statement)
            buffer = ""
    rest = "\n".join(
        line for line in buffer.splitlines() if line.strip() and not line.strip().startswith("--")
    )
    if rest.strip():
        raise ValueError(f"incomplete SQL statement at end of migration: {rest.strip()[:60]!r}")
    return statements


BUSY_TIMEOUT_MS = 30_000

# Per connection, after WAL. NORMAL in WAL mode survives a crash of the process
# (not a power cut) and spares an fsync per transaction.
CONNECTION_PRAGMAS = ("PRAGMA synchronous = NORMAL", "PRAGMA foreign_keys = ON")


async def prepare_connection(
    conn: aiosqlite.Connection, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS
) -> None:
    """Settings every connection to the shared file needs, WAL first of all.

    Use it for any connection to the bot's database: several processes (the
    bot, an operator's CLI) open the same file, possibly at the same moment.
    """
    # busy_timeout first: switching to WAL needs a lock another process may be
    # holding at this moment.
    await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    await enable_wal(conn, patience=busy_timeout_ms / 1000)
    for pragma in CONNECTION_PRAGMAS:
        await conn.execute(pragma)


async def enable_wal(conn: aiosqlite.Connection, *, patience: float = 30.0) -> None:
    """Put the file in WAL mode.

    Switching a new file to WAL needs an exclusive lock, and SQLite reports
    "database is locked" at once, without calling the busy handler, when another
    process is opening the same file at that moment: so retry for a while.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    delay = 0.01
    while True:
        try:
            rows = list(await conn.execute_fetchall("PRAGMA journal_mode = WAL"))
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or loop.time() > deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
            continue
        mode = str(rows[0][0]).lower() if rows else ""
        if mode != "wal":
            logger.warning("SQLite journal mode is %r, not WAL; is the file system local?", mode)
        return


async def applied_versions(conn: aiosqlite.Connection) -> list[int]:
    rows = await conn.execute_fetchall(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
    )
    if not list(rows):
        return []
    rows = await conn.execute_fetchall("SELECT version FROM schema_migrations ORDER BY version")
    return [int(row[0]) for row in rows]


async def apply_migrations(
    conn: aiosqlite.Connection,
    *,
    directory: Path = MIGRATIONS_DIR,
    upto: int | None = None,
    migrations: list[Migration] | None = None,
) -> list[int]:
    """Apply pending migrations (up to ``upto``) and return the versions applied.

    ``conn`` must be in autocommit mode (``isolation_level=None``) so that the
    explicit ``BEGIN IMMEDIATE`` here is the only transaction.
    """
    if migrations is None:
        migrations = await asyncio.to_thread(load_migrations, directory)
    applied: list[int] = []
    for migration in migrations:
        if upto is not None and migration.version > upto:
            break
        statements = split_statements(migration.sql)
        await conn.execute("BEGIN IMMEDIATE")
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INTEGER PRIMARY KEY,"
                " name TEXT NOT NULL,"
                " applied_at TEXT NOT NULL)"
            )
            rows = await conn.execute_fetchall(
                "SELECT 1 FROM schema_migrations WHERE version = ?", (migration.version,)
            )
            if list(rows):
                await conn.execute("COMMIT")
                continue
            for statement in statements:
                await conn.execute(statement)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.name, datetime.now(UTC).isoformat()),
            )
            await conn.execute("COMMIT")
        except BaseException:
            await conn.execute("ROLLBACK")
            raise
        logger.info("applied migration %s", migration.name)
        applied.append(migration.version)
    return applied


# --- PostgreSQL ------------------------------------------------------------------


class DatabaseUnavailable(BotError):
    """The configured database cannot be reached or refused us."""


def is_postgres_url(url: str | None) -> bool:
    return url is not None and url.startswith("postgresql://")


def describe_database(url: str | None, sqlite_path: Path | None = None) -> str:
    """Where a database is, for logs and output: never the user or password."""
    if is_postgres_url(url):
        assert url is not None
        try:
            parts = urlsplit(url)
            host = parts.hostname or "the local socket"
            port = parts.port
        except ValueError:
            return "a PostgreSQL database (DATABASE_URL could not be parsed)"
        name = unquote(parts.path.lstrip("/")) or "(default database)"
        where = f"{host}:{port}" if port else host
        return f"PostgreSQL database {name} on {where}"
    if url is not None and url.startswith("sqlite:///"):
        return f"SQLite file {url.removeprefix('sqlite:///')}"
    return f"SQLite file {sqlite_path}" if sqlite_path is not None else "SQLite"


@contextmanager
def pg_errors(url: str) -> Iterator[None]:
    """Turn failures to connect into ``DatabaseUnavailable`` with a message that
    names the server but never the user's password."""
    import asyncpg  # type: ignore[import-untyped]

    try:
        yield
    except ValueError as exc:
        # asyncpg's message may quote parts of the URL, password included.
        raise DatabaseUnavailable(
            f"DATABASE_URL is not a usable postgresql:// URL ({describe_database(url)})"
        ) from exc
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise DatabaseUnavailable(f"cannot connect to {describe_database(url)}: {exc}") from exc


async def pg_connect(url: str, **kwargs: Any) -> Any:
    """One asyncpg connection (see ``pg_errors``)."""
    import asyncpg

    with pg_errors(url):
        return await asyncpg.connect(url, **kwargs)


async def pg_applied_versions(conn: Any) -> list[int]:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return []
    rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
    return [int(row["version"]) for row in rows]


async def apply_postgres_migrations(
    conn: Any,
    *,
    directory: Path = POSTGRES_MIGRATIONS_DIR,
    upto: int | None = None,
    migrations: list[Migration] | None = None,
) -> list[int]:
    """Apply pending migrations to the schema first on ``conn``'s search_path
    (up to ``upto``) and return the versions applied."""
    if migrations is None:
        migrations = await asyncio.to_thread(load_migrations, directory)
    applied: list[int] = []
    for migration in migrations:
        if upto is not None and migration.version > upto:
            break
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", PG_MIGRATION_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INTEGER PRIMARY KEY,"
                " name TEXT NOT NULL,"
                " applied_at TIMESTAMPTZ NOT NULL)"
            )
            done = await conn.fetchval(
                "SELECT 1 FROM schema_migrations WHERE version = $1", migration.version
            )
            if done:
                continue
            # No arguments: asyncpg sends the file as one simple query, which
            # may hold several statements, all inside this transaction.
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                datetime.now(UTC),
            )
        logger.info("applied migration %s", migration.name)
        applied.append(migration.version)
    return applied


@dataclass(frozen=True, slots=True)
class MigrationReport:
    database: str
    applied: list[Migration]
    current: int


async def migrate_database(url: str | None, sqlite_path: Path) -> MigrationReport:
    """Bring the database ``url`` names (SQLite at ``sqlite_path`` when it is
    not PostgreSQL) up to date."""
    postgres = is_postgres_url(url)
    directory = POSTGRES_MIGRATIONS_DIR if postgres else MIGRATIONS_DIR
    migrations = await asyncio.to_thread(load_migrations, directory)
    by_version = {m.version: m for m in migrations}
    if postgres:
        assert url is not None
        conn = await pg_connect(url)
        try:
            versions = await apply_postgres_migrations(conn, migrations=migrations)
            current = max(await pg_applied_versions(conn), default=0)
        finally:
            await conn.close()
    else:
        await asyncio.to_thread(sqlite_path.parent.mkdir, parents=True, exist_ok=True)
        async with aiosqlite.connect(sqlite_path, isolation_level=None) as sqlite:
            await prepare_connection(sqlite)
            versions = await apply_migrations(sqlite, migrations=migrations)
            current = max(await applied_versions(sqlite), default=0)
    return MigrationReport(
        database=describe_database(url, sqlite_path),
        applied=[by_version[v] for v in versions],
        current=current,
    )
