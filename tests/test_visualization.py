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
from matplotlib.figure import Figure

from utils.errors import PipelineError
from utils import csvio
from utils.schema import COIN_ID_RE, COLUMNS, CURRENCY_RE, format_timestamp, parse_timestamp
from utils.visualization import (IMAGE_SIZE_PX, MARKET_CAP_CHART, PERFORMANCE_CHART,
                                 PRICE_CHART, ChartOptions, NoHistory, NothingToPlot,
                                 format_money, render_charts)

FIXTURE = Path(__file__).parent / "fixtures" / "coins_markets_2023-01-08_real_10coins.json"
NEWEST = datetime(2023, 1, 8, 16, 49, 40, 132000, tzinfo=timezone.utc)
NOW = NEWEST + timedelta(hours=1)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def real_coins() -> dict[str, dict]:
    """The ten coins of a real /coins/markets page (2023-01-08), by id."""
    return {c["id"]: c for c in json.loads(FIXTURE.read_text())}


def row(coin: dict, when: datetime, *, currency: str = "eur", factor: float = 1.0,
        source: str = "coins_markets") -> dict[str, str]:
    """One CSV row of a coin at a moment, its price and cap scaled by factor."""
    cells = {"current_price": repr(coin["current_price"] * factor),
             "market_cap": repr(float(coin["market_cap"]) * factor),
             "last_updated": format_timestamp(when), "fetched_at": format_timestamp(when),
             "coin_id": coin["id"], "vs_currency": currency, "source": source}
    if source != "market_chart":  # backfilled rows carry only price, cap and volume
        cells.update(name=coin["name"], symbol=coin["symbol"], market_cap_rank="1")
    return cells


def daily_rows(coins: list[dict], days: int, **kwargs: object) -> list[dict[str, str]]:
    """One row per coin per day up to NEWEST, prices drifting 1 % a day."""
    return [row(c, NEWEST - timedelta(days=d), factor=1.01 ** -d, **kwargs)
            for d in range(days - 1, -1, -1) for c in coins]


def write_history(path: Path, rows: list[dict[str, str]], *, raw_lines: tuple[str, ...] = (),
                  newline: str = "\n") -> Path:
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


class WrittenFilesTest(ChartTestCase):
    def test_three_complete_pngs_of_the_expected_size_and_nothing_else(self) -> None:
        write_history(self.csv, daily_rows(self.pick("bitcoin", "ethereum", "dogecoin"), 30))
        report = self.render()
        self.assertEqual([p.name for p in report.paths],
                         [PRICE_CHART, MARKET_CAP_CHART, PERFORMANCE_CHART])
        for path in report.paths:
            self.assertEqual(path.parent, self.out)
            self.assertEqual(png_size(path), IMAGE_SIZE_PX)
        self.assertEqual(sorted(p.name for p in self.out.iterdir()),
                         sorted([PRICE_CHART, MARKET_CAP_CHART, PERFORMANCE_CHART]))
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
        report = self.render()
        self.assertEqual((report.price_scale, report.market_cap_scale), ("linear", "linear"))

    def test_forced_scales_win(self) -> None:
        write_history(self.csv, daily_rows(self.pick("bitcoin", "dogecoin"), 5))
        self.assertEqual(self.render(scale="linear").price_scale, "linear")
        self.assertEqual(self.render(scale="log").market_cap_scale, "log")


class SelectionTest(ChartTestCase):
    def setUp(self) -> None:
        super().setUp()
        write_history(self.csv, daily_rows(self.pick("bitcoin", "ethereum", "shiba-inu"), 3))

    def test_coins_by_id_symbol_or_name_in_any_case(self) -> None:
        for wanted, expected in [(("BITCOIN",), ("bitcoin",)),
                                 (("Shiba INU", "eth"), ("ethereum", "shiba-inu"))]:
            with self.subTest(wanted=wanted):
                report = render_charts(self.csv, self.out, ChartOptions(coins=wanted), now=NOW)
                self.assertEqual(report.coins, expected)

    def test_a_selection_matching_nothing_lists_the_available_coins(self) -> None:
        with self.assertRaises(NothingToPlot) as caught:
            self.render(coins=("cardano",))
        self.assertEqual(str(caught.exception),
                         "no coin matches --plot-coins cardano in eur; available: bitcoin (BTC,"
                         " Bitcoin), ethereum (ETH, Ethereum), shiba-inu (SHIB, Shiba Inu)")
        self.assertIsInstance(caught.exception, PipelineError)
        self.assertEqual(caught.exception.exit_code, 2)  # a usage error: --plot-coins names no coin
        self.assertFalse(self.out.exists())

    def test_days_since_and_until_choose_the_window(self) -> None:
        report = self.render(days=2)
        self.assertEqual(report.window, (NEWEST - timedelta(days=1), NEWEST))
        self.assertEqual(report.rows_used, 6)
        report = self.render(since=date(2023, 1, 7), until=date(2023, 1, 7))
        self.assertEqual(report.window, (NEWEST - timedelta(days=1),) * 2)
        self.assertEqual(report.rows_used, 3)

    def test_a_window_without_data_says_so(self) -> None:
        with self.assertRaises(NothingToPlot) as caught:
            self.render(since=date(2024, 1, 1), until=date(2024, 1, 31))
        self.assertEqual(str(caught.exception),
                         "no data between 2024-01-01 and 2024-01-31 in eur for bitcoin, ethereum,"
                         " shiba-inu; their history runs from 2023-01-06 to 2023-01-08")


class CurrencyTest(ChartTestCase):
    def test_only_the_chosen_currency_is_charted(self) -> None:
        rows = daily_rows(self.pick("bitcoin", "ethereum"), 4, currency="eur")
        rows += daily_rows(self.pick("bitcoin", "ethereum", "tether"), 6, currency="usd")
        write_history(self.csv, rows)
        eur = self.render(vs_currency="EUR")
        self.assertEqual((eur.coins, eur.rows_used), (("bitcoin", "ethereum"), 8))
        usd = self.render(vs_currency="usd")
        self.assertEqual((usd.coins, usd.rows_used), (("bitcoin", "ethereum", "tether"), 18))

    def test_a_currency_absent_from_the_history(self) -> None:
        write_history(self.csv, daily_rows(self.pick("bitcoin"), 2, currency="usd"))
        with self.assertRaises(NothingToPlot) as caught:
            self.render(vs_currency="gbp")
        self.assertEqual(str(caught.exception),
                         f"no data in gbp in {self.csv}; currencies in the history: usd")


class HistoryFileTest(ChartTestCase):
    def test_no_history_yet(self) -> None:
        with self.assertRaises(NoHistory) as caught:
            self.render()
        self.assertEqual(str(caught.exception),
                         f"no history yet at {self.csv}: run `python main.py` first")
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
            line.replace(newest, format_timestamp(NEWEST + timedelta(hours=2)))
                .replace(good[-1]["current_price"], "12.5x"),
            "",  # a blank line is not damage
            "garbage",
        )
        write_history(self.csv, good, raw_lines=damaged)
        report = self.render()
        self.assertEqual(report.skipped_lines, 6)
        self.assertEqual(report.rows_used, 6)
        self.assertEqual(report.coins, ("bitcoin", "dogecoin"))

    def test_quotes_crlf_bom_other_timestamps_and_backfilled_rows_read_like_csv(self) -> None:
        coin = {"id": "odd-coin", "symbol": "odd", "name": 'Odd, "Quoted"\nCoin',
                "current_price": 2.5, "market_cap": 2.5e9}
        rows = daily_rows([coin, self.coins["bitcoin"]], 3)
        rows.insert(0, row(self.coins["bitcoin"], NEWEST - timedelta(days=5),
                           source="market_chart"))
        rows[1]["last_updated"] = "2023-01-06T16:49:40Z"  # no milliseconds
        rows[2]["last_updated"] = "2023-01-06 17:49:40+01:00"
        write_history(self.csv, rows, newline="\r\n")
        self.csv.write_bytes(b"\xef\xbb\xbf" + self.csv.read_bytes().rstrip(b"\r\n"))

        data = self.csv.read_bytes()
        found, damaged = csvio.observations(data[csvio.header_length(data):])
        with open(self.csv, newline="", encoding="utf-8-sig") as fh:
            self.assertEqual(len(found), len(list(csv.DictReader(fh))))
        self.assertEqual(damaged, 0)
        report = self.render(coins=('odd, "quoted"\ncoin', "btc"))
        self.assertEqual(report.coins, ("bitcoin", "odd-coin"))
        self.assertEqual(report.rows_used, 7)
        self.assertEqual(report.window[0], NEWEST - timedelta(days=5))


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
    """The one CSV reader (utils.csvio) accepts exactly the rows the csv module reads as valid history rows."""

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
        found, _ = csvio.observations(data[csvio.header_length(data):])
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
                    cells[k["last_updated"]] = rng.choice([
                        "2023-01-08T16:49:40.132Z", "2023-01-08T16:49:40Z", "nope", "",
                        "2023-02-30T10:00:00.000Z", "2023-01-08 16:49:40+01:00"])
                    cells[k["current_price"]] = rng.choice(["1.5", "", "abc", "8.45e-06", "1,5"])
                    cut = rng.random()
                    if cut < 0.1:
                        cells.append("extra")
                    elif cut < 0.2:
                        cells = cells[:rng.randint(1, len(cells) - 1)]
                    writer.writerow(cells)
                    if rng.random() < 0.05:
                        buf.write("\n")
                    if rng.random() < 0.05:  # a quote inside a cell is a literal character
                        cells[k["name"]] = "Bit"
                        buf.write(",".join(c.replace(",", ";").replace("\n", " ").replace('"', "")
                                           for c in cells).replace("Bit", 'Bit"coin', 1) + "\n")
                text = buf.getvalue()
                if rng.random() < 0.3:
                    text = text.rstrip("\r\n")
                path = Path(tmp) / f"history_{trial}.csv"
                path.write_text(text, encoding="utf-8", newline="")
                with self.subTest(trial=trial):
                    self.assertEqual(self.fast(path), self.reference(path))


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
