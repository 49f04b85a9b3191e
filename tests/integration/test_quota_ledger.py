"""The quota service on real databases (SQLite and PostgreSQL): limits, messages, queries."""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.config import load_settings
from bot.errors import QuotaRefused
from bot.migrate import DatabaseUnavailable
from bot.quota import (
    Ledger,
    QuotaPolicy,
    QuotaService,
    Reservation,
    ThresholdEvent,
    open_ledger,
)
from tests.conftest import LedgerDb

T0 = datetime(2024, 6, 12, 15, 0, tzinfo=UTC)  # a Wednesday


class Clock:
    def __init__(self, start: datetime = T0) -> None:
        self.t = start

    def __call__(self) -> datetime:
        return self.t

    def advance(self, **delta: float) -> None:
        self.t += timedelta(**delta)


MakeLedger = Callable[..., Awaitable[QuotaService]]


@pytest.fixture
async def make_ledger(ledger_db: LedgerDb) -> AsyncIterator[MakeLedger]:
    """Services on the test's database, one per call (as if one per process)."""
    services: list[QuotaService] = []

    async def make(
        policy: QuotaPolicy | None = None,
        *,
        clock: Clock | None = None,
        on_threshold: Callable[[ThresholdEvent], Awaitable[None]] | None = None,
    ) -> QuotaService:
        service = QuotaService(
            ledger_db.store(),
            policy
            or QuotaPolicy(
                default_pool_credits=100,
                default_user_allowance=None,
                max_jobs_in_flight_per_user=50,
            ),
            now=clock or Clock(),
            on_threshold=on_threshold,
        )
        await service.start()
        services.append(service)
        return service

    yield make
    for service in services:
        await service.close()


async def refused(coro: Awaitable[Reservation]) -> QuotaRefused:
    with pytest.raises(QuotaRefused) as info:
        await coro
    return info.value


# --- reserve, settle, refund -------------------------------------------------


async def test_reserve_settle_refund_move_balances(make_ledger: MakeLedger) -> None:
    ledger = await make_ledger()
    first = await ledger.reserve("g", "u", [], 4, "i1", channel_id="c", prompt="a cat")
    assert first.cost == 4 and first.guild_remaining == 96 and first.user_remaining is None
    assert first.resets_at == datetime(2024, 6, 13, tzinfo=UTC)
    second = await ledger.reserve("g", "u", [], 3, "i2")

    balance = (await ledger.balance("g")).guild
    assert (balance.limit, balance.used, balance.reserved, balance.remaining) == (100, 0, 7, 93)

    await ledger.settle(first, 2)  # two of four images were filtered
    await ledger.refund(second, "provider failed")
    balance = (await ledger.balance("g")).guild
    assert (balance.used, balance.reserved, balance.remaining) == (2, 0, 98)


async def test_settle_and_refund_are_idempotent_and_exclusive(
    make_ledger: MakeLedger, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = await make_ledger()
    a = await ledger.reserve("g", "u", [], 5, "a")
    b = await ledger.reserve("g", "u", [], 5, "b")
    await ledger.settle(a, 5)
    await ledger.settle(a, 1)  # second settle: no-op
    await ledger.refund(a, "late refund")  # refund after settle: no-op
    await ledger.refund(b, "failed")
    with caplog.at_level(logging.INFO, logger="bot.quota"):
        await ledger.settle(b, 5)  # settle after refund: no-op, logged
    assert "already refunded" in caplog.text
    balance = (await ledger.balance("g")).guild
    assert (balance.used, balance.reserved) == (5, 0)


async def test_settle_above_reservation_is_clamped(
    make_ledger: MakeLedger, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = await make_ledger()
    r = await ledger.reserve("g", "u", [], 3, "k")
    with caplog.at_level(logging.WARNING, logger="bot.quota"):
        await ledger.settle(r, 10)
    assert "charging 3" in caplog.text
    assert (await ledger.balance("g")).guild.used == 3
    with pytest.raises(ValueError):
        await ledger.settle(r, -1)


async def test_same_idempotency_key_reserves_once(make_ledger: MakeLedger) -> None:
    clock = Clock()
    ledger = await make_ledger(
        QuotaPolicy(default_pool_credits=10, cooldown_seconds=60, max_jobs_in_flight_per_user=1),
        clock=clock,
    )
    first = await ledger.reserve("g", "u", [], 10, "interaction-1")
    # Pool empty, cooldown running, one in flight: a retry still gets its hold.
    again = await ledger.reserve("g", "u", [], 10, "interaction-1")
    assert again.id == first.id and again.replayed and not first.replayed
    assert (await ledger.balance("g")).guild.reserved == 10
    refusal = await refused(ledger.reserve("g", "u", [], 1, "interaction-2"))
    assert refusal.limit == "cooldown"


# --- refusals ------------------------------------------------------------------


async def test_guild_pool_refusal_says_what_is_left_and_when(make_ledger: MakeLedger) -> None:
    ledger = await make_ledger(QuotaPolicy(default_pool_credits=5, default_user_allowance=None))
    await ledger.reserve("g", "u1", [], 3, "k1")
    partly = await refused(ledger.reserve("g", "u2", [], 4, "k2"))
    assert partly.limit == "guild_pool" and partly.remaining == 2
    reset = datetime(2024, 6, 13, tzinfo=UTC)
    assert partly.resets_at == reset
    assert partly.user_message == (
        "This server's image pool has 2 of 5 credits left today and this costs 4. "
        f"It resets <t:{int(reset.timestamp())}:R>."
    )
    await ledger.reserve("g", "u2", [], 2, "k3")
    empty = await refused(ledger.reserve("g", "u3", [], 1, "k4"))
    assert empty.remaining == 0
    assert empty.user_message == (
        "This server's image pool is used up for today (0 of 5 credits left). "
        f"It resets <t:{int(reset.timestamp())}:R>."
    )


async def test_user_allowance_refusal(make_ledger: MakeLedger) -> None:
    ledger = await make_ledger(QuotaPolicy(default_pool_credits=100, default_user_allowance=7))
    await ledger.reserve("g", "u", [], 4, "k1")
    refusal = await refused(ledger.reserve("g", "u", [], 4, "k2"))
    assert refusal.limit == "user_allowance" and refusal.remaining == 3
    assert refusal.user_message.startswith("You have 3 credits left today and this costs 4.")
    # Someone else still has their own allowance.
    await ledger.reserve("g", "other", [], 7, "k3")


async def test_week_period_words(make_ledger: MakeLedger) -> None:
    ledger = await make_ledger()
    await ledger.set_pool("g", 2, "week", "Europe/Paris")
    refusal = await refused(ledger.reserve("g", "u", [], 3, "k"))
    assert "left this week" in refusal.user_message
    # Monday 17 June 2024, 00:00 in Paris (UTC+2).
    assert refusal.resets_at == datetime(2024, 6, 16, 22, tzinfo=UTC)


async def test_bans_refuse_until_they_expire(make_ledger: MakeLedger) -> None:
    clock = Clock()
    ledger = await make_ledger(clock=clock)
    until = T0 + timedelta(hours=2)
    await ledger.ban("g", "u", until, "spamming", by="mod")
    refusal = await refused(ledger.reserve("g", "u", [], 1, "k1"))
    assert refusal.limit == "ban" and refusal.resets_at == until
    assert refusal.user_message == (
        f"You are banned from generating images until <t:{int(until.timestamp())}:f>: spamming."
    )
    await ledger.reserve("other-guild", "u", [], 1, "k2")  # bans are per guild
    clock.advance(hours=2)
    await ledger.reserve("g", "u", [], 1, "k3")  # expired exactly at ``until``


async def test_unban_lifts_the_ban(make_ledger: MakeLedger) -> None:
    ledger = await make_ledger()
    await ledger.ban("g", "u", T0 + timedelta(days=7), "rude", by="mod")
    assert await ledger.active_ban("g", "u") is not None
    assert await ledger.unban("g", "u", by="mod")
    assert not await ledger.unban("g", "u", by="mod")
    await ledger.reserve("g", "u", [], 1, "k")


async def test_cooldown_between_jobs(make_ledger: MakeLedger) -> None:
    clock = Clock()
    ledger = await make_ledger(QuotaPolicy(cooldown_seconds=30), clock=clock)
    r = await ledger.reserve("g", "u", [], 1, "k1")
    await ledger.settle(r, 1)
    clock.advance(seconds=18)
    refusal = await refused(ledger.reserve("g", "u", [], 1, "k2"))
    assert refusal.limit == "cooldown"
    assert refusal.user_message == "Please wait 12 s before starting another image."
    assert refusal.resets_at == T0 + timedelta(seconds=30)
    await ledger.reserve("g", "someone-else", [], 1, "k3")
    clock.advance(seconds=12)
    await ledger.reserve("g", "u", [], 1, "k4")


async def test_jobs_in_flight_limit(make_ledger: MakeLedger) -> None:
    ledger = await make_ledger(QuotaPolicy(max_jobs_in_flight_per_user=2))
    a = await ledger.reserve("g1", "u", [], 1, "k1")
    await ledger.reserve("g2", "u", [], 1, "k2")  # in flight counts across guilds
    refusal = await refused(ledger.reserve("g1", "u", [], 1, "k3"))
    assert refusal.limit == "in_flight"
    assert refusal.user_message == (
        "You already have 2 images in progress; wait for one to finish."
    )
    await ledger.settle(a, 1)
    await ledger.reserve("g1", "u", [], 1, "k4")


async def test_global_budget_spans_guilds_and_resets_at_utc_midnight(
    make_ledger: MakeLedger,
) -> None:
    clock = Clock()
    ledger = await make_ledger(
        QuotaPolicy(default_pool_credits=100, global_daily_budget=10), clock=clock
    )
    await ledger.reserve("g1", "u1", [], 6, "k1")
    await ledger.reserve("g2", "u2", [], 3, "k2")
    refusal = await refused(ledger.reserve("g3", "u3", [], 2, "k3"))
    assert refusal.limit == "global_budget" and refusal.remaining == 1
    midnight = datetime(2024, 6, 13, tzinfo=UTC)
    assert refusal.resets_at == midnight
    assert refusal.user_message == (
        "The bot has reached its daily generation budget; "
        f"try again <t:{int(midnight.timestamp())}:R>."
    )
    clock.t = midnight
    await ledger.reserve("g3", "u3", [], 2, "k4")


async def test_checks_run_in_the_documented_order(make_ledger: MakeLedger) -> None:
    ledger = await make_ledger(
        QuotaPolicy(
            default_pool_credits=1,
            default_user_allowance=1,
            global_daily_budget=1,
            max_jobs_in_flight_per_user=1,
        )
    )
    await ledger.ban("g", "u", T0 + timedelta(hours=1), "x", by="mod")
    assert (await refused(ledger.reserve("g", "u", [], 5, "k"))).limit == "ban"
    await ledger.unban("g", "u", by="mod")
    assert (await refused(ledger.reserve("g", "u", [], 5, "k"))).limit == "user_allowance"
    await ledger.set_user_limit("g", "u", None)
    assert (await refused(ledger.reserve("g", "u", [], 5, "k"))).limit == "guild_pool"
    await ledger.set_pool("g", 10)
    assert (await refused(ledger.reserve("g", "u", [], 5, "k"))).limit == "global_budget"
    await ledger.reserve("g", "u", [], 1, "k")
    assert (await refused(ledger.reserve("g", "u", [], 1, "k2"))).limit == "in_flight"


# --- allowances, roles, grants, resets ---------------------------------------------


async def test_role_allowance_resolution(make_ledger: MakeLedger) -> None:
    ledger = await make_ledger(QuotaPolicy(default_pool_credits=1000, default_user_allowance=20))
    await ledger.set_role_limit("g", "member", 10)
    await ledger.set_role_limit("g", "patron", 100)
    await ledger.set_role_limit("g", "staff", None)

    async def limit(user: str, roles: list[str]) -> int | None:
        user_balance = (await ledger.balance("g", user, roles)).user
        assert user_balance is not None
        return user_balance.limit

    assert await limit("a", []) == 20  # no configured role: the guild default
    assert await limit("a", ["unknown-role"]) == 20
    assert await limit("a", ["member"]) == 10  # a role may restrict
    assert await limit("a", ["member", "patron"]) == 100  # the highest wins
    assert await limit("a", ["member", "staff", "patron"]) is None  # unlimited beats all
    await ledger.set_user_limit("g", "a", 5)
    assert await limit("a", ["staff", "patron"]) == 5  # an override beats roles
    await ledger.set_user_limit("g", "a", None)
    assert await limit("a", ["member"]) is None
    assert await ledger.remove_user_limit("g", "a")
    assert await limit("a", ["member"]) == 10
    assert await ledger.remove_role_limit("g", "member")
    assert not await ledger.remove_role_limit("g", "member")
    assert await limit("a", ["member"]) == 20
    await ledger.set_user_default("g", None)
    assert await limit("b", []) is None
    # Roles are per guild.
    other = (await ledger.balance("g2", "a", ["patron"])).user
    assert other is not None and other.limit == 20


async def test_everyone_role_limit_is_the_member_default(make_ledger: MakeLedger) -> None:
    """Discord's @everyone role has the guild's id and is never among a member's
    roles; a limit on it applies to everyone as the member default."""
    ledger = await make_ledger(QuotaPolicy(default_pool_credits=1000, default_user_allowance=20))
    await ledger.set_role_limit("g", "patron", 100)
    await ledger.set_role_limit("g", "g", 3)
    assert (await ledger.guild_config("g")).user_default == 3
    plain = (await ledger.balance("g", "a", [])).user
    assert plain is not None and plain.limit == 3
    patron = (await ledger.balance("g", "b", ["patron"])).user
    assert patron is not None and patron.limit == 100  # a role of its own still wins
    assert (await refused(ledger.reserve("g", "a", [], 4, "k"))).limit == "user_allowance"
    await ledger.set_role_limit("g", "g", None)
    assert (await ledger.guild_config("g")).user_default is None
    assert await ledger.remove_role_limit("g", "g")
    assert (await ledger.guild_config("g")).user_default == 20


async def test_role_allowance_applies_to_reserve(make_ledger: MakeLedger) -> None:
    ledger = await make_ledger(QuotaPolicy(default_pool_credits=1000, default_user_allowance=2))
    await ledger.set_role_limit("g", "patron", 8)
    reservation = await ledger.reserve("g", "u", ["patron"], 5, "k1")
    assert reservation.user_remaining == 3
    assert (await refused(ledger.reserve("g", "u", [], 1, "k2"))).limit == "user_allowance"


async def test_grants_last_for_the_current_period(make_ledger: MakeLedger) -> None:
    clock = Clock()
    ledger = await make_ledger(
        QuotaPolicy(default_pool_credits=4, default_user_allowance=2), clock=clock
    )
    await ledger.grant("g", 3, user_id="u", by="mod", reason="contest winner")
    await ledger.grant("g", 1, by="mod")
    balances = await ledger.balance("g", "u")
    assert balances.guild.limit == 5
    assert balances.user is not None and balances.user.limit == 5
    await ledger.reserve("g", "u", [], 5, "k1")
    clock.advance(days=1)
    balances = await ledger.balance("g", "u")
    assert balances.guild.limit == 4
    assert balances.user is not None and balances.user.limit == 2
    with pytest.raises(ValueError):
        await ledger.grant("g", 0, by="mod")


async def test_reset_zeroes_usage_but_keeps_history(make_ledger: MakeLedger) -> None:
    ledger = await make_ledger(QuotaPolicy(default_pool_credits=10, default_user_allowance=5))
    a = await ledger.reserve("g", "a", [], 5, "k1")
    await ledger.settle(a, 5)
    await ledger.reserve("g", "b", [], 4, "k2")  # still in flight

    await ledger.reset("g", "a", by="mod", reason="sorry")
    balances = await ledger.balance("g", "a")
    assert balances.user is not None and balances.user.used == 0
    assert balances.guild.used == 5 and balances.guild.reserved == 4  # pool untouched

    await ledger.reset("g", by="mod")
    balances = await ledger.balance("g", "b")
    assert balances.guild.used == 0 and balances.guild.reserved == 0
    assert balances.user is not None and balances.user.reserved == 0
    await ledger.reserve("g", "c", [], 5, "k3")
    rows = list(csv.DictReader(io.StringIO(await ledger.export_csv("g"))))
    assert [row["kind"] for row in rows].count("reservation") == 3
    assert [row["kind"] for row in rows].count("reset") == 2


async def test_other_members_and_guilds_adjustments_stay_theirs(make_ledger: MakeLedger) -> None:
    """Grants and resets are read in one statement for the pool and the member:
    another member's, or another guild's, must not count for either."""
    ledger = await make_ledger(QuotaPolicy(default_pool_credits=10, default_user_allowance=4))
    for key, user in (("k1", "a"), ("k2", "b")):
        await ledger.settle(await ledger.reserve("g", user, [], 2, key), 2)
    await ledger.grant("g", 3, user_id="b", by="mod")
    await ledger.grant("other", 5, user_id="a", by="mod")
    await ledger.grant("other", 7, by="mod")
    await ledger.reset("g", "b", by="mod")
    await ledger.reset("other", by="mod")

    balances = await ledger.balance("g", "a")
    assert balances.guild.limit == 10 and balances.guild.used == 4
    assert balances.user is not None and (balances.user.limit, balances.user.used) == (4, 2)
    balances = await ledger.balance("g", "b")
    assert balances.user is not None and (balances.user.limit, balances.user.used) == (7, 0)

    await ledger.grant("g", 1, user_id="a", by="mod")
    await ledger.grant("g", 2, by="mod")
    await ledger.reset("g", by="mod")
    balances = await ledger.balance("g", "a")
    assert (balances.guild.limit, balances.guild.used) == (12, 0)
    assert balances.user is not None and (balances.user.limit, balances.user.used) == (5, 0)


async def test_a_reservation_is_what_the_ledger_then_holds(make_ledger: MakeLedger) -> None:
    """The entry a reservation returns is built from what was written, not read
    back: it must equal what a later read gives, to the microsecond."""
    clock = Clock(T0 + timedelta(microseconds=123457))
    ledger = await make_ledger(clock=clock)
    reservation = await ledger.reserve(
        "g", "u", [], 3, "k1", channel_id="c", job_id="j", prompt="a fox", mode="text"
    )
    stored = await ledger.store.read(lambda tx: tx.entry_by_reservation(reservation.id))
    assert stored is not None
    assert (stored.created_at, stored.period_start) == (
        reservation.created_at,
        reservation.period_start,
    )
    assert reservation.created_at == clock.t
    assert (stored.guild_id, stored.user_id, stored.cost_reserved) == ("g", "u", 3)
    replayed = await ledger.reserve("g", "u", [], 3, "k1")
    assert replayed.replayed
    assert (replayed.id, replayed.created_at, replayed.period_start) == (
        reservation.id,
        reservation.created_at,
        reservation.period_start,
    )


# --- thresholds -------------------------------------------------------------------------


async def test_thresholds_fire_once_per_period(
    make_ledger: MakeLedger, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    events: list[ThresholdEvent] = []

    async def record(event: ThresholdEvent) -> None:
        events.append(event)

    ledger = await make_ledger(
        QuotaPolicy(
            default_pool_credits=10, default_user_allowance=None, max_jobs_in_flight_per_user=50
        ),
        clock=clock,
        on_threshold=record,
    )
    r = await ledger.reserve("g", "u", [], 7, "k1")
    assert events == []
    await ledger.reserve("g", "u", [], 1, "k2")
    assert [(e.percent, e.used, e.limit) for e in events] == [(80, 8, 10)]
    await ledger.refund(r, "failed")
    await ledger.reserve("g", "u", [], 7, "k3")  # crosses 80 % again: no event
    assert len(events) == 1
    await ledger.reserve("g", "u", [], 2, "k4")
    assert [e.percent for e in events] == [80, 100]
    assert events[1].resets_at == datetime(2024, 6, 13, tzinfo=UTC)

    # A second process (another service on the same file) does not fire again.
    other_events: list[ThresholdEvent] = []

    async def record_other(event: ThresholdEvent) -> None:
        other_events.append(event)

    other = await make_ledger(
        QuotaPolicy(
            default_pool_credits=10, default_user_allowance=None, max_jobs_in_flight_per_user=50
        ),
        clock=clock,
        on_threshold=record_other,
    )
    await other.grant("g", 5, by="mod")
    await other.reserve("g", "u", [], 5, "k5")
    assert other_events == []

    # A new period fires again; a failing callback is logged, not raised.
    clock.advance(days=1)

    async def broken(event: ThresholdEvent) -> None:
        raise RuntimeError("discord is down")

    other.on_threshold = broken
    with caplog.at_level(logging.ERROR, logger="bot.quota"):
        await other.reserve("g", "u", [], 10, "k6")
    assert "threshold callback failed" in caplog.text


# --- periods ----------------------------------------------------------------------------


async def test_day_pool_rolls_over_at_local_midnight_across_dst(make_ledger: MakeLedger) -> None:
    clock = Clock(datetime(2024, 3, 9, 12, tzinfo=UTC))
    ledger = await make_ledger(clock=clock)
    await ledger.set_pool("g", 3, "day", "America/New_York")
    await ledger.reserve("g", "u", [], 3, "k1")
    clock.t = datetime(2024, 3, 10, 4, 59, tzinfo=UTC)  # 23:59 EST on the 9th
    assert (await refused(ledger.reserve("g", "u", [], 1, "k2"))).resets_at == datetime(
        2024, 3, 10, 5, tzinfo=UTC
    )
    clock.t = datetime(2024, 3, 10, 5, tzinfo=UTC)  # midnight EST, the 10th
    await ledger.reserve("g", "u", [], 3, "k3")
    # The 10th has 23 hours: it ends at midnight EDT, 04:00 UTC.
    clock.t = datetime(2024, 3, 11, 3, 59, tzinfo=UTC)
    refusal = await refused(ledger.reserve("g", "u", [], 1, "k4"))
    assert refusal.resets_at == datetime(2024, 3, 11, 4, tzinfo=UTC)
    clock.t = datetime(2024, 3, 11, 4, tzinfo=UTC)
    await ledger.reserve("g", "u", [], 3, "k5")
    # November: the 3rd has 25 hours.
    clock.t = datetime(2024, 11, 3, 4, tzinfo=UTC)
    await ledger.reserve("g", "u", [], 3, "k6")
    clock.t = datetime(2024, 11, 4, 4, 59, tzinfo=UTC)
    assert (await refused(ledger.reserve("g", "u", [], 1, "k7"))).limit == "guild_pool"
    clock.t = datetime(2024, 11, 4, 5, tzinfo=UTC)
    await ledger.reserve("g", "u", [], 3, "k8")


async def test_london_month_pool(make_ledger: MakeLedger) -> None:
    clock = Clock(datetime(2024, 3, 31, 22, 30, tzinfo=UTC))  # 23:30 BST, 31 March
    ledger = await make_ledger(clock=clock)
    await ledger.set_pool("g", 2, "month", "Europe/London")
    await ledger.reserve("g", "u", [], 2, "k1")
    refusal = await refused(ledger.reserve("g", "u", [], 1, "k2"))
    assert refusal.resets_at == datetime(2024, 3, 31, 23, tzinfo=UTC)
    clock.advance(minutes=30)
    await ledger.reserve("g", "u", [], 2, "k3")


async def test_new_guild_gets_the_default_pool_and_set_pool_validates(
    make_ledger: MakeLedger,
) -> None:
    ledger = await make_ledger(
        QuotaPolicy(default_pool_credits=42, default_pool_period="week", default_timezone="UTC")
    )
    config = await ledger.guild_config("new")
    assert (config.pool_credits, config.period, config.timezone) == (42, "week", "UTC")
    config = await ledger.set_pool("new", 7, tz="Asia/Tokyo")
    assert (config.pool_credits, config.period, config.timezone) == (7, "week", "Asia/Tokyo")
    with pytest.raises(ValueError, match="time zone"):
        await ledger.set_pool("new", 7, tz="Nowhere/Land")
    with pytest.raises(ValueError, match="period"):
        await ledger.set_pool("new", 7, period="year")
    with pytest.raises(ValueError):
        await ledger.set_pool("new", -1)


# --- sweeping ----------------------------------------------------------------------------


async def test_sweep_refunds_reservations_past_the_deadline(
    make_ledger: MakeLedger, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    ledger = await make_ledger(QuotaPolicy(reservation_timeout=600), clock=clock)
    old = await ledger.reserve("g", "u", [], 4, "old")
    clock.advance(seconds=300)
    young = await ledger.reserve("g", "u", [], 2, "young")
    clock.advance(seconds=300)
    with caplog.at_level(logging.WARNING, logger="bot.quota"):
        swept = await ledger.sweep_expired()
    assert [r.id for r in swept] == [old.id]
    assert f"refunded reservation {old.id}" in caplog.text and "expired" in caplog.text
    assert await ledger.sweep_expired() == []
    await ledger.settle(old, 4)  # too late: stays refunded
    await ledger.settle(young, 2)
    balance = (await ledger.balance("g")).guild
    assert (balance.used, balance.reserved) == (2, 0)
    info = await ledger.job_info("old")
    assert info is not None and info.state == "refunded" and info.reason is not None


# --- queries -----------------------------------------------------------------------------


async def test_usage_export_and_job_info(make_ledger: MakeLedger) -> None:
    clock = Clock(datetime(2024, 6, 10, 12, tzinfo=UTC))
    ledger = await make_ledger(clock=clock)
    await ledger.set_pool("g", 100, "week", "America/New_York")
    a = await ledger.reserve(
        "g", "alice", [], 4, "i1", channel_id="art", job_id="job-1", prompt="a red fox", mode="text"
    )
    await ledger.settle(a, 3)
    clock.advance(days=1)
    b = await ledger.reserve("g", "bob", [], 2, "i2", channel_id="art", prompt="a boat")
    await ledger.refund(b, "filtered")
    await ledger.reserve("g", "bob", [], 5, "i3", channel_id="memes", prompt="a frog")
    await ledger.reserve("elsewhere", "carol", [], 1, "i4")

    by_user = await ledger.usage("g", by="user")
    assert [(r.key, r.jobs, r.credits, r.reserved, r.refunded_jobs) for r in by_user] == [
        ("bob", 1, 0, 5, 1),
        ("alice", 1, 3, 0, 0),
    ]
    by_channel = {r.key: r for r in await ledger.usage("g", by="channel")}
    assert by_channel["art"].credits == 3 and by_channel["memes"].reserved == 5
    by_day = await ledger.usage("g", by="day")
    assert [r.key for r in by_day] == ["2024-06-10", "2024-06-11"]
    only_first_day = await ledger.usage(
        "g", datetime(2024, 6, 10, 4, tzinfo=UTC), datetime(2024, 6, 11, 4, tzinfo=UTC), "user"
    )
    assert [r.key for r in only_first_day] == ["alice"]

    info = await ledger.job_info("job-1")
    assert info is not None
    assert (info.user_id, info.cost_settled, info.prompt, info.channel_id) == (
        "alice",
        3,
        "a red fox",
        "art",
    )
    assert info.created_at == datetime(2024, 6, 10, 12, tzinfo=UTC)
    assert (await ledger.job_info("i1")) == info
    assert (await ledger.job_info(a.id)) == info
    assert await ledger.job_info("nope") is None

    rows = list(csv.DictReader(io.StringIO(await ledger.export_csv())))
    assert len(rows) == 4
    assert {row["guild_id"] for row in rows} == {"g", "elsewhere"}
    assert len(list(csv.DictReader(io.StringIO(await ledger.export_csv("g"))))) == 3
    fox = next(row for row in rows if row["idempotency_key"] == "i1")
    assert (fox["prompt"], fox["state"], fox["cost_settled"]) == ("a red fox", "settled", "3")


async def test_ledger_rows_sum_to_the_balance(make_ledger: MakeLedger, ledger_db: LedgerDb) -> None:
    ledger = await make_ledger()
    a = await ledger.reserve("g", "u", [], 5, "k1")
    await ledger.reserve("g", "u", [], 3, "k2")
    await ledger.settle(a, 4)
    await ledger.grant("g", 7, by="mod")
    ((settled, reserved),) = await ledger_db.fetch(
        "SELECT SUM(CASE WHEN state='settled' THEN cost_settled ELSE 0 END),"
        " SUM(CASE WHEN state='reserved' THEN cost_reserved ELSE 0 END)"
        " FROM quota_entries WHERE guild_id='g'"
    )
    ((granted,),) = await ledger_db.fetch("SELECT SUM(credits) FROM quota_grants")
    balance = (await ledger.balance("g")).guild
    assert (balance.used, balance.reserved, balance.limit) == (settled, reserved, 100 + granted)


async def test_open_ledger_from_settings(tmp_path: Path) -> None:
    settings = load_settings(
        env_file=None, data_dir=tmp_path / "data", default_pool_credits=3, sweep_interval=0.01
    )
    async with open_ledger(settings) as ledger:
        r = await ledger.reserve("g", "u", [], 3, "k")
        assert r.guild_remaining == 0
    assert (tmp_path / "data" / "bot.db").exists()
    async with open_ledger(settings, sweep=False) as ledger:
        assert (await ledger.balance("g")).guild.reserved == 3


async def test_open_ledger_from_postgres_settings(pg_url: str, tmp_path: Path) -> None:
    settings = load_settings(
        env_file=None,
        data_dir=tmp_path / "data",
        database_url=pg_url,
        database_pool_size=2,
        default_pool_credits=3,
        sweep_interval=0.01,
    )
    async with open_ledger(settings) as ledger:
        assert type(ledger.store).__name__ == "PostgresLedgerStore"
        await ledger.reserve("g", "u", [], 3, "k")
    async with open_ledger(settings, sweep=False) as ledger:
        assert (await ledger.balance("g")).guild.reserved == 3
    assert not (tmp_path / "data" / "bot.db").exists()


async def test_unreachable_postgres_is_reported_without_the_password() -> None:
    settings = load_settings(
        env_file=None, database_url="postgresql://bot:s3cret-pw@127.0.0.1:1/ledger"
    )
    with pytest.raises(DatabaseUnavailable) as info:
        async with open_ledger(settings):
            pass
    message = info.value.user_message
    assert "PostgreSQL database ledger on 127.0.0.1:1" in message
    assert "s3cret" not in message and "bot:" not in message


async def test_refuses_bad_arguments(make_ledger: MakeLedger) -> None:
    ledger = await make_ledger()
    with pytest.raises(ValueError):
        await ledger.reserve("g", "u", [], -1, "k")
    with pytest.raises(ValueError):
        await ledger.reserve("g", "u", [], 1, "")
    with pytest.raises(ValueError):
        await ledger.ban("g", "u", datetime(2030, 1, 1), "x", by="mod")


async def test_caller_cancelled_before_its_transaction_started(make_ledger: MakeLedger) -> None:
    ledger = await make_ledger()
    task = asyncio.create_task(ledger.reserve("g", "u", [], 2, "k1"))
    task.cancel()  # before the task ever ran: no transaction was started
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await ledger.balance("g")).guild.reserved == 0
    again = await ledger.reserve("g", "u", [], 2, "k1")
    assert again.replayed is False  # made now, not found
    assert (await ledger.balance("g")).guild.reserved == 2
    await ledger.settle(again, 2)
    assert (await ledger.balance("g")).guild.used == 2


async def test_caller_cancelled_after_handing_over_its_transaction(
    make_ledger: MakeLedger, ledger_db: LedgerDb
) -> None:
    ledger = await make_ledger()
    holding, release = threading.Event(), threading.Event()
    blocker: asyncio.Task[None] | None = None
    if ledger_db.backend == "sqlite":
        # The store's one worker thread is kept busy, so the transaction is
        # handed over but still queued when its caller is cancelled.
        def hold_the_worker(tx: Any) -> Any:
            holding.set()
            release.wait(timeout=10)
            return tx.lock()

        blocker = asyncio.create_task(ledger.store.write(hold_the_worker))
        assert await asyncio.to_thread(holding.wait, 10)
    task = asyncio.create_task(ledger.reserve("g", "u", [], 2, "k1"))
    await asyncio.sleep(0)  # the caller has handed its transaction to the store
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    release.set()
    if blocker is not None:
        await blocker
    again = await ledger.reserve("g", "u", [], 2, "k1")
    # PostgreSQL runs a transaction in a task of its own: once handed over it
    # commits, and the retry finds it. The SQLite worker drops a queued body
    # whose caller is gone: it never ran, and the retry makes it now.
    assert again.replayed is (ledger_db.backend == "postgresql")
    assert again.cost == 2
    assert (await ledger.balance("g")).guild.reserved == 2  # never held twice
    await ledger.settle(again, 2)
    balance = await ledger.balance("g")
    assert (balance.guild.used, balance.guild.reserved) == (2, 0)


async def test_service_is_a_ledger(make_ledger: MakeLedger) -> None:
    ledger: Ledger = await make_ledger()
    reservation = await ledger.reserve("g", "u", ["role"], 1, "k", channel_id="c", mode="text")
    await ledger.settle(reservation, 1)
    await ledger.refund(reservation, "no-op after settle")
