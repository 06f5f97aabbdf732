"""Issue 18 against the fake CoinGecko serving a universe of 1,200 coins: `--top all`, coins moving between pages,
delisted coins kept in the history ("gone since"), and bad `--top` values."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone

from tests.fake_coingecko import markets_rows
from flows.run import run_pipeline
from tests.support import PipelineTestCase

from flows.run_once import RunResult
from flows.status import print_status
from flows.top import print_top
from lambdas.lambda_1_extract import extract_top
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
        self.assertIn(f"run ok: {UNIVERSE:,} coins, {UNIVERSE:,} rows appended".replace(",", ""),
                      result.stderr.replace(",", ""))
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
        self.assertIn(f"gone:         1 coin in eur no longer listed by CoinGecko for more than 7 days "
                      f"(history kept): coin-0500 gone since {days[0]}", lines)
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
