"""The one definition of a stored observation: the Record dataclass and the CSV layout it implies."""

from __future__ import annotations

import csv
import io
import json
import math
import operator
import re
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import Any

from utils.errors import ExtractError
from utils.redact import BIDI_CONTROLS, CONTROLS, SURROGATES


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
        """The CSV cells: null as an empty cell, floats in their shortest exact form (format_cell, with its
        common cases inline: a run formats 17,000 rows of 17 cells; the 17 values fetched in one C call)."""
        out = [
            value if type(value) is str else "" if value is None else repr(value) if type(value) in _PLAIN else "?"
            for value in _row_values(self)
        ]
        if "?" in out or "nan" in out or "inf" in out or "-inf" in out:  # another type, or not finite: by the rule
            return [format_cell(value) for value in _row_values(self)]
        return out


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Record))
LEGACY_COLUMNS: tuple[str, ...] = COLUMNS[:7]
HEADER_LINE: str = ",".join(COLUMNS) + "\n"
_PLAIN = (float, int)  # types whose repr() is their cell when finite (str() of an int is its repr())
_row_values = operator.attrgetter(*COLUMNS)  # a Record's values in column order, as one tuple

COIN_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}\Z")
CURRENCY_RE = re.compile(r"^[a-z0-9]{2,10}\Z")

SOURCE_MARKETS = "coins_markets"
SOURCE_LEGACY = "legacy"
SOURCE_MARKET_CHART = "market_chart"


FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
LINE_BREAKS = re.compile("[\t\n\v\f\r\x1c-\x1f\x85\u2028\u2029]")
INVISIBLE = re.compile(f"[{CONTROLS}{BIDI_CONTROLS}]")
LONE_SURROGATES = re.compile(f"[{SURROGATES}]")
MAX_TEXT = 200
# The numbers stored are the numbers the charts can draw: 0, or MIN_MAGNITUDE to MAX_MAGNITUDE in size. float64
# reaches 1.8e308, but axis margins and the performance chart's ratios overflow long before that (measured:
# 1e300 warns "overflow encountered in exp"; 1e-100 to 1e100, even one coin moving end to end, draws clean).
# Real market data stays far inside: prices down to about 1e-15, market caps in the weakest currency below 1e25.
MIN_MAGNITUDE, MAX_MAGNITUDE = 1e-100, 1e100
DRAWABLE_RANGE = f"0, or {MIN_MAGNITUDE:g} to {MAX_MAGNITUDE:g} in size"


def safe_text(text: str) -> str:
    """Text for a name or symbol cell: one line, no control or bidi characters, bounded, never a formula.

    Breaks become spaces (they separated words); other controls and bidi overrides go (the raw archive keeps them).
    """
    text = INVISIBLE.sub("", LINE_BREAKS.sub(" ", text))
    text = LONE_SURROGATES.sub("\ufffd", text).strip()[:MAX_TEXT]
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


def drawable(value: Any) -> Any:
    """True where a value is 0 or MIN_MAGNITUDE..MAX_MAGNITUDE in size; NaN and inf are not. Also on numpy arrays."""
    size = abs(value)
    return (size <= MAX_MAGNITUDE) & ((size >= MIN_MAGNITUDE) | (value == 0))


def number_problem(value: int | float) -> str | None:
    """Why a number can be neither stored nor drawn, or None: the one rule the transform and the charts share."""
    try:
        as_float = float(value)
    except OverflowError:
        return "is too large for a float64 (the largest is about 1.8e308)"
    if not math.isfinite(as_float):
        return f"is {value}, not a finite number"
    if not drawable(as_float):
        return f"is {as_float:.3g}, outside what can be stored and drawn ({DRAWABLE_RANGE})"
    return None


def format_cell(value: object) -> str:
    """Render one value for the CSV; repr() of a float is the shortest string that round-trips."""
    if type(value) is str:
        return value  # type: ignore[return-value]
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


# YYYY-MM-DDTHH:MM:SS.mmmZ in ASCII digits: what format_timestamp writes, so such a text that is a real moment is
# already its own canonical form (CoinGecko's last_updated is: 17,000 of them a run skip a parse and a strftime).
_CANONICAL = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z\Z")


def canonical_texts(texts: list[str]) -> bool:
    """True when every text has format_timestamp's fixed-width form, in which text order is time order."""
    match = _CANONICAL.match
    return all(len(text) == 24 and match(text) for text in texts)


def normalize_timestamp(text: str) -> str:
    """The canonical form of an ISO 8601 timestamp. Raises ValueError."""
    if len(text) == 24 and _CANONICAL.match(text):
        try:
            datetime.fromisoformat(text[:23])  # a real date and time (no 24:00, no 30 February)
        except ValueError:
            pass  # the full parse below raises its own error
        else:
            return text
    return format_timestamp(parse_timestamp(text))


# -- what the extract hands to the transform ---------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """What CoinGecko answered for one run: raw rows plus when and what was asked."""

    fetched_at: datetime
    vs_currency: str
    requested: tuple[str, ...]
    rows: list[Any]
    pages: list[Any] = field(default_factory=list, repr=False)
    # The bytes each page was decoded from, when the client kept them: the archive stores the server's own text.
    bodies: list[bytes | None] = field(default_factory=list, repr=False, compare=False)

    @property
    def missing(self) -> tuple[str, ...]:
        """Requested ids CoinGecko left out (unknown, renamed or delisted)."""
        seen = {row.get("id") for row in self.rows if isinstance(row, dict) and isinstance(row.get("id"), str)}
        return tuple(coin for coin in self.requested if coin not in seen)


def snapshot_payload(snapshot: Snapshot) -> dict[str, Any]:
    """The raw answer with what was asked: what the archive holds and what `snapshot_from_payload` reads back."""
    return {
        "endpoint": "/coins/markets",
        "fetched_at": snapshot.fetched_at.astimezone(timezone.utc).isoformat(),
        "vs_currency": snapshot.vs_currency,
        "requested": list(snapshot.requested),
        "pages": snapshot.pages,
    }


def snapshot_json(snapshot: Snapshot) -> bytes:
    """The archive's JSON text of snapshot_payload: the pages as the server sent them when every page's bytes
    are kept and are plain UTF-8 JSON (json.loads read exactly that text, so json.loads reads it back the same;
    nothing is encoded again, 13 MB a currency in a run of the whole market); re-encoded otherwise."""
    payload = snapshot_payload(snapshot)
    bodies = snapshot.bodies
    if len(bodies) == len(snapshot.pages) and all(_plain_json(body) for body in bodies):
        head = {key: value for key, value in payload.items() if key != "pages"}
        text = json.dumps(head, separators=(",", ":"))
        return text[:-1].encode() + b',"pages":[' + b",".join(bodies) + b"]}"  # type: ignore[arg-type]
    return json.dumps(payload, separators=(",", ":")).encode()


def _plain_json(body: bytes | None) -> bool:
    """Bytes that json.loads read as UTF-8 text: no byte-order mark, no NUL (UTF-16 and UTF-32 have them; UTF-8
    JSON never does), an object or array at the start."""
    return body is not None and body[:64].lstrip()[:1] in (b"[", b"{") and b"\x00" not in body


def snapshot_from_payload(payload: Any) -> Snapshot:
    """A Snapshot from an archived raw answer. Raises ExtractError when it is not one."""
    try:
        pages = payload["pages"]
        return Snapshot(
            fetched_at=datetime.fromisoformat(payload["fetched_at"]),
            vs_currency=payload["vs_currency"],
            requested=tuple(payload["requested"]),
            rows=[row for page in pages for row in page],
            pages=pages,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ExtractError(f"not an archived /coins/markets snapshot ({type(exc).__name__}: {exc})") from None
