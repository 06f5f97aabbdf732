"""Where the history lives: a local folder (append + file lock) or S3 (conditional writes), behind one interface.

S3 has no append and no lock. An S3 history is updated by read, modify, and a conditional PUT
(If-Match the ETag read, or If-None-Match * for a new object); a conflict means another writer got
there first, so the whole step is redone on the new object. Two overlapping writers never lose a row.
boto3 is imported only when an s3:// location is used: the local run needs no AWS package.
"""

from __future__ import annotations

import contextlib
import io
import logging
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

from utils.errors import ConfigError, LoadError, PipelineError, SchemaMismatch
from utils.history import csvio
from utils.history.csv_store import HistoryStore, LoadReport, MergeReport, new_records
from utils.history.datapackage import package_bytes
from utils.history.delta_table import (
    CONVERSION_APP,
    CONVERSION_DONE,
    DeltaHistory,
    app_done,
    convert_csv,
    month_of,
    records_to_table,
)
from utils.history.files import (
    archive_raw,
    atomic_write_bytes,
    check_layout,
    describe_os_error,
    ensure_dir,
    raw_bytes,
    raw_name,
)
from utils.history.index import HistoryIndex, removed_as_damaged
from utils.history.labels import fill_once
from utils.history.layout import (
    CSV_NAME,
    DATAPACKAGE_NAME,
    QUALITY_NAME,
    RAW,
    TABLE_NAME,
    DataLayout,
    data_dir_option,
)
from utils.history.quality import QUALITY_HEADER, Finding, QualityRules, inspect, missing_day_findings, record_findings
from utils.history.schema import HEADER_LINE, LEGACY_COLUMNS, Record, rows_to_csv
from utils.s3 import Conflict, S3Objects
from utils.words import count

log = logging.getLogger(__name__)


class Storage:
    """The history and its companions (raw answers, charts) at one location."""

    location: str

    def archive(self, fetched_at: datetime, name: str, payload: Any) -> str:
        """Store a raw answer as gzip JSON under raw/YYYY/MM/DD/ (payload: the JSON value, or its text as bytes);
        returns its path relative to the location."""
        raise NotImplementedError

    def read(self, rel: str) -> bytes | None:
        raise NotImplementedError

    def write(self, rel: str, data: bytes) -> None:
        raise NotImplementedError

    def append(self, records: list[Record]) -> LoadReport:
        """Store the records whose key the history does not hold yet."""
        raise NotImplementedError

    def merge(
        self,
        records: list[Record],
        *,
        unavailable: dict[tuple[str, str], set[date]] | None = None,
        checked: datetime | None = None,
    ) -> MergeReport:
        """Weave observations of any age into the history; remember days CoinGecko had no data for."""
        raise NotImplementedError

    def index(self) -> contextlib.AbstractContextManager[HistoryIndex]:
        """The history's index, up to date: what status, healing and the charts read."""
        raise NotImplementedError

    @property
    def csv_display(self) -> str:
        """The history's location, for messages."""
        raise NotImplementedError

    def check(self) -> None:
        """Refuse a history this version cannot write (foreign columns), with the same words as a load."""

    def preflight(self, currencies: tuple[str, ...] = ()) -> None:
        """Before a command writes anything: every managed file and folder passes the one file policy (no link,
        no folder where a file belongs, no hard link onto another managed file). Raises UnsafeTarget (exit 2)."""

    def local_csv(self) -> tuple[Path, Path]:
        """A local copy of the CSV to draw from, and the folder to draw into (then `publish_charts`)."""
        raise NotImplementedError

    def publish_charts(self, paths: tuple[Path, ...]) -> tuple[str, ...]:
        raise NotImplementedError

    def has_history(self) -> bool:
        """Whether a history exists here (a CSV, or a Delta table)."""
        raise NotImplementedError

    def publish_findings(self, findings: list[Finding]) -> list[Finding]:
        """Append new quality findings to quality.csv beside the history; returns those that were new."""
        raise NotImplementedError

    def publish_file(self, path: Path) -> str:
        """Store a file written in the local folder (report.html, datapackage.json) beside the history."""
        raise NotImplementedError

    def pull(self, name: str) -> None:
        """Bring a file kept beside the history (quality.csv) into the local folder, for reading."""

    def remove_charts(self, names: tuple[str, ...]) -> None:
        """Delete stale chart files beside the history (a local folder's are deleted where they are drawn)."""


class LocalStorage(Storage):
    """A folder on this machine: append under a file lock, fsync, bookmarks state."""

    def __init__(
        self,
        data_dir: Path,
        lock_timeout: float = 300.0,
        rules: QualityRules = QualityRules(),
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.layout = DataLayout(data_dir)
        self.location = str(data_dir)
        self.store = HistoryStore(self.layout, lock_timeout, rules, should_stop)

    @property
    def csv_display(self) -> str:
        return str(self.layout.csv)

    def check(self) -> None:
        csvio.header_kind(self.layout.csv)

    def preflight(self, currencies: tuple[str, ...] = ()) -> None:
        check_layout(self.layout, currencies)

    def archive(self, fetched_at: datetime, name: str, payload: Any) -> str:
        path = archive_raw(self.layout.raw_dir, fetched_at, name, payload)
        return str(path.relative_to(self.data_dir))

    def read(self, rel: str) -> bytes | None:
        try:
            return (self.data_dir / rel).read_bytes()
        except FileNotFoundError:
            return None

    def write(self, rel: str, data: bytes) -> None:
        path = self.data_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)

    def append(self, records: list[Record]) -> LoadReport:
        return self.store.append(records)

    def merge(
        self,
        records: list[Record],
        *,
        unavailable: dict[tuple[str, str], set[date]] | None = None,
        checked: datetime | None = None,
    ) -> MergeReport:
        return self.store.merge(records, unavailable=unavailable, checked=checked)

    def index(self) -> contextlib.AbstractContextManager[HistoryIndex]:
        return self.store.index()

    def local_csv(self) -> tuple[Path, Path]:
        return self.layout.csv, self.data_dir

    def publish_charts(self, paths: tuple[Path, ...]) -> tuple[str, ...]:
        return tuple(map(str, paths))

    def has_history(self) -> bool:
        return self.layout.csv.exists()

    def publish_findings(self, findings: list[Finding]) -> list[Finding]:
        return record_findings(self.layout, findings)[0]

    def publish_file(self, path: Path) -> str:
        return str(path)


class S3Storage(Storage):
    """s3://bucket/prefix: whole-object reads and conditional writes (utils/s3.py), retried on conflict.

    `scratch` is the local folder for the copies the index and the charts read (the caller's private one)."""

    def __init__(
        self,
        url: str,
        *,
        scratch: Path,
        client: Any = None,
        max_attempts: int = 8,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.objects = S3Objects(url, client)
        self.bucket, self.prefix, self.location = self.objects.bucket, self.objects.prefix, self.objects.location
        self.max_attempts = max_attempts
        self.sleep = sleep
        self.scratch = scratch
        self.conflicts = 0

    @property
    def client(self) -> Any:
        return self.objects.client

    def key(self, rel: str) -> str:
        return self.objects.key(rel)

    # -- objects -----------------------------------------------------------------------------

    def get(self, rel: str) -> tuple[bytes | None, str | None]:
        """The object's bytes and ETag, or (None, None) when it does not exist."""
        return self.objects.get(rel)

    def put(
        self,
        rel: str,
        data: bytes,
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
        content_type: str = "application/octet-stream",
    ) -> str:
        """Write an object, optionally only if it is unchanged (If-Match) or absent (If-None-Match)."""
        return self.objects.put(
            rel,
            data,
            if_match=if_match,
            if_none_match=if_none_match,
            content_type=content_type,
            consequence="; nothing was appended",
        )

    def read(self, rel: str) -> bytes | None:
        return self.objects.read(rel)

    def get_head(self, rel: str, size: int = 65536) -> bytes:
        """The first bytes of an object (its header line), or b"" when it does not exist."""
        return self.objects.head(rel, size)

    def write(self, rel: str, data: bytes) -> None:
        self.put(rel, data)

    def archive(self, fetched_at: datetime, name: str, payload: Any) -> str:
        rel = f"{RAW}/" + raw_name(fetched_at, name)
        self.put(rel, raw_bytes(payload), content_type="application/gzip")
        return rel

    # -- the history -------------------------------------------------------------------------

    @property
    def csv_display(self) -> str:
        return f"{self.location}/{CSV_NAME}"

    def _read_history(self) -> tuple[bytes, bytes, str | None]:
        """(header line, data lines, ETag or None when there is no history yet)."""
        body, etag = self.get(CSV_NAME)
        if body is None or not body.strip():
            return HEADER_LINE.encode(), b"", etag
        start = csvio.header_length(body)
        header, data = body[:start], body[start:]
        columns = tuple(c.strip() for c in header.decode("utf-8-sig", errors="replace").strip().split(","))
        if columns == LEGACY_COLUMNS:
            raise SchemaMismatch(
                f"{self.csv_display} is in the original seven-column layout: migrate it "
                "once with a local run (download, `python main.py`, upload)"
            )
        csvio.check_header(self.csv_display, columns)
        if not header.endswith(b"\n"):
            header += b"\n"
        if data and not data.endswith(b"\n"):
            data += b"\n"
        return header, data, etag

    @staticmethod
    def _keys(data: bytes) -> set[tuple[str, str, int]]:
        found, _ = csvio.observations(data)
        return {(o.coin_id, o.vs_currency, o.ts_ms) for o in found}

    def _commit(self, header: bytes, data: bytes, etag: str | None) -> None:
        self.put(CSV_NAME, header + data, if_match=etag, if_none_match=etag is None, content_type="text/csv")

    def _retry(self, attempt: int) -> None:
        self.conflicts += 1
        pause = random.uniform(0, min(2.0, 0.05 * 2**attempt))
        log.info("another writer changed %s; retrying in %.2f s", self.csv_display, pause)
        self.sleep(pause)

    def _write(self, records: list[Record], weave: bool) -> tuple[int, int, int]:
        """Read, add the new records (appended, or woven in by time), write conditionally; redo on conflict."""
        for attempt in range(self.max_attempts):
            header, data, etag = self._read_history()
            data, moved, notes = self._readable(data)
            keys = self._keys(data)
            fresh, duplicates = new_records(records, lambda batch: keys.intersection(batch))
            if not fresh:
                return 0, duplicates, len(keys)
            body = csvio.merged_body(data, fresh) if weave else data + rows_to_csv(fresh).encode("utf-8")
            try:
                if moved:
                    self._quarantine(moved, notes)  # first: a commit that then fails leaves them in both, never in none
                self._commit(header, body, etag)
                return len(fresh), duplicates, len(keys) + len(fresh)
            except Conflict:
                self._retry(attempt)
        raise LoadError(
            f"{self.csv_display} kept changing under {self.max_attempts} attempts; nothing was written: run again"
        )

    @staticmethod
    def _readable(data: bytes) -> tuple[bytes, bytes, list[str]]:
        """(the data lines a standard reader (csv module, pandas) reads as rows of the header, the other lines
        each after a note of its line number and why, the notes): the same check as the local CSV store's."""
        problems = csvio.reader_problems_in(io.BytesIO(data), 0, len(data))
        if not problems:
            return data, b"", []
        kept, moved, notes = bytearray(), bytearray(), []
        pos, line, counted = 0, 2, 0  # the data start on line 2, after the header
        for begin, end, reason in problems:
            line += data.count(b"\n", counted, begin)
            counted = begin
            kept += data[pos:begin]
            notes.append(f"line {line}: {reason}")
            moved += f"# line {line} of {CSV_NAME}: {reason}\n".encode() + data[begin:end]
            pos = end
        kept += data[pos:]
        return bytes(kept), bytes(moved), notes

    def _quarantine(self, moved: bytes, notes: list[str]) -> None:
        """Add lines to crypto_data.csv.quarantine beside the object (read, append, conditional write; retried)."""
        name = DataLayout(self.scratch).quarantine.name
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        what = f"# {stamp} {count(len(notes), 'line')} of {CSV_NAME} that standard CSV readers cannot read as rows of its header:\n"
        for attempt in range(self.max_attempts):
            body, etag = self.get(name)
            try:
                self.put(name, (body or b"") + what.encode() + moved, if_match=etag, if_none_match=etag is None)
                break
            except Conflict:
                self._retry(attempt)
        else:
            raise LoadError(
                f"{self.location}/{name} kept changing under {self.max_attempts} attempts; nothing was written: run again"
            )
        log.warning(
            "moved %s of %s that break standard CSV readers to %s/%s (%s)",
            count(len(notes), "line"),
            self.csv_display,
            self.location,
            name,
            "; ".join(notes[:5]) + (", ..." if len(notes) > 5 else ""),
        )

    def append(self, records: list[Record]) -> LoadReport:
        appended, duplicates, _ = self._write(records, weave=False)
        return LoadReport(csv_path=self.csv_display, appended=appended, skipped_duplicates=duplicates)

    def merge(
        self,
        records: list[Record],
        *,
        unavailable: dict[tuple[str, str], set[date]] | None = None,
        checked: datetime | None = None,
    ) -> MergeReport:
        added, duplicates, rows = self._write(records, weave=True)
        if unavailable:
            with self.index() as index:
                index.mark_unavailable(unavailable, int((checked or datetime.now(timezone.utc)).timestamp() * 1000))
        return MergeReport(csv_path=self.csv_display, added=added, skipped_duplicates=duplicates, rows=rows)

    def index(self) -> contextlib.AbstractContextManager[HistoryIndex]:
        """An index of a scratch copy of the object (kept between runs, so it is only caught up)."""
        self.local_csv()
        return HistoryStore(DataLayout(self.scratch)).index()

    # -- charts ------------------------------------------------------------------------------

    def local_csv(self) -> tuple[Path, Path]:
        self.scratch.mkdir(parents=True, exist_ok=True)
        body = self.read(CSV_NAME)
        path = self.scratch / CSV_NAME
        if body is None:
            path.unlink(missing_ok=True)
            return path, self.scratch
        try:
            held = path.read_bytes()
        except OSError:
            held = None
        if held is not None and body.startswith(held) and held.endswith(b"\n"):
            # The object only grew: extend the copy, so its index catches up instead of rebuilding.
            if len(body) > len(held):
                with open(path, "ab") as fh:
                    fh.write(body[len(held) :])
        else:
            atomic_write_bytes(path, body)
        return path, self.scratch

    def publish_charts(self, paths: tuple[Path, ...]) -> tuple[str, ...]:
        out = []
        for path in paths:
            self.put(path.name, path.read_bytes(), content_type="image/png")
            out.append(f"{self.location}/{path.name}")
        return tuple(out)

    def has_history(self) -> bool:
        return self.read(CSV_NAME) is not None

    def publish_findings(self, findings: list[Finding]) -> list[Finding]:
        """quality.csv on S3: read, append the new findings in a scratch copy, write back if unchanged (retried)."""
        if not findings:
            return []
        copy = self.scratch / QUALITY_NAME
        self.scratch.mkdir(parents=True, exist_ok=True)
        for attempt in range(self.max_attempts):
            body, etag = self.get(QUALITY_NAME)
            atomic_write_bytes(copy, body or b"")
            new, _ = record_findings(DataLayout(self.scratch), findings)
            if not new:
                return []
            try:
                self.put(
                    QUALITY_NAME, copy.read_bytes(), if_match=etag, if_none_match=etag is None, content_type="text/csv"
                )
                return new
            except Conflict:
                self._retry(attempt)
        log.warning(
            "could not store the quality findings in %s/%s: it kept changing; they are found again "
            "by `python main.py quality`",
            self.location,
            QUALITY_NAME,
        )
        return []

    def publish_file(self, path: Path) -> str:
        content_type = {".html": "text/html; charset=utf-8", ".json": "application/json", ".csv": "text/csv"}.get(
            path.suffix, "application/octet-stream"
        )
        self.put(path.name, path.read_bytes(), content_type=content_type)
        return f"{self.location}/{path.name}"

    def pull(self, name: str) -> None:
        body = self.read(name)
        if body is not None:
            self.scratch.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.scratch / name, body)

    def remove_charts(self, names: tuple[str, ...]) -> None:
        """Delete stale chart objects beside the history; a failure is a warning (the new charts are stored)."""
        for name in names:
            try:
                self.objects.delete(name)
            except PipelineError as exc:
                log.warning("could not delete the stale chart %s/%s (%s)", self.location, name, exc)


class DeltaStorage(Storage):
    """The history as a Delta table, in a local folder or on S3; raw answers, charts and findings beside it.

    `files` is the location's plain storage (LocalStorage or S3Storage): raw answers, charts, quality.csv and
    the other files go through it. The index and the lock live in `scratch` (the data folder itself when local).
    """

    def __init__(
        self,
        files: LocalStorage | S3Storage,
        history: DeltaHistory,
        scratch: Path,
        *,
        lock_timeout: float = 300.0,
        rules: QualityRules = QualityRules(),
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self.files = files
        self.history = history
        self.location = files.location
        self.layout = DataLayout(scratch)
        self.rules = rules
        # The CSV store's lock: one writer of the index (and, locally, of the table) at a time on this machine.
        self.guard = HistoryStore(self.layout, lock_timeout, rules, should_stop)
        self.converted: int | None = None  # rows converted from crypto_data.csv by this process, if any
        self.checked = False

    @property
    def csv_display(self) -> str:
        return self.history.uri

    def check(self) -> None:
        self._reachable()
        if self.history.table() is None and self.files.has_history():
            self._legacy_or_foreign()

    def _reachable(self) -> None:
        """The bucket, credentials and endpoint (S3), and the table's folder, checked once: one clear line each."""
        if self.checked:
            return
        if isinstance(self.files, S3Storage):
            if self._table_opens():
                self.checked = True  # the table opened: the bucket, the key and the endpoint are all fine
                return
            check_bucket(self.files)
        else:
            refuse_foreign_folder(self.files.layout.table)
        self.checked = True

    def _table_opens(self) -> bool:
        """Whether the S3 table opens through delta-rs with the key it was given (no boto3 needed: about 0.7 s
        of CPU saved for every reader). Without a key in its options (a profile, a role), and on any failure,
        the boto3 checks run instead: they name a missing bucket, a refused key or a wrong endpoint in one
        line, which delta-rs' errors do not."""
        if not (self.history.storage_options or {}).get("AWS_ACCESS_KEY_ID"):
            return False
        try:
            return self.history.table() is not None
        except PipelineError:
            return False

    def has_history(self) -> bool:
        self._reachable()
        return self.history.table() is not None or self.files.has_history()

    def archive(self, fetched_at: datetime, name: str, payload: Any) -> str:
        return self.files.archive(fetched_at, name, payload)

    def read(self, rel: str) -> bytes | None:
        return self.files.read(rel)

    def write(self, rel: str, data: bytes) -> None:
        self.files.write(rel, data)

    def local_csv(self) -> tuple[Path, Path]:
        self.layout.data_dir.mkdir(parents=True, exist_ok=True)
        return self.layout.csv, self.layout.data_dir

    def publish_charts(self, paths: tuple[Path, ...]) -> tuple[str, ...]:
        return self.files.publish_charts(paths)

    def publish_findings(self, findings: list[Finding]) -> list[Finding]:
        return self.files.publish_findings(findings)

    def publish_file(self, path: Path) -> str:
        return self.files.publish_file(path)

    def pull(self, name: str) -> None:
        self.files.pull(name)

    def preflight(self, currencies: tuple[str, ...] = ()) -> None:
        self.files.preflight(currencies)
        csvio.refuse_symlink(self.layout.table_index, "table index")

    def remove_charts(self, names: tuple[str, ...]) -> None:
        self.files.remove_charts(names)

    # -- the CSV a folder held before -----------------------------------------------------------

    def _legacy_or_foreign(self) -> None:
        """Refuse a CSV the conversion cannot read (the same words as the CSV store), before any request."""
        if isinstance(self.files, LocalStorage):
            kind = csvio.header_kind(self.files.layout.csv)
        else:
            body = self.files.get_head(CSV_NAME)
            columns = tuple(c.strip() for c in body.decode("utf-8-sig", errors="replace").split("\n")[0].split(","))
            kind = "legacy" if columns == LEGACY_COLUMNS else "ours"
            if kind == "ours" and body.strip():
                csvio.check_header(self.files.csv_display, columns)
        if kind == "legacy":
            raise SchemaMismatch(
                f"{self.files.csv_display} is in the original seven-column layout: migrate it once "
                f"with --table-format csv (`python main.py {data_dir_option(self.location)} --table-format csv`), "
                "then run with delta to convert it"
            )

    def _convert_if_needed(self) -> None:
        """Convert crypto_data.csv into the table once (under the lock): resumable, idempotent, the CSV kept."""
        table = self.history.table()
        if table is not None and not conversion_pending(table):
            return
        if not self.files.has_history():
            return
        self._legacy_or_foreign()
        source: Path | str
        if isinstance(self.files, LocalStorage):
            source, opener = self.files.layout.csv, None
        else:
            s3 = self.files
            source = s3.csv_display

            def opener() -> Any:
                return s3.objects.stream(CSV_NAME)

        report = convert_csv(self.history, source, opener=opener)
        self.converted = report.rows
        log.warning(
            "converted %s into the Delta table %s: %s stored%s in %.1f s; the CSV is kept unchanged as "
            "a backup (delete it once you no longer need it)",
            source,
            self.history.uri,
            count(report.rows, "row"),
            f", {count(report.damaged, 'damaged line')} skipped" if report.damaged else "",
            report.seconds,
        )

    # -- writing --------------------------------------------------------------------------------

    def _write(
        self,
        records: list[Record],
        nothing: str,
        unavailable: dict[tuple[str, str], set[date]] | None = None,
        checked: datetime | None = None,
    ) -> tuple[int, int, int, list[Finding]]:
        """(inserted, duplicates, rows, new findings): one key merge, the index caught up, findings published."""
        self._reachable()
        with self.guard.locked():
            self._convert_if_needed()
            with self._synced_index() as index:
                try:
                    fresh, _ = new_records(records, index.held)
                except sqlite3.DatabaseError as exc:
                    error = removed_as_damaged(index, exc, f"{self.history.uri}; this run's rows were not written")
                    if error is None:
                        raise
                    raise error from None
                try:
                    findings = inspect(records, fresh, index, self.rules)
                except sqlite3.Error as exc:
                    log.warning("could not check the new rows' quality (%s); they are stored all the same", exc)
                    findings = []
                outcome = self.history.merge(records_to_table(fresh)) if fresh else None
                inserted = outcome.inserted if outcome else 0
                if inserted:
                    self._sync(index)
                    months = {(r.vs_currency, month_of(csvio.timestamp_ms(r.last_updated))) for r in fresh}
                    self.history.compact(months)
                    self.history.vacuum()  # the files compactions left more than 7 days ago
                if unavailable:
                    index.mark_unavailable(unavailable, int((checked or datetime.now(timezone.utc)).timestamp() * 1000))
                    findings += missing_day_findings(unavailable, index)
                self._fill_labels(index, fresh)
                rows = index.rows
            found = self.publish_findings(findings)
            self._publish_package()
        return inserted, len(records) - inserted, rows, found

    def _fill_labels(self, index: HistoryIndex, fresh: list[Record]) -> int:
        """Rows stored without a name and symbol get their coin's (utils/history/labels.py), once per table: a MERGE
        updating only those two columns, only where they are empty, only in the partitions holding such rows."""
        marker = self.layout.table_labels_marker
        return fill_once(marker, index, fresh, self.history.fill_labels, lambda: self._sync(index))

    def _publish_package(self) -> None:
        try:
            data = package_bytes(self.layout, "delta")
            if isinstance(self.files, LocalStorage):
                layout = self.files.layout
                if not layout.quality.exists():
                    atomic_write_bytes(layout.quality, QUALITY_HEADER.encode("utf-8"))
                if not layout.datapackage.is_file() or layout.datapackage.read_bytes() != data:
                    atomic_write_bytes(layout.datapackage, data)
            elif self.files.read(DATAPACKAGE_NAME) != data:
                self.files.put(DATAPACKAGE_NAME, data, content_type="application/json")
        except (OSError, LoadError) as exc:
            log.warning("could not write %s (%s)", DATAPACKAGE_NAME, exc)

    def append(self, records: list[Record]) -> LoadReport:
        inserted, duplicates, _, found = self._write(records, "appended")
        return LoadReport(
            csv_path=self.csv_display, appended=inserted, skipped_duplicates=duplicates, findings=tuple(found)
        )

    def merge(
        self,
        records: list[Record],
        *,
        unavailable: dict[tuple[str, str], set[date]] | None = None,
        checked: datetime | None = None,
    ) -> MergeReport:
        inserted, duplicates, rows, found = self._write(records, "merged", unavailable, checked)
        return MergeReport(
            csv_path=self.csv_display, added=inserted, skipped_duplicates=duplicates, rows=rows, findings=tuple(found)
        )

    # -- reading --------------------------------------------------------------------------------

    def _sync(self, index: HistoryIndex) -> None:
        try:
            self.history.sync_index(index)
        except sqlite3.Error as exc:
            if (error := removed_as_damaged(index, exc, self.history.uri)) is not None:
                raise error from None
            raise LoadError(f"cannot update the index {self.layout.table_index}: {exc}") from None
        except PipelineError:
            raise
        except Exception as exc:  # noqa: BLE001 - pyarrow and delta-rs raise many kinds; each becomes one line
            raise self.history.describe_error(exc, "read") from None

    @contextlib.contextmanager
    def _synced_index(self) -> Iterator[HistoryIndex]:
        """The index file caught up with the table (under the lock); in memory when the file cannot be used."""
        ensure_dir(self.layout.state_dir)
        try:
            csvio.refuse_symlink(self.layout.table_index, "table index")
            index = HistoryIndex(self.layout.table_index)
        except sqlite3.DatabaseError as exc:
            log.warning("cannot use the index %s (%s); reading the table instead", self.layout.table_index, exc)
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(OSError):
                    Path(str(self.layout.table_index) + suffix).unlink()
            try:
                index = HistoryIndex(self.layout.table_index)
            except sqlite3.DatabaseError:
                index = HistoryIndex(":memory:")
        with index:
            self._sync(index)
            yield index

    @contextlib.contextmanager
    def index(self) -> Iterator[HistoryIndex]:
        self._reachable()
        if self.history.table() is None:
            if self.files.has_history():
                self._legacy_or_foreign()
                log.info(
                    "%s is not converted yet: the next run converts it into %s",
                    self.files.csv_display,
                    self.history.uri,
                )
            with HistoryIndex(":memory:") as empty:
                yield empty
            return
        index: HistoryIndex | None = None
        try:
            with self.guard.locked(), self._synced_index() as index:
                yield index
        except sqlite3.DatabaseError as exc:
            error = (
                None if index is None else removed_as_damaged(index, exc, f"{self.history.uri}, which holds every row")
            )
            if error is None:
                raise
            raise error from None


def conversion_pending(table: Any) -> bool:
    """A conversion that started and did not finish (killed halfway): the next writer resumes it."""
    return app_done(table, CONVERSION_APP) >= 0 and app_done(table, CONVERSION_DONE) < 0


def refuse_foreign_folder(path: Path) -> None:
    """A folder where the table belongs that is not a Delta table is refused, never written into."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise SchemaMismatch(f"{path} is not a folder holding a Delta table; move it away or choose another --data-dir")
    if path.is_dir() and not (path / "_delta_log").is_dir() and any(path.iterdir()):
        raise SchemaMismatch(
            f"{path} holds files but is not a Delta table (no _delta_log/); move it away or choose another --data-dir"
        )


def check_bucket(files: S3Storage) -> None:
    """The bucket, the credentials and the endpoint, tried once before any request to CoinGecko. Raises ConfigError.

    No credentials and an unreachable endpoint reach main's explain_aws_error, as on the CSV store (exit 2, exit 1)."""
    files.objects.check_bucket()
    keys = files.objects.list(TABLE_NAME + "/", limit=5)
    if keys and not any("/_delta_log/" in k for k in keys):
        if not files.objects.list(TABLE_NAME + "/_delta_log/", limit=1):
            raise SchemaMismatch(
                f"{files.location}/{TABLE_NAME}/ holds objects but is not a Delta table (no "
                "_delta_log/); move them away or choose another --data-dir"
            )


def refuse_file_as_data_dir(data_dir: Path) -> None:
    """A file where the data folder belongs is a configuration error, the same words for every command."""
    if data_dir.exists() and not data_dir.is_dir():
        raise ConfigError(f"--data-dir {data_dir} is a file, not a folder: choose another --data-dir")


def prepare_data_dir(data_dir: Path) -> None:
    """Create the data folder if its parent exists; anything else is a configuration error, found before any request."""
    if data_dir.is_dir():
        return
    refuse_file_as_data_dir(data_dir)
    if data_dir.parent.exists() and not data_dir.parent.is_dir():
        raise ConfigError(f"--data-dir {data_dir}: {data_dir.parent} is a file, not a folder")
    if not data_dir.parent.is_dir():
        raise ConfigError(
            f"--data-dir {data_dir}: its parent folder {data_dir.parent} does not exist; "
            "create it or choose another --data-dir"
        )
    try:
        data_dir.mkdir(exist_ok=True)  # another process may create it at the same moment
    except OSError as exc:
        raise ConfigError(describe_os_error(exc, data_dir, "create the data folder")) from None
