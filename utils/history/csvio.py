"""The one CSV module: reads and writes the history's rows for every consumer.

One definition of a valid row (`observation`), one record splitter (`scan`) that follows quoted
multi-line cells and steps over damaged lines one physical line at a time, so a stray hand-added
line never swallows or shifts the rows after it. Merges work on these parsed units, never on
sorted physical lines.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import hashlib
import io
import itertools
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

from utils.clock import DAY_MS
from utils.errors import LoadError, SchemaMismatch
from utils.history.files import append_bytes, describe_os_error, fsync_dir, refuse_read_only_file, refuse_unsafe
from utils.history.layout import DataLayout
from utils.history.schema import (
    COIN_ID_RE,
    COLUMNS,
    CURRENCY_RE,
    LEGACY_COLUMNS,
    SOURCE_LEGACY,
    SOURCE_MARKET_CHART,
    SOURCE_MARKETS,
    Record,
    parse_timestamp,
    rows_to_csv,
)

log = logging.getLogger(__name__)

BOM = b"\xef\xbb\xbf"
WIDTH = len(COLUMNS)
MAX_RECORD_LINES = 64  # a quoted cell may span lines; past this, the opening line is taken as damaged
TAIL_PROBE = 256
HEAD_PROBE = 4096
TEMP_MAX_AGE = 3600.0  # seconds: a temp file older than this was left by a killed process

I_NAME, I_SYMBOL, I_PRICE, I_CAP, I_TS, I_ID, I_VS, I_RANK = (
    COLUMNS.index(c)
    for c in (
        "name",
        "symbol",
        "current_price",
        "market_cap",
        "last_updated",
        "coin_id",
        "vs_currency",
        "market_cap_rank",
    )
)
_CANONICAL_TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")
_EPOCH = date(1970, 1, 1)
SOURCES = (SOURCE_MARKETS, SOURCE_MARKET_CHART, SOURCE_LEGACY)


class Observation(NamedTuple):
    """What the index keeps of one valid row."""

    coin_id: str
    vs_currency: str
    ts_ms: int
    price: float | None
    market_cap: float | None
    rank: int | None
    name: str
    symbol: str


_new_tuple = tuple.__new__
_day_ms_cache: dict[str, int] = {}
# A million-row history repeats its minutes (every coin of a snapshot) and its "SS.mmmZ" endings: parsing each
# once makes the index build several times faster. Only parts of timestamps that parsed are cached.
_minute_ms_cache: dict[str, int] = {}  # "YYYY-MM-DDTHH:MM:" -> ms of that minute
_second_ms_cache: dict[str, int] = {}  # "SS.mmmZ" -> ms into the minute
_CACHE_MAX = 100_000


def timestamp_ms(text: str) -> int:
    """Milliseconds since 1970 UTC of an ISO 8601 timestamp; the canonical form takes a fast path. Raises ValueError."""
    if len(text) == 24:
        # Both halves cached means both were parts of canonical timestamps, so this one is canonical too.
        minute = _minute_ms_cache.get(text[:17])
        if minute is not None:
            second = _second_ms_cache.get(text[17:])
            if second is not None:
                return minute + second
        if _CANONICAL_TS.match(text):
            day = text[:10]
            base = _day_ms_cache.get(day)
            if base is None:
                base = (date.fromisoformat(day) - _EPOCH).days * DAY_MS
                if len(_day_ms_cache) < _CACHE_MAX:
                    _day_ms_cache[day] = base
            hours, minutes, seconds, millis = int(text[11:13]), int(text[14:16]), int(text[17:19]), int(text[20:23])
            if hours > 23 or minutes > 59 or seconds > 59:
                raise ValueError(f"not a time: {text!r}")
            minute, second = base + (hours * 60 + minutes) * 60_000, seconds * 1000 + millis
            if len(_minute_ms_cache) < _CACHE_MAX:
                _minute_ms_cache[text[:17]] = minute
            if len(_second_ms_cache) < _CACHE_MAX:
                _second_ms_cache[text[17:]] = second
            return minute + second
    moment = parse_timestamp(text)
    return (
        (moment - datetime(1970, 1, 1, tzinfo=timezone.utc)).days * DAY_MS
        + (moment.hour * 3600 + moment.minute * 60 + moment.second) * 1000
        + moment.microsecond // 1000
    )


class _Unreadable(ValueError):
    """A number cell that holds something else."""


def _number(text: str) -> float | None:
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise _Unreadable(text) from None
    if value != value or value in (float("inf"), float("-inf")):
        raise _Unreadable(text)
    return value


_valid_series: set[tuple[str, str]] = set()  # (coin_id, vs_currency) pairs that passed the patterns


def _valid_pair(coin_id: str, vs: str) -> bool:
    """Whether a coin id and currency have the history's forms (remembered once seen)."""
    if (coin_id, vs) in _valid_series:
        return True
    if type(coin_id) is not str or type(vs) is not str or not COIN_ID_RE.match(coin_id) or not CURRENCY_RE.match(vs):
        return False
    if len(_valid_series) < _CACHE_MAX:
        _valid_series.add((coin_id, vs))
    return True


def observation(cells: list[str]) -> Observation | None:
    """The observation a row holds, or None when the row is not a valid history row (the one definition).

    Valid: our 17 cells; a CoinGecko-style id and a lower-case currency code; a last_updated that is an
    ISO 8601 time; a price and market cap that are empty or finite numbers; a rank empty or a whole number.
    """
    if len(cells) != WIDTH:
        return None
    coin_id, vs = cells[I_ID], cells[I_VS]
    if (coin_id, vs) not in _valid_series and not _valid_pair(coin_id, vs):
        return None
    text = cells[I_TS]
    # timestamp_ms's cached fast path, inlined: this runs for each of a million rows in an index build.
    minute = _minute_ms_cache.get(text[:17]) if len(text) == 24 else None
    second = _second_ms_cache.get(text[17:]) if minute is not None else None
    try:
        ts = minute + second if second is not None else timestamp_ms(text)
        price, cap = _number(cells[I_PRICE]), _number(cells[I_CAP])
    except (ValueError, OverflowError):
        return None
    rank_text = cells[I_RANK]
    if rank_text and not rank_text.isdigit():  # the transform's rule: a whole number, however large
        return None
    # tuple.__new__ skips the NamedTuple's Python-level __new__: a third of the cost of a row in the index build.
    return _new_tuple(
        Observation,
        (
            coin_id,
            vs,
            ts,
            price,
            cap,
            int(rank_text) if rank_text and len(rank_text) < 10 else None,
            cells[I_NAME],
            cells[I_SYMBOL],
        ),
    )


_BIG = 10**308  # an int within this is a finite float (float64 reaches 1.8e308)


def record_observation(record: Record) -> Observation | None:
    """observation(record.to_row()) without writing the cells and reading them back (a run's 17,000 new rows):
    the same rule, taken directly for a record of plain values, and by the cells otherwise."""
    coin_id, vs = record.coin_id, record.vs_currency
    price, cap, rank = record.current_price, record.market_cap, record.market_cap_rank
    if (
        _valid_pair(coin_id, vs)
        and (
            price is None
            or (type(price) is float and price - price == 0)
            or (type(price) is int and -_BIG < price < _BIG)
        )
        and (cap is None or (type(cap) is float and cap - cap == 0) or (type(cap) is int and -_BIG < cap < _BIG))
        and (rank is None or (type(rank) is int and rank >= 0))
        and type(record.name) is str
        and type(record.symbol) is str
        and type(record.last_updated) is str
    ):
        try:
            ts = timestamp_ms(record.last_updated)
        except (ValueError, OverflowError):
            return None
        return _new_tuple(
            Observation,
            (
                coin_id,
                vs,
                ts,
                price if type(price) is not int else float(price),  # the cell's float() of str(int): the same float
                cap if type(cap) is not int else float(cap),
                rank if rank is None or rank < 1_000_000_000 else None,
                record.name,
                record.symbol,
            ),
        )
    return observation(record.to_row())


@dataclass(frozen=True, slots=True)
class Unit:
    """One record of the file (or one damaged physical line): its byte span and its cells (None when damaged)."""

    start: int
    end: int
    cells: list[str] | None


def _split(text: str) -> list[str] | None:
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error:  # a cell past the csv module's field size limit (128 KB): not a row of ours
        return None
    return rows[0] if len(rows) == 1 else None


def scan(data: bytes, base: int = 0, width: int = WIDTH) -> Iterator[Unit]:
    """Split CSV bytes (starting at a line start) into records with their offsets (base + position).

    A line with balanced quotes is one record. A line with an open quote continues onto the next
    lines until the quotes balance (a quoted multi-line cell); if that does not give one record of
    `width` cells within MAX_RECORD_LINES, the opening line alone is damaged and the scan goes on
    from the next line, so damage never spreads.
    """
    for start, end, cells in _records(data, width):
        yield Unit(base + start, base + end, cells)


def _records(data: bytes, width: int = WIDTH) -> Iterator[tuple[int, int, list[str] | None]]:
    """scan's splitting as plain (start, end, cells) tuples: the index build reads a million of them."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    n = len(lines)
    pos = 0
    i = 0
    while i < n:
        line = lines[i]
        quotes = line.count(b'"')
        if quotes % 2 == 0:
            end = pos + len(line) + 1
            text = line.decode("utf-8", "replace").rstrip("\r")
            yield pos, end, text.split(",") if not quotes else _split(text)
            pos, i = end, i + 1
            continue
        # An open quote: gather lines until the quotes balance.
        j, total = i + 1, quotes
        while j < n and j - i < MAX_RECORD_LINES:
            total += lines[j].count(b'"')
            j += 1
            if total % 2 == 0:
                break
        if total % 2 == 0:
            chunk = b"\n".join(lines[i:j])
            cells = _split(chunk.decode("utf-8", "replace").replace("\r\n", "\n"))
            if cells is not None and len(cells) == width:
                end = pos + len(chunk) + 1
                yield pos, end, cells
                pos, i = end, j
                continue
        end = pos + len(line) + 1
        # A quote inside an unquoted cell is a literal character, as the csv module reads it.
        alone = _split(line.decode("utf-8", "replace").rstrip("\r")) if not line.startswith(b'"') else None
        literal = alone is not None and len(alone) == width and b',"' not in line
        yield pos, end, alone if literal else None
        pos, i = end, i + 1


def observations(data: bytes, base: int = 0) -> tuple[list[Observation], int]:
    """The valid observations in CSV data lines, and how many lines were damaged."""
    found, damaged, _ = _observe(data, len(data) + 1)
    return found, damaged


def _observe(data: bytes, stop: int) -> tuple[list[Observation], int, int]:
    """observations() of the records that start before `stop`, and where the first record not read starts."""
    found: list[Observation] = []
    append = found.append
    damaged = 0
    for start, _, cells in _records(data):
        if start >= stop:
            return found, damaged, start
        obs = observation(cells) if cells is not None else None
        if obs is None:
            if cells is None or any(c.strip() for c in cells):
                damaged += 1
            continue
        append(obs)
    return found, damaged, len(data)


def read_observations(
    fh: io.BufferedIOBase, start: int, end: int, chunk_bytes: int = 8 << 20
) -> Iterator[tuple[list[Observation], int]]:
    """observations() of the file's bytes [start, end) (start at a line start), a chunk at a time.

    Exactly what one read of the whole span gives: a record is read only when the MAX_RECORD_LINES
    lines it may span are all in the chunk; the rest is carried into the next one.
    """
    fh.seek(start)
    carry = b""
    pos = start
    while True:
        block = fh.read(min(chunk_bytes, end - pos)) if pos < end else b""
        pos += len(block)
        data = carry + block if carry else block
        if pos >= end or not block:
            found, damaged, _ = _observe(data, len(data) + 1)
            yield found, damaged
            return
        safe = _records_end(data)
        if not safe:
            carry = data  # too few lines yet: read on
            continue
        found, damaged, taken = _observe(data, safe)
        carry = data[taken:]
        yield found, damaged


def _records_end(data: bytes) -> int:
    """Where the line MAX_RECORD_LINES complete lines from the end of `data` starts: every record before it is
    whole (a quoted cell spans at most MAX_RECORD_LINES lines). 0 when `data` has too few lines yet."""
    cut = len(data)
    for _ in range(MAX_RECORD_LINES + 1):
        cut = data.rfind(b"\n", 0, cut)
        if cut < 0:
            return 0
    return cut + 1


@dataclass(frozen=True)
class Columns:
    """The observations of a block of plain rows, column by column (the fast path of read_columns)."""

    pairs: list[tuple[str, str]]  # the (coin_id, vs_currency) pairs of the block
    pair: Any  # numpy int64: each row's index into pairs
    ts_ms: Any  # numpy int64
    price: Any  # numpy float64, NaN for an empty cell
    cap: Any
    rank: Any  # numpy int64, -1 for none
    name: Any  # pyarrow string arrays
    symbol: Any
    readable_end: int = -1  # the file offset where the block ends when a standard reader takes it all, else -1

    def __len__(self) -> int:
        return len(self.pair)


def readable_lines(data: bytes) -> bool:
    """Whether whole lines that pyarrow's reader took as rows of the header's width, with no quote or carriage
    return (fast_columns' block), also pass the standard-reader check (_plain_lines): no blank line, no NUL, valid
    UTF-8, no line near the csv module's cell limit. C-speed checks only; a line of 16-32 KB may be refused here
    and is then checked by reader_problems_in as before."""
    if not data.endswith(b"\n") or data.startswith(b"\n") or b"\n\n" in data or b"\x00" in data or not _utf8(data):
        return False
    window = FIELD_LIMIT_BYTES // 2  # a line longer than FIELD_LIMIT_BYTES holds a whole window without a newline
    return all(data.find(b"\n", at, at + window) >= 0 for at in range(0, len(data) - window, window))


_FAST_COLUMNS = (
    "name",
    "symbol",
    "current_price",
    "market_cap",
    "last_updated",
    "coin_id",
    "vs_currency",
    "market_cap_rank",
)
_TS_DIGITS = (0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18, 20, 21, 22)
_TS_MARKS = {4: b"-", 7: b"-", 10: b"T", 13: b":", 16: b":", 19: b".", 23: b"Z"}


def _plain_table(data: bytes, columns: tuple[str, ...]) -> Any:
    """Whole lines of plain rows as a pyarrow table of these columns (text), read by pyarrow's C reader; None
    when there is nothing to read, or a line may need the careful path (a quote, a carriage return, another
    width, bytes that are not UTF-8)."""
    if not data or b'"' in data or b"\r" in data:
        return None
    import pyarrow as pa  # start-up time: only reading a block of the history needs pyarrow
    import pyarrow.csv as pacsv

    try:
        table = pacsv.read_csv(
            io.BytesIO(data),
            read_options=pacsv.ReadOptions(
                column_names=list(COLUMNS),
                block_size=max(1 << 20, len(data) + 1),
                use_threads=False,  # one block at a time: a thread pool only adds CPU time (2x on a busy machine)
            ),
            parse_options=pacsv.ParseOptions(
                quote_char=False,
                double_quote=False,
                escape_char=False,
                newlines_in_values=False,
                ignore_empty_lines=True,
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in columns},
                include_columns=list(columns),
                strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError):
        return None
    return table if table.num_rows else None


def fast_columns(data: bytes) -> Columns | None:
    """The observations of whole lines of plain rows, parsed by pyarrow's C reader; None when any line needs the
    careful path (a quote, a carriage return, a width, id, time or number the one definition would not take as
    written), so that the careful path reads this block instead and both give the same observations."""
    table = _plain_table(data, _FAST_COLUMNS)
    if table is None:
        return None
    # start-up time: numpy and pyarrow load only when a block of the CSV is read (an index build or catch-up)
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    found, pair_index = pair_codes(
        table.column("coin_id").combine_chunks(), table.column("vs_currency").combine_chunks()
    )
    pairs: list[tuple[str, str]] = []
    for pair in found:
        if pair not in _valid_series:
            if not COIN_ID_RE.match(pair[0]) or not CURRENCY_RE.match(pair[1]):
                return None
            if len(_valid_series) < _CACHE_MAX:
                _valid_series.add(pair)
        pairs.append(pair)
    ts = _fast_times(table.column("last_updated").combine_chunks(), np, pc)
    price, cap = (_fast_numbers(table.column(c).combine_chunks(), np, pa, pc) for c in ("current_price", "market_cap"))
    rank_text = table.column("market_cap_rank").combine_chunks()
    if (
        ts is None
        or price is None
        or cap is None
        or not pc.all(pc.match_substring_regex(rank_text, r"^[0-9]*$")).as_py()
    ):
        return None
    length = pc.utf8_length(rank_text)
    kept = pc.if_else(pc.and_(pc.greater(length, 0), pc.less(length, 10)), rank_text, pa.scalar(None, pa.string()))
    rank = pc.fill_null(pc.cast(kept, pa.int64()), -1).to_numpy()
    return Columns(
        pairs,
        pair_index,
        ts,
        price,
        cap,
        rank,
        table.column("name").combine_chunks(),
        table.column("symbol").combine_chunks(),
    )


def pair_codes(coins: Any, currencies: Any) -> tuple[list[tuple[str, str]], Any]:
    """The distinct (coin, currency) pairs of two Arrow string arrays, and each row's index into them (numpy
    int64): the two columns are dictionary-encoded apart (cheaper than encoding joined strings) and their codes
    combined."""
    import numpy as np  # start-up time: only reading a block of the history needs numpy

    coins, currencies = coins.dictionary_encode(), currencies.dictionary_encode()
    width = len(currencies.dictionary)
    distinct, index = np.unique(
        coins.indices.to_numpy().astype(np.int64) * width + currencies.indices.to_numpy(), return_inverse=True
    )
    coin_names, currency_names = coins.dictionary.to_pylist(), currencies.dictionary.to_pylist()
    pairs = [(coin_names[code // width], currency_names[code % width]) for code in distinct.tolist()]
    return pairs, index.astype(np.int64).reshape(-1)


def _fast_times(column: Any, np: Any, pc: Any) -> Any:
    """Milliseconds of canonical timestamps (2023-01-08T16:49:40.132Z) as int64, or None when any is not one."""
    if column.null_count or pc.min_max(pc.utf8_length(column)).as_py() != {"min": 24, "max": 24}:
        return None
    offsets = np.frombuffer(column.buffers()[1], dtype=np.int32)[column.offset : column.offset + len(column) + 1]
    raw = np.frombuffer(column.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]].reshape(-1, 24)
    for position, mark in _TS_MARKS.items():
        if not (raw[:, position] == mark[0]).all():
            return None
    digits = raw[:, _TS_DIGITS].astype(np.int64) - 48
    if ((digits < 0) | (digits > 9)).any() or (digits[:, :4].sum(axis=1) == 0).any():
        return None  # not digits, or the year 0000 that Python's dates do not have
    year = digits[:, 0] * 1000 + digits[:, 1] * 100 + digits[:, 2] * 10 + digits[:, 3]
    month, day = digits[:, 4] * 10 + digits[:, 5], digits[:, 6] * 10 + digits[:, 7]
    leap = ((year % 4 == 0) & (year % 100 != 0)) | (year % 400 == 0)
    month_days = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])[np.clip(month, 0, 12)] + (
        leap & (month == 2)
    )
    if ((month < 1) | (month > 12) | (day < 1) | (day > month_days)).any():
        return None  # 2023-02-30 and the like: the careful path says what it is
    # Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil, vectorised).
    y = year - (month <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (month + np.where(month > 2, -3, 9)) + 2) // 5 + day - 1
    days = era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
    hours, minutes, seconds = (digits[:, i] * 10 + digits[:, i + 1] for i in (8, 10, 12))
    millis = digits[:, 14] * 100 + digits[:, 15] * 10 + digits[:, 16]
    if (hours > 23).any() or (minutes > 59).any() or (seconds > 59).any():
        return None
    return days * DAY_MS + ((hours * 60 + minutes) * 60 + seconds) * 1000 + millis


def _fast_numbers(column: Any, np: Any, pa: Any, pc: Any) -> Any:
    """Empty or finite numbers as float64 (NaN for empty), or None when a cell holds anything else."""
    empty = pc.equal(column, "")
    try:
        values = pc.cast(pc.if_else(empty, pa.scalar(None, pa.string()), column), pa.float64())
    except (pa.ArrowInvalid, ValueError):
        return None
    out = values.to_numpy(zero_copy_only=False)
    if not np.isfinite(out[~np.asarray(empty.to_numpy(zero_copy_only=False), dtype=bool)]).all():
        return None  # nan, inf written out: not a number of the history
    return out


def read_columns(
    fh: io.BufferedIOBase, start: int, end: int, chunk_bytes: int = 4 << 20
) -> Iterator[Columns | tuple[list[Observation], int]]:
    """read_observations() with a fast path: a block of plain rows (no quote anywhere) comes back as Columns
    parsed at C speed; any other block goes the careful way, as (observations, damaged lines)."""
    fh.seek(start)
    pos = start
    carry = b""
    while pos < end or carry:
        block = fh.read(min(chunk_bytes, end - pos)) if pos < end else b""
        pos += len(block)
        data = carry + block if carry else block
        last = len(data) if pos >= end or not block else data.rfind(b"\n") + 1
        if last <= 0:
            carry = data  # no whole line yet: read on
            continue
        if b'"' not in data:  # no quoted cell can span the cut: every line is one record
            columns = fast_columns(data[:last])
            if columns is not None:
                carry = data[last:]
                if readable_lines(data[:last]):
                    columns = dataclasses.replace(columns, readable_end=pos - len(carry))
                yield columns
                continue
        if pos >= end or not block:
            found, damaged, _ = _observe(data, len(data) + 1)
            yield found, damaged
            return
        safe = len(data)
        for _ in range(MAX_RECORD_LINES + 1):
            safe = data.rfind(b"\n", 0, safe)
            if safe < 0:
                break
        if safe < 0:
            carry = data
            continue
        found, damaged, taken = _observe(data, safe + 1)
        carry = data[taken:]
        yield found, damaged


# -- what a standard reader (the csv module, pandas) cannot read ----------------------------------------

FIELD_LIMIT = 131072  # the csv module's default field size limit


def reader_problem(raw: bytes, cells: list[str] | None) -> str | None:
    """Why a record (or damaged line) of the file would break a standard reader or not read as a row of the
    header's width, or None when it reads as one. `raw` is its bytes, with its newline."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes that are not UTF-8 text"
    if "\x00" in text:
        return "a NUL byte"
    body = text[:-1] if text.endswith("\n") else text
    body = body[:-1] if body.endswith("\r") else body
    if cells is not None and len(cells) == WIDTH:
        if '"' not in body and ("\r" in body):
            return "a carriage return inside the line"
        if any(len(cell) > FIELD_LIMIT for cell in cells):
            return "a cell over the csv module's 128 KB limit"
        return None
    if not body.strip():
        return "a blank line"
    if body.count('"') % 2:
        return "an unbalanced quote"
    try:
        rows = list(csv.reader(io.StringIO(body, newline=""), strict=True))
    except csv.Error as exc:
        return (
            "a cell over the csv module's 128 KB limit"
            if "field larger" in str(exc)
            else f"a line the csv module refuses ({exc})"
        )
    if len(rows) != 1:
        return "a line that is not one record"
    return f"{len(rows[0])} cells where the header has {WIDTH}"


def reader_problems(data: bytes, base: int = 0) -> list[tuple[int, int, str]]:
    """(start, end, reason) of each record of CSV data lines (from a line start) that a standard reader
    would choke on or read as a row of another width; offsets are base + position."""
    found = []
    for unit in scan(data, base):
        reason = reader_problem(data[unit.start - base : unit.end - base], unit.cells)
        if reason is not None:
            found.append((unit.start, unit.end, reason))
    return found


# Whole lines of WIDTH plain cells (no quote, NUL or carriage return): what every line we write looks like.
FIELD_LIMIT_BYTES = 131072 // 4  # a cell this long in bytes is within the csv module's limit in any encoding


def _plain_lines(data: bytes) -> bool:
    """Whole lines of WIDTH plain cells (no quote, NUL or carriage return, valid UTF-8, no line near the csv
    module's cell limit): what every line this program writes looks like. C-speed checks only."""
    if not data.endswith(b"\n") or b'"' in data or b"\x00" in data or b"\r" in data or not _utf8(data):
        return False
    lines = data.split(b"\n")
    lines.pop()
    return set(map(bytes.count, lines, itertools.repeat(b","))) == {WIDTH - 1} and max(map(len, lines)) <= (
        FIELD_LIMIT_BYTES
    )


def reader_problems_in(
    fh: io.BufferedIOBase, start: int, end: int, chunk_bytes: int = 8 << 20
) -> list[tuple[int, int, str]]:
    """reader_problems() of the file's bytes [start, end) (start at a line start), a chunk at a time: memory stays
    near chunk_bytes however long the span, and a chunk of plain UTF-8 lines of our width is passed at C speed."""
    fh.seek(start)
    found: list[tuple[int, int, str]] = []
    carry = b""
    base = pos = start
    while True:
        block = fh.read(min(chunk_bytes, end - pos)) if pos < end else b""
        pos += len(block)
        data = carry + block if carry else block
        last = pos >= end or not block
        cut = len(data)
        if not last:
            cut = _records_end(data)
            if not cut:
                carry = data  # too few lines yet: read on
                continue
        taken = cut
        if not (cut and _plain_lines(data[:cut])):
            taken = len(data)
            for unit in scan(data, base):
                if unit.start - base >= cut and not last:
                    taken = unit.start - base
                    break
                reason = reader_problem(data[unit.start - base : unit.end - base], unit.cells)
                if reason is not None:
                    found.append((unit.start, unit.end, reason))
        if last:
            return found
        carry = data[taken:]
        base += taken


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# -- the file: header, tail, temp files ------------------------------------------------------------


def read_header(csv_path: Path) -> tuple[str, ...] | None:
    """The CSV's column names, or None if the file is missing or empty."""
    try:
        with open(csv_path, "rb") as fh:
            first = fh.readline(1 << 16)
            # A blank first line before data is no header, and the file is not empty: never start it afresh.
            blank_before_data = not first.lstrip(BOM).strip() and bool(fh.read().strip())
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LoadError(describe_os_error(exc, csv_path, "read")) from None
    if blank_before_data:
        raise SchemaMismatch(
            f"{csv_path} starts with a blank line, not its header: delete the blank lines at the "
            "top of the file; nothing was changed"
        )
    if first.startswith(BOM):
        first = first[len(BOM) :]
    if not first.strip():
        return None
    try:
        return tuple(c.strip() for c in next(csv.reader([first.decode("utf-8").rstrip("\r\n")])))
    except (UnicodeDecodeError, StopIteration, csv.Error):
        raise SchemaMismatch(
            f"{csv_path} does not start with a CSV header: move it away or point --data-dir elsewhere"
        ) from None


def check_header(csv_path: Path | str, header: tuple[str, ...]) -> None:
    """Refuse a CSV whose columns are not ours, naming what is missing and extra."""
    if header == COLUMNS:
        return
    missing = [c for c in COLUMNS if c not in header]
    extra = [c for c in header if c not in COLUMNS]
    detail = []
    if missing:
        detail.append("missing " + ", ".join(missing))
    if extra:
        detail.append("extra " + ", ".join(extra))
    if not detail:
        detail.append("the columns are in another order")
    raise SchemaMismatch(
        f"{csv_path} has columns this version does not write ({'; '.join(detail)}); "
        "nothing was changed: move the file away or use another --data-dir"
    )


def header_kind(csv_path: Path) -> str:
    """'missing', 'empty', 'ours' or 'legacy'; raises SchemaMismatch for a foreign file (the same error everywhere)."""
    if not csv_path.exists():
        return "missing"
    header = read_header(csv_path)
    if header is None:
        return "empty"
    if header == LEGACY_COLUMNS:
        return "legacy"
    check_header(csv_path, header)
    return "ours"


def header_length(data: bytes) -> int:
    """Bytes of the header line (and a BOM) at the start of a file's content."""
    end = data.find(b"\n")
    return len(data) if end < 0 else end + 1


def probe_hashes(fh: io.BufferedReader, size: int) -> tuple[str, str]:
    """Hashes of the file's first bytes and of the bytes that end at `size`: the file is still the one indexed."""
    fh.seek(0)
    head = hashlib.sha256(fh.read(min(size, HEAD_PROBE))).hexdigest()[:32]
    start = max(0, size - TAIL_PROBE)
    fh.seek(start)
    tail = hashlib.sha256(fh.read(size - start)).hexdigest()[:32]
    return head, tail


def quarantine(layout: DataLayout, what: str, data: bytes) -> None:
    """Keep bytes the history cannot hold in the quarantine file, with a line that says where they came from."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    append_bytes(
        layout.quarantine,
        f"# {stamp} {what}:\n".encode() + data + (b"" if data.endswith(b"\n") else b"\n"),
        "quarantine file",
        layout,
    )


def repair_torn_tail(layout: DataLayout) -> int:
    """Move a last line without its newline (a write cut short) to the quarantine file. Returns bytes moved."""
    csv_path = layout.csv
    with open(csv_path, "rb") as probe:  # read-only first: a sound file is never opened for writing here
        size = probe.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        probe.seek(size - 1)
        if probe.read(1) == b"\n":
            return 0
    with open(csv_path, "rb+") as fh:
        size = fh.seek(0, os.SEEK_END)
        pos, cut = size, 0
        while pos > 0:  # the last newline, reading backwards in blocks
            step = min(65536, pos)
            pos -= step
            fh.seek(pos)
            block = fh.read(step)
            idx = block.rfind(b"\n")
            if idx >= 0:
                cut = pos + idx + 1
                break
        if cut == 0:
            fh.seek(0)
            only = fh.read()
            if only.lstrip(BOM).rstrip(b"\r").decode("utf-8", "replace").split(",") == list(COLUMNS):
                fh.write(b"\n")  # our header alone, without its newline (a hand-made file): complete it
                fh.flush()
                os.fsync(fh.fileno())
                return 0
            raise SchemaMismatch(f"{csv_path} holds no complete line, not even a header: move it away")
        fh.seek(cut)
        torn = fh.read()
        if complete_row(torn):
            fh.write(b"\n")  # a complete, valid row that only lacks its newline: completed, not torn
            fh.flush()
            os.fsync(fh.fileno())
            log.info("completed the last line of %s with its newline", csv_path)
            return 0
        quarantine(layout, f"torn last line of {csv_path.name} at byte {cut}", torn)
        fh.truncate(cut)
        fh.flush()
        os.fsync(fh.fileno())
    log.warning(
        "the last line of %s was cut short by an interrupted write; moved its %d bytes to %s",
        csv_path,
        len(torn),
        layout.quarantine,
    )
    return len(torn)


def complete_row(line: bytes) -> bool:
    """A last line without its newline that is a whole valid row: our width, a valid observation, a known source."""
    try:
        text = line.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError:
        return False
    if "\n" in text or "\x00" in text:
        return False
    cells = text.split(",") if '"' not in text else _split(text)
    return (
        cells is not None
        and observation(cells) is not None
        and cells[-1] in SOURCES
        and reader_problem(line + b"\n", cells) is None
    )


def remove_stale_temp_files(layout: DataLayout, now: float | None = None) -> int:
    """Delete this program's temporary files older than an hour (left by a killed process). Call under the lock."""
    now = time.time() if now is None else now
    removed = 0
    for stale in layout.temp_files():
        try:
            if now - stale.stat().st_mtime < TEMP_MAX_AGE:
                continue
            stale.unlink()
            removed += 1
            log.info("removed %s, left by an interrupted write", stale.name)
        except OSError:
            pass
    return removed


def refuse_symlink(path: Path, what: str) -> None:
    """The one policy for the files we write (utils.history.files.refuse_unsafe): never through a link."""
    refuse_unsafe(path, what)


def refuse_read_only(path: Path) -> None:
    """A CSV its owner made read-only is never replaced or appended to."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return
    if not mode & 0o222:
        raise LoadError(
            describe_os_error(OSError(errno.EACCES, "read-only"), path, "write to")
            + " (the file is read-only; make it writable with chmod u+w to let the pipeline add to it)"
        )


# -- merges ---------------------------------------------------------------------------------------


def merged_body(body: bytes, records: list[Record]) -> bytes:
    """Data lines with `records` merged in, every record in time order (a stable sort of parsed records).

    A record spanning several lines moves whole; a damaged line travels with the record before it,
    so it stays where its neighbours are. The records must be new (not in the body). Pure: no I/O.
    """
    if body and not body.endswith(b"\n"):
        body += b"\n"
    lead_end = 0  # damaged lines before the first valid record stay first
    times: list[int] = []
    spans: list[tuple[int, int]] = []
    for unit in scan(body):
        obs = observation(unit.cells) if unit.cells is not None else None
        if obs is None:
            if spans:
                spans[-1] = (spans[-1][0], unit.end)
            else:
                lead_end = unit.end
            continue
        times.append(obs.ts_ms)
        spans.append((unit.start, unit.end))
    new = [rows_to_csv([r]).encode("utf-8") for r in records]
    times.extend(timestamp_ms(r.last_updated) for r in records)
    order = sorted(range(len(times)), key=times.__getitem__)  # stable: equal times keep their order
    out = io.BytesIO()
    out.write(body[:lead_end])
    existing = len(spans)
    for i in order:
        if i < existing:
            start, end = spans[i]
            out.write(body[start:end])
        else:
            out.write(new[i - existing])
    return out.getvalue()


def line_blocks(fh: io.BufferedIOBase, chunk_bytes: int = 8 << 20) -> Iterator[bytes]:
    """A file's bytes from the current position in blocks of whole lines of about chunk_bytes (the last block may
    lack its newline): a pass over every row in bounded memory. A quoted cell spanning lines may be cut between
    blocks; labelled_body leaves such a record's bytes as they are (it has a name, so it needs no filling)."""
    carry = b""
    while True:
        block = fh.read(chunk_bytes)
        data = carry + block if carry else block
        if not block:
            if data:
                yield data
            return
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            carry = data  # no line end yet: read on
            continue
        carry = data[cut:]
        yield data[:cut]


def labelled_body(body: bytes, labels: dict[str, tuple[str, str]]) -> tuple[bytes, int, set[str]]:
    """Data lines with empty name and symbol cells filled from `labels` (coin id -> (name, symbol)).

    Only the rows filled are written anew; every other line keeps its bytes, and nothing moves. Returns (the
    body, rows filled, coins that still have a row without a name or symbol and no label at all). Pure: no I/O.
    """
    out = io.BytesIO()
    pos = filled = 0
    left: set[str] = set()
    for unit in scan(body):
        cells = unit.cells
        if cells is None or len(cells) != WIDTH or (cells[I_NAME] and cells[I_SYMBOL]) or observation(cells) is None:
            continue
        label = labels.get(cells[I_ID])
        if label is None:
            left.add(cells[I_ID])
            continue
        row = list(cells)
        row[I_NAME] = row[I_NAME] or label[0]
        row[I_SYMBOL] = row[I_SYMBOL] or label[1]
        if row == cells:
            continue
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(row)
        out.write(body[pos : unit.start])
        out.write(buf.getvalue().encode("utf-8"))
        pos = unit.end
        filled += 1
    if not filled:
        return body, 0, left
    out.write(body[pos:])
    return out.getvalue(), filled, left


# -- a merge in bounded memory ----------------------------------------------------------------------
#
# merge_file gives exactly the bytes merged_body gives for the whole file, reading and writing it a block at a time.
# An item is a valid record with the damaged lines after it; an item's key is its time in ms times two, plus one for
# a new record, so that one sort by key is merged_body's stable sort by time with existing lines before new records.
# One pass (a replacement selection, a block at a time) writes the items in key order into the output while the
# file's items come nearly in time order (what every file this program writes looks like: a sorted history plus
# appended snapshots whose coins' times interleave within minutes); an item that comes later than the items already
# written and holds an earlier time goes to a sorted run in a temp file, and a k-way merge of the output and the
# runs then gives the final file. Equal keys keep file order: an earlier run holds the earlier lines.

MERGE_BLOCK = 4 << 20  # bytes of the history read at a time (pyarrow takes about 15x a block while it parses one)
MERGE_KEEP = 1 << 15  # items held back, unwritten, to take later items of earlier times (about 7 MB)
MERGE_SPILL = 32 << 20  # bytes of out-of-order items gathered before they are sorted into a run file
MERGE_FANIN = 1 << 17  # items read at a time by the final merge, shared by its runs


_TIME_COLUMNS = ("current_price", "market_cap", "last_updated", "coin_id", "vs_currency", "market_cap_rank")


def fast_times(data: bytes) -> Any:
    """The times in ms (numpy int64) of whole lines of plain rows when every line is a valid row by the one
    definition, as fast_columns judges it, else None. What a merge needs of a block: the same rule, checked in C
    (the ids and currencies by pyarrow's regular expressions, not a table of pairs), and no names kept."""
    table = _plain_table(data, _TIME_COLUMNS)
    if table is None:
        return None
    # start-up time: only a merge's block reader needs numpy and pyarrow
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    for name, pattern in (
        ("coin_id", COIN_ID_RE.pattern),
        ("vs_currency", CURRENCY_RE.pattern),
        ("market_cap_rank", r"^[0-9]*\Z"),
    ):
        column = table.column(name).combine_chunks()
        if not pc.all(pc.match_substring_regex(column, pattern.replace("\\Z", "$"))).as_py():
            return None
    ts = _fast_times(table.column("last_updated").combine_chunks(), np, pc)
    if ts is None:
        return None
    for name in ("current_price", "market_cap"):
        if _fast_numbers(table.column(name).combine_chunks(), np, pa, pc) is None:
            return None
    return ts


def _valid_starts(data: bytes, last: bool) -> tuple[Any, Any, int]:
    """(starts, times in ms) of the valid records of `data` (from a unit start) that start before the point `upto`
    from which the next read starts (the third value): all of them when `last`, else those whose lines are all
    here. A block of plain lines is read at C speed (fast_times), any other the careful way (_records)."""
    import numpy as np  # start-up time: only a merge needs numpy here

    cut = len(data) if last else data.rfind(b"\n") + 1
    if cut and b'"' not in data[:cut] and b"\r" not in data[:cut]:
        lines = data[:cut]
        ts = fast_times(lines)
        if ts is not None:
            ends = np.flatnonzero(np.frombuffer(lines, dtype=np.uint8) == 10)
            if len(ends) == len(ts):  # no blank line skipped by pyarrow: one valid record a line
                starts = np.empty(len(ends), dtype=np.int64)
                starts[0] = 0
                starts[1:] = ends[:-1] + 1
                return starts, np.asarray(ts, dtype=np.int64), cut
    safe = len(data) if last else _records_end(data)
    starts_list: list[int] = []
    times: list[int] = []
    upto = len(data)
    if safe:
        for start, _, cells in _records(data):
            if start >= safe:
                upto = start
                break
            obs = observation(cells) if cells is not None else None
            if obs is not None:
                starts_list.append(start)
                times.append(obs.ts_ms)
    else:
        upto = 0
    return np.array(starts_list, dtype=np.int64), np.array(times, dtype=np.int64), upto


def item_blocks(fh: io.BufferedIOBase, block_bytes: int = MERGE_BLOCK) -> Iterator[tuple[bytes, bytes, Any, Any]]:
    """The file from the current position (a line start after the header) to its end as (lead, data, starts, keys):
    `lead` the damaged lines before the first valid record (only before it), `data` whole items, item i being
    data[starts[i]:starts[i+1]] (the last to the end of data), keys their times in ms times two. A missing final
    newline is added, as merged_body does."""
    import numpy as np  # start-up time: only a merge needs numpy

    none = np.zeros(0, dtype=np.int64)
    carry = b""
    seen_valid = False
    scanned, held = 0, 0  # carry[:scanned] is one item (its time `held`) and its damaged lines: not read again
    while True:
        block = fh.read(block_bytes)
        data = carry + block if carry else block
        last = not block
        if last:
            if not data:
                return
            if not data.endswith(b"\n"):
                data += b"\n"
        if scanned:
            more, more_times, upto = _valid_starts(data[scanned:], last)
            starts = np.concatenate([np.zeros(1, dtype=np.int64), more + scanned])
            times = np.concatenate([np.array([held], dtype=np.int64), more_times])
            upto += scanned
        else:
            starts, times, upto = _valid_starts(data, last)
        scanned = 0
        if not seen_valid:
            if not len(starts):
                if upto:
                    yield data[:upto], b"", none, none
                carry = data[upto:]
                if last:
                    return
                continue
            seen_valid = True
            first = int(starts[0])
            if first:
                yield data[:first], b"", none, none
                data, starts, upto = data[first:], starts - first, upto - first
        if last:
            yield b"", data, starts, times * 2
            return
        if len(starts) < 2:
            carry = data  # one item and its damaged lines so far: read on, from where the scan stopped
            if len(starts):
                scanned, held = upto, int(times[0])
            continue
        cut = int(starts[-1])
        yield b"", data[:cut], starts[:-1], times[:-1] * 2
        carry = data[cut:]


class _Writer:
    """Items written in key order to a file, with (key, offset of its end in the file) of each in a side file when
    the merge may need to read them back (the first pass's output, the runs)."""

    def __init__(self, fh: Any, meta: Any | None) -> None:
        self.fh, self.meta, self.items = fh, meta, 0

    def write(self, sources: list[memoryview], src: Any, starts: Any, ends: Any, keys: Any) -> None:
        """Write items (sources[src[i]][starts[i]:ends[i]] in this order), joining runs of adjacent bytes."""
        import numpy as np  # start-up time: only a merge needs numpy

        n = len(keys)
        if not n:
            return
        if self.meta is not None:
            at = self.fh.tell() + np.cumsum(ends - starts)
            self.meta.write(np.stack([keys, at], axis=1).astype(np.int64).tobytes())
        self.items += n
        joined = np.ones(n, dtype=bool)
        joined[1:] = (src[1:] != src[:-1]) | (starts[1:] != ends[:-1])
        firsts = np.flatnonzero(joined)
        lasts = np.append(firsts[1:] - 1, n - 1)
        write = self.fh.write
        for s, a, b in zip(src[firsts].tolist(), starts[firsts].tolist(), ends[lasts].tolist()):
            write(sources[s][a:b])


def _gather(data: bytes, starts: Any, ends: Any) -> bytes:
    """The bytes data[starts[i]:ends[i]] one after another, adjacent spans taken as one slice."""
    import numpy as np  # start-up time: only a merge needs numpy

    n = len(starts)
    if not n:
        return b""
    joined = np.ones(n, dtype=bool)
    joined[1:] = starts[1:] != ends[:-1]
    firsts = np.flatnonzero(joined)
    lasts = np.append(firsts[1:] - 1, n - 1)
    view = memoryview(data)
    return b"".join([view[a:b] for a, b in zip(starts[firsts].tolist(), ends[lasts].tolist())])


def _sorted_new(records: list[Record]) -> tuple[bytes, Any, Any, Any]:
    """New records as (bytes, starts, ends, keys) in key order (stable: equal times keep the given order)."""
    import numpy as np  # start-up time: only a merge needs numpy

    lines = [rows_to_csv([r]).encode("utf-8") for r in records]
    keys = np.array([timestamp_ms(r.last_updated) for r in records], dtype=np.int64) * 2 + 1
    lengths = np.array([len(x) for x in lines], dtype=np.int64)
    ends = np.cumsum(lengths)
    order = np.argsort(keys, kind="stable")
    return b"".join(lines), (ends - lengths)[order], ends[order], keys[order]


def merge_stream(
    src: io.BufferedIOBase,
    head: bytes,
    records: list[Record],
    new_temp: Any,
    *,
    block_bytes: int = MERGE_BLOCK,
    keep: int = MERGE_KEEP,
    spill_bytes: int = MERGE_SPILL,
    fan_in: int = MERGE_FANIN,
) -> Any:
    """head + merged_body(the rest of src from its position, records), written through files from new_temp() (a
    new empty temp file opened "w+b"); returns the one holding the result, flushed. Memory: a few blocks."""
    import numpy as np  # start-up time: only a merge needs numpy

    new_data, new_starts, new_ends, new_keys = _sorted_new(records)
    new_view = memoryview(new_data)
    new_at = 0
    out = new_temp()
    out.write(head)
    lead_end = len(head)
    meta = new_temp()
    first = _Writer(out, meta)
    spill, spill_meta = None, None
    runs: list[tuple[int, int, int]] = []  # (byte offset, item offset, items) of each run in the spill files
    low = None  # the key of the last item written by the first pass
    carry = b""
    c_starts = c_ends = c_keys = np.zeros(0, dtype=np.int64)
    late: list[tuple[bytes, Any, Any, Any]] = []  # out-of-order items, in file order, not in a run yet
    late_bytes = 0

    def flush_late() -> None:
        nonlocal spill, spill_meta, late, late_bytes
        if not late:
            return
        if spill is None:
            spill, spill_meta = new_temp(), new_temp()
        buf = b"".join(part[0] for part in late)
        offsets = np.cumsum([0] + [len(part[0]) for part in late[:-1]])
        starts = np.concatenate([part[1] + off for part, off in zip(late, offsets)])
        ends = np.concatenate([part[2] + off for part, off in zip(late, offsets)])
        keys = np.concatenate([part[3] for part in late])
        order = np.argsort(keys, kind="stable")
        at = spill.tell()
        writer = _Writer(spill, spill_meta)
        writer.write([memoryview(buf)], np.zeros(len(keys), dtype=np.int64), starts[order], ends[order], keys[order])
        runs.append((at, sum(r[2] for r in runs), len(keys)))
        late, late_bytes = [], 0

    for lead, data, starts, keys in item_blocks(src, block_bytes):
        if lead:
            out.write(lead)
            lead_end += len(lead)
            continue
        ends = np.append(starts[1:], len(data))
        if low is not None:
            early = keys < low
            if early.any():  # later in the file, earlier in time than what is written: to a run
                idx = np.flatnonzero(early)
                part = _gather(data, starts[idx], ends[idx])
                lengths = ends[idx] - starts[idx]
                p_ends = np.cumsum(lengths)
                late.append((part, p_ends - lengths, p_ends, keys[idx]))
                late_bytes += len(part)
                keep_mask = ~early
                starts, ends, keys = starts[keep_mask], ends[keep_mask], keys[keep_mask]
                if late_bytes >= spill_bytes:
                    flush_late()
        buf = carry + data
        shift = len(carry)
        all_starts = np.concatenate([c_starts, starts + shift])
        all_ends = np.concatenate([c_ends, ends + shift])
        all_keys = np.concatenate([c_keys, keys])
        order = np.argsort(all_keys, kind="stable")  # the carry (earlier lines) first at equal keys
        emit = len(order) - keep
        if emit > 0:
            low = _emit_first(
                first,
                memoryview(buf),
                all_starts,
                all_ends,
                all_keys,
                order[:emit],
                new_view,
                new_starts,
                new_ends,
                new_keys,
                new_at,
            )
            new_at = int(np.searchsorted(new_keys, low))
            rest = order[emit:]
        else:
            rest = order
        lengths = all_ends[rest] - all_starts[rest]
        c_ends = np.cumsum(lengths)
        c_starts = c_ends - lengths
        c_keys = all_keys[rest]
        carry = _gather(buf, all_starts[rest], all_ends[rest])
    # the end: the carry and every new record left
    if len(c_keys) or new_at < len(new_keys):
        _emit_first(
            first,
            memoryview(carry),
            c_starts,
            c_ends,
            c_keys,
            np.arange(len(c_keys)),
            new_view,
            new_starts,
            new_ends,
            new_keys,
            new_at,
            everything=True,
        )
    flush_late()
    out.flush()
    if not runs:
        return out
    # Late items: the output is right up to the first item whose key is above the least of theirs (a stale row
    # appended today goes a few days back); only what follows is merged again with the runs, in place.
    assert spill is not None and spill_meta is not None
    for fh in (meta, spill, spill_meta):
        fh.flush()
    least = min(int(np.frombuffer(_pread(spill_meta.fileno(), 8, item * 16), dtype=np.int64)[0]) for _, item, _ in runs)
    lo, hi = 0, first.items
    while lo < hi:  # the first item of the output with a key above `least`, by bisection in the side file
        mid = (lo + hi) // 2
        if int(np.frombuffer(_pread(meta.fileno(), 8, mid * 16), dtype=np.int64)[0]) <= least:
            lo = mid + 1
        else:
            hi = mid
    cut = lead_end if lo == 0 else int(np.frombuffer(_pread(meta.fileno(), 8, lo * 16 - 8), dtype=np.int64)[0])
    size = out.seek(0, os.SEEK_END)
    tail = new_temp()
    out.seek(cut)
    _copy(out, tail, size - cut)
    tail.flush()
    out.seek(cut)
    out.truncate()
    sources = [(tail.fileno(), cut, meta.fileno(), lo, first.items - lo, cut)]
    sources += [(spill.fileno(), at, spill_meta.fileno(), item, n, 0) for at, item, n in runs]
    _kway(sources, _Writer(out, None), max(64, fan_in // len(sources)))
    out.flush()
    return out


def _emit_first(
    writer: _Writer,
    view: memoryview,
    starts: Any,
    ends: Any,
    keys: Any,
    chosen: Any,
    new_view: memoryview,
    new_starts: Any,
    new_ends: Any,
    new_keys: Any,
    new_at: int,
    everything: bool = False,
) -> int:
    """Write the chosen items (in key order) with the new records of keys below the last of them (all when
    `everything`); returns the last key written by the file's items."""
    import numpy as np  # start-up time: only a merge needs numpy

    top = int(keys[chosen[-1]]) if len(chosen) else None
    stop = len(new_keys) if everything or top is None else int(np.searchsorted(new_keys, top))
    n_new = max(0, stop - new_at)
    k = keys[chosen]
    if not n_new:
        writer.write([view], np.zeros(len(chosen), dtype=np.int64), starts[chosen], ends[chosen], k)
        return top if top is not None else 0
    nk = new_keys[new_at:stop]
    all_keys = np.concatenate([k, nk])
    order = np.argsort(all_keys, kind="stable")
    src = np.concatenate([np.zeros(len(k), dtype=np.int64), np.ones(n_new, dtype=np.int64)])[order]
    s = np.concatenate([starts[chosen], new_starts[new_at:stop]])[order]
    e = np.concatenate([ends[chosen], new_ends[new_at:stop]])[order]
    writer.write([view, new_view], src, s, e, all_keys[order])
    return top if top is not None else 0


def _copy(src: Any, dst: Any, n: int, block: int = 1 << 20) -> None:
    while n > 0:
        data = src.read(min(block, n))
        if not data:
            raise OSError(errno.EIO, "a temp file ended early")
        dst.write(data)
        n -= len(data)


def _kway(sources: list[tuple[int, int, int, int, int, int]], writer: _Writer, per_run: int) -> None:
    """Merge sorted runs (fd of bytes, byte offset, fd of (key, end offset) pairs, item offset, items, how far the
    bytes were moved back in their file) into writer, a block of each at a time. Equal keys: the earlier run first
    (it holds the earlier lines)."""
    import numpy as np  # start-up time: only a merge needs numpy

    class Run:
        def __init__(self, fd: int, at: int, meta_fd: int, item: int, n: int, moved: int) -> None:
            self.fd, self.at, self.meta_fd, self.item, self.left, self.moved = fd, at, meta_fd, item, n, moved
            self.keys = self.starts = self.ends = np.zeros(0, dtype=np.int64)
            self.view = memoryview(b"")
            self.pos = 0

        def load(self) -> None:
            m = min(per_run, self.left)
            raw = _pread(self.meta_fd, m * 16, self.item * 16)
            pairs = np.frombuffer(raw, dtype=np.int64).reshape(-1, 2)
            self.keys = pairs[:, 0].copy()
            self.ends = pairs[:, 1] - self.at
            self.starts = np.concatenate([[0], self.ends[:-1]])
            size = int(self.ends[-1]) if m else 0
            self.view = memoryview(_pread(self.fd, size, self.at - self.moved))
            self.at += size
            self.item += m
            self.left -= m
            self.pos = 0

    runs = [Run(*source) for source in sources]
    for run in runs:
        if run.left:
            run.load()
    while True:
        for run in runs:
            if run.pos >= len(run.keys) and run.left:
                run.load()
        live = [r for r in runs if r.pos < len(r.keys)]
        if not live:
            return
        pending = [(int(r.keys[-1]), i) for i, r in enumerate(runs) if r.left]
        bound, star = min(pending) if pending else (None, len(runs))
        src, s, e, k = [], [], [], []
        for i, run in enumerate(runs):
            if run.pos >= len(run.keys):
                continue
            if bound is None:
                cut = len(run.keys)
            else:
                cut = int(np.searchsorted(run.keys, bound, side="right" if i <= star else "left"))
            if cut > run.pos:
                src.append(np.full(cut - run.pos, i, dtype=np.int64))
                s.append(run.starts[run.pos : cut])
                e.append(run.ends[run.pos : cut])
                k.append(run.keys[run.pos : cut])
                run.pos = cut
        if not k:
            continue
        keys = np.concatenate(k)
        order = np.argsort(keys, kind="stable")
        writer.write(
            [r.view for r in runs],
            np.concatenate(src)[order],
            np.concatenate(s)[order],
            np.concatenate(e)[order],
            keys[order],
        )


def _pread(fd: int, n: int, at: int) -> bytes:
    parts = []
    while n > 0:
        data = os.pread(fd, n, at)
        if not data:
            raise OSError(errno.EIO, "a temp file ended early")
        parts.append(data)
        n -= len(data)
        at += len(data)
    return b"".join(parts)


def merge_file(csv_path: Path, records: list[Record], what: str = "history CSV", **sizes: int) -> None:
    """Rewrite the CSV with `records` merged in, exactly as merged_body would, in bounded memory (merge_stream).

    Temp files sit beside it under the names remove_stale_temp_files clears after a crash; the result is fsynced
    and renamed over the CSV (keeping its mode); on any error every temp file is removed and the CSV is untouched.
    Never through a link, never over a file its owner made read-only."""
    refuse_read_only_file(refuse_unsafe(csv_path, what), csv_path, what)
    temps: list[tuple[Any, str]] = []

    def new_temp() -> Any:
        fd, name = tempfile.mkstemp(prefix=f".{csv_path.name}.", suffix=".tmp", dir=csv_path.parent)
        fh = os.fdopen(fd, "w+b")
        temps.append((fh, name))
        return fh

    replaced = None
    try:
        with open(csv_path, "rb") as src:
            mode = os.fstat(src.fileno()).st_mode & 0o777
            first = src.read(1 << 16)
            start = header_length(first)
            src.seek(start)
            result = merge_stream(src, first[:start], records, new_temp, **sizes)
        name = next(n for fh, n in temps if fh is result)
        os.fchmod(result.fileno(), mode)
        os.fsync(result.fileno())
        os.replace(name, csv_path)
        replaced = name
    finally:
        for fh, name in temps:
            with contextlib.suppress(OSError):
                fh.close()
            if name != replaced:
                with contextlib.suppress(OSError):
                    os.unlink(name)
    fsync_dir(csv_path.parent)
