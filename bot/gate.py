"""What a command must know before it is acknowledged: the guild's blocked words
and allowed channels, the member's settings and whether the guild lets results be
private, and any ban. Read in one round trip to the job store's database, beside
the ledger's ban lookup, instead of one round trip each: these reads sit between
a member's command and Discord's 3 s to acknowledge it, so each one is waited
for by every command (bench/RESULTS.md has the figures).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from bot.blocklist import Blocklist
from bot.errors import UserError
from bot.jobstore import ALLOWED_CHANNELS_SQL, Query
from bot.memberstore import BLOCKED_RULES_SQL
from bot.preferences import (
    PREFERENCES_SQL,
    PRIVATE_ALLOWED_SQL,
    Preferences,
    preferences_from,
    private_allowed_from,
)
from bot.quota.models import Ban
from bot.quota.service import ban_refusal

NOT_IN_DMS = "Image commands work in servers, not in direct messages."


class Database(Protocol):
    async def fetch_many(self, queries: Sequence[Query]) -> list[list[Sequence[Any]]]: ...


@dataclass(frozen=True, slots=True)
class Gate:
    guild_id: str | None  # None in a direct message
    blocklist: Blocklist
    preferences: Preferences
    private_allowed: bool
    allowed_channels: frozenset[str]
    ban: Ban | None

    @property
    def private(self) -> bool:
        """Whether this member's new results go to them alone."""
        return self.preferences.private and self.private_allowed

    def channel_refusal(self, channel_id: str | None) -> UserError | None:
        if self.guild_id is None:
            return UserError(NOT_IN_DMS)
        if self.allowed_channels and str(channel_id) not in self.allowed_channels:
            mentions = ", ".join(f"<#{c}>" for c in sorted(self.allowed_channels))
            return UserError(f"The moderators allow image commands only in {mentions}.")
        return None

    def refusal(self, channel_id: str | None) -> UserError | None:
        """A channel rule, then a ban: the refusals that need no request."""
        refused = self.channel_refusal(channel_id)
        if refused is None and self.ban is not None:
            refused = ban_refusal(self.ban)
        return refused


async def open_gate(
    db: Database,
    guild_id: str | None,
    user_id: str,
    ban: Awaitable[Ban | None] | None = None,
) -> Gate:
    """The gate for ``user_id`` in ``guild_id``; ``ban`` is the ledger's lookup,
    awaited alongside the store's reads (none in a direct message)."""
    if guild_id is None:
        return Gate(None, Blocklist.from_texts([]), Preferences(), False, frozenset(), None)
    reads = db.fetch_many(
        [
            (BLOCKED_RULES_SQL, (guild_id,)),
            (PREFERENCES_SQL, (guild_id, user_id)),
            (PRIVATE_ALLOWED_SQL, (guild_id,)),
            (ALLOWED_CHANNELS_SQL, (guild_id,)),
        ]
    )
    if ban is None:
        rows, found = await reads, None
    else:
        rows, found = await asyncio.gather(reads, ban)
    rules, preferences, private, channels = rows
    return Gate(
        guild_id=guild_id,
        blocklist=Blocklist.from_texts([str(row[0]) for row in rules]),
        preferences=preferences_from(preferences),
        private_allowed=private_allowed_from(private),
        allowed_channels=frozenset(str(row[0]) for row in channels),
        ban=found,
    )
