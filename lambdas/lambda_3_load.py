"""Load: append new Records to the history under a lock, crash-safe, each observation exactly once."""

from __future__ import annotations

import logging
from datetime import date, datetime, timezone
from pathlib import Path

from utils.errors import LoadError
from utils.history.csv_store import HistoryStore, LoadReport, MergeReport  # noqa: F401 - the stage's report types
from utils.history.layout import DataLayout
from utils.history.locations import DeltaStorage, S3Storage, Storage
from utils.history.schema import Record
from utils.history.tracking import Changes, TopMembers, members_key, shared_members
from utils.redact import redacted_errors
from utils.s3 import Conflict
from utils.words import count

log = logging.getLogger(__name__)


def load(records: list[Record], target: Path | Storage, *, lock_timeout: float = 300.0) -> LoadReport:
    """Append the records whose key the history does not hold yet, to a CSV path or a storage (local or S3).

    Raises LoadError (and SchemaMismatch)."""
    if isinstance(target, Storage):
        return target.append(records)
    return HistoryStore(DataLayout(target.parent, target.name), lock_timeout).append(records)


def record_membership(
    storage: Storage,
    layout: DataLayout,
    tops: dict[str, list[str]],
    gone: dict[str, list[str]],
    today: date,
    size: int,
    coins: tuple[str, ...],
) -> dict[str, Changes]:
    """Record who entered and left each currency's top N in .state/top-members.json, beside the history.

    On S3 the file is an object shared by every writer: read with its ETag, changed, written back with
    If-Match (If-None-Match for a new one) and redone when another run got there first, as the CSV is.
    """

    def apply(members: TopMembers) -> dict[str, Changes]:
        return {
            vs: members.update(vs, top_ids, today, size, coins, gone=gone.get(vs, [])) for vs, top_ids in tops.items()
        }

    objects = storage.files if isinstance(storage, DeltaStorage) else storage  # the table's companions
    if not isinstance(objects, S3Storage):
        members = TopMembers(layout.top_members)
        changes = apply(members)
        members.save()
        return changes
    key = members_key(layout)
    for attempt in range(objects.max_attempts):
        data, etag = objects.get(key)
        members = shared_members(lambda _: data, layout)
        changes = apply(members)
        try:
            objects.put(
                key, members.to_bytes(), if_match=etag, if_none_match=etag is None, content_type="application/json"
            )
        except Conflict:
            objects.sleep(min(2.0, 0.05 * 2**attempt))
            continue
        members.save()  # the scratch copy, for status and healing on this machine
        return changes
    raise LoadError(
        f"{objects.location}/{key} kept changing under {objects.max_attempts} attempts; "
        "the rows are stored, the top-N membership of this run is not"
    )


@redacted_errors
def handler(event: dict, context: object) -> dict:
    """AWS Lambda: merge the records the transform stored into the history; record each currency's top N."""
    # Lambda handler: the AWS helpers load in the function, never for the command line
    from lambdas.wiring import storage_for
    from utils.aws import gunzip_json, setup_lambda_logging
    from utils.errors import ExtractError
    from utils.history.layout import RECORDS
    from utils.settings import lambda_settings

    setup_lambda_logging()
    settings = lambda_settings(event)
    storage = storage_for(settings)
    records: list[Record] = []
    for records_key in [str(k) for k in event.get("records_keys") or [event["records_key"]]]:
        if not records_key.startswith(f"{RECORDS}/") or ".." in records_key:
            raise ValueError(f"records_key {records_key!r} is not under {RECORDS}/")
        records.extend(Record(**row) for row in gunzip_json(storage.read(records_key)))
    if not records:
        raise ExtractError("no usable rows in this snapshot; nothing was appended")
    report = load(records, storage)
    log.info(
        "load: %s appended, %s skipped -> %s",
        count(report.appended, "row"),
        count(report.skipped_duplicates, "duplicate"),
        report.csv_path,
    )
    tops = event.get("tops") or {}
    if settings.top and tops:
        today = datetime.fromisoformat(records[0].fetched_at).astimezone(timezone.utc).date()  # the fetch's UTC day
        for vs, changes in record_membership(
            storage, settings.layout, tops, event.get("gone") or {}, today, settings.top, settings.coins
        ).items():
            if changes.entered or changes.left:
                log.info(
                    "top %d in %s: %d entered (%s), %d left (%s)",
                    settings.top,
                    vs,
                    len(changes.entered),
                    ", ".join(changes.entered[:10]),
                    len(changes.left),
                    ", ".join(changes.left[:10]),
                )
    partial = bool(event.get("missing") or event.get("rejected") or event.get("failed"))
    return {
        **event,
        "appended": report.appended,
        "skipped_duplicates": report.skipped_duplicates,
        "missing": event.get("missing", []),
        "rejected": event.get("rejected", []),
        "failed": event.get("failed", []),
        "findings": len(report.findings),
        "result": "partial" if partial else "ok",
    }
