"""Quota periods: when a day, week or month starts in a guild's time zone."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

Period = Literal["day", "week", "month"]
PERIODS: tuple[Period, ...] = ("day", "week", "month")

# How refusal messages name the current period.
PERIOD_WORDS: dict[str, str] = {"day": "today", "week": "this week", "month": "this month"}


def parse_period(value: str) -> Period:
    if value == "day":
        return "day"
    if value == "week":
        return "week"
    if value == "month":
        return "month"
    raise ValueError(f"period must be day, week or month, not {value!r}")


def zone(name: str) -> ZoneInfo:
    """The IANA zone ``name``, or ValueError with a message for a person."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f"unknown time zone {name!r}; use an IANA name such as Europe/Paris"
        ) from exc


def _local_midnight(day: date, tz: ZoneInfo) -> datetime:
    # fold=0 picks the offset in force before a transition, which makes a
    # midnight that falls in a DST gap (clocks jump 00:00 -> 01:00) resolve to
    # the instant of the jump, i.e. the first moment of the local day.
    return datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)


def _first_day(period: Period, today: date) -> date:
    if period == "day":
        return today
    if period == "week":
        return today - timedelta(days=today.weekday())
    return today.replace(day=1)


def _next_first_day(period: Period, first: date) -> date:
    if period == "day":
        return first + timedelta(days=1)
    if period == "week":
        return first + timedelta(days=7)
    if first.month == 12:
        return date(first.year + 1, 1, 1)
    return date(first.year, first.month + 1, 1)


def period_bounds(period: Period, tz_name: str, now: datetime) -> tuple[datetime, datetime]:
    """The current period ``[start, end)`` as aware UTC datetimes.

    Day: local midnight to local midnight; week: Monday 00:00 local; month: the
    1st at 00:00 local. A local day is 23 or 25 hours long across DST changes.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    tz = zone(tz_name)
    local_today = now.astimezone(tz).date()
    first = _first_day(period, local_today)
    start = _local_midnight(first, tz)
    end = _local_midnight(_next_first_day(period, first), tz)
    # A midnight made ambiguous by a fall-back transition could put ``now``
    # before the computed start; step back one period in that rare case.
    if now < start:
        first = _first_day(period, first - timedelta(days=1))
        end, start = start, _local_midnight(first, tz)
    return start, end


def utc_day_bounds(now: datetime) -> tuple[datetime, datetime]:
    """The UTC day around ``now``: the period of the operator-wide budget."""
    start = datetime.combine(now.astimezone(UTC).date(), time(0), tzinfo=UTC)
    return start, start + timedelta(days=1)
