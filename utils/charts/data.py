"""The points a chart draws: which coins, their daily series in the window, gaps, thinning, the large-history pick.

The history can hold ten million rows, so the charts never read the CSV: they take the daily
points the index keeps (the last observation of each coin on each UTC day), thinned to one per
pixel column when the window is long. No matplotlib here: a `plot` that has nothing to draw
says so before the drawing libraries load.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from utils.charts.format import picked_text
from utils.clock import DAY_MS, midnight_ms
from utils.errors import PipelineError
from utils.history.index import DailyPoints, HistoryIndex
from utils.history.schema import DRAWABLE_RANGE, drawable

logger = logging.getLogger(__name__)

LOG_SPAN_THRESHOLD = 100.0  # "auto" picks a log axis beyond two orders of magnitude
# A line never spans more than this many days without data: one missing day is joined, two are a gap.
GAP_DAYS = 2
SCALES = ("auto", "log", "linear")  # as utils.options.SCALES; the charts import no command-line module

LARGE_HISTORY_COINS = 50  # past this many coins in a currency, charts without --plot-coins show the leaders
CHART_TOP = 10  # ... the largest coins by the newest market cap
CHART_MOVERS = 5  # ... and the day's biggest movers outside them


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
class Coin:
    index: int  # into History.coin_ids
    coin_id: str
    name: str
    symbol: str
    latest_cap: float
    mover: bool = False  # one of the day's biggest movers a large history's charts add to its leaders

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
class Series:
    coin: Coin
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


def _coins_in(daily: DailyPoints, points: Points) -> list[Coin]:
    """Every coin of the currency, largest latest market cap first, with its newest name and symbol."""
    latest_cap: dict[int, float] = {}
    known = np.isfinite(points.cap)
    for coin, cap in zip(points.coin[known].tolist(), points.cap[known].tolist()):
        latest_cap[coin] = cap  # points are in time order per coin: the last one wins
    result = [
        Coin(
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


def _match_coins(wanted: Sequence[str], available: list[Coin], currency: str) -> list[Coin]:
    """Coins named by id, symbol or name, any case; an id match wins over a symbol match."""
    tokens = [t.strip() for t in wanted if t.strip()]
    if not tokens:
        return available
    chosen: dict[int, Coin] = {}
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


def _series(points: Points, coins: list[Coin], rows: np.ndarray, values: np.ndarray, bucket_ms: int) -> list[Series]:
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
        # Rows are in coin then time order, so the points of one coin in one bucket are neighbours: keep the last.
        key = coin_of_row.astype(np.int64) << 32
        key |= (times // bucket_ms) - (times.min() // bucket_ms)
        kept = kept[np.append(key[1:] != key[:-1], True)]
    result = []
    for coin in coins:
        lo, hi = np.searchsorted(coin_of_row[kept], [coin.index, coin.index + 1])
        if hi > lo:
            mine = kept[lo:hi]
            breaks = np.zeros(hi - lo, dtype=bool)
            breaks[1:] = np.diff(gaps_so_far[mine]) > 0
            result.append(Series(coin, times[mine], values[rows[mine]], breaks))
    return result


def _tracked_only(available: list[Coin], options: ChartOptions) -> list[Coin]:
    """The coins the last run tracked, when known and when any of them is in the history; else every coin."""
    if options.coins or options.tracked is None:
        return available
    mine = [c for c in available if c.coin_id in options.tracked]
    return mine or available


def _select(
    points: Points, available: list[Coin], options: ChartOptions, currency: str
) -> tuple[list[Coin], np.ndarray]:
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
        since = options.since or utc(max(start_ms, int(times.min()))).date()
        until = options.until or utc(end_ms).date()
        raise NothingToPlot(
            f"no data between {since} and {until} in {currency} for"
            f" {', '.join(c.coin_id for c in coins)}; their history runs from"
            f" {utc(int(times.min())):%Y-%m-%d} to {utc(int(times.max())):%Y-%m-%d}"
        )
    return coins, in_window


def under_two_days(series: list[Series]) -> bool:
    """Whether no coin has points on two different UTC days (a chart of dots in one column)."""
    return all(int(s.times.max() // DAY_MS) == int(s.times.min() // DAY_MS) for s in series)


def choose_scale(requested: str, series: list[Series]) -> str:
    if requested in ("log", "linear"):
        return requested
    if not series:
        return "linear"
    low = min(float(s.values.min()) for s in series)
    high = max(float(s.values.max()) for s in series)
    return "log" if high / low > LOG_SPAN_THRESHOLD else "linear"


def utc(ms: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(milliseconds=int(ms))


def epoch_ms(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(milliseconds=1)


@dataclass(frozen=True)
class ChartData:
    """What the three charts of one currency show: the series of each, their scales, and the words around them."""

    currency: str
    coins: list[Coin]  # charted, largest latest market cap first
    window: tuple[datetime, datetime]  # oldest and newest observation charted, UTC
    bucket_ms: int  # one point per coin per bucket: a day, or more days when the window is long
    rows_used: int
    prices: list[Series]
    caps: list[Series]
    performance: list[Series]  # prices as an index, 100 at each coin's first point in the window
    price_scale: str
    cap_scale: str
    performance_scale: str
    picked: str  # "the 10 largest of 17,000 coins ..." when a large history is cut to its leaders, else ""
    short: bool  # no coin has points on two UTC days yet
    untracked: int  # coins of the history the last run did not track, left out


def chart_data(index: HistoryIndex, options: ChartOptions, *, max_points: int, source: str) -> ChartData:
    """The series the charts of options.vs_currency draw, at most max_points per line, from the index's daily points.

    Raises NoHistory when there is nothing to chart yet, NothingToPlot when the currency, coins
    or window select no points.
    """
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
    picked, mover_ids = "", set()
    if not options.coins and held > LARGE_HISTORY_COINS:  # a chart of 17,000 lines says nothing: the leaders
        top, movers = index.leaders(currency, CHART_TOP, CHART_MOVERS)
        daily = index.daily_points(currency, coins=top + movers)
        picked, mover_ids = picked_text(len(top), held, len(movers)), set(movers)
        logger.info("charts of %s: %s", currency, picked)
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
    every = [replace(c, mover=True) if c.coin_id in mover_ids else c for c in _coins_in(daily, points)]
    coins, rows = _select(points, _tracked_only(every, options), options, currency)
    untracked = len(every) - len(_tracked_only(every, options)) if not options.coins else 0
    first, last = int(points.time_ms[rows].min()), int(points.time_ms[rows].max())
    span_days = last // DAY_MS - first // DAY_MS + 1
    bucket_ms = DAY_MS * max(1, math.ceil(span_days / max_points))
    prices = _series(points, coins, rows, points.price, bucket_ms)
    caps = _series(points, coins, rows, points.cap, bucket_ms)
    if not prices and not caps:
        raise NothingToPlot(f"no prices or market caps in {currency} in {source} for this selection")
    charted = [c for c in coins if any(s.coin.index == c.index for s in prices + caps)]
    performance = [Series(s.coin, s.times, s.values / s.values[0] * 100.0, s.breaks) for s in prices]
    return ChartData(
        currency=currency,
        coins=charted,
        window=(utc(first), utc(last)),
        bucket_ms=bucket_ms,
        rows_used=int(len(rows)),
        prices=prices,
        caps=caps,
        performance=performance,
        price_scale=choose_scale(options.scale, prices),
        cap_scale=choose_scale(options.scale, caps),
        # Linear, so relative moves compare directly; but one coin up 10,000-fold would flatten
        # every other line, so "auto" turns to log beyond two orders of magnitude here as well.
        performance_scale=choose_scale("linear" if options.scale == "linear" else "auto", performance),
        picked=picked,
        short=under_two_days(prices + caps),
        untracked=untracked,
    )
