"""Plain data the quota ledger hands out and its store hands back."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from bot.quota.periods import Period

EntryState = Literal["reserved", "settled", "refunded"]
UsageBy = Literal["user", "channel", "day"]
THRESHOLDS: tuple[int, ...] = (80, 100)


@dataclass(frozen=True, slots=True)
class GuildConfig:
    guild_id: str
    pool_credits: int
    period: Period
    timezone: str
    user_default: int | None  # None: no per-member limit


@dataclass(frozen=True, slots=True)
class LimitOverride:
    """A role's or a member's allowance; ``credits`` None means unlimited."""

    credits: int | None


@dataclass(frozen=True, slots=True)
class Entry:
    """One row of the ledger: a reservation and what became of it."""

    id: int
    reservation_id: str
    guild_id: str
    user_id: str
    channel_id: str | None
    job_id: str | None
    idempotency_key: str
    mode: str | None
    prompt: str | None
    cost_reserved: int
    cost_settled: int | None
    state: EntryState
    reason: str | None
    period_start: datetime
    created_at: datetime
    updated_at: datetime
    # The instance (bot.lease) holding it; None: a process without a lease (the CLI).
    owner: str | None
    # Its result is being posted: credits still held, no longer "in progress".
    delivering: bool = False


@dataclass(frozen=True, slots=True)
class NewEntry:
    reservation_id: str
    guild_id: str
    user_id: str
    channel_id: str | None
    job_id: str | None
    idempotency_key: str
    mode: str | None
    prompt: str | None
    cost: int
    period_start: datetime
    created_at: datetime
    owner: str | None

    def stored(self, entry_id: int, *, period_start: datetime, created_at: datetime) -> Entry:
        """The entry as the ledger now holds it: ``entry_id`` and the times as
        read back from its columns (a store may round or change their zone)."""
        return Entry(
            id=entry_id,
            reservation_id=self.reservation_id,
            guild_id=self.guild_id,
            user_id=self.user_id,
            channel_id=self.channel_id,
            job_id=self.job_id,
            idempotency_key=self.idempotency_key,
            mode=self.mode,
            prompt=self.prompt,
            cost_reserved=self.cost,
            cost_settled=None,
            state="reserved",
            reason=None,
            period_start=period_start,
            created_at=created_at,
            updated_at=created_at,
            owner=self.owner,
        )


@dataclass(frozen=True, slots=True)
class Grant:
    id: int
    guild_id: str
    user_id: str | None  # None: the guild pool
    credits: int
    period_start: datetime
    granted_by: str
    reason: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ResetMarker:
    id: int
    guild_id: str
    user_id: str | None  # None: the whole guild
    after_entry_id: int
    period_start: datetime
    reset_by: str
    reason: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Ban:
    id: int
    guild_id: str
    user_id: str
    until: datetime
    reason: str
    banned_by: str
    created_at: datetime
    lifted_at: datetime | None = None
    lifted_by: str | None = None


@dataclass(frozen=True, slots=True)
class Totals:
    """Credits charged (settled) and held (reserved) by the entries that count."""

    settled: int = 0
    reserved: int = 0

    @property
    def total(self) -> int:
        return self.settled + self.reserved


@dataclass(frozen=True, slots=True)
class Adjustments:
    """What moderators changed in a period: credits granted to the pool and to
    one member, and the reset marks of each (the highest ``after_entry_id``,
    0 where there was no reset). Read together, in one statement, because a
    reservation needs all four."""

    pool_granted: int = 0
    member_granted: int = 0
    pool_mark: int = 0
    member_mark: int = 0


@dataclass(frozen=True, slots=True)
class Balance:
    """Where a pool or a member stands in the current period.

    ``limit`` and ``remaining`` are None when unlimited; ``remaining`` never goes
    below 0 even if a moderator lowered the limit under what is already used.
    """

    limit: int | None
    used: int
    reserved: int
    remaining: int | None
    period: Period
    resets_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "limit": self.limit,
            "used": self.used,
            "reserved": self.reserved,
            "remaining": self.remaining,
            "period": self.period,
            "resets_at": self.resets_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class Balances:
    guild: Balance
    user: Balance | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"guild": self.guild.to_json()}
        if self.user is not None:
            data["user"] = self.user.to_json()
        return data


@dataclass(frozen=True, slots=True)
class UsageRow:
    """Usage of one user, channel or local day: ``key`` is its id or ISO date."""

    key: str
    jobs: int
    credits: int  # settled
    reserved: int
    refunded_jobs: int

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "jobs": self.jobs,
            "credits": self.credits,
            "reserved": self.reserved,
            "refunded_jobs": self.refunded_jobs,
        }


@dataclass(frozen=True, slots=True)
class JobInfo:
    """Who generated a job, for moderators."""

    reservation_id: str
    guild_id: str
    user_id: str
    channel_id: str | None
    job_id: str | None
    idempotency_key: str
    mode: str | None
    prompt: str | None
    cost_reserved: int
    cost_settled: int | None
    state: EntryState
    reason: str | None
    created_at: datetime
    updated_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "reservation_id": self.reservation_id,
            "guild_id": self.guild_id,
            "user_id": self.user_id,
            "channel_id": self.channel_id,
            "job_id": self.job_id,
            "idempotency_key": self.idempotency_key,
            "mode": self.mode,
            "prompt": self.prompt,
            "cost_reserved": self.cost_reserved,
            "cost_settled": self.cost_settled,
            "state": self.state,
            "reason": self.reason,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class ThresholdEvent:
    """A guild pool passed ``percent`` (80 or 100) of its limit this period."""

    guild_id: str
    percent: int
    used: int  # settled plus reserved credits
    limit: int
    period: Period
    resets_at: datetime
    period_start: datetime
