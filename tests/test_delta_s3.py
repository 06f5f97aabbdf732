"""The Delta store on S3: every command through `python main.py` against moto in server mode on loopback.

Slow (a process per command, a real HTTP server): set RUN_SLOW=1, as .ci/run does.
"""

from __future__ import annotations

import csv
import io
import json
import os
import unittest
from pathlib import Path

from tests.support import FIXTURE_IDS, CliResult, S3TestCase, charts_for
from tests.test_table_formats import aged_tombstones, compacted_partition
from utils.history.delta_table import COMPACT_FILES, DeltaHistory
from utils.history.schema import COLUMNS, HEADER_LINE

PREFIX = "history"


@unittest.skipUnless(os.environ.get("RUN_SLOW") == "1", "slow (a moto server and a process per command): RUN_SLOW=1")
class DeltaOnS3(S3TestCase):
    PREFIX = PREFIX

    def setUp(self) -> None:
        super().setUp()
        del self.env["PIPELINE_CHARTS"]  # charts and report are part of every command here

    def main(self, *argv: str, env: dict[str, str] | None = None) -> CliResult:
        return self.run_subprocess(*argv, env=env, timeout=300)

    def keys(self) -> list[str]:
        return sorted(k.removeprefix(PREFIX + "/") for k in self.s3.keys(PREFIX + "/"))

    def exported(self, *argv: str) -> list[list[str]]:
        out = Path(self.tmp.name) / "export.csv"
        result = self.main("export", "--out", str(out), *argv)
        self.assertEqual(result.code, 0, result.stderr)
        text = out.read_text(encoding="utf-8")
        self.assertTrue(text.startswith(HEADER_LINE))
        return list(csv.reader(io.StringIO(text)))[1:]

    def test_every_command_on_the_table(self) -> None:
        first = self.main("--vs-currency", "eur,usd")
        self.assertEqual(first.code, 0, first.stderr)
        self.assertIn(f"s3://{self.s3.bucket}/{PREFIX}/crypto_data", first.stderr)
        again = self.main("--vs-currency", "eur,usd")
        self.assertIn("0 rows appended, 20 duplicates skipped", again.stderr)
        keys = self.keys()
        self.assertIn("crypto_data/_delta_log/00000000000000000000.json", keys)
        self.assertTrue(any(k.startswith("crypto_data/vs_currency=usd/month=2023-01/") for k in keys), keys)
        for name in ("crypto_price_trend.png", "crypto_price_trend_usd.png", "report.html", "datapackage.json"):
            self.assertIn(name, keys)
        self.assertNotIn("crypto_data.csv", keys)
        package = json.loads(self.s3.get(f"{PREFIX}/datapackage.json"))
        self.assertEqual(package["resources"][0]["format"], "delta")

        status = self.main("status")
        self.assertEqual(status.code, 0, status.stderr)
        self.assertRegex(status.stdout, r"history: +s3://\S+/crypto_data: 20 rows, 10 coins in eur, usd")
        top = self.main("top", "--date", "2023-01-08", "--top", "2", "--vs-currency", "usd")
        self.assertEqual(top.code, 0, top.stderr)
        self.assertEqual([line.split()[1] for line in top.stdout.splitlines()[2:]], ["bitcoin", "ethereum"])
        self.assertEqual(self.main("plot").code, 0)
        report = self.main("report")
        self.assertEqual(report.code, 0, report.stderr)
        self.assertIn(b"bitcoin", self.s3.get(f"{PREFIX}/report.html"))
        self.assertEqual(self.main("quality").code, 0)
        rows = self.exported()
        self.assertEqual(len(rows), 20)
        self.assertEqual(len(self.exported("--vs-currency", "usd")), 10)
        self.assertEqual({r[COLUMNS.index("vs_currency")] for r in rows}, {"eur", "usd"})

    def test_backfill_and_healing_merge_into_the_table(self) -> None:
        self.fake.market_chart.update(charts_for(FIXTURE_IDS))
        self.assertEqual(self.main().code, 0)
        result = self.main("backfill", "--coins", "bitcoin", "--days", "5", "--no-charts")
        self.assertEqual(result.code, 0, result.stderr)
        rows = self.exported()
        self.assertEqual(sum(r[COLUMNS.index("source")] == "market_chart" for r in rows), 5)
        again = self.main("backfill", "--coins", "bitcoin", "--days", "5", "--no-charts")
        self.assertIn("0 rows added", again.stderr)

    def test_healing_seeds_the_table_and_stale_charts_go(self) -> None:
        self.fake.market_chart.update(charts_for(FIXTURE_IDS))
        self.s3.put(f"{PREFIX}/crypto_price_trend_eur.png", b"a chart of eur from when it was not the first currency")
        result = self.main(env=dict(self.env, PIPELINE_HEAL="1", PIPELINE_SEED_DAYS="5"))
        self.assertEqual(result.code, 0, result.stderr)
        rows = self.exported()
        self.assertGreater(sum(r[COLUMNS.index("source")] == "market_chart" for r in rows), 10)
        keys = self.keys()
        self.assertIn("crypto_price_trend.png", keys)
        self.assertNotIn("crypto_price_trend_eur.png", keys)

    def test_a_csv_object_is_converted_once_and_kept(self) -> None:
        csv_env = dict(self.env, PIPELINE_TABLE_FORMAT="csv")
        self.assertEqual(self.main(env=csv_env).code, 0)
        before = self.s3.get(f"{PREFIX}/crypto_data.csv")
        self.fake.advance(60)
        result = self.main()
        self.assertEqual(result.code, 0, result.stderr)
        self.assertIn("converted", result.stderr)
        self.assertIn("kept unchanged as a backup", result.stderr)
        self.assertEqual(self.s3.get(f"{PREFIX}/crypto_data.csv"), before)
        self.assertEqual(len(self.exported()), 20)
        self.assertNotIn("converted", self.main().stderr)

    def test_concurrent_runs_store_each_observation_once(self) -> None:
        procs = [self.start() for _ in range(4)]
        codes, errors = zip(*(self.finish(p, timeout=300) for p in procs))
        self.assertEqual(codes, (0, 0, 0, 0), errors)
        rows = self.exported()
        keys = [
            (r[COLUMNS.index("coin_id")], r[COLUMNS.index("vs_currency")], r[COLUMNS.index("last_updated")])
            for r in rows
        ]
        self.assertEqual(len(keys), 10)
        self.assertEqual(len(set(keys)), 10)

    def test_missing_bucket_no_credentials_wrong_endpoint(self) -> None:
        no_bucket = dict(self.env, PIPELINE_DATA_DIR="s3://no-such-bucket-here/x")
        no_credentials = {k: v for k, v in self.env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
        no_credentials.update(
            {
                "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
                "AWS_CONFIG_FILE": "/nonexistent",
                "AWS_EC2_METADATA_DISABLED": "true",
            }
        )
        wrong_endpoint = dict(self.env, AWS_ENDPOINT_URL="http://127.0.0.1:9")
        for env, words, code in (
            (no_bucket, "the bucket no-such-bucket-here does not exist", 2),
            (no_credentials, "AWS is not configured for the s3:// data folder", 2),
            (wrong_endpoint, "cannot reach S3", 1),
        ):
            for argv in ((), ("status",)):
                result = self.main(*argv, env=env)
                self.assertEqual(result.code, code, (argv, result.stderr))
                self.assertIn(words, result.stderr)
                self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
        self.assertEqual(self.fake.requests_to("/coins/markets"), [])

    def test_vacuum_on_s3_deletes_what_compaction_left_7_days_ago_and_spares_readers(self) -> None:
        self.assertEqual(self.main().code, 0)
        history = DeltaHistory(self.s3.url(f"{PREFIX}/crypto_data"), self.s3.storage_options())
        reader, rows, removed = compacted_partition(history, self.s3.storage_options())
        self.assertEqual(len(removed), COMPACT_FILES + 1)
        self.assertEqual(history.vacuum(), 0)
        self.assertTrue(removed <= {k.removeprefix("crypto_data/") for k in self.keys()})
        self.assertEqual(reader.to_pyarrow_table().num_rows, rows)
        for key in self.s3.keys(f"{PREFIX}/crypto_data/_delta_log/"):
            if key.endswith(".json"):
                self.s3.put(key, aged_tombstones(self.s3.get(key).decode()).encode())
        kept = {k for k in self.keys() if k.endswith(".parquet")} - {f"crypto_data/{p}" for p in removed}
        self.fake.advance(60)
        result = self.main()
        self.assertEqual(result.code, 0, result.stderr)
        keys = set(self.keys())
        self.assertFalse({f"crypto_data/{p}" for p in removed} & keys)
        self.assertTrue(kept <= keys)
        self.assertEqual(len(self.exported()), rows + 10)

    def test_a_prefix_holding_no_delta_table_is_refused(self) -> None:
        self.s3.put(f"{PREFIX}/crypto_data/part-0.parquet", b"not ours")
        result = self.main()
        self.assertEqual(result.code, 2, result.stderr)
        self.assertIn("is not a Delta table", result.stderr)
        self.assertEqual(self.keys(), ["crypto_data/part-0.parquet"])
        self.assertEqual(self.fake.requests_to("/coins/markets"), [])


if __name__ == "__main__":
    unittest.main()
