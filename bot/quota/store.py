"""The storage interface under the quota service.

The service holds the policy (which limits apply, what a refusal says); a store
holds the data and the transactions. Everything dialect-specific (SQL, locking)
lives in the store, so that a PostgreSQL store can be added beside
``SqliteLedgerStore`` without touching the service or its callers.

``write`` must serialise writers across processes (SQLite: ``BEGIN
IMMEDIATE``; PostgreSQL would take a transaction-level advisory lock or use
SERIALIZABLE) so that the service's check-then-insert in ``reserve`` is atomic.
All datetimes in and out are aware UTC.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Protocol, TypeVar

from bot.quota.models import (
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

T = TypeVar("T")


class LedgerTx(Protocol):
    """Reads and writes inside one transaction."""

    # --- guild configuration ------------------------------------------------
    async def get_guild(self, guild_id: str) -> GuildConfig | None: ...

    async def put_guild(self, config: GuildConfig, now: datetime) -> None: ...

    async def role_limits(self, guild_id: str, roles: Sequence[str]) -> list[LimitOverride]: ...

    async def set_role_limit(
        self, guild_id: str, role_id: str, credits: int | None, now: datetime
    ) -> None: ...

    async def remove_role_limit(self, guild_id: str, role_id: str) -> bool: ...

    async def user_limit(self, guild_id: str, user_id: str) -> LimitOverride | None: ...

    async def set_user_limit(
        self, guild_id: str, user_id: str, credits: int | None, now: datetime
    ) -> None: ...

    async def remove_user_limit(self, guild_id: str, user_id: str) -> bool: ...

    # --- bans ---------------------------------------------------------------
    async def active_ban(self, guild_id: str, user_id: str, now: datetime) -> Ban | None: ...

    async def add_ban(
        self, guild_id: str, user_id: str, until: datetime, reason: str, by: str, now: datetime
    ) -> Ban: ...

    async def lift_bans(self, guild_id: str, user_id: str, by: str, now: datetime) -> int: ...

    # --- entries ------------------------------------------------------------
    async def entry_by_key(self, idempotency_key: str) -> Entry | None: ...

    async def entry_by_reservation(self, reservation_id: str) -> Entry | None: ...

    async def find_entry(self, ref: str) -> Entry | None:
        """By job id, idempotency key or reservation id, newest first."""
        ...

    async def insert_entry(self, entry: NewEntry) -> Entry: ...

    async def finish_entry(
        self,
        reservation_id: str,
        state: EntryState,
        cost_settled: int | None,
        reason: str | None,
        now: datetime,
    ) -> bool:
        """Move a ``reserved`` entry to ``state``; False if it was not reserved."""
        ...

    async def reserved_entries(self) -> list[Entry]: ...

    async def entries(
        self,
        guild_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[Entry]:
        """Entries by ``created_at`` in ``[since, until)``, oldest first."""
        ...

    async def max_entry_id(self) -> int: ...

    # --- sums ---------------------------------------------------------------
    async def last_started(self, user_id: str) -> datetime | None:
        """When the member's newest reservation (in any guild) was made."""
        ...

    async def in_flight(self, user_id: str) -> int:
        """The member's reservations (in any guild) not yet settled or refunded."""
        ...

    async def totals(
        self,
        guild_id: str,
        user_id: str | None,
        start: datetime,
        end: datetime,
        after_entry_id: int,
    ) -> Totals:
        """Entries with ``period_start`` in ``[start, end)`` and id above the mark."""
        ...

    async def global_totals(self, start: datetime, end: datetime) -> Totals:
        """All guilds' entries with ``created_at`` in ``[start, end)``."""
        ...

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
    ) -> Grant: ...

    async def granted(
        self, guild_id: str, user_id: str | None, start: datetime, end: datetime
    ) -> int:
        """Credits granted to the member (``user_id``) or pool (None) this period."""
        ...

    async def grants(self, guild_id: str | None = None) -> list[Grant]: ...

    async def add_reset(
        self,
        guild_id: str,
        user_id: str | None,
        period_start: datetime,
        by: str,
        reason: str | None,
        now: datetime,
    ) -> ResetMarker: ...

    async def reset_mark(
        self, guild_id: str, user_id: str | None, start: datetime, end: datetime
    ) -> int:
        """The highest ``after_entry_id`` of resets of the member (or the guild,
        for None) in the period; 0 if none."""
        ...

    async def resets(self, guild_id: str | None = None) -> list[ResetMarker]: ...

    async def mark_threshold(
        self, guild_id: str, period_start: datetime, percent: int, now: datetime
    ) -> bool:
        """Record that a threshold fired; False if it had already been recorded."""
        ...


class LedgerStore(Protocol):
    async def open(self) -> None:
        """Connect and bring the schema up to date."""
        ...

    async def close(self) -> None: ...

    async def write(self, fn: Callable[[LedgerTx], Awaitable[T]]) -> T:
        """Run ``fn`` in a transaction that excludes every other writer, in any
        process, and commit it (roll back if ``fn`` raises). Cancelling the
        caller must not leave the transaction half done."""
        ...

    async def read(self, fn: Callable[[LedgerTx], Awaitable[T]]) -> T:
        """Run ``fn`` in a transaction that sees one consistent snapshot."""
        ...
