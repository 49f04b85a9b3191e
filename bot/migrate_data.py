"""``python -m bot migrate`` and ``python -m bot migrate-data``.

``migrate`` brings the configured database (``DATABASE_URL``) up to the schema
of this release and says which migrations it applied.

``migrate-data`` copies an SQLite database written by this release into
PostgreSQL: every table the migrations made (the quota ledger's and the job
store's), row for row with the same ids, in one PostgreSQL transaction, so a
failure leaves the target as it was. The two schemas come from the same
numbered migrations, so tables and columns match by name; values are converted
by the target column's type (SQLite keeps the ledger's times as text). Stop the
bot first: rows written to SQLite during the copy would not be copied.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg  # type: ignore[import-untyped]

from bot.config import Settings
from bot.errors import BotError
from bot.migrate import (
    MIGRATIONS_DIR,
    DatabaseUnavailable,
    applied_versions,
    apply_postgres_migrations,
    describe_database,
    is_postgres_url,
    load_migrations,
    migrate_database,
    pg_connect,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

# Bookkeeping of each database's own migrations, not data.
# The pool totals are not copied: the target's triggers rebuild them from the
# entries as they arrive.
_NOT_COPIED = frozenset({"schema_migrations", "quota_pool_totals"})
_REBUILT = ("quota_pool_totals",)
_BATCH = 2000


class MigrateDataError(BotError):
    """The copy cannot be done as asked; nothing was written."""


class MigrateUsageError(MigrateDataError):
    """A bad argument: exit status 2."""


@dataclass
class CopyReport:
    source: str
    target: str
    counts: dict[str, int] = field(default_factory=dict)
    replaced: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sqlite_path(url: str) -> Path:
    if not url.startswith("sqlite:///"):
        raise MigrateUsageError("--from: must be sqlite:///PATH")
    return Path(url.removeprefix("sqlite:///"))


def _converter(table: str, column: str, data_type: str) -> Any:
    """A function from an SQLite value to what asyncpg's COPY wants for the
    target column's type."""

    def timestamp(value: Any) -> Any:
        if value is None or isinstance(value, datetime):
            return value
        try:
            parsed = datetime.fromisoformat(str(value))
        except ValueError:
            raise MigrateDataError(f"{table}.{column}: {value!r} is not an ISO-8601 time") from None
        # The ledger writes UTC ("...Z"); a time without an offset is UTC too.
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)

    def integer(value: Any) -> Any:
        if value is None or isinstance(value, int):
            return value
        try:
            return int(value)
        except (TypeError, ValueError):
            raise MigrateDataError(f"{table}.{column}: {value!r} is not a whole number") from None

    def text(value: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, bytes):
            return value.decode("utf-8", errors="replace")
        return str(value)

    if data_type == "timestamp with time zone":
        return timestamp
    if data_type in ("integer", "bigint", "smallint"):
        return integer
    if data_type == "text":
        return text
    return lambda value: value


async def _source_tables(src: aiosqlite.Connection) -> dict[str, list[str]]:
    rows = await src.execute_fetchall(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        " ORDER BY name"
    )
    tables: dict[str, list[str]] = {}
    for (name,) in rows:
        if name in _NOT_COPIED:
            continue
        columns = await src.execute_fetchall(f"PRAGMA table_info({_ident(name)})")
        tables[str(name)] = [str(column[1]) for column in columns]
    return tables


async def _target_columns(conn: Any) -> dict[str, dict[str, str]]:
    rows = await conn.fetch(
        "SELECT table_name, column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"
    )
    found: dict[str, dict[str, str]] = {}
    for row in rows:
        found.setdefault(row["table_name"], {})[row["column_name"]] = row["data_type"]
    return found


async def copy_sqlite_to_postgres(
    sqlite_path: Path, pg_url: str, *, force: bool = False
) -> CopyReport:
    """Copy every table of the SQLite database into the PostgreSQL one."""
    report = CopyReport(describe_database(None, sqlite_path), describe_database(pg_url))
    if not await asyncio.to_thread(sqlite_path.is_file):
        raise MigrateDataError(f"no SQLite database at {sqlite_path}")
    shipped = [m.version for m in await asyncio.to_thread(load_migrations, MIGRATIONS_DIR)]
    # Read-only: the source is never changed, not even migrated.
    uri = f"{(await asyncio.to_thread(sqlite_path.resolve)).as_uri()}?mode=ro"
    async with aiosqlite.connect(uri, uri=True, isolation_level=None) as src:
        versions = await applied_versions(src)
        if versions != shipped:
            raise MigrateDataError(
                f"{report.source} is at schema version {max(versions, default=0)}, this "
                f"release's is {max(shipped)}: run `python -m bot migrate` with "
                "DATABASE_URL=sqlite:///... on it first"
            )
        tables = await _source_tables(src)
        conn = await pg_connect(pg_url)
        try:
            await apply_postgres_migrations(conn)
            await _copy(src, conn, tables, report, force=force)
        except asyncpg.PostgresError as exc:
            raise MigrateDataError(f"{report.target}: {exc}") from exc
        finally:
            await conn.close()
    return report


async def _copy(
    src: aiosqlite.Connection,
    conn: Any,
    tables: dict[str, list[str]],
    report: CopyReport,
    *,
    force: bool,
) -> None:
    target = await _target_columns(conn)
    for table, columns in tables.items():
        if table not in target:
            raise MigrateDataError(f"table {table} has no counterpart in {report.target}")
        missing = [c for c in columns if c not in target[table]]
        if missing:
            raise MigrateDataError(
                f"{report.target}: table {table} lacks column(s) {', '.join(missing)}"
            )
    async with conn.transaction():
        for table in tables:
            if await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {_ident(table)})"):  # noqa: S608
                report.replaced.append(table)
        if report.replaced and not force:
            raise MigrateDataError(
                f"{report.target} already holds data (in {', '.join(report.replaced)}); "
                "use --force to replace it"
            )
        if report.replaced:
            names = ", ".join(_ident(table) for table in [*tables, *_REBUILT])
            await conn.execute(f"TRUNCATE {names} RESTART IDENTITY")
        # One read transaction: every table from the same moment.
        await src.execute("BEGIN")
        try:
            for table, columns in tables.items():
                report.counts[table] = await _copy_table(src, conn, table, columns, target[table])
        except asyncpg.PostgresError as exc:
            raise MigrateDataError(f"copying {table} failed: {exc}") from exc
        finally:
            await src.execute("ROLLBACK")
        await _restart_identities(conn, list(tables))


async def _copy_table(
    src: aiosqlite.Connection,
    conn: Any,
    table: str,
    columns: list[str],
    types: dict[str, str],
) -> int:
    convert = [_converter(table, c, types[c]) for c in columns]
    select = ", ".join(_ident(c) for c in columns)
    count = 0
    async with src.execute(f"SELECT {select} FROM {_ident(table)}") as cursor:  # noqa: S608
        while rows := await cursor.fetchmany(_BATCH):
            records = [
                tuple(f(value) for f, value in zip(convert, row, strict=True)) for row in rows
            ]
            await conn.copy_records_to_table(table, records=records, columns=columns)
            count += len(records)
    return count


async def _restart_identities(conn: Any, tables: list[str]) -> None:
    """Identity columns go on after the highest copied id, not from 1."""
    rows = await conn.fetch(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND is_identity = 'YES'"
        " AND table_name = ANY($1)",
        tables,
    )
    for row in rows:
        table, column = _ident(row["table_name"]), _ident(row["column_name"])
        await conn.execute(
            "SELECT setval(pg_get_serial_sequence($1, $2),"  # noqa: S608 - quoted identifiers
            f" COALESCE((SELECT MAX({column}) FROM {table}), 0) + 1, false)",
            table,
            row["column_name"],
        )


# --- the commands ------------------------------------------------------------------


def add_migrate_parsers(subparsers: Any) -> None:
    subparsers.add_parser(
        "migrate",
        help="bring the database (DATABASE_URL) up to date and say what was applied",
        description="Apply the pending schema migrations to the database DATABASE_URL names.",
    )
    copy = subparsers.add_parser(
        "migrate-data",
        help="copy an SQLite database into PostgreSQL",
        description="Copy every table of an SQLite database written by this release into "
        "PostgreSQL, ids and balances intact. Stop the bot first.",
    )
    copy.add_argument(
        "--from",
        dest="source",
        metavar="sqlite:///PATH",
        help="the SQLite database (default: the file DATA_DIR/DATABASE_URL names)",
    )
    copy.add_argument(
        "--to",
        dest="target",
        metavar="postgresql://...",
        help="the PostgreSQL database (default: DATABASE_URL, when it is postgresql://)",
    )
    copy.add_argument(
        "--force", action="store_true", help="replace the data of a target that is not empty"
    )


async def run_migrate_command(args: argparse.Namespace, settings: Settings) -> int:
    """Run ``migrate`` or ``migrate-data``; returns the exit status."""
    command: str = args.command
    try:
        if command == "migrate":
            return await _migrate(settings)
        return await _migrate_data(args, settings)
    except MigrateUsageError as exc:
        sys.stderr.write(f"{command}: {exc.user_message}\n")
        return EXIT_USAGE
    except DatabaseUnavailable as exc:
        # Told as `migrate` and the bot tell it (bot.startup), naming where the URL came from.
        from bot.startup import EXIT_UNAVAILABLE, ServiceUnavailable, database_error

        target = getattr(args, "target", None)
        url = target or settings.database_url or ""
        error = database_error(exc, url, "--to" if target else "DATABASE_URL")
        sys.stderr.write(f"{error.user_message}\n")
        return EXIT_UNAVAILABLE if isinstance(error, ServiceUnavailable) else EXIT_USAGE
    except BotError as exc:
        sys.stderr.write(f"{command}: {exc.user_message}\n")
        return EXIT_FAILED


def _say(lines: Sequence[str]) -> None:
    sys.stdout.write("".join(f"{line}\n" for line in lines))


async def _migrate(settings: Settings) -> int:
    report = await migrate_database(settings.database_url, settings.sqlite_path)
    lines = [f"database: {report.database}"]
    lines += [f"applied {m.name}" for m in report.applied]
    if not report.applied:
        lines.append("nothing to apply")
    lines.append(f"schema version {report.current}")
    _say(lines)
    return EXIT_OK


async def _migrate_data(args: argparse.Namespace, settings: Settings) -> int:
    source = _sqlite_path(args.source) if args.source else settings.sqlite_path
    target: str | None = args.target or settings.database_url
    if not is_postgres_url(target):
        raise MigrateUsageError("--to: give a postgresql:// URL, or set DATABASE_URL to one")
    assert target is not None
    report = await copy_sqlite_to_postgres(source, target, force=args.force)
    lines = [f"copied {report.source} to {report.target}"]
    if report.replaced:
        lines.append(f"replaced the earlier contents of {', '.join(report.replaced)}")
    width = max((len(table) for table in report.counts), default=0)
    lines += [f"  {table:<{width}}  {count:>8} rows" for table, count in report.counts.items()]
    lines.append(f"{report.total} rows in {len(report.counts)} tables")
    _say(lines)
    return EXIT_OK
