"""The one definition of a stored observation: the Record dataclass and the CSV layout it implies."""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, fields
from datetime import datetime, timezone


@dataclass(frozen=True, slots=True)
class Record:
    """One coin's market data at one moment, in one currency: one CSV row."""

    # The original script's seven columns, first and in their original order.
    name: str
    symbol: str
    current_price: float | None
    market_cap: float | None
    price_change_percentage_24h: float | None
    circulating_supply: float | None
    last_updated: str
    # Added: identity, provenance and the rest of /coins/markets worth keeping.
    fetched_at: str
    coin_id: str
    vs_currency: str
    market_cap_rank: int | None
    total_volume: float | None
    high_24h: float | None
    low_24h: float | None
    total_supply: float | None
    max_supply: float | None
    source: str

    @property
    def key(self) -> tuple[str, str, str]:
        """Identity of the observation: (coin_id, vs_currency, last_updated)."""
        return (self.coin_id, self.vs_currency, self.last_updated)

    def to_row(self) -> list[str]:
        """The CSV cells: null as an empty cell, floats in their shortest exact form."""
        return [format_cell(getattr(self, name)) for name in COLUMNS]


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Record))
LEGACY_COLUMNS: tuple[str, ...] = COLUMNS[:7]
HEADER_LINE: str = ",".join(COLUMNS) + "\n"

SOURCE_MARKETS = "coins_markets"
SOURCE_LEGACY = "legacy"
SOURCE_MARKET_CHART = "market_chart"


FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
SURROGATES = re.compile(r"[\ud800-\udfff]")
MAX_TEXT = 200


def safe_text(text: str) -> str:
    """Text for a name or symbol cell: one line, bounded, never run as a spreadsheet formula."""
    text = SURROGATES.sub("\ufffd", CONTROL_CHARS.sub(" ", text)).strip()[:MAX_TEXT]
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


def format_cell(value: object) -> str:
    """Render one value for the CSV; repr() of a float is the shortest string that round-trips."""
    if value is None:
        return ""
    if isinstance(value, float):
        if not math.isfinite(value):
            return ""
        return repr(value)
    return str(value)


def rows_to_csv(records: list[Record]) -> str:
    """Serialise records as CSV lines (no header), one physical line each."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerows(r.to_row() for r in records)
    return buf.getvalue()


def format_timestamp(moment: datetime) -> str:
    """UTC ISO 8601 with milliseconds and Z, fixed width so text order is time order."""
    moment = moment.astimezone(timezone.utc)
    return f"{moment.year:04d}-" + moment.strftime("%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_timestamp(text: str) -> datetime:
    """Parse an ISO 8601 timestamp; naive ones are taken as UTC. Raises ValueError."""
    text = text.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def normalize_timestamp(text: str) -> str:
    """The canonical form of an ISO 8601 timestamp. Raises ValueError."""
    return format_timestamp(parse_timestamp(text))
