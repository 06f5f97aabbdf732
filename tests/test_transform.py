"""The transform: recorded CoinGecko rows -> exact Records, and every bad row rejected with its reason."""

from __future__ import annotations

import copy
import csv
import io
import unittest
from datetime import datetime, timezone

from lambdas.lambda_1_extract import Snapshot
from lambdas.lambda_2_transform import transform
from tests.fake_coingecko import load_fixture
from tests.support import REPO  # noqa: F401  (puts the repo on sys.path)
from utils.history.schema import COLUMNS, HEADER_LINE, Record, rows_to_csv

FETCHED = datetime(2023, 1, 8, 16, 50, 0, 123456, tzinfo=timezone.utc)
REAL = load_fixture("coins_markets_2023-01-08_real_10coins.json")


def snapshot(rows: list, requested: tuple[str, ...] | None = None, vs: str = "usd") -> Snapshot:
    ids = requested or tuple(r["id"] for r in rows if isinstance(r, dict) and isinstance(r.get("id"), str))
    return Snapshot(fetched_at=FETCHED, vs_currency=vs, requested=ids, rows=rows)


class TransformRealRows(unittest.TestCase):
    def test_bitcoin_row_becomes_this_exact_record(self) -> None:
        result = transform(snapshot(REAL))
        self.assertEqual(len(result.records), 10)
        self.assertEqual(result.rejected, [])
        self.assertEqual(
            result.records[0],
            Record(
                name="Bitcoin",
                symbol="btc",
                current_price=16951.52,
                market_cap=326407877229,
                price_change_percentage_24h=0.14088,
                circulating_supply=19256218,
                last_updated="2023-01-08T16:49:40.132Z",
                fetched_at="2023-01-08T16:50:00.123Z",
                coin_id="bitcoin",
                vs_currency="usd",
                market_cap_rank=1,
                total_volume=10076421985,
                high_24h=16994.2,
                low_24h=16923.76,
                total_supply=21000000,
                max_supply=21000000,
                source="coins_markets",
            ),
        )

    def test_nulls_stay_empty_cells_never_zero(self) -> None:
        eth = transform(snapshot(REAL)).records[1]
        self.assertIsNone(eth.max_supply)
        line = rows_to_csv([eth])
        cells = next(csv.reader(io.StringIO(line)))
        self.assertEqual(cells[COLUMNS.index("max_supply")], "")

    def test_every_float_round_trips_through_the_csv(self) -> None:
        records = transform(snapshot(REAL)).records
        text = HEADER_LINE + rows_to_csv(records)
        for record, row in zip(records, csv.DictReader(io.StringIO(text))):
            for name in ("current_price", "market_cap", "circulating_supply", "total_supply", "high_24h", "low_24h"):
                value = getattr(record, name)
                self.assertEqual(float(row[name]) if row[name] else None, value, name)

    def test_exponent_floats_are_kept_exactly(self) -> None:
        rows = copy.deepcopy(REAL[:1])
        rows[0]["current_price"] = 5.6366e-11
        record = transform(snapshot(rows)).records[0]
        self.assertIn("5.6366e-11", rows_to_csv([record]))

    def test_null_heavy_new_listing_is_rejected_for_its_missing_timestamp(self) -> None:
        rows = load_fixture("coins_markets_null_heavy_coin_2026.json")
        result = transform(snapshot(rows))
        self.assertEqual(result.records, [])
        self.assertEqual(len(result.rejected), 1)
        self.assertEqual(result.rejected[0].coin_id, "atlas-2")
        self.assertIn("last_updated is null", result.rejected[0].reason)

    def test_null_price_with_a_timestamp_is_kept_as_empty_cells(self) -> None:
        row = dict(load_fixture("coins_markets_null_heavy_coin_2026.json")[0], last_updated="2023-01-08T10:00:00Z")
        record = transform(snapshot([row])).records[0]
        self.assertIsNone(record.current_price)
        self.assertIsNone(record.market_cap_rank)
        self.assertEqual(record.circulating_supply, 0.0)
        self.assertEqual(record.last_updated, "2023-01-08T10:00:00.000Z")

    def test_official_2026_example_row_with_extra_fields(self) -> None:
        rows = load_fixture("coins_markets_official_oas_example_2026.json")
        result = transform(
            Snapshot(
                fetched_at=datetime(2026, 11, 1, tzinfo=timezone.utc),
                vs_currency="usd",
                requested=tuple(r["id"] for r in rows),
                rows=rows,
            )
        )
        self.assertEqual(len(result.records), len(rows))


class TransformRejects(unittest.TestCase):
    def bad(self, **changes: object) -> str:
        row = dict(copy.deepcopy(REAL[0]), **changes)
        result = transform(snapshot([row], requested=("bitcoin",)))
        self.assertEqual(result.records, [], changes)
        self.assertEqual(len(result.rejected), 1)
        return result.rejected[0].reason

    def test_reasons(self) -> None:
        self.assertIn("current_price is the string '17000'", self.bad(current_price="17000"))
        self.assertIn("market_cap is negative", self.bad(market_cap=-5))
        self.assertIn("total_volume is a bool", self.bad(total_volume=True))
        self.assertIn("not a finite number", self.bad(current_price=float("nan")))
        self.assertIn("no id", self.bad(id=None))
        self.assertIn("no id", self.bad(id="  "))
        self.assertIn("not a valid CoinGecko id", self.bad(id="../../etc/passwd"))
        self.assertIn("not an ISO 8601 timestamp", self.bad(last_updated="yesterday"))
        self.assertIn("market_cap_rank", self.bad(market_cap_rank=1.5))
        self.assertIn("after the fetch", self.bad(last_updated="2999-01-01T00:00:00Z"))
        self.assertIn("too large", self.bad(market_cap=10**400))
        self.assertIn("name is a list", self.bad(name=["x"]))

    def test_one_bad_row_does_not_stop_the_others(self) -> None:
        rows = copy.deepcopy(REAL)
        rows[3]["current_price"] = "oops"
        rows.insert(5, "not an object")
        result = transform(snapshot(rows, requested=tuple(r["id"] for r in REAL)))
        self.assertEqual(len(result.records), 9)
        self.assertEqual([r.coin_id for r in result.rejected], [REAL[3]["id"], "?"])

    def test_duplicate_id_in_one_answer_is_stored_once(self) -> None:
        rows = [copy.deepcopy(REAL[0]), copy.deepcopy(REAL[0])]
        result = transform(snapshot(rows, requested=("bitcoin",)))
        self.assertEqual(len(result.records), 1)
        self.assertIn("twice", result.rejected[0].reason)

    def test_rows_not_requested_are_not_stored(self) -> None:
        result = transform(snapshot(copy.deepcopy(REAL[:2]), requested=("bitcoin",)))
        self.assertEqual([r.coin_id for r in result.records], ["bitcoin"])
        self.assertEqual(result.rejected[0].coin_id, "ethereum")


class FormulaNeutralising(unittest.TestCase):
    def test_names_and_symbols_that_a_spreadsheet_would_run_are_defused(self) -> None:
        rows = []
        for i, text in enumerate(['=HYPERLINK("http://x")', "+1", "-2+3", "@SUM(A1)"]):
            rows.append(dict(copy.deepcopy(REAL[0]), id=f"evil-{i}", name=text, symbol=text))
        records = transform(snapshot(rows)).records
        for record in records:
            self.assertTrue(record.name.startswith("'"), record.name)
            self.assertTrue(record.symbol.startswith("'"), record.symbol)

    def test_control_characters_never_split_a_csv_line(self) -> None:
        row = dict(copy.deepcopy(REAL[0]), name="Bad\nCoin\r\x00", symbol="b\tc")
        record = transform(snapshot([row])).records[0]
        self.assertEqual(record.name, "Bad Coin")
        self.assertEqual(rows_to_csv([record]).count("\n"), 1)


if __name__ == "__main__":
    unittest.main()
