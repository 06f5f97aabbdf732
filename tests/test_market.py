"""Issue 18 against the fake CoinGecko serving a universe of 1,200 coins: `--top all`, coins moving between pages,
delisted coins kept in the history ("gone since"), and bad `--top` values."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone

from flows.run import run_pipeline
from flows.run_once import RunResult
from flows.status import print_status
from flows.top import print_top
from lambdas.lambda_1_extract import extract_top
from tests.fake_coingecko import markets_rows
from tests.support import PipelineTestCase
from utils.coingecko.client import CoinGeckoClient
from utils.coingecko.plans import UNIVERSE_CAP
from utils.settings import build_settings

UNIVERSE = 1200
DAY1 = date(2026, 3, 1)


def noon(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, 12, 0, tzinfo=timezone.utc)


class TopAll(PipelineTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.env = {k: v for k, v in self.env.items() if k != "PIPELINE_COINS"}
        self.ids = self.fake.universe(UNIVERSE)

    def serve_day(self, day: date) -> None:
        """The same 1,200 coins, updated at noon of `day`, minus any delisted since."""
        present = set(self.fake.ranked_ids())
        self.fake.set_coins([r for r in markets_rows(UNIVERSE, start=noon(day)) if r["id"] in present])

    def run_day(self, day: date, top: str = "all") -> RunResult:
        settings = build_settings("run", {"top": top}, self.env)
        with CoinGeckoClient(settings.api_url, sleep=self.sleeps.append) as client:
            return run_pipeline(settings, client, clock=lambda: noon(day) + timedelta(hours=1))

    def coin_ids_of(self, day: date) -> list[str]:
        return [r["coin_id"] for r in self.rows() if r["last_updated"].startswith(str(day))]

    def test_top_all_stores_every_coin_in_five_requests(self) -> None:
        result = self.run_main("--top", "all")
        self.assertEqual(result.code, 0, result.stderr)
        self.assertEqual(self.fake.market_pages(), [1, 2, 3, 4, 5])
        self.assertEqual(len(self.fake.requests), 5)
        ids = [r["coin_id"] for r in self.rows()]
        self.assertEqual(len(ids), UNIVERSE)
        self.assertEqual(sorted(ids), sorted(self.ids))
        self.assertIn(
            f"run ok: {UNIVERSE:,} coins, {UNIVERSE:,} rows appended".replace(",", ""), result.stderr.replace(",", "")
        )
        members = json.loads((self.data_dir / ".state" / "top-members.json").read_text())["eur"]
        self.assertEqual(members["size"], UNIVERSE_CAP)
        self.assertEqual(len(members["coins"]), UNIVERSE)

    def test_a_coin_that_moves_between_pages_is_stored_once(self) -> None:
        self.serve_day(DAY1)
        self.assertEqual(self.run_day(DAY1).exit_code, 0)
        day2 = DAY1 + timedelta(days=1)
        self.serve_day(day2)
        shifted = self.fake.ranked_ids()[249]  # last of page 1: pushed onto page 2 by the climber, seen twice

        def climb() -> None:  # coin-1100 climbs from page 5 to page 1 after page 1 was served; prices tick on
            self.fake.move("coin-1100", 10)
            self.fake.advance(60)

        self.fake.after_page(1, climb)
        result = self.run_day(day2)
        self.assertEqual(result.exit_code, 0, result.summary())
        day2_ids = self.coin_ids_of(day2)
        self.assertEqual(len(day2_ids), UNIVERSE)
        self.assertEqual(len(set(day2_ids)), UNIVERSE)  # every coin once, the shifted one too
        self.assertEqual(day2_ids.count(shifted), 1)
        self.assertEqual(day2_ids.count("coin-1100"), 1)  # never on a page: fetched by id in the same run
        by_id = [r for r in self.fake.requests_to("/coins/markets") if "ids" in r.query]
        self.assertEqual([r.query["ids"] for r in by_id], ["coin-1100"])

    def test_a_delisted_coin_is_gone_since_its_last_day_and_keeps_its_history(self) -> None:
        days = [DAY1 + timedelta(days=i) for i in range(12)]
        self.serve_day(days[0])
        self.run_day(days[0])
        self.fake.remove("coin-0500")
        for day in days[1:10]:
            self.serve_day(day)
            result = self.run_day(day)
            self.assertEqual(result.exit_code, 0, result.summary())  # a delisting is news, not a failure
        self.assertEqual(self.coin_ids_of(days[0]).count("coin-0500"), 1)
        self.assertNotIn("coin-0500", self.coin_ids_of(days[1]))
        members = json.loads((self.data_dir / ".state" / "top-members.json").read_text())["eur"]
        self.assertEqual(members["gone"], {"coin-0500": str(days[0])})
        # asked for by id once, the day it went missing; later runs know it is gone
        asked = [r.query.get("ids") for r in self.fake.requests_to("/coins/markets") if "ids" in r.query]
        self.assertEqual(asked, ["coin-0500"])

        lines: list[str] = []
        print_status(build_settings("status", {}, self.env), out=lines.append, now=noon(days[9]))
        self.assertIn(
            f"gone:         1 coin in eur no longer listed by CoinGecko for more than 7 days "
            f"(history kept): coin-0500 gone since {days[0]}",
            lines,
        )
        lines = []
        print_status(build_settings("status", {}, self.env), out=lines.append, now=noon(days[5]))
        self.assertFalse([line for line in lines if line.startswith("gone:")], lines)

        lines = []
        code = print_top(build_settings("top", {"date": str(days[0]), "top": "all"}, self.env), out=lines.append)
        self.assertEqual(code, 0)
        self.assertTrue(any(" coin-0500 " in line for line in lines))
        self.assertEqual(len(lines), 2 + UNIVERSE)

        # it comes back: its series continues under the same id, and it is gone no more
        self.fake.set_coins(markets_rows(UNIVERSE, start=noon(days[10])))
        self.assertEqual(self.run_day(days[10]).exit_code, 0)
        self.assertEqual(self.coin_ids_of(days[10]).count("coin-0500"), 1)
        members = json.loads((self.data_dir / ".state" / "top-members.json").read_text())["eur"]
        self.assertEqual(members["gone"], {})
        self.assertEqual(members["coins"]["coin-0500"], [[str(days[0]), str(days[1])], [str(days[10]), None]])

    def test_bad_top_values_are_one_line_and_exit_2(self) -> None:
        for value in ("0", "-5", "20001", "allx"):
            result = self.run_main("--top", value)
            self.assertEqual(result.code, 2, (value, result.stderr))
            self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
            self.assertIn("top: ", result.stderr)
        self.assertEqual(self.fake.requests, [])
        self.assertFalse(self.csv_path.exists())

    def test_endless_full_pages_stop_at_n_and_at_the_universe_cap(self) -> None:
        self.fake.endless_pages = True
        result = self.run_main("--top", "600")
        self.assertEqual(result.code, 0, result.stderr)
        self.assertEqual(self.fake.market_pages(), [1, 2, 3])
        self.assertEqual(len(self.rows()), 600)
        self.fake.requests.clear()
        with CoinGeckoClient(self.fake.base_url, sleep=lambda s: None, rate_limit=10_000) as client:
            answer = extract_top(UNIVERSE_CAP, (), "eur", client)
        self.assertEqual(len(self.fake.requests), UNIVERSE_CAP // 250)
        self.assertEqual(len(answer.top_ids), UNIVERSE_CAP)


class DataPackageSaysSo(PipelineTestCase):
    def test_the_data_package_documents_survivorship(self) -> None:
        self.assertEqual(self.run_main().code, 0)
        doc = json.loads((self.data_dir / "datapackage.json").read_text())
        text = doc["resources"][0]["description"]
        self.assertIn("Survivorship-free", text)
        self.assertIn("keeps its history", text)


KEY = "CG-market-test-KEY-1234"


class CreditLedgerCounts(PipelineTestCase):
    """Every request counted per UTC month in .state/api-credits.json; the budget is checked before any request."""

    def setUp(self) -> None:
        super().setUp()
        self.ids = self.fake.universe(UNIVERSE)
        self.env = {k: v for k, v in self.env.items() if k != "PIPELINE_COINS"}
        self.env.update(COINGECKO_API_KEY=KEY, PIPELINE_RATE_LIMIT="10000")
        self.ledger_path = self.data_dir / ".state" / "api-credits.json"

    def month_lines(self) -> dict:
        data = json.loads(self.ledger_path.read_text())
        month = datetime.now(timezone.utc).strftime("%Y-%m")
        return data["months"][month]

    def test_the_ledger_matches_the_servers_request_log_with_retries_and_429s(self) -> None:
        from tests.fake_coingecko import Fault

        self.fake.add_fault(Fault.rate_limited("0"), times=2, path="/coins/markets")
        self.fake.add_fault(Fault.server_error(502), path="/coins/markets")
        self.fake.add_fault(Fault.rate_limit_in_200(), path="/coins/markets")
        self.fake.add_fault(Fault.reset(), path="/coins/markets")
        result = self.run_main("--top", "all", "--vs-currency", "eur,usd")
        self.assertEqual(result.code, 0, result.stderr)
        self.assertEqual(len({r["coin_id"] for r in self.rows()}), UNIVERSE)
        lines = self.month_lines()
        served = self.fake.requests_to("/coins/markets")
        self.assertEqual(len(served), 2 * 5 + 5)  # five pages per currency, five faults retried
        self.assertEqual(len(self.fake.requests), len(served))
        for currency in ("eur", "usd"):
            sent = [r for r in served if r.query["vs_currency"] == currency]
            self.assertEqual(lines[f"/coins/markets {currency}"]["attempts"], len(sent))
        self.assertEqual(sum(line["attempts"] for line in lines.values()), len(self.fake.requests))
        self.assertEqual(sum(line["429"] for line in lines.values()), 3)  # two 429s and one inside an HTTP 200

        status = self.run_main("status")
        self.assertIn(
            f"credits:      API calls this month: {len(served)} of 10,000 (demo, 3 answered 429)", status.stdout
        )
        before = len(self.fake.requests)
        check = self.run_main("check", "--coins", "coin-0001", "--monthly-credits", "50000")
        self.assertIn(
            f"ok    credits: API calls this month: {before} of 50,000 (demo, 3 answered 429); "
            "budget 50,000 a month (--monthly-credits)",
            check.stdout,
        )
        self.assertEqual(sum(line["attempts"] for line in self.month_lines().values()), len(self.fake.requests))

    def test_a_backfill_over_budget_exits_2_with_zero_requests(self) -> None:
        result = self.run_main("backfill", "--coins", ",".join(self.ids[:40]), "--monthly-credits", "25")
        self.assertEqual(result.code, 2, result.stderr)
        self.assertEqual(self.fake.requests, [])
        lines = [line for line in result.stderr.strip().splitlines() if "failed" in line]
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertIn(
            "backfill of 40 coins needs about 40 API calls, but only 25 of this month's 25 (demo) are "
            "left (0 used; they start again on ",
            lines[0],
        )
        self.assertIn("pass --over-budget", lines[0])
        self.assertFalse(self.csv_path.exists())

    def test_a_run_over_what_is_left_exits_2_unless_over_budget(self) -> None:
        month = datetime.now(timezone.utc).strftime("%Y-%m")
        self.ledger_path.parent.mkdir(parents=True)
        self.ledger_path.write_text(
            json.dumps(
                {"version": 1, "months": {month: {"/coins/markets eur": {"attempts": 9_998, "429": 0}}}, "warned": []}
            )
        )
        result = self.run_main("--top", "all")
        self.assertEqual(result.code, 2, result.stderr)
        self.assertIn(
            "this run needs about 68 API calls, but only 2 of this month's 10,000 (demo) are left (9,998 used;",
            result.stderr,
        )
        self.assertEqual(self.fake.requests, [])
        result = self.run_main("--top", "all", "--over-budget")
        self.assertEqual(result.code, 0, result.stderr)
        self.assertEqual(self.month_lines()["/coins/markets eur"]["attempts"], 9_998 + 5)
        # the next run knows the market has 1,200 coins: 6 pages estimated, still over, still refused
        result = self.run_main("--top", "all")
        self.assertIn("needs about 6 API calls, but only 0 of", result.stderr)

    def test_top_all_with_top_backfill_says_what_it_would_cost(self) -> None:
        self.assertEqual(self.run_main("--top", "100").code, 0)
        result = self.run_main("--top", "all", "--top-backfill", "--monthly-credits", "500")
        self.assertEqual(result.code, 2, result.stderr)
        self.assertIn("--top-backfill with --top all: about 16,900 more calls to heal", result.stderr)
        self.assertIn(
            "this run with --top-backfill needs about 16,968 API calls, but only 499 of this month's 500 "
            "(demo) are left (1 used;",
            result.stderr,
        )
        self.assertEqual(len(self.fake.requests), 1)  # the first run's one page; nothing after

    def test_bad_monthly_credits_are_one_line_and_exit_2(self) -> None:
        for value in ("0", "-3", "lots"):
            result = self.run_main("--monthly-credits", value)
            self.assertEqual(result.code, 2, (value, result.stderr))
            self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
            self.assertIn("monthly-credits: ", result.stderr)
        result = self.run_main(env={**self.env, "PIPELINE_MONTHLY_CREDITS": "ten"})
        self.assertEqual(result.code, 2)
        self.assertEqual(self.fake.requests, [])

    def test_a_corrupt_or_foreign_ledger_is_counted_afresh_and_a_link_is_refused(self) -> None:
        self.ledger_path.parent.mkdir(parents=True)
        for junk in (b"\x00not json{", b"[1, 2, 3]", b'{"months": {"2026-13": 5, "x": []}, "warned": "no"}'):
            self.ledger_path.write_bytes(junk)
            self.fake.requests.clear()
            result = self.run_main("--top", "10")
            self.assertEqual(result.code, 0, result.stderr)
            data = json.loads(self.ledger_path.read_text())
            self.assertEqual(sum(line["attempts"] for m in data["months"].values() for line in m.values()), 1)
        target = self.data_dir / "elsewhere.json"
        target.write_text("{}")
        self.ledger_path.unlink()
        self.ledger_path.symlink_to(target)
        self.fake.requests.clear()
        result = self.run_main("--top", "10")
        self.assertEqual(result.code, 2, result.stderr)
        self.assertIn("api-credits.json is a symbolic link", result.stderr)
        self.assertEqual(self.fake.requests, [])
        self.assertEqual(target.read_text(), "{}")

    def test_two_processes_add_up(self) -> None:
        from flows.budget import ledger_for

        settings = build_settings("run", {}, self.env)
        first, second = ledger_for(settings), ledger_for(settings)
        for _ in range(3):
            first.record("/coins/markets", {"vs_currency": "eur"}, 200)
        for _ in range(4):
            second.record("/coins/bitcoin/market_chart/range", {"vs_currency": "usd"}, 429)
        first.flush()
        second.flush()
        self.assertEqual(
            self.month_lines(),
            {
                "/coins/markets eur": {"attempts": 3, "429": 0},
                "/coins/{id}/market_chart/range usd": {"attempts": 4, "429": 4},
            },
        )

    def test_the_daemon_warns_once_a_month_at_80_percent(self) -> None:
        from flows.budget import ledger_for, warn_once

        settings = build_settings("daemon", {"monthly_credits": "10"}, self.env)
        ledger = ledger_for(settings)
        sent: list[tuple[str, str]] = []
        for _ in range(7):
            ledger.record("/coins/markets", {"vs_currency": "eur"}, 200)
        ledger.flush()
        self.assertIsNone(warn_once(settings, lambda *a: sent.append(a)))
        ledger.record("/coins/markets", {"vs_currency": "eur"}, 200)
        ledger.flush()
        line = warn_once(settings, lambda *a: sent.append(a))
        self.assertEqual(
            line,
            "API calls this month: 8 of 10 (demo): 80% of the month's credits used; 2 left until "
            "the month ends (--monthly-credits sets the budget)",
        )
        self.assertIsNone(warn_once(settings, lambda *a: sent.append(a)))
        self.assertEqual(sent, [("API credits at 80 %", line)])

    def test_the_80_percent_warning_reaches_the_webhook(self) -> None:
        from flows.budget import ledger_for, warn_once
        from flows.notify import notice
        from tests.test_notify import Receiver

        hook = Receiver()
        self.addCleanup(hook.stop)
        settings = build_settings("daemon", {"monthly_credits": "1", "notify_url": hook.url}, self.env)
        ledger = ledger_for(settings)
        ledger.record("/coins/markets", {"vs_currency": "eur"}, 200)
        ledger.flush()
        warn_once(settings, lambda title, line: notice(settings, title, line))
        self.assertEqual(len(hook.received), 1)
        doc = hook.received[0].doc
        self.assertEqual(doc["event"], "credits")
        self.assertIn("API calls this month: 1 of 1 (demo)", doc["text"])
        self.assertNotIn(KEY, hook.received[0].body.decode())

    def test_seeding_a_new_history_of_the_whole_market_counts_in_the_estimate(self) -> None:
        env = {k: v for k, v in self.env.items() if k != "PIPELINE_HEAL"}
        result = self.run_main("--top", "all", env=env)
        self.assertEqual(result.code, 2, result.stderr)
        self.assertIn(
            "this run (seeding the new history: 17,000 calls; --seed-days 0 skips it) needs about 17,068 API "
            "calls, but only 10,000 of this month's 10,000 (demo) are left",
            result.stderr,
        )
        self.assertEqual(self.fake.requests, [])
        result = self.run_main("--top", "all", "--seed-days", "0", env=env)
        self.assertEqual(result.code, 0, result.stderr)
        self.assertEqual(len(self.fake.requests), 5)


def write_history(path, coins: int, days: int, day0: date, jumper: int) -> None:
    """A history of `coins` coins x `days` daily rows in the project's CSV (coin-0000 largest; coin number `jumper`
    triples on the last day)."""
    from utils.history.schema import COLUMNS, HEADER_LINE

    lines = [HEADER_LINE]
    for d in range(days):
        for i in range(coins):
            cells = dict.fromkeys(COLUMNS, "")
            price = 100.0 / (i + 1) * (3.0 if (i == jumper and d == days - 1) else 1.0 + d / 100)
            cells.update(
                name=f"Coin {i:04d}",
                symbol=f"c{i:04d}",
                current_price=repr(price),
                market_cap=str(10**12 // (i + 1)),
                coin_id=f"coin-{i:04d}",
                vs_currency="usd",
                market_cap_rank=str(i + 1),
                source="coins_markets",
                last_updated=f"{day0 + timedelta(days=d)}T12:00:{i % 60:02d}.{i % 1000:03d}Z",
            )
            lines.append(",".join(cells[c] for c in COLUMNS) + "\n")
    path.write_text("".join(lines))


class LargeHistoryViews(PipelineTestCase):
    """Charts and the report of a history with many coins show the leaders and the day's movers, and say so."""

    def test_charts_show_the_ten_largest_and_the_days_movers(self) -> None:
        from lambdas.wiring import storage_for
        from utils.charts.data import ChartOptions
        from utils.charts.render import chart_drawings

        write_history(self.csv_path, 80, 5, DAY1, jumper=50)
        settings = build_settings("plot", {"vs_currency": "usd"}, self.env)
        with storage_for(settings).index() as index:
            drawings, report = chart_drawings(index, ChartOptions(vs_currency="usd"))
        self.assertEqual(report.coins[:10], tuple(f"coin-{i:04d}" for i in range(10)))
        self.assertEqual(len(report.coins), 15)  # and the day's five biggest movers, coin-0050 first among them
        self.assertIn("coin-0050", report.coins[10:])
        # The legend says which coins are the movers, and the subtitle why there are 15 of 80.
        fig = drawings[0][1]()
        legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        movers = [text for text in legend if "*  " in text]
        self.assertEqual(len(movers), 5, legend)
        self.assertTrue(any(m.startswith("Coin 0050 (C0050)*  $") for m in movers), movers)
        self.assertIn("* one of the day's 5 biggest movers", legend)
        self.assertIn("the 10 largest of 80 coins by market cap + the day's 5 biggest movers", fig.texts[1].get_text())
        result = self.run_main("plot", "--vs-currency", "usd")
        self.assertEqual(result.code, 0, result.stderr)

    def test_the_report_table_shows_the_hundred_largest_and_says_how_many_coins_there_are(self) -> None:
        from flows.views import build_report

        write_history(self.csv_path, 260, 3, DAY1, jumper=150)
        data = build_report(build_settings("report", {"vs_currency": "usd"}, self.env))
        self.assertEqual(len(data.coins), 105)
        self.assertEqual([c.coin_id for c in data.coins][:3], ["coin-0000", "coin-0001", "coin-0002"])
        self.assertIn("coin-0150", [c.coin_id for c in data.coins])
        self.assertTrue(
            any("The history holds 260 coins in usd; the table shows the 100 largest" in n for n in data.notes),
            data.notes,
        )


class TopBackfillCostOnThePublicPlan(PipelineTestCase):
    def test_the_cost_is_said_even_without_a_monthly_limit(self) -> None:
        self.fake.universe(300)
        env = {k: v for k, v in self.env.items() if k != "PIPELINE_COINS"}
        self.assertEqual(self.run_main("--top", "10", env=env).code, 0)
        result = self.run_main("--top", "all", "--top-backfill", env=env)
        self.assertIn("--top-backfill with --top all: about 16,990 more calls to heal", result.stderr)

    def test_a_run_of_more_than_ten_pages_shows_its_progress(self) -> None:
        self.fake.universe(2600)
        env = {k: v for k, v in self.env.items() if k != "PIPELINE_COINS"}
        result = self.run_main("--top", "all", env=env)
        self.assertEqual(result.code, 0, result.stderr)
        self.assertEqual(self.fake.market_pages(), list(range(1, 12)))
        self.assertIn("top in eur: page 10 of at most 80", result.stderr)
        quiet = self.run_main("--top", "500", env=env)  # two pages: nothing to show
        self.assertNotIn("page ", quiet.stderr)
