"""Where the history lives: a local folder (append + file lock) or S3 (conditional writes), behind one interface.

S3 has no append and no lock. An S3 history is updated by read, modify, and a conditional PUT
(If-Match the ETag read, or If-None-Match * for a new object); a conflict means another writer got
there first, so the whole step is redone on the new object. Two overlapping writers never lose a row.
boto3 is imported only when an s3:// location is used: the local run needs no AWS package.
"""

from __future__ import annotations

import contextlib
import logging
import random
import tempfile
import time
from collections.abc import Callable
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

from utils.history import csvio
from utils.errors import ConfigError, LoadError, SchemaMismatch
from utils.history.files import archive_raw, atomic_write_bytes, describe_os_error, raw_bytes, raw_name
from utils.history.index import HistoryIndex
from utils.history.layout import CSV_NAME, RAW, DataLayout, split_s3_url
from utils.history.quality import QualityRules
from utils.history.schema import HEADER_LINE, LEGACY_COLUMNS, Record, rows_to_csv
from utils.settings import Settings
from utils.history.csv_store import HistoryStore, LoadReport, MergeReport, new_records

log = logging.getLogger(__name__)


def is_s3(location: str | Path) -> bool:
    return str(location).startswith("s3://")


class Storage:
    """The history and its companions (raw answers, charts) at one location."""

    location: str

    def archive(self, fetched_at: datetime, name: str, payload: Any) -> str:
        """Store a raw answer as gzip JSON under raw/YYYY/MM/DD/; returns its path relative to the location."""
        raise NotImplementedError

    def read(self, rel: str) -> bytes | None:
        raise NotImplementedError

    def write(self, rel: str, data: bytes) -> None:
        raise NotImplementedError

    def append(self, records: list[Record]) -> LoadReport:
        """Store the records whose key the history does not hold yet."""
        raise NotImplementedError

    def merge(self, records: list[Record], *, unavailable: dict[tuple[str, str], set[date]] | None = None,
              checked: datetime | None = None) -> MergeReport:
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

    def local_csv(self) -> tuple[Path, Path]:
        """A local copy of the CSV to draw from, and the folder to draw into (then `publish_charts`)."""
        raise NotImplementedError

    def publish_charts(self, paths: tuple[Path, ...]) -> tuple[str, ...]:
        raise NotImplementedError


class LocalStorage(Storage):
    """A folder on this machine: append under a file lock, fsync, bookmarks state."""

    def __init__(self, data_dir: Path, lock_timeout: float = 300.0, rules: QualityRules = QualityRules(),
                 should_stop: Callable[[], bool] | None = None) -> None:
        self.data_dir = data_dir
        self.layout = DataLayout(data_dir)
        self.location = str(data_dir)
        self.store = HistoryStore(self.layout, lock_timeout, rules, should_stop)

    @property
    def csv_display(self) -> str:
        return str(self.layout.csv)

    def check(self) -> None:
        csvio.header_kind(self.layout.csv)

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

    def merge(self, records: list[Record], *, unavailable: dict[tuple[str, str], set[date]] | None = None,
              checked: datetime | None = None) -> MergeReport:
        return self.store.merge(records, unavailable=unavailable, checked=checked)

    def index(self) -> contextlib.AbstractContextManager[HistoryIndex]:
        return self.store.index()

    def local_csv(self) -> tuple[Path, Path]:
        return self.layout.csv, self.data_dir

    def publish_charts(self, paths: tuple[Path, ...]) -> tuple[str, ...]:
        return tuple(map(str, paths))


class Conflict(Exception):
    """Another writer changed the object since it was read."""


class S3Storage(Storage):
    """s3://bucket/prefix: whole-object reads and conditional writes, retried on conflict."""

    def __init__(self, url: str, *, client: Any = None, max_attempts: int = 8,
                 sleep: Callable[[float], None] = time.sleep, scratch: Path | None = None) -> None:
        self.bucket, self.prefix = split_s3_url(url)
        self.location = url.rstrip("/")
        if client is None:
            import boto3  # only for s3:// locations

            client = boto3.client("s3")
        self.client = client
        self.max_attempts = max_attempts
        self.sleep = sleep
        self.scratch = scratch or Path(tempfile.gettempdir()) / "crypto-history" / self.bucket / self.prefix
        self.conflicts = 0

    def key(self, rel: str) -> str:
        return self.prefix + rel

    # -- objects -----------------------------------------------------------------------------

    def get(self, rel: str) -> tuple[bytes | None, str | None]:
        """The object's bytes and ETag, or (None, None) when it does not exist."""
        from botocore.exceptions import ClientError

        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.key(rel))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None, None
            raise LoadError(f"cannot read s3://{self.bucket}/{self.key(rel)}: {_s3_reason(exc)}") from None
        return answer["Body"].read(), answer["ETag"]

    def put(self, rel: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False,
            content_type: str = "application/octet-stream") -> str:
        """Write an object, optionally only if it is unchanged (If-Match) or absent (If-None-Match)."""
        from botocore.exceptions import ClientError

        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self.key(rel), "Body": data,
                                "ContentType": content_type}
        if if_match:
            args["IfMatch"] = if_match
        elif if_none_match:
            args["IfNoneMatch"] = "*"
        try:
            return self.client.put_object(**args)["ETag"]
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                raise Conflict(code) from None
            raise LoadError(f"cannot write s3://{self.bucket}/{self.key(rel)}: {_s3_reason(exc)}; "
                            "nothing was appended") from None

    def read(self, rel: str) -> bytes | None:
        return self.get(rel)[0]

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
            raise SchemaMismatch(f"{self.csv_display} is in the original seven-column layout: migrate it "
                                 "once with a local run (download, `python main.py`, upload)")
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
        pause = random.uniform(0, min(2.0, 0.05 * 2 ** attempt))
        log.info("another writer changed %s; retrying in %.2f s", self.csv_display, pause)
        self.sleep(pause)

    def _write(self, records: list[Record], weave: bool) -> tuple[int, int, int]:
        """Read, add the new records (appended, or woven in by time), write conditionally; redo on conflict."""
        for attempt in range(self.max_attempts):
            header, data, etag = self._read_history()
            keys = self._keys(data)
            fresh, duplicates = new_records(records, lambda c, v, t: (c, v, t) in keys)
            if not fresh:
                return 0, duplicates, len(keys)
            body = csvio.merged_body(data, fresh) if weave else data + rows_to_csv(fresh).encode("utf-8")
            try:
                self._commit(header, body, etag)
                return len(fresh), duplicates, len(keys) + len(fresh)
            except Conflict:
                self._retry(attempt)
        raise LoadError(f"{self.csv_display} kept changing under {self.max_attempts} attempts; "
                        "nothing was written: run again")

    def append(self, records: list[Record]) -> LoadReport:
        appended, duplicates, _ = self._write(records, weave=False)
        return LoadReport(csv_path=self.csv_display, appended=appended, skipped_duplicates=duplicates)

    def merge(self, records: list[Record], *, unavailable: dict[tuple[str, str], set[date]] | None = None,
              checked: datetime | None = None) -> MergeReport:
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
                    fh.write(body[len(held):])
        else:
            atomic_write_bytes(path, body)
        return path, self.scratch

    def publish_charts(self, paths: tuple[Path, ...]) -> tuple[str, ...]:
        out = []
        for path in paths:
            self.put(path.name, path.read_bytes(), content_type="image/png")
            out.append(f"{self.location}/{path.name}")
        return tuple(out)


def _s3_reason(exc: Exception) -> str:
    error = getattr(exc, "response", {}).get("Error", {})
    return f"{error.get('Code', type(exc).__name__)} {error.get('Message', '')}".strip()


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
        raise ConfigError(f"--data-dir {data_dir}: its parent folder {data_dir.parent} does not exist; "
                          "create it or choose another --data-dir")
    try:
        data_dir.mkdir(exist_ok=True)  # another process may create it at the same moment
    except OSError as exc:
        raise ConfigError(describe_os_error(exc, data_dir, "create the data folder")) from None


def storage_for(settings: Settings, should_stop: Callable[[], bool] | None = None) -> Storage:
    """The storage behind --data-dir, checked before any request; should_stop ends a wait for the lock."""
    if settings.data_url:
        return S3Storage(settings.data_url, scratch=settings.data_dir)
    prepare_data_dir(settings.data_dir)
    return LocalStorage(settings.data_dir, settings.lock_timeout, QualityRules(settings.spike_threshold), should_stop)


