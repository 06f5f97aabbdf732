"""The Lambda handlers chained as the state machine chains them, on moto's in-process S3/SSM, against the fake CoinGecko."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path
from unittest import mock

import pandas

from tests.support import FIXTURE_IDS, REPO, PipelineTestCase

try:
    import boto3
    from moto import mock_aws
except ImportError:  # pragma: no cover - the AWS extras are in requirements.txt; without them these tests skip
    boto3 = None

from flows import serverless
from lambdas import lambda_1_extract, lambda_2_transform, lambda_3_load, lambda_4_charts  # noqa: F401
from utils import aws
from utils.errors import ConfigError, LoadError
from utils.history.layout import TABLE_NAME
from utils.history.locations import S3Storage
from utils.history.schema import HEADER_LINE, Record
from utils.s3 import Conflict, S3Objects, storage_options
from utils.settings import lambda_settings

BUCKET = "crypto-history-test"
SECRET = "CG-AWS-SECRET-0123456789"


def rows_without_fetch_time(data: bytes) -> list[dict[str, str]]:
    rows = list(csv.DictReader(io.StringIO(data.decode())))
    for row in rows:
        row.pop("fetched_at")
    return rows


@unittest.skipIf(boto3 is None, "boto3/moto not installed")
class S3ObjectHelper(unittest.TestCase):
    """utils/s3.py, the one S3 object helper: bounded reads, conditional writes, listing, deleting, one-line errors."""

    def setUp(self) -> None:
        saved = dict(os.environ)
        self.addCleanup(lambda: (os.environ.clear(), os.environ.update(saved)))
        os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"})
        os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
        mock = mock_aws()
        mock.start()
        self.addCleanup(mock.stop)
        self.client = boto3.client("s3")
        self.client.create_bucket(Bucket=BUCKET)
        self.objects = S3Objects(f"s3://{BUCKET}/history", self.client)

    def test_get_put_list_delete(self) -> None:
        self.assertEqual(self.objects.get("a.txt"), (None, None))
        etag = self.objects.put("a.txt", b"one", if_none_match=True)
        with self.assertRaises(Conflict):
            self.objects.put("a.txt", b"two", if_none_match=True)
        with self.assertRaises(Conflict):
            self.objects.put("a.txt", b"two", if_match='"not-its-etag"')
        self.objects.put("a.txt", b"two", if_match=etag)
        self.assertEqual(self.objects.read("a.txt"), b"two")
        for i in range(5):
            self.objects.put(f"raw/{i}.gz", b"x")
        self.assertEqual(self.objects.list("raw/"), [f"raw/{i}.gz" for i in range(5)])
        self.assertEqual(self.objects.list("raw/", limit=2), ["raw/0.gz", "raw/1.gz"])
        self.objects.delete("raw/0.gz")
        self.objects.delete("raw/0.gz")  # deleting what is gone is no error
        self.assertEqual(len(self.objects.list("")), 5)

    def test_a_read_over_its_bound_is_refused_in_one_line(self) -> None:
        self.objects.put("big.csv", b"x" * 11)
        with self.assertRaises(LoadError) as caught:
            self.objects.get("big.csv", limit=10)
        self.assertIn("big.csv is 11 bytes, more than the 10 this program reads at once", str(caught.exception))
        self.assertEqual(self.objects.read("big.csv", limit=11), b"x" * 11)

    def test_a_missing_bucket_is_one_line_exit_2(self) -> None:
        missing = S3Objects("s3://no-such-bucket-here/x", self.client)
        for action in (missing.check_bucket, lambda: missing.put("a", b"1"), lambda: missing.list("")):
            with self.assertRaises(ConfigError) as caught:
                action()
            self.assertEqual(
                str(caught.exception), "the bucket no-such-bucket-here does not exist: create it or fix --data-dir"
            )

    def test_storage_options_come_from_the_environment_given(self) -> None:
        env = {"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9000", "AWS_ACCESS_KEY_ID": "k", "HOME": "/x"}
        self.assertEqual(
            storage_options(env),
            {
                "AWS_ACCESS_KEY_ID": "k",
                "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
                "AWS_REGION": "us-east-1",
                "AWS_ALLOW_HTTP": "true",
            },
        )


@unittest.skipIf(boto3 is None, "boto3/moto not installed")
class LambdaChain(PipelineTestCase):
    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        # One boto3 session for the class (restored after it): moto's default, a new session for each test,
        # loads and parses the S3 and SSM service models again, 0.2-0.3 s a test. moto still starts afresh
        # for each test, its buckets and parameters empty (mock_aws(config=...) below).
        session = mock.patch("boto3.DEFAULT_SESSION", None)
        session.start()
        cls.addClassCleanup(session.stop)

    def setUp(self) -> None:
        super().setUp()
        self.saved_env = dict(os.environ)
        self.addCleanup(self.restore_env)
        # The S3 scratch copy lives in the temp folder: one of this test's own, not one another test run shares.
        self.addCleanup(setattr, tempfile, "tempdir", tempfile.tempdir)
        tempfile.tempdir = self.tmp.name
        os.environ.update(
            {
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_SESSION_TOKEN": "testing",
                "AWS_DEFAULT_REGION": "eu-central-1",
            }
        )
        self.mock = mock_aws(config={"core": {"reset_boto3_session": False}})
        self.mock.start()
        self.addCleanup(self.mock.stop)
        aws._key_cache.clear()
        self.s3 = boto3.client("s3")
        self.s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-central-1"})
        boto3.client("ssm").put_parameter(Name="/crypto-history/coingecko-api-key", Value=SECRET, Type="SecureString")
        self.fake.required_key = ("x-cg-demo-api-key", SECRET)
        os.environ.update(
            {
                "COINGECKO_API_URL": self.fake.base_url,
                "PIPELINE_DATA_DIR": f"s3://{BUCKET}/history",
                "PIPELINE_COINS": ",".join(FIXTURE_IDS),
                "COINGECKO_API_PLAN": "demo",
                "COINGECKO_API_KEY_PARAMETER": "/crypto-history/coingecko-api-key",
                "PIPELINE_HEAL": "0",
                # The demo plan paces 30 calls a minute, 2 s between them, slept for real in the handlers; the
                # pacing is tested on a simulated clock (tests/test_backfill.py Pacing), not here.
                "PIPELINE_RATE_LIMIT": "10000",
                # moto in-process answers boto3 alone; the Delta store on S3 is tested on a moto server
                # (tests/test_delta_s3.py): these keep the CSV-object store covered.
                "PIPELINE_TABLE_FORMAT": "csv",
            }
        )
        os.environ.pop("COINGECKO_API_KEY", None)

    def restore_env(self) -> None:
        os.environ.clear()
        os.environ.update(self.saved_env)

    def object(self, key: str) -> bytes:
        return self.s3.get_object(Bucket=BUCKET, Key=f"history/{key}")["Body"].read()

    def chain(self, views: bool = True) -> dict:
        """Extract -> Transform -> Load -> Charts, passing each output on as the state machine does.

        views=False stops after Load, for the tests of what is stored: the Charts step draws every chart and
        the report (a second or more a currency) and passes the rest of its input on unchanged. The tests
        that check the charts and the report run it."""
        out = lambda_1_extract.handler({}, None)
        out = lambda_2_transform.handler(out, None)
        out = lambda_3_load.handler(out, None)
        return serverless.views_handler(out, None) if views else out

    def test_the_chain_writes_the_same_csv_as_a_local_run(self) -> None:
        result = self.chain()
        self.assertEqual(result["appended"], 10)
        self.assertEqual(result["result"], "ok")
        on_s3 = self.object("crypto_data.csv")
        self.assertTrue(on_s3.startswith(HEADER_LINE.encode()))
        local = self.run_main("--coins", ",".join(FIXTURE_IDS), env={**self.env, "COINGECKO_API_KEY": SECRET})
        self.assertEqual(local.code, 0, local.stderr)
        self.assertEqual(rows_without_fetch_time(on_s3), rows_without_fetch_time(self.csv_bytes()))
        # the raw snapshot is archived, the charts are stored, the key is in no object
        keys = [o["Key"] for o in self.s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
        self.assertTrue(any(k.startswith("history/raw/") and k.endswith(".json.gz") for k in keys), keys)
        for name in ("crypto_price_trend.png", "crypto_market_cap_trend.png", "crypto_performance.png"):
            self.assertTrue(self.object(name).startswith(b"\x89PNG"), name)
        for key in keys:
            data = self.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            if key.endswith(".gz"):
                data = gzip.decompress(data)
            self.assertNotIn(SECRET.encode(), data, key)
        self.assertEqual(self.fake.requests_to("/coins/markets")[0].headers["x-cg-demo-api-key"], SECRET)

    def test_a_second_chain_appends_nothing(self) -> None:
        self.chain(views=False)
        before = self.object("crypto_data.csv")
        self.assertEqual(self.chain(views=False)["appended"], 0)
        self.assertEqual(self.object("crypto_data.csv"), before)
        self.fake.advance(60)
        self.assertEqual(self.chain(views=False)["appended"], 10)

    def test_two_overlapping_loads_lose_nothing(self) -> None:
        first = lambda_2_transform.handler(lambda_1_extract.handler({"coins": ["bitcoin", "ethereum"]}, None), None)
        second = lambda_2_transform.handler(lambda_1_extract.handler({"coins": ["tether", "ripple"]}, None), None)
        storage_a = S3Storage(
            f"s3://{BUCKET}/history", scratch=Path(self.tmp.name, "a"), client=boto3.client("s3"), sleep=lambda s: None
        )
        storage_b = S3Storage(
            f"s3://{BUCKET}/history", scratch=Path(self.tmp.name, "b"), client=boto3.client("s3"), sleep=lambda s: None
        )

        def load(storage: S3Storage, event: dict) -> int:
            data = gzip.decompress(self.object(event["records_keys"][0]))
            return storage.append([Record(**row) for row in json.loads(data)]).appended

        # A reads the history, then B commits before A's conditional write: A must redo its step.
        original_put = storage_a.client.put_object
        calls = {"n": 0}

        def put_after_b(**kwargs):
            calls["n"] += 1
            if calls["n"] == 1:
                self.assertEqual(load(storage_b, second), 2)
            return original_put(**kwargs)

        storage_a.client.put_object = put_after_b
        self.assertEqual(load(storage_a, first), 2)
        self.assertEqual(storage_a.conflicts, 1)
        rows = list(csv.DictReader(io.StringIO(self.object("crypto_data.csv").decode())))
        self.assertEqual(sorted(r["coin_id"] for r in rows), ["bitcoin", "ethereum", "ripple", "tether"])

    def test_lines_standard_readers_cannot_read_are_moved_to_the_quarantine_object(self) -> None:
        self.chain(views=False)
        good = self.object("crypto_data.csv")
        damaged = good + b"bitcoin,\x00,broken\n" + b'"unbalanced,quote\n'
        self.s3.put_object(Bucket=BUCKET, Key="history/crypto_data.csv", Body=damaged)
        self.fake.advance(60)
        result = self.chain()
        self.assertEqual(result["appended"], 10)
        stored = self.object("crypto_data.csv")
        self.assertTrue(stored.startswith(good))
        self.assertNotIn(b"\x00", stored)
        frame = pandas.read_csv(io.BytesIO(stored))
        self.assertEqual(len(frame), 20)
        self.assertEqual(len(self.rows()), 20)
        moved = self.object("crypto_data.csv.quarantine")
        self.assertIn(b"# line 12 of crypto_data.csv: a NUL byte\nbitcoin,\x00,broken\n", moved)
        self.assertIn(b"bitcoin,\x00,broken\n", moved)
        self.assertIn(b'"unbalanced,quote', moved)
        self.assertEqual(self.chain(views=False)["appended"], 0)  # nothing new: the quarantine is not written twice
        self.assertEqual(self.object("crypto_data.csv.quarantine"), moved)

    def rows(self) -> list[dict[str, str]]:
        return list(csv.DictReader(io.StringIO(self.object("crypto_data.csv").decode())))

    def test_every_currency_is_fetched_and_drawn_with_the_report_beside_the_history(self) -> None:
        os.environ["PIPELINE_VS_CURRENCY"] = "eur,usd"
        result = self.chain()
        self.assertNotIn("chart_error", result)
        self.assertEqual((result["appended"], result["result"], result["failed"]), (20, "ok", []))
        self.assertEqual(len(result["raw_keys"]), 2)
        self.assertEqual(sorted({(r["vs_currency"]) for r in self.rows()}), ["eur", "usd"])
        self.assertEqual(len(self.rows()), 20)
        for name in ("crypto_price_trend.png", "crypto_price_trend_usd.png", "crypto_performance_usd.png"):
            self.assertTrue(self.object(name).startswith(b"\x89PNG"), name)
        report = self.object("report.html").decode()
        self.assertIn("<html", report)
        self.assertIn("20 rows appended", report)
        self.assertEqual(
            self.s3.head_object(Bucket=BUCKET, Key="history/report.html")["ContentType"], "text/html; charset=utf-8"
        )

    def test_a_currency_that_fails_leaves_the_others_and_makes_the_run_partial(self) -> None:
        os.environ["PIPELINE_VS_CURRENCY"] = "eur,xyz,usd"
        result = self.chain(views=False)
        self.assertEqual(result["appended"], 20)
        self.assertEqual(result["result"], "partial")
        self.assertEqual([vs for vs, _ in result["failed"]], ["xyz"])
        self.assertIn("invalid vs_currency", result["failed"][0][1])

    def test_every_currency_failing_stores_nothing(self) -> None:
        os.environ["PIPELINE_VS_CURRENCY"] = "xyz,abc"
        with self.assertRaisesRegex(Exception, "every currency failed: xyz: .*; abc: .*; nothing was appended"):
            lambda_1_extract.handler({}, None)
        listed = self.s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])
        self.assertEqual(listed, [])

    def test_the_top_n_membership_is_kept_beside_the_history(self) -> None:
        os.environ.pop("PIPELINE_COINS")
        os.environ["PIPELINE_TOP"] = "3"
        first = self.fake.ranked_ids()[:3]
        self.assertEqual(self.chain(views=False)["appended"], 3)
        members = json.loads(self.object(".state/top-members.json"))["eur"]
        self.assertEqual(members["order"], first)
        self.assertEqual(sorted(members["coins"]), sorted(first))
        newcomer = self.fake.ranked_ids()[5]
        self.fake.move(newcomer, 0)
        self.fake.advance(86400)
        self.assertEqual(self.chain(views=False)["appended"], 3)
        members = json.loads(self.object(".state/top-members.json"))["eur"]
        self.assertEqual(members["order"], [newcomer, *first[:2]])
        self.assertEqual(members["coins"][newcomer][0][1], None)  # inside since today
        self.assertNotIn(None, [left for _, left in members["coins"][first[2]]])  # no open spell: it left
        self.assertEqual(sorted({r["coin_id"] for r in self.rows()}), sorted({*first, newcomer}))

    def test_key_from_secrets_manager(self) -> None:
        boto3.client("secretsmanager").create_secret(
            Name="crypto-history/coingecko", SecretString=json.dumps({"api_key": SECRET})
        )
        os.environ.pop("COINGECKO_API_KEY_PARAMETER")
        os.environ["COINGECKO_API_KEY_SECRET_ID"] = "crypto-history/coingecko"
        self.assertEqual(self.chain(views=False)["appended"], 10)

    def test_a_missing_parameter_is_a_clear_error(self) -> None:
        os.environ["COINGECKO_API_KEY_PARAMETER"] = "/nope"
        with self.assertRaisesRegex(Exception, "cannot read the CoinGecko key from SSM parameter /nope"):
            lambda_1_extract.handler({}, None)

    def test_cli_run_and_backfill_on_s3(self) -> None:
        from datetime import date, timedelta

        from tests.fake_coingecko import make_daily_chart

        self.fake.market_chart["bitcoin"] = make_daily_chart(date.today() - timedelta(days=20), 21, 100.0)
        env = {k: v for k, v in os.environ.items()}
        env["COINGECKO_API_KEY"] = SECRET
        self.assertEqual(self.run_main("--coins", "bitcoin", env=env).code, 0)
        result = self.run_main("backfill", "--coins", "bitcoin", "--days", "10", env=env)
        self.assertEqual(result.code, 0, result.stderr)
        self.assertIn(f"s3://{BUCKET}/history/crypto_data.csv", result.stderr)
        rows = list(csv.DictReader(io.StringIO(self.object("crypto_data.csv").decode())))
        self.assertEqual(len(rows), 11)


class LocalRunNeedsNoAws(unittest.TestCase):
    def test_importing_and_running_the_cli_loads_no_aws_package(self) -> None:
        code = (
            "import sys, main; main.build_parser(); "
            "import lambdas.lambda_1_extract, lambdas.lambda_2_transform, lambdas.lambda_3_load, flows.run_once; "
            "print([m for m in ('boto3', 'botocore', 'moto') if m in sys.modules])"
        )
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
        self.assertEqual(out.stdout.strip(), "[]")


class Template(unittest.TestCase):
    def test_template_declares_the_pieces(self) -> None:
        text = (REPO / "template.yaml").read_text()
        for needle in (
            "AWS::Serverless::Function",
            "AWS::Serverless::StateMachine",
            "arm64",
            "python3.1",
            "VersioningConfiguration",
            "BlockPublicPolicy: true",
            "RetentionInDays",
            "ScheduleExpression",
            "AWS::CloudWatch::Alarm",
            "ssm:GetParameter",
            "lambdas/lambda_1_extract.handler"[len("lambdas/") :],
        ):
            self.assertIn(needle, text)
        self.assertNotIn("COINGECKO_API_KEY:", text)  # the key never sits in the template


class TemplateWiring(unittest.TestCase):
    """template.yaml parsed (cfn-lint's decoder), checked against the code and the README's description."""

    STAGES = ("Extract", "Transform", "Load", "Charts")

    @classmethod
    def setUpClass(cls) -> None:
        from cfnlint.decode import decode_str

        cls.template, problems = decode_str((REPO / "template.yaml").read_text())
        if problems:
            raise AssertionError(problems)
        cls.resources = cls.template["Resources"]

    def parameter_default(self, name: str) -> str:
        return str(self.template["Parameters"][name]["Default"])

    def test_every_stage_is_a_function_whose_handler_exists(self) -> None:
        import importlib

        makefile = (REPO / "Makefile").read_text()
        for stage in self.STAGES:
            function = self.resources[f"{stage}Function"]
            self.assertEqual(function["Type"], "AWS::Serverless::Function")
            props = function["Properties"]
            if props.get("PackageType") == "Image":
                handler = props["ImageConfig"]["Command"][0]
                dockerfile = REPO / function["Metadata"]["DockerContext"] / function["Metadata"]["Dockerfile"]
                self.assertIn(f"COPY {handler.split('.')[0]}/ ", dockerfile.read_text())  # the handler's package
            else:
                handler = props["Handler"]
                self.assertEqual(props["Runtime"], "python3.12")
                self.assertEqual(function["Metadata"]["BuildMethod"], "makefile")
                self.assertRegex(makefile, rf"(?m)^build-{stage}Function\b|\bbuild-{stage}Function\b.*:")
            module, _, name = handler.rpartition(".")
            stage_module = f"lambdas.lambda_{self.STAGES.index(stage) + 1}_{stage.lower()}"
            # the Charts step draws the views as a command-line run does (charts, report): a flow
            self.assertEqual(module, "flows.serverless" if stage == "Charts" else stage_module)
            self.assertTrue(callable(getattr(importlib.import_module(module), name)), handler)

    def test_the_state_machine_chains_the_stages_in_order_on_the_schedule(self) -> None:
        machine = self.resources["PipelineStateMachine"]["Properties"]
        definition = machine["Definition"]
        substitutions = machine["DefinitionSubstitutions"]
        state, seen = definition["StartAt"], []
        while definition["States"][state]["Type"] == "Task":
            task = definition["States"][state]
            arn = task["Parameters"]["FunctionName"].strip("${}")
            self.assertEqual(substitutions[arn], {"Fn::GetAtt": [f"{state}Function", "Arn"]})
            seen.append(state)
            state = task["Next"]
        self.assertEqual(tuple(seen), self.STAGES)
        self.assertEqual(definition["States"][state]["Type"], "Succeed")
        # a chart failure never fails the run: the Charts task catches everything
        self.assertEqual(definition["States"]["Charts"]["Catch"][0]["ErrorEquals"], ["States.ALL"])
        daily = machine["Events"]["Daily"]
        self.assertEqual(daily["Type"], "ScheduleV2")
        self.assertEqual(daily["Properties"]["ScheduleExpression"], {"Ref": "ScheduleExpression"})
        self.assertEqual(daily["Properties"]["ScheduleExpressionTimezone"], "UTC")
        self.assertEqual(self.parameter_default("ScheduleExpression"), "cron(0 0 * * ? *)")  # the README's 00:00 UTC

    def test_the_glue_table_is_the_delta_table_the_functions_write(self) -> None:
        database = self.resources["HistoryDatabase"]
        self.assertEqual(database["Type"], "AWS::Glue::Database")
        table = self.resources["HistoryTable"]
        self.assertEqual(table["Type"], "AWS::Glue::Table")
        self.assertEqual(table["Properties"]["DatabaseName"], {"Ref": "HistoryDatabase"})
        table_input = table["Properties"]["TableInput"]
        self.assertEqual(table_input["Parameters"]["table_type"], "DELTA")
        self.assertEqual(table_input["TableType"], "EXTERNAL_TABLE")
        location = table_input["StorageDescriptor"]["Location"]["Fn::Sub"]
        data_dir = self.template["Globals"]["Function"]["Environment"]["Variables"]["PIPELINE_DATA_DIR"]["Fn::Sub"]
        self.assertEqual(location, f"{data_dir}/{TABLE_NAME}/")

    def test_each_memory_setting_is_the_measured_one_in_the_readme(self) -> None:
        readme = (REPO / "README.md").read_text()
        table = readme[readme.index("| step | peak RSS, empty table |") :]
        for stage, row in zip(self.STAGES, ("| Extract |", "| Transform |", "| Load |", "| Charts (views) |")):
            memory = self.resources[f"{stage}Function"]["Properties"]["MemorySize"]
            line = table[table.index(row) :].splitlines()[0]
            self.assertEqual(line.rstrip(" |").split("|")[-1].strip().split(":")[0], str(memory), line)

    def test_the_functions_environment_is_read_by_the_settings(self) -> None:
        variables = dict(self.template["Globals"]["Function"]["Environment"]["Variables"])
        env = {
            "PIPELINE_DATA_DIR": "s3://bucket/history",
            "PIPELINE_COINS": self.parameter_default("Coins"),
            "PIPELINE_VS_CURRENCY": "eur,usd",
            "PIPELINE_TOP": "100",
            "COINGECKO_API_PLAN": self.parameter_default("ApiPlan"),
            "PIPELINE_HEAL": variables["PIPELINE_HEAL"],
        }
        self.assertLessEqual(set(env), set(variables))
        env["COINGECKO_API_KEY"] = "CG-from-ssm"  # what lambda_settings puts there from the SSM parameter
        settings = lambda_settings({}, env=env)
        self.assertEqual(settings.data_url, "s3://bucket/history")
        self.assertEqual(settings.coins, tuple(self.parameter_default("Coins").split(",")))
        self.assertEqual(settings.vs_currencies, ("eur", "usd"))
        self.assertEqual(settings.top, 100)
        self.assertFalse(settings.heal)


if __name__ == "__main__":
    unittest.main()
