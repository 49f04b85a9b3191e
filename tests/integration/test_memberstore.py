"""Blocked words (and later member settings) on both backends."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest

from bot.blocklist import MAX_RULES, parse_rule
from bot.errors import UserError
from bot.jobstore import JobStore
from bot.memberstore import MemberStore
from tests.conftest import LedgerDb


@contextlib.asynccontextmanager
async def member_store(db: LedgerDb) -> AsyncIterator[MemberStore]:
    if db.path is not None:
        async with JobStore.connect(db.path) as jobs:
            yield MemberStore(jobs.database)
    else:
        async with JobStore.connect_postgres(db.url) as jobs:
            yield MemberStore(jobs.database)


async def test_rules_are_kept_per_guild_in_canonical_form(ledger_db: LedgerDb):
    async with member_store(ledger_db) as store:
        assert await store.block("g1", parse_rule("Café*"), "mod")
        assert not await store.block("g1", parse_rule("CAFE*"), "mod")  # the same rule
        assert await store.block("g1", parse_rule("owl"), "mod")
        assert await store.blocked_rules("g1") == ["cafe*", "owl"]
        assert await store.blocked_rules("g2") == []
        blocklist = await store.blocklist("g1")
        assert blocklist.match("two CAFÉS") == parse_rule("cafe*")
        assert await store.unblock("g1", parse_rule("owl"))
        assert not await store.unblock("g1", parse_rule("owl"))
        assert await store.blocked_rules("g1") == ["cafe*"]


async def test_a_guild_has_at_most_max_rules(ledger_db: LedgerDb):
    async with member_store(ledger_db) as store:
        for n in range(MAX_RULES):
            await store.block("g1", parse_rule(f"word{n}"), "mod")
        with pytest.raises(UserError, match="remove some first"):
            await store.block("g1", parse_rule("onemore"), "mod")
