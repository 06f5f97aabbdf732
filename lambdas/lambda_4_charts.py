"""Charts stage for AWS Lambda: draw the trend charts from the history in the bucket and store them beside it."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def handler(event: dict[str, Any] | None, context: object) -> dict[str, Any]:
    """AWS Lambda: render the three PNGs from the CSV in the bucket and upload them."""
    from utils.aws import lambda_settings, setup_lambda_logging
    from utils.storage import storage_for
    from utils.visualization import chart_options, render_from_index

    setup_lambda_logging()
    settings = lambda_settings(event)
    storage = storage_for(settings)
    _, out_dir = storage.local_csv()
    with storage.index() as index:
        report = render_from_index(index, out_dir, chart_options(settings), source=storage.csv_display)
    charts = storage.publish_charts(report.paths)
    log.info("charts: %d coins -> %s", len(report.coins), ", ".join(charts))
    return {**(event or {}), "charts": list(charts)}
