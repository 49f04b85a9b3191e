"""The ledger interface the job pipeline calls. No discord.py types."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Reservation:
    """Credits held for one job until it is settled or refunded."""

    id: str
    guild_id: str
    user_id: str
    cost: int
    idempotency_key: str
    created_at: datetime
    # What is left after this hold; None means unlimited.
    user_remaining: int | None = None
    guild_remaining: int | None = None
    # The guild period the hold counts against, and when that period ends.
    period_start: datetime | None = None
    resets_at: datetime | None = None
    # True when ``reserve`` found this key already reserved (a retried
    # interaction): the job was started once already and must not run twice.
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class JournalStep:
    """A write of the job journal made in the same transaction as a ledger
    change: both happen or neither does, in one round trip to the database.
    SQL with ``?`` placeholders, for a journal in the ledger's own database
    (``Ledger.database_id``)."""

    sql: str
    params: tuple[Any, ...]


class AlreadyAdmitted(Exception):
    """``reserve`` was given the journal's admission of a job whose idempotency
    key is taken: a duplicate event or a double click. Nothing was held."""


class Ledger(Protocol):
    # The database the ledger keeps its entries in, when a job journal in the
    # same database may ride on its transactions (``JournalStep``); else None.
    @property
    def database_id(self) -> str | None: ...

    async def reserve(
        self,
        guild_id: str,
        user_id: str,
        roles: Sequence[str],
        cost: int,
        idempotency_key: str,
        *,
        channel_id: str | None = None,
        job_id: str | None = None,
        prompt: str | None = None,
        mode: str | None = None,
        admit: JournalStep | None = None,
    ) -> Reservation:
        """Hold ``cost`` credits or raise ``QuotaRefused``.

        The same ``idempotency_key`` returns the existing reservation instead of
        holding twice. ``admit``, the journal's record of the new job, is
        written first in the same transaction; if it writes nothing (the key is
        taken) nothing is held and ``AlreadyAdmitted`` is raised. A refusal
        undoes it with the rest.
        """
        ...

    async def settle(
        self, reservation: Reservation, actual_cost: int, *, journal: JournalStep | None = None
    ) -> None:
        """Charge what was delivered (at most the reserved cost). Idempotent.
        Raises ``LeaseLost`` if another process adopted the reservation;
        otherwise ``journal`` is written with the outcome, even if the
        reservation was already settled."""
        ...

    async def refund(self, reservation: Reservation, reason: str) -> None:
        """Release the hold. Idempotent; a no-op on a settled reservation."""
        ...

    async def begin_delivery(
        self, reservation: Reservation, *, journal: JournalStep | None = None
    ) -> None:
        """The result is about to be posted: raise ``LeaseLost`` if another
        process has adopted the job, ``DeliveryError`` if the hold has ended;
        otherwise the job stops counting as in progress (credits stay held)
        and ``journal`` is written with that."""
        ...

    async def back_in_progress(
        self, reservation: Reservation, *, journal: JournalStep | None = None
    ) -> None:
        """``begin_delivery`` undone, for a failover to another provider: the
        job counts as in progress again. Raises as ``begin_delivery`` does."""
        ...

    async def sweep_expired(self) -> list[Reservation]:
        """Refund what is past its deadline; returns the refunds."""
        ...

    async def states(self, reservation_ids: Sequence[str]) -> dict[str, str]:
        """``reserved``, ``settled`` or ``refunded`` for each known reservation."""
        ...

    async def held_for(self, job_id: str) -> Reservation | None:
        """The reservation a job still holds, if any (for a job whose journal
        never recorded it: a process killed just after reserving)."""
        ...


class UnlimitedLedger:
    """Allows everything and records nothing: for tests of the pipeline alone."""

    database_id = None

    def __init__(self) -> None:
        self._by_key: dict[str, Reservation] = {}
        self.settled: dict[str, int] = {}
        self.refunded: dict[str, str] = {}

    async def reserve(
        self,
        guild_id: str,
        user_id: str,
        roles: Sequence[str],
        cost: int,
        idempotency_key: str,
        *,
        channel_id: str | None = None,
        job_id: str | None = None,
        prompt: str | None = None,
        mode: str | None = None,
        admit: JournalStep | None = None,
    ) -> Reservation:
        if admit is not None:
            raise ValueError("this ledger keeps no database for a journal to ride on")
        existing = self._by_key.get(idempotency_key)
        if existing is not None:
            return existing
        reservation = Reservation(
            id=uuid.uuid4().hex,
            guild_id=guild_id,
            user_id=user_id,
            cost=cost,
            idempotency_key=idempotency_key,
            created_at=datetime.now(UTC),
        )
        self._by_key[idempotency_key] = reservation
        return reservation

    async def begin_delivery(
        self, reservation: Reservation, *, journal: JournalStep | None = None
    ) -> None:
        if journal is not None:
            raise ValueError("this ledger keeps no database for a journal to ride on")

    async def back_in_progress(
        self, reservation: Reservation, *, journal: JournalStep | None = None
    ) -> None:
        await self.begin_delivery(reservation, journal=journal)

    async def settle(
        self, reservation: Reservation, actual_cost: int, *, journal: JournalStep | None = None
    ) -> None:
        if journal is not None:
            raise ValueError("this ledger keeps no database for a journal to ride on")
        if reservation.id not in self.refunded:
            self.settled.setdefault(reservation.id, actual_cost)

    async def refund(self, reservation: Reservation, reason: str) -> None:
        if reservation.id not in self.settled:
            self.refunded.setdefault(reservation.id, reason)

    async def sweep_expired(self) -> list[Reservation]:
        return []

    async def states(self, reservation_ids: Sequence[str]) -> dict[str, str]:
        found = {}
        for rid in reservation_ids:
            if rid in self.settled:
                found[rid] = "settled"
            elif rid in self.refunded:
                found[rid] = "refunded"
            elif any(r.id == rid for r in self._by_key.values()):
                found[rid] = "reserved"
        return found

    async def held_for(self, job_id: str) -> Reservation | None:
        return None
