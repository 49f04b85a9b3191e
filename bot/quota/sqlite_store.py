"""The SQLite ledger store (aiosqlite, WAL).

One connection per process. Tasks of the process take turns on it (an asyncio
lock, because statements of two transactions must not interleave on one
connection); processes sharing the file are kept apart by SQLite's own locking:
every write transaction starts with ``BEGIN IMMEDIATE``, which takes the single
write lock up front (waiting up to ``busy_timeout``), so the reads that decide a
reservation and the insert that makes it cannot be split by another writer.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

import aiosqlite

from bot.migrate import MIGRATIONS_DIR, apply_migrations, prepare_connection
from bot.quota.models import (
    Ban,
    Entry,
    EntryState,
    Grant,
    GuildConfig,
    LimitOverride,
    NewEntry,
    Owner,
    ResetMarker,
    Totals,
)
from bot.quota.periods import parse_period

BUSY_TIMEOUT_MS = 30_000

T = TypeVar("T")


def to_db(value: datetime) -> str:
    """Fixed-width UTC text, so that comparing the text compares the times."""
    if value.tzinfo is None:
        raise ValueError("datetimes stored in the ledger must be timezone-aware")
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def from_db(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def _opt_dt(value: str | None) -> datetime | None:
    return None if value is None else from_db(value)


_ENTRY_COLUMNS = (
    "id, reservation_id, guild_id, user_id, channel_id, job_id, idempotency_key, mode,"
    " prompt, cost_reserved, cost_settled, state, reason, period_start, created_at,"
    " updated_at, owner_host, owner_pid, owner_started"
)


def _entry(row: sqlite3.Row) -> Entry:
    return Entry(
        id=row["id"],
        reservation_id=row["reservation_id"],
        guild_id=row["guild_id"],
        user_id=row["user_id"],
        channel_id=row["channel_id"],
        job_id=row["job_id"],
        idempotency_key=row["idempotency_key"],
        mode=row["mode"],
        prompt=row["prompt"],
        cost_reserved=row["cost_reserved"],
        cost_settled=row["cost_settled"],
        state=cast(EntryState, row["state"]),
        reason=row["reason"],
        period_start=from_db(row["period_start"]),
        created_at=from_db(row["created_at"]),
        updated_at=from_db(row["updated_at"]),
        owner=Owner(host=row["owner_host"], pid=row["owner_pid"], started=row["owner_started"]),
    )


def _grant(row: sqlite3.Row) -> Grant:
    return Grant(
        id=row["id"],
        guild_id=row["guild_id"],
        user_id=row["user_id"],
        credits=row["credits"],
        period_start=from_db(row["period_start"]),
        granted_by=row["granted_by"],
        reason=row["reason"],
        created_at=from_db(row["created_at"]),
    )


def _reset(row: sqlite3.Row) -> ResetMarker:
    return ResetMarker(
        id=row["id"],
        guild_id=row["guild_id"],
        user_id=row["user_id"],
        after_entry_id=row["after_entry_id"],
        period_start=from_db(row["period_start"]),
        reset_by=row["reset_by"],
        reason=row["reason"],
        created_at=from_db(row["created_at"]),
    )


def _ban(row: sqlite3.Row) -> Ban:
    return Ban(
        id=row["id"],
        guild_id=row["guild_id"],
        user_id=row["user_id"],
        until=from_db(row["until"]),
        reason=row["reason"],
        banned_by=row["banned_by"],
        created_at=from_db(row["created_at"]),
        lifted_at=_opt_dt(row["lifted_at"]),
        lifted_by=row["lifted_by"],
    )


class SqliteTx:
    """``LedgerTx`` over one aiosqlite connection inside an open transaction."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def _all(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return list(await self._conn.execute_fetchall(sql, tuple(params)))

    async def _one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        rows = await self._all(sql, params)
        return rows[0] if rows else None

    async def _run(self, sql: str, params: Sequence[Any] = ()) -> int:
        cursor = await self._conn.execute(sql, tuple(params))
        try:
            return cursor.rowcount
        finally:
            await cursor.close()

    async def lock(self, *scopes: str) -> None:
        """Nothing to do: ``BEGIN IMMEDIATE`` already excludes every other writer."""

    # --- guild configuration ------------------------------------------------
    async def get_guild(self, guild_id: str) -> GuildConfig | None:
        row = await self._one("SELECT * FROM quota_guilds WHERE guild_id = ?", (guild_id,))
        if row is None:
            return None
        return GuildConfig(
            guild_id=row["guild_id"],
            pool_credits=row["pool_credits"],
            period=parse_period(row["period"]),
            timezone=row["timezone"],
            user_default=row["user_default"],
        )

    async def put_guild(self, config: GuildConfig, now: datetime) -> None:
        stamp = to_db(now)
        await self._run(
            "INSERT INTO quota_guilds"
            " (guild_id, pool_credits, period, timezone, user_default, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (guild_id) DO UPDATE SET pool_credits = excluded.pool_credits,"
            " period = excluded.period, timezone = excluded.timezone,"
            " user_default = excluded.user_default, updated_at = excluded.updated_at",
            (
                config.guild_id,
                config.pool_credits,
                config.period,
                config.timezone,
                config.user_default,
                stamp,
                stamp,
            ),
        )

    async def role_limits(self, guild_id: str, roles: Sequence[str]) -> list[LimitOverride]:
        if not roles:
            return []
        marks = ", ".join("?" for _ in roles)
        rows = await self._all(
            f"SELECT credits FROM quota_role_limits WHERE guild_id = ? AND role_id IN ({marks})",  # noqa: S608 - only placeholders are interpolated
            (guild_id, *roles),
        )
        return [LimitOverride(row["credits"]) for row in rows]

    async def set_role_limit(
        self, guild_id: str, role_id: str, credits: int | None, now: datetime
    ) -> None:
        await self._run(
            "INSERT INTO quota_role_limits (guild_id, role_id, credits, updated_at)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (guild_id, role_id)"
            " DO UPDATE SET credits = excluded.credits, updated_at = excluded.updated_at",
            (guild_id, role_id, credits, to_db(now)),
        )

    async def remove_role_limit(self, guild_id: str, role_id: str) -> bool:
        count = await self._run(
            "DELETE FROM quota_role_limits WHERE guild_id = ? AND role_id = ?",
            (guild_id, role_id),
        )
        return count > 0

    async def user_limit(self, guild_id: str, user_id: str) -> LimitOverride | None:
        row = await self._one(
            "SELECT credits FROM quota_user_limits WHERE guild_id = ? AND user_id = ?",
            (guild_id, user_id),
        )
        return None if row is None else LimitOverride(row["credits"])

    async def set_user_limit(
        self, guild_id: str, user_id: str, credits: int | None, now: datetime
    ) -> None:
        await self._run(
            "INSERT INTO quota_user_limits (guild_id, user_id, credits, updated_at)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (guild_id, user_id)"
            " DO UPDATE SET credits = excluded.credits, updated_at = excluded.updated_at",
            (guild_id, user_id, credits, to_db(now)),
        )

    async def remove_user_limit(self, guild_id: str, user_id: str) -> bool:
        count = await self._run(
            "DELETE FROM quota_user_limits WHERE guild_id = ? AND user_id = ?",
            (guild_id, user_id),
        )
        return count > 0

    # --- bans ---------------------------------------------------------------
    async def active_ban(self, guild_id: str, user_id: str, now: datetime) -> Ban | None:
        row = await self._one(
            "SELECT * FROM quota_bans WHERE guild_id = ? AND user_id = ?"
            " AND lifted_at IS NULL AND until > ? ORDER BY until DESC LIMIT 1",
            (guild_id, user_id, to_db(now)),
        )
        return None if row is None else _ban(row)

    async def add_ban(
        self, guild_id: str, user_id: str, until: datetime, reason: str, by: str, now: datetime
    ) -> Ban:
        cursor = await self._conn.execute(
            "INSERT INTO quota_bans (guild_id, user_id, until, reason, banned_by, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (guild_id, user_id, to_db(until), reason, by, to_db(now)),
        )
        ban_id = cursor.lastrowid
        await cursor.close()
        row = await self._one("SELECT * FROM quota_bans WHERE id = ?", (ban_id,))
        assert row is not None
        return _ban(row)

    async def lift_bans(self, guild_id: str, user_id: str, by: str, now: datetime) -> int:
        return await self._run(
            "UPDATE quota_bans SET lifted_at = ?, lifted_by = ?"
            " WHERE guild_id = ? AND user_id = ? AND lifted_at IS NULL AND until > ?",
            (to_db(now), by, guild_id, user_id, to_db(now)),
        )

    # --- entries ------------------------------------------------------------
    async def entry_by_key(self, idempotency_key: str) -> Entry | None:
        row = await self._one(
            f"SELECT {_ENTRY_COLUMNS} FROM quota_entries WHERE idempotency_key = ?",  # noqa: S608
            (idempotency_key,),
        )
        return None if row is None else _entry(row)

    async def entry_by_reservation(self, reservation_id: str) -> Entry | None:
        row = await self._one(
            f"SELECT {_ENTRY_COLUMNS} FROM quota_entries WHERE reservation_id = ?",  # noqa: S608
            (reservation_id,),
        )
        return None if row is None else _entry(row)

    async def find_entry(self, ref: str) -> Entry | None:
        row = await self._one(
            f"SELECT {_ENTRY_COLUMNS} FROM quota_entries"  # noqa: S608
            " WHERE job_id = ? OR idempotency_key = ? OR reservation_id = ?"
            " ORDER BY id DESC LIMIT 1",
            (ref, ref, ref),
        )
        return None if row is None else _entry(row)

    async def insert_entry(self, entry: NewEntry) -> Entry:
        stamp = to_db(entry.created_at)
        cursor = await self._conn.execute(
            "INSERT INTO quota_entries (reservation_id, guild_id, user_id, channel_id, job_id,"
            " idempotency_key, mode, prompt, cost_reserved, state, period_start, created_at,"
            " updated_at, owner_host, owner_pid, owner_started)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'reserved', ?, ?, ?, ?, ?, ?)",
            (
                entry.reservation_id,
                entry.guild_id,
                entry.user_id,
                entry.channel_id,
                entry.job_id,
                entry.idempotency_key,
                entry.mode,
                entry.prompt,
                entry.cost,
                to_db(entry.period_start),
                stamp,
                stamp,
                entry.owner.host,
                entry.owner.pid,
                entry.owner.started,
            ),
        )
        await cursor.close()
        stored = await self.entry_by_reservation(entry.reservation_id)
        assert stored is not None
        return stored

    async def finish_entry(
        self,
        reservation_id: str,
        state: EntryState,
        cost_settled: int | None,
        reason: str | None,
        now: datetime,
    ) -> bool:
        count = await self._run(
            "UPDATE quota_entries SET state = ?, cost_settled = ?, reason = ?, updated_at = ?"
            " WHERE reservation_id = ? AND state = 'reserved'",
            (state, cost_settled, reason, to_db(now), reservation_id),
        )
        return count > 0

    async def set_owner(self, reservation_id: str, owner: Owner, now: datetime) -> bool:
        count = await self._run(
            "UPDATE quota_entries SET owner_host = ?, owner_pid = ?, owner_started = ?,"
            " updated_at = ? WHERE reservation_id = ? AND state = 'reserved'",
            (owner.host, owner.pid, owner.started, to_db(now), reservation_id),
        )
        return count > 0

    async def reserved_entries(self) -> list[Entry]:
        rows = await self._all(
            f"SELECT {_ENTRY_COLUMNS} FROM quota_entries"  # noqa: S608
            " WHERE state = 'reserved' ORDER BY id"
        )
        return [_entry(row) for row in rows]

    async def entries(
        self,
        guild_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[Entry]:
        where: list[str] = []
        params: list[Any] = []
        if guild_id is not None:
            where.append("guild_id = ?")
            params.append(guild_id)
        if since is not None:
            where.append("created_at >= ?")
            params.append(to_db(since))
        if until is not None:
            where.append("created_at < ?")
            params.append(to_db(until))
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = await self._all(
            f"SELECT {_ENTRY_COLUMNS} FROM quota_entries{clause} ORDER BY id",  # noqa: S608
            params,
        )
        return [_entry(row) for row in rows]

    async def max_entry_id(self) -> int:
        row = await self._one("SELECT COALESCE(MAX(id), 0) AS m FROM quota_entries")
        return 0 if row is None else int(row["m"])

    # --- sums ---------------------------------------------------------------
    async def last_started(self, user_id: str) -> datetime | None:
        row = await self._one(
            "SELECT MAX(created_at) AS last FROM quota_entries WHERE user_id = ?", (user_id,)
        )
        return None if row is None else _opt_dt(row["last"])

    async def in_flight(self, user_id: str) -> int:
        row = await self._one(
            "SELECT COUNT(*) AS n FROM quota_entries WHERE user_id = ? AND state = 'reserved'",
            (user_id,),
        )
        return 0 if row is None else int(row["n"])

    @staticmethod
    def _totals(row: sqlite3.Row | None) -> Totals:
        if row is None:
            return Totals()
        return Totals(settled=int(row["settled"]), reserved=int(row["reserved"]))

    _SUMS = (
        "SELECT COALESCE(SUM(CASE WHEN state = 'settled' THEN cost_settled END), 0) AS settled,"
        " COALESCE(SUM(CASE WHEN state = 'reserved' THEN cost_reserved END), 0) AS reserved"
        " FROM quota_entries"
    )

    async def totals(
        self,
        guild_id: str,
        user_id: str | None,
        start: datetime,
        end: datetime,
        after_entry_id: int,
    ) -> Totals:
        sql = (
            self._SUMS + " WHERE guild_id = ? AND period_start >= ? AND period_start < ? AND id > ?"
        )
        params: list[Any] = [guild_id, to_db(start), to_db(end), after_entry_id]
        if user_id is not None:
            sql += " AND user_id = ?"
            params.append(user_id)
        return self._totals(await self._one(sql, params))

    async def global_totals(self, start: datetime, end: datetime) -> Totals:
        return self._totals(
            await self._one(
                self._SUMS + " WHERE created_at >= ? AND created_at < ?",
                (to_db(start), to_db(end)),
            )
        )

    # --- grants, resets, thresholds -------------------------------------------
    async def add_grant(
        self,
        guild_id: str,
        user_id: str | None,
        credits: int,
        period_start: datetime,
        by: str,
        reason: str | None,
        now: datetime,
    ) -> Grant:
        cursor = await self._conn.execute(
            "INSERT INTO quota_grants"
            " (guild_id, user_id, credits, period_start, granted_by, reason, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (guild_id, user_id, credits, to_db(period_start), by, reason, to_db(now)),
        )
        grant_id = cursor.lastrowid
        await cursor.close()
        row = await self._one("SELECT * FROM quota_grants WHERE id = ?", (grant_id,))
        assert row is not None
        return _grant(row)

    async def granted(
        self, guild_id: str, user_id: str | None, start: datetime, end: datetime
    ) -> int:
        who = "user_id IS NULL" if user_id is None else "user_id = ?"
        params: list[Any] = [guild_id, to_db(start), to_db(end)]
        if user_id is not None:
            params.append(user_id)
        row = await self._one(
            "SELECT COALESCE(SUM(credits), 0) AS n FROM quota_grants"  # noqa: S608 - constant
            f" WHERE guild_id = ? AND period_start >= ? AND period_start < ? AND {who}",
            params,
        )
        return 0 if row is None else int(row["n"])

    async def grants(self, guild_id: str | None = None) -> list[Grant]:
        if guild_id is None:
            rows = await self._all("SELECT * FROM quota_grants ORDER BY id")
        else:
            rows = await self._all(
                "SELECT * FROM quota_grants WHERE guild_id = ? ORDER BY id", (guild_id,)
            )
        return [_grant(row) for row in rows]

    async def add_reset(
        self,
        guild_id: str,
        user_id: str | None,
        period_start: datetime,
        by: str,
        reason: str | None,
        now: datetime,
    ) -> ResetMarker:
        mark = await self.max_entry_id()
        cursor = await self._conn.execute(
            "INSERT INTO quota_resets"
            " (guild_id, user_id, after_entry_id, period_start, reset_by, reason, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (guild_id, user_id, mark, to_db(period_start), by, reason, to_db(now)),
        )
        reset_id = cursor.lastrowid
        await cursor.close()
        row = await self._one("SELECT * FROM quota_resets WHERE id = ?", (reset_id,))
        assert row is not None
        return _reset(row)

    async def reset_mark(
        self, guild_id: str, user_id: str | None, start: datetime, end: datetime
    ) -> int:
        who = "user_id IS NULL" if user_id is None else "user_id = ?"
        params: list[Any] = [guild_id, to_db(start), to_db(end)]
        if user_id is not None:
            params.append(user_id)
        row = await self._one(
            "SELECT COALESCE(MAX(after_entry_id), 0) AS m FROM quota_resets"  # noqa: S608
            f" WHERE guild_id = ? AND period_start >= ? AND period_start < ? AND {who}",
            params,
        )
        return 0 if row is None else int(row["m"])

    async def resets(self, guild_id: str | None = None) -> list[ResetMarker]:
        if guild_id is None:
            rows = await self._all("SELECT * FROM quota_resets ORDER BY id")
        else:
            rows = await self._all(
                "SELECT * FROM quota_resets WHERE guild_id = ? ORDER BY id", (guild_id,)
            )
        return [_reset(row) for row in rows]

    async def mark_threshold(
        self, guild_id: str, period_start: datetime, percent: int, now: datetime
    ) -> bool:
        count = await self._run(
            "INSERT INTO quota_thresholds (guild_id, period_start, percent, fired_at)"
            " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (guild_id, to_db(period_start), percent, to_db(now)),
        )
        return count > 0


class SqliteLedgerStore:
    """``LedgerStore`` on one SQLite file shared by any number of processes."""

    def __init__(self, path: Path | str, *, migrations_dir: Path = MIGRATIONS_DIR) -> None:
        self.path = Path(path)
        self._migrations_dir = migrations_dir
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        if self._conn is not None:
            return
        await asyncio.to_thread(self.path.parent.mkdir, parents=True, exist_ok=True)
        # isolation_level=None: the sqlite3 module must not open transactions of
        # its own; every transaction here is an explicit BEGIN.
        conn = await aiosqlite.connect(
            self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000
        )
        try:
            conn.row_factory = sqlite3.Row
            await prepare_connection(conn, busy_timeout_ms=BUSY_TIMEOUT_MS)
            await apply_migrations(conn, directory=self._migrations_dir)
        except BaseException:
            await conn.close()
            raise
        self._conn = conn

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            async with self._lock:
                await conn.close()

    @property
    def connection(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise RuntimeError("the ledger store is not open")
        return self._conn

    async def _transaction(self, begin: str, fn: Callable[[SqliteTx], Awaitable[T]]) -> T:
        async def body() -> T:
            async with self._lock:
                conn = self.connection
                await conn.execute(begin)
                try:
                    result = await fn(SqliteTx(conn))
                    await conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        await conn.execute("ROLLBACK")
                    raise
                return result

        # The transaction runs in its own task so that cancelling the caller
        # (an interaction timing out) cannot stop it between BEGIN and COMMIT
        # and leave the shared connection inside an open transaction. A
        # reservation made that way is found again by its idempotency key.
        task = asyncio.ensure_future(body())
        task.add_done_callback(_consume_exception)
        return await asyncio.shield(task)

    async def write(self, fn: Callable[[SqliteTx], Awaitable[T]]) -> T:
        return await self._transaction("BEGIN IMMEDIATE", fn)

    async def read(self, fn: Callable[[SqliteTx], Awaitable[T]]) -> T:
        return await self._transaction("BEGIN", fn)


def _consume_exception(task: asyncio.Future[Any]) -> None:
    # Marks the exception retrieved when the caller was cancelled and nobody
    # awaits the task any more; the caller sees it otherwise.
    if not task.cancelled():
        task.exception()
