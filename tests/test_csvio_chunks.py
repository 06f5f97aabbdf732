"""The index build reads the CSV in chunks: it must see exactly what one read of the whole file sees."""

from __future__ import annotations

import io
import random
import unittest

from utils.history import csvio
from utils.history.schema import COLUMNS


def _row(rng: random.Random, i: int) -> str:
    cells = [""] * len(COLUMNS)
    cells[COLUMNS.index("name")] = f"Coin {i % 7}"
    cells[COLUMNS.index("coin_id")] = f"coin-{i % 7}"
    cells[COLUMNS.index("vs_currency")] = "eur"
    cells[COLUMNS.index("last_updated")] = f"2024-01-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:07.{i % 1000:03d}Z"
    cells[COLUMNS.index("current_price")] = repr(rng.uniform(0.001, 1000))
    line = ",".join(cells) + "\n"
    kind = rng.random()
    if kind < 0.05:  # a quoted name spanning lines (valid CSV)
        line = line.replace(f"Coin {i % 7}", f'"Coin\n{i % 7}\n""x"""', 1)
    elif kind < 0.08:  # a stray hand-added line with an open quote
        line = 'note "by hand\n' + line
    elif kind < 0.10:  # a line of the wrong width
        line = "a,b,c\n" + line
    return line


class ChunkedReadTest(unittest.TestCase):
    def test_chunks_of_any_size_give_the_whole_file_read(self) -> None:
        rng = random.Random(5)
        data = "".join(_row(rng, i) for i in range(3000)).encode()
        whole, damaged = csvio.observations(data)
        self.assertGreater(damaged, 0)
        for chunk in (1, 7, 100, 4096, 65536, len(data) + 1):
            found, bad = [], 0
            for part, part_bad in csvio.read_observations(io.BytesIO(data), 0, len(data), chunk):
                found.extend(part)
                bad += part_bad
            self.assertEqual((found, bad), (whole, damaged), f"chunk {chunk}")

    def test_an_open_quote_near_a_chunk_end_is_judged_with_the_lines_after_it(self) -> None:
        rng = random.Random(9)
        body = "".join(_row(rng, i) for i in range(200))
        data = (body + 'x,"open\n' + "".join(_row(rng, i) for i in range(200, 300))).encode()
        whole = csvio.observations(data)
        for chunk in range(len(body) - 50, len(body) + 50, 7):
            found, bad = [], 0
            for part, part_bad in csvio.read_observations(io.BytesIO(data), 0, len(data), chunk):
                found.extend(part)
                bad += part_bad
            self.assertEqual((found, bad), whole, f"chunk {chunk}")


if __name__ == "__main__":
    unittest.main()
