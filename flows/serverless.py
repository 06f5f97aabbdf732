"""The Lambda side of a run after the load: the views of the history (every currency's charts, the report).

template.yaml's Charts function runs `views_handler`. It lives here, above the stages, because it does
what a command-line run does after its load (flows.views: draw_charts, then the report), so both draw
the same files from the same history, local or on S3. A view never fails the run that stored the
data: a failure is returned, and the state machine's Catch lets the execution succeed.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

from flows.views import draw_charts, write_report
from lambdas.wiring import storage_for
from utils.redact import redacted_errors
from utils.words import count

log = logging.getLogger(__name__)


def run_outcome(event: dict[str, Any], finished_at: datetime) -> dict[str, Any]:
    """The report's "last run" card from the load's answer."""
    failed = [f"{vs} failed: {why}" for vs, why in event.get("failed", [])]
    parts = [
        count(int(event.get("appended", 0)), "row") + " appended",
        count(int(event.get("skipped_duplicates", 0)), "duplicate") + " skipped",
        f"{len(event.get('rejected', []))} rejected",
        *failed,
    ]
    if event.get("missing"):
        parts.append(f"{len(event['missing'])} missing")
    result = str(event.get("result", "ok"))
    return {
        "result": result,
        "summary": f"run {result}: " + ", ".join(parts),
        "exit_code": 0 if result == "ok" else 3,
        "trigger": "schedule",
        "finished_at": finished_at,
    }


@redacted_errors
def views_handler(event: dict[str, Any] | None, context: object) -> dict[str, Any]:
    """AWS Lambda: draw every currency's charts from the history and write report.html beside it."""
    # Lambda handler: the AWS helpers load in the function, never for the command line
    from utils.aws import setup_lambda_logging
    from utils.settings import lambda_settings

    setup_lambda_logging()
    event = dict(event or {})
    settings = lambda_settings(event)
    storage = storage_for(settings)
    drawn, error = draw_charts(settings, storage)
    out: dict[str, Any] = {**event, "charts": list(drawn)}
    if error:
        log.warning("charts failed: %s", error)
        out["chart_error"] = error
    # write_report stores report.html beside the history: an S3 object for s3:// (Storage.publish_file).
    out["report"] = write_report(settings, outcome=run_outcome(event, datetime.now(timezone.utc)), draw=False)
    log.info("views: %s", ", ".join([*drawn, out["report"]]))
    return out
