"""Transform: a Snapshot's raw rows -> typed Records plus rejected rows with reasons (pure: no I/O, no clock)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any

from utils.clock import DAY_MS
from utils.history.schema import (
    COIN_ID_RE,
    FORMULA_PREFIXES,
    MAX_MAGNITUDE,
    MAX_TEXT,
    MIN_MAGNITUDE,
    SOURCE_MARKET_CHART,
    SOURCE_MARKETS,
    Record,
    Snapshot,
    format_timestamp,
    normalize_timestamp,
    number_problem,
    safe_text,
)
from utils.redact import redacted_errors

EARLIEST = "2009-01-03T00:00:00.000Z"  # the first Bitcoin block; nothing older is market data
FUTURE_SKEW_MINUTES = 10  # a small clock skew between CoinGecko and us is fine; a day ahead is not

# Fields that must be non-negative when present.
NON_NEGATIVE = (
    "current_price",
    "market_cap",
    "total_volume",
    "high_24h",
    "low_24h",
    "circulating_supply",
    "total_supply",
    "max_supply",
)
SIGNED = ("price_change_percentage_24h",)


@dataclass(frozen=True)
class Rejected:
    """A row that could not be stored, and why."""

    coin_id: str
    reason: str


@dataclass(frozen=True)
class TransformResult:
    """Records ready to load, and the rows turned away."""

    records: list[Record]
    rejected: list[Rejected]


MAX_REJECTION_LINES = 10  # a page of 100,000 junk rows must not print 100,000 warnings


def rejection_lines(rejected: Sequence[Rejected], limit: int = MAX_REJECTION_LINES) -> list[str]:
    """Warnings for rejected rows: the first `limit`, then one line counting the rest."""
    lines = [f"rejected {r.coin_id}: {r.reason}" for r in rejected[:limit]]
    if len(rejected) > limit:
        lines.append(f"... and {len(rejected) - limit} more rows rejected (the raw answer is archived under raw/)")
    return lines


class RowError(ValueError):
    """Why one row cannot become a Record."""


def neutralize_text(value: Any, field_name: str) -> str:
    """A name or symbol as safe text: one line, bounded, never a spreadsheet formula."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RowError(f"{field_name} is a {type(value).__name__}, not text")
    return safe_text(value)


def number(row: dict[str, Any], field_name: str, *, signed: bool = False) -> float | int | None:
    """A numeric field: null stays None; strings, booleans, NaN and (unless signed) negatives are refused."""
    value = row.get(field_name)
    if value is None:
        return None
    kind = type(value)
    if kind is float or kind is int:  # the common case, decided without building a message (17,000 rows a run)
        size = value if value >= 0 else -value
        if (MIN_MAGNITUDE <= size <= MAX_MAGNITUDE or value == 0) and (signed or value >= 0):
            return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RowError(f"{field_name} is {_describe(value)}, not a number")
    problem = number_problem(value)
    if problem is not None:
        raise RowError(f"{field_name} {problem}")
    if not signed and value < 0:
        raise RowError(f"{field_name} is negative ({value})")
    return value


def rank(row: dict[str, Any]) -> int | None:
    """market_cap_rank as a positive integer or None."""
    value = number(row, "market_cap_rank")
    if value is None:
        return None
    if float(value) != int(value) or value < 1:
        raise RowError(f"market_cap_rank is {value}, not a positive whole number")
    return int(value)


def _describe(value: Any) -> str:
    if isinstance(value, str):
        shown = value if len(value) <= 20 else value[:17] + "..."
        return f"the string {shown!r}"
    return f"a {type(value).__name__.replace('dict', 'object').replace('list', 'list')}"


def to_record(row: Any, vs_currency: str, fetched_at: str, latest: str = "9999") -> Record:
    """One /coins/markets row as a Record. Raises RowError."""
    if type(row) is dict:
        record = _plain_record(row, vs_currency, fetched_at, latest)
        if record is not None:
            return record
    return careful_record(row, vs_currency, fetched_at, latest)


_NUMBERS = (*NON_NEGATIVE, *SIGNED)  # the order of _plain_record's values
assert len(SIGNED) == 1


def _plain_text(value: Any) -> str | None:
    """safe_text of a name or symbol that needs nothing removed (printable text), or None for the careful path."""
    if value is None:
        return ""
    if type(value) is not str or not value.isprintable():  # every character safe_text removes is unprintable
        return None
    text = value.strip()[:MAX_TEXT]
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


def _plain_record(row: dict[str, Any], vs_currency: str, fetched_at: str, latest: str) -> Record | None:
    """The Record of a row with nothing to refuse or clean (almost every row: 17,000 a run of the whole market),
    without building a message; None sends the row to careful_record, which decides it (the same Record, or
    the RowError). tests/test_properties.py checks that the two agree."""
    get = row.get
    coin_id, stamp = get("id"), get("last_updated")
    if type(coin_id) is not str or type(stamp) is not str or not COIN_ID_RE.match(coin_id):
        return None
    try:
        stamp = normalize_timestamp(stamp)
    except (ValueError, OverflowError):
        return None
    if not EARLIEST <= stamp <= latest:
        return None
    values = [get(name) for name in NON_NEGATIVE]
    for value in values:
        if value is not None:
            kind = type(value)
            if (kind is not float and kind is not int) or not (value == 0 or MIN_MAGNITUDE <= value <= MAX_MAGNITUDE):
                return None
    change = get(SIGNED[0])
    if change is not None:
        kind = type(change)
        if (kind is not float and kind is not int) or not (
            change == 0 or MIN_MAGNITUDE <= (change if change > 0 else -change) <= MAX_MAGNITUDE
        ):
            return None
    values.append(change)
    position = get("market_cap_rank")
    if position is not None and (type(position) is not int or not 1 <= position <= MAX_MAGNITUDE):
        return None
    name, symbol = _plain_text(get("name")), _plain_text(get("symbol"))
    if name is None or symbol is None:
        return None
    return Record(
        name=name,
        symbol=symbol,
        last_updated=stamp,
        fetched_at=fetched_at,
        coin_id=coin_id,
        vs_currency=vs_currency,
        market_cap_rank=position,
        source=SOURCE_MARKETS,
        **dict(zip(_NUMBERS, values)),
    )


def careful_record(row: Any, vs_currency: str, fetched_at: str, latest: str = "9999") -> Record:
    """to_record's every check, with its reason: the RowError of a row that cannot be stored."""
    if not isinstance(row, dict):
        raise RowError(f"the row is {_describe(row)}, not an object")
    coin_id = row.get("id")
    if not isinstance(coin_id, str) or not coin_id.strip():
        raise RowError("the row has no id")
    if not COIN_ID_RE.match(coin_id):
        raise RowError(f"id {coin_id[:40]!r} is not a valid CoinGecko id")
    last_updated = row.get("last_updated")
    if last_updated is None:
        raise RowError("last_updated is null (a new listing without data yet)")
    if not isinstance(last_updated, str):
        raise RowError(f"last_updated is {_describe(last_updated)}, not a timestamp")
    try:
        last_updated = normalize_timestamp(last_updated)
    except (ValueError, OverflowError):
        raise RowError(f"last_updated {last_updated[:40]!r} is not an ISO 8601 timestamp") from None
    if last_updated < EARLIEST:
        raise RowError(f"last_updated {last_updated} is before 2009, when market data begins")
    if last_updated > latest:
        raise RowError(
            f"last_updated {last_updated} is more than {FUTURE_SKEW_MINUTES} minutes after the fetch "
            f"({fetched_at}): a clock this far ahead is not an observation"
        )
    values = {name: number(row, name) for name in NON_NEGATIVE}
    values.update({name: number(row, name, signed=True) for name in SIGNED})
    return Record(
        name=neutralize_text(row.get("name"), "name"),
        symbol=neutralize_text(row.get("symbol"), "symbol"),
        last_updated=last_updated,
        fetched_at=fetched_at,
        coin_id=coin_id,
        vs_currency=vs_currency,
        market_cap_rank=rank(row),
        source=SOURCE_MARKETS,
        **values,
    )


NOT_REQUESTED = "not one of the requested coins"


def transform(snapshot: Snapshot) -> TransformResult:
    """Every row either becomes a Record or is rejected with a reason; one bad row never stops the rest."""
    fetched_at = format_timestamp(snapshot.fetched_at)
    latest = format_timestamp(snapshot.fetched_at + timedelta(minutes=FUTURE_SKEW_MINUTES))
    requested = set(snapshot.requested)
    records: list[Record] = []
    rejected: list[Rejected] = []
    seen: set[str] = set()
    for row in snapshot.rows:
        coin_id = row.get("id") if isinstance(row, dict) else None
        label = coin_id if isinstance(coin_id, str) else "?"
        try:
            record = to_record(row, snapshot.vs_currency, fetched_at, latest)
        except RowError as exc:
            rejected.append(Rejected(label[:100], str(exc)))
            continue
        if record.coin_id not in requested:
            rejected.append(Rejected(record.coin_id, NOT_REQUESTED))
        elif record.coin_id in seen:
            rejected.append(Rejected(record.coin_id, "the same id appeared twice in one answer"))
        else:
            seen.add(record.coin_id)
            records.append(record)
    return TransformResult(records=records, rejected=rejected)


# -- /coins/{id}/market_chart/range -> daily records (backfill) ------------------------------------

CHART_SERIES = {"prices": "current_price", "market_caps": "market_cap", "total_volumes": "total_volume"}


def chart_to_records(coin_id: str, vs_currency: str, chart: Any, *, first_day: date, last_day: date) -> TransformResult:
    """Daily points of one coin as Records: one per complete UTC day in [first_day, last_day], at 00:00 UTC.

    The caller sets last_day to the newest complete day, so the partial point at request time is dropped.
    For each day the earliest point of that day is used (the 00:00 point when the answer is daily).
    """
    if not isinstance(chart, dict) or not isinstance(chart.get("prices"), list):
        return TransformResult(
            [], [Rejected(coin_id, f"market_chart answer is {_describe(chart)}, not an object with a prices list")]
        )
    lo = int(datetime(first_day.year, first_day.month, first_day.day, tzinfo=timezone.utc).timestamp() * 1000)
    hi = int(datetime(last_day.year, last_day.month, last_day.day, tzinfo=timezone.utc).timestamp() * 1000) + DAY_MS
    days: dict[int, dict[str, Any]] = {}
    rejected: list[Rejected] = []
    for series, column in CHART_SERIES.items():
        points = chart.get(series)
        if points is None:
            continue
        if not isinstance(points, list):
            rejected.append(Rejected(coin_id, f"{series} is {_describe(points)}, not a list"))
            continue
        for point in points:
            if (
                not isinstance(point, list)
                or len(point) != 2
                or isinstance(point[0], bool)
                or not isinstance(point[0], (int, float))
                or (isinstance(point[0], float) and not math.isfinite(point[0]))
            ):
                rejected.append(Rejected(coin_id, f"a {series} point is {_describe(point)}, not [ms, value]"))
                continue
            ms = int(point[0])
            if not lo <= ms < hi:
                continue
            day = ms // DAY_MS
            slot = days.setdefault(day, {})
            if column in slot and slot[column][0] <= ms:
                continue  # keep the earliest point of the day
            slot[column] = (ms, point[1])
    records: list[Record] = []
    for day in sorted(days):
        values = {column: value for column, (_, value) in days[day].items()}
        try:
            numbers = {column: number(values, column) for column in CHART_SERIES.values()}
        except RowError as exc:
            rejected.append(Rejected(coin_id, f"{_day_text(day)}: {exc}"))
            continue
        if numbers["current_price"] is None and numbers["market_cap"] is None:
            continue
        records.append(
            Record(
                name="",
                symbol="",
                current_price=numbers["current_price"],
                market_cap=numbers["market_cap"],
                price_change_percentage_24h=None,
                circulating_supply=None,
                last_updated=format_timestamp(datetime.fromtimestamp(day * 86400, tz=timezone.utc)),
                fetched_at="",
                coin_id=coin_id,
                vs_currency=vs_currency,
                market_cap_rank=None,
                total_volume=numbers["total_volume"],
                high_24h=None,
                low_24h=None,
                total_supply=None,
                max_supply=None,
                source=SOURCE_MARKET_CHART,
            )
        )
    return TransformResult(records, rejected)


def _day_text(day: int) -> str:
    return datetime.fromtimestamp(day * 86400, tz=timezone.utc).date().isoformat()


def incomplete(snapshot: Snapshot, result: TransformResult) -> list[Rejected]:
    """The rejections a run counts: rows of coins that did not land, as `run` counts them, except the rows an
    archived top-N answer holds past the top N (whole ranking pages, not requested: turning them away is no loss)."""
    landed = {record.coin_id for record in result.records}
    requested = set(snapshot.requested)
    return [
        r for r in result.rejected if r.coin_id not in landed and (r.coin_id in requested or r.reason != NOT_REQUESTED)
    ]


@redacted_errors
def handler(event: dict[str, Any], context: object) -> dict[str, Any]:
    """AWS Lambda: read each raw answer the extract stored, write its records for the load; return their keys."""
    # Lambda handler: the AWS helpers load in the function, never for the command line
    from dataclasses import asdict

    from utils.aws import gunzip_json, gzip_json, setup_lambda_logging
    from utils.history.layout import RAW, RECORDS
    from utils.history.schema import snapshot_from_payload
    from utils.s3 import read_object, write_object
    from utils.settings import lambda_settings

    setup_lambda_logging()
    settings = lambda_settings(event)
    raw_keys = [str(k) for k in event.get("raw_keys") or [event["raw_key"]]]
    records_keys: list[str] = []
    rejected: list[Rejected] = []
    stored = 0
    for raw_key in raw_keys:
        if not raw_key.startswith(f"{RAW}/") or ".." in raw_key:
            raise ValueError(f"raw_key {raw_key!r} is not under {RAW}/")
        snapshot = snapshot_from_payload(gunzip_json(read_object(settings.location, raw_key)))
        result = transform(snapshot)
        records_key = f"{RECORDS}/" + raw_key[len(RAW) + 1 :].replace(".json.gz", ".records.json.gz")
        write_object(settings.location, records_key, gzip_json([asdict(r) for r in result.records]))
        records_keys.append(records_key)
        rejected.extend(incomplete(snapshot, result))
        stored += len(result.records)
    for line in rejection_lines(rejected):
        logging.getLogger(__name__).warning("%s", line)
    return {
        **event,
        "records_keys": records_keys,
        "records": stored,
        "rejected": [{"coin_id": r.coin_id, "reason": r.reason} for r in rejected],
    }
