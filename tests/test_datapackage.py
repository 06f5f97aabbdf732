"""data/datapackage.json describes the data folder, and the frictionless library finds it valid."""

from __future__ import annotations

import json
import unittest

from tests.fake_coingecko import load_fixture
from tests.support import PipelineTestCase, charts_for
from utils.history.datapackage import HISTORY_FIELDS, QUALITY_FIELDS
from utils.history.quality import QUALITY_COLUMNS
from utils.history.schema import COLUMNS

try:
    from frictionless import Package
except ImportError:  # pragma: no cover - requirements-dev.txt installs it
    Package = None


def validate(folder) -> tuple[bool, list[str]]:
    """frictionless's verdict on the package, and its errors in words."""
    report = Package(str(folder / "datapackage.json")).validate()
    errors = [f"{task.name}: {error.message}" for task in report.tasks for error in task.errors]
    return report.valid, errors


@unittest.skipIf(Package is None, "frictionless is not installed: pip install -r requirements-dev.txt")
class DataPackage(PipelineTestCase):
    def assert_valid(self) -> dict:
        path = self.data_dir / "datapackage.json"
        self.assertTrue(path.is_file())
        valid, errors = validate(self.data_dir)
        self.assertTrue(valid, errors)
        return json.loads(path.read_text())

    def test_every_column_is_described(self) -> None:
        self.assertEqual(tuple(HISTORY_FIELDS), COLUMNS)
        self.assertEqual(tuple(QUALITY_FIELDS), QUALITY_COLUMNS)

    def test_after_a_run(self) -> None:
        self.assertEqual(self.run_main().code, 0)
        doc = self.assert_valid()
        history, quality = doc["resources"]
        self.assertEqual(history["schema"]["primaryKey"], ["coin_id", "vs_currency", "last_updated"])
        self.assertEqual(history["schema"]["missingValues"], [""])
        self.assertEqual([f["name"] for f in history["schema"]["fields"]], list(COLUMNS))
        self.assertTrue(all(f.get("description") for f in history["schema"]["fields"]))
        self.assertEqual(quality["path"], "quality.csv")
        self.assertIn("coingecko", doc["sources"][0]["path"])
        self.assertIn("CoinGecko", doc["licenses"][0]["title"])

    def test_after_a_backfill(self) -> None:
        self.env["PIPELINE_COINS"] = "bitcoin,ethereum"
        self.fake.market_chart.update(charts_for(("bitcoin", "ethereum")))
        result = self.run_main("backfill", "--days", "30")
        self.assertEqual(result.code, 0, result.stderr)
        self.assert_valid()

    def test_after_a_legacy_migration(self) -> None:
        legacy = (
            "name,symbol,current_price,market_cap,price_change_percentage_24h,circulating_supply,last_updated\n"
            "Bitcoin,btc,16951.52,326000000000,0.5,19250000,2023-01-08T16:49:40.132Z\n"
            "Ethereum,eth,1266.66,152000000000,,120000000,2023-01-08T16:49:52.403Z\n"
        )
        self.csv_path.write_text(legacy)
        self.fake.set_coins(load_fixture("coins_markets_2023-01-08_real_10coins.json"))
        result = self.run_main()
        self.assertEqual(result.code, 0, result.stderr)
        self.assertIn("migrated", result.stderr)
        self.assert_valid()

    def test_a_broken_package_is_caught(self) -> None:
        self.run_main()
        with open(self.csv_path, "a", encoding="utf-8") as fh:  # the same key twice breaks the primary key
            fh.write(self.csv_path.read_text().splitlines()[1] + "\n")
        valid, errors = validate(self.data_dir)
        self.assertFalse(valid)
        self.assertTrue(any("primary" in e.lower() for e in errors), errors)


if __name__ == "__main__":
    unittest.main()
