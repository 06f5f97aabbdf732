"""The index build's fast path (pyarrow's C reader for blocks of plain rows) gives exactly what the careful path gives."""

from __future__ import annotations

import datetime
import io
import math
import random
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


def dump(index: HistoryIndex) -> dict[str, list]:
    """What an index holds, by coin and currency: series facts, every key, the daily points, the covered days."""
    db = index.db
    names = {sid: (c, v) for sid, c, v in db.execute("SELECT id, coin_id, vs_currency FROM series")}
    return {
        "series": db.execute(
            "SELECT coin_id, vs_currency, name, symbol, rows, first_ms, last_ms, unnamed FROM series "
            "ORDER BY coin_id, vs_currency"
        ).fetchall(),
        "obs": sorted((*names[sid], ts) for sid, ts in index.stored_keys()),
        "daily": sorted(
            (*names[sid], day, ts, price, cap, rank) for sid, day, ts, price, cap, rank in index.stored_points()
        ),
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
                    built = dump(fast)
                    damaged = fast.damaged
                found, bad = csvio.observations(data)
                with HistoryIndex(":memory:") as careful:
                    careful._add(found)
                    self.assertEqual(built, dump(careful), f"odd every {odd_every}")
                self.assertEqual(damaged, bad)


class StoredOnceTest(unittest.TestCase):
    """Every key is stored once (a day's last observation in daily, the others in extra), whatever the order of the
    rows, the block a day's rows fall in, or how often a row is repeated."""

    @staticmethod
    def expected(found: list[csvio.Observation]) -> tuple[list, list]:
        keys = sorted({(o.coin_id, o.vs_currency, o.ts_ms) for o in found})
        last: dict[tuple[str, str, int], csvio.Observation] = {}
        for o in found:
            slot = (o.coin_id, o.vs_currency, o.ts_ms // 86_400_000)
            if slot not in last or o.ts_ms >= last[slot].ts_ms:
                last[slot] = o
        daily = sorted((*slot, o.ts_ms, o.price, o.market_cap, o.rank) for slot, o in last.items())
        return keys, daily

    def test_shuffled_repeated_rows_in_small_blocks_and_in_batches(self) -> None:
        rng = random.Random(5)
        lines = body(11, 4000, 0).decode().splitlines(keepends=True)
        lines += rng.sample(lines, 400)  # the same rows again (a key stored twice by hand)
        rng.shuffle(lines)
        data = "".join(lines).encode()
        found, _ = csvio.observations(data)
        keys, daily = self.expected(found)
        with tempfile.TemporaryDirectory() as tmp:
            csv_path = Path(tmp) / "crypto_data.csv"
            csv_path.write_bytes(HEADER_LINE.encode() + data)
            for chunk in (2048, 50_000, 4 << 20):
                with self.subTest(chunk=chunk), HistoryIndex(Path(tmp) / f"index-{chunk}.sqlite") as index:
                    index.CHUNK_BYTES = chunk
                    self.assertEqual(index.sync(csv_path), "rebuilt")
                    got = dump(index)
                    self.assertEqual(got["obs"], keys)  # each key once, none twice
                    self.assertEqual(got["daily"], daily)
                    self.assertEqual(index.rows, len(found))
            with HistoryIndex(":memory:") as batches:
                for start in range(0, len(found), 700):  # as runs append them
                    batches._add(found[start : start + 700])
                got = dump(batches)
                self.assertEqual((got["obs"], got["daily"]), (keys, daily))
                held = set(keys)
                asked = []
                for o in rng.sample(found, 50):
                    self.assertTrue(batches.has(o.coin_id, o.vs_currency, o.ts_ms))
                    later = (o.coin_id, o.vs_currency, o.ts_ms + 1)
                    self.assertEqual(batches.has(*later), later in held)
                    asked += [(o.coin_id, o.vs_currency, o.ts_ms), later, ("no-such-coin", "usd", o.ts_ms)]
                every = [(c, v, ts) for c, v, ts in keys] + [(c, v, ts + 1) for c, v, ts in keys]
                for batch in (asked, every):  # a batch gives what has() gives key by key
                    self.assertEqual(batches.held(batch), {key for key in batch if key in held})

    def test_readers_by_lookup_and_by_pass_agree(self) -> None:
        """A few coins' points are read by key lookups, many coins' by a pass over the days: the same points."""
        found, _ = csvio.observations(body(13, 6000, 0))
        _, daily = self.expected(found)
        with HistoryIndex(":memory:") as index:
            index._add(found)
            keys = sorted({(o.coin_id, o.vs_currency) for o in found})
            days = [d for _, _, d, *_ in daily]
            first, last = min(days), max(days)
            every = index.points_of(keys, first, last)
            for key in keys:
                want = [(ts, price, cap) for c, v, d, ts, price, cap, _ in daily if (c, v) == key]
                self.assertEqual(every[key], want)
                self.assertEqual(index.points(*key, first, last), want)  # one coin: lookups
                self.assertEqual(
                    index.points(*key, first + 3, first + 9),
                    [p for p in want if first + 3 <= p[0] // 86_400_000 <= first + 9],
                )
                for ts in (want[len(want) // 2][0], want[-1][0] + 1, want[0][0]):
                    before = [(t, cap) for t, _, cap in want if t < ts and cap is not None]
                    self.assertEqual(index.last_cap_before(*key, ts), before[-1] if before else None)
            for vs in ("eur", "usd"):
                whole = index.daily_points(vs)
                some = index.daily_points(vs, coins=["coin-3", "coin-7"])
                pick = [i for i, s in enumerate(whole.series) if whole.coin_id[s] in ("coin-3", "coin-7")]
                self.assertEqual(some.ts_ms, [whole.ts_ms[i] for i in pick])
                self.assertEqual(some.price, [whole.price[i] for i in pick])

    def test_a_build_records_the_bytes_standard_readers_take(self) -> None:
        """The build checks the plain blocks it reads for standard readers (so the first run need not read the
        whole file again), up to the first block that needs a closer look."""
        data = body(17, 3000, 0)
        lines = data.splitlines(keepends=True)
        for name, bad in (("a NUL", b"\x00"), ("bytes that are not UTF-8", b"\xff"), ("a blank line", b"\n")):
            with self.subTest(name), tempfile.TemporaryDirectory() as tmp:
                cut = sum(map(len, lines[:2000]))
                cells = lines[2000].split(b",")
                cells[COLUMNS.index("source")] = b"coins" + bad  # a cell the build does not read
                odd = b",".join(cells) if bad != b"\n" else b"\n" + lines[2000]
                csv_path = Path(tmp) / "crypto_data.csv"
                csv_path.write_bytes(HEADER_LINE.encode() + data[:cut] + odd + data[cut + len(lines[2000]) :])
                with HistoryIndex(Path(tmp) / "index.sqlite") as index:
                    index.CHUNK_BYTES = 20_000
                    index.sync(csv_path)
                    self.assertGreater(index.readable_upto, len(HEADER_LINE) + 50_000)
                    self.assertLessEqual(index.readable_upto, len(HEADER_LINE) + cut)
        with tempfile.TemporaryDirectory() as tmp:
            csv_path = Path(tmp) / "crypto_data.csv"
            csv_path.write_bytes(HEADER_LINE.encode() + data)
            with HistoryIndex(Path(tmp) / "index.sqlite") as index:
                index.CHUNK_BYTES = 20_000
                index.sync(csv_path)
                self.assertEqual(index.readable_upto, csv_path.stat().st_size)
                with open(csv_path, "ab") as fh:  # rows appended by hand: the catch-up checks them too
                    fh.write(b"".join(lines[:100]))
                self.assertEqual(index.sync(csv_path), "caught up")
                self.assertEqual(index.readable_upto, csv_path.stat().st_size)

    def test_a_delta_tables_rows_indexed_by_column_equal_those_indexed_one_by_one(self) -> None:
        """A new index caught up with a Delta table's files reads them column by column (add_table): the same
        index as add_observations of the same rows."""
        import pyarrow as pa

        from utils.history.delta_table import observations_of

        rng = random.Random(23)
        rows = []
        for i in range(3000):
            rows.append(
                {
                    "coin_id": None if i % 97 == 0 else f"coin-{i % 13}",
                    "vs_currency": "usd" if i % 3 else "eur",
                    "last_updated": None
                    if i % 101 == 0
                    else 1_704_067_200_000_000 + rng.randrange(90 * 86_400_000_000),
                    "current_price": None if i % 7 == 0 else rng.uniform(0.001, 1000),
                    "market_cap": None if i % 11 == 0 else float(rng.randint(0, 10**12)),
                    "market_cap_rank": None if i % 5 == 0 else (10**9 + i if i % 17 == 0 else 1 + i % 400),
                    "name": None if i % 9 == 0 else ("" if i % 10 == 0 else f"Coin {i % 13}"),
                    "symbol": None if i % 9 == 0 else f"c{i % 13}",
                }
            )
        table = pa.Table.from_pylist(
            rows,
            schema=pa.schema(
                [
                    ("coin_id", pa.string()),
                    ("vs_currency", pa.string()),
                    ("last_updated", pa.timestamp("us", tz="UTC")),
                    ("current_price", pa.float64()),
                    ("market_cap", pa.float64()),
                    ("market_cap_rank", pa.int64()),
                    ("name", pa.string()),
                    ("symbol", pa.string()),
                ]
            ),
        )
        with HistoryIndex(":memory:") as by_column, HistoryIndex(":memory:") as by_row:
            self.assertEqual(by_column.add_tables([table.slice(0, 1700), table.slice(1700)]), 2940)
            self.assertEqual(by_row.add_observations(observations_of(table), unseen=True), 2940)
            self.assertEqual(dump(by_column), dump(by_row))
            self.assertEqual(by_column.rows, by_row.rows)


if __name__ == "__main__":
    unittest.main()


class AppendedEqualsRebuilt(unittest.TestCase):
    """An index kept up run after run (each run's days folded into the covered ranges, most by extending a
    range by its next day) holds what an index rebuilt from the same CSV holds."""

    def test_runs_of_days_in_any_order(self) -> None:
        from tests.support import record
        from utils.history.csv_store import HistoryStore
        from utils.history.layout import DataLayout

        rng = random.Random(7)
        for trial in range(12):
            with self.subTest(trial=trial), tempfile.TemporaryDirectory() as tmp:
                layout = DataLayout(Path(tmp))
                store = HistoryStore(layout)
                days = list(range(1, 25))
                if trial % 3 == 0:
                    rng.shuffle(days)  # backfilled out of order; otherwise day after day as runs add them
                for start in range(0, len(days), rng.randint(1, 4)):
                    batch = days[start : start + rng.randint(1, 4)]
                    records = [
                        record(coin, f"2024-03-{d:02d}T{rng.randint(0, 23):02d}:00:00.000Z", current_price=1.0)
                        for d in batch
                        for coin in ("coin-a", "coin-b", "coin-c")
                        if rng.random() < 0.8
                    ]
                    if trial % 2:
                        store.append(records)
                    else:
                        store.merge(records)
                with HistoryIndex(layout.index) as index:
                    kept = dump(index)
                layout.index.unlink()
                with HistoryIndex(layout.index) as index:
                    index.sync(layout.csv)
                with HistoryIndex(layout.index) as index:
                    self.assertEqual(kept, dump(index))


class SeriesOfSomeCoins(unittest.TestCase):
    """index.series(coins=...) (the report's hundred coins of a large history) gives what filtering every
    series gives: names, counts and covered ranges, in one IN (...) list or, past 500 coins, by filtering."""

    def test_some_coins_are_every_series_filtered(self) -> None:
        rng = random.Random(5)
        lines = []
        for coin in range(700):
            for day in rng.sample(range(1, 29), 4):  # gaps: several covered ranges a coin
                cells = [""] * len(COLUMNS)
                cells[COLUMNS.index("coin_id")] = f"coin-{coin}"
                cells[COLUMNS.index("name")], cells[COLUMNS.index("symbol")] = f"Coin {coin}", f"c{coin}"
                cells[COLUMNS.index("vs_currency")] = "usd" if coin % 3 else "eur"
                cells[COLUMNS.index("last_updated")] = f"2024-02-{day:02d}T00:00:00.000Z"
                cells[COLUMNS.index("current_price")] = str(1 + coin)
                lines.append(",".join(cells) + "\n")
        with tempfile.TemporaryDirectory() as tmp:
            csv_path = Path(tmp) / "crypto_data.csv"
            csv_path.write_text(HEADER_LINE + "".join(lines))
            with HistoryIndex(Path(tmp) / "index.sqlite") as index:
                index.sync(csv_path)
                every = index.series()
                self.assertEqual(len(every), 700)
                for vs in (None, "usd", "eur"):
                    for wanted in (
                        [],
                        ["coin-3", "coin-4", "no-such-coin", "coin-4"],
                        [f"coin-{i}" for i in range(0, 700, 1)],
                    ):
                        with self.subTest(vs=vs, coins=len(wanted)):
                            expected = [s for s in every if s.coin_id in set(wanted) and vs in (None, s.vs_currency)]
                            self.assertEqual(index.series(vs, coins=wanted), expected)
                            self.assertTrue(all(s.covered for s in expected))
                self.assertEqual(index.series(coin_id="coin-5"), [s for s in every if s.coin_id == "coin-5"])


class IndexSize(unittest.TestCase):
    """The index stays within 15 % of the CSV it indexes (issue 18's target) for lines as CoinGecko's markets answer
    gives them (prices of six significant digits, integral caps: about 175 bytes a line), in day order as runs
    append them and in coin order as backfills do. A row per point (schema 4) took about 33 bytes, 19 % of such
    a file; 16 points to a row take about 23.5."""

    @staticmethod
    def lines(coins: int, days: int) -> list[str]:
        rng = random.Random(3)
        out = []
        for day in range(days):
            date = (datetime.date(2024, 1, 1) + datetime.timedelta(days=day)).isoformat()
            for coin in range(coins):
                price, supply = 10 ** rng.uniform(-6, 5), 10 ** rng.uniform(6, 11)
                cells = {
                    "name": f"Coin {coin}",
                    "symbol": f"c{coin}",
                    "current_price": f"{price:.6g}",
                    "market_cap": str(int(price * supply)),
                    "price_change_percentage_24h": f"{rng.uniform(-9, 9):.5f}",
                    "circulating_supply": f"{supply:.1f}",
                    "last_updated": f"{date}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:07.{coin % 1000:03d}Z",
                    "fetched_at": f"{date}T23:59:00.000Z",
                    "coin_id": f"coin-{coin}",
                    "vs_currency": "usd",
                    "market_cap_rank": str(coin + 1),
                    "total_volume": str(int(price * supply / 20)),
                    "high_24h": f"{price * 1.02:.6g}",
                    "low_24h": f"{price * 0.98:.6g}",
                    "total_supply": f"{supply * 1.2:.1f}",
                    "source": "coins_markets",
                }
                out.append(",".join(cells.get(column, "") for column in COLUMNS) + "\n")
        return out

    def test_the_index_is_within_15_percent_of_the_csv(self) -> None:
        by_day = self.lines(1000, 112)
        by_coin = sorted(by_day, key=lambda line: line.split(",")[COLUMNS.index("coin_id")])
        for order, lines in (("day after day", by_day), ("coin after coin", by_coin)):
            with self.subTest(order=order), tempfile.TemporaryDirectory() as tmp:
                csv_path = Path(tmp) / "crypto_data.csv"
                csv_path.write_text(HEADER_LINE + "".join(lines))
                with HistoryIndex(Path(tmp) / "index.sqlite") as index:
                    self.assertEqual(index.sync(csv_path), "rebuilt")
                    self.assertEqual(len(index.stored_points()), 112_000)
                size = sum(p.stat().st_size for p in Path(tmp).glob("index.sqlite*"))
                self.assertLessEqual(size / csv_path.stat().st_size, 0.15, f"{size:,} bytes")
