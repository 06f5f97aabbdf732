"""`python main.py run`: one pass of the pipeline, its summary line, the status file and the webhook."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from datetime import datetime

from flows.notify import after_failure, after_result
from flows.run_once import RunOnce, RunResult
from flows.wiring import Console
from lambdas.wiring import make_client
from utils.clock import utc_now
from utils.coingecko.client import CoinGeckoClient
from utils.daemon import Outcome, StatusFile
from utils.errors import ConfigError, PipelineError
from utils.history.files import UnsafeTarget
from utils.settings import Settings

log = logging.getLogger("pipeline")


def run_pipeline(
    settings: Settings,
    client: CoinGeckoClient,
    *,
    coins: tuple[str, ...] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    clock: Callable[[], datetime] | None = None,
) -> RunResult:
    """One run of the pipeline: extract -> transform -> load -> charts (each a stage in lambdas/), then the report."""
    run = RunOnce(settings, client, coins=coins, should_stop=should_stop, clock=clock or utc_now)
    snapshots = run.extract()  # /coins/markets -> one Snapshot per currency, raw answers archived
    transformed = run.transform(snapshots)  # Snapshots -> typed Records + rejections (pure)
    run.load(transformed)  # Records -> the history: appended when their key is new
    run.heal()  # days missed while the pipeline was down, from market_chart
    run.charts()  # the index's daily points -> PNG charts
    result = run.write_report(run.result())  # data/report.html, rewritten when the charts were
    if coins is None:  # a whole run (not a retry of a few coins): what `status` counts
        result = record_tracked(settings, result)
    return result


def record_tracked(settings: Settings, result: RunResult) -> RunResult:
    """Note in status.json how many coins a whole run tracked, so `status` counts them from what ran."""
    if settings.data_url is None:
        not_written = StatusFile(settings.layout.status).update(
            tracked_coins=len(result.requested),
            tracked_currencies=list(settings.vs_currencies),
            # The selection itself, so the charts, the report and `status` follow what the user asked for last.
            tracked_ids=list(settings.coins),
            tracked_top=settings.top or 0,
        )
        if not_written:
            return dataclasses.replace(result, unwritten=(*result.unwritten, not_written))
    return result


def run_command(settings: Settings, console: Console) -> int:
    """`run`: one pass of the pipeline, one summary line, the status file updated, then the notification."""
    status = StatusFile(settings.layout.status)
    started = utc_now()
    try:
        with make_client(settings, sleep=console.sleep) as client:
            result = run_pipeline(settings, client)
    except PipelineError as exc:
        if settings.data_dir.is_dir() and not isinstance(exc, UnsafeTarget):  # a linked status file stays untouched
            status.record_run(started, utc_now(), Outcome("failed", exc.exit_code, error=str(exc)), "run")
        # The line first: a webhook that is slow to answer never holds it back.
        log.error(
            "%s: %s", "config error" if isinstance(exc, ConfigError) else "run failed", exc, extra={"plain": True}
        )
        after_failure(settings, "run", exc)
        return exc.exit_code
    result = dataclasses.replace(result, seconds=time.monotonic() - console.started)
    not_written = status.record_run(started, utc_now(), result.outcome(), "run")
    if not_written:  # the rows landed: a status file that could not be written makes the run partial, not failed
        result = dataclasses.replace(result, unwritten=(*result.unwritten, not_written))
    log.info("%s", result.summary())
    if result.findings:
        log.info("%s", result.quality_line())
    after_result(settings, result)
    return result.exit_code
