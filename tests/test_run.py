"""`python main.py` end to end against the local fake CoinGecko: runs, faults, keys and exit codes."""

from __future__ import annotations

import gzip
import json
import unittest
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

from tests.fake_coingecko import Fault, _dumps, load_fixture, markets_rows
from tests.support import FIXTURE_IDS, PipelineTestCase
from utils.history.schema import HEADER_LINE

SECRET = "CG-s3cr3t-KEY-value-123"


class FirstAndSecondRun(PipelineTestCase):
    def test_first_run_appends_every_coin_with_the_header(self) -> None:
        result = self.run_main()
        self.assertEqual(result.code, 0, result.stderr)
        self.assertTrue(self.csv_bytes().startswith(HEADER_LINE.encode()))
        rows = self.rows()
        self.assertEqual([r["coin_id"] for r in rows], list(FIXTURE_IDS))
        bitcoin = rows[0]
        self.assertEqual(
            (bitcoin["current_price"], bitcoin["vs_currency"], bitcoin["source"]), ("16951.52", "eur", "coins_markets")
        )
        self.assertEqual(bitcoin["last_updated"], "2023-01-08T16:49:40.132Z")
        # One line; the recorded answers are from 2023, but all of one time: none is stale against the others.
        self.assertRegex(
            result.stderr,
            r"^run ok: 10 coins, 10 rows appended, 0 duplicates skipped, 0 rejected "
            r"in \d+\.\d s -> .*crypto_data.csv\n$",
        )

    def test_second_run_appends_nothing(self) -> None:
        self.run_main()
        before = self.csv_bytes()
        result = self.run_main()
        self.assertEqual(result.code, 0, result.stderr)
        self.assertEqual(self.csv_bytes(), before)
        self.assertIn("0 rows appended, 10 duplicates skipped", result.stderr)
        self.assertEqual(len(self.fake.requests_to("/coins/markets")), 2)  # the second run asked again

    def test_advancing_data_appends_one_row_per_coin_per_change(self) -> None:
        self.run_main()
        self.fake.advance(60)
        result = self.run_main()
        self.assertIn("10 rows appended", result.stderr)
        rows = self.rows()
        self.assertEqual(len(rows), 20)
        self.assertEqual(len({(r["coin_id"], r["vs_currency"], r["last_updated"]) for r in rows}), 20)

    def test_one_request_per_250_coins(self) -> None:
        self.fake.set_coins(markets_rows(600))
        ids = ",".join(r["id"] for r in self.fake.coins)
        result = self.run_main("--coins", ids)
        self.assertEqual(result.code, 0, result.stderr)
        calls = self.fake.requests_to("/coins/markets")
        self.assertEqual(len(calls), 3)
        self.assertEqual([len(c.query["ids"].split(",")) for c in calls], [250, 250, 100])
        self.assertTrue(all(c.query["per_page"] == "250" for c in calls))
        self.assertEqual(len(self.rows()), 600)

    def test_raw_answer_is_archived_as_gzip_json(self) -> None:
        self.run_main()
        archives = list((self.data_dir / "raw").rglob("*.json.gz"))
        self.assertEqual(len(archives), 1)
        payload = json.loads(gzip.decompress(archives[0].read_bytes()))
        self.assertEqual(payload["pages"][0], load_fixture("coins_markets_2023-01-08_real_10coins.json"))
        today = datetime.now(timezone.utc)
        self.assertEqual(
            archives[0].parent.relative_to(self.data_dir / "raw").parts, (f"{today:%Y}", f"{today:%m}", f"{today:%d}")
        )

    def test_the_archive_keeps_the_servers_own_text(self) -> None:
        """The pages are archived as CoinGecko sent them, byte for byte, not encoded again; a page whose text
        json reads but a strict encoder would change (NaN, a 400-digit number, a UTF-16 page) is archived as
        json wrote it before, with the same values."""
        bitcoin = load_fixture("coins_markets_2023-01-08_real_10coins.json")[0]
        odd = (
            b'[{"id":"bitcoin","symbol":"btc","name":"Bitcoin","current_price":NaN,"market_cap":1'
            + b"0" * 400
            + b',"last_updated":"'
            + bitcoin["last_updated"].encode()
            + b'"}]'
        )
        for case, body in (
            ("as sent", _dumps([bitcoin])),
            ("spaced", b"  \n" + json.dumps([bitcoin], indent=2).encode() + b"\n"),
            ("NaN and 400 digits", odd),
            ("UTF-16", json.dumps([bitcoin], indent=1).encode("utf-16")),
        ):
            with self.subTest(case=case):
                for old in (self.data_dir / "raw").rglob("*.json.gz"):
                    old.unlink()
                self.fake.advance(60)
                self.fake.add_fault(Fault.status(200, body), path="/coins/markets")
                result = self.run_main("--coins", "bitcoin")
                self.assertEqual(result.code, 1 if case.startswith("NaN") else 0, result.stderr)
                (archive,) = (self.data_dir / "raw").rglob("*.json.gz")
                text = gzip.decompress(archive.read_bytes())
                payload = json.loads(text)
                self.assertEqual(str(payload["pages"]), str([json.loads(body)]))  # str: NaN == NaN
                self.assertEqual((payload["endpoint"], payload["requested"]), ("/coins/markets", ["bitcoin"]))
                if case in ("as sent", "spaced"):
                    self.assertIn(b'"pages":[' + body + b"]}", text)

    def test_run_subcommand_and_flags_after_it(self) -> None:
        result = self.run_subprocess("run", "--coins", "bitcoin,ethereum", "--vs-currency", "USD", "--no-charts")
        self.assertEqual(result.code, 0, result.stderr)
        self.assertEqual(
            [(r["coin_id"], r["vs_currency"]) for r in self.rows()], [("bitcoin", "usd"), ("ethereum", "usd")]
        )


class MissingAndRejected(PipelineTestCase):
    def test_unknown_id_is_named_and_the_rest_lands_with_exit_3(self) -> None:
        result = self.run_main("--coins", "bitcoin,bitcoinn")
        self.assertEqual(result.code, 3)
        self.assertIn("CoinGecko returned no data for bitcoinn", result.stderr)
        self.assertIn("run partial: 1 of 2 coins, 1 row appended", result.stderr)
        self.assertEqual([r["coin_id"] for r in self.rows()], ["bitcoin"])

    def test_no_known_id_at_all_is_exit_1_and_nothing_written(self) -> None:
        result = self.run_main("--coins", "nope-one,nope-two")
        self.assertEqual(result.code, 1)
        self.assertIn("no usable rows", result.stderr)
        self.assertFalse(self.csv_path.exists())

    def test_null_heavy_row_is_rejected_others_kept(self) -> None:
        self.fake.set_coins(self.fake.coins + load_fixture("coins_markets_null_heavy_coin_2026.json"))
        result = self.run_main("--coins", "bitcoin,atlas-2")
        self.assertEqual(result.code, 3)
        self.assertIn("rejected atlas-2: last_updated is null", result.stderr)
        self.assertIn("1 rejected", result.stderr)
        self.assertEqual(len(self.rows()), 1)

    def test_nulls_are_written_as_empty_cells(self) -> None:
        self.run_main()
        ethereum = self.rows()[1]
        self.assertEqual(ethereum["max_supply"], "")


class Faults(PipelineTestCase):
    def setUp(self) -> None:
        super().setUp()
        # Pacing apart (one call every 6 ms): the sleeps these tests count are the retries' backoff.
        self.env["PIPELINE_RATE_LIMIT"] = "10000"
        self.run_main()  # a history to protect
        self.before = self.csv_bytes()
        self.fake.advance(60)
        self.sleeps.clear()
        self.asked = len(self.fake.requests_to("/coins/markets"))

    def run_main(self, *argv: str, env: dict[str, str] | None = None):
        result = super().run_main(*argv, env=env)
        self.sleeps[:] = [s for s in self.sleeps if s > 0.1]
        return result

    def assert_recovered(self, result, requests: int) -> None:
        """Exit 0 after `requests` asks of /coins/markets; every coin appended once more after the history."""
        self.assertEqual(result.code, 0, result.stderr)
        self.assertEqual(len(self.fake.requests_to("/coins/markets")) - self.asked, requests, result.stderr)
        self.assertTrue(self.csv_bytes().startswith(self.before))  # appended after the history, nothing rewritten
        self.assertEqual([r["coin_id"] for r in self.rows()][-10:], list(FIXTURE_IDS))
        self.assertEqual(len(self.rows()), 2 * len(FIXTURE_IDS))
        self.assertTrue(result.stderr.strip().splitlines()[-1].startswith("run ok: "), result.stderr)

    def assert_failed_untouched(self, result, *fragments: str) -> None:
        self.assertEqual(result.code, 1, result.stderr)
        self.assertEqual(self.csv_bytes(), self.before)
        lines = result.stderr.strip().splitlines()
        self.assertTrue(lines[-1].startswith("run failed: "), result.stderr)
        self.assertNotIn("Traceback", result.stderr)
        for fragment in fragments:
            self.assertIn(fragment, lines[-1])

    def test_429_with_retry_after_is_honoured(self) -> None:
        self.fake.add_fault(Fault.rate_limited("7"), times=2)
        result = self.run_main()
        self.assert_recovered(result, requests=3)
        self.assertEqual(len(self.sleeps), 2)
        self.assertTrue(all(7 <= s <= 8 for s in self.sleeps), self.sleeps)
        self.assertIn("10 rows appended", result.stderr)

    def test_429_with_an_http_date_retry_after(self) -> None:
        when = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
        self.fake.add_fault(Fault.rate_limited(when))
        result = self.run_main()
        self.assert_recovered(result, requests=2)
        self.assertTrue(25 <= self.sleeps[0] <= 32, self.sleeps)

    def test_429_without_retry_after_backs_off_exponentially(self) -> None:
        self.fake.add_fault(Fault.rate_limited(None), times=3)
        result = self.run_main()
        self.assert_recovered(result, requests=4)
        self.assertEqual(len(self.sleeps), 3)
        self.assertLess(self.sleeps[0], self.sleeps[2] + 1e-9 + 2)  # jittered, growing envelope
        self.assertTrue(all(0 < s <= 60 for s in self.sleeps))

    def test_429_with_ratelimit_reset_header(self) -> None:
        reset = (datetime.now(timezone.utc) + timedelta(seconds=20)).strftime("%Y-%m-%d %H:%M:%S +0000")
        self.fake.add_fault(Fault.rate_limited_reset(reset))
        result = self.run_main()
        self.assert_recovered(result, requests=2)
        self.assertTrue(15 <= self.sleeps[0] <= 22, self.sleeps)

    def test_429_inside_a_200_is_a_rate_limit(self) -> None:
        self.fake.add_fault(Fault.rate_limit_in_200())
        result = self.run_main()
        self.assert_recovered(result, requests=2)
        self.assertEqual(len(self.sleeps), 1)
        self.assertIn("rate limited", result.stderr)

    def test_retry_after_beyond_the_cap_fails_at_once(self) -> None:
        self.fake.add_fault(Fault.rate_limited("600"))
        result = self.run_main("--max-retry-wait", "120")
        self.assert_failed_untouched(result, "wait 600 s", "--max-retry-wait")
        self.assertEqual(self.sleeps, [])

    def test_endless_429_stops_at_the_waiting_cap(self) -> None:
        self.fake.add_fault(Fault.rate_limited("50"), times=20)
        result = self.run_main("--max-retry-wait", "120")
        self.assert_failed_untouched(result, "rate limited", "gave up after")
        self.assertLessEqual(sum(self.sleeps), 120)

    def test_5xx_storm_exit_1_csv_byte_identical(self) -> None:
        for code in (500, 502, 503, 504):
            self.fake.add_fault(Fault.server_error(code), times=5)
        result = self.run_main()
        self.assert_failed_untouched(result, "HTTP 50", "gave up after 6 attempts")

    def test_single_5xx_is_retried(self) -> None:
        self.fake.add_fault(Fault.server_error(503, text=True))
        result = self.run_main()
        self.assert_recovered(result, requests=2)  # the 503, then one retry
        self.assertEqual(result.stderr.count("retrying in"), 1, result.stderr)
        self.assertIn("HTTP 503", result.stderr)

    def test_cloudflare_html_names_status_and_content_type(self) -> None:
        self.fake.add_fault(Fault.html(403))
        result = self.run_main()
        self.assert_failed_untouched(result, "HTTP 403", "text/html")
        self.assertNotIn("<!DOCTYPE", result.stderr)

    def test_html_with_status_200(self) -> None:
        self.fake.add_fault(Fault.html(200, challenge=True))
        result = self.run_main()
        self.assert_failed_untouched(result, "HTTP 200", "an HTML page", "text/html")

    def test_malformed_json(self) -> None:
        self.fake.add_fault(Fault.malformed_json())
        result = self.run_main()
        self.assert_failed_untouched(result, "malformed JSON", "application/json")

    def test_truncated_body_is_retried(self) -> None:
        self.fake.add_fault(Fault.truncated_json())
        result = self.run_main()
        self.assert_recovered(result, requests=2)  # the cut answer, then one retry; none torn
        self.assertEqual(result.stderr.count("retrying in"), 1, result.stderr)

    def test_object_where_a_list_belongs(self) -> None:
        self.fake.add_fault(Fault.wrong_shape())
        result = self.run_main()
        self.assert_failed_untouched(result, "JSON object where a list of coins belongs")

    def test_connection_reset_then_success(self) -> None:
        self.fake.add_fault(Fault.reset())
        result = self.run_main()
        self.assert_recovered(result, requests=2)
        self.assertEqual(len(self.sleeps), 1)

    def test_stalled_server_times_out_and_retries(self) -> None:
        self.fake.add_fault(Fault.stall(3))
        result = self.run_main("--timeout", "0.5")
        self.assert_recovered(result, requests=2)
        self.assertIn("did not answer /coins/markets within 0.5 s", result.stderr)

    def test_server_down(self) -> None:
        self.fake.stop()
        result = self.run_main("--max-retry-wait", "5")
        self.assert_failed_untouched(result, "cannot connect")

    def test_invalid_currency_is_a_configuration_error(self) -> None:
        result = self.run_main("--vs-currency", "xyz")
        self.assertEqual(result.code, 2)
        self.assertIn("invalid vs_currency", result.stderr)
        self.assertEqual(self.csv_bytes(), self.before)


class ApiKey(PipelineTestCase):
    def test_demo_key_goes_in_the_header_and_never_in_logs_or_files(self) -> None:
        self.fake.required_key = ("x-cg-demo-api-key", SECRET)
        env = dict(self.env, COINGECKO_API_KEY=SECRET)
        result = self.run_main("-vv", env=env)
        self.assertEqual(result.code, 0, result.stderr)
        request = self.fake.requests_to("/coins/markets")[0]
        self.assertEqual(request.headers["x-cg-demo-api-key"], SECRET)
        self.assertNotIn(SECRET, request.raw_path)
        self.assertIn("crypto-history-pipeline", request.headers["user-agent"])
        self.assertNotIn(SECRET, result.stderr + result.stdout)
        for path in self.data_dir.rglob("*"):
            if path.is_file():
                data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
                self.assertNotIn(SECRET.encode(), data, path)

    def test_pro_plan_uses_the_pro_header(self) -> None:
        self.fake.required_key = ("x-cg-pro-api-key", SECRET)
        env = dict(self.env, COINGECKO_API_KEY=SECRET, COINGECKO_API_PLAN="pro")
        result = self.run_main(env=env)
        self.assertEqual(result.code, 0, result.stderr)
        [request] = self.fake.requests_to("/coins/markets")
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.assertEqual(headers.get("x-cg-pro-api-key"), SECRET)
        self.assertNotIn("x-cg-demo-api-key", headers)
        self.assertNotIn(SECRET, request.raw_path)  # the key goes in the header, never the URL
        self.assertEqual(len(self.rows()), len(FIXTURE_IDS))

    def test_pro_key_on_the_public_host_is_explained(self) -> None:
        self.fake.required_key = ("x-cg-demo-api-key", SECRET)
        env = dict(self.env, COINGECKO_API_KEY="other", COINGECKO_API_PLAN="pro")
        result = self.run_main(env=env)
        self.assertEqual(result.code, 2)
        self.assertIn("use --api-plan pro", result.stderr)
        self.assertNotIn("other", result.stderr.replace("another", ""))

    def test_missing_key_is_explained(self) -> None:
        self.fake.required_key = ("x-cg-demo-api-key", SECRET)
        result = self.run_main()
        self.assertEqual(result.code, 2)
        self.assertIn("COINGECKO_API_KEY", result.stderr)
        [request] = self.fake.requests_to("/coins/markets")  # asked once, without a key: no retry of a 401
        self.assertNotIn("x-cg-demo-api-key", request.headers)
        self.assertFalse(self.csv_path.exists())

    def test_key_error_text_never_echoes_the_key(self) -> None:
        env = dict(self.env, COINGECKO_API_KEY="bad key with spaces")
        result = self.run_main(env=env)
        self.assertEqual(result.code, 2)
        self.assertNotIn("bad key with spaces", result.stderr)
        self.assertEqual(self.fake.requests, [])  # refused before any request could carry it
        self.assertFalse(self.csv_path.exists())


class Configuration(PipelineTestCase):
    def test_flag_beats_environment_beats_file(self) -> None:
        config = self.data_dir.parent / "pipeline.toml"
        config.write_text('coins = ["ethereum"]\nvs_currency = "usd"\n')
        env = dict(self.env, PIPELINE_COINS="", PIPELINE_CONFIG=str(config))
        self.run_main(env=env)
        self.assertEqual({(r["coin_id"], r["vs_currency"]) for r in self.rows()}, {("ethereum", "usd")})
        env["PIPELINE_VS_CURRENCY"] = "gbp"
        self.fake.advance(60)
        self.run_main(env=env)
        self.fake.advance(60)
        self.run_main("--vs-currency", "jpy", env=env)
        self.assertEqual([r["vs_currency"] for r in self.rows()], ["usd", "gbp", "jpy"])

    def test_bad_values_exit_2_with_one_line(self) -> None:
        cases = [
            (["--coins", "bit coin"], "not a CoinGecko API id"),
            (["--timeout", "soon"], "not a number of seconds"),
            (["--api-url", "ftp://x"], "not an http(s) URL"),
            (["--api-plan", "gold"], "invalid choice"),
            (["--bogus"], "unrecognized arguments"),
            (["--days", "0"], "use 1 or more"),
        ]
        for argv, fragment in cases:
            result = self.run_main(*argv)
            self.assertEqual(result.code, 2, argv)
            self.assertIn(fragment, result.stderr)
            self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
        self.assertEqual(self.fake.requests, [])  # a bad value stops the command before CoinGecko is asked
        self.assertFalse(self.csv_path.exists())

    def test_unknown_config_key(self) -> None:
        config = self.data_dir.parent / "bad.toml"
        config.write_text('colour = "red"\n')
        result = self.run_main("--config", str(config))
        self.assertEqual(result.code, 2)
        self.assertIn("unknown keys colour", result.stderr)
        self.assertEqual(self.fake.requests, [])
        self.assertFalse(self.csv_path.exists())

    def test_plan_without_key(self) -> None:
        result = self.run_main("--api-plan", "demo")
        self.assertEqual(result.code, 2)
        self.assertIn("needs a key", result.stderr)
        self.assertEqual(self.fake.requests, [])
        self.assertFalse(self.csv_path.exists())

    def test_default_data_dir_is_beside_main_py(self) -> None:
        from utils.settings import PROJECT_DIR, build_settings

        self.assertEqual(build_settings("run", {}, {}).data_dir, PROJECT_DIR / "data")


class Check(PipelineTestCase):
    def test_all_fine_exits_0(self) -> None:
        result = self.run_main("check", "--coins", "bitcoin,ethereum")
        self.assertEqual(result.code, 0, result.stdout)
        self.assertIn("ok    connectivity", result.stdout)
        self.assertIn("ok    coins", result.stdout)

    def test_unknown_id_gets_a_suggestion(self) -> None:
        result = self.run_main("check", "--coins", "bitcoin,bitcoinn")
        self.assertEqual(result.code, 1)
        self.assertIn("coin 'bitcoinn' is not known to CoinGecko; did you mean bitcoin", result.stdout)

    def test_wrong_host_for_key_is_explained(self) -> None:
        self.fake.required_key = ("x-cg-pro-api-key", SECRET)
        env = dict(self.env, COINGECKO_API_KEY=SECRET, COINGECKO_API_PLAN="demo")
        result = self.run_main("check", env=env)
        self.assertEqual(result.code, 1)
        self.assertIn("use --api-plan", result.stdout)
        self.assertNotIn(SECRET, result.stdout + result.stderr)


if __name__ == "__main__":
    unittest.main()
