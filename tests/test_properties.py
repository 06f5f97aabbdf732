"""Property tests of the transform: arbitrary JSON never breaks it, and what it accepts survives the CSV exactly."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import tempfile
import unittest
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lambdas.lambda_1_extract import Snapshot, extract
from lambdas.lambda_2_transform import (
    NON_NEGATIVE,
    SIGNED,
    RowError,
    TransformResult,
    careful_record,
    chart_to_records,
    to_record,
    transform,
)
from lambdas.lambda_3_load import load
from tests.fake_coingecko import FakeCoinGecko, Fault
from tests.support import REPO, examples  # noqa: F401  (REPO: puts the repo on sys.path)
from utils.coingecko.client import CoinGeckoClient, decode_json
from utils.errors import PipelineError
from utils.history.csvio import observation, record_observation
from utils.history.schema import COLUMNS, HEADER_LINE, Record, format_cell, rows_to_csv

FETCHED = datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=timezone.utc)
IDS = ("bitcoin", "ethereum", "avalanche-2", "usd-coin", "a..b", "x")
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
TEXT_COLUMNS = ("name", "symbol", "last_updated", "fetched_at", "coin_id", "vs_currency", "source")
NUMBER_COLUMNS = tuple(c for c in COLUMNS if c not in TEXT_COLUMNS)
# Characters a hostile or broken server may send that matter to a CSV or a spreadsheet.
AWKWARD = list("=+-@'\",;\t\r\n\x00\x0b\x0c\x1b\x1f\x7f\x85\u2028\u2029\ufeff\ud800\udfff")
SETTINGS = settings(
    max_examples=examples(60), deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
FAST_TMP = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None

# -- strategies ----------------------------------------------------------------------------------

texts = st.text(st.one_of(st.characters(), st.sampled_from(AWKWARD)), max_size=30)
formula_texts = st.builds(
    lambda prefix, rest: prefix + rest, st.sampled_from(["=", "+", "-", "@", "\t=", "\r=", " =", "\n@"]), texts
)
floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, 1e-11, 0.1, 16951.52]),
)
integers = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.sampled_from([0, 1, -1, 2**53 + 1, 2**63, 10**308, 10**309]),
)
scalars = st.one_of(st.none(), st.booleans(), integers, floats, texts, formula_texts)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(texts, children, max_size=4)),
    max_leaves=12,
)

offsets = st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1).map(lambda m: timezone(timedelta(minutes=m)))
moments = st.builds(lambda naive, tz: naive.replace(tzinfo=tz), st.datetimes(), st.one_of(st.none(), offsets))


def iso(moment: datetime, style: int) -> str:
    """An ISO 8601 text as a server might write it."""
    text = moment.isoformat(timespec=("auto", "milliseconds", "seconds", "microseconds")[style])
    return text.replace("+00:00", "Z") if style == 1 else text


timestamps = st.one_of(st.builds(iso, moments, st.integers(0, 3)), texts, json_values)
good_numbers = st.one_of(
    st.floats(min_value=0, allow_nan=False, allow_infinity=False), st.integers(min_value=0, max_value=10**20)
)


def field_values(name: str) -> st.SearchStrategy:
    """Values for one known field: plausible ones more often than not, anything at all otherwise."""
    if name == "id":
        return st.one_of(st.sampled_from(IDS), json_values)
    if name == "last_updated":
        return timestamps
    if name in ("name", "symbol"):
        return st.one_of(texts, formula_texts, json_values)
    if name == "market_cap_rank":
        return st.one_of(st.integers(min_value=1, max_value=20000), good_numbers, json_values)
    if name in SIGNED:
        return st.one_of(st.floats(allow_nan=False, allow_infinity=False), json_values)
    return st.one_of(good_numbers, json_values)


KNOWN_FIELDS = ("id", "name", "symbol", "last_updated", "market_cap_rank", *NON_NEGATIVE, *SIGNED)
known_rows = st.fixed_dictionaries({}, optional={name: field_values(name) for name in KNOWN_FIELDS})
mostly_good_rows = st.fixed_dictionaries({name: field_values(name) for name in KNOWN_FIELDS})
rows_lists = st.lists(st.one_of(json_values, known_rows, mostly_good_rows), max_size=6)


# Inputs that broke the transform once: checked first on every run, before anything random.
GOOD = {"id": "bitcoin", "last_updated": "2024-05-01T11:59:00Z"}
KNOWN_BAD_ROWS = (
    [{"id": ["bitcoin"]}],  # an unhashable id: Snapshot.missing raised TypeError
    [{"id": {"en": "bitcoin"}, "last_updated": "2024-05-01T11:59:00Z"}],
    [dict(GOOD, last_updated="0001-01-01T00:00:00+01:00")],  # OverflowError converting to UTC
    [dict(GOOD, last_updated="9999-12-31T23:59:59-01:00")],
    [dict(GOOD, last_updated="0999-06-01T00:00:00Z")],  # stored as '999-06-01T...': not fixed width
    [dict(GOOD, market_cap_rank=10**400)],  # OverflowError in float(value)
)
KNOWN_BAD_RECORDS = (
    [dict(GOOD, market_cap=10**400)],  # stored as 401 digits, read back as inf
    [dict(GOOD, total_volume=2**1024)],
    [dict(GOOD, name="Bit\ud800coin")],  # a lone surrogate (JSON "\\ud800") cannot be written as UTF-8
    [dict(GOOD, last_updated="0999-06-01T00:00:00Z")],
)


def with_examples(cases: tuple) -> Any:
    """Decorate a one-argument property with explicit examples."""

    def decorate(test: Any) -> Any:
        for case in reversed(cases):
            test = example(case)(test)
        return test

    return decorate


def snapshot(rows: list[Any], requested: tuple[str, ...] = IDS) -> Snapshot:
    return Snapshot(fetched_at=FETCHED, vs_currency="eur", requested=requested, rows=rows)


# -- checks shared by the properties --------------------------------------------------------------


def parse_cell(column: str, cell: str) -> Any:
    """A CSV cell back to the value it was written from."""
    if column in TEXT_COLUMNS:
        return cell
    if cell == "":
        return None
    if re.fullmatch(r"-?\d+", cell):
        return int(cell)
    return float(cell)


class RoundTrip(unittest.TestCase):
    """Helpers: every accepted record must come back from the CSV exactly."""

    def setUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)

    def assert_well_formed(self, result: TransformResult) -> None:
        """Records are typed, with canonical timestamps; every rejection says why."""
        for record in result.records:
            self.assertIsInstance(record, Record)
            self.assertRegex(record.last_updated, TIMESTAMP)
            for column in NUMBER_COLUMNS:
                value = getattr(record, column)
                self.assertTrue(
                    value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)),
                    f"{column} = {value!r}",
                )
        for rejected in result.rejected:
            self.assertIsInstance(rejected.reason, str)
            self.assertTrue(rejected.reason)

    def assert_round_trip(self, records: list[Record]) -> None:
        """HEADER_LINE + rows_to_csv(records) in a real file, read back with csv.DictReader, equals the records."""
        path = Path(self.tmp.name) / "roundtrip.csv"
        with open(path, "w", encoding="utf-8", newline="") as fh:
            fh.write(HEADER_LINE + rows_to_csv(records))
        data = path.read_bytes()
        self.assertEqual(data.count(b"\n"), len(records) + 1, "a row spans more than one physical line")
        self.assertNotIn(b"\r", data)
        with open(path, encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
        self.assertEqual(len(rows), len(records))
        for record, row in zip(records, rows):
            self.assertEqual(list(row), list(COLUMNS))
            for column in COLUMNS:
                value, cell = getattr(record, column), row[column]
                self.assertEqual(cell, format_cell(value), column)
                if value is None:
                    self.assertEqual(cell, "", column)
                elif column in NUMBER_COLUMNS:
                    self.assertTrue(math.isfinite(float(cell)), f"{column} {cell[:30]}... reads back as {float(cell)}")
                    if isinstance(value, float):
                        self.assertEqual(float(cell), value, column)
                        self.assertEqual(math.copysign(1, float(cell)), math.copysign(1, value), column)
                    else:
                        self.assertEqual(int(cell), value, column)
                else:
                    self.assertEqual(cell, value, column)

    def assert_load_gives_back(self, records: list[Record]) -> None:
        """load() into a new history, then read the CSV: the same records, in order."""
        with tempfile.TemporaryDirectory(dir=FAST_TMP) as folder:  # tmpfs: real files, no disk fsync per example
            csv_path = Path(folder) / "crypto_data.csv"
            report = load(records, csv_path, lock_timeout=10)
            self.assertEqual(report.appended, len(records))
            with open(csv_path, encoding="utf-8", newline="") as fh:
                back = [Record(**{c: parse_cell(c, row[c]) for c in COLUMNS}) for row in csv.DictReader(fh)]
        self.assertEqual(back, records)


# -- /coins/markets rows --------------------------------------------------------------------------


class TransformProperties(RoundTrip):
    @SETTINGS
    @given(rows_lists)
    @with_examples(KNOWN_BAD_ROWS)
    def test_arbitrary_rows_never_raise_and_every_row_is_accounted_for(self, rows: list[Any]) -> None:
        shot = snapshot(rows)
        result = transform(shot)  # anything raised here fails the property
        self.assertEqual(len(result.records) + len(result.rejected), len(rows), "a row was neither kept nor rejected")
        self.assertEqual(len({r.coin_id for r in result.records}), len(result.records))
        self.assertTrue(all(r.coin_id in IDS for r in result.records))
        self.assert_well_formed(result)
        _ = shot.missing  # the run names the missing coins from the same rows: that must not raise either

    @SETTINGS
    @given(st.lists(mostly_good_rows, min_size=1, max_size=5))
    @with_examples(KNOWN_BAD_RECORDS)
    def test_accepted_records_round_trip_through_the_csv(self, rows: list[dict]) -> None:
        result = transform(snapshot(rows))
        self.assert_well_formed(result)
        self.assert_round_trip(result.records)

    @settings(SETTINGS, max_examples=examples(40))
    @given(st.lists(mostly_good_rows, min_size=1, max_size=5))
    @with_examples(KNOWN_BAD_RECORDS[:2])
    def test_a_load_of_accepted_records_reads_back_the_same_records(self, rows: list[dict]) -> None:
        records = transform(snapshot(rows)).records
        self.assert_load_gives_back(records)

    @SETTINGS
    @given(formula_texts, formula_texts)
    def test_a_formula_never_reaches_a_cell_as_a_formula(self, name: str, symbol: str) -> None:
        row = {"id": "bitcoin", "name": name, "symbol": symbol, "last_updated": "2024-05-01T11:59:00.000Z"}
        record = transform(snapshot([row])).records[0]
        for cell in (record.name, record.symbol):
            self.assertFalse(cell.startswith(("=", "+", "-", "@", "\t", "\r", "\n")), repr(cell))

    @settings(SETTINGS, max_examples=examples(300))
    @given(st.one_of(mostly_good_rows, known_rows, json_values))
    @with_examples(tuple(rows[0] for rows in KNOWN_BAD_ROWS + KNOWN_BAD_RECORDS))
    @example({**GOOD, "market_cap": -1, "name": "Bitcoin"})
    @example({**GOOD, "price_change_percentage_24h": -0.5, "market_cap_rank": True, "name": " =x "})
    @example({**GOOD, "current_price": 1e-101, "symbol": "b\u202etc"})
    @example({**GOOD, "market_cap_rank": 10**101})
    def test_the_fast_path_gives_what_the_careful_path_gives(self, row: Any) -> None:
        """to_record's shortcut for plain rows (17,000 a run of the whole market) keeps every rule: the same
        Record, or the same refusal, as the careful path that checks one thing at a time."""
        args = ("eur", "2024-05-01T12:00:00.250Z", "2024-05-01T12:10:00.250Z")
        try:
            expected: Any = careful_record(row, *args)
        except RowError as exc:
            expected = ("refused", str(exc))
        try:
            got: Any = to_record(row, *args)
        except RowError as exc:
            got = ("refused", str(exc))
        self.assertEqual(got, expected)

    def test_names_hold_no_line_break_of_any_kind(self) -> None:
        """One coin, one line, also for tools that split lines on Unicode's line breaks (NEL, LS, PS)."""
        for brk in ("\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"):
            with self.subTest(line_break=repr(brk)):
                row = {
                    "id": "bitcoin",
                    "name": f"Bit{brk}coin",
                    "symbol": f"b{brk}tc",
                    "last_updated": "2024-05-01T11:59:00.000Z",
                }
                result = transform(snapshot([row]))
                for record in result.records:
                    self.assertEqual(record.name.splitlines(), [record.name])
                    self.assertEqual(record.symbol.splitlines(), [record.symbol])


cell_values = st.one_of(
    st.none(), st.booleans(), integers, floats, st.sampled_from(["nan", "inf", "-inf", "?", "", "1.5", "x,y"]), texts
)


GOOD_TS = "2024-05-01T11:59:00.000Z"
PLAIN = {**{c: None for c in COLUMNS}, "name": "Bitcoin", "symbol": "btc"}


class RowShortcuts(unittest.TestCase):
    """The load formats 17,000 rows a run with shortcuts for plain values; each must give what the rule gives."""

    @settings(SETTINGS, max_examples=examples(300))
    @given(
        st.fixed_dictionaries({c: cell_values for c in COLUMNS if c not in ("coin_id", "vs_currency", "last_updated")}),
        st.sampled_from(IDS + ("Bit coin", "")),
        st.sampled_from(["eur", "usd", "EUR", "e"]),
        st.one_of(timestamps, st.sampled_from(["2024-05-01T11:59:00.000Z", "2024-02-30T00:00:00.000Z"])),
    )
    @example(
        {**{c: None for c in COLUMNS}, "current_price": 10**400, "market_cap": 10**308, "market_cap_rank": -1},
        "bitcoin",
        "eur",
        "2024-05-01T11:59:00.000Z",
    )
    @example({**PLAIN, "market_cap_rank": 10**9, "current_price": 2**53 + 1}, "x", "usd", GOOD_TS)
    @example({**PLAIN, "market_cap_rank": 999_999_999, "market_cap": 1e308}, "x", "usd", GOOD_TS)
    @example({**PLAIN, "market_cap_rank": 0, "current_price": -0.0, "name": "n"}, "x", "usd", GOOD_TS)
    @example({**PLAIN, "market_cap": float("inf"), "current_price": 1.5}, "x", "usd", GOOD_TS)
    @example(PLAIN, "bitcoin", "eur", None)  # a time that is not text: the cells' rule (found by CI)
    @example(PLAIN, "bitcoin", "eur", [])
    def test_cells_and_the_indexed_observation_follow_the_rule(
        self, values: dict, coin_id: str, vs: str, ts: Any
    ) -> None:
        record = Record(**{**values, "coin_id": coin_id, "vs_currency": vs, "last_updated": ts})
        self.assertEqual(record.to_row(), [format_cell(getattr(record, c)) for c in COLUMNS])
        self.assertEqual(record_observation(record), observation(record.to_row()))


def _decoded(text: bytes) -> str:
    """What a decoder made of a text, comparable across decoders: the value's repr with its types, or the error."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return repr((value, _types(value)))


def _types(value: Any) -> Any:
    if isinstance(value, list):
        return [_types(v) for v in value]
    if isinstance(value, dict):
        return {k: _types(v) for k, v in value.items()}
    return type(value).__name__


json_texts = st.one_of(
    st.builds(
        lambda v, compact: json.dumps(v, separators=(",", ":") if compact else None).encode(),
        json_values,
        st.booleans(),
    ),
    st.builds(lambda v: json.dumps(v, ensure_ascii=False).encode("utf-8", "surrogatepass"), json_values),
    st.builds(lambda v: json.dumps([v]).encode("utf-16"), json_values),
    st.binary(max_size=40),
)


class AnswerDecoding(unittest.TestCase):
    """The client reads answers with orjson where that gives json.loads's value, and with json.loads otherwise."""

    @settings(SETTINGS, max_examples=examples(400))
    @given(json_texts)
    @example(b"[18446744073709551616, -9223372036854775809, 12345678901234567890.5]")
    @example(b"9999999999999999999")
    @example(b'{"a": NaN, "b": -Infinity, "c": 1e400, "d": "\\ud800", "a": 2}')
    @example(b"[0.1234567890123456789012, 1e-400, -0, 5e-324]")
    @example(b"\xef\xbb\xbf[1]")
    def test_decode_json_gives_what_json_loads_gives(self, text: bytes) -> None:
        try:
            value = decode_json(text)
        except (ValueError, RecursionError) as exc:
            got = f"{type(exc).__name__}: {exc}"
        else:
            got = repr((value, _types(value)))
        self.assertEqual(got, _decoded(text))


class PipelinePages(RoundTrip):
    """A whole /coins/markets answer of arbitrary JSON, through a real HTTP exchange with the fake server."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.fake = FakeCoinGecko().start()
        server = cls.fake._server  # no Nagle: each answer would otherwise wait ~40 ms for a delayed ACK
        server.RequestHandlerClass = type(
            "NoDelayHandler", (server.RequestHandlerClass,), {"disable_nagle_algorithm": True}
        )
        cls.client = CoinGeckoClient(cls.fake.base_url, max_retry_wait=0, sleep=lambda s: None, rate_limit=10000)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.client.close()
        cls.fake.stop()

    @settings(SETTINGS, max_examples=examples(60))
    @given(st.one_of(json_values, rows_lists))
    @with_examples(KNOWN_BAD_ROWS[:1] + ({"not": "a list"}, None, "[]", 10**400))
    def test_any_page_ends_in_records_or_a_pipeline_error(self, page: Any) -> None:
        self.fake.clear_faults()
        body = json.dumps(page, allow_nan=True).encode()
        self.fake.add_fault(Fault.status(200, body, {"content-type": "application/json"}))
        try:
            shot = extract(IDS, "eur", self.client, clock=lambda: FETCHED)
        except PipelineError:
            return  # the pipeline's own error: one line for the user, nothing appended
        _ = shot.missing
        result = transform(shot)
        self.assert_well_formed(result)
        self.assert_round_trip(result.records)


# -- /coins/{id}/market_chart/range ----------------------------------------------------------------

# The span comes from our own settings (complete UTC days the plan reaches), the chart from the network.
day_spans = st.builds(
    lambda first, length: (first, first + timedelta(days=length)),
    st.dates(min_value=date(2009, 1, 3), max_value=date(2100, 1, 1)),
    st.integers(0, 20),
)


@st.composite
def spans_and_charts(draw: Any) -> tuple[tuple[date, date], Any]:
    """A span of days, and a market_chart answer: anything, or series of points near the span."""
    first, last = span = draw(day_spans)
    lo = int(datetime(first.year, first.month, first.day, tzinfo=timezone.utc).timestamp() * 1000)
    hi = int(datetime(last.year, last.month, last.day, tzinfo=timezone.utc).timestamp() * 1000) + 86_400_000
    ms = st.one_of(st.integers(lo - 86_400_000, hi + 86_400_000), st.floats(lo - 1e8, hi + 1e8), json_values)
    value = st.one_of(good_numbers, floats, integers, json_values)
    point = st.one_of(
        st.lists(st.one_of(ms, value), min_size=2, max_size=2), st.tuples(ms, value).map(list), json_values
    )
    series = st.one_of(st.lists(point, max_size=8), json_values)
    return span, draw(
        st.one_of(
            json_values,
            st.fixed_dictionaries(
                {}, optional={"prices": series, "market_caps": series, "total_volumes": series, "extra": json_values}
            ),
        )
    )


DAY = (date(2024, 1, 1), date(2024, 1, 2))
DAY_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
KNOWN_BAD_CHARTS = (
    (DAY, {"prices": [[10**400, 1.0]]}),  # OverflowError in math.isfinite(point[0])
    (DAY, {"prices": [[DAY_MS, 10**400]]}),  # a price of 401 digits, read back as inf
)


class ChartProperties(RoundTrip):
    @SETTINGS
    @given(spans_and_charts())
    @with_examples(KNOWN_BAD_CHARTS)
    def test_arbitrary_charts_never_raise_and_stay_in_their_days(self, drawn: tuple) -> None:
        span, chart = drawn
        result = chart_to_records("bitcoin", "eur", chart, first_day=span[0], last_day=span[1])
        self.assert_well_formed(result)
        days = [r.last_updated[:10] for r in result.records]
        self.assertEqual(days, sorted(set(days)), "one record per day, in order")
        for record in result.records:
            self.assertTrue(record.last_updated.endswith("T00:00:00.000Z"), record.last_updated)
            self.assertTrue(span[0].isoformat() <= record.last_updated[:10] <= span[1].isoformat())
            self.assertEqual(record.source, "market_chart")
        self.assert_round_trip(result.records)

    @settings(SETTINGS, max_examples=examples(30))
    @given(spans_and_charts())
    def test_a_load_of_chart_records_reads_back_the_same_records(self, drawn: tuple) -> None:
        span, chart = drawn
        result = chart_to_records("bitcoin", "eur", chart, first_day=span[0], last_day=span[1])
        self.assert_load_gives_back(result.records)


if __name__ == "__main__":
    unittest.main()
