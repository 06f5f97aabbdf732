"""After a run: tell the webhook (--notify-url) when a failure, new findings or a recovery call for it."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from utils.errors import PipelineError
from utils.history.layout import display_path
from utils.settings import Settings
from utils.views.webhook import Notifier, RunReport

if TYPE_CHECKING:
    from flows.run_once import RunResult


def notifier(settings: Settings, should_stop: Callable[[], bool] = lambda: False) -> Notifier:
    """The notifier the settings describe (utils.redact blanks the key from anything it sends)."""
    return Notifier(
        settings.notify_url,
        settings.notify_on,
        settings.layout.notify_state,
        location=display_path(settings.location),
        timeout=settings.timeout,
        should_stop=should_stop,
    )


def notice(settings: Settings, title: str, line: str, should_stop: Callable[[], bool] = lambda: False) -> None:
    """A warning that is not about one run (the month's API credits at 80 %), to the webhook when one is set."""
    notifier(settings, should_stop).notice("credits", title, line)


def after_failure(
    settings: Settings, command: str, exc: PipelineError, should_stop: Callable[[], bool] = lambda: False
) -> None:
    """A run that failed: nothing was appended."""
    if not settings.data_dir.is_dir():
        return  # nowhere to count failures, and a configuration problem the user sees at once
    notifier(settings, should_stop).after_run(
        RunReport("failed", exc.exit_code, f"{command} failed: {exc}", error=str(exc), command=command)
    )


def after_result(settings: Settings, result: RunResult, should_stop: Callable[[], bool] = lambda: False) -> None:
    """A run that landed rows (ok or partial), with its new quality findings."""
    outcome = result.outcome()
    notifier(settings, should_stop).after_run(
        RunReport(outcome.result, result.exit_code, result.summary(), findings=result.findings)
    )
