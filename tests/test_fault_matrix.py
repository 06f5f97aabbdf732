"""Fault matrix: every fault at every stage a run has, against the local fake CoinGecko, with a tally.

Stages: the first request, a later page (600 coins, 3 pages of 250), the response's content (rows),
the raw archive, the load, the charts and a backfill (a fault on the 3rd coin). Each case checks the
exit code, the one-line error or summary, and the CSV: byte-identical when nothing should land, else
exactly the rows that should. After each case a clean rerun must leave every expected row stored
once, which is what the "rows lost" column counts.

`python -m unittest tests.test_fault_matrix` runs it and prints the table at the end.
"""

from __future__ import annotations

import copy
import json
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import unittest
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from flows.backfill import newest_complete_day
from tests.fake_coingecko import DEFAULT_COINS_FIXTURE, Fault, load_fixture, make_daily_chart, markets_rows
from tests.support import MAIN, CliResult, PipelineTestCase, summary_line
from utils.history.schema import normalize_timestamp

Key = tuple[str, str, str]  # (coin_id, vs_currency, last_updated)

REAL = load_fixture(DEFAULT_COINS_FIXTURE)
REAL_IDS = tuple(row["id"] for row in REAL)
REAL_BYTES = json.dumps(REAL, separators=(",", ":")).encode()
VICTIM = "ethereum"  # the row the content cases corrupt
STORM = 8  # more faults than the client's 6 attempts
MARKETS = "/coins/markets"
FAST_TMP = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


# -- the tally -----------------------------------------------------------------------------------


@dataclass
class Tally:
    """Cases tried and passed in one stage, and rows missing or doubled after the clean rerun."""

    tried: int = 0
    passed: int = 0
    rows_lost: int = 0
    rows_repeated: int = 0


TALLY: dict[str, Tally] = {}


def tally(stage: str) -> Tally:
    """The stage's counters, created on first use."""
    return TALLY.setdefault(stage, Tally())


def summary_table() -> str:
    """The matrix's result as a Markdown table."""
    lines = ["| stage | cases tried | cases passed | rows lost | rows stored twice |", "|---|---:|---:|---:|---:|"]
    total = Tally()
    for stage, t in TALLY.items():
        lines.append(f"| {stage} | {t.tried} | {t.passed} | {t.rows_lost} | {t.rows_repeated} |")
        total.tried += t.tried
        total.passed += t.passed
        total.rows_lost += t.rows_lost
        total.rows_repeated += t.rows_repeated
    lines.append(
        f"| **all** | **{total.tried}** | **{total.passed}** | **{total.rows_lost}** | **{total.rows_repeated}** |"
    )
    return "\n".join(lines)


def tearDownModule() -> None:
    if TALLY:
        sys.stderr.write("\n\nfault matrix (python -m unittest tests.test_fault_matrix)\n" + summary_table() + "\n")


# -- cases ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One fault: what the server does, and what the user must see."""

    name: str
    faults: Callable[[], list[Fault]]
    code: int
    fragments: tuple[str, ...] = ()  # in the last stderr line on failure, anywhere in stderr otherwise
    argv: tuple[str, ...] = ()
    check: Callable[[Any, CliResult], None] | None = None  # extra assertions: (test case, result)


def sleeps_include(low: float, high: float) -> Callable[[Any, CliResult], None]:
    """A check that the client waited between low and high seconds at least once (Retry-After honoured)."""

    def check(test: Any, result: CliResult) -> None:
        test.assertTrue(any(low <= s <= high for s in test.sleeps), test.sleeps)

    return check


def http_cases(endpoint: str, *, shape_code: int, shape_fragment: Callable[[str], str]) -> list[Case]:
    """Transport and HTTP faults, the same at every request a run makes."""
    half = REAL_BYTES[: len(REAL_BYTES) // 2]
    timeout = ("--timeout", "0.3")
    return [
        Case(
            "429 with Retry-After",
            lambda: [Fault.rate_limited("3")] * 2,
            0,
            ("rate limited",),
            check=sleeps_include(3, 4),
        ),
        Case("429 without Retry-After", lambda: [Fault.rate_limited(None)] * 2, 0, ("rate limited",)),
        Case("429 inside a 200", lambda: [Fault.rate_limit_in_200()] * 2, 0, ("rate limited",)),
        Case(
            "429 asking to wait past --max-retry-wait",
            lambda: [Fault.rate_limited("600")],
            1,
            ("asks to wait 600 s", "--max-retry-wait"),
        ),
        Case(
            "429 storm",
            lambda: [Fault.rate_limited("50")] * 20,
            1,
            ("rate limited", "gave up after 3 attempts"),
            argv=("--max-retry-wait", "120"),
        ),
        Case("one 5xx", lambda: [Fault.server_error(503)], 0, ("HTTP 503",)),
        Case(
            "5xx storm",
            lambda: [Fault.server_error(c) for c in (500, 502, 503, 504)] * 2,
            1,
            ("HTTP 50", "gave up after 6 attempts"),
        ),
        Case("connection reset", lambda: [Fault.reset()], 0, ("connection reset",)),
        Case(
            "connection resets past the retries",
            lambda: [Fault.reset()] * STORM,
            1,
            ("connection reset", "gave up after 6 attempts"),
        ),
        Case(
            "stall past --timeout",
            lambda: [Fault.stall(1)],
            0,
            (f"did not answer {endpoint} within 0.3 s",),
            argv=timeout,
        ),
        # --max-retry-wait 3 gives up after two or three stalls: the same path, less waiting in real time.
        Case(
            "stalls past the retries",
            lambda: [Fault.stall(1)] * STORM,
            1,
            (f"did not answer {endpoint} within 0.3 s", "gave up after"),
            argv=timeout + ("--max-retry-wait", "3"),
        ),
        Case("Cloudflare HTML 403", lambda: [Fault.html(403)], 1, ("HTTP 403", "text/html", "firewall")),
        Case(
            "Cloudflare HTML 200",
            lambda: [Fault.html(200, challenge=True)],
            1,
            ("HTTP 200", "an HTML page", "text/html"),
        ),
        Case("Cloudflare HTML 503 storm", lambda: [Fault.html(503)] * STORM, 1, ("HTTP 503", "gave up after")),
        Case("malformed JSON", lambda: [Fault.malformed_json()], 1, ("malformed JSON", "application/json")),
        Case("truncated transfer", lambda: [Fault.truncated_json()], 0, ("cut short",)),
        Case(
            "truncated transfers past the retries",
            lambda: [Fault.truncated_json()] * STORM,
            1,
            ("cut short", "gave up after 6 attempts"),
        ),
        Case("truncated JSON body", lambda: [Fault.status(200, half)], 1, ("malformed JSON",)),
        Case("empty body", lambda: [Fault.status(200, b"")], 1, ("malformed JSON",)),
        Case(
            "JSON nested 100,000 deep",
            lambda: [Fault.status(200, b"[" * 100_000 + b"]" * 100_000)],
            1,
            ("malformed JSON",),
        ),
        Case(
            "JSON object where a list belongs" if shape_code == 1 else "JSON object without prices",
            lambda: [Fault.wrong_shape()],
            shape_code,
            (shape_fragment("object"),),
        ),
        Case("JSON null", lambda: [Fault.status(200, b"null")], shape_code, (shape_fragment("null"),)),
        Case("JSON number", lambda: [Fault.status(200, b"42")], shape_code, (shape_fragment("int"),)),
    ]


def markets_shape(kind: str) -> str:
    """The error a non-list /coins/markets answer of this JSON kind gets."""
    return f"JSON {kind} where a list of coins belongs"


# Bad values for each field of a /coins/markets row; NaN and Infinity travel as JSON literals.
NUMERIC_FIELDS = (
    "current_price",
    "market_cap",
    "market_cap_rank",
    "total_volume",
    "high_24h",
    "low_24h",
    "price_change_percentage_24h",
    "circulating_supply",
    "total_supply",
    "max_supply",
)
TEXT_FIELDS = ("name", "symbol")
BAD_NUMBERS: tuple[tuple[str, Any], ...] = (
    ("a numeric string", "1266.66"),
    ("true", True),
    ("a list", [1266.66]),
    ("an object", {"eur": 1266.66}),
    ("negative", -5),
    ("NaN", float("nan")),
    ("Infinity", float("inf")),
)
BAD_TEXT: tuple[tuple[str, Any], ...] = (
    ("a number", 123),
    ("a float", 1.5),
    ("true", True),
    ("a list", ["Ethereum"]),
    ("an object", {"en": "Ethereum"}),
)
BAD_IDS: tuple[tuple[str, Any, str], ...] = (
    ("a number", 1027, "the row has no id"),
    ("true", True, "the row has no id"),
    ("an empty string", "", "the row has no id"),
    ("spaces", "   ", "the row has no id"),
    ("a list", ["ethereum"], "the row has no id"),
    ("an object", {"id": "ethereum"}, "the row has no id"),
    ("upper case", "ETHEREUM", "is not a valid CoinGecko id"),
    ("a space inside", "ether eum", "is not a valid"),
)
BAD_TIMESTAMPS: tuple[tuple[str, Any], ...] = (
    ("a number", 1673196592),
    ("true", True),
    ("a list", ["2023-01-08T16:49:52.403Z"]),
    ("an object", {}),
    ("an empty string", ""),
    ("words", "yesterday"),
    ("an impossible date", "2023-13-45T00:00:00Z"),
    ("an offset beyond a day", "2023-01-08T16:49:52.403+99:00"),
)


def victim_rows(**changes: Any) -> list[dict]:
    """The fixture's rows with the victim's fields changed (a value of ... removes the field)."""
    rows = copy.deepcopy(REAL)
    victim = rows[REAL_IDS.index(VICTIM)]
    for name, value in changes.items():
        if value is ...:
            victim.pop(name, None)
        else:
            victim[name] = value
    return rows


def fixture_keys(rows: list[dict] = REAL, vs: str = "eur") -> set[Key]:
    """The observations these /coins/markets rows become once stored."""
    return {(row["id"], vs, normalize_timestamp(row["last_updated"])) for row in rows}


# -- the test case -------------------------------------------------------------------------------


class MatrixTestCase(PipelineTestCase):
    """A fresh data folder per case with the one fake server reset, and the checks every case shares."""

    def setUp(self) -> None:
        super().setUp()
        self.base_env = dict(self.env)
        # The fake writes headers and body separately; with Nagle on, each answer waits ~40 ms for a delayed
        # ACK. TCP_NODELAY on this instance's handlers makes ~600 requests affordable; answers are unchanged.
        server = self.fake._server
        server.RequestHandlerClass = type(
            "NoDelayHandler", (server.RequestHandlerClass,), {"disable_nagle_algorithm": True}
        )

    def fresh(self, coins: list[dict] | None = None, seed: Path | None = None, **env: str) -> None:
        """A new data folder (a copy of seed's history when given); the fake serves coins and nothing else."""
        self.tmp.cleanup()
        # tmpfs when there is one: real files, without a disk's fsync cost on ~300 cases.
        self.tmp = tempfile.TemporaryDirectory(prefix="fault-matrix-", dir=FAST_TMP)
        self.addCleanup(self.tmp.cleanup)
        self.data_dir = Path(self.tmp.name) / "data"
        if seed is None:
            self.data_dir.mkdir()
        else:
            shutil.copytree(seed, self.data_dir, ignore=shutil.ignore_patterns("raw"))
        self.csv_path = self.data_dir / "crypto_data.csv"
        self.fake.clear_faults()
        self.serve(REAL if coins is None else coins)
        self.fake.requests.clear()
        self.fake.errors.clear()
        self.fake.market_chart.clear()
        self.fake.reset_rate_limit()
        self.sleeps = []
        self.env = dict(self.base_env, PIPELINE_DATA_DIR=str(self.data_dir), **env)

    def serve(self, rows: list[dict]) -> None:
        """Serve these /coins/markets rows; shared, not copied (the fake never changes rows in place)."""
        self.fake.coins = rows

    def advanced(self, seconds: float = 60) -> list[dict]:
        """The served rows as fake.advance(seconds) makes them, computed once per stage."""
        served = self.fake.coins
        self.fake.advance(seconds)
        moved = self.fake.coins
        self.serve(served)
        return moved

    def history(self, coins: list[dict] | None = None, **env: str) -> Path:
        """A data folder holding one clean run's history, to seed each case from."""
        self.fresh(coins, **env)
        self.assertEqual(self.run_main().code, 0)
        keep = Path(tempfile.mkdtemp(prefix="fault-matrix-seed-", dir=FAST_TMP))
        self.addCleanup(shutil.rmtree, keep, True)
        shutil.copytree(self.data_dir, keep / "data")
        return keep / "data"

    def csv_bytes(self) -> bytes:
        """The CSV's bytes; empty when there is no file (or a folder stands in its place)."""
        return self.csv_path.read_bytes() if self.csv_path.is_file() else b""

    def keys(self) -> list[Key]:
        """The stored observations, in file order (a foreign CSV holds none)."""
        if not self.csv_path.is_file():
            return []
        return [(r["coin_id"], r["vs_currency"], r["last_updated"]) for r in self.rows() if "coin_id" in r]

    def queue(self, faults: list[Fault], path: str) -> None:
        """Queue faults, in order, for the next requests to path."""
        for fault in faults:
            self.fake.add_fault(fault, path=path)

    def run_case(
        self,
        stage: str,
        case: Case,
        act: Callable[[], CliResult],
        *,
        verb: str,
        before: bytes,
        landed: set[Key],
        final: set[Key],
        rerun: Callable[[], CliResult] | None = None,
        after: Callable[[CliResult], None] | None = None,
    ) -> None:
        """Run one case, then a clean rerun; tally it, then assert.

        landed: the rows the CSV must hold after the faulty run when it succeeds (exit 0 or 3);
        final: the rows it must hold, each once, after the clean rerun.
        """
        t = tally(stage)
        with self.subTest(stage=stage, case=case.name):
            t.tried += 1
            result = act()
            after_bytes, after_keys = self.csv_bytes(), self.keys()
            if after is not None:
                after(result)
            self.fake.clear_faults()
            # A clean rerun brings back what the fault kept out; after a clean success there is nothing to bring.
            done = result.code == 0 and set(after_keys) == final and len(after_keys) == len(final)
            again = None if done else (rerun or act)()
            final_keys = self.keys()
            t.rows_lost += len(final - set(final_keys))
            t.rows_repeated += len(final_keys) - len(set(final_keys))

            self.assertNotIn("Traceback", result.stderr)
            self.assertTrue(result.stderr.strip(), "nothing on stderr")
            last = summary_line(result.stderr)  # a quality line may follow: the recorded answers are stale
            self.assertNotIn("unexpected", last)
            self.assertEqual(result.code, case.code, result.stderr[-3000:])
            if case.code in (1, 2):
                self.assertTrue(last.startswith(f"{verb} failed: "), last)
                for fragment in case.fragments:
                    self.assertIn(fragment, last)
                self.assertEqual(after_bytes, before, "the CSV changed although the run failed")
            else:
                word = "ok" if case.code == 0 else "partial"
                self.assertTrue(last.startswith(f"{verb} {word}: "), last)
                for fragment in case.fragments:
                    self.assertIn(fragment, result.stderr)
                self.assertEqual(len(after_keys), len(set(after_keys)), "an observation is stored twice")
                self.assertEqual(set(after_keys), landed)
            if case.check is not None:
                case.check(self, result)
            if again is not None:
                self.assertEqual(again.code, 0, again.stderr[-3000:])
            self.assertEqual(len(final_keys), len(set(final_keys)), "the rerun stored an observation twice")
            self.assertEqual(set(final_keys), final, "the rerun did not bring the history to what it should hold")
            t.passed += 1


class FirstRequest(MatrixTestCase):
    """Each fault on the run's only /coins/markets request, with a history to protect."""

    STAGE = "first request"

    def test_every_fault_on_the_first_request(self) -> None:
        cases = http_cases(MARKETS, shape_code=1, shape_fragment=markets_shape) + [
            Case("an empty list", lambda: [Fault.status(200, [])], 1, ("no usable rows",)),
        ]
        seed = self.history()
        moved = self.advanced()
        new = fixture_keys(moved)
        for case in cases:
            self.fresh(moved, seed)
            before, old = self.csv_bytes(), set(self.keys())
            self.queue(case.faults(), MARKETS)
            self.run_case(
                self.STAGE,
                case,
                lambda: self.run_main(*case.argv),
                verb="run",
                before=before,
                landed=old | new,
                final=old | new,
            )


class LaterPage(MatrixTestCase):
    """Each fault on the 2nd of three /coins/markets pages (600 coins): page 1 came back fine."""

    STAGE = "later page"

    def test_every_fault_on_the_second_page(self) -> None:
        cases = http_cases(MARKETS, shape_code=1, shape_fragment=markets_shape) + [
            Case("an empty list", lambda: [Fault.status(200, [])], 3, ("250 missing", "run partial: 350 of 600")),
        ]
        rows = markets_rows(600)
        ids = [row["id"] for row in rows]
        env = {"PIPELINE_COINS": ",".join(ids), "PIPELINE_RATE_LIMIT": "10000"}
        seed = self.history(rows, **env)
        moved = self.advanced()
        first_page = [row for row in moved if row["id"] in set(ids[:250])]
        new = fixture_keys(moved)
        page_two = {k for k in new if k[0] in set(ids[250:500])}
        for case in cases:
            self.fresh(moved, seed, **env)
            before, old = self.csv_bytes(), set(self.keys())
            self.queue([Fault.status(200, first_page)] + case.faults(), MARKETS)
            calls_before = len(self.fake.requests_to(MARKETS))

            def hit_page_two(result: CliResult) -> None:
                calls = self.fake.requests_to(MARKETS)[calls_before:]
                self.assertGreaterEqual(len(calls), 2)
                self.assertEqual(calls[1].query["ids"].split(",")[0], ids[250], "the fault did not hit page 2")

            landed = old | (new - page_two if case.code == 3 else new)
            self.run_case(
                self.STAGE,
                case,
                lambda: self.run_main(*case.argv),
                verb="run",
                before=before,
                landed=landed,
                final=old | new,
                after=hit_page_two,
            )


class ResponseContent(MatrixTestCase):
    """What a 200 answer holds: wrong types and nulls in every field, duplicates, odd values, 10,000 coins."""

    STAGE_TYPES = "rows: wrong types"
    STAGE_NULLS = "rows: nulls and absent fields"
    STAGE_ODD = "rows: duplicates and odd values"

    def content_case(self, stage: str, case: Case, *, kept: bool, cell: tuple[str, str] | None = None) -> None:
        """Serve the case's answer once on a fresh folder; kept says whether the victim's row lands."""
        self.fresh()
        self.queue(case.faults(), MARKETS)
        everything = fixture_keys()
        landed = everything if kept else {k for k in everything if k[0] != VICTIM}

        def check_cell(result: CliResult) -> None:
            if cell is not None and result.code in (0, 3):
                column, expected = cell
                victim = [r for r in self.rows() if r["coin_id"] == VICTIM]
                self.assertEqual([r[column] for r in victim], [expected], column)

        self.run_case(
            stage,
            case,
            lambda: self.run_main(*case.argv),
            verb="run",
            before=b"",
            landed=landed,
            final=everything,
            after=check_cell,
        )

    def test_wrong_types_in_every_field(self) -> None:
        for field in NUMERIC_FIELDS:
            for label, value in BAD_NUMBERS:
                if label == "negative" and field == "price_change_percentage_24h":
                    continue  # a fall is negative: covered below as accepted
                case = Case(
                    f"{field} is {label}",
                    lambda v=value, f=field: [Fault.status(200, victim_rows(**{f: v}))],
                    3,
                    (f"rejected {VICTIM}: {field} is", "run partial: 9 of 10 coins, 9 rows appended"),
                )
                self.content_case(self.STAGE_TYPES, case, kept=False)
        for field in TEXT_FIELDS:
            for label, value in BAD_TEXT:
                case = Case(
                    f"{field} is {label}",
                    lambda v=value, f=field: [Fault.status(200, victim_rows(**{f: v}))],
                    3,
                    (f"rejected {VICTIM}: {field} is", "9 rows appended"),
                )
                self.content_case(self.STAGE_TYPES, case, kept=False)
        for label, value, reason in BAD_IDS:
            case = Case(
                f"id is {label}",
                lambda v=value: [Fault.status(200, victim_rows(id=v))],
                3,
                (reason, f"1 missing ({VICTIM})", "9 rows appended"),
            )
            self.content_case(self.STAGE_TYPES, case, kept=False)
        for label, value in BAD_TIMESTAMPS:
            case = Case(
                f"last_updated is {label}",
                lambda v=value: [Fault.status(200, victim_rows(last_updated=v))],
                3,
                (f"rejected {VICTIM}: last_updated", "9 rows appended"),
            )
            self.content_case(self.STAGE_TYPES, case, kept=False)
        case = Case(
            "price_change_percentage_24h is negative",
            lambda: [Fault.status(200, victim_rows(price_change_percentage_24h=-12.5))],
            0,
            ("run ok: 10 coins, 10 rows appended",),
        )
        self.content_case(self.STAGE_TYPES, case, kept=True, cell=("price_change_percentage_24h", "-12.5"))

    def test_nulls_and_absent_fields_one_at_a_time(self) -> None:
        columns = set(NUMERIC_FIELDS) | set(TEXT_FIELDS)
        for field in REAL[REAL_IDS.index(VICTIM)]:
            for how, value in (("null", None), ("absent", ...)):
                name = f"{field} {how}"
                if field == "id":
                    case = Case(
                        name,
                        lambda v=value: [Fault.status(200, victim_rows(id=v))],
                        3,
                        ("rejected ?: the row has no id", f"1 missing ({VICTIM})"),
                    )
                    self.content_case(self.STAGE_NULLS, case, kept=False)
                elif field == "last_updated":
                    case = Case(
                        name,
                        lambda v=value: [Fault.status(200, victim_rows(last_updated=v))],
                        3,
                        (f"rejected {VICTIM}: last_updated is null",),
                    )
                    self.content_case(self.STAGE_NULLS, case, kept=False)
                else:  # stored, as an empty cell when the CSV has a column for it
                    case = Case(
                        name,
                        lambda v=value, f=field: [Fault.status(200, victim_rows(**{f: v}))],
                        0,
                        ("run ok: 10 coins, 10 rows appended",),
                    )
                    self.content_case(self.STAGE_NULLS, case, kept=True, cell=(field, "") if field in columns else None)

    def test_duplicates_and_odd_values(self) -> None:
        twice = victim_rows()
        twice.append(copy.deepcopy(twice[REAL_IDS.index(VICTIM)]))
        self.content_case(
            self.STAGE_ODD,
            Case(
                "the same row twice in one answer",
                lambda: [Fault.status(200, twice)],
                0,
                ("run ok: 10 coins, 10 rows appended",),
            ),
            kept=True,
        )
        conflicting = victim_rows()
        other = dict(conflicting[REAL_IDS.index(VICTIM)], current_price=9999.0, last_updated="2023-01-08T16:50:52.403Z")
        conflicting.append(other)
        # The coin landed (its first copy), so the run is complete; the conflicting copy is named in a warning.
        self.content_case(
            self.STAGE_ODD,
            Case(
                "one id twice with different data",
                lambda: [Fault.status(200, conflicting)],
                0,
                (f"rejected {VICTIM}: the same id appeared twice", "run ok: 10 coins, 10 rows appended"),
            ),
            kept=True,
            cell=("current_price", "1266.66"),
        )
        self.content_case(
            self.STAGE_ODD,
            Case(
                "last_updated with a +01:00 offset is stored in UTC",
                lambda: [Fault.status(200, victim_rows(last_updated="2023-01-08T17:49:52.403+01:00"))],
                0,
                ("10 rows appended",),
            ),
            kept=True,
            cell=("last_updated", "2023-01-08T16:49:52.403Z"),
        )
        hostile = (
            ("last_updated far in the future", {"last_updated": "2999-01-01T00:00:00.000Z"}, "last_updated"),
            ("last_updated in year 1 with an offset", {"last_updated": "0001-01-01T00:00:00+01:00"}, "last_updated"),
            ("last_updated in year 999", {"last_updated": "0999-06-01T00:00:00Z"}, "last_updated"),
            ("market_cap_rank of 400 digits", {"market_cap_rank": 10**400}, "market_cap_rank"),
            ("market_cap of 400 digits", {"market_cap": 10**400}, "market_cap"),
            ("market_cap_rank 0", {"market_cap_rank": 0}, "market_cap_rank"),
            ("market_cap_rank 1.5", {"market_cap_rank": 1.5}, "market_cap_rank"),
        )
        for label, changes, field in hostile:
            self.content_case(
                self.STAGE_ODD,
                Case(
                    label,
                    lambda c=changes: [Fault.status(200, victim_rows(**c))],
                    3,
                    (f"rejected {VICTIM}: {field}", "9 rows appended"),
                ),
                kept=False,
            )

    def test_a_lone_surrogate_in_a_name(self) -> None:
        """JSON may escape half a UTF-16 pair ("\\ud800"); it cannot be written as UTF-8, so it must not stop the run."""
        rows = victim_rows(name="Eth\ud800ereum")
        body = json.dumps(rows).encode()  # ASCII JSON: the surrogate travels as an escape, as a server would send it
        self.fresh()
        self.queue([Fault.status(200, body)], MARKETS)
        t = tally(self.STAGE_ODD)
        with self.subTest(stage=self.STAGE_ODD, case="a lone surrogate in a name"):
            t.tried += 1
            result = self.run_main()
            self.fake.clear_faults()
            again = self.run_main()
            keys = self.keys()
            t.rows_lost += len(fixture_keys() - set(keys))
            t.rows_repeated += len(keys) - len(set(keys))
            self.assertNotIn("Traceback", result.stderr)
            self.assertNotIn("unexpected", result.stderr)
            self.csv_bytes().decode("utf-8")  # the history stays valid UTF-8
            names = {r["coin_id"]: r["name"] for r in self.rows()}
            if result.code == 0:  # kept, the broken character replaced
                self.assertEqual(names[VICTIM], "Eth\ufffdereum")
            else:  # or rejected, naming the field, the others kept
                self.assertEqual(result.code, 3, result.stderr)
                self.assertIn(f"rejected {VICTIM}: name", result.stderr)
            self.assertEqual(again.code, 0, again.stderr)
            self.assertEqual(set(keys), fixture_keys())
            t.passed += 1

    def test_ten_thousand_coins(self) -> None:
        rows = markets_rows(10_000)
        ids = [row["id"] for row in rows]
        self.fresh(rows, PIPELINE_COINS=",".join(ids))
        everything = fixture_keys(rows)

        def calls(result: CliResult) -> None:
            markets = self.fake.requests_to(MARKETS)
            self.assertEqual(len(markets), 40)
            self.assertTrue(all(len(c.query["ids"].split(",")) == 250 for c in markets))

        case = Case("10,000 coins", lambda: [], 0, ("run ok: 10000 coins, 10000 rows appended",))
        self.run_case(
            self.STAGE_ODD,
            case,
            self.run_main,
            verb="run",
            before=b"",
            landed=everything,
            final=everything,
            after=calls,
        )


class ArchiveStage(MatrixTestCase):
    """The raw archive cannot be written: the data must land anyway, named as not written, exit 3 (partial)."""

    STAGE = "archive"

    def block_raw(self, where: str) -> None:
        """Put a file where the archive needs a folder: raw/ itself, or today's raw/YYYY/MM."""
        today = datetime.now(timezone.utc)
        target = {"raw": self.data_dir / "raw", "raw/YYYY/MM": self.data_dir / "raw" / f"{today:%Y}" / f"{today:%m}"}[
            where
        ]
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_dir():
            target.rename(target.with_name(target.name + ".moved"))
        target.write_bytes(b"not a folder\n")
        self.blocked = target

    def unblocked(self, act: Callable[[], CliResult]) -> Callable[[], CliResult]:
        """The clean rerun: the file that stood in the archive's way moved off first."""

        def rerun() -> CliResult:
            self.blocked.unlink()
            return act()

        return rerun

    def test_archive_cannot_be_written(self) -> None:
        # Issue 21, finding 7: the rows land, the archive has a hole, and the exit code says so (3, partial).
        warning = ("could not archive", "not written: raw answer for eur")
        for where in ("raw", "raw/YYYY/MM"):
            self.fresh()
            self.block_raw(where)
            case = Case(f"{where} is a file", lambda: [], 3, warning + ("run partial: 10 coins, 10 rows appended",))
            self.run_case(
                self.STAGE,
                case,
                self.run_main,
                verb="run",
                before=b"",
                landed=fixture_keys(),
                final=fixture_keys(),
                rerun=self.unblocked(self.run_main),
            )

    def test_archive_cannot_be_written_while_healing(self) -> None:
        now = datetime.now(timezone.utc)
        rows = markets_rows(3, start=now - timedelta(days=5))
        ids = [row["id"] for row in rows]
        self.fresh(rows, PIPELINE_COINS=",".join(ids))
        self.fake.market_chart.update(daily_charts(ids, 40))
        self.assertEqual(self.run_main().code, 0)
        old = set(self.keys())
        self.fake.advance(5 * 86400)
        new = fixture_keys(self.fake.coins)
        self.block_raw("raw")
        healing = dict(self.env, PIPELINE_HEAL="1")
        # Healed days may or may not land when their archive fails; the snapshot must, with exit 0.
        t = tally(self.STAGE)
        with self.subTest(stage=self.STAGE, case="raw is a file while gaps are healed"):
            t.tried += 1
            result = self.run_main(env=healing)
            keys = self.keys()
            t.rows_lost += len((old | new) - set(keys))
            t.rows_repeated += len(keys) - len(set(keys))
            self.assertNotIn("Traceback", result.stderr)
            last = summary_line(result.stderr)
            self.assertNotIn("unexpected", last)
            self.assertEqual(result.code, 3, result.stderr)
            self.assertTrue(last.startswith("run partial: 3 coins, 3 rows appended"), last)
            self.assertIn("not written: raw answer for eur", last)
            self.assertIn("could not archive", result.stderr)
            self.assertTrue((old | new) <= set(keys))
            self.assertEqual(len(keys), len(set(keys)))
            t.passed += 1

    def test_backfill_archive_cannot_be_written(self) -> None:
        now = datetime.now(timezone.utc)
        rows = markets_rows(3, start=now - timedelta(hours=2))
        ids = [row["id"] for row in rows]
        self.fresh(rows, PIPELINE_COINS=",".join(ids))
        self.fake.market_chart.update(daily_charts(ids, 40))
        self.assertEqual(self.run_main().code, 0)
        old = set(self.keys())
        self.block_raw("raw")
        expected = old | daily_keys(ids, 5)
        case = Case(
            "backfill while raw is a file",
            lambda: [],
            3,
            ("could not archive", "backfill partial: 3 coins, 15 rows added", "not written: raw answer for"),
        )
        self.run_case(
            self.STAGE,
            case,
            lambda: self.run_main("backfill", "--days", "5"),
            verb="backfill",
            before=self.csv_bytes(),
            landed=expected,
            final=expected,
            rerun=self.unblocked(lambda: self.run_main("backfill", "--days", "5")),
        )


class LoadStage(MatrixTestCase):
    """The CSV cannot be written as usual: a clear error and the history untouched, or a repair."""

    STAGE = "load"

    def prepared(self) -> tuple[bytes, set[Key], set[Key]]:
        """A folder with one run's history and newer data served: (CSV bytes, stored keys, keys to come)."""
        if not hasattr(self, "seed"):
            self.seed = self.history()
        self.fresh(seed=self.seed)
        before, old = self.csv_bytes(), set(self.keys())
        self.fake.advance(60)
        return before, old, fixture_keys(self.fake.coins)

    def limited_run(self, limit: int) -> CliResult:
        """python main.py with RLIMIT_FSIZE: every file it writes stops growing at limit bytes."""

        def apply() -> None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        proc = subprocess.run(
            [sys.executable, str(MAIN)],
            env=dict(os.environ, **self.env),
            capture_output=True,
            text=True,
            timeout=60,
            cwd=self.tmp.name,
            preexec_fn=apply,
        )
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    def test_disk_full(self) -> None:
        for room in (0, 100):
            before, old, new = self.prepared()
            case = Case(
                f"disk full with {room} bytes to spare (RLIMIT_FSIZE)",
                lambda: [],
                1,
                ("file size limit", "nothing was appended"),
            )
            self.run_case(
                self.STAGE,
                case,
                lambda r=room, b=before: self.limited_run(len(b) + r),
                verb="run",
                before=before,
                landed=set(),
                final=old | new,
                rerun=self.run_main,
            )

    def test_csv_replaced_by_a_directory(self) -> None:
        before, old, new = self.prepared()
        aside = self.csv_path.with_name("aside.csv")
        self.csv_path.rename(aside)
        self.csv_path.mkdir()
        (self.csv_path / "inside.txt").write_bytes(b"keep\n")

        def put_back() -> CliResult:
            self.assertEqual(os.listdir(self.csv_path), ["inside.txt"])
            (self.csv_path / "inside.txt").unlink()
            self.csv_path.rmdir()
            aside.rename(self.csv_path)
            return self.run_main()

        case = Case("CSV replaced by a directory", lambda: [], 1, ("a folder stands where a file belongs",))
        self.run_case(
            self.STAGE, case, self.run_main, verb="run", before=b"", landed=set(), final=old | new, rerun=put_back
        )

    def test_index_damaged_or_foreign(self) -> None:
        index = Path(".state") / "crypto_data.csv.index.sqlite"

        def claim_longer_csv(p: Path) -> None:
            with sqlite3.connect(p) as db:
                db.execute("UPDATE meta SET v = '1000000000' WHERE k = 'size'")

        def forget_keys(p: Path) -> None:
            with sqlite3.connect(p) as db:
                db.execute("DELETE FROM daily")
                db.execute("DELETE FROM extra")

        damage = {
            "index file corrupt": lambda p: (
                p.write_bytes(b"not a database" * 100),
                Path(str(p) + "-wal").unlink(missing_ok=True),
            ),
            "index from a future version": lambda p: (
                sqlite3.connect(p).execute("UPDATE meta SET v = '99' WHERE k = 'version'").connection.commit()
            ),
            "index claims a longer CSV": claim_longer_csv,
            "index missing": lambda p: p.unlink(),
            "the old JSON state of an earlier version": lambda p: p.with_name("crypto_data.csv.state.json").write_text(
                '{"version": 2}'
            ),
        }
        for name, spoil in damage.items():
            before, old, new = self.prepared()
            spoil(self.data_dir / index)
            case = Case(name, lambda: [], 0, ("run ok: 10 coins, 10 rows appended",))
            self.run_case(self.STAGE, case, self.run_main, verb="run", before=before, landed=old | new, final=old | new)

    def test_torn_last_line_is_quarantined(self) -> None:
        before, old, new = self.prepared()
        with open(self.csv_path, "ab") as fh:
            fh.write(b"Half,a row,12.5,")
        case = Case("a torn last line", lambda: [], 0, ("cut short", "run ok: 10 coins, 10 rows appended"))

        def quarantined(result: CliResult) -> None:
            self.assertTrue(self.csv_bytes().startswith(before))
            self.assertIn(b"Half,a row,12.5,", (self.data_dir / "crypto_data.csv.quarantine").read_bytes())

        self.run_case(
            self.STAGE,
            case,
            self.run_main,
            verb="run",
            before=before,
            landed=old | new,
            final=old | new,
            after=quarantined,
        )

    def test_foreign_header(self) -> None:
        self.fresh()
        foreign = b"date,price\n2024-01-01,1\n"
        self.csv_path.write_bytes(foreign)
        case = Case("a CSV with foreign columns", lambda: [], 2, ("columns this version does not write",))

        def move_away() -> CliResult:
            self.csv_path.rename(self.csv_path.with_name("foreign.csv"))
            return self.run_main()

        self.run_case(
            self.STAGE,
            case,
            self.run_main,
            verb="run",
            before=foreign,
            landed=set(),
            final=fixture_keys(),
            rerun=move_away,
        )


class ChartStage(MatrixTestCase):
    """The charts cannot be drawn: exit 0, the data landed, the summary says so."""

    STAGE = "charts"

    def test_chart_file_is_a_directory(self) -> None:
        name = "crypto_price_trend.png"
        self.fresh(PIPELINE_CHARTS="1")
        (self.data_dir / name).mkdir()
        case = Case(
            f"a directory where {name} goes", lambda: [], 0, ("run ok: 10 coins, 10 rows appended", "charts failed")
        )

        def summary_says_so(result: CliResult) -> None:
            last = summary_line(result.stderr)
            self.assertIn("; charts failed: ", last)
            self.assertIn(name, last)
            self.assertTrue((self.data_dir / name).is_dir())

        self.run_case(
            self.STAGE,
            case,
            self.run_main,
            verb="run",
            before=b"",
            landed=fixture_keys(),
            final=fixture_keys(),
            after=summary_says_so,
        )


def daily_charts(ids: list[str], days: int) -> dict[str, dict]:
    """Daily 00:00 UTC charts up to today for each coin, plus the partial point at request time."""
    now = datetime.now(timezone.utc)
    start = now.date() - timedelta(days=days - 1)
    return {coin: make_daily_chart(start, days, 100.0 + i, partial_point_at=now, seed=i) for i, coin in enumerate(ids)}


def daily_keys(ids: list[str], days: int, vs: str = "eur") -> set[Key]:
    """The observations a backfill of the last `days` complete days stores for these coins."""
    newest: date = newest_complete_day(datetime.now(timezone.utc))
    return {(coin, vs, f"{newest - timedelta(days=i)}T00:00:00.000Z") for coin in ids for i in range(days)}


class Backfill(MatrixTestCase):
    """Each fault on the 3rd coin's /coins/{id}/market_chart/range of a five-coin backfill."""

    STAGE = "backfill"
    DAYS = 10

    def test_every_fault_on_the_third_coin(self) -> None:
        now = datetime.now(timezone.utc)
        rows = markets_rows(5, start=now - timedelta(hours=2))
        ids = [row["id"] for row in rows]
        third = ids[2]
        target = f"/coins/{third}/market_chart/range"
        bad_day = newest_complete_day(now) - timedelta(days=3)
        bad_ms = int(datetime(bad_day.year, bad_day.month, bad_day.day, tzinfo=timezone.utc).timestamp() * 1000)

        def chart_with_a_string_price() -> list[Fault]:
            chart = copy.deepcopy(self.fake.market_chart[third])
            chart["prices"] = [[ms, "12.5" if ms == bad_ms else value] for ms, value in chart["prices"]]
            return [Fault.status(200, chart)]

        rejected = f"rejected {third}: market_chart answer is"
        cases = http_cases(target, shape_code=3, shape_fragment=lambda kind: rejected) + [
            Case("a JSON list where an object belongs", lambda: [Fault.status(200, [[1, 2]])], 3, (rejected,)),
            Case(
                "404 for the coin",
                lambda: [Fault.status(404, {"error": "coin not found"})],
                3,
                (f"1 unknown ({third})",),
            ),
            Case(
                "a price that is a string on one day",
                chart_with_a_string_price,
                3,
                (f"rejected {third}: {bad_day}: current_price is the string '12.5'",),
            ),
            Case(
                "error 10012 (beyond the plan's history)",
                lambda: [Fault.error_body("history_beyond_365_days_10012")],
                2,
                ("past 365 days",),
            ),
        ]
        seed = self.history(rows, PIPELINE_COINS=",".join(ids))
        charts = daily_charts(ids, 40)
        for case in cases:
            self.fresh(rows, seed, PIPELINE_COINS=",".join(ids))
            self.fake.market_chart.update(copy.deepcopy(charts))
            before, old = self.csv_bytes(), set(self.keys())
            everything = old | daily_keys(ids, self.DAYS)
            if case.name.startswith("a price that is a string"):
                landed = everything - {(third, "eur", f"{bad_day}T00:00:00.000Z")}
            elif case.code == 3:
                landed = everything - daily_keys([third], self.DAYS)
            else:
                landed = everything
            self.queue(case.faults(), target)
            argv = ("backfill", "--days", str(self.DAYS), *case.argv)
            calls_before = len(self.fake.requests)

            def resumes(again: CliResult) -> CliResult:
                if case.code in (1, 2):
                    self.assertIn("resuming, 2 of 5 coins already fetched", again.stderr)
                    asked = [r.path for r in self.fake.requests[calls_before:] if r.path.endswith("/range")]
                    for done in ids[:2]:
                        self.assertEqual(asked.count(f"/coins/{done}/market_chart/range"), 1, asked)
                return again

            self.run_case(
                self.STAGE,
                case,
                lambda: self.run_main(*argv),
                verb="backfill",
                before=before,
                landed=landed,
                final=everything,
                rerun=lambda: resumes(self.run_main(*argv)),
            )


if __name__ == "__main__":
    unittest.main()
