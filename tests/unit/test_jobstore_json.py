"""What the job journal keeps of a reservation comes back whole after a restart."""

from __future__ import annotations

from datetime import UTC, datetime

from bot.jobstore import reservation_from_json, reservation_to_json
from bot.quota.base import Reservation


def test_a_reservation_survives_the_journal() -> None:
    held = Reservation(
        id="r1",
        guild_id="g",
        user_id="u",
        cost=4,
        idempotency_key="k",
        created_at=datetime(2026, 11, 21, 20, 0, 1, 123456, tzinfo=UTC),
        user_remaining=None,
        guild_remaining=96,
        period_start=datetime(2026, 11, 1, tzinfo=UTC),
        resets_at=datetime(2026, 12, 1, tzinfo=UTC),
    )
    assert reservation_from_json(reservation_to_json(held)) == held
