"""The ledger's SQLite time text: fixed width, ordered as the times are, read back exactly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.quota.sqlite_store import _DB_FORMAT, from_db, to_db

aware = st.datetimes(
    min_value=datetime(1000, 1, 2),
    max_value=datetime(9999, 12, 30),
    timezones=st.builds(
        timezone, st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23))
    ),
)


@given(aware)
def test_the_text_is_strftimes_and_reads_back(value: datetime) -> None:
    text = to_db(value)
    assert text == value.astimezone(UTC).strftime(_DB_FORMAT)
    assert from_db(text) == value and from_db(text).tzinfo is UTC


@given(aware, aware)
def test_the_text_sorts_as_the_times_do(a: datetime, b: datetime) -> None:
    assert (to_db(a) < to_db(b)) == (a < b)


def test_a_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        to_db(datetime(2024, 1, 1))
