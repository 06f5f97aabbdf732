"""Issue 21, round three of hardening: one test per finding (each red before its fix, green after).

Findings 3 and 4 (--log-file through a hard link; quality.csv through a symlink) are rows of
tests/test_files_policy.py; 9 and 11 are in tests/test_load.py and tests/test_history_store.py.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

from tests.support import PipelineTestCase, make_stale, wait_until
from utils.history.layout import DataLayout

BIG = "x" * 200_000


class QualityFile(PipelineTestCase):
    """Findings 1 and 7: quality.csv with an over-long cell, or read-only."""

    def test_an_oversized_cell_in_quality_csv_breaks_nothing(self) -> None:
        self.assertEqual(self.run_main().code, 0)
        layout = DataLayout(self.data_dir)
        with open(layout.quality, "a", encoding="utf-8") as fh:
            fh.write(f"bitcoin,eur,2020-01-01T00:00:00.000Z,stale,{BIG},2020-01-01T00:00:00.000Z\n")
        self.fake.advance(60)
        make_stale(self.fake)
        run = self.run_main()
        self.assertEqual(run.code, 0, run.stderr)  # was: exit 1, "unexpected Error: field larger than field limit"
        self.assertIn("rows appended", run.stderr)
        self.assertIn(b"stale", layout.quality.read_bytes().split(BIG.encode())[-1])  # the new finding landed
        for command in ("status", "quality", "report"):
            result = self.run_main(command)
            self.assertEqual(result.code, 0, f"{command}: {result.stderr}")
            self.assertNotIn("unexpected", result.stderr)

    def test_a_finding_that_cannot_be_written_is_kept_and_written_next_run(self) -> None:
        self.assertEqual(self.run_main().code, 0)
        layout = DataLayout(self.data_dir)
        before = layout.quality.read_bytes()
        layout.quality.chmod(0o444)
        self.fake.advance(60)
        make_stale(self.fake)
        run = self.run_main()
        self.assertEqual(run.code, 3, run.stderr)  # the rows landed; the findings did not: partial, named
        self.assertIn("rows appended", run.stderr)
        self.assertIn("not written: quality.csv", run.stderr)
        self.assertEqual(layout.quality.read_bytes(), before)
        self.assertIn("stale", layout.pending_findings.read_text())
        layout.quality.chmod(0o644)
        self.fake.advance(60)
        again = self.run_main()
        self.assertEqual(again.code, 0, again.stderr)
        self.assertIn(b",stale,", layout.quality.read_bytes())
        self.assertFalse(layout.pending_findings.exists())


class NeverAnswers:
    """A webhook that accepts connections and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.accepted = threading.Event()
        self.held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)
            self.accepted.set()

    def close(self) -> None:
        for conn in self.held:
            conn.close()
        self.sock.close()


class Shutdown(PipelineTestCase):
    """Finding 2: a webhook that never answers blocks neither the summary nor SIGTERM."""

    def start_notifying(self, command: str, timeout: str) -> tuple[NeverAnswers, subprocess.Popen, list[str]]:
        """`command` with a webhook that never answers; its stderr lines are collected as they come."""
        hook = NeverAnswers()
        self.addCleanup(hook.close)
        proc = self.start(
            command,
            stdout=subprocess.DEVNULL,
            PIPELINE_NOTIFY_URL=f"http://127.0.0.1:{hook.port}/hook",
            PIPELINE_NOTIFY_ON="always",
            PIPELINE_TIMEOUT=timeout,
        )
        lines: list[str] = []
        self.reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
        self.reader.start()
        return hook, proc, lines

    def test_sigterm_mid_notification_stops_the_daemon_within_two_seconds(self) -> None:
        hook, proc, lines = self.start_notifying("daemon", timeout="120")
        self.assertTrue(hook.accepted.wait(60), "the daemon never notified")
        # The webhook never answers, so a summary that shows up now was printed before the notification.
        summary_first = wait_until(lambda: any("run ok" in line for line in lines), "the run's summary line")
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(10)
        took = time.monotonic() - sent
        self.reader.join(5)
        self.assertTrue(summary_first, "".join(lines))  # the run's line came before the notification
        self.assertEqual(code, 0, "".join(lines))
        self.assertLess(took, 2.0, "".join(lines))
        self.assertTrue(any("daemon stopped" in line for line in lines), "".join(lines))

    def test_run_prints_its_summary_before_a_webhook_that_never_answers_times_out(self) -> None:
        hook, proc, lines = self.start_notifying("run", timeout="3")
        self.assertTrue(hook.accepted.wait(60))
        self.assertEqual(proc.wait(30), 0)
        self.reader.join(5)
        summary = [n for n, line in enumerate(lines) if line.startswith("run ok")]
        timed_out = [n for n, line in enumerate(lines) if "could not send" in line]
        self.assertTrue(summary and timed_out, "".join(lines))
        self.assertLess(summary[0], timed_out[0], "".join(lines))  # the summary came before the webhook gave up


class IndexWait(PipelineTestCase):
    """Finding 8: an index another program holds is waited for --lock-timeout, and said so after 2 s."""

    def test_a_held_index_honours_lock_timeout(self) -> None:
        self.assertEqual(self.run_main().code, 0)
        holder = sqlite3.connect(DataLayout(self.data_dir).index, isolation_level=None)
        self.addCleanup(holder.close)
        holder.execute("PRAGMA locking_mode=EXCLUSIVE")
        holder.execute("BEGIN EXCLUSIVE")
        holder.execute("INSERT OR REPLACE INTO meta (k, v) VALUES ('held', '1')")
        self.fake.advance(60)
        started = time.monotonic()
        result = self.run_main("--lock-timeout", "3")
        took = time.monotonic() - started
        self.assertEqual(result.code, 0, result.stderr)  # the CSV is read instead: slower, never wrong
        self.assertIn("10 rows appended", result.stderr)
        self.assertIn("waiting for the index", result.stderr)
        self.assertIn("--lock-timeout", result.stderr)
        self.assertLess(took, 20)  # was 120 s, silent


class NotifyUrl(PipelineTestCase):
    """Finding 5: a notify URL that does not parse is a config error for every command, before it runs."""

    def test_malformed_notify_urls(self) -> None:
        for url in (
            "http://[::1/x",
            "http://127.0.0.1:abc/x",
            "ftp://example.com/x",
            "http://bad host/x",
            "http://127.0.0.1:99999/x",
            "https://exa..mple.com/x",
        ):
            for command in ("status", "run"):
                with self.subTest(url=url, command=command):
                    result = self.run_main(command, env={**self.env, "PIPELINE_NOTIFY_URL": url})
                    self.assertEqual(result.code, 2, result.stderr)
                    lines = result.stderr.strip().splitlines()
                    self.assertEqual(len(lines), 1, result.stderr)
                    self.assertTrue(lines[0].startswith("config error: notify-url: "), lines[0])
                    self.assertNotIn("unexpected", lines[0])
        self.assertFalse(self.csv_path.exists())  # refused before anything ran

    def test_good_notify_urls_pass(self) -> None:
        for url in ("https://ntfy.sh/topic#t", "http://[::1]:8080/x", "http://localhost:9/x"):
            result = self.run_main("status", env={**self.env, "PIPELINE_NOTIFY_URL": url})
            self.assertNotEqual(result.code, 2, result.stderr)


class S3Scratch(PipelineTestCase):
    """Finding 6: the S3 scratch folder is per user, 0700, checked; never $TMPDIR/crypto-history."""

    def settings(self, env: dict[str, str]):
        from utils.settings import build_settings

        return build_settings("status", {"data_dir": "s3://scratch-test-bucket/prefix"}, env)

    def test_a_private_folder_under_the_cache(self) -> None:
        cache = Path(self.tmp.name) / "cache"
        settings = self.settings({"XDG_CACHE_HOME": str(cache)})
        root = cache / "crypto-history"
        self.assertEqual(settings.data_dir, root / "scratch-test-bucket" / "prefix")
        self.assertEqual(root.stat().st_mode & 0o777, 0o700)
        self.assertNotIn(f"{os.sep}tmp{os.sep}crypto-history", str(settings.data_dir))

    def test_a_linked_or_foreign_scratch_folder_is_refused(self) -> None:
        from utils.errors import ConfigError

        cache = Path(self.tmp.name) / "cache"
        cache.mkdir()
        elsewhere = Path(self.tmp.name) / "elsewhere"
        elsewhere.mkdir()
        (cache / "crypto-history").symlink_to(elsewhere)
        with self.assertRaisesRegex(ConfigError, "symbolic link"):
            self.settings({"XDG_CACHE_HOME": str(cache)})
        self.assertEqual(list(elsewhere.iterdir()), [])
        if os.getuid() == 0:  # only root can give a folder to another user
            (cache / "crypto-history").unlink()
            (cache / "crypto-history").mkdir()
            os.chown(cache / "crypto-history", 65534, 65534)
            with self.assertRaisesRegex(ConfigError, "another user"):
                self.settings({"XDG_CACHE_HOME": str(cache)})

    def test_no_home_gives_a_fresh_private_folder(self) -> None:
        settings = self.settings({})
        root = settings.data_dir.parent.parent
        self.addCleanup(lambda: __import__("shutil").rmtree(root, ignore_errors=True))
        self.assertTrue(root.name.startswith("crypto-history-"))
        self.assertEqual(root.stat().st_mode & 0o777, 0o700)


class RawTempFiles(PipelineTestCase):
    """Finding 10: this program's stale temp files in raw/YYYY/MM/DD/ are removed like the others."""

    def test_stale_temp_files_in_raw_day_folders_are_removed(self) -> None:
        self.assertEqual(self.run_main().code, 0)
        day = next((self.data_dir / "raw").glob("*/*/*"))
        stale = day / ".20230108T000000000000Z_coins_markets_eur.json.gz.abc123.tmp"
        fresh = day / ".20230108T000000000001Z_coins_markets_eur.json.gz.def456.tmp"
        other = day / "notes.tmp"
        for path in (stale, fresh, other):
            path.write_bytes(b"partial")
        old = time.time() - 2 * 3600
        os.utime(stale, (old, old))
        os.utime(other, (old, old))
        self.fake.advance(60)
        self.assertEqual(self.run_main().code, 0)
        self.assertFalse(stale.exists())
        self.assertTrue(fresh.exists())  # under an hour old: maybe another process's write in progress
        self.assertTrue(other.exists())  # not a name this program gives


class Minor(PipelineTestCase):
    """Finding 12: the minor ones."""

    def test_backfill_top_names_a_linked_folder_or_dangling_top_members_file(self) -> None:
        self.assertEqual(self.run_main().code, 0)
        path = DataLayout(self.data_dir).top_members
        forms = {
            "a link": lambda: path.symlink_to(self.csv_path),
            "a dangling link": lambda: path.symlink_to(self.data_dir / "nowhere.json"),
            "a folder": lambda: path.mkdir(),
        }
        for form, make in forms.items():
            with self.subTest(form=form):
                make()
                result = self.run_main("backfill", "--top", "5", "--days", "3")
                self.assertIn("top-members.json", result.stderr)
                self.assertNotIn("unexpected", result.stderr)
                self.assertIn(result.code, (1, 2), result.stderr)
                if path.is_dir() and not path.is_symlink():
                    path.rmdir()
                else:
                    path.unlink()

    def test_retry_delays_zero_says_what_it_takes(self) -> None:
        result = self.run_main("daemon", "--retry-delays", "0")
        self.assertEqual(result.code, 2)
        self.assertIn("greater than 0", result.stderr)
        self.assertNotIn("between 0 and", result.stderr)

    def test_lambda_handlers_redact_every_exception(self) -> None:
        from utils.redact import redacted_errors, remember_secret

        secret = "CG-" + "k" * 24
        remember_secret(secret)

        @redacted_errors
        def handler(event, context):
            raise KeyError(f"boom with {secret} and \x1b[31m")

        with self.assertRaises(Exception) as caught:
            handler({}, None)
        self.assertEqual(type(caught.exception).__name__, "KeyError")  # Step Functions' ErrorEquals still match
        self.assertNotIn(secret, str(caught.exception))
        self.assertNotIn("\x1b", str(caught.exception))
        self.assertIsNone(caught.exception.__cause__)
        for module in (
            "lambdas.lambda_1_extract",
            "lambdas.lambda_2_transform",
            "lambdas.lambda_3_load",
            "lambdas.lambda_4_charts",
            "flows.serverless",
        ):
            mod = __import__(module, fromlist=["x"])
            handler_fn = getattr(mod, "handler", None) or mod.views_handler
            self.assertTrue(hasattr(handler_fn, "__wrapped__"), module)
