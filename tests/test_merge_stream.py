"""The merge in bounded memory (csvio.merge_file) writes exactly what the in-memory reference (merged_body) gives."""

from __future__ import annotations

import os
import random
import re
import resource
import tempfile
import unittest
from pathlib import Path

from tests.support import record
from utils.history import csvio
from utils.history.schema import COLUMNS, HEADER_LINE

HEAD = HEADER_LINE.encode()
TINY = dict(block_bytes=300, keep=3, spill_bytes=500, fan_in=8)  # many blocks, late items and runs


def _stamp(rng: random.Random, hours: int) -> str:
    """A time among few (equal times are common), sometimes in a form other than ours (the careful path)."""
    h = rng.randrange(hours)
    if rng.random() < 0.05:
        return f"2024-01-{1 + h // 24:02d}T{h % 24:02d}:00:00Z"
    return f"2024-01-{1 + h // 24:02d}T{h % 24:02d}:00:00.{rng.choice((0, 0, 5)):03d}Z"


def _line(rng: random.Random, i: int, hours: int) -> str:
    cells = [""] * len(COLUMNS)
    cells[COLUMNS.index("name")] = f"Coin {i % 5}"
    cells[COLUMNS.index("coin_id")] = f"coin-{i % 5}"
    cells[COLUMNS.index("vs_currency")] = "eur"
    cells[COLUMNS.index("last_updated")] = _stamp(rng, hours)
    cells[COLUMNS.index("current_price")] = repr(rng.uniform(0.001, 1000))
    cells[COLUMNS.index("source")] = "coins_markets"
    line = ",".join(cells) + "\n"
    kind = rng.random()
    if kind < 0.04:  # a quoted name spanning lines (valid CSV)
        line = line.replace(f"Coin {i % 5}", f'"Coin\n{i % 5}\n""x"""', 1)
    elif kind < 0.06:  # a stray line with an open quote
        line = 'note "by hand\n' + line
    elif kind < 0.08:  # a line of the wrong width
        line = "a,b,c\n" + line
    elif kind < 0.09:  # a blank line
        line = "\n" + line
    elif kind < 0.10:  # a row of our width with a bad id
        line = line.replace(f"coin-{i % 5}", "Not An Id", 1)
    elif kind < 0.11:  # a Windows line end
        line = line[:-1] + "\r\n"
    return line


def _body(rng: random.Random, rows: int) -> bytes:
    hours = rng.choice((3, 20, 200))
    lines = [_line(rng, i, hours) for i in range(rows)]
    shape = rng.random()
    if shape < 0.4:  # a sorted history with unsorted appended snapshots
        cut = rng.randrange(rows + 1)
        head = sorted(
            lines[:cut], key=lambda x: x.split(",")[COLUMNS.index("last_updated")] if x.count(",") == 16 else ""
        )
        lines = head + lines[cut:]
    elif shape < 0.6:  # reversed: every item out of order
        lines.reverse()
    text = "".join(lines)
    if rng.random() < 0.2:
        text = "junk line\n" + 'x,"open\n' * rng.randrange(3) + text
    if rng.random() < 0.1:
        text = text.rstrip("\n")  # no final newline
    return text.encode()


def _records(rng: random.Random, n: int) -> list:
    return [
        record(f"new-{rng.randrange(4)}", _stamp(rng, 30).replace(":00Z", ":00.000Z"), current_price=float(i))
        for i in range(n)
    ]


def _merged(body: bytes, records: list, **sizes: int) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "crypto_data.csv"
        path.write_bytes(HEAD + body)
        csvio.merge_file(path, records, **sizes)
        leftovers = [p.name for p in Path(tmp).iterdir() if p.name != "crypto_data.csv"]
        assert not leftovers, leftovers
        return path.read_bytes()


class MergeStreamTest(unittest.TestCase):
    def test_random_files_merge_as_the_reference_does(self) -> None:
        rng = random.Random(18)
        for case in range(300):
            body = _body(rng, rng.randrange(0, 120))
            records = _records(rng, rng.randrange(0, 25))
            want = HEAD + csvio.merged_body(body, records)
            sizes = rng.choice((TINY, dict(block_bytes=64, keep=1, spill_bytes=1, fan_in=1), {}))
            self.assertEqual(_merged(body, records, **sizes), want, f"case {case} {sizes}")

    def test_a_long_file_in_tiny_blocks(self) -> None:
        rng = random.Random(7)
        body = _body(rng, 3000)
        records = _records(rng, 200)
        want = HEAD + csvio.merged_body(body, records)
        for sizes in (TINY, dict(block_bytes=4096, keep=50, spill_bytes=2000, fan_in=100), {}):
            self.assertEqual(_merged(body, records, **sizes), want, sizes)

    def test_only_damaged_lines_and_only_a_header(self) -> None:
        rng = random.Random(3)
        records = _records(rng, 5)
        for body in (b"", b"a,b\n", b"a,b\nc\n", b'x,"open\n' * 80, b"a,b"):
            self.assertEqual(_merged(body, records, **TINY), HEAD + csvio.merged_body(body, records), body[:20])

    def test_a_full_disk_midway_leaves_the_csv_and_no_temp_file(self) -> None:
        rng = random.Random(11)
        body = _body(rng, 2000)
        records = _records(rng, 50)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "crypto_data.csv"
            path.write_bytes(HEAD + body)
            old = path.read_bytes()
            limit = resource.getrlimit(resource.RLIMIT_FSIZE)
            resource.setrlimit(resource.RLIMIT_FSIZE, (len(old) // 2, limit[1]))
            try:
                with self.assertRaises(OSError):
                    csvio.merge_file(path, records, **TINY)
            finally:
                resource.setrlimit(resource.RLIMIT_FSIZE, limit)
            self.assertEqual(path.read_bytes(), old)
            self.assertEqual(os.listdir(tmp), ["crypto_data.csv"])


if __name__ == "__main__":
    unittest.main()


class FastTimesTest(unittest.TestCase):
    """The merge's C-speed reading of a block of plain rows takes exactly the rows the one definition takes."""

    def test_a_block_is_read_fast_only_when_every_line_is_a_valid_row(self) -> None:
        rng = random.Random(4)
        spoilers = [
            ("coin_id", "Coin-1"),
            ("coin_id", ""),
            ("coin_id", "-x"),
            ("vs_currency", "e"),
            ("vs_currency", "EUR"),
            ("market_cap_rank", "1.5"),
            ("market_cap_rank", "-3"),
            ("current_price", "abc"),
            ("current_price", "nan"),
            ("market_cap", "inf"),
            ("current_price", "1_0"),
            ("last_updated", "2024-02-30T00:00:00.000Z"),
            ("last_updated", "2024-01-01T24:00:00.000Z"),
            ("last_updated", "2024-01-01 00:00:00.000Z"),
            ("market_cap_rank", "12345678901"),
            ("current_price", "1e5"),
        ]
        for case in range(200):
            rows = []
            for i in range(rng.randrange(1, 30)):
                cells = [""] * len(COLUMNS)
                cells[COLUMNS.index("coin_id")] = f"coin-{i % 3}"
                cells[COLUMNS.index("vs_currency")] = "eur"
                cells[COLUMNS.index("last_updated")] = _stamp(rng, 50).replace(":00Z", ":00.000Z")
                cells[COLUMNS.index("current_price")] = repr(rng.uniform(0, 10))
                cells[COLUMNS.index("market_cap_rank")] = str(rng.randrange(1, 99))
                if rng.random() < 0.1:
                    column, value = rng.choice(spoilers)
                    cells[COLUMNS.index(column)] = value
                rows.append(cells)
            data = "".join(",".join(cells) + "\n" for cells in rows).encode()
            observed = [csvio.observation(cells) for cells in rows]
            fast = csvio.fast_times(data)
            if any(obs is None for obs in observed):
                self.assertIsNone(fast, f"case {case}")
            elif fast is not None:  # fast may decline a valid block (the careful path reads it then)
                self.assertEqual(fast.tolist(), [obs.ts_ms for obs in observed], f"case {case}")


class ReadableStreamTest(unittest.TestCase):
    """Lines standard readers cannot read leave a history larger than one block with their line numbers, and the
    rest of the file keeps its bytes."""

    def test_damage_around_a_block_boundary_is_moved_with_its_line_number(self) -> None:
        from utils.history.csv_store import LABEL_BLOCK, HistoryStore
        from utils.history.layout import DataLayout
        from utils.history.schema import rows_to_csv

        template = rows_to_csv([record("coin-0", "2024-01-01T00:00:00.000Z", name="Coin " + "x" * 200)])
        rows = [  # 40,000 rows of about 260 bytes, each its own coin and second
            template.replace("coin-0,", f"coin-{i % 50},")
            .replace("00:00:00", f"{i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d}")
            .encode()
            for i in range(40_000)
        ]
        lines = [HEAD, *rows]
        size, boundary = 0, None
        for at, line in enumerate(lines):  # the line that crosses the first block's end
            size += len(line)
            if size >= LABEL_BLOCK:
                boundary = at
                break
        self.assertIsNotNone(boundary, "the file must be larger than one block")
        junk = {3: b'x,"open', boundary: b"a,b,c", boundary + 1: b"nul\x00byte", len(lines) - 1: b"a,b"}
        for at in sorted(junk, reverse=True):
            lines.insert(at, junk[at] + b"\n")
        with tempfile.TemporaryDirectory() as tmp:
            layout = DataLayout(Path(tmp))
            layout.csv.write_bytes(b"".join(lines))
            HistoryStore(layout).append([])
            self.assertEqual(layout.csv.read_bytes(), HEAD + b"".join(rows))
            moved = layout.quarantine.read_bytes()
            numbers = {}
            for at, line in enumerate(lines):
                for bad in junk.values():
                    if line == bad + b"\n":
                        numbers[bad] = at + 1
            for bad, number in numbers.items():
                self.assertRegex(
                    moved,
                    re.escape(f"# line {number} of crypto_data.csv: ".encode()) + rb"[^\n]+\n" + re.escape(bad + b"\n"),
                )
