"""The CSV history on disk: header checks, torn-tail repair, bookmarks state and legacy migration.

Every function here expects the caller to hold `file_storage.history_lock`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from utils.errors import LoadError, SchemaMismatch
from utils.file_storage import atomic_write_bytes, describe_os_error, read_json, write_json_atomic
from utils.schema import (COLUMNS, HEADER_LINE, LEGACY_COLUMNS, SOURCE_LEGACY, format_cell, normalize_timestamp,
                          safe_text)

log = logging.getLogger(__name__)

STATE_VERSION = 2
TAIL_PROBE = 256  # bytes before the recorded offset whose hash proves the file is still the one we knew
BOM = b"\xef\xbb\xbf"
LEGACY_CURRENCY = "eur"
# The original script's nine coins, by the names and symbols CoinGecko gave them.
LEGACY_IDS = {
    "bitcoin": "bitcoin", "btc": "bitcoin",
    "ethereum": "ethereum", "eth": "ethereum",
    "bnb": "binancecoin", "binance coin": "binancecoin",
    "cardano": "cardano", "ada": "cardano",
    "solana": "solana", "sol": "solana",
    "dogecoin": "dogecoin", "doge": "dogecoin",
    "polkadot": "polkadot", "dot": "polkadot",
    "litecoin": "litecoin", "ltc": "litecoin",
    "avalanche": "avalanche-2", "avax": "avalanche-2",
}

Key = tuple[str, str]  # (coin_id, vs_currency)


def _day_range(first: str, last: str) -> list[str]:
    """ISO days strictly between first and last."""
    a, b = date.fromisoformat(first), date.fromisoformat(last)
    return [(a + timedelta(days=i)).isoformat() for i in range(1, (b - a).days)]


@dataclass
class DayCoverage:
    """Which UTC days one (coin, currency) has observations on: first, last, and the days missing between."""

    first: str
    last: str
    missing: set[str] = field(default_factory=set)
    unavailable: set[str] = field(default_factory=set)  # days a backfill found no data for: not retried

    def add(self, day: str) -> None:
        if day > self.last:
            self.missing.update(_day_range(self.last, day))
            self.last = day
        elif day < self.first:
            self.missing.update(_day_range(day, self.first))
            self.first = day
        else:
            self.missing.discard(day)

    def gaps(self, today: date) -> list[str]:
        """Complete days (before today) since the first observation without any observation, minus unavailable."""
        trailing = _day_range(self.last, today.isoformat()) if self.last < today.isoformat() else []
        return sorted((self.missing | set(trailing)) - self.unavailable)


@dataclass
class HistoryState:
    """Per-(coin, currency) newest last_updated and day coverage, and how far into the CSV that knowledge reaches."""

    csv_size: int = 0
    tail_hash: str = ""
    bookmarks: dict[Key, str] = field(default_factory=dict)
    coverage: dict[Key, DayCoverage] = field(default_factory=dict)
    rows: int = 0

    def note(self, coin_id: str, vs_currency: str, last_updated: str) -> None:
        """Advance a bookmark if this observation is newer, and mark its day as covered."""
        key = (coin_id, vs_currency)
        if last_updated > self.bookmarks.get(key, ""):
            self.bookmarks[key] = last_updated
        day = last_updated[:10]
        if len(day) != 10:
            return
        covered = self.coverage.get(key)
        if covered is None:
            self.coverage[key] = DayCoverage(day, day)
        else:
            covered.add(day)

    def to_json(self) -> dict:
        return {
            "version": STATE_VERSION, "columns": list(COLUMNS), "csv_size": self.csv_size,
            "tail_hash": self.tail_hash, "rows": self.rows,
            "bookmarks": {f"{c}|{v}": ts for (c, v), ts in sorted(self.bookmarks.items())},
            "coverage": {f"{c}|{v}": [d.first, d.last, sorted(d.missing), sorted(d.unavailable)]
                         for (c, v), d in sorted(self.coverage.items())},
        }

    @classmethod
    def from_json(cls, data: object) -> HistoryState | None:
        """The state, or None when it is missing, corrupt, or written by another version."""
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION or data.get("columns") != list(COLUMNS):
            return None
        try:
            bookmarks: dict[Key, str] = {}
            for key, ts in data["bookmarks"].items():
                coin_id, vs = key.split("|")
                if not isinstance(ts, str):
                    return None
                bookmarks[(coin_id, vs)] = ts
            coverage: dict[Key, DayCoverage] = {}
            for key, (first, last, missing, unavailable) in data["coverage"].items():
                coin_id, vs = key.split("|")
                date.fromisoformat(first), date.fromisoformat(last)
                coverage[(coin_id, vs)] = DayCoverage(str(first), str(last), set(map(str, missing)),
                                                      set(map(str, unavailable)))
            size, rows, tail = int(data["csv_size"]), int(data["rows"]), str(data["tail_hash"])
        except (KeyError, ValueError, AttributeError, TypeError):
            return None
        if size < 0 or rows < 0:
            return None
        return cls(csv_size=size, tail_hash=tail, bookmarks=bookmarks, coverage=coverage, rows=rows)


def _is_day(text: str) -> bool:
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


def state_path(csv_path: Path) -> Path:
    return csv_path.parent / ".state" / f"{csv_path.name}.state.json"


def quarantine_path(csv_path: Path) -> Path:
    return csv_path.with_name(csv_path.name + ".quarantine")


def tail_hash(fh: io.BufferedReader, size: int) -> str:
    """Hash of the TAIL_PROBE bytes that end at offset size."""
    start = max(0, size - TAIL_PROBE)
    fh.seek(start)
    return hashlib.sha256(fh.read(size - start)).hexdigest()


def read_header(csv_path: Path) -> tuple[str, ...] | None:
    """The CSV's column names, or None if the file is missing or empty."""
    try:
        with open(csv_path, "rb") as fh:
            first = fh.readline(1 << 16)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LoadError(describe_os_error(exc, csv_path, "read")) from None
    if first.startswith(BOM):
        first = first[len(BOM):]
    if not first.strip():
        return None
    try:
        return tuple(next(csv.reader([first.decode("utf-8").rstrip("\r\n")])))
    except (UnicodeDecodeError, StopIteration, csv.Error):
        raise SchemaMismatch(f"{csv_path} does not start with a CSV header: move it away or point "
                             "--data-dir elsewhere") from None


def check_header(csv_path: Path, header: tuple[str, ...]) -> None:
    """Refuse a CSV whose columns are not ours, naming what is missing and extra."""
    if header == COLUMNS:
        return
    missing = [c for c in COLUMNS if c not in header]
    extra = [c for c in header if c not in COLUMNS]
    detail = []
    if missing:
        detail.append("missing " + ", ".join(missing))
    if extra:
        detail.append("extra " + ", ".join(extra))
    if not detail:
        detail.append("the columns are in another order")
    raise SchemaMismatch(f"{csv_path} has columns this version does not write ({'; '.join(detail)}); "
                         "nothing was appended: move the file away or use another --data-dir")


def remove_stale_temp_files(csv_path: Path) -> None:
    """Delete temporary copies of the CSV left by a writer that was killed (only lock holders create them)."""
    for stale in csv_path.parent.glob(f".{csv_path.name}.*.tmp"):
        try:
            stale.unlink()
            log.info("removed %s, left by an interrupted write", stale.name)
        except OSError:
            pass


def repair_torn_tail(csv_path: Path) -> int:
    """Move a last line without its newline (a write cut short) to the quarantine file. Returns bytes moved."""
    with open(csv_path, "rb") as probe:  # read-only first: a sound file is never opened for writing here
        size = probe.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        probe.seek(size - 1)
        if probe.read(1) == b"\n":
            return 0
    with open(csv_path, "rb+") as fh:
        size = fh.seek(0, os.SEEK_END)
        # Find the last newline, reading backwards in blocks.
        pos, cut = size, 0
        while pos > 0:
            step = min(65536, pos)
            pos -= step
            fh.seek(pos)
            block = fh.read(step)
            idx = block.rfind(b"\n")
            if idx >= 0:
                cut = pos + idx + 1
                break
        if cut == 0:
            raise SchemaMismatch(f"{csv_path} holds no complete line, not even a header: move it away")
        fh.seek(cut)
        torn = fh.read()
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        with open(quarantine_path(csv_path), "ab") as q:
            q.write(f"# {stamp} torn last line of {csv_path.name} at byte {cut}:\n".encode() + torn + b"\n")
            q.flush()
            os.fsync(q.fileno())
        fh.truncate(cut)
        fh.flush()
        os.fsync(fh.fileno())
    log.warning("the last line of %s was cut short by an interrupted write; moved its %d bytes to %s",
                csv_path, len(torn), quarantine_path(csv_path))
    return len(torn)


def _scan_rows(lines: Iterable[str], state: HistoryState) -> None:
    """Advance bookmarks from CSV data lines in our column order."""
    i_id, i_vs, i_ts = COLUMNS.index("coin_id"), COLUMNS.index("vs_currency"), COLUMNS.index("last_updated")
    width = len(COLUMNS)
    for row in csv.reader(lines):
        if len(row) != width:
            continue
        state.rows += 1
        state.note(row[i_id], row[i_vs], row[i_ts])


def rebuild_state(csv_path: Path) -> HistoryState:
    """One pass over the whole CSV, reading only the three identity columns, to rebuild the bookmarks."""
    import pandas as pd  # only here: a rebuild is rare and pandas' C parser is ten times faster than csv

    state = HistoryState()
    with open(csv_path, "rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        fh.seek(0)
        frame = pd.read_csv(fh, usecols=["coin_id", "vs_currency", "last_updated", "source"], dtype=str,
                            keep_default_na=False, on_bad_lines="skip", engine="c", encoding_errors="replace")
        # A line with too few fields has no source: skip it, as the tail scan does.
        frame = frame[frame["source"].fillna("").str.len().gt(0) & frame["last_updated"].fillna("").str.len().eq(24)]
        state.rows = len(frame)
        if state.rows:
            groups = frame.groupby(["coin_id", "vs_currency"], sort=False)["last_updated"]
            state.bookmarks = {(str(c), str(v)): str(ts) for (c, v), ts in groups.max().items()}
            frame["day"] = frame["last_updated"].str[:10]
            for (coin_id, vs), days in frame.groupby(["coin_id", "vs_currency"], sort=False)["day"]:
                seen = sorted(d for d in set(days) if len(d) == 10 and _is_day(d))
                if seen:
                    all_days = set(_day_range(seen[0], seen[-1]))
                    state.coverage[(str(coin_id), str(vs))] = DayCoverage(seen[0], seen[-1], all_days - set(seen))
        state.csv_size = size
        state.tail_hash = tail_hash(fh, size)
    log.log(logging.INFO if state.rows else logging.DEBUG, "rebuilt the load state of %s from %d rows",
            csv_path, state.rows)
    return state


def current_state(csv_path: Path) -> HistoryState:
    """The saved state, caught up with rows appended after it was saved; rebuilt when it cannot be trusted."""
    state = HistoryState.from_json(read_json(state_path(csv_path)))
    with open(csv_path, "rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        if state is None or state.csv_size > size or state.csv_size == 0 or \
                tail_hash(fh, state.csv_size) != state.tail_hash:
            return rebuild_state(csv_path)
        if state.csv_size < size:
            fh.seek(state.csv_size)
            tail = fh.read(size - state.csv_size).decode("utf-8", errors="replace")
            _scan_rows(io.StringIO(tail, newline=""), state)
            state.csv_size = size
            state.tail_hash = tail_hash(fh, size)
    return state


def save_state(csv_path: Path, state: HistoryState) -> None:
    """Persist the state; a failure only costs a catch-up scan next time, so it is a warning."""
    try:
        write_json_atomic(state_path(csv_path), state.to_json())
    except OSError as exc:
        log.warning("%s (the next run rebuilds it)", describe_os_error(exc, state_path(csv_path), "save the load state"))


# -- legacy migration ---------------------------------------------------------------------------

@dataclass(frozen=True)
class MigrationReport:
    """What migrating a seven-column CSV did."""

    rows_read: int
    rows_written: int
    exact_duplicates: int
    conflicting_duplicates: int
    unmapped: int
    backup: Path


def _legacy_number(text: str) -> str:
    """A legacy numeric cell in our canonical form; raises ValueError."""
    text = text.strip()
    if not text:
        return ""
    try:
        return str(int(text))
    except ValueError:
        return format_cell(float(text))


def migrate_legacy(csv_path: Path) -> MigrationReport:
    """Rewrite the original script's seven-column CSV in today's layout, keeping the original as a backup."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    backup = csv_path.with_name(f"{csv_path.name}.legacy-{stamp}.bak")
    try:
        shutil.copy2(csv_path, backup)
        with open(backup, "rb") as fh:
            os.fsync(fh.fileno())
        with open(csv_path, encoding="utf-8-sig", newline="", errors="replace") as fh:
            rows = list(csv.reader(fh))[1:]
    except OSError as exc:
        raise LoadError(describe_os_error(exc, csv_path, "migrate")) from None

    seen_rows: set[tuple[str, ...]] = set()
    seen_keys: set[tuple[str, str]] = set()
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    exact = conflicting = unmapped = written = 0
    unmapped_lines = io.StringIO()
    unmapped_writer = csv.writer(unmapped_lines, lineterminator="\n")
    out.write(HEADER_LINE)
    for row in rows:
        if not any(cell.strip() for cell in row):
            continue
        as_tuple = tuple(row)
        if as_tuple in seen_rows:
            exact += 1
            continue
        seen_rows.add(as_tuple)
        try:
            if len(row) != len(LEGACY_COLUMNS):
                raise ValueError("wrong number of fields")
            name, symbol, price, cap, change, supply, updated = row
            coin_id = LEGACY_IDS.get(name.strip().lower()) or LEGACY_IDS.get(symbol.strip().lower())
            if coin_id is None:
                raise ValueError("not one of the nine original coins")
            updated = normalize_timestamp(updated)
            cells = {"name": safe_text(name), "symbol": safe_text(symbol), "current_price": _legacy_number(price),
                     "market_cap": _legacy_number(cap), "price_change_percentage_24h": _legacy_number(change),
                     "circulating_supply": _legacy_number(supply), "last_updated": updated,
                     "coin_id": coin_id, "vs_currency": LEGACY_CURRENCY, "source": SOURCE_LEGACY}
        except ValueError:
            unmapped += 1
            unmapped_writer.writerow(row)
            continue
        if (coin_id, updated) in seen_keys:
            conflicting += 1
            continue
        seen_keys.add((coin_id, updated))
        writer.writerow([cells.get(c, "") for c in COLUMNS])
        written += 1
    try:
        if unmapped:
            with open(quarantine_path(csv_path), "a", encoding="utf-8", newline="") as q:
                q.write(f"# {stamp} legacy rows of {csv_path.name} that could not be mapped "
                        f"(also kept in {backup.name}):\n")
                q.write(unmapped_lines.getvalue())
        atomic_write_bytes(csv_path, out.getvalue().encode("utf-8"))
    except OSError as exc:
        raise LoadError(describe_os_error(exc, csv_path, "migrate") + "; the original is unchanged") from None
    report = MigrationReport(len(rows), written, exact, conflicting, unmapped, backup)
    log.warning("migrated %s from the original seven-column layout: %d rows read, %d written, %d exact "
                "duplicates dropped, %d conflicting duplicates dropped, %d unmapped rows kept in %s; "
                "the original is kept as %s", csv_path, report.rows_read, written, exact, conflicting,
                unmapped, quarantine_path(csv_path).name, backup)
    return report
