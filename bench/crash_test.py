"""Crash test: SIGKILL `python main.py run|backfill` at random moments, then rerun it, and check the history.

Three scenarios, each against an in-process fake CoinGecko (tests/fake_coingecko.py):

- run        a 2,000-coin snapshot appended to one growing history; the fake's data advances every trial
- backfill   20 new coins x 60 days per trial, merged into one growing history
- migration  a legacy seven-column CSV (the nine original coins, every row three times) migrated by a run
- s3-run     a 500-coin snapshot merged into one Delta table on a local S3 (moto server on loopback), read
             back with `export` (not in the default --only: `--only s3-run --trials 40`)

Each trial starts the command, SIGKILLs it at a moment drawn uniformly over the command's typical duration
(measured first with un-killed runs), runs the same command again to completion, and checks:
the CSV parses (exact header, every line has the header's field count, ends with a newline), no observation
(coin_id, vs_currency, last_updated) appears twice, every observation the fake served so far is present exactly
once and nothing else is, the rows the finished runs reported ("N rows appended" / "N rows added") add up,
and for migration that a backup byte-identical to the legacy file exists and every legacy observation is kept.

Run from the repo root:
    python bench/crash_test.py [--trials N] [--seed S] [--only run,backfill,migration] [--jobs 3] [--keep] [-v]
Exit code: 0 when every trial passes, 1 otherwise. The seed is printed so a run of delays can be replayed.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tests.fake_coingecko import FakeCoinGecko, format_iso_ms, make_daily_chart, markets_rows  # noqa: E402
from utils.history.schema import COLUMNS, HEADER_LINE  # noqa: E402
from utils.settings import DEFAULT_COINS  # noqa: E402

MAIN = REPO_ROOT / "main.py"
Key = tuple[str, str, str]
I_ID, I_VS, I_TS, I_SRC = (COLUMNS.index(c) for c in ("coin_id", "vs_currency", "last_updated", "source"))
RUN_SUMMARY = re.compile(r"^run (?:ok|partial): .*?(\d+) rows appended, (\d+) duplicates skipped", re.MULTILINE)
BACKFILL_SUMMARY = re.compile(r"^backfill (?:ok|partial): (\d+) coins, (\d+) rows added", re.MULTILINE)
LEGACY_HEADER = "name,symbol,current_price,market_cap,price_change_percentage_24h,circulating_supply,last_updated"
# The nine original coins as the legacy script wrote them (name, symbol) and as CoinGecko ids.
LEGACY_COINS = (
    ("Bitcoin", "btc", "bitcoin"),
    ("Ethereum", "eth", "ethereum"),
    ("BNB", "bnb", "binancecoin"),
    ("Cardano", "ada", "cardano"),
    ("Solana", "sol", "solana"),
    ("Dogecoin", "doge", "dogecoin"),
    ("Polkadot", "dot", "polkadot"),
    ("Litecoin", "ltc", "litecoin"),
    ("Avalanche", "avax", "avalanche-2"),
)
RATE_LIMIT = "10000"  # the most --rate-limit accepts; pacing never sleeps at this rate


# -- checking a history ---------------------------------------------------------------------------


@dataclass
class History:
    """A parsed CSV history, or the reasons it does not parse."""

    keys: list[Key] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    lines: list[str] = field(default_factory=list)
    sources: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)


def parse_into(out: History, data: bytes, first_line: int) -> None:
    """Parse data lines (complete lines of the CSV from line number first_line on) into out."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        out.problems.append(f"not UTF-8: {exc}")
        return
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    rows = list(csv.reader(lines))
    if len(rows) != len(lines):
        out.problems.append(f"{len(lines)} lines but {len(rows)} CSV records (a quoted field spans lines)")
    width = len(COLUMNS)
    bad = [(n, line) for n, (line, row) in enumerate(zip(lines, rows), start=first_line) if len(row) != width]
    if bad:
        out.problems.append(
            f"{len(bad)} lines do not have {width} fields, first: line {bad[0][0]}: {bad[0][1][:160]!r}"
        )
    header = HEADER_LINE.rstrip("\n")
    if header in lines:
        out.problems.append("the header line appears again among the data lines")
    out.lines.extend(lines)
    for row in rows:
        if len(row) == width:
            key = (row[I_ID], row[I_VS], row[I_TS])
            out.keys.append(key)
            out.counts[key] += 1
            out.sources[row[I_SRC]] += 1


def read_history(csv_path: Path) -> History:
    """Parse the CSV strictly: exact header, one record per physical line, the header's field count."""
    out = History()
    try:
        data = csv_path.read_bytes()
    except OSError as exc:
        out.problems.append(f"cannot read the CSV: {exc}")
        return out
    head = HEADER_LINE.encode()
    if not data.startswith(head):
        out.problems.append(f"the header is not exact: {data[:120]!r}")
    if not data.endswith(b"\n"):
        out.problems.append(f"the file ends without a newline (torn last line): {data[-120:]!r}")
    parse_into(out, data[len(head) :] if data.startswith(head) else data, 2)
    return out


class AppendOnlyReader:
    """Checks an append-only history in full, but parses only what was appended since the last check.

    The part checked before must be byte-identical; if it is not, the whole file is parsed again (and noted).
    """

    def __init__(self, csv_path: Path) -> None:
        self.csv_path = csv_path
        self.prefix = b""
        self.state = History()
        self.rewrites = 0

    def read(self) -> History:
        data = self.csv_path.read_bytes()
        if not self.prefix or not data.startswith(self.prefix):
            if self.prefix:
                self.rewrites += 1
            found = read_history(self.csv_path)
            found.lines = []  # not kept: the final quarantine check reads the file again
            self.state, self.prefix = found, data if not found.problems else b""
            return found
        out = self.state
        out.problems = []
        if not data.endswith(b"\n"):
            out.problems.append(f"the file ends without a newline (torn last line): {data[-120:]!r}")
        parse_into(out, data[len(self.prefix) :], out.counts.total() + 2)
        out.lines = []
        if out.problems:
            self.prefix, self.state = b"", History()  # parse it all again next time
            return History(counts=Counter(out.counts), problems=list(out.problems))
        self.prefix = data
        return out


def check_keys(found: History, expected: set[Key]) -> tuple[list[str], set[Key]]:
    """Problems with the observations: duplicates, missing (returned too) and unexpected ones."""
    problems = list(found.problems)
    counts = found.counts
    dups = [k for k, n in counts.items() if n > 1]
    if dups:
        problems.append(f"{len(dups)} observations appear more than once, e.g. {dups[0]} x{counts[dups[0]]}")
    present = counts.keys()
    missing = expected - present
    if missing:
        problems.append(f"{len(missing)} observations the fake served are missing, e.g. {sorted(missing)[0]}")
    extra = present - expected
    if extra:
        problems.append(f"{len(extra)} observations nobody served are present, e.g. {sorted(extra)[0]}")
    return problems, missing


def check_quarantine(data_dir: Path, found: History) -> list[str]:
    """A torn line moved to the quarantine file must be the start of a row stored in full later."""
    quarantine = data_dir / "crypto_data.csv.quarantine"
    if not quarantine.exists():
        return []
    stored = found.lines
    problems = []
    for fragment in quarantine.read_text(encoding="utf-8", errors="replace").splitlines():
        if not fragment or fragment.startswith("# "):
            continue
        if not any(line.startswith(fragment) for line in stored):
            problems.append(f"quarantined fragment {fragment[:80]!r} is not the start of any stored row")
    return problems


def leftover_temp_files(data_dir: Path) -> list[Path]:
    """Temporary files of atomic writes that a kill left behind."""
    return [p for p in data_dir.rglob("*.tmp") if p.is_file()]


# -- processes ------------------------------------------------------------------------------------


@dataclass
class Outcome:
    code: int
    stderr: str
    seconds: float


class Runner:
    """Starts `python main.py ...` against the fake with one data folder."""

    def __init__(self, fake: FakeCoinGecko, workdir: Path) -> None:
        self.fake, self.workdir = fake, workdir

    def env(self, data_dir: Path, extra: dict[str, str]) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "PIPELINE_DATA_DIR": str(data_dir),
                "COINGECKO_API_URL": self.fake.base_url,
                "PIPELINE_CHARTS": "0",
                "PIPELINE_HEAL": "0",
                "PIPELINE_RATE_LIMIT": RATE_LIMIT,
            }
        )
        env.pop("COINGECKO_API_KEY", None)
        env.pop("PIPELINE_CONFIG", None)
        env.update(extra)
        return env

    def start(self, argv: list[str], data_dir: Path, extra: dict[str, str]) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, str(MAIN), *argv],
            env=self.env(data_dir, extra),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.workdir,
        )

    def run(self, argv: list[str], data_dir: Path, extra: dict[str, str], timeout: float = 120) -> Outcome:
        began = time.monotonic()
        proc = self.start(argv, data_dir, extra)
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            return Outcome(-999, f"timed out after {timeout} s\n{err}", time.monotonic() - began)
        return Outcome(proc.returncode, err, time.monotonic() - began)

    def run_and_kill(self, argv: list[str], data_dir: Path, extra: dict[str, str], delay: float) -> Outcome:
        """Start, sleep delay, SIGKILL if still alive. code is -SIGKILL when the kill landed mid-run."""
        began = time.monotonic()
        proc = self.start(argv, data_dir, extra)
        deadline = began + delay
        while True:  # poll so a run that ends early does not make us sleep the rest for nothing
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                break
            time.sleep(min(left, 0.01))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        return Outcome(proc.returncode, err, time.monotonic() - began)


# -- scenarios ------------------------------------------------------------------------------------


@dataclass
class Stats:
    name: str
    trials: int = 0
    killed_mid_run: int = 0
    finished_before_kill: int = 0
    failures: int = 0
    lost: set[Key] = field(default_factory=set)
    duration: float = 0.0
    duration_end: float = 0.0
    seconds: float = 0.0
    temp_files_left: int = 0
    notes: list[str] = field(default_factory=list)


class Scenario:
    """One command killed and rerun, trial after trial."""

    name = ""

    def __init__(self, runner: Runner, root: Path, rng: random.Random, verbose: bool) -> None:
        self.runner, self.fake, self.root, self.rng, self.verbose = runner, runner.fake, root, rng, verbose
        self.stats = Stats(self.name)
        self.failure_lines: list[str] = []

    # subclasses: setup(), calibrate() -> list of durations, trial(t) -> (argv, data_dir, env, expected_new), check
    def summary_count(self, stderr: str) -> int | None:
        raise NotImplementedError

    def full_job(self, stderr: str, count: int, served: int) -> bool:
        """Whether a rerun did the whole job again (no help from the killed run), so its time is typical."""
        return count == served and "resuming" not in stderr

    def fail(self, trial: int, message: str) -> None:
        self.failure_lines.append(f"{self.name} trial {trial}: {message}")

    def execute(self, trials: int) -> Stats:
        began = time.monotonic()
        self.setup()
        durations = self.calibrate()
        self.stats.duration = statistics.median(durations)
        print(
            f"{self.name}: typical duration {self.stats.duration:.2f} s "
            f"(un-killed runs: {', '.join(f'{d:.2f}' for d in durations)} s)",
            flush=True,
        )
        # The machine's speed may drift (other load): reruns that did the whole job again keep the estimate current.
        recent = list(durations)
        for t in range(1, trials + 1):
            failures_before = len(self.failure_lines)
            argv, data_dir, extra, new_keys = self.prepare(t)
            typical = statistics.median(recent[-5:])
            delay = self.rng.uniform(0, typical)
            killed = self.runner.run_and_kill(argv, data_dir, extra, delay)
            self.stats.trials += 1
            first_count = None
            if killed.code == -signal.SIGKILL:
                self.stats.killed_mid_run += 1
            elif killed.code in (0, 3):
                self.stats.finished_before_kill += 1
                first_count = self.summary_count(killed.stderr)
                if first_count is None:
                    self.fail(t, f"the run finished (exit {killed.code}) without a summary: {killed.stderr[-300:]!r}")
            else:
                self.fail(t, f"the run to be killed exited {killed.code}: {killed.stderr.strip()[-300:]!r}")
            rerun = self.runner.run(argv, data_dir, extra)
            second_count = self.summary_count(rerun.stderr)
            if rerun.code != 0 or second_count is None:
                self.fail(t, f"the rerun exited {rerun.code}: {rerun.stderr.strip()[-400:]!r}")
            else:
                if self.full_job(rerun.stderr, second_count, len(new_keys)):
                    recent.append(rerun.seconds)
                reported = second_count + (first_count or 0)
                if first_count is not None and reported != len(new_keys):
                    self.fail(
                        t,
                        f"the finished run reported {first_count} and the rerun {second_count} rows, "
                        f"{len(new_keys)} were served",
                    )
                elif reported > len(new_keys):
                    self.fail(t, f"the rerun reported {second_count} rows, only {len(new_keys)} were served")
            self.check(t, data_dir)
            if self.verbose or len(self.failure_lines) > failures_before:
                what = "killed mid-run" if killed.code == -signal.SIGKILL else f"exit {killed.code} before the kill"
                print(
                    f"  {self.name} trial {t}: kill at {delay:.3f} of {typical:.2f} s, {what}; rerun exit {rerun.code}: "
                    f"{rerun.stderr.strip().splitlines()[-1][:150] if rerun.stderr.strip() else ''}",
                    flush=True,
                )
                for line in self.failure_lines[failures_before:]:
                    print(f"    FAIL {line}", flush=True)
            if len(self.failure_lines) > failures_before:
                self.stats.failures += 1
        self.finish()
        self.stats.duration_end = statistics.median(recent[-5:])
        self.stats.seconds = time.monotonic() - began
        return self.stats

    def finish(self) -> None:
        pass


class RunScenario(Scenario):
    """`run` with a 2,000-coin snapshot into one history that grows every trial."""

    name = "run"
    COINS = 2000

    def setup(self) -> None:
        self.data_dir = self.root / "run"
        self.data_dir.mkdir()
        self.fake.set_coins(markets_rows(self.COINS, seed=self.rng.randrange(1 << 30)))
        self.extra = {"PIPELINE_COINS": ",".join(r["id"] for r in self.fake.coins)}
        self.expected: set[Key] = set()
        self.reader = AppendOnlyReader(self.data_dir / "crypto_data.csv")

    def served(self) -> set[Key]:
        return {(r["id"], "eur", r["last_updated"]) for r in self.fake.coins}

    def summary_count(self, stderr: str) -> int | None:
        found = RUN_SUMMARY.findall(stderr)
        return int(found[-1][0]) if found else None

    def calibrate(self) -> list[float]:
        durations = []
        for _ in range(3):
            self.fake.advance(60)
            self.expected |= self.served()
            outcome = self.runner.run(["run"], self.data_dir, self.extra)
            if outcome.code != 0:
                raise RuntimeError(f"run: the calibration run failed (exit {outcome.code}): {outcome.stderr}")
            durations.append(outcome.seconds)
        return durations[1:]  # the first run on a new folder also builds the state: not typical

    def prepare(self, t: int):
        self.fake.advance(60)
        new = self.served()
        self.expected |= new
        return ["run"], self.data_dir, self.extra, new

    def check(self, t: int, data_dir: Path) -> None:
        found = self.reader.read()
        problems, missing = check_keys(found, self.expected)
        self.stats.lost |= missing
        for p in problems:
            self.fail(t, p)

    def finish(self) -> None:
        found = read_history(self.data_dir / "crypto_data.csv")
        problems, missing = check_keys(found, self.expected)  # once more in full, from scratch
        self.stats.lost |= missing
        for p in problems + check_quarantine(self.data_dir, found):
            self.fail(self.stats.trials, p)
        temps = leftover_temp_files(self.data_dir)
        self.stats.temp_files_left = len(temps)
        self.stats.notes.append(f"history {len(found.keys)} rows")
        if temps:
            self.stats.notes.append(
                "temp files left: "
                + ", ".join(f"{p.relative_to(self.data_dir)} ({p.stat().st_size} bytes)" for p in temps[:4])
            )
        if self.reader.rewrites:
            self.stats.notes.append(f"the append-only history was rewritten {self.reader.rewrites} times")


class BackfillScenario(Scenario):
    """`backfill` of 20 new coins x 60 days per trial, merged into one history that grows every trial."""

    name = "backfill"
    COINS = 20
    DAYS = 60

    def setup(self) -> None:
        self.data_dir = self.root / "backfill"
        self.data_dir.mkdir()
        today = datetime.now(timezone.utc).date()
        self.until = today - timedelta(days=3)  # explicit days: no dependence on the clock crossing midnight
        self.since = self.until - timedelta(days=self.DAYS - 1)
        self.expected: set[Key] = set()
        self.slot = 0
        self.chart_start = self.since - timedelta(days=10)
        self.chart_days = (today - self.chart_start).days + 1

    def next_coins(self) -> list[str]:
        ids = [f"bf-{self.slot:03d}-{i:02d}" for i in range(self.COINS)]
        self.slot += 1
        now = datetime.now(timezone.utc)
        for n, coin in enumerate(ids):
            self.fake.market_chart[coin] = make_daily_chart(
                self.chart_start,
                self.chart_days,
                10.0 ** self.rng.uniform(-4, 5),
                partial_point_at=now,
                seed=self.slot * 100 + n,
            )
        return ids

    def served(self, ids: list[str]) -> set[Key]:
        days = [self.since + timedelta(days=i) for i in range(self.DAYS)]
        return {(c, "eur", f"{d.isoformat()}T00:00:00.000Z") for c in ids for d in days}

    def argv(self, ids: list[str]) -> list[str]:
        return [
            "backfill",
            "--since",
            self.since.isoformat(),
            "--until",
            self.until.isoformat(),
            "--rate-limit",
            RATE_LIMIT,
            "--coins",
            ",".join(ids),
        ]

    def summary_count(self, stderr: str) -> int | None:
        found = BACKFILL_SUMMARY.findall(stderr)
        return int(found[-1][1]) if found else None

    def calibrate(self) -> list[float]:
        durations = []
        for _ in range(3):
            ids = self.next_coins()
            self.expected |= self.served(ids)
            outcome = self.runner.run(self.argv(ids), self.data_dir, {})
            if outcome.code != 0:
                raise RuntimeError(f"backfill: the calibration run failed (exit {outcome.code}): {outcome.stderr}")
            durations.append(outcome.seconds)
        return durations

    def prepare(self, t: int):
        ids = self.next_coins()
        new = self.served(ids)
        self.expected |= new
        return self.argv(ids), self.data_dir, {}, new

    def check(self, t: int, data_dir: Path) -> None:
        found = read_history(self.data_dir / "crypto_data.csv")
        problems, missing = check_keys(found, self.expected)
        self.stats.lost |= missing
        for p in problems:
            self.fail(t, p)
        stamps = [k[2] for k in found.keys]
        if stamps != sorted(stamps):
            self.fail(t, "the history is not sorted by time after a backfill-only history was merged")
        manifests = list((self.data_dir / ".state").glob("backfill-*.json"))
        if manifests:
            self.fail(t, f"a finished backfill left its resume manifest: {manifests[0].name}")

    def finish(self) -> None:
        found = read_history(self.data_dir / "crypto_data.csv")
        for p in check_quarantine(self.data_dir, found):
            self.fail(self.stats.trials, p)
        temps = leftover_temp_files(self.data_dir)
        self.stats.temp_files_left = len(temps)
        self.stats.notes.append(f"history {len(found.keys)} rows")
        if temps:
            self.stats.notes.append(
                "temp files left: "
                + ", ".join(f"{p.relative_to(self.data_dir)} ({p.stat().st_size} bytes)" for p in temps[:4])
            )


class MigrationScenario(Scenario):
    """`run` on a fresh folder holding a legacy seven-column CSV: migrate, then append the snapshot."""

    name = "migration"
    PER_COIN = 700  # unique timestamps per coin; 9 x 700 x 3 = 18,900 legacy rows

    def setup(self) -> None:
        self.base = self.root / "migration"
        self.base.mkdir()
        rows = markets_rows(len(LEGACY_COINS), start=datetime(2024, 6, 1, 12, tzinfo=timezone.utc))
        for row, (name, symbol, coin_id) in zip(rows, LEGACY_COINS):
            row.update(id=coin_id, name=name, symbol=symbol)
        self.fake.set_coins(rows)
        self.extra = {"PIPELINE_COINS": ",".join(DEFAULT_COINS)}
        self.legacy_bytes, self.legacy_keys = self.make_legacy()

    def make_legacy(self) -> tuple[bytes, set[Key]]:
        """Thousands of legacy rows of the nine coins, each written three times, in shuffled order."""
        rng = random.Random(self.rng.randrange(1 << 30))
        start = datetime(2023, 1, 1, tzinfo=timezone.utc)
        unique, keys = [], set()
        for i, (name, symbol, coin_id) in enumerate(LEGACY_COINS):
            price = 10.0 ** rng.uniform(-1, 4.5)
            for n in range(self.PER_COIN):
                moment = start + timedelta(hours=n, milliseconds=137 * i + rng.randint(0, 999))
                stamp = format_iso_ms(moment)
                price *= 1 + rng.uniform(-0.02, 0.02)
                supply = rng.uniform(1e7, 1e11)
                unique.append(
                    [
                        name,
                        symbol,
                        repr(round(price, 6)),
                        str(int(price * supply)),
                        repr(round(rng.uniform(-12, 12), 5)),
                        repr(round(supply, 2)),
                        stamp,
                    ]
                )
                keys.add((coin_id, "eur", stamp))
        rows = unique * 3
        rng.shuffle(rows)
        lines = [LEGACY_HEADER] + [",".join(r) for r in rows]
        return ("\n".join(lines) + "\n").encode("utf-8"), keys

    def fresh_dir(self, label: str) -> Path:
        """A new data folder holding only the legacy CSV; the previous trial's folder is removed."""
        previous = getattr(self, "current_dir", None)
        if previous is not None and previous.exists() and not self.keep_dirs:
            shutil.rmtree(previous)
        data_dir = self.base / label
        data_dir.mkdir()
        self.current_dir = data_dir
        (data_dir / "crypto_data.csv").write_bytes(self.legacy_bytes)
        return data_dir

    keep_dirs = False

    def full_job(self, stderr: str, count: int, served: int) -> bool:
        return count == served and "from the original seven-column layout" in stderr

    def summary_count(self, stderr: str) -> int | None:
        found = RUN_SUMMARY.findall(stderr)
        return int(found[-1][0]) if found else None

    def served(self) -> set[Key]:
        return {(r["id"], "eur", r["last_updated"]) for r in self.fake.coins}

    def calibrate(self) -> list[float]:
        durations = []
        for c in range(3):
            data_dir = self.fresh_dir(f"calibration-{c}")
            outcome = self.runner.run(["run"], data_dir, self.extra)
            if outcome.code != 0:
                raise RuntimeError(f"migration: the calibration run failed (exit {outcome.code}): {outcome.stderr}")
            durations.append(outcome.seconds)
        return durations

    def prepare(self, t: int):
        self.fake.advance(60)
        self.snapshot = self.served()
        data_dir = self.fresh_dir(f"trial-{t:03d}")
        return ["run"], data_dir, self.extra, self.snapshot

    def check(self, t: int, data_dir: Path) -> None:
        found = read_history(data_dir / "crypto_data.csv")
        problems, missing = check_keys(found, self.legacy_keys | self.snapshot)
        self.stats.lost |= {(f"trial{t}",) + k for k in missing}  # each trial has its own history
        for p in problems:
            self.fail(t, p)
        if found.sources.get("legacy", 0) != len(self.legacy_keys):
            self.fail(t, f"{found.sources.get('legacy', 0)} rows have source legacy, {len(self.legacy_keys)} expected")
        backups = sorted(data_dir.glob("crypto_data.csv.legacy-*.bak"))
        identical = [b for b in backups if b.read_bytes() == self.legacy_bytes]
        if not identical:
            self.fail(
                t,
                f"no backup byte-identical to the legacy file ({len(backups)} backups: "
                f"{[b.stat().st_size for b in backups]} bytes, legacy {len(self.legacy_bytes)})",
            )
        strays = [b for b in backups if b not in identical]
        if strays:
            self.stats.notes.append(
                f"trial {t}: {len(strays)} partial backup(s) beside the good one "
                f"({[b.stat().st_size for b in strays]} of {len(self.legacy_bytes)} bytes)"
            )
        quarantine = data_dir / "crypto_data.csv.quarantine"
        if quarantine.exists() and "could not be mapped" in quarantine.read_text(errors="replace"):
            self.fail(t, "legacy rows were quarantined as unmappable")
        for p in check_quarantine(data_dir, found):
            self.fail(t, p)
        self.stats.temp_files_left += len(leftover_temp_files(data_dir))


class S3RunScenario(RunScenario):
    """`run` into one Delta table on a local S3 (moto in server mode on loopback), growing every trial.

    A kill can land while Parquet files are uploaded, before or after the commit's log entry is written:
    a Delta commit is the one conditional PUT of _delta_log/NNN.json, so the table holds a run's rows
    entirely or not at all, and the rerun stores exactly what is missing. The table is read back with
    `python main.py export`, in the CSV store's format, and checked like the CSV."""

    name = "s3-run"
    COINS = 500

    def setup(self) -> None:
        from tests.s3_server import LocalS3

        self.s3 = LocalS3().start()
        self.data_dir = self.s3.url(self.name)  # type: ignore[assignment]
        self.fake.set_coins(markets_rows(self.COINS, seed=self.rng.randrange(1 << 30)))
        tmp = self.root / f"{self.name}-tmp"  # the S3 scratch copy (index) of this scenario alone
        tmp.mkdir()
        self.extra = {"PIPELINE_COINS": ",".join(r["id"] for r in self.fake.coins), "TMPDIR": str(tmp), **self.s3.env}
        self.expected: set[Key] = set()
        self.exports = 0

    def read(self) -> History:
        self.exports += 1
        out = self.root / f"{self.name}-export-{self.exports}.csv"
        done = self.runner.run(["export", "--out", str(out)], self.data_dir, self.extra)
        if done.code != 0:
            return History(problems=[f"export exited {done.code}: {done.stderr.strip()[-300:]!r}"])
        found = read_history(out)
        out.unlink()
        return found

    def check(self, t: int, data_dir: Path) -> None:
        problems, missing = check_keys(self.read(), self.expected)
        self.stats.lost |= missing
        for p in problems:
            self.fail(t, p)

    def finish(self) -> None:
        try:
            found = self.read()
            problems, missing = check_keys(found, self.expected)
            self.stats.lost |= missing
            for p in problems:
                self.fail(self.stats.trials, p)
            objects = self.s3.keys(f"{self.name}/crypto_data/")
            logs = [k for k in objects if "/_delta_log/" in k and k.endswith(".json")]
            self.stats.notes.append(f"table {len(found.keys)} rows, {len(logs)} commits, {len(objects)} objects")
        finally:
            self.s3.stop()


# -- main -----------------------------------------------------------------------------------------


def split_trials(total: int, names: list[str]) -> dict[str, int]:
    """Split a total over the scenarios: 40% run, 30% backfill, 30% migration (of those chosen)."""
    weights = {"run": 4, "backfill": 3, "migration": 3, "s3-run": 4}
    chosen = {n: weights[n] for n in names}
    counts = {n: total * w // sum(chosen.values()) for n, w in chosen.items()}
    counts[names[0]] += total - sum(counts.values())
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=200, help="trials in total (default 200: 80/60/60)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: from the clock; printed)")
    parser.add_argument("--only", default="run,backfill,migration", help="scenarios to run, comma-separated")
    parser.add_argument("--tmpdir", default=None, help="where to create the work folder")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (always kept on failure)")
    parser.add_argument(
        "--jobs",
        type=int,
        default=3,
        help="scenarios run at once, each with its own fake server and folder (default 3)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="one line per trial")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = set(names) - {"run", "backfill", "migration", "s3-run"}
    if unknown or not names:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown)) or '(none)'}")
    seed = args.seed if args.seed is not None else time.time_ns() % 1_000_000_000
    counts = split_trials(args.trials, names)
    print(
        f"crash test: seed {seed} (replay with --seed {seed}), trials "
        + ", ".join(f"{n} {c}" for n, c in counts.items()),
        flush=True,
    )

    began = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="crash_test_", dir=args.tmpdir))
    classes = {
        "run": RunScenario,
        "backfill": BackfillScenario,
        "migration": MigrationScenario,
        "s3-run": S3RunScenario,
    }
    all_stats: list[Stats] = []
    failure_lines: list[str] = []
    fakes: list[FakeCoinGecko] = []
    print_lock = threading.Lock()

    def play(name: str) -> None:
        """One scenario with its own fake server (their /coins/markets data differ) and data folder."""
        fake = FakeCoinGecko().start()
        fakes.append(fake)
        scenario = classes[name](Runner(fake, root), root, random.Random(f"{seed}-{name}"), args.verbose)
        if isinstance(scenario, MigrationScenario):
            scenario.keep_dirs = args.keep
        try:
            stats = scenario.execute(counts[name])
        except BaseException as exc:  # noqa: BLE001 - a scenario that cannot go on is a failure, not a crash
            stats = scenario.stats
            stats.failures += 1
            scenario.failure_lines.append(f"{name}: stopped: {type(exc).__name__}: {exc}")
        finally:
            fake.stop()
        if fake.errors:
            stats.failures += 1
            scenario.failure_lines.append(f"{name}: the fake server hit {len(fake.errors)} errors: {fake.errors[:3]}")
        with print_lock:
            all_stats.append(stats)
            failure_lines.extend(scenario.failure_lines)
            print(
                f"{name}: {stats.trials} trials, {stats.killed_mid_run} kills landed mid-run, "
                f"{stats.finished_before_kill} finished before the kill, {stats.failures} failures, "
                f"rows lost: {len(stats.lost)}, temp files left by kills: {stats.temp_files_left}, "
                f"typical duration {stats.duration:.2f} s at start, {stats.duration_end:.2f} s at the end, "
                f"{stats.seconds:.0f} s",
                flush=True,
            )
            for note in stats.notes[:10]:
                print(f"  note: {note}")
            if len(stats.notes) > 10:
                print(f"  note: ... {len(stats.notes) - 10} more")

    # Scenarios are independent (own folder, own fake): run up to --jobs at once; the longest first.
    order = sorted(names, key=["s3-run", "backfill", "migration", "run"].index)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for future in [pool.submit(play, name) for name in order]:
            future.result()
    trials = sum(s.trials for s in all_stats)
    failures = sum(s.failures for s in all_stats)
    lost = sum(len(s.lost) for s in all_stats)
    for line in failure_lines[:40]:
        print(f"FAIL {line}")
    if failures or args.keep:
        print(f"work folder kept: {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    print(
        f"crash test: {trials} trials, {failures} failures, rows lost: {lost} "
        f"(seed {seed}, {time.monotonic() - began:.0f} s)"
    )
    return 1 if failures or lost else 0


if __name__ == "__main__":
    sys.exit(main())
