"""`python main.py plot` and the charts after a run: files, messages and exit codes."""

from __future__ import annotations

import struct

from tests.support import PipelineTestCase
from utils.history.layout import DataLayout

CHARTS = ("crypto_price_trend.png", "crypto_market_cap_trend.png", "crypto_performance.png")


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


class PlotCommand(PipelineTestCase):
    def test_no_history_says_to_run_first(self) -> None:
        result = self.run_main("plot")
        self.assertEqual(result.code, 1)
        self.assertIn("no history yet", result.stderr)
        self.assertIn("run `python main.py --data-dir ", result.stderr)  # where the history belongs
        self.assertEqual(len(result.stderr.strip().splitlines()), 1)

    def test_plot_after_a_run_writes_three_pngs_and_names_them(self) -> None:
        self.assertEqual(self.run_main().code, 0)
        result = self.run_main("plot", "--plot-coins", "BTC,ethereum,Dogecoin")
        self.assertEqual(result.code, 0, result.stderr)
        for name in CHARTS:
            self.assertIn(name, result.stdout)
            width, height = png_size((self.data_dir / name).read_bytes())
            self.assertGreater(width, 800)
            self.assertGreater(height, 400)
        self.assertIn("plot ok: 3 coins", result.stderr)
        self.assertEqual([p.name for p in self.data_dir.iterdir() if p.name.endswith(".tmp")], [])

    def test_a_selection_that_matches_nothing_lists_the_coins(self) -> None:
        self.run_main()
        result = self.run_main("plot", "--plot-coins", "nosuchcoin")
        self.assertEqual(result.code, 2)  # a usage error: the selection names no coin of the history
        self.assertIn("no coin matches", result.stderr)
        self.assertIn("bitcoin (BTC, Bitcoin)", result.stderr)

    def test_a_run_draws_the_charts_unless_told_not_to(self) -> None:
        env = dict(self.env, PIPELINE_CHARTS="1")
        self.assertEqual(self.run_main("--no-charts", env=env).code, 0)
        self.assertFalse((self.data_dir / CHARTS[0]).exists())
        self.fake.advance(60)
        result = self.run_main(env=env)
        self.assertEqual(result.code, 0, result.stderr)
        for name in CHARTS:
            png_size((self.data_dir / name).read_bytes())

    def test_a_chart_failure_never_fails_the_data_run(self) -> None:
        (self.data_dir / CHARTS[0]).mkdir()  # a folder where the PNG belongs
        result = self.run_main(env=dict(self.env, PIPELINE_CHARTS="1"))
        self.assertEqual(result.code, 0, result.stderr)
        self.assertIn("10 rows appended", result.stderr)
        self.assertIn("charts failed", result.stderr)
        self.assertEqual(len(self.rows()), 10)


class SeveralCurrencies(PipelineTestCase):
    """One folder, two currencies: two chart sets, and status reports both."""

    def test_a_run_in_usd_beside_an_eur_history_keeps_both_chart_sets(self) -> None:
        env = dict(self.env, PIPELINE_CHARTS="1")
        self.assertEqual(self.run_main(env=env).code, 0)
        self.fake.advance(60)
        result = self.run_main("--vs-currency", "usd", env=env)
        self.assertEqual(result.code, 0, result.stderr)
        layout = DataLayout(self.data_dir)
        eur = tuple(p.name for p in layout.charts_of("eur", primary="usd"))
        self.assertEqual(
            eur, ("crypto_price_trend_eur.png", "crypto_market_cap_trend_eur.png", "crypto_performance_eur.png")
        )
        self.assertEqual(sorted(p.name for p in self.data_dir.glob("*.png")), sorted(CHARTS + eur))
        for name in CHARTS + eur:
            png_size((self.data_dir / name).read_bytes())
        # Back to eur: eur keeps the plain names again, usd moves to _usd, no stale _eur remains.
        self.fake.advance(60)
        self.assertEqual(self.run_main(env=env).code, 0)
        usd = tuple(p.name for p in layout.charts_of("usd", primary="eur"))
        self.assertEqual(sorted(p.name for p in self.data_dir.glob("*.png")), sorted(CHARTS + usd))

    def test_plot_draws_the_currency_asked_for(self) -> None:
        self.run_main()
        self.fake.advance(60)
        self.run_main("--vs-currency", "usd")
        result = self.run_main("plot", "--vs-currency", "usd")
        self.assertEqual(result.code, 0, result.stderr)
        self.assertEqual(sorted(p.name for p in self.data_dir.glob("*.png")), sorted(CHARTS))
        self.assertEqual([line.rsplit("/", 1)[-1] for line in result.stdout.split()], list(CHARTS))
        self.assertIn("plot ok: 10 coins", result.stderr)

    def test_status_reports_every_currency(self) -> None:
        self.run_main()
        self.fake.advance(60)
        self.run_main("--vs-currency", "usd")
        result = self.run_main("status")
        self.assertEqual(result.code, 0, result.stderr)
        lines = result.stdout.splitlines()
        self.assertIn("20 rows, 10 coins in eur, usd", result.stdout)
        self.assertIn("eur:          10 rows in eur, 10 coins", lines)
        self.assertIn("usd:          10 rows in usd, 10 coins", lines)
