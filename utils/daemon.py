"""The daemon: a `schedule` loop that runs the pipeline daily, retries failures, survives errors, stops cleanly."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import gc
import logging
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import schedule

from utils.clock import utc_now
from utils.errors import EXIT_OK, ConfigError, PipelineError, Stopped
from utils.history.files import check_folder, describe_os_error, ensure_dir, read_json, refuse_unsafe, write_json_atomic
from utils.history.layout import DataLayout
from utils.redact import redact_tree

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def iso(moment: datetime | None) -> str | None:
    """UTC ISO 8601 with seconds, or None."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if moment else None


def parse_iso(text: Any) -> datetime | None:
    """A UTC datetime from iso(), or None for anything else (a year before 1970 or after 9998 included)."""
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        moment = (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)
    except (ValueError, OverflowError):
        return None
    return moment if 1970 <= moment.year <= 9998 else None  # room for date arithmetic either way


def next_daily_run(after: datetime, at: time, zone: ZoneInfo) -> datetime:
    """The first moment strictly after `after` when the wall clock in `zone` shows `at`, as UTC.

    A time that a DST jump skips runs at the same instant an hour later on the wall clock (02:30 -> 03:30);
    a time that occurs twice runs at its first occurrence only. Either way: one run per local day.
    """
    local = after.astimezone(zone)
    for offset in range(0, 3):
        candidate = datetime.combine(local.date() + timedelta(days=offset), at, tzinfo=zone)
        moment = candidate.astimezone(timezone.utc)
        if moment > after:
            return moment
    raise AssertionError("unreachable: a day always has the time")  # pragma: no cover


class ClockedJob(schedule.Job):
    """A schedule Job that reads time from an injected clock and is due at an absolute UTC moment."""

    def __init__(
        self, scheduler: schedule.Scheduler, clock: Clock, next_due: Callable[[datetime], datetime], name: str
    ) -> None:
        super().__init__(1, scheduler)
        self.unit = "days"
        self._clock = clock
        self._next_due = next_due
        self.name = name

    @property
    def should_run(self) -> bool:
        return self.next_run is not None and self._clock() >= self.next_run

    def _schedule_next_run(self) -> None:
        self.next_run = self._next_due(self._clock())

    def __repr__(self) -> str:
        return f"<{self.name} due {iso(self.next_run)}>"


@dataclass(frozen=True)
class Outcome:
    """What one job run reported, for the retry rule and the status file."""

    result: str  # ok | partial | failed | interrupted
    exit_code: int
    appended: int = 0
    duplicates: int = 0
    rejected: int = 0
    retry_coins: tuple[str, ...] = ()
    error: str | None = None
    summary: str = ""
    warnings: tuple[str, ...] = ()  # stale observations and ids that stopped returning data, for `status`
    then: Callable[[], None] | None = field(default=None, compare=False, repr=False)  # after the summary: notify


Job = Callable[[tuple[str, ...] | None, Callable[[], bool]], Outcome]


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def _text(value: Any) -> bool:
    return isinstance(value, str)


# What each field of status.json must be; a field that is not counts as missing (the file is rebuildable).
STATUS_FIELDS: dict[str, Callable[[Any], bool]] = {
    "last_success": lambda v: parse_iso(v) is not None,
    "next_run": lambda v: parse_iso(v) is not None,
    "next_retry": lambda v: parse_iso(v) is not None,
    "timezone": _text,
    "at": _text,
    "daemon_pid": lambda v: _count(v) and 0 < v < 2**22,  # Linux's PID_MAX_LIMIT
    "tracked_coins": _count,
    "tracked_ids": lambda v: isinstance(v, list) and all(map(_text, v)),
    "tracked_top": _count,
    "tracked_currencies": lambda v: isinstance(v, list) and all(map(_text, v)),
    "last_backfill": lambda v: (
        isinstance(v, dict)
        and parse_iso(v.get("finished_at")) is not None
        and all(_count(v.get(k, 0)) for k in ("days", "added", "coins", "requests"))
        and all(_text(v.get(k, "")) for k in ("result", "first_day", "last_day", "error"))
    ),
}
LAST_RUN_FIELDS: dict[str, Callable[[Any], bool]] = {
    "started_at": lambda v: parse_iso(v) is not None,
    "finished_at": lambda v: parse_iso(v) is not None,
    "result": _text,
    "trigger": _text,
    "error": _text,
    "exit_code": lambda v: _count(v) and v < 256,
    "appended": _count,
    "duplicates": _count,
    "rejected": _count,
    "incomplete_coins": lambda v: isinstance(v, list) and all(map(_text, v)),
    "warnings": lambda v: isinstance(v, list) and all(map(_text, v)),
}


def _valid_fields(data: dict[str, Any], rules: dict[str, Callable[[Any], bool]]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in rules or rules[k](v)}


class StatusFile:
    """data/.state/status.json: last run, last success, next run; written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> dict[str, Any]:
        """The status, with every malformed field left out: whatever the file holds, this never fails."""
        data = read_json(self.path)
        if not isinstance(data, dict):
            return {}
        data = _valid_fields(data, STATUS_FIELDS)
        last = data.get("last_run")
        if last is not None:
            if isinstance(last, dict):
                data["last_run"] = _valid_fields(last, LAST_RUN_FIELDS)
            else:
                del data["last_run"]
        return data

    def update(self, **changes: Any) -> str | None:
        """Write the changes; returns None, or what was not written and why (a warning, never fatal)."""
        data = self.read()
        data.update(changes)
        try:
            check_folder(self.path.parent, "state folder")
            ensure_dir(self.path.parent)
            write_json_atomic(self.path, redact_tree(data), "status file")
        except (OSError, PipelineError) as exc:
            why = describe_os_error(exc, self.path, "write") if isinstance(exc, OSError) else str(exc)
            log.warning("could not write %s: %s", self.path, why)
            return f"{self.path.name} ({why})"
        return None

    def record_run(self, started: datetime, finished: datetime, outcome: Outcome, trigger: str) -> str | None:
        last = {
            "started_at": iso(started),
            "finished_at": iso(finished),
            "result": outcome.result,
            "exit_code": outcome.exit_code,
            "appended": outcome.appended,
            "duplicates": outcome.duplicates,
            "rejected": outcome.rejected,
            "incomplete_coins": list(outcome.retry_coins),
            "error": outcome.error,
            "trigger": trigger,
            "warnings": list(outcome.warnings),
        }
        changes: dict[str, Any] = {"last_run": last}
        if outcome.result in ("ok", "partial"):
            changes["last_success"] = iso(finished)
        return self.update(**changes)


class DaemonLock:
    """One daemon per data folder: an flock on data/.state/daemon.pid, which names the holder."""

    def __init__(self, path: Path) -> None:
        self.path = path  # DataLayout.daemon_pid
        self.fd: int | None = None

    def acquire(self) -> None:
        check_folder(self.path.parent, "state folder")
        ensure_dir(self.path.parent)
        refuse_unsafe(self.path, "daemon PID file", DataLayout(self.path.parent.parent))
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise ConfigError(
                    f"another daemon (PID {holder}) already runs on {self.path.parent.parent}; "
                    "stop it first or use another --data-dir"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)
            self.fd = None


class Daemon:
    """Runs `job` daily at `at` in `zone`, with same-day retries, until asked to stop."""

    def __init__(
        self,
        job: Job,
        *,
        at: time,
        zone: ZoneInfo,
        retry_delays: tuple[float, ...],
        status: StatusFile,
        clock: Clock = utc_now,
        initial_run: bool = True,
    ) -> None:
        self.job = job
        self.at = at
        self.zone = zone
        self.retry_delays = retry_delays  # minutes; the last one repeats
        self.status = status
        self.clock = clock
        self.initial_run = initial_run
        self.stop_event = threading.Event()
        self.scheduler = schedule.Scheduler()
        self.daily: ClockedJob | None = None
        self.retry_job: ClockedJob | None = None
        self.failures_today = 0
        self.runs = 0
        self.announced: tuple[datetime, datetime | None] | None = None  # the plan last logged

    # -- scheduling -------------------------------------------------------------------------

    def start(self) -> None:
        """Register the daily job, decide on an initial run, and say when the next run is."""
        self.daily = ClockedJob(
            self.scheduler, self.clock, lambda now: next_daily_run(now, self.at, self.zone), "daily run"
        )
        self.daily.do(self._scheduled)
        now = self.clock()
        last_success = parse_iso(self.status.read().get("last_success"))
        if self.initial_run and (last_success is None or now - last_success > timedelta(days=1)):
            why = "no successful run yet" if last_success is None else f"the last success was {iso(last_success)}"
            log.info("running now: %s", why)
            self._schedule_retry(now, None, "initial run")
        self._publish_next()

    def _schedule_retry(self, due: datetime, coins: tuple[str, ...] | None, name: str) -> None:
        if self.retry_job is not None:
            self.scheduler.cancel_job(self.retry_job)
        job = ClockedJob(self.scheduler, self.clock, lambda _now: due, name)
        job.do(self._retry, coins, name)
        self.retry_job = job

    def next_due(self) -> datetime:
        return min(job.next_run for job in self.scheduler.jobs)

    def _publish_next(self) -> None:
        assert self.daily is not None and self.daily.next_run is not None
        due = self.daily.next_run
        retry = self.retry_job.next_run if self.retry_job is not None else None
        pending = retry if retry and retry > self.clock() else None
        if (due, pending) != self.announced:  # an initial run leaves the plan as start-up announced it
            self.announced = (due, pending)
            local = due.astimezone(self.zone)
            log.info(
                "next scheduled run at %s %s (%s)%s",
                local.strftime("%Y-%m-%d %H:%M"),
                self.zone.key,
                iso(due),
                f"; a retry is due at {iso(pending)}" if pending else "",
            )
        self.status.update(
            next_run=iso(due),
            next_retry=iso(retry),
            timezone=self.zone.key,
            at=self.at.strftime("%H:%M"),
            daemon_pid=os.getpid(),
        )

    # -- jobs -------------------------------------------------------------------------------

    def _scheduled(self) -> None:
        if self.retry_job is not None:
            self.scheduler.cancel_job(self.retry_job)
            self.retry_job = None
        self.failures_today = 0
        self._run(None, "scheduled run")

    def _retry(self, coins: tuple[str, ...] | None, name: str) -> type[schedule.CancelJob]:
        self.retry_job = None
        self._run(coins, name)
        return schedule.CancelJob

    def _run(self, coins: tuple[str, ...] | None, trigger: str) -> None:
        """Run the job; never let an exception out; plan a retry when it did not fully succeed."""
        started = self.clock()
        self.runs += 1
        try:
            outcome = self.job(coins, self.stop_event.is_set)
        except Stopped as exc:
            outcome = Outcome("interrupted", EXIT_OK, error=str(exc), summary=f"run interrupted: {exc}")
        except PipelineError as exc:
            outcome = Outcome("failed", exc.exit_code, error=str(exc), summary=f"run failed: {exc}")
        except Exception as exc:  # noqa: BLE001 - the daemon's job wrapper: log, survive, retry
            log.debug("unexpected error in the job", exc_info=True)
            cause = f"unexpected {type(exc).__name__}: {exc}"
            outcome = Outcome("failed", 1, error=cause, summary=f"run failed: {cause}")
        finished = self.clock()
        release_memory()
        (log.info if outcome.result == "ok" else log.error if outcome.result == "failed" else log.warning)(
            "%s (%s)", outcome.summary or outcome.result, trigger
        )
        self.status.record_run(started, finished, outcome, trigger)
        if outcome.then is not None:  # the notification, after the summary; SIGTERM cuts it off
            try:
                outcome.then()
            except Exception as exc:  # noqa: BLE001 - a notification never changes a run's outcome
                log.debug("notification failure", exc_info=True)
                log.warning("could not notify: %s", exc)
        if self.stop_event.is_set():
            return
        if outcome.result in ("failed", "partial"):
            self._plan_retry(finished, coins if outcome.result == "failed" else outcome.retry_coins)
        else:
            self.failures_today = 0

    def _plan_retry(self, now: datetime, coins: tuple[str, ...] | None) -> None:
        delays = self.retry_delays or (60.0,)
        delay = delays[min(self.failures_today, len(delays) - 1)]
        self.failures_today += 1
        due = now + timedelta(minutes=delay)
        next_scheduled = next_daily_run(now, self.at, self.zone)
        if due >= next_scheduled:
            log.warning("no retry before the next scheduled run at %s", iso(next_scheduled))
            return
        what = "the missing coins " + ",".join(coins) if coins else "the run"
        log.warning("retrying %s at %s (in %g min)", what, iso(due), delay)
        self._schedule_retry(due, coins, "retry")

    # -- the loop ---------------------------------------------------------------------------

    def tick(self) -> None:
        """Run whatever is due, then publish the next due time if anything ran."""
        before = self.runs
        self.scheduler.run_pending()
        if self.runs != before and not self.stop_event.is_set():
            self._publish_next()

    def run_forever(self, wait: Callable[[float], None] | None = None) -> int:
        """Loop until stop() (or SIGTERM / Ctrl-C); wakes at least every second to notice a stop."""
        wait = wait or (lambda seconds: self.stop_event.wait(min(seconds, 1.0)) and None)
        while not self.stop_event.is_set():
            self.tick()
            if self.stop_event.is_set():
                break
            wait(max(0.0, (self.next_due() - self.clock()).total_seconds()))
        log.info("daemon stopped")
        self.status.update(daemon_pid=None)
        return EXIT_OK

    def stop(self, *_: object) -> None:
        """Ask the loop to end: at once when idle or waiting on CoinGecko, after the load when one is under way."""
        if not self.stop_event.is_set():
            log.info("stop requested; a request under way is cut off, a load under way finishes")
        self.stop_event.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)


def release_memory() -> None:
    """After a run, collect cycles and hand freed heap pages back to the OS (glibc keeps them otherwise),
    so a daemon that runs for months does not creep upwards through fragmentation."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def resolve_zone(name: str | None) -> ZoneInfo:
    """An IANA zone by name, or the machine's own. Raises ConfigError."""
    if not name:
        # start-up time: tzlocal loads only when no --timezone is given
        import tzlocal

        try:
            return tzlocal.get_localzone()
        except Exception:  # noqa: BLE001 - a machine without a configured zone
            return ZoneInfo("UTC")
    try:
        return ZoneInfo(name)
    except (ValueError, KeyError, OSError):
        raise ConfigError(f"timezone: {name!r} is not a time zone; use a name like Europe/Berlin or UTC") from None
