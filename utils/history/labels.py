"""A coin's name and symbol on every row: rows stored without them (daily points from market_chart, which
carries neither) get them from the coin's own snapshots, once.

The fill runs under the history's lock, after a write. A marker in the state folder records that it ran
and which coins still had rows without a name for lack of any snapshot: a later write scans again only
when one of those coins (or a coin whose new rows came without a name) has a snapshot by then. So a
history is scanned once, and a coin backfilled before its first snapshot is named after that snapshot.

`market_cap_rank` is never filled: today's rank is not the coin's rank on a past day. `fetched_at` is not
filled either: for rows stored before the backfill recorded its fetch time, that time is not known.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from utils.history.files import read_json, write_json_atomic
from utils.history.schema import Record

if TYPE_CHECKING:
    from utils.history.index import HistoryIndex

MARKER_VERSION = 1


def coin_labels(index: HistoryIndex) -> dict[str, tuple[str, str]]:
    """Each coin's (name, symbol) as its newest snapshot in the history gave them, whatever the currency."""
    labels: dict[str, tuple[str, str]] = {}
    for series in index.series():
        if series.name or series.symbol:
            labels.setdefault(series.coin_id, (series.name, series.symbol))
    return labels


def unlabelled(records: Iterable[Record]) -> set[str]:
    """The coins of records stored without a name or a symbol."""
    return {r.coin_id for r in records if not (r.name and r.symbol)}


class LabelMarker:
    """`.state/<history>.labels.json`: the fill ran, and the coins whose rows it could not name (no snapshot)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        data = read_json(path)
        waiting = data.get("waiting") if isinstance(data, dict) and data.get("version") == MARKER_VERSION else None
        self.waiting: set[str] | None = (
            {c for c in waiting if isinstance(c, str)} if isinstance(waiting, list) else None
        )

    def idle(self, fresh: set[str]) -> bool:
        """Nothing to look at: the history was scanned, and no coin (old or new rows) waits for a name."""
        return self.waiting is not None and not self.waiting and not fresh

    def due(self, labels: dict[str, tuple[str, str]], fresh: set[str] | frozenset[str] = frozenset()) -> bool:
        """Whether the history must be scanned: never scanned yet, or a coin waiting for a name has one now."""
        return self.waiting is None or bool((self.waiting | fresh) & labels.keys())

    def wait_for(self, coins: set[str]) -> None:
        """Remember coins whose new rows have no name yet (no snapshot of them yet); written only when it changes."""
        if self.waiting is not None and not coins <= self.waiting:
            self.record(self.waiting | coins)

    def record(self, waiting: set[str]) -> None:
        """The fill ran: these coins still have rows without a name. Not rewritten when nothing changes."""
        if waiting == self.waiting:
            return
        write_json_atomic(self.path, {"version": MARKER_VERSION, "waiting": sorted(waiting)}, "label marker")
        self.waiting = set(waiting)
