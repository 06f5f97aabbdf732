"""Time helpers, one of each: the UTC clock, the day in milliseconds, and days <-> epoch numbers.

Day numbers count days since 1970-01-01 (UTC); timestamps in the history are milliseconds since then;
CoinGecko's /market_chart/range takes seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone

DAY_MS = 86_400_000
EPOCH = date(1970, 1, 1)
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """Now, in UTC (the default clock; tests pass their own)."""
    return datetime.now(timezone.utc)


def day_number(day: date) -> int:
    """Days since 1970-01-01."""
    return (day - EPOCH).days


def day_of(number: int) -> date:
    """The date of a day number."""
    return EPOCH + timedelta(days=number)


def midnight_ms(day: date) -> int:
    """00:00 UTC of a day, in milliseconds since 1970 (the history's timestamps)."""
    return day_number(day) * DAY_MS


def midnight_seconds(day: date) -> int:
    """00:00 UTC of a day, in seconds since 1970 (what /market_chart/range takes)."""
    return day_number(day) * 86_400
