"""Per-guild and per-member data beside the job store: blocked words and a
member's job history (their /settings live in bot/preferences.py). Discord-free;
either backend, through the job store's connection (``JobStore.database``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from bot.blocklist import MAX_RULES, Blocklist, Rule
from bot.errors import UserError
from bot.jobstore import UNMADE


class Database(Protocol):
    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int: ...

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]: ...


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    job_id: str
    created_at: datetime
    prompt: str
    mode: str
    status: str  # posted/delivered, failed, or a step of a job still running
    cost: int  # reserved
    charged: int | None  # what delivery cost; None until delivered
    channel_id: str | None
    message_id: str | None
    # Sent to the member alone (ephemeral, or by DM): no link others or they could open.
    private: bool = False

    @property
    def delivered(self) -> bool:
        # "posted": the images are out, the settlement is being written.
        return self.status in ("posted", "delivered")

    @property
    def unmade(self) -> bool:
        return self.status in UNMADE

    @property
    def finished(self) -> bool:
        return self.delivered or self.unmade


BLOCKED_RULES_SQL = "SELECT rule FROM guild_blocked_words WHERE guild_id = ? ORDER BY rule"


class MemberStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    # --- blocked words -----------------------------------------------------
    async def blocked_rules(self, guild_id: str) -> list[str]:
        rows = await self._db.fetch(BLOCKED_RULES_SQL, (guild_id,))
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

    # --- history -----------------------------------------------------------
    async def history(
        self, guild_id: str, user_id: str, *, limit: int, offset: int = 0
    ) -> tuple[list[HistoryEntry], int]:
        """A member's jobs in a guild, newest first, and how many there are."""
        rows = await self._db.fetch(
            "SELECT id, created_at, request_json, mode, status, cost, charged, channel_id,"
            " message_id FROM jobs WHERE guild_id = ? AND user_id = ?"
            " ORDER BY created_at DESC, id LIMIT ? OFFSET ?",
            (guild_id, user_id, limit, offset),
        )
        total = await self._db.fetch(
            "SELECT COUNT(*) FROM jobs WHERE guild_id = ? AND user_id = ?", (guild_id, user_id)
        )
        entries = []
        for row in rows:
            request = json.loads(row[2])
            entries.append(
                HistoryEntry(
                    job_id=row[0],
                    created_at=datetime.fromisoformat(row[1]),
                    prompt=str(request.get("prompt", "")),
                    mode=row[3],
                    status=row[4],
                    cost=int(row[5]),
                    charged=None if row[6] is None else int(row[6]),
                    channel_id=row[7],
                    message_id=row[8],
                    private=bool(request.get("private", False)),
                )
            )
        return entries, int(total[0][0])


def _now() -> str:
    return datetime.now(UTC).isoformat()
