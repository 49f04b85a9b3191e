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


async def test_history_lists_a_members_jobs_newest_first(ledger_db: LedgerDb):
    from bot.jobs import Job, Posted
    from bot.models import GenerationRequest, Mode, Requester

    if ledger_db.path is not None:
        opened = JobStore.connect(ledger_db.path)
    else:
        opened = JobStore.connect_postgres(ledger_db.url)
    async with opened as jobs:
        store = MemberStore(jobs.database)
        for n, (guild, user) in enumerate([("g1", "u1"), ("g1", "u2"), ("g2", "u1"), ("g1", "u1")]):
            request = GenerationRequest(
                mode=Mode.TEXT,
                prompt=f"prompt {n}",
                requester=Requester(guild_id=guild, user_id=user, channel_id="c1"),
                idempotency_key=f"key{n}",
            )
            assert await jobs.record_accepted(f"{n:032x}", request, "modelslab", 2)
        last = Job(f"{3:032x}", request, request, "modelslab", 2, 2, 0.0)
        posted = Posted(message_id="m3", images=(), charged=1, seed=7, model="flux")
        await jobs.record(last, "posted", posted=posted)
        entries, total = await store.history("g1", "u1", limit=1)
        assert total == 2
        assert [(e.prompt, e.delivered, e.charged, e.message_id) for e in entries] == [
            ("prompt 3", True, 1, "m3")
        ]
        older, _ = await store.history("g1", "u1", limit=5, offset=1)
        assert [(e.prompt, e.status, e.cost, e.finished) for e in older] == [
            ("prompt 0", "accepted", 2, False)
        ]
        record = await jobs.get(f"{3:032x}")
        assert record is not None and record.model == "flux"


async def test_preferences_per_member_and_guild_on_both_backends(ledger_db: LedgerDb):
    from bot.preferences import Preferences, PreferenceStore

    async with member_store(ledger_db) as members:
        store = PreferenceStore(members._db)
        assert await store.get("g1", "u1") == Preferences()
        chosen = Preferences().changed("style", "photo").changed("samples", "3")
        chosen = chosen.changed("private", True)
        await store.save("g1", "u1", chosen)
        assert await store.get("g1", "u1") == chosen
        assert await store.get("g1", "u2") == Preferences()
        assert await store.get("g2", "u1") == Preferences()
        assert not await store.private_results("g1", "u1")  # the guild has not allowed it
        await store.allow_private("g1", True)
        assert await store.private_results("g1", "u1")
        await store.save("g1", "u1", chosen.changed("samples", None))
        assert (await store.get("g1", "u1")).samples is None
        with pytest.raises(UserError, match="1 to 4"):
            chosen.changed("samples", 9)
        await store.clear("g1", "u1")
        assert await store.get("g1", "u1") == Preferences()
