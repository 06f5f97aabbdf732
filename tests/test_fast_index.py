"""The index build's fast path (pyarrow's C reader for blocks of plain rows) gives exactly what the careful path gives."""

from __future__ import annotations

import io
import math
import random
import sqlite3
import tempfile
import unittest
from pathlib import Path

from utils.history import csvio
from utils.history.index import HistoryIndex
from utils.history.schema import COLUMNS, HEADER_LINE


def _cells(rng: random.Random, i: int) -> list[str]:
    cells = [""] * len(COLUMNS)
    coin = i % 11
    cells[COLUMNS.index("name")] = f"Coin {coin}" if i % 13 else ""
    cells[COLUMNS.index("symbol")] = f"c{coin}"
    cells[COLUMNS.index("coin_id")] = f"coin-{coin}"
    cells[COLUMNS.index("vs_currency")] = "eur" if i % 5 else "usd"
    cells[COLUMNS.index("last_updated")] = (
        f"2024-0{1 + i % 3}-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:07.{i % 7:03d}Z"
    )
    cells[COLUMNS.index("current_price")] = "" if i % 17 == 0 else repr(rng.uniform(0.001, 1000))
    cells[COLUMNS.index("market_cap")] = "" if i % 19 == 0 else str(rng.randint(1, 10**12))
    cells[COLUMNS.index("market_cap_rank")] = "" if i % 23 == 0 else str(1 + i % 300)
    return cells


def plain(rng: random.Random, i: int) -> str:
    return ",".join(_cells(rng, i)) + "\n"


def odd(rng: random.Random, i: int) -> str:
    """A line the fast path must hand to the careful one: quoted, damaged, or a value only Python reads."""
    cells = _cells(rng, i)
    kind = i % 7
    if kind == 0:
        cells[0] = '"Coin, with a comma"'
    elif kind == 1:
        return "a,b,c\n"
    elif kind == 2:
        cells[COLUMNS.index("current_price")] = "nan"
    elif kind == 3:
        cells[COLUMNS.index("last_updated")] = "2024-02-30T00:00:00.000Z"
    elif kind == 4:
        cells[COLUMNS.index("market_cap_rank")] = "12x"
    elif kind == 5:
        cells[COLUMNS.index("last_updated")] = "2024-01-05T10:00:00Z"  # ISO, not canonical
    else:
        cells[COLUMNS.index("coin_id")] = "Not An Id"
    return ",".join(cells) + "\n"


def body(seed: int, n: int, odd_every: int) -> bytes:
    rng = random.Random(seed)
    return "".join(odd(rng, i) if odd_every and i % odd_every == 0 else plain(rng, i) for i in range(n)).encode()


def as_observations(block: csvio.Columns | tuple) -> list[csvio.Observation]:
    if not isinstance(block, csvio.Columns):
        return block[0]
    out = []
    names, symbols = block.name.to_pylist(), block.symbol.to_pylist()
    for i in range(len(block)):
        coin_id, vs = block.pairs[int(block.pair[i])]
        price, cap, rank = float(block.price[i]), float(block.cap[i]), int(block.rank[i])
        out.append(
            csvio.Observation(
                coin_id,
                vs,
                int(block.ts_ms[i]),
                None if math.isnan(price) else price,
                None if math.isnan(cap) else cap,
                None if rank < 0 else rank,
                names[i],
                symbols[i],
            )
        )
    return out


def dump(db: sqlite3.Connection) -> dict[str, list]:
    return {
        "series": db.execute(
            "SELECT coin_id, vs_currency, name, symbol, rows, first_ms, last_ms FROM series "
            "ORDER BY coin_id, vs_currency"
        ).fetchall(),
        "obs": db.execute(
            "SELECT s.coin_id, s.vs_currency, o.ts FROM obs o JOIN series s ON s.id = o.series ORDER BY 1, 2, 3"
        ).fetchall(),
        "daily": db.execute(
            "SELECT s.coin_id, s.vs_currency, d.day, d.ts, d.price, d.cap, d.rank FROM daily d "
            "JOIN series s ON s.id = d.series ORDER BY 1, 2, 3"
        ).fetchall(),
        "covered": db.execute(
            "SELECT s.coin_id, s.vs_currency, c.first_day, c.last_day FROM covered c "
            "JOIN series s ON s.id = c.series ORDER BY 1, 2, 3"
        ).fetchall(),
    }


class FastPathTest(unittest.TestCase):
    def test_plain_rows_take_the_fast_path(self) -> None:
        data = body(1, 3000, 0)
        blocks = list(csvio.read_columns(io.BytesIO(data), 0, len(data)))
        self.assertTrue(all(isinstance(b, csvio.Columns) for b in blocks))
        self.assertEqual([o for b in blocks for o in as_observations(b)], csvio.observations(data)[0])

    def test_times_of_any_day_match_the_careful_parser(self) -> None:
        rng = random.Random(3)
        rows, stamps = [], []
        for i in range(5000):
            year = rng.choice([1, 4, 100, 400, 1600, 1700, 1900, 1970, 2000, 2024, 2100, 2999, rng.randint(1, 2999)])
            month = rng.randint(1, 12)
            day = rng.randint(1, 28 if month == 2 else 30)
            stamp = (
                f"{year:04d}-{month:02d}-{day:02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:"
                f"{rng.randint(0, 59):02d}.{rng.randint(0, 999):03d}Z"
            )
            cells = _cells(rng, i)
            cells[COLUMNS.index("last_updated")] = stamp
            rows.append(",".join(cells) + "\n")
            stamps.append(stamp)
        block = csvio.fast_columns("".join(rows).encode())
        self.assertIsNotNone(block)
        self.assertEqual(block.ts_ms.tolist(), [csvio.timestamp_ms(s) for s in stamps])

    def test_coverage_folded_on_the_way_gives_the_same_ranges(self) -> None:
        import numpy as np

        from utils.history.index import _Coverage, to_ranges

        rng = random.Random(1)
        coverage, truth = _Coverage(), {}
        coverage.COMPACT_AT = 50  # fold often
        for _ in range(60):
            series = np.array([rng.randint(1, 5) for _ in range(20)])
            days = np.array([rng.randint(-3, 60) for _ in range(20)])
            for sid, day in zip(series.tolist(), days.tolist()):
                truth.setdefault(sid, set()).add(day)
            coverage.add(series, days)
        self.assertEqual(coverage.ranges(), {sid: to_ranges(days) for sid, days in truth.items()})

    def test_any_chunking_and_any_odd_line_give_the_careful_read(self) -> None:
        for odd_every in (0, 50, 997):
            data = body(odd_every, 3000, odd_every)
            whole = csvio.observations(data)
            for chunk in (1000, 4096, 65536, len(data) + 1):
                found, bad = [], 0
                for block in csvio.read_columns(io.BytesIO(data), 0, len(data), chunk):
                    found.extend(as_observations(block))
                    bad += 0 if isinstance(block, csvio.Columns) else block[1]
                self.assertEqual((found, bad), whole, f"odd every {odd_every}, chunk {chunk}")

    def test_the_index_built_fast_equals_the_index_built_row_by_row(self) -> None:
        for odd_every in (0, 101):
            data = body(7, 20_000, odd_every)
            with tempfile.TemporaryDirectory() as tmp:
                csv_path = Path(tmp) / "crypto_data.csv"
                csv_path.write_bytes(HEADER_LINE.encode() + data)
                with HistoryIndex(Path(tmp) / "index.sqlite") as fast:
                    self.assertEqual(fast.sync(csv_path), "rebuilt")
                    built = dump(fast.db)
                    damaged = fast.damaged
                found, bad = csvio.observations(data)
                with HistoryIndex(":memory:") as careful:
                    careful._add(found)
                    self.assertEqual(built, dump(careful.db), f"odd every {odd_every}")
                self.assertEqual(damaged, bad)


if __name__ == "__main__":
    unittest.main()
