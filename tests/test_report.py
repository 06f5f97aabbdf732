"""The one-page report: written by `report` and after a run, self-contained, escaped, and right in a real browser."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import unittest
from datetime import datetime, timedelta, timezone
from pathlib import Path

from tests.fake_coingecko import load_fixture, markets_rows
from tests.support import PipelineTestCase, make_stale

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def chromium() -> str | None:
    return next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)


def browser_dom(page: Path, screenshot: Path) -> str:
    """The page as headless Chromium renders it (the DOM after load), with a screenshot taken on the way."""
    binary = chromium()
    assert binary is not None
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={screenshot.parent / 'profile'}",
    ]
    url = page.resolve().as_uri()
    subprocess.run(
        [binary, *flags, "--window-size=1280,2000", f"--screenshot={screenshot}", url],
        capture_output=True,
        timeout=120,
        check=True,
    )
    dumped = subprocess.run(
        [binary, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True
    )
    return dumped.stdout


class Report(PipelineTestCase):
    def report(self) -> str:
        return (self.data_dir / "report.html").read_text(encoding="utf-8")

    def test_report_needs_a_history(self) -> None:
        result = self.run_main("report")
        self.assertEqual(result.code, 1)
        self.assertTrue(result.stderr.startswith("report failed: no history yet"), result.stderr)

    def test_report_is_self_contained(self) -> None:
        make_stale(self.fake)
        self.run_main()
        result = self.run_main("report")
        self.assertEqual(result.code, 0, result.stderr)
        self.assertTrue(result.stdout.strip().endswith("report.html"))
        html = self.report()
        self.assertEqual(html.count('<img src="data:image/png;base64,'), 3)
        self.assertNotRegex(html, r"<(script|link)\b")
        self.assertNotRegex(html, r"(src|href)=\"(https?:)?//")
        self.assertNotIn("@import", html)
        self.assertNotIn("url(", html)
        self.assertEqual(len(re.findall(r'<tr data-coin="', html)), 10)
        self.assertIn("1 stale", html)

    def test_text_from_the_api_is_escaped(self) -> None:
        rows = markets_rows(2, start=datetime.now(timezone.utc) - timedelta(minutes=5))
        rows[0]["name"] = '<script>alert("x")</script><img src=x onerror=alert(1)>'
        rows[1]["symbol"] = "</td><b>bold"
        self.fake.set_coins(rows)
        self.run_main("--coins", ",".join(r["id"] for r in rows))
        self.assertEqual(self.run_main("report").code, 0)
        html = self.report()
        self.assertNotIn("<script>alert", html)
        self.assertNotIn("<img src=x", html)
        self.assertNotIn("<b>bold", html)
        self.assertIn("&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;", html)

    def test_a_run_with_charts_rewrites_the_report_and_no_charts_leaves_it(self) -> None:
        result = self.run_main(env={**self.env, "PIPELINE_CHARTS": "1"})
        self.assertEqual(result.code, 0, result.stderr)
        html = self.report()
        self.assertIn(">ok<", html)
        self.assertIn("run ok: 10 coins", html)
        before = (self.data_dir / "report.html").stat().st_mtime_ns
        self.fake.advance(60)
        self.run_main("--no-charts")
        self.assertEqual((self.data_dir / "report.html").stat().st_mtime_ns, before)

    def test_changes_come_from_the_daily_points(self) -> None:
        start = datetime.now(timezone.utc) - timedelta(days=30, hours=1)  # the last one an hour ago, whatever the hour
        rows = markets_rows(1, start=start)
        self.fake.set_coins(rows)
        coin = rows[0]["id"]
        for _step in range(31):  # one observation a day, the price up 1% a day
            self.run_main("--coins", coin)
            self.fake.advance(86400, price_factor=1.01)
        self.assertEqual(self.run_main("report").code, 0)
        cells = re.search(r'<tr data-coin="' + coin + r'">(.*?)</tr>', self.report(), re.S).group(1)
        changes = re.findall(r"[+-]\d+\.\d%", cells)
        self.assertEqual(changes, ["+1.0%", "+7.2%", "+34.8%"])


class Numbers(unittest.TestCase):
    def test_prices_caps_and_changes_read_well_across_ten_orders_of_magnitude(self) -> None:
        from utils.views.html_report import fmt_big, fmt_change, fmt_price

        self.assertEqual(
            [fmt_price(v) for v in (117999.0, 1.0, 0.5, 0.07204, 0.00000845, None)],
            ["117,999.00", "1.00", "0.50", "0.07204", "0.00000845", "–"],
        )
        self.assertEqual(
            [fmt_big(v) for v in (1.2345e12, 873.25e6, 4.2e9, None)], ["1.23 T", "873.25 M", "4.20 B", "–"]
        )
        self.assertEqual([fmt_change(v) for v in (0.0123, -0.5, None)], ["+1.2%", "-50.0%", "–"])


@unittest.skipUnless(
    os.environ.get("RUN_BROWSER") == "1", "set RUN_BROWSER=1 (CI does) to open the report in headless Chromium"
)
class InTheBrowser(PipelineTestCase):
    def setUp(self) -> None:
        super().setUp()
        if chromium() is None:
            self.skipTest("headless Chromium is not installed (Debian: apt-get install chromium; .ci/run does it)")

    def check_page(self, coins: int) -> Path:
        shots = Path(os.environ.get("REPORT_SCREENSHOTS") or tempfile.mkdtemp())
        shots.mkdir(parents=True, exist_ok=True)
        shot = shots / f"report-{coins}-coins.png"
        dom = browser_dom(self.data_dir / "report.html", shot)
        table = re.search(r'<table id="latest".*?<tbody>(.*?)</tbody>', dom, re.S)
        self.assertIsNotNone(table, dom[:2000])
        self.assertEqual(len(re.findall(r"<tr\b", table.group(1))), coins)
        self.assertGreater(shot.stat().st_size, 20_000)
        self.assertEqual(shot.read_bytes()[:8], b"\x89PNG\r\n\x1a\n")
        return shot

    def test_9_coins(self) -> None:
        self.fake.set_coins(load_fixture("coins_markets_2023-01-08_real_10coins.json")[:9])
        ids = ",".join(r["id"] for r in self.fake.coins)
        self.assertEqual(self.run_main("--coins", ids, env={**self.env, "PIPELINE_CHARTS": "1"}).code, 0)
        self.check_page(9)

    def test_100_coins(self) -> None:
        rows = markets_rows(100, start=datetime.now(timezone.utc) - timedelta(minutes=5))
        self.fake.set_coins(rows)
        ids = ",".join(r["id"] for r in rows)
        self.assertEqual(self.run_main("--coins", ids, env={**self.env, "PIPELINE_CHARTS": "1"}).code, 0)
        self.check_page(100)


if __name__ == "__main__":
    unittest.main()
