"""The checks before an acknowledgement, read together (bot.gate), on both backends."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from bot.blocklist import parse_rule
from bot.gate import NOT_IN_DMS, open_gate
from bot.jobstore import JobStore
from bot.memberstore import MemberStore
from bot.preferences import Preferences, PreferenceStore
from bot.sqlite_worker import SqliteWorker
from tests.conftest import LedgerDb, sqlite_db


@contextlib.asynccontextmanager
async def job_store(db: LedgerDb) -> AsyncIterator[JobStore]:
    opened = JobStore.connect(db.path) if db.path is not None else JobStore.connect_postgres(db.url)
    async with opened as jobs:
        yield jobs


async def test_the_gate_reads_each_guild_s_and_member_s_own_rows(ledger_db: LedgerDb):
    async with job_store(ledger_db) as jobs:
        members = MemberStore(jobs.database)
        preferences = PreferenceStore(jobs.database)
        await members.block("g1", parse_rule("owl"), "mod")
        await members.block("g2", parse_rule("cat"), "mod")
        await preferences.save("g1", "u1", Preferences(style="noir", private=True))
        await preferences.save("g1", "u2", Preferences(aspect_ratio="16:9"))
        await preferences.allow_private("g1", True)
        await jobs.allow_channel("g1", "c1", "mod")

        gate = await open_gate(jobs.database, "g1", "u1")
        assert gate.blocklist.match("an owl") == parse_rule("owl")
        assert gate.blocklist.match("a cat") is None  # g2's rule
        assert gate.preferences == Preferences(style="noir", private=True)
        assert gate.private
        assert gate.allowed_channels == {"c1"}
        assert gate.refusal("c1") is None
        refused = gate.refusal("c2")
        assert refused is not None and "<#c1>" in refused.user_message

        other = await open_gate(jobs.database, "g1", "u2")
        assert other.preferences == Preferences(aspect_ratio="16:9")
        assert not other.private  # the guild allows it, the member did not ask

        elsewhere = await open_gate(jobs.database, "g2", "u1")
        assert elsewhere.preferences == Preferences()
        assert not elsewhere.private_allowed
        assert elsewhere.allowed_channels == frozenset()
        assert elsewhere.refusal("any") is None


async def test_a_direct_message_is_refused_without_reading(ledger_db: LedgerDb):
    async with job_store(ledger_db) as jobs:
        gate = await open_gate(jobs.database, None, "u1")
    refused = gate.refusal(None)
    assert refused is not None and refused.user_message == NOT_IN_DMS


async def test_the_gate_is_one_transaction_on_sqlite(tmp_path: Path):
    async with job_store(sqlite_db(tmp_path / "bot.db")) as jobs:
        worker = jobs.database._worker  # type: ignore[attr-defined]
        assert isinstance(worker, SqliteWorker)
        before = worker.commits
        await open_gate(jobs.database, "g1", "u1")
        assert worker.commits == before + 1
