"""The command line as a user meets it: help, option order, config keys, refused combinations, exit codes."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone

from flows.backfill import Progress, backfill
from tests.fake_coingecko import make_daily_chart, markets_rows
from tests.support import FIXTURE_IDS, REPO, PipelineTestCase, SimClock
from utils.coingecko.client import RATE_WINDOW, CoinGeckoClient, RateLimiter
from utils.settings import DEFAULT_COINS, build_settings

CHARTS = ("crypto_price_trend.png", "crypto_market_cap_trend.png", "crypto_performance.png")
API_FLAGS = ("--api-url", "--api-key", "--api-plan", "--timeout", "--max-retry-wait", "--rate-limit")
TODAY = datetime.now(timezone.utc).date()


class Help(PipelineTestCase):
    def help_text(self, *argv: str) -> str:
        """--help of a real process at 60 columns, so that long lines must wrap."""
        result = self.run_subprocess(*argv, "--help", env={**self.env, "COLUMNS": "60"})
        self.assertEqual(result.code, 0, result.stderr)
        return result.stdout

    def test_top_level_help_lists_the_run_options_and_points_at_each_command(self) -> None:
        text = self.help_text()
        for flag in ("--coins", "--vs-currency", "--data-dir", "--no-charts", "--plot-coins", "-q"):
            self.assertIn(flag, text)
        self.assertIn("python main.py COMMAND --help", " ".join(text.split()))
        for command in ("run", "daemon", "backfill", "status", "check", "plot"):
            self.assertRegex(text, rf"\n\s+{command}\s")

    def test_the_default_coin_list_never_wraps_inside_an_id(self) -> None:
        for command in ("run", "daemon", "backfill", "check"):
            words = set(re.split(r"[\s,\[\];]+", self.help_text(command)))
            self.assertLessEqual(set(DEFAULT_COINS), words, command)

    def test_check_plot_and_status_end_with_their_exit_codes(self) -> None:
        for command in ("check", "plot", "status"):
            text = " ".join(self.help_text(command).split())
            self.assertIn("exit codes: 0 ", text, command)
            self.assertIn("2 bad usage or configuration", text, command)

    def test_status_and_plot_list_no_api_option_yet_still_accept_them(self) -> None:
        for command in ("status", "plot"):
            text = self.help_text(command)
            for flag in (*API_FLAGS, "--coins"):
                self.assertNotIn(flag, text, command)
        for flag in ("check", "run", "daemon", "backfill"):
            self.assertIn("--api-key", self.help_text(flag))
        self.run_main("--no-charts")
        result = self.run_main("status", "--timeout", "5", "--api-plan", "public", "--coins", "bitcoin")
        self.assertEqual(result.code, 0, result.stderr)


class OptionOrder(PipelineTestCase):
    def test_global_options_before_the_command(self) -> None:
        self.assertEqual(self.run_main().code, 0)
        result = self.run_main("-q", "plot")
        self.assertEqual(result.code, 0, result.stderr)
        self.assertEqual(result.stderr, "")  # -q: only errors
        self.assertIn(CHARTS[0], result.stdout)

    def test_data_dir_and_config_before_the_command_are_used(self) -> None:
        other = self.data_dir.parent / "other"
        env = {k: v for k, v in self.env.items() if k != "PIPELINE_DATA_DIR"}
        config = self.data_dir.parent / "pipeline.toml"
        config.write_text('vs_currency = "usd"\n')
        result = self.run_subprocess(
            "--data-dir", str(other), "--config", str(config), "-v", "run", "--coins", "bitcoin", env=env
        )
        self.assertEqual(result.code, 0, result.stderr)
        self.assertIn("usd", (other / "crypto_data.csv").read_text().splitlines()[1])
        result = self.run_subprocess("--data-dir", str(other), "status", env=env)
        self.assertEqual(result.code, 0, result.stderr)
        self.assertIn("history:", result.stdout)

    def test_after_the_command_wins_over_before_it(self) -> None:
        elsewhere = self.data_dir.parent / "elsewhere"
        result = self.run_main("--data-dir", str(elsewhere), "run", "--data-dir", str(self.data_dir))
        self.assertEqual(result.code, 0, result.stderr)
        self.assertTrue(self.csv_path.exists())
        self.assertFalse(elsewhere.exists())

    def test_a_command_option_before_the_command_is_refused(self) -> None:
        result = self.run_main("--coins", "bitcoin", "backfill")
        self.assertEqual(result.code, 2)
        self.assertTrue(
            result.stderr.startswith("error: --coins goes after the command: python main.py backfill --coins"),
            result.stderr,
        )
        result = self.run_main("--no-heal", "status")  # status takes no --no-heal: moving it would be refused
        self.assertEqual(result.code, 2)
        self.assertTrue(
            result.stderr.startswith("error: --no-heal is not an option of `status`; leave it out"), result.stderr
        )
        self.assertEqual(self.run_main("status").code, 1)  # left out, as it says: no history yet

    def test_options_alone_still_mean_run(self) -> None:
        result = self.run_main("-q", "--coins", "bitcoin,ethereum")
        self.assertEqual(result.code, 0, result.stderr)
        self.assertEqual([r["coin_id"] for r in self.rows()], ["bitcoin", "ethereum"])


class ConfigKeys(PipelineTestCase):
    def write_config(self, text: str) -> str:
        path = self.data_dir.parent / "pipeline.toml"
        path.write_text(text)
        return str(path)

    def test_no_charts_no_heal_and_no_initial_run_are_keys_too(self) -> None:
        config = self.write_config("no_charts = true\nno_heal = true\nno_initial_run = true\n")
        settings = build_settings("daemon", {}, {}, config_path=config)
        self.assertEqual((settings.charts, settings.heal, settings.initial_run), (False, False, False))
        env = {k: v for k, v in self.env.items() if k not in ("PIPELINE_CHARTS", "PIPELINE_HEAL")}
        result = self.run_main("--config", config, env=env)
        self.assertEqual(result.code, 0, result.stderr)
        self.assertFalse((self.data_dir / CHARTS[0]).exists())

    def test_the_positive_spelling_still_works_and_agreeing_pairs_pass(self) -> None:
        config = self.write_config("charts = false\nno_charts = true\nheal = true\n")
        settings = build_settings("run", {}, {}, config_path=config)
        self.assertEqual((settings.charts, settings.heal), (False, True))

    def test_contradicting_keys_are_a_usage_error(self) -> None:
        config = self.write_config("charts = true\nno_charts = true\n")
        result = self.run_main("--config", config)
        self.assertEqual(result.code, 2)
        self.assertTrue(result.stderr.startswith("config error: config file "), result.stderr)
        self.assertIn("charts and no_charts contradict each other", result.stderr)
        self.assertEqual(len(result.stderr.strip().splitlines()), 1)

    def test_a_flag_beats_the_negated_key(self) -> None:
        config = self.write_config("no_heal = false\n")
        settings = build_settings("run", {"heal": False}, {}, config_path=config)
        self.assertFalse(settings.heal)


class ConflictingRanges(PipelineTestCase):
    def test_backfill_days_and_since_together_are_refused(self) -> None:
        result = self.run_main("backfill", "--days", "5", "--since", "2026-11-01")
        self.assertEqual(result.code, 2)
        self.assertTrue(
            result.stderr.startswith("config error: --since 2026-11-01 and --days 5 both set the first day"),
            result.stderr,
        )
        self.assertEqual(self.fake.requests, [])

    def test_plot_days_and_since_together_are_refused(self) -> None:
        self.run_main()
        result = self.run_subprocess("plot", "--days", "7", "--since", "2026-11-01")
        self.assertEqual(result.code, 2)
        self.assertTrue(result.stderr.startswith("config error: --since 2026-11-01 and --days 7"), result.stderr)

    def test_days_with_until_is_still_fine(self) -> None:
        self.fake.market_chart.update({"bitcoin": make_daily_chart(TODAY - timedelta(days=30), 31, 100.0)})
        until = TODAY - timedelta(days=3)
        result = self.run_main("backfill", "--coins", "bitcoin", "--days", "5", "--until", until.isoformat())
        self.assertEqual(result.code, 0, result.stderr)
        self.assertEqual(max(r["last_updated"][:10] for r in self.rows()), until.isoformat())


class ExitCodes(PipelineTestCase):
    def test_plot_coins_matching_nothing_is_exit_2(self) -> None:
        self.run_main()
        result = self.run_main("plot", "--plot-coins", "foo")
        self.assertEqual(result.code, 2)
        self.assertTrue(result.stderr.startswith("plot failed: no coin matches --plot-coins foo"), result.stderr)

    def test_a_symbol_for_an_id_names_the_id(self) -> None:
        # The search that names the id is a second call: without a rate limit, the public plan's pacing
        # (10 a minute) sleeps 6 s for real in the child.
        result = self.run_subprocess("run", "--coins", "BTC", "--rate-limit", "10000")
        self.assertEqual(result.code, 1)
        self.assertEqual(
            result.stderr.splitlines(),
            [
                "run failed: no usable rows: CoinGecko returned no data for btc: BTC is a symbol: use its CoinGecko "
                "id, bitcoin; nothing was appended"
            ],
        )
        self.assertFalse(self.csv_path.exists())

    def test_a_symbol_beside_good_ids_is_named_in_the_warning(self) -> None:
        result = self.run_main("--coins", "bitcoin,eth")
        self.assertEqual(result.code, 3)
        self.assertIn(
            "warning: CoinGecko returned no data for eth: ETH is a symbol: use its CoinGecko id, ethereum",
            result.stderr,
        )

    def test_a_real_id_left_out_gets_no_wrong_advice(self) -> None:
        self.fake.set_coins([c for c in self.fake.coins if c["id"] != "ethereum"])
        result = self.run_main("--coins", "bitcoin,ethereum")
        self.assertEqual(result.code, 3)
        self.assertIn(
            "CoinGecko returned no data for ethereum: check the ids with `python main.py check --coins ethereum "
            f"--data-dir {self.data_dir}`",
            result.stderr,
        )

    def test_an_s3_folder_without_boto3_says_what_to_install(self) -> None:
        code = (
            "import sys; sys.modules['boto3'] = None; import main; "
            "sys.exit(main.main(['plot', '--data-dir', 's3://bucket/history']))"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **self.env},
        )
        self.assertEqual(proc.returncode, 2, proc.stderr)
        self.assertTrue(proc.stderr.startswith("config error: --data-dir s3://bucket/history needs boto3"))
        self.assertIn("pip install -r requirements-aws.txt", proc.stderr)


class BackfillCharts(PipelineTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.fake.market_chart.update(
            {
                coin: make_daily_chart(TODAY - timedelta(days=40), 41, 100.0 + i, seed=i)
                for i, coin in enumerate(FIXTURE_IDS)
            }
        )
        self.env["PIPELINE_CHARTS"] = "1"

    def test_backfill_redraws_the_charts_when_rows_were_added(self) -> None:
        result = self.run_main("backfill", "--days", "10", "--coins", "bitcoin,ethereum")
        self.assertEqual(result.code, 0, result.stderr)
        for name in CHARTS:
            self.assertTrue((self.data_dir / name).read_bytes().startswith(b"\x89PNG"), name)
        for name in CHARTS:
            (self.data_dir / name).unlink()
        again = self.run_main("backfill", "--days", "10", "--coins", "bitcoin,ethereum")
        self.assertIn("0 rows added", again.stderr)
        self.assertFalse((self.data_dir / CHARTS[0]).exists())  # nothing new, nothing redrawn

    def test_no_charts_skips_them(self) -> None:
        result = self.run_main("backfill", "--days", "10", "--coins", "bitcoin", "--no-charts")
        self.assertEqual(result.code, 0, result.stderr)
        self.assertIn("backfill ok: 1 coin, 10 rows added", result.stderr)
        self.assertFalse((self.data_dir / CHARTS[0]).exists())

    def test_a_chart_failure_is_reported_in_the_summary_and_keeps_exit_0(self) -> None:
        (self.data_dir / CHARTS[0]).mkdir()
        result = self.run_main("backfill", "--days", "10", "--coins", "bitcoin")
        self.assertEqual(result.code, 0, result.stderr)
        self.assertIn("10 rows added", result.stderr)
        self.assertIn("; charts failed: ", result.stderr)


class TtyStream(io.StringIO):
    def isatty(self) -> bool:
        return True


class BackfillTimeLeft(PipelineTestCase):
    def backfill_100_coins(self, progress_stream: io.StringIO | None = None) -> list[str]:
        """100 coins at the demo plan's 30 calls a minute on a simulated clock; the progress lines logged."""
        clock = SimClock()
        self.fake.set_coins(markets_rows(100))
        ids = [r["id"] for r in self.fake.coins]
        self.fake.market_chart.update({c: make_daily_chart(TODAY - timedelta(days=20), 21, 10.0) for c in ids})
        self.fake.rate_limit_per_minute = 30
        self.fake.clock = clock.monotonic
        settings = build_settings(
            "backfill", {"coins": ",".join(ids), "days": 10}, {**self.env, "COINGECKO_API_KEY": "demo-key"}
        )
        client = CoinGeckoClient(
            settings.api_url, plan="demo", api_key="demo-key", sleep=clock.sleep, monotonic=clock.monotonic
        )
        with self.assertLogs("flows.backfill", logging.INFO) as logs:
            backfill(settings, client, progress_stream=progress_stream)
        return [r.getMessage() for r in logs.records]

    def test_the_estimate_includes_the_pacing_wait(self) -> None:
        lines = self.backfill_100_coins()
        self.assertIn("backfill: 10 of 100 coins, about 3 min left", lines)  # 90 calls 2 s apart to come
        self.assertIn("backfill: 50 of 100 coins, about 2 min left", lines)
        # Calls 2 s apart: each pause too short to mention, none a minute long.
        self.assertEqual([line for line in lines if "for the rate limit" in line], [])
        self.assertFalse([line for line in lines[:-1] if "about 0 s left" in line])

    def test_the_progress_bar_shows_the_time_left(self) -> None:
        stream = TtyStream()
        self.backfill_100_coins(progress_stream=stream)
        text = stream.getvalue()
        # tqdm redraws on its own wall-clock interval, so which estimates show depends on the machine's speed:
        # a minutes-long estimate while coins are left, and none once the last coin is done.
        self.assertRegex(text, r"\d+/100 \[[^]]*about [23] min left\]")
        self.assertIn("100/100", text)

    def test_a_long_pause_is_said(self) -> None:
        clock = SimClock()
        limiter = RateLimiter(6, sleep=clock.sleep, monotonic=clock.monotonic)
        progress = Progress(
            3, stream=io.StringIO(), monotonic=clock.monotonic, pacing=lambda left: limiter.time_for(left)
        )
        limiter.on_wait = progress.waiting
        with self.assertLogs("flows.backfill", logging.INFO) as logs:
            for coin in ("a", "b", "c"):
                limiter.acquire()
                progress.step(coin)
        self.assertIn(
            "backfill: 1 of 3 coins, waiting 10 s for the rate limit, about 20 s left",
            [r.getMessage() for r in logs.records],
        )

    def test_rate_limit_6_paces_one_call_every_10_seconds(self) -> None:
        clock = SimClock()
        limiter = RateLimiter(6, sleep=clock.sleep, monotonic=clock.monotonic)
        starts = []
        for _ in range(12):
            limiter.acquire()
            starts.append(clock.monotonic())
        gaps = [b - a for a, b in zip(starts, starts[1:])]
        self.assertTrue(all(abs(gap - RATE_WINDOW / 6) < 1e-9 for gap in gaps), gaps)  # no burst, no long wait
        self.assertAlmostEqual(limiter.time_for(1), RATE_WINDOW / 6)
        self.assertAlmostEqual(limiter.time_for(3), 3 * RATE_WINDOW / 6)
        self.assertEqual(RateLimiter(6).time_for(1), 0)  # a first call goes at once

    def test_a_plain_progress_without_pacing_counts_by_pace(self) -> None:
        clock = SimClock()
        progress = Progress(4, stream=io.StringIO(), monotonic=clock.monotonic)
        clock.sleep(10)
        progress.step("bitcoin")
        self.assertAlmostEqual(progress.left(), 30)  # 10 s a coin, 3 coins to go, no pacing
