"""`python main.py export --out FILE`: the history of any store as CSV (the CSV store's layout) or Parquet."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from flows.wiring import Console
from lambdas.wiring import storage_for
from utils.errors import EXIT_OK, ConfigError, LoadError
from utils.history.arrow_csv import csv_lines
from utils.history.delta_table import MONTH, arrow_schema, csv_tables
from utils.history.files import describe_os_error, fsync_dir
from utils.history.layout import CSV_NAME, display_path
from utils.history.locations import DeltaStorage, LocalStorage, S3Storage, Storage
from utils.history.schema import HEADER_LINE
from utils.settings import Settings
from utils.words import count

log = logging.getLogger(__name__)

EXPORT_CHUNK_ROWS = 50_000  # rows of a CSV history parsed at a time: pandas' string frame is the peak of memory


def check_out_path(out: Path, settings: Settings) -> Path:
    """The --out file made absolute, refused (exit 2) when it cannot be written or names a managed file."""
    out = out if out.is_absolute() else Path.cwd() / out
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; name a file, e.g. {out / 'history.csv'}")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: the folder {out.parent} does not exist; create it or choose another path")
    if out.is_symlink():
        raise ConfigError(f"--out {out} is a symbolic link; name the file itself")
    if not os.access(out.parent, os.W_OK):
        raise ConfigError(f"--out {out}: cannot write in {out.parent} (permission denied); choose another folder")
    if settings.data_url is None:
        resolved = out.resolve()
        managed = [p.resolve() for p in settings.layout.managed()]
        if any(resolved == p or p in resolved.parents for p in managed):
            raise ConfigError(
                f"--out {out} is a file the pipeline manages in {settings.data_dir}; choose another "
                "path, e.g. export.csv in the current folder"
            )
    return out


def history_batches(
    storage: Storage, currencies: tuple[str, ...], since: date | None, until: date | None
) -> Iterator[Any]:
    """The history's rows as Arrow batches in the Delta table's schema, filtered, in bounded memory."""
    # optional package: pyarrow and deltalake, needed by the Delta store only
    import pyarrow.compute as pc

    if isinstance(storage, DeltaStorage):
        yield from storage.history.batches(currencies, since, until)
        return
    if isinstance(storage, LocalStorage):
        if not storage.layout.csv.is_file():
            return
        tables = csv_tables(storage.layout.csv, EXPORT_CHUNK_ROWS)
    elif isinstance(storage, S3Storage):
        if not storage.has_history():
            return
        s3 = storage
        tables = csv_tables(s3.csv_display, EXPORT_CHUNK_ROWS, opener=lambda: s3.objects.stream(CSV_NAME))
    else:
        raise ConfigError("export knows no such store")
    for table, _ in tables:
        mask = None
        if currencies:
            mask = pc.is_in(table.column("vs_currency"), value_set=_array(list(currencies)))
        for bound, keep in ((since, pc.greater_equal), (until, pc.less)):
            if bound is None:
                continue
            day = bound if keep is pc.greater_equal else bound + timedelta(days=1)
            moment = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
            part = keep(table.column("last_updated"), _timestamp(moment))
            mask = part if mask is None else pc.and_(mask, part)
        if mask is not None:
            table = table.filter(mask)
        if table.num_rows:
            yield from table.to_batches(max_chunksize=50_000)


def _array(values: list[str]) -> Any:
    # optional package: pyarrow and deltalake, needed by the Delta store only
    import pyarrow as pa

    return pa.array(values, pa.string())


def _timestamp(moment: datetime) -> Any:
    # optional package: pyarrow and deltalake, needed by the Delta store only
    import pyarrow as pa

    return pa.scalar(moment, pa.timestamp("us", tz="UTC"))


def write_csv(batches: Iterator[Any], fh: Any) -> int:
    """The CSV store's header and rows, byte for byte (arrow_csv formats a batch a column at a time); returns the rows."""
    fh.write(HEADER_LINE.encode("utf-8"))
    rows = 0
    for batch in batches:
        fh.write(csv_lines(batch))
        rows += batch.num_rows
    return rows


def write_parquet(batches: Iterator[Any], fh: Any) -> int:
    """Parquet with the table's typed columns (without the month partition column)."""
    # optional package: pyarrow and deltalake, needed by the Delta store only
    import pyarrow.parquet as pq

    schema = arrow_schema()
    schema = schema.remove(schema.get_field_index(MONTH))
    rows = 0
    with pq.ParquetWriter(fh, schema, compression="zstd") as writer:
        for batch in batches:
            table = _table(batch).select(schema.names).cast(schema)
            writer.write_table(table)
            rows += table.num_rows
    return rows


def _table(batch: Any) -> Any:
    # optional package: pyarrow and deltalake, needed by the Delta store only
    import pyarrow as pa

    return pa.Table.from_batches([batch])


def export_command(settings: Settings, console: Console) -> int:
    """`export --out FILE`."""
    if settings.out is None:
        raise ConfigError("export needs --out FILE (a .csv or .parquet file)")
    return export(settings, settings.out, show=console.out)


def export(settings: Settings, out: Path, *, show: Callable[[str], None] = print) -> int:
    """Write the history (every currency, or --vs-currency's; --since/--until) to out, atomically."""
    started = time.monotonic()
    out = check_out_path(out, settings)
    storage = storage_for(settings)
    storage.check()
    currencies = settings.vs_currencies if settings.vs_currency_set else ()
    parquet = out.suffix.lower() == ".parquet"
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            batches = history_batches(storage, currencies, settings.since, settings.until)
            rows = write_parquet(batches, fh) if parquet else write_csv(batches, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
        fsync_dir(out.parent)
    except OSError as exc:
        raise LoadError(describe_os_error(exc, out, "write") + "; nothing was exported") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    show(display_path(out))
    log.info(
        "export ok: %s from %s -> %s in %.1f s",
        count(rows, "row"),
        display_path(storage.csv_display),
        display_path(out),
        time.monotonic() - started,
    )
    return EXIT_OK
