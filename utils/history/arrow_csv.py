"""Arrow batches as the CSV store's lines, byte for byte, a column at a time (export's CSV at C speed).

The CSV store writes each cell with schema.format_cell through csv.writer (lineterminator "\\n"):
- a number: whole floats below 2**63 without ".0" (as CoinGecko's JSON gives them), other finite floats as
  repr() (the shortest text that reads back exactly), NaN, infinities and nulls as an empty cell;
- the rank (int64) as its digits; a time as UTC ISO 8601 with milliseconds and Z (schema.format_timestamp);
- text as it is, quoted by csv.writer when it holds a delimiter, a quote or a line break.
Here each rule runs on a whole column: numpy's datetime_as_string for times, pyarrow's compute kernels for
integers, the joining of cells
into lines, and the few text cells that need quotes; numpy masks to sort floats into whole and other; the
builtin float.__repr__ mapped over the others (the one formatter that is repr() exactly). No per-row
Python: about 1-2 s of CPU per 1,000,000 rows instead of minutes.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from utils.history.schema import COLUMNS

TEXT = ("name", "symbol", "coin_id", "vs_currency", "source")
TIMES = ("last_updated", "fetched_at")
INTEGERS = ("market_cap_rank",)
NEEDS_QUOTES = r'[,"\r\n]'  # a superset of what csv.writer quotes; each candidate is quoted by csv.writer itself


def _quoted(cell: str) -> str:
    """The cell as csv.writer writes it (one cell: its own quoting rule, whatever the Python version)."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([cell, ""])
    return buf.getvalue()[:-2]


def _text(column: Any) -> Any:
    # optional package: pyarrow and deltalake, needed by the Delta store only
    import pyarrow as pa
    import pyarrow.compute as pc

    column = pc.fill_null(column.cast(pa.string()), "")
    special = pc.match_substring_regex(column, NEEDS_QUOTES)
    if not pc.any(special).as_py():
        return column
    cells = column.to_pylist()
    for i in pc.indices_nonzero(special).to_pylist():
        cells[i] = _quoted(cells[i])
    return pa.array(cells, pa.string())


def _time(column: Any) -> Any:
    # optional package: pyarrow and deltalake, needed by the Delta store only
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    micros = column.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
    millis = pc.fill_null(micros, 0).to_numpy() // 1000  # floor, as format_timestamp's microsecond // 1000
    text = np.datetime_as_string(millis.astype("datetime64[ms]"), unit="ms")
    cells = pc.binary_join_element_wise(pa.array(text, pa.string()), "Z", "")
    return pc.if_else(pc.is_null(micros), "", cells)


def _integer(column: Any) -> Any:
    # optional package: pyarrow and deltalake, needed by the Delta store only
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.fill_null(column.cast(pa.int64()).cast(pa.string()), "")


def _number(column: Any) -> Any:
    # optional package: pyarrow and deltalake, needed by the Delta store only
    import numpy as np
    import pyarrow as pa

    values = column.cast(pa.float64()).to_numpy(zero_copy_only=False)  # nulls become NaN: both an empty cell
    cells = np.full(len(values), "", dtype=object)
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(values)
        whole = finite & (np.floor(values) == values) & (np.abs(values) < 2.0**63)
    other = finite & ~whole
    if whole.any():
        cells[whole] = pa.array(values[whole].astype(np.int64)).cast(pa.string()).to_numpy(zero_copy_only=False)
    if other.any():
        cells[other] = list(map(float.__repr__, values[other].tolist()))
    return pa.array(cells, pa.string())


def csv_lines(batch: Any) -> bytes:
    """The batch's rows (a table's or a batch's columns named as the CSV's) as the CSV store's lines, UTF-8."""
    # optional package: pyarrow and deltalake, needed by the Delta store only
    import pyarrow as pa
    import pyarrow.compute as pc

    if batch.num_rows == 0:
        return b""
    cells = []
    for name in COLUMNS:
        column = batch.column(batch.schema.get_field_index(name))
        if name in TEXT:
            cells.append(_text(column))
        elif name in TIMES:
            cells.append(_time(column))
        elif name in INTEGERS:
            cells.append(_integer(column))
        else:
            cells.append(_number(column))
    lines = pc.binary_join_element_wise(pc.binary_join_element_wise(*cells, ","), "", "\n")  # each ends in "\n"
    if isinstance(lines, pa.ChunkedArray):
        lines = lines.combine_chunks()
    return _string_bytes(lines)


def _string_bytes(array: Any) -> bytes:
    """The concatenated UTF-8 of a string array with no nulls (its data buffer between the first and last offset)."""
    # optional package: pyarrow and deltalake, needed by the Delta store only
    import numpy as np

    _, offsets, data = array.buffers()
    bounds = np.frombuffer(offsets, dtype=np.int32, count=len(array) + 1, offset=array.offset * 4)
    return data.to_pybytes()[int(bounds[0]) : int(bounds[-1])]
