"""A member's defaults in a guild (/settings): style, aspect ratio, size, provider,
samples, and private results where the guild allows them.

Defaults fill only what a command leaves empty: an explicit option (or prompt
parameter) always wins. They are soft: ``bot.compose`` leaves out a default the
chosen provider cannot use rather than refusing a request the member never made.
Discord-free; either backend, through the job store's connection
(``JobStore.database``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from bot.compose import Defaults
from bot.errors import UserError

SETTINGS = ("style", "aspect_ratio", "size", "provider", "samples", "private")


@dataclass(frozen=True, slots=True)
class Preferences:
    style: str | None = None
    aspect_ratio: str | None = None
    size: str | None = None
    provider: str | None = None
    samples: int | None = None
    private: bool = False

    def changed(self, name: str, value: Any) -> Preferences:
        if name not in SETTINGS:
            raise UserError(f"There is no setting called {name}.")
        if name == "samples" and value is not None:
            value = int(value)
            if not 1 <= value <= 4:
                raise UserError("Samples is a number from 1 to 4.")
        if name == "private":
            value = bool(value)
        return replace(self, **{name: value})

    def defaults(self) -> Defaults:
        """The soft layer ``bot.compose`` applies under a command's own options."""
        return Defaults(aspect_ratio=self.aspect_ratio, size=self.size, provider=self.provider)


class Database(Protocol):
    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int: ...

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]: ...


_COLUMNS = "style, aspect_ratio, size, provider, samples, private_results"
# Also read by bot.gate, with the guild's other checks in one round trip.
PREFERENCES_SQL = (
    f"SELECT {_COLUMNS} FROM member_preferences"  # noqa: S608 - constant columns
    " WHERE guild_id = ? AND user_id = ?"
)
PRIVATE_ALLOWED_SQL = "SELECT private_results FROM guild_settings WHERE guild_id = ?"


def preferences_from(rows: Sequence[Sequence[Any]]) -> Preferences:
    if not rows:
        return Preferences()
    style, aspect_ratio, size, provider, samples, private = rows[0]
    return Preferences(
        style=style,
        aspect_ratio=aspect_ratio,
        size=size,
        provider=provider,
        samples=None if samples is None else int(samples),
        private=bool(private),
    )


def private_allowed_from(rows: Sequence[Sequence[Any]]) -> bool:
    return bool(rows and rows[0][0])


class PreferenceStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, guild_id: str, user_id: str) -> Preferences:
        return preferences_from(await self._db.fetch(PREFERENCES_SQL, (guild_id, user_id)))

    async def save(self, guild_id: str, user_id: str, preferences: Preferences) -> None:
        values = [getattr(preferences, item.name) for item in fields(Preferences)]
        values[-1] = 1 if preferences.private else 0
        await self._db.execute(
            f"INSERT INTO member_preferences (guild_id, user_id, {_COLUMNS}, updated_at)"  # noqa: S608
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (guild_id, user_id) DO UPDATE SET style = excluded.style,"
            " aspect_ratio = excluded.aspect_ratio, size = excluded.size,"
            " provider = excluded.provider, samples = excluded.samples,"
            " private_results = excluded.private_results, updated_at = excluded.updated_at",
            (guild_id, user_id, *values, _now()),
        )

    async def clear(self, guild_id: str, user_id: str) -> None:
        await self._db.execute(
            "DELETE FROM member_preferences WHERE guild_id = ? AND user_id = ?",
            (guild_id, user_id),
        )

    # --- the guild's side ----------------------------------------------------
    async def private_allowed(self, guild_id: str) -> bool:
        return private_allowed_from(await self._db.fetch(PRIVATE_ALLOWED_SQL, (guild_id,)))

    async def allow_private(self, guild_id: str, allowed: bool) -> None:
        await self._db.execute(
            "INSERT INTO guild_settings (guild_id, private_results, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT (guild_id) DO UPDATE SET private_results = excluded.private_results,"
            " updated_at = excluded.updated_at",
            (guild_id, 1 if allowed else 0, _now()),
        )

    async def private_results(self, guild_id: str, user_id: str) -> bool:
        """True when this member's results go to them alone (their choice, the
        guild's permission)."""
        return (await self.get(guild_id, user_id)).private and await self.private_allowed(guild_id)


def _now() -> str:
    return datetime.now(UTC).isoformat()
