"""Real processes against one history: a full disk, eight writers at once, and SIGKILL at random moments."""

from __future__ import annotations

import csv
import io
import multiprocessing
import os
import random
import re
import signal
import subprocess
import sys
import time
import unittest
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from tests.fake_coingecko import markets_rows
from tests.support import MAIN, PipelineTestCase, limit_file_size
from utils.history.schema import COLUMNS, HEADER_LINE

SUMMARY = re.compile(r"^run ok: (\d+) coins, (\d+) rows appended, (\d+) duplicates skipped", re.MULTILINE)
Key = tuple[str, str, str]


def ids_of(rows: list[dict]) -> list[str]:
    """The coin ids of /coins/markets rows, in order."""
    return [row["id"] for row in rows]


def history_lines(csv_path: Path) -> tuple[bytes, list[list[str]]]:
    """The raw bytes and the parsed data rows; fails on a torn final line or a line of the wrong width."""
    data = csv_path.read_bytes()
    if not data.endswith(b"\n"):
        raise AssertionError(f"{csv_path} ends without a newline: {data[-120:]!r}")
    if not data.startswith(HEADER_LINE.encode()):
        raise AssertionError(f"{csv_path} does not start with the header: {data[:200]!r}")
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    bad = [(n, row) for n, row in enumerate(rows, start=1) if len(row) != len(COLUMNS)]
    if bad:
        raise AssertionError(f"{len(bad)} lines of {csv_path} have the wrong number of fields, first: {bad[0]!r}")
    if data.count(HEADER_LINE.encode()) != 1:
        raise AssertionError("the header appears more than once")
    return data, rows[1:]


def row_keys(rows: list[list[str]]) -> list[Key]:
    """(coin_id, vs_currency, last_updated) of each parsed CSV row."""
    i_id, i_vs, i_ts = COLUMNS.index("coin_id"), COLUMNS.index("vs_currency"), COLUMNS.index("last_updated")
    return [(row[i_id], row[i_vs], row[i_ts]) for row in rows]


def snapshot_keys(rows: list[dict], vs_currency: str = "eur") -> set[Key]:
    """The identities the fake's /coins/markets rows become once stored."""
    return {(row["id"], vs_currency, row["last_updated"]) for row in rows}


def load_in_process(csv_path: str, first: int, count: int, minutes: int, barrier, results) -> None:
    """Worker for the multiprocessing test: transform generated rows and load() them into csv_path."""
    from lambdas.lambda_1_extract import Snapshot
    from lambdas.lambda_2_transform import transform
    from lambdas.lambda_3_load import load
    from utils.errors import PipelineError

    start = datetime(2024, 1, 1, 12, minutes, tzinfo=timezone.utc)
    rows = markets_rows(400, start=start)[first : first + count]
    snapshot = Snapshot(
        fetched_at=datetime.now(timezone.utc), vs_currency="eur", requested=tuple(ids_of(rows)), rows=rows
    )
    records = transform(snapshot).records
    barrier.wait()
    try:
        report = load(records, Path(csv_path), lock_timeout=60)
        results.put((first, "ok", report.appended, report.skipped_duplicates))
    except PipelineError as exc:
        results.put((first, "error", str(exc), 0))


class ProcessTestCase(PipelineTestCase):
    """Helpers to start many `python main.py` at once."""

    def setUp(self) -> None:
        super().setUp()
        # Large runs page through /coins/markets; the client's own pacing would otherwise wait a minute.
        self.env["PIPELINE_RATE_LIMIT"] = "10000"

    def finish_all(self, procs: list[subprocess.Popen], timeout: float = 90) -> list[tuple[int, str]]:
        return [self.finish(proc, timeout) for proc in procs]


class DiskFullTest(ProcessTestCase):
    """RLIMIT_FSIZE makes the append fail part-way, like a full disk: exit 1, CSV byte-identical."""

    def setUp(self) -> None:
        super().setUp()
        self.fake.set_coins(markets_rows(300))
        self.env["PIPELINE_COINS"] = ",".join(ids_of(self.fake.coins))

    def run_limited(self, limit: int) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(MAIN)],
            env=self.child_env(),
            capture_output=True,
            text=True,
            timeout=60,
            cwd=self.tmp.name,
            preexec_fn=limit_file_size(limit),
        )

    def test_append_cut_short_leaves_the_csv_byte_identical(self) -> None:
        first = self.run_subprocess()
        self.assertEqual(first.code, 0, first.stderr)
        for room in (0, 5, 4000):
            with self.subTest(room=room):
                self.fake.advance(60)
                before = self.csv_bytes()
                proc = self.run_limited(len(before) + room)
                self.assertEqual(proc.returncode, 1, proc.stderr)
                self.assertNotIn("Traceback", proc.stderr)
                failures = [line for line in proc.stderr.splitlines() if line.startswith("run failed")]
                self.assertEqual(len(failures), 1, proc.stderr)
                self.assertIn(str(self.csv_path), failures[0])
                self.assertIn("nothing was appended", failures[0])
                self.assertEqual(self.csv_bytes(), before)
                self.assertFalse((self.data_dir / "crypto_data.csv.quarantine").exists())
                # With room again, the same observations land exactly once.
                again = self.run_subprocess()
                self.assertEqual(again.code, 0, again.stderr)
                self.assertIn("300 rows appended", again.stderr)
                self.assertNotIn("cut short", again.stderr)
                _, rows = history_lines(self.csv_path)
                self.assertEqual(len(row_keys(rows)), len(set(row_keys(rows))))

    def test_no_room_for_even_the_header(self) -> None:
        proc = self.run_limited(40)
        self.assertEqual(proc.returncode, 1, proc.stderr)
        self.assertNotIn("Traceback", proc.stderr)
        failures = [line for line in proc.stderr.splitlines() if line.startswith("run failed")]
        self.assertEqual(len(failures), 1, proc.stderr)
        self.assertIn(str(self.csv_path), failures[0])
        self.assertFalse(self.csv_path.exists(), self.csv_bytes()[:100])
        leftovers = [name for name in os.listdir(self.data_dir) if name.endswith(".tmp")]
        self.assertEqual(leftovers, [])


class ConcurrencyTest(ProcessTestCase):
    """Eight runs at once on one data folder: every row exactly once, no torn or interleaved lines."""

    WRITERS = 8
    PER_WRITER = 50

    def setUp(self) -> None:
        super().setUp()
        self.fake.set_coins(markets_rows(self.WRITERS * self.PER_WRITER))
        self.all_ids = ids_of(self.fake.coins)

    def slice_ids(self, k: int) -> str:
        return ",".join(self.all_ids[k * self.PER_WRITER : (k + 1) * self.PER_WRITER])

    def test_eight_writers_with_distinct_coins_then_the_same_coins(self) -> None:
        procs = [self.start(PIPELINE_COINS=self.slice_ids(k)) for k in range(self.WRITERS)]
        results = self.finish_all(procs)
        for code, err in results:
            self.assertEqual(code, 0, err)
            self.assertIn(f"{self.PER_WRITER} rows appended", err)
        _, rows = history_lines(self.csv_path)
        self.assertEqual(sorted(row_keys(rows)), sorted(snapshot_keys(self.fake.coins)))

        # Second wave: all eight ask for all coins of a newer snapshot; only one of them may store each row.
        first_wave = set(row_keys(rows))
        self.fake.advance(60)
        procs = [self.start(PIPELINE_COINS=",".join(self.all_ids)) for _ in range(self.WRITERS)]
        appended = duplicates = 0
        for code, err in self.finish_all(procs):
            self.assertEqual(code, 0, err)
            [(coins, added, skipped)] = SUMMARY.findall(err)
            self.assertEqual(int(coins), len(self.all_ids))
            appended += int(added)
            duplicates += int(skipped)
        self.assertEqual(appended, len(self.all_ids))
        self.assertEqual(duplicates, (self.WRITERS - 1) * len(self.all_ids))
        _, rows = history_lines(self.csv_path)
        keys = row_keys(rows)
        self.assertEqual(len(keys), len(set(keys)))
        self.assertEqual(set(keys), first_wave | snapshot_keys(self.fake.coins))

    def test_eight_writers_of_one_snapshot_on_a_folder_that_does_not_exist_yet(self) -> None:
        self.data_dir = Path(self.tmp.name) / "fresh"
        self.csv_path = self.data_dir / "crypto_data.csv"
        procs = [
            self.start(PIPELINE_COINS=",".join(self.all_ids[:100]), PIPELINE_DATA_DIR=str(self.data_dir))
            for _ in range(self.WRITERS)
        ]
        appended = 0
        for code, err in self.finish_all(procs):
            self.assertEqual(code, 0, err)
            appended += int(SUMMARY.findall(err)[0][1])
        self.assertEqual(appended, 100)
        _, rows = history_lines(self.csv_path)
        self.assertEqual(sorted(row_keys(rows)), sorted(snapshot_keys(self.fake.coins[:100])))

    def load_round(self, csv_path: Path, jobs: list[tuple[int, int, int]]) -> list[tuple]:
        """Run load_in_process once per (first, count, minutes) job, all released by one barrier."""
        # fork where there is one: the children only call load(), and start at once instead of re-importing.
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        context = multiprocessing.get_context(method)
        barrier, results = context.Barrier(len(jobs)), context.Queue()
        workers = [
            context.Process(target=load_in_process, args=(str(csv_path), first, count, minutes, barrier, results))
            for first, count, minutes in jobs
        ]
        for worker in workers:
            worker.start()
        outcomes = [results.get(timeout=90) for _ in workers]
        for worker in workers:
            worker.join(timeout=30)
            self.assertEqual(worker.exitcode, 0)
        return outcomes

    @staticmethod
    def generated_keys(jobs: list[tuple[int, int, int]]) -> set[Key]:
        """The identities load_in_process stores for these jobs."""
        keys: set[Key] = set()
        for first, count, minutes in jobs:
            rows = markets_rows(400, start=datetime(2024, 1, 1, 12, minutes, tzinfo=timezone.utc))
            keys |= snapshot_keys(rows[first : first + count])
        return keys

    def test_load_from_eight_processes(self) -> None:
        """load() itself, from eight processes released at once: distinct rows, then old and newer rows mixed."""
        csv_path = self.data_dir / "crypto_data.csv"
        distinct = [(k * self.PER_WRITER, self.PER_WRITER, 0) for k in range(self.WRITERS)]
        outcomes = self.load_round(csv_path, distinct)
        self.assertEqual([o for o in outcomes if o[1] != "ok"], [])
        self.assertEqual(sum(o[2] for o in outcomes), self.WRITERS * self.PER_WRITER)
        _, rows = history_lines(csv_path)
        self.assertEqual(sorted(row_keys(rows)), sorted(self.generated_keys(distinct)))

        # Half the writers send observations already stored; the other half newer ones, in overlapping slices.
        repeated = [(k * self.PER_WRITER, self.PER_WRITER, 0) for k in range(0, self.WRITERS, 2)]
        newer = [(k // 2 * self.PER_WRITER // 2, self.PER_WRITER, 30) for k in range(1, self.WRITERS, 2)]
        outcomes = self.load_round(csv_path, repeated + newer)
        self.assertEqual([o for o in outcomes if o[1] != "ok"], [])
        self.assertEqual(sum(o[2] for o in outcomes), len(self.generated_keys(newer)))
        # Every observation offered was either appended or recognised as stored (equal or older).
        self.assertEqual(sum(o[2] + o[3] for o in outcomes), self.WRITERS * self.PER_WRITER)
        _, rows = history_lines(csv_path)
        keys = row_keys(rows)
        self.assertEqual(len(keys), len(set(keys)))
        self.assertEqual(set(keys), self.generated_keys(distinct) | self.generated_keys(newer))

    def test_eight_loads_into_a_folder_none_of_them_found(self) -> None:
        """load() creates a missing data folder; eight at once must not trip over each other doing it."""
        distinct = [(k * self.PER_WRITER, self.PER_WRITER, 0) for k in range(self.WRITERS)]
        # The collision needs two processes within microseconds of each other: try again for a few seconds.
        deadline = time.monotonic() + 6
        for attempt in range(40):
            if attempt >= 3 and time.monotonic() > deadline:
                break
            csv_path = self.data_dir / f"fresh-{attempt}" / "crypto_data.csv"
            outcomes = self.load_round(csv_path, distinct)
            self.assertEqual([o for o in outcomes if o[1] != "ok"], [], f"attempt {attempt}")
            _, rows = history_lines(csv_path)
            self.assertEqual(sorted(row_keys(rows)), sorted(self.generated_keys(distinct)))


class SigkillTest(ProcessTestCase):
    """SIGKILL at random moments of a large run; a normal run afterwards leaves a clean, complete history."""

    COINS = 2000
    TRIALS = 14

    def setUp(self) -> None:
        super().setUp()
        self.fake.set_coins(markets_rows(self.COINS))
        self.env["PIPELINE_COINS"] = ",".join(ids_of(self.fake.coins))
        self.seed = int(os.environ.get("TEST_SEED", time.time_ns() % 1_000_000))
        self.rng = random.Random(self.seed)

    def raw_snapshots(self) -> int:
        """How many raw answers the runs archived so far (one per run, written just before the load)."""
        return sum(1 for _ in (self.data_dir / "raw").rglob("*.json.gz")) if (self.data_dir / "raw").exists() else 0

    def wait_for_snapshot(self, proc: subprocess.Popen, before: int, timeout: float = 30) -> bool:
        """Poll until proc has archived its snapshot (True) or exited (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.raw_snapshots() > before:
                return True
            if proc.poll() is not None:
                return False
            time.sleep(0.001)  # a fine poll: the kill moments that follow are measured from here
        self.fail("the run neither archived its snapshot nor exited")

    def test_sigkill_at_random_moments_never_loses_or_repeats_a_row(self) -> None:
        expected: set[Key] = set(snapshot_keys(self.fake.coins))
        # Calibrate: how long a whole run takes, and how long from its archived snapshot to its exit.
        began = time.monotonic()
        before = self.raw_snapshots()
        proc = self.start()
        self.assertTrue(self.wait_for_snapshot(proc, before))
        archived = time.monotonic()
        _, err = proc.communicate(timeout=60)
        self.assertEqual(proc.returncode, 0, err)
        duration, load_window = time.monotonic() - began, time.monotonic() - archived
        reported = [int(SUMMARY.findall(err)[0][1])]
        killed = 0
        window = [0.0, load_window]
        log = [f"seed {self.seed}: a run takes {duration:.2f} s, {load_window:.3f} s of it after the snapshot"]
        for trial in range(self.TRIALS):
            self.fake.advance(60)
            version = snapshot_keys(self.fake.coins)
            expected |= version
            before = self.raw_snapshots()
            proc = self.start()
            if trial % 2 == 0:
                # Stratified delays: together these trials cover the whole run, start-up to the final fsync.
                delay = duration * 1.1 * (trial // 2 + self.rng.random()) / (self.TRIALS // 2)
                time.sleep(delay)  # the kill's moment is the test: not a wait for anything
                moment = f"{delay:.2f} s after start"
            else:
                # Aim at transform, append and state save: after the snapshot is archived, within a window
                # that narrows as trials show where the append starts (killed before it) and ends (exit 0).
                self.wait_for_snapshot(proc, before)
                delay = self.rng.uniform(*window)
                time.sleep(delay)  # the kill's moment is the test
                moment = f"{delay * 1000:.0f} ms after the snapshot"
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            _, err = proc.communicate(timeout=60)
            if proc.returncode == -signal.SIGKILL:
                killed += 1
            else:
                self.assertEqual(proc.returncode, 0, err)
                reported.append(int(SUMMARY.findall(err)[0][1]))
            recovery = self.run_subprocess()
            log.append(f"trial {trial}: {moment}, exit {proc.returncode}, then {recovery.stderr.strip()[-160:]}")
            self.assertEqual(recovery.code, 0, "\n".join(log))
            [(coins, added, _)] = SUMMARY.findall(recovery.stderr)
            self.assertEqual(int(coins), self.COINS)
            reported.append(int(added))
            if trial % 2:
                if proc.returncode == 0:
                    window[1] = min(window[1], delay)
                elif int(added) == self.COINS:
                    window[0] = max(window[0], delay)
                if window[1] - window[0] < 0.005:
                    window = [max(0.0, window[0] - 0.02), window[1] + 0.02]
            _, rows = history_lines(self.csv_path)
            self.assertEqual(sum(1 for k in row_keys(rows) if k in version), self.COINS, "\n".join(log))

        data, rows = history_lines(self.csv_path)
        keys = row_keys(rows)
        duplicates = [k for k, n in Counter(keys).items() if n > 1]
        self.assertEqual(duplicates, [], "\n".join(log))
        self.assertEqual(set(keys), expected)
        self.assertEqual(len(keys), self.COINS * (self.TRIALS + 1))
        self.assertLessEqual(sum(reported), len(keys))
        self.assertGreater(killed, 0, "no trial was killed; the delays do not span the run")

        # A kill mid-append may leave half a row; it must be in the quarantine file and stored in full later.
        quarantine = self.data_dir / "crypto_data.csv.quarantine"
        if quarantine.exists():
            lines = data.decode().splitlines()
            for fragment in quarantine.read_text().splitlines():
                if fragment.startswith("# ") or not fragment:
                    continue
                self.assertTrue(
                    any(line.startswith(fragment) for line in lines),
                    f"quarantined {fragment[:80]!r} is not the start of any stored row",
                )
        if os.environ.get("TEST_VERBOSE"):
            print("\n".join(log), file=sys.stderr)


if __name__ == "__main__":
    unittest.main()
