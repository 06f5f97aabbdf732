"""What the program remembers about which coins it tracks: top-N membership spells and /search answers.

Both live as small JSON files under .state/ (named by DataLayout). Unlike the index they cannot be
rebuilt from the CSV: the CSV records what was observed, not which coins were in the top N when,
nor what /search answered. Losing them costs little: membership starts again from the next run,
and a search is asked again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from utils.errors import PipelineError
from utils.history.files import atomic_write_bytes, check_folder, ensure_dir, read_json, write_json_atomic
from utils.history.layout import DataLayout

log = logging.getLogger(__name__)

Spell = tuple[date, date | None]  # entered on, left on (the first day outside the top N), None while inside


def _day(text: Any) -> date | None:
    try:
        return date.fromisoformat(str(text))
    except ValueError:
        return None


def _save(path: Path, value: Any) -> None:
    """Write a state file; a failure is a warning, since the run's data already landed."""
    try:
        check_folder(path.parent, "state folder")
        ensure_dir(path.parent)
        write_json_atomic(path, value)
    except (OSError, PipelineError) as exc:
        log.warning("could not write %s: %s", path, getattr(exc, "strerror", None) or exc)


@dataclass(frozen=True)
class Changes:
    """Who entered and who left the top N of one currency in one run."""

    entered: tuple[str, ...]
    left: tuple[str, ...]


def spell_ranges(spells: list[Spell], today: date) -> list[tuple[int, int]]:
    """Spells as (first, last) day numbers, inclusive: the days a coin was inside the top N up to today."""
    epoch = date(1970, 1, 1)
    out = []
    for entered, left in spells:
        last = (left - timedelta(days=1)) if left else today
        if last >= entered:
            out.append(((entered - epoch).days, (last - epoch).days))
    return out


def _open(raw: Any) -> bool:
    """Whether a coin's stored spells hold one still open (what spells() reads as a spell without an end),
    without reading every spell's days: 17,000 coins twice a run of the whole market."""
    return isinstance(raw, list) and any(
        isinstance(spell, list) and len(spell) == 2 and not spell[1] and _day(spell[0]) for spell in raw
    )


class TopMembers:
    """Per currency: each coin's spells inside the top N, and the day tracking began."""

    def __init__(self, path: Path) -> None:
        self.path = path
        data = read_json(path)
        self.currencies: dict[str, dict[str, Any]] = {}
        if isinstance(data, dict):
            for vs, entry in data.items():
                if isinstance(entry, dict) and isinstance(entry.get("coins"), dict) and _day(entry.get("since")):
                    self.currencies[vs] = entry

    def spells(self, vs_currency: str, coin_id: str) -> list[Spell]:
        """The coin's spells in the top N of this currency, oldest first."""
        raw = self.currencies.get(vs_currency, {}).get("coins", {}).get(coin_id, [])
        out: list[Spell] = []
        for spell in raw if isinstance(raw, list) else []:
            if isinstance(spell, list) and len(spell) == 2 and _day(spell[0]):
                out.append((_day(spell[0]), _day(spell[1]) if spell[1] else None))  # type: ignore[arg-type]
        return out

    def members(self, vs_currency: str) -> list[str]:
        """Coins inside the top N of this currency now, best rank first as last seen."""
        entry = self.currencies.get(vs_currency, {})
        order = entry.get("order") if isinstance(entry.get("order"), list) else []
        inside = {c for c, raw in entry.get("coins", {}).items() if _open(raw)}
        return [c for c in order if c in inside] + sorted(inside - set(order))

    def update(
        self,
        vs_currency: str,
        top_ids: list[str],
        today: date,
        size: int,
        also: tuple[str, ...] = (),
        gone: list[str] | tuple[str, ...] = (),
    ) -> Changes:
        """Record this run's top N (best first): open a spell for each newcomer, close it for each leaver.

        `also`: the --coins tracked beside the top N, so `status` can count what the run tracked.
        `gone`: members that /coins/markets returns no more (delisted): each is recorded with the last
        day a run saw it; one that comes back is taken off that list and opens a new spell.
        """
        entry = self.currencies.setdefault(vs_currency, {"since": today.isoformat(), "coins": {}})
        delisted = entry.get("gone") if isinstance(entry.get("gone"), dict) else {}
        last_run = _day(entry.get("last_run")) or today
        for coin_id in gone:
            delisted.setdefault(coin_id, (last_run if last_run < today else today).isoformat())
        for coin_id in top_ids:
            delisted.pop(coin_id, None)
        entry["gone"] = delisted
        entry["last_run"] = today.isoformat()
        first_run = not entry["coins"]
        before = set(self.members(vs_currency))
        now = set(top_ids)
        coins = entry["coins"]
        for coin_id in now - before:
            coins.setdefault(coin_id, []).append([today.isoformat(), None])
        for coin_id in before - now:
            spells = coins[coin_id]
            spells[-1][1] = today.isoformat() if _day(spells[-1][0]) != today else None
            if spells[-1][1] is None:  # entered and left on the same day: no days inside at all
                spells.pop()
        entry["order"] = list(top_ids)
        entry["size"] = size
        entry["also"] = [c for c in also if c not in now]
        if first_run:
            return Changes((), ())
        return Changes(tuple(c for c in top_ids if c not in before), tuple(sorted(before - now)))

    def recent(self, vs_currency: str, today: date, days: int = 30) -> tuple[int, int]:
        """How many coins entered and left the top N of this currency in the last `days` days.

        Coins inside from the first run on did not enter: tracking began with them.
        """
        entry = self.currencies.get(vs_currency, {})
        since = _day(entry.get("since"))
        start = today - timedelta(days=days)
        entered = left = 0
        for coin_id in entry.get("coins", {}):
            for first, last in self.spells(vs_currency, coin_id):
                if first > start and first != since:
                    entered += 1
                if last is not None and last > start:
                    left += 1
        return entered, left

    def also(self, vs_currency: str) -> list[str]:
        """The --coins the last run tracked beside the top N of this currency."""
        value = self.currencies.get(vs_currency, {}).get("also")
        return [c for c in value if isinstance(c, str)] if isinstance(value, list) else []

    def gone(self, vs_currency: str) -> dict[str, date]:
        """Coins delisted from /coins/markets while tracked, with the last day a run saw them."""
        value = self.currencies.get(vs_currency, {}).get("gone")
        days = {c: _day(d) for c, d in value.items()} if isinstance(value, dict) else {}
        return {c: d for c, d in days.items() if d is not None}

    def size(self, vs_currency: str) -> int | None:
        value = self.currencies.get(vs_currency, {}).get("size")
        return value if isinstance(value, int) else None

    def save(self) -> None:
        _save(self.path, self.currencies)

    def to_bytes(self) -> bytes:
        """The file's bytes, as save() writes them (for an object beside an S3 table)."""
        return json.dumps(self.currencies, indent=1, sort_keys=True).encode() + b"\n"


def members_key(layout: DataLayout) -> str:
    """Where top-members.json lives relative to the data folder (its key under an S3 prefix)."""
    return layout.top_members.relative_to(layout.data_dir).as_posix()


def shared_members(read: Callable[[str], bytes | None], layout: DataLayout) -> TopMembers:
    """Top-N membership of a history in object storage: the object read afresh into the local scratch copy."""
    data = read(members_key(layout))
    path = layout.top_members
    if data is None:
        path.unlink(missing_ok=True)
    else:
        ensure_dir(path.parent)
        atomic_write_bytes(path, data)
    return TopMembers(path)


class SearchMemory:
    """The /search answer for each coin that stopped returning data, asked at most once per UTC day."""

    def __init__(self, path: Path) -> None:
        self.path = path
        data = read_json(path)
        self.entries: dict[str, dict[str, Any]] = (
            {k: v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}
        )
        self.changed = False

    def get(self, coin_id: str, today: date) -> list[dict[str, Any]] | None:
        """Today's remembered candidates for this coin, or None when it was not searched today."""
        entry = self.entries.get(coin_id)
        if not entry or entry.get("day") != today.isoformat() or not isinstance(entry.get("found"), list):
            return None
        return [c for c in entry["found"] if isinstance(c, dict)]

    def put(self, coin_id: str, today: date, found: list[dict[str, Any]], since: date | None) -> None:
        self.entries[coin_id] = {
            "day": today.isoformat(),
            "found": found,
            "no_data_since": since.isoformat() if since else None,
        }
        self.changed = True

    def save(self) -> None:
        if self.changed:
            _save(self.path, self.entries)
            self.changed = False
