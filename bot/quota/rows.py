"""Ledger rows to models, for any backend: only how a timestamp is read differs
(SQLite stores ISO-8601 text, PostgreSQL returns datetimes)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol, cast

from bot.quota.models import Ban, Entry, EntryState, Grant, ResetMarker


class Row(Protocol):
    """What both sqlite3.Row and asyncpg.Record offer: ``row["column"]``."""

    def __getitem__(self, key: str, /) -> Any: ...


class RowMapper:
    def __init__(self, read_time: Callable[[Any], datetime]) -> None:
        self._time = read_time

    def _maybe_time(self, value: Any) -> datetime | None:
        return None if value is None else self._time(value)

    def entry(self, row: Row) -> Entry:
        return Entry(
            id=row["id"],
            reservation_id=row["reservation_id"],
            guild_id=row["guild_id"],
            user_id=row["user_id"],
            channel_id=row["channel_id"],
            job_id=row["job_id"],
            idempotency_key=row["idempotency_key"],
            mode=row["mode"],
            prompt=row["prompt"],
            cost_reserved=row["cost_reserved"],
            cost_settled=row["cost_settled"],
            state=cast(EntryState, row["state"]),
            reason=row["reason"],
            period_start=self._time(row["period_start"]),
            created_at=self._time(row["created_at"]),
            updated_at=self._time(row["updated_at"]),
            owner=row["owner_instance"],
            delivering=bool(row["delivering"]),
        )

    def grant(self, row: Row) -> Grant:
        return Grant(
            id=row["id"],
            guild_id=row["guild_id"],
            user_id=row["user_id"],
            credits=row["credits"],
            period_start=self._time(row["period_start"]),
            granted_by=row["granted_by"],
            reason=row["reason"],
            created_at=self._time(row["created_at"]),
        )

    def reset(self, row: Row) -> ResetMarker:
        return ResetMarker(
            id=row["id"],
            guild_id=row["guild_id"],
            user_id=row["user_id"],
            after_entry_id=row["after_entry_id"],
            period_start=self._time(row["period_start"]),
            reset_by=row["reset_by"],
            reason=row["reason"],
            created_at=self._time(row["created_at"]),
        )

    def ban(self, row: Row) -> Ban:
        return Ban(
            id=row["id"],
            guild_id=row["guild_id"],
            user_id=row["user_id"],
            until=self._time(row["until"]),
            reason=row["reason"],
            banned_by=row["banned_by"],
            created_at=self._time(row["created_at"]),
            lifted_at=self._maybe_time(row["lifted_at"]),
            lifted_by=row["lifted_by"],
        )
