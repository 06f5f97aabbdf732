"""The Delta table on S3 as the serverless stack and many writers use it, against a moto S3 *server* on loopback.

Opt-in (RUN_SLOW=1, as CI sets): deltalake talks HTTP to the server (moto's in-process patch cannot reach
it), so these tests exercise the real path, conditional writes included.
- the Lambda chain (extract -> transform -> load -> views) on a Delta table: every currency, the top N,
  membership, report, charts, data package and findings beside the table;
- eight `run` processes and one `backfill` at once, three rounds on an advancing fake clock: every
  observation in raw/ stored exactly once, each process exits 0, or 1 with nothing of its own written;
- SIGKILL at random moments of a run, then a rerun: nothing lost, nothing stored twice (the 40-trial
  version is `python bench/crash_test.py --only s3-run`).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import random
import re
import signal
import subprocess
import time
import unittest
from collections import Counter
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from tests.fake_coingecko import make_daily_chart, markets_rows
from tests.s3_server import LocalS3
from tests.support import S3TestCase

SLOW = os.environ.get("RUN_SLOW") == "1"
Key = tuple[str, str, str]
RUN_SUMMARY = re.compile(r"^run (ok|partial): .*?(\d+) rows appended, (\d+) duplicates skipped", re.MULTILINE)


def raw_keys(s3: LocalS3, prefix: str) -> dict[str, set[Key]]:
    """Every observation the raw answers under prefix/raw/ hold, by object: what the pipeline should have stored."""
    from flows.backfill import DayRange, records_from
    from lambdas.lambda_2_transform import transform
    from utils.history.schema import snapshot_from_payload

    out: dict[str, set[Key]] = {}
    for key in s3.keys(f"{prefix}/raw/"):
        payload = json.loads(gzip.decompress(s3.get(key)))
        if "pages" in payload:
            records = transform(snapshot_from_payload(payload)).records
        else:
            span = DayRange(date.fromisoformat(payload["first_day"]), date.fromisoformat(payload["last_day"]))
            records, _ = records_from(payload["coin_id"], payload["vs_currency"], payload["answers"], span)
        out[key] = {(r.coin_id, r.vs_currency, r.last_updated) for r in records}
    return out


class S3TableCase(S3TestCase):
    """A moto S3 server (one per class, a bucket per test), and `python main.py` children pointed at it."""

    def setUp(self) -> None:
        super().setUp()
        self.env.update(PIPELINE_RATE_LIMIT="10000", PIPELINE_HEAL="0", PIPELINE_CHARTS="0")

    @staticmethod
    def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
        return S3TestCase.finish(proc, timeout)

    def table_keys(self) -> list[Key]:
        """Every stored observation, through `export` (the CSV store's format): duplicates would show twice."""
        out = Path(self.tmp.name) / f"export-{time.monotonic_ns()}.csv"
        code, err = self.finish(self.start("export", "--out", str(out)))
        self.assertEqual(code, 0, err)
        rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
        out.unlink()
        return [(r["coin_id"], r["vs_currency"], r["last_updated"]) for r in rows]

    def assert_exactly_once(self, stored: list[Key], expected: set[Key]) -> None:
        """No observation twice, none of `expected` missing."""
        twice = [k for k, n in Counter(stored).items() if n > 1]
        self.assertEqual(twice[:3], [], f"{len(twice)} observations stored more than once")
        missing = expected - set(stored)
        self.assertEqual(sorted(missing)[:3], [], f"{len(missing)} observations lost")


@unittest.skipUnless(SLOW, "a moto S3 server and deltalake over HTTP: set RUN_SLOW=1")
class LambdaChainOnDelta(S3TableCase):
    """The state machine's four steps, in order, each handler called as Lambda calls it, on a Delta table."""

    def setUp(self) -> None:
        super().setUp()
        import tempfile as tempfile_module

        self.saved_env = dict(os.environ)
        self.addCleanup(lambda: (os.environ.clear(), os.environ.update(self.saved_env)))
        self.addCleanup(setattr, tempfile_module, "tempdir", tempfile_module.tempdir)
        tempfile_module.tempdir = str(self.scratch_tmp)
        os.environ.update(self.s3.env)
        os.environ.update(
            {
                "COINGECKO_API_URL": self.fake.base_url,
                "COINGECKO_API_PLAN": "public",
                "PIPELINE_DATA_DIR": self.url,
                "PIPELINE_HEAL": "0",
                "PIPELINE_VS_CURRENCY": "eur,usd",
                "PIPELINE_TOP": "4",
                "PIPELINE_COINS": "algorand",
            }
        )
        for name in (
            "COINGECKO_API_KEY",
            "COINGECKO_API_KEY_PARAMETER",
            "COINGECKO_API_KEY_SECRET_ID",
            "PIPELINE_TABLE_FORMAT",
        ):
            os.environ.pop(name, None)

    def chain(self) -> dict:
        from flows import serverless
        from lambdas import lambda_1_extract, lambda_2_transform, lambda_3_load

        out = lambda_1_extract.handler({}, None)
        out = lambda_2_transform.handler(out, None)
        out = lambda_3_load.handler(out, None)
        return serverless.views_handler(out, None)

    def test_the_chain_keeps_every_currency_the_top_n_and_the_views_beside_the_table(self) -> None:
        first = self.chain()
        self.assertEqual(
            (first["appended"], first["result"], first["failed"]),
            (10, "ok", []),
            {k: first.get(k) for k in ("missing", "rejected", "failed")},
        )
        self.assertNotIn("chart_error", first)
        self.fake.move(self.fake.ranked_ids()[6], 0)  # a newcomer enters the top 4
        self.fake.advance(3600)
        second = self.chain()
        self.assertEqual(second["appended"], 10)
        objects = self.s3.keys(f"{self.PREFIX}/")
        self.assertTrue(any(k.startswith(f"{self.PREFIX}/crypto_data/_delta_log/") for k in objects), objects)
        self.assertFalse(f"{self.PREFIX}/crypto_data.csv" in objects)
        for name in ("crypto_price_trend.png", "crypto_price_trend_usd.png", "report.html", "datapackage.json"):
            self.assertIn(f"{self.PREFIX}/{name}", objects)
        members = json.loads(self.s3.get(f"{self.PREFIX}/.state/top-members.json"))
        self.assertEqual(sorted(members), ["eur", "usd"])
        self.assertEqual(members["eur"]["order"][0], self.fake.ranked_ids()[0])
        # every observation of raw/ stored exactly once, in both currencies
        expected = set().union(*raw_keys(self.s3, self.PREFIX).values())
        self.assertEqual({vs for _, vs, _ in expected}, {"eur", "usd"})
        stored = self.table_keys()
        self.assert_exactly_once(stored, expected)
        self.assertEqual(len(stored), 20)


@unittest.skipUnless(SLOW, "eight writers and a backfill on a moto S3 server: set RUN_SLOW=1")
class EightRunsAndABackfillOnOneS3Table(S3TableCase):
    WRITERS = 8
    PER_WRITER = 6
    ROUNDS = 3
    DAYS = 10

    def test_three_rounds_every_observation_once(self) -> None:
        now = datetime.now(timezone.utc)
        self.fake.set_coins(markets_rows(self.WRITERS * self.PER_WRITER, start=now - timedelta(hours=3)))
        ids = [row["id"] for row in self.fake.coins]
        slices = [ids[k * self.PER_WRITER : (k + 1) * self.PER_WRITER] for k in range(self.WRITERS)]
        backfill_ids = [s[0] for s in slices[:4]] + ["backfill-only-0", "backfill-only-1"]
        chart_start = now.date() - timedelta(days=self.ROUNDS * self.DAYS + 10)
        for n, coin in enumerate(backfill_ids):
            self.fake.market_chart[coin] = make_daily_chart(
                chart_start, (now.date() - chart_start).days + 1, 1.5**n, seed=n
            )
        failed_keys: set[Key] = set()
        for round_no in range(self.ROUNDS):
            self.fake.advance(600)  # the fake's clock moves on: every round's observations are new
            served = {(r["id"], "eur", r["last_updated"]) for r in self.fake.coins}
            until = now.date() - timedelta(days=2 + round_no * self.DAYS)
            since = until - timedelta(days=self.DAYS - 1)
            backfill = self.start(
                "backfill", "--since", str(since), "--until", str(until), "--coins", ",".join(backfill_ids)
            )
            runs = [self.start("run", "--coins", ",".join(coins)) for coins in slices]
            outcomes = [self.finish(proc) for proc in runs]
            code, err = self.finish(backfill)
            self.assertIn(code, (0, 1), err)
            for (code, err), coins in zip(outcomes, slices):
                self.assertIn(code, (0, 1), err)  # 1 only for a commit conflict that did not resolve
                if code == 1:
                    self.assertIn("nothing was", err)
                    failed_keys |= {k for k in served if k[0] in coins}
                else:
                    [(word, appended, _)] = RUN_SUMMARY.findall(err)
                    self.assertEqual((word, int(appended)), ("ok", self.PER_WRITER), err)
        stored = self.table_keys()
        in_raw = set().union(*raw_keys(self.s3, self.PREFIX).values())
        self.assertFalse(failed_keys & set(stored), "a run that exited 1 wrote rows")
        self.assert_exactly_once(stored, in_raw - failed_keys)
        self.assertEqual(set(stored) - in_raw, set(), "rows stored that no raw answer holds")
        self.assertGreaterEqual(len(stored), self.ROUNDS * (self.WRITERS * self.PER_WRITER) - len(failed_keys))


@unittest.skipUnless(SLOW, "SIGKILL trials on a moto S3 server: set RUN_SLOW=1")
class SigkillOnS3(S3TableCase):
    TRIALS = 6
    COINS = 300

    def test_a_run_killed_at_random_moments_loses_and_repeats_nothing(self) -> None:
        rng = random.Random(int(os.environ.get("CRASH_SEED", "17")))
        self.fake.set_coins(markets_rows(self.COINS, start=datetime.now(timezone.utc) - timedelta(hours=3)))
        coins = ",".join(r["id"] for r in self.fake.coins)
        expected: set[Key] = set()
        durations = []
        for _ in range(2):  # the typical duration, from runs not killed
            self.fake.advance(60)
            expected |= {(r["id"], "eur", r["last_updated"]) for r in self.fake.coins}
            began = time.monotonic()
            code, err = self.finish(self.start("run", "--coins", coins))
            self.assertEqual(code, 0, err)
            durations.append(time.monotonic() - began)
        killed = 0
        for _ in range(self.TRIALS):
            self.fake.advance(60)
            expected |= {(r["id"], "eur", r["last_updated"]) for r in self.fake.coins}
            proc = self.start("run", "--coins", coins)
            time.sleep(rng.uniform(0.3, max(durations)))  # the behaviour under test: a kill at a random moment
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                killed += 1
            code, err = self.finish(proc)
            self.assertIn(code, (0, -signal.SIGKILL), err)
            code, err = self.finish(self.start("run", "--coins", coins))
            self.assertEqual(code, 0, err)
        stored = self.table_keys()
        self.assert_exactly_once(stored, expected)
        extra = set(stored) - expected
        self.assertEqual(sorted(extra)[:5], [], f"{len(extra)} rows stored that the fake never served")
        self.assertGreater(killed, 0, "no trial was killed mid-run")


if __name__ == "__main__":
    unittest.main()
