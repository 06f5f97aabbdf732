"""Notifications for unattended runs: one small JSON POST to a webhook after a run that deserves one.

When: a failed run, a run with new quality findings, the first good run after failures ("ok again after
N failures"); `--notify-on always` adds every other run. At most one POST per run. A notification that
cannot be delivered is a warning: it never changes a run's outcome or exit code.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from utils.coingecko.client import WebhookError, post_json
from utils.errors import PipelineError
from utils.history.files import check_folder, read_json, write_json_atomic
from utils.history.quality import Finding, summary_line
from utils.redact import redact

log = logging.getLogger(__name__)

APP = "crypto-history"
MAX_TEXT = 1800  # Discord refuses a message over 2,000 characters

Poster = Callable[..., int]


@dataclass(frozen=True)
class RunReport:
    """What a notification says about one run."""

    result: str  # ok | partial | failed
    exit_code: int
    summary: str
    error: str | None = None
    findings: tuple[Finding, ...] = ()
    command: str = "run"


def event_for(report: RunReport, failures_before: int, notify_on: Iterable[str]) -> str | None:
    """Which event this run is ('failure', 'recovery', 'findings', 'ok'), or None when nobody asked for it."""
    wanted = set(notify_on)
    always = "always" in wanted
    if report.result == "failed":
        return "failure" if always or "failure" in wanted else None
    if failures_before and (always or "failure" in wanted):
        return "recovery"
    if report.findings and (always or "findings" in wanted):
        return "findings"
    return "ok" if always else None


def payload(
    report: RunReport, event: str, failures_before: int, *, location: str, url: str, now: datetime
) -> dict[str, Any]:
    """The JSON document: text (Slack), content (Discord), topic/title/message (ntfy) and the details."""
    titles = {
        "failure": f"{report.command} failed",
        "recovery": f"ok again after {failures_before} failure{'s' if failures_before != 1 else ''}",
        "findings": "new quality findings",
        "ok": f"{report.command} ok",
    }
    title = f"{APP}: {titles[event]}"
    lines = [redact(report.summary)]  # each line redacted: no key, no control character, whatever quoted it
    if report.findings:
        lines.append(summary_line(report.findings))
        lines += [
            redact(f"- {f.coin_id} {f.vs_currency} {f.last_updated} {f.rule}: {f.detail}") for f in report.findings[:5]
        ]
        if len(report.findings) > 5:
            lines.append(f"- ... and {len(report.findings) - 5} more (python main.py quality)")
    text = f"{title}\n" + "\n".join(lines)
    if len(text) > MAX_TEXT:
        text = text[: MAX_TEXT - 3] + "..."
    doc: dict[str, Any] = {
        "text": text,
        "content": text,
        "title": title,
        "message": "\n".join(lines)[:MAX_TEXT],
        "tags": ["warning"] if event in ("failure", "findings") else ["white_check_mark"],
        "event": event,
        "result": report.result,
        "exit_code": report.exit_code,
        "command": report.command,
        "summary": lines[0],
        "error": redact(report.error) if report.error else None,
        "failures_before": failures_before,
        "findings": dict(Counter(f.rule for f in report.findings)),
        "data": location,
        "sent_at": now.astimezone(timezone.utc).isoformat(timespec="seconds"),
    }
    topic = urlsplit(url).fragment
    if topic:  # ntfy's JSON publishing names the topic in the body: https://ntfy.sh/#topic
        doc["topic"] = topic
    return doc


class Notifier:
    """Counts failed runs in .state/notify.json and POSTs at most one notification per run."""

    def __init__(
        self,
        url: str | None,
        notify_on: Iterable[str],
        state_path: Path,
        *,
        location: str,
        timeout: float = 30.0,
        post: Poster = post_json,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.url = url
        self.notify_on = tuple(notify_on)
        self.state_path = state_path
        self.location = location
        self.timeout = timeout
        self.post = post
        self.clock = clock
        self.should_stop = should_stop  # SIGTERM: the POST is cut off at once, like an API request

    def _failures(self) -> int:
        state = read_json(self.state_path)
        count = state.get("consecutive_failures") if isinstance(state, dict) else 0
        return count if isinstance(count, int) and count >= 0 else 0

    def after_run(self, report: RunReport) -> str | None:
        """Record the run's outcome and send its notification when one is due; returns the event sent."""
        if not self.url:
            return None  # the count serves only the notifications
        before = self._failures()
        after = before + 1 if report.result == "failed" else 0
        if after != before:
            try:
                check_folder(self.state_path.parent, "state folder")
                self.state_path.parent.mkdir(parents=True, exist_ok=True)
                write_json_atomic(self.state_path, {"consecutive_failures": after}, "notification state")
            except (OSError, PipelineError) as exc:
                log.warning(
                    "could not write %s (%s); a recovery may go unannounced",
                    self.state_path,
                    getattr(exc, "strerror", None) or exc,
                )
        event = event_for(report, before, self.notify_on)
        if event is None:
            return None
        doc = payload(report, event, before, location=self.location, url=self.url, now=self.clock())
        target = urlunsplit(urlsplit(self.url)._replace(fragment=""))
        try:
            self.post(target, doc, timeout=self.timeout, should_stop=self.should_stop)
        except WebhookError as exc:
            log.warning(
                "could not send the %s notification to %s: %s; the run's result stands", event, _host(self.url), exc
            )
            return None
        log.debug("sent the %s notification to %s", event, _host(self.url))
        return event

    def notice(self, event: str, title: str, line: str) -> bool:
        """Send one warning that is not about a run (the month's API credits at 80 %); True when it went out."""
        if not self.url:
            return False
        text = redact(f"{APP}: {title}\n{line}")[:MAX_TEXT]
        doc: dict[str, Any] = {
            "text": text,
            "content": text,
            "title": f"{APP}: {title}",
            "message": redact(line),
            "tags": ["warning"],
            "event": event,
            "summary": redact(line),
            "data": self.location,
            "sent_at": self.clock().astimezone(timezone.utc).isoformat(timespec="seconds"),
        }
        topic = urlsplit(self.url).fragment
        if topic:
            doc["topic"] = topic
        try:
            self.post(
                urlunsplit(urlsplit(self.url)._replace(fragment="")),
                doc,
                timeout=self.timeout,
                should_stop=self.should_stop,
            )
        except WebhookError as exc:
            log.warning("could not send the %s notification to %s: %s", event, _host(self.url), exc)
            return False
        return True


def _host(url: str) -> str:
    """The webhook's host only: its path often is its secret (Slack, Discord, ntfy topics)."""
    return urlsplit(url).hostname or "the webhook"
