"""Charts stage for AWS Lambda: draw the trend charts from the history in the bucket and store them beside it."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from utils.redact import redacted_errors

if TYPE_CHECKING:
    from utils.charts.data import ChartOptions, ChartReport
    from utils.history.locations import Storage

log = logging.getLogger(__name__)


def charts(
    storage: Storage, options: ChartOptions, *, every_currency: bool = False
) -> tuple[tuple[str, ...], tuple[ChartReport, ...]]:
    """Draw the price, market-cap and performance charts from the history's daily points: where they went, and what.

    One currency (options.vs_currency), or with every_currency that one under the plain names and
    each other currency of the history under names ending in _<cur>.
    """
    from utils.charts.render import render_every_currency, render_from_index  # matplotlib only when drawing
    from utils.history.layout import suffixed_chart_names

    storage.preflight((options.vs_currency,))  # the one file policy: no chart written through a link
    _, out_dir = storage.local_csv()
    with storage.index() as index:
        if every_currency:
            reports = render_every_currency(index, out_dir, options, source=storage.csv_display)
        else:
            reports = (render_from_index(index, out_dir, options, source=storage.csv_display),)
    published = storage.publish_charts(tuple(path for report in reports for path in report.paths))
    # The currency drawn under the plain names: its _<cur> charts of a run where it was not first are stale
    # (render_from_index deletes them in out_dir; an S3 location deletes its objects too).
    primary = options.vs_currency if every_currency else options.primary
    storage.remove_charts(
        tuple(
            name for r in reports if r.currency == (primary or r.currency) for name in suffixed_chart_names(r.currency)
        )
    )
    return published, reports


@redacted_errors
def handler(event: dict[str, Any] | None, context: object) -> dict[str, Any]:
    """AWS Lambda: render the three PNGs of each currency from the CSV in the bucket and upload them."""
    # Lambda handler: the AWS helpers load in the function, never for the command line
    from lambdas.wiring import chart_options, storage_for
    from utils.aws import setup_lambda_logging
    from utils.settings import lambda_settings

    setup_lambda_logging()
    settings = lambda_settings(event)
    drawn, _ = charts(storage_for(settings), chart_options(settings), every_currency=True)
    log.info("charts: %s", ", ".join(drawn))
    return {**(event or {}), "charts": list(drawn)}
