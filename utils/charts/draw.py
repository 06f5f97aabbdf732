"""Drawing one chart with matplotlib in seaborn's theme: lines, the grey crowd, gaps, legend, axes and ticks.

Each chart is its own Figure on an Agg canvas (no pyplot, no global state); render.py saves it.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable, Sequence
from datetime import timezone

import numpy as np
from matplotlib import dates as mdates
from matplotlib import rc_context, ticker
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.backend_bases import RendererBase
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from utils.charts.data import GAP_DAYS, Coin, Series
from utils.charts.format import (
    NO_DATA_LABEL,
    ChartText,
    format_money,
    gap_label,
    index_text,
    legend_label,
    more_label,
    movers_label,
    tick_digits,
)
from utils.clock import DAY_MS

FIGURE_SIZE_INCHES = (14.0, 8.0)
DPI = 100
IMAGE_SIZE_PX = (int(FIGURE_SIZE_INCHES[0] * DPI), int(FIGURE_SIZE_INCHES[1] * DPI))
# The plot area (left, bottom, width, height) in figure fractions; the legend sits to its right.
_AXES_RECT = (0.085, 0.10, 0.655, 0.77)
# A line never needs more points than the plot area has pixels across.
MAX_POINTS_PER_LINE = int(IMAGE_SIZE_PX[0] * _AXES_RECT[2])
# With more coins than this, only the top ones by latest value get a colour and a legend entry.
LEGEND_MAX_COINS = 15
# Text is most of a chart's drawing time, and matplotlib 3.11 renders it glyph by glyph: without FreeType's
# hinting a chart draws in about three quarters of the time, and at 10-16 pt the text looks the same.
_RASTER_RC = {"text.hinting": "no_hinting"}

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


def _variants(coins: Sequence[Coin]) -> dict[str, int]:
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


def draw_chart(
    series: list[Series],
    *,
    scale: str,
    text: ChartText,
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
    with sns.axes_style("ticks"), sns.plotting_context("notebook"), rc_context(_RASTER_RC):
        fig = Figure(figsize=FIGURE_SIZE_INCHES, dpi=DPI, facecolor="white")
        FigureCanvasAgg(fig)
        ax = fig.add_axes(_AXES_RECT)
        ranked = sorted(series, key=lambda s: -float(s.values[-1]))
        highlighted = ranked[:LEGEND_MAX_COINS]
        background = ranked[LEGEND_MAX_COINS:]
        x_of = {id(s): date_numbers(s.times) for s in ranked}
        low_x, high_x = date_numbers(np.array(window_ms, dtype=np.int64))
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
            labels.append(legend_label(s.coin.label, value_label(float(s.values[-1])), mover=s.coin.mover))
        if background:
            dots = all(len(s.values) == 1 for s in background)
            handles.append(Line2D([], [], color=_BACKGROUND_LINE, linewidth=2, **(_dot_style(0) if dots else {})))
            labels.append(more_label(len(background)))
        if movers := sum(s.coin.mover for s in highlighted):
            handles.append(Line2D([], [], linestyle="none"))  # a note in the legend, no line
            labels.append(movers_label(movers))
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


def rasterize(fig: Figure) -> tuple[memoryview, tuple[int, int]]:
    """The chart's pixels: its RGBA buffer and (width, height), drawn once (the layout is fixed: no tight bbox pass)."""
    with rc_context(_RASTER_RC):  # as when draw_chart measured the labels
        fig.canvas.draw()
    canvas = fig.canvas
    return canvas.buffer_rgba(), canvas.get_width_height()


def _draw_background(ax: Axes, background: list[Series], x_of: dict[int, np.ndarray]) -> None:
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
    ax: Axes, highlighted: list[Series], x_of: dict[int, np.ndarray], variants: dict[str, int], min_run: float
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
    ax: Axes, highlighted: list[Series], ranked: list[Series], x_of: dict[int, np.ndarray], bucket_days: int
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
        labels.append(gap_label(GAP_DAYS))
    # Shaded where none of the coins drawn has a point for longer than a gap (or a thinned step).
    days = np.unique(np.concatenate([s.times // DAY_MS for s in ranked])) if ranked else np.array([])
    wide = np.flatnonzero(np.diff(days) > max(GAP_DAYS, bucket_days))
    for k in wide:
        # From the day after the last point to the day of the next one: the days without any data.
        start, end = date_numbers(np.array([(days[k] + 1) * DAY_MS, days[k + 1] * DAY_MS]))
        ax.axvspan(start, end, color=_NO_DATA_SPAN, zorder=0.7, linewidth=0)  # over the grid: nothing to read there
    if len(wide):
        handles.append(Patch(color=_NO_DATA_SPAN))
        labels.append(NO_DATA_LABEL)
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


def date_numbers(times_ms: np.ndarray) -> np.ndarray:
    """Matplotlib date numbers (days since its epoch) of UTC millisecond times."""
    return mdates.date2num(times_ms.astype("datetime64[ms]"))


class MoneyFormatter(ticker.Formatter):
    """Tick labels in currency units with just enough digits to state each tick exactly."""

    def __init__(self, currency: str) -> None:
        self.currency = currency
        self.digits = 2

    def set_locs(self, locs: Sequence[float]) -> None:
        super().set_locs(locs)
        self.digits = tick_digits(locs)

    def __call__(self, x: float, pos: int | None = None) -> str:
        return format_money(x, self.currency, self.digits)


class IndexFormatter(ticker.Formatter):
    """Plain index numbers (97.5, 100, 1,250,000): no offset, no scientific notation."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return index_text(x)
