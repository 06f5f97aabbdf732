"""Shared test helpers: a temp data folder, the fake CoinGecko server, and ways to run the CLI."""

from __future__ import annotations

import contextlib
import csv
import ctypes
import io
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import unittest.mock
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

from tests.fake_coingecko import FakeCoinGecko, make_daily_chart
from tests.s3_server import LocalS3

REPO = Path(__file__).resolve().parent.parent
MAIN = REPO / "main.py"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import main as cli  # noqa: E402
from utils.history.schema import COLUMNS, Record  # noqa: E402

# A shell's background job (nohup make test &, a CI script) starts the tests with SIGINT ignored, and an
# ignored signal stays ignored across exec: the Ctrl-C test's `python main.py` would never see its SIGINT.
# A handled signal is reset to the default in a child, where Python turns it into KeyboardInterrupt.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER = 1, 2, 3

FIXTURE_IDS = (
    "bitcoin",
    "ethereum",
    "tether",
    "binancecoin",
    "ripple",
    "dogecoin",
    "matic-network",
    "staked-ether",
    "shiba-inu",
    "algorand",
)


@dataclass
class CliResult:
    """What a command printed and returned."""

    code: int
    stdout: str
    stderr: str


def drop_file_capabilities() -> None:
    """In the child: give up root's power to ignore file permissions, so chmod means something."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            os._exit(97)


T = TypeVar("T")

# `make test-fast` sets TEST_FAST=1 and leaves out the tests marked slow_part (`make test` and CI run them).
TEST_FAST = os.environ.get("TEST_FAST") == "1"


def examples(n: int) -> int:
    """How many examples a property test (hypothesis) tries: n, or a quarter of n (at least 10) in `make test-fast`
    (TEST_FAST=1), as hypothesis' guide suggests a quicker profile for the edit-test loop and the full count in CI.
    Each property and its explicit @example cases run either way; `make test` tries all n."""
    return max(10, n // 4) if TEST_FAST else n


def slow_part(why: str) -> Callable[[T], T]:
    """Marks a test `make test-fast` leaves out (it sets TEST_FAST=1): the heavy rest of a check whose quick
    part stays in test-fast. `make test`, CI and `python -m unittest` run it; why says what it adds."""
    return unittest.skipIf(TEST_FAST, f"left out of make test-fast (make test runs it): {why}")


def wait_until(predicate: Callable[[], T], what: str, timeout: float = 30.0, interval: float = 0.02) -> T:
    """Poll predicate until it returns something true, and return that; fail naming `what` after timeout seconds.

    For waiting on another process or thread: a condition, never a fixed sleep that is too short on a busy
    machine and too long on an idle one."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def process_is_idle(pid: int, quiet: float = 0.2) -> bool:
    """True when every thread of the process sleeps and it spends no CPU for `quiet` seconds (Linux /proc).

    That is a process blocked where a test wants it: waiting for a lock, a socket or its schedule. A process
    that is merely not scheduled on a busy machine is runnable (state R), so it never looks idle."""

    def sample() -> tuple[bool, int]:
        try:
            tasks = Path(f"/proc/{pid}/task").iterdir()
            states = [(task / "stat").read_text().rsplit(")", 1)[1].split()[0] for task in tasks]
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):  # exited, or a thread ended while listed: look again
            return False, -1
        return all(state == "S" for state in states), int(fields[11]) + int(fields[12])  # utime + stime

    asleep, before = sample()
    for _ in range(4):
        if not asleep:
            return False
        time.sleep(quiet / 4)
        asleep, now = sample()
    return asleep and 0 <= now - before <= 1  # at most one clock tick: a lock's or a timer's polling


def summary_line(stderr: str) -> str:
    """A command's summary: its last line on stderr, passing over the quality line that may follow it."""
    lines = [line for line in stderr.strip().splitlines() if not line.startswith("quality: ")]
    return lines[-1] if lines else ""


def read_rows(path: Path) -> list[dict[str, str]]:
    """The CSV's rows as dicts (the header is checked by the caller)."""
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


class PipelineTestCase(unittest.TestCase):
    """A fresh data folder and a running fake CoinGecko per test."""

    coins: list[dict] | None = None

    def setUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        # S3 scratch copies (utils/scratch.py) in this test's own cache folder: tests that name the same bucket,
        # one after the other or at once in two workers, never read each other's copy of it.
        cache = unittest.mock.patch.dict(os.environ, {"XDG_CACHE_HOME": str(Path(self.tmp.name) / "cache")})
        cache.start()
        self.addCleanup(cache.stop)
        self.data_dir = Path(self.tmp.name) / "data"
        self.data_dir.mkdir()
        self.csv_path = self.data_dir / "crypto_data.csv"
        self.fake = FakeCoinGecko(self.coins).start()
        self.addCleanup(self.fake.stop)
        self.sleeps: list[float] = []
        self.env = {
            "COINGECKO_API_URL": self.fake.base_url,
            "PIPELINE_DATA_DIR": str(self.data_dir),
            "PIPELINE_COINS": ",".join(FIXTURE_IDS),
            "PIPELINE_CHARTS": "0",
            "PIPELINE_HEAL": "0",
            "PATH": os.environ.get("PATH", ""),
        }

    def run_main(self, *argv: str, env: dict[str, str] | None = None) -> CliResult:
        """main() in this process, with the sleep recorded instead of slept."""
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(list(argv), env=self.env if env is None else env, sleep=self.sleeps.append)
        return CliResult(code, out.getvalue(), err.getvalue())

    def child_env(self, env: dict[str, str] | None = None, **changes: str) -> dict[str, str]:
        """What a `python main.py` child gets: os.environ, then this test's variables (or env), then changes."""
        return {**os.environ, **(self.env if env is None else env), **changes}

    def run_subprocess(self, *argv: str, env: dict[str, str] | None = None, timeout: float = 60) -> CliResult:
        """python main.py ... in a real child process."""
        proc = subprocess.run(
            [sys.executable, str(MAIN), *argv],
            env=self.child_env(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.tmp.name,
        )
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    def start(
        self,
        *argv: str,
        env: dict[str, str] | None = None,
        stdout: int = subprocess.PIPE,
        stderr: int = subprocess.PIPE,
        **changes: str,
    ) -> subprocess.Popen:
        """`python main.py argv` in the background, in the test's folder; killed (if still running) and reaped
        at clean-up. Many at once are the concurrency tests' writers; one is a daemon or a run to signal."""
        proc = subprocess.Popen(
            [sys.executable, str(MAIN), *argv],
            env=self.child_env(env, **changes),
            stdout=stdout,
            stderr=stderr,
            text=True,
            cwd=self.tmp.name,
        )
        self.addCleanup(reap, proc)
        return proc

    @staticmethod
    def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
        """Wait for a started command: its exit code and its stderr."""
        _, err = proc.communicate(timeout=timeout)
        return proc.returncode, err

    def csv_bytes(self) -> bytes:
        return self.csv_path.read_bytes() if self.csv_path.exists() else b""

    def rows(self) -> list[dict[str, str]]:
        return read_rows(self.csv_path)


NOW = datetime.now(timezone.utc)  # one "now" for a test module's histories and the fake's answers
TODAY = NOW.date()


class SimClock:
    """Monotonic time that only sleeping moves; shared by the client's pacing and the fake server's limit."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.slept = 0.0

    def monotonic(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds
        self.slept += seconds


def charts_for(ids, days: int = 420) -> dict:
    """/market_chart answers for ids: `days` daily points up to today, then the partial point of now."""
    start = TODAY - timedelta(days=days - 1)
    return {coin: make_daily_chart(start, days, 100.0 + i, partial_point_at=NOW, seed=i) for i, coin in enumerate(ids)}


def limit_file_size(limit: int) -> Callable[[], None]:
    """A preexec_fn: files the child writes cannot grow beyond limit bytes (writes fail with EFBIG, a full disk)."""

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


class FailureWatch:
    """Stands in for a test result and passes everything on, noting whether the test failed: for tests that
    tally their own outcomes, whatever runner's result object they get (unittest's, or pytest's)."""

    def __init__(self, result: Any) -> None:
        self.result = result
        self.failed = False

    def addFailure(self, test: Any, err: Any) -> None:  # noqa: N802 - unittest's names
        self.failed = True
        self.result.addFailure(test, err)

    def addError(self, test: Any, err: Any) -> None:  # noqa: N802
        self.failed = True
        self.result.addError(test, err)

    def addSubTest(self, test: Any, subtest: Any, err: Any) -> None:  # noqa: N802
        self.failed = self.failed or err is not None
        self.result.addSubTest(test, subtest, err)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.result, name)


def reap(proc: subprocess.Popen) -> None:
    """Kill a child that still runs, and collect it (no zombie, no open pipes)."""
    if proc.poll() is None:
        proc.kill()
    proc.communicate()


def record(coin: str, last_updated: str, **columns: Any) -> Record:
    """One stored observation of coin at last_updated, as tests build histories by hand: name Coin, symbol
    coi, price 1, market cap 10, in eur, from /coins/markets, every other cell empty; columns override any."""
    values: dict[str, Any] = dict.fromkeys(COLUMNS)
    values.update(
        name=coin.title(),
        symbol=coin[:3],
        current_price=1.0,
        market_cap=10.0,
        last_updated=last_updated,
        fetched_at="",
        coin_id=coin,
        vs_currency="eur",
        source="coins_markets",
    )
    values.update(columns)
    return Record(**values)


class S3TestCase(PipelineTestCase):
    """A PipelineTestCase whose data folder is s3://<bucket>/<PREFIX> on a moto S3 server on loopback.

    One server (tests/s3_server.py) for the class, a new bucket for each test. Children reach it through the
    standard AWS variables, never a real AWS profile; the S3 scratch copy (index, charts) is in the test's folder.
    """

    PREFIX = "history"
    server: LocalS3

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.server = LocalS3().start()
        cls.addClassCleanup(cls.server.stop)

    def setUp(self) -> None:
        super().setUp()
        self.s3 = self.server.new_bucket()
        self.url = self.s3.url(self.PREFIX)
        self.scratch_tmp = Path(self.tmp.name) / "tmp"
        self.scratch_tmp.mkdir()
        self.env.update(self.s3.env)
        self.env.update(PIPELINE_DATA_DIR=self.url, TMPDIR=str(self.scratch_tmp))

    def child_env(self, env: dict[str, str] | None = None, **changes: str) -> dict[str, str]:
        """As for any child, without a real AWS profile, key or config file to fall back on; s3:// means Delta."""
        own = {k: v for k, v in os.environ.items() if k not in NOT_FROM_OUTSIDE}
        return {**own, **(self.env if env is None else env), **changes}


# Variables a child of an S3 test never takes from the environment the tests run in.
NOT_FROM_OUTSIDE = frozenset(
    (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_CONFIG_FILE",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "COINGECKO_API_KEY",
        "PIPELINE_CONFIG",
        "PIPELINE_TABLE_FORMAT",
    )
)


def make_stale(fake, coin_id: str = "bitcoin", last_updated: str = "2023-01-05T16:49:40.132Z") -> None:
    """Serve the recorded answer with one coin last updated three days before the others (a stale row)."""
    rows = [dict(r) for r in fake.coins]
    for row in rows:
        if row["id"] == coin_id:
            row["last_updated"] = last_updated
    fake.set_coins(rows)
