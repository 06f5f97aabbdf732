"""`python main.py report` and `quality`: the one-page report and the findings list, from the index and quality.csv."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

from flows.views import FINDING_DAYS, write_report
from flows.wiring import Console
from lambdas.wiring import storage_for
from utils.errors import EXIT_FAILED, EXIT_OK
from utils.history.layout import display_path
from utils.history.quality import RULE_WORDS, QualityLog
from utils.settings import Settings

log = logging.getLogger("pipeline")


def print_quality(settings: Settings, out: Callable[[str], None] = print, now: datetime | None = None) -> int:
    """`quality`: the findings of the last --days days (30 by default), oldest first."""
    now = now or datetime.now(timezone.utc)
    days = settings.days or FINDING_DAYS
    path = settings.layout.quality
    if settings.data_url:
        storage_for(settings, create=False).pull(path.name)  # the findings beside an S3 history, read from a local copy
    findings = QualityLog(path).since(now - timedelta(days=days))
    if not findings:
        out(f"quality: no findings in the last {days} days ({display_path(path)})")
        return EXIT_OK
    for f in findings:
        out(f"{f.found_at[:16].replace('T', ' ')}  {f.coin_id} {f.vs_currency}  {f.last_updated}  {f.rule}: {f.detail}")
    counts = Counter(f.rule for f in findings)
    out(
        f"quality: {len(findings)} finding{'s' if len(findings) != 1 else ''} in the last {days} days ("
        + ", ".join(f"{n} {RULE_WORDS[r]}" for r, n in counts.most_common())
        + f") in {display_path(path)}"
    )
    return EXIT_OK


def quality_command(settings: Settings, console: Console) -> int:
    """`quality`: the findings of the last --days days."""
    return print_quality(settings, out=console.out)


def report_command(settings: Settings, console: Console) -> int:
    """`report`: write data/report.html from the history, its findings and the last run."""
    storage = storage_for(settings, create=False)
    if not storage.has_history():
        log.error(
            "report failed: no history yet at %s: run `%s` first",
            display_path(storage.csv_display),
            settings.run_hint,
            extra={"plain": True},
        )
        return EXIT_FAILED
    where = write_report(settings)
    console.out(display_path(where))
    log.info("report ok -> %s", display_path(where))
    return EXIT_OK
