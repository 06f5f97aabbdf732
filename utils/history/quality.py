"""Quality checks: is each new observation plausible? Findings go to data/quality.csv; rows are never touched.

The checks run on a load's new rows against the index (before the index records them), so a load costs
O(new rows) however long the history is: at most one small index read per coin and cluster of days.
A finding names the observation (coin_id, vs_currency, last_updated) and the rule; (key, rule) is stored once.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from utils.clock import DAY_MS, day_number
from utils.errors import PipelineError
from utils.history import csvio
from utils.history.files import append_bytes, describe_os_error, read_bounded, read_json, write_json_atomic
from utils.history.index import HistoryIndex
from utils.history.layout import DataLayout
from utils.history.schema import SOURCE_MARKETS, Record, canonical_texts, format_timestamp, safe_text
from utils.words import count

log = logging.getLogger(__name__)

# Rule names, as they appear in quality.csv, in the order a summary lists them.
SPIKE = "spike"
ZERO_PRICE = "zero_price"
ZERO_MARKET_CAP = "zero_market_cap"
OUTSIDE_RANGE = "outside_24h_range"
STALE = "stale"
MISSING_DAY = "missing_day"
RULES = (SPIKE, ZERO_PRICE, ZERO_MARKET_CAP, OUTSIDE_RANGE, STALE, MISSING_DAY)
# Words for a summary line: "quality: 2 findings (1 spike, 1 stale)".
RULE_WORDS = {
    SPIKE: "spike",
    ZERO_PRICE: "zero price",
    ZERO_MARKET_CAP: "zero market cap",
    OUTSIDE_RANGE: "outside 24h range",
    STALE: "stale",
    MISSING_DAY: "missing day",
}
QUALITY_COLUMNS = ("coin_id", "vs_currency", "last_updated", "rule", "detail", "found_at")
QUALITY_HEADER = ",".join(QUALITY_COLUMNS) + "\n"
DEFAULT_SPIKE_THRESHOLD = 0.5
RANGE_TOLERANCE = 0.01  # a price this far outside its own 24 h low..high is rounding, not an error
STALE_AFTER_MS = 48 * 3600 * 1000
REVERSAL_WINDOW_MS = DAY_MS  # a jump is a spike when the next observation, at most a day later, undoes it


@dataclass(frozen=True)
class QualityRules:
    """The thresholds the checks use (--spike-threshold)."""

    spike_threshold: float = DEFAULT_SPIKE_THRESHOLD


@dataclass(frozen=True)
class Finding:
    """One rule one observation broke."""

    coin_id: str
    vs_currency: str
    last_updated: str
    rule: str
    detail: str
    found_at: str = ""

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.coin_id, self.vs_currency, self.last_updated, self.rule)

    def row(self) -> list[str]:
        return [self.coin_id, self.vs_currency, self.last_updated, self.rule, safe_text(self.detail), self.found_at]


def summary_line(findings: Iterable[Finding]) -> str:
    """'quality: 2 findings (1 spike, 1 stale)', or 'quality: no new findings'."""
    counts = Counter(f.rule for f in findings)
    total = sum(counts.values())
    if not total:
        return "quality: no new findings"
    parts = ", ".join(f"{counts[rule]} {RULE_WORDS[rule]}" for rule in RULES if counts[rule])
    return f"quality: {total} finding{'s' if total != 1 else ''} ({parts})"


# -- the rules -------------------------------------------------------------------------------------


def _pct(new: float, old: float) -> str:
    return f"{(new / old - 1) * 100:+.0f}%"


def _at(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def row_findings(record: Record) -> list[Finding]:
    """The rules a row breaks on its own: zero or missing price, a price outside its own 24 h range."""
    out: list[Finding] = []
    price = record.current_price

    def finding(rule: str, detail: str) -> None:
        out.append(Finding(record.coin_id, record.vs_currency, record.last_updated, rule, detail))

    if price is None:
        finding(ZERO_PRICE, "the price is missing")
    elif price == 0:
        finding(ZERO_PRICE, "the price is 0")
    else:
        low, high = record.low_24h, record.high_24h
        if high is not None and high > 0 and price > high * (1 + RANGE_TOLERANCE):
            finding(OUTSIDE_RANGE, f"price {price:g} is {_pct(price, high)} against its own 24 h high {high:g}")
        elif low is not None and low > 0 and price < low * (1 - RANGE_TOLERANCE):
            finding(OUTSIDE_RANGE, f"price {price:g} is {_pct(price, low)} against its own 24 h low {low:g}")
    return out


def stale_rows(records: list[Record]) -> list[tuple[Record, int]]:
    """Snapshot rows CoinGecko last updated more than 48 h before the answer they came in, with that lag in ms.

    The one stale rule (the quality findings, the run's warnings, `check`). "The answer's time" is CoinGecko's
    own: the newest last_updated of the same answer (same fetch, same currency), never later than our fetch
    time. A coin that stopped updating while the rest moved on is flagged; a wrong clock here, or an answer
    replayed later, flags nothing. Backfilled and legacy rows are old by design and never stale.
    """
    answers: dict[tuple[str, str], list[Record]] = defaultdict(list)
    for record in records:
        if record.source == SOURCE_MARKETS and record.fetched_at:
            answers[(record.fetched_at, record.vs_currency)].append(record)
    lags: dict[int, int] = {}  # id(record) -> lag, so that the rows come out in the order given
    for rows in answers.values():
        found = _stale_in_answer(rows)
        if found is None:
            return _stale_rows_parsed(records)
        lags.update((id(record), lag) for record, lag in found)
    return [(record, lags[id(record)]) for record in records if id(record) in lags]


EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _stale_in_answer(rows: list[Record]) -> list[tuple[Record, int]] | None:
    """stale_rows of one answer's rows in canonical time texts, comparing texts: only the stale rows are parsed
    (a run of the whole market has 17,000 rows and none stale). None when a text is not canonical."""
    texts = [r.last_updated for r in rows]
    if not canonical_texts(texts):
        return None
    try:
        fetched = csvio.timestamp_ms(rows[0].fetched_at)
        newest = csvio.timestamp_ms(max(texts))
    except ValueError:
        return None  # a canonical-looking text that is no moment (30 February): the parsing path skips it
    cutoff = format_timestamp(EPOCH + timedelta(milliseconds=min(fetched, newest) - STALE_AFTER_MS))
    out = []
    for record in rows:
        if record.last_updated < cutoff:  # updated more than STALE_AFTER_MS before the answer's time
            with contextlib.suppress(ValueError):
                out.append((record, min(fetched, newest) - csvio.timestamp_ms(record.last_updated)))
    return out


def _stale_rows_parsed(records: list[Record]) -> list[tuple[Record, int]]:
    """stale_rows by parsing every time (the rule's definition; any time text)."""
    newest: dict[tuple[str, str], int] = {}
    parsed: list[tuple[Record, int, int]] = []
    fetched_ms: dict[str, int] = {}  # an answer's rows share one fetched_at: parsed once
    for record in records:
        if record.source != SOURCE_MARKETS or not record.fetched_at:
            continue
        try:
            fetched = fetched_ms.get(record.fetched_at)
            if fetched is None:
                fetched = fetched_ms[record.fetched_at] = csvio.timestamp_ms(record.fetched_at)
            updated = csvio.timestamp_ms(record.last_updated)
        except ValueError:
            continue
        answer = (record.fetched_at, record.vs_currency)
        newest[answer] = max(newest.get(answer, updated), updated)
        parsed.append((record, fetched, updated))
    out = []
    for record, fetched, updated in parsed:
        lag = min(fetched, newest[(record.fetched_at, record.vs_currency)]) - updated
        if lag > STALE_AFTER_MS:
            out.append((record, lag))
    return out


def stale_findings(records: list[Record]) -> list[Finding]:
    """A finding for each stale row (see stale_rows)."""
    return [
        Finding(
            r.coin_id,
            r.vs_currency,
            r.last_updated,
            STALE,
            f"last updated {lag / DAY_MS:.1f} days before the rest of its answer ({r.fetched_at[:16]}Z)",
        )
        for r, lag in stale_rows(records)
    ]


@dataclass
class _Point:
    """One observation on a coin's timeline: a stored daily point or a new row."""

    ts: int
    price: float | None
    cap: float | None
    record: Record | None = None  # set for a new row

    @property
    def last_updated(self) -> str:
        return (
            self.record.last_updated
            if self.record
            else format_timestamp(datetime.fromtimestamp(self.ts / 1000, timezone.utc))
        )


def _clusters(days: set[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for day in sorted(days):
        if out and day <= out[-1][1] + 1:
            out[-1] = (out[-1][0], day)
        else:
            out.append((day, day))
    return out


def history_findings(fresh: list[Record], index: HistoryIndex, rules: QualityRules) -> list[Finding]:
    """Spikes and vanished market caps: new rows against the stored daily points around them."""
    by_series: dict[tuple[str, str], list[tuple[int, Record]]] = defaultdict(list)
    for record in fresh:
        try:
            by_series[(record.coin_id, record.vs_currency)].append((csvio.timestamp_ms(record.last_updated), record))
        except ValueError:
            continue

    # The days a spike test can touch: a candidate's previous day, and a reversal's candidate's previous day.
    # A run's rows share their days, so one query per cluster of days serves every coin.
    def days_around(rows: list[tuple[int, Record]]) -> set[int]:
        return {d for ts, _ in rows for d in range(ts // DAY_MS - 2, ts // DAY_MS + 2)}

    clusters = _clusters(
        {d for day in {ts // DAY_MS for rows in by_series.values() for ts, _ in rows} for d in range(day - 2, day + 2)}
    )
    wanted: dict[tuple[int, int], set[tuple[str, str]]] = {}
    if len(clusters) == 1:  # a run's rows: every coin's days lie in the one cluster
        wanted[clusters[0]] = set(by_series)
    else:
        days_of = {key: days_around(rows) for key, rows in by_series.items()}
        for first, last in clusters:
            wanted[(first, last)] = {key for key, days in days_of.items() if any(first <= d <= last for d in days)}
    held: dict[tuple[str, str], list[tuple[int, float | None, float | None]]] = defaultdict(list)
    for (first, last), keys in wanted.items():
        for key, points in index.points_of(keys, first, last).items():
            held[key] += points
    out: list[Finding] = []
    for (coin_id, vs), rows in by_series.items():
        points = held.get((coin_id, vs), [])
        if _nothing_to_find(points, rows, rules.spike_threshold):  # points: a superset of the coin's days
            continue
        days = days_around(rows)
        timeline = [_Point(ts, price, cap) for ts, price, cap in points if ts // DAY_MS in days]
        timeline += [_Point(ts, r.current_price, r.market_cap, r) for ts, r in rows]
        timeline.sort(key=lambda p: (p.ts, p.record is not None))
        last_of_day: dict[int, _Point] = {}
        for point in timeline:
            last_of_day[point.ts // DAY_MS] = point
        out += _spikes(coin_id, vs, timeline, last_of_day, rules.spike_threshold)
        out += _vanished_caps(coin_id, vs, timeline, index)
    return out


def _nothing_to_find(
    points: list[tuple[int, float | None, float | None]], rows: list[tuple[int, Record]], threshold: float
) -> bool:
    """True when a coin's new rows and stored points around them cannot make a finding (most coins, most days), so
    that its timeline is not built: no new market cap is 0, and its positive prices stay within a factor of
    1 + threshold of each other, so that no price moved more than the threshold against another (_jump)."""
    if any(r.market_cap == 0 for _, r in rows):
        return False
    prices = [p for _, p, _ in points if p and p > 0] + [p for _, r in rows if (p := r.current_price) and p > 0]
    return len(prices) < 2 or max(prices) <= min(prices) * (1 + threshold) * (1 - 1e-9)


def _jump(point: _Point, last_of_day: dict[int, _Point], threshold: float) -> _Point | None:
    """The previous day's last observation, when point moved more than threshold against it."""
    base = last_of_day.get(point.ts // DAY_MS - 1)
    if base is None or not base.price or not point.price or base.price <= 0 or point.price <= 0:
        return None
    return base if abs(point.price / base.price - 1) > threshold else None


def _spikes(
    coin_id: str, vs: str, timeline: list[_Point], last_of_day: dict[int, _Point], threshold: float
) -> list[Finding]:
    out: list[Finding] = []
    for i in range(len(timeline) - 1):
        candidate, after = timeline[i], timeline[i + 1]
        if candidate.record is None and after.record is None:
            continue  # both stored: judged when they were new
        if after.ts - candidate.ts > REVERSAL_WINDOW_MS or not after.price:
            continue
        base = _jump(candidate, last_of_day, threshold)
        if base is None or abs(after.price / base.price - 1) > threshold:
            continue
        out.append(
            Finding(
                coin_id,
                vs,
                candidate.last_updated,
                SPIKE,
                f"price {candidate.price:g} is {_pct(candidate.price, base.price)} against "
                f"{base.price:g} (the previous day's last, {_at(base.ts)}) and back to "
                f"{after.price:g} by {_at(after.ts)}",
            )
        )
    return out


def _vanished_caps(coin_id: str, vs: str, timeline: list[_Point], index: HistoryIndex) -> list[Finding]:
    out: list[Finding] = []
    before: tuple[int, float] | None = None  # the last non-null market cap seen so far on the timeline
    for point in timeline:
        if point.record is not None and point.cap == 0:
            held = before if before is not None else index.last_cap_before(coin_id, vs, point.ts)
            if held is not None and held[1] > 0:
                out.append(
                    Finding(
                        coin_id,
                        vs,
                        point.last_updated,
                        ZERO_MARKET_CAP,
                        f"the market cap is 0; it was {held[1]:g} at {_at(held[0])}",
                    )
                )
        if point.cap is not None:
            before = (point.ts, point.cap)
    return out


def missing_day_findings(unavailable: dict[tuple[str, str], set[date]], index: HistoryIndex) -> list[Finding]:
    """Days after a coin's first observation that healing asked for and CoinGecko had no data for."""
    out: list[Finding] = []
    first = {(s.coin_id, s.vs_currency): s for s in index.series()} if unavailable else {}
    for (coin_id, vs), days in unavailable.items():
        info = first.get((coin_id, vs))
        if info is None:
            continue
        for day in sorted(days):
            number = day_number(day)
            if number <= info.first_day or any(a <= number <= b for a, b in info.covered):
                continue
            out.append(
                Finding(
                    coin_id,
                    vs,
                    f"{day.isoformat()}T00:00:00.000Z",
                    MISSING_DAY,
                    f"no observation on {day}: healing asked CoinGecko, which had no data for that day",
                )
            )
    return out


def inspect(records: list[Record], fresh: list[Record], index: HistoryIndex, rules: QualityRules) -> list[Finding]:
    """Every finding of one load: fresh are the records about to be stored, records all that came (for staleness)."""
    out: list[Finding] = []
    for record in fresh:
        out += row_findings(record)
    out += stale_findings(records)  # all that came: a coin that stopped updating re-sends a stored key
    out += history_findings(fresh, index, rules)
    return out


# -- data/quality.csv ------------------------------------------------------------------------------

MAX_QUALITY_BYTES = 1 << 30  # quality.csv is read whole; a file past this is not one this program wrote


class QualityLog:
    """data/quality.csv: findings appended, each (key, rule) once; a row is never changed or dropped.

    Read with the history's own record splitter (csvio.scan): a damaged line, an over-long cell or binary
    junk is skipped, never an error."""

    def __init__(self, path: Path, layout: DataLayout | None = None) -> None:
        self.path = path
        self.layout = layout

    def read(self) -> list[Finding]:
        """Every finding on file, oldest first (a line that is not a finding is skipped)."""
        data = read_bounded(self.path, MAX_QUALITY_BYTES, "quality findings")
        if not data:
            return []
        out: list[Finding] = []
        width = len(QUALITY_COLUMNS)
        for unit in csvio.scan(data, width=width):
            row = unit.cells
            if row is not None and len(row) == width and row[3] in RULES:
                out.append(Finding(*row))
        return out

    def add(self, findings: list[Finding], found_at: datetime) -> list[Finding]:
        """Append the findings not on file yet (call under the history's lock); returns those appended."""
        if not findings:
            return []
        held = {f.key for f in self.read()}
        stamp = format_timestamp(found_at)
        new: list[Finding] = []
        for f in findings:
            if f.key not in held:
                held.add(f.key)
                new.append(Finding(f.coin_id, f.vs_currency, f.last_updated, f.rule, f.detail, f.found_at or stamp))
        if not new:
            return []
        buf = io.StringIO()
        try:
            empty = os.lstat(self.path).st_size == 0
        except FileNotFoundError:
            empty = True
        if empty:
            buf.write(QUALITY_HEADER)
        csv.writer(buf, lineterminator="\n").writerows(f.row() for f in new)
        append_bytes(self.path, buf.getvalue().encode("utf-8"), "quality findings", self.layout)
        return new

    def since(self, moment: datetime) -> list[Finding]:
        """Findings found at or after moment."""
        cutoff = format_timestamp(moment)
        return [f for f in self.read() if f.found_at >= cutoff]


def record_findings(
    layout: DataLayout, findings: list[Finding], now: datetime | None = None
) -> tuple[list[Finding], str | None]:
    """Append findings (and any an earlier run could not write) to quality.csv. Call under the history's lock.

    A failure is never a failed load: the findings are kept in .state/pending-findings.json for the next
    run, and the second value names what was not written (the run is partial)."""
    pending = load_pending(layout)
    if not findings and not pending:
        return [], None
    stamp = format_timestamp(now or datetime.now(timezone.utc))
    stamped = [f if f.found_at else Finding(*f.row()[:5], stamp) for f in findings]  # type: ignore[call-arg]
    try:
        added = QualityLog(layout.quality, layout).add(pending + stamped, now or datetime.now(timezone.utc))
    except (OSError, PipelineError) as exc:
        why = describe_os_error(exc, layout.quality, "write to") if isinstance(exc, OSError) else str(exc)
        keep = list({f.key: f for f in pending + stamped}.values())
        try:
            write_json_atomic(layout.pending_findings, [f.row() for f in keep], "pending findings")
            later = "kept for the next run"
        except (OSError, PipelineError) as again:
            later = f"and could not be kept for the next run either ({getattr(again, 'strerror', None) or again})"
        log.warning("could not write the quality findings (%d): %s; %s", len(keep), why, later)
        return stamped, f"{layout.quality.name} ({count(len(keep), 'finding')} {later}: {why})"
    if pending:
        with contextlib.suppress(OSError):
            layout.pending_findings.unlink()
        log.info("wrote %d quality findings an earlier run could not write", len(pending))
    written = {f.key for f in added}
    return [f for f in stamped if f.key in written], None


def load_pending(layout: DataLayout) -> list[Finding]:
    """Findings an earlier run could not write to quality.csv."""
    data = read_json(layout.pending_findings)
    if not isinstance(data, list):
        return []
    width = len(QUALITY_COLUMNS)
    return [
        Finding(*row)
        for row in data
        if isinstance(row, list) and len(row) == width and all(isinstance(c, str) for c in row) and row[3] in RULES
    ]
