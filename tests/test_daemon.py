"""The daemon: schedule times over DST, retries, survival, the initial-run rule, status, signals, one per folder."""

from __future__ import annotations

import json
import signal
import subprocess
import tempfile
import time as real_time
import unittest
from datetime import datetime, time, timedelta, timezone
from pathlib import Path
from unittest import mock
from zoneinfo import ZoneInfo

from tests.fake_coingecko import Fault
from tests.support import MAIN, REPO, PipelineTestCase, process_is_idle, wait_until  # noqa: F401
from utils.daemon import Daemon, Outcome, StatusFile, iso, next_daily_run

BERLIN = ZoneInfo("Europe/Berlin")
OK = Outcome("ok", 0, appended=9, summary="run ok")


class FakeClock:
    """Time that moves only when the daemon waits."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=max(seconds, 0.001))


class ScriptedJob:
    """Records each call; answers from a script of outcomes or exceptions, then OK."""

    def __init__(self, clock: FakeClock, script: list[object] | None = None) -> None:
        self.clock = clock
        self.script = list(script or [])
        self.calls: list[tuple[datetime, tuple[str, ...] | None]] = []

    def __call__(self, coins, should_stop) -> Outcome:
        self.calls.append((self.clock(), coins))
        answer = self.script.pop(0) if self.script else OK
        if isinstance(answer, BaseException):
            raise answer
        return answer  # type: ignore[return-value]


class DaemonClockTests(unittest.TestCase):
    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.status = StatusFile(Path(tmp.name) / ".state" / "status.json")
        # After each run the daemon collects garbage and trims the heap (utils.daemon.release_memory): counted
        # here, not done, since in a test process holding the suite's charts and frames each collection costs
        # a tenth of a second or more, seconds a test. The daemon's own process does it (DaemonProcessTests).
        self.releases = 0

        def count_release() -> None:
            self.releases += 1

        patcher = mock.patch("utils.daemon.release_memory", count_release)
        patcher.start()
        self.addCleanup(patcher.stop)

    def run_daemon(
        self,
        start: datetime,
        until: datetime,
        job_script: list[object] | None = None,
        *,
        at: time = time(0, 0),
        zone: ZoneInfo = BERLIN,
        initial_run: bool = False,
        retry_delays: tuple[float, ...] = (5, 15, 60),
    ) -> ScriptedJob:
        clock = FakeClock(start)
        job = ScriptedJob(clock, job_script)
        daemon = Daemon(
            job, at=at, zone=zone, retry_delays=retry_delays, status=self.status, clock=clock, initial_run=initial_run
        )
        daemon.start()

        def wait(seconds: float) -> None:
            if clock.now + timedelta(seconds=seconds) > until:
                daemon.stop()
                return
            clock.advance(seconds)

        released = self.releases
        self.assertEqual(daemon.run_forever(wait=wait), 0)
        self.assertEqual(self.releases - released, len(job.calls), "memory released after every run")
        return job

    def local_times(self, job: ScriptedJob, zone: ZoneInfo = BERLIN) -> list[str]:
        return [t.astimezone(zone).strftime("%Y-%m-%d %H:%M") for t, _ in job.calls]

    def test_midnight_every_local_day_across_both_dst_changes(self) -> None:
        job = self.run_daemon(
            datetime(2026, 3, 27, 12, tzinfo=timezone.utc), datetime(2026, 3, 31, 12, tzinfo=timezone.utc)
        )
        self.assertEqual(
            self.local_times(job), ["2026-03-28 00:00", "2026-03-29 00:00", "2026-03-30 00:00", "2026-03-31 00:00"]
        )
        job = self.run_daemon(
            datetime(2026, 10, 23, 12, tzinfo=timezone.utc), datetime(2026, 10, 27, 12, tzinfo=timezone.utc)
        )
        self.assertEqual(
            self.local_times(job), ["2026-10-24 00:00", "2026-10-25 00:00", "2026-10-26 00:00", "2026-10-27 00:00"]
        )

    def test_a_time_inside_the_dst_gap_or_overlap_runs_once_that_day(self) -> None:
        spring = self.run_daemon(
            datetime(2026, 3, 27, 12, tzinfo=timezone.utc),
            datetime(2026, 3, 31, 12, tzinfo=timezone.utc),
            at=time(2, 30),
        )
        self.assertEqual(
            self.local_times(spring), ["2026-03-28 02:30", "2026-03-29 03:30", "2026-03-30 02:30", "2026-03-31 02:30"]
        )
        autumn = self.run_daemon(
            datetime(2026, 10, 23, 12, tzinfo=timezone.utc),
            datetime(2026, 10, 27, 12, tzinfo=timezone.utc),
            at=time(2, 30),
        )
        days = [t[:10] for t in self.local_times(autumn)]
        self.assertEqual(days, ["2026-10-24", "2026-10-25", "2026-10-26", "2026-10-27"])

    def test_next_daily_run_is_strictly_after(self) -> None:
        moment = datetime(2026, 1, 1, 23, 0, tzinfo=timezone.utc)  # 00:00 in Berlin
        self.assertEqual(next_daily_run(moment, time(0, 0), BERLIN), datetime(2026, 1, 2, 23, 0, tzinfo=timezone.utc))

    def test_a_failing_run_is_retried_after_5_then_15_minutes(self) -> None:
        failed = Outcome("failed", 1, error="CoinGecko down", summary="run failed: CoinGecko down")
        job = self.run_daemon(
            datetime(2026, 6, 1, 21, tzinfo=timezone.utc),
            datetime(2026, 6, 2, 21, tzinfo=timezone.utc),
            [failed, failed],
        )
        self.assertEqual(self.local_times(job), ["2026-06-02 00:00", "2026-06-02 00:05", "2026-06-02 00:20"])

    def test_retries_stop_at_the_next_scheduled_run(self) -> None:
        failed = Outcome("failed", 1, error="down")
        job = self.run_daemon(
            datetime(2026, 6, 1, 21, tzinfo=timezone.utc),
            datetime(2026, 6, 2, 22, 30, tzinfo=timezone.utc),
            [failed] * 200,
        )
        times = self.local_times(job)
        first_day = [t for t in times if t.startswith("2026-06-02")]
        self.assertEqual(
            first_day[:5],
            ["2026-06-02 00:00", "2026-06-02 00:05", "2026-06-02 00:20", "2026-06-02 01:20", "2026-06-02 02:20"],
        )
        self.assertEqual(first_day[-1], "2026-06-02 23:20")  # hourly, and none at or after the next midnight
        self.assertEqual(times[len(first_day)], "2026-06-03 00:00")

    def test_a_partial_run_retries_only_the_missing_coins(self) -> None:
        partial = Outcome("partial", 3, appended=7, retry_coins=("solana", "cardano"), summary="run partial")
        job = self.run_daemon(
            datetime(2026, 6, 1, 21, tzinfo=timezone.utc), datetime(2026, 6, 2, 21, tzinfo=timezone.utc), [partial]
        )
        self.assertEqual([coins for _, coins in job.calls], [None, ("solana", "cardano")])

    def test_no_exception_ends_the_loop(self) -> None:
        job = self.run_daemon(
            datetime(2026, 6, 1, 21, tzinfo=timezone.utc),
            datetime(2026, 6, 3, 23, tzinfo=timezone.utc),
            [RuntimeError("boom"), MemoryError("tight"), KeyError("x")],
        )
        self.assertEqual(len(job.calls), 6)  # 3 failures retried, then daily runs go on
        last = self.status.read()["last_run"]
        self.assertEqual(last["result"], "ok")

    def test_initial_run_when_the_last_success_is_old_or_missing(self) -> None:
        start = datetime(2026, 6, 1, 10, tzinfo=timezone.utc)
        job = self.run_daemon(start, start + timedelta(hours=1), initial_run=True)
        self.assertEqual([t for t, _ in job.calls], [start])
        self.status.update(last_success=iso(start - timedelta(hours=2)))
        job = self.run_daemon(start, start + timedelta(hours=1), initial_run=True)
        self.assertEqual(job.calls, [])
        self.status.update(last_success=iso(start - timedelta(days=2)))
        job = self.run_daemon(start, start + timedelta(hours=1), initial_run=True)
        self.assertEqual(len(job.calls), 1)
        self.status.update(last_success=None)
        job = self.run_daemon(start, start + timedelta(hours=1), initial_run=False)
        self.assertEqual(job.calls, [])

    def test_status_file_holds_last_run_success_and_next_run(self) -> None:
        job = self.run_daemon(
            datetime(2026, 6, 1, 21, tzinfo=timezone.utc), datetime(2026, 6, 2, 1, tzinfo=timezone.utc)
        )
        self.assertEqual(len(job.calls), 1)
        data = json.loads(self.status.path.read_text())
        self.assertEqual(data["last_run"]["result"], "ok")
        self.assertEqual(data["last_run"]["appended"], 9)
        self.assertEqual(data["last_success"], "2026-06-01T22:00:00Z")
        self.assertEqual(data["next_run"], "2026-06-02T22:00:00Z")
        self.assertEqual(data["timezone"], "Europe/Berlin")
        self.assertIsNone(data["daemon_pid"])  # stopped


class DaemonProcessTests(PipelineTestCase):
    def start_daemon(self, *extra: str) -> subprocess.Popen:
        return self.start("daemon", "--at", "03:00", "--timezone", "UTC", *extra)

    def status(self) -> dict:
        path = self.data_dir / ".state" / "status.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}

    def test_sigterm_when_idle_exits_0_within_2_seconds(self) -> None:
        proc = self.start_daemon()
        wait_until(lambda: self.status().get("last_run") and self.status().get("next_run"), "the initial run")
        wait_until(lambda: process_is_idle(proc.pid), "the daemon to wait for its next run")
        started = real_time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
        self.assertLess(real_time.monotonic() - started, 2.0)
        self.assertEqual(proc.returncode, 0, err)
        self.assertIn("daemon stopped", err)
        self.assertEqual(len(self.rows()), 10)
        self.assertEqual(err.count("next scheduled run"), 1, err)  # the initial run leaves the plan as announced

    def test_sigterm_during_a_request_cuts_it_and_exits_0(self) -> None:
        # A request under way is abandoned at once (tests/test_hostile.py covers stalls and trickles in full).
        self.fake.add_fault(Fault.stall(20.0))
        proc = self.start_daemon("--timeout", "30")
        wait_until(lambda: len(self.fake.requests_to("/coins/markets")) == 1, "the daemon's request")
        started = real_time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        self.assertLess(real_time.monotonic() - started, 2.0)
        self.assertEqual(proc.returncode, 0, err)
        self.assertIn("stop requested", err)
        self.assertIn("run interrupted: stopped during a request to CoinGecko; nothing was appended", err)
        self.assertFalse(self.csv_path.exists())
        self.assertFalse((self.data_dir / "crypto_price_trend.png").exists())

    def test_sigterm_while_another_process_holds_the_lock_exits_0_within_2_seconds(self) -> None:
        from filelock import FileLock

        from utils.history.layout import DataLayout

        layout = DataLayout(self.data_dir)
        layout.state_dir.mkdir(parents=True, exist_ok=True)
        held = FileLock(str(layout.lock))
        held.acquire()  # a backfill, say, merging for minutes
        self.addCleanup(held.release)
        proc = self.start_daemon()
        wait_until(lambda: len(self.fake.requests_to("/coins/markets")) == 1, "the daemon's request")
        # Fetched and transformed: now asleep between polls of the lock.
        wait_until(lambda: process_is_idle(proc.pid), "the daemon to wait for the history's lock")
        started = real_time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        self.assertLess(real_time.monotonic() - started, 2.0)
        self.assertEqual(proc.returncode, 0, err)
        self.assertIn("stopped while waiting for another process's lock", err)
        self.assertFalse(self.csv_path.exists() and self.rows())

    def test_a_second_daemon_on_the_same_folder_exits_2_naming_the_pid(self) -> None:
        proc = self.start_daemon("--no-initial-run")
        wait_until(lambda: self.status().get("daemon_pid"), "the daemon's PID in status.json")
        second = self.run_subprocess("daemon", "--no-initial-run", timeout=20)
        self.assertEqual(second.code, 2)
        self.assertIn(f"another daemon (PID {proc.pid}) already runs", second.stderr)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
        self.assertEqual(proc.returncode, 0)


class StatusCommand(PipelineTestCase):
    def test_status_after_a_run_lists_rows_coins_and_missing_days(self) -> None:
        self.assertEqual(self.run_main().code, 0)
        result = self.run_main("status")
        self.assertEqual(result.code, 0, result.stderr)
        self.assertIn("last run:", result.stdout)
        self.assertIn(": ok (exit 0; 10 appended", result.stdout)
        self.assertIn("10 rows in eur, 10 coins", result.stdout)
        self.assertIn("first 2023-01-08", result.stdout)
        self.assertIn("days missing:", result.stdout)
        self.assertIn("no daemon running", result.stdout)

    def test_status_counts_the_coins_the_runs_tracked_not_its_own_default(self) -> None:
        env = {k: v for k, v in self.env.items() if k != "PIPELINE_COINS"}
        self.assertEqual(self.run_main("run", "--coins", "bitcoin,ethereum,tether", env=env).code, 0)
        result = self.run_main("status", env=env)  # status's own --coins would be the nine defaults
        self.assertEqual(result.code, 0, result.stderr)
        self.assertIn("tracked:      3 coins in eur\n", result.stdout)

    def test_status_without_history(self) -> None:
        result = self.run_main("status")
        self.assertEqual(result.code, 1)
        self.assertIn("no history yet", result.stdout)

    def test_failed_run_is_recorded(self) -> None:
        self.fake.add_fault(Fault.html(403))
        self.assertEqual(self.run_main().code, 1)
        result = self.run_main("status")
        self.assertIn("failed (exit 1", result.stdout)
        self.assertIn("HTTP 403", result.stdout)


if __name__ == "__main__":
    unittest.main()
