"""`python main.py plot`: draw the charts of the first --vs-currency from the history."""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from flows.views import view_options
from flows.wiring import Console
from lambdas.wiring import storage_for
from utils.errors import EXIT_OK
from utils.history.layout import display_path
from utils.settings import Settings
from utils.words import count

log = logging.getLogger("pipeline")


@contextmanager
def cycle_collector_off() -> Iterator[None]:
    """Python's cyclic garbage collector paused for one short drawing command, then as it was.

    Importing pandas, matplotlib and seaborn and drawing three charts makes a few hundred thousand
    objects that live until the process ends; the collector's passes over them cost about 0.15 s of
    a plot's CPU and free nothing (peak RSS is the same: each figure is cleared once saved).
    """
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def plot_command(settings: Settings, console: Console) -> int:
    """Draw the price, market-cap and performance charts; print where each went."""
    with cycle_collector_off():
        return _plot(settings, console)


def _plot(settings: Settings, console: Console) -> int:
    from lambdas.lambda_4_charts import charts  # start-up time: matplotlib loads only when charts are drawn
    from utils.charts.data import NoHistory

    if settings.data_url is None and not settings.data_dir.exists():
        raise NoHistory(
            f"no history at {display_path(settings.data_dir)}: the folder does not exist; check "
            f"--data-dir, or start a history there with `{settings.run_hint}`"
        )
    storage = storage_for(settings, create=False)
    if settings.data_url is None and not storage.has_history():
        raise NoHistory(f"no history yet at {display_path(storage.csv_display)}: run `{settings.run_hint}` first")
    # The currency's own file names (the last run's first currency keeps the plain ones), the coins tracked now.
    published, (report,) = charts(storage, view_options(settings))
    for where in published:
        console.out(display_path(where))
    log.info(
        "plot ok: %s, %s, %s scale, %s skipped",
        count(len(report.coins), "coin"),
        count(report.rows_used, "row"),
        report.price_scale,
        count(report.skipped_lines, "damaged line"),
    )
    return EXIT_OK
