"""Shared test helpers: a temp data folder, the fake CoinGecko server, and ways to run the CLI."""

from __future__ import annotations

import contextlib
import csv
import ctypes
import io
import os
import subprocess
import sys
import tempfile
import time
import unittest
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from tests.fake_coingecko import FakeCoinGecko

REPO = Path(__file__).resolve().parent.parent
MAIN = REPO / "main.py"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import main as cli  # noqa: E402

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

    def run_subprocess(self, *argv: str, env: dict[str, str] | None = None, timeout: float = 60) -> CliResult:
        """python main.py ... in a real child process."""
        full_env = dict(os.environ)
        full_env.update(self.env if env is None else env)
        proc = subprocess.run(
            [sys.executable, str(MAIN), *argv],
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.tmp.name,
        )
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    def csv_bytes(self) -> bytes:
        return self.csv_path.read_bytes() if self.csv_path.exists() else b""

    def rows(self) -> list[dict[str, str]]:
        return read_rows(self.csv_path)


def make_stale(fake, coin_id: str = "bitcoin", last_updated: str = "2023-01-05T16:49:40.132Z") -> None:
    """Serve the recorded answer with one coin last updated three days before the others (a stale row)."""
    rows = [dict(r) for r in fake.coins]
    for row in rows:
        if row["id"] == coin_id:
            row["last_updated"] = last_updated
    fake.set_coins(rows)
