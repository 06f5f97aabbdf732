"""Charts of the CSV history: price, market-cap and performance trends as PNG files.

The history can hold a million rows, so the CSV is not handed to pandas whole: a vectorised
scanner finds the fields of every line with numpy, parses timestamps by their fixed layout,
keeps one observation per coin per UTC day (or per pixel column, if the window is long), and
only then parses the prices and market caps it is going to draw.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import dates as mdates
from matplotlib import ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from utils.errors import PipelineError, SchemaMismatch
from utils.schema import COLUMNS

logger = logging.getLogger(__name__)

PRICE_CHART = "crypto_price_trend.png"
MARKET_CAP_CHART = "crypto_market_cap_trend.png"
PERFORMANCE_CHART = "crypto_performance.png"

FIGURE_SIZE_INCHES = (14.0, 8.0)
DPI = 100
IMAGE_SIZE_PX = (int(FIGURE_SIZE_INCHES[0] * DPI), int(FIGURE_SIZE_INCHES[1] * DPI))
# The plot area (left, bottom, width, height) in figure fractions; the legend sits to its right.
_AXES_RECT = (0.085, 0.10, 0.655, 0.77)
# A line never needs more points than the plot area has pixels across.
MAX_POINTS_PER_LINE = int(IMAGE_SIZE_PX[0] * _AXES_RECT[2])
# With more coins than this, only the top ones by latest value get a colour and a legend entry.
LEGEND_MAX_COINS = 15
LOG_SPAN_THRESHOLD = 100.0  # "auto" picks a log axis beyond two orders of magnitude

CURRENCY_SYMBOLS = {"eur": "€", "usd": "$", "gbp": "£", "jpy": "¥"}
SCALES = ("auto", "log", "linear")

_DAY_MS = 86_400_000
_NEEDED = ("coin_id", "vs_currency", "last_updated", "current_price", "market_cap")
_LABEL_COLUMNS = ("name", "symbol")
_CHUNK_BYTES = 1 << 21
_SCAN_THREADS = min(2, os.cpu_count() or 1)
_MAX_KEY_BYTES = 160  # longest "coin_id,vs_currency" accepted
_MAX_NUMBER_BYTES = 40
_PAD_BYTES = 256  # zero bytes after the data, so fixed-width gathers never run off the end
_MISSING_TIME = np.iinfo(np.int64).min


class NoHistory(PipelineError):
    """There is no history to chart yet."""

    exit_code = 1


class NothingToPlot(PipelineError):
    """The history exists but the currency, coins or window asked for select no data."""

    exit_code = 1


@dataclass(frozen=True)
class ChartOptions:
    """What to chart: currency, coins (ids, symbols or names, any case), window and y scale."""

    vs_currency: str = "eur"
    coins: tuple[str, ...] = ()
    since: date | None = None
    until: date | None = None
    days: int | None = None
    scale: str = "auto"


@dataclass(frozen=True)
class ChartReport:
    """What render_charts wrote and from which data."""

    paths: tuple[Path, ...]  # the three PNGs written
    coins: tuple[str, ...]  # coin ids charted, largest latest market cap first
    rows_used: int  # rows of the currency, coins and window (before one point per day)
    # Damaged lines skipped: a wrong number of fields, or an unreadable time, id or currency,
    # anywhere in the file; an unreadable price or market cap where a chart needed it (numbers
    # are parsed only for the observations drawn, so one in a discarded row goes unnoticed).
    skipped_lines: int
    price_scale: str  # "log" or "linear"
    market_cap_scale: str
    window: tuple[datetime, datetime]  # oldest and newest observation charted, UTC


# --------------------------------------------------------------------------------------------
# Reading the history


@dataclass
class History:
    """Every well-formed line of the CSV: identity and time parsed, numbers left as byte ranges."""

    path: Path
    raw: bytearray  # the file's bytes, quoted records rewritten in place, zero padded
    row_start: np.ndarray  # int64 offset of each row's line
    time_ms: np.ndarray  # int64 ms since 1970-01-01 UTC
    coin: np.ndarray  # int32 index into coin_ids
    currency: np.ndarray  # int32 index into currencies
    price_at: np.ndarray  # int64 offset of the current_price field
    price_len: np.ndarray  # int32 length of that field, 0 when null
    cap_at: np.ndarray
    cap_len: np.ndarray
    name_len: np.ndarray  # int32, 0 when the row has no name (backfilled rows)
    symbol_len: np.ndarray
    coin_ids: list[str]
    currencies: list[str]  # lower case
    columns: tuple[str, ...]
    skipped_lines: int  # wrong field count, unreadable timestamp, empty id or currency
    quoted_fields: dict[int, list[str]] = field(default_factory=dict)  # row_start -> fields

    def line_fields(self, row_start: int) -> list[str]:
        """The cells of the line starting at row_start, as the csv module reads them."""
        if row_start in self.quoted_fields:
            return self.quoted_fields[row_start]
        end = self.raw.find(b"\n", row_start)
        text = bytes(self.raw[row_start:end if end >= 0 else len(self.raw)]).rstrip(b"\0\r")
        return next(csv.reader([text.decode("utf-8", "replace")]), [])


@dataclass
class _Layout:
    """Where the columns sit in a line."""

    count: int
    index: dict[str, int]
    pad_column: int | None  # a text column that can absorb the bytes saved by unquoting


def read_history(csv_path: Path) -> History:
    """Scan the CSV history; damaged lines are counted in skipped_lines, never fatal."""
    csv_path = Path(csv_path)
    try:
        size = csv_path.stat().st_size
    except FileNotFoundError:
        raise NoHistory(f"no history yet at {csv_path}: run `python main.py` first") from None
    raw = bytearray(size + _PAD_BYTES)
    with open(csv_path, "rb") as fh:
        got = fh.readinto(memoryview(raw)[:size])
    size = got or 0
    start = 3 if raw[:3] == b"\xef\xbb\xbf" else 0
    header_end = raw.find(b"\n", start, size)
    header_end = size if header_end < 0 else header_end
    header_text = bytes(raw[start:header_end]).decode("utf-8", "replace").strip("\r\0 ")
    if not header_text:
        raise NoHistory(f"no history yet at {csv_path}: run `python main.py` first")
    columns = tuple(c.strip() for c in next(csv.reader([header_text])))
    missing = [c for c in _NEEDED if c not in columns]
    if missing:
        raise SchemaMismatch(
            f"{csv_path} has no column {', '.join(missing)}: it is not a history this version"
            f" writes (expected the header {','.join(COLUMNS)})")
    layout = _layout(columns)
    data_start = min(header_end + 1, size)

    quoted_fields: dict[int, list[str]] = {}
    if raw.find(b'"', data_start, size) >= 0:
        _unquote_in_place(raw, data_start, size, layout, quoted_fields)

    arr = np.frombuffer(raw, dtype=np.uint8)
    bounds = []
    pos = data_start
    while pos < size:
        end = raw.find(b"\n", min(pos + _CHUNK_BYTES, size - 1), size)
        end = size if end < 0 else end + 1
        bounds.append((pos, end))
        pos = end
    scan = _Scan(arr, layout)
    # numpy releases the GIL in most of the scan, so a second thread uses the second core.
    with ThreadPoolExecutor(max_workers=_SCAN_THREADS) as pool:
        parts = list(pool.map(lambda b: scan.chunk(b[0], b[1], final=b[1] >= size), bounds))
    return scan.finish(csv_path, raw, columns, quoted_fields, parts)


def _layout(columns: tuple[str, ...]) -> _Layout:
    index = {name: i for i, name in enumerate(columns)}
    protected = {index[c] for c in _NEEDED}
    pad = next((index[c] for c in _LABEL_COLUMNS if c in index), None)
    if pad is None:
        pad = next((i for i in range(len(columns)) if i not in protected), None)
    return _Layout(count=len(columns), index=index, pad_column=pad)


def _unquote_in_place(raw: bytearray, start: int, size: int, layout: _Layout,
                      quoted_fields: dict[int, list[str]]) -> None:
    """Rewrite every quoted record as one plain line of the same length, in place.

    Quotes are rare (a coin name with a comma), so this runs only when the file has any. The
    original cells are kept in quoted_fields for the labels; commas, quotes and line breaks
    inside cells become spaces and the shortened record is padded inside a text column. A
    record that does not parse is blanked to spaces, which the scan counts as one damaged line.
    """
    arr = np.frombuffer(raw, dtype=np.uint8)[:size]
    newlines = np.flatnonzero(arr == 10)
    quotes = np.flatnonzero(arr[start:] == 34) + start
    line_of_quote = np.searchsorted(newlines, quotes)
    lines, counts = np.unique(line_of_quote, return_counts=True)
    parity = dict(zip(lines.tolist(), (counts % 2).tolist()))

    def line_span(i: int) -> tuple[int, int]:
        begin = newlines[i - 1] + 1 if i > 0 else start
        end = newlines[i] if i < len(newlines) else size
        return int(max(begin, start)), int(end)

    def records_in(begin: int, end: int) -> list[list[str]]:
        text = bytes(raw[begin:end]).rstrip(b"\r").decode("utf-8", "surrogateescape")
        return list(csv.reader(io.StringIO(text, newline="")))

    consumed_until = -1
    for first in lines.tolist():
        if first <= consumed_until:
            continue
        # An odd number of quotes opens a cell that goes on over the next lines; failing
        # that, the line alone may still be a record with a quote inside a cell.
        last, odd = first, parity[first]
        while odd and last + 1 <= len(newlines) and last - first < 8:
            last += 1
            odd ^= parity.get(last, 0)
        begin = line_span(first)[0]
        end = line_span(last)[1]
        records = [] if odd else records_in(begin, end)
        if len(records) != 1:
            last = first
            end = line_span(first)[1]
            records = records_in(begin, end)
        cells = records[0] if len(records) == 1 and len(records[0]) == layout.count else None
        consumed_until = last
        plain = [c.translate(_UNQUOTE).encode("utf-8", "surrogateescape") for c in cells or []]
        room = (end - begin) - len(b",".join(plain))
        if cells is None or layout.pad_column is None or room < 0:
            raw[begin:end] = b" " * (end - begin)  # one unreadable line: the scan counts it
            continue
        plain[layout.pad_column] += b" " * room
        raw[begin:end] = b",".join(plain)
        quoted_fields[begin] = [c.strip() for c in cells]


_UNQUOTE = str.maketrans({",": " ", "\n": " ", "\r": " ", '"': " "})

_TS_SEPARATORS = np.array([4, 7, 10, 13, 16, 19, 23])
_TS_SEPARATOR_BYTES = np.frombuffer(b"--T::.Z", dtype=np.uint8)
_TS_DIGITS = np.array([0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18, 20, 21, 22])


class _Scan:
    """Finds the rows of the file chunk by chunk (small chunks keep temporaries in cache)."""

    def __init__(self, arr: np.ndarray, layout: _Layout) -> None:
        self.arr = arr
        self.layout = layout
        self.lock = threading.Lock()  # guards the tables and the count across scan threads
        self.series_table: dict[bytes, int] = {}  # b"coin_id,vs_currency" -> code
        self.coin_table: dict[bytes, int] = {}  # used only when the two columns are apart
        self.currency_table: dict[bytes, int] = {}
        self.skipped = 0

    def chunk(self, lo: int, hi: int, *, final: bool) -> tuple[np.ndarray, ...]:
        """The columns of the well-formed rows in arr[lo:hi]; counts the others as skipped."""
        arr, lay = self.arr, self.layout
        piece = arr[lo:hi]
        ends = np.flatnonzero(piece == 10)
        if final and (len(ends) == 0 or ends[-1] != hi - lo - 1):
            ends = np.append(ends, hi - lo)  # a last line without its newline
        if len(ends) == 0:
            return ()
        starts = np.empty_like(ends)
        starts[0] = 0
        starts[1:] = ends[:-1] + 1
        has_cr = (ends > starts) & (piece[np.maximum(ends - 1, 0)] == 13)
        ends = ends - has_cr
        blank = ends == starts
        commas = np.flatnonzero(piece == 44)
        first_comma = np.searchsorted(commas, starts)
        field_count = np.searchsorted(commas, ends) - first_comma + 1
        good = field_count == lay.count
        bad = int(np.count_nonzero(~good & ~blank))

        rows = np.flatnonzero(good)
        base = first_comma[rows]
        line_start = starts[rows] + lo
        line_end = ends[rows] + lo
        commas = commas + lo

        def bounds(name: str) -> tuple[np.ndarray, np.ndarray]:
            k = lay.index[name]
            begin = line_start if k == 0 else commas[base + k - 1] + 1
            end = line_end if k == lay.count - 1 else commas[base + k]
            return begin, (end - begin).astype(np.int32)

        series = self._series(bounds)
        time_ms = _parse_times(arr, *bounds("last_updated"))
        price_at, price_len = bounds("current_price")
        cap_at, cap_len = bounds("market_cap")
        zero = np.zeros(len(rows), dtype=np.int32)
        name_len = bounds("name")[1] if "name" in lay.index else zero
        symbol_len = bounds("symbol")[1] if "symbol" in lay.index else zero

        ok = (series >= 0) & (time_ms != _MISSING_TIME)
        ok &= (price_len <= _MAX_NUMBER_BYTES) & (cap_len <= _MAX_NUMBER_BYTES)
        bad += int(np.count_nonzero(~ok))
        with self.lock:
            self.skipped += bad
        cols = (line_start, time_ms, series, price_at, price_len, cap_at, cap_len, name_len,
                symbol_len)
        if not ok.all():
            keep = np.flatnonzero(ok)
            cols = tuple(c[keep] for c in cols)
        return cols

    def _series(self, bounds: Callable[[str], tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """Index of each row's "coin_id,vs_currency" text in series_table; -1 when too long."""
        coin_at, coin_len = bounds("coin_id")
        currency_at, currency_len = bounds("vs_currency")
        if self.layout.index["vs_currency"] == self.layout.index["coin_id"] + 1:
            # Adjacent columns (the schema's order): one gather covers both cells and the comma.
            return self._codes(coin_at, currency_at + currency_len - coin_at)
        coins = self._codes(coin_at, coin_len, self.coin_table)
        currencies = self._codes(currency_at, currency_len, self.currency_table)
        pairs = coins.astype(np.int64) << 32 | currencies.astype(np.int64) & 0xFFFFFFFF
        group, uniques = pd.factorize(pairs)
        with self.lock:
            names = {code: text for text, code in self.coin_table.items()}
            units = {code: text for text, code in self.currency_table.items()}
            lookup = np.array([
                self.series_table.setdefault(names[p >> 32] + b"," + units[p & 0xFFFFFFFF],
                                             len(self.series_table))
                if p >> 32 in names and p & 0xFFFFFFFF in units else -1
                for p in uniques.tolist()], dtype=np.int32)
        return lookup[group]

    def _codes(self, at: np.ndarray, length: np.ndarray,
               table: dict[bytes, int] | None = None) -> np.ndarray:
        """Index of each field's text in table (series_table by default); -1 when too long."""
        table = self.series_table if table is None else table
        codes = np.full(len(at), -1, dtype=np.int32)
        usable = np.flatnonzero(length <= _MAX_KEY_BYTES)
        if len(usable) == 0:
            return codes
        width = max(-(-int(length[usable].max()) // 8) * 8, 8)
        matrix = _gather(self.arr, at[usable], length[usable], width)
        words = matrix.view(np.uint64)
        # Hash the zero-padded bytes, factorise the hashes, then check every row against its
        # group's first row so that a collision can never merge two coins.
        digest = words[:, 0].copy()
        for j in range(1, words.shape[1]):
            digest *= np.uint64(0x100000001B3)
            digest ^= words[:, j]
        group, _ = pd.factorize(digest)
        first = np.empty(int(group.max()) + 1, dtype=np.int64)
        first[group[::-1]] = np.arange(len(group) - 1, -1, -1)
        if not (words == words[first[group]]).all():
            texts = matrix.view(f"S{width}").ravel()
            _, first, group = np.unique(texts, return_index=True, return_inverse=True)
            group = group.ravel()
        texts = [matrix[i].tobytes().rstrip(b"\0") for i in first.tolist()]
        with self.lock:
            lookup = np.array([table.setdefault(t, len(table)) for t in texts], dtype=np.int32)
        codes[usable] = lookup[group]
        return codes

    def finish(self, path: Path, raw: bytearray, columns: tuple[str, ...],
               quoted_fields: dict[int, list[str]], parts: list[tuple[np.ndarray, ...]]) -> History:
        parts = [p for p in parts if p]
        if parts:
            cols = [np.concatenate(c) for c in zip(*parts)]
        else:
            cols = [np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)] + [
                np.zeros(0, dtype=np.int32)] * 7
        # Ids and currencies are compared trimmed, currencies in lower case; blank is damage.
        coin_ids: dict[str, int] = {}
        currencies: dict[str, int] = {}
        coin_of = np.full(max(len(self.series_table), 1), -1, dtype=np.int32)
        currency_of = coin_of.copy()
        for text, code in self.series_table.items():
            coin_text, _, currency_text = text.decode("utf-8", "replace").partition(",")
            coin_text, currency_text = coin_text.strip(), currency_text.strip().lower()
            if coin_text and currency_text:
                coin_of[code] = coin_ids.setdefault(coin_text, len(coin_ids))
                currency_of[code] = currencies.setdefault(currency_text, len(currencies))
        coin, currency = coin_of[cols[2]], currency_of[cols[2]]
        named = coin >= 0
        skipped = self.skipped + int(np.count_nonzero(~named))
        if not named.all():
            cols = [c[named] for c in cols]
            coin, currency = coin[named], currency[named]
        line_start, time_ms, _, price_at, price_len, cap_at, cap_len, name_len, symbol_len = cols
        return History(
            path=path, raw=raw, row_start=line_start, time_ms=time_ms, coin=coin,
            currency=currency, price_at=price_at, price_len=price_len, cap_at=cap_at,
            cap_len=cap_len, name_len=name_len, symbol_len=symbol_len, coin_ids=list(coin_ids),
            currencies=list(currencies), columns=columns, skipped_lines=skipped,
            quoted_fields=quoted_fields)


def _gather(arr: np.ndarray, at: np.ndarray, length: np.ndarray, width: int) -> np.ndarray:
    """A (rows, width) byte matrix of the fields, zero after each field's length."""
    matrix = sliding_window_view(arr, width)[at]
    matrix[np.arange(width) >= length[:, None]] = 0
    return matrix


def _parse_times(arr: np.ndarray, at: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Milliseconds since the epoch (UTC) of ISO 8601 fields; _MISSING_TIME when unreadable.

    The canonical form written by utils.schema (2023-01-08T16:49:40.132Z) is decoded by byte
    position; any other spelling goes through pandas' ISO 8601 parser.
    """
    out = np.full(len(at), _MISSING_TIME, dtype=np.int64)
    if len(at) == 0:
        return out
    matrix = sliding_window_view(arr, 24)[at]
    canonical = (length == 24) & (matrix[:, _TS_SEPARATORS] == _TS_SEPARATOR_BYTES).all(axis=1)
    digits = matrix[:, _TS_DIGITS] - np.uint8(48)
    canonical &= (digits < 10).all(axis=1)
    d = digits.astype(np.int64)
    year = d[:, 0] * 1000 + d[:, 1] * 100 + d[:, 2] * 10 + d[:, 3]
    month = d[:, 4] * 10 + d[:, 5]
    day = d[:, 6] * 10 + d[:, 7]
    hour = d[:, 8] * 10 + d[:, 9]
    minute = d[:, 10] * 10 + d[:, 11]
    second = d[:, 12] * 10 + d[:, 13]
    milli = d[:, 14] * 100 + d[:, 15] * 10 + d[:, 16]
    canonical &= (month >= 1) & (month <= 12) & (day >= 1) & (day <= 31)
    canonical &= (hour < 24) & (minute < 60) & (second < 60)
    months = np.where(canonical, (year - 1970) * 12 + month - 1, 0)
    first_of_month = months.astype("datetime64[M]")
    days = first_of_month.astype("datetime64[D]") + np.where(canonical, day - 1, 0)
    canonical &= days.astype("datetime64[M]") == first_of_month  # no 31 February
    ms = days.astype(np.int64) * _DAY_MS + ((hour * 60 + minute) * 60 + second) * 1000 + milli
    out[canonical] = ms[canonical]

    other = np.flatnonzero(~canonical & (length > 0))
    if len(other):
        texts = [bytes(arr[a:a + n]).decode("utf-8", "replace")
                 for a, n in zip(at[other].tolist(), length[other].tolist())]
        parsed = pd.to_datetime(pd.Series(texts), format="ISO8601", utc=True, errors="coerce")
        valid = parsed.notna().to_numpy()
        epoch = pd.Timestamp(0, tz="UTC")
        out[other[valid]] = ((parsed[valid] - epoch) // pd.Timedelta(milliseconds=1)).to_numpy()
    return out


def _parse_numbers(history: History, at: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Float values of number fields; NaN where a field is not a finite number."""
    if len(at) == 0:
        return np.zeros(0, dtype=np.float64)
    width = max(int(length.max()), 1)
    arr = np.frombuffer(history.raw, dtype=np.uint8)
    texts = _gather(arr, at, length, width).view(f"S{width}").ravel()
    try:
        values = texts.astype(np.float64)
    except ValueError:  # at least one damaged cell: parse them one by one
        values = pd.to_numeric(pd.Series(np.char.decode(texts, "utf-8", "replace")),
                               errors="coerce").to_numpy(dtype=np.float64)
    values[~np.isfinite(values)] = np.nan
    return values


# --------------------------------------------------------------------------------------------
# Choosing what to draw


@dataclass(frozen=True)
class _Coin:
    index: int  # into History.coin_ids
    coin_id: str
    name: str
    symbol: str
    latest_cap: float

    @property
    def label(self) -> str:
        name = self.name if len(self.name) <= 24 else self.name[:23] + "…"
        if self.symbol:
            return f"{name} ({self.symbol.upper()})"
        return name

    def describe(self) -> str:
        parts = [p for p in (self.symbol.upper(), self.name) if p]
        return f"{self.coin_id} ({', '.join(parts)})" if parts else self.coin_id


@dataclass
class _Series:
    coin: _Coin
    times: np.ndarray  # int64 ms
    values: np.ndarray


def _coins_in(history: History, rows: np.ndarray) -> list[_Coin]:
    """Every coin among rows (in time order), with the name and symbol of its newest row."""
    coins = history.coin[rows]

    def newest_row(mask: np.ndarray) -> dict[int, int]:
        picked = rows[mask]
        last = ~pd.Series(history.coin[picked]).duplicated(keep="last").to_numpy()
        return dict(zip(history.coin[picked][last].tolist(), picked[last].tolist()))

    with_name = newest_row(history.name_len[rows] > 0)
    with_symbol = newest_row(history.symbol_len[rows] > 0)
    with_cap = newest_row(history.cap_len[rows] > 0)
    cap_rows = np.array(list(with_cap.values()), dtype=np.int64)
    caps = dict(zip(with_cap.keys(), _parse_numbers(
        history, history.cap_at[cap_rows], history.cap_len[cap_rows]).tolist()))
    name_k = history.columns.index("name") if "name" in history.columns else -1
    symbol_k = history.columns.index("symbol") if "symbol" in history.columns else -1

    def cell(row: int | None, k: int) -> str:
        if row is None or k < 0:
            return ""
        cells = history.line_fields(int(history.row_start[row]))
        return cells[k].strip() if k < len(cells) else ""

    result = []
    for index in np.unique(coins).tolist():
        cap = caps.get(index, math.nan)
        result.append(_Coin(index=index, coin_id=history.coin_ids[index],
                            name=cell(with_name.get(index), name_k),
                            symbol=cell(with_symbol.get(index), symbol_k),
                            latest_cap=cap if cap == cap else -1.0))
    result.sort(key=lambda c: (-c.latest_cap, c.coin_id))
    return result


def _match_coins(wanted: Sequence[str], available: list[_Coin], currency: str) -> list[_Coin]:
    """Coins named by id, symbol or name, any case; an id match wins over a symbol match."""
    tokens = [t.strip() for t in wanted if t.strip()]
    if not tokens:
        return available
    chosen: dict[int, _Coin] = {}
    unmatched = []
    for token in tokens:
        key = token.lower()
        hits = [c for c in available if c.coin_id.lower() == key]
        hits = hits or [c for c in available if key in (c.symbol.lower(), c.name.lower())]
        if not hits:
            unmatched.append(token)
        for coin in hits:
            chosen[coin.index] = coin
    if not chosen:
        shown = ", ".join(c.describe() for c in available[:25])
        more = f", and {len(available) - 25} more" if len(available) > 25 else ""
        raise NothingToPlot(f"no coin matches --plot-coins {','.join(tokens)} in {currency};"
                            f" available: {shown}{more}")
    if unmatched:
        logger.warning("no coin matches %s in %s; charting the others", ", ".join(unmatched),
                       currency)
    return [c for c in available if c.index in chosen]


def _window(options: ChartOptions, times: np.ndarray) -> tuple[int, int]:
    """The [start, end] of the window in ms, inclusive."""
    end = int(times.max())
    if options.until is not None:
        end = _midnight_ms(options.until + timedelta(days=1)) - 1
    start = np.iinfo(np.int64).min
    if options.since is not None:
        start = _midnight_ms(options.since)
    if options.days is not None:
        first_day = end // _DAY_MS - (max(options.days, 1) - 1)
        start = max(start, first_day * _DAY_MS)
    return int(start), end


def _midnight_ms(day: date) -> int:
    return int((day - date(1970, 1, 1)).days) * _DAY_MS


def _reduce(history: History, rows: np.ndarray, at: np.ndarray, length: np.ndarray,
            bucket_ms: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Last observation per coin per bucket among rows (in time order) with a value.

    Returns the rows kept, their values and the damaged rows met. Numbers are parsed only for
    the observations kept; a kept one that does not parse is damaged, so it is dropped and
    the next newest of its bucket takes its place.
    """
    candidates = rows[length[rows] > 0]
    damaged: list[np.ndarray] = []
    while True:
        times = history.time_ms[candidates]
        key = history.coin[candidates].astype(np.int64) << 32
        key |= (times // bucket_ms) - (times.min() // bucket_ms if len(times) else 0)
        kept = candidates[~pd.Series(key).duplicated(keep="last").to_numpy()]
        values = _parse_numbers(history, at[kept], length[kept])
        unreadable = np.isnan(values)
        if not unreadable.any():
            break
        damaged.append(kept[unreadable])
        candidates = candidates[~np.isin(candidates, kept[unreadable])]
    bad = np.concatenate(damaged) if damaged else np.zeros(0, dtype=np.int64)
    return kept, values, bad


def _series(history: History, coins: list[_Coin], rows: np.ndarray,
            values: np.ndarray) -> list[_Series]:
    """One series per coin, in time order, positive values only (0 means unknown)."""
    positive = values > 0
    rows, values = rows[positive], values[positive]
    order = np.lexsort((history.time_ms[rows], history.coin[rows]))
    rows, values = rows[order], values[order]
    coin_of_row = history.coin[rows]
    result = []
    for coin in coins:
        lo, hi = np.searchsorted(coin_of_row, [coin.index, coin.index + 1])
        if hi > lo:
            result.append(_Series(coin, history.time_ms[rows[lo:hi]], values[lo:hi]))
    return result


# --------------------------------------------------------------------------------------------
# Drawing


def format_money(value: float, currency: str, digits: int = 3) -> str:
    """A human amount: €1.2T, $350B, €16.95K, €0.0012; unknown currencies as a suffix code."""
    return _with_currency(_human_number(abs(value), digits), value < 0, currency)


def _with_currency(number: str, negative: bool, currency: str) -> str:
    symbol = CURRENCY_SYMBOLS.get(currency.lower())
    sign = "-" if negative else ""
    if symbol:
        return f"{sign}{symbol}{number}"
    return f"{sign}{number} {currency.upper()}"


def _price_text(value: float, currency: str) -> str:
    """A latest price for the legend: €16,951 between a thousand and a million, else €0.07204."""
    if 1e3 <= value < 1e6:
        return _with_currency(f"{value:,.0f}", False, currency)
    return format_money(value, currency, 4)


def _human_number(value: float, digits: int) -> str:
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    rounded = float(f"{value:.{digits}g}")
    for unit, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if rounded >= unit:
            return _significant(rounded / unit, digits) + suffix
    if rounded >= 1e-6:
        return _significant(rounded, digits)
    mantissa, exponent = f"{rounded:.{digits - 1}e}".split("e")
    if "." in mantissa:
        mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def _significant(value: float, digits: int) -> str:
    """value (> 0) with that many significant digits, plain notation, no trailing zeros."""
    exponent = math.floor(math.log10(value))
    decimals = max(digits - 1 - exponent, 0)
    text = f"{value:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


class _MoneyFormatter(ticker.Formatter):
    """Tick labels in currency units with just enough digits to state each tick exactly."""

    def __init__(self, currency: str) -> None:
        self.currency = currency
        self.digits = 2

    def set_locs(self, locs: Sequence[float]) -> None:
        super().set_locs(locs)
        shown = [float(v) for v in locs if v != 0]
        for digits in range(2, 13):
            # 125B at 2 digits reads "120B": more digits until every label is the tick's value.
            if all(math.isclose(float(f"{v:.{digits}g}"), v, rel_tol=1e-9) for v in shown):
                break
        self.digits = digits

    def __call__(self, x: float, pos: int | None = None) -> str:
        return format_money(x, self.currency, self.digits)


class _IndexFormatter(ticker.Formatter):
    """Plain index numbers (97.5, 100, 1,250,000): no offset, no scientific notation."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return f"{x:,.6f}".rstrip("0").rstrip(".")


def _change_text(index: float) -> str:
    """The change since the first point of an index based at 100: +4.1%, -23.4%, +1,274%."""
    change = index - 100.0
    return f"{change:+,.0f}%" if abs(change) >= 1000 else f"{change:+.1f}%"


_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf")
_BACKGROUND_LINE = "#c8c8c8"


def _style(slot: int) -> dict[str, object]:
    """Colour and dash of the slot-th highlighted line: ten colours solid, then dashed."""
    return {"color": _PALETTE[slot % len(_PALETTE)],
            "linestyle": "-" if slot < len(_PALETTE) else (0, (5, 2))}


@dataclass(frozen=True)
class _ChartText:
    title: str
    subtitle: str
    stamp: str


def _choose_scale(requested: str, series: list[_Series]) -> str:
    if requested in ("log", "linear"):
        return requested
    if not series:
        return "linear"
    low = min(float(s.values.min()) for s in series)
    high = max(float(s.values.max()) for s in series)
    return "log" if high / low > LOG_SPAN_THRESHOLD else "linear"


def _draw(series: list[_Series], *, scale: str, text: _ChartText,
          y_formatter: ticker.Formatter, value_label: Callable[[float], str],
          slots: dict[int, int] | None, empty_note: str, window_ms: tuple[int, int],
          reference: float | None = None) -> Figure:
    """One chart; series are ordered by latest value, the top ones coloured and in the legend."""
    fig = Figure(figsize=FIGURE_SIZE_INCHES, dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)
    ax = fig.add_axes(_AXES_RECT)
    ranked = sorted(series, key=lambda s: -float(s.values[-1]))
    highlighted = ranked[:LEGEND_MAX_COINS]
    background = ranked[LEGEND_MAX_COINS:]
    x_of = {id(s): _date_numbers(s.times) for s in ranked}
    if background:  # one collection instead of dozens of Line2D: much faster to build and draw
        ax.add_collection(LineCollection(
            [np.column_stack((x_of[id(s)], s.values)) for s in background if len(s.values) > 1],
            colors=_BACKGROUND_LINE, linewidths=0.8, zorder=1))
        lone = [s for s in background if len(s.values) == 1]
        if lone:
            ax.plot([x_of[id(s)][0] for s in lone], [s.values[0] for s in lone], linestyle="none",
                    marker="o", markersize=4, color=_BACKGROUND_LINE, zorder=1)
    handles, labels = [], []
    for position, s in enumerate(highlighted):
        slot = slots.get(s.coin.index, position) if slots else position
        (line,) = ax.plot(x_of[id(s)], s.values, linewidth=1.8, zorder=3,
                          marker="o" if len(s.values) == 1 else None, markersize=7,
                          **_style(slot))
        handles.append(line)
        labels.append(f"{s.coin.label}  {value_label(float(s.values[-1]))}")
    if background:
        handles.append(Line2D([], [], color=_BACKGROUND_LINE, linewidth=2))
        labels.append(f"+{len(background)} more (grey)")
    if reference is not None and series:
        ax.axhline(reference, color="#555555", linewidth=0.9, linestyle=":", zorder=2)
    if not series:
        ax.text(0.5, 0.5, empty_note, transform=ax.transAxes, ha="center", va="center",
                fontsize=13, color="#666666")
    ax.autoscale_view()

    if scale == "log" and series:
        ax.set_yscale("log")
        low = min(float(s.values.min()) for s in series)
        high = max(float(s.values.max()) for s in series)
        if high / low > 1e4:  # decades only; minor ticks there are noise, and slow to draw
            ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0,), numticks=12))
            ax.yaxis.set_minor_locator(ticker.NullLocator())
        else:
            ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_minor_locator(ticker.LogLocator(base=10, subs=(3.0, 4.0, 6.0, 7.0,
                                                                        8.0, 9.0)))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    ax.yaxis.set_major_formatter(y_formatter)

    # The window, not matplotlib's default of several years around a lone date.
    low_x, high_x = _date_numbers(np.array(window_ms, dtype=np.int64))
    margin = max((high_x - low_x) * 0.02, 0.5 if high_x - low_x < 1 else 0.0)
    ax.set_xlim(low_x - margin, high_x + margin)
    locator = mdates.AutoDateLocator(tz=timezone.utc, minticks=4, maxticks=10)
    ax.xaxis.set_major_locator(locator)
    # Days as "13 Dec" rather than a bare "13"; the title carries the years of the window.
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(
        locator, tz=timezone.utc, show_offset=False,
        formats=["%Y", "%b %Y", "%d %b", "%H:%M", "%H:%M", "%S.%f"],
        zero_formats=["", "%b %Y", "%d %b", "%d %b", "%H:%M", "%H:%M"]))
    ax.set_xlabel("Date (UTC)")
    # Title and subtitle above the plot, aligned with it; the subtitle says what the axis
    # shows, which a rotated y label squeezed beside long tick labels would not.
    fig.text(_AXES_RECT[0], 0.955, text.title, ha="left", va="top", fontsize=16, fontweight="bold")
    fig.text(_AXES_RECT[0], 0.912, text.subtitle, ha="left", va="top", fontsize=11, color="#444444")
    ax.grid(True, which="major", color="#e6e6e6", linewidth=0.8)
    ax.grid(True, which="minor", axis="y", color="#f3f3f3", linewidth=0.5)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if handles:
        legend = ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                           borderaxespad=0.0, frameon=False, fontsize=10, handlelength=2.6)
        for label in legend.get_texts():
            label.set_parse_math(False)  # a coin named "$WIF" is not TeX
    fig.text(0.99, 0.015, text.stamp, ha="right", va="bottom", fontsize=9, color="#666666")
    return fig


def _date_numbers(times_ms: np.ndarray) -> np.ndarray:
    """Matplotlib date numbers (days since its epoch) of UTC millisecond times."""
    return mdates.date2num(times_ms.astype("datetime64[ms]"))


def _save_to_temp(fig: Figure, final: Path) -> Path:
    """Write the PNG beside its final name; the caller renames it into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=".png.tmp", dir=final.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            canvas = fig.canvas
            canvas.draw()
            image = Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba(),
                                     "raw", "RGBA", 0, 1).convert("RGB")
            # A chart has few colours: a 256-colour PNG looks the same, is four times smaller
            # and encodes in half the time of matplotlib's RGBA one.
            image.quantize(256, method=Image.Quantize.FASTOCTREE).save(fh, format="png")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        fig.clear()  # release the artists now, not at the next garbage collection
    return Path(tmp)


def _day_text(moment: datetime) -> str:
    return f"{moment.day} {moment:%b %Y}"


def _window_text(start: datetime, end: datetime) -> str:
    """8 Jan 2023, 2–8 Jan 2023, 10 Dec 2022 – 8 Jan 2023, always marked UTC."""
    if start.date() == end.date():
        return f"{_day_text(end)} (UTC)"
    if (start.year, start.month) == (end.year, end.month):
        return f"{start.day}–{_day_text(end)} (UTC)"
    if start.year == end.year:
        return f"{start.day} {start:%b} – {_day_text(end)} (UTC)"
    return f"{_day_text(start)} – {_day_text(end)} (UTC)"


def _utc(ms: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(milliseconds=int(ms))


def render_charts(csv_path: Path, out_dir: Path, options: ChartOptions, *,
                  now: datetime | None = None) -> ChartReport:
    """Draw the price, market-cap and performance charts of the history into out_dir.

    Raises NoHistory when there is nothing to read yet, NothingToPlot when the currency, coins
    or window select no rows; damaged lines are skipped and counted in the report.
    """
    if options.scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, not {options.scale!r}")
    csv_path, out_dir = Path(csv_path), Path(out_dir)
    currency = options.vs_currency.strip().lower()
    history = read_history(csv_path)
    coins, rows = _select(history, options, currency)
    first, last = int(history.time_ms[rows[0]]), int(history.time_ms[rows[-1]])
    span_days = last // _DAY_MS - first // _DAY_MS + 1
    bucket_ms = _DAY_MS * max(1, math.ceil(span_days / MAX_POINTS_PER_LINE))

    damaged = np.zeros(0, dtype=np.int64)
    while True:  # a line damaged in one column is dropped from every chart
        price_rows, prices, bad_price = _reduce(
            history, rows, history.price_at, history.price_len, bucket_ms)
        cap_rows, caps, bad_cap = _reduce(
            history, rows, history.cap_at, history.cap_len, bucket_ms)
        newly = np.union1d(bad_price, bad_cap)
        if len(newly) == 0:
            break
        damaged = np.union1d(damaged, newly)
        rows = rows[~np.isin(rows, newly)]
    if len(rows) == 0:
        raise NothingToPlot(f"no readable rows in {currency} in {csv_path}:"
                            f" {len(damaged)} damaged lines skipped")
    prices_by_coin = _series(history, coins, price_rows, prices)
    caps_by_coin = _series(history, coins, cap_rows, caps)
    charted = [c for c in coins
               if any(s.coin.index == c.index for s in prices_by_coin + caps_by_coin)]
    window = (_utc(int(history.time_ms[rows[0]])), _utc(int(history.time_ms[rows[-1]])))
    charts = _Charts(currency=currency, window=window, coins=charted, bucket_ms=bucket_ms,
                     now=(now or datetime.now(timezone.utc)).astimezone(timezone.utc))
    price_scale = _choose_scale(options.scale, prices_by_coin)
    cap_scale = _choose_scale(options.scale, caps_by_coin)
    performance = [_Series(s.coin, s.times, s.values / s.values[0] * 100.0)
                   for s in prices_by_coin]
    # Linear, so relative moves compare directly; but one coin up 10,000-fold would flatten
    # every other line, so "auto" turns to log beyond two orders of magnitude here as well.
    performance_scale = _choose_scale("linear" if options.scale == "linear" else "auto",
                                      performance)
    drawings = [
        (PRICE_CHART, lambda: charts.draw(
            prices_by_coin, price_scale, title="Price", what=f"Price per coin in {charts.code}",
            empty_note="No prices in this window", y_formatter=_MoneyFormatter(currency),
            value_label=lambda v: _price_text(v, currency))),
        (MARKET_CAP_CHART, lambda: charts.draw(
            caps_by_coin, cap_scale, title="Market capitalisation",
            what=f"Market capitalisation in {charts.code}",
            empty_note="No market caps in this window", y_formatter=_MoneyFormatter(currency),
            value_label=lambda v: format_money(v, currency, 3))),
        (PERFORMANCE_CHART, lambda: charts.draw(
            performance, performance_scale, title="Performance",
            what="Price index: each coin = 100 at its first point in the window",
            empty_note="No prices in this window", y_formatter=_IndexFormatter(),
            value_label=_change_text, reference=100.0)),
    ]
    paths = _write_atomically(out_dir, drawings)

    skipped = history.skipped_lines + len(damaged)
    if skipped:
        logger.warning("skipped %s damaged lines of %s", skipped, csv_path)
    report = ChartReport(paths=paths, coins=tuple(c.coin_id for c in charted),
                         rows_used=int(len(rows)), skipped_lines=int(skipped),
                         price_scale=price_scale, market_cap_scale=cap_scale, window=window)
    logger.debug("charts: %s coins, %s rows, %s to %s -> %s", len(report.coins),
                report.rows_used, window[0], window[1], out_dir)
    return report


def _select(history: History, options: ChartOptions,
            currency: str) -> tuple[list[_Coin], np.ndarray]:
    """The coins asked for and their rows in the window, in time order (never empty)."""
    if len(history.time_ms) == 0:
        detail = f" ({history.skipped_lines} damaged lines skipped)" if history.skipped_lines else ""
        raise NoHistory(f"no history yet at {history.path}: run `python main.py` first{detail}")
    if currency not in history.currencies:
        raise NothingToPlot(f"no data in {currency} in {history.path}; currencies in the"
                            f" history: {', '.join(sorted(history.currencies))}")
    # Everything below keeps rows in time order, so "last of the day" needs no further sort.
    by_time = np.argsort(history.time_ms, kind="stable")
    in_currency = by_time[history.currency[by_time] == history.currencies.index(currency)]
    coins = _match_coins(options.coins, _coins_in(history, in_currency), currency)
    selected = np.zeros(len(history.coin_ids), dtype=bool)
    selected[[c.index for c in coins]] = True
    rows = in_currency[selected[history.coin[in_currency]]]
    times = history.time_ms[rows]
    start_ms, end_ms = _window(options, times)
    in_window = rows[(times >= start_ms) & (times <= end_ms)]
    if len(in_window) == 0:
        since = options.since or _utc(max(start_ms, int(times[0]))).date()
        until = options.until or _utc(end_ms).date()
        raise NothingToPlot(
            f"no data between {since} and {until} in {currency} for"
            f" {', '.join(c.coin_id for c in coins)}; their history runs from"
            f" {_utc(int(times[0])):%Y-%m-%d} to {_utc(int(times[-1])):%Y-%m-%d}")
    return coins, in_window


@dataclass(frozen=True)
class _Charts:
    """What the three charts share: currency, window, coins and the wording around them."""

    currency: str
    window: tuple[datetime, datetime]
    coins: list[_Coin]
    bucket_ms: int
    now: datetime

    @property
    def code(self) -> str:
        return self.currency.upper()

    def draw(self, series: list[_Series], scale: str, *, title: str, what: str,
             empty_note: str, y_formatter: ticker.Formatter,
             value_label: Callable[[float], str], reference: float | None = None) -> Figure:
        newest = self.window[1]
        stamp = f"Newest data: {newest:%Y-%m-%d %H:%M} UTC · Data: CoinGecko"
        if self.now - newest > timedelta(days=2):
            stamp = f"{stamp} · {(self.now - newest).days} days old when drawn"
        days = self.bucket_ms // _DAY_MS
        per = ("last observation of each UTC day" if days == 1
               else f"last observation of every {days} UTC days")
        count = f"{len(self.coins)} coin{'' if len(self.coins) == 1 else 's'}"
        log_note = ", log scale" if scale == "log" else ""
        text = _ChartText(title=f"{title} in {self.code} · {_window_text(*self.window)}",
                          subtitle=f"{what}{log_note} · {count} · {per}", stamp=stamp)
        # With few coins each keeps its colour in all three charts (ranked by market cap).
        slots = ({c.index: i for i, c in enumerate(self.coins)}
                 if len(self.coins) <= LEGEND_MAX_COINS else None)
        window_ms = (_epoch_ms(self.window[0]), _epoch_ms(self.window[1]))
        return _draw(series, scale=scale, text=text, y_formatter=y_formatter,
                     value_label=value_label, slots=slots, empty_note=empty_note,
                     window_ms=window_ms, reference=reference)


def _epoch_ms(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(milliseconds=1)


def _write_atomically(out_dir: Path,
                      drawings: list[tuple[str, Callable[[], Figure]]]) -> tuple[Path, ...]:
    """Save every chart under a temporary name, then rename them all into place.

    A reader never sees half a PNG, and a failure while drawing leaves the previous charts.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[tuple[Path, Path]] = []
    try:
        for name, draw in drawings:
            final = out_dir / name
            written.append((_save_to_temp(draw(), final), final))
        for tmp, final in written:
            os.replace(tmp, final)
    finally:
        for tmp, _ in written:
            tmp.unlink(missing_ok=True)
    return tuple(final for _, final in written)
