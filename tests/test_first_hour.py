"""A new user's first hour (issue 20): a first run with a month of history, charts that say what they lack,
a clear line outside the venv, and hints that work when run."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

from matplotlib import dates as mdates

from flows.backfill import newest_complete_day
from lambdas.wiring import chart_options
from tests.fake_coingecko import format_iso_ms, make_daily_chart
from tests.support import FIXTURE_IDS, MAIN, PipelineTestCase, record, wait_until
from utils.charts.format import SHORT_HISTORY_NOTE
from utils.charts.render import chart_drawings
from utils.history.csv_store import HistoryStore
from utils.history.layout import DataLayout
from utils.settings import build_settings

NOW = datetime.now(timezone.utc)


def current(rows: list[dict]) -> list[dict]:
    """The recorded /coins/markets answer as if CoinGecko gave it five minutes ago."""
    out = []
    for row in rows:
        row = dict(row)
        row["last_updated"] = format_iso_ms(NOW - timedelta(minutes=5))
        out.append(row)
    return out


class FirstHourCase(PipelineTestCase):
    """The fake answers today's rows and 400 days of daily points per coin; healing on (as for a user)."""

    def setUp(self) -> None:
        super().setUp()
        self.fake.set_coins(current(self.fake.coins))
        start = NOW.date() - timedelta(days=399)
        for i, coin in enumerate(FIXTURE_IDS):
            self.fake.market_chart[coin] = make_daily_chart(start, 400, 100.0 + i, partial_point_at=NOW, seed=i)
        self.env = dict(self.env, PIPELINE_HEAL="1")

    def chart_calls(self) -> list[str]:
        return [r.path for r in self.fake.requests if "/market_chart" in r.path]

    def rows_of(self, coin_id: str) -> list[dict[str, str]]:
        return [r for r in self.rows() if r["coin_id"] == coin_id]

    def figures(self, **settings: str) -> dict:
        """The primary currency's three charts as drawn Figures, by file name."""
        options = chart_options(build_settings("plot", {"data_dir": str(self.data_dir), **settings}, {}))
        with HistoryStore(DataLayout(self.data_dir)).index() as index:
            drawings, _ = chart_drawings(index, options)
        return {name: draw() for name, draw in drawings}


class FirstRunSeeds(FirstHourCase):
    def test_the_first_run_fills_the_last_30_days_one_request_per_coin(self) -> None:
        result = self.run_main("run")
        self.assertEqual(result.code, 0, result.stderr)
        self.assertIn("a new history: filling the last 30 days of 10 coins", result.stderr)
        self.assertTrue(result.stderr.strip().splitlines()[-1].startswith("run ok: 10 coins, 10 rows appended"))
        self.assertIn("300 rows of past days seeded", result.stderr)
        self.assertEqual(sorted(self.chart_calls()), sorted(f"/coins/{c}/market_chart/range" for c in FIXTURE_IDS))
        bitcoin = self.rows_of("bitcoin")
        self.assertEqual(len(bitcoin), 31)  # 30 past days and today's observation
        days = sorted({r["last_updated"][:10] for r in bitcoin})
        self.assertGreaterEqual((datetime.fromisoformat(days[-1]) - datetime.fromisoformat(days[0])).days, 29)

    def test_a_second_run_does_not_seed_again(self) -> None:
        self.assertEqual(self.run_main("run").code, 0)
        before = len(self.chart_calls())
        self.fake.advance(120)
        result = self.run_main("run")
        self.assertEqual(result.code, 0, result.stderr)
        self.assertNotIn("a new history", result.stderr)
        self.assertEqual(len(self.chart_calls()), before)

    def test_no_heal_seed_days_0_and_the_variable_turn_it_off(self) -> None:
        for argv, env in (
            (["run", "--no-heal"], {}),
            (["run", "--seed-days", "0"], {}),
            (["run"], {"PIPELINE_SEED_DAYS": "0"}),
        ):
            with self.subTest(argv=argv, env=env):
                self.csv_path.unlink(missing_ok=True)
                self.fake.requests.clear()
                result = self.run_main(*argv, env=dict(self.env, **env))
                self.assertEqual(result.code, 0, result.stderr)
                self.assertEqual(self.chart_calls(), [])
                self.assertEqual(len(self.rows()), len(FIXTURE_IDS))

    def test_seed_days_sets_the_size_within_the_plans_reach(self) -> None:
        result = self.run_main("run", "--seed-days", "7", "--coins", "bitcoin")
        self.assertEqual(result.code, 0, result.stderr)
        self.assertEqual(len(self.rows_of("bitcoin")), 8)
        self.csv_path.unlink()
        result = self.run_main("run", "--seed-days", "3000", "--coins", "ethereum")  # public plan: 365 days back
        self.assertEqual(result.code, 0, result.stderr)
        # 365 days back, up to the newest day whose 00:00 point is final (today's from about 00:40 UTC), and the run's
        # own snapshot of today.
        settled_today = newest_complete_day(NOW) == NOW.date()
        self.assertEqual(len(self.rows_of("ethereum")), 365 + settled_today)

    def test_seed_days_out_of_range_is_one_line_exit_2(self) -> None:
        for value in ("-1", "x", "4000"):
            with self.subTest(value=value):
                result = self.run_main("run", "--seed-days", value)
                self.assertEqual(result.code, 2)
                self.assertTrue(result.stderr.startswith("config error: seed-days: "), result.stderr)
                self.assertEqual(len(result.stderr.strip().splitlines()), 1)

    def test_a_coin_the_seed_cannot_fetch_is_a_warning_naming_the_backfill_that_fills_it(self) -> None:
        del self.fake.market_chart["ethereum"]
        result = self.run_main("run", "--coins", "bitcoin,ethereum")
        self.assertEqual(result.code, 0, result.stderr)
        self.assertIn("warning: could not seed ethereum: ", result.stderr)
        self.assertIn(
            f"`python main.py backfill --days 30 --coins ethereum --data-dir {self.data_dir}` fills them", result.stderr
        )
        self.assertEqual(len(self.rows_of("ethereum")), 1)
        self.fake.market_chart["ethereum"] = make_daily_chart(NOW.date() - timedelta(days=99), 100, 5.0, seed=3)
        line = next(line for line in result.stderr.splitlines() if "could not seed ethereum" in line)
        hint = self.run_main(*line.split("`")[1].split()[2:])  # the hint, run as printed
        self.assertEqual(hint.code, 0, hint.stderr)
        self.assertGreaterEqual(len(self.rows_of("ethereum")), 30)


class FirstCharts(FirstHourCase):
    def test_after_a_first_run_the_price_lines_span_at_least_28_days(self) -> None:
        self.assertEqual(self.run_main("run").code, 0)
        price = self.figures()["crypto_price_trend.png"]
        (ax,) = price.axes
        spans = {}
        for line in ax.get_lines():
            if line.get_gid() in FIXTURE_IDS:
                x = [v for v in line.get_xdata() if v == v]  # NaN marks a break
                spans[line.get_gid()] = max(x) - min(x)
        self.assertEqual(set(spans), set(FIXTURE_IDS))
        self.assertGreaterEqual(min(spans.values()), 28)
        texts = [t.get_text() for t in ax.texts]
        self.assertNotIn(SHORT_HISTORY_NOTE, texts)

    def test_a_chart_with_one_day_per_coin_says_so_and_names_the_command_that_fixes_it(self) -> None:
        self.assertEqual(self.run_main("run", "--seed-days", "0").code, 0)
        for name, fig in self.figures().items():
            (ax,) = fig.axes
            texts = [t.get_text() for t in ax.texts]
            self.assertIn(SHORT_HISTORY_NOTE, texts, name)
        self.assertIn("`python main.py backfill --days 30`", SHORT_HISTORY_NOTE)
        hint = self.run_main("backfill", "--days", "30")  # the note's command, run
        self.assertEqual(hint.code, 0, hint.stderr)
        for fig in self.figures().values():
            (ax,) = fig.axes
            self.assertNotIn(SHORT_HISTORY_NOTE, [t.get_text() for t in ax.texts])
            x = [v for line in ax.get_lines() for v in line.get_xdata() if v == v]
            self.assertGreaterEqual(max(x) - min(x), 28)
        mdates.num2date(0)  # the x data are matplotlib day numbers


class OutsideTheVenv(PipelineTestCase):
    def test_a_python_without_the_packages_gets_one_line_and_exit_2(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            venv = Path(tmp) / "bare"
            subprocess.run(
                [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True, timeout=120
            )
            python = venv / "bin" / "python"
            for argv in (["run"], ["status"], []):
                with self.subTest(argv=argv):
                    proc = subprocess.run(
                        [str(python), str(MAIN), *argv],
                        capture_output=True,
                        text=True,
                        timeout=60,
                        cwd=tmp,
                        env={"PATH": "/usr/bin:/bin"},
                    )
                    self.assertEqual(proc.returncode, 2, proc.stderr)
                    lines = proc.stderr.strip().splitlines()
                    self.assertEqual(len(lines), 1, proc.stderr)
                    self.assertTrue(lines[0].startswith("error: the package "), lines[0])
                    self.assertIn("`make run`", lines[0])
                    self.assertIn("`.venv/bin/python main.py`", lines[0])
                    self.assertNotIn("Traceback", proc.stderr)
                    self.assertEqual(proc.stdout, "")
            # --help needs no package: a new user can read it before installing anything.
            proc = subprocess.run([str(python), str(MAIN), "--help"], capture_output=True, text=True, timeout=60)
            self.assertEqual(proc.returncode, 0, proc.stderr)


class SmallThings(PipelineTestCase):
    def test_version(self) -> None:
        result = self.run_subprocess("--version")
        self.assertEqual(result.code, 0, result.stderr)
        self.assertTrue(result.stdout.startswith("main.py "), result.stdout)

    def test_coins_before_plot_is_not_told_to_move_after_it(self) -> None:
        self.assertEqual(self.run_main("run").code, 0)
        result = self.run_main("--coins", "bitcoin", "plot")
        self.assertEqual(result.code, 2)
        self.assertTrue(result.stderr.startswith("error: --coins changes nothing for `plot`"), result.stderr)
        self.assertNotIn("goes after the command", result.stderr)
        self.assertIn("python main.py plot --plot-coins ID,ID", result.stderr)
        hint = self.run_main("plot", "--plot-coins", "bitcoin")  # the hint, run
        self.assertEqual(hint.code, 0, hint.stderr)
        result = self.run_main("--coins", "bitcoin", "status")
        self.assertEqual(result.code, 2)
        self.assertTrue(result.stderr.startswith("error: --coins changes nothing for `status`"), result.stderr)
        self.assertEqual(self.run_main("status").code, 0)  # left out, as it says


class CtrlCDuringBackfill(PipelineTestCase):
    def test_ctrl_c_exits_130_says_rerunning_resumes_and_it_does(self) -> None:
        import signal

        from tests.fake_coingecko import Fault, markets_rows

        self.fake.set_coins(markets_rows(8))
        ids = [r["id"] for r in self.fake.coins]
        start = NOW.date() - timedelta(days=39)
        self.fake.market_chart.update({c: make_daily_chart(start, 40, 10.0 + i, seed=i) for i, c in enumerate(ids)})
        self.fake.add_fault(Fault.stall(60), path=f"/coins/{ids[4]}/market_chart/range")
        argv = ["backfill", "--days", "30", "--rate-limit", "1000", "--coins", ",".join(ids)]
        proc = self.start(*argv)
        wait_until(lambda: self.fake.requests_to(f"/coins/{ids[4]}/market_chart/range"), "the stalled coin's request")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
        self.assertEqual(proc.returncode, 130, err)
        last = err.strip().splitlines()[-1]
        self.assertTrue(
            last.startswith(
                "interrupted; the history holds only whole rows; run the same backfill "
                "again and it resumes where it stopped"
            ),
            last,
        )
        self.fake.clear_faults()
        result = self.run_subprocess(*argv)  # the advice, taken
        self.assertEqual(result.code, 0, result.stderr)
        self.assertIn("resuming, 4 of 8 coins already fetched", result.stderr)


def observation(coin: str, day, vs: str = "eur"):
    return record(coin, f"{day.isoformat()}T12:00:00.000Z", vs_currency=vs)


class StatusHints(PipelineTestCase):
    """`status` splits the missing days by what can fill them, and its backfill hint works when run."""

    def setUp(self) -> None:
        super().setUp()
        from lambdas.lambda_3_load import load

        today = NOW.date()
        # bitcoin: seen 400 days ago, then the last 5 days: a gap that is partly older than the free plans reach.
        days = [today - timedelta(days=400)] + [today - timedelta(days=i) for i in range(1, 6)]
        load([observation("bitcoin", d) for d in days], self.csv_path)
        start = today - timedelta(days=449)
        self.fake.market_chart["bitcoin"] = make_daily_chart(start, 450, 100.0, partial_point_at=NOW, seed=1)

    def test_days_beyond_the_plans_reach_are_not_sent_to_backfill(self) -> None:
        result = self.run_main("status")
        self.assertEqual(result.code, 0, result.stderr)
        lines = [line for line in result.stdout.splitlines() if line.startswith("days missing:")]
        self.assertEqual(len(lines), 2, result.stdout)
        within, beyond = lines
        self.assertTrue(within.startswith("days missing: "), within)
        self.assertIn("within the public plan's reach: `python main.py backfill --since ", within)
        self.assertIn(
            "no command can fill them on this plan; a paid plan (`--api-plan pro`) reaches back to 2013", beyond
        )
        n_beyond = int(beyond.split()[2])
        hint = within.split("`")[1].split()[2:]  # the command the line gives, run as it says
        done = self.run_main(*hint)
        self.assertEqual(done.code, 0, done.stderr)
        after = self.run_main("status")
        lines = [line for line in after.stdout.splitlines() if line.startswith("days missing:")]
        self.assertEqual(len(lines), 1, after.stdout)  # only the days no command can fill are left
        self.assertIn("no command can fill them", lines[0])
        self.assertEqual(int(lines[0].split()[2]), n_beyond)

    def test_a_coin_outside_the_configured_coins_gets_coins_in_its_hint(self) -> None:
        result = self.run_main("status", env=dict(self.env, PIPELINE_COINS="ethereum"))
        line = next(line for line in result.stdout.splitlines() if "within the" in line)
        self.assertIn(f"--coins bitcoin --data-dir {self.data_dir}`", line)
        hint = line.split("`")[1].split()[2:]
        done = self.run_main(*hint, env=dict(self.env, PIPELINE_COINS="ethereum"))
        self.assertEqual(done.code, 0, done.stderr)
        after = self.run_main("status", env=dict(self.env, PIPELINE_COINS="ethereum"))
        self.assertNotIn("within the", after.stdout)


class BackfillsAreVisible(FirstHourCase):
    def test_status_and_the_report_show_the_last_backfill(self) -> None:
        self.assertEqual(self.run_main("run", "--seed-days", "0").code, 0)
        before = self.run_main("status")
        self.assertIn("last backfill: none recorded", before.stdout)
        done = self.run_main("backfill", "--days", "30", "--coins", "bitcoin,ethereum")
        self.assertEqual(done.code, 0, done.stderr)
        status = self.run_main("status")
        line = next(line for line in status.stdout.splitlines() if line.startswith("last backfill:"))
        self.assertRegex(
            line,
            r"^last backfill: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC: ok, 30 days "
            r"\(\d{4}-\d\d-\d\d\.\.\d{4}-\d\d-\d\d\), 2 coins, 60 rows added$",
        )
        report = self.run_main("report")
        self.assertEqual(report.code, 0, report.stderr)
        html = (self.data_dir / "report.html").read_text()
        card = html[html.index("<b>Last backfill</b>") :]
        card = card[: card.index("</div>\n  </div>")]
        self.assertIn('<span class="ok">ok</span>', card)
        self.assertIn("30 days", card)
        self.assertIn("60 rows added", card)

    def test_a_failed_backfill_is_shown_as_failed(self) -> None:
        self.assertEqual(self.run_main("run", "--seed-days", "0", "--coins", "bitcoin").code, 0)
        failed = self.run_main("backfill", "--days", "30", "--coins", "nosuchcoin")
        self.assertEqual(failed.code, 1, failed.stderr)
        line = next(line for line in self.run_main("status").stdout.splitlines() if line.startswith("last backfill:"))
        self.assertIn(": failed; no coin could be backfilled", line)


class Offline(PipelineTestCase):
    """No network: a DNS failure or a refused connection is retried twice, then one line; check answers fast."""

    def refused_url(self) -> str:
        import socket

        with socket.socket() as sock:  # a port nothing listens on
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        return f"http://127.0.0.1:{port}/api/v3"

    def test_a_refused_connection_is_tried_three_times_and_fails_with_one_line(self) -> None:
        import time as real_time

        env = dict(self.env, COINGECKO_API_URL=self.refused_url(), PIPELINE_VS_CURRENCY="eur,usd")
        for command in ("run", "check"):
            with self.subTest(command=command):
                started = real_time.monotonic()
                result = self.run_subprocess(command, env=env)
                seconds = real_time.monotonic() - started
                self.assertEqual(result.code, 1, result.stderr)
                self.assertLess(seconds, 10)
                said = [line for line in (result.stdout + result.stderr).splitlines() if "cannot connect" in line]
                self.assertEqual(len(said), 1, result.stdout + result.stderr)  # once: not per currency nor retry
                self.assertIn("(connection refused); gave up after 3 attempts", said[0])
                if command == "run":
                    self.assertEqual(result.stderr.strip().splitlines(), said)  # the one line, nothing else
        self.assertIn("FAIL  connectivity: cannot connect to ", result.stdout)

    def test_a_name_that_does_not_resolve_is_tried_three_times(self) -> None:
        env = dict(self.env, COINGECKO_API_URL="http://no-such-host.invalid/api/v3")
        result = self.run_main("run", env=env)
        self.assertEqual(result.code, 1, result.stderr)
        lines = result.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, lines)
        self.assertTrue(
            lines[0].startswith("run failed: cannot connect to http://no-such-host.invalid/api/v3 ("), lines[0]
        )
        self.assertIn("gave up after 3 attempts", lines[0])
        self.assertEqual(len([s for s in self.sleeps if s > 0.2]), 2)  # two waits between three attempts

    def test_one_failing_currency_of_two_is_said_once(self) -> None:
        result = self.run_main("run", "--vs-currency", "eur,zzz")
        self.assertEqual(result.code, 3, result.stderr)
        self.assertEqual(result.stderr.count("zzz failed"), 1, result.stderr)


class WhereTheHistoryIs(PipelineTestCase):
    def test_a_mistyped_data_dir_is_not_created_and_the_hint_works(self) -> None:
        typo = self.data_dir.parent / "dta"
        for command in ("plot", "top", "status", "report", "quality"):
            with self.subTest(command=command):
                self.run_main(command, "--data-dir", str(typo))
                self.assertFalse(typo.exists(), command)
        result = self.run_main("plot", "--data-dir", str(typo))
        self.assertEqual(result.code, 1)
        self.assertTrue(
            result.stderr.startswith(
                f"plot failed: no history at {typo}: the folder does not exist; "
                "check --data-dir, or start a history there with `python main.py "
                f"--data-dir {typo}`"
            ),
            result.stderr,
        )
        hint = result.stderr.split("`")[1].split()[2:]
        self.assertEqual(self.run_main(*hint).code, 0)  # the hint, run
        self.assertEqual(self.run_main("plot", "--data-dir", str(typo)).code, 0)

    def test_no_history_yet_names_the_data_dir_to_run_with(self) -> None:
        for command in ("plot", "report", "status"):
            with self.subTest(command=command):
                result = self.run_main(command)
                self.assertEqual(result.code, 1)
                text = result.stdout + result.stderr
                self.assertIn(f"run `python main.py --data-dir {self.data_dir}` first", text)
        hint = text.split("`")[1].split()[2:]
        self.assertEqual(self.run_main(*hint).code, 0)
        self.assertEqual(self.run_main("plot").code, 0)


class ConfigFileFolder(PipelineTestCase):
    def test_a_relative_data_dir_in_the_config_file_is_beside_the_file(self) -> None:
        folder = Path(self.tmp.name) / "conf"
        folder.mkdir()
        (folder / "pipeline.toml").write_text('data_dir = "history"\ncoins = ["bitcoin"]\n')
        env = {k: v for k, v in self.env.items() if k not in ("PIPELINE_DATA_DIR", "PIPELINE_COINS")}
        elsewhere = Path(self.tmp.name) / "elsewhere"
        elsewhere.mkdir()
        proc = subprocess.run(
            [sys.executable, str(MAIN), "run", "--config", str(folder / "pipeline.toml")],
            env={**__import__("os").environ, **env},
            cwd=elsewhere,
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertTrue((folder / "history" / "crypto_data.csv").is_file())
        self.assertFalse((elsewhere / "history").exists())
        # The flag stays relative to the current folder.
        proc = subprocess.run(
            [sys.executable, str(MAIN), "status", "--config", str(folder / "pipeline.toml"), "--data-dir", "here"],
            env={**__import__("os").environ, **env},
            cwd=elsewhere,
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(proc.returncode, 1)
        self.assertIn(f"run `python main.py --data-dir {elsewhere / 'here'}` first", proc.stdout)


class ChartsPerCurrency(FirstHourCase):
    """A currency's charts keep their names whatever draws them; plot never deletes another currency's."""

    def names(self) -> set[str]:
        return {p.name for p in self.data_dir.glob("*.png")}

    def test_plot_in_the_second_currency_keeps_both_sets(self) -> None:
        env = dict(self.env, PIPELINE_CHARTS="1")
        self.assertEqual(self.run_main("run", "--vs-currency", "eur,usd", "--seed-days", "0", env=env).code, 0)
        both = {
            "crypto_price_trend.png",
            "crypto_market_cap_trend.png",
            "crypto_performance.png",
            "crypto_price_trend_usd.png",
            "crypto_market_cap_trend_usd.png",
            "crypto_performance_usd.png",
        }
        self.assertEqual(self.names(), both)
        eur = (self.data_dir / "crypto_price_trend.png").read_bytes()
        result = self.run_main("plot", "--vs-currency", "usd", env=env)
        self.assertEqual(result.code, 0, result.stderr)
        self.assertEqual(
            result.stdout.split(),
            [
                str(self.data_dir / n)
                for n in ("crypto_price_trend_usd.png", "crypto_market_cap_trend_usd.png", "crypto_performance_usd.png")
            ],
        )
        self.assertEqual(self.names(), both)  # nothing deleted
        self.assertEqual((self.data_dir / "crypto_price_trend.png").read_bytes(), eur)  # eur's untouched
        self.assertEqual(self.run_main("plot", env=env).code, 0)  # a later plot (eur) leaves usd's
        self.assertEqual(self.names(), both)


class TrackedIsTheLastSelection(PipelineTestCase):
    """After a one-off --top 5, a run of 2 coins is what status, the charts and the report call tracked."""

    def setUp(self) -> None:
        super().setUp()
        self.fake.set_coins(current(self.fake.coins))
        self.env = dict(self.env, PIPELINE_CHARTS="1", PIPELINE_COINS="bitcoin,ethereum")

    def test_status_charts_and_report_follow_the_last_run(self) -> None:
        first = self.run_main("run", "--top", "5", env={k: v for k, v in self.env.items() if k != "PIPELINE_COINS"})
        self.assertEqual(first.code, 0, first.stderr)
        status = self.run_main("status")
        self.assertIn("tracked:      5 coins in eur: the top 5", status.stdout)
        self.fake.advance(120)
        again = self.run_main("run")
        self.assertEqual(again.code, 0, again.stderr)
        status = self.run_main("status")
        tracked = [line for line in status.stdout.splitlines() if line.startswith("tracked:")]
        self.assertEqual(tracked, ["tracked:      2 coins in eur"])
        self.assertIn("history:", status.stdout)
        # The charts draw the 2 tracked coins, and say the history holds 3 more.
        options = __import__("flows.views", fromlist=["view_options"]).view_options(
            build_settings("plot", {"data_dir": str(self.data_dir)}, {})
        )
        with HistoryStore(DataLayout(self.data_dir)).index() as index:
            drawings, report = chart_drawings(index, options)
        self.assertEqual(set(report.coins), {"bitcoin", "ethereum"})
        fig = dict(drawings)["crypto_price_trend.png"]()
        subtitle = [t.get_text() for t in fig.texts if "coins tracked now" in t.get_text()]
        self.assertTrue(subtitle and "(3 more in the history: --plot-coins draws them)" in subtitle[0], subtitle)
        # --plot-coins still reaches every coin of the history.
        result = self.run_main("plot", "--plot-coins", "tether")
        self.assertEqual(result.code, 0, result.stderr)
        # The report's tables follow the same rule, and say so.
        self.assertEqual(self.run_main("report").code, 0)
        html = (self.data_dir / "report.html").read_text()
        latest = html[html.index('id="latest"') : html.index("</table>", html.index('id="latest"'))]
        self.assertEqual(latest.count("<tr data-coin="), 2)
        self.assertIn("This page shows the 2 coins the last run tracked; the history holds 3 more", html)


class CoverageToYesterday(FirstHourCase):
    def test_the_reports_coverage_does_not_count_todays_midnight_point(self) -> None:
        import re

        self.assertEqual(self.run_main("run", "--coins", "bitcoin").code, 0)
        stored = sorted({r["last_updated"][:10] for r in self.rows_of("bitcoin")})
        today = str(NOW.date())
        self.assertEqual(stored[-1], today)  # today's 00:00 point and today's observation
        before_today = len([d for d in stored if d < today])
        self.assertEqual(self.run_main("report").code, 0)
        html = (self.data_dir / "report.html").read_text()
        row = re.search(
            r'<span class="sym">bitcoin</span></td><td class="text">([0-9-]+)</td>\s*<td>(\d+)</td>'
            r'<td class="[a-z]+">(\d+)</td>',
            html,
        )
        self.assertIsNotNone(row, "coverage row")
        first_day, present, missing = row.group(1), int(row.group(2)), int(row.group(3))
        self.assertEqual(present, before_today)  # first day to yesterday, today's points left out
        self.assertEqual(missing, 0)
        self.assertEqual(first_day, stored[0])


class OneOfEach(FirstHourCase):
    def test_one_coin_one_day_reads_right(self) -> None:
        import re

        outputs = []
        for argv in (
            ["run", "--coins", "bitcoin", "--seed-days", "1"],
            ["status"],
            ["plot"],
            ["backfill", "--days", "1", "--coins", "bitcoin"],
        ):
            result = self.run_main(*argv)
            self.assertIn(result.code, (0, 3), result.stderr)
            outputs.append(result.stdout + result.stderr)
        offline = self.run_main(
            "run",
            "--coins",
            "bitcoin",
            "--max-retry-wait",
            "0",
            env=dict(self.env, COINGECKO_API_URL="http://no-such-host.invalid/api/v3"),
        )
        outputs.append(offline.stderr)
        text = "\n".join(outputs)
        self.assertIn("gave up after 1 attempt and", text)
        slips = re.findall(r"(?<![\d.,])1 (?:coins|rows|requests|attempts|days|calls|duplicates)\b", text)
        self.assertEqual(slips, [], text)


class CompleteRows(FirstHourCase):
    def test_seeded_and_backfilled_rows_carry_name_symbol_and_fetch_time(self) -> None:
        import pandas as pd

        self.assertEqual(self.run_main("run", "--coins", "bitcoin,ethereum").code, 0)
        done = self.run_main("backfill", "--days", "60", "--coins", "bitcoin,ethereum")
        self.assertEqual(done.code, 0, done.stderr)
        rows = self.rows()
        chart_rows = [r for r in rows if r["source"] != "coins_markets"]
        self.assertGreaterEqual(len(chart_rows), 2 * 59)
        for row in chart_rows:
            self.assertEqual(
                (row["name"], row["symbol"]),
                {"bitcoin": ("Bitcoin", "btc"), "ethereum": ("Ethereum", "eth")}[row["coin_id"]],
            )
            self.assertRegex(row["fetched_at"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
            self.assertGreater(row["fetched_at"], row["last_updated"])
        frame = pd.read_csv(self.csv_path)
        self.assertEqual(int(frame.groupby("symbol").size().sum()), len(rows))  # no row dropped by groupby
        self.assertEqual(self.run_main("quality").code, 0)
        self.assertNotIn("stale", self.run_main("quality").stdout)  # backfilled rows are old by design
