"""/history lines for jobs that ended without images, whether or not their
member has heard why yet ("failing"/"refusing": see Pipeline._end_unmade)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bot.memberstore import HistoryEntry
from cogs.history import describe_entry


def entry(status: str) -> HistoryEntry:
    return HistoryEntry(
        job_id="j1",
        created_at=datetime(2026, 11, 29, 12, 0, tzinfo=UTC),
        prompt="a lighthouse at dusk",
        mode="text",
        status=status,
        cost=2,
        charged=None,
        channel_id="c1",
        message_id=None,
    )


@pytest.mark.parametrize("status", ["failed", "failing", "refusing"])
def test_a_job_that_ended_without_images_reads_as_refunded(status: str) -> None:
    line = describe_entry(1, 1, entry(status))
    assert "not made, refunded" in line and "reserved" not in line
    assert entry(status).finished


@pytest.mark.parametrize("status", ["accepted", "polling", "downloading", "delivering"])
def test_a_running_job_reads_as_in_progress(status: str) -> None:
    assert "in progress, 2 reserved" in describe_entry(1, 1, entry(status))
    assert not entry(status).finished
