"""The SQLite ledger store (WAL), its transactions run by the file's worker thread.

Every transaction body runs whole in the worker thread of ``bot.sqlite_worker``,
which owns the process's one connection to the file (shared with the job
store): statements of two transactions never interleave, the event loop never
waits for the disk, and bodies queued together share a commit. Processes
sharing the file are kept apart by SQLite's own locking: every write
transaction starts with ``BEGIN IMMEDIATE``, which takes the single write lock
up front (waiting up to ``busy_timeout``), so the reads that decide a
reservation and the insert that makes it cannot be split by another writer.
Migrations run first, on an aiosqlite connection."""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

import aiosqlite

from bot import sqlite_worker
from bot.migrate import BUSY_TIMEOUT_MS, MIGRATIONS_DIR, apply_migrations, prepare_connection
from bot.quota.base import JournalStep
from bot.quota.models import (
    Adjustments,
    Ban,
    Entry,
    EntryState,
    Grant,
    GuildConfig,
    LimitOverride,
    NewEntry,
    ResetMarker,
    Totals,
)
from bot.quota.periods import parse_period
from bot.quota.rows import RowMapper
from bot.quota.store import Holder, held_by
from bot.sqlite_worker import SqliteWorker

T = TypeVar("T")


def to_db(value: datetime) -> str:
    """Fixed-width UTC text, so that comparing the text compares the times."""
    if value.tzinfo is None:
        raise ValueError("datetimes stored in the ledger must be timezone-aware")
    # The text strftime(_DB_FORMAT) gives, at less than half its cost (a few per
    # transaction): a UTC isoformat always ends in "+00:00".
    return value.astimezone(UTC).isoformat(timespec="microseconds")[:-6] + "Z"


_DB_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_DB_WIDTH = len("YYYY-MM-DDTHH:MM:SS.ffffffZ")


def from_db(value: str) -> datetime:
    # fromisoformat is many times faster than strptime; it reads the fixed-width
    # text ``to_db`` writes ("Z" gives UTC). Anything else goes the strict way.
    if len(value) == _DB_WIDTH and value[10] == "T" and value[-1] == "Z":
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is UTC:
            return parsed
    return datetime.strptime(value, _DB_FORMAT).replace(tzinfo=UTC)


def _opt_dt(value: str | None) -> datetime | None:
    return None if value is None else from_db(value)


_ENTRY_COLUMNS = (
    "id, reservation_id, guild_id, user_id, channel_id, job_id, idempotency_key, mode,"
    " prompt, cost_reserved, cost_settled, state, reason, period_start, created_at,"
    " updated_at, owner_instance, delivering"
)


_ROWS = RowMapper(from_db)
_entry, _grant, _reset, _ban = _ROWS.entry, _ROWS.grant, _ROWS.reset, _ROWS.ban


class SqliteTx:
    """``LedgerTx`` over one aiosqlite connection inside an open transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._stamps: dict[datetime, str] = {}

    # The statements run synchronously: the whole transaction is driven inside
    # the store's worker thread (see ``SqliteLedgerStore._transaction``), so the
    # ``async`` methods below never really wait.
    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return self._conn.execute(sql, tuple(params)).fetchall()

    def _one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        rows = self._all(sql, params)
        return rows[0] if rows else None

    def _run(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._conn.execute(sql, tuple(params)).rowcount

    def _insert(self, sql: str, params: Sequence[Any]) -> int:
        row_id = self._conn.execute(sql, tuple(params)).lastrowid
        assert row_id is not None
        return row_id

    def _db(self, value: datetime) -> str:
        """``to_db``, formatted once per transaction for each distinct time."""
        stamp = self._stamps.get(value)
        if stamp is None:
            stamp = self._stamps[value] = to_db(value)
        return stamp

    async def lock(self, *scopes: str) -> None:
        """Nothing to do: ``BEGIN IMMEDIATE`` already excludes every other writer."""

    async def journal(self, step: JournalStep) -> int:
        return self._run(step.sql, step.params)

    # --- guild configuration ------------------------------------------------
    async def get_guild(self, guild_id: str) -> GuildConfig | None:
        row = self._one("SELECT * FROM quota_guilds WHERE guild_id = ?", (guild_id,))
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
        stamp = self._db(now)
        self._run(
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
        rows = self._all(
            f"SELECT credits FROM quota_role_limits WHERE guild_id = ? AND role_id IN ({marks})",  # noqa: S608 - only placeholders are interpolated
            (guild_id, *roles),
        )
        return [LimitOverride(row["credits"]) for row in rows]

    async def set_role_limit(
        self, guild_id: str, role_id: str, credits: int | None, now: datetime
    ) -> None:
        self._run(
            "INSERT INTO quota_role_limits (guild_id, role_id, credits, updated_at)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (guild_id, role_id)"
            " DO UPDATE SET credits = excluded.credits, updated_at = excluded.updated_at",
            (guild_id, role_id, credits, self._db(now)),
        )

    async def remove_role_limit(self, guild_id: str, role_id: str) -> bool:
        count = self._run(
            "DELETE FROM quota_role_limits WHERE guild_id = ? AND role_id = ?",
            (guild_id, role_id),
        )
        return count > 0

    async def user_limit(self, guild_id: str, user_id: str) -> LimitOverride | None:
        row = self._one(
            "SELECT credits FROM quota_user_limits WHERE guild_id = ? AND user_id = ?",
            (guild_id, user_id),
        )
        return None if row is None else LimitOverride(row["credits"])

    async def set_user_limit(
        self, guild_id: str, user_id: str, credits: int | None, now: datetime
    ) -> None:
        self._run(
            "INSERT INTO quota_user_limits (guild_id, user_id, credits, updated_at)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (guild_id, user_id)"
            " DO UPDATE SET credits = excluded.credits, updated_at = excluded.updated_at",
            (guild_id, user_id, credits, self._db(now)),
        )

    async def remove_user_limit(self, guild_id: str, user_id: str) -> bool:
        count = self._run(
            "DELETE FROM quota_user_limits WHERE guild_id = ? AND user_id = ?",
            (guild_id, user_id),
        )
        return count > 0

    # --- bans ---------------------------------------------------------------
    async def active_ban(self, guild_id: str, user_id: str, now: datetime) -> Ban | None:
        row = self._one(
            "SELECT * FROM quota_bans WHERE guild_id = ? AND user_id = ?"
            " AND lifted_at IS NULL AND until > ? ORDER BY until DESC LIMIT 1",
            (guild_id, user_id, self._db(now)),
        )
        return None if row is None else _ban(row)

    async def active_bans(self, guild_id: str, now: datetime) -> list[Ban]:
        rows = self._all(
            "SELECT * FROM quota_bans WHERE guild_id = ? AND lifted_at IS NULL AND until > ?"
            " ORDER BY until, id",
            (guild_id, self._db(now)),
        )
        return [_ban(row) for row in rows]

    async def add_ban(
        self, guild_id: str, user_id: str, until: datetime, reason: str, by: str, now: datetime
    ) -> Ban:
        ban_id = self._insert(
            "INSERT INTO quota_bans (guild_id, user_id, until, reason, banned_by, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (guild_id, user_id, self._db(until), reason, by, self._db(now)),
        )
        row = self._one("SELECT * FROM quota_bans WHERE id = ?", (ban_id,))
        assert row is not None
        return _ban(row)

    async def lift_bans(self, guild_id: str, user_id: str, by: str, now: datetime) -> int:
        return self._run(
            "UPDATE quota_bans SET lifted_at = ?, lifted_by = ?"
            " WHERE guild_id = ? AND user_id = ? AND lifted_at IS NULL AND until > ?",
            (self._db(now), by, guild_id, user_id, self._db(now)),
        )

    # --- entries ------------------------------------------------------------
    async def entry_by_key(self, idempotency_key: str) -> Entry | None:
        row = self._one(
            f"SELECT {_ENTRY_COLUMNS} FROM quota_entries WHERE idempotency_key = ?",  # noqa: S608
            (idempotency_key,),
        )
        return None if row is None else _entry(row)

    async def entry_by_reservation(self, reservation_id: str) -> Entry | None:
        row = self._one(
            f"SELECT {_ENTRY_COLUMNS} FROM quota_entries WHERE reservation_id = ?",  # noqa: S608
            (reservation_id,),
        )
        return None if row is None else _entry(row)

    async def find_entry(self, ref: str) -> Entry | None:
        row = self._one(
            f"SELECT {_ENTRY_COLUMNS} FROM quota_entries"  # noqa: S608
            " WHERE job_id = ? OR idempotency_key = ? OR reservation_id = ?"
            " ORDER BY id DESC LIMIT 1",
            (ref, ref, ref),
        )
        return None if row is None else _entry(row)

    async def insert_entry(self, entry: NewEntry) -> Entry:
        created = self._db(entry.created_at)
        period_start = self._db(entry.period_start)
        entry_id = self._insert(
            "INSERT INTO quota_entries (reservation_id, guild_id, user_id, channel_id, job_id,"
            " idempotency_key, mode, prompt, cost_reserved, state, period_start, created_at,"
            " updated_at, owner_instance)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'reserved', ?, ?, ?, ?)",
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
                period_start,
                created,
                created,
                entry.owner,
            ),
        )
        # Built from what was written rather than read back: one statement fewer
        # on every reservation. The column's text reads back as the same instant
        # in UTC, to the microsecond (tests/unit/test_ledger_times.py).
        return entry.stored(
            entry_id,
            period_start=entry.period_start.astimezone(UTC),
            created_at=entry.created_at.astimezone(UTC),
        )

    async def finish_entry(
        self,
        reservation_id: str,
        state: EntryState,
        cost_settled: int | None,
        reason: str | None,
        now: datetime,
        *,
        holder: Holder,
    ) -> bool:
        held, params = held_by(holder, "?")
        # MIN() of NULL is NULL: a refund charges nothing.
        count = self._run(
            "UPDATE quota_entries SET state = ?, cost_settled = MIN(?, cost_reserved),"  # noqa: S608 - a constant clause
            f" reason = ?, updated_at = ? WHERE reservation_id = ? AND state = 'reserved'{held}",
            (state, cost_settled, reason, self._db(now), reservation_id, *params),
        )
        return count > 0

    async def mark_delivering(
        self, reservation_id: str, now: datetime, *, holder: Holder, delivering: bool = True
    ) -> bool:
        held, params = held_by(holder, "?")
        count = self._run(
            "UPDATE quota_entries SET delivering = ?, updated_at = ?"  # noqa: S608 - a constant clause
            f" WHERE reservation_id = ? AND state = 'reserved'{held}",
            (int(delivering), self._db(now), reservation_id, *params),
        )
        return count > 0

    async def reserved_entries(self) -> list[Entry]:
        rows = self._all(
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
            params.append(self._db(since))
        if until is not None:
            where.append("created_at < ?")
            params.append(self._db(until))
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = self._all(
            f"SELECT {_ENTRY_COLUMNS} FROM quota_entries{clause} ORDER BY id",  # noqa: S608
            params,
        )
        return [_entry(row) for row in rows]

    async def max_entry_id(self) -> int:
        row = self._one("SELECT COALESCE(MAX(id), 0) AS m FROM quota_entries")
        return 0 if row is None else int(row["m"])

    # --- sums ---------------------------------------------------------------
    async def last_started(self, user_id: str) -> datetime | None:
        row = self._one(
            "SELECT MAX(created_at) AS last FROM quota_entries WHERE user_id = ?", (user_id,)
        )
        return None if row is None else _opt_dt(row["last"])

    async def in_flight(self, user_id: str) -> int:
        row = self._one(
            "SELECT COUNT(*) AS n FROM quota_entries"
            " WHERE user_id = ? AND state = 'reserved' AND delivering = 0",
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

    _POOL_SUMS = (
        "SELECT COALESCE(SUM(settled), 0) AS settled, COALESCE(SUM(reserved), 0) AS reserved"
        " FROM quota_pool_totals WHERE guild_id = ? AND period_start >= ? AND period_start < ?"
    )

    async def totals(
        self,
        guild_id: str,
        user_id: str | None,
        start: datetime,
        end: datetime,
        after_entry_id: int,
    ) -> Totals:
        bounds = [guild_id, self._db(start), self._db(end)]
        if user_id is None:
            # The pool's running totals (migration 005), less what a reset excluded.
            pool = self._totals(self._one(self._POOL_SUMS, bounds))
            if after_entry_id == 0:
                return pool
            excluded = self._totals(
                self._one(
                    self._SUMS
                    + " WHERE guild_id = ? AND period_start >= ? AND period_start < ? AND id <= ?",
                    [*bounds, after_entry_id],
                )
            )
            return Totals(
                settled=pool.settled - excluded.settled,
                reserved=pool.reserved - excluded.reserved,
            )
        return self._totals(
            self._one(
                self._SUMS + " WHERE guild_id = ? AND period_start >= ? AND period_start < ?"
                " AND id > ? AND user_id = ?",
                [*bounds, after_entry_id, user_id],
            )
        )

    async def global_totals(self, start: datetime, end: datetime) -> Totals:
        return self._totals(
            self._one(
                self._SUMS + " WHERE created_at >= ? AND created_at < ?",
                (self._db(start), self._db(end)),
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
        grant_id = self._insert(
            "INSERT INTO quota_grants"
            " (guild_id, user_id, credits, period_start, granted_by, reason, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (guild_id, user_id, credits, self._db(period_start), by, reason, self._db(now)),
        )
        row = self._one("SELECT * FROM quota_grants WHERE id = ?", (grant_id,))
        assert row is not None
        return _grant(row)

    async def grants(self, guild_id: str | None = None) -> list[Grant]:
        if guild_id is None:
            rows = self._all("SELECT * FROM quota_grants ORDER BY id")
        else:
            rows = self._all(
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
        reset_id = self._insert(
            "INSERT INTO quota_resets"
            " (guild_id, user_id, after_entry_id, period_start, reset_by, reason, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (guild_id, user_id, mark, self._db(period_start), by, reason, self._db(now)),
        )
        row = self._one("SELECT * FROM quota_resets WHERE id = ?", (reset_id,))
        assert row is not None
        return _reset(row)

    # A member id never matches NULL, so with user_id None the member's two are 0.
    _ADJUSTMENTS = (
        "SELECT"
        " (SELECT COALESCE(SUM(credits), 0) FROM quota_grants WHERE guild_id = :guild"
        "  AND period_start >= :start AND period_start < :end AND user_id IS NULL),"
        " (SELECT COALESCE(SUM(credits), 0) FROM quota_grants WHERE guild_id = :guild"
        "  AND period_start >= :start AND period_start < :end AND user_id = :user),"
        " (SELECT COALESCE(MAX(after_entry_id), 0) FROM quota_resets WHERE guild_id = :guild"
        "  AND period_start >= :start AND period_start < :end AND user_id IS NULL),"
        " (SELECT COALESCE(MAX(after_entry_id), 0) FROM quota_resets WHERE guild_id = :guild"
        "  AND period_start >= :start AND period_start < :end AND user_id = :user)"
    )

    async def adjustments(
        self, guild_id: str, user_id: str | None, start: datetime, end: datetime
    ) -> Adjustments:
        params = {
            "guild": guild_id,
            "user": user_id,
            "start": self._db(start),
            "end": self._db(end),
        }
        pool_granted, member_granted, pool_mark, member_mark = self._conn.execute(
            self._ADJUSTMENTS, params
        ).fetchone()
        return Adjustments(
            pool_granted=int(pool_granted),
            member_granted=int(member_granted),
            pool_mark=int(pool_mark),
            member_mark=int(member_mark),
        )

    async def resets(self, guild_id: str | None = None) -> list[ResetMarker]:
        if guild_id is None:
            rows = self._all("SELECT * FROM quota_resets ORDER BY id")
        else:
            rows = self._all(
                "SELECT * FROM quota_resets WHERE guild_id = ? ORDER BY id", (guild_id,)
            )
        return [_reset(row) for row in rows]

    async def mark_threshold(
        self, guild_id: str, period_start: datetime, percent: int, now: datetime
    ) -> bool:
        count = self._run(
            "INSERT INTO quota_thresholds (guild_id, period_start, percent, fired_at)"
            " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (guild_id, self._db(period_start), percent, self._db(now)),
        )
        return count > 0


class SqliteLedgerStore:
    """``LedgerStore`` on one SQLite file shared by any number of processes."""

    def __init__(self, path: Path | str, *, migrations_dir: Path = MIGRATIONS_DIR) -> None:
        self.path = Path(path)
        self._migrations_dir = migrations_dir
        self._conn: aiosqlite.Connection | None = None
        self._worker: SqliteWorker | None = None

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
            worker = await sqlite_worker.acquire(self.path)
        except BaseException:
            await conn.close()
            raise
        self._conn, self._worker = conn, worker

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            worker, self._worker = self._worker, None
            if worker is not None:
                await sqlite_worker.release(worker)
            await conn.close()

    @property
    def connection(self) -> aiosqlite.Connection:
        """The connection migrations ran on (transactions use the shared worker's)."""
        if self._conn is None:
            raise RuntimeError("the ledger store is not open")
        return self._conn

    @property
    def database_id(self) -> str | None:
        return None if self._worker is None else self._worker.database_id

    @property
    def commits(self) -> int:
        """Commits the file's worker has made (several transactions may share one)."""
        return 0 if self._worker is None else self._worker.commits

    def _open_worker(self) -> SqliteWorker:
        if self._worker is None:
            raise RuntimeError("the ledger store is not open")
        return self._worker

    async def write(self, fn: Callable[[SqliteTx], Awaitable[T]]) -> T:
        return await self._open_worker().write(functools.partial(_run_body, fn))

    async def read(self, fn: Callable[[SqliteTx], Awaitable[T]]) -> T:
        return await self._open_worker().read(functools.partial(_run_body, fn))


def _run_body(fn: Callable[[SqliteTx], Awaitable[T]], conn: sqlite3.Connection) -> T:
    """A ledger transaction's body, in the worker thread, inside its transaction."""
    return _drive(fn(SqliteTx(conn)))


def _drive(awaitable: Awaitable[T]) -> T:
    """Run ``awaitable`` to its end without an event loop.

    ``SqliteTx`` never really waits, so a transaction body that only awaits its
    methods completes in one step. A body that waits for anything else (a
    future of the event loop) cannot be run here: that is a programming error.
    """
    steps = awaitable.__await__()
    try:
        while True:
            yielded = steps.send(None)
            if yielded is not None:
                raise RuntimeError(
                    "a SQLite ledger transaction may only await the transaction's own methods"
                )
            # A bare yield (asyncio.sleep(0)) only hands over control: go on.
    except StopIteration as stop:
        return cast(T, stop.value)
    finally:
        close = getattr(steps, "close", None)
        if close is not None:
            close()
