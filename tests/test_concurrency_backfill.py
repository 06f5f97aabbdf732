"""Eight `run` processes and one `backfill` on one data folder at once: every row exactly once, none torn."""

from __future__ import annotations

import copy
import csv
import os
import re
import subprocess
import sys
import threading
import unittest
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

from tests.fake_coingecko import format_iso_ms, make_daily_chart, markets_rows, parse_iso
from tests.support import PipelineTestCase, slow_part, wait_until
from utils.history.schema import COLUMNS, HEADER_LINE

RUN_SUMMARY = re.compile(
    r"^run (ok|partial): (\d+)(?: of \d+)? coins, (\d+) rows appended, (\d+) duplicates skipped", re.MULTILINE
)
BACKFILL_SUMMARY = re.compile(
    r"^backfill (ok|partial): (\d+) coins, (\d+) rows added, (\d+) duplicates skipped", re.MULTILINE
)
Key = tuple[str, str, str]


def history_keys(csv_path: Path) -> list[Key]:
    """(coin_id, vs_currency, last_updated) of every data line; fails on a bad header, a torn or misaligned line."""
    data = csv_path.read_bytes()
    if not data.startswith(HEADER_LINE.encode()):
        raise AssertionError(f"{csv_path} does not start with the header: {data[:200]!r}")
    if not data.endswith(b"\n"):
        raise AssertionError(f"{csv_path} ends without a newline: {data[-160:]!r}")
    lines = data.decode("utf-8").split("\n")[:-1]
    rows = list(csv.reader(lines))
    if len(rows) != len(lines):
        raise AssertionError(f"{len(lines)} lines but {len(rows)} records: a quoted field spans lines")
    bad = [(n, line) for n, (line, row) in enumerate(zip(lines, rows), 1) if len(row) != len(COLUMNS)]
    if bad:
        raise AssertionError(f"{len(bad)} lines without {len(COLUMNS)} fields, first: {bad[0]!r}")
    if lines.count(HEADER_LINE.rstrip("\n")) != 1:
        raise AssertionError("the header line appears more than once")
    i_id, i_vs, i_ts = COLUMNS.index("coin_id"), COLUMNS.index("vs_currency"), COLUMNS.index("last_updated")
    return [(row[i_id], row[i_vs], row[i_ts]) for row in rows[1:]]


def snapshot_keys(rows: list[dict]) -> set[Key]:
    return {(row["id"], "eur", row["last_updated"]) for row in rows}


class RunsAndBackfillTogether(PipelineTestCase):
    """One data folder, eight `run` writers and one `backfill` at the same time."""

    WRITERS = 8
    PER_WRITER = 40
    DAYS = 30
    UNKNOWN = "no-such-coin-anywhere"

    def setUp(self) -> None:
        super().setUp()
        self.env["PIPELINE_RATE_LIMIT"] = "10000"  # the most it takes; the client's pacing never waits
        self.env["PIPELINE_LOCK_TIMEOUT"] = "120"
        now = datetime.now(timezone.utc)
        # Snapshots are newer than any backfilled day, as a live snapshot always is.
        self.fake.set_coins(markets_rows(self.WRITERS * self.PER_WRITER, start=now - timedelta(hours=2)))
        self.ids = [row["id"] for row in self.fake.coins]
        self.until = now.date() - timedelta(days=2)  # explicit days: no dependence on crossing midnight
        self.since = self.until - timedelta(days=self.DAYS - 1)
        # The backfill overlaps every writer (its first three coins) and has six coins of its own.
        self.backfill_ids = [c for k in range(self.WRITERS) for c in self.slice_ids(k)[:3]] + [
            f"backfill-only-{n:02d}" for n in range(6)
        ]
        chart_start = self.since - timedelta(days=5)
        for n, coin in enumerate(self.backfill_ids):
            self.fake.market_chart[coin] = make_daily_chart(
                chart_start, (now.date() - chart_start).days + 1, 1.5**n, partial_point_at=now, seed=n
            )
        self.coins_lock = threading.Lock()

    # -- helpers ------------------------------------------------------------------------------------
    def slice_ids(self, k: int) -> list[str]:
        return self.ids[k * self.PER_WRITER : (k + 1) * self.PER_WRITER]

    def backfill_keys(self) -> set[Key]:
        days = [self.since + timedelta(days=i) for i in range(self.DAYS)]
        return {(c, "eur", f"{d.isoformat()}T00:00:00.000Z") for c in self.backfill_ids for d in days}

    def backfill_argv(self) -> list[str]:
        return [
            "backfill",
            "--since",
            self.since.isoformat(),
            "--until",
            self.until.isoformat(),
            "--coins",
            ",".join(self.backfill_ids),
        ]

    def writer(self, *argv: str, coins: list[str] | None = None) -> subprocess.Popen:
        """`python main.py argv` in the background, for the given coins (default: the test's)."""
        changes = {} if coins is None else {"PIPELINE_COINS": ",".join(coins)}
        return self.start(*argv, stdout=subprocess.DEVNULL, **changes)

    def served_slice(self, k: int) -> list[dict]:
        """The /coins/markets rows writer k is served now (only writer k's thread changes them)."""
        wanted = set(self.slice_ids(k))
        with self.coins_lock:
            return [copy.deepcopy(row) for row in self.fake.coins if row["id"] in wanted]

    def advance_slice(self, k: int) -> None:
        """Move writer k's coins a minute on, leaving the other writers' coins alone."""
        wanted = set(self.slice_ids(k))
        with self.coins_lock:
            rows = copy.deepcopy(self.fake.coins)
            for row in rows:
                if row["id"] in wanted:
                    row["last_updated"] = format_iso_ms(parse_iso(row["last_updated"]) + timedelta(seconds=60))
                    row["current_price"] *= 1.01
            self.fake.set_coins(rows)

    def assert_history(self, expected: set[Key]) -> None:
        keys = history_keys(self.csv_path)
        duplicates = [k for k, n in Counter(keys).items() if n > 1]
        self.assertEqual(duplicates[:5], [], f"{len(duplicates)} observations stored more than once")
        missing = expected - set(keys)
        self.assertEqual(sorted(missing)[:5], [], f"{len(missing)} observations lost")
        extra = set(keys) - expected
        self.assertEqual(sorted(extra)[:5], [], f"{len(extra)} observations nobody served")
        self.assertEqual(len(keys), len(expected))

    def assert_nothing_more(self, expected: set[Key]) -> None:
        """A following run of every coin appends nothing; the same backfill again adds nothing."""
        before = self.csv_path.read_bytes()
        code, err = self.finish(self.writer("run", coins=self.ids))
        self.assertEqual(code, 0, err)
        [(_, coins, appended, skipped)] = RUN_SUMMARY.findall(err)
        self.assertEqual((int(coins), int(appended), int(skipped)), (len(self.ids), 0, len(self.ids)), err)
        self.assertEqual(self.csv_path.read_bytes(), before)
        code, err = self.finish(self.writer(*self.backfill_argv()))
        self.assertEqual(code, 0, err)
        [(_, coins, added, skipped)] = BACKFILL_SUMMARY.findall(err)
        self.assertEqual(
            (int(coins), int(added), int(skipped)), (len(self.backfill_ids), 0, len(self.backfill_keys())), err
        )
        self.assertEqual(self.csv_path.read_bytes(), before)
        self.assert_history(expected)
        self.assertEqual(list((self.data_dir / ".state").glob("backfill-*.json")), [], "a resume manifest is left")

    # -- tests --------------------------------------------------------------------------------------
    def test_eight_runs_and_one_backfill_at_once(self) -> None:
        backfill = self.writer(*self.backfill_argv())
        # Writer 0 also asks for a coin CoinGecko does not know: a partial run, exit 3, the rest stored.
        runs = [
            self.writer("run", coins=self.slice_ids(k) + ([self.UNKNOWN] if k == 0 else []))
            for k in range(self.WRITERS)
        ]
        appended = 0
        for k, proc in enumerate(runs):
            code, err = self.finish(proc)
            self.assertEqual(code, 3 if k == 0 else 0, err)
            [(word, coins, added, skipped)] = RUN_SUMMARY.findall(err)
            self.assertEqual(word, "partial" if k == 0 else "ok", err)
            self.assertEqual((int(coins), int(added), int(skipped)), (self.PER_WRITER, self.PER_WRITER, 0), err)
            appended += int(added)
        code, err = self.finish(backfill)
        self.assertEqual(code, 0, err)
        [(_, coins, added, skipped)] = BACKFILL_SUMMARY.findall(err)
        self.assertEqual((int(coins), int(added), int(skipped)), (len(self.backfill_ids), len(self.backfill_keys()), 0))

        expected = snapshot_keys(self.fake.coins) | self.backfill_keys()
        self.assertEqual(appended + int(added), len(expected))
        self.assert_history(expected)
        self.assert_nothing_more(expected)

    @slow_part(
        "runs appending before, during and after the backfill's merge: 30 and more processes; the race of eight"
        " runs and a backfill started at once stays in test-fast"
    )
    def test_backfill_while_eight_writers_keep_appending(self) -> None:
        expected: set[Key] = set()
        failures: list[str] = []
        runs_done = Counter()
        backfill_done = threading.Event()
        results_lock = threading.Lock()
        ended_before_merge = Counter()

        def writer(k: int) -> None:
            # Loop until the backfill is done, then once more: appends before, during and after its merge.
            # (No time floor: on a busy machine a floor only spends CPU; the backfill sets the pace.)
            started_after_merge = False
            while not started_after_merge:
                if runs_done[k]:
                    self.advance_slice(k)  # new observations for every run, so each appends its whole slice
                served = self.served_slice(k)
                started_after_merge = backfill_done.is_set()
                code, err = self.finish(self.writer("run", coins=self.slice_ids(k)))
                found = RUN_SUMMARY.findall(err)
                with results_lock:
                    expected.update(snapshot_keys(served))
                    runs_done[k] += 1
                    ended_before_merge[k] += not backfill_done.is_set()
                    if code != 0 or not found or int(found[0][2]) != self.PER_WRITER:
                        failures.append(f"writer {k} run {runs_done[k]}: exit {code}: {err.strip()[-300:]}")
                if len(failures) > 5:
                    return

        threads = [threading.Thread(target=writer, args=(k,), daemon=True) for k in range(self.WRITERS)]
        for thread in threads:
            thread.start()
        # The writers are under way (CoinGecko asked) when the backfill starts.
        wait_until(lambda: len(self.fake.requests_to("/coins/markets")) >= self.WRITERS, "every writer's request", 60)
        code, err = self.finish(self.writer(*self.backfill_argv()))
        backfill_done.set()
        for thread in threads:
            thread.join(timeout=120)
            self.assertFalse(thread.is_alive(), "a writer never stopped")
        self.assertEqual(failures, [])
        self.assertEqual(code, 0, err)
        [(_, coins, added, skipped)] = BACKFILL_SUMMARY.findall(err)
        self.assertEqual((int(coins), int(added), int(skipped)), (len(self.backfill_ids), len(self.backfill_keys()), 0))
        self.assertGreaterEqual(min(runs_done[k] for k in range(self.WRITERS)), 2, runs_done)
        if os.environ.get("TEST_VERBOSE"):
            print(
                f"\nruns per writer {dict(runs_done)}, of them ended before the merge {dict(ended_before_merge)}",
                file=sys.stderr,
            )

        expected |= self.backfill_keys()
        self.assertEqual(sum(runs_done.values()) * self.PER_WRITER + int(added), len(expected))
        self.assert_history(expected)
        self.assert_nothing_more(expected)


if __name__ == "__main__":
    unittest.main()
