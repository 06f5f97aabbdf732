"""Hostile servers (issue 11, the network part): the key stays home, nothing hangs or blows up, one clear line.

Every case runs the real CLI against real HTTP servers on 127.0.0.1 that misbehave on purpose: redirects
to another origin and from https to http, a body trickled a byte a second, a 2 GiB gzip bomb, a server
that stalls while the daemon is asked to stop, a 429 storm under the daemon's retries, and 25 unknown
ids for `check`. Each sets an API key and then looks for it in stdout, stderr, the log file, every file
left in the temp folder and every request that reached a server other than the configured one.

`python -m unittest tests.test_hostile` runs it and prints its rows of the README's fault matrix.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import unittest
from pathlib import Path
from typing import Any

from tests.fake_coingecko import FakeCoinGecko, Fault
from tests.support import FIXTURE_IDS, MAIN, CliResult, FailureWatch, PipelineTestCase, wait_until
from tests.test_fault_matrix import Tally
from tests.test_security import DEMO_HEADER, SECRET, SelfSignedServer, file_texts, last_line

MARKETS = "/coins/markets"
PEAK_RSS_LIMIT_MB = 300


TALLY: dict[str, Tally] = {}  # this module's rows of the README's fault matrix


def tearDownModule() -> None:
    if TALLY:
        rows = [
            f"| {stage} | {t.tried} | {t.passed} | {t.rows_lost} | {t.rows_repeated} |" for stage, t in TALLY.items()
        ]
        sys.stderr.write(
            "\n\nhostile servers: rows of the README's fault matrix (python -m unittest tests.test_hostile)\n"
            + "\n".join(rows)
            + "\n"
        )


class HostileTestCase(PipelineTestCase):
    """The key set and required by the fake, a log file beside the data, results tallied per test."""

    def setUp(self) -> None:
        super().setUp()
        self.fake.required_key = (DEMO_HEADER, SECRET)
        self.log_file = Path(self.tmp.name) / "pipeline.log"
        self.env.update(COINGECKO_API_KEY=SECRET, PIPELINE_LOG_FILE=str(self.log_file))
        self.outputs: list[CliResult] = []
        self.others: list[FakeCoinGecko] = []  # servers that must never see the key

    stage = "hostile server"

    def run(self, result: unittest.TestResult | None = None) -> unittest.TestResult | None:
        """Count the case in its row of the fault matrix (under unittest's runner or pytest's alike)."""
        if result is None:
            return super().run(result)
        watch = FailureWatch(result)
        super().run(watch)  # type: ignore[arg-type]
        tally = TALLY.setdefault(self.stage, Tally())
        tally.tried += 1
        tally.passed += not watch.failed
        return result

    def assert_clean_rerun(self) -> None:
        """With the server behaving again, a run stores every coin once: nothing was lost or half-kept."""
        self.fake.clear_faults()
        result = self.cli("run")
        self.assertEqual(result.code, 0, result.stderr)
        stored = [row["coin_id"] for row in self.rows()]
        tally = TALLY.setdefault(self.stage, Tally())
        tally.rows_lost += len(set(FIXTURE_IDS) - set(stored))
        tally.rows_repeated += len(stored) - len(set(stored))
        self.assertEqual(sorted(stored), sorted(FIXTURE_IDS))

    def other_server(self) -> FakeCoinGecko:
        """A second server on another port: a different origin that records every header it gets."""
        server = FakeCoinGecko().start()
        self.addCleanup(server.stop)
        self.others.append(server)
        return server

    def cli(self, *argv: str, env: dict[str, str] | None = None, timeout: float = 120) -> CliResult:
        """python main.py ... in a child process; the output is kept for the key search."""
        result = self.run_subprocess(*argv, env=env, timeout=timeout)
        self.outputs.append(result)
        return result

    def assert_key_nowhere(self) -> None:
        """Not in stdout or stderr, in no file of the temp folder (log, CSV, state, raw), at no other server."""
        leaks = [
            f"{name} of run {n}"
            for n, result in enumerate(self.outputs)
            for name, text in (("stdout", result.stdout), ("stderr", result.stderr))
            if SECRET in text
        ]
        leaks += [
            str(path.relative_to(self.tmp.name))
            for path, data in file_texts(Path(self.tmp.name)).items()
            if SECRET.encode() in data
        ]
        leaks += [
            f"a request to port {server.port}: {request.raw_path}"
            for server in self.others
            for request in server.requests
            if SECRET in json.dumps([request.headers, request.raw_path])
        ]
        self.assertEqual(leaks, [], "the API key appears here")

    def assert_failed_cleanly(self, result: CliResult, first_words: str, code: int = 1) -> None:
        """The documented exit code, the error as the last line, no traceback, nothing appended."""
        self.assertEqual(result.code, code, result.stderr)
        self.assertTrue(last_line(result).startswith(first_words), result.stderr)
        for word in ("Traceback", "unexpected", "please report"):
            self.assertNotIn(word, result.stderr)
        self.assertEqual(self.csv_bytes(), b"", "a failed run appended rows")


class Redirects(HostileTestCase):
    stage = (
        "hostile server: redirects (to another port without the key, within the API origin with it, "
        "a loop, https -> http refused)"
    )

    def test_redirect_to_another_origin_carries_no_key(self) -> None:
        """302 to another port: followed without the key"""
        other = self.other_server()
        self.fake.add_fault(Fault.redirect(f"{other.base_url}{MARKETS}?vs_currency=eur&per_page=250"), path=MARKETS)
        result = self.cli("run")
        self.assertEqual(result.code, 0, result.stderr)
        self.assertEqual(len(self.rows()), len(FIXTURE_IDS))
        self.assertEqual(len(other.requests_to(MARKETS)), 1)
        self.assertNotIn(DEMO_HEADER, other.requests[0].headers)
        self.assertEqual(self.fake.requests[0].headers.get(DEMO_HEADER), SECRET)  # the API origin still gets it
        self.assert_key_nowhere()

    def test_redirect_within_the_api_origin_keeps_the_key(self) -> None:
        """302 within the API origin: followed with the key"""
        self.fake.add_fault(
            Fault.redirect(f"{self.fake.base_url}{MARKETS}?vs_currency=eur&per_page=250", code=307), path=MARKETS
        )
        result = self.cli("run")
        self.assertEqual(result.code, 0, result.stderr)  # the fake answers 401 to a request without the key
        self.assertEqual([r.headers.get(DEMO_HEADER) for r in self.fake.requests], [SECRET, SECRET])
        self.assert_key_nowhere()

    def test_a_redirect_loop_ends_in_one_line(self) -> None:
        """redirect loop: one line, exit 1"""
        self.fake.add_fault(Fault.redirect(f"{self.fake.base_url}{MARKETS}"), times=50, path=MARKETS)
        result = self.cli("run", "--max-retry-wait", "0")
        self.assert_failed_cleanly(result, "run failed: CoinGecko /coins/markets redirected more than 5 times")
        self.assertEqual(len(self.fake.requests), 6)  # the first request and five redirects, no retry
        self.assert_clean_rerun()
        self.assert_key_nowhere()

    @unittest.skipUnless(shutil.which("openssl"), "needs the openssl command to make a self-signed certificate")
    def test_https_to_http_is_refused_naming_the_target(self) -> None:
        """https -> http redirect: refused, exit 1"""
        secure = SelfSignedServer(Path(self.tmp.name))
        self.addCleanup(secure.stop)
        secure.fake.required_key = (DEMO_HEADER, SECRET)
        plain = self.other_server()
        target = f"{plain.base_url}{MARKETS}?vs_currency=eur"
        secure.fake.add_fault(Fault.redirect(target), path=MARKETS)
        env = dict(self.env, COINGECKO_API_URL=secure.url, REQUESTS_CA_BUNDLE=str(secure.cert))
        result = self.cli("run", env=env)
        self.assert_failed_cleanly(result, f"run failed: refused a redirect from https to plain http ({target})")
        self.assertEqual(plain.requests, [], "the downgraded request was sent")
        self.assertEqual(len(secure.fake.requests), 1, "a refused redirect is not retried")
        self.assert_key_nowhere()


class Bounds(HostileTestCase):
    stage = (
        "hostile server: bounds (a body trickled at 1 byte/s, a 2 GiB gzip bomb, --max-response-mb from "
        "flag/env/TOML, error bodies quoting the key or escape sequences)"
    )

    def test_a_trickled_body_ends_at_the_deadline(self) -> None:
        """body trickled at 1 byte/s: cut at --timeout, exit 1"""
        self.fake.add_fault(Fault.trickle(1.0), times=20, path=MARKETS)
        started = time.monotonic()
        result = self.cli("run", "--timeout", "2", "--max-retry-wait", "5", timeout=120)
        ended = time.monotonic()
        self.assert_failed_cleanly(result, "run failed: CoinGecko did not answer /coins/markets within 2 s")
        attempts = self.fake.requests_to(MARKETS)
        self.assertIn(f"gave up after {len(attempts)} attempts", last_line(result))
        # Each attempt is cut at its 2 s deadline; the waits between them stay within --max-retry-wait 5.
        budget = 2 * len(attempts) + 5 + 2
        took = ended - attempts[0].time
        self.assertLess(took, budget, f"{len(attempts)} attempts, started {started}")
        sys.stderr.write(
            f"[trickle: {len(attempts)} attempts, {took:.1f} s from the first request, "
            f"{ended - started:.1f} s in all; budget {budget} s] "
        )
        self.assert_clean_rerun()
        self.assert_key_nowhere()

    def test_a_gzip_bomb_stops_at_the_cap_in_little_memory(self) -> None:
        """2 GiB gzip bomb: stops at 64 MB, peak RSS < 300 MB, exit 1"""
        self.fake.add_fault(Fault.gzip_bomb(2), times=10, path=MARKETS)
        code, stderr, peak_mb = self.run_measured("run", "--max-retry-wait", "5")
        result = CliResult(code, "", stderr)
        self.outputs.append(result)
        self.assert_failed_cleanly(
            result, "run failed: CoinGecko's answer to /coins/markets is larger than 64 MB once decompressed"
        )
        self.assertEqual(len(self.fake.requests_to(MARKETS)), 1, "a response over the cap is not retried")
        self.assertLess(peak_mb, PEAK_RSS_LIMIT_MB)
        sys.stderr.write(f"[gzip bomb: peak RSS {peak_mb:.0f} MB] ")
        self.assert_clean_rerun()
        self.assert_key_nowhere()

    def test_the_cap_follows_the_flag_the_environment_and_the_config_file(self) -> None:
        """--max-response-mb, PIPELINE_MAX_RESPONSE_MB, max_response_mb: honoured; bad values exit 2"""
        size_mb = len(json.dumps(self.fake.coins)) / 2**20  # the answer is a little smaller: compact JSON
        small = f"{size_mb / 2:.3f}"
        config = Path(self.tmp.name) / "pipeline.toml"
        config.write_text(f"max_response_mb = {small}\n")
        for how, argv, extra in (
            ("flag", ("--max-response-mb", small), {}),
            ("environment", (), {"PIPELINE_MAX_RESPONSE_MB": small}),
            ("config file", (), {"PIPELINE_CONFIG": str(config)}),
        ):
            with self.subTest(how=how):
                result = self.cli("run", "--max-retry-wait", "0", *argv, env=dict(self.env, **extra))
                self.assert_failed_cleanly(
                    result, f"run failed: CoinGecko's answer to /coins/markets is larger than {float(small):g} MB"
                )
        ok = self.cli("run", "--max-response-mb", "1")
        self.assertEqual(ok.code, 0, ok.stderr)
        for bad in ("0", "-1", "lots", "nan", "1e9"):
            with self.subTest(value=bad):
                result = self.cli("run", "--max-response-mb", bad)
                self.assertEqual(result.code, 2, result.stderr)
                self.assertTrue(last_line(result).startswith("config error: max-response-mb: "), result.stderr)
        self.assert_key_nowhere()

    def test_an_error_body_that_echoes_the_key_is_blanked(self) -> None:
        """5xx body quoting the key or an escape sequence: blanked and escaped in the error and status.json"""
        bodies = {
            "a JSON body without an error message": {"detail": f"invalid key {SECRET}"},
            "an error message": {"status": {"error_message": f"invalid key {SECRET} \x1b[2J\u202e"}},
        }
        for name, body in bodies.items():
            with self.subTest(body=name):
                self.fake.clear_faults()
                self.fake.add_fault(Fault.status(500, body), times=10, path=MARKETS)
                result = self.cli("run", "--max-retry-wait", "0")
                self.assert_failed_cleanly(result, "run failed: CoinGecko /coins/markets answered HTTP 500 (")
                self.assertIn("invalid key ***", last_line(result))
                status = json.loads((self.data_dir / ".state" / "status.json").read_text())
                self.assertIn("invalid key ***", status["last_run"]["error"])
        result = self.cli("run", "--max-retry-wait", "1")  # the retry warnings too
        self.assertIn("\\x1b[2J\\u202e", last_line(result))  # shown as text, not obeyed by the terminal
        self.assertNotIn("\x1b", result.stderr)
        self.assertIn("retrying in", result.stderr)
        self.assert_clean_rerun()
        self.assert_key_nowhere()

    def run_measured(self, *argv: str) -> tuple[int, str, float]:
        """Run the CLI and return its exit code, stderr and peak RSS in MB, sampling VmHWM while it runs.

        Not ru_maxrss: Linux carries the forking parent's high-water mark across exec into the child's,
        so a child of a big test process would report the test process's size.
        """
        err_path = Path(self.tmp.name) / "stderr.txt"
        peak_kb = 0
        with open(err_path, "w", encoding="utf-8") as err:
            proc = subprocess.Popen(
                [sys.executable, str(MAIN), *argv],
                env=dict(os.environ, **self.env),
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=self.tmp.name,
            )
            status = Path(f"/proc/{proc.pid}/status")
            while proc.poll() is None:
                try:
                    fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
                    peak_kb = max(peak_kb, int(fields.get("VmHWM", "0 kB").split()[0]))
                except (OSError, ValueError):  # exiting: /proc is going away
                    pass
                time.sleep(0.01)  # a sampling period while the command runs, not a wait for it
        stderr = err_path.read_text(encoding="utf-8")
        err_path.unlink()
        self.assertGreater(peak_kb, 0, "VmHWM was never read")
        return proc.returncode, stderr, peak_kb / 1024


class DaemonStops(HostileTestCase):
    """SIGTERM ends the daemon within 2 s in every state, and a stopped request appends nothing."""

    stage = (
        "hostile server: daemon (SIGTERM while the server stalls, mid-body, while pacing; "
        "one rate limiter across retries)"
    )

    def start_daemon(self, *extra: str) -> subprocess.Popen:
        return self.start("daemon", "--at", "03:00", "--timezone", "UTC", *extra)

    def stop_within_2_seconds(self, proc: subprocess.Popen) -> str:
        """SIGTERM; the daemon must exit 0 within 2 s; returns its stderr."""
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        elapsed = time.monotonic() - started
        self.outputs.append(CliResult(proc.returncode, "", err))
        self.assertLess(elapsed, 2.0, err)
        self.assertEqual(proc.returncode, 0, err)
        self.assertIn("daemon stopped", err)
        for word in ("Traceback", "unexpected"):
            self.assertNotIn(word, err)
        return err

    def status(self) -> dict[str, Any]:
        try:
            return json.loads((self.data_dir / ".state" / "status.json").read_text())
        except (OSError, ValueError):
            return {}

    def test_sigterm_while_the_server_stalls(self) -> None:
        """SIGTERM while the server sends nothing: exit 0 < 2 s, nothing appended"""
        self.fake.add_fault(Fault.stall(120), path=MARKETS)
        proc = self.start_daemon("--timeout", "60")
        wait_until(lambda: self.fake.stalls_begun, "the server to begin stalling the request")
        err = self.stop_within_2_seconds(proc)
        self.assertIn("run interrupted: stopped during a request to CoinGecko; nothing was appended", err)
        self.assertEqual(self.csv_bytes(), b"")
        self.assertEqual(self.status()["last_run"]["result"], "interrupted")
        self.assert_clean_rerun()
        self.assert_key_nowhere()

    def test_sigterm_while_the_body_trickles(self) -> None:
        """SIGTERM mid-body (trickle): exit 0 < 2 s, nothing appended"""
        self.fake.add_fault(Fault.trickle(0.5), path=MARKETS)
        proc = self.start_daemon("--timeout", "60")
        wait_until(lambda: self.fake.trickled_bytes >= 2, "two bytes of the body")
        err = self.stop_within_2_seconds(proc)
        self.assertIn("run interrupted: stopped during a request to CoinGecko", err)
        self.assertEqual(self.csv_bytes(), b"")
        self.assert_clean_rerun()
        self.assert_key_nowhere()

    def test_retries_share_one_rate_limiter(self) -> None:
        """daemon retries under a 429 storm: <= --rate-limit calls a minute, then SIGTERM while pacing"""
        self.fake.add_fault(Fault.rate_limited(retry_after="0"), times=1000, path=MARKETS)
        proc = self.start_daemon("--rate-limit", "60", "--max-retry-wait", "5", "--retry-delays", "0.01")
        wait_until(lambda: self.fake.requests_to(MARKETS), "the daemon's first request")
        first = self.fake.requests_to(MARKETS)[0].time
        time.sleep(max(0.0, first + 8 - time.monotonic()))  # not a wait for anything: 8 s of pacing is the test
        calls = len(self.fake.requests_to(MARKETS))
        self.assertGreaterEqual(calls, 5, "the daemon made too few calls for the test to say anything")
        # 60 a minute is one call every 1.008 s: at most 8 calls start within 8 s, retries and reruns included.
        self.assertLessEqual(calls, 8, f"{calls} calls in 8 s with --rate-limit 60")
        err = self.stop_within_2_seconds(proc)
        self.assertIn("run interrupted", err)
        self.assertEqual(self.csv_bytes(), b"")
        self.assert_clean_rerun()
        self.assert_key_nowhere()


class CheckLimits(HostileTestCase):
    stage = "hostile server: `check` with 25 unknown ids"

    def test_check_searches_suggestions_for_at_most_10_unknown_ids(self) -> None:
        """check with 25 unknown ids: 10 searches, says 15 more"""
        unknown = [f"no-such-coin-{n:02d}" for n in range(25)]
        result = self.run_main("check", "--coins", ",".join(["bitcoin", *unknown]))
        self.outputs.append(result)
        self.assertEqual(result.code, 1, result.stderr)
        self.assertEqual(len(self.fake.requests_to("/search")), 10)
        fails = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
        self.assertEqual(len(fails), 11, result.stdout)
        self.assertTrue(fails[-1].startswith("FAIL  15 more ids are not known to CoinGecko"), fails[-1])
        self.assertIn("no-such-coin-10, no-such-coin-11", fails[-1])
        self.assertTrue(fails[-1].endswith("no-such-coin-24"), fails[-1])
        self.assert_key_nowhere()


if __name__ == "__main__":
    unittest.main()
