"""Property test: random interleavings of ledger operations against a model.

Reserve, settle, refund, grant, reset, sweep and clock jumps (period rollovers,
across DST in New York and London) run against a real SQLite file, and against a
PostgreSQL schema where ``TEST_DATABASE_URL`` is set; after every step, balances
match an independent model, never go negative, never exceed their limits, and
equal what a raw SQL sum over the ledger tables gives.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import tempfile
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import asyncpg  # type: ignore[import-untyped]
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from bot.errors import QuotaRefused
from bot.quota import QuotaPolicy, QuotaService, Reservation, ThresholdEvent
from bot.quota.periods import Period, period_bounds, utc_day_bounds
from bot.sql import numbered
from tests.conftest import (
    BACKENDS,
    PG_SKIP,
    LedgerDb,
    create_schema,
    drop_schema,
    pg_base_url,
    sqlite_db,
)

GUILDS: dict[str, tuple[int, Period, str]] = {
    "ny": (20, "day", "America/New_York"),
    "ldn": (30, "week", "Europe/London"),
}
ROLES: dict[str, list[str]] = {"a": [], "b": ["mod"], "c": ["vip", "mod"], "d": ["mod"]}
DEFAULT_ALLOWANCE = 8
ROLE_LIMITS: dict[str, int | None] = {"mod": 10, "vip": None}
OVERRIDES: dict[str, int] = {"d": 3}
MAX_IN_FLIGHT = 3
GLOBAL_BUDGET = 40
TIMEOUT = timedelta(hours=2)
START = datetime(2024, 3, 9, 20, tzinfo=UTC)  # a day before New York's DST switch

T = TypeVar("T")


@dataclass
class ModelEntry:
    id: int
    guild: str
    user: str
    cost: int
    key: str
    period_start: datetime
    created_at: datetime
    reservation: Reservation
    state: str = "reserved"
    settled: int = 0


@dataclass
class ModelMark:
    guild: str
    user: str | None
    value: int  # a credit count for grants, an entry id for resets
    period_start: datetime


class LedgerMachine(RuleBasedStateMachine):
    # The PostgreSQL server to make a schema on for each example; None: SQLite.
    server: ClassVar[str | None] = None

    def __init__(self) -> None:
        super().__init__()
        self.now = START
        self.loop = asyncio.new_event_loop()
        self.dir: Path | None = None
        self.schema: str | None = None
        # One connection for the invariants' raw sums, opened after the store
        # has created the schema.
        self.raw: Any = None
        self.raw_sqlite: sqlite3.Connection | None = None
        if self.server is None:
            self.dir = Path(tempfile.mkdtemp(prefix="quota-props-"))
            self.db = sqlite_db(self.dir / "quota.db")
        else:
            url, self.schema = self.run(create_schema(self.server))
            self.db = LedgerDb("postgresql", url)
            self.raw = self.run(asyncpg.connect(url))
        self.events: list[ThresholdEvent] = []

        async def record(event: ThresholdEvent) -> None:
            self.events.append(event)

        self.ledger = QuotaService(
            self.db.store(),
            QuotaPolicy(
                default_pool_credits=0,
                default_user_allowance=DEFAULT_ALLOWANCE,
                global_daily_budget=GLOBAL_BUDGET,
                max_jobs_in_flight_per_user=MAX_IN_FLIGHT,
                reservation_timeout=TIMEOUT.total_seconds(),
            ),
            now=lambda: self.now,
            on_threshold=record,
        )
        self.run(self.ledger.start())
        for guild, (credits, period, tz) in GUILDS.items():
            self.run(self.ledger.set_pool(guild, credits, period, tz))
            for role, limit in ROLE_LIMITS.items():
                self.run(self.ledger.set_role_limit(guild, role, limit))
            for user, limit in OVERRIDES.items():
                self.run(self.ledger.set_user_limit(guild, user, limit))
        self.entries: list[ModelEntry] = []
        self.grants: list[ModelMark] = []
        self.resets: list[ModelMark] = []
        self.keys = 0

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def fetch(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        if self.raw is not None:
            return [tuple(row) for row in self.run(self.raw.fetch(numbered(sql), *params))]
        if self.raw_sqlite is None:
            assert self.db.path is not None
            self.raw_sqlite = sqlite3.connect(self.db.path, isolation_level=None)
        return [tuple(row) for row in self.raw_sqlite.execute(sql, params).fetchall()]

    def teardown(self) -> None:
        self.run(self.ledger.close())
        if self.raw is not None:
            self.run(self.raw.close())
        if self.raw_sqlite is not None:
            self.raw_sqlite.close()
        if self.server is not None and self.schema is not None:
            self.run(drop_schema(self.server, self.schema))
        self.loop.close()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)

    # --- the model ----------------------------------------------------------
    def bounds(self, guild: str) -> tuple[datetime, datetime]:
        _, period, tz = GUILDS[guild]
        return period_bounds(period, tz, self.now)

    def granted(self, guild: str, user: str | None) -> int:
        start, end = self.bounds(guild)
        return sum(
            g.value
            for g in self.grants
            if g.guild == guild and g.user == user and start <= g.period_start < end
        )

    def mark(self, guild: str, user: str | None) -> int:
        start, end = self.bounds(guild)
        marks = [
            r.value
            for r in self.resets
            if r.guild == guild and r.user in (None, user) and start <= r.period_start < end
        ]
        return max(marks, default=0)

    def totals(self, guild: str, user: str | None) -> tuple[int, int]:
        start, end = self.bounds(guild)
        mark = self.mark(guild, user)
        counted = [
            e
            for e in self.entries
            if e.guild == guild
            and (user is None or e.user == user)
            and start <= e.period_start < end
            and e.id > mark
        ]
        settled = sum(e.settled for e in counted if e.state == "settled")
        reserved = sum(e.cost for e in counted if e.state == "reserved")
        return settled, reserved

    def pool_limit(self, guild: str) -> int:
        return GUILDS[guild][0] + self.granted(guild, None)

    def user_limit(self, guild: str, user: str) -> int | None:
        if user in OVERRIDES:
            base: int | None = OVERRIDES[user]
        else:
            limits = [ROLE_LIMITS[r] for r in ROLES[user] if r in ROLE_LIMITS]
            if not limits:
                base = DEFAULT_ALLOWANCE
            elif any(limit is None for limit in limits):
                base = None
            else:
                base = max(limit for limit in limits if limit is not None)
        return None if base is None else base + self.granted(guild, user)

    def global_total(self) -> int:
        start, end = utc_day_bounds(self.now)
        return sum(
            e.settled if e.state == "settled" else e.cost if e.state == "reserved" else 0
            for e in self.entries
            if start <= e.created_at < end
        )

    def expected_refusal(self, guild: str, user: str, cost: int) -> str | None:
        if sum(1 for e in self.entries if e.user == user and e.state == "reserved") >= (
            MAX_IN_FLIGHT
        ):
            return "in_flight"
        limit = self.user_limit(guild, user)
        if limit is not None and cost > limit - sum(self.totals(guild, user)):
            return "user_allowance"
        if cost > self.pool_limit(guild) - sum(self.totals(guild, None)):
            return "guild_pool"
        if cost > GLOBAL_BUDGET - self.global_total():
            return "global_budget"
        return None

    # --- rules ----------------------------------------------------------------
    @rule(
        guild=st.sampled_from(list(GUILDS)),
        user=st.sampled_from(list(ROLES)),
        cost=st.integers(0, 7),
    )
    def reserve(self, guild: str, user: str, cost: int) -> None:
        self.keys += 1
        key = f"key-{self.keys}"
        expected = self.expected_refusal(guild, user, cost)
        try:
            reservation = self.run(self.ledger.reserve(guild, user, ROLES[user], cost, key))
        except QuotaRefused as exc:
            assert exc.limit == expected
            assert exc.remaining is None or exc.remaining >= 0
            return
        assert expected is None, f"expected a {expected} refusal"
        start, _ = self.bounds(guild)
        self.entries.append(
            ModelEntry(len(self.entries) + 1, guild, user, cost, key, start, self.now, reservation)
        )
        pool_used = sum(self.totals(guild, None))
        assert reservation.guild_remaining == self.pool_limit(guild) - pool_used
        limit = self.pool_limit(guild)
        fired = {(e.guild_id, e.period_start, e.percent) for e in self.events}
        for percent in (80, 100):
            if limit > 0 and pool_used * 100 >= percent * limit:
                assert (guild, start, percent) in fired

    @precondition(lambda self: self.entries)
    @rule(pick=st.integers(0, 10**6))
    def retry_reserve(self, pick: int) -> None:
        entry = self.entries[pick % len(self.entries)]
        again = self.run(
            self.ledger.reserve(entry.guild, entry.user, ROLES[entry.user], entry.cost, entry.key)
        )
        assert again.id == entry.reservation.id

    @precondition(lambda self: self.entries)
    @rule(pick=st.integers(0, 10**6), extra=st.integers(-7, 2))
    def settle(self, pick: int, extra: int) -> None:
        entry = self.entries[pick % len(self.entries)]
        actual = max(0, entry.cost + extra)
        self.run(self.ledger.settle(entry.reservation, actual))
        if entry.state == "reserved":
            entry.state = "settled"
            entry.settled = min(actual, entry.cost)

    @precondition(lambda self: self.entries)
    @rule(pick=st.integers(0, 10**6))
    def refund(self, pick: int) -> None:
        entry = self.entries[pick % len(self.entries)]
        self.run(self.ledger.refund(entry.reservation, "test"))
        if entry.state == "reserved":
            entry.state = "refunded"

    @rule(
        guild=st.sampled_from(list(GUILDS)),
        user=st.none() | st.sampled_from(list(ROLES)),
        credits=st.integers(1, 6),
    )
    def grant(self, guild: str, user: str | None, credits: int) -> None:
        self.run(self.ledger.grant(guild, credits, user_id=user, by="test"))
        self.grants.append(ModelMark(guild, user, credits, self.bounds(guild)[0]))

    @rule(guild=st.sampled_from(list(GUILDS)), user=st.none() | st.sampled_from(list(ROLES)))
    def reset(self, guild: str, user: str | None) -> None:
        marker = self.run(self.ledger.reset(guild, user, by="test"))
        assert marker.after_entry_id == len(self.entries)
        self.resets.append(ModelMark(guild, user, len(self.entries), self.bounds(guild)[0]))

    @rule(seconds=st.integers(1, 36 * 3600))
    def advance(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)

    @rule()
    def sweep(self) -> None:
        swept = {r.id for r in self.run(self.ledger.sweep_expired())}
        expected = set()
        for entry in self.entries:
            if entry.state == "reserved" and self.now - entry.created_at >= TIMEOUT:
                entry.state = "refunded"
                expected.add(entry.reservation.id)
        assert swept == expected

    # --- invariants -------------------------------------------------------------
    @invariant()
    def balances_match_the_model_and_stay_in_bounds(self) -> None:
        for guild in GUILDS:
            for user in ROLES:
                balances = self.run(self.ledger.balance(guild, user, ROLES[user]))
                pool, mine = balances.guild, balances.user
                assert mine is not None
                settled, reserved = self.totals(guild, None)
                assert (pool.limit, pool.used, pool.reserved) == (
                    self.pool_limit(guild),
                    settled,
                    reserved,
                )
                assert pool.limit is not None and pool.remaining is not None
                assert 0 <= pool.used + pool.reserved <= pool.limit
                assert pool.remaining == pool.limit - pool.used - pool.reserved
                settled, reserved = self.totals(guild, user)
                assert (mine.limit, mine.used, mine.reserved) == (
                    self.user_limit(guild, user),
                    settled,
                    reserved,
                )
                if mine.limit is not None:
                    assert 0 <= mine.used + mine.reserved <= mine.limit
                    assert mine.remaining == mine.limit - mine.used - mine.reserved
        assert 0 <= self.global_total() <= GLOBAL_BUDGET

    @invariant()
    def ledger_tables_sum_to_the_balances(self) -> None:
        db = self.db
        for guild in GUILDS:
            start, end = (db.time(t) for t in self.bounds(guild))
            ((mark,),) = self.fetch(
                "SELECT COALESCE(MAX(after_entry_id), 0) FROM quota_resets WHERE guild_id = ?"
                " AND user_id IS NULL AND period_start >= ? AND period_start < ?",
                guild,
                start,
                end,
            )
            ((used, held),) = self.fetch(
                "SELECT COALESCE(SUM(CASE WHEN state = 'settled' THEN cost_settled END), 0),"
                " COALESCE(SUM(CASE WHEN state = 'reserved' THEN cost_reserved END), 0)"
                " FROM quota_entries WHERE guild_id = ? AND period_start >= ?"
                " AND period_start < ? AND id > ?",
                guild,
                start,
                end,
                mark,
            )
            ((granted,),) = self.fetch(
                "SELECT COALESCE(SUM(credits), 0) FROM quota_grants WHERE guild_id = ?"
                " AND user_id IS NULL AND period_start >= ? AND period_start < ?",
                guild,
                start,
                end,
            )
            pool = self.run(self.ledger.balance(guild)).guild
            assert (pool.used, pool.reserved, pool.limit) == (
                used,
                held,
                GUILDS[guild][0] + granted,
            )
        # Every entry is in exactly one state, and a charge never exceeds its hold.
        ((bad,),) = self.fetch(
            "SELECT COUNT(*) FROM quota_entries WHERE cost_settled > cost_reserved"
            " OR (state = 'settled') != (cost_settled IS NOT NULL)"
        )
        assert bad == 0

    @invariant()
    def running_pool_totals_equal_the_entries(self) -> None:
        # Migration 005's triggers, for every guild and period ever touched.
        kept = self.fetch(
            "SELECT guild_id, period_start, settled, reserved FROM quota_pool_totals"
            " WHERE settled <> 0 OR reserved <> 0 ORDER BY 1, 2"
        )
        summed = self.fetch(
            "SELECT * FROM (SELECT guild_id, period_start,"
            " COALESCE(SUM(CASE WHEN state = 'settled' THEN cost_settled END), 0) AS s,"
            " COALESCE(SUM(CASE WHEN state = 'reserved' THEN cost_reserved END), 0) AS r"
            " FROM quota_entries GROUP BY guild_id, period_start) AS sums"
            " WHERE s <> 0 OR r <> 0 ORDER BY 1, 2"
        )
        assert kept == summed

    @invariant()
    def thresholds_fire_once(self) -> None:
        fired = [(e.guild_id, e.period_start, e.percent) for e in self.events]
        assert len(fired) == len(set(fired))


@pytest.mark.parametrize("backend", BACKENDS)
def test_ledger_state_machine(backend: str) -> None:
    machine: type[LedgerMachine] = LedgerMachine
    examples = 30
    if backend == "postgresql":
        server = pg_base_url()
        if server is None:
            pytest.skip(PG_SKIP)
        machine = type("PostgresLedgerMachine", (LedgerMachine,), {"server": server})
        examples = 10  # a schema and its migrations per example
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=examples,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
