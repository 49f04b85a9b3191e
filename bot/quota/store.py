"""The storage interface under the quota service.

The service holds the policy (which limits apply, what a refusal says); a store
holds the data and the transactions. Everything dialect-specific (SQL, locking)
lives in the store (``SqliteLedgerStore``, ``PostgresLedgerStore``), so the
service and its callers do not know which database they use.

The service's check-then-insert in ``reserve`` must be atomic across
processes. A write transaction that decides from sums, or changes a guild's
settings, first calls ``LedgerTx.lock`` with the scopes it reads or changes
(``guild_scope``, ``user_scope``, ``BUDGET_SCOPE``); two writers naming a common
scope run one after the other. ``SqliteLedgerStore`` serialises all writers
anyway (``BEGIN IMMEDIATE``), so ``lock`` does nothing there;
``PostgresLedgerStore`` locks one row per scope, so reservations in different
guilds by different members run in parallel.

Scopes are taken in the order guild, user, budget (each at most once), which
is the same order in every transaction, so two writers never wait for each
other in a circle. Settling, refunding and sweeping take no scope: they only
move one entry out of ``reserved`` with a conditional update, which can lower a
sum another writer has just read but never raise it.

All datetimes in and out are aware UTC.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from enum import Enum
from typing import Final, Protocol, TypeVar

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

T = TypeVar("T")

BUDGET_SCOPE = "budget"


class _Anyone(Enum):
    ANYONE = "anyone"


# ``holder`` of an update that applies whichever process holds the entry (the sweeper's).
ANYONE: Final = _Anyone.ANYONE
Holder = str | None | _Anyone


def held_by(holder: Holder, placeholder: str) -> tuple[str, tuple[str, ...]]:
    """The WHERE clause of an update for entries ``holder`` may change, and its
    parameters; ``placeholder`` is the backend's for the next one (``?``, ``$6``).
    An entry no process holds is anyone's."""
    if holder is ANYONE:
        return "", ()
    if holder is None:
        return " AND owner_instance IS NULL", ()
    return f" AND (owner_instance IS NULL OR owner_instance = {placeholder})", (holder,)


def guild_scope(guild_id: str) -> str:
    return f"guild:{guild_id}"


def user_scope(user_id: str) -> str:
    return f"user:{user_id}"


class LedgerTx(Protocol):
    """Reads and writes inside one transaction."""

    async def lock(self, *scopes: str) -> None:
        """Hold ``scopes`` until the transaction ends, waiting for any other
        transaction holding one of them; afterwards reads see what it committed."""
        ...

    async def journal(self, step: JournalStep) -> int:
        """Write a step of the job journal in this transaction; the rows changed."""
        ...

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

    async def active_bans(self, guild_id: str, now: datetime) -> list[Ban]:
        """Every member's ban in force, soonest to end first."""
        ...

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
        *,
        holder: Holder,
    ) -> bool:
        """Move a ``reserved`` entry to ``state``, charging ``cost_settled`` but
        never more than it holds; False if it was not reserved, or is held by a
        process other than ``holder`` (an entry no process holds is anyone's)."""
        ...

    async def reserved_entries(self) -> list[Entry]: ...

    async def mark_delivering(
        self, reservation_id: str, now: datetime, *, holder: Holder, delivering: bool = True
    ) -> bool:
        """Mark a ``reserved`` entry as being posted, or (``delivering`` False)
        as in progress again; False if it is not reserved or is held by a
        process other than ``holder``, as for ``finish_entry``."""
        ...

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
        """The member's reservations (in any guild) not yet settled or refunded,
        leaving out those whose result is being posted."""
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

    async def adjustments(
        self, guild_id: str, user_id: str | None, start: datetime, end: datetime
    ) -> Adjustments:
        """Grants and reset marks of the pool and of the member (``user_id``;
        None: the pool's alone) for periods starting in ``[start, end)``."""
        ...

    async def resets(self, guild_id: str | None = None) -> list[ResetMarker]: ...

    async def mark_threshold(
        self, guild_id: str, period_start: datetime, percent: int, now: datetime
    ) -> bool:
        """Record that a threshold fired; False if it had already been recorded."""
        ...


class LedgerStore(Protocol):
    @property
    def database_id(self) -> str | None:
        """The database, once open, as the job store names it (``Ledger.database_id``)."""
        ...

    async def open(self) -> None:
        """Connect and bring the schema up to date."""
        ...

    async def close(self) -> None: ...

    async def write(self, fn: Callable[[LedgerTx], Awaitable[T]]) -> T:
        """Run ``fn`` in a transaction and commit it (roll back if ``fn``
        raises); writers that ``lock`` a common scope are serialised, in any
        process. ``fn`` may be run again from the start if the database asks
        for a retry (a deadlock, a unique key taken by a concurrent writer), so
        it must not have effects outside the transaction. Cancelling the caller
        must not leave the transaction half done."""
        ...

    async def read(self, fn: Callable[[LedgerTx], Awaitable[T]]) -> T:
        """Run ``fn`` in a transaction that sees one consistent snapshot."""
        ...
