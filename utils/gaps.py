"""Coverage of the history: which complete UTC days a coin has no observation on."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import pandas as pd


@dataclass(frozen=True)
class Coverage:
    """What the history holds for one currency."""

    rows: int
    coins: tuple[str, ...]
    first: pd.Timestamp | None
    last: pd.Timestamp | None
    missing_days: dict[str, list[date]]  # coin_id -> complete UTC days without an observation

    @property
    def total_missing(self) -> int:
        return sum(len(days) for days in self.missing_days.values())


def read_observations(csv_path: Path) -> pd.DataFrame:
    """coin_id, vs_currency and last_updated (as UTC timestamps) of every readable row."""
    frame = pd.read_csv(csv_path, usecols=["coin_id", "vs_currency", "last_updated"], dtype=str,
                        keep_default_na=False, on_bad_lines="skip", engine="c", encoding_errors="replace")
    frame["last_updated"] = pd.to_datetime(frame["last_updated"], utc=True, errors="coerce", format="ISO8601")
    return frame.dropna(subset=["last_updated"])


def coverage(frame: pd.DataFrame, vs_currency: str, today: date) -> Coverage:
    """Rows, coins, first and last observation, and the days missing since each coin's first day up to yesterday."""
    rows = frame[frame["vs_currency"] == vs_currency]
    if rows.empty:
        return Coverage(0, (), None, None, {})
    days = rows.assign(day=rows["last_updated"].dt.date)
    missing: dict[str, list[date]] = {}
    for coin_id, group in days.groupby("coin_id", sort=True):
        seen = set(group["day"])
        first = min(seen)
        span = (today - first).days  # complete days: first .. yesterday
        gaps = [first + timedelta(days=i) for i in range(span) if first + timedelta(days=i) not in seen]
        if gaps:
            missing[str(coin_id)] = gaps
    return Coverage(len(rows), tuple(sorted(rows["coin_id"].unique())), rows["last_updated"].min(),
                    rows["last_updated"].max(), missing)


def ranges(days: list[date]) -> list[tuple[date, date]]:
    """Consecutive days folded into (first, last) ranges."""
    out: list[tuple[date, date]] = []
    for day in sorted(days):
        if out and day == out[-1][1] + timedelta(days=1):
            out[-1] = (out[-1][0], day)
        else:
            out.append((day, day))
    return out
