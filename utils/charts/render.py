"""Charts of the history: price, market-cap and performance trends as PNG files.

The history can hold a million rows, so the charts never read the CSV: they draw the daily points
the index keeps (the last observation of each coin on each UTC day), thinned to one per pixel
column when the window is long.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import tempfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import dates as mdates
from matplotlib import ticker
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.backend_bases import RendererBase
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from PIL import Image

from utils.clock import DAY_MS, midnight_ms
from utils.errors import PipelineError
from utils.history import csvio
from utils.history.files import refuse_read_only_file, refuse_unsafe
from utils.history.index import DailyPoints, HistoryIndex
from utils.history.layout import (
    DataLayout,
    chart_names,
    suffixed_chart_names,
)
from utils.history.schema import DRAWABLE_RANGE, drawable

logger = logging.getLogger(__name__)


FIGURE_SIZE_INCHES = (14.0, 8.0)
DPI = 100
IMAGE_SIZE_PX = (int(FIGURE_SIZE_INCHES[0] * DPI), int(FIGURE_SIZE_INCHES[1] * DPI))
# The plot area (left, bottom, width, height) in figure fractions; the legend sits to its right.
_AXES_RECT = (0.085, 0.10, 0.655, 0.77)
# A line never needs more points than the plot area has pixels across.
MAX_POINTS_PER_LINE = int(IMAGE_SIZE_PX[0] * _AXES_RECT[2])
# With more coins than this, only the top ones by latest value get a colour and a legend entry.
LEGEND_MAX_COINS = 15
LOG_SPAN_THRESHOLD = 100.0  # "auto" picks a log axis beyond two orders of magnitude
# A line never spans more than this many days without data: one missing day is joined, two are a gap.
GAP_DAYS = 2

CURRENCY_SYMBOLS = {"eur": "€", "usd": "$", "gbp": "£", "jpy": "¥"}
SCALES = ("auto", "log", "linear")  # as utils.options.SCALES; the charts import no command-line module

_NEEDED = ("coin_id", "vs_currency", "last_updated", "current_price", "market_cap")
_LABEL_COLUMNS = ("name", "symbol")
_CHUNK_BYTES = 1 << 21
_SCAN_THREADS = min(2, os.cpu_count() or 1)
_MAX_KEY_BYTES = 160  # longest "coin_id,vs_currency" accepted
_MAX_NUMBER_BYTES = 40
_PAD_BYTES = 256  # zero bytes after the data, so fixed-width gathers never run off the end
_MISSING_TIME = np.iinfo(np.int64).min


class NoHistory(PipelineError):
    """There is no history to chart yet."""

    exit_code = 1


class NothingToPlot(PipelineError):
    """The history exists but the currency, coins or window asked for select no data."""

    exit_code = 1


class NoCoinMatches(NothingToPlot):
    """--plot-coins names no coin of the history: a usage error, so exit 2."""

    exit_code = 2


@dataclass(frozen=True)
class ChartOptions:
    """What to chart: currency, coins (ids, symbols or names, any case), window and y scale."""

    vs_currency: str = "eur"
    coins: tuple[str, ...] = ()
    since: date | None = None
    until: date | None = None
    days: int | None = None
    scale: str = "auto"
    # The first configured currency: its charts keep the plain file names (None: vs_currency's do).
    primary: str | None = None
    # The coins the most recent run or daemon tracked: without --plot-coins, the charts draw these (None: all),
    # so coins of an earlier one-off --top stay in the history without crowding the charts.
    tracked: frozenset[str] | None = None


@dataclass(frozen=True)
class ChartReport:
    """What render_charts wrote and from which data."""

    currency: str
    paths: tuple[Path, ...]  # the three PNGs written
    coins: tuple[str, ...]  # coin ids charted, largest latest market cap first
    rows_used: int  # rows of the currency, coins and window (before one point per day)
    # Damaged lines skipped: a wrong number of fields, or an unreadable time, id or currency,
    # anywhere in the file; an unreadable price or market cap where a chart needed it (numbers
    # are parsed only for the observations drawn, so one in a discarded row goes unnoticed).
    skipped_lines: int
    price_scale: str  # "log" or "linear"
    market_cap_scale: str
    window: tuple[datetime, datetime]  # oldest and newest observation charted, UTC


# --------------------------------------------------------------------------------------------
# Reading the history: the index's daily points (one per coin per UTC day), never the whole CSV


@dataclass
class Points:
    """Daily points of one currency as arrays: which coin, when, price and market cap (NaN when unknown)."""

    coin: np.ndarray  # int32 index into coins
    time_ms: np.ndarray  # int64
    price: np.ndarray  # float64
    cap: np.ndarray  # float64


def _drop_undrawable(points: Points) -> int:
    """Blank the values schema's number rule refuses (stored by hand or by an older version); returns how many."""
    count = 0
    for values in (points.price, points.cap):
        with np.errstate(invalid="ignore"):
            bad = np.isfinite(values) & ~drawable(values)
        values[bad] = math.nan
        count += int(np.count_nonzero(bad))
    return count


def _points(daily: DailyPoints) -> Points:
    def floats(values: list) -> np.ndarray:
        return np.array([math.nan if v is None else v for v in values], dtype=np.float64)

    return Points(
        np.array(daily.series, dtype=np.int32),
        np.array(daily.ts_ms, dtype=np.int64),
        floats(daily.price),
        floats(daily.cap),
    )


@dataclass(frozen=True)
class _Coin:
    index: int  # into History.coin_ids
    coin_id: str
    name: str
    symbol: str
    latest_cap: float

    @property
    def label(self) -> str:
        name = self.name if len(self.name) <= 24 else self.name[:23] + "…"
        if self.symbol:
            return f"{name} ({self.symbol.upper()})"
        return name

    def describe(self) -> str:
        parts = [p for p in (self.symbol.upper(), self.name) if p]
        return f"{self.coin_id} ({', '.join(parts)})" if parts else self.coin_id


@dataclass
class _Series:
    coin: _Coin
    times: np.ndarray  # int64 ms
    values: np.ndarray
    breaks: np.ndarray  # bool: True where more than GAP_DAYS days without data precede the point

    def segments(self) -> list[slice]:
        """The runs of points a line may join: the series cut at every break."""
        starts = [0, *np.flatnonzero(self.breaks).tolist(), len(self.times)]
        return [slice(a, b) for a, b in zip(starts, starts[1:]) if b > a]

    def gaps(self) -> list[tuple[int, int]]:
        """(index before, index after) of every break, for the 'no data' connectors."""
        return [(int(i) - 1, int(i)) for i in np.flatnonzero(self.breaks)]


def _coins_in(daily: DailyPoints, points: Points) -> list[_Coin]:
    """Every coin of the currency, largest latest market cap first, with its newest name and symbol."""
    latest_cap: dict[int, float] = {}
    known = np.isfinite(points.cap)
    for coin, cap in zip(points.coin[known].tolist(), points.cap[known].tolist()):
        latest_cap[coin] = cap  # points are in time order per coin: the last one wins
    result = [
        _Coin(
            index=i,
            coin_id=coin_id,
            name=daily.name[i].strip(),
            symbol=daily.symbol[i].strip(),
            latest_cap=latest_cap.get(i, -1.0),
        )
        for i, coin_id in enumerate(daily.coin_id)
    ]
    result.sort(key=lambda c: (-c.latest_cap, c.coin_id))
    return result


def _match_coins(wanted: Sequence[str], available: list[_Coin], currency: str) -> list[_Coin]:
    """Coins named by id, symbol or name, any case; an id match wins over a symbol match."""
    tokens = [t.strip() for t in wanted if t.strip()]
    if not tokens:
        return available
    chosen: dict[int, _Coin] = {}
    unmatched = []
    for token in tokens:
        key = token.lower()
        hits = [c for c in available if c.coin_id.lower() == key]
        hits = hits or [c for c in available if key in (c.symbol.lower(), c.name.lower())]
        if not hits:
            unmatched.append(token)
        for coin in hits:
            chosen[coin.index] = coin
    if not chosen:
        shown = ", ".join(c.describe() for c in available[:25])
        more = f", and {len(available) - 25} more" if len(available) > 25 else ""
        raise NoCoinMatches(f"no coin matches --plot-coins {','.join(tokens)} in {currency}; available: {shown}{more}")
    if unmatched:
        logger.warning("no coin matches %s in %s; charting the others", ", ".join(unmatched), currency)
    return [c for c in available if c.index in chosen]


def _named_ids(index: HistoryIndex, currency: str, wanted: Sequence[str]) -> list[str]:
    """The coin ids --plot-coins names, by _match_coins' rule (an id match wins over a symbol or name match)."""
    labels = [(s.coin_id, s.coin_id.lower(), s.symbol.lower(), s.name.lower()) for s in index.series(currency)]
    named: set[str] = set()
    for token in (t.strip().lower() for t in wanted if t.strip()):
        hits = [coin for coin, lower, _, _ in labels if lower == token]
        named.update(hits or [coin for coin, _, symbol, name in labels if token in (symbol, name)])
    return sorted(named)


def _window(options: ChartOptions, times: np.ndarray) -> tuple[int, int]:
    """The [start, end] of the window in ms, inclusive."""
    end = int(times.max())
    if options.until is not None:
        end = midnight_ms(options.until + timedelta(days=1)) - 1
    start = np.iinfo(np.int64).min
    if options.since is not None:
        start = midnight_ms(options.since)
    if options.days is not None:
        first_day = end // DAY_MS - (max(options.days, 1) - 1)
        start = max(start, first_day * DAY_MS)
    return int(start), end


def _series(points: Points, coins: list[_Coin], rows: np.ndarray, values: np.ndarray, bucket_ms: int) -> list[_Series]:
    """One series per coin, in time order: its last point per bucket with a positive value (0 means unknown).

    Gaps are found at full daily resolution, before thinning, so a gap of 3 days inside a
    5-day bucket still breaks the line.
    """
    rows = rows[np.isfinite(values[rows]) & (values[rows] > 0)]
    if len(rows) == 0:
        return []
    times = points.time_ms[rows]
    coin_of_row = points.coin[rows]
    days = times // DAY_MS
    # A gap precedes a point when the previous point of the same coin is more than GAP_DAYS days earlier.
    gap_before = np.zeros(len(rows), dtype=bool)
    gap_before[1:] = (coin_of_row[1:] == coin_of_row[:-1]) & (np.diff(days) > GAP_DAYS)
    gaps_so_far = np.cumsum(gap_before)
    kept = np.arange(len(rows))
    if bucket_ms != DAY_MS:
        key = coin_of_row.astype(np.int64) << 32
        key |= (times // bucket_ms) - (times.min() // bucket_ms)
        kept = kept[~pd.Series(key).duplicated(keep="last").to_numpy()]
    result = []
    for coin in coins:
        lo, hi = np.searchsorted(coin_of_row[kept], [coin.index, coin.index + 1])
        if hi > lo:
            mine = kept[lo:hi]
            breaks = np.zeros(hi - lo, dtype=bool)
            breaks[1:] = np.diff(gaps_so_far[mine]) > 0
            result.append(_Series(coin, times[mine], values[rows[mine]], breaks))
    return result


# --------------------------------------------------------------------------------------------
# Drawing


def format_money(value: float, currency: str, digits: int = 3) -> str:
    """A human amount: €1.2T, $350B, €16.95K, €0.0012; unknown currencies as a suffix code."""
    return _with_currency(_human_number(abs(value), digits), value < 0, currency)


def _with_currency(number: str, negative: bool, currency: str) -> str:
    symbol = CURRENCY_SYMBOLS.get(currency.lower())
    sign = "-" if negative else ""
    if symbol:
        return f"{sign}{symbol}{number}"
    return f"{sign}{number} {currency.upper()}"


def _price_text(value: float, currency: str) -> str:
    """A latest price for the legend: €16,951 between a thousand and a million, else €0.07204."""
    if 1e3 <= value < 1e6:
        return _with_currency(f"{value:,.0f}", False, currency)
    return format_money(value, currency, 4)


def _human_number(value: float, digits: int) -> str:
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    rounded = float(f"{value:.{digits}g}")
    for unit, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if rounded >= unit:
            return _significant(rounded / unit, digits) + suffix
    if rounded >= 1e-6:
        return _significant(rounded, digits)
    mantissa, exponent = f"{rounded:.{digits - 1}e}".split("e")
    if "." in mantissa:
        mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def _significant(value: float, digits: int) -> str:
    """value (> 0) with that many significant digits, plain notation, no trailing zeros."""
    exponent = math.floor(math.log10(value))
    decimals = max(digits - 1 - exponent, 0)
    text = f"{value:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


class _MoneyFormatter(ticker.Formatter):
    """Tick labels in currency units with just enough digits to state each tick exactly."""

    def __init__(self, currency: str) -> None:
        self.currency = currency
        self.digits = 2

    def set_locs(self, locs: Sequence[float]) -> None:
        super().set_locs(locs)
        shown = [float(v) for v in locs if v != 0]
        for digits in range(2, 13):
            # 125B at 2 digits reads "120B": more digits until every label is the tick's value.
            if all(math.isclose(float(f"{v:.{digits}g}"), v, rel_tol=1e-9) for v in shown):
                break
        self.digits = digits

    def __call__(self, x: float, pos: int | None = None) -> str:
        return format_money(x, self.currency, self.digits)


class _IndexFormatter(ticker.Formatter):
    """Plain index numbers (97.5, 100, 1,250,000): no offset, no scientific notation."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return f"{x:,.6f}".rstrip("0").rstrip(".")


def _change_text(index: float) -> str:
    """The change since the first point of an index based at 100: +4.1%, -23.4%, +1,274%."""
    change = index - 100.0
    return f"{change:+,.0f}%" if abs(change) >= 1000 else f"{change:+.1f}%"


_BACKGROUND_LINE = "#c8c8c8"
_NO_DATA_LINE = "#666666"
_NO_DATA_SPAN = "#efefef"
# Seaborn's colour-blind-safe palette without its grey: grey here means "other coins" and "no data".
_PALETTE_GREY = "#949494"
# Coins sharing a colour in one chart: the largest solid, the others dashed (matplotlib's on-off
# lengths), never dotted: dotted means "no data".
_DASHES: tuple[tuple[float, ...], ...] = ((), (7.0, 2.5), (7.0, 2.5, 2.0, 2.5), (14.0, 3.0))
_MARKERS = ("o", "s", "^", "D")
# Prefixed to a coin id before hashing: chosen so that the nine default coins get nine different
# colours (bitcoin orange, ethereum blue, BNB yellow). Changing it recolours every coin.
_COLOUR_SALT = "85038:"
_LINE_WIDTH = 1.8
_MIN_RUN = 0.006  # of the window: a run of data narrower than this (about 5 px) gets a dot


@functools.cache
def _palette() -> tuple[str, ...]:
    import seaborn as sns  # only when drawing

    return tuple(c for c in sns.color_palette("colorblind").as_hex() if c != _PALETTE_GREY)


def coin_colour(coin_id: str) -> str:
    """A coin's colour in every chart, whatever else is drawn: the CRC-32 of its id picks it from the palette."""
    palette = _palette()
    return palette[zlib.crc32(f"{_COLOUR_SALT}{coin_id}".encode("utf-8")) % len(palette)]


def _variants(coins: Sequence[_Coin]) -> dict[str, int]:
    """0 for every coin, but where coins of one chart share a colour, 1, 2, ... for all but the largest.

    Ordered by latest market cap, as the three charts of a run are, so a coin keeps its dash (or
    its marker) in all three.
    """
    by_colour: dict[str, list[str]] = {}
    for coin in sorted(coins, key=lambda c: (-c.latest_cap, c.coin_id)):
        by_colour.setdefault(coin_colour(coin.coin_id), []).append(coin.coin_id)
    return {coin_id: i for ids in by_colour.values() for i, coin_id in enumerate(ids)}


def _line_style(variant: int) -> dict[str, object]:
    dashes = _DASHES[variant % len(_DASHES)]
    return {"dashes": dashes or (None, None)}


def _dot_style(variant: int) -> dict[str, object]:
    """A lone point's marker: dots of one colour differ by shape, as lines do by dash."""
    return {"marker": _MARKERS[variant % len(_MARKERS)], "linestyle": "none"}


@dataclass(frozen=True)
class _ChartText:
    title: str
    subtitle: str
    stamp: str


def _choose_scale(requested: str, series: list[_Series]) -> str:
    if requested in ("log", "linear"):
        return requested
    if not series:
        return "linear"
    low = min(float(s.values.min()) for s in series)
    high = max(float(s.values.max()) for s in series)
    return "log" if high / low > LOG_SPAN_THRESHOLD else "linear"


def _draw(
    series: list[_Series],
    *,
    scale: str,
    text: _ChartText,
    y_formatter: ticker.Formatter,
    value_label: Callable[[float], str],
    empty_note: str,
    window_ms: tuple[int, int],
    bucket_days: int,
    reference: float | None = None,
    short_note: str | None = None,
) -> Figure:
    """One chart; series are ordered by latest value, the top ones coloured and in the legend."""
    import seaborn as sns  # only when drawing

    # seaborn's theme for this figure only: rcParams are read as the artists are made.
    with sns.axes_style("ticks"), sns.plotting_context("notebook"):
        fig = Figure(figsize=FIGURE_SIZE_INCHES, dpi=DPI, facecolor="white")
        FigureCanvasAgg(fig)
        ax = fig.add_axes(_AXES_RECT)
        ranked = sorted(series, key=lambda s: -float(s.values[-1]))
        highlighted = ranked[:LEGEND_MAX_COINS]
        background = ranked[LEGEND_MAX_COINS:]
        x_of = {id(s): _date_numbers(s.times) for s in ranked}
        low_x, high_x = _date_numbers(np.array(window_ms, dtype=np.int64))
        if background:
            _draw_background(ax, background, x_of)
        variants = _variants([s.coin for s in highlighted])
        if highlighted:
            _draw_lines(ax, highlighted, x_of, variants, min_run=(high_x - low_x) * _MIN_RUN)
        handles: list[Artist] = []
        labels: list[str] = []
        for s in highlighted:
            variant = variants[s.coin.coin_id]
            # A coin drawn as a dot only has a dot in the legend too.
            style = _dot_style(variant) if len(s.values) == 1 else _line_style(variant)
            handles.append(
                Line2D([], [], color=coin_colour(s.coin.coin_id), linewidth=_LINE_WIDTH, markersize=6.5, **style)
            )
            labels.append(f"{s.coin.label}  {value_label(float(s.values[-1]))}")
        if background:
            dots = all(len(s.values) == 1 for s in background)
            handles.append(Line2D([], [], color=_BACKGROUND_LINE, linewidth=2, **(_dot_style(0) if dots else {})))
            labels.append(f"+{len(background)} more (grey)")
        handles_no_data, labels_no_data = _mark_missing(ax, highlighted, ranked, x_of, bucket_days)
        handles += handles_no_data
        labels += labels_no_data
        if reference is not None and series:
            ax.axhline(reference, color="#555555", linewidth=0.9, linestyle=":", zorder=2)
        if not series:
            ax.text(
                0.5, 0.5, empty_note, transform=ax.transAxes, ha="center", va="center", fontsize=13, color="#666666"
            )
        elif short_note:  # a column of dots says nothing by itself: say why, and what fills it
            ax.text(
                0.5,
                0.97,
                short_note,
                transform=ax.transAxes,
                ha="center",
                va="top",
                fontsize=12,
                color="#333333",
                gid="short history",
                parse_math=False,
                bbox={"boxstyle": "round,pad=0.5", "facecolor": "#fff8dc", "edgecolor": "#d9c27a"},
            )
        ax.autoscale_view()

        if scale == "log" and series:
            ax.set_yscale("log")
            low = min(float(s.values.min()) for s in series)
            high = max(float(s.values.max()) for s in series)
            if high / low > 1e4:  # decades only; minor ticks there are noise, and slow to draw
                ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0,), numticks=12))
                ax.yaxis.set_minor_locator(ticker.NullLocator())
            else:
                ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
                ax.yaxis.set_minor_locator(ticker.LogLocator(base=10, subs=(3.0, 4.0, 6.0, 7.0, 8.0, 9.0)))
            ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        ax.yaxis.set_major_formatter(y_formatter)

        # The window, not matplotlib's default of several years around a lone date.
        margin = max((high_x - low_x) * 0.02, 0.5 if high_x - low_x < 1 else 0.0)
        ax.set_xlim(low_x - margin, high_x + margin)
        ax.set_xlabel("Date (UTC)")
        # Title and subtitle above the plot, aligned with it; the subtitle says what the axis
        # shows, which a rotated y label squeezed beside long tick labels would not.
        fig.text(_AXES_RECT[0], 0.955, text.title, ha="left", va="top", fontsize=16, fontweight="bold")
        fig.text(_AXES_RECT[0], 0.912, text.subtitle, ha="left", va="top", fontsize=11, color="#444444")
        ax.grid(True, which="major", color="#e6e6e6", linewidth=0.8)
        ax.grid(True, which="minor", axis="y", color="#f3f3f3", linewidth=0.5)
        ax.set_axisbelow(True)
        sns.despine(ax=ax)
        if handles:
            legend = ax.legend(
                handles,
                labels,
                loc="upper left",
                bbox_to_anchor=(1.02, 1.0),
                borderaxespad=0.0,
                frameon=False,
                fontsize=10,
                handlelength=2.6,
            )
            for label in legend.get_texts():
                label.set_parse_math(False)  # a coin named "$WIF" is not TeX
        fig.text(0.99, 0.015, text.stamp, ha="right", va="bottom", fontsize=9, color="#666666")
        _fit_date_ticks(fig, ax)
    return fig


def _draw_background(ax: Axes, background: list[_Series], x_of: dict[int, np.ndarray]) -> None:
    """Coins beyond the legend in grey: one collection instead of dozens of lines, much faster to draw."""
    segments, lone_x, lone_y = [], [], []
    for s in background:
        x = x_of[id(s)]
        for part in s.segments():
            if part.stop - part.start > 1:
                segments.append(np.column_stack((x[part], s.values[part])))
            else:
                lone_x.append(x[part.start])
                lone_y.append(s.values[part.start])
    ax.add_collection(LineCollection(segments, colors=_BACKGROUND_LINE, linewidths=0.8, zorder=1))
    if lone_x:
        ax.plot(lone_x, lone_y, linestyle="none", marker="o", markersize=4, color=_BACKGROUND_LINE, zorder=1)


def _draw_lines(
    ax: Axes, highlighted: list[_Series], x_of: dict[int, np.ndarray], variants: dict[str, int], min_run: float
) -> None:
    """The coins of the legend: one line each, NaN where it breaks, so nothing joins across a gap.

    Not seaborn's lineplot: with estimator=None it draws the same lines, but it keeps the last
    figure it drew on (and its 4.5 MB canvas) alive after the figure is closed.
    """
    for s in highlighted:
        x, colour, variant = x_of[id(s)], coin_colour(s.coin.coin_id), variants[s.coin.coin_id]
        at_break = np.flatnonzero(s.breaks)
        ax.plot(
            np.insert(x, at_break, np.nan),
            np.insert(s.values, at_break, np.nan),
            color=colour,
            linewidth=_LINE_WIDTH,
            zorder=3,
            gid=s.coin.coin_id,
            **_line_style(variant),
        )
        # A point alone between gaps, or a run of days too short to see (3 days after a gap of
        # years): a dot at its end, where the line alone would be invisible.
        lone = [part.stop - 1 for part in s.segments() if x[part.stop - 1] - x[part.start] < min_run]
        if lone:
            ax.plot(
                x[lone],
                s.values[lone],
                color=colour,
                markersize=6.5,
                zorder=3,
                gid=f"{s.coin.coin_id} alone",
                **_dot_style(variant),
            )


def _mark_missing(
    ax: Axes, highlighted: list[_Series], ranked: list[_Series], x_of: dict[int, np.ndarray], bucket_days: int
) -> tuple[list[Artist], list[str]]:
    """A dotted connector across each gap of a coin in the legend, a shaded span where no coin has data.

    The connector takes the coin's colour, thin and dotted, so the eye follows a coin across its
    gap; grey coins get none: dozens of dotted lines would hide the data. Returns the legend entries.
    """
    connectors, colours = [], []
    for s in highlighted:
        x = x_of[id(s)]
        for i, j in s.gaps():
            connectors.append(((x[i], s.values[i]), (x[j], s.values[j])))
            colours.append(coin_colour(s.coin.coin_id))
    handles: list[Artist] = []
    labels: list[str] = []
    if connectors:
        ax.add_collection(
            LineCollection(connectors, colors=colours, linewidths=1.1, linestyles=(0, (1.0, 2.0)), zorder=2)
        )
        handles.append(Line2D([], [], color=_NO_DATA_LINE, linewidth=1.1, dashes=(1.0, 2.0)))
        labels.append(f"dotted: no data for over {GAP_DAYS} days")
    # Shaded where none of the coins drawn has a point for longer than a gap (or a thinned step).
    days = np.unique(np.concatenate([s.times // DAY_MS for s in ranked])) if ranked else np.array([])
    wide = np.flatnonzero(np.diff(days) > max(GAP_DAYS, bucket_days))
    for k in wide:
        # From the day after the last point to the day of the next one: the days without any data.
        start, end = _date_numbers(np.array([(days[k] + 1) * DAY_MS, days[k + 1] * DAY_MS]))
        ax.axvspan(start, end, color=_NO_DATA_SPAN, zorder=0.7, linewidth=0)  # over the grid: nothing to read there
    if len(wide):
        handles.append(Patch(color=_NO_DATA_SPAN))
        labels.append("no data for any coin")
    return handles, labels


def _fit_date_ticks(fig: Figure, ax: Axes) -> None:
    """Date ticks as many as fit: fewer until no two labels touch (the locator knows nothing of their width)."""
    renderer = fig.canvas.get_renderer()
    for maxticks in (10, 8, 7, 6, 5, 4, 3, 2):
        locator = mdates.AutoDateLocator(tz=timezone.utc, minticks=min(3, maxticks), maxticks=maxticks)
        ax.xaxis.set_major_locator(locator)
        # Days as "13 Dec" rather than a bare "13"; the title carries the years of the window.
        ax.xaxis.set_major_formatter(
            mdates.ConciseDateFormatter(
                locator,
                tz=timezone.utc,
                show_offset=False,
                formats=["%Y", "%b %Y", "%d %b", "%H:%M", "%H:%M", "%S.%f"],
                zero_formats=["", "%b %Y", "%d %b", "%d %b", "%H:%M", "%H:%M"],
            )
        )
        if not overlapping_labels(ax.xaxis, renderer):
            return


def overlapping_labels(axis: Axis, renderer: RendererBase, gap_px: float = 8.0) -> list[tuple[str, str]]:
    """Pairs of neighbouring tick labels of a horizontal axis closer than gap_px (after layout)."""
    locations = axis.get_majorticklocs()
    axis.get_majorticklabels()  # places and formats the labels of the current locations
    low, high = sorted(axis.get_view_interval())
    boxes = sorted(
        (
            (tick.label1.get_window_extent(renderer), tick.label1.get_text())
            for location, tick in zip(locations, axis.get_major_ticks(len(locations)))
            if low <= location <= high and tick.label1.get_visible() and tick.label1.get_text()
        ),
        key=lambda box: box[0].x0,
    )
    return [(a_text, b_text) for (a, a_text), (b, b_text) in zip(boxes, boxes[1:]) if b.x0 - a.x1 < gap_px]


def _date_numbers(times_ms: np.ndarray) -> np.ndarray:
    """Matplotlib date numbers (days since its epoch) of UTC millisecond times."""
    return mdates.date2num(times_ms.astype("datetime64[ms]"))


def _save_to_temp(fig: Figure, final: Path) -> Path:
    """Write the PNG beside its final name; the caller renames it into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=".png.tmp", dir=final.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            canvas = fig.canvas
            canvas.draw()
            image = Image.frombuffer(
                "RGBA", canvas.get_width_height(), canvas.buffer_rgba(), "raw", "RGBA", 0, 1
            ).convert("RGB")
            # A chart has few colours: a 256-colour PNG looks the same, is four times smaller
            # and encodes in half the time of matplotlib's RGBA one.
            image.quantize(256, method=Image.Quantize.FASTOCTREE).save(fh, format="png")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        fig.clear()  # release the artists now, not at the next garbage collection
    return Path(tmp)


def _day_text(moment: datetime) -> str:
    return f"{moment.day} {moment:%b %Y}"


def _window_text(start: datetime, end: datetime) -> str:
    """8 Jan 2023, 2–8 Jan 2023, 10 Dec 2022 – 8 Jan 2023, always marked UTC."""
    if start.date() == end.date():
        return f"{_day_text(end)} (UTC)"
    if (start.year, start.month) == (end.year, end.month):
        return f"{start.day}–{_day_text(end)} (UTC)"
    if start.year == end.year:
        return f"{start.day} {start:%b} – {_day_text(end)} (UTC)"
    return f"{_day_text(start)} – {_day_text(end)} (UTC)"


def _utc(ms: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(milliseconds=int(ms))


def render_charts(csv_path: Path, out_dir: Path, options: ChartOptions, *, now: datetime | None = None) -> ChartReport:
    """Draw the charts of the history at csv_path, read through its index (brought up to the CSV first)."""
    from utils.history.csv_store import HistoryStore  # the store brings sqlite and filelock: only when drawing

    csv_path = Path(csv_path)
    if csvio.header_kind(csv_path) in ("missing", "empty"):
        raise NoHistory(f"no history yet at {csv_path}: run `python main.py` first")
    with HistoryStore(DataLayout(csv_path.parent, csv_path.name)).index() as index:
        return render_from_index(index, out_dir, options, now=now, source=str(csv_path))


def render_from_index(
    index: HistoryIndex,
    out_dir: Path,
    options: ChartOptions,
    *,
    now: datetime | None = None,
    source: str = "the history",
) -> ChartReport:
    """Draw the price, market-cap and performance charts from the index's daily points into out_dir.

    Raises NoHistory when there is nothing to chart yet, NothingToPlot when the currency, coins
    or window select no points.
    """
    out_dir = Path(out_dir)
    drawings, report = chart_drawings(index, options, now=now, source=source)
    paths = _write_atomically(out_dir, drawings)
    if report.currency == (options.primary or report.currency):
        # Charts of this currency from a run where it was not the first configured one would be stale.
        for name in suffixed_chart_names(report.currency):
            stale = out_dir / name
            if not stale.is_symlink() and not stale.is_dir():  # a link or folder there is the user's: left alone
                stale.unlink(missing_ok=True)
    if index.damaged:
        logger.warning("skipped %s damaged lines of %s", index.damaged, source)
    logger.debug(
        "charts: %s coins, %s daily points, %s to %s -> %s",
        len(report.coins),
        report.rows_used,
        *(f"{w:%Y-%m-%dT%H:%M:%SZ}" for w in report.window),
        out_dir,
    )
    return replace(report, paths=paths)


def chart_drawings(
    index: HistoryIndex, options: ChartOptions, *, now: datetime | None = None, source: str = "the history"
) -> tuple[list[tuple[str, Callable[[], Figure]]], ChartReport]:
    """The three charts as (file name, function drawing its Figure), and the report (without paths) of what they show."""
    if options.scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, not {options.scale!r}")
    currency = options.vs_currency.strip().lower()
    currencies = index.currencies()
    if not currencies:
        detail = f" ({index.damaged} damaged lines skipped)" if index.damaged else ""
        raise NoHistory(f"no history yet at {source}: run `python main.py` first{detail}")
    if currency not in currencies:
        raise NothingToPlot(f"no data in {currency} in {source}; currencies in the history: {', '.join(currencies)}")
    held = index.coin_count(currency)
    picked = ""
    if not options.coins and held > LARGE_HISTORY_COINS:  # a chart of 17,000 lines says nothing: the leaders
        top, movers = index.leaders(currency, CHART_TOP, CHART_MOVERS)
        daily = index.daily_points(currency, coins=top + movers)
        picked = f"; the {len(top)} largest of {held:,} coins by market cap" + (
            f" and the day's {len(movers)} biggest movers" if movers else ""
        )
        logger.info("charts of %s: %s", currency, picked[2:])
    elif options.coins and (named := _named_ids(index, currency, options.coins)):
        daily = index.daily_points(currency, coins=named)  # --plot-coins: read those coins' days alone
    else:
        daily = index.daily_points(currency)
    points = _points(daily)
    left_out = _drop_undrawable(points)
    if left_out:
        logger.warning(
            "left out %s prices or market caps of %s outside what a chart can draw (%s)",
            left_out,
            source,
            DRAWABLE_RANGE,
        )
    every = _coins_in(daily, points)
    coins, rows = _select(points, _tracked_only(every, options), options, currency)
    untracked = len(every) - len(_tracked_only(every, options)) if not options.coins else 0
    first, last = int(points.time_ms[rows].min()), int(points.time_ms[rows].max())
    span_days = last // DAY_MS - first // DAY_MS + 1
    bucket_ms = DAY_MS * max(1, math.ceil(span_days / MAX_POINTS_PER_LINE))
    prices_by_coin = _series(points, coins, rows, points.price, bucket_ms)
    caps_by_coin = _series(points, coins, rows, points.cap, bucket_ms)
    if not prices_by_coin and not caps_by_coin:
        raise NothingToPlot(f"no prices or market caps in {currency} in {source} for this selection")
    charted = [c for c in coins if any(s.coin.index == c.index for s in prices_by_coin + caps_by_coin)]
    window = (_utc(first), _utc(last))
    charts = _Charts(
        currency=currency,
        window=window,
        coins=charted,
        bucket_ms=bucket_ms,
        now=(now or datetime.now(timezone.utc)).astimezone(timezone.utc),
        short_note=SHORT_HISTORY_NOTE if _under_two_days(prices_by_coin + caps_by_coin) else None,
        untracked=untracked,
    )
    price_scale = _choose_scale(options.scale, prices_by_coin)
    cap_scale = _choose_scale(options.scale, caps_by_coin)
    performance = [_Series(s.coin, s.times, s.values / s.values[0] * 100.0, s.breaks) for s in prices_by_coin]
    # Linear, so relative moves compare directly; but one coin up 10,000-fold would flatten
    # every other line, so "auto" turns to log beyond two orders of magnitude here as well.
    performance_scale = _choose_scale("linear" if options.scale == "linear" else "auto", performance)
    price_name, cap_name, performance_name = chart_names(currency, options.primary or currency)
    drawings = [
        (
            price_name,
            lambda: charts.draw(
                prices_by_coin,
                price_scale,
                title="Price",
                what=f"Price per coin in {charts.code}{picked}",
                empty_note="No prices in this window",
                y_formatter=_MoneyFormatter(currency),
                value_label=lambda v: _price_text(v, currency),
            ),
        ),
        (
            cap_name,
            lambda: charts.draw(
                caps_by_coin,
                cap_scale,
                title="Market capitalisation",
                what=f"Market capitalisation in {charts.code}{picked}",
                empty_note="No market caps in this window",
                y_formatter=_MoneyFormatter(currency),
                value_label=lambda v: format_money(v, currency, 3),
            ),
        ),
        (
            performance_name,
            lambda: charts.draw(
                performance,
                performance_scale,
                title="Performance",
                what="Price index: each coin = 100 at its first point in the window" + picked,
                empty_note="No prices in this window",
                y_formatter=_IndexFormatter(),
                value_label=_change_text,
                reference=100.0,
            ),
        ),
    ]
    report = ChartReport(
        currency=currency,
        paths=(),
        coins=tuple(c.coin_id for c in charted),
        rows_used=int(len(rows)),
        skipped_lines=index.damaged,
        price_scale=price_scale,
        market_cap_scale=cap_scale,
        window=window,
    )
    return drawings, report


LARGE_HISTORY_COINS = 50  # past this many coins in a currency, charts without --plot-coins show the leaders
CHART_TOP = 10  # ... the largest coins by the newest market cap
CHART_MOVERS = 5  # ... and the day's biggest movers outside them

SHORT_HISTORY_NOTE = (
    "Fewer than two days of data for every coin: the lines grow day by day.\n"
    "`python main.py backfill --days 30` fills the last 30 days now."
)


def _under_two_days(series: list[_Series]) -> bool:
    """Whether no coin has points on two different UTC days (a chart of dots in one column)."""
    return all(int(s.times.max() // DAY_MS) == int(s.times.min() // DAY_MS) for s in series)


def render_every_currency(
    index: HistoryIndex,
    out_dir: Path,
    options: ChartOptions,
    *,
    now: datetime | None = None,
    source: str = "the history",
) -> tuple[ChartReport, ...]:
    """Draw options.vs_currency's charts, then those of every other currency in the history; options.primary's
    (by default options.vs_currency's) keep the plain names, every other currency's end in _<cur>.

    The other currencies get the same coins and window; one where they select nothing is skipped
    with a warning, since the run asked for the first currency, not for them.
    """
    primary = replace(options, primary=options.primary or options.vs_currency)
    reports = [render_from_index(index, out_dir, primary, now=now, source=source)]
    for currency in index.currencies():
        if currency == reports[0].currency:
            continue
        try:
            reports.append(
                render_from_index(index, out_dir, replace(primary, vs_currency=currency), now=now, source=source)
            )
        except NothingToPlot as exc:
            logger.warning("no charts in %s: %s", currency, exc)
    return tuple(reports)


def _tracked_only(available: list[_Coin], options: ChartOptions) -> list[_Coin]:
    """The coins the last run tracked, when known and when any of them is in the history; else every coin."""
    if options.coins or options.tracked is None:
        return available
    mine = [c for c in available if c.coin_id in options.tracked]
    return mine or available


def _select(
    points: Points, available: list[_Coin], options: ChartOptions, currency: str
) -> tuple[list[_Coin], np.ndarray]:
    """The coins asked for and their points in the window, in coin then time order (never empty)."""
    coins = _match_coins(options.coins, available, currency)
    # Indexed by coin number in the points, which `available` (the tracked coins) may not all cover.
    size = max([len(available), *(c.index + 1 for c in available), int(points.coin.max(initial=-1)) + 1])
    selected = np.zeros(size, dtype=bool)
    selected[[c.index for c in coins]] = True
    rows = np.flatnonzero(selected[points.coin])
    if len(rows) == 0:
        raise NothingToPlot(f"no data in {currency} for {', '.join(c.coin_id for c in coins)}")
    times = points.time_ms[rows]
    start_ms, end_ms = _window(options, times)
    in_window = rows[(times >= start_ms) & (times <= end_ms)]
    if len(in_window) == 0:
        since = options.since or _utc(max(start_ms, int(times.min()))).date()
        until = options.until or _utc(end_ms).date()
        raise NothingToPlot(
            f"no data between {since} and {until} in {currency} for"
            f" {', '.join(c.coin_id for c in coins)}; their history runs from"
            f" {_utc(int(times.min())):%Y-%m-%d} to {_utc(int(times.max())):%Y-%m-%d}"
        )
    return coins, in_window


@dataclass(frozen=True)
class _Charts:
    """What the three charts share: currency, window, coins and the wording around them."""

    currency: str
    window: tuple[datetime, datetime]
    coins: list[_Coin]
    bucket_ms: int
    now: datetime
    short_note: str | None = None  # said in every chart when no coin has two days yet
    untracked: int = 0  # coins of the history the last run did not track, left out

    @property
    def code(self) -> str:
        return self.currency.upper()

    def draw(
        self,
        series: list[_Series],
        scale: str,
        *,
        title: str,
        what: str,
        empty_note: str,
        y_formatter: ticker.Formatter,
        value_label: Callable[[float], str],
        reference: float | None = None,
    ) -> Figure:
        newest = self.window[1]
        stamp = f"Newest data: {newest:%Y-%m-%d %H:%M} UTC · Data: CoinGecko"
        if self.now - newest > timedelta(days=2):
            stamp = f"{stamp} · {(self.now - newest).days} days old when drawn"
        days = self.bucket_ms // DAY_MS
        per = "last observation of each UTC day" if days == 1 else f"last observation of every {days} UTC days"
        count = f"{len(self.coins)} coin{'' if len(self.coins) == 1 else 's'}"
        if self.untracked:
            count += f" tracked now ({self.untracked} more in the history: --plot-coins draws them)"
        log_note = ", log scale" if scale == "log" else ""
        text = _ChartText(
            title=f"{title} in {self.code} · {_window_text(*self.window)}",
            subtitle=f"{what}{log_note} · {count} · {per}",
            stamp=stamp,
        )
        window_ms = (_epoch_ms(self.window[0]), _epoch_ms(self.window[1]))
        return _draw(
            series,
            scale=scale,
            text=text,
            y_formatter=y_formatter,
            value_label=value_label,
            empty_note=empty_note,
            window_ms=window_ms,
            bucket_days=days,
            reference=reference,
            short_note=self.short_note,
        )


def _epoch_ms(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(milliseconds=1)


def _write_atomically(out_dir: Path, drawings: list[tuple[str, Callable[[], Figure]]]) -> tuple[Path, ...]:
    """Save every chart under a temporary name, then rename them all into place.

    A reader never sees half a PNG, and a failure while drawing leaves the previous charts.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[tuple[Path, Path]] = []
    try:
        for name, draw in drawings:
            final = out_dir / name
            refuse_read_only_file(refuse_unsafe(final, "chart"), final, "chart")  # the one policy, before drawing
            written.append((_save_to_temp(draw(), final), final))
        for tmp, final in written:
            refuse_read_only_file(refuse_unsafe(final, "chart"), final, "chart")
            os.replace(tmp, final)
    finally:
        for tmp, _ in written:
            tmp.unlink(missing_ok=True)
    return tuple(final for _, final in written)
