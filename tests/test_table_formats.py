"""Every command on both stores: the CSV with its index (--table-format csv) and a Delta table on local disk."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import subprocess
import sys
import unittest
from typing import Any

import pyarrow.parquet as pq

from tests.fake_coingecko import markets_rows
from tests.support import FIXTURE_IDS, MAIN, PipelineTestCase, charts_for, limit_file_size, slow_part
from utils.errors import LoadError
from utils.history.delta_table import COMPACT_FILES, CONVERSION_APP, DeltaHistory, csv_tables, records_to_table
from utils.history.locations import LocalStorage
from utils.history.schema import COLUMNS, HEADER_LINE, Record


def synthetic_record(coin: str, ts: str, name: str = "Coin", vs: str = "usd", **numbers: float | int | None) -> Record:
    """A record with the given numbers (the others null), as a load would store it."""
    cells: dict[str, Any] = dict.fromkeys(COLUMNS[2:6] + COLUMNS[10:16])
    cells.update(numbers)
    return Record(
        name=name,
        symbol=coin[:3],
        last_updated=ts,
        fetched_at="2023-01-08T12:00:01.000Z",
        coin_id=coin,
        vs_currency=vs,
        source="coins_markets",
        **cells,
    )


def compacted_partition(
    history: DeltaHistory, storage_options: dict[str, str] | None = None
) -> tuple[Any, int, set[str]]:
    """17 one-row loads into gbp/2022-06, then compacted: (a reader opened before the compaction, the table's
    rows then, the paths the compaction removed)."""
    from deltalake import DeltaTable

    for minute in range(COMPACT_FILES + 1):
        history.merge(records_to_table([synthetic_record("alpha", f"2022-06-01T00:{minute:02d}:00.000Z", vs="gbp")]))
    reader = DeltaTable(history.uri, storage_options=storage_options)
    before = set(reader.file_uris())
    rows = reader.to_pyarrow_table().num_rows
    history.compact([("gbp", "2022-06")])
    after = set(DeltaTable(history.uri, storage_options=storage_options).file_uris())
    removed = {uri.removeprefix(history.uri.rstrip("/") + "/") for uri in before - after}
    return reader, rows, removed


def aged_tombstones(log_text: str, days: float = 8) -> str:
    """A Delta commit whose remove actions say they happened `days` earlier (the clock moved on that far)."""
    lines = []
    for line in log_text.splitlines():
        action = json.loads(line) if line.strip() else None
        if action and "remove" in action:
            action["remove"]["deletionTimestamp"] -= int(days * 86_400_000)
            line = json.dumps(action)
        lines.append(line)
    return "\n".join(lines) + "\n"


class CommandsOnAStore(PipelineTestCase):
    """The whole command set on one store; subclasses pick the store."""

    table_format = "csv"

    def setUp(self) -> None:
        super().setUp()
        self.env["PIPELINE_TABLE_FORMAT"] = self.table_format

    def export_rows(self, *argv: str) -> list[list[str]]:
        out = self.data_dir.parent / "export.csv"
        result = self.run_main("export", "--out", str(out), *argv)
        self.assertEqual(result.code, 0, result.stderr)
        text = out.read_text(encoding="utf-8")
        self.assertTrue(text.startswith(HEADER_LINE))
        return list(csv.reader(io.StringIO(text)))[1:]

    def test_run_twice_stores_each_observation_once(self) -> None:
        self.assertEqual(self.run_main().code, 0)
        again = self.run_main()
        self.assertEqual(again.code, 0, again.stderr)
        self.assertIn("0 rows appended, 10 duplicates skipped", again.stderr)
        self.fake.advance(60)
        self.assertIn("10 rows appended", self.run_main().stderr)
        rows = self.export_rows()
        self.assertEqual(len(rows), 20)
        self.assertEqual(len({(r[COLUMNS.index("coin_id")], r[COLUMNS.index("last_updated")]) for r in rows}), 20)

    def test_several_currencies_and_top(self) -> None:
        self.fake.set_coins(markets_rows(30))
        del self.env["PIPELINE_COINS"]
        result = self.run_main("--vs-currency", "eur,usd", "--top", "5")
        self.assertIn(result.code, (0, 3), result.stderr)
        rows = self.export_rows()
        self.assertEqual({r[COLUMNS.index("vs_currency")] for r in rows}, {"eur", "usd"})
        self.assertEqual(len(self.export_rows("--vs-currency", "usd")), len(rows) // 2)

    def test_status_top_plot_quality_report(self) -> None:
        self.run_main()
        status = self.run_main("status")
        self.assertEqual(status.code, 0, status.stderr)
        self.assertRegex(status.stdout, r"history: .*: 10 rows, 10 coins in eur")
        top = self.run_main("top", "--date", "2023-01-08", "--top", "3")
        self.assertEqual(top.code, 0, top.stderr)
        self.assertEqual([line.split()[1] for line in top.stdout.splitlines()[2:]], ["bitcoin", "ethereum", "tether"])
        plot = self.run_main("plot")
        self.assertEqual(plot.code, 0, plot.stderr)
        self.assertTrue((self.data_dir / "crypto_price_trend.png").stat().st_size > 1000)
        self.assertEqual(self.run_main("quality").code, 0)
        report = self.run_main("report")
        self.assertEqual(report.code, 0, report.stderr)
        self.assertIn("bitcoin", (self.data_dir / "report.html").read_text(encoding="utf-8"))

    def test_a_damaged_index_found_while_reading_is_one_line_then_built_again(self) -> None:
        """A daily row of the index that does not decode is found only when a command reads it: one line, exit 1,
        the index removed; the next command builds it again from the store, which is never touched."""
        import sqlite3

        self.assertEqual(self.run_main().code, 0)
        (index,) = (self.data_dir / ".state").glob("*.index.sqlite")
        with sqlite3.connect(index) as db:
            db.execute("UPDATE daily SET v = x'ff' WHERE k = (SELECT max(k) FROM daily)")
        result = self.run_main("top", "--date", "2023-01-08", "--top", "3")
        self.assertEqual(result.code, 1, result.stderr)
        self.assertIn(f"the index {index} is damaged", result.stderr)
        self.assertIn("run the command again", result.stderr)
        self.assertNotIn("unexpected", result.stderr)
        self.assertFalse(index.exists())
        again = self.run_main("top", "--date", "2023-01-08", "--top", "3")
        self.assertEqual(again.code, 0, again.stderr)
        self.assertIn("bitcoin", again.stdout)
        self.assertIn("0 rows appended, 10 duplicates skipped", self.run_main().stderr)

    def test_a_run_on_a_damaged_index_goes_on_or_says_run_again(self) -> None:
        """A second run the same day reads that day's rows: a damaged one is never 'unexpected'. The CSV store
        builds the index again and goes on; the Delta store removes it and says to run again (this run's rows not written)."""
        import sqlite3

        self.assertEqual(self.run_main().code, 0)
        (index,) = (self.data_dir / ".state").glob("*.index.sqlite")
        with sqlite3.connect(index) as db:
            db.execute("UPDATE daily SET v = x'ff' WHERE k = (SELECT max(k) FROM daily)")
        first = self.run_main()
        self.assertNotIn("unexpected", first.stderr)
        self.assertIn("is damaged", first.stderr)
        if self.table_format == "csv":
            self.assertEqual(first.code, 0, first.stderr)
        else:
            self.assertEqual(first.code, 1, first.stderr)
            self.assertIn("run the command again", first.stderr)
        self.assertIn("0 rows appended, 10 duplicates skipped", self.run_main().stderr)
        self.fake.advance(60)
        self.assertIn("10 rows appended", self.run_main().stderr)

    def test_backfill_merges_daily_points(self) -> None:
        self.fake.market_chart.update(charts_for(FIXTURE_IDS))
        self.run_main()
        result = self.run_main("backfill", "--coins", "bitcoin,ethereum", "--days", "5", "--no-charts")
        self.assertEqual(result.code, 0, result.stderr)
        rows = self.export_rows()
        self.assertEqual(sum(r[COLUMNS.index("source")] == "market_chart" for r in rows), 10)
        again = self.run_main("backfill", "--coins", "bitcoin,ethereum", "--days", "5", "--no-charts")
        self.assertIn("0 rows added", again.stderr)
        self.assertEqual(len(self.export_rows()), len(rows))

    def test_datapackage_describes_the_store(self) -> None:
        self.run_main()
        package = json.loads((self.data_dir / "datapackage.json").read_text())
        history = package["resources"][0]
        self.assertEqual(history["format"], self.table_format)
        self.assertEqual([f["name"] for f in history["schema"]["fields"]][: len(COLUMNS)], list(COLUMNS))

    def test_export_parquet_and_day_filters(self) -> None:
        self.run_main()
        out = self.data_dir.parent / "history.parquet"
        result = self.run_main("export", "--out", str(out))
        self.assertEqual(result.code, 0, result.stderr)
        table = pq.read_table(out)
        self.assertEqual(table.num_rows, 10)
        self.assertEqual(table.schema.names, list(COLUMNS))
        self.assertEqual(str(table.schema.field("last_updated").type), "timestamp[us, tz=UTC]")
        self.assertEqual(str(table.schema.field("market_cap_rank").type), "int64")
        self.assertEqual(self.export_rows("--since", "2023-01-09"), [])
        self.assertEqual(len(self.export_rows("--since", "2023-01-08", "--until", "2023-01-08")), 10)

    def test_export_bad_path_exits_2(self) -> None:
        self.run_main()
        for out in (str(self.data_dir.parent / "missing" / "x.csv"), str(self.data_dir)):
            result = self.run_main("export", "--out", out)
            self.assertEqual(result.code, 2, result.stderr)
            self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
        self.assertEqual(self.run_main("export").code, 2)


class CommandsOnCsv(CommandsOnAStore):
    table_format = "csv"

    def test_export_is_the_csv_byte_for_byte(self) -> None:
        self.run_main()
        self.fake.advance(60)
        self.run_main()
        out = self.data_dir.parent / "export.csv"
        self.assertEqual(self.run_main("export", "--out", str(out)).code, 0)
        self.assertEqual(out.read_bytes(), self.csv_bytes())


class CommandsOnDelta(CommandsOnAStore):
    table_format = "delta"

    def test_the_table_lives_beside_no_csv(self) -> None:
        self.run_main()
        self.assertFalse(self.csv_path.exists())
        self.assertTrue((self.data_dir / "crypto_data" / "_delta_log").is_dir())
        self.assertTrue(any((self.data_dir / "crypto_data").glob("vs_currency=eur/month=2023-01/*.parquet")))

    def test_export_matches_the_csv_store_byte_for_byte(self) -> None:
        self.env["PIPELINE_TABLE_FORMAT"] = "csv"
        self.run_main()
        csv_copy = self.csv_bytes()
        shutil.rmtree(self.data_dir)
        self.data_dir.mkdir()
        self.env["PIPELINE_TABLE_FORMAT"] = "delta"
        self.run_main()
        out = self.data_dir.parent / "export.csv"
        self.assertEqual(self.run_main("export", "--out", str(out)).code, 0)
        # One snapshot: the CSV is in the answer's order, the table's export by time then coin id; each run
        # has its own fetched_at.
        fetched = COLUMNS.index("fetched_at")
        header, *lines = list(csv.reader(io.StringIO(csv_copy.decode())))
        exported = list(csv.reader(io.StringIO(out.read_text())))
        self.assertEqual(exported[0], header)

        def strip(rows: list[list[str]]) -> list[list[str]]:
            return sorted(r[:fetched] + r[fetched + 1 :] for r in rows)

        self.assertEqual(strip(exported[1:]), strip(lines))

    def test_export_of_tricky_values_is_the_csv_stores_bytes(self) -> None:
        """Nulls, NaN, big integers, tiny floats, names with commas, quotes and a line break, millisecond times:
        the export of the table and of the CSV store are both the CSV store's own bytes."""

        record = synthetic_record
        records = [  # in the export's order (time, then coin id), so both files are in one order
            record(
                "alpha",
                "2023-01-08T00:00:00.001Z",
                'Alpha, "the first"',
                current_price=5e-324,
                market_cap=2**60,
                price_change_percentage_24h=-1.5e-07,
                circulating_supply=math.nan,
                market_cap_rank=1,
                total_volume=1e22,
                high_24h=0.1,
                low_24h=1 / 3,
                total_supply=2**53,
                max_supply=0,
            ),
            record("beta", "2023-01-08T00:00:00.001Z", "line\nbreak", current_price=123456.789, market_cap=10**16),
            record("gamma", "2023-01-08T23:59:59.999Z", "Ünïcode ₿,", current_price=1e-05, market_cap_rank=20000),
            record(
                "delta", "2023-01-09T00:00:00.000Z", '"', current_price=-2.5e-300, total_volume=1.7976931348623157e308
            ),
        ]
        csv_dir = self.data_dir.parent / "csv-store"
        csv_dir.mkdir()
        LocalStorage(csv_dir).append(records)
        expected = (csv_dir / "crypto_data.csv").read_bytes()
        self.assertIn(b'"Alpha, ""the first""",alp,5e-324,1152921504606846976,-1.5e-07,,', expected)
        DeltaHistory(str(self.data_dir / "crypto_data")).merge(records_to_table(records))
        out = self.data_dir.parent / "export.csv"
        result = self.run_main("export", "--out", str(out))
        self.assertEqual(result.code, 0, result.stderr)
        self.assertEqual(out.read_bytes(), expected)
        # An integer past 2**53 (a supply in the JSON) is stored as the nearest float64, not refused.
        big = records_to_table([record("epsilon", "2023-01-09T00:00:00.000Z", "Big", total_supply=2**60 + 1)])
        self.assertEqual(big.column("total_supply").to_pylist(), [float(2**60)])
        self.env["PIPELINE_TABLE_FORMAT"] = "csv"
        result = self.run_main("export", "--out", str(out), "--data-dir", str(csv_dir))
        self.assertEqual(result.code, 0, result.stderr)
        self.assertEqual(out.read_bytes(), expected)

    def test_vacuum_deletes_what_compaction_left_7_days_ago_and_spares_readers(self) -> None:
        self.assertEqual(self.run_main().code, 0)
        table = self.data_dir / "crypto_data"
        history = DeltaHistory(str(table))
        reader, rows, removed = compacted_partition(history)
        self.assertEqual(len(removed), COMPACT_FILES + 1)
        # Just compacted: nothing is old enough; a reader that opened the table before still reads every row.
        self.assertEqual(history.vacuum(), 0)
        self.assertTrue(all((table / path).is_file() for path in removed))
        self.assertEqual(reader.to_pyarrow_table().num_rows, rows)
        # Eight days on, the next load deletes the compaction's inputs, and nothing else.
        for commit in (table / "_delta_log").glob("*.json"):
            commit.write_text(aged_tombstones(commit.read_text()))
        kept = {p for p in table.rglob("*.parquet")} - {table / path for path in removed}
        self.fake.advance(60)
        result = self.run_main()
        self.assertEqual(result.code, 0, result.stderr)
        self.assertFalse(any((table / path).exists() for path in removed))
        self.assertTrue(all(p.is_file() for p in kept))
        self.assertEqual(len(self.export_rows()), rows + 10)
        self.assertEqual(self.run_main("status").code, 0)

    def test_a_csv_history_is_converted_once_and_kept(self) -> None:
        self.env["PIPELINE_TABLE_FORMAT"] = "csv"
        self.run_main()
        self.fake.advance(60)
        self.run_main()
        before = self.csv_bytes()
        self.env["PIPELINE_TABLE_FORMAT"] = "delta"
        status = self.run_main("status")  # a reader never converts
        self.assertFalse((self.data_dir / "crypto_data").exists())
        self.assertEqual(status.code, 0)
        self.fake.advance(60)
        result = self.run_main()
        self.assertEqual(result.code, 0, result.stderr)
        self.assertIn("converted", result.stderr)
        self.assertIn("kept unchanged as a backup", result.stderr)
        self.assertEqual(self.csv_bytes(), before)
        self.assertEqual(len(self.export_rows()), 30)
        again = self.run_main()
        self.assertNotIn("converted", again.stderr)
        self.assertEqual(len(self.export_rows()), 30)

    def test_a_conversion_killed_after_a_chunk_is_finished_without_duplicates(self) -> None:
        self.env["PIPELINE_TABLE_FORMAT"] = "csv"
        self.run_main()
        self.fake.advance(60)
        self.run_main()
        # What a conversion killed after its first commit leaves: chunk 0 stored, the conversion not done.
        history = DeltaHistory(str(self.data_dir / "crypto_data"))
        first, _ = next(csv_tables(self.csv_path, chunk_rows=7))
        history.merge(first, app_version=7)
        self.assertEqual(history.row_count(), 7)
        self.env["PIPELINE_TABLE_FORMAT"] = "delta"
        result = self.run_main()
        self.assertEqual(result.code, 0, result.stderr)
        self.assertIn("converted", result.stderr)
        rows = self.export_rows()
        self.assertEqual(len(rows), 20)
        self.assertEqual(history.table().transaction_version(CONVERSION_APP), 20)

    def test_a_foreign_folder_where_the_table_belongs_is_refused(self) -> None:
        (self.data_dir / "crypto_data").mkdir()
        (self.data_dir / "crypto_data" / "notes.txt").write_text("mine")
        result = self.run_main()
        self.assertEqual(result.code, 2, result.stderr)
        self.assertIn("is not a Delta table", result.stderr)
        self.assertEqual(self.fake.requests_to("/coins/markets"), [])
        self.assertEqual((self.data_dir / "crypto_data" / "notes.txt").read_text(), "mine")

    def test_a_table_of_another_schema_is_refused(self) -> None:
        import pyarrow as pa
        from deltalake import write_deltalake

        write_deltalake(str(self.data_dir / "crypto_data"), pa.table({"x": [1]}))
        result = self.run_main()
        self.assertEqual(result.code, 2, result.stderr)
        self.assertIn("another schema", result.stderr)
        self.assertEqual(self.fake.requests_to("/coins/markets"), [])

    def test_a_table_of_a_newer_writer_is_refused(self) -> None:
        self.assertEqual(self.run_main().code, 0)
        log = self.data_dir / "crypto_data" / "_delta_log"
        before = self.export_rows()
        for protocol in (
            {"minReaderVersion": 1, "minWriterVersion": 8},
            {"minReaderVersion": 3, "minWriterVersion": 7, "readerFeatures": [], "writerFeatures": ["futureFeatureX"]},
        ):
            with self.subTest(protocol=protocol):
                version = len(list(log.glob("*.json")))
                (log / f"{version:020d}.json").write_text(json.dumps({"protocol": protocol}) + "\n")
                self.fake.advance(60)
                for argv in ((), ("status",)):
                    result = self.run_main(*argv)
                    self.assertEqual(result.code, 2, result.stderr)
                    self.assertIn("was written by a newer Delta writer", result.stderr)
                    self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
                (log / f"{version:020d}.json").unlink()
                self.assertEqual(self.export_rows(), before)

    def test_a_commit_conflict_that_never_resolves_writes_nothing(self) -> None:
        """A writer whose table version is always stale: delta-rs refuses each commit; after the retries, one
        line and nothing written."""
        from deltalake import DeltaTable

        from utils.history.delta_table import records_to_table
        from utils.history.schema import Record

        self.assertEqual(self.run_main().code, 0)
        uri = str(self.data_dir / "crypto_data")
        stale_version = DeltaTable(uri).version()
        self.fake.advance(60)
        self.assertEqual(self.run_main().code, 0)  # another writer commits into the same partition

        class StaleWriter(DeltaHistory):
            def create(self) -> DeltaTable:
                return DeltaTable(uri, version=stale_version)

        sleeps: list[float] = []
        writer = StaleWriter(uri, max_attempts=3, sleep=sleeps.append)
        # An observation the other writer stored: to the stale writer it looks new. Were the conflict missed, the
        # key would be stored twice.
        newest = self.export_rows()[-1]
        cells = dict(zip(COLUMNS, newest))
        kept = ("name", "symbol", "coin_id", "vs_currency", "source", "fetched_at", "last_updated")
        record = Record(**{c: cells[c] if c in kept else None for c in COLUMNS})
        before = DeltaTable(uri).version()
        with self.assertRaises(LoadError) as caught:
            writer.merge(records_to_table([record]))
        self.assertRegex(str(caught.exception), r"kept changing under 3 attempts .*nothing was written: run again")
        self.assertEqual(len(sleeps), 2)
        self.assertEqual(DeltaTable(uri).version(), before)
        self.assertEqual(len(self.export_rows()), 20)

    def test_a_full_disk_during_the_write_leaves_the_table_unchanged(self) -> None:
        self.assertEqual(self.run_subprocess().code, 0)
        before = self.export_rows()
        self.fake.advance(60)
        env = dict(os.environ, **self.env)
        done = subprocess.run(
            [sys.executable, str(MAIN)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.tmp.name,
            preexec_fn=limit_file_size(2000),  # Parquet files stop growing at 2,000 bytes: EFBIG, as on a full disk
        )
        self.assertEqual(done.returncode, 1, done.stderr)
        self.assertIn(
            "is full; free some space and run again (nothing was written: the table is unchanged)", done.stderr
        )
        self.assertNotIn("Traceback", done.stderr)
        self.assertEqual(self.export_rows(), before)
        again = self.run_subprocess()
        self.assertEqual(again.code, 0, again.stderr)
        self.assertEqual(len(self.export_rows()), 20)

    def test_a_damaged_data_file_is_one_line_not_a_crash(self) -> None:
        self.assertEqual(self.run_main().code, 0)
        shutil.rmtree(self.data_dir / ".state")  # the index is rebuilt from the table's files
        (part,) = (self.data_dir / "crypto_data").glob("vs_currency=eur/month=2023-01/*.parquet")
        part.write_bytes(b"PAR1 not a parquet file")
        result = self.run_main("status")
        self.assertEqual(result.code, 1, result.stderr)
        self.assertIn("cannot read the Delta table", result.stderr)
        self.assertNotIn("unexpected", result.stderr)
        self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)

    def test_exit_codes_survive_interpreter_teardown(self) -> None:
        """A process once aborted at exit after to_pandas(): the exit code is the command's, every time."""
        self.every_command_exits_with_its_code(rounds=1)

    @slow_part("two more rounds of the five commands: the abort at exit came now and then, not every time")
    def test_exit_codes_survive_interpreter_teardown_two_more_rounds(self) -> None:
        self.every_command_exits_with_its_code(rounds=2)

    def every_command_exits_with_its_code(self, rounds: int) -> None:
        self.assertEqual(self.run_subprocess().code, 0)
        for _ in range(rounds):
            for argv, code in (
                (("status",), 0),
                (("top", "--date", "2023-01-08"), 0),
                (("top", "--date", "2020-01-01"), 1),
                (("export", "--out", "x.parquet"), 0),
                (("export", "--out", "/nonexistent/x.csv"), 2),
            ):
                result = self.run_subprocess(*argv)
                self.assertEqual(result.code, code, (argv, result.stderr))
                self.assertNotIn("terminate called", result.stderr)


del CommandsOnAStore

if __name__ == "__main__":
    unittest.main()
