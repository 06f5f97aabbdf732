"""Arrow batches as the CSV store's lines, byte for byte, a column at a time (export's CSV at C speed).

The CSV store writes each cell with schema.format_cell through csv.writer (lineterminator "\\n"):
- a number: whole floats below 2**63 without ".0" (as CoinGecko's JSON gives them), other finite floats as
  repr() (the shortest text that reads back exactly), NaN, infinities and nulls as an empty cell;
- the rank (int64) as its digits; a time as UTC ISO 8601 with milliseconds and Z (schema.format_timestamp);
- text as it is, quoted by csv.writer when it holds a delimiter, a quote or a line break.
Here each rule runs on a whole column: numpy's datetime_as_string for times, pyarrow's compute kernels for
integers and most floats (see _number), the joining of cells
into lines, and the few text cells that need quotes; numpy masks to sort floats into whole and other; the
builtin float.__repr__ mapped over the floats Arrow writes with an exponent. No per-row
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
    """Numbers as format_cell writes them. Arrow's float-to-text cast gives the same shortest round-trip digits
    as repr(); where repr() writes them without an exponent (1e-4 <= |x| < 1e16) and Arrow did too, the two
    texts are the same, so Arrow's is kept. The rest (an exponent in either) goes through float.__repr__."""
    # optional package: pyarrow and deltalake, needed by the Delta store only
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    values = column.cast(pa.float64()).to_numpy(zero_copy_only=False)  # nulls become NaN: both an empty cell
    with np.errstate(invalid="ignore"):
        size = np.abs(values)
        finite = np.isfinite(values)
        whole = finite & (np.floor(values) == values) & (size < 2.0**63)
        fixed = finite & ~whole & (size >= 1e-4) & (size < 1e16)
    text = pa.array(values).cast(pa.string())
    ints = pa.array(np.where(whole, values, 0).astype(np.int64)).cast(pa.string())
    cells = pc.if_else(pa.array(whole), ints, pc.if_else(pa.array(finite), text, ""))
    exponent = pc.match_substring(text, "e").to_numpy(zero_copy_only=False)
    slow = finite & ~whole & ~(fixed & ~exponent)
    if slow.any():
        reprs = pa.array(list(map(float.__repr__, values[slow].tolist())), pa.string())
        cells = pc.replace_with_mask(cells, pa.array(slow), reprs)
    return cells


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
