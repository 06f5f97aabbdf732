"""`python main.py daemon`: one process per data folder, running the pipeline every day until SIGTERM or Ctrl-C."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from functools import partial

from flows.budget import warn_once
from flows.notify import after_failure, after_result, notice
from flows.run import run_pipeline
from flows.wiring import Console
from lambdas.wiring import make_client
from utils.coingecko.client import RateLimiter, make_limiter
from utils.coingecko.plans import top_label
from utils.daemon import Daemon, DaemonLock, Job, Outcome, StatusFile, resolve_zone
from utils.errors import PipelineError, Stopped
from utils.history.locations import prepare_data_dir
from utils.settings import Settings
from utils.words import count

log = logging.getLogger("pipeline")


def daemon_command(settings: Settings, console: Console) -> int:
    """`daemon`: take the data folder's lock, then run on schedule until asked to stop."""
    zone = resolve_zone(settings.timezone)
    prepare_data_dir(settings.data_dir)
    lock = DaemonLock(settings.layout.daemon_pid)
    lock.acquire()
    try:
        daemon: Daemon

        def interruptible_sleep(seconds: float) -> None:
            if daemon.stop_event.wait(seconds):
                raise Stopped("stopped while waiting to send a request; nothing was appended")

        # One limiter for the daemon's life: retries and later runs share the plan's budget.
        limiter = make_limiter(settings.api_plan, settings.rate_limit, sleep=interruptible_sleep)
        daemon = Daemon(
            daily_job(settings, limiter, interruptible_sleep),
            at=settings.at,
            zone=zone,
            retry_delays=settings.retry_delays,
            status=StatusFile(settings.layout.status),
            initial_run=settings.initial_run,
        )
        daemon.install_signal_handlers()
        log.info(
            "daemon started (PID %d): %s in %s, daily at %s %s, data in %s",
            os.getpid(),
            tracked(settings),
            ", ".join(settings.vs_currencies),
            settings.at.strftime("%H:%M"),
            zone.key,
            settings.data_dir,
        )
        daemon.start()
        return daemon.run_forever()
    finally:
        lock.release()


def daily_job(settings: Settings, limiter: RateLimiter, sleep: Callable[[float], None]) -> Job:
    """The daemon's job: one run (or a retry of some coins) with the shared limiter; the webhook told."""

    def job(coins: tuple[str, ...] | None, should_stop: Callable[[], bool]) -> Outcome:
        try:
            with make_client(settings, sleep=sleep, limiter=limiter, should_stop=should_stop) as client:
                result = run_pipeline(settings, client, coins=coins, should_stop=should_stop)
        except Stopped:
            raise
        except PipelineError as exc:  # the webhook is told after the daemon logs the run's line (Outcome.then)
            return Outcome(
                "failed",
                exc.exit_code,
                error=str(exc),
                summary=f"run failed: {exc}",
                then=partial(after_failure, settings, "daemon run", exc, should_stop),
            )

        def tell() -> None:  # after the summary line; SIGTERM cuts a POST under way
            after_result(settings, result, should_stop)
            warn_once(settings, lambda title, line: notice(settings, title, line, should_stop))  # credits at 80 %

        return dataclasses.replace(result.outcome(), then=tell)

    return job


def tracked(settings: Settings) -> str:
    """What the daemon fetches: '9 coins', 'the top 100', or 'the top 100 and 3 coins'."""
    if not settings.top:
        return count(len(settings.coins), "coin")
    return f"the top {top_label(settings.top)}" + (
        f" and {count(len(settings.coins), 'coin')}" if settings.coins else ""
    )
