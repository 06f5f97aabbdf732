"""Charts drawn with real matplotlib into temporary folders, from CSV histories built here."""

from __future__ import annotations

import csv
import gc
import io
import json
import math
import random
import struct
import tempfile
import unittest
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import dates as mdates
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from lambdas.lambda_4_charts import charts
from tests.support import slow_part
from utils.charts.data import ChartOptions, NoHistory, NothingToPlot
from utils.charts.draw import IMAGE_SIZE_PX, coin_colour
from utils.charts.format import change_text, format_money
from utils.charts.render import chart_drawings, render_charts
from utils.errors import PipelineError
from utils.history import csvio
from utils.history.csv_store import HistoryStore
from utils.history.layout import (
    CHART_NAMES,
    MARKET_CAP_CHART,
    PERFORMANCE_CHART,
    PRICE_CHART,
    DataLayout,
    chart_names,
    primary_currency,
)
from utils.history.locations import LocalStorage
from utils.history.schema import COIN_ID_RE, COLUMNS, CURRENCY_RE, format_timestamp, parse_timestamp
from utils.settings import DEFAULT_COINS

FIXTURE = Path(__file__).parent / "fixtures" / "coins_markets_2023-01-08_real_10coins.json"
NEWEST = datetime(2023, 1, 8, 16, 49, 40, 132000, tzinfo=timezone.utc)
NOW = NEWEST + timedelta(hours=1)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def real_coins() -> dict[str, dict]:
    """The ten coins of a real /coins/markets page (2023-01-08), by id."""
    return {c["id"]: c for c in json.loads(FIXTURE.read_text())}


def row(
    coin: dict, when: datetime, *, currency: str = "eur", factor: float = 1.0, source: str = "coins_markets"
) -> dict[str, str]:
    """One CSV row of a coin at a moment, its price and cap scaled by factor."""
    cells = {
        "current_price": repr(coin["current_price"] * factor),
        "market_cap": repr(float(coin["market_cap"]) * factor),
        "last_updated": format_timestamp(when),
        "fetched_at": format_timestamp(when),
        "coin_id": coin["id"],
        "vs_currency": currency,
        "source": source,
    }
    if source != "market_chart":  # backfilled rows carry only price, cap and volume
        cells.update(name=coin["name"], symbol=coin["symbol"], market_cap_rank="1")
    return cells


def daily_rows(coins: list[dict], days: int, **kwargs: object) -> list[dict[str, str]]:
    """One row per coin per day up to NEWEST, prices drifting 1 % a day."""
    return [
        row(c, NEWEST - timedelta(days=d), factor=1.01**-d, **kwargs) for d in range(days - 1, -1, -1) for c in coins
    ]


def write_history(
    path: Path, rows: list[dict[str, str]], *, raw_lines: tuple[str, ...] = (), newline: str = "\n"
) -> Path:
    """A history CSV with the schema's header, the rows, then raw_lines verbatim."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, restval="", lineterminator=newline)
        writer.writeheader()
        writer.writerows(rows)
        for line in raw_lines:
            fh.write(line + newline)
    return path


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the IHDR chunk of a complete PNG file."""
    data = path.read_bytes()
    if data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR" or data[-8:-4] != b"IEND":
        raise AssertionError(f"{path} is not a complete PNG")
    return struct.unpack(">II", data[16:24])


def synthetic_coin(coin_id: str, seed: int) -> dict:
    """A coin of the default list or a made-up one, its price anywhere from 1e-5 to 1e5."""
    rng = random.Random(seed)
    price = 10 ** rng.uniform(-5, 5)
    return {
        "id": coin_id,
        "name": coin_id.replace("-", " ").title(),
        "symbol": coin_id[:3],
        "current_price": price,
        "market_cap": price * 10 ** rng.uniform(6, 9),
    }


def figures(csv_path: Path, options: ChartOptions) -> dict[str, Figure]:
    """The three charts as drawn Figures (laid out, not saved), by file name.

    Laid out by a draw that renders no pixel (matplotlib's draw_without_rendering): every tick placed and
    labelled and every text measured as in the saved PNG, at half the cost; no test here reads pixels."""
    with HistoryStore(DataLayout(csv_path.parent, csv_path.name)).index() as index:
        drawings, _ = chart_drawings(index, options, now=NOW)
    drawn = {}
    for name, draw in drawings:
        fig = draw()
        fig.draw_without_rendering()
        drawn[name] = fig
    return drawn


def axes_of(fig: Figure) -> Axes:
    (ax,) = fig.axes
    return ax


def line_of(fig: Figure, gid: str) -> Line2D:
    (line,) = [line for line in axes_of(fig).get_lines() if line.get_gid() == gid]
    return line


def day_number(day: date) -> float:
    return float(mdates.date2num(datetime(day.year, day.month, day.day, tzinfo=timezone.utc)))


class ChartTestCase(unittest.TestCase):
    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.dir = Path(tmp.name)
        self.coins = real_coins()
        self.csv = self.dir / "crypto_data.csv"
        self.out = self.dir / "charts"

    def pick(self, *ids: str) -> list[dict]:
        return [self.coins[i] for i in ids]

    def render(self, **options: object):
        return render_charts(self.csv, self.out, ChartOptions(**options), now=NOW)

    def plan(self, **options: object):
        """The report render() returns (coins, rows used, window, scales) without drawing: all of it is decided
        before the first chart is drawn. For the tests of those choices; the tests of the PNGs render them."""
        with HistoryStore(DataLayout(self.csv.parent, self.csv.name)).index() as index:
            return chart_drawings(index, ChartOptions(**options), now=NOW)[1]


class WrittenFilesTest(ChartTestCase):
    def test_three_complete_pngs_of_the_expected_size_and_nothing_else(self) -> None:
        write_history(self.csv, daily_rows(self.pick("bitcoin", "ethereum", "dogecoin"), 30))
        report = self.render()
        self.assertEqual([p.name for p in report.paths], [PRICE_CHART, MARKET_CAP_CHART, PERFORMANCE_CHART])
        for path in report.paths:
            self.assertEqual(path.parent, self.out)
            self.assertEqual(png_size(path), IMAGE_SIZE_PX)
        self.assertEqual(
            sorted(p.name for p in self.out.iterdir()), sorted([PRICE_CHART, MARKET_CAP_CHART, PERFORMANCE_CHART])
        )
        self.assertEqual(report.coins, ("bitcoin", "ethereum", "dogecoin"))
        self.assertEqual(report.rows_used, 90)
        self.assertEqual(report.skipped_lines, 0)
        self.assertEqual(report.window, (NEWEST - timedelta(days=29), NEWEST))

    def test_a_second_run_replaces_the_files(self) -> None:
        write_history(self.csv, daily_rows(self.pick("bitcoin"), 3))
        first = self.render()
        inodes = [p.stat().st_ino for p in first.paths]
        second = self.render()
        self.assertNotEqual(inodes, [p.stat().st_ino for p in second.paths])  # renamed into place
        self.assertEqual(len(list(self.out.iterdir())), 3)

    def test_no_figure_is_left_open_or_alive(self) -> None:
        write_history(self.csv, daily_rows(self.pick("bitcoin", "tether"), 5))
        self.render()  # first call loads fonts and caches
        gc.collect()
        before = sum(isinstance(o, Figure) for o in gc.get_objects())
        self.render()
        gc.collect()
        self.assertEqual(plt.get_fignums(), [])
        self.assertEqual(sum(isinstance(o, Figure) for o in gc.get_objects()), before)

    def test_a_coin_with_a_single_observation_is_charted(self) -> None:
        rows = daily_rows(self.pick("bitcoin", "ethereum"), 10)
        rows.append(row(self.coins["dogecoin"], NEWEST - timedelta(days=4)))
        write_history(self.csv, rows)
        report = self.render()
        self.assertEqual(report.coins, ("bitcoin", "ethereum", "dogecoin"))
        self.assertEqual(report.rows_used, 21)

    def test_a_history_of_one_snapshot_is_charted(self) -> None:
        write_history(self.csv, daily_rows(list(self.coins.values()), 1))
        report = self.render()
        self.assertEqual(report.window, (NEWEST, NEWEST))
        self.assertEqual(len(report.coins), len(self.coins))
        for path in report.paths:
            self.assertEqual(png_size(path), IMAGE_SIZE_PX)


class ScaleTest(ChartTestCase):
    def test_auto_is_log_for_bitcoin_against_dogecoin(self) -> None:
        write_history(self.csv, daily_rows(self.pick("bitcoin", "dogecoin"), 5))
        report = self.render()
        self.assertEqual((report.price_scale, report.market_cap_scale), ("log", "linear"))

    def test_auto_is_linear_for_close_values(self) -> None:
        write_history(self.csv, daily_rows(self.pick("bitcoin", "ethereum"), 5))
        report = self.plan()
        self.assertEqual((report.price_scale, report.market_cap_scale), ("linear", "linear"))

    def test_forced_scales_win(self) -> None:
        write_history(self.csv, daily_rows(self.pick("bitcoin", "dogecoin"), 5))
        self.assertEqual(self.plan(scale="linear").price_scale, "linear")
        self.assertEqual(self.plan(scale="log").market_cap_scale, "log")


class SelectionTest(ChartTestCase):
    def setUp(self) -> None:
        super().setUp()
        write_history(self.csv, daily_rows(self.pick("bitcoin", "ethereum", "shiba-inu"), 3))

    def test_coins_by_id_symbol_or_name_in_any_case(self) -> None:
        for wanted, expected in [(("BITCOIN",), ("bitcoin",)), (("Shiba INU", "eth"), ("ethereum", "shiba-inu"))]:
            with self.subTest(wanted=wanted):
                self.assertEqual(self.plan(coins=wanted).coins, expected)

    def test_a_selection_matching_nothing_lists_the_available_coins(self) -> None:
        with self.assertRaises(NothingToPlot) as caught:
            self.render(coins=("cardano",))
        self.assertEqual(
            str(caught.exception),
            "no coin matches --plot-coins cardano in eur; available: bitcoin (BTC,"
            " Bitcoin), ethereum (ETH, Ethereum), shiba-inu (SHIB, Shiba Inu)",
        )
        self.assertIsInstance(caught.exception, PipelineError)
        self.assertEqual(caught.exception.exit_code, 2)  # a usage error: --plot-coins names no coin
        self.assertFalse(self.out.exists())

    def test_days_since_and_until_choose_the_window(self) -> None:
        report = self.plan(days=2)
        self.assertEqual(report.window, (NEWEST - timedelta(days=1), NEWEST))
        self.assertEqual(report.rows_used, 6)
        report = self.plan(since=date(2023, 1, 7), until=date(2023, 1, 7))
        self.assertEqual(report.window, (NEWEST - timedelta(days=1),) * 2)
        self.assertEqual(report.rows_used, 3)

    def test_a_window_without_data_says_so(self) -> None:
        with self.assertRaises(NothingToPlot) as caught:
            self.render(since=date(2024, 1, 1), until=date(2024, 1, 31))
        self.assertEqual(
            str(caught.exception),
            "no data between 2024-01-01 and 2024-01-31 in eur for bitcoin, ethereum,"
            " shiba-inu; their history runs from 2023-01-06 to 2023-01-08",
        )


class CurrencyTest(ChartTestCase):
    def test_only_the_chosen_currency_is_charted(self) -> None:
        rows = daily_rows(self.pick("bitcoin", "ethereum"), 4, currency="eur")
        rows += daily_rows(self.pick("bitcoin", "ethereum", "tether"), 6, currency="usd")
        write_history(self.csv, rows)
        eur = self.render(vs_currency="EUR")
        self.assertEqual((eur.coins, eur.rows_used), (("bitcoin", "ethereum"), 8))
        usd = self.plan(vs_currency="usd")
        self.assertEqual((usd.coins, usd.rows_used), (("bitcoin", "ethereum", "tether"), 18))

    def test_a_currency_absent_from_the_history(self) -> None:
        write_history(self.csv, daily_rows(self.pick("bitcoin"), 2, currency="usd"))
        with self.assertRaises(NothingToPlot) as caught:
            self.render(vs_currency="gbp")
        self.assertEqual(str(caught.exception), f"no data in gbp in {self.csv}; currencies in the history: usd")


class HistoryFileTest(ChartTestCase):
    def test_no_history_yet(self) -> None:
        with self.assertRaises(NoHistory) as caught:
            self.render()
        self.assertEqual(str(caught.exception), f"no history yet at {self.csv}: run `python main.py` first")
        self.assertEqual(caught.exception.exit_code, 1)

    def test_a_header_without_rows_is_no_history(self) -> None:
        write_history(self.csv, [])
        with self.assertRaises(NoHistory):
            self.render()

    def test_damaged_lines_are_skipped_and_counted(self) -> None:
        good = daily_rows(self.pick("bitcoin", "dogecoin"), 3)
        line = ",".join(good[-1][c] if c in good[-1] else "" for c in COLUMNS)
        newest = format_timestamp(NEWEST)
        damaged = (
            line + ",extra",  # one field too many
            line.rsplit(",", 3)[0],  # fields missing
            line.replace(newest, "yesterday"),  # unreadable time
            line.replace(newest, "2023-02-30T10:00:00.000Z"),  # no such day
            # the newest dogecoin price of its day is garbage: the previous one is used instead
            line.replace(newest, format_timestamp(NEWEST + timedelta(hours=2))).replace(
                good[-1]["current_price"], "12.5x"
            ),
            "",  # a blank line is not damage
            "garbage",
        )
        write_history(self.csv, good, raw_lines=damaged)
        report = self.render()
        self.assertEqual(report.skipped_lines, 6)
        self.assertEqual(report.rows_used, 6)
        self.assertEqual(report.coins, ("bitcoin", "dogecoin"))

    def test_quotes_crlf_bom_other_timestamps_and_backfilled_rows_read_like_csv(self) -> None:
        coin = {
            "id": "odd-coin",
            "symbol": "odd",
            "name": 'Odd, "Quoted"\nCoin',
            "current_price": 2.5,
            "market_cap": 2.5e9,
        }
        rows = daily_rows([coin, self.coins["bitcoin"]], 3)
        rows.insert(0, row(self.coins["bitcoin"], NEWEST - timedelta(days=5), source="market_chart"))
        rows[1]["last_updated"] = "2023-01-06T16:49:40Z"  # no milliseconds
        rows[2]["last_updated"] = "2023-01-06 17:49:40+01:00"
        write_history(self.csv, rows, newline="\r\n")
        self.csv.write_bytes(b"\xef\xbb\xbf" + self.csv.read_bytes().rstrip(b"\r\n"))

        data = self.csv.read_bytes()
        found, damaged = csvio.observations(data[csvio.header_length(data) :])
        with open(self.csv, newline="", encoding="utf-8-sig") as fh:
            self.assertEqual(len(found), len(list(csv.DictReader(fh))))
        self.assertEqual(damaged, 0)
        report = self.render(coins=('odd, "quoted"\ncoin', "btc"))
        self.assertEqual(report.coins, ("bitcoin", "odd-coin"))
        self.assertEqual(report.rows_used, 7)
        self.assertEqual(report.window[0], NEWEST - timedelta(days=5))


class GapTest(ChartTestCase):
    """A line never joins points more than 2 days apart, and the chart says where data is missing."""

    def history(self, missing: dict[str, set[int]], days: int = 30) -> None:
        """Daily rows of bitcoin and ethereum up to NEWEST, without the days (counted back) given per coin."""
        write_history(
            self.csv,
            [
                row(c, NEWEST - timedelta(days=d), factor=1.01**-d)
                for d in range(days - 1, -1, -1)
                for c in self.pick("bitcoin", "ethereum")
                if d not in missing.get(c["id"], set())
            ],
        )

    def broken_between(self, line: Line2D) -> list[tuple[date, date]]:
        """The (last day before, first day after) of every break in a line's data."""
        x = np.asarray(line.get_xdata(), dtype=float)
        at = np.flatnonzero(np.isnan(x))
        return [(mdates.num2date(x[i - 1]).date(), mdates.num2date(x[i + 1]).date()) for i in at]

    def test_a_gap_of_more_than_two_days_breaks_the_line_and_one_missing_day_does_not(self) -> None:
        self.history({"bitcoin": {20, 19, 18, 5}})  # 3 days missing, then 1
        drawn = figures(self.csv, ChartOptions())
        day = NEWEST.date()
        for name in (PRICE_CHART, MARKET_CAP_CHART, PERFORMANCE_CHART):
            with self.subTest(chart=name):
                bitcoin = line_of(drawn[name], "bitcoin")
                self.assertEqual(self.broken_between(bitcoin), [(day - timedelta(days=21), day - timedelta(days=17))])
                self.assertEqual(self.broken_between(line_of(drawn[name], "ethereum")), [])
                # The gap is marked: a dotted connector from the point before to the point after.
                (connectors,) = [
                    c
                    for c in axes_of(drawn[name]).collections
                    if isinstance(c, LineCollection) and c.get_linestyle()[0][1]
                ]
                (segment,) = connectors.get_segments()
                self.assertEqual(
                    [mdates.num2date(x).date() for x in segment[:, 0]],
                    [day - timedelta(days=21), day - timedelta(days=17)],
                )
                labels = [t.get_text() for t in axes_of(drawn[name]).get_legend().get_texts()]
                self.assertIn("dotted: no data for over 2 days", labels)
                self.assertNotIn("no data for any coin", labels)  # ethereum has data there

    def test_days_without_any_coin_are_shaded(self) -> None:
        self.history({"bitcoin": set(range(10, 15)), "ethereum": set(range(10, 16))})
        ax = axes_of(figures(self.csv, ChartOptions())[PRICE_CHART])
        (span,) = [p for p in ax.patches if isinstance(p, Rectangle)]
        left, right = span.get_x(), span.get_x() + span.get_width()
        day = NEWEST.date()
        # From the first day without data to the day data comes back.
        self.assertEqual((left, right), (day_number(day - timedelta(days=14)), day_number(day - timedelta(days=9))))
        self.assertIn("no data for any coin", [t.get_text() for t in ax.get_legend().get_texts()])

    def test_a_legacy_row_two_years_before_the_rest_is_a_dot_not_a_line(self) -> None:
        legacy = datetime(2023, 1, 8, 16, 49, 40, tzinfo=timezone.utc)
        rows = [row(self.coins["bitcoin"], legacy, source="legacy")]
        start = datetime(2025, 12, 1, 10, tzinfo=timezone.utc)
        rows += [row(self.coins["bitcoin"], start + timedelta(days=d)) for d in range(10)]
        write_history(self.csv, rows)
        fig = figures(self.csv, ChartOptions())[PRICE_CHART]
        self.assertEqual(self.broken_between(line_of(fig, "bitcoin")), [(legacy.date(), start.date())])
        dot = line_of(fig, "bitcoin alone")
        self.assertEqual(list(dot.get_xdata()), [mdates.date2num(legacy)])
        self.assertEqual(dot.get_marker(), "o")

    def test_a_thinned_five_year_line_still_breaks_at_a_three_day_gap(self) -> None:
        # 1,826 days do not fit in the plot's pixel columns: one point per 2 days is drawn, but
        # the gap is found among the daily points.
        self.history({"bitcoin": {400, 401, 402}}, days=1826)
        fig = figures(self.csv, ChartOptions())[PRICE_CHART]
        self.assertIn("Last observation of every 2 UTC days", fig.texts[-1].get_text())  # the stamp
        ((before, after),) = self.broken_between(line_of(fig, "bitcoin"))
        day = NEWEST.date()
        self.assertLessEqual(before, day - timedelta(days=403))
        self.assertGreaterEqual(after, day - timedelta(days=399))
        self.assertEqual(self.broken_between(line_of(fig, "ethereum")), [])


class ColourTest(ChartTestCase):
    def test_a_coin_keeps_its_colour_whatever_else_is_charted(self) -> None:
        nine = [synthetic_coin(c, i) for i, c in enumerate(DEFAULT_COINS)]
        write_history(self.csv, daily_rows(nine, 3))
        colours = {}
        for selection in (DEFAULT_COINS, ("solana", "bitcoin", "dogecoin"), ("solana",)):
            drawn = figures(self.csv, ChartOptions(coins=selection))
            for _name, fig in drawn.items():
                for coin_id in selection:
                    colours.setdefault(coin_id, set()).add(line_of(fig, coin_id).get_color())
        self.assertEqual({c: len(seen) for c, seen in colours.items()}, {c: 1 for c in DEFAULT_COINS})
        self.assertEqual({c: seen.pop() for c, seen in colours.items()}, {c: coin_colour(c) for c in DEFAULT_COINS})

    def test_colours_come_from_the_id_not_from_the_process(self) -> None:
        # CRC-32 of the id, not hash(), which changes with every interpreter (PYTHONHASHSEED).
        self.assertEqual(
            (coin_colour("bitcoin"), coin_colour("ethereum"), coin_colour("solana")), ("#de8f05", "#0173b2", "#cc78bc")
        )
        self.assertEqual(len({coin_colour(c) for c in DEFAULT_COINS}), 9)  # the defaults never share one
        self.assertNotIn("#949494", {coin_colour(f"coin-{i}") for i in range(200)})  # grey means "other"

    def test_coins_sharing_a_colour_differ_by_dash_the_largest_solid(self) -> None:
        shared = [c for c in (f"coin-{i:03d}" for i in range(100)) if coin_colour(c) == coin_colour("bitcoin")][:2]
        coins = [self.coins["bitcoin"]] + [synthetic_coin(c, 0) for c in shared]
        for i, coin in enumerate(coins):
            coin["market_cap"] = 1e12 / 10**i  # bitcoin the largest
        write_history(self.csv, daily_rows(coins, 5))
        fig = figures(self.csv, ChartOptions())[PRICE_CHART]
        # (offset, on-off pattern) as set; matplotlib has no public getter for it
        styles = [line_of(fig, c["id"])._unscaled_dash_pattern for c in coins]
        self.assertEqual(styles[0], (0, None))  # solid
        self.assertEqual(len(set(styles)), 3)


class TickLabelTest(unittest.TestCase):
    """Tick labels never overlap: 9 and 100 coins, over 1 day, 30 days and 5 years, log and linear."""

    @classmethod
    def setUpClass(cls) -> None:
        tmp = tempfile.TemporaryDirectory()
        cls.addClassCleanup(tmp.cleanup)
        cls.csv = Path(tmp.name) / "crypto_data.csv"
        nine = [synthetic_coin(c, i) for i, c in enumerate(DEFAULT_COINS)]
        more = [synthetic_coin(f"coin-{i:03d}", 9 + i) for i in range(91)]
        # The labels depend on the window and the range of values, not on how many coins fill
        # five years: 91 coins over the last 60 days keep the file small and the test quick.
        write_history(cls.csv, daily_rows(nine, 1826) + daily_rows(more, 60))

    def assert_apart(self, fig: Figure, name: str) -> None:
        renderer = fig.canvas.get_renderer()
        ax = axes_of(fig)
        for axis, low, high in ((ax.xaxis, 0, 2), (ax.yaxis, 1, 3)):  # x0, x1 / y0, y1 of a Bbox
            view = sorted(axis.get_view_interval())
            boxes = sorted(
                (
                    label.get_window_extent(renderer).extents
                    for loc, label in zip(axis.get_majorticklocs(), axis.get_majorticklabels())
                    if view[0] <= loc <= view[1] and label.get_text()
                ),
                key=lambda e: e[low],
            )
            self.assertGreaterEqual(len(boxes), 2, f"{name}: fewer than two {axis.axis_name} tick labels")
            for before, after in zip(boxes, boxes[1:]):
                self.assertGreater(
                    after[low] - before[high], 2.0, f"{name}: {axis.axis_name} tick labels touch or overlap"
                )

    # Two tests (9 coins, 100 coins), so that a parallel runner can share the figures out.
    def test_labels_never_overlap_with_9_coins(self) -> None:
        self.labels_never_overlap(DEFAULT_COINS)

    @slow_part("the same windows and scales with 100 coins: 15 in the legend, the other 85 in one grey collection")
    def test_labels_never_overlap_with_100_coins(self) -> None:
        self.labels_never_overlap(())

    def labels_never_overlap(self, coins: tuple[str, ...]) -> None:
        windows = {
            "1 day": {"days": 1},
            "30 days": {"days": 30},
            # matplotlib's locator alone put "29 Nov" against "01 Dec" here (issue 12)
            "35 days to 11 Dec": {"days": 35, "until": date(2022, 12, 11)},
            "5 years": {},
        }
        for window, bounds in windows.items():
            for scale in ("log", "linear"):
                options = ChartOptions(coins=coins, scale=scale, **bounds)
                for name, fig in figures(self.csv, options).items():
                    with self.subTest(coins=len(coins) or 100, window=window, scale=scale, chart=name):
                        self.assert_apart(fig, name)


class CurrenciesTest(ChartTestCase):
    """Every currency of the history gets its charts; the first configured one keeps the plain names."""

    def test_names(self) -> None:
        self.assertEqual(chart_names("eur", "eur"), CHART_NAMES)
        self.assertEqual(
            chart_names("USD", "eur"),
            ("crypto_price_trend_usd.png", "crypto_market_cap_trend_usd.png", "crypto_performance_usd.png"),
        )
        self.assertEqual(primary_currency("usd"), "usd")
        self.assertEqual(primary_currency(("gbp", "usd")), "gbp")  # --vs-currency as a list: the first one

    def test_a_run_draws_every_currency_and_the_first_keeps_the_plain_names(self) -> None:
        write_history(
            self.csv,
            daily_rows(self.pick("bitcoin", "ethereum"), 4, currency="eur")
            + daily_rows(self.pick("bitcoin"), 6, currency="usd"),
        )
        storage = LocalStorage(self.dir)
        _, reports = charts(storage, ChartOptions(vs_currency="eur"), every_currency=True)
        self.assertEqual(
            {r.currency: [p.name for p in r.paths] for r in reports},
            {"eur": list(CHART_NAMES), "usd": list(chart_names("usd", "eur"))},
        )
        self.assertEqual(reports[1].coins, ("bitcoin",))
        # The other way round: usd plain, eur suffixed, and no stale _usd charts left behind.
        _, reports = charts(storage, ChartOptions(vs_currency="usd"), every_currency=True)
        self.assertEqual(
            {r.currency: [p.name for p in r.paths] for r in reports},
            {"usd": list(CHART_NAMES), "eur": list(chart_names("eur", "usd"))},
        )
        self.assertEqual(
            sorted(p.name for p in self.dir.glob("*.png")), sorted(CHART_NAMES + chart_names("eur", "usd"))
        )

    def test_a_currency_where_the_selection_matches_nothing_is_skipped(self) -> None:
        write_history(
            self.csv,
            daily_rows(self.pick("bitcoin", "ethereum"), 4, currency="eur")
            + daily_rows(self.pick("bitcoin"), 6, currency="usd"),
        )
        with self.assertLogs("utils.charts.render", "WARNING") as logs:
            _, reports = charts(LocalStorage(self.dir), ChartOptions(coins=("ethereum",)), every_currency=True)
        self.assertEqual([r.currency for r in reports], ["eur"])
        self.assertIn("no charts in usd: no coin matches --plot-coins ethereum", logs.output[0])


def number_or_flag(text: str) -> float | str | None:
    """What a cell says as a number: None when empty, "bad" when it is not a finite number."""
    if text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        return "bad"
    return value if math.isfinite(value) else "bad"


class ReaderMatchesCsvModuleTest(unittest.TestCase):
    """The one CSV reader (utils.history.csvio) accepts exactly the rows the csv module reads as valid history rows."""

    def reference(self, path: Path) -> list[tuple]:
        rows = []
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            next(reader)
            for cells in reader:
                if len(cells) != len(COLUMNS):
                    continue
                k = {c: i for i, c in enumerate(COLUMNS)}
                coin, currency = cells[k["coin_id"]], cells[k["vs_currency"]]
                try:
                    when = parse_timestamp(cells[k["last_updated"]])
                except ValueError:
                    continue
                if not COIN_ID_RE.match(coin) or not CURRENCY_RE.match(currency):
                    continue
                price, cap = (number_or_flag(cells[k[c]]) for c in ("current_price", "market_cap"))
                rank = cells[k["market_cap_rank"]]
                if "bad" in (price, cap) or (rank and not rank.isdigit()):
                    continue
                rows.append((coin, currency, int(when.timestamp() * 1000), price, cap))
        return rows

    def fast(self, path: Path) -> list[tuple]:
        data = path.read_bytes()
        found, _ = csvio.observations(data[csvio.header_length(data) :])
        return [(o.coin_id, o.vs_currency, o.ts_ms, o.price, o.market_cap) for o in found]

    def test_random_damaged_files(self) -> None:
        rng = random.Random(20230108)
        texts = ["", "x", "1.5", "a,b", 'q"q', "new\nline", "  ", "Bitcoin"]
        k = {c: i for i, c in enumerate(COLUMNS)}
        with tempfile.TemporaryDirectory() as tmp:
            for trial in range(60):
                buf = io.StringIO()
                writer = csv.writer(buf, lineterminator=rng.choice(["\n", "\r\n"]))
                writer.writerow(COLUMNS)
                for _ in range(rng.randint(0, 25)):
                    cells = [rng.choice(texts) for _ in COLUMNS]
                    cells[k["coin_id"]] = rng.choice(["bitcoin", " dogecoin ", "", "  ", "Bitcoin"])
                    cells[k["vs_currency"]] = rng.choice(["eur", "USD", "", "eur "])
                    cells[k["last_updated"]] = rng.choice(
                        [
                            "2023-01-08T16:49:40.132Z",
                            "2023-01-08T16:49:40Z",
                            "nope",
                            "",
                            "2023-02-30T10:00:00.000Z",
                            "2023-01-08 16:49:40+01:00",
                        ]
                    )
                    cells[k["current_price"]] = rng.choice(["1.5", "", "abc", "8.45e-06", "1,5"])
                    cut = rng.random()
                    if cut < 0.1:
                        cells.append("extra")
                    elif cut < 0.2:
                        cells = cells[: rng.randint(1, len(cells) - 1)]
                    writer.writerow(cells)
                    if rng.random() < 0.05:
                        buf.write("\n")
                    if rng.random() < 0.05:  # a quote inside a cell is a literal character
                        cells[k["name"]] = "Bit"
                        buf.write(
                            ",".join(c.replace(",", ";").replace("\n", " ").replace('"', "") for c in cells).replace(
                                "Bit", 'Bit"coin', 1
                            )
                            + "\n"
                        )
                text = buf.getvalue()
                if rng.random() < 0.3:
                    text = text.rstrip("\r\n")
                path = Path(tmp) / f"history_{trial}.csv"
                path.write_text(text, encoding="utf-8", newline="")
                with self.subTest(trial=trial):
                    self.assertEqual(self.fast(path), self.reference(path))


class IndexLabelsTest(ChartTestCase):
    def test_a_coin_up_a_hundred_million_fold_keeps_every_index_label_on_the_image(self) -> None:
        # One coin's index reaches 10,000,000,000: written out in full, its tick label ran off the left edge.
        bitcoin, ethereum = self.pick("bitcoin", "ethereum")
        rows = [row(bitcoin, NEWEST - timedelta(days=d), factor=10.0 ** (8 - d)) for d in range(8, -1, -1)]
        rows += daily_rows([ethereum], 9)
        write_history(self.csv, rows)
        fig = figures(self.csv, ChartOptions())[PERFORMANCE_CHART]
        renderer = fig.canvas.get_renderer()
        labels = [label for label in axes_of(fig).yaxis.get_majorticklabels() if label.get_text()]
        shown = [label.get_text() for label in labels if label.get_window_extent(renderer).y0 >= 0]
        for label in labels:
            self.assertGreaterEqual(label.get_window_extent(renderer).x0, 0.0, label.get_text())
        self.assertIn("10B", shown)
        self.assertIn("100", shown)
        # Its legend entry, +9,999,999,900% written out in full, ran off the image's right edge likewise.
        width = fig.get_window_extent(renderer).x1
        texts = [
            text for legend in fig.legends + [ax.get_legend() for ax in fig.axes] if legend for text in legend.texts
        ]
        self.assertTrue(any("+10B%" in text.get_text() for text in texts), [t.get_text() for t in texts])
        for text in texts:
            self.assertLessEqual(text.get_window_extent(renderer).x1, width, text.get_text())

    def test_changes_read_like_the_ticks(self) -> None:
        self.assertEqual(change_text(104.1), "+4.1%")
        self.assertEqual(change_text(76.6), "-23.4%")
        self.assertEqual(change_text(1374.0), "+1,274%")
        self.assertEqual(change_text(100.0 + 7_960_597_781_667), "+7.96T%")
        self.assertEqual(change_text(100.0 + 999_999), "+999,999%")


class MoneyFormatTest(unittest.TestCase):
    def test_amounts_read_like_a_human_writes_them(self) -> None:
        self.assertEqual(format_money(1.2e12, "eur"), "€1.2T")
        self.assertEqual(format_money(350e9, "usd"), "$350B")
        self.assertEqual(format_money(0.0012, "eur"), "€0.0012")
        self.assertEqual(format_money(8.45e-06, "gbp"), "£0.00000845")
        self.assertEqual(format_money(16951.52, "jpy", 4), "¥16.95K")
        self.assertEqual(format_money(999_999, "usd"), "$1M")
        self.assertEqual(format_money(0.5, "chf"), "0.5 CHF")


if __name__ == "__main__":
    unittest.main()
