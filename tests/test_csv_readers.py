"""The history opens in standard readers after every write (issue 21, item 6): a property test.

Random damaged lines (unbalanced quotes, a lone `"`, NUL bytes, cells over the csv module's 128 KB limit,
bytes that are not UTF-8, rows of another width, a last line without its newline) are inserted into a
history. After an append (what `run` does), a merge of older observations (what `backfill` and healing
do) and another append, `pandas.read_csv` and `csv.reader` read the file into rows of the header's width
holding every stored observation, and the quarantine file holds every byte that left the CSV.
The end-to-end commands are tested the same way in tests/test_history_store.py (AwkwardLines).
"""

from __future__ import annotations

import csv
import io
import tempfile
import unittest
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import examples
from tests.support import record as observation
from utils.history import csvio
from utils.history.csv_store import HistoryStore
from utils.history.layout import DataLayout
from utils.history.schema import HEADER_LINE, Record, rows_to_csv


def record(coin: str, day: int, hour: int = 0) -> Record:
    ts = f"2024-01-{day:02d}T{hour:02d}:00:00.000Z"
    return observation(
        coin, ts, current_price=100.0 + day, market_cap=1e9, fetched_at=ts, vs_currency="usd", market_cap_rank=1
    )


DAMAGE = st.one_of(
    st.just(b'"'),
    st.just(b'note,"unclosed'),
    st.builds(lambda n: b'x,"' + b"y" * n + b'"', st.integers(131_073, 140_000)),
    st.builds(
        lambda t: t.encode("utf-8", "surrogatepass") if False else t.encode(),
        st.text(alphabet=st.sampled_from(list('ab,"\x00 ;')), min_size=1, max_size=40),
    ),
    st.binary(min_size=1, max_size=60).map(lambda b: b.replace(b"\n", b"")).filter(bool),
    st.just(b"my notes, not data"),
    st.builds(lambda n: b"," * 8 + b"z" * n + b"," * 8, st.integers(131_073, 133_000)),  # our width, a huge plain cell
)


def observations_in(data: bytes) -> set[tuple[str, str]]:
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    header = rows[0]
    return {
        (r[header.index("coin_id")], r[header.index("last_updated")])
        for r in rows[1:]
        if len(r) == len(header) and r[header.index("coin_id")]
    }


class StandardReaders(unittest.TestCase):
    @settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(damage=st.lists(st.tuples(st.integers(0, 6), DAMAGE), min_size=1, max_size=5), torn_tail=st.booleans())
    def test_after_append_and_merge_every_reader_reads_every_observation(self, damage, torn_tail) -> None:
        import pandas as pd

        with tempfile.TemporaryDirectory() as tmp:
            layout = DataLayout(Path(tmp))
            store = HistoryStore(layout)
            first = [record(c, d) for d in (10, 11, 12) for c in ("bitcoin", "ethereum")]
            store.append(first)
            lines = layout.csv.read_bytes().splitlines(keepends=True)
            inserted: list[bytes] = []
            for where, junk in damage:
                lines.insert(1 + min(where, len(lines) - 1), junk + b"\n")
                inserted.append(junk)
            body = b"".join(lines)
            if torn_tail:  # a complete valid row that only lacks its newline: completed, never quarantined
                body += rows_to_csv([record("solana", 12)]).encode().rstrip(b"\n")
            layout.csv.write_bytes(body)
            stored = {("bitcoin", r.last_updated) for r in first} | {("ethereum", r.last_updated) for r in first}
            if torn_tail:
                stored.add(("solana", "2024-01-12T00:00:00.000Z"))

            store.append([record("bitcoin", 13), record("ethereum", 13)])  # run
            store.merge([record("bitcoin", 5), record("ethereum", 6)])  # backfill / healing
            store.append([record("bitcoin", 14)])  # the next run
            stored |= {
                ("bitcoin", "2024-01-13T00:00:00.000Z"),
                ("ethereum", "2024-01-13T00:00:00.000Z"),
                ("bitcoin", "2024-01-05T00:00:00.000Z"),
                ("ethereum", "2024-01-06T00:00:00.000Z"),
                ("bitcoin", "2024-01-14T00:00:00.000Z"),
            }

            data = layout.csv.read_bytes()
            self.assertTrue(data.startswith(HEADER_LINE.encode()))
            # The chunked check (fast path for plain lines) finds exactly what one pass over the bytes finds.
            damaged = b"".join(lines)
            with open(layout.csv, "wb") as fh:
                fh.write(damaged)
            with open(layout.csv, "rb") as fh:
                start = len(HEADER_LINE)
                self.assertEqual(
                    csvio.reader_problems_in(fh, start, len(damaged), chunk_bytes=4096),
                    csvio.reader_problems(damaged[start:], start),
                )
            layout.csv.write_bytes(data)
            rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
            self.assertTrue(all(len(r) == len(rows[0]) for r in rows), "a row of another width")
            self.assertTrue(stored <= observations_in(data), stored - observations_in(data))
            frame = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
            self.assertEqual(list(frame.columns), rows[0])
            self.assertEqual(len(frame), len(rows) - 1)
            self.assertTrue(stored <= set(zip(frame["coin_id"], frame["last_updated"])))
            quarantine = layout.quarantine.read_bytes() if layout.quarantine.exists() else b""
            for junk in inserted:
                self.assertTrue(junk + b"\n" in data or junk + b"\n" in quarantine, junk[:80])


if __name__ == "__main__":
    unittest.main()
