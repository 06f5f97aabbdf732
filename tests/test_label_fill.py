"""Rows stored by earlier backfills without a name or symbol get their coin's, once (issue 20, item 6), on both stores.

An earlier version's history is made by running today's, then blanking name, symbol and fetched_at of the
daily points (as that version wrote them) and removing the marker: what a user upgrading has on disk.
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from datetime import timedelta

import pandas as pd

from tests.fake_coingecko import make_daily_chart
from tests.support import MAIN, PipelineTestCase, read_rows
from tests.test_crash_concurrency import limit_file_size
from tests.test_first_hour import NOW, current
from utils.history import csvio
from utils.history.files import atomic_write_chunks
from utils.history.layout import DataLayout
from utils.history.schema import COLUMNS, HEADER_LINE

NAMED = {"bitcoin": ("Bitcoin", "btc"), "ethereum": ("Ethereum", "eth"), "tether": ("Tether", "usdt")}
SNAPSHOT_COINS = "bitcoin,ethereum"  # tether is backfilled but never snapshotted: nothing names it


class LabelFillCase(PipelineTestCase):
    """The fake answers bitcoin, ethereum and tether's daily points; the helpers read the CSV store."""

    table_format = "csv"

    def setUp(self) -> None:
        super().setUp()
        self.env["PIPELINE_TABLE_FORMAT"] = self.table_format
        self.fake.set_coins(current(self.fake.coins))
        start = NOW.date() - timedelta(days=399)
        for i, coin in enumerate(NAMED):
            self.fake.market_chart[coin] = make_daily_chart(start, 400, 100.0 + i, partial_point_at=NOW, seed=i)
        self.layout = DataLayout(self.data_dir)

    # -- an earlier version's history ----------------------------------------------------------------

    def old_history(self) -> None:
        """Snapshots of bitcoin and ethereum, 90 backfilled days of the three coins, then the names taken away."""
        self.assertEqual(self.run_main("run", "--coins", SNAPSHOT_COINS).code, 0)
        done = self.run_main("backfill", "--days", "90", "--coins", "bitcoin,ethereum,tether")
        self.assertEqual(done.code, 0, done.stderr)
        self.blank_daily_points()
        self.marker().unlink()

    def marker(self):
        return self.layout.labels_marker

    def blank_daily_points(self) -> None:
        text = self.csv_path.read_text(encoding="utf-8")
        rows = list(csv.reader(io.StringIO(text)))[1:]
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        for row in rows:
            if row[COLUMNS.index("source")] == "market_chart":
                for column in ("name", "symbol", "fetched_at"):
                    row[COLUMNS.index(column)] = ""
            writer.writerow(row)
        self.csv_path.write_text(HEADER_LINE + out.getvalue(), encoding="utf-8")

    def stored(self) -> list[dict[str, str]]:
        return read_rows(self.csv_path)

    def frame(self) -> pd.DataFrame:
        return pd.read_csv(self.csv_path)

    def fingerprint(self) -> tuple:
        st = self.csv_path.stat()
        return self.csv_path.read_bytes(), st.st_mtime_ns, st.st_ino


class LabelFillCsv(LabelFillCase):
    def test_the_next_run_names_every_backfilled_row_and_groupby_keeps_them(self) -> None:
        self.old_history()
        before = self.stored()
        self.assertGreater(sum(1 for r in before if not r["symbol"]), 200)
        self.assertLess(int(self.frame().groupby("symbol").size().sum()), len(before) // 2)  # the complaint
        self.fake.advance(60)
        result = self.run_main("run", "--coins", SNAPSHOT_COINS)
        self.assertEqual(result.code, 0, result.stderr)
        self.assertRegex(result.stderr, r"gave \d+ rows stored without a name and symbol those of their coin's own")
        after = self.stored()
        self.assertEqual(len(after), len(before) + 2)  # the new snapshot, nothing else added or lost
        self.assertEqual(  # no row moved: the same keys in the same order
            [(r["coin_id"], r["last_updated"]) for r in after[: len(before)]],
            [(r["coin_id"], r["last_updated"]) for r in before],
        )
        for row in after:
            with self.subTest(row=(row["coin_id"], row["last_updated"])):
                if row["coin_id"] == "tether":  # never snapshotted: nothing to name it by
                    self.assertEqual((row["name"], row["symbol"]), ("", ""))
                else:
                    self.assertEqual((row["name"], row["symbol"]), NAMED[row["coin_id"]])
                if row["source"] == "market_chart":
                    self.assertEqual(row["fetched_at"], "")  # not known for rows an earlier version stored
                    self.assertEqual(row["market_cap_rank"], "")  # today's rank is not a past day's
        frame = self.frame()
        tether = sum(1 for r in after if r["coin_id"] == "tether")
        self.assertEqual(int(frame.groupby("symbol").size().sum()), len(after) - tether)
        self.assertEqual(self.run_main("status").code, 0)

    def test_a_second_run_changes_no_byte(self) -> None:
        self.old_history()
        self.fake.advance(60)
        self.assertEqual(self.run_main("run", "--coins", SNAPSHOT_COINS).code, 0)
        before = self.fingerprint()
        marker = self.marker().stat().st_mtime_ns
        again = self.run_main("run", "--coins", SNAPSHOT_COINS)  # the same snapshot: duplicates only
        self.assertEqual(again.code, 0, again.stderr)
        self.assertIn("0 rows appended", again.stderr)
        self.assertNotIn("gave ", again.stderr)
        self.assertEqual(self.fingerprint(), before)
        self.assertEqual(self.marker().stat().st_mtime_ns, marker)

    def test_a_history_with_nothing_to_name_is_not_rewritten(self) -> None:
        self.assertEqual(self.run_main("run", "--coins", SNAPSHOT_COINS).code, 0)
        self.marker().unlink()  # as before this version: the fill scans once
        before = self.fingerprint()
        again = self.run_main("run", "--coins", SNAPSHOT_COINS)
        self.assertEqual(again.code, 0, again.stderr)
        self.assertEqual(self.fingerprint(), before)
        self.assertTrue(self.marker().exists())

    def test_a_coin_backfilled_before_its_first_snapshot_is_named_after_it(self) -> None:
        self.old_history()
        self.fake.advance(60)
        self.assertEqual(self.run_main("run", "--coins", SNAPSHOT_COINS).code, 0)
        self.assertTrue(all(r["name"] == "" for r in self.stored() if r["coin_id"] == "tether"))
        self.fake.advance(60)
        result = self.run_main("run", "--coins", "tether")
        self.assertEqual(result.code, 0, result.stderr)
        tether = [r for r in self.stored() if r["coin_id"] == "tether"]
        self.assertGreater(len(tether), 80)
        self.assertEqual({(r["name"], r["symbol"]) for r in tether}, {NAMED["tether"]})
        self.assertEqual(int(self.frame().groupby("symbol").size().sum()), len(self.stored()))


class LabelFillCsvCrash(LabelFillCase):
    """A write that fails halfway through the fill (the disk full): the old file stays, the next run finishes."""

    def test_a_full_disk_during_the_fill_leaves_the_old_file_and_the_next_run_finishes(self) -> None:
        self.old_history()
        old = self.csv_path.read_bytes()
        self.fake.advance(60)
        env = dict(os.environ, **self.env)
        done = subprocess.run(
            [sys.executable, str(MAIN), "run", "--coins", SNAPSHOT_COINS],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.tmp.name,
            # The snapshot's two rows may be appended; the filled copy (longer by the names) cannot be written.
            preexec_fn=limit_file_size(len(old) + 2000),
        )
        self.assertEqual(done.returncode, 0, done.stderr)  # the snapshot is stored: the run did its job
        self.assertIn("could not give rows stored without a name their coin's name", done.stderr)
        self.assertNotIn("Traceback", done.stderr)
        now = self.csv_path.read_bytes()
        self.assertTrue(now.startswith(old), "the old file, with the snapshot appended")
        self.assertEqual(len(read_rows(self.csv_path)), len(list(csv.reader(io.StringIO(old.decode())))) - 1 + 2)
        self.assertEqual([p.name for p in self.data_dir.glob(".crypto_data.csv.*")], [])  # no temp file left
        again = self.run_main("run", "--coins", SNAPSHOT_COINS)
        self.assertEqual(again.code, 0, again.stderr)
        self.assertIn("gave ", again.stderr)
        rows = self.stored()
        self.assertEqual(
            int(self.frame().groupby("symbol").size().sum()), len(rows) - sum(r["coin_id"] == "tether" for r in rows)
        )


class LabelFillDelta(LabelFillCsv):
    table_format = "delta"

    def marker(self):
        return self.layout.table_labels_marker

    def blank_daily_points(self) -> None:
        from deltalake import DeltaTable

        DeltaTable(str(self.layout.table)).update(
            predicate="source = 'market_chart'", updates={"name": "NULL", "symbol": "NULL", "fetched_at": "NULL"}
        )

    def stored(self) -> list[dict[str, str]]:
        out = self.data_dir.parent / "export.csv"
        result = self.run_main("export", "--out", str(out))
        self.assertEqual(result.code, 0, result.stderr)
        return sorted(read_rows(out), key=lambda r: (r["last_updated"], r["coin_id"]))  # a table has no line order

    def frame(self) -> pd.DataFrame:
        from deltalake import DeltaTable

        return DeltaTable(str(self.layout.table)).to_pandas()

    def files(self) -> set[str]:
        from deltalake import DeltaTable

        return set(DeltaTable(str(self.layout.table)).file_uris())

    def fingerprint(self) -> tuple:
        from deltalake import DeltaTable

        return DeltaTable(str(self.layout.table)).version(), self.files()

    def test_only_the_partitions_holding_rows_without_a_name_are_rewritten(self) -> None:
        from deltalake import DeltaTable

        self.assertEqual(self.run_main("run", "--coins", SNAPSHOT_COINS).code, 0)
        self.assertEqual(self.run_main("backfill", "--days", "90", "--coins", SNAPSHOT_COINS).code, 0)
        month = f"{NOW.date() - timedelta(days=60):%Y-%m}"
        DeltaTable(str(self.layout.table)).update(
            predicate=f"month = '{month}' AND coin_id = 'bitcoin'", updates={"name": "NULL", "symbol": "NULL"}
        )
        self.marker().unlink()
        before = self.files()
        self.fake.advance(60)
        result = self.run_main("run", "--coins", SNAPSHOT_COINS)
        self.assertEqual(result.code, 0, result.stderr)
        removed = before - self.files()
        self.assertTrue(removed)
        self.assertEqual({f"month={month}" in path for path in removed}, {True}, removed)
        frame = self.frame()
        self.assertEqual(int(frame["name"].isna().sum()), 0)


class LabelFillInBlocks(LabelFillCase):
    """The CSV store fills a block of lines at a time (bounded memory on a history of gigabytes)."""

    def test_the_fill_a_block_at_a_time_equals_the_fill_of_the_whole_file(self) -> None:
        self.old_history()
        content = self.csv_path.read_bytes()
        labels = {coin: NAMED[coin] for coin in ("bitcoin", "ethereum")}
        whole, filled, left = csvio.labelled_body(content, labels)
        self.assertGreater(filled, 100)
        self.assertEqual(left, {"tether"})
        for size in (1, 97, 4096, len(content) + 1):
            with self.subTest(block=size), open(self.csv_path, "rb") as fh:
                parts = [csvio.labelled_body(block, labels) for block in csvio.line_blocks(fh, size)]
                self.assertEqual(b"".join(part[0] for part in parts), whole)
                self.assertEqual(sum(part[1] for part in parts), filled)
                self.assertEqual(set().union(*(part[2] for part in parts)), left)

    def test_a_rewrite_nobody_keeps_leaves_the_file_and_no_temp_file(self) -> None:
        self.old_history()
        before = self.fingerprint()
        replaced = atomic_write_chunks(self.csv_path, iter([b"a,b\n", b"c,d\n"]), "history CSV", keep=lambda: False)
        self.assertFalse(replaced)
        self.assertEqual(self.fingerprint(), before)
        self.assertEqual([p.name for p in self.csv_path.parent.iterdir() if p.name.endswith(".tmp")], [])
