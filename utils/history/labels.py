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

import logging
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from utils.errors import PipelineError
from utils.history.files import describe_os_error, read_json, write_json_atomic
from utils.history.schema import Record
from utils.words import count

if TYPE_CHECKING:
    from utils.history.index import HistoryIndex

log = logging.getLogger(__name__)

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


def fill_once(
    marker_path: Path,
    index: HistoryIndex,
    fresh: list[Record],
    fill: Callable[[dict[str, tuple[str, str]]], tuple[int, set[str]]],
    resync: Callable[[], None],
    *,
    index_counts_unnamed: bool = False,
) -> int:
    """After a write, under the history's lock: name the rows stored without a name, when the marker says it is due.

    `fill(labels)` rewrites the store's rows and returns (rows filled, coins still without a name); `resync()`
    brings the index up to the rewritten store. Never fatal: the write's rows are stored; a failure is a
    warning and the next write tries again. Returns the rows filled.

    index_counts_unnamed: the index's series.unnamed counts are right for this store (the CSV's; a Delta table's
    index does not keep them), so they decide first whether any row can be named at all."""
    try:
        marker = LabelMarker(marker_path)
        waiting = unlabelled(fresh)
        if marker.idle(waiting):  # the usual write: scanned before, no coin waits for a name
            return 0
        if index_counts_unnamed:
            needing = index.unnamed_coins()  # the index counts each coin's rows without a name or symbol
            labels = coin_labels(index) if needing else {}  # every row named (the usual first run): none read
            if not needing & labels.keys():  # none of them can be named: no need to read the history
                marker.record(needing)
                return 0
        else:
            labels = coin_labels(index)
        if not marker.due(labels, waiting):
            marker.wait_for(waiting)
            return 0
        filled, left = fill(labels)
        if filled:
            resync()
            log.info(
                "gave %s stored without a name and symbol those of their coin's own snapshots (once; "
                "market_cap_rank stays empty: today's rank is not a past day's)",
                count(filled, "row"),
            )
        marker.record(left)
        return filled
    except (OSError, PipelineError, sqlite3.Error) as exc:
        why = describe_os_error(exc, exc.filename or marker_path, "rewrite") if isinstance(exc, OSError) else exc
        log.warning("could not give rows stored without a name their coin's name (%s); the next write tries again", why)
        return 0
