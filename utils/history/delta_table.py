"""The history as a Delta Lake table (delta-rs, the `deltalake` package), in a local folder or under s3://.

One load is one key merge: `DeltaTable.merge(predicate on (coin_id, vs_currency, last_updated) and the
partition columns).when_not_matched_insert_all()`, so a rerun, a retry or a concurrent writer never stores
an observation twice, and a commit that lost the race is retried on the new table version.
The table is partitioned by vs_currency and month (YYYY-MM of last_updated): a daily run touches only
the current month of each currency, and a reader that asks for a few days reads only their months.
The SQLite index (utils/history/index.py) is kept beside the table as the readers' daily-points table;
it is caught up from the Parquet files added since it last looked, never by reading the whole table.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from utils.clock import DAY_MS
from utils.errors import ConfigError, LoadError, SchemaMismatch
from utils.history.csvio import Observation, timestamp_ms
from utils.history.layout import TABLE_NAME
from utils.history.schema import COIN_ID_RE, COLUMNS, CURRENCY_RE, Record
from utils.words import count

if TYPE_CHECKING:
    import pyarrow as pa

    from utils.history.index import HistoryIndex

log = logging.getLogger(__name__)

MONTH = "month"  # the partition column derived from last_updated: YYYY-MM (UTC)
PARTITIONS = ("vs_currency", MONTH)
KEY = ("coin_id", "vs_currency", "last_updated")
TEXT = ("name", "symbol", "coin_id", "vs_currency", "source")
TIMES = ("last_updated", "fetched_at")
INTEGERS = ("market_cap_rank",)
NUMBERS = tuple(c for c in COLUMNS if c not in TEXT + TIMES + INTEGERS)
COMPACT_FILES = 16  # a partition holding more files than this is compacted (optimize) after a load
TARGET_FILE_BYTES = 64 << 20  # compaction's target file size
MAX_ATTEMPTS = 8  # commits tried before a load gives up (another writer kept winning)
CONVERSION_APP = "crypto-history-csv-conversion"  # Delta application id whose version counts the CSV rows converted
CONVERSION_DONE = "crypto-history-csv-conversion-done"  # set (version 1) by the commit of the conversion's last chunk
CHUNK_ROWS = 100_000  # rows a conversion commits at a time: 10M rows peak at about 0.5 GB (200,000: 0.7 GB at 2M)
RETENTION_HOURS = 7 * 24  # Delta's default delta.deletedFileRetentionDuration; vacuum never keeps files for less
# Table features of the Delta protocol (reader 3 / writer 7) that delta-rs 1.x knows; any other is a newer writer's.
KNOWN_FEATURES = frozenset(
    (
        "appendOnly",
        "invariants",
        "checkConstraints",
        "changeDataFeed",
        "generatedColumns",
        "columnMapping",
        "identityColumns",
        "deletionVectors",
        "rowTracking",
        "timestampNtz",
        "domainMetadata",
        "v2Checkpoint",
        "icebergCompatV1",
        "icebergCompatV2",
        "vacuumProtocolCheck",
        "inCommitTimestamp",
        "typeWidening",
        "typeWidening-preview",
        "variantType",
        "variantType-preview",
        "clustering",
    )
)


def arrow_schema() -> pa.Schema:
    """The table's columns: the CSV's, typed (UTC timestamps, float64 numbers, nullable int64 rank), then month."""
    # optional package: pyarrow and deltalake, needed by the Delta store only
    import pyarrow as pa

    def kind(name: str) -> pa.DataType:
        if name in TEXT:
            return pa.string()
        if name in TIMES:
            return pa.timestamp("us", tz="UTC")
        if name in INTEGERS:
            return pa.int64()
        return pa.float64()

    return pa.schema([pa.field(c, kind(c)) for c in COLUMNS] + [pa.field(MONTH, pa.string())])


def delta_types() -> dict[str, str]:
    """The Delta primitive type of each column of arrow_schema(): what a table's own schema says."""
    kinds = {"string": TEXT + (MONTH,), "timestamp": TIMES, "long": INTEGERS, "double": NUMBERS}
    by_name = {name: kind for kind, names in kinds.items() for name in names}
    return {name: by_name[name] for name in (*COLUMNS, MONTH)}


def month_of(ts_ms: int) -> str:
    moment = datetime.fromtimestamp(ts_ms / 1000, timezone.utc)
    return f"{moment.year:04d}-{moment.month:02d}"


def records_to_table(records: list[Record]) -> pa.Table:
    """Records as an Arrow table in the table's schema."""
    # optional package: pyarrow and deltalake, needed by the Delta store only
    import pyarrow as pa

    schema = arrow_schema()
    columns: dict[str, list[Any]] = {c: [] for c in schema.names}
    for record in records:
        for name in COLUMNS:
            value = getattr(record, name)
            if name in TIMES:
                value = timestamp_ms(value) * 1000 if value else None
            elif name in TEXT:
                value = value or None
            elif name in NUMBERS and value is not None:
                value = float(value)  # an integer past 2**53 from the JSON is stored as the nearest float64
            columns[name].append(value)
        columns[MONTH].append(month_of(columns["last_updated"][-1] // 1000))
    return pa.Table.from_pydict(columns, schema=schema)


def observations_of(table: Any) -> list[Observation]:
    """What the index keeps of an Arrow table's rows (the same rule as csvio.observation, on typed columns)."""
    # optional package: pyarrow and deltalake, needed by the Delta store only
    import pyarrow.compute as pc

    ts = pc.divide(table.column("last_updated").cast("int64"), 1000).to_pylist()
    cols = [
        table.column(c).to_pylist()
        for c in ("coin_id", "vs_currency", "current_price", "market_cap", "market_cap_rank", "name", "symbol")
    ]
    out = []
    for (coin_id, vs, price, cap, rank, name, symbol), t in zip(zip(*cols), ts):
        if coin_id is None or vs is None or t is None:
            continue
        out.append(
            Observation(
                coin_id, vs, t, price, cap, rank if rank is None or rank < 10**9 else None, name or "", symbol or ""
            )
        )
    return out


@dataclass(frozen=True)
class MergeOutcome:
    inserted: int
    attempts: int


class DeltaHistory:
    """One Delta table of observations: create, check, merge (retried), catch an index up, scan, compact."""

    def __init__(
        self,
        uri: str,
        storage_options: dict[str, str] | None = None,
        *,
        max_attempts: int = MAX_ATTEMPTS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.uri = uri.rstrip("/")
        self.storage_options = storage_options or None
        self.max_attempts = max_attempts
        self.sleep = sleep
        self.conflicts = 0
        self._opened: Any | None = None  # the DeltaTable once read, brought up to date on each use

    # -- opening and checking ---------------------------------------------------------------------

    def _table(self) -> Any | None:
        """The DeltaTable, or None when no table exists yet. Raises the errors of `describe_error`."""
        # optional package: pyarrow and deltalake, needed by the Delta store only
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        try:
            if self._opened is not None:
                self._opened.update_incremental()  # the log entries since it was read: one listing, not a reload
            else:
                self._opened = DeltaTable(self.uri, storage_options=self.storage_options)
            return self._opened
        except TableNotFoundError:
            self._opened = None
            return None
        except Exception as exc:
            self._opened = None
            raise self.describe_error(exc, "open") from None

    def table(self) -> Any | None:
        """The table checked for this version: our columns and a protocol delta-rs writes; None when absent."""
        table = self._table()
        if table is None:
            return None
        protocol = table.protocol()
        unknown = sorted(set(protocol.writer_features or ()) - KNOWN_FEATURES)
        if protocol.min_writer_version > 7 or protocol.min_reader_version > 3 or unknown:
            features = f", features {', '.join(unknown)}" if unknown else ""
            raise SchemaMismatch(
                f"{self.uri} was written by a newer Delta writer (reader protocol "
                f"{protocol.min_reader_version}, writer protocol {protocol.min_writer_version}{features}); "
                "upgrade this program (pip install -U deltalake) or choose another --data-dir"
            )
        # Delta's own type names, not Arrow's: a reader (status, top) need not import pyarrow (about 0.5 s).
        found = {f.name: str(getattr(f.type, "type", f.type)) for f in table.schema().fields}
        wanted = delta_types()
        if found != wanted:
            missing = sorted(set(wanted) - set(found))
            extra = sorted(set(found) - set(wanted))
            typed = sorted(n for n in set(found) & set(wanted) if found[n] != wanted[n])
            detail = "; ".join(
                part
                for part in (
                    f"missing {', '.join(missing)}" if missing else "",
                    f"unknown {', '.join(extra)}" if extra else "",
                    f"other types for {', '.join(typed)}" if typed else "",
                )
                if part
            )
            raise SchemaMismatch(
                f"{self.uri} is a Delta table of another schema ({detail}); move it away or choose another --data-dir"
            )
        if list(table.metadata().partition_columns) != list(PARTITIONS):
            raise SchemaMismatch(
                f"{self.uri} is partitioned by {', '.join(table.metadata().partition_columns) or 'nothing'}, "
                f"not {', '.join(PARTITIONS)}; move it away or choose another --data-dir"
            )
        return table

    def create(self) -> Any:
        """The table, created empty when missing (two creators at once: the loser opens the winner's)."""
        # optional package: pyarrow and deltalake, needed by the Delta store only
        from deltalake import DeltaTable

        table = self.table()
        if table is not None:
            return table
        try:
            DeltaTable.create(
                self.uri,
                arrow_schema(),
                partition_by=list(PARTITIONS),
                mode="ignore",
                name=TABLE_NAME,
                storage_options=self.storage_options,
                description="Daily history of CoinGecko market data, one row per observation; "
                "key (coin_id, vs_currency, last_updated)",
            )
        except Exception as exc:
            raise self.describe_error(exc, "create") from None
        table = self.table()
        if table is None:
            raise LoadError(f"cannot create the Delta table {self.uri}; nothing was written")
        return table

    def describe_error(self, exc: BaseException, action: str) -> Exception:
        """One line for a delta-rs or object-store failure, as a pipeline error with the right exit code."""
        text = " ".join(str(exc).split())
        low = text.lower()
        if isinstance(exc, SchemaMismatch | LoadError | ConfigError):
            return exc
        where = self.uri
        if "nosuchbucket" in low or "bucket does not exist" in low or "specified bucket does not exist" in low:
            bucket = where.split("://", 1)[-1].split("/", 1)[0]
            return ConfigError(f"the bucket {bucket} does not exist: create it or fix --data-dir")
        if any(
            w in low
            for w in (
                "invalidaccesskeyid",
                "signaturedoesnotmatch",
                "no credentials",
                "credential",
                "accessdenied",
                "access denied",
                "forbidden",
            )
        ):
            return ConfigError(
                f"S3 refused the credentials for {where}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) to a key that may read and write it"
            )
        if any(
            w in low
            for w in (
                "connection refused",
                "dns error",
                "error trying to connect",
                "timed out",
                "tcp connect",
                "failed to lookup address",
            )
        ):
            return ConfigError(f"cannot reach the S3 endpoint for {where}: check AWS_ENDPOINT_URL and the network")
        if "no space left" in low or "disk full" in low or "quota" in low or "file too large" in low:
            return LoadError(
                f"the disk holding {where} is full; free some space and run again "
                "(nothing was written: the table is unchanged)"
            )
        if "protocol" in low and ("unsupported" in low or "not supported" in low or "newer" in low):
            return SchemaMismatch(
                f"{where} was written by a newer Delta writer ({text[:160]}); upgrade this "
                "program (pip install -U deltalake) or choose another --data-dir"
            )
        if "permission denied" in low or "read-only" in low:
            return LoadError(f"cannot {action} the Delta table {where}: permission denied; nothing was written")
        return LoadError(f"cannot {action} the Delta table {where}: {text[:300]}; nothing was written")

    # -- writing ----------------------------------------------------------------------------------

    def merge(self, data: pa.Table, *, app_version: int | None = None, last: bool = False) -> MergeOutcome:
        """Insert the rows whose key the table lacks (one commit), retried when another writer got there first.

        With app_version, the commit also records that the conversion has read the CSV's first `app_version`
        rows (a Delta application transaction), so a resumed or concurrent conversion skips what is committed.
        """
        # optional package: pyarrow and deltalake, needed by the Delta store only
        from deltalake import CommitProperties, Transaction
        from deltalake.exceptions import CommitFailedError

        if data.num_rows == 0 and app_version is None:
            return MergeOutcome(0, 0)
        data = _dedupe(data)
        predicate = " AND ".join(f"t.{c} = s.{c}" for c in (*KEY, MONTH))
        for column in PARTITIONS:  # literal partition values, so the merge reads only these partitions
            values = sorted(set(data.column(column).to_pylist()))
            predicate += f" AND t.{column} IN ({', '.join(_quote(v) for v in values)})"
        if data.num_rows:
            # The source's time span as literals too: within a partition, only files whose min/max statistics
            # overlap it are read, and a concurrent commit conflicts only when its files could hold these keys.
            import pyarrow.compute as pc  # optional package: pyarrow and deltalake, needed by the Delta store only

            span = pc.min_max(data.column("last_updated"))
            earliest, latest = (span[k].as_py() for k in ("min", "max"))
            predicate += f" AND t.last_updated >= {_timestamp_literal(earliest)} AND t.last_updated <= {_timestamp_literal(latest)}"
        for attempt in range(1, self.max_attempts + 1):
            table = self.create()
            if app_version is not None and app_done(table, CONVERSION_APP) >= app_version:
                return MergeOutcome(0, attempt)
            props = None
            if app_version is not None:
                done = [Transaction(CONVERSION_DONE, 1)] if last else []
                props = CommitProperties(app_transactions=[Transaction(CONVERSION_APP, app_version), *done])
                if data.num_rows == 0:  # nothing to insert: the commit records the chunk alone
                    # optional package: pyarrow and deltalake, needed by the Delta store only
                    from deltalake import write_deltalake

                    write_deltalake(table, data, mode="append", commit_properties=props)
                    return MergeOutcome(0, attempt)
            try:
                metrics = (
                    table.merge(data, predicate, source_alias="s", target_alias="t", commit_properties=props)
                    .when_not_matched_insert_all()
                    .execute()
                )
                return MergeOutcome(int(metrics.get("num_target_rows_inserted", 0)), attempt)
            except CommitFailedError as exc:
                if "unsupported" in str(exc).lower():  # a table feature this delta-rs cannot write
                    raise SchemaMismatch(
                        f"{self.uri} was written by a newer Delta writer ({' '.join(str(exc).split())[:160]}); "
                        "upgrade this program (pip install -U deltalake) or choose another --data-dir"
                    ) from None
                self.conflicts += 1
                if attempt == self.max_attempts:
                    raise LoadError(
                        f"{self.uri} kept changing under {self.max_attempts} attempts (another writer "
                        f"committed each time: {' '.join(str(exc).split())[:120]}); nothing was "
                        "written: run again"
                    ) from None
                pause = random.uniform(0, min(2.0, 0.05 * 2**attempt))
                log.info("another writer committed to %s first; retrying in %.2f s", self.uri, pause)
                self.sleep(pause)
            except Exception as exc:
                if "conflict" in str(exc).lower() and attempt < self.max_attempts:
                    self.conflicts += 1
                    self.sleep(random.uniform(0, min(2.0, 0.05 * 2**attempt)))
                    continue
                raise self.describe_error(exc, "write to") from None
        raise LoadError(f"{self.uri}: nothing was written")  # not reached

    def compact(self, partitions: Iterable[tuple[str, str]] = (), *, every: bool = False) -> int:
        """optimize.compact() the given (vs_currency, month) partitions that hold more than COMPACT_FILES files.

        Returns the files removed; a failure is a warning (the rows are stored; the next load tries again).
        """
        table = self._table()
        if table is None:
            return 0
        try:
            actions = _actions(table)
            counts: dict[tuple[str, str], int] = {}
            for vs, month in zip(
                actions.column("partition.vs_currency").to_pylist(), actions.column("partition.month").to_pylist()
            ):
                counts[(vs, month)] = counts.get((vs, month), 0) + 1
            wanted = set(partitions)
            removed = 0
            for (vs, month), files in sorted(counts.items()):
                if files <= COMPACT_FILES and not (every and files > 1):
                    continue
                if wanted and (vs, month) not in wanted and not every:
                    continue
                result = table.optimize.compact(
                    partition_filters=[("vs_currency", "=", vs), (MONTH, "=", month)], target_size=TARGET_FILE_BYTES
                )
                removed += int(result.get("numFilesRemoved", 0))
                log.info(
                    "compacted %s partition %s/%s: %s files into %s",
                    self.uri,
                    vs,
                    month,
                    result.get("numFilesRemoved"),
                    result.get("numFilesAdded"),
                )
            return removed
        except Exception as exc:
            log.warning(
                "could not compact %s (%s); the rows are stored, the next load tries again",
                self.uri,
                " ".join(str(exc).split())[:200],
            )
            return 0

    def fill_labels(self, labels: dict[str, tuple[str, str]]) -> tuple[int, set[str]]:
        """Rows without a name or symbol get their coin's (`labels`: coin id -> (name, symbol)): one
        `MERGE ... WHEN MATCHED UPDATE` of those two columns where they are empty, whose predicate names the
        (currency, month) partitions holding such rows, so only their files are rewritten. Returns (rows
        updated, coins that have such rows and no label)."""
        # optional package: pyarrow and deltalake, needed by the Delta store only
        import pyarrow as pa
        import pyarrow.dataset as pds
        from deltalake.exceptions import CommitFailedError

        table = self.table()
        if table is None:
            return 0, set()

        def empty(column: str) -> Any:
            return pds.field(column).is_null() | (pds.field(column) == "")

        found = table.to_pyarrow_dataset().to_table(
            columns=["coin_id", "vs_currency", MONTH], filter=empty("name") | empty("symbol")
        )
        rows = list(zip(*(found.column(c).to_pylist() for c in ("coin_id", "vs_currency", MONTH))))
        coins = {coin for coin, _, _ in rows}
        named = sorted(coins & labels.keys())
        if not named:
            return 0, coins
        parts = sorted({(vs, month) for coin, vs, month in rows if coin in labels})
        source = pa.table(
            {
                "coin_id": pa.array(named, pa.string()),
                "name": pa.array([labels[c][0] or None for c in named], pa.string()),
                "symbol": pa.array([labels[c][1] or None for c in named], pa.string()),
            }
        )
        where = " OR ".join(f"(t.vs_currency = {_quote(vs)} AND t.{MONTH} = {_quote(month)})" for vs, month in parts)
        blank = " OR ".join(f"t.{c} IS NULL OR t.{c} = ''" for c in ("name", "symbol"))
        predicate = f"t.coin_id = s.coin_id AND ({where}) AND ({blank})"
        updates = {c: f"CASE WHEN t.{c} IS NULL OR t.{c} = '' THEN s.{c} ELSE t.{c} END" for c in ("name", "symbol")}
        for attempt in range(1, self.max_attempts + 1):
            try:
                metrics = (
                    table.merge(source, predicate, source_alias="s", target_alias="t")
                    .when_matched_update(updates)
                    .execute()
                )
                return int(metrics.get("num_target_rows_updated", 0)), coins - labels.keys()
            except CommitFailedError:
                self.conflicts += 1
                self.sleep(random.uniform(0, min(2.0, 0.05 * 2**attempt)))
                table = self.create()
            except Exception as exc:
                raise self.describe_error(exc, "update") from None
        raise LoadError(f"{self.uri} kept changing under {self.max_attempts} attempts; no name was filled")

    def vacuum(self) -> int:
        """Delete the files the table stopped referencing (a compaction's inputs) more than the retention ago.

        The retention is the table's delta.deletedFileRetentionDuration, never less than 7 days (Delta's
        default): a reader or writer that opened an older version within it still finds its files, and time
        travel to any version of the last 7 days works. Only files a commit removed are deleted (delta-rs'
        "lite" vacuum, never a listing): a concurrent writer's files that no commit names yet are never touched.
        With nothing old enough it is a check of the log already read, and commits nothing.
        Returns the files deleted; a failure is a warning (the rows are stored; the next load tries again).
        """
        table = self._table()
        if table is None:
            return 0
        try:
            hours = max(RETENTION_HOURS, _interval_hours(table.metadata().configuration.get(RETENTION_KEY)))
            deleted = table.vacuum(retention_hours=hours, dry_run=False, enforce_retention_duration=True)
        except Exception as exc:  # noqa: BLE001 - delta-rs raises many kinds; the rows are stored either way
            log.warning(
                "could not vacuum %s (%s); the rows are stored, the next load tries again",
                self.uri,
                " ".join(str(exc).split())[:200],
            )
            return 0
        if deleted:
            log.info(
                "vacuumed %s: %s unreferenced for more than %d hours deleted",
                self.uri,
                count(len(deleted), "file"),
                hours,
            )
        return len(deleted)

    # -- reading ----------------------------------------------------------------------------------

    def sync_index(self, index: HistoryIndex) -> int:
        """Catch the index up with the Parquet files added since it last looked; returns the new rows.

        Only files the index has not seen are read. A compaction's files hold rows the index knows: their
        keys are skipped (the index adds only unknown keys), so they cost one read and never count twice.
        A table made anew (another table id) starts the index over.
        """
        table = self.table()
        if table is None:
            index.table_files("")
            return 0
        # optional package: pyarrow and deltalake, needed by the Delta store only
        import pyarrow as pa

        seen = index.table_files(table.metadata().id)
        unseen = not seen and index.rows == 0  # a new index: each key is in one file, none needs looking up
        paths = _actions(table).column("path").to_pylist()
        new = [p for p in paths if p not in seen]
        if not new:
            if len(seen) != len(paths):
                index.record_table_files([], set(paths))
            return 0
        dataset = table.to_pyarrow_dataset()
        wanted = set(new)
        fragments = [f for f in dataset.get_fragments() if _relative(f.path, self.uri) in wanted]
        # optional package: pyarrow and deltalake, needed by the Delta store only
        import pyarrow.dataset as pds

        subset = pds.FileSystemDataset(fragments, dataset.schema, dataset.format, dataset.filesystem)
        columns = [
            "coin_id",
            "vs_currency",
            "last_updated",
            "current_price",
            "market_cap",
            "market_cap_rank",
            "name",
            "symbol",
        ]
        added = 0
        found: list[Observation] = []
        if unseen:  # a new index: column by column, no Python object per row
            added = index.add_tables(
                pa.Table.from_batches([batch])
                for batch in subset.to_batches(columns=columns, batch_size=100_000, use_threads=False)
            )
        for batch in () if unseen else subset.to_batches(columns=columns, batch_size=100_000, use_threads=False):
            found.extend(observations_of(pa.Table.from_batches([batch])))
            if len(found) >= 200_000:
                added += index.add_observations(found, unseen=unseen)
                found = []
        added += index.add_observations(found, unseen=unseen)
        index.record_table_files(new, set(paths))
        if added > 100_000:
            log.info("indexed %s: %s", self.uri, count(added, "row"))
        return added

    def batches(
        self, vs_currency: tuple[str, ...] = (), since: date | None = None, until: date | None = None
    ) -> Iterator[Any]:
        """The rows as Arrow batches in the table's schema, partition by partition in time order (pushdown:
        only the currencies' and days' partitions are read), each partition sorted by time and coin."""
        # optional package: pyarrow and deltalake, needed by the Delta store only
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.dataset as pds

        table = self.table()
        if table is None:
            return
        actions = _actions(table)
        parts = sorted(
            set(zip(actions.column("partition.vs_currency").to_pylist(), actions.column("partition.month").to_pylist()))
        )
        first = f"{since:%Y-%m}" if since else None
        last = f"{until:%Y-%m}" if until else None
        dataset = table.to_pyarrow_dataset()
        for vs, month in parts:
            if vs_currency and vs not in vs_currency or first and month < first or last and month > last:
                continue
            expr = (pds.field("vs_currency") == vs) & (pds.field(MONTH) == month)
            if since:
                expr &= pds.field("last_updated") >= pa.scalar(_day_start(since), pa.timestamp("us", tz="UTC"))
            if until:
                expr &= pds.field("last_updated") < pa.scalar(
                    _day_start(until) + DAY_MS * 1000, pa.timestamp("us", tz="UTC")
                )
            part = dataset.to_table(filter=expr)
            if part.num_rows:
                part = part.take(pc.sort_indices(part, [("last_updated", "ascending"), ("coin_id", "ascending")]))
                yield from part.to_batches(max_chunksize=50_000)

    def row_count(self) -> int:
        table = self.table()
        if table is None:
            return 0

        return sum(_actions(table).column("num_records").to_pylist())


RETENTION_KEY = "delta.deletedFileRetentionDuration"
_UNIT_HOURS = {"second": 1 / 3600, "minute": 1 / 60, "hour": 1, "day": 24, "week": 168}


def _interval_hours(value: str | None) -> int:
    """The hours of a Delta interval such as "interval 30 days" (0 when absent or not understood)."""
    match = re.fullmatch(r"\s*interval\s+(\d+)\s+(second|minute|hour|day|week)s?\s*", (value or "").lower())
    return int(int(match.group(1)) * _UNIT_HOURS[match.group(2)]) if match else 0


def app_done(table: Any, app_id: str) -> int:
    """The version a Delta application transaction recorded, -1 when none did."""
    version = table.transaction_version(app_id)
    return -1 if version is None else int(version)


def _actions(table: Any) -> Any:
    """The table's add actions (one row per data file) as a pyarrow Table; pa.table() would import pandas."""
    # optional package: pyarrow and deltalake, needed by the Delta store only
    import pyarrow as pa

    return pa.RecordBatchReader.from_stream(table.get_add_actions(flatten=True)).read_all()


def _relative(path: str, uri: str) -> str:
    """A fragment's path relative to the table's root (what the Delta log names)."""
    base = uri.split("://", 1)[-1].rstrip("/") + "/"
    path = path.split("://", 1)[-1]
    i = path.find(base)
    rel = path[i + len(base) :] if i >= 0 else path
    return unquote(rel)


def _timestamp_literal(moment: datetime) -> str:
    """A UTC timestamp as a SQL literal of microsecond precision."""
    return f"TIMESTAMP '{moment.astimezone(timezone.utc):%Y-%m-%dT%H:%M:%S.%fZ}'"


def _quote(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _day_start(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp()) * 1_000_000


def _dedupe(data: pa.Table) -> pa.Table:
    """The first row of each key (a source with a key twice would insert both)."""
    # optional package: pyarrow and deltalake, needed by the Delta store only
    import pyarrow as pa
    import pyarrow.compute as pc

    keys = pa.Table.from_pydict({"i": pa.array(range(data.num_rows), pa.int64()), **{k: data.column(k) for k in KEY}})
    first = keys.group_by(list(KEY), use_threads=False).aggregate([("i", "min")]).column("i_min")
    if len(first) == data.num_rows:
        return data
    return data.take(pc.sort_indices(first))


# -- CSV in, for the conversion and for exporting the CSV store --------------------------------------


@dataclass(frozen=True)
class ConversionReport:
    rows: int
    damaged: int
    chunks: int
    seconds: float


def convert_csv(
    history: DeltaHistory, source: Path | str, *, opener: Callable[[], Any] | None = None, chunk_rows: int = CHUNK_ROWS
) -> ConversionReport:
    """Store a history CSV's rows in the table, a chunk per commit; the CSV itself is only read.

    Each chunk's commit records how many CSV rows are read so far (a Delta application transaction), and
    the last one records that the conversion is done: killed halfway, the next call skips the chunks
    committed and finishes. Each chunk is a key merge, so no row is stored twice, whatever the chunk size
    and even when two processes convert at once.
    """
    started = time.monotonic()
    history.create()
    rows = damaged = number = consumed = 0
    chunks = csv_tables(source, chunk_rows, opener=opener)
    current = next(chunks, None)
    if current is None:
        current = (arrow_schema().empty_table(), 0)
    while current is not None:
        following = next(chunks, None)
        table, bad = current
        damaged += bad
        consumed += table.num_rows + bad
        rows += history.merge(table, app_version=consumed, last=following is None).inserted
        number += 1
        current = following
        del table
        # A chunk's frames and tables are kept alive by reference cycles until the collector's oldest generation
        # runs, which 200,000-row chunks rarely trigger: memory grew by about 45 MB a chunk (2M rows: 1,043 MB
        # peak; 718 MB with this collection; 510 MB with 100,000-row chunks too). About 20 ms a chunk.
        gc.collect()
    return ConversionReport(rows, damaged, number, time.monotonic() - started)


def csv_tables(
    path: Path | str, chunk_rows: int = CHUNK_ROWS, *, opener: Callable[[], Any] | None = None
) -> Iterator[tuple[pa.Table, int]]:
    """The history CSV as typed Arrow tables of up to chunk_rows rows, and the damaged rows of each chunk
    (skipped: a row this program would not read as an observation). pandas' C parser, in bounded memory."""
    # start-up time: pandas and numpy load only when a table is built
    import pandas as pd

    with contextlib.ExitStack() as stack:
        source: Any = opener() if opener else path
        if opener:
            stack.callback(source.close)
        try:
            reader = pd.read_csv(
                source,
                dtype=str,
                keep_default_na=False,
                na_filter=False,
                engine="c",
                chunksize=chunk_rows,
                on_bad_lines="skip",
                encoding="utf-8",
                encoding_errors="replace",
            )
        except pd.errors.EmptyDataError:
            return
        with reader:
            for frame in reader:
                yield frame_to_table(frame.fillna(""))


def frame_to_table(frame: Any) -> tuple[pa.Table, int]:
    """A frame of CSV strings as a typed table; rows that do not hold a valid observation are dropped, counted."""
    # start-up time: pandas and numpy load only when a table is built
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    if list(frame.columns) != list(COLUMNS):
        raise SchemaMismatch(
            f"the CSV's columns are not this version's ({', '.join(map(str, frame.columns[:5]))}, "
            "...): run the CSV store once to migrate it, or move it away"
        )
    ok = np.ones(len(frame), dtype=bool)
    out: dict[str, Any] = {}
    for name in COLUMNS:
        text = frame[name]
        blank = text == ""  # every cell is a str here (dtype=str, no NA): a C comparison, not a call per cell
        if name in TIMES:
            moment = pd.to_datetime(text.where(~blank), format="ISO8601", utc=True, errors="coerce")
            if name == "last_updated":
                ok &= ~moment.isna().to_numpy()
            else:
                ok &= ~(moment.isna() & ~blank).to_numpy()
            out[name] = moment.dt.as_unit("us")
        elif name in INTEGERS:
            number = pd.to_numeric(text.where(~blank), errors="coerce")
            good = blank | (text.str.fullmatch(r"\d+") & (number < 1e18))
            ok &= good.to_numpy()
            out[name] = number.where(good & ~blank).astype("Int64")
        elif name in NUMBERS:
            # pyarrow's parse rounds correctly: every float the CSV store wrote reads back to the same float64.
            try:  # every cell a number or blank, as the CSV store writes them: one C pass
                values = (
                    pa.array(text.where(~blank), type=pa.string(), from_pandas=True)
                    .cast(pa.float64())
                    .to_numpy(zero_copy_only=False)
                )
                ok &= np.isfinite(values) | blank.to_numpy()  # "nan" and "inf" are no observation's numbers
                out[name] = pd.Series(values, index=text.index)
                continue
            except pa.ArrowInvalid:  # a damaged cell in this chunk: find each one
                pass
            number = pd.to_numeric(text.where(~blank), errors="coerce")  # finds the bad cells (not exact)
            bad = (number.isna() & ~blank) | np.isinf(number.fillna(0))
            ok &= ~bad.to_numpy()
            exact = pa.array(text.where(~blank & ~bad), type=pa.string(), from_pandas=True).cast(pa.float64())
            out[name] = pd.Series(exact.to_numpy(zero_copy_only=False), index=text.index)
        else:
            out[name] = text.where(~blank, None)
    for name, pattern in (("coin_id", COIN_ID_RE), ("vs_currency", CURRENCY_RE)):
        bare = pattern.pattern.removeprefix("^").removesuffix("\\Z")
        ok &= frame[name].str.fullmatch(bare).fillna(False).to_numpy(dtype=bool)
    typed = pd.DataFrame(out)[ok]
    # numpy's month unit, not strftime (a Python call per row: about 5 s of CPU per 1,000,000 rows)
    months = typed["last_updated"].dt.tz_convert(None).to_numpy().astype("datetime64[M]")
    typed[MONTH] = np.datetime_as_string(months, unit="M").astype(object)
    table = pa.Table.from_pandas(typed, schema=arrow_schema(), preserve_index=False)
    return table, int((~ok).sum())
