"""Charts of the history: price, market-cap and performance trends as PNG files, written by the file policy.

The public entry points. data.py picks the points (the index's daily points, never the whole
history), format.py words them, draw.py draws each chart; here they become three PNGs that
replace the previous ones atomically.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

from matplotlib import ticker
from matplotlib.figure import Figure
from PIL import Image

from utils.charts import draw
from utils.charts.data import (
    ChartData,
    ChartOptions,
    ChartReport,
    NoHistory,
    NothingToPlot,
    Series,
    chart_data,
    epoch_ms,
)
from utils.charts.format import SHORT_HISTORY_NOTE, change_text, chart_text, format_money, price_text
from utils.clock import DAY_MS
from utils.history import csvio
from utils.history.files import refuse_read_only_file, refuse_unsafe
from utils.history.index import HistoryIndex
from utils.history.layout import DataLayout, chart_names, suffixed_chart_names

logger = logging.getLogger(__name__)


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
    data = chart_data(index, options, max_points=draw.MAX_POINTS_PER_LINE, source=source)
    when = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    currency, code = data.currency, data.currency.upper()

    price_name, cap_name, performance_name = chart_names(currency, options.primary or currency)
    drawings: list[tuple[str, Callable[[], Figure]]] = [
        (
            price_name,
            partial(
                _draw,
                data,
                when,
                data.prices,
                data.price_scale,
                title="Price",
                what=f"Price per coin in {code}",
                empty_note="No prices in this window",
                y_formatter=partial(draw.MoneyFormatter, currency),
                value_label=lambda v: price_text(v, currency),
            ),
        ),
        (
            cap_name,
            partial(
                _draw,
                data,
                when,
                data.caps,
                data.cap_scale,
                title="Market capitalisation",
                what=f"Each coin's price × circulating supply, in {code}",
                empty_note="No market caps in this window",
                y_formatter=partial(draw.MoneyFormatter, currency),
                value_label=lambda v: format_money(v, currency, 3),
            ),
        ),
        (
            performance_name,
            partial(
                _draw,
                data,
                when,
                data.performance,
                data.performance_scale,
                title="Performance",
                what="Price index, 100 at each coin's first point in the window",
                empty_note="No prices in this window",
                y_formatter=draw.IndexFormatter,
                value_label=change_text,
                reference=100.0,
            ),
        ),
    ]
    report = ChartReport(
        currency=currency,
        paths=(),
        coins=tuple(c.coin_id for c in data.coins),
        rows_used=data.rows_used,
        skipped_lines=index.damaged,
        price_scale=data.price_scale,
        market_cap_scale=data.cap_scale,
        window=data.window,
    )
    return drawings, report


def _draw(
    data: ChartData,
    now: datetime,
    series: list[Series],
    scale: str,
    *,
    title: str,
    what: str,
    empty_note: str,
    y_formatter: Callable[[], ticker.Formatter],  # a new one per Figure: an axis owns its formatter
    value_label: Callable[[float], str],
    reference: float | None = None,
) -> Figure:
    """One chart of data: its words from format.py, its lines from draw.py."""
    bucket_days = data.bucket_ms // DAY_MS
    text = chart_text(
        title=title,
        what=what,
        currency=data.currency,
        window=data.window,
        coins=len(data.coins),
        untracked=data.untracked,
        bucket_days=bucket_days,
        scale=scale,
        now=now,
        picked=data.picked,
    )
    return draw.draw_chart(
        series,
        scale=scale,
        text=text,
        y_formatter=y_formatter(),
        value_label=value_label,
        empty_note=empty_note,
        window_ms=(epoch_ms(data.window[0]), epoch_ms(data.window[1])),
        bucket_days=bucket_days,
        reference=reference,
        short_note=SHORT_HISTORY_NOTE if data.short else None,
    )


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


def _save_to_temp(fig: Figure, final: Path) -> Path:
    """Write the PNG beside its final name; the caller renames it into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=".png.tmp", dir=final.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            pixels, size = draw.rasterize(fig)
            image = Image.frombuffer("RGBA", size, pixels, "raw", "RGBA", 0, 1).convert("RGB")
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
