"""Quality checks: each rule with a history that triggers it and one that does not, quality.csv, and the commands."""

from __future__ import annotations

import csv
import dataclasses
import tempfile
import unittest
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from unittest import mock

from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.fake_coingecko import markets_rows
from tests.support import PipelineTestCase, make_stale, record
from utils.history import quality
from utils.history.csv_store import HistoryStore
from utils.history.index import HistoryIndex
from utils.history.layout import DataLayout
from utils.history.quality import QUALITY_COLUMNS, QualityRules, _stale_rows_parsed, stale_rows
from utils.history.schema import SOURCE_MARKET_CHART, SOURCE_MARKETS, Record, format_timestamp

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)


def rec(
    coin: str,
    when: datetime,
    price: float | None,
    *,
    cap: float | None = 1e9,
    high: float | None = None,
    low: float | None = None,
    fetched: datetime | None = None,
    source: str = SOURCE_MARKETS,
) -> Record:
    """A row as the transform makes it; fetched a minute after the observation unless told."""
    return record(
        coin,
        format_timestamp(when),
        current_price=price,
        market_cap=cap,
        fetched_at=format_timestamp(fetched or when + timedelta(minutes=1)),
        market_cap_rank=1,
        high_24h=high,
        low_24h=low,
        source=source,
    )


def day(n: int, hour: int = 12) -> datetime:
    return T0 + timedelta(days=n, hours=hour - 12)


class StoreCase(unittest.TestCase):
    """A real data folder and store; loads one list of records at a time."""

    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.layout = DataLayout(Path(tmp.name))
        self.store = HistoryStore(self.layout, rules=QualityRules(0.5))

    def load(self, *records: Record) -> list[tuple[str, str, str]]:
        """Append the records; the new findings as (coin_id, last_updated, rule)."""
        report = self.store.append(list(records))
        return [(f.coin_id, f.last_updated, f.rule) for f in report.findings]

    def quality_rows(self) -> list[dict[str, str]]:
        with open(self.layout.quality, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))


class Spike(StoreCase):
    def test_a_jump_that_reverses_the_next_run_is_a_spike(self) -> None:
        self.assertEqual(self.load(rec("bitcoin", day(0), 100.0)), [])
        self.assertEqual(self.load(rec("bitcoin", day(1), 300.0)), [])  # a jump alone: not yet known to reverse
        found = self.load(rec("bitcoin", day(1, 13), 101.0))
        self.assertEqual(found, [("bitcoin", format_timestamp(day(1)), "spike")])
        detail = self.quality_rows()[0]["detail"]
        self.assertIn("price 300 is +200% against 100", detail)

    def test_a_dip_that_reverses_is_a_spike_too(self) -> None:
        self.load(rec("bitcoin", day(0), 100.0), rec("bitcoin", day(1), 30.0))
        self.assertEqual([r for _, _, r in self.load(rec("bitcoin", day(1, 20), 95.0))], ["spike"])

    def test_a_move_that_lasts_is_not_a_spike(self) -> None:
        self.load(rec("bitcoin", day(0), 100.0), rec("bitcoin", day(1), 300.0))
        self.assertEqual(self.load(rec("bitcoin", day(1, 13), 290.0), rec("bitcoin", day(2), 310.0)), [])

    def test_a_move_below_the_threshold_is_not_a_spike(self) -> None:
        self.load(rec("bitcoin", day(0), 100.0), rec("bitcoin", day(1), 140.0))
        self.assertEqual(self.load(rec("bitcoin", day(1, 13), 100.0)), [])

    def test_a_reversal_more_than_a_day_later_is_not_a_spike(self) -> None:
        self.load(rec("bitcoin", day(0), 100.0), rec("bitcoin", day(1), 300.0))
        self.assertEqual(self.load(rec("bitcoin", day(2, 13), 100.0)), [])

    def test_the_threshold_is_a_setting(self) -> None:
        self.store = HistoryStore(self.layout, rules=QualityRules(0.3))
        self.load(rec("bitcoin", day(0), 100.0), rec("bitcoin", day(1), 140.0))
        self.assertEqual([r for _, _, r in self.load(rec("bitcoin", day(1, 13), 100.0))], ["spike"])

    def test_backfilled_days_woven_in_are_checked_against_stored_neighbours(self) -> None:
        self.load(rec("bitcoin", day(0, 0), 100.0), rec("bitcoin", day(2, 0), 102.0))
        report = self.store.merge([rec("bitcoin", day(1, 0), 500.0, source=SOURCE_MARKET_CHART, fetched=day(5))])
        self.assertEqual([(f.last_updated, f.rule) for f in report.findings], [(format_timestamp(day(1, 0)), "spike")])


class ZeroPriceAndCap(StoreCase):
    def test_zero_or_missing_price(self) -> None:
        found = self.load(rec("bitcoin", day(0), 0.0), rec("ethereum", day(0), None), rec("tether", day(0), 1.0))
        self.assertEqual(
            sorted(found),
            [("bitcoin", format_timestamp(day(0)), "zero_price"), ("ethereum", format_timestamp(day(0)), "zero_price")],
        )

    def test_zero_market_cap_after_a_real_one(self) -> None:
        self.load(rec("bitcoin", day(0), 100.0, cap=1e9))
        self.assertEqual(
            self.load(rec("bitcoin", day(3), 100.0, cap=0.0)),
            [("bitcoin", format_timestamp(day(3)), "zero_market_cap")],
        )
        self.assertIn("it was 1e+09", self.quality_rows()[0]["detail"])

    def test_zero_market_cap_from_the_start_is_not_a_finding(self) -> None:
        self.assertEqual(self.load(rec("newcoin", day(0), 1.0, cap=0.0), rec("newcoin", day(1), 1.0, cap=0.0)), [])
        self.assertEqual(self.load(rec("other", day(0), 1.0, cap=None), rec("other", day(1), 1.0, cap=0.0)), [])


class OutsideRange(StoreCase):
    def test_a_price_above_its_own_high_or_below_its_low_beyond_one_percent(self) -> None:
        found = self.load(
            rec("bitcoin", day(0), 120.0, high=110.0, low=90.0), rec("ethereum", day(0), 80.0, high=110.0, low=90.0)
        )
        self.assertEqual(sorted(r for _, _, r in found), ["outside_24h_range", "outside_24h_range"])

    def test_within_one_percent_or_without_a_range_is_fine(self) -> None:
        self.assertEqual(
            self.load(
                rec("bitcoin", day(0), 110.9, high=110.0, low=90.0),
                rec("ethereum", day(0), 89.2, high=110.0, low=90.0),
                rec("tether", day(0), 5.0),
            ),
            [],
        )


class Stale(StoreCase):
    def test_last_updated_more_than_48_hours_before_the_fetch(self) -> None:
        old = rec("bitcoin", day(0), 100.0, fetched=day(3))
        fresh = rec("ethereum", day(3) - timedelta(minutes=1), 10.0, fetched=day(3))  # the rest of the answer
        self.assertEqual(self.load(old, fresh), [("bitcoin", format_timestamp(day(0)), "stale")])
        self.assertIn("3.0 days before the rest of its answer", self.quality_rows()[0]["detail"])

    def test_a_whole_answer_replayed_late_is_not_stale(self) -> None:
        """The answer's own newest last_updated is its time: a wrong clock here flags nothing."""
        self.assertEqual(
            self.load(rec("bitcoin", day(0), 100.0, fetched=day(3)), rec("ethereum", day(0), 10.0, fetched=day(3))), []
        )

    def test_a_coin_that_keeps_sending_its_old_key_is_found_once(self) -> None:
        self.load(rec("bitcoin", day(0), 100.0))  # fresh when first seen
        later = day(2, 13)
        self.assertEqual(
            self.load(
                rec("bitcoin", day(0), 100.0, fetched=later),
                rec("ethereum", later - timedelta(minutes=1), 10.0, fetched=later),
            ),
            [("bitcoin", format_timestamp(day(0)), "stale")],
        )
        self.assertEqual(
            self.load(
                rec("bitcoin", day(0), 100.0, fetched=day(3)),
                rec("ethereum", day(3) - timedelta(minutes=1), 10.0, fetched=day(3)),
            ),
            [],
        )
        self.assertEqual(len(self.quality_rows()), 1)

    def test_47_hours_and_backfilled_points_are_not_stale(self) -> None:
        self.assertEqual(self.load(rec("bitcoin", day(0), 100.0, fetched=day(0) + timedelta(hours=47))), [])
        report = self.store.merge([rec("ethereum", day(-100, 0), 1.0, source=SOURCE_MARKET_CHART, fetched=day(0))])
        self.assertEqual(report.findings, ())


# Prices as factors of 100 on both sides of the 50 % threshold (1.5 up, 1 / 1.5 down), and missing or 0.
factors = st.sampled_from([None, 0.0, 1.0, 1.0, 1.0001, 1.49, 1.5, 1.51, 2.0, 0.67, 0.666, 0.66, 0.5, 3.0])
observations = st.tuples(
    st.sampled_from(["a", "b", "c"]),
    st.sampled_from([0, 1, 2, 3, 4, 9, 10, 20]),
    st.integers(0, 23),
    factors,
    st.booleans(),
)
# Days 9, 10 and 20 make batches whose rows fall in several clusters of days.
SPIKE_51 = [[("a", 0, 12, 1.0, False)], [("a", 1, 12, 1.51, False)], [("a", 1, 13, 1.0, False)]]


class HistoryShortcut(unittest.TestCase):
    """history_findings skips coins whose prices stay within the threshold and whose caps are not 0; it must
    find exactly what building every coin's timeline finds."""

    @settings(max_examples=80, deadline=None, database=None)
    @given(st.lists(st.lists(observations, min_size=1, max_size=8), min_size=1, max_size=4))
    @example(SPIKE_51)
    @example([[("a", 0, 12, 1.0, False)], [("a", 1, 12, 0.66, False), ("a", 1, 20, 1.0, False)]])
    @example([[("a", 0, 12, 1.0, False)], [("a", 1, 12, 1.0, True)]])
    def test_the_shortcut_finds_what_the_timelines_find(self, batches: list) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            layout = DataLayout(Path(tmp))
            store = HistoryStore(layout, rules=QualityRules(0.5))
            for batch in batches:
                records = [
                    rec(coin, day(n, hour), None if f is None else 100 * f, cap=0.0 if zero_cap else 1e9)
                    for coin, n, hour, f, zero_cap in batch
                ]
                with HistoryIndex(layout.index) if layout.index.exists() else HistoryIndex(":memory:") as index:
                    found = {}
                    for shortcut in (True, False):
                        with mock.patch.object(
                            quality, "_nothing_to_find", quality._nothing_to_find if shortcut else lambda *a: False
                        ):
                            found[shortcut] = quality.history_findings(records, index, QualityRules(0.5))
                    self.assertEqual(found[True], found[False])
                store.append(records)

    def test_the_shortcut_is_taken_and_a_spike_still_found(self) -> None:
        calm = [(0, 100.0), (1, 101.0), (1.5, 99.0)]
        records = [rec("calm", day(0) + timedelta(days=d), p) for d, p in calm]
        records += [rec("spiky", day(0), 100.0), rec("spiky", day(1), 151.0), rec("spiky", day(1, 13), 100.0)]
        skipped: list[bool] = []
        original = quality._nothing_to_find

        def watched(*args: Any) -> bool:
            skipped.append(original(*args))
            return skipped[-1]

        with HistoryIndex(":memory:") as index, mock.patch.object(quality, "_nothing_to_find", watched):
            found = quality.history_findings(records, index, QualityRules(0.5))
        self.assertEqual([(f.coin_id, f.rule) for f in found], [("spiky", "spike")])
        self.assertEqual(skipped, [True, False])  # calm is skipped; spiky's timeline is built


class StaleShortcut(unittest.TestCase):
    """stale_rows compares canonical time texts and parses only the stale rows; the rule is the parsing one."""

    def test_the_text_comparison_flags_what_parsing_flags(self) -> None:
        fetched = [day(3), day(3) + timedelta(milliseconds=1), day(5)]
        offsets = [
            timedelta(hours=48),  # exactly 48 h: not stale
            timedelta(hours=48, milliseconds=1),  # one ms more: stale
            timedelta(hours=47, minutes=59, seconds=59, milliseconds=999),
            timedelta(days=3),
            timedelta(minutes=1),
            timedelta(0),
        ]
        records = [
            rec(f"coin-{i}-{j}", at - gap, 1.0, fetched=at)
            for i, at in enumerate(fetched)
            for j, gap in enumerate(offsets)
        ]
        records += [rec("eur-coin", day(0), 1.0, fetched=day(3)), rec("bf", day(0), 1.0, source=SOURCE_MARKET_CHART)]
        records.insert(0, records.pop(7))  # rows of different answers interleaved: the order given is kept
        got = stale_rows(records)
        self.assertEqual(got, _stale_rows_parsed(records))
        self.assertEqual(
            {r.coin_id for r, _ in got},
            {"coin-0-1", "coin-0-3", "coin-1-1", "coin-1-3", "coin-2-1", "coin-2-3", "eur-coin"},
        )
        self.assertEqual([lag for r, lag in got if r.coin_id == "coin-0-1"], [48 * 3_600_000 + 1])

    def test_a_time_in_another_form_takes_the_parsing_path(self) -> None:
        base = rec("bitcoin", day(0), 1.0, fetched=day(3))
        odd = dataclasses.replace(base, coin_id="odd", last_updated="2026-11-01T12:00:00+00:00")
        fresh = rec("ethereum", day(3) - timedelta(minutes=1), 1.0, fetched=day(3))
        self.assertEqual([r.coin_id for r, _ in stale_rows([odd, base, fresh])], ["odd", "bitcoin"])


class MissingDay(StoreCase):
    def test_a_day_healing_could_not_fill(self) -> None:
        self.load(rec("bitcoin", day(0), 100.0), rec("bitcoin", day(3), 100.0))
        gap = {(day(1).date()), day(2).date()}
        report = self.store.merge([], unavailable={("bitcoin", "eur"): gap})
        self.assertEqual(
            [(f.last_updated, f.rule) for f in report.findings],
            [(f"{d}T00:00:00.000Z", "missing_day") for d in sorted(gap)],
        )

    def test_days_before_the_first_observation_are_not_missing(self) -> None:
        self.load(rec("bitcoin", day(0), 100.0))
        report = self.store.merge(
            [], unavailable={("bitcoin", "eur"): {day(-5).date()}, ("nocoin", "eur"): {date(2026, 1, 1)}}
        )
        self.assertEqual(report.findings, ())


class QualityFile(StoreCase):
    def test_findings_are_appended_once_per_key_and_rule_and_rows_never_change(self) -> None:
        self.load(rec("bitcoin", day(0), 0.0, high=1.0))
        before = self.layout.quality.read_bytes()
        self.assertEqual(before.decode().splitlines()[0], ",".join(QUALITY_COLUMNS))
        self.store.merge([rec("bitcoin", day(0), 0.0)])  # the same key again: a duplicate, nothing new
        self.load(rec("bitcoin", day(1), None))
        after = self.layout.quality.read_bytes()
        self.assertTrue(after.startswith(before))
        rows = self.quality_rows()
        self.assertEqual(
            [(r["last_updated"], r["rule"]) for r in rows],
            [(format_timestamp(day(0)), "zero_price"), (format_timestamp(day(1)), "zero_price")],
        )
        self.assertTrue(all(r["found_at"].endswith("Z") for r in rows))

    def test_the_rows_land_whatever_the_findings(self) -> None:
        self.load(rec("bitcoin", day(0), 0.0), rec("bitcoin", day(1), None, cap=0.0))
        with open(self.layout.csv, newline="", encoding="utf-8") as fh:
            self.assertEqual(len(list(csv.DictReader(fh))), 2)

    def test_an_unwritable_quality_file_is_a_warning_and_the_rows_land(self) -> None:
        self.layout.quality.mkdir()  # a folder where the file should be
        with self.assertLogs("utils.history.quality", "WARNING") as logs:
            self.load(rec("bitcoin", day(0), 0.0))
        self.assertIn("could not write the quality findings", logs.output[0])
        self.assertEqual(self.store.append([rec("bitcoin", day(0), 0.0)]).skipped_duplicates, 1)


class Commands(PipelineTestCase):
    """A run's quality line, `quality`, `status`, --spike-threshold, against the fake server."""

    def test_a_run_prints_its_findings_after_the_summary(self) -> None:
        make_stale(self.fake)
        result = self.run_main()
        self.assertEqual(result.code, 0, result.stderr)
        lines = result.stderr.splitlines()
        self.assertTrue(lines[-2].startswith("run ok: 10 coins"), lines)
        self.assertEqual(lines[-1], "quality: 1 finding (1 stale)")
        again = self.run_main()
        self.assertTrue(again.stderr.splitlines()[-1].startswith("run ok: 10 coins"), again.stderr)

    def test_a_clean_run_prints_no_quality_line(self) -> None:
        now = datetime.now(timezone.utc) - timedelta(minutes=5)
        self.fake.set_coins(markets_rows(3, start=now))
        result = self.run_main("--coins", ",".join(r["id"] for r in self.fake.coins))
        self.assertEqual(result.code, 0, result.stderr)
        self.assertNotIn("quality:", result.stderr)
        self.assertEqual((self.data_dir / "quality.csv").read_text().splitlines(), [",".join(QUALITY_COLUMNS)])

    def test_quality_lists_the_findings_and_status_counts_them(self) -> None:
        make_stale(self.fake)
        self.run_main()
        listed = self.run_main("quality")
        self.assertEqual(listed.code, 0, listed.stderr)
        self.assertEqual(len(listed.stdout.splitlines()), 2)
        self.assertIn("bitcoin eur  2023-01-05T16:49:40.132Z  stale: last updated", listed.stdout)
        self.assertTrue(listed.stdout.splitlines()[-1].startswith("quality: 1 finding in the last 30 days"))
        status = self.run_main("status")
        self.assertIn("quality:      1 finding in the last 30 days (1 stale)", status.stdout)
        old = self.run_subprocess("quality", "--days", "1")
        self.assertEqual(old.code, 0, old.stderr)

    def test_quality_with_no_findings_and_bad_days(self) -> None:
        self.assertEqual(self.run_main("quality").stdout.split(" (")[0], "quality: no findings in the last 30 days")
        self.assertEqual(self.run_main("quality", "--days", "0").code, 2)

    def test_spike_threshold_flag_and_variable(self) -> None:
        self.assertEqual(self.run_main("--spike-threshold", "abc").code, 2)
        self.assertEqual(self.run_main("run", "--spike-threshold", "0.001").code, 2)
        result = self.run_main("run", "--spike-threshold", "30%")
        self.assertEqual(result.code, 0, result.stderr)
        self.assertEqual(self.run_main(env={**self.env, "PIPELINE_SPIKE_THRESHOLD": "-1"}).code, 2)


if __name__ == "__main__":
    unittest.main()
