"""The history's index: an SQLite file beside the CSV that answers what the program asks of the history.

It holds the key of every stored observation (coin and time as integers), the last observation of
each UTC day (the charts' daily points), each series' covered days as ranges, the days CoinGecko
had no data for (as ranges, with when that was asked), and which bytes of the CSV it covers.
Everything in it can be rebuilt from the CSV; the CSV stays the source of truth.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sqlite3
import struct
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from operator import itemgetter
from pathlib import Path
from typing import Any

from utils.clock import DAY_MS, day_number
from utils.errors import LoadError
from utils.history import csvio
from utils.history.csvio import Observation
from utils.history.schema import COLUMNS
from utils.words import count

log = logging.getLogger(__name__)

# 2: obs and daily keyed time first, so an append writes a few pages, not one per series
# 3: a key is stored once: each day's last observation in `daily` (keyed day << 20 | series, its time as ms into the
#    day), the other observations' keys in `extra`; a once-a-day history no longer keeps the same rows twice
# 4: series.unnamed, the rows stored without a name or symbol (the label fill scans the CSV only when one can be named)
# 5: a row of `daily` holds one day of 16 neighbouring series, packed (22 bytes a point instead of about 33)
SCHEMA_VERSION = "5"
RETRY_UNAVAILABLE_DAYS = 30  # CoinGecko sometimes fills old days later: ask again after this long
SERIES_BITS = 20  # a daily point's slot is day << SERIES_BITS | series
SERIES_LIMIT = 1 << SERIES_BITS  # (coin, currency) pairs one index can hold: 17,000 coins in 61 currencies
MASK = SERIES_LIMIT - 1
GROUP_BITS = 4  # a row of `daily` is keyed slot >> GROUP_BITS: one day of 16 neighbouring series
GROUP = 1 << GROUP_BITS
_MANY = 500  # coins named in one IN (...) list; SQLite builds before 3.32 allow 999 parameters a statement

_TABLES = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY, coin_id TEXT NOT NULL, vs_currency TEXT NOT NULL, name TEXT NOT NULL DEFAULT '',
    symbol TEXT NOT NULL DEFAULT '', label_ms INTEGER NOT NULL DEFAULT 0, rows INTEGER NOT NULL DEFAULT 0,
    first_ms INTEGER, last_ms INTEGER, unnamed INTEGER NOT NULL DEFAULT 0, UNIQUE (coin_id, vs_currency));
CREATE TABLE IF NOT EXISTS daily (k INTEGER PRIMARY KEY, v BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS extra (ts INTEGER NOT NULL, series INTEGER NOT NULL, PRIMARY KEY (ts, series)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS covered (
    series INTEGER NOT NULL, first_day INTEGER NOT NULL, last_day INTEGER NOT NULL,
    PRIMARY KEY (series, first_day)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS unavailable (
    series INTEGER NOT NULL, first_day INTEGER NOT NULL, last_day INTEGER NOT NULL, checked_ms INTEGER NOT NULL,
    PRIMARY KEY (series, first_day)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS table_files (path TEXT PRIMARY KEY) WITHOUT ROWID;
"""
# daily: the last observation of each UTC day per series, the charts' points. A point's slot is day << 20 | series;
#   a row holds the points of 16 slots (one day, series 16g to 16g + 15), keyed slot >> 4 (a rowid, so a new day's
#   rows are appended in key order and fill pages whole). Its value: a 2-byte little-endian mask of the slots held,
#   then one 22-byte entry per slot held, in slot order (_ENTRY: ms since the day began and rank, price, market cap).
#   A row of points costs 22 bytes each and a dozen for the row, where a row per point cost
#   about 33 (SQLite's rowid, record header and cell pointer for each). extra: the key of every other observation
#   (a series observed more than once a day). Together they hold every key once.
_DATA_TABLES = ("series", "daily", "extra", "covered", "unavailable", "table_files")
# An entry on disk: the time (ms into the day, 27 bits) and the rank + 1 (21 bits, 0 for none) in 48 bits as a uint32
# and a uint16, then the price and the market cap as doubles (NaN for none): 22 bytes.
_ENTRY = struct.Struct("<IHdd")
_ENTRY_DTYPE = [("low", "<u4"), ("high", "<u2"), ("price", "<f8"), ("cap", "<f8")]  # _ENTRY for numpy, packed
_POINT_DTYPE = [("at", "<i8"), ("price", "<f8"), ("cap", "<f8"), ("rank", "<i8")]  # an entry in memory (rank -1: none)
AT_BITS = 27  # ms into a day: below 2^27
RANK_LIMIT = (1 << 21) - 2  # the largest rank the index keeps (CoinGecko ranks about 17,000 coins); above: none


class DamagedIndex(sqlite3.DatabaseError):
    """A row of the index that does not decode: the index is rebuilt from the CSV like any damaged index."""


def is_damage(exc: BaseException) -> bool:
    """Whether an SQLite error says the index's content is damaged (a malformed file, a row that does not
    decode), not that it is busy, locked, read-only or full: a damaged index is removed and built again."""
    return isinstance(exc, sqlite3.DatabaseError) and not isinstance(
        exc, (sqlite3.OperationalError, sqlite3.ProgrammingError, sqlite3.InterfaceError)
    )


def removed_as_damaged(index: HistoryIndex, exc: BaseException, source: str) -> LoadError | None:
    """For an error met while using an index file: when it says the index is damaged, remove the file and return
    the one line to raise (the next command builds it again from `source`); None for any other error."""
    if not is_damage(exc) or index.path == ":memory:":
        return None
    remove_index(index.path)
    return LoadError(
        f"the index {index.path} is damaged ({exc}); it was removed: run the command again and it is built again "
        f"from {source}"
    )


def remove_index(path: Path | str) -> None:
    """Delete an index file and its journals (it holds nothing the history does not)."""
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(OSError):
            Path(str(path) + suffix).unlink()


def _entry(blob: bytes, place: int) -> tuple[int, float | None, float | None, int | None] | None:
    """The point of one slot (0-15) of a daily row: (ms into the day, price, cap, rank), or None if not held."""
    if len(blob) < 2:
        raise DamagedIndex("a daily row of the index is cut short")
    mask = blob[0] | blob[1] << 8
    if not mask >> place & 1:
        return None
    offset = 2 + _ENTRY.size * (mask & ((1 << place) - 1)).bit_count()
    if len(blob) < offset + _ENTRY.size:
        raise DamagedIndex("a daily row of the index is cut short")
    return _point(*_ENTRY.unpack_from(blob, offset))


def _point(low: int, high: int, price: float, cap: float) -> tuple[int, float | None, float | None, int | None]:
    """One unpacked _ENTRY as (ms into the day, price, cap, rank), None for what it lacks."""
    both = low | high << 32
    rank = (both >> AT_BITS) - 1
    return (
        both & ((1 << AT_BITS) - 1),
        None if price != price else price,
        None if cap != cap else cap,
        None if rank < 0 else rank,
    )


@functools.lru_cache(maxsize=1 << GROUP)
def _places(mask: int) -> tuple[int, ...]:
    """The slots (0-15) a daily row's mask holds, in order."""
    return tuple(place for place in range(GROUP) if mask >> place & 1)


def _decode(rows: Sequence[tuple[int, bytes]]) -> tuple[Any, Any]:
    """Daily rows (key, value) as (slots, points): numpy arrays, one item per point, in row then slot order."""
    import numpy as np  # start-up time: numpy only where many points are read at once

    points = np.empty(0, _POINT_DTYPE)
    if not rows:
        return np.zeros(0, np.int64), points
    keys = np.fromiter((k for k, _ in rows), np.int64, len(rows))
    masks = np.fromiter((int.from_bytes(v[:2], "little") for _, v in rows), np.int64, len(rows))
    row, place = np.nonzero((masks[:, None] >> np.arange(GROUP)) & 1)
    body = b"".join(v[2:] for _, v in rows)
    if len(body) != len(row) * _ENTRY.size:
        raise DamagedIndex("a daily row of the index does not match its mask")
    packed = np.frombuffer(body, _ENTRY_DTYPE)
    both = packed["low"].astype(np.int64) | packed["high"].astype(np.int64) << 32
    points = np.empty(len(packed), _POINT_DTYPE)
    points["at"], points["price"], points["cap"] = both & ((1 << AT_BITS) - 1), packed["price"], packed["cap"]
    points["rank"] = (both >> AT_BITS) - 1
    return (keys[row] << GROUP_BITS) | place, points


def _encode(slots: Any, points: Any) -> list[tuple[int, bytes]]:
    """Points sorted by slot (each slot once) as daily rows (key, value)."""
    import numpy as np  # start-up time: only writing to the index needs numpy

    if not len(slots):
        return []
    both = points["at"] | (points["rank"] + 1) << AT_BITS
    packed = np.empty(len(points), _ENTRY_DTYPE)
    packed["low"], packed["high"] = both & 0xFFFFFFFF, both >> 32
    packed["price"], packed["cap"] = points["price"], points["cap"]
    body = packed.tobytes()
    keys = slots >> GROUP_BITS
    starts = np.flatnonzero(np.insert(keys[1:] != keys[:-1], 0, True))
    ends = np.append(starts[1:], len(slots)) * _ENTRY.size
    masks = np.bitwise_or.reduceat(np.left_shift(1, slots & (GROUP - 1)), starts)
    return [
        (k, m.to_bytes(2, "little") + body[a:b])
        for k, m, a, b in zip(keys[starts].tolist(), masks.tolist(), (starts * _ENTRY.size).tolist(), ends.tolist())
    ]


def _points(at: Any, price: Any, cap: Any, rank: Any) -> Any:
    """Columns as points: NaN stays NaN (no price or cap); a rank outside 0..RANK_LIMIT becomes -1 (none)."""
    import numpy as np  # start-up time: only writing to the index needs numpy

    out = np.empty(len(at), _POINT_DTYPE)
    out["at"], out["price"], out["cap"] = at, price, cap
    out["rank"] = np.where((rank < 0) | (rank > RANK_LIMIT), -1, rank)
    return out


def slot(day: int, sid: int) -> int:
    """The daily table's key of one series' day."""
    return day * SERIES_LIMIT + sid


Range = tuple[int, int]  # first and last day number (days since 1970-01-01), inclusive


def to_ranges(days: Iterable[int]) -> list[Range]:
    """Day numbers folded into (first, last) ranges of consecutive days."""
    out: list[Range] = []
    for day in sorted(set(days)):
        if out and day == out[-1][1] + 1:
            out[-1] = (out[-1][0], day)
        else:
            out.append((day, day))
    return out


def subtract(span: Range, holes: Sequence[Range]) -> list[Range]:
    """The parts of span not in any of the holes (sorted, non-overlapping)."""
    out: list[Range] = []
    start, end = span
    for first, last in holes:
        if last < start or first > end:
            continue
        if first > start:
            out.append((start, first - 1))
        start = max(start, last + 1)
        if start > end:
            break
    if start <= end:
        out.append((start, end))
    return out


@dataclass(frozen=True)
class FileMark:
    """Which CSV bytes the index covers, and how to tell it is still that file."""

    size: int
    head: str
    tail: str
    inode: int
    mtime_ns: int


@dataclass(frozen=True)
class SeriesInfo:
    """One (coin, currency) in the history."""

    coin_id: str
    vs_currency: str
    name: str
    symbol: str
    rows: int
    first_ms: int
    last_ms: int
    covered: tuple[Range, ...]

    @property
    def first_day(self) -> int:
        return self.first_ms // DAY_MS

    def missing(self, today: date) -> list[Range]:
        """Complete UTC days (before today) since the first observation that have none."""
        end = day_number(today) - 1
        if end < self.first_day:
            return []
        return subtract((self.first_day, end), self.covered)

    def missing_count(self, today: date) -> int:
        return sum(b - a + 1 for a, b in self.missing(today))


@dataclass(frozen=True)
class DailyPoints:
    """The last observation of each UTC day, per series, ordered by series then day."""

    coin_id: list[str]
    name: list[str]
    symbol: list[str]
    series: list[int]  # index into coin_id/name/symbol, one per point
    ts_ms: list[int]
    price: list[float | None]
    cap: list[float | None]


class _SeriesFacts:
    """Each series' rows, first and last time and newest name over a whole read (block after block, in file order),
    written to `series` once at the end instead of once per block."""

    def __init__(self) -> None:
        import numpy as np  # start-up time: only writing to the index needs numpy

        self.np = np
        self.rows = np.zeros(0, np.int64)
        self.unnamed = np.zeros(0, np.int64)  # rows without a name or a symbol
        self.first = np.zeros(0, np.int64)
        self.last = np.zeros(0, np.int64)
        self.label_ms = np.zeros(0, np.int64)
        self.labels: dict[int, tuple[str, str]] = {}  # series -> (name, symbol) of its newest named observation

    def _grow(self, size: int) -> None:
        np = self.np
        if size <= len(self.rows):
            return
        more = size - len(self.rows)
        self.rows = np.append(self.rows, np.zeros(more, np.int64))
        self.unnamed = np.append(self.unnamed, np.zeros(more, np.int64))
        self.first = np.append(self.first, np.full(more, np.iinfo(np.int64).max))
        self.last = np.append(self.last, np.full(more, np.iinfo(np.int64).min))
        self.label_ms = np.append(self.label_ms, np.full(more, np.iinfo(np.int64).min))

    def add(self, sid: Any, ts: Any, names: Any, symbols: Any) -> None:
        """A block's rows: series and times as int64 arrays, names and symbols as pyarrow arrays or lists."""
        np = self.np
        self._grow(int(sid.max()) + 1)
        self.rows += np.bincount(sid, minlength=len(self.rows))
        by_series = np.lexsort((ts, sid))
        s = sid[by_series]
        starts = np.flatnonzero(np.insert(s[1:] != s[:-1], 0, True))
        ends = np.append(starts[1:], len(s)) - 1
        ids = s[starts]
        self.first[ids] = np.minimum(self.first[ids], ts[by_series[starts]])
        self.last[ids] = np.maximum(self.last[ids], ts[by_series[ends]])
        if isinstance(names, list):
            has_name = np.array([bool(n) for n in names], dtype=bool)
            labelled = has_name & np.array([bool(y) for y in symbols], dtype=bool)
        else:
            import pyarrow.compute as pc  # optional package: pyarrow comes with the Delta store, whose columns these are

            has_name = pc.not_equal(names, "").to_numpy(zero_copy_only=False)
            labelled = has_name & pc.not_equal(symbols, "").to_numpy(zero_copy_only=False)
        if not labelled.all():
            self.unnamed += np.bincount(sid[~labelled], minlength=len(self.unnamed))
        named = np.flatnonzero(has_name)
        if not len(named):
            return
        order = named[np.lexsort((named, ts[named], sid[named]))]  # a later row wins a tie in time
        s = sid[order]
        label = order[np.flatnonzero(np.append(s[1:] != s[:-1], True))]
        label = label[ts[label] >= self.label_ms[sid[label]]]
        if not len(label):
            return
        self.label_ms[sid[label]] = ts[label]
        if isinstance(names, list):
            picked = [(names[i], symbols[i]) for i in label.tolist()]
        else:
            picked = list(zip(names.take(label).to_pylist(), symbols.take(label).to_pylist()))
        self.labels.update(zip(sid[label].tolist(), picked))

    def write(self, db: sqlite3.Connection) -> None:
        """Fold the facts into the series table (inside the caller's transaction)."""
        np = self.np
        seen = np.flatnonzero(self.rows)
        lows, highs = self.first[seen].tolist(), self.last[seen].tolist()
        db.executemany(
            "UPDATE series SET rows = rows + ?, unnamed = unnamed + ?, first_ms = min(coalesce(first_ms, ?), ?), "
            "last_ms = max(coalesce(last_ms, ?), ?) WHERE id = ?",
            zip(self.rows[seen].tolist(), self.unnamed[seen].tolist(), lows, lows, highs, highs, seen.tolist()),
        )
        db.executemany(
            "UPDATE series SET name = ?, symbol = ?, label_ms = ? WHERE id = ? AND ? >= label_ms",
            [(n, y, int(self.label_ms[i]), i, int(self.label_ms[i])) for i, (n, y) in self.labels.items()],
        )


class _Coverage:
    """The (series, day) pairs of an index build, gathered block by block as arrays and folded into ranges once."""

    COMPACT_AT = 1 << 21  # pairs held before they are folded into ranges (a 10M-row build holds a few MB)

    def __init__(self) -> None:
        self.series: list = []
        self.days: list = []
        self.held = 0
        self.folded: tuple = ()  # (series, first day, last day) arrays of the pairs folded so far

    def add(self, series: object, days: object) -> None:
        self.series.append(series)
        self.days.append(days)
        self.held += len(series)  # type: ignore[arg-type]
        if self.held >= self.COMPACT_AT:
            self.folded = self._fold()

    def _fold(self) -> tuple:
        """Every pair so far, and the ranges folded before, as (series, first, last) arrays of merged ranges."""
        import numpy as np  # start-up time: only an index build needs numpy

        series = [s.astype(np.int64) for s in self.series]
        firsts = [d.astype(np.int64) for d in self.days]
        lasts = list(firsts)
        if self.folded:
            series.append(self.folded[0])
            firsts.append(self.folded[1])
            lasts.append(self.folded[2])
        self.series, self.days, self.held = [], [], 0
        if not series:
            return ()
        s, first, last = np.concatenate(series), np.concatenate(firsts), np.concatenate(lasts)
        if not len(s):
            return ()
        order = np.lexsort((first, s))
        s, first, last = s[order], first[order], last[order]
        # Within a series (sorted by first day), a range starts a new run when it begins after every earlier one
        # has ended (plus one day: adjacent ranges join). Offsetting by series keeps the running maximum per series.
        offset = (s - s.min()) * (1 << 40)
        reach = np.maximum.accumulate(last + offset) - offset
        new = np.insert((s[1:] != s[:-1]) | (first[1:] > reach[:-1] + 1), 0, True)
        start = np.flatnonzero(new)
        end = np.append(start[1:], len(s)) - 1
        return s[start], first[start], reach[end]

    def ranges(self) -> dict[int, list[Range]]:
        """Each series' days as (first, last) ranges of consecutive days."""
        folded = self._fold() if self.series else self.folded
        self.folded = ()
        out: dict[int, list[Range]] = defaultdict(list)
        if folded:
            for sid, first, last in zip(*(column.tolist() for column in folded)):
                out[sid].append((first, last))
        return out


BUSY_NOTICE = 2.0  # seconds of waiting for a held index before a line says so


class HistoryIndex:
    """The SQLite index of one CSV history (WAL mode; ':memory:' for a read-only data folder)."""

    # The CSV is read this much at a time. A whole-market file holds all 17,000 coins in every block, and each
    # block pays for its (coin, currency) pairs in Python: 8 MB blocks halve that against 4 MB (the 10.2M-row
    # build: 36.8-40.8 s against 46.2-49.9 s CPU, alternating) for 25 MB more at the peak (402 MB).
    CHUNK_BYTES = 8 << 20

    def __init__(self, path: Path | str, busy_timeout: float = 300.0) -> None:
        self.path = str(path)
        self.busy_timeout = busy_timeout  # --lock-timeout: how long to wait for another program holding the file
        # SQLite's own wait is kept short, so that after BUSY_NOTICE seconds a line says what is being waited for.
        self.db = sqlite3.connect(
            self.path, isolation_level=None, timeout=min(BUSY_NOTICE, busy_timeout), check_same_thread=False
        )
        try:
            if self.path != ":memory:":
                self._patiently(lambda: self.db.execute("PRAGMA journal_mode=WAL"))
            self._patiently(lambda: self.db.execute("PRAGMA synchronous=NORMAL"))
            self._patiently(lambda: self.db.executescript(_TABLES))
        except BaseException:
            self.db.close()
            raise
        if self._meta("version") != SCHEMA_VERSION or self._meta("columns") != ",".join(COLUMNS):
            if self._meta("version") not in (None, SCHEMA_VERSION):
                log.info("the index %s is from another version of this program: rebuilding it from the history", path)
                self._drop_tables()  # another layout: CREATE TABLE IF NOT EXISTS would keep the old one
            self._reset()

        self._ids: dict[tuple[str, str], int] = {}
        self._top: int | None = None  # the daily table's largest key, read once between writes (has)
        self._ids_read = False  # _ids holds every series of the file (read once between writes)
        self._rows_written = self._rows_inside = 0  # daily rows written, and those of them not at the table's end

    def close(self) -> None:
        self.db.close()

    def _patiently(self, step: Callable[[], object]) -> None:
        """Run a step that needs the database file, waiting up to busy_timeout while another program holds it
        (said once after BUSY_NOTICE seconds); then sqlite3.OperationalError, and the caller reads the CSV instead."""
        deadline = time.monotonic() + self.busy_timeout
        told = False
        while True:
            try:
                step()
                return
            except sqlite3.OperationalError as exc:
                text = str(exc).lower()
                if "locked" not in text and "busy" not in text:
                    raise
                left = deadline - time.monotonic()
                if left <= 0:
                    raise sqlite3.OperationalError(
                        f"another program held the index for {self.busy_timeout:g} s (--lock-timeout)"
                    ) from None
                if not told:
                    told = True
                    log.warning(
                        "waiting for the index %s: another program holds it (up to %g s, --lock-timeout)",
                        self.path,
                        self.busy_timeout,
                    )
                self.db.execute(f"PRAGMA busy_timeout = {int(max(1, min(BUSY_NOTICE, left)) * 1000)}")

    def __enter__(self) -> HistoryIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- bookkeeping ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction: all of it lands, or none."""
        self._patiently(lambda: self.db.execute("BEGIN IMMEDIATE"))
        self._top = None
        self._ids_read = False  # another process may have added series before this transaction began
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        finally:
            self._top = None  # the largest daily key may have moved: has() reads it again
            self._ids_read = False
        self.db.execute("COMMIT")

    def _meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT v FROM meta WHERE k = ?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, **values: object) -> None:
        self.db.executemany(
            "INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)", [(k, str(v)) for k, v in values.items()]
        )

    def _drop_tables(self) -> None:
        """Drop every table and view (an earlier version's layout), then create today's."""
        with self._transaction():
            for kind, name in self.db.execute(
                "SELECT type, name FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%'"
            ).fetchall():
                self.db.execute(f'DROP {kind.upper()} IF EXISTS "{name}"')  # names from the file's own schema
        self.db.executescript(_TABLES)

    def _reset(self, *, inside: bool = False) -> None:
        """Empty every table (inside the caller's transaction, or in one of its own)."""
        with contextlib.nullcontext() if inside else self._transaction():
            for table in _DATA_TABLES + ("meta",):
                self.db.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed table names
            self._set_meta(version=SCHEMA_VERSION, columns=",".join(COLUMNS), rows=0, damaged=0)
        self._ids = {}

    def mark(self) -> FileMark | None:
        try:
            return FileMark(
                int(self._meta("size") or ""),
                self._meta("head") or "",
                self._meta("tail") or "",
                int(self._meta("inode") or ""),
                int(self._meta("mtime_ns") or ""),
            )
        except ValueError:
            return None

    @property
    def rows(self) -> int:
        """Valid rows in the CSV (a row stored twice by hand counts twice; its key once)."""
        return int(self._meta("rows") or 0)

    @property
    def damaged(self) -> int:
        """Lines of the CSV that are not valid rows (kept in place, never read as data)."""
        return int(self._meta("damaged") or 0)

    def _mark_file(self, fh, extra_rows: int, extra_damaged: int) -> None:
        st = os.fstat(fh.fileno())
        head, tail = csvio.probe_hashes(fh, st.st_size)
        self._set_meta(
            size=st.st_size,
            head=head,
            tail=tail,
            inode=st.st_ino,
            mtime_ns=st.st_mtime_ns,
            rows=self.rows + extra_rows,
            damaged=self.damaged + extra_damaged,
        )

    # -- keeping up with the CSV ------------------------------------------------------------------

    def sync(self, csv_path: Path) -> str:
        """Bring the index up to the CSV: 'fresh', 'caught up' (from the recorded offset) or 'rebuilt'."""
        with open(csv_path, "rb") as fh:
            st = os.fstat(fh.fileno())
            mark = self.mark()
            if mark is not None and mark.inode == st.st_ino and mark.size <= st.st_size:
                if csvio.probe_hashes(fh, mark.size) == (mark.head, mark.tail):
                    if mark.size == st.st_size and mark.mtime_ns == st.st_mtime_ns:
                        return "fresh"
                    if mark.size < st.st_size:
                        with self._transaction():
                            rows = self._ingest(fh, mark.size, st.st_size)
                        log.debug("index of %s caught up with %d rows", csv_path, rows)

                        return "caught up"
            self.rebuild(fh, csv_path)
            return "rebuilt"

    def rebuild(self, fh, csv_path: Path) -> None:
        """Index the whole CSV anew (the file was rewritten, edited, or the index is new)."""
        fh.seek(0)
        fh.readline()  # the header (csvio.header_length's line)
        start = fh.tell()
        # Days CoinGecko had no data for cannot be read back from the CSV: they outlive the rebuild.
        asked = self.db.execute(
            "SELECT s.coin_id, s.vs_currency, u.first_day, u.last_day, u.checked_ms "
            "FROM unavailable u JOIN series s ON s.id = u.series"
        ).fetchall()
        try:
            # One transaction: a reader in another process sees the old index or the new, never an empty one.
            with self._transaction():
                self._reset(inside=True)
                self._rows_written = self._rows_inside = 0
                rows = self._ingest(fh, start, os.fstat(fh.fileno()).st_size, bulk=True)
                self._restore_unavailable(asked)
        except BaseException:
            self._ids = {}  # ids handed out inside the rolled-back transaction are void
            raise
        level = logging.INFO if rows > 100_000 else logging.DEBUG
        log.log(level, "indexed %s: %s, %s", csv_path, count(rows, "row"), count(self.damaged, "damaged line"))
        pages, free = (self.db.execute(f"PRAGMA {what}").fetchone()[0] for what in ("page_count", "freelist_count"))
        # An earlier, larger index leaves free pages; a file not in day order (a backfill's coin after coin) writes
        # rows inside the table rather than at its end, which splits pages: VACUUM gives the space back and fills
        # the pages again.
        if self.path != ":memory:" and (free > max(256, pages // 4) or self._rows_inside * 4 > self._rows_written):
            with contextlib.suppress(sqlite3.OperationalError):  # another reader holds it: the space is reused later
                self.db.execute("VACUUM")

    def _ingest(self, fh, start: int, end: int, *, bulk: bool = False) -> int:
        """Index the CSV's bytes [start, end) read in chunks (inside a transaction), then mark the file. Returns rows.

        The chunks keep a ten-million-row build to a few hundred MB: only each block's rows, the coverage and
        per-series facts are held. bulk: the index was just emptied."""
        import numpy as np  # start-up time: only writing to the index needs numpy

        rows = damaged = 0
        cover, facts = _Coverage(), _SeriesFacts()
        top = self._top_slot()
        # The bytes checked for standard readers grow while the blocks read here pass that check too, so that the
        # first run after a build does not read the whole file again.
        readable = start if bulk or self.readable_upto >= start else -1
        checking = readable >= 0
        for block in csvio.read_columns(fh, start, end, self.CHUNK_BYTES):
            if isinstance(block, csvio.Columns):  # plain rows, parsed at C speed
                if checking and block.readable_end > readable:
                    readable = block.readable_end
                else:
                    checking = False
                ids = self._series_ids(block.pairs)
                sid = np.array([ids[pair] for pair in block.pairs], dtype=np.int64)[block.pair]
                top = self._write_rows(sid, block.ts_ms, block.price, block.cap, block.rank, top, cover)
                facts.add(sid, block.ts_ms, block.name, block.symbol)
                rows += len(block)
                continue
            found, bad = block
            damaged += bad
            checking = False
            if found:
                top = self._write_observations(found, top, cover, facts)
                rows += len(found)
        facts.write(self.db)
        self._cover_many(cover.ranges(), replace=bulk)
        self._mark_file(fh, rows, damaged)
        if readable > max(start, self.readable_upto):
            self._set_meta(readable=readable)
        return rows

    def _restore_unavailable(self, asked: list[tuple[str, str, int, int, int]]) -> None:
        """Put back remembered unavailable ranges, less the days the CSV now covers."""
        by_key: dict[tuple[str, str], dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
        for coin_id, vs, first, last, checked in asked:
            for day in range(first, last + 1):
                by_key[(coin_id, vs)][checked].append(day)
        if not by_key:
            return
        ids = self._series_ids(by_key)
        for key, by_checked in by_key.items():
            for checked, days in by_checked.items():
                self._set_unavailable(ids[key], add=days, checked_ms=checked)
            covered = self.db.execute("SELECT first_day, last_day FROM covered WHERE series = ?", (ids[key],))
            self._set_unavailable(ids[key], remove=[d for a, b in covered for d in range(a, b + 1)])

    def record_append(self, found: list[Observation], fh) -> None:
        """After appending these rows to the CSV (open as fh): their keys and the new length, in one transaction."""
        mark = self.mark()
        checked = mark is not None and self.readable_upto >= mark.size
        with self._transaction():
            self._add(found)
            self._mark_file(fh, len(found), 0)
            if checked:  # the file was checked for standard readers up to its end; the new rows are ours
                self._set_meta(readable=os.fstat(fh.fileno()).st_size)

    @property
    def readable_upto(self) -> int:
        """Bytes of the CSV checked to parse with standard readers (csv module, pandas); 0 after a rebuild."""
        try:
            return int(self._meta("readable") or 0)
        except ValueError:
            return 0

    def set_readable(self, size: int) -> None:
        with self._transaction():
            self._set_meta(readable=size)

    # -- keeping up with a Delta table (utils/history/delta_table.py) ------------------------------

    def table_files(self, table_id: str) -> set[str]:
        """The table's data files this index has read; a table with another id (made anew) starts it over,
        keeping the days CoinGecko had no data for."""
        if self._meta("table_id") != table_id:
            asked = self.db.execute(
                "SELECT s.coin_id, s.vs_currency, u.first_day, u.last_day, u.checked_ms "
                "FROM unavailable u JOIN series s ON s.id = u.series"
            ).fetchall()
            try:
                with self._transaction():
                    self._reset(inside=True)
                    self._restore_unavailable(asked)
                    self._set_meta(table_id=table_id)
            except BaseException:
                self._ids = {}
                raise
            return set()
        return {p for (p,) in self.db.execute("SELECT path FROM table_files")}

    def add_observations(self, found: list[Observation], *, unseen: bool = False) -> int:
        """Record the observations whose key the index lacks (one transaction); returns how many were new.

        unseen: the caller knows no key is held yet (an index built from a table's files, each key in one file),
        so none is looked up."""
        if not found:
            return 0
        with self._transaction():
            ids = self._series_ids({(o.coin_id, o.vs_currency) for o in found})
            fresh, seen = [], set()
            for o in found:
                key = (o.ts_ms, ids[(o.coin_id, o.vs_currency)])
                if key in seen or (not unseen and self._holds(key[1], key[0])):
                    continue
                seen.add(key)
                fresh.append(o)
            self._add(fresh)
            self._set_meta(rows=self.rows + len(fresh))
        return len(fresh)

    def add_tables(self, tables: Iterable[Any]) -> int:
        """Record the rows of Arrow tables of the Delta store's columns (coin_id, vs_currency, last_updated as a
        timestamp, current_price, market_cap, market_cap_rank, name, symbol) column by column, in one transaction,
        into an index that holds none of their keys yet (built from a table's files, each key in one file): the
        rule of add_observations(observations_of(table), unseen=True) without a Python object per row, the days
        and series facts folded in once at the end as a CSV build does. A row without a coin, currency or time is
        skipped. Returns the rows recorded."""
        import numpy as np  # start-up time: only writing to the index needs numpy
        import pyarrow as pa
        import pyarrow.compute as pc

        added = 0
        cover, facts = _Coverage(), _SeriesFacts()
        with self._transaction():
            top = self._top_slot()
            for given in tables:
                pa.default_memory_pool().release_unused()  # the allocator keeps freed blocks otherwise: 100s of MB
                valid = [pc.is_valid(given.column(c)) for c in ("coin_id", "vs_currency", "last_updated")]
                table = given.filter(pc.and_(pc.and_(valid[0], valid[1]), valid[2]))
                if not table.num_rows:
                    continue

                def column(name: str, table: Any = table) -> Any:
                    return table.column(name).combine_chunks()

                pairs, pair_index = csvio.pair_codes(column("coin_id"), column("vs_currency"))
                ts = pc.divide(column("last_updated").cast(pa.int64()), 1000).to_numpy().astype(np.int64)
                price, cap = (
                    pc.fill_null(column(c).cast(pa.float64()), float("nan")).to_numpy(zero_copy_only=False)
                    for c in ("current_price", "market_cap")
                )
                rank = column("market_cap_rank").cast(pa.int64())
                rank = pc.fill_null(pc.if_else(pc.less(rank, 10**9), rank, pa.scalar(None, pa.int64())), -1)
                ids = self._series_ids(pairs)
                sid = np.array([ids[pair] for pair in pairs], dtype=np.int64)[pair_index]
                top = self._write_rows(sid, ts, price, cap, rank.to_numpy(), top, cover)
                facts.add(sid, ts, *(pc.fill_null(column(c), "") for c in ("name", "symbol")))
                added += table.num_rows
            facts.write(self.db)
            self._cover_many(cover.ranges())
            self._set_meta(rows=self.rows + added)
        return added

    def record_table_files(self, read: list[str], current: set[str]) -> None:
        """Remember the files just read, and forget those the table no longer holds (compacted away)."""
        with self._transaction():
            self.db.executemany("INSERT OR IGNORE INTO table_files (path) VALUES (?)", [(p,) for p in read])
            gone = [(p,) for (p,) in self.db.execute("SELECT path FROM table_files") if p not in current]
            self.db.executemany("DELETE FROM table_files WHERE path = ?", gone)

    # -- writing ----------------------------------------------------------------------------------

    def _series_ids(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
        wanted = set(keys) - self._ids.keys()
        if wanted:
            self.db.executemany("INSERT OR IGNORE INTO series (coin_id, vs_currency) VALUES (?, ?)", sorted(wanted))
            for sid, coin_id, vs in self.db.execute("SELECT id, coin_id, vs_currency FROM series"):
                self._ids[(coin_id, vs)] = sid
        return self._ids

    def _add(self, found: list[Observation]) -> None:
        """Record observations (inside a transaction): keys, daily points, series facts, covered days."""
        if found:
            facts = _SeriesFacts()
            self._write_observations(found, self._top_slot(), None, facts)
            facts.write(self.db)

    def _top_slot(self) -> int:
        """The largest slot the daily table's last row can hold (-1 << 62 when empty): a slot above it is new."""
        top = self.db.execute("SELECT max(k) FROM daily").fetchone()[0]
        return -(1 << 62) if top is None else top << GROUP_BITS | (GROUP - 1)

    def _rows(self, keys: Iterable[int]) -> list[tuple[int, bytes]]:
        """The daily rows (key, value) of these keys that exist, in key order."""
        wanted = sorted(set(keys))
        out: list[tuple[int, bytes]] = []
        for start in range(0, len(wanted), _MANY):
            chunk = wanted[start : start + _MANY]
            out += self.db.execute(
                f"SELECT k, v FROM daily WHERE k IN ({','.join('?' * len(chunk))}) ORDER BY k", chunk
            ).fetchall()
        return out

    def _write_observations(
        self, found: list[Observation], top: int, cover: _Coverage | None, facts: _SeriesFacts
    ) -> int:
        """_write_rows of observations (the careful path's, a run's, a Delta table's). Returns the new top slot."""
        import numpy as np  # start-up time: only writing to the index needs numpy

        ids = self._series_ids({(o.coin_id, o.vs_currency) for o in found})
        n = len(found)
        sid = np.fromiter((ids[(o.coin_id, o.vs_currency)] for o in found), np.int64, n)
        ts = np.fromiter((o.ts_ms for o in found), np.int64, n)
        nan = float("nan")
        price = np.fromiter((nan if o.price is None else o.price for o in found), np.float64, n)
        cap = np.fromiter((nan if o.market_cap is None else o.market_cap for o in found), np.float64, n)
        rank = np.fromiter((-1 if o.rank is None else o.rank for o in found), np.int64, n)
        top = self._write_rows(sid, ts, price, cap, rank, top, cover)
        facts.add(sid, ts, [o.name for o in found], [o.symbol for o in found])
        return top

    def _write_rows(self, sid: Any, ts: Any, price: Any, cap: Any, rank: Any, top: int, cover: _Coverage | None) -> int:
        """Write observations given as arrays in file order (inside a transaction): each (series, day)'s last one
        as the day's point (a later row wins a tie in time), the key of every other one into extra. `top` is the
        largest slot the daily table may hold: a slot above it is new, and its row is appended without a lookup.
        The days go to `cover`, or into the series' covered ranges here. Returns the new top."""
        import numpy as np  # start-up time: only writing to the index needs numpy

        if len(sid) and int(sid.max()) >= SERIES_LIMIT:
            raise sqlite3.OperationalError(f"the index holds at most {SERIES_LIMIT:,} (coin, currency) pairs")
        day = ts // DAY_MS
        key = day * SERIES_LIMIT + sid
        order = np.lexsort((np.arange(len(ts)), ts, key))  # by slot, then time, then place in the file
        k, t = key[order], ts[order]
        end = np.append(k[1:] != k[:-1], True)
        last = order[end]
        # Every other key of a slot goes to extra, unless it is the last one's (the same row stored twice).
        beaten = ~end & (t != ts[last][np.cumsum(end) - end])
        extra = [(t[beaten], sid[order][beaten])]
        k, d, s = key[last], day[last], sid[last]
        entries = _points(ts[last] - d * DAY_MS, price[last], cap[last], rank[last])
        held = k <= top
        if held.any():
            # Rows that may be held already: read them, and keep the later of each slot's two points (the new one on
            # a tie); the earlier one's key goes to extra. The row is written again whole, in its place.
            old_slots, old = _decode(self._rows((k[held] >> GROUP_BITS).tolist()))
            slots = np.concatenate([old_slots, k[held]])
            both = np.concatenate([old, entries[held]])
            is_new = np.concatenate([np.zeros(len(old), bool), np.ones(int(held.sum()), bool)])
            pick = np.lexsort((is_new, both["at"], slots))
            slots, both = slots[pick], both[pick]
            won = np.append(slots[1:] != slots[:-1], True)
            lost = ~won & (both["at"] != both["at"][won][np.cumsum(won) - won])
            extra.append(((slots[lost] >> SERIES_BITS) * DAY_MS + both["at"][lost], slots[lost] & MASK))
            rows = _encode(slots[won], both[won])
            self.db.executemany("INSERT OR REPLACE INTO daily (k, v) VALUES (?, ?)", rows)
            self._rows_written += len(rows)
            self._rows_inside += len(rows)
        for times, series in extra:
            if len(times):
                self.db.executemany(
                    "INSERT OR IGNORE INTO extra (ts, series) VALUES (?, ?)", zip(times.tolist(), series.tolist())
                )
        rows = _encode(k[~held], entries[~held])
        self.db.executemany("INSERT INTO daily (k, v) VALUES (?, ?)", rows)
        self._rows_written += len(rows)
        if cover is not None:
            cover.add(s, d)
        else:
            days_by_series: dict[int, list[int]] = defaultdict(list)
            for sid_, day_ in zip(s.tolist(), d.tolist()):
                days_by_series[sid_].append(day_)
            self._cover_many({sid_: to_ranges(days) for sid_, days in days_by_series.items()})
        return max(top, int(k[-1]) | (GROUP - 1)) if len(k) else top

    def _cover_many(self, new: dict[int, list[Range]], *, replace: bool = False) -> None:
        """Fold days (as ranges, per series) into the series' covered ranges, and take them out of their unavailable
        ranges: a few statements for any number of series (a run of 17,000 coins adds a day to each).
        replace: the covered table holds nothing of these series yet (a build into an emptied index)."""
        if not new:
            return
        held: dict[int, list[Range]] = defaultdict(list)
        if not replace:
            wanted = list(new)
            chunks = [wanted[i : i + 500] for i in range(0, len(wanted), 500)] if len(wanted) <= 2000 else [None]
            for chunk in chunks:  # a few series: their ranges; many: the whole table, one pass
                query = "SELECT series, first_day, last_day FROM covered"
                if chunk is not None:
                    query += f" WHERE series IN ({','.join('?' * len(chunk))})"
                for sid, first, last in self.db.execute(query + " ORDER BY series, first_day", chunk or ()):
                    if sid in new:
                        held[sid].append((first, last))
        changed: dict[int, list[Range]] = {}
        extended: list[tuple[int, int, int]] = []  # (new last day, series, first day) of a last range that grows
        for sid, ranges in new.items():
            had = held.get(sid, [])
            if had and all(any(a <= first and last <= b for a, b in had) for first, last in ranges):
                continue
            if len(ranges) == 1 and had and had[-1][0] <= ranges[0][0] <= had[-1][1] + 1 < ranges[0][1] + 1:
                extended.append((ranges[0][1], sid, had[-1][0]))  # a run's new day after the last: one UPDATE
                continue
            changed[sid] = _union(had, ranges)
        if not replace:
            # only series that had ranges have rows to delete (a run of the whole market adds 17,000 new ones at first)
            self.db.executemany("DELETE FROM covered WHERE series = ?", [(sid,) for sid in changed if sid in held])
        self.db.executemany(
            "INSERT INTO covered (series, first_day, last_day) VALUES (?, ?, ?)",
            [(sid, a, b) for sid, merged in changed.items() for a, b in merged],
        )
        self.db.executemany("UPDATE covered SET last_day = ? WHERE series = ? AND first_day = ?", extended)
        asked = {sid for (sid,) in self.db.execute("SELECT DISTINCT series FROM unavailable")}
        for sid in sorted(asked & (changed.keys() | {sid for _, sid, _ in extended})):
            self._set_unavailable(sid, remove=[d for a, b in new[sid] for d in range(a, b + 1)])

    def _set_unavailable(
        self, sid: int, add: Iterable[int] = (), remove: Iterable[int] = (), checked_ms: int = 0
    ) -> None:
        rows = self.db.execute(
            "SELECT first_day, last_day, checked_ms FROM unavailable WHERE series = ?", (sid,)
        ).fetchall()
        by_day = {d: c for a, b, c in rows for d in range(a, b + 1)}
        for d in add:
            by_day[d] = checked_ms
        for d in remove:
            by_day.pop(d, None)
        out: list[tuple[int, int, int]] = []
        for d in sorted(by_day):
            if out and d == out[-1][1] + 1 and by_day[d] == out[-1][2]:
                out[-1] = (out[-1][0], d, out[-1][2])
            else:
                out.append((d, d, by_day[d]))
        self.db.execute("DELETE FROM unavailable WHERE series = ?", (sid,))
        self.db.executemany(
            "INSERT INTO unavailable (series, first_day, last_day, checked_ms) VALUES (?, ?, ?, ?)",
            [(sid, a, b, c) for a, b, c in out],
        )

    def mark_unavailable(self, days: dict[tuple[str, str], set[date]], checked_ms: int) -> None:
        """Remember days a well-formed answer had no data for, so healing asks again only after a while."""
        if not days:
            return
        ids = self._series_ids(days)
        with self._transaction():
            for key, wanted in days.items():
                covered = self.db.execute(
                    "SELECT first_day, last_day FROM covered WHERE series = ?", (ids[key],)
                ).fetchall()
                numbers = [n for n in map(day_number, wanted) if not any(a <= n <= b for a, b in covered)]
                if numbers:
                    self._set_unavailable(ids[key], add=numbers, checked_ms=checked_ms)

    # -- reading ----------------------------------------------------------------------------------

    def has(self, coin_id: str, vs_currency: str, ts_ms: int) -> bool:
        sid = self._series_id(coin_id, vs_currency)
        return sid is not None and self._holds(sid, ts_ms)

    def held(self, keys: Iterable[tuple[str, str, int]]) -> set[tuple[str, str, int]]:
        """The keys (coin, currency, ts_ms) among these that are stored: has() for a batch, with one lookup per
        few hundred daily rows and per few hundred times instead of one or two per key (a snapshot of the day
        held already: 250 keys in 2 queries, not 500)."""
        if self._top is None:
            self._top = self._top_slot()
        candidates: dict[tuple[str, str, int], tuple[int, int]] = {}  # key -> (series, slot)
        for key in keys:
            sid = self._series_id(key[0], key[1])
            if sid is not None and (sl := slot(key[2] // DAY_MS, sid)) <= self._top:
                candidates[key] = (sid, sl)
        if not candidates:
            return set()
        rows = dict(self._rows(sl >> GROUP_BITS for _, sl in candidates.values()))
        out: set[tuple[str, str, int]] = set()
        others: dict[tuple[int, int], tuple[str, str, int]] = {}  # (ts, series) -> key, for the extra table
        for key, (sid, sl) in candidates.items():
            value = rows.get(sl >> GROUP_BITS)
            point = _entry(value, sl & (GROUP - 1)) if value is not None else None
            if point is not None and point[0] == key[2] - (sl >> SERIES_BITS) * DAY_MS:
                out.add(key)
            else:
                others[(key[2], sid)] = key
        times = sorted({ts for ts, _ in others})
        for start in range(0, len(times), _MANY):
            chunk = times[start : start + _MANY]
            for pair in self.db.execute(
                f"SELECT ts, series FROM extra WHERE ts IN ({','.join('?' * len(chunk))})", chunk
            ):
                if pair in others:
                    out.add(others[pair])
        return out

    def _holds(self, sid: int, ts_ms: int) -> bool:
        """Whether the key (series, time) is stored: its day's point, or one of the day's other observations.
        A key of a day after the newest point held is not stored (a run's new rows): no lookup."""
        day = ts_ms // DAY_MS
        if self._top is None:
            self._top = self._top_slot()
        if slot(day, sid) > self._top:
            return False
        row = self.db.execute("SELECT v FROM daily WHERE k = ?", (slot(day, sid) >> GROUP_BITS,)).fetchone()
        point = _entry(row[0], sid & (GROUP - 1)) if row else None
        if point is not None and point[0] == ts_ms - day * DAY_MS:
            return True
        return self.db.execute("SELECT 1 FROM extra WHERE ts = ? AND series = ?", (ts_ms, sid)).fetchone() is not None

    def series(
        self, vs_currency: str | None = None, coin_id: str | None = None, coins: Collection[str] | None = None
    ) -> list[SeriesInfo]:
        """Every (coin, currency) with its rows, first and last observation and covered day ranges; only
        coin_id's, or only those of `coins` (the report's hundred of a 17,000-coin history), when given."""
        if coin_id is not None:
            coins = (coin_id,)
        wanted: tuple = () if coins is None else tuple(sorted(set(coins)))
        if coins is not None and len(wanted) > _MANY:  # past SQLite's parameter limit: filtered here instead
            chosen = set(wanted)
            return [s for s in self.series(vs_currency) if s.coin_id in chosen]
        among = f"coin_id IN ({','.join('?' * len(wanted))})"
        ranges: dict[int, list[Range]] = defaultdict(list)
        covered = "SELECT series, first_day, last_day FROM covered"
        if coins is not None:  # a few coins: read their ranges alone, so a loop over 1,000 coins stays linear
            covered += f" WHERE series IN (SELECT id FROM series WHERE {among})"
        for sid, a, b in self.db.execute(covered + " ORDER BY series, first_day", wanted):
            ranges[sid].append((a, b))
        query = "SELECT id, coin_id, vs_currency, name, symbol, rows, first_ms, last_ms FROM series WHERE rows > 0"
        args: tuple = ()
        if vs_currency is not None:
            query += " AND vs_currency = ?"
            args = (vs_currency,)
        if coins is not None:
            query += f" AND {among}"
            args += wanted
        return [
            SeriesInfo(c, v, n, s, r, f, la, tuple(ranges[sid]))
            for sid, c, v, n, s, r, f, la in self.db.execute(query + " ORDER BY vs_currency, coin_id", args)
        ]

    def unnamed_coins(self) -> set[str]:
        """The coins with rows stored without a name or a symbol (backfilled daily points, before a snapshot)."""
        return {c for (c,) in self.db.execute("SELECT DISTINCT coin_id FROM series WHERE unnamed > 0")}

    def currencies(self) -> list[str]:
        return [v for (v,) in self.db.execute("SELECT DISTINCT vs_currency FROM series WHERE rows > 0 ORDER BY 1")]

    def unavailable(self, coin_id: str, vs_currency: str, now_ms: int) -> list[Range]:
        """Days CoinGecko had no data for when asked within the last RETRY_UNAVAILABLE_DAYS days."""
        since = now_ms - RETRY_UNAVAILABLE_DAYS * DAY_MS
        return [
            (a, b)
            for a, b in self.db.execute(
                "SELECT u.first_day, u.last_day FROM unavailable u JOIN series s ON s.id = u.series "
                "WHERE s.coin_id = ? AND s.vs_currency = ? AND u.checked_ms >= ? ORDER BY u.first_day",
                (coin_id, vs_currency, since),
            )
        ]

    def unavailable_by_coin(self, vs_currency: str, now_ms: int) -> dict[str, list[Range]]:
        """unavailable() of every coin of a currency in one query (status over 17,000 coins)."""
        since = now_ms - RETRY_UNAVAILABLE_DAYS * DAY_MS
        out: dict[str, list[Range]] = {}
        for coin_id, a, b in self.db.execute(
            "SELECT s.coin_id, u.first_day, u.last_day FROM unavailable u JOIN series s ON s.id = u.series "
            "WHERE s.vs_currency = ? AND u.checked_ms >= ? ORDER BY s.coin_id, u.first_day",
            (vs_currency, since),
        ):
            out.setdefault(coin_id, []).append((a, b))
        return out

    def gaps(
        self, coin_id: str, vs_currency: str, today: date, now_ms: int, since_day: int | None = None
    ) -> list[Range]:
        """Days to heal: missing since the first observation (or since_day), less those recently found unavailable."""
        info = next(iter(self.series(vs_currency, coin_id)), None)
        if info is None:
            return []
        holes = sorted(self.unavailable(coin_id, vs_currency, now_ms))
        spans = (
            info.missing(today)
            if since_day is None or since_day >= info.first_day
            else subtract((since_day, day_number(today) - 1), info.covered)
        )
        out: list[Range] = []
        for span in spans:
            out.extend(subtract(span, holes))
        return out

    def first_day(self, vs_currency: str) -> int | None:
        """The first UTC day any coin was observed in this currency."""
        row = self.db.execute(
            "SELECT min(first_ms) FROM series WHERE vs_currency = ? AND rows > 0", (vs_currency,)
        ).fetchone()
        return row[0] // DAY_MS if row and row[0] is not None else None

    def top_of_day(self, vs_currency: str, day: int, limit: int) -> list[tuple[int | None, str, str, float | None]]:
        """(rank, coin id, symbol, market cap) of each coin's last observation on one UTC day, best rank first.

        A coin whose day holds only backfilled points (no rank) follows the ranked ones, by market cap.
        Ties in rank (a coin that left the top N later that day kept its earlier rank) go to the newer one.
        Reads that day's rows alone (a range of the (day, series) key): no scan of the daily points.
        """
        ids = {sid for (sid,) in self.db.execute("SELECT id FROM series WHERE vs_currency = ?", (vs_currency,))}
        # Sorted by a key of numbers first (tuples compare in C); the coin id breaks what ties remain at the cut.
        found = sorted(
            (rank is None, rank or 0, -at, cap is None, -(cap or 0.0), sl & MASK, rank, cap)
            for sl, (at, _, cap, rank) in self._points_between(day, day)
            if sl & MASK in ids
        )
        cut = min(limit, len(found))
        while 0 < cut < len(found) and found[cut][:5] == found[cut - 1][:5]:
            cut += 1
        chosen = found[:cut]
        names: dict[int, tuple[str, str]] = {}
        for start in range(0, len(chosen), _MANY):
            part = [row[5] for row in chosen[start : start + _MANY]]
            names.update(
                (sid, (coin_id, symbol))
                for sid, coin_id, symbol in self.db.execute(
                    f"SELECT id, coin_id, symbol FROM series WHERE id IN ({','.join('?' * len(part))})", part
                )
            )
        chosen.sort(key=lambda row: (row[:5], names[row[5]][0]))
        return [(row[6], *names[row[5]], row[7]) for row in chosen[:limit]]

    def _points_between(
        self, first_day: int, last_day: int
    ) -> Iterator[tuple[int, tuple[int, float | None, float | None, int | None]]]:
        """(slot, point) of every daily point from first_day to last_day, in day then series order, read a few
        thousand rows at a time (memory stays bounded on a long range)."""
        cursor = self._day_rows(first_day, last_day)
        while rows := cursor.fetchmany(4096):
            for k, v in rows:  # plain Python: a day of 17,000 coins decodes in milliseconds, without numpy's import
                places = _places(v[0] | v[1] << 8 if len(v) >= 2 else 0)
                if len(v) != 2 + _ENTRY.size * len(places):
                    raise DamagedIndex("a daily row of the index does not match its mask")
                base = k << GROUP_BITS
                for place, entry in zip(places, _ENTRY.iter_unpack(v[2:])):
                    yield base | place, _point(*entry)

    def _day_rows(self, first_day: int, last_day: int) -> sqlite3.Cursor:
        """The daily rows (key, value) from first_day to last_day, in key order."""
        return self.db.execute(
            "SELECT k, v FROM daily WHERE k BETWEEN ? AND ? ORDER BY k",
            (slot(first_day, 0) >> GROUP_BITS, slot(last_day, MASK) >> GROUP_BITS),
        )

    def _rows_between(self, first_day: int, last_day: int) -> list[tuple[int, int, float | None, float | None]]:
        """(series, ts, price, cap) of every daily point from first_day to last_day, in day then series order:
        decoded with numpy, for passes over many coins (a run's quality checks read 17,000 coins' days)."""
        import numpy as np  # start-up time: numpy only where many points are read at once

        cursor = self._day_rows(first_day, last_day)
        out: list[tuple[int, int, float | None, float | None]] = []
        while rows := cursor.fetchmany(8192):
            slots, points = _decode(rows)
            values = []
            for column in (points["price"], points["cap"]):
                missing = np.isnan(column)
                values.append(column.tolist() if not missing.any() else np.where(missing, None, column).tolist())
            out += zip((slots & MASK).tolist(), ((slots >> SERIES_BITS) * DAY_MS + points["at"]).tolist(), *values)
        return out

    def _points_at(self, slots: Iterable[int]) -> dict[int, tuple[int, float | None, float | None, int | None]]:
        """The points of these slots that are held."""
        wanted = set(slots)
        out = {}
        for k, v in self._rows(sl >> GROUP_BITS for sl in wanted):
            base = k << GROUP_BITS
            for place in range(GROUP):
                if base | place in wanted and (point := _entry(v, place)) is not None:
                    out[base | place] = point
        return out

    def points(
        self, coin_id: str, vs_currency: str, first_day: int, last_day: int
    ) -> list[tuple[int, float | None, float | None]]:
        """(ts_ms, price, market cap) of one coin's daily points from first_day to last_day."""
        return self.points_of([(coin_id, vs_currency)], first_day, last_day).get((coin_id, vs_currency), [])

    def points_of(
        self, keys: Iterable[tuple[str, str]], first_day: int, last_day: int
    ) -> dict[tuple[str, str], list[tuple[int, float | None, float | None]]]:
        """The daily points of many coins from first_day to last_day (the quality checks, the report's changes):
        one row lookup per coin and day, or for many coins one pass over those days' rows."""
        by_id = {sid: key for key in keys if (sid := self._series_id(*key)) is not None}
        out: dict[tuple[str, str], list[tuple[int, float | None, float | None]]] = defaultdict(list)
        if not by_id or last_day < first_day:
            return out
        if 3 * len(by_id) < self._series_count():  # a few of the coins: a row lookup each costs less than a pass
            rows = self._lookup(list(by_id), first_day, last_day)
        else:  # most of the coins: read those days whole
            rows = self._rows_between(first_day, last_day)
        rows.sort(key=itemgetter(0))  # stable: each series' days stay in order
        for sid, ts, price, cap in rows:
            key = by_id.get(sid)
            if key is not None:
                out[key].append((ts, price, cap))
        return out

    def _series_count(self) -> int:
        return self.db.execute("SELECT count(*) FROM series").fetchone()[0]

    def _lookup(
        self, sids: list[int], first_day: int, last_day: int
    ) -> list[tuple[int, int, float | None, float | None]]:
        """(series, ts, price, cap) of these series' daily points from first_day to last_day, in day order: the
        rows of those days and of these series' groups, read a few hundred a query."""
        points = self._points_at(slot(day, sid) for day in range(first_day, last_day + 1) for sid in sids)
        return [(sl & MASK, (sl >> SERIES_BITS) * DAY_MS + p[0], p[1], p[2]) for sl, p in sorted(points.items())]

    def last_cap_before(self, coin_id: str, vs_currency: str, ts_ms: int) -> tuple[int, float] | None:
        """(ts_ms, market cap) of the latest daily point before ts_ms that has a market cap."""
        sid = self._series_id(coin_id, vs_currency)
        if sid is None:
            return None
        info = self.db.execute("SELECT first_ms FROM series WHERE id = ?", (sid,)).fetchone()
        if info is None or info[0] is None:
            return None
        day, first = ts_ms // DAY_MS, info[0] // DAY_MS
        while day >= first:  # a month of days per query, newest first, back to the series' first day
            for _, ts, _, cap in reversed(self._lookup([sid], max(first, day - 31), day)):
                if cap is not None and ts < ts_ms:
                    return ts, cap
            day -= 32
        return None

    def latest(
        self, vs_currency: str, coins: Sequence[str] | None = None
    ) -> list[tuple[str, int, float | None, float | None, int | None]]:
        """(coin_id, ts_ms, price, market cap, rank) of each coin's newest daily point (the report).

        A backfilled point has no rank: the newest rank of the 30 days before stands in (30 slots of the
        (day, series) key, so a coin that never had a rank costs 30 lookups, not a scan of the history)."""
        query = "SELECT id, coin_id, last_ms FROM series WHERE vs_currency = ? AND rows > 0"
        if coins is not None:
            query += f" AND coin_id IN ({','.join('?' * len(coins))})"
        newest = {
            slot(last_ms // DAY_MS, sid): coin_id
            for sid, coin_id, last_ms in self.db.execute(query, (vs_currency, *(coins or ())))
        }
        held = self._points_at(newest)
        unranked = [sl for sl, point in held.items() if point[3] is None]
        before = self._points_at(sl - n * SERIES_LIMIT for sl in unranked for n in range(1, 31))
        out = []
        for sl, (at, price, cap, rank) in held.items():
            if rank is None:
                rank = next(
                    (p[3] for n in range(1, 31) if (p := before.get(sl - n * SERIES_LIMIT)) and p[3] is not None),
                    None,
                )
            out.append((newest[sl], (sl >> SERIES_BITS) * DAY_MS + at, price, cap, rank))
        return sorted(out)

    def _series_id(self, coin_id: str, vs_currency: str) -> int | None:
        if not self._ids_read:
            # One query for every series instead of one per coin of the snapshot; until the next write
            # transaction, a pair it lacks is not stored (a run of 17,000 new coins asks no more).
            self._ids.update(((c, v), i) for i, c, v in self.db.execute("SELECT id, coin_id, vs_currency FROM series"))
            self._ids_read = True
        return self._ids.get((coin_id, vs_currency))

    def coin_count(self, vs_currency: str) -> int:
        """How many coins the history holds in one currency."""
        return self.db.execute(
            "SELECT count(*) FROM series WHERE vs_currency = ? AND rows > 0", (vs_currency,)
        ).fetchone()[0]

    def leaders(self, vs_currency: str, top: int, movers: int = 0) -> tuple[list[str], list[str]]:
        """The `top` coins by market cap on the currency's newest day, and the `movers` coins outside them whose
        price moved most (either way) from the day before: what a chart or table of a large history shows.

        Reads the newest day's rows and the day before's (two ranges of the (day, series) key), not the history."""
        newest = self.db.execute("SELECT max(last_ms) FROM series WHERE vs_currency = ?", (vs_currency,)).fetchone()[0]
        if newest is None:
            return [], []
        day = newest // DAY_MS
        coins = dict(self.db.execute("SELECT id, coin_id FROM series WHERE vs_currency = ?", (vs_currency,)))
        before = {sl & MASK: point[1] for sl, point in self._points_between(day - 1, day - 1)}
        rows = [
            (coins[sl & MASK], cap, price, before.get(sl & MASK))
            for sl, (_, price, cap, _) in self._points_between(day, day)
            if sl & MASK in coins
        ]
        by_cap = sorted(rows, key=lambda r: (r[1] is None, -(r[1] or 0.0), r[0]))
        chosen = [r[0] for r in by_cap[:top]]
        taken = set(chosen)
        moves = sorted(
            (
                (abs(price / before - 1), coin_id)
                for coin_id, _, price, before in rows
                if coin_id not in taken and price is not None and before
            ),
            reverse=True,
        )
        return chosen, [coin_id for _, coin_id in moves[:movers]]

    def daily_points(
        self,
        vs_currency: str,
        first_day: int | None = None,
        last_day: int | None = None,
        coins: Sequence[str] | None = None,
    ) -> DailyPoints:
        """The last observation of each UTC day of every coin in one currency (or of `coins`), within the days given.

        For a few coins of a large history, one row lookup per group of coins and day instead of a pass over
        every day."""
        labels = self.db.execute(
            "SELECT id, coin_id, name, symbol FROM series WHERE vs_currency = ? AND rows > 0 ORDER BY coin_id",
            (vs_currency,),
        ).fetchall()
        if coins is not None:
            wanted = set(coins)
            labels = [label for label in labels if label[1] in wanted]
        position = {sid: i for i, (sid, _, _, _) in enumerate(labels)}
        lo = first_day if first_day is not None else -(10**9)
        hi = last_day if last_day is not None else 10**9
        # The table is keyed (day, series) so that appends stay at its end; a stable sort by series keeps each
        # series' days in order.
        if coins is not None:
            span = (
                self.db.execute(
                    f"SELECT min(first_ms), max(last_ms) FROM series WHERE id IN ({','.join('?' * len(position))})",
                    list(position),
                ).fetchone()
                if position
                else (None, None)
            )
            if span[0] is None:
                rows = []
            else:
                lo, hi = max(lo, span[0] // DAY_MS), min(hi, span[1] // DAY_MS)
                rows = self._lookup(list(position), lo, hi)
        else:
            span = self.db.execute(
                "SELECT min(first_ms), max(last_ms) FROM series WHERE vs_currency = ? AND rows > 0", (vs_currency,)
            ).fetchone()
            rows = []
            if span[0] is not None:
                lo, hi = max(lo, span[0] // DAY_MS), min(hi, span[1] // DAY_MS)
                rows = [row for row in self._rows_between(lo, hi) if row[0] in position]
        rows.sort(key=itemgetter(0))
        sids, ts, price, cap = (list(column) for column in zip(*rows)) if rows else ([], [], [], [])
        series = [position[sid] for sid in sids]
        return DailyPoints(
            [c for _, c, _, _ in labels],
            [n for _, _, n, _ in labels],
            [s for _, _, _, s in labels],
            series,
            ts,
            price,
            cap,
        )

    # -- what the index holds, for tests and benchmarks ----------------------------------------------

    def stored_keys(self) -> list[tuple[int, int]]:
        """(series, ts_ms) of every key held: each day's point and every other observation, sorted."""
        keys = [(sl & MASK, (sl >> SERIES_BITS) * DAY_MS + p[0]) for sl, p in self._points_between(-(1 << 40), 1 << 40)]
        keys += [(sid, ts) for ts, sid in self.db.execute("SELECT ts, series FROM extra")]
        return sorted(keys)

    def stored_points(self) -> list[tuple[int, int, int, float | None, float | None, int | None]]:
        """(series, day, ts_ms, price, cap, rank) of every daily point, sorted."""
        return sorted(
            (sl & MASK, sl >> SERIES_BITS, (sl >> SERIES_BITS) * DAY_MS + at, price, cap, rank)
            for sl, (at, price, cap, rank) in self._points_between(-(1 << 40), 1 << 40)
        )


def _union(a: list[Range], b: list[Range]) -> list[Range]:
    """Two sorted range lists merged, adjacent ranges joined."""
    out: list[Range] = []
    for first, last in sorted(a + b):
        if out and first <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], last))
        else:
            out.append((first, last))
    return out
