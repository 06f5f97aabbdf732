"""The local history store: the CSV (the user's file) plus its SQLite index, written only under the lock.

One load = one CSV append (one write, fsync) then one index transaction; a crash between the two
is caught up from the recorded offset next time. An observation is appended exactly when its key
(coin_id, vs_currency, last_updated) is not in the index, in whatever order observations arrive.
Merges (backfill, heal, legacy migration) weave parsed rows into the file, write a temp file, fsync,
`os.replace`, then record the new keys.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path

from utils.errors import LoadError, LockTimeout, SchemaMismatch, Stopped
from utils.history import csvio
from utils.history.datapackage import write_datapackage
from utils.history.files import (
    atomic_write_bytes,
    atomic_write_chunks,
    check_folder,
    describe_os_error,
    ensure_dir,
    refuse_unsafe,
)
from utils.history.index import HistoryIndex, is_damage, remove_index, removed_as_damaged
from utils.history.labels import fill_once
from utils.history.layout import DataLayout, data_dir_option
from utils.history.quality import Finding, QualityRules, inspect, missing_day_findings, record_findings
from utils.history.schema import (
    COLUMNS,
    HEADER_LINE,
    LEGACY_COLUMNS,
    SOURCE_LEGACY,
    Record,
    format_cell,
    normalize_timestamp,
    safe_text,
)
from utils.words import count

log = logging.getLogger(__name__)

LABEL_BLOCK = 8 << 20  # bytes of the history read at a time by the one-time name fill
LOCK_POLL = 0.2  # seconds between looks at a stop request while another process holds the lock

LEGACY_CURRENCY = "eur"
# The original script's nine coins, by the names and symbols CoinGecko gave them.
LEGACY_IDS = {
    "bitcoin": "bitcoin",
    "btc": "bitcoin",
    "ethereum": "ethereum",
    "eth": "ethereum",
    "bnb": "binancecoin",
    "binance coin": "binancecoin",
    "cardano": "cardano",
    "ada": "cardano",
    "solana": "solana",
    "sol": "solana",
    "dogecoin": "dogecoin",
    "doge": "dogecoin",
    "polkadot": "polkadot",
    "dot": "polkadot",
    "litecoin": "litecoin",
    "ltc": "litecoin",
    "avalanche": "avalanche-2",
    "avax": "avalanche-2",
}


@dataclass(frozen=True)
class MigrationReport:
    """What migrating a seven-column CSV did."""

    rows_read: int
    rows_written: int
    exact_duplicates: int
    conflicting_duplicates: int
    unmapped: int
    backup: Path


@dataclass(frozen=True)
class LoadReport:
    """What one load did to the history."""

    csv_path: Path | str  # a str for an s3:// history
    appended: int
    skipped_duplicates: int
    quarantined_bytes: int = 0
    migration: MigrationReport | None = None
    findings: tuple[Finding, ...] = ()  # new quality findings (data/quality.csv)
    unwritten: tuple[str, ...] = ()  # side outputs (quality.csv, datapackage.json) that could not be written


@dataclass(frozen=True)
class MergeReport:
    """What merging observations of any age into the history did."""

    csv_path: Path | str
    added: int
    skipped_duplicates: int
    rows: int
    findings: tuple[Finding, ...] = ()  # new quality findings (data/quality.csv)
    unwritten: tuple[str, ...] = ()  # side outputs (quality.csv, datapackage.json) that could not be written


def new_records(
    records: list[Record], held: Callable[[list[tuple[str, str, int]]], set[tuple[str, str, int]]]
) -> tuple[list[Record], int]:
    """The records whose key is not stored (`held` gives the stored ones of a batch of keys) nor earlier in the
    batch, and how many were true duplicates."""
    keys = [(r.coin_id, r.vs_currency, csvio.timestamp_ms(r.last_updated)) for r in records]
    stored = held(keys)
    fresh: list[Record] = []
    seen: set[tuple[str, str, int]] = set()
    duplicates = 0
    for record, key in zip(records, keys):
        if key in seen or key in stored:
            duplicates += 1
            continue
        seen.add(key)
        fresh.append(record)
    return fresh, duplicates


def as_observations(records: list[Record]) -> list[csvio.Observation]:
    """What the index keeps of records about to be stored (the same rule as reading them back)."""
    return csv_and_observations(records)[1]


def csv_and_observations(records: list[Record]) -> tuple[bytes, list[csvio.Observation]]:
    """The CSV lines of records (as rows_to_csv writes them) and what the index keeps of them (the rule of reading
    the lines back, csvio.record_observation)."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(r.to_row() for r in records)
    return buf.getvalue().encode("utf-8"), [o for o in map(csvio.record_observation, records) if o is not None]


class LegacyHistory(SchemaMismatch):
    """The CSV is the original script's seven-column file, not migrated yet (a reader never migrates)."""


class HistoryStore:
    """A local data folder's history: CSV, index, lock, quarantine."""

    def __init__(
        self,
        layout: DataLayout,
        lock_timeout: float = 300.0,
        rules: QualityRules = QualityRules(),
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self.layout = layout
        self.lock_timeout = lock_timeout
        self.rules = rules
        self.should_stop = should_stop  # the daemon's SIGTERM: stop waiting for another process's lock

    @property
    def csv_path(self) -> Path:
        return self.layout.csv

    # -- the lock and the file ------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the cross-process lock that every writer of the history takes."""
        check_folder(self.layout.state_dir, "state folder")
        ensure_dir(self.layout.state_dir)
        check_folder(self.layout.state_dir, "state folder")
        refuse_unsafe(self.layout.lock, "history lock", self.layout)
        from filelock import FileLock, Timeout  # start-up time: filelock brings asyncio (0.1 s); readers never lock

        lock = FileLock(str(self.layout.lock), timeout=self.lock_timeout)
        deadline = time.monotonic() + self.lock_timeout
        while True:
            left = max(0.0, deadline - time.monotonic())
            try:
                lock.acquire(timeout=min(left, LOCK_POLL) if self.should_stop else left)
                break
            except Timeout:
                if self.should_stop is not None and self.should_stop():
                    raise Stopped(
                        f"stopped while waiting for another process's lock on {self.csv_path}; nothing was appended"
                    ) from None
                if time.monotonic() >= deadline:
                    raise LockTimeout(
                        f"another process has held the lock on {self.csv_path} for "
                        f"{self.lock_timeout:g} s; wait for it to finish or raise --lock-timeout"
                    ) from None
            except OSError as exc:
                raise LoadError(describe_os_error(exc, self.layout.state_dir, "lock the history in")) from None
        try:
            yield
        finally:
            lock.release()

    def _prepare(self) -> tuple[int, MigrationReport | None]:
        """Make the CSV ready to write (under the lock): header, legacy migration, torn tail, stale temp files."""
        csv_path = self.csv_path
        refuse_unsafe(csv_path, "history CSV", self.layout)
        csvio.remove_stale_temp_files(self.layout)
        with contextlib.suppress(OSError):
            self.layout.old_state.unlink()  # the JSON state of earlier versions; the index replaces it
        kind = csvio.header_kind(csv_path)  # a foreign file is refused before anything is written
        if kind in ("missing", "empty"):
            if kind == "empty":
                csvio.refuse_read_only(csv_path)
            atomic_write_bytes(csv_path, HEADER_LINE.encode())
            return 0, None
        csvio.refuse_read_only(csv_path)
        if kind == "legacy":
            # Never appended to by this pipeline, so a missing final newline is not a torn write: migrate it whole.
            return 0, self._migrate_legacy()
        return csvio.repair_torn_tail(self.layout), None

    def _synced_index(self) -> HistoryIndex:
        """The index file brought up to the CSV (under the lock). When it cannot be used (a full disk, a
        read-only folder), an index in memory built from the CSV stands in: slower, never wrong."""
        try:
            for what, path in self.layout.managed_files()[2:5]:  # the index and its journals
                refuse_unsafe(path, what, self.layout)
            try:
                index = HistoryIndex(self.layout.index, self.lock_timeout)
            except sqlite3.DatabaseError as exc:
                if isinstance(exc, sqlite3.OperationalError):
                    raise
                # A corrupt or foreign file: it holds nothing the CSV does not, so start it again.
                log.warning("the index %s is unreadable (%s); rebuilding it from the CSV", self.layout.index, exc)
                remove_index(self.layout.index)
                index = HistoryIndex(self.layout.index, self.lock_timeout)
            return self._synced(index)
        except sqlite3.Error as exc:
            if is_damage(exc):  # found damaged while catching up: the next command builds it again
                remove_index(self.layout.index)
            log.warning("cannot use the index %s (%s); reading the CSV instead", self.layout.index, exc)
        return self._synced(HistoryIndex(":memory:"))

    def _synced(self, index: HistoryIndex) -> HistoryIndex:
        """The index brought up to the CSV, or closed when that fails."""
        try:
            self._sync(index)
        except BaseException:
            index.close()
            raise
        return index

    # -- writing --------------------------------------------------------------------------------

    def append(self, records: list[Record]) -> LoadReport:
        """Append the records whose key is not stored yet: one write + fsync, then one index transaction."""
        if not self.layout.data_dir.is_dir():
            try:
                self.layout.data_dir.mkdir(exist_ok=True)  # another process may create it at the same moment
            except OSError as exc:
                raise LoadError(describe_os_error(exc, self.layout.data_dir, "create the data folder")) from None
        with self.locked():
            quarantined, migration = self._prepare_or_fail("appended")
            with self._synced_index() as index:
                quarantined += self._readable_or_fail(index, "appended")
                fresh, duplicates = self._new_records(records, index)
                findings = self._inspect(records, fresh, index)
                if fresh:
                    body, observed = csv_and_observations(fresh)
                    self._append_bytes(body, index, observed)
                self._fill_labels(index, fresh)
            found, unwritten = self._publish(findings)
        return LoadReport(
            csv_path=self.csv_path,
            appended=len(fresh),
            skipped_duplicates=duplicates,
            quarantined_bytes=quarantined,
            migration=migration,
            findings=tuple(found),
            unwritten=unwritten,
        )

    def _prepare_or_fail(self, nothing: str) -> tuple[int, MigrationReport | None]:
        """_prepare, with a file error turned into one line that says nothing was written."""
        try:
            return self._prepare()
        except OSError as exc:
            raise LoadError(describe_os_error(exc, self.csv_path, "prepare") + f"; nothing was {nothing}") from None

    def _readable_or_fail(self, index: HistoryIndex, nothing: str) -> int:
        """_make_readable, with a file error turned into one line that says nothing was written."""
        try:
            return self._make_readable(index)
        except OSError as exc:
            raise LoadError(describe_os_error(exc, self.csv_path, "clean up") + f"; nothing was {nothing}") from None

    def _make_readable(self, index: HistoryIndex) -> int:
        """Move every line a standard reader (csv module, pandas) would choke on, or read as a row of another width,
        to the quarantine file with its line number and why; then the CSV opens anywhere. Under the lock, after
        the index is synced. Only bytes not checked before are read: a run costs O(new bytes). Returns bytes moved."""
        with open(self.csv_path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            start = max(index.readable_upto, csvio.header_length(fh.read(1 << 16)))
            if start >= size:
                if index.readable_upto != size:
                    index.set_readable(size)
                return 0
            problems = csvio.reader_problems_in(fh, start, size)
            if not problems:
                index.set_readable(size)
                return 0
        notes: list[str] = []
        moved: list[bytes] = []

        def kept() -> Iterator[bytes]:  # the file without the problem records, a block at a time: bounded memory
            line = 1  # the line number a problem record starts on
            pos = 0
            with open(self.csv_path, "rb") as fh:
                for begin, end, reason in problems:
                    for block in _ranges(fh, pos, begin):
                        line += block.count(b"\n")
                        yield block
                    span = b"".join(_ranges(fh, begin, end))  # one record or damaged line (moved to the quarantine)
                    notes.append(f"line {line}: {reason}")
                    moved.append(f"# line {line} of {self.csv_path.name}: {reason}\n".encode() + span)
                    line += span.count(b"\n")
                    pos = end
                yield from _ranges(fh, pos, size)

        def quarantine_first() -> bool:  # every kept byte is in the temp file: the moved ones to the quarantine
            csvio.quarantine(
                self.layout,
                f"{count(len(problems), 'line')} of {self.csv_path.name} that standard CSV readers "
                "cannot read as rows of its header",
                b"".join(moved),
            )
            return True

        atomic_write_chunks(self.csv_path, kept(), "history CSV", keep=quarantine_first)
        log.warning(
            "moved %s of %s that break standard CSV readers to %s (%s)",
            count(len(problems), "line"),
            self.csv_path,
            self.layout.quarantine,
            "; ".join(notes[:5]) + (", ..." if len(notes) > 5 else ""),
        )
        self._sync(index)
        index.set_readable(self.csv_path.stat().st_size)
        return sum(map(len, moved))

    def _publish(self, findings: list[Finding]) -> tuple[list[Finding], tuple[str, ...]]:
        """After a write: the new findings into quality.csv, and datapackage.json describing the folder.

        Never fatal (the rows landed): what could not be written is named, and the run is partial."""
        found, quality_note = record_findings(self.layout, findings)
        package_note = write_datapackage(self.layout)
        return found, tuple(note for note in (quality_note, package_note) if note)

    def _inspect(self, records: list[Record], fresh: list[Record], index: HistoryIndex) -> list[Finding]:
        """The quality findings of a load, against the index before it records the new rows; never fatal."""
        try:
            return inspect(records, fresh, index, self.rules)
        except sqlite3.Error as exc:
            log.warning("could not check the new rows' quality (%s); they are stored all the same", exc)
            return []

    def _sync(self, index: HistoryIndex) -> None:
        try:
            index.sync(self.csv_path)
        except OSError as exc:
            raise LoadError(describe_os_error(exc, self.csv_path, "read")) from None

    def _append_bytes(self, data: bytes, index: HistoryIndex, found: list[csvio.Observation]) -> None:
        """Append in one write, fsync, record the keys; on a failed write cut the file back to its old length."""
        refuse_unsafe(self.csv_path, "history CSV", self.layout)
        try:
            fd = os.open(self.csv_path, os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW)
        except OSError as exc:
            raise LoadError(
                describe_os_error(exc, self.csv_path, "open for appending") + "; nothing was appended"
            ) from None
        with os.fdopen(fd, "rb+", buffering=0) as fh:
            size = os.fstat(fd).st_size
            try:
                written = 0
                view = memoryview(data)
                while written < len(data):
                    written += os.write(fd, view[written:])
                os.fsync(fd)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                    os.fsync(fd)
                raise LoadError(describe_os_error(exc, self.csv_path, "append to") + "; nothing was appended") from None
            self._record_keys(index, found, fh, "catches it up")

    def merge(
        self,
        records: list[Record],
        *,
        unavailable: dict[tuple[str, str], set[date]] | None = None,
        checked: datetime | None = None,
    ) -> MergeReport:
        """Weave observations of any age into the history (temp file, fsync, rename), then index them.

        `unavailable`: days a well-formed answer had no data for; healing asks for them again only later.
        """
        if not self.layout.data_dir.is_dir():
            raise LoadError(f"cannot merge into {self.csv_path}: the folder does not exist")
        with self.locked():
            self._prepare_or_fail("merged")
            with self._synced_index() as index:
                self._readable_or_fail(index, "merged")
                fresh, duplicates = self._new_records(records, index)
                findings = self._inspect(records, fresh, index)
                if fresh:
                    try:  # bounded memory: the file a block at a time, out-of-order rows through temp runs
                        csvio.merge_file(self.csv_path, fresh)
                    except OSError as exc:
                        raise LoadError(
                            describe_os_error(exc, self.csv_path, "rewrite") + "; the history is unchanged"
                        ) from None
                    with open(self.csv_path, "rb") as fh:
                        self._record_keys(index, as_observations(fresh), fh, "rebuilds it")
                if unavailable:
                    moment = checked or datetime.now(timezone.utc)
                    index.mark_unavailable(unavailable, int(moment.timestamp() * 1000))
                    findings += missing_day_findings(unavailable, index)
                self._fill_labels(index, fresh)
                rows = index.rows
            found, unwritten = self._publish(findings)
        return MergeReport(
            csv_path=self.csv_path,
            added=len(fresh),
            skipped_duplicates=duplicates,
            rows=rows,
            findings=tuple(found),
            unwritten=unwritten,
        )

    def _fill_labels(self, index: HistoryIndex, fresh: list[Record]) -> int:
        """Rows stored without a name and symbol get their coin's (utils/history/labels.py), once: the rows
        re-serialised in place, the file written whole (temp, fsync, rename), then the index rebuilt."""

        def fill(labels: dict[str, tuple[str, str]]) -> tuple[int, set[str]]:
            filled = 0
            left: set[str] = set()

            def blocks() -> Iterator[bytes]:  # the file a block of whole lines at a time: bounded memory
                nonlocal filled
                with open(self.csv_path, "rb") as fh:
                    for block in csvio.line_blocks(fh, LABEL_BLOCK):
                        body, count_, missing = csvio.labelled_body(block, labels)
                        filled += count_
                        left.update(missing)
                        yield body

            atomic_write_chunks(self.csv_path, blocks(), "history CSV", keep=lambda: filled > 0)
            return filled, left

        return fill_once(
            self.layout.labels_marker, index, fresh, fill, lambda: self._sync(index), index_counts_unnamed=True
        )

    def _new_records(self, records: list[Record], index: HistoryIndex) -> tuple[list[Record], int]:
        """new_records against the index. An index found damaged here (nothing is written yet) is built again
        from the CSV first, so that a run goes on, and so does every later one."""
        try:
            return new_records(records, index.held)
        except sqlite3.DatabaseError as exc:
            if not is_damage(exc) or index.path == ":memory:":
                raise
            log.warning("the index %s is damaged (%s); building it again from the CSV", self.layout.index, exc)
            with open(self.csv_path, "rb") as fh:
                index.rebuild(fh, self.csv_path)
            return new_records(records, index.held)

    def _record_keys(self, index: HistoryIndex, found: list[csvio.Observation], fh, next_run: str) -> None:
        """The written rows' keys and the file's new length into the index; on failure the CSV stays right and
        the next run catches the index up (after an append) or rebuilds it (after a merge)."""
        try:
            index.record_append(found, fh)
        except sqlite3.Error as exc:
            if is_damage(exc) and index.path != ":memory:":
                remove_index(index.path)
                next_run = "builds it again from the CSV"
            log.warning("could not update the index %s (%s); the next run %s", self.layout.index, exc, next_run)

    # -- reading --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def index(self) -> Iterator[HistoryIndex]:
        """The index, brought up to the CSV; in memory when the data folder cannot hold it (read-only).

        A reader never rewrites the CSV: a legacy file is named, not migrated; a foreign one refused.
        """
        kind = csvio.header_kind(self.csv_path)  # SchemaMismatch for a foreign header, the same words as `run`
        if kind in ("missing", "empty"):
            with HistoryIndex(":memory:") as empty:
                yield empty
            return
        if kind == "legacy":
            raise LegacyHistory(
                f"{self.csv_path} is in the original script's seven-column layout: run "
                f"`python main.py {data_dir_option(self.layout.data_dir)}` once to migrate it (the original is "
                "kept as a backup)"
            )
        try:
            with self.locked():
                refuse_unsafe(self.csv_path, "history CSV", self.layout)
                index = self._synced_index()
        except (LoadError, OSError) as exc:
            if isinstance(exc, (LockTimeout, SchemaMismatch)):
                raise
            log.debug("reading %s without its index (%s)", self.csv_path, exc)
            index = self._synced(HistoryIndex(":memory:"))
        try:
            with index:
                yield index
        except sqlite3.DatabaseError as exc:
            error = removed_as_damaged(index, exc, f"{self.csv_path}, which holds every row")
            if error is None:
                raise
            raise error from None

    # -- the original script's seven-column file ------------------------------------------------

    def _migrate_legacy(self) -> MigrationReport:
        """Rewrite the original script's seven-column CSV in today's layout, keeping the original as a backup."""
        csv_path = self.csv_path
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        backup = self.layout.legacy_backup(stamp)
        try:
            shutil.copy2(csv_path, backup)
            with open(backup, "rb") as fh:
                os.fsync(fh.fileno())
            content = csv_path.read_bytes()
        except OSError as exc:
            raise LoadError(describe_os_error(exc, csv_path, "migrate")) from None
        start = csvio.header_length(content)
        units = list(csvio.scan(content[start:], start, width=len(LEGACY_COLUMNS)))

        seen_rows: set[tuple[str, ...]] = set()
        seen_keys: set[tuple[str, int]] = set()
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        exact = conflicting = unmapped = written = 0
        unmapped_lines = io.BytesIO()
        out.write(HEADER_LINE)
        rows_read = 0
        for unit in units:
            row = unit.cells
            if row is not None and not any(cell.strip() for cell in row):
                continue
            rows_read += 1
            if row is not None and tuple(row) in seen_rows:
                exact += 1
                continue
            try:
                if row is None or len(row) != len(LEGACY_COLUMNS):
                    raise ValueError("wrong number of fields")
                seen_rows.add(tuple(row))
                name, symbol, price, cap, change, supply, updated = row
                coin_id = LEGACY_IDS.get(name.strip().lower()) or LEGACY_IDS.get(symbol.strip().lower())
                if coin_id is None:
                    raise ValueError("not one of the nine original coins")
                updated = normalize_timestamp(updated)
                cells = {
                    "name": safe_text(name),
                    "symbol": safe_text(symbol),
                    "current_price": _legacy_number(price),
                    "market_cap": _legacy_number(cap),
                    "price_change_percentage_24h": _legacy_number(change),
                    "circulating_supply": _legacy_number(supply),
                    "last_updated": updated,
                    "coin_id": coin_id,
                    "vs_currency": LEGACY_CURRENCY,
                    "source": SOURCE_LEGACY,
                }
            except (ValueError, OverflowError):
                unmapped += 1
                unmapped_lines.write(content[unit.start : unit.end].rstrip(b"\n") + b"\n")
                continue
            key = (coin_id, csvio.timestamp_ms(updated))
            if key in seen_keys:
                conflicting += 1
                continue
            seen_keys.add(key)
            writer.writerow([cells.get(c, "") for c in COLUMNS])
            written += 1
        try:
            if unmapped:
                csvio.quarantine(
                    self.layout,
                    f"legacy rows of {csv_path.name} that could not be mapped (also kept in {backup.name})",
                    unmapped_lines.getvalue(),
                )
            atomic_write_bytes(csv_path, out.getvalue().encode("utf-8"))
        except OSError as exc:
            raise LoadError(describe_os_error(exc, csv_path, "migrate") + "; the original is unchanged") from None
        report = MigrationReport(rows_read, written, exact, conflicting, unmapped, backup)
        log.warning(
            "migrated %s from the original seven-column layout: %s read, %d written, %s dropped, "
            "%s dropped, %s kept in %s; the original is kept as %s",
            csv_path,
            count(report.rows_read, "row"),
            written,
            count(exact, "exact duplicate"),
            count(conflicting, "conflicting duplicate"),
            count(unmapped, "unmapped row"),
            self.layout.quarantine.name,
            backup,
        )
        return report


def _ranges(fh, start: int, end: int, block: int = LABEL_BLOCK) -> Iterator[bytes]:
    """The file's bytes [start, end), a block at a time."""
    fh.seek(start)
    while start < end:
        data = fh.read(min(block, end - start))
        if not data:
            raise OSError(errno.EIO, f"{fh.name} ended early")
        yield data
        start += len(data)


def _legacy_number(text: str) -> str:
    """A legacy numeric cell in our canonical form; raises ValueError."""
    text = text.strip()
    if not text:
        return ""
    try:
        return str(int(text))
    except ValueError:
        return format_cell(float(text))
