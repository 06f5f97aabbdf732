"""Issue 13 against the local fake CoinGecko: several currencies per run, the top N, renamed and stale coins."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from flows.run import run_pipeline
from flows.run_once import RunResult
from flows.status import print_status
from tests.fake_coingecko import Fault, make_daily_chart, markets_rows
from tests.support import FIXTURE_IDS, PipelineTestCase
from utils.coingecko.client import CoinGeckoClient
from utils.settings import build_settings

DAY1 = date(2026, 3, 1)


def noon(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, 12, 0, tzinfo=timezone.utc)


def ranked_rows(day: date, order: list[int], n: int = 6, minutes: int = 0) -> list[dict[str, Any]]:
    """n coins (coin-0000 ...) updated at noon of `day`, ranked by market cap in `order` (indices, best first)."""
    rows = markets_rows(n, start=noon(day) + timedelta(minutes=minutes))
    for rank, index in enumerate(order + [i for i in range(n) if i not in order], start=1):
        rows[index]["market_cap"] = 10**12 // rank
        rows[index]["market_cap_rank"] = rank
    return rows


class SeveralCurrencies(PipelineTestCase):
    def test_two_currencies_in_one_run(self) -> None:
        result = self.run_main("--vs-currency", "eur,usd")
        self.assertEqual(result.code, 0, result.stderr)
        calls = self.fake.requests_to("/coins/markets")
        self.assertEqual([c.query["vs_currency"] for c in calls], ["eur", "usd"])
        rows = self.rows()
        self.assertEqual(len(rows), 20)
        self.assertEqual({r["vs_currency"] for r in rows}, {"eur", "usd"})
        self.assertIn("run ok: 10 coins, 20 rows appended", result.stderr)

    def test_ceil_coins_over_250_requests_per_currency(self) -> None:
        self.fake.set_coins(markets_rows(600))
        ids = ",".join(r["id"] for r in self.fake.coins)
        result = self.run_main("--coins", ids, "--vs-currency", "eur,usd,btc")
        self.assertEqual(result.code, 0, result.stderr)
        calls = self.fake.requests_to("/coins/markets")
        self.assertEqual(len(calls), 3 * 3)
        self.assertEqual(len(self.fake.requests), 9)  # nothing else: no healing on a first run, no search
        self.assertEqual(len(self.rows()), 1800)

    def test_one_failing_currency_does_not_stop_the_others(self) -> None:
        result = self.run_main("--vs-currency", "eur,xyz,usd")
        self.assertEqual(result.code, 3, result.stderr)
        self.assertEqual({r["vs_currency"] for r in self.rows()}, {"eur", "usd"})
        summary = result.stderr.strip().splitlines()[-1]
        self.assertTrue(summary.startswith("run partial: 10 coins, 20 rows appended"), summary)
        self.assertIn("xyz failed: CoinGecko /coins/markets answered HTTP 400: invalid vs_currency", summary)
        self.assertEqual(len(self.fake.requests_to("/coins/markets")), 3)  # a 400 is not retried
        status = json.loads((self.data_dir / ".state" / "status.json").read_text())
        self.assertEqual(status["last_run"]["result"], "partial")

    def test_every_currency_failing_appends_nothing(self) -> None:
        result = self.run_main("--vs-currency", "xyz,abc")
        self.assertEqual(result.code, 1, result.stderr)
        self.assertIn("run failed: every currency failed: xyz: ", result.stderr)
        self.assertFalse(self.csv_path.exists() and self.rows())

    def test_environment_and_toml_list(self) -> None:
        result = self.run_main(env={**self.env, "PIPELINE_VS_CURRENCY": "usd, EUR"})
        self.assertEqual(result.code, 0, result.stderr)
        self.assertEqual([c.query["vs_currency"] for c in self.fake.requests_to("/coins/markets")], ["usd", "eur"])
        config = Path(self.tmp.name) / "pipeline.toml"
        config.write_text('vs_currency = ["gbp", "jpy"]\n')
        self.assertEqual(self.run_main("--config", str(config)).code, 0)
        self.assertEqual({r["vs_currency"] for r in self.rows()}, {"usd", "eur", "gbp", "jpy"})

    def test_a_bad_currency_code_is_a_usage_error(self) -> None:
        result = self.run_main("--vs-currency", "eur,u$d")
        self.assertEqual(result.code, 2)
        self.assertTrue(
            result.stderr.startswith("config error: vs-currency: 'u$d' is not a currency code"), result.stderr
        )

    def test_check_names_a_currency_coingecko_refuses(self) -> None:
        result = self.run_main("check", "--vs-currency", "eur,xyz")
        self.assertEqual(result.code, 1, result.stdout)
        self.assertIn(
            "FAIL  currency 'xyz': CoinGecko /coins/markets answered HTTP 400: invalid vs_currency", result.stdout
        )

    def test_backfill_per_currency_and_a_failing_one(self) -> None:
        today = datetime.now(timezone.utc).date()
        self.fake.market_chart["bitcoin"] = make_daily_chart(today - timedelta(days=30), 31, 40000.0)
        result = self.run_main("backfill", "--coins", "bitcoin", "--days", "5", "--vs-currency", "eur,xyz,usd")
        self.assertEqual(result.code, 3, result.stderr)
        self.assertIn("backfill partial: 1 coin in eur, xyz, usd, 10 rows added", result.stderr)
        self.assertIn("xyz failed: ", result.stderr)
        self.assertEqual(sorted({r["vs_currency"] for r in self.rows()}), ["eur", "usd"])
        self.assertEqual(len(self.fake.requests_to("/coins/bitcoin/market_chart/range")), 3)


class TopN(PipelineTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.fake.set_coins(markets_rows(600))

    def test_top_300_is_two_pages_without_ids(self) -> None:
        result = self.run_main("--top", "300", env={k: v for k, v in self.env.items() if k != "PIPELINE_COINS"})
        self.assertEqual(result.code, 0, result.stderr)
        calls = self.fake.requests_to("/coins/markets")
        self.assertEqual(
            [(c.query["page"], c.query["per_page"], c.query["order"]) for c in calls],
            [("1", "250", "market_cap_desc"), ("2", "250", "market_cap_desc")],
        )
        self.assertTrue(all("ids" not in c.query for c in calls))
        rows = self.rows()
        self.assertEqual([r["coin_id"] for r in rows], [f"coin-{i:04d}" for i in range(300)])
        self.assertIn("run ok: 300 coins, 300 rows appended", result.stderr)

    def test_top_and_coins_track_the_union(self) -> None:
        # coin-0450 comes with page 2 anyway; coin-0550 costs one request by id
        result = self.run_main("--top", "300", "--coins", "bitcoin,coin-0450,coin-0550")
        self.assertEqual(result.code, 3, result.stderr)  # bitcoin is not listed by this fake: missing
        calls = self.fake.requests_to("/coins/markets")
        self.assertEqual(len(calls), 3)
        self.assertEqual(calls[2].query["ids"], "bitcoin,coin-0550")
        ids = {r["coin_id"] for r in self.rows()}
        self.assertEqual(len(ids), 302)
        self.assertIn("coin-0450", ids)
        self.assertIn("coin-0550", ids)

    def test_request_count_for_top_1000_in_three_currencies(self) -> None:
        self.fake.set_coins(markets_rows(1100))
        result = self.run_main(
            "--top",
            "1000",
            "--vs-currency",
            "eur,usd,btc",
            env={k: v for k, v in self.env.items() if k != "PIPELINE_COINS"},
        )
        self.assertEqual(result.code, 0, result.stderr)
        self.assertEqual(len(self.fake.requests), 3 * 4)
        self.assertEqual(len(self.rows()), 3000)

    def test_backfill_takes_the_top_n_the_last_run_recorded(self) -> None:
        env = {k: v for k, v in self.env.items() if k != "PIPELINE_COINS"}
        today = datetime.now(timezone.utc).date()
        for i in range(4):
            self.fake.market_chart[f"coin-{i:04d}"] = make_daily_chart(today - timedelta(days=10), 11, 5.0)
        self.assertEqual(self.run_main("--top", "3", env=env).code, 0)
        result = self.run_main("backfill", "--top", "3", "--days", "2", env=env)
        self.assertEqual(result.code, 0, result.stderr)
        self.assertEqual(
            sorted(r.path for r in self.fake.requests if r.path.endswith("/range")),
            [f"/coins/coin-{i:04d}/market_chart/range" for i in range(3)],
        )

    def test_top_out_of_range_is_a_usage_error(self) -> None:
        for value in ("0", "20001", "ten"):
            result = self.run_main("--top", value)
            self.assertEqual(result.code, 2, value)
            self.assertTrue(result.stderr.startswith("config error: top: "), result.stderr)


class LeavingAndEntering(PipelineTestCase):
    """Day by day with a controlled clock: coin-0002 leaves the top 3 on day 2 and comes back on day 4."""

    days = [DAY1 + timedelta(days=i) for i in range(4)]
    orders = [[0, 1, 2], [0, 1, 3], [0, 1, 3], [0, 2, 1]]

    def setUp(self) -> None:
        super().setUp()
        for i in range(6):
            self.fake.market_chart[f"coin-{i:04d}"] = make_daily_chart(DAY1 - timedelta(days=10), 20, 10.0 + i)
        self.env = {k: v for k, v in self.env.items() if k not in ("PIPELINE_COINS", "PIPELINE_HEAL")}
        self.env["PIPELINE_SEED_DAYS"] = "0"  # healing alone: the first day's run seeds nothing

    def run_day(
        self, day: date, order: list[int], *, top_backfill: bool = False, coins: str | None = None
    ) -> RunResult:
        self.fake.set_coins(ranked_rows(day, order))
        flags = {"top": "3", "top_backfill": top_backfill or None, "coins": coins}
        settings = build_settings("run", flags, self.env)
        with CoinGeckoClient(settings.api_url, sleep=self.sleeps.append) as client:
            return run_pipeline(settings, client, clock=lambda: noon(day) + timedelta(hours=1))

    def days_of(self, coin_id: str) -> list[str]:
        return sorted({r["last_updated"][:10] for r in self.rows() if r["coin_id"] == coin_id})

    def test_a_coin_that_leaves_keeps_its_history_and_is_not_healed_while_out(self) -> None:
        for day, order in zip(self.days, self.orders):
            result = self.run_day(day, order)
            self.assertEqual(result.exit_code, 0, result.summary())
        self.assertEqual(self.days_of("coin-0002"), [str(self.days[0]), str(self.days[3])])
        self.assertEqual(self.fake.requests_to("/coins/coin-0002/market_chart/range"), [])
        # coin-0003 entered on day 2 and is not healed back before it (no --top-backfill)
        self.assertEqual(self.days_of("coin-0003"), [str(d) for d in self.days[1:3]])
        self.assertEqual(self.fake.requests_to("/coins/coin-0003/market_chart/range"), [])
        members = json.loads((self.data_dir / ".state" / "top-members.json").read_text())["eur"]
        self.assertEqual(
            members["coins"]["coin-0002"], [[str(self.days[0]), str(self.days[1])], [str(self.days[3]), None]]
        )
        self.assertEqual(members["coins"]["coin-0003"], [[str(self.days[1]), str(self.days[3])]])
        lines: list[str] = []
        print_status(build_settings("status", {}, self.env), out=lines.append, now=noon(self.days[3]))
        tracked = [line for line in lines if line.startswith("tracked:")]
        self.assertEqual(
            tracked, ["tracked:      3 coins in eur: the top 3 (3 coins); last 30 days: 2 entered, 2 left the top"]
        )

    def test_a_coin_in_coins_is_fetched_after_it_leaves(self) -> None:
        for day, order in zip(self.days[:2], self.orders[:2]):
            self.run_day(day, order, coins="coin-0002")
        self.assertEqual(self.days_of("coin-0002"), [str(d) for d in self.days[:2]])

    def test_top_backfill_heals_an_entering_coin_back(self) -> None:
        per_day = []
        for day, order in zip(self.days, self.orders):
            before = len(self.fake.requests)
            self.run_day(day, order, top_backfill=True)
            per_day.append([r.path for r in self.fake.requests[before:]])
        # exactly one page a day, plus one market_chart request per coin with days to heal
        self.assertEqual(
            per_day,
            [
                ["/coins/markets"],
                ["/coins/markets", "/coins/coin-0003/market_chart/range"],
                ["/coins/markets"],
                ["/coins/markets", "/coins/coin-0002/market_chart/range"],
            ],
        )
        # coin-0003 entered on day 2: healed back to day 1, the history's first day
        self.assertEqual(self.days_of("coin-0003"), [str(d) for d in self.days[:3]])
        # coin-0002 came back on day 4: its days outside (2 and 3) are healed too
        self.assertEqual(self.days_of("coin-0002"), [str(d) for d in self.days])


class TopOnADay(PipelineTestCase):
    def test_the_last_observation_of_the_day_wins(self) -> None:
        env = {k: v for k, v in self.env.items() if k != "PIPELINE_COINS"}
        self.fake.set_coins(ranked_rows(DAY1, [0, 1, 2, 3]))
        self.assertEqual(self.run_main("--top", "4", env=env).code, 0)
        self.fake.set_coins(ranked_rows(DAY1, [3, 2, 1, 0], minutes=180))  # the same day, later, reversed
        self.assertEqual(self.run_main("--top", "4", env=env).code, 0)
        self.fake.set_coins(ranked_rows(DAY1 + timedelta(days=1), [0, 1, 2, 3]))
        self.assertEqual(self.run_main("--top", "4", env=env).code, 0)
        requests = len(self.fake.requests)
        result = self.run_main("top", "--date", str(DAY1), "--top", "3", env=env)
        self.assertEqual(result.code, 0, result.stderr)
        self.assertEqual(len(self.fake.requests), requests)  # reads the history only
        lines = result.stdout.splitlines()
        self.assertEqual(
            lines[0],
            f"top 3 by market-cap rank in eur on {DAY1} (UTC), each coin's last observation that day "
            "(unranked coins last, by market cap):",
        )
        body = [line.split() for line in lines[2:]]
        self.assertEqual(
            [(b[0], b[1], b[2]) for b in body],
            [("1", "coin-0003", "C0003"), ("2", "coin-0002", "C0002"), ("3", "coin-0001", "C0001")],
        )
        self.assertEqual(body[0][3], f"{10**12:,}")

    def test_a_day_without_observations_is_exit_1(self) -> None:
        self.assertEqual(self.run_main().code, 0)
        result = self.run_main("top", "--date", "2020-01-01")
        self.assertEqual(result.code, 1)
        self.assertTrue(result.stdout.startswith("no observations in eur on 2020-01-01"), result.stdout)

    def test_a_bad_date_is_a_usage_error(self) -> None:
        result = self.run_main("top", "--date", "yesterday")
        self.assertEqual(result.code, 2)
        self.assertTrue(result.stderr.startswith("config error: date: 'yesterday' is not a date"), result.stderr)


class RenamedAndStale(PipelineTestCase):
    def test_a_renamed_id_gets_a_suggestion_once_a_day(self) -> None:
        self.assertEqual(self.run_main().code, 0)
        self.fake.rename("matic-network", "polygon-ecosystem-token", "POL (ex-MATIC)", "pol")
        self.fake.advance(60)
        result = self.run_main()
        self.assertEqual(result.code, 3, result.stderr)
        coins = ",".join("polygon-ecosystem-token" if c == "matic-network" else c for c in FIXTURE_IDS)
        note = (
            "matic-network returned no data since 2023-01-08; CoinGecko now lists POL (ex-MATIC) (POL) as "
            f"polygon-ecosystem-token: use `--coins {coins}`"
        )
        self.assertIn(f"warning: {note}\n", result.stderr)
        self.assertEqual(result.stderr.count("matic-network returned no data"), 1)
        self.assertEqual(len(self.fake.requests_to("/search")), 1)
        self.assertEqual(self.fake.requests_to("/search")[0].query["query"], "Polygon")
        self.fake.advance(60)
        again = self.run_main()
        self.assertIn(note, again.stderr)
        self.assertEqual(len(self.fake.requests_to("/search")), 1)  # remembered for the day
        check = self.run_main("check")
        self.assertEqual(check.code, 1)
        self.assertIn(f"FAIL  coin {note}", check.stdout)
        self.assertEqual(len(self.fake.requests_to("/search")), 1)
        status = self.run_main("status")
        self.assertIn(f"warning: {note}", status.stdout)

    def test_a_delisted_id_is_named_without_a_successor(self) -> None:
        self.assertEqual(self.run_main().code, 0)
        self.fake.set_coins([r for r in self.fake.coins if r["id"] != "shiba-inu"])
        result = self.run_main()
        self.assertEqual(result.code, 3)
        self.assertIn(
            "warning: shiba-inu returned no data since 2023-01-08; /search finds no other listing of "
            "Shiba Inu (SHIB): it may be delisted; drop it from --coins\n",
            result.stderr,
        )

    def test_a_failed_search_is_asked_again_next_run(self) -> None:
        self.assertEqual(self.run_main().code, 0)
        self.fake.set_coins([r for r in self.fake.coins if r["id"] != "shiba-inu"])
        self.fake.add_fault(Fault.status(404, {"error": "Not found"}), path="/search")
        result = self.run_main()
        self.assertIn("shiba-inu returned no data since 2023-01-08; /search failed (", result.stderr)
        self.run_main()
        self.assertEqual(len(self.fake.requests_to("/search")), 2)
        self.run_main()
        self.assertEqual(len(self.fake.requests_to("/search")), 2)

    def test_an_id_never_seen_keeps_the_typo_hint_searched_once_a_day(self) -> None:
        for _ in range(2):
            result = self.run_main("--coins", "bitcoin,etherium")
            self.assertEqual(result.code, 3)
            self.assertIn("CoinGecko returned no data for etherium: did you mean ethereum", result.stderr)
        check = self.run_main("check", "--coins", "bitcoin,etherium")
        self.assertIn("FAIL  coin 'etherium' is not known to CoinGecko; did you mean ethereum", check.stdout)
        self.assertEqual(len(self.fake.requests_to("/search")), 1)

    def test_a_stale_last_updated_is_stored_and_flagged(self) -> None:
        rows = [dict(r) for r in self.fake.coins]
        for row in rows:
            if row["id"] == "algorand":
                row["last_updated"] = "2023-01-05T10:00:00.000Z"  # three days behind the rest
        self.fake.set_coins(rows)
        result = self.run_main()
        self.assertEqual(result.code, 0, result.stderr)
        self.assertIn(
            "warning: stale: algorand (eur) last updated 2023-01-05T10:00Z, 79 h before the rest of the answer; "
            "stored, but CoinGecko may have stopped tracking it\n",
            result.stderr,
        )
        self.assertIn("1 stale", result.stderr.splitlines()[-1])
        self.assertIn("algorand", {r["coin_id"] for r in self.rows()})
        status = self.run_main("status")
        self.assertIn("warning: algorand (eur) last updated 2023-01-05T10:00Z", status.stdout)
        check = self.run_main("check")
        self.assertEqual(check.code, 0, check.stdout)
        self.assertIn("warn  stale: algorand (eur) last updated 2023-01-05T10:00Z", check.stdout)

    def test_fresh_rows_are_not_stale_even_when_old(self) -> None:
        # The fixture is from 2023: measured against the fetch's own newest row, nothing is stale.
        result = self.run_main()
        self.assertNotIn("stale", result.stderr)

    def test_an_empty_answer_is_an_outage_not_every_coin_renamed(self) -> None:
        self.assertEqual(self.run_main().code, 0)
        served = self.fake.coins
        self.fake.set_coins([])  # CoinGecko answers [] for every id it knew yesterday
        result = self.run_main()
        self.assertEqual(result.code, 1, result.stderr)
        self.assertIn("answered no rows at all for 10 coins, 10 of which it returned before", result.stderr)
        self.assertEqual([r for r in self.fake.requests if r.path.endswith("/search")], [])
        self.fake.set_coins(served)
