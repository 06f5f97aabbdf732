"""Issue 10's proofs: a key index never drops an observation; one CSV reader for every command."""

from __future__ import annotations

import gzip
import json
import os
import random
import subprocess
import threading
import unittest
from collections import Counter
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from tests.fake_coingecko import format_iso_ms, make_daily_chart, markets_rows
from tests.support import PipelineTestCase, record, slow_part
from utils.history import csvio
from utils.history.schema import COLUMNS, HEADER_LINE, normalize_timestamp

NOW = datetime.now(timezone.utc).replace(microsecond=0)


def csv_keys(csv_path: Path) -> list[tuple[str, str, str]]:
    """(coin_id, vs_currency, last_updated) of every valid row, read by the csv module itself."""
    import csv

    with open(csv_path, newline="", encoding="utf-8") as fh:
        return [
            (r["coin_id"], r["vs_currency"], r["last_updated"])
            for r in csv.DictReader(fh)
            if r.get("source") and r.get("last_updated")
        ]


def raw_market_keys(data_dir: Path) -> set[tuple[str, str, str]]:
    """Every observation CoinGecko served, as the raw archive kept it."""
    keys = set()
    for path in (data_dir / "raw").rglob("*coins_markets_*.json.gz"):
        payload = json.loads(gzip.decompress(path.read_bytes()))
        for page in payload["pages"]:
            for row in page:
                keys.add((row["id"], payload["vs_currency"], normalize_timestamp(row["last_updated"])))
    return keys


class OrderOfArrival(PipelineTestCase):
    """An observation is stored exactly when its key is new, whatever arrives first."""

    def setUp(self) -> None:
        super().setUp()
        self.newer = markets_rows(5, start=NOW - timedelta(minutes=5))
        self.older = markets_rows(5, start=NOW - timedelta(hours=3))
        self.env["PIPELINE_COINS"] = ",".join(r["id"] for r in self.newer)

    def test_an_older_observation_served_after_a_newer_one_is_appended(self) -> None:
        self.fake.set_coins(self.newer)
        self.assertIn("5 rows appended", self.run_main().stderr)
        self.fake.set_coins(self.older)  # a late answer, or another process's slower request
        result = self.run_main()
        self.assertEqual(result.code, 0, result.stderr)
        self.assertIn("5 rows appended, 0 duplicates skipped", result.stderr)
        self.fake.set_coins(self.newer)
        self.assertIn("0 rows appended, 5 duplicates skipped", self.run_main().stderr)
        keys = csv_keys(self.csv_path)
        self.assertEqual(len(keys), 10)
        self.assertEqual(len(set(keys)), 10)

    def test_a_future_last_updated_is_rejected_and_blocks_nothing(self) -> None:
        rows = [dict(r) for r in self.newer]
        rows[0]["last_updated"] = format_iso_ms(datetime.now(timezone.utc) + timedelta(hours=20))
        self.fake.set_coins(rows)
        result = self.run_main()
        self.assertEqual(result.code, 3, result.stderr)
        self.assertIn("more than 10 minutes after the fetch", result.stderr)
        self.assertIn("4 rows appended", result.stderr)
        self.fake.set_coins(self.older)  # that coin's real, older rows still land
        self.assertIn("5 rows appended", self.run_main().stderr)
        coin = rows[0]["id"]
        self.assertEqual(
            [k for k in csv_keys(self.csv_path) if k[0] == coin],
            [(coin, "eur", normalize_timestamp(self.older[0]["last_updated"]))],
        )

    def test_a_small_clock_skew_is_fine(self) -> None:
        rows = [dict(r) for r in self.newer]
        rows[0]["last_updated"] = format_iso_ms(datetime.now(timezone.utc) + timedelta(minutes=3))
        self.fake.set_coins(rows)
        result = self.run_main()
        self.assertEqual(result.code, 0, result.stderr)
        self.assertIn("5 rows appended", result.stderr)


class ConcurrentCommands(PipelineTestCase):
    """Eight runs, a backfill and a plot at once, on a clock that moves while they race."""

    WRITERS = 8

    def setUp(self) -> None:
        super().setUp()
        self.env.update(PIPELINE_RATE_LIMIT="10000", PIPELINE_LOCK_TIMEOUT="120")
        self.fake.set_coins(markets_rows(30, start=NOW - timedelta(hours=2)))
        self.ids = [r["id"] for r in self.fake.coins]
        self.env["PIPELINE_COINS"] = ",".join(self.ids)
        self.until = NOW.date() - timedelta(days=2)
        self.since = self.until - timedelta(days=9)
        for n, coin in enumerate(self.ids[:6]):
            self.fake.market_chart[coin] = make_daily_chart(self.since - timedelta(days=3), 20, 2.0**n, seed=n)

    def test_every_key_in_raw_is_in_the_csv_exactly_once(self) -> None:
        self.race(rounds=1, seed=10)

    @slow_part("two rounds more (20 processes), the second racing on the history the first left")
    def test_every_key_in_raw_is_in_the_csv_exactly_once_round_after_round(self) -> None:
        self.race(rounds=2, seed=11)

    def race(self, rounds: int, seed: int) -> None:
        """rounds x (eight runs, a backfill and a plot at once), then each served observation is stored once."""
        rng = random.Random(seed)
        stop = threading.Event()

        def clock() -> None:  # the served observations move on while the processes race, older ones late
            offset = 0  # seconds from the first snapshot, two hours ago: kept within an hour of it, never future
            while not stop.wait(rng.uniform(0.01, 0.05)):
                step = rng.choice([30, 60, -45])
                if abs(offset + step) > 3600:
                    step = -step
                offset += step
                self.fake.advance(step)

        ticker = threading.Thread(target=clock, daemon=True)
        ticker.start()
        self.addCleanup(stop.set)
        outcomes = []
        for _ in range(rounds):
            quiet = {"stdout": subprocess.DEVNULL}
            procs = [self.start("run", **quiet) for _ in range(self.WRITERS)]
            since, until = self.since.isoformat(), self.until.isoformat()
            coins = ",".join(self.ids[:6])
            procs.append(self.start("backfill", "--since", since, "--until", until, "--coins", coins, **quiet))
            procs.append(self.start("plot", **quiet))
            for proc in procs:
                code, err = self.finish(proc, timeout=180)
                outcomes.append((proc.args[2] if len(proc.args) > 2 else "run", code, err))
        stop.set()
        ticker.join()
        failed = [
            (cmd, code, err[-300:])
            for cmd, code, err in outcomes
            if code != 0 and not (cmd == "plot" and "no history yet" in err)
        ]
        self.assertEqual(failed, [])
        keys = csv_keys(self.csv_path)
        self.assertEqual([k for k, n in Counter(keys).items() if n > 1], [])
        served = raw_market_keys(self.data_dir)
        self.assertGreater(len(served), 30)
        self.assertEqual(served - set(keys), set())
        days = {(c, "eur", f"{self.since + timedelta(days=i)}T00:00:00.000Z") for c in self.ids[:6] for i in range(10)}
        self.assertEqual(days - set(keys), set())


MULTILINE_NAME = 'Odd, "Quoted"\nCoin'


class AwkwardLines(PipelineTestCase):
    """A quoted multi-line cell and a stray hand-added line survive run, backfill, status and plot."""

    def setUp(self) -> None:
        super().setUp()
        self.fake.set_coins(markets_rows(3, start=NOW - timedelta(days=1)))
        self.ids = [r["id"] for r in self.fake.coins]
        self.env["PIPELINE_COINS"] = ",".join(self.ids)
        self.env["PIPELINE_RATE_LIMIT"] = "10000"
        self.until = NOW.date() - timedelta(days=2)
        for n, coin in enumerate(self.ids):
            self.fake.market_chart[coin] = make_daily_chart(self.until - timedelta(days=10), 12, 3.0**n, seed=n)

    def write_awkward_history(self) -> bytes:
        """A history with a row whose name spans two lines (a hand edit), and stray lines added by hand."""
        import csv
        import io

        self.assertEqual(self.run_main().code, 0)
        row = dict(self.rows()[0], name=MULTILINE_NAME, last_updated=format_iso_ms(NOW - timedelta(days=1, hours=5)))
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow([row[c] for c in COLUMNS])
        with open(self.csv_path, "ab") as fh:
            fh.write(buf.getvalue().encode())
            fh.write(b'"\n')  # a lone quote: it must not swallow the rows after it
            fh.write(b"my notes, not data\n")
        self.fake.set_coins(markets_rows(3, start=NOW - timedelta(hours=1)))
        return self.csv_bytes()

    def assert_survived(self, stray_expected: bool = True) -> None:
        # Issue 21, finding 11: lines that break standard readers leave the CSV for the quarantine file,
        # with their line number and why; the CSV then opens in the csv module and pandas.
        data = self.csv_bytes()
        self.assertTrue(data.startswith(HEADER_LINE.encode()))
        self.assertNotIn(b"my notes, not data\n", data)
        self.assertNotIn(b'\n"\n', data)
        quarantine = (self.data_dir / "crypto_data.csv.quarantine").read_bytes()
        self.assertIn(b"my notes, not data\n", quarantine)
        self.assertIn(b'"\n', quarantine)
        self.assertIn(b"line 7 of crypto_data.csv: an unbalanced quote\n", quarantine)
        self.assertIn(b"line 8 of crypto_data.csv: 2 cells where the header has 17\n", quarantine)
        found, damaged = csvio.observations(data[csvio.header_length(data) :])
        self.assertEqual(damaged, 0)
        names = {o.name for o in found if o.coin_id == self.rows()[0]["coin_id"]}
        self.assertIn(MULTILINE_NAME, names)
        keys = [(o.coin_id, o.ts_ms) for o in found]
        self.assertEqual(len(keys), len(set(keys)))

    def test_run_backfill_status_and_plot(self) -> None:
        self.write_awkward_history()
        run = self.run_main()
        self.assertEqual(run.code, 0, run.stderr)
        self.assertIn("3 rows appended", run.stderr)
        self.assert_survived()
        backfill = self.run_main("backfill", "--since", str(self.until - timedelta(days=4)), "--until", str(self.until))
        self.assertEqual(backfill.code, 0, backfill.stderr)
        self.assertIn("15 rows added", backfill.stderr)
        self.assert_survived()
        status = self.run_main("status")
        self.assertEqual(status.code, 0, status.stderr)
        self.assertNotIn("damaged", status.stdout)
        self.assertIn("22 rows", status.stdout)
        plot = self.run_main("plot")
        self.assertEqual(plot.code, 0, plot.stderr)
        self.assertEqual(len([line for line in plot.stdout.splitlines() if line.endswith(".png")]), 3)
        # pandas, the tool a user opens the file with, reads the multi-line name as one cell
        import pandas as pd

        frame = pd.read_csv(self.csv_path)  # the default reader, no "skip bad lines"
        self.assertIn(MULTILINE_NAME, set(frame["name"].dropna()))
        self.assertEqual(len(frame), 22)


class StatusOnAnyFile(PipelineTestCase):
    """`status` gives a clear answer on empty, foreign and seven-column files, and the same refusal as `run`."""

    def test_an_empty_csv(self) -> None:
        self.csv_path.write_bytes(b"")
        result = self.run_main("status")
        self.assertEqual(result.code, 0, result.stderr)
        self.assertIn("0 rows", result.stdout)

    def test_a_header_only_csv(self) -> None:
        self.csv_path.write_bytes(HEADER_LINE.encode())
        result = self.run_main("status")
        self.assertEqual(result.code, 0, result.stderr)
        self.assertIn("0 rows", result.stdout)

    def test_a_foreign_csv_is_refused_alike_by_every_command_before_any_request(self) -> None:
        foreign = b"date,price\n2024-01-01,1\n"
        self.csv_path.write_bytes(foreign)
        messages = {}
        for argv in (("run",), ("status",), ("plot",), ("backfill", "--days", "3")):
            result = self.run_main(*argv)
            self.assertEqual(result.code, 2, (argv, result.stderr))
            lines = [line for line in result.stderr.splitlines() if "columns this version does not write" in line]
            self.assertEqual(len(lines), 1, (argv, result.stderr))
            messages[argv[0]] = lines[0].split(": ", 1)[1]
        self.assertEqual(len(set(messages.values())), 1, messages)
        self.assertEqual(self.fake.requests, [])
        self.assertEqual(self.csv_bytes(), foreign)

    def test_a_seven_column_file_from_the_original_script(self) -> None:
        legacy = (
            b"name,symbol,current_price,market_cap,price_change_percentage_24h,circulating_supply,"
            b"last_updated\nBitcoin,btc,16880.1,325000000000,-0.5,19255000,2023-01-07T16:49:40.132Z\n"
        )
        self.csv_path.write_bytes(legacy)
        result = self.run_main("status")
        self.assertEqual(result.code, 0, result.stderr)
        self.assertIn("seven-column layout", result.stdout)
        self.assertIn("python main.py", result.stdout)
        self.assertEqual(self.csv_bytes(), legacy)  # a reader never migrates


class DeletingTheStateIsSafe(PipelineTestCase):
    def test_state_folder_deleted_between_runs(self) -> None:
        self.fake.set_coins(markets_rows(4, start=NOW - timedelta(hours=1)))
        self.env["PIPELINE_COINS"] = ",".join(r["id"] for r in self.fake.coins)
        self.assertIn("4 rows appended", self.run_main().stderr)
        import shutil

        shutil.rmtree(self.data_dir / ".state")
        self.assertIn("0 rows appended, 4 duplicates skipped", self.run_main().stderr)
        self.fake.advance(60)
        self.assertIn("4 rows appended", self.run_main().stderr)
        self.assertEqual(len(csv_keys(self.csv_path)), 8)

    def test_a_crash_between_the_append_and_the_index_is_caught_up(self) -> None:
        """Rows in the CSV that the index has not recorded (the process died in between) are not appended again."""
        self.fake.set_coins(markets_rows(4, start=NOW - timedelta(hours=1)))
        self.env["PIPELINE_COINS"] = ",".join(r["id"] for r in self.fake.coins)
        self.run_main()
        index = self.data_dir / ".state" / "crypto_data.csv.index.sqlite"
        snapshot = index.read_bytes()
        for suffix in ("-wal", "-shm"):
            Path(str(index) + suffix).unlink(missing_ok=True)
        self.fake.advance(60)
        self.run_main()
        # Put back the index as it was before the second append: the second run's rows are unknown to it.
        for suffix in ("-wal", "-shm"):
            Path(str(index) + suffix).unlink(missing_ok=True)
        index.write_bytes(snapshot)
        result = self.run_main()
        self.assertIn("0 rows appended, 4 duplicates skipped", result.stderr)
        self.assertEqual(len(csv_keys(self.csv_path)), 8)


if __name__ == "__main__":
    import unittest

    unittest.main()


class FilesNotOurs(PipelineTestCase):
    """One symlink policy for the CSV and .state, the same in run, backfill and migration; read-only stays."""

    def setUp(self) -> None:
        super().setUp()
        self.fake.set_coins(markets_rows(3, start=NOW - timedelta(hours=1)))
        self.ids = [r["id"] for r in self.fake.coins]
        self.env.update(PIPELINE_COINS=",".join(self.ids), PIPELINE_RATE_LIMIT="10000")
        for n, coin in enumerate(self.ids):
            self.fake.market_chart[coin] = make_daily_chart(NOW.date() - timedelta(days=12), 12, 2.0**n, seed=n)

    def test_a_symlinked_csv_is_never_written_through(self) -> None:
        elsewhere = Path(self.tmp.name) / "elsewhere.csv"
        elsewhere.write_bytes(HEADER_LINE.encode())
        self.csv_path.symlink_to(elsewhere)
        for argv in (("run",), ("backfill", "--days", "3")):
            result = self.run_main(*argv)
            self.assertEqual(result.code, 2, result.stderr)
            self.assertIn("is a symbolic link", result.stderr)
            self.assertTrue(self.csv_path.is_symlink())
            self.assertEqual(elsewhere.read_bytes(), HEADER_LINE.encode())

    def test_a_symlinked_legacy_csv_is_not_migrated_through_the_link(self) -> None:
        elsewhere = Path(self.tmp.name) / "legacy.csv"
        legacy = (
            b"name,symbol,current_price,market_cap,price_change_percentage_24h,circulating_supply,"
            b"last_updated\nBitcoin,btc,16880.1,325000000000,-0.5,19255000,2023-01-07T16:49:40.132Z\n"
        )
        elsewhere.write_bytes(legacy)
        self.csv_path.symlink_to(elsewhere)
        result = self.run_main()
        self.assertEqual(result.code, 2, result.stderr)
        self.assertEqual(elsewhere.read_bytes(), legacy)

    def test_a_symlinked_state_folder_is_refused(self) -> None:
        real_state = Path(self.tmp.name) / "state-elsewhere"
        real_state.mkdir()
        (self.data_dir / ".state").symlink_to(real_state)
        result = self.run_main()
        self.assertEqual(result.code, 2, result.stderr)
        self.assertIn("is a symbolic link", result.stderr)
        self.assertEqual(list(real_state.iterdir()), [])

    def test_a_symlinked_data_folder_is_fine(self) -> None:
        real = Path(self.tmp.name) / "real-data"
        real.mkdir()
        link = Path(self.tmp.name) / "linked-data"
        link.symlink_to(real, target_is_directory=True)
        self.env["PIPELINE_DATA_DIR"] = str(link)
        result = self.run_main()
        self.assertEqual(result.code, 0, result.stderr)
        self.assertEqual(len(csv_keys(real / "crypto_data.csv")), 3)

    def test_a_read_only_csv_is_never_replaced_or_appended_to(self) -> None:
        self.assertEqual(self.run_main().code, 0)
        before = self.csv_bytes()
        inode = self.csv_path.stat().st_ino
        self.csv_path.chmod(0o444)
        self.addCleanup(self.csv_path.chmod, 0o644)
        self.fake.advance(60)
        for argv in (("run",), ("backfill", "--days", "5")):
            result = self.run_main(*argv)
            self.assertEqual(result.code, 1, result.stderr)
            self.assertIn("read-only", result.stderr)
            self.assertEqual(self.csv_bytes(), before)
            self.assertEqual(self.csv_path.stat().st_ino, inode)
        status = self.run_main("status")  # reading it is fine
        self.assertEqual(status.code, 0, status.stderr)
        self.assertIn("3 rows", status.stdout)


def _record(coin: str = "bitcoin", ts: str = "2024-01-01T00:00:00.000Z", rank: int | None = 1):
    return record(
        coin, ts, current_price=100.0, market_cap=1000.0, fetched_at=ts, vs_currency="usd", market_cap_rank=rank
    )


class OddFilesAtTheStore(unittest.TestCase):
    """Files a person can leave behind, at the store itself (real files in a temp folder)."""

    def setUp(self) -> None:
        import tempfile

        from utils.history.csv_store import HistoryStore
        from utils.history.layout import DataLayout

        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.store = HistoryStore(DataLayout(Path(tmp.name)))

    def test_a_blank_first_line_never_starts_the_history_afresh(self) -> None:
        from utils.errors import SchemaMismatch

        self.store.append([_record(ts=f"2024-01-{d:02d}T00:00:00.000Z") for d in range(1, 11)])
        data = b"\n" + self.store.csv_path.read_bytes()
        self.store.csv_path.write_bytes(data)
        with self.assertRaisesRegex(SchemaMismatch, "starts with a blank line, not its header"):
            self.store.append([_record(ts="2024-01-11T00:00:00.000Z")])
        self.assertEqual(self.store.csv_path.read_bytes(), data)

    def test_a_cell_larger_than_the_csv_modules_limit_is_one_damaged_line(self) -> None:
        self.store.append([_record()])
        with open(self.store.csv_path, "ab") as fh:
            fh.write(b'note,"' + b"x" * 200_000 + b'"\n')
        self.assertEqual(self.store.append([_record(ts="2024-01-02T00:00:00.000Z")]).appended, 1)
        with self.store.index() as index:  # the line breaks the csv module: it went to the quarantine file
            self.assertEqual((index.rows, index.damaged), (2, 0))
        self.assertIn(b"x" * 200_000, self.store.layout.quarantine.read_bytes())
        import csv

        with open(self.store.csv_path, newline="", encoding="utf-8") as fh:
            self.assertEqual(len(list(csv.reader(fh))), 3)

    def test_days_coingecko_had_no_data_for_outlive_a_rebuild(self) -> None:

        now = datetime(2024, 1, 20, tzinfo=timezone.utc)
        now_ms = int(now.timestamp() * 1000)
        self.store.merge(
            [_record(ts="2024-01-02T00:00:00.000Z")],
            checked=now,
            unavailable={("bitcoin", "usd"): {date(2024, 1, d) for d in range(3, 9)}},
        )
        self.store.merge([_record(ts="2024-01-05T00:00:00.000Z")], checked=now)  # one of them after all
        with self.store.index() as index:
            before = index.unavailable("bitcoin", "usd", now_ms)
        os.utime(self.store.csv_path)  # touched: the next reader rebuilds the index from the CSV
        with self.store.index() as index:
            self.assertEqual(index.unavailable("bitcoin", "usd", now_ms), before)
            self.assertTrue(before)
            self.assertEqual(index.unavailable_by_coin("usd", now_ms), {"bitcoin": before})  # status's one query
            self.assertEqual(index.unavailable_by_coin("eur", now_ms), {})
            self.assertEqual(
                index.gaps("bitcoin", "usd", date(2024, 1, 10), now_ms), [(19731, 19731)]
            )  # 9 Jan: neither stored nor unavailable

    def test_a_rank_the_transform_accepts_is_read_back_and_not_appended_again(self) -> None:
        record = _record(rank=1234567890)
        self.assertEqual([self.store.append([record]).appended for _ in range(3)], [1, 0, 0])

    def test_our_header_without_its_newline_is_completed_not_refused(self) -> None:
        self.store.csv_path.write_text(HEADER_LINE.rstrip("\n"))
        self.assertEqual(self.store.append([_record()]).appended, 1)
        self.assertEqual(self.store.csv_path.read_bytes().count(b"\n"), 2)
