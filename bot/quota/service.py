"""The quota service: the policy over a ``LedgerStore``.

Limits a reservation must pass, in this order, all inside one write transaction:
ban, cooldown, jobs in flight, the member's allowance, the guild pool, the
operator-wide daily budget.

Usage of a period is the sum of settled and still-reserved entries whose
``period_start`` falls in the period, minus whatever a reset marker put behind
it. Limits are the configured allowance plus the grants of the period. So every
balance can be recomputed from ``quota_entries``, ``quota_grants`` and
``quota_resets`` alone.
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from bot.errors import ConfigError, DeliveryError, LeaseLost, QuotaRefused
from bot.metrics import Observer
from bot.migrate import is_postgres_url
from bot.quota.base import AlreadyAdmitted, JournalStep, Reservation
from bot.quota.models import (
    THRESHOLDS,
    Adjustments,
    Balance,
    Balances,
    Ban,
    Entry,
    EntryState,
    Grant,
    GuildConfig,
    JobInfo,
    NewEntry,
    ResetMarker,
    ThresholdEvent,
    Totals,
    UsageBy,
    UsageRow,
)
from bot.quota.periods import PERIOD_WORDS, Period, parse_period, period_bounds, utc_day_bounds
from bot.quota.periods import zone as check_zone
from bot.quota.sqlite_store import SqliteLedgerStore
from bot.quota.store import ANYONE, BUDGET_SCOPE, LedgerStore, LedgerTx, guild_scope, user_scope

if TYPE_CHECKING:
    from bot.config import Settings

logger = logging.getLogger("bot.quota")

Clock = Callable[[], datetime]
ThresholdCallback = Callable[[ThresholdEvent], Awaitable[None]]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def discord_time(when: datetime, style: str = "R") -> str:
    """Discord timestamp markup: shown in each member's own time zone."""
    return f"<t:{math.floor(when.timestamp())}:{style}>"


def ban_refusal(ban: Ban) -> QuotaRefused:
    """What a banned member is told: for them alone, as it carries the moderator's reason."""
    return QuotaRefused(
        f"You are banned from generating images until {discord_time(ban.until, 'f')}: "
        f"{ban.reason}.",
        limit="ban",
        resets_at=ban.until,
    )


def _credits(n: int) -> str:
    return f"{n} credit" if n == 1 else f"{n} credits"


@dataclass(frozen=True, slots=True)
class QuotaPolicy:
    """The operator's settings the service needs."""

    default_pool_credits: int = 500
    default_pool_period: Period = "day"
    default_timezone: str = "UTC"
    default_user_allowance: int | None = 50
    global_daily_budget: int | None = None
    max_jobs_in_flight_per_user: int = 2
    cooldown_seconds: float = 0.0
    reservation_timeout: float = 1800.0
    sweep_interval: float = 60.0

    @classmethod
    def from_settings(cls, settings: Settings) -> QuotaPolicy:
        return cls(
            default_pool_credits=settings.default_pool_credits,
            default_pool_period=settings.default_pool_period,
            default_timezone=settings.default_timezone,
            default_user_allowance=settings.default_user_allowance,
            global_daily_budget=settings.global_daily_budget,
            max_jobs_in_flight_per_user=settings.max_jobs_in_flight_per_user,
            cooldown_seconds=settings.cooldown_seconds,
            reservation_timeout=settings.reservation_timeout,
            sweep_interval=settings.sweep_interval,
        )


@dataclass(frozen=True, slots=True)
class _Scope:
    config: GuildConfig
    start: datetime
    end: datetime


class QuotaService:
    """The ``Ledger`` the job pipeline calls, plus moderators' operations."""

    def __init__(
        self,
        store: LedgerStore,
        policy: QuotaPolicy | None = None,
        *,
        now: Clock | None = None,
        on_threshold: ThresholdCallback | None = None,
    ) -> None:
        self.store = store
        self.policy = policy or QuotaPolicy()
        self.now: Clock = now or _utcnow
        self.on_threshold = on_threshold
        self.observer = Observer()  # the bot sets its metrics here
        # The lease (bot.lease) of the process: reservations made here belong to
        # it and only it settles or refunds them, unless another live process
        # adopts them after the lease ran out. None: no lease (the CLI), and
        # only RESERVATION_TIMEOUT ends a reservation left behind.
        self.instance: str | None = None
        self._started = False

    @property
    def database_id(self) -> str | None:
        return self.store.database_id

    # --- life cycle ----------------------------------------------------------
    async def start(self, *, sweep: bool = True) -> list[Reservation]:
        """Open the store (migrating it) and refund what is past its deadline."""
        await self.store.open()
        self._started = True
        return await self.sweep_expired() if sweep else []

    async def states(self, reservation_ids: Sequence[str]) -> dict[str, str]:
        """``reserved``, ``settled`` or ``refunded`` for each known reservation."""

        async def run(tx: LedgerTx) -> dict[str, str]:
            found: dict[str, str] = {}
            for reservation_id in reservation_ids:
                entry = await tx.entry_by_reservation(reservation_id)
                if entry is not None:
                    found[reservation_id] = entry.state
            return found

        return await self.store.read(run)

    async def held_for(self, job_id: str) -> Reservation | None:
        entry = await self.store.read(lambda tx: tx.find_entry(job_id))
        if entry is None or entry.job_id != job_id or entry.state != "reserved":
            return None
        return self._reservation(entry)

    async def close(self) -> None:
        await self.store.close()

    async def run_sweeper(self, interval: float | None = None) -> None:
        """Sweep expired reservations forever; cancel the task to stop."""
        delay = self.policy.sweep_interval if interval is None else interval
        while True:
            await asyncio.sleep(delay)
            try:
                await self.sweep_expired()
            except Exception:
                logger.exception("quota sweep failed; will try again in %s s", delay)

    # --- helpers ---------------------------------------------------------------
    def _default_config(self, guild_id: str) -> GuildConfig:
        return GuildConfig(
            guild_id=guild_id,
            pool_credits=self.policy.default_pool_credits,
            period=self.policy.default_pool_period,
            timezone=self.policy.default_timezone,
            user_default=self.policy.default_user_allowance,
        )

    async def _config(
        self, tx: LedgerTx, guild_id: str, now: datetime, *, create: bool = False
    ) -> GuildConfig:
        config = await tx.get_guild(guild_id)
        if config is None:
            config = self._default_config(guild_id)
            if create:
                await tx.put_guild(config, now)
        return config

    async def _scope(
        self, tx: LedgerTx, guild_id: str, now: datetime, *, create: bool = False
    ) -> _Scope:
        config = await self._config(tx, guild_id, now, create=create)
        start, end = period_bounds(config.period, config.timezone, now)
        return _Scope(config, start, end)

    async def _adjustments(
        self, tx: LedgerTx, scope: _Scope, user_id: str | None = None
    ) -> Adjustments:
        return await tx.adjustments(scope.config.guild_id, user_id, scope.start, scope.end)

    async def _pool(
        self, tx: LedgerTx, scope: _Scope, moderated: Adjustments
    ) -> tuple[int, Totals]:
        limit = scope.config.pool_credits + moderated.pool_granted
        totals = await tx.totals(
            scope.config.guild_id, None, scope.start, scope.end, moderated.pool_mark
        )
        return limit, totals

    async def _allowance(
        self, tx: LedgerTx, config: GuildConfig, user_id: str, roles: Sequence[str]
    ) -> int | None:
        """The member's configured allowance; None is unlimited.

        A member's own override beats their roles. Otherwise, if any of their
        roles has an allowance, the highest applies (unlimited beats any number),
        even when it is below the guild's default, so a role can also restrict;
        a member with no such role gets the guild's default.
        """
        override = await tx.user_limit(config.guild_id, user_id)
        if override is not None:
            return override.credits
        role_limits = await tx.role_limits(config.guild_id, list(roles))
        if role_limits:
            values = [limit.credits for limit in role_limits]
            if any(value is None for value in values):
                return None
            return max(value for value in values if value is not None)
        return config.user_default

    async def _user(
        self,
        tx: LedgerTx,
        scope: _Scope,
        user_id: str,
        roles: Sequence[str],
        moderated: Adjustments,
    ) -> tuple[int | None, Totals]:
        allowance = await self._allowance(tx, scope.config, user_id, roles)
        # A reset of the whole pool resets every member's count too.
        mark = max(moderated.pool_mark, moderated.member_mark)
        totals = await tx.totals(scope.config.guild_id, user_id, scope.start, scope.end, mark)
        if allowance is None:
            return None, totals
        return allowance + moderated.member_granted, totals

    @staticmethod
    def _balance(limit: int | None, totals: Totals, scope: _Scope) -> Balance:
        remaining = None if limit is None else max(0, limit - totals.total)
        return Balance(
            limit=limit,
            used=totals.settled,
            reserved=totals.reserved,
            remaining=remaining,
            period=scope.config.period,
            resets_at=scope.end,
        )

    async def _thresholds(
        self,
        tx: LedgerTx,
        scope: _Scope,
        now: datetime,
        pool: tuple[int, Totals] | None = None,
    ) -> list[ThresholdEvent]:
        """``pool``: the pool's limit and totals if the caller knows them already."""
        if pool is None:
            pool = await self._pool(tx, scope, await self._adjustments(tx, scope))
        limit, totals = pool
        events: list[ThresholdEvent] = []
        if limit <= 0:
            return events
        for percent in THRESHOLDS:
            if totals.total * 100 < percent * limit:
                continue
            if await tx.mark_threshold(scope.config.guild_id, scope.start, percent, now):
                events.append(
                    ThresholdEvent(
                        guild_id=scope.config.guild_id,
                        percent=percent,
                        used=totals.total,
                        limit=limit,
                        period=scope.config.period,
                        resets_at=scope.end,
                        period_start=scope.start,
                    )
                )
        return events

    async def _fire(self, events: list[ThresholdEvent]) -> None:
        callback = self.on_threshold
        for event in events:
            logger.info(
                "guild %s pool passed %d%% (%d of %d credits this %s)",
                event.guild_id,
                event.percent,
                event.used,
                event.limit,
                event.period,
            )
            if callback is None:
                continue
            try:
                await callback(event)
            except Exception:
                logger.exception("threshold callback failed for guild %s", event.guild_id)

    @staticmethod
    def _reservation(
        entry: Entry,
        *,
        user_remaining: int | None = None,
        guild_remaining: int | None = None,
        resets_at: datetime | None = None,
        replayed: bool = False,
    ) -> Reservation:
        return Reservation(
            id=entry.reservation_id,
            guild_id=entry.guild_id,
            user_id=entry.user_id,
            cost=entry.cost_reserved,
            idempotency_key=entry.idempotency_key,
            created_at=entry.created_at,
            user_remaining=user_remaining,
            guild_remaining=guild_remaining,
            period_start=entry.period_start,
            resets_at=resets_at,
            replayed=replayed,
        )

    # --- the Ledger interface ----------------------------------------------------
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
        if cost < 0:
            raise ValueError(f"cost must be 0 or more, not {cost}")
        if not idempotency_key:
            raise ValueError("an idempotency key is required")
        if not self._started:
            raise RuntimeError("QuotaService.start() has not been called")
        owner = self.instance
        policy = self.policy

        async def run(tx: LedgerTx) -> tuple[Reservation, list[ThresholdEvent]]:
            if admit is not None and await tx.journal(admit) == 0:
                raise AlreadyAdmitted(idempotency_key)
            # Before any read: a concurrent reservation with this key, in this
            # pool or by this member, has then committed and is seen below.
            await tx.lock(guild_scope(guild_id), user_scope(user_id))
            now = self.now()
            existing = await tx.entry_by_key(idempotency_key)
            if existing is not None:
                if (existing.guild_id, existing.user_id) != (guild_id, user_id):
                    logger.warning(
                        "idempotency key %s reused by guild %s user %s; it belongs to %s/%s",
                        idempotency_key,
                        guild_id,
                        user_id,
                        existing.guild_id,
                        existing.user_id,
                    )
                # Whatever became of it (even refunded), the key has been
                # used: a retry must never hold credits a second time.
                if admit is not None:
                    raise AlreadyAdmitted(idempotency_key)  # and no new job either
                return self._reservation(existing, replayed=True), []

            scope = await self._scope(tx, guild_id, now, create=True)
            word = PERIOD_WORDS[scope.config.period]

            ban = await tx.active_ban(guild_id, user_id, now)
            if ban is not None:
                raise ban_refusal(ban)

            if policy.cooldown_seconds > 0:
                last = await tx.last_started(user_id)
                if last is not None:
                    # min(): another process's clock may be a little ahead.
                    wait = min(
                        policy.cooldown_seconds,
                        policy.cooldown_seconds - (now - last).total_seconds(),
                    )
                    if wait > 0:
                        raise QuotaRefused(
                            f"Please wait {math.ceil(wait)} s before starting another image.",
                            limit="cooldown",
                            resets_at=now + timedelta(seconds=wait),
                        )

            in_flight = await tx.in_flight(user_id)
            if in_flight >= policy.max_jobs_in_flight_per_user:
                noun = "image" if in_flight == 1 else "images"
                raise QuotaRefused(
                    f"You already have {in_flight} {noun} in progress; wait for one to finish.",
                    limit="in_flight",
                )

            moderated = await self._adjustments(tx, scope, user_id)
            user_limit, user_totals = await self._user(tx, scope, user_id, roles, moderated)
            user_remaining: int | None = None
            if user_limit is not None:
                user_remaining = max(0, user_limit - user_totals.total)
                if cost > user_remaining:
                    raise QuotaRefused(
                        f"You have {_credits(user_remaining)} left {word} and this costs "
                        f"{cost}. Your allowance resets {discord_time(scope.end)}.",
                        limit="user_allowance",
                        remaining=user_remaining,
                        resets_at=scope.end,
                    )

            pool_limit, pool_totals = await self._pool(tx, scope, moderated)
            pool_remaining = max(0, pool_limit - pool_totals.total)
            if cost > pool_remaining:
                if pool_remaining == 0:
                    text = (
                        f"This server's image pool is used up for {word} "
                        f"(0 of {pool_limit} credits left)."
                    )
                else:
                    text = (
                        f"This server's image pool has {pool_remaining} of {pool_limit} "
                        f"credits left {word} and this costs {cost}."
                    )
                raise QuotaRefused(
                    f"{text} It resets {discord_time(scope.end)}.",
                    limit="guild_pool",
                    remaining=pool_remaining,
                    resets_at=scope.end,
                )

            if policy.global_daily_budget is not None:
                # Taken last and only when there is a budget: it serialises
                # reservations of every guild.
                await tx.lock(BUDGET_SCOPE)
                day_start, day_end = utc_day_bounds(now)
                spent = await tx.global_totals(day_start, day_end)
                budget_left = max(0, policy.global_daily_budget - spent.total)
                if cost > budget_left:
                    raise QuotaRefused(
                        "The bot has reached its daily generation budget; "
                        f"try again {discord_time(day_end)}.",
                        limit="global_budget",
                        remaining=budget_left,
                        resets_at=day_end,
                    )

            entry = await tx.insert_entry(
                NewEntry(
                    reservation_id=uuid.uuid4().hex,
                    guild_id=guild_id,
                    user_id=user_id,
                    channel_id=channel_id,
                    job_id=job_id,
                    idempotency_key=idempotency_key,
                    mode=mode,
                    prompt=prompt,
                    cost=cost,
                    period_start=scope.start,
                    created_at=now,
                    owner=owner,
                )
            )
            # The pool as it is now: the sums read above (the guild's scope is
            # held, so no other reservation, grant or reset has touched it since)
            # plus the entry just inserted, which is above any reset mark.
            pool_now = Totals(settled=pool_totals.settled, reserved=pool_totals.reserved + cost)
            events = await self._thresholds(tx, scope, now, (pool_limit, pool_now))
            reservation = self._reservation(
                entry,
                user_remaining=None if user_remaining is None else user_remaining - cost,
                guild_remaining=pool_remaining - cost,
                resets_at=scope.end,
            )
            return reservation, events

        reservation, events = await self.store.write(run)
        await self._fire(events)
        return reservation

    async def _finish(
        self,
        reservation: Reservation,
        state: EntryState,
        actual_cost: int | None,
        reason: str | None,
        journal: JournalStep | None = None,
    ) -> bool:
        async def run(tx: LedgerTx) -> tuple[bool, list[ThresholdEvent]]:
            # The update decides alone in the usual case; the entry is read only
            # to say why it did not apply.
            if await tx.finish_entry(
                reservation.id, state, actual_cost, reason, self.now(), holder=self.instance
            ):
                if actual_cost is not None and actual_cost > reservation.cost:
                    logger.warning(
                        "reservation %s settled at %d credits but held %d; charging %d",
                        reservation.id,
                        actual_cost,
                        reservation.cost,
                        reservation.cost,
                    )
                if journal is not None:
                    await tx.journal(journal)
                # Thresholds count held credits too, so a settle (never above the
                # hold) or a refund cannot cross one: no need to recount the pool.
                return True, []
            entry = await tx.entry_by_reservation(reservation.id)
            if entry is None:
                logger.warning("%s of unknown reservation %s ignored", state, reservation.id)
            elif entry.owner is not None and entry.owner != self.instance:
                # Adopted by another process after this one's lease ran out.
                raise LeaseLost(reservation.id)
            else:
                # Settled, refunded or swept already, by this process or another.
                logger.info(
                    "%s of reservation %s ignored: it is already %s",
                    "settle" if state == "settled" else "refund",
                    reservation.id,
                    entry.state,
                )
            if journal is not None:
                await tx.journal(journal)
            return False, []

        changed, events = await self.store.write(run)
        await self._fire(events)
        return changed

    async def begin_delivery(
        self, reservation: Reservation, *, journal: JournalStep | None = None
    ) -> None:
        """Before the result is posted: check the credits are still held by this
        process and stop counting the job as in progress (its image is
        appearing; a member who starts the next one right away is not refused
        for it). The credits stay held until ``settle``."""
        await self._mark_delivering(reservation, True, journal)

    async def back_in_progress(
        self, reservation: Reservation, *, journal: JournalStep | None = None
    ) -> None:
        """A failover, after ``begin_delivery``: no result of the first provider
        could be fetched, so the job is in progress again with the next one and
        counts against the member's jobs in progress until it is delivered."""
        await self._mark_delivering(reservation, False, journal)

    async def _mark_delivering(
        self, reservation: Reservation, delivering: bool, journal: JournalStep | None
    ) -> None:
        async def run(tx: LedgerTx) -> None:
            if await tx.mark_delivering(
                reservation.id, self.now(), holder=self.instance, delivering=delivering
            ):
                if journal is not None:
                    await tx.journal(journal)
                return
            entry = await tx.entry_by_reservation(reservation.id)
            if entry is not None and entry.owner is not None and entry.owner != self.instance:
                raise LeaseLost(reservation.id)
            raise DeliveryError(
                "The hold on your credits ended before your images could be posted, "
                "so they were not posted and nothing was charged. Please try again."
            )

        await self.store.write(run)

    async def settle(
        self, reservation: Reservation, actual_cost: int, *, journal: JournalStep | None = None
    ) -> None:
        if actual_cost < 0:
            raise ValueError(f"actual_cost must be 0 or more, not {actual_cost}")
        if await self._finish(reservation, "settled", actual_cost, None, journal):
            self.observer.credits_charged(min(actual_cost, reservation.cost))

    async def refund(self, reservation: Reservation, reason: str) -> None:
        if await self._finish(reservation, "refunded", None, reason):
            self.observer.credits_refunded(reservation.cost)

    # --- sweeping ------------------------------------------------------------------
    async def sweep_expired(self, now: datetime | None = None) -> list[Reservation]:
        """Refund reservations past ``reservation_timeout``.

        Reservations of a process that died are not refunded here: a live bot
        adopts them with their jobs once the process's lease runs out
        (``bot.lease``) and resumes or refunds each with a word to its member.
        The deadline is the last resort, for holds nobody adopts (the CLI's).
        """
        when = now or self.now()
        deadline = timedelta(seconds=self.policy.reservation_timeout)
        held = await self.store.read(lambda tx: tx.reserved_entries())
        expired = f"expired: not settled within {self.policy.reservation_timeout:g} s"
        chosen = [(entry, expired) for entry in held if when - entry.created_at >= deadline]
        if not chosen:
            self.observer.reservations_swept([])
            return []

        async def run(tx: LedgerTx) -> list[tuple[Entry, str]]:
            done = []
            for entry, reason in chosen:
                if await tx.finish_entry(
                    entry.reservation_id, "refunded", None, reason, when, holder=ANYONE
                ):
                    done.append((entry, reason))
            return done

        done = await self.store.write(run)
        self.observer.reservations_swept([reason.split(":", 1)[0] for _, reason in done])
        self.observer.credits_refunded(sum(entry.cost_reserved for entry, _ in done))
        for entry, reason in done:
            logger.warning(
                "refunded reservation %s (guild %s, user %s, %s, key %s): %s",
                entry.reservation_id,
                entry.guild_id,
                entry.user_id,
                _credits(entry.cost_reserved),
                entry.idempotency_key,
                reason,
            )
        return [self._reservation(entry) for entry, _ in done]

    # --- moderators' operations ------------------------------------------------------
    async def guild_config(self, guild_id: str) -> GuildConfig:
        return await self.store.read(lambda tx: self._config(tx, guild_id, self.now()))

    async def set_pool(
        self,
        guild_id: str,
        credits: int,
        period: str | None = None,
        tz: str | None = None,
    ) -> GuildConfig:
        if credits < 0:
            raise ValueError(f"credits must be 0 or more, not {credits}")
        new_period = None if period is None else parse_period(period)
        if tz is not None:
            check_zone(tz)

        async def run(tx: LedgerTx) -> GuildConfig:
            await tx.lock(guild_scope(guild_id))
            now = self.now()
            old = await self._config(tx, guild_id, now)
            config = GuildConfig(
                guild_id=guild_id,
                pool_credits=credits,
                period=new_period or old.period,
                timezone=tz or old.timezone,
                user_default=old.user_default,
            )
            await tx.put_guild(config, now)
            return config

        return await self.store.write(run)

    async def set_user_default(self, guild_id: str, credits: int | None) -> GuildConfig:
        """The allowance of members with no role or personal limit; None: unlimited."""
        if credits is not None and credits < 0:
            raise ValueError(f"credits must be 0 or more, not {credits}")

        async def run(tx: LedgerTx) -> GuildConfig:
            await tx.lock(guild_scope(guild_id))
            now = self.now()
            old = await self._config(tx, guild_id, now)
            config = GuildConfig(
                guild_id=guild_id,
                pool_credits=old.pool_credits,
                period=old.period,
                timezone=old.timezone,
                user_default=credits,
            )
            await tx.put_guild(config, now)
            return config

        return await self.store.write(run)

    async def set_role_limit(self, guild_id: str, role_id: str, credits: int | None) -> None:
        """A role's allowance per period; None: unlimited.

        The @everyone role (its id is the guild's) is never among the roles a
        member is asked about, so its limit is the guild's member default.
        """
        if credits is not None and credits < 0:
            raise ValueError(f"credits must be 0 or more, not {credits}")
        if role_id == guild_id:
            await self.set_user_default(guild_id, credits)
            return

        async def run(tx: LedgerTx) -> None:
            await tx.lock(guild_scope(guild_id))
            now = self.now()
            await self._config(tx, guild_id, now, create=True)
            await tx.set_role_limit(guild_id, role_id, credits, now)

        await self.store.write(run)

    async def remove_role_limit(self, guild_id: str, role_id: str) -> bool:
        if role_id == guild_id:  # @everyone: back to the operator's default
            await self.set_user_default(guild_id, self.policy.default_user_allowance)
            return True

        async def run(tx: LedgerTx) -> bool:
            await tx.lock(guild_scope(guild_id))
            return await tx.remove_role_limit(guild_id, role_id)

        return await self.store.write(run)

    async def set_user_limit(self, guild_id: str, user_id: str, credits: int | None) -> None:
        """A member's own allowance, beating their roles; None: unlimited."""
        if credits is not None and credits < 0:
            raise ValueError(f"credits must be 0 or more, not {credits}")

        async def run(tx: LedgerTx) -> None:
            await tx.lock(guild_scope(guild_id))
            now = self.now()
            await self._config(tx, guild_id, now, create=True)
            await tx.set_user_limit(guild_id, user_id, credits, now)

        await self.store.write(run)

    async def remove_user_limit(self, guild_id: str, user_id: str) -> bool:
        async def run(tx: LedgerTx) -> bool:
            await tx.lock(guild_scope(guild_id))
            return await tx.remove_user_limit(guild_id, user_id)

        return await self.store.write(run)

    async def grant(
        self,
        guild_id: str,
        credits: int,
        *,
        user_id: str | None = None,
        by: str,
        reason: str | None = None,
    ) -> Grant:
        """Extra credits for the current period, to a member or (None) the pool."""
        if credits <= 0:
            raise ValueError(f"a grant must be 1 credit or more, not {credits}")

        async def run(tx: LedgerTx) -> Grant:
            await tx.lock(guild_scope(guild_id))
            now = self.now()
            scope = await self._scope(tx, guild_id, now, create=True)
            return await tx.add_grant(guild_id, user_id, credits, scope.start, by, reason, now)

        return await self.store.write(run)

    async def reset(
        self, guild_id: str, user_id: str | None = None, *, by: str, reason: str | None = None
    ) -> ResetMarker:
        """Zero the current period's usage of a member, or of the guild and all
        its members, by recording a marker; the history stays."""

        async def run(tx: LedgerTx) -> ResetMarker:
            # The marker puts every entry up to the newest id behind it: no
            # reservation of this guild may be between its insert and commit.
            await tx.lock(guild_scope(guild_id))
            now = self.now()
            scope = await self._scope(tx, guild_id, now, create=True)
            return await tx.add_reset(guild_id, user_id, scope.start, by, reason, now)

        return await self.store.write(run)

    async def ban(self, guild_id: str, user_id: str, until: datetime, reason: str, by: str) -> Ban:
        if until.tzinfo is None:
            raise ValueError("until must be timezone-aware")

        async def run(tx: LedgerTx) -> Ban:
            await tx.lock(guild_scope(guild_id))
            now = self.now()
            await self._config(tx, guild_id, now, create=True)
            return await tx.add_ban(guild_id, user_id, until, reason, by, now)

        return await self.store.write(run)

    async def unban(self, guild_id: str, user_id: str, by: str) -> bool:
        async def run(tx: LedgerTx) -> int:
            await tx.lock(guild_scope(guild_id))
            return await tx.lift_bans(guild_id, user_id, by, self.now())

        return await self.store.write(run) > 0

    async def active_ban(self, guild_id: str, user_id: str) -> Ban | None:
        return await self.store.read(lambda tx: tx.active_ban(guild_id, user_id, self.now()))

    async def active_bans(self, guild_id: str) -> list[Ban]:
        return await self.store.read(lambda tx: tx.active_bans(guild_id, self.now()))

    # --- queries -------------------------------------------------------------------
    async def balance(
        self, guild_id: str, user_id: str | None = None, roles: Sequence[str] = ()
    ) -> Balances:
        async def run(tx: LedgerTx) -> Balances:
            scope = await self._scope(tx, guild_id, self.now())
            moderated = await self._adjustments(tx, scope, user_id)
            pool_limit, pool_totals = await self._pool(tx, scope, moderated)
            guild = self._balance(pool_limit, pool_totals, scope)
            if user_id is None:
                return Balances(guild=guild)
            user_limit, user_totals = await self._user(tx, scope, user_id, roles, moderated)
            return Balances(guild=guild, user=self._balance(user_limit, user_totals, scope))

        return await self.store.read(run)

    async def usage(
        self,
        guild_id: str,
        since: datetime | None = None,
        until: datetime | None = None,
        by: UsageBy = "user",
    ) -> list[UsageRow]:
        """Usage of entries made in ``[since, until)`` (default: the current
        period), by user, channel or day in the guild's time zone. Resets do not
        hide anything here: this is history, not the allowance."""

        async def run(tx: LedgerTx) -> tuple[GuildConfig, list[Entry]]:
            now = self.now()
            scope = await self._scope(tx, guild_id, now)
            start = scope.start if since is None else since
            end = scope.end if until is None else until
            return scope.config, await tx.entries(guild_id, start, end)

        config, entries = await self.store.read(run)
        tz = check_zone(config.timezone)
        rows: dict[str, list[int]] = {}
        for entry in entries:
            if by == "user":
                key = entry.user_id
            elif by == "channel":
                key = entry.channel_id or "-"
            else:
                key = entry.created_at.astimezone(tz).date().isoformat()
            row = rows.setdefault(key, [0, 0, 0, 0])
            if entry.state == "refunded":
                row[3] += 1
                continue
            row[0] += 1
            if entry.state == "settled":
                row[1] += entry.cost_settled or 0
            else:
                row[2] += entry.cost_reserved
        result = [UsageRow(key, *values) for key, values in rows.items()]
        if by == "day":
            result.sort(key=lambda row: row.key)
        else:
            result.sort(key=lambda row: (-row.credits - row.reserved, row.key))
        return result

    EXPORT_COLUMNS: tuple[str, ...] = (
        "kind",
        "id",
        "reservation_id",
        "guild_id",
        "user_id",
        "channel_id",
        "job_id",
        "idempotency_key",
        "mode",
        "prompt",
        "credits",
        "cost_reserved",
        "cost_settled",
        "state",
        "reason",
        "by",
        "period_start",
        "created_at",
        "updated_at",
    )

    async def export_csv(self, guild_id: str | None = None) -> str:
        """The whole ledger (entries, grants, resets) of a guild or of all, as CSV."""

        async def run(tx: LedgerTx) -> tuple[list[Entry], list[Grant], list[ResetMarker]]:
            return await tx.entries(guild_id), await tx.grants(guild_id), await tx.resets(guild_id)

        entries, grants, resets = await self.store.read(run)
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=self.EXPORT_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for entry in entries:
            writer.writerow(
                {
                    "kind": "reservation",
                    "id": entry.id,
                    "reservation_id": entry.reservation_id,
                    "guild_id": entry.guild_id,
                    "user_id": entry.user_id,
                    "channel_id": entry.channel_id,
                    "job_id": entry.job_id,
                    "idempotency_key": entry.idempotency_key,
                    "mode": entry.mode,
                    "prompt": entry.prompt,
                    "credits": entry.cost_settled if entry.state == "settled" else 0,
                    "cost_reserved": entry.cost_reserved,
                    "cost_settled": entry.cost_settled,
                    "state": entry.state,
                    "reason": entry.reason,
                    "period_start": entry.period_start.isoformat(),
                    "created_at": entry.created_at.isoformat(),
                    "updated_at": entry.updated_at.isoformat(),
                }
            )
        for grant in grants:
            writer.writerow(
                {
                    "kind": "grant",
                    "id": grant.id,
                    "guild_id": grant.guild_id,
                    "user_id": grant.user_id,
                    "credits": grant.credits,
                    "reason": grant.reason,
                    "by": grant.granted_by,
                    "period_start": grant.period_start.isoformat(),
                    "created_at": grant.created_at.isoformat(),
                }
            )
        for reset in resets:
            writer.writerow(
                {
                    "kind": "reset",
                    "id": reset.id,
                    "guild_id": reset.guild_id,
                    "user_id": reset.user_id,
                    "reason": reset.reason,
                    "by": reset.reset_by,
                    "period_start": reset.period_start.isoformat(),
                    "created_at": reset.created_at.isoformat(),
                }
            )
        return out.getvalue()

    async def job_info(self, ref: str) -> JobInfo | None:
        """Who generated a job, by job id, idempotency key or reservation id."""
        entry = await self.store.read(lambda tx: tx.find_entry(ref))
        if entry is None:
            return None
        return JobInfo(
            reservation_id=entry.reservation_id,
            guild_id=entry.guild_id,
            user_id=entry.user_id,
            channel_id=entry.channel_id,
            job_id=entry.job_id,
            idempotency_key=entry.idempotency_key,
            mode=entry.mode,
            prompt=entry.prompt,
            cost_reserved=entry.cost_reserved,
            cost_settled=entry.cost_settled,
            state=entry.state,
            reason=entry.reason,
            created_at=entry.created_at,
            updated_at=entry.updated_at,
        )


def store_for_url(url: str, *, pool_size: int = 10) -> LedgerStore:
    """The store for ``sqlite:///PATH`` or ``postgresql://...``."""
    if is_postgres_url(url):
        from bot.quota.postgres_store import PostgresLedgerStore

        return PostgresLedgerStore(url, pool_size=pool_size)
    if url.startswith("sqlite:///"):
        return SqliteLedgerStore(url.removeprefix("sqlite:///"))
    raise ConfigError("DATABASE_URL: must start with sqlite:/// or postgresql://")


def store_for(settings: Settings) -> LedgerStore:
    """The store ``DATABASE_URL`` names: PostgreSQL for ``postgresql://...``,
    otherwise SQLite (``sqlite:///PATH``, by default ``DATA_DIR/bot.db``)."""
    url = settings.database_url
    if is_postgres_url(url):
        assert url is not None
        return store_for_url(url, pool_size=settings.database_pool_size)
    return SqliteLedgerStore(settings.sqlite_path)


@asynccontextmanager
async def open_ledger(
    settings: Settings,
    *,
    now: Clock | None = None,
    on_threshold: ThresholdCallback | None = None,
    sweep: bool = True,
    sweep_at_start: bool = True,
) -> AsyncIterator[QuotaService]:
    """The ledger, migrated and swept; with ``sweep`` a task keeps sweeping
    every ``SWEEP_INTERVAL`` seconds until the block ends. ``sweep_at_start=False``
    leaves the first sweep to the caller (after it adopted what it will finish)."""
    service = QuotaService(
        store_for(settings),
        QuotaPolicy.from_settings(settings),
        now=now,
        on_threshold=on_threshold,
    )
    await service.start(sweep=sweep_at_start)
    task = asyncio.create_task(service.run_sweeper(), name="quota-sweeper") if sweep else None
    try:
        yield service
    finally:
        if task is not None:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        await service.close()
