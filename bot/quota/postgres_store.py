"""The PostgreSQL ledger store (asyncpg), for several bot processes on several machines.

Each process keeps a small pool of connections. Write transactions run at READ
COMMITTED and serialise on lock rows (``quota_locks``, one per scope: see
``bot.quota.store``) taken with ``SELECT ... FOR UPDATE`` before anything is
read, so that every later statement of the transaction sees what the previous
holder committed: reservations in one guild, or by one member, or (when there is
a daily budget) against the budget, take turns, and the rest run in parallel.
Read transactions are REPEATABLE READ, so a balance is summed from one snapshot.

Times are ``timestamptz``; asyncpg hands them back as aware UTC datetimes.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar, cast

import asyncpg  # type: ignore[import-untyped]

from bot.migrate import (
    POSTGRES_MIGRATIONS_DIR,
    apply_postgres_migrations,
    describe_database,
    pg_errors,
)
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
from bot.sql import numbered, postgres_database_id

T = TypeVar("T")

logger = logging.getLogger("bot.quota")

# Conflicts PostgreSQL resolves by failing one transaction, which may simply run
# again: a deadlock, and a unique key (an idempotency key) that a concurrent
# transaction holding other scopes inserted first; the retry then finds its row.
_RETRYABLE = (
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.UniqueViolationError,
)
MAX_ATTEMPTS = 5

_ENTRY_COLUMNS = (
    "id, reservation_id, guild_id, user_id, channel_id, job_id, idempotency_key, mode,"
    " prompt, cost_reserved, cost_settled, state, reason, period_start, created_at,"
    " updated_at, owner_instance, delivering"
)

_LOCK_ROW = "SELECT 1 FROM quota_locks WHERE scope = $1 FOR UPDATE"


def _count(status: str) -> int:
    """Rows affected, from a command tag such as ``UPDATE 3`` or ``INSERT 0 1``."""
    return int(status.rsplit(" ", 1)[-1])


def _as_is(value: datetime) -> datetime:
    return value  # asyncpg returns timestamptz as aware datetimes


_ROWS = RowMapper(_as_is)
_entry, _grant, _reset, _ban = _ROWS.entry, _ROWS.grant, _ROWS.reset, _ROWS.ban


def _utc(value: datetime) -> datetime:
    # asyncpg would take a naive datetime as UTC without a word; the ledger
    # refuses them as the SQLite store does.
    if value.tzinfo is None:
        raise ValueError("datetimes stored in the ledger must be timezone-aware")
    return value


class PostgresTx:
    """``LedgerTx`` over one asyncpg connection inside an open transaction."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def _all(self, sql: str, *params: Any) -> list[Any]:
        return list(await self._conn.fetch(sql, *params))

    async def _one(self, sql: str, *params: Any) -> Any:
        return await self._conn.fetchrow(sql, *params)

    async def _int(self, sql: str, *params: Any) -> int:
        value = await self._conn.fetchval(sql, *params)
        return 0 if value is None else int(value)

    async def _run(self, sql: str, *params: Any) -> int:
        return _count(await self._conn.execute(sql, *params))

    async def journal(self, step: JournalStep) -> int:
        return await self._run(numbered(step.sql), *step.params)

    async def lock(self, *scopes: str) -> None:
        for scope in scopes:
            if await self._conn.fetchval(_LOCK_ROW, scope) is None:
                # First use of the scope. A concurrent first use makes this
                # insert wait for that transaction; either way the row then
                # exists and the second SELECT waits for and takes it.
                await self._conn.execute(
                    "INSERT INTO quota_locks (scope) VALUES ($1) ON CONFLICT (scope) DO NOTHING",
                    scope,
                )
                await self._conn.fetchval(_LOCK_ROW, scope)

    # --- guild configuration ------------------------------------------------
    async def get_guild(self, guild_id: str) -> GuildConfig | None:
        row = await self._one("SELECT * FROM quota_guilds WHERE guild_id = $1", guild_id)
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
        await self._run(
            "INSERT INTO quota_guilds"
            " (guild_id, pool_credits, period, timezone, user_default, created_at, updated_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $6)"
            " ON CONFLICT (guild_id) DO UPDATE SET pool_credits = excluded.pool_credits,"
            " period = excluded.period, timezone = excluded.timezone,"
            " user_default = excluded.user_default, updated_at = excluded.updated_at",
            config.guild_id,
            config.pool_credits,
            config.period,
            config.timezone,
            config.user_default,
            _utc(now),
        )

    async def role_limits(self, guild_id: str, roles: Sequence[str]) -> list[LimitOverride]:
        if not roles:
            return []
        rows = await self._all(
            "SELECT credits FROM quota_role_limits WHERE guild_id = $1 AND role_id = ANY($2)",
            guild_id,
            list(roles),
        )
        return [LimitOverride(row["credits"]) for row in rows]

    async def set_role_limit(
        self, guild_id: str, role_id: str, credits: int | None, now: datetime
    ) -> None:
        await self._run(
            "INSERT INTO quota_role_limits (guild_id, role_id, credits, updated_at)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT (guild_id, role_id)"
            " DO UPDATE SET credits = excluded.credits, updated_at = excluded.updated_at",
            guild_id,
            role_id,
            credits,
            _utc(now),
        )

    async def remove_role_limit(self, guild_id: str, role_id: str) -> bool:
        count = await self._run(
            "DELETE FROM quota_role_limits WHERE guild_id = $1 AND role_id = $2",
            guild_id,
            role_id,
        )
        return count > 0

    async def user_limit(self, guild_id: str, user_id: str) -> LimitOverride | None:
        row = await self._one(
            "SELECT credits FROM quota_user_limits WHERE guild_id = $1 AND user_id = $2",
            guild_id,
            user_id,
        )
        return None if row is None else LimitOverride(row["credits"])

    async def set_user_limit(
        self, guild_id: str, user_id: str, credits: int | None, now: datetime
    ) -> None:
        await self._run(
            "INSERT INTO quota_user_limits (guild_id, user_id, credits, updated_at)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT (guild_id, user_id)"
            " DO UPDATE SET credits = excluded.credits, updated_at = excluded.updated_at",
            guild_id,
            user_id,
            credits,
            _utc(now),
        )

    async def remove_user_limit(self, guild_id: str, user_id: str) -> bool:
        count = await self._run(
            "DELETE FROM quota_user_limits WHERE guild_id = $1 AND user_id = $2",
            guild_id,
            user_id,
        )
        return count > 0

    # --- bans ---------------------------------------------------------------
    async def active_ban(self, guild_id: str, user_id: str, now: datetime) -> Ban | None:
        row = await self._one(
            "SELECT * FROM quota_bans WHERE guild_id = $1 AND user_id = $2"
            " AND lifted_at IS NULL AND until > $3 ORDER BY until DESC LIMIT 1",
            guild_id,
            user_id,
            _utc(now),
        )
        return None if row is None else _ban(row)

    async def active_bans(self, guild_id: str, now: datetime) -> list[Ban]:
        rows = await self._all(
            "SELECT * FROM quota_bans WHERE guild_id = $1 AND lifted_at IS NULL AND until > $2"
            " ORDER BY until, id",
            guild_id,
            _utc(now),
        )
        return [_ban(row) for row in rows]

    async def add_ban(
        self, guild_id: str, user_id: str, until: datetime, reason: str, by: str, now: datetime
    ) -> Ban:
        row = await self._one(
            "INSERT INTO quota_bans (guild_id, user_id, until, reason, banned_by, created_at)"
            " VALUES ($1, $2, $3, $4, $5, $6) RETURNING *",
            guild_id,
            user_id,
            _utc(until),
            reason,
            by,
            _utc(now),
        )
        return _ban(row)

    async def lift_bans(self, guild_id: str, user_id: str, by: str, now: datetime) -> int:
        return await self._run(
            "UPDATE quota_bans SET lifted_at = $1, lifted_by = $2"
            " WHERE guild_id = $3 AND user_id = $4 AND lifted_at IS NULL AND until > $1",
            _utc(now),
            by,
            guild_id,
            user_id,
        )

    # --- entries ------------------------------------------------------------
    async def entry_by_key(self, idempotency_key: str) -> Entry | None:
        row = await self._one(
            f"SELECT {_ENTRY_COLUMNS} FROM quota_entries WHERE idempotency_key = $1",  # noqa: S608
            idempotency_key,
        )
        return None if row is None else _entry(row)

    async def entry_by_reservation(self, reservation_id: str) -> Entry | None:
        row = await self._one(
            f"SELECT {_ENTRY_COLUMNS} FROM quota_entries WHERE reservation_id = $1",  # noqa: S608
            reservation_id,
        )
        return None if row is None else _entry(row)

    async def find_entry(self, ref: str) -> Entry | None:
        row = await self._one(
            f"SELECT {_ENTRY_COLUMNS} FROM quota_entries"  # noqa: S608
            " WHERE job_id = $1 OR idempotency_key = $1 OR reservation_id = $1"
            " ORDER BY id DESC LIMIT 1",
            ref,
        )
        return None if row is None else _entry(row)

    async def insert_entry(self, entry: NewEntry) -> Entry:
        row = await self._one(
            "INSERT INTO quota_entries (reservation_id, guild_id, user_id, channel_id, job_id,"  # noqa: S608
            " idempotency_key, mode, prompt, cost_reserved, state, period_start, created_at,"
            " updated_at, owner_instance)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'reserved', $10, $11, $11, $12)"
            f" RETURNING {_ENTRY_COLUMNS}",
            entry.reservation_id,
            entry.guild_id,
            entry.user_id,
            entry.channel_id,
            entry.job_id,
            entry.idempotency_key,
            entry.mode,
            entry.prompt,
            entry.cost,
            _utc(entry.period_start),
            _utc(entry.created_at),
            entry.owner,
        )
        return _entry(row)

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
        held, params = held_by(holder, "$6")
        # LEAST() skips NULLs: a refund's NULL must stay NULL, not become the hold.
        count = await self._run(
            "UPDATE quota_entries SET state = $1, cost_settled ="  # noqa: S608 - a constant clause
            " CASE WHEN $2::integer IS NULL THEN NULL ELSE LEAST($2::integer, cost_reserved) END,"
            f" reason = $3, updated_at = $4 WHERE reservation_id = $5 AND state = 'reserved'{held}",
            state,
            cost_settled,
            reason,
            _utc(now),
            reservation_id,
            *params,
        )
        return count > 0

    async def mark_delivering(
        self, reservation_id: str, now: datetime, *, holder: Holder, delivering: bool = True
    ) -> bool:
        held, params = held_by(holder, "$4")
        count = await self._run(
            "UPDATE quota_entries SET delivering = $1, updated_at = $2"  # noqa: S608 - a constant clause
            f" WHERE reservation_id = $3 AND state = 'reserved'{held}",
            int(delivering),
            _utc(now),
            reservation_id,
            *params,
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
        for column, op, value in (
            ("guild_id", "=", guild_id),
            ("created_at", ">=", since),
            ("created_at", "<", until),
        ):
            if value is not None:
                params.append(_utc(value) if isinstance(value, datetime) else value)
                where.append(f"{column} {op} ${len(params)}")
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = await self._all(
            f"SELECT {_ENTRY_COLUMNS} FROM quota_entries{clause} ORDER BY id",  # noqa: S608
            *params,
        )
        return [_entry(row) for row in rows]

    async def max_entry_id(self) -> int:
        return await self._int("SELECT COALESCE(MAX(id), 0) FROM quota_entries")

    # --- sums ---------------------------------------------------------------
    async def last_started(self, user_id: str) -> datetime | None:
        value = await self._conn.fetchval(
            "SELECT MAX(created_at) FROM quota_entries WHERE user_id = $1", user_id
        )
        return cast(datetime | None, value)

    async def in_flight(self, user_id: str) -> int:
        return await self._int(
            "SELECT COUNT(*) FROM quota_entries"
            " WHERE user_id = $1 AND state = 'reserved' AND delivering = 0",
            user_id,
        )

    _SUMS = (
        "SELECT COALESCE(SUM(CASE WHEN state = 'settled' THEN cost_settled END), 0) AS settled,"
        " COALESCE(SUM(CASE WHEN state = 'reserved' THEN cost_reserved END), 0) AS reserved"
        " FROM quota_entries"
    )

    @staticmethod
    def _totals(row: Any) -> Totals:
        if row is None:
            return Totals()
        return Totals(settled=int(row["settled"]), reserved=int(row["reserved"]))

    _POOL_SUMS = (
        "SELECT COALESCE(SUM(settled), 0) AS settled, COALESCE(SUM(reserved), 0) AS reserved"
        " FROM quota_pool_totals WHERE guild_id = $1 AND period_start >= $2 AND period_start < $3"
    )

    async def totals(
        self,
        guild_id: str,
        user_id: str | None,
        start: datetime,
        end: datetime,
        after_entry_id: int,
    ) -> Totals:
        bounds = [guild_id, _utc(start), _utc(end)]
        if user_id is None:
            # The pool's running totals (migration 005), less what a reset excluded.
            pool = self._totals(await self._one(self._POOL_SUMS, *bounds))
            if after_entry_id == 0:
                return pool
            excluded = self._totals(
                await self._one(
                    self._SUMS + " WHERE guild_id = $1 AND period_start >= $2"
                    " AND period_start < $3 AND id <= $4",
                    *bounds,
                    after_entry_id,
                )
            )
            return Totals(
                settled=pool.settled - excluded.settled,
                reserved=pool.reserved - excluded.reserved,
            )
        return self._totals(
            await self._one(
                self._SUMS + " WHERE guild_id = $1 AND period_start >= $2 AND period_start < $3"
                " AND id > $4 AND user_id = $5",
                *bounds,
                after_entry_id,
                user_id,
            )
        )

    async def global_totals(self, start: datetime, end: datetime) -> Totals:
        return self._totals(
            await self._one(
                self._SUMS + " WHERE created_at >= $1 AND created_at < $2", _utc(start), _utc(end)
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
        row = await self._one(
            "INSERT INTO quota_grants"
            " (guild_id, user_id, credits, period_start, granted_by, reason, created_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *",
            guild_id,
            user_id,
            credits,
            _utc(period_start),
            by,
            reason,
            _utc(now),
        )
        return _grant(row)

    async def grants(self, guild_id: str | None = None) -> list[Grant]:
        if guild_id is None:
            rows = await self._all("SELECT * FROM quota_grants ORDER BY id")
        else:
            rows = await self._all(
                "SELECT * FROM quota_grants WHERE guild_id = $1 ORDER BY id", guild_id
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
        row = await self._one(
            "INSERT INTO quota_resets"
            " (guild_id, user_id, after_entry_id, period_start, reset_by, reason, created_at)"
            " SELECT $1, $2, COALESCE(MAX(id), 0), $3, $4, $5, $6 FROM quota_entries"
            " RETURNING *",
            guild_id,
            user_id,
            _utc(period_start),
            by,
            reason,
            _utc(now),
        )
        return _reset(row)

    # A member id never equals NULL, so with user_id None the member's two are 0.
    _ADJUSTMENTS = (
        "SELECT"
        " (SELECT COALESCE(SUM(credits), 0) FROM quota_grants WHERE guild_id = $1"
        "  AND period_start >= $2 AND period_start < $3 AND user_id IS NULL),"
        " (SELECT COALESCE(SUM(credits), 0) FROM quota_grants WHERE guild_id = $1"
        "  AND period_start >= $2 AND period_start < $3 AND user_id = $4),"
        " (SELECT COALESCE(MAX(after_entry_id), 0) FROM quota_resets WHERE guild_id = $1"
        "  AND period_start >= $2 AND period_start < $3 AND user_id IS NULL),"
        " (SELECT COALESCE(MAX(after_entry_id), 0) FROM quota_resets WHERE guild_id = $1"
        "  AND period_start >= $2 AND period_start < $3 AND user_id = $4)"
    )

    async def adjustments(
        self, guild_id: str, user_id: str | None, start: datetime, end: datetime
    ) -> Adjustments:
        row = await self._one(self._ADJUSTMENTS, guild_id, _utc(start), _utc(end), user_id)
        assert row is not None
        return Adjustments(
            pool_granted=int(row[0]),
            member_granted=int(row[1]),
            pool_mark=int(row[2]),
            member_mark=int(row[3]),
        )

    async def resets(self, guild_id: str | None = None) -> list[ResetMarker]:
        if guild_id is None:
            rows = await self._all("SELECT * FROM quota_resets ORDER BY id")
        else:
            rows = await self._all(
                "SELECT * FROM quota_resets WHERE guild_id = $1 ORDER BY id", guild_id
            )
        return [_reset(row) for row in rows]

    async def mark_threshold(
        self, guild_id: str, period_start: datetime, percent: int, now: datetime
    ) -> bool:
        # A concurrent insert of the same key makes this one wait for that
        # transaction and then do nothing: the event fires in one process only.
        count = await self._run(
            "INSERT INTO quota_thresholds (guild_id, period_start, percent, fired_at)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            guild_id,
            _utc(period_start),
            percent,
            _utc(now),
        )
        return count > 0


class PostgresLedgerStore:
    """``LedgerStore`` on a PostgreSQL database shared by any number of processes."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        migrations_dir: Path = POSTGRES_MIGRATIONS_DIR,
    ) -> None:
        self._url = url
        self._pool_size = pool_size
        self._migrations_dir = migrations_dir
        self._pool: Any = None
        self.description = describe_database(url)

    async def open(self) -> None:
        if self._pool is not None:
            return
        with pg_errors(self._url):
            pool = await asyncpg.create_pool(
                self._url, min_size=1, max_size=self._pool_size, command_timeout=60
            )
        try:
            async with pool.acquire() as conn:
                await apply_postgres_migrations(conn, directory=self._migrations_dir)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool
        logger.info("quota ledger in %s", self.description)

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    @property
    def database_id(self) -> str | None:
        return None if self._pool is None else postgres_database_id(self._url)

    @property
    def pool(self) -> Any:
        if self._pool is None:
            raise RuntimeError("the ledger store is not open")
        return self._pool

    async def _transaction(self, fn: Callable[[PostgresTx], Awaitable[T]], *, readonly: bool) -> T:
        pool = self.pool

        async def body() -> T:
            attempt = 1
            while True:
                try:
                    async with pool.acquire() as conn:
                        if readonly:
                            tx = conn.transaction(isolation="repeatable_read", readonly=True)
                        else:
                            tx = conn.transaction(isolation="read_committed")
                        async with tx:
                            return await fn(PostgresTx(conn))
                except _RETRYABLE as exc:
                    if attempt >= MAX_ATTEMPTS:
                        raise
                    logger.info(
                        "ledger transaction retried after %s (attempt %d)",
                        type(exc).__name__,
                        attempt,
                    )
                    attempt += 1
                    await asyncio.sleep(random.uniform(0, 0.01 * attempt))

        # As in the SQLite store: the transaction runs in its own task, so that
        # a cancelled caller (an interaction timing out) cannot stop it between
        # the reads that decide and the commit; a retry finds its result by key.
        task = asyncio.ensure_future(body())
        task.add_done_callback(_consume_exception)
        return await asyncio.shield(task)

    async def write(self, fn: Callable[[PostgresTx], Awaitable[T]]) -> T:
        return await self._transaction(fn, readonly=False)

    async def read(self, fn: Callable[[PostgresTx], Awaitable[T]]) -> T:
        return await self._transaction(fn, readonly=True)


def _consume_exception(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
