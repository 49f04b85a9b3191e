"""Period boundaries in guild time zones, across DST changes; the cost table."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.config import DEFAULT_COSTS
from bot.quota.costs import CostTable, UnknownCostTier
from bot.quota.periods import PERIODS, Period, period_bounds, utc_day_bounds


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize(
    ("period", "tz", "now", "start", "end"),
    [
        # New York springs forward on 2024-03-10: a 23-hour day.
        ("day", "America/New_York", utc(2024, 3, 10, 16), utc(2024, 3, 10, 5), utc(2024, 3, 11, 4)),
        # ... and falls back on 2024-11-03: a 25-hour day.
        ("day", "America/New_York", utc(2024, 11, 3, 16), utc(2024, 11, 3, 4), utc(2024, 11, 4, 5)),
        # Just before local midnight is still the old day.
        (
            "day",
            "America/New_York",
            utc(2024, 3, 10, 4, 59),
            utc(2024, 3, 9, 5),
            utc(2024, 3, 10, 5),
        ),
        ("day", "America/New_York", utc(2024, 3, 10, 5), utc(2024, 3, 10, 5), utc(2024, 3, 11, 4)),
        # London: GMT until 2024-03-31 01:00, then BST.
        ("day", "Europe/London", utc(2024, 3, 31, 12), utc(2024, 3, 31), utc(2024, 3, 31, 23)),
        ("day", "Europe/London", utc(2024, 10, 27, 12), utc(2024, 10, 26, 23), utc(2024, 10, 28)),
        # Weeks start on Monday: 2024-03-31 is a Sunday.
        ("week", "Europe/London", utc(2024, 3, 31, 12), utc(2024, 3, 25), utc(2024, 3, 31, 23)),
        ("week", "UTC", utc(2024, 3, 25), utc(2024, 3, 25), utc(2024, 4, 1)),
        ("month", "America/New_York", utc(2024, 3, 15), utc(2024, 3, 1, 5), utc(2024, 4, 1, 4)),
        ("month", "UTC", utc(2024, 12, 31, 23, 59), utc(2024, 12, 1), utc(2025, 1, 1)),
        # Tokyo is ahead of UTC: its 1 January starts on 31 December UTC.
        ("month", "Asia/Tokyo", utc(2024, 12, 31, 16), utc(2024, 12, 31, 15), utc(2025, 1, 31, 15)),
        # Santiago's midnight of 2022-09-11 does not exist (00:00 -> 01:00):
        # the day starts at the jump.
        ("day", "America/Santiago", utc(2022, 9, 11, 12), utc(2022, 9, 11, 4), utc(2022, 9, 12, 3)),
        ("day", "America/Santiago", utc(2022, 9, 10, 12), utc(2022, 9, 10, 4), utc(2022, 9, 11, 4)),
    ],
)
def test_period_bounds(
    period: Period, tz: str, now: datetime, start: datetime, end: datetime
) -> None:
    assert period_bounds(period, tz, now) == (start, end)


ZONES = [
    "UTC",
    "America/New_York",
    "Europe/London",
    "Australia/Lord_Howe",  # half-hour DST shift
    "America/Santiago",
    "Asia/Kathmandu",
    "Pacific/Apia",  # skipped 2011-12-30 entirely
]


@settings(max_examples=300, deadline=None)
@given(
    period=st.sampled_from(PERIODS),
    tz=st.sampled_from(ZONES),
    now=st.datetimes(
        min_value=datetime(2010, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)
    ),
)
def test_periods_tile_time(period: Period, tz: str, now: datetime) -> None:
    start, end = period_bounds(period, tz, now)
    assert start <= now < end
    assert start.tzinfo is UTC and end.tzinfo is UTC
    # The next period starts where this one ends; the previous ends where it starts.
    assert period_bounds(period, tz, end)[0] == end
    assert period_bounds(period, tz, start - timedelta(microseconds=1))[1] == start
    hours = (end - start).total_seconds() / 3600
    low, high = {"day": (22, 26), "week": (166, 170), "month": (27 * 24, 31 * 24 + 2)}[period]
    if tz == "Pacific/Apia" and start <= SAMOA_SKIPPED_DAY < end:
        low -= 24  # that week (and month) really was a day short
    assert low <= hours <= high


# Samoa moved west of the date line: 30 December 2011 never happened there.
SAMOA_SKIPPED_DAY = datetime(2011, 12, 30, 10, tzinfo=UTC)


def test_the_week_samoa_skipped_a_day_is_six_days_long() -> None:
    start, end = period_bounds("week", "Pacific/Apia", utc(2011, 12, 31, 12))
    assert (start, end) == (utc(2011, 12, 26, 10), utc(2012, 1, 1, 10))
    assert end - start == timedelta(days=6)


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        period_bounds("day", "UTC", datetime(2024, 1, 1))


def test_unknown_zone_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown time zone"):
        period_bounds("day", "Mars/Olympus", utc(2024, 1, 1))


def test_utc_day_bounds() -> None:
    assert utc_day_bounds(utc(2024, 3, 10, 23, 59)) == (utc(2024, 3, 10), utc(2024, 3, 11))


def test_cost_table_prices_tiers() -> None:
    table = CostTable(DEFAULT_COSTS)
    assert table.price("text2img") < table.price("nano_banana_img2img") < table.price("nbpro_4k")
    assert table.total("nbpro_2k", 3) == 3 * DEFAULT_COSTS["nbpro_2k"]
    assert CostTable().price("text2img") == DEFAULT_COSTS["text2img"]


def test_cost_table_refuses_unknown_tier_and_bad_samples() -> None:
    table = CostTable({"text2img": 2})
    with pytest.raises(UnknownCostTier, match="nbpro_4k"):
        table.price("nbpro_4k")
    with pytest.raises(ValueError, match="samples"):
        table.total("text2img", 0)
    with pytest.raises(ValueError, match="0 or more"):
        CostTable({"text2img": -1})
