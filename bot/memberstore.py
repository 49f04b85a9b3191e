"""Per-guild and per-member settings beside the job store: blocked words (and,
in later migrations, member preferences). Discord-free; either backend, through
the job store's connection (``JobStore.database``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from bot.blocklist import MAX_RULES, Blocklist, Rule
from bot.errors import UserError


class Database(Protocol):
    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int: ...

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]: ...


class MemberStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    # --- blocked words -----------------------------------------------------
    async def blocked_rules(self, guild_id: str) -> list[str]:
        rows = await self._db.fetch(
            "SELECT rule FROM guild_blocked_words WHERE guild_id = ? ORDER BY rule", (guild_id,)
        )
        return [str(row[0]) for row in rows]

    async def blocklist(self, guild_id: str) -> Blocklist:
        return Blocklist.from_texts(await self.blocked_rules(guild_id))

    async def block(self, guild_id: str, rule: Rule, by: str) -> bool:
        """Add a rule; False when the guild has it already."""
        existing = await self.blocked_rules(guild_id)
        if rule.text in existing:
            return False
        if len(existing) >= MAX_RULES:
            raise UserError(
                f"This server already blocks {MAX_RULES} words or phrases; remove some first."
            )
        added = await self._db.execute(
            "INSERT INTO guild_blocked_words (guild_id, rule, added_by, added_at)"
            " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (guild_id, rule.text, by, _now()),
        )
        return added == 1

    async def unblock(self, guild_id: str, rule: Rule) -> bool:
        """Remove a rule; False when the guild did not have it."""
        removed = await self._db.execute(
            "DELETE FROM guild_blocked_words WHERE guild_id = ? AND rule = ?",
            (guild_id, rule.text),
        )
        return removed > 0


def _now() -> str:
    return datetime.now(UTC).isoformat()
