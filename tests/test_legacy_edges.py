"""Legacy files at their edges: no final newline, a line break inside a name, a temp file left by a kill."""

from __future__ import annotations

import os
import time
from datetime import date, timedelta

from tests.fake_coingecko import make_daily_chart
from tests.support import PipelineTestCase

LEGACY_HEADER = "name,symbol,current_price,market_cap,price_change_percentage_24h,circulating_supply,last_updated\n"


class LegacyEdges(PipelineTestCase):
    def test_a_legacy_file_without_final_newline_keeps_its_last_row_and_an_exact_backup(self) -> None:
        original = (
            LEGACY_HEADER + "Bitcoin,btc,16951.52,326407877229,0.14,19256218,2023-01-08T16:49:40.132Z\n"
            "Ethereum,eth,1266.66,152631477365,0.28,120524634.8,2023-01-08T16:49:52.403Z"
        ).encode()
        self.csv_path.write_bytes(original)
        result = self.run_main("--coins", "dogecoin")
        self.assertEqual(result.code, 0, result.stderr)
        legacy = [r for r in self.rows() if r["source"] == "legacy"]
        self.assertEqual([r["coin_id"] for r in legacy], ["bitcoin", "ethereum"])
        backups = list(self.data_dir.glob("crypto_data.csv.legacy-*.bak"))
        self.assertEqual(len(backups), 1)
        self.assertEqual(backups[0].read_bytes(), original)

    def test_a_line_break_in_a_legacy_name_never_costs_a_row_at_a_later_backfill(self) -> None:
        self.csv_path.write_text(
            LEGACY_HEADER
            + '"Bit\ncoin",btc,16951.52,1,0.1,1,2023-01-01T00:00:00.000Z\n'
            + '"=Ethereum",eth,1266.66,1,0.1,1,2023-01-02T00:00:00.000Z\n'
            + "Ethereum,eth,1266.66,1,0.1,1,2023-01-03T00:00:00.000Z\n"
        )
        self.fake.market_chart["cardano"] = make_daily_chart(date.today() - timedelta(days=10), 11, 0.3)
        result = self.run_main("backfill", "--days", "3", "--coins", "cardano")
        self.assertEqual(result.code, 0, result.stderr)
        rows = self.rows()
        legacy = [r for r in rows if r["source"] == "legacy"]
        self.assertEqual(len(legacy) + len([r for r in rows if r["source"] == "market_chart"]), len(rows))
        self.assertEqual(len(rows), 3 + 3)
        self.assertEqual([r["name"] for r in legacy], ["Bit coin", "'=Ethereum", "Ethereum"])  # one line, no formula
        self.assertEqual(self.csv_bytes().count(b"\n"), 1 + 6)

    def test_a_temp_copy_left_by_a_killed_merge_is_removed(self) -> None:
        self.assertEqual(self.run_main().code, 0)
        stale = self.data_dir / ".crypto_data.csv.abc123.tmp"
        stale.write_bytes(b"x" * 1000)
        two_hours_ago = time.time() - 7200
        os.utime(stale, (two_hours_ago, two_hours_ago))
        fresh = self.data_dir / ".crypto_price_trend.png.def456.tmp"  # perhaps a `plot` drawing right now
        fresh.write_bytes(b"y")
        self.fake.advance(60)
        self.assertEqual(self.run_main("--no-charts").code, 0)
        self.assertFalse(stale.exists())
        self.assertTrue(fresh.exists())
