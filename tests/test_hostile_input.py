"""Issue 11, input side: hostile answers, files and settings each end in one clear line and the documented exit code.

Every case runs the real command line (main(argv) in this process, or `python main.py` as a child) against
real files in a temp folder and the fake CoinGecko on 127.0.0.1, and asserts what a user sees.
"""

from __future__ import annotations

import copy
import gzip
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from unittest import mock

from tests.fake_coingecko import DEFAULT_COINS_FIXTURE, Fault, load_fixture
from tests.support import MAIN, CliResult, PipelineTestCase, drop_file_capabilities, summary_line, wait_until

SECRET = "CG-h0st1leKEYh0st1leKEY1234"  # the shape of a real Demo key: CG- and 24 letters and digits
OTHER_KEY = "CG-someOneElsesKeyAbCdEf9876"  # key-shaped, but not the configured key
REAL = load_fixture(DEFAULT_COINS_FIXTURE)


def every_file_text(root: Path) -> dict[Path, bytes]:
    """Every file under root, gzip files decompressed."""
    found = {}
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found[path] = gzip.decompress(data) if path.name.endswith(".gz") else data
    return found


class HostileCase(PipelineTestCase):
    """The fake CoinGecko, a data folder, and the assertions every case shares."""

    def assert_one_line(self, result: CliResult, code: int, first_words: str) -> str:
        """Exit code, exactly one line on stderr that starts with first_words, no traceback, no 'unexpected'."""
        lines = result.stderr.strip().splitlines()
        self.assertEqual(result.code, code, result.stderr)
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertTrue(lines[0].startswith(first_words), lines[0])
        self.assertNotIn("unexpected", lines[0])
        self.assertNotIn("Traceback", result.stderr)
        return lines[0]

    def write(self, name: str, data: bytes | str) -> Path:
        path = Path(self.tmp.name) / name
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    def run_restricted(self, *argv: str) -> CliResult:
        """python main.py as a child that file permissions apply to, even when the tests run as root."""
        env = dict(os.environ, **self.env)
        preexec = drop_file_capabilities if os.geteuid() == 0 else None
        proc = subprocess.run(
            [sys.executable, str(MAIN), *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=self.tmp.name,
            preexec_fn=preexec,
        )
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    def skip_unless_enforced(self, path: Path, mode: int) -> None:
        """Skip when a restricted child can still do what `mode` (os.R_OK / os.W_OK) asks of path."""
        preexec = drop_file_capabilities if os.geteuid() == 0 else None
        probe = subprocess.run(
            [sys.executable, "-c", f"import os,sys; sys.exit(3 if os.access({str(path)!r}, {mode}) else 0)"],
            preexec_fn=preexec,
            timeout=30,
        )
        if probe.returncode != 0:
            self.skipTest("file permissions are not enforced here, even without root's capabilities")


# -- 1. the key --------------------------------------------------------------------------------------


class KeyIsRedacted(HostileCase):
    def setUp(self) -> None:
        super().setUp()
        self.env["COINGECKO_API_KEY"] = SECRET
        self.log_file = Path(self.tmp.name) / "pipeline.log"

    def assert_no_key(self, *outputs: CliResult) -> None:
        for secret in (SECRET, OTHER_KEY):
            for result in outputs:
                self.assertNotIn(secret, result.stdout + result.stderr)
            leaks = [p for p, data in every_file_text(Path(self.tmp.name)).items() if secret.encode() in data]
            self.assertEqual(leaks, [], f"{secret} is in these files")

    def test_a_500_that_echoes_the_key_reaches_neither_status_json_nor_status(self) -> None:
        # JSON without CoinGecko's error fields: the client quotes the body itself.
        echo = {"echo": f"key={SECRET} {OTHER_KEY}"}
        self.fake.add_fault(Fault.status(500, echo), times=20, path="/coins/markets")
        run = self.run_main("run", "--log-file", str(self.log_file))
        line = run.stderr.strip().splitlines()[-1]
        self.assertEqual(run.code, 1, run.stderr)
        self.assertTrue(line.startswith("run failed: CoinGecko /coins/markets answered HTTP 500"), line)
        self.assertIn("key=***", line)
        status_json = (self.data_dir / ".state" / "status.json").read_text()
        self.assertIn("key=***", status_json)
        status = self.run_main("status")
        self.assertIn("key=***", status.stdout)
        self.assertTrue(
            self.fake.requests and all(r.headers.get("x-cg-demo-api-key") == SECRET for r in self.fake.requests)
        )
        self.assert_no_key(run, status)

    def test_a_key_in_a_json_error_message_is_redacted(self) -> None:
        body = {"status": {"error_code": 500, "error_message": f"bad key {OTHER_KEY} / {SECRET}"}}
        self.fake.add_fault(Fault.status(500, body), times=20, path="/coins/markets")
        run = self.run_main("run", "-v", "--log-file", str(self.log_file))
        self.assertEqual(run.code, 1, run.stderr)
        self.assertIn("bad key *** / ***", run.stderr)
        self.assert_no_key(run, self.run_main("status"))


# -- 2. text from the API ----------------------------------------------------------------------------


class TextFromTheApi(HostileCase):
    def serve(self, *extra_rows: dict, rows: list[dict] | None = None) -> None:
        body = json.dumps((copy.deepcopy(REAL) if rows is None else rows) + list(extra_rows)).encode()
        self.fake.add_fault(Fault.status(200, body), path="/coins/markets")

    def test_an_id_with_a_newline_cannot_forge_a_run_line(self) -> None:
        forged = "x\nrun ok: 10 coins, 10 rows appended, 0 duplicates skipped, 0 rejected in 0.1 s"
        self.serve(dict(REAL[0], id=forged))
        result = self.run_main("run")
        self.assertEqual(result.code, 0, result.stderr)
        run_lines = [line for line in result.stderr.splitlines() if line.startswith("run ")]
        self.assertEqual(len(run_lines), 1, result.stderr)
        self.assertIn("1 rejected", run_lines[0])
        self.assertIn("rejected x\\x0arun ok: 10 coins", result.stderr)

    def test_ansi_escapes_and_bidi_overrides_are_escaped_on_stderr_and_stripped_in_the_csv(self) -> None:
        rows = copy.deepcopy(REAL)
        rows[0]["name"] = "Bit\x1b[31mcoin\u202e\u2066"
        rows[1]["symbol"] = "\u202eeth\x07"
        self.serve(dict(REAL[2], id="evil\x1b[2J\u202e"), rows=rows)
        result = self.run_main("run")
        self.assertEqual(result.code, 0, result.stderr)
        for raw in ("\x1b", "\u202e", "\u2066", "\x07"):
            self.assertNotIn(raw, result.stderr)
        self.assertIn("rejected evil\\x1b[2J\\u202e", result.stderr)
        csv_text = self.csv_path.read_text(encoding="utf-8")
        for raw in ("\x1b", "\u202e", "\u2066", "\x07"):
            self.assertNotIn(raw, csv_text)
        by_id = {row["coin_id"]: row for row in self.rows()}
        self.assertEqual((by_id["bitcoin"]["name"], by_id["ethereum"]["symbol"]), ("Bit[31mcoin", "eth"))
        [archive] = (self.data_dir / "raw").rglob("*.json.gz")
        archived = json.loads(gzip.decompress(archive.read_bytes()))["pages"][0]
        self.assertEqual((archived[0]["name"], archived[1]["symbol"]), (rows[0]["name"], rows[1]["symbol"]))

    def test_a_lone_surrogate_reaches_the_log_file_escaped_without_a_traceback(self) -> None:
        log_file = Path(self.tmp.name) / "pipeline.log"
        self.serve(dict(REAL[0], id="lone\ud800"))
        result = self.run_subprocess("run", "--log-file", str(log_file))
        self.assertEqual(result.code, 0, result.stderr)
        self.assertNotIn("Traceback", result.stderr)
        self.assertNotIn("Logging error", result.stderr)
        logged = log_file.read_bytes().decode("utf-8")  # strictly UTF-8: no surrogate reached the file
        self.assertIn("rejected lone\\ud800", logged)


# -- 3. --log-file on what the pipeline manages ------------------------------------------------------


class LogFileOnManagedFiles(HostileCase):
    def test_the_csv_state_raw_charts_and_the_folder_are_refused(self) -> None:
        self.csv_path.write_text("keep me\n")
        link = Path(self.tmp.name) / "innocent.log"
        link.symlink_to(self.csv_path)
        targets = [
            self.csv_path,
            self.data_dir / ".state",
            self.data_dir / ".state" / "run.log",
            self.data_dir / "raw" / "x.log",
            self.data_dir / "crypto_price_trend.png",
            self.data_dir / "crypto_market_cap_trend.png",
            self.data_dir / "crypto_performance.png",
            self.data_dir / "crypto_data.csv.quarantine",
            self.data_dir,
            link,
            Path("data") / "crypto_data.csv",
        ]  # relative to the current folder of the child
        for target in targets:
            with self.subTest(target=str(target)):
                result = self.run_subprocess("run", "--log-file", str(target))
                self.assert_one_line(result, 2, f"config error: --log-file {target} is a file the pipeline manages")
        self.assertEqual(self.csv_path.read_text(), "keep me\n")
        self.assertEqual(self.fake.requests, [])
        self.assertEqual(sorted(p.name for p in self.data_dir.iterdir()), ["crypto_data.csv"])

    def test_a_log_file_beside_the_history_is_fine(self) -> None:
        result = self.run_main("run", "--log-file", str(self.data_dir / "pipeline.log"))
        self.assertEqual(result.code, 0, result.stderr)
        self.assertIn("run ok:", (self.data_dir / "pipeline.log").read_text())


# -- 4. settings and files that used to end in "unexpected ... please report it" --------------------


class ConfigErrors(HostileCase):
    def test_a_toml_datetime_for_since(self) -> None:
        config = self.write("c.toml", "since = 2026-11-01T00:00:00Z\n")
        self.assert_one_line(
            self.run_main("plot", "--config", str(config)),
            2,
            "config error: since: 2026-11-01 00:00:00+00:00 is a date and time",
        )

    def test_a_config_file_that_is_not_utf8(self) -> None:
        config = self.write("c.toml", b'coins = "bitcoin\xff"\n')
        self.assert_one_line(
            self.run_main("plot", "--config", str(config)), 2, f"config error: config file {config} is not UTF-8 text"
        )

    def test_an_unknown_user_after_a_tilde(self) -> None:
        for option, name in (("--data-dir", "data-dir"), ("--log-file", "log-file"), ("--config", "config")):
            with self.subTest(option=option):
                result = self.run_main("plot", option, "~nosuchuser-hostile/x")
                self.assert_one_line(result, 2, f"config error: {name}: '~nosuchuser-hostile/x' starts with ~")

    def test_a_nul_in_a_toml_path(self) -> None:
        for key in ("data_dir", "log_file"):
            with self.subTest(key=key):
                config = self.write("c.toml", f'{key} = "a\\u0000b"\n')
                env = {k: v for k, v in self.env.items() if k != "PIPELINE_DATA_DIR"}  # the variable beats the file
                result = self.run_main("plot", "--config", str(config), env=env)
                self.assert_one_line(result, 2, f"config error: {key.replace('_', '-')}: 'a\\x00b' holds a NUL")

    def test_days_beyond_any_calendar(self) -> None:
        self.assert_one_line(
            self.run_main("backfill", "--days", "1000000000"), 2, "config error: days: 1000000000 is out of range"
        )
        config = self.write("c.toml", "days = 99999999999999999999999\n")  # past int64
        self.assert_one_line(
            self.run_main("plot", "--config", str(config)),
            2,
            "config error: days: 99999999999999999999999 is out of range",
        )
        self.assertEqual(self.fake.requests, [])

    def test_plot_until_the_last_day_of_year_9999(self) -> None:
        self.assert_one_line(
            self.run_main("plot", "--until", "9999-12-31"), 2, "config error: until: 9999-12-31 is out of range"
        )

    def test_an_api_url_with_a_broken_ipv6_host(self) -> None:
        self.assert_one_line(
            self.run_main("check", "--api-url", "http://[::1/"),
            2,
            "config error: api-url: 'http://[::1/' is not a valid URL",
        )

    def test_a_non_ascii_api_key(self) -> None:
        key = "CG-abc\u2013def"  # an en dash where a hyphen belongs, as a word processor makes it
        result = self.run_main("run", env=dict(self.env, COINGECKO_API_KEY=key))
        line = self.assert_one_line(result, 2, "config error: COINGECKO_API_KEY holds non-ASCII characters")
        self.assertNotIn("abc", line)
        self.assertEqual(self.fake.requests, [])


class FileErrors(HostileCase):
    def setUp(self) -> None:
        super().setUp()
        self.assertEqual(self.run_main("run").code, 0)

    def test_plot_and_status_on_a_csv_that_cannot_be_read(self) -> None:
        os.chmod(self.csv_path, 0)
        self.addCleanup(os.chmod, self.csv_path, 0o644)
        self.skip_unless_enforced(self.csv_path, os.R_OK)
        for command in ("plot", "status"):
            with self.subTest(command=command):
                line = self.assert_one_line(self.run_restricted(command), 1, f"{command} failed: cannot ")
                self.assertIn(f"{self.csv_path}: permission denied", line)

    def test_plot_and_status_on_a_folder_in_place_of_the_csv(self) -> None:
        # Works as root too: no capability lets a folder be read as a file.
        self.csv_path.unlink()
        self.csv_path.mkdir()
        for command in ("plot", "status"):
            with self.subTest(command=command):
                line = self.assert_one_line(self.run_main(command), 1, f"{command} failed: cannot")
                self.assertIn(str(self.csv_path), line)

    def test_plot_into_a_read_only_folder(self) -> None:
        os.chmod(self.data_dir, 0o555)
        self.addCleanup(os.chmod, self.data_dir, 0o755)
        self.skip_unless_enforced(self.data_dir, os.W_OK)
        line = self.assert_one_line(self.run_restricted("plot"), 1, "plot failed: cannot open")
        self.assertIn("permission denied", line)
        self.assertFalse(list(self.data_dir.glob("*.png")))

    def test_status_into_a_closed_pipe_ends_quietly(self) -> None:
        read_end, write_end = os.pipe()
        os.close(read_end)  # the reader is gone before the first line, as with `status | head -0`
        try:
            proc = subprocess.run(
                [sys.executable, str(MAIN), "status"],
                env=dict(os.environ, **self.env),
                stdout=write_end,
                stderr=subprocess.PIPE,
                text=True,
                timeout=60,
            )
        finally:
            os.close(write_end)
        self.assertEqual((proc.returncode, proc.stderr), (0, ""))

    def test_status_piped_into_head(self) -> None:
        proc = subprocess.run(
            ["bash", "-o", "pipefail", "-c", f"{sys.executable} {MAIN} status | head -1"],
            env=dict(os.environ, **self.env),
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual((proc.returncode, proc.stderr), (0, ""))
        self.assertTrue(proc.stdout.startswith("last run:"), proc.stdout)


class CorruptStatusFile(HostileCase):
    CORRUPTIONS = {
        "pid 10^20": {"daemon_pid": 10**20, "last_success": "2026-01-01T00:00:00Z"},
        "wrong types": {
            "last_run": {
                "appended": {"a": 1},
                "incomplete_coins": 7,
                "error": ["x"],
                "finished_at": 5,
                "exit_code": "zero",
            },
            "next_run": [],
            "daemon_pid": "1",
            "last_success": True,
            "at": 3,
        },
        "year 1": {
            "last_success": "0001-01-01T00:00:00+01:00",
            "next_run": "0001-01-01T00:00:00Z",
            "last_run": {"finished_at": "0001-01-01T00:00:00-05:00", "result": "ok"},
        },
        "a list": [1, 2, 3],
        "not JSON": '{"last_run": ',
        "nested beyond the parser": "[" * 100_000,
    }

    def corrupt(self, value: object) -> None:
        state = self.data_dir / ".state"
        state.mkdir(exist_ok=True)
        (state / "status.json").write_text(value if isinstance(value, str) else json.dumps(value))

    def test_status_stays_readable(self) -> None:
        self.assertEqual(self.run_main("run").code, 0)
        for name, value in self.CORRUPTIONS.items():
            with self.subTest(name):
                self.corrupt(value)
                result = self.run_main("status")
                self.assertEqual((result.code, result.stderr), (0, ""))
                self.assertIn("last run:", result.stdout)
                self.assertIn("next run:     no daemon running", result.stdout)

    def test_the_daemon_starts_whatever_status_json_holds(self) -> None:
        for name, value in self.CORRUPTIONS.items():
            with self.subTest(name):
                self.corrupt(value)
                proc = self.start("daemon", "--at", "03:00", "--timezone", "UTC", stdout=subprocess.DEVNULL)
                try:

                    def recorded_run() -> dict | None:
                        """The daemon's status once it holds this daemon's first run; None before (or exited)."""
                        if proc.poll() is not None:
                            return {"exited": proc.returncode}
                        try:
                            status = json.loads((self.data_dir / ".state" / "status.json").read_text())
                        except (ValueError, RecursionError):  # our corruption, not yet replaced
                            return None
                        last = status.get("last_run") if isinstance(status, dict) else None
                        mine = isinstance(status, dict) and status.get("daemon_pid") == proc.pid
                        return status if mine and isinstance(last, dict) and "result" in last else None

                    status = wait_until(recorded_run, "the daemon's initial run in status.json")
                    self.assertIsNone(proc.poll(), "the daemon exited at start")
                    self.assertEqual(status["last_run"]["result"], "ok")  # the initial run happened
                finally:
                    proc.send_signal(signal.SIGTERM)
                    _, err = proc.communicate(timeout=30)
                self.assertEqual(proc.returncode, 0, err)
                self.assertNotIn("unexpected", err)


class S3Errors(HostileCase):
    def aws_env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(
            self.env,
            AWS_SHARED_CREDENTIALS_FILE=str(Path(self.tmp.name) / "none"),
            AWS_CONFIG_FILE=str(Path(self.tmp.name) / "none"),
            AWS_EC2_METADATA_DISABLED="true",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_MAX_ATTEMPTS="1",
            TMPDIR=self.tmp.name,
            **extra,
        )
        return env

    def run_child(self, env: dict[str, str], *argv: str) -> CliResult:
        proc = subprocess.run(
            [sys.executable, str(MAIN), *argv], env=env, capture_output=True, text=True, timeout=60, cwd=self.tmp.name
        )
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    def test_no_credentials(self) -> None:
        result = self.run_child(self.aws_env(), "plot", "--data-dir", "s3://hostile-test-bucket/history")
        self.assert_one_line(
            result, 2, "plot failed: AWS is not configured for the s3:// data folder (NoCredentialsError"
        )
        # -v adds the traceback of an error the line explains: it is not called unexpected there either.
        verbose = self.run_child(self.aws_env(), "plot", "-v", "--data-dir", "s3://hostile-test-bucket/history")
        self.assertEqual(verbose.code, 2)
        self.assertIn("Traceback", verbose.stderr)
        self.assertNotIn("unexpected", verbose.stderr)

    def test_no_endpoint(self) -> None:
        with socket_closed_port() as port:
            env = self.aws_env(
                AWS_ACCESS_KEY_ID="AKIAHOSTILE",
                AWS_SECRET_ACCESS_KEY="x" * 40,
                AWS_ENDPOINT_URL_S3=f"http://127.0.0.1:{port}",
            )
            result = self.run_child(env, "plot", "--data-dir", "s3://hostile-test-bucket/history")
        self.assert_one_line(result, 1, "plot failed: cannot reach S3 (EndpointConnectionError")

    def test_bucket_names_are_checked_before_anything_is_created(self) -> None:
        root = Path(self.tmp.name) / "tmproot"
        root.mkdir()
        for url in (
            "s3://../x",
            "s3://hostile-test-bucket/../../x",
            "s3://Upper/x",
            "s3://a/x",
            "s3://bucket..name/x",
            "s3://192.168.1.1/x",
            "s3://[::1/x",
        ):
            with self.subTest(url=url):
                env = dict(self.aws_env(), TMPDIR=str(root))
                result = self.run_child(env, "plot", "--data-dir", url)
                self.assert_one_line(result, 2, "config error: data-dir: ")
        self.assertEqual(list(root.iterdir()), [])
        self.assertFalse((Path(self.tmp.name) / "x").exists())


class S3RetryMode(HostileCase):
    """boto3's S3 client retries in "standard" mode (3 quick attempts) unless the user chose a mode: botocore's
    default "legacy" mode took 3.6 s a call to report a closed port."""

    def client_mode(self, config: str | None = None, **env: str) -> str:
        from utils.s3 import new_client

        config_file = Path(self.tmp.name) / "aws-config"
        if config is not None:
            config_file.write_text(config)
        clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        clean.update(AWS_CONFIG_FILE=str(config_file), AWS_DEFAULT_REGION="us-east-1", **env)
        # boto3's default session reads the AWS config file once: a new one for each case, as a new process has
        with mock.patch.dict(os.environ, clean, clear=True), mock.patch("boto3.DEFAULT_SESSION", None):
            return new_client().meta.config.retries["mode"]

    def test_standard_unless_the_user_chose(self) -> None:
        try:
            import boto3  # noqa: F401
        except ImportError:
            self.skipTest("boto3 not installed")
        self.assertEqual(self.client_mode(), "standard")
        self.assertEqual(self.client_mode(AWS_RETRY_MODE="legacy"), "legacy")
        self.assertEqual(self.client_mode("[default]\nretry_mode = adaptive\n"), "adaptive")
        self.assertEqual(self.client_mode("[profile p]\nretry_mode = legacy\n", AWS_PROFILE="p"), "legacy")


class socket_closed_port:
    """A loopback port nothing listens on (bound, then closed)."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    def __exit__(self, *exc: object) -> None:
        return None


# -- 5. limits ---------------------------------------------------------------------------------------


class Limits(HostileCase):
    def test_100000_junk_rows_beside_every_requested_coin(self) -> None:
        junk = [{"id": f"junk-{i}", "last_updated": None} for i in range(100_000)]
        self.fake.add_fault(Fault.status(200, json.dumps(copy.deepcopy(REAL) + junk).encode()), path="/coins/markets")
        result = self.run_main("run")
        lines = result.stderr.strip().splitlines()
        self.assertEqual(result.code, 0, lines[:20])
        self.assertLessEqual(len(lines), 13, lines[:20])  # 10 warnings, the "more" line, the summary, quality
        self.assertIn("... and 99990 more rows rejected", result.stderr)
        self.assertTrue(summary_line(result.stderr).startswith("run ok: 10 coins, 10 rows appended"), lines[-1])
        self.assertEqual(len(self.rows()), 10)

    def test_a_requested_coin_that_did_not_land_is_partial(self) -> None:
        rows = copy.deepcopy(REAL)
        rows[0]["current_price"] = "lots"
        self.fake.add_fault(Fault.status(200, rows), path="/coins/markets")
        result = self.run_main("run")
        self.assertEqual(result.code, 3, result.stderr)
        self.assertIn("run partial: 9 of 10 coins", result.stderr)

    def test_numbers_the_charts_cannot_draw_are_rejected_by_the_same_rule(self) -> None:
        rows = copy.deepcopy(REAL)
        rows[0]["market_cap"] = 10**300  # fits a float64, but a 301-digit cell, beyond what is drawn
        rows[1]["market_cap"] = 10**400  # beyond float64
        self.fake.add_fault(Fault.status(200, json.dumps(rows).encode()), path="/coins/markets")
        result = self.run_main("run")
        self.assertEqual(result.code, 3, result.stderr)
        self.assertIn("rejected bitcoin: market_cap is 1e+300, outside what can be stored and drawn", result.stderr)
        self.assertIn("rejected ethereum: market_cap is too large for a float64", result.stderr)
        plot = self.run_main("plot")
        self.assertEqual(plot.code, 0, plot.stderr)
        self.assertIn("plot ok: 8 coins", plot.stderr)
        self.assertNotIn("left out", plot.stderr)
        # A row written by hand (or an older version) with such a number: the charts leave it out by the same rule.
        with open(self.csv_path, "a", encoding="utf-8") as fh:
            first = self.rows()[0]
            fh.write(
                ",".join({**first, "market_cap": "1e+300", "last_updated": "2023-01-09T00:00:00.000Z"}.values()) + "\n"
            )
        plot = self.run_main("plot")
        self.assertEqual(plot.code, 0, plot.stderr)
        self.assertIn("warning: left out 1 prices or market caps", plot.stderr)
        self.assertIn("outside what a chart can draw (0, or 1e-100 to 1e+100 in size)", plot.stderr)
        self.assertNotIn("RuntimeWarning", plot.stderr)


if __name__ == "__main__":
    import unittest

    unittest.main()
