"""Every hint that names a command, run as printed (issue 20, item 4: no hint leads to a dead end).

Each test triggers the hint, takes the command out of its backticks (or the flag it names), runs it, and
checks that it does what the hint promises: the rows appear, the error goes, the hint changes. The hints
with a test elsewhere are listed in the README (Hints that work).
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys

from tests.fake_coingecko import Fault
from tests.support import FIXTURE_IDS, MAIN, PipelineTestCase, make_stale, read_rows, wait_until
from tests.test_backfill import charts_for
from utils.history.layout import DataLayout
from utils.history.schema import LEGACY_COLUMNS

LEGACY_ROW = "Bitcoin,BTC,16000.5,308000000000,1.25,19250000,2023-01-05T10:00:00.000Z\n"


def hinted(text: str) -> list[str]:
    """The arguments of the first `python main.py ...` command the text quotes in backticks."""
    for quoted in text.split("`")[1::2]:
        if quoted.startswith("python main.py"):
            return shlex.split(quoted)[2:]
    raise AssertionError(f"no command in {text!r}")


class Hints(PipelineTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.fake.market_chart.update(charts_for(FIXTURE_IDS))
        self.layout = DataLayout(self.data_dir)

    def chart_rows(self, coin_id: str) -> int:
        return sum(1 for r in self.rows() if r["coin_id"] == coin_id and r["source"] == "market_chart")

    def test_backfill_top_before_any_top_run_names_the_run_that_records_it(self) -> None:
        env = dict(self.env, PIPELINE_COINS="algorand")
        first = self.run_main("backfill", "--days", "5", "--top", "3", env=env)
        self.assertEqual(first.code, 0, first.stderr)
        self.assertIn("no top 3 recorded in eur yet", first.stderr)
        command = hinted(first.stderr)
        self.assertEqual(command[:3], ["run", "--top", "3"])
        self.assertEqual(self.run_main(*command, env=env).code, 0)
        again = self.run_main("backfill", "--days", "5", "--top", "3", env=env)
        self.assertEqual(again.code, 0, again.stderr)
        self.assertNotIn("no top 3 recorded", again.stderr)
        for coin_id in ("bitcoin", "ethereum", "tether"):  # the top 3 the run recorded
            self.assertEqual(self.chart_rows(coin_id), 5, coin_id)

    def test_findings_counted_by_status_are_listed_by_the_command_it_names(self) -> None:
        make_stale(self.fake)
        self.assertEqual(self.run_main().code, 0)
        status = self.run_main("status")
        line = next(line for line in status.stdout.splitlines() if line.startswith("quality:"))
        self.assertIn("1 stale", line)
        command = hinted(line)
        self.assertEqual(command[0], "quality")
        listed = self.run_main(*command)
        self.assertEqual(listed.code, 0, listed.stderr)
        self.assertIn("stale", listed.stdout)
        self.assertIn("bitcoin", listed.stdout)

    def test_a_seven_column_csv_read_by_status_names_the_run_that_migrates_it(self) -> None:
        self.csv_path.write_text(",".join(LEGACY_COLUMNS) + "\n" + LEGACY_ROW, encoding="utf-8")
        status = self.run_main("status")
        line = next(line for line in status.stdout.splitlines() if line.startswith("history:"))
        self.assertIn(f"run `python main.py --data-dir {self.data_dir}` once to migrate it", line)
        plot = self.run_main("plot")
        self.assertEqual(plot.code, 2, plot.stderr)
        self.assertEqual(hinted(plot.stderr), hinted(line))
        done = self.run_main(*hinted(line))
        self.assertEqual(done.code, 0, done.stderr)
        self.assertEqual(self.run_main("status").code, 0)
        self.assertIn("Bitcoin", [r["name"] for r in self.rows()])

    def test_delta_on_a_seven_column_csv_names_the_csv_run_then_converts(self) -> None:
        self.csv_path.write_text(",".join(LEGACY_COLUMNS) + "\n" + LEGACY_ROW, encoding="utf-8")
        refused = self.run_main("--table-format", "delta")
        self.assertEqual(refused.code, 2, refused.stderr)
        self.assertIn("then run with delta to convert it", refused.stderr)
        command = hinted(refused.stderr)
        self.assertEqual(command, ["--data-dir", str(self.data_dir), "--table-format", "csv"])
        self.assertEqual(self.run_main(*command).code, 0)
        converted = self.run_main("--table-format", "delta")
        self.assertEqual(converted.code, 0, converted.stderr)
        self.assertTrue((self.layout.table / "_delta_log").is_dir())
        out = self.data_dir.parent / "export.csv"
        self.assertEqual(self.run_main("export", "--table-format", "delta", "--out", str(out)).code, 0)
        self.assertIn("2023-01-05T10:00:00.000Z", out.read_text(encoding="utf-8"))

    def test_a_held_lock_says_wait_or_raise_lock_timeout_and_both_work(self) -> None:
        self.assertEqual(self.run_main().code, 0)
        self.layout.lock.parent.mkdir(exist_ok=True)
        holder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys; from filelock import FileLock; lock = FileLock(sys.argv[1]); lock.acquire(); "
                "print('held', flush=True); sys.stdin.readline(); lock.release()",
                str(self.layout.lock),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.addCleanup(holder.wait)
        self.addCleanup(holder.kill)
        self.addCleanup(holder.stdout.close)
        self.addCleanup(holder.stdin.close)
        self.assertEqual(holder.stdout.readline().strip(), "held")
        self.fake.advance(60)
        blocked = self.run_main("--lock-timeout", "0.5")
        self.assertNotEqual(blocked.code, 0)
        self.assertIn("wait for it to finish or raise --lock-timeout", blocked.stderr)
        self.assertEqual(len(self.rows()), 10)
        # Raise --lock-timeout: the holder finishes while this run waits.
        holder.stdin.write("done\n")
        holder.stdin.flush()
        waited = self.run_main("--lock-timeout", "60")
        self.assertEqual(waited.code, 0, waited.stderr)
        self.assertEqual(len(self.rows()), 20)
        holder.wait(timeout=30)

    def test_a_long_retry_after_says_run_again_later_and_a_later_run_works(self) -> None:
        self.fake.add_fault(Fault.rate_limited("3600"), times=1)
        limited = self.run_main()
        self.assertEqual(limited.code, 1, limited.stderr)
        self.assertIn("run again later", limited.stderr)
        self.assertFalse(self.csv_path.exists() and self.rows())
        later = self.run_main()
        self.assertEqual(later.code, 0, later.stderr)
        self.assertEqual(len(self.rows()), 10)

    def test_a_backfill_over_budget_runs_with_either_flag_it_names(self) -> None:
        self.assertEqual(self.run_main().code, 0)
        argv = ("backfill", "--days", "3", "--coins", "bitcoin,ethereum", "--monthly-credits", "2")
        refused = self.run_main(*argv)
        self.assertEqual(refused.code, 2, refused.stderr)
        self.assertIn("pass --over-budget to run anyway, or raise --monthly-credits", refused.stderr)
        anyway = self.run_main(*argv, "--over-budget")
        self.assertEqual(anyway.code, 0, anyway.stderr)
        self.assertEqual(self.chart_rows("bitcoin"), 3)
        raised = self.run_main("backfill", "--days", "6", "--coins", "bitcoin,ethereum", "--monthly-credits", "100")
        self.assertEqual(raised.code, 0, raised.stderr)
        self.assertEqual(self.chart_rows("ethereum"), 6)

    def test_an_id_that_is_not_an_id_names_the_check_that_finds_the_right_one(self) -> None:
        bad = self.run_main("--coins", "Bit Coin")
        self.assertEqual(bad.code, 2, bad.stderr)
        command = hinted(bad.stderr)
        self.assertEqual(command, ["check", "--coins", "bit-coin"])
        checked = self.run_main(*command)
        self.assertIn("bitcoin", checked.stdout)
        self.assertIn("did you mean", checked.stdout)

    def test_ids_with_no_data_name_the_check_of_those_ids(self) -> None:
        self.fake.remove("ethereum")
        result = self.run_main("--coins", "bitcoin,ethereum", env=dict(self.env, PIPELINE_COINS="bitcoin"))
        self.assertEqual(result.code, 3, result.stderr)
        line = next(line for line in result.stderr.splitlines() if "returned no data for ethereum" in line)
        command = hinted(line)
        self.assertEqual(command[:3], ["check", "--coins", "ethereum"])
        checked = self.run_main(*command, env=dict(self.env, PIPELINE_COINS="bitcoin"))
        self.assertEqual(checked.code, 1, checked.stdout)
        self.assertRegex(checked.stdout, r"FAIL .*ethereum")

    def test_a_coin_the_seed_could_not_fetch_names_a_backfill_of_that_coin(self) -> None:
        env = dict(self.env, PIPELINE_HEAL="1", PIPELINE_COINS="bitcoin")
        del self.fake.market_chart["tether"]
        first = self.run_main("run", "--coins", "bitcoin,tether", env=env)
        self.assertEqual(first.code, 0, first.stderr)
        line = next(line for line in first.stderr.splitlines() if "could not seed tether" in line)
        command = hinted(line)
        self.assertEqual(command[:5], ["backfill", "--days", "30", "--coins", "tether"])
        self.fake.market_chart.update(charts_for(["tether"]))
        done = self.run_main(*command, env=env)  # the configured coins are bitcoin only: the hint names tether
        self.assertEqual(done.code, 0, done.stderr)
        self.assertEqual(self.chart_rows("tether"), 30)

    def test_hints_carry_the_data_dir_the_user_gave(self) -> None:
        env = {k: v for k, v in self.env.items() if k != "PIPELINE_DATA_DIR"}
        env.update(PIPELINE_HEAL="1", PIPELINE_COINS="bitcoin")
        elsewhere = self.data_dir.parent / "elsewhere"
        elsewhere.mkdir()
        del self.fake.market_chart["tether"]
        first = self.run_main("run", "--data-dir", str(elsewhere), "--coins", "bitcoin,tether", env=env)
        self.assertEqual(first.code, 0, first.stderr)
        line = next(line for line in first.stderr.splitlines() if "could not seed tether" in line)
        command = hinted(line)
        self.assertEqual(command[-2:], ["--data-dir", str(elsewhere)])
        self.fake.market_chart.update(charts_for(["tether"]))
        self.assertEqual(self.run_main(*command, env=env).code, 0)
        rows = [r for r in read_rows(elsewhere / "crypto_data.csv") if r["coin_id"] == "tether"]
        self.assertEqual(len(rows), 31)
        self.assertFalse(self.csv_path.exists())

    def test_no_daemon_running_names_the_daemon_that_schedules_the_next_run(self) -> None:
        self.assertEqual(self.run_main().code, 0)
        line = next(line for line in self.run_main("status").stdout.splitlines() if line.startswith("next run:"))
        self.assertIn("no daemon running", line)
        command = hinted(line)
        self.assertEqual(command, ["daemon", "--data-dir", str(self.data_dir)])
        daemon = subprocess.Popen(
            [sys.executable, str(MAIN), *command, "--at", "03:00", "--timezone", "UTC"],
            env=dict(os.environ, **self.env),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.tmp.name,
        )
        self.addCleanup(daemon.wait)
        self.addCleanup(daemon.kill)
        self.addCleanup(daemon.stderr.close)
        scheduled = wait_until(
            lambda: next((x for x in self.run_main("status").stdout.splitlines() if "daemon PID" in x), None),
            "status to show the daemon's next run",
            timeout=60,
            interval=0.5,
        )
        self.assertIn(f"daemon PID {daemon.pid}, daily at 03:00", scheduled)
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
        self.assertEqual(daemon.returncode, 0)
