"""Load: append new Records to the history under a lock, crash-safe, each observation exactly once."""

from __future__ import annotations

import logging
from pathlib import Path

from utils.history.layout import DataLayout
from utils.history.schema import Record
from utils.history.locations import Storage
from utils.history.csv_store import HistoryStore, LoadReport, MergeReport  # noqa: F401 - the stage's report types

log = logging.getLogger(__name__)


def load(records: list[Record], target: Path | Storage, *, lock_timeout: float = 300.0) -> LoadReport:
    """Append the records whose key the history does not hold yet, to a CSV path or a storage (local or S3).

    Raises LoadError (and SchemaMismatch)."""
    if isinstance(target, Storage):
        return target.append(records)
    return HistoryStore(DataLayout(target.parent, target.name), lock_timeout).append(records)


def handler(event: dict, context: object) -> dict:
    """AWS Lambda: append the records the transform stored to the history in the bucket (conditional write)."""
    from utils.aws import gunzip_json, lambda_settings, setup_lambda_logging
    from utils.errors import ExtractError
    from utils.history.layout import RECORDS
    from utils.history.locations import storage_for

    setup_lambda_logging()
    storage = storage_for(lambda_settings(event))
    records_key = str(event["records_key"])
    if not records_key.startswith(f"{RECORDS}/") or ".." in records_key:
        raise ValueError(f"records_key {records_key!r} is not under {RECORDS}/")
    records = [Record(**row) for row in gunzip_json(storage.read(records_key))]
    if not records:
        raise ExtractError("no usable rows in this snapshot; nothing was appended")
    report = load(records, storage)
    partial = bool(event.get("missing") or event.get("rejected"))
    log.info("load: %d rows appended, %d duplicates skipped -> %s", report.appended, report.skipped_duplicates,
             report.csv_path)
    return {"appended": report.appended, "skipped_duplicates": report.skipped_duplicates,
            "missing": event.get("missing", []), "rejected": event.get("rejected", []),
            "result": "partial" if partial else "ok"}
