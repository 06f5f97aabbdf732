"""Backfill and gap healing against the local fake CoinGecko: ranges, clamping, pacing, resume, idempotence."""

from __future__ import annotations

import signal
from datetime import timedelta

from flows.backfill import backfill, newest_complete_day
from lambdas.lambda_3_load import load
from tests.fake_coingecko import Fault, make_daily_chart, markets_rows
from tests.support import FIXTURE_IDS, NOW, TODAY, PipelineTestCase, SimClock, charts_for, record, wait_until
from utils.clock import day_of
from utils.coingecko.client import RATE_WINDOW, CoinGeckoClient
from utils.history.index import HistoryIndex
from utils.history.layout import DataLayout
from utils.settings import build_settings


class BackfillCommand(PipelineTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.fake.market_chart.update(charts_for(FIXTURE_IDS))

    def test_one_request_per_coin_daily_rows_at_midnight_partial_point_dropped(self) -> None:
        result = self.run_main("backfill", "--days", "30", "--coins", "bitcoin,ethereum")
        self.assertEqual(result.code, 0, result.stderr)
        calls = [r for r in self.fake.requests if r.path.endswith("/market_chart/range")]
        self.assertEqual(
            [c.path for c in calls], ["/coins/bitcoin/market_chart/range", "/coins/ethereum/market_chart/range"]
        )
        rows = self.rows()
        self.assertEqual(len(rows), 60)
        self.assertTrue(all(r["last_updated"].endswith("T00:00:00.000Z") for r in rows))
        self.assertTrue(all(r["source"] == "market_chart" for r in rows))
        self.assertTrue(all(r["name"] == "" and r["circulating_supply"] == "" for r in rows))
        newest = max(r["last_updated"] for r in rows)
        self.assertLessEqual(newest[:10], TODAY.isoformat())
        # the partial point at request time never becomes a row: today's row, if any, is the 00:00 point
        chart = self.fake.market_chart["bitcoin"]["prices"]
        partial = chart[-1][1]
        self.assertNotIn(repr(partial), {r["current_price"] for r in rows})
        self.assertEqual([r["last_updated"] for r in rows], sorted(r["last_updated"] for r in rows))
        self.assertIn("backfill ok: 2 coins, 60 rows added", result.stderr)

    def test_running_the_same_backfill_twice_changes_nothing(self) -> None:
        self.assertEqual(self.run_main("backfill", "--days", "20").code, 0)
        before = self.csv_bytes()
        result = self.run_main("backfill", "--days", "20")
        self.assertEqual(result.code, 0, result.stderr)
        self.assertEqual(self.csv_bytes(), before)
        self.assertIn("0 rows added, 200 duplicates skipped", result.stderr)

    def test_backfill_merges_with_snapshots_sorted_and_later_runs_append(self) -> None:
        self.fake.set_coins(markets_rows(3, start=NOW - timedelta(hours=2)))
        ids = ",".join(r["id"] for r in self.fake.coins)
        self.fake.market_chart.update(charts_for([r["id"] for r in self.fake.coins]))
        self.assertEqual(self.run_main("--coins", ids).code, 0)
        self.assertEqual(self.run_main("backfill", "--coins", ids, "--days", "10").code, 0)
        rows = self.rows()
        self.assertEqual(len(rows), 3 + 30)
        self.assertEqual([r["last_updated"] for r in rows], sorted(r["last_updated"] for r in rows))
        self.fake.advance(120)
        result = self.run_main("--coins", ids)
        self.assertIn("3 rows appended", result.stderr)
        self.assertEqual(len(self.rows()), 36)

    def test_range_older_than_365_days_is_clamped_before_any_request(self) -> None:
        since = (TODAY - timedelta(days=500)).isoformat()
        result = self.run_main("backfill", "--since", since, "--coins", "bitcoin")
        self.assertEqual(result.code, 0, result.stderr)
        self.assertIn("reaches only the past 365 days", result.stderr)
        self.assertIn("paid plan", result.stderr)
        call = self.fake.requests_to("/coins/bitcoin/market_chart/range")[0]
        self.assertGreater(int(call.query["from"]), (NOW - timedelta(days=365)).timestamp())
        self.assertLessEqual(len(self.rows()), 366)

    def test_error_10012_is_explained(self) -> None:
        self.fake.add_fault(Fault.error_body("history_beyond_365_days_10012"))
        before = self.csv_bytes()
        result = self.run_main("backfill", "--days", "30", "--coins", "bitcoin")
        self.assertEqual(result.code, 2)
        self.assertIn("past 365 days", result.stderr)
        self.assertEqual(self.csv_bytes(), before)

    def test_unknown_coin_is_named_and_others_land(self) -> None:
        result = self.run_main("backfill", "--days", "5", "--coins", "bitcoin,nosuchcoin")
        self.assertEqual(result.code, 3, result.stderr)
        self.assertIn("1 unknown (nosuchcoin)", result.stderr)
        self.assertEqual(len(self.rows()), 5)

    def test_range_beyond_reach_is_a_usage_error(self) -> None:
        result = self.run_main("backfill", "--since", "2020-01-01", "--until", "2020-02-01")
        self.assertEqual(result.code, 2)
        self.assertIn("nothing to backfill", result.stderr)


class Pacing(PipelineTestCase):
    def test_100_coins_at_30_per_minute_trigger_no_429(self) -> None:
        clock = SimClock()
        self.fake.set_coins(markets_rows(100))
        ids = [r["id"] for r in self.fake.coins]
        self.fake.market_chart.update(charts_for(ids, days=370))
        self.fake.rate_limit_per_minute = 30
        self.fake.clock = clock.monotonic
        settings = build_settings(
            "backfill", {"coins": ",".join(ids), "days": 365}, {**self.env, "COINGECKO_API_KEY": "demo-key"}
        )
        self.assertEqual(settings.api_plan, "demo")
        client = CoinGeckoClient(
            settings.api_url, plan="demo", api_key="demo-key", sleep=clock.sleep, monotonic=clock.monotonic
        )
        result = backfill(settings, client)
        statuses = [r for r in self.fake.requests if r.path.endswith("/range")]
        self.assertEqual(len(statuses), 100)  # exactly one request per coin, and none refused:
        self.assertEqual(result.requests, 100)
        # The plan reaches 365 days back; until today's 00:00 point settles (about 00:40 UTC) the newest complete
        # day is yesterday, one fewer.
        days = 365 if newest_complete_day(NOW) == TODAY else 364
        self.assertEqual(result.merge.added, 100 * days)
        minutes = clock.slept / 60
        lower_bound = (100 - 1) * RATE_WINDOW / 30 / 60  # one call every 60.5 / 30 s, never a burst
        self.assertGreaterEqual(minutes, lower_bound - 1e-9)
        self.assertLess(minutes, lower_bound + 0.2)
        self.assertEqual(self.fake.errors, [])
        self.assertEqual(self.rows().__len__(), 100 * days)

    def test_429_is_still_honoured(self) -> None:
        self.fake.market_chart.update(charts_for(["bitcoin"]))
        self.fake.add_fault(Fault.rate_limited("9"), path="/coins/bitcoin/market_chart/range")
        result = self.run_main("backfill", "--days", "3", "--coins", "bitcoin")
        self.assertEqual(result.code, 0, result.stderr)
        self.assertTrue(any(9 <= s <= 10 for s in self.sleeps), self.sleeps)


class Resume(PipelineTestCase):
    def test_a_killed_backfill_resumes_with_the_coins_not_done(self) -> None:
        self.fake.set_coins(markets_rows(12))
        ids = [r["id"] for r in self.fake.coins]
        self.fake.market_chart.update(charts_for(ids, days=40))
        self.fake.add_fault(Fault.stall(60), path=f"/coins/{ids[6]}/market_chart/range")
        proc = self.start("backfill", "--days", "30", "--rate-limit", "1000", "--coins", ",".join(ids))
        wait_until(lambda: self.fake.requests_to(f"/coins/{ids[6]}/market_chart/range"), "the stalled coin's request")
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
        self.assertFalse(self.csv_path.exists() and len(self.rows()))  # nothing merged yet
        self.fake.clear_faults()
        result = self.run_subprocess("backfill", "--days", "30", "--rate-limit", "1000", "--coins", ",".join(ids))
        self.assertEqual(result.code, 0, result.stderr)
        self.assertIn("resuming, 6 of 12 coins already fetched", result.stderr)
        per_coin = {c: len(self.fake.requests_to(f"/coins/{c}/market_chart/range")) for c in ids}
        self.assertEqual(per_coin, {c: 2 if c == ids[6] else 1 for c in ids})
        self.assertEqual(len(self.rows()), 12 * 30)


class GapHealing(PipelineTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.env["PIPELINE_HEAL"] = "1"
        self.fake.set_coins(markets_rows(3, start=NOW - timedelta(minutes=5)))
        self.ids = [r["id"] for r in self.fake.coins]
        self.fake.market_chart.update(charts_for(self.ids, days=30))
        # a history with one observation a day until four days ago: a 3-day outage since
        days = [TODAY - timedelta(days=back) for back in range(10, 3, -1)]
        load([record(coin, f"{day}T12:00:00.000Z", name=coin) for day in days for coin in self.ids], self.csv_path)

    def test_a_3_day_outage_is_healed_in_the_next_run(self) -> None:
        result = self.run_main("--coins", ",".join(self.ids))
        self.assertEqual(result.code, 0, result.stderr)
        self.assertIn("missing days healed", result.stderr)
        healed = [r for r in self.rows() if r["source"] == "market_chart"]
        # Yesterday's 00:00 point is final at any hour of today (it is today's that settles by about 00:40 UTC).
        expected_days = {(TODAY - timedelta(days=b)).isoformat() for b in (3, 2, 1)}
        self.assertEqual({r["last_updated"][:10] for r in healed}, expected_days)
        self.assertEqual(len(healed), 3 * len(expected_days))
        calls = [r for r in self.fake.requests if r.path.endswith("/range")]
        self.assertEqual(len(calls), 3)
        # healing is idempotent and remembers nothing is left
        self.fake.advance(120)
        again = self.run_main("--coins", ",".join(self.ids))
        self.assertNotIn("healed", again.stderr)
        self.assertEqual(len([r for r in self.fake.requests if r.path.endswith("/range")]), 3)

    def test_no_heal_flag(self) -> None:
        result = self.run_main("--coins", ",".join(self.ids), "--no-heal")
        self.assertEqual(result.code, 0)
        self.assertEqual([r for r in self.fake.requests if r.path.endswith("/range")], [])

    def test_an_empty_answer_is_a_failed_attempt_and_asked_again(self) -> None:
        self.fake.market_chart.clear()
        self.fake.market_chart.update({c: make_daily_chart(TODAY - timedelta(days=40), 20, 5.0) for c in self.ids})
        first_run = self.run_main("--coins", ",".join(self.ids))
        self.assertEqual(first_run.code, 0, first_run.stderr)
        self.assertIn("malformed or empty; they are asked for again next run", first_run.stderr)
        first = len([r for r in self.fake.requests if r.path.endswith("/range")])
        self.assertEqual(first, 3)
        self.fake.advance(120)
        self.run_main("--coins", ",".join(self.ids))
        self.assertEqual(len([r for r in self.fake.requests if r.path.endswith("/range")]), 2 * first)

    def test_days_a_well_formed_answer_lacks_are_not_asked_again_for_30_days(self) -> None:
        self.fake.market_chart.clear()
        # CoinGecko has the first day of the outage only.
        self.fake.market_chart.update({c: make_daily_chart(TODAY - timedelta(days=3), 1, 5.0) for c in self.ids})
        self.run_main("--coins", ",".join(self.ids))
        first = len([r for r in self.fake.requests if r.path.endswith("/range")])
        self.assertEqual(first, 3)
        self.fake.advance(120)
        again = self.run_main("--coins", ",".join(self.ids))
        self.assertNotIn("healed", again.stderr)
        self.assertEqual(len([r for r in self.fake.requests if r.path.endswith("/range")]), first)
        # The index remembers when it asked: after 30 days the days are due again.
        with HistoryIndex(DataLayout(self.data_dir).index) as index:
            now_ms = int(NOW.timestamp() * 1000)
            self.assertEqual(index.gaps(self.ids[0], "eur", TODAY, now_ms), [])
            later = index.gaps(self.ids[0], "eur", TODAY, now_ms + 31 * 86_400_000)
        self.assertEqual(
            [(day_of(a), day_of(b)) for a, b in later], [(TODAY - timedelta(days=2), TODAY - timedelta(days=1))]
        )
