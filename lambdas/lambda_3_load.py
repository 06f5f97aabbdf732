"""Load: append new Records to the CSV history under a lock, crash-safe, never twice."""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from utils import history
from utils.errors import LoadError
from utils.file_storage import atomic_write_bytes, describe_os_error, history_lock
from utils.schema import COLUMNS, HEADER_LINE, LEGACY_COLUMNS, Record, rows_to_csv

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadReport:
    """What one load did to the history."""

    csv_path: Path | str  # a str for an s3:// history
    appended: int
    skipped_duplicates: int
    skipped_stale: int = 0
    quarantined_bytes: int = 0
    migration: history.MigrationReport | None = None


def prepare_history(csv_path: Path) -> tuple[history.HistoryState, int, history.MigrationReport | None]:
    """Make the CSV ready to append to: migrate, check the header, repair a torn tail, catch up the state."""
    migration = None
    header = history.read_header(csv_path)
    if header is None:
        atomic_write_bytes(csv_path, HEADER_LINE.encode())
        header = history.read_header(csv_path)
    quarantined = 0
    if header == LEGACY_COLUMNS:
        # Never appended to by this pipeline, so a missing final newline is not a torn write: migrate it whole.
        migration = history.migrate_legacy(csv_path)
    else:
        history.check_header(csv_path, header or ())  # before any repair: a foreign file stays byte-identical
        history.remove_stale_temp_files(csv_path)
        quarantined = history.repair_torn_tail(csv_path)
    return history.current_state(csv_path), quarantined, migration


def select_new(records: list[Record], state: history.HistoryState) -> tuple[list[Record], int, int]:
    """Records newer than the history's bookmark for their (coin, currency): (new, duplicates, stale)."""
    new: list[Record] = []
    duplicates = stale = 0
    for record in records:
        newest = state.bookmarks.get((record.coin_id, record.vs_currency), "")
        if record.last_updated == newest:
            duplicates += 1
        elif record.last_updated < newest:
            stale += 1
        else:
            new.append(record)
            state.note(record.coin_id, record.vs_currency, record.last_updated)
    return new, duplicates, stale


def append_bytes(csv_path: Path, data: bytes, expected_size: int) -> int:
    """Append in one write, fsync; on failure cut the file back to its old length. Returns the new size."""
    try:
        fd = os.open(csv_path, os.O_WRONLY | os.O_APPEND)
    except OSError as exc:
        raise LoadError(describe_os_error(exc, csv_path, "open for appending") + "; nothing was appended") from None
    try:
        written = 0
        view = memoryview(data)
        while written < len(data):
            written += os.write(fd, view[written:])
        os.fsync(fd)
        return expected_size + len(data)
    except OSError as exc:
        try:
            os.ftruncate(fd, expected_size)
            os.fsync(fd)
        except OSError:
            pass  # the torn tail is quarantined on the next run
        raise LoadError(describe_os_error(exc, csv_path, "append to") + "; nothing was appended") from None
    finally:
        os.close(fd)


def load(records: list[Record], csv_path: Path, *, lock_timeout: float = 300.0) -> LoadReport:
    """Append the records that the history does not hold yet. Raises LoadError (and SchemaMismatch)."""
    if not csv_path.parent.is_dir():
        try:
            csv_path.parent.mkdir(exist_ok=True)  # another process may create it at the same moment
        except OSError as exc:
            raise LoadError(describe_os_error(exc, csv_path.parent, "create the data folder")) from None
    with history_lock(csv_path, lock_timeout):
        try:
            state, quarantined, migration = prepare_history(csv_path)
        except OSError as exc:
            raise LoadError(describe_os_error(exc, csv_path, "prepare") + "; nothing was appended") from None
        new, duplicates, stale = select_new(records, state)
        if stale:
            log.warning("%d observations are older than the newest already stored for their coin; skipped", stale)
        if new:
            data = rows_to_csv(new).encode("utf-8")
            state.csv_size = append_bytes(csv_path, data, state.csv_size)
            state.rows += len(new)
            with open(csv_path, "rb") as fh:
                state.tail_hash = history.tail_hash(fh, state.csv_size)
        history.save_state(csv_path, state)
    return LoadReport(csv_path=csv_path, appended=len(new), skipped_duplicates=duplicates, skipped_stale=stale,
                      quarantined_bytes=quarantined, migration=migration)


@dataclass(frozen=True)
class MergeReport:
    """What merging older observations into the history did."""

    csv_path: Path | str  # a str for an s3:// history
    added: int
    skipped_duplicates: int
    rows: int


def merge(records: list[Record], csv_path: Path, *, lock_timeout: float = 300.0,
          unavailable: dict[tuple[str, str], set[str]] | None = None) -> MergeReport:
    """Merge observations of any age into the history: sorted by time, no duplicate, written atomically.

    Existing rows are kept byte for byte (each is one physical line); the bookmarks are rebuilt.
    `unavailable` marks days a backfill asked for and CoinGecko had no data for, so healing skips them.
    """
    if not csv_path.parent.is_dir():
        raise LoadError(f"cannot merge into {csv_path}: the folder does not exist")
    with history_lock(csv_path, lock_timeout):
        try:
            prepare_history(csv_path)
            with open(csv_path, "rb") as fh:
                header = fh.readline()
                body = fh.read()
        except OSError as exc:
            raise LoadError(describe_os_error(exc, csv_path, "read") + "; nothing was merged") from None
        data, added, duplicates, rows = merge_rows(body, records)
        if data is not None:
            try:
                atomic_write_bytes(csv_path, header + data)
            except OSError as exc:
                raise LoadError(describe_os_error(exc, csv_path, "rewrite") + "; the history is unchanged") from None
        state = history.rebuild_state(csv_path) if added else history.current_state(csv_path)
        previous = history.HistoryState.from_json(history.read_json(history.state_path(csv_path)))
        for key, covered in state.coverage.items():
            old = previous.coverage.get(key) if previous else None
            if old:
                covered.unavailable |= old.unavailable
            covered.unavailable |= (unavailable or {}).get(key, set())
        history.save_state(csv_path, state)
    return MergeReport(csv_path=csv_path, added=added, skipped_duplicates=duplicates, rows=rows)


def merge_rows(body: bytes, records: list[Record]) -> tuple[bytes | None, int, int, int]:
    """Merge records into CSV data lines (no header), sorted by time, no duplicate observation.

    Returns (the new lines, or None when nothing was added; added; duplicates; rows). Pure: no I/O.
    """
    lines = body.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    i_ts, i_id, i_vs = (COLUMNS.index(c) for c in ("last_updated", "coin_id", "vs_currency"))
    keyed: list[tuple[str, bytes]] = []
    existing: set[tuple[str, str, str]] = set()
    wanted = {(r.coin_id, r.vs_currency) for r in records}
    for line in lines:
        # Each physical line on its own: a line that is not a whole row can never shift the others.
        row = next(csv.reader([line.decode("utf-8", errors="replace")]), [])
        ts = row[i_ts] if len(row) == len(COLUMNS) else ""
        keyed.append((ts, line))
        if ts and (row[i_id], row[i_vs]) in wanted:
            existing.add((row[i_id], row[i_vs], ts))
    added = duplicates = 0
    for record in records:
        if record.key in existing:
            duplicates += 1
            continue
        existing.add(record.key)
        keyed.append((record.last_updated, rows_to_csv([record]).encode("utf-8").rstrip(b"\n")))
        added += 1
    if not added:
        return None, 0, duplicates, len(keyed)
    keyed.sort(key=lambda pair: pair[0])  # stable: equal times keep their order
    return b"".join(line + b"\n" for _, line in keyed), added, duplicates, len(keyed)


def handler(event: dict, context: object) -> dict:
    """AWS Lambda: append the records the transform stored to the history in the bucket (conditional write)."""
    from utils.aws import gunzip_json, lambda_settings, setup_lambda_logging
    from utils.errors import ExtractError
    from utils.storage import storage_for

    setup_lambda_logging()
    storage = storage_for(lambda_settings(event))
    records_key = str(event["records_key"])
    if not records_key.startswith("records/") or ".." in records_key:
        raise ValueError(f"records_key {records_key!r} is not under records/")
    records = [Record(**row) for row in gunzip_json(storage.read(records_key))]
    if not records:
        raise ExtractError("no usable rows in this snapshot; nothing was appended")
    report = storage.append(records)
    partial = bool(event.get("missing") or event.get("rejected"))
    log.info("load: %d rows appended, %d duplicates skipped -> %s", report.appended, report.skipped_duplicates,
             report.csv_path)
    return {"appended": report.appended, "skipped_duplicates": report.skipped_duplicates + report.skipped_stale,
            "missing": event.get("missing", []), "rejected": event.get("rejected", []),
            "result": "partial" if partial else "ok"}
