"""The load stage end to end: the CSV history, its index, torn tails, legacy migration and bad folders."""

from __future__ import annotations

import csv
import io
import os
import sqlite3
import subprocess
import sys
import unittest
from collections.abc import Callable
from pathlib import Path

from tests.fake_coingecko import load_fixture
from tests.support import MAIN, PipelineTestCase, drop_file_capabilities, read_rows
from utils.history.csvio import timestamp_ms
from utils.history.index import SCHEMA_VERSION, HistoryIndex
from utils.history.schema import COLUMNS, HEADER_LINE

FIXTURE = load_fixture("coins_markets_2023-01-08_real_10coins.json")
# The ids the recorded fixture really holds, so a run is complete (exit 0) rather than partial.
PRESENT_IDS = tuple(row["id"] for row in FIXTURE)
NEWEST = {row["id"]: row["last_updated"] for row in FIXTURE}

LEGACY_HEADER = "name,symbol,current_price,market_cap,price_change_percentage_24h,circulating_supply,last_updated\n"
# The original script's nine coins, a day before the fixture, as it wrote them.
LEGACY_ROWS = (
    ("Bitcoin,btc,16880.1,325000000000,-0.5,19255000,2023-01-07T16:49:40.132Z\n", "bitcoin"),
    ("Ethereum,eth,1260.5,151000000000,0.1,120524000.5,2023-01-07T16:49:52.403Z\n", "ethereum"),
    ("BNB,bnb,260.01,42000000000,1.2,163276974.63,2023-01-07T16:49:47.049Z\n", "binancecoin"),
    ("Cardano,ada,0.27,9300000000,0.9,34500000000,2023-01-07T16:49:41.000Z\n", "cardano"),
    ("Solana,sol,13.4,4900000000,2.5,367000000,2023-01-07T16:49:42.000Z\n", "solana"),
    ("Dogecoin,doge,0.0715,9800000000,-0.2,137640000000,2023-01-07T16:49:40.975Z\n", "dogecoin"),
    ("Polkadot,dot,4.3,5000000000,0.3,1160000000,2023-01-07T16:49:43.000Z\n", "polkadot"),
    ("Litecoin,ltc,75.2,5400000000,1.1,71900000,2023-01-07T16:49:44.000Z\n", "litecoin"),
    ("Avalanche,avax,12.5,3900000000,1.2,312000000,2023-01-07T16:49:30.000Z\n", "avalanche-2"),
    # The very observation the fake serves for bitcoin: the run must treat it as already stored.
    ("Bitcoin,btc,16951.52,326407877229,0.14088,19256218,2023-01-08T16:49:40.132Z\n", "bitcoin"),
)
UNMAPPED_ROW = "Chainlink,link,5.6,2850000000,0.7,507999970,2023-01-07T16:49:45.000Z\n"


def parse_strict(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the CSV, failing on a missing final newline or any line of the wrong width."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        raise AssertionError(f"{path} does not end with a newline: {data[-80:]!r}")
    lines = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    for number, row in enumerate(lines, start=1):
        if len(row) != len(COLUMNS):
            raise AssertionError(f"line {number} of {path} has {len(row)} fields, not {len(COLUMNS)}: {row!r}")
    return lines[0], lines[1:]


def keys(rows: list[dict[str, str]]) -> list[tuple[str, str, str]]:
    """Identity of every row, in file order."""
    return [(r["coin_id"], r["vs_currency"], r["last_updated"]) for r in rows]


def tree(folder: Path) -> list[str]:
    """Every path below folder, relative and sorted."""
    found = []
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            found.append(os.path.relpath(os.path.join(root, name), folder))
    return sorted(found)


def error_lines(stderr: str) -> list[str]:
    """The lines that report the failure itself (warnings excluded)."""
    return [line for line in stderr.splitlines() if line.startswith(("run failed", "config error"))]


class LoadTestCase(PipelineTestCase):
    """A pipeline test whose coins are exactly the ones the fixture holds."""

    def setUp(self) -> None:
        super().setUp()
        self.env["PIPELINE_COINS"] = ",".join(PRESENT_IDS)

    @property
    def index_file(self) -> Path:
        return self.data_dir / ".state" / "crypto_data.csv.index.sqlite"

    @property
    def quarantine(self) -> Path:
        return self.data_dir / "crypto_data.csv.quarantine"

    def run_ok(self, *argv: str) -> str:
        """Run in-process, insist on exit 0, return stderr."""
        result = self.run_main(*argv)
        self.assertEqual(result.code, 0, result.stderr)
        self.assertNotIn("Traceback", result.stderr)
        return result.stderr

    def assert_clean_history(self) -> list[dict[str, str]]:
        """The CSV starts with our header, every line has every column, and no observation repeats."""
        self.assertTrue(self.csv_bytes().startswith(HEADER_LINE.encode()))
        parse_strict(self.csv_path)
        rows = self.rows()
        self.assertEqual(len(keys(rows)), len(set(keys(rows))), "an observation is stored twice")
        return rows


class AppendOnceTest(LoadTestCase):
    """Identity (coin_id, vs_currency, last_updated): a run appends only what the history lacks."""

    def test_first_run_writes_the_header_and_one_row_per_coin(self) -> None:
        stderr = self.run_ok()
        self.assertIn("run ok: 10 coins, 10 rows appended, 0 duplicates skipped", stderr)
        header, _ = parse_strict(self.csv_path)
        self.assertEqual(",".join(header) + "\n", HEADER_LINE)
        self.assertEqual(self.csv_bytes().split(b"\n", 1)[0] + b"\n", HEADER_LINE.encode())
        rows = self.assert_clean_history()
        self.assertEqual(sorted(keys(rows)), sorted((c, "eur", ts) for c, ts in NEWEST.items()))
        bitcoin = next(r for r in rows if r["coin_id"] == "bitcoin")
        self.assertEqual(
            (bitcoin["name"], bitcoin["current_price"], bitcoin["source"]), ("Bitcoin", "16951.52", "coins_markets")
        )

    def test_second_run_appends_nothing(self) -> None:
        self.run_ok()
        before = self.csv_bytes()
        stderr = self.run_ok()
        self.assertIn("0 rows appended, 10 duplicates skipped", stderr)
        self.assertEqual(self.csv_bytes(), before)

    def test_new_observations_are_appended_after_the_old_ones(self) -> None:
        self.run_ok()
        before = self.csv_bytes()
        self.fake.advance(60)
        self.assertIn("10 rows appended", self.run_ok())
        after = self.csv_bytes()
        self.assertTrue(after.startswith(before), "the old rows were rewritten")
        rows = self.assert_clean_history()
        self.assertEqual(len(rows), 20)
        self.assertEqual(after.count(HEADER_LINE.encode()), 1)

    def test_the_index_records_every_key_and_the_csv_size(self) -> None:
        self.run_ok()
        with HistoryIndex(self.index_file) as index:
            meta = dict(index.db.execute("SELECT k, v FROM meta"))
            names = dict(((i, (c, v)) for i, c, v in index.db.execute("SELECT id, coin_id, vs_currency FROM series")))
            stored = {(*names[sid], ts) for sid, ts in index.stored_keys()}
            daily = len(index.stored_points())
        self.assertEqual(int(meta["size"]), len(self.csv_bytes()))
        self.assertEqual((int(meta["rows"]), int(meta["damaged"])), (10, 0))
        self.assertEqual(stored, {(c, "eur", timestamp_ms(ts)) for c, ts in NEWEST.items()})
        self.assertEqual(daily, 10)
        self.assertFalse((self.data_dir / ".state" / "crypto_data.csv.state.json").exists())


class IndexFileTest(LoadTestCase):
    """The index is a cache of the CSV: trusted when it matches the CSV, caught up or rebuilt when not."""

    def lie_in_index(self, coin_id: str, last_updated: str) -> None:
        """Claim an observation the CSV does not hold, keeping the recorded offset and hashes."""
        with sqlite3.connect(self.index_file) as db:
            (series,) = db.execute(
                "SELECT id FROM series WHERE coin_id = ? AND vs_currency = 'eur'", (coin_id,)
            ).fetchone()
            db.execute("INSERT INTO extra (series, ts) VALUES (?, ?)", (series, timestamp_ms(last_updated)))

    def advanced(self, coin_id: str) -> str:
        return next(r for r in self.fake.coins if r["id"] == coin_id)["last_updated"]

    def test_csv_grown_by_hand_only_the_tail_is_read(self) -> None:
        self.run_ok()
        self.fake.advance(60)
        self.lie_in_index("ethereum", self.advanced("ethereum"))  # survives only if the index is trusted
        rows = self.rows()
        line = dict(next(r for r in rows if r["coin_id"] == "bitcoin"), last_updated=self.advanced("bitcoin"))
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow([line[c] for c in COLUMNS])
        with open(self.csv_path, "ab") as fh:  # appended after the recorded offset
            fh.write(buf.getvalue().encode())

        stderr = self.run_ok()
        self.assertIn("8 rows appended, 2 duplicates skipped", stderr)
        rows = self.assert_clean_history()
        self.assertEqual(len(rows), 19)
        self.assertEqual(sum(r["coin_id"] == "bitcoin" for r in rows), 2)
        self.assertEqual(sum(r["coin_id"] == "ethereum" for r in rows), 1)
        with sqlite3.connect(self.index_file) as db:
            self.assertEqual(
                int(db.execute("SELECT v FROM meta WHERE k = 'size'").fetchone()[0]), len(self.csv_bytes())
            )

    def test_csv_shorter_than_recorded_rebuilds_and_restores_the_lost_rows(self) -> None:
        self.run_ok()
        first = self.csv_bytes()
        self.fake.advance(60)
        self.run_ok()
        self.csv_path.write_bytes(first)  # the newer ten rows are gone; the index still holds their keys
        stderr = self.run_ok()
        self.assertIn("10 rows appended", stderr)
        self.assertEqual(len(self.assert_clean_history()), 20)

    def test_csv_edited_near_the_recorded_end_rebuilds(self) -> None:
        self.run_ok()
        self.fake.advance(60)
        self.lie_in_index("ethereum", self.advanced("ethereum"))
        data = self.csv_bytes()
        last_line_start = data.rstrip(b"\n").rfind(b"\n") + 1
        edited = data[:last_line_start] + data[last_line_start:].replace(b"Coin", b"Cain", 1)
        if edited == data:
            edited = data[:last_line_start] + b"X" + data[last_line_start + 1 :]
        self.assertEqual(len(edited), len(data))
        self.csv_path.write_bytes(edited)
        stderr = self.run_ok()
        self.assertIn("10 rows appended", stderr)  # the lie about ethereum did not survive

    def use_fresh_data_dir(self, name: str) -> None:
        """Point this test at a new, empty data folder."""
        self.data_dir = Path(self.tmp.name) / name
        self.data_dir.mkdir()
        self.csv_path = self.data_dir / "crypto_data.csv"
        self.env["PIPELINE_DATA_DIR"] = str(self.data_dir)

    def test_an_index_in_the_earlier_layout_is_rebuilt_once_and_says_so(self) -> None:
        """Schema 2 kept every key in obs and each day's last point again in daily; schema 3 keeps each key once.
        An index of version 2 is dropped and rebuilt from the CSV, with one line, and its space given back."""
        self.run_ok()
        with sqlite3.connect(self.index_file) as db:
            meta = dict(db.execute("SELECT k, v FROM meta"))
        self.index_file.unlink()
        with sqlite3.connect(self.index_file) as db:  # the layout version 2 wrote, its tables full of old keys
            db.executescript(
                "CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT) WITHOUT ROWID;"
                "CREATE TABLE series (id INTEGER PRIMARY KEY, coin_id TEXT NOT NULL, vs_currency TEXT NOT NULL);"
                "CREATE TABLE obs (series INTEGER NOT NULL, ts INTEGER NOT NULL, PRIMARY KEY (ts, series)) WITHOUT ROWID;"
                "CREATE TABLE daily (series INTEGER NOT NULL, day INTEGER NOT NULL, ts INTEGER NOT NULL, price REAL, "
                "cap REAL, rank INTEGER, PRIMARY KEY (day, series)) WITHOUT ROWID;"
            )
            db.executemany("INSERT INTO meta VALUES (?, ?)", [*{**meta, "version": "2"}.items()])
            db.executemany("INSERT INTO obs VALUES (?, ?)", ((i % 7, i) for i in range(600_000)))
        before = self.index_file.stat().st_size
        stderr = self.run_ok("status")
        said = [line for line in stderr.splitlines() if "another version" in line]
        self.assertEqual(len(said), 1, stderr)
        self.assertIn("rebuilding it from the history", said[0])
        with sqlite3.connect(self.index_file) as db:
            self.assertEqual(db.execute("SELECT v FROM meta WHERE k = 'version'").fetchone()[0], SCHEMA_VERSION)
            self.assertIsNone(db.execute("SELECT type FROM sqlite_master WHERE name = 'obs'").fetchone())
        with HistoryIndex(self.index_file) as index:
            names = dict(index.db.execute("SELECT id, coin_id FROM series"))
            stored = {(names[sid], ts) for sid, ts in index.stored_keys()}
        self.assertEqual(stored, {(c, timestamp_ms(ts)) for c, ts in NEWEST.items()})
        self.assertLess(self.index_file.stat().st_size, before / 2)  # the old keys' pages were given back
        self.assertNotIn("another version", self.run_ok("status"))
        self.assertIn("0 rows appended, 10 duplicates skipped", self.run_ok())

    def test_damage_found_while_reading_is_one_line_and_the_next_command_rebuilds(self) -> None:
        """A row of the index that does not decode is found only when a command reads it: that command says so in
        one line (exit 1) and removes the index; the next one builds it again from the CSV, which is never
        touched."""
        self.run_ok()
        before = self.csv_bytes()
        day = NEWEST["bitcoin"][:10]
        newest = "WHERE k = (SELECT max(k) FROM daily)"
        for name, value in (
            ("row cut short", "x'0300'"),
            ("mask and entries disagree", "substr(v, 1, length(v) - 22)"),
        ):
            with self.subTest(damage=name):
                with sqlite3.connect(self.index_file) as db:
                    db.execute(f"UPDATE daily SET v = {value} {newest}")  # noqa: S608 - the test's own values
                result = self.run_main("top", "--date", day)
                self.assertEqual(result.code, 1, result.stderr)
                lines = [line for line in result.stderr.splitlines() if "damaged" in line]
                self.assertEqual(len(lines), 1, result.stderr)
                self.assertIn("run the command again", lines[0])
                self.assertNotIn("unexpected", result.stderr)
                self.assertFalse(self.index_file.exists())
                self.assertIn("bitcoin", self.run_main("top", "--date", day).stdout)
                self.assertEqual(self.csv_bytes(), before)
                self.assertIn("0 rows appended, 10 duplicates skipped", self.run_ok())

    def test_damage_found_by_a_run_is_built_again_and_the_run_goes_on(self) -> None:
        """A second run the same day reads that day's rows to find what is stored: a damaged one makes it build
        the index again from the CSV and go on (a daemon's later runs too), never 'unexpected'."""
        self.run_ok()
        before = self.csv_bytes()
        with sqlite3.connect(self.index_file) as db:
            db.execute("UPDATE daily SET v = x'0300' WHERE k = (SELECT max(k) FROM daily)")
        stderr = self.run_ok()
        self.assertIn("is damaged", stderr)
        self.assertIn("building it again from the CSV", stderr)
        self.assertIn("0 rows appended, 10 duplicates skipped", stderr)
        self.assertNotIn("unexpected", stderr)
        self.assertEqual(self.csv_bytes(), before)
        stderr = self.run_ok()
        self.assertNotIn("damaged", stderr)
        self.assertIn("0 rows appended, 10 duplicates skipped", stderr)
        self.fake.advance(60)
        self.assertIn("10 rows appended", self.run_ok())
        self.assertEqual(len(self.assert_clean_history()), 20)

    def test_missing_or_corrupt_index_is_rebuilt_without_duplicates(self) -> None:
        def execute(sql: str) -> Callable[[Path], None]:
            def spoil(path: Path) -> None:
                with sqlite3.connect(path) as db:
                    db.execute(sql)

            return spoil

        def replace(payload: bytes) -> Callable[[Path], None]:
            def spoil(path: Path) -> None:
                for suffix in ("-wal", "-shm"):
                    Path(str(path) + suffix).unlink(missing_ok=True)
                path.write_bytes(payload)

            return spoil

        variants: dict[str, Callable[[Path], None]] = {
            "missing": lambda path: path.unlink(),
            "empty file": replace(b""),
            "garbage bytes": replace(b"\x00\xff\xfe garbage \x89PNG\r\n" * 300),
            "truncated": lambda path: replace(path.read_bytes()[:100])(path),
            "future version 99": execute("UPDATE meta SET v = '99' WHERE k = 'version'"),
            "other columns": execute("UPDATE meta SET v = 'name,symbol' WHERE k = 'columns'"),
            "size beyond the csv": execute("UPDATE meta SET v = v + 1000 WHERE k = 'size'"),
            "size not a number": execute("UPDATE meta SET v = 'big' WHERE k = 'size'"),
            "hash of another file": execute("UPDATE meta SET v = 'ab' WHERE k = 'tail'"),
            "no bookkeeping at all": execute("DELETE FROM meta"),
            "keys and bookkeeping gone": lambda path: (
                execute("DELETE FROM daily")(path),
                execute("DELETE FROM extra")(path),
                execute("DELETE FROM meta")(path),
            ),
        }
        for number, (name, spoil) in enumerate(variants.items()):
            with self.subTest(index=name):
                self.use_fresh_data_dir(f"data-{number}")
                self.run_ok()
                spoil(self.index_file)
                before = self.csv_bytes()
                stderr = self.run_ok()
                self.assertIn("0 rows appended, 10 duplicates skipped", stderr)
                self.assertEqual(self.csv_bytes(), before)
                with HistoryIndex(self.index_file) as index:
                    self.assertEqual(len(index.stored_keys()), 10)
                    self.assertEqual(index.mark().size, len(before))
                self.fake.advance(60)
                self.assertIn("10 rows appended", self.run_ok())
                self.assertEqual(len(self.assert_clean_history()), 20)


class TornTailTest(LoadTestCase):
    """A last line without its newline goes to the quarantine file, never silently away."""

    def test_half_a_row_is_quarantined_and_the_run_appends(self) -> None:
        self.run_ok()
        self.fake.advance(60)
        whole = self.csv_bytes()
        torn = whole.splitlines(keepends=True)[1][:57]  # half of a real row, no newline
        self.assertFalse(torn.endswith(b"\n"))
        with open(self.csv_path, "ab") as fh:
            fh.write(torn)

        stderr = self.run_ok()
        self.assertIn("cut short", stderr)
        self.assertIn(str(self.quarantine), stderr)
        self.assertIn(torn, self.quarantine.read_bytes())
        self.assertIn("10 rows appended", stderr)
        self.assertTrue(self.csv_bytes().startswith(whole))
        self.assertEqual(len(self.assert_clean_history()), 20)
        # The next run finds nothing torn and adds nothing to the quarantine.
        quarantined = self.quarantine.read_bytes()
        self.assertIn("0 rows appended", self.run_ok())
        self.assertEqual(self.quarantine.read_bytes(), quarantined)

    def test_a_whole_row_missing_only_its_newline_is_completed_not_quarantined(self) -> None:
        # Issue 21, finding 9: a complete, valid last row without its newline was quarantined as "torn".
        self.run_ok()
        self.fake.advance(60)
        self.run_ok()
        data = self.csv_bytes()
        self.csv_path.write_bytes(data[:-1])  # the last row lost its newline
        stderr = self.run_ok()
        self.assertFalse(self.quarantine.exists())
        self.assertIn("0 rows appended", stderr)  # the observation stayed: nothing to fetch again
        self.assertEqual(self.csv_bytes(), data)
        rows = self.assert_clean_history()
        self.assertEqual(len(rows), 20)

    def test_a_last_row_cut_inside_its_last_cell_is_still_torn(self) -> None:
        self.run_ok()
        data = self.csv_bytes()
        self.csv_path.write_bytes(data[:-5])  # "coins_markets" cut to "coins_mar": a valid-looking but torn row
        self.run_ok()
        self.assertIn(data[:-5].rsplit(b"\n", 1)[1], self.quarantine.read_bytes())
        self.assertEqual(len(self.assert_clean_history()), 10)

    def test_torn_tail_right_after_the_header(self) -> None:
        self.csv_path.write_bytes(HEADER_LINE.encode() + b"Bitcoin,btc,169")
        stderr = self.run_ok()
        self.assertIn(b"Bitcoin,btc,169", self.quarantine.read_bytes())
        self.assertIn("10 rows appended", stderr)
        self.assertEqual(len(self.assert_clean_history()), 10)


class LegacyMigrationTest(LoadTestCase):
    """A CSV in the original script's seven columns is migrated once, with a backup."""

    def write_legacy(self) -> bytes:
        # The original script appended every row three times or so.
        body = "".join(line * 3 for line, _ in LEGACY_ROWS) + UNMAPPED_ROW
        data = (LEGACY_HEADER + body).encode()
        self.csv_path.write_bytes(data)
        return data

    def test_legacy_csv_is_migrated_then_the_run_appends(self) -> None:
        original = self.write_legacy()
        stderr = self.run_ok()

        backups = sorted(self.data_dir.glob("crypto_data.csv.legacy-*.bak"))
        self.assertEqual(len(backups), 1, os.listdir(self.data_dir))
        self.assertRegex(backups[0].name, r"^crypto_data\.csv\.legacy-\d{8}T\d{6}Z\.bak$")
        self.assertEqual(backups[0].read_bytes(), original)

        migrated_line = next(line for line in stderr.splitlines() if "migrated" in line)
        self.assertIn("31 rows read, 10 written, 20 exact duplicates dropped", migrated_line)
        self.assertIn("1 unmapped", migrated_line)
        self.assertIn(UNMAPPED_ROW.strip(), self.quarantine.read_text())

        header, _ = parse_strict(self.csv_path)
        self.assertEqual(",".join(header) + "\n", HEADER_LINE)
        rows = self.assert_clean_history()
        legacy = [r for r in rows if r["source"] == "legacy"]
        self.assertEqual(
            sorted((r["coin_id"], r["last_updated"]) for r in legacy),
            sorted((coin, line.rstrip("\n").rsplit(",", 1)[1]) for line, coin in LEGACY_ROWS),
        )
        self.assertEqual({r["vs_currency"] for r in legacy}, {"eur"})
        avalanche = next(r for r in legacy if r["coin_id"] == "avalanche-2")
        self.assertEqual(
            (
                avalanche["name"],
                avalanche["symbol"],
                avalanche["current_price"],
                avalanche["market_cap"],
                avalanche["circulating_supply"],
            ),
            ("Avalanche", "avax", "12.5", "3900000000", "312000000"),
        )
        self.assertNotIn("chainlink", {r["coin_id"] for r in rows})
        self.assertNotIn("Chainlink", {r["name"] for r in rows})

        # Then the run itself: nine new observations; bitcoin's is the one the legacy file already held.
        self.assertIn("9 rows appended, 1 duplicate skipped", stderr)
        fresh = [r for r in rows if r["source"] == "coins_markets"]
        self.assertEqual(sorted(r["coin_id"] for r in fresh), sorted(set(PRESENT_IDS) - {"bitcoin"}))
        self.assertEqual(len(rows), 19)

    def test_migration_happens_once(self) -> None:
        self.write_legacy()
        self.run_ok()
        after_first = self.csv_bytes()
        stderr = self.run_ok()
        self.assertNotIn("migrated", stderr)
        self.assertEqual(self.csv_bytes(), after_first)
        self.assertEqual(len(list(self.data_dir.glob("*.bak"))), 1)


class ForeignHeaderTest(LoadTestCase):
    """Any header other than ours or the legacy one: exit 2, name the columns, touch nothing."""

    def check_refused(self, content: bytes, missing: list[str], extra: list[str]) -> str:
        self.csv_path.write_bytes(content)
        result = self.run_main()
        self.assertEqual(result.code, 2, result.stderr)
        self.assertEqual(self.csv_bytes(), content)
        [line] = error_lines(result.stderr)
        self.assertIn(str(self.csv_path), line)
        if missing:
            self.assertIn("missing " + ", ".join(missing), line)
        else:
            self.assertNotIn("missing", line)
        if extra:
            self.assertIn("extra " + ", ".join(extra), line)
        else:
            self.assertNotIn("extra", line)
        self.assertFalse(self.quarantine.exists())
        self.assertEqual([p.name for p in self.data_dir.glob("*.bak")], [])
        return line

    def test_unrelated_header(self) -> None:
        self.check_refused(b"date,price\n2024-01-01,3\n", list(COLUMNS), ["date", "price"])

    def test_our_columns_plus_one(self) -> None:
        self.check_refused((HEADER_LINE.rstrip("\n") + ",note\n").encode(), [], ["note"])

    def test_our_columns_minus_one(self) -> None:
        header = ",".join(c for c in COLUMNS if c != "source") + "\n"
        self.check_refused(header.encode(), ["source"], [])

    def test_legacy_columns_plus_one(self) -> None:
        content = (LEGACY_HEADER.rstrip("\n") + ",rank\n" + LEGACY_ROWS[0][0].rstrip("\n") + ",1\n").encode()
        self.check_refused(content, list(COLUMNS[7:]), ["rank"])

    def test_our_columns_in_another_order(self) -> None:
        header = ",".join(reversed(COLUMNS)) + "\n"
        line = self.check_refused(header.encode(), [], [])
        self.assertIn("another order", line)

    def test_foreign_file_without_final_newline_is_left_byte_identical(self) -> None:
        # A refused file is not ours to repair: its "torn" last line must not be cut off.
        self.check_refused(b"date,price\n2024-01-01,3\n2024-01-02,4", list(COLUMNS), ["date", "price"])


class BadFolderTest(LoadTestCase):
    """Folders the history cannot live in: a clear one-line error, nothing created, history untouched."""

    def run_restricted(self, *argv: str) -> subprocess.CompletedProcess:
        """python main.py as a process that file permissions apply to (root gives up its capabilities)."""
        env = dict(os.environ)
        env.update(self.env)
        preexec = drop_file_capabilities if os.geteuid() == 0 else None
        return subprocess.run(
            [sys.executable, str(MAIN), *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=self.tmp.name,
            preexec_fn=preexec,
        )

    def probe_read_only(self, path: Path) -> None:
        """Skip unless a restricted child really cannot write path."""
        probe = self.run_restricted_python(f"import os,sys; sys.exit(0 if os.access({str(path)!r}, os.W_OK) else 3)")
        if probe != 3:
            self.skipTest("file permissions are not enforced here (running with root capabilities)")

    def run_restricted_python(self, code: str) -> int:
        preexec = drop_file_capabilities if os.geteuid() == 0 else None
        return subprocess.run([sys.executable, "-c", code], preexec_fn=preexec, timeout=30).returncode

    def make_read_only(self, whole_tree: bool) -> None:
        if whole_tree:
            for root, dirs, files in os.walk(self.data_dir):
                for name in files:
                    os.chmod(os.path.join(root, name), 0o444)
                for name in dirs:
                    os.chmod(os.path.join(root, name), 0o555)
        os.chmod(self.csv_path, 0o444)
        os.chmod(self.data_dir, 0o555)
        self.addCleanup(self.make_writable)

    def make_writable(self) -> None:
        os.chmod(self.data_dir, 0o755)
        for root, dirs, _ in os.walk(self.data_dir):
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o755)

    def assert_one_line_failure(self, code: int, stderr: str, path: Path | str) -> str:
        self.assertIn(code, (1, 2), stderr)
        self.assertNotIn("Traceback", stderr)
        lines = error_lines(stderr)
        self.assertEqual(len(lines), 1, stderr)
        self.assertIn(str(path), lines[0])
        return lines[0]

    def test_read_only_data_folder(self) -> None:
        self.run_ok()
        self.fake.advance(60)
        before, listing = self.csv_bytes(), tree(self.data_dir)
        self.make_read_only(whole_tree=False)
        self.probe_read_only(self.csv_path)
        proc = self.run_restricted("--lock-timeout", "10")
        line = self.assert_one_line_failure(proc.returncode, proc.stderr, self.data_dir)
        self.assertIn("permission denied", line)
        self.assertEqual(self.csv_bytes(), before)
        self.assertEqual(sorted(os.listdir(self.data_dir)), sorted(p for p in listing if os.sep not in p))

    def test_read_only_data_tree(self) -> None:
        self.run_ok()
        self.fake.advance(60)
        before, listing = self.csv_bytes(), tree(self.data_dir)
        self.make_read_only(whole_tree=True)
        self.probe_read_only(self.csv_path)
        proc = self.run_restricted("--lock-timeout", "10")
        line = self.assert_one_line_failure(proc.returncode, proc.stderr, self.data_dir)
        self.assertIn("permission denied", line)
        self.assertEqual(self.csv_bytes(), before)
        self.assertEqual(tree(self.data_dir), listing)

    def test_data_dir_under_a_regular_file(self) -> None:
        blocker = Path(self.tmp.name) / "not-a-folder"
        blocker.write_bytes(b"keep me\n")
        listing = tree(Path(self.tmp.name))
        result = self.run_subprocess("--data-dir", str(blocker / "deeper"))
        line = self.assert_one_line_failure(result.code, result.stderr, blocker / "deeper")
        self.assertRegex(line, r"(?i)file.*(folder|directory)")
        self.assertEqual(blocker.read_bytes(), b"keep me\n")
        self.assertEqual(tree(Path(self.tmp.name)), listing)

    def test_data_dir_whose_parent_is_missing(self) -> None:
        top = Path(self.tmp.name) / "x"
        target = top / "does-not-exist" / "deeper"
        result = self.run_subprocess("--data-dir", str(target))
        self.assertFalse(
            top.exists(),
            f"created {tree(top) if top.exists() else ''} under {top}; exit {result.code}; stderr {result.stderr!r}",
        )
        self.assert_one_line_failure(result.code, result.stderr, target)

    def test_csv_replaced_by_a_directory(self) -> None:
        self.run_ok()
        self.csv_path.unlink()
        self.csv_path.mkdir()
        (self.csv_path / "inside.txt").write_bytes(b"x")
        result = self.run_subprocess()
        line = self.assert_one_line_failure(result.code, result.stderr, self.csv_path)
        self.assertIn("a folder stands where a file belongs", line)
        self.assertEqual(os.listdir(self.csv_path), ["inside.txt"])

    def test_existing_history_survives_a_failed_run_elsewhere(self) -> None:
        self.run_ok()
        before = self.csv_bytes()
        blocker = Path(self.tmp.name) / "file"
        blocker.write_bytes(b"")
        result = self.run_main("--data-dir", str(blocker / "deeper"))
        self.assertIn(result.code, (1, 2), result.stderr)
        self.assertEqual(self.csv_bytes(), before)
        self.assertEqual(len(read_rows(self.csv_path)), 10)


if __name__ == "__main__":
    unittest.main()
