"""Backfill past days from /coins/{id}/market_chart/range, resumably, and heal gaps after downtime."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta, timezone
from typing import Any

from flows.budget import enforce
from flows.views import draw_charts, publish_report
from flows.wiring import Console
from lambdas.lambda_2_transform import Rejected, chart_to_records, rejection_lines
from lambdas.wiring import make_client, storage_for
from utils.clock import day_number, day_of, midnight_seconds
from utils.coingecko.client import CoinGeckoClient
from utils.coingecko.plans import FREE_REACH_DAYS, earliest_reachable_day
from utils.daemon import StatusFile, iso
from utils.errors import EXIT_OK, EXIT_PARTIAL, ConfigError, ExtractError, PipelineError, SchemaMismatch
from utils.history.csv_store import MergeReport
from utils.history.files import ensure_dir, failure_text, read_json, write_json_atomic
from utils.history.labels import coin_labels
from utils.history.layout import display_path
from utils.history.locations import Storage
from utils.history.quality import summary_line
from utils.history.schema import Record, format_timestamp
from utils.history.tracking import TopMembers
from utils.options import command_default
from utils.settings import Settings
from utils.words import count

log = logging.getLogger(__name__)

WINDOW_DAYS = {"public": 365, "demo": 365, "pro": 3650}
SETTLE = timedelta(minutes=40)  # CoinGecko's daily point of the previous day is final by about 00:35-00:40 UTC
DEFAULT_DAYS = command_default("days", "backfill")  # 365: how far back a backfill goes without --days


def newest_complete_day(now: datetime) -> date:
    """The newest day whose 00:00 UTC point is final."""
    return (now.astimezone(timezone.utc) - SETTLE).date()


@dataclass(frozen=True)
class DayRange:
    first: date
    last: date

    @property
    def days(self) -> int:
        return (self.last - self.first).days + 1


def plan_range(settings: Settings, now: datetime) -> DayRange:
    """The days to backfill from --since/--until/--days, clamped to what is complete and what the plan reaches."""
    newest = newest_complete_day(now)
    last = min(settings.until, newest) if settings.until else newest
    if settings.since:
        first = settings.since
    else:
        first = last - timedelta(days=(settings.days or DEFAULT_DAYS) - 1)
    earliest = earliest_reachable_day(settings.api_plan, now)
    if earliest and first < earliest:
        log.warning(
            "the %s plan reaches only the past %d days: starting at %s instead of %s "
            "(a paid plan, --api-plan pro, reaches back to 2013)",
            settings.api_plan,
            FREE_REACH_DAYS,
            earliest,
            first,
        )
        first = earliest
    if first > last:
        raise ConfigError(
            f"nothing to backfill: {first} is after {last}, the newest complete day "
            f"(the {settings.api_plan} plan reaches back to {earliest or 'the start'})"
        )
    return DayRange(first, last)


def windows(span: DayRange, plan: str) -> list[DayRange]:
    """The range cut into the largest pieces one request may cover."""
    size = WINDOW_DAYS.get(plan, 365)
    out, start = [], span.first
    while start <= span.last:
        end = min(span.last, start + timedelta(days=size - 1))
        out.append(DayRange(start, end))
        start = end + timedelta(days=1)
    return out


def fetch_coin(client: CoinGeckoClient, coin_id: str, vs_currency: str, span: DayRange, plan: str) -> list[Any]:
    """The raw market_chart answers covering a coin's days: one request per window."""
    answers = []
    for window in windows(span, plan):
        answers.append(
            client.get_json(
                f"/coins/{coin_id}/market_chart/range",
                {
                    "vs_currency": vs_currency,
                    "from": midnight_seconds(window.first),
                    "to": midnight_seconds(window.last) + 3600,
                    "precision": "full",
                },
            )
        )
    return answers


def chart_payload(coin_id: str, vs_currency: str, span: DayRange, answers: list[Any]) -> dict[str, Any]:
    """What the raw archive keeps of one coin's market_chart answers."""
    return {
        "endpoint": f"/coins/{coin_id}/market_chart/range",
        "coin_id": coin_id,
        "vs_currency": vs_currency,
        "first_day": str(span.first),
        "last_day": str(span.last),
        "answers": answers,
    }


def records_from(
    coin_id: str, vs_currency: str, answers: list[Any], span: DayRange
) -> tuple[list[Record], list[Rejected]]:
    records: list[Record] = []
    rejected: list[Rejected] = []
    for answer in answers:
        result = chart_to_records(coin_id, vs_currency, answer, first_day=span.first, last_day=span.last)
        records.extend(result.records)
        rejected.extend(result.rejected)
    return records, rejected


def complete_rows(records: list[Record], storage: Storage, fetched: datetime) -> list[Record]:
    """Daily points with the name and symbol the history knows for their coin (from its own snapshots, this
    run's included) and the fetch time as fetched_at, so every row groups by symbol and says when it came."""
    if not records:
        return records
    try:
        with storage.index() as index:
            labels = coin_labels(index)
    except SchemaMismatch:  # a seven-column file: the merge migrates it first; its names come next time
        labels = {}
    stamp = format_timestamp(fetched)
    out = []
    for record in records:
        name, symbol = labels.get(record.coin_id, ("", ""))
        out.append(
            replace(
                record, name=record.name or name, symbol=record.symbol or symbol, fetched_at=record.fetched_at or stamp
            )
        )
    return out


def well_formed(answers: list[Any]) -> bool:
    """Every answer is a chart object with a non-empty prices list: only then is a day it lacks really unavailable."""
    return bool(answers) and all(
        isinstance(a, dict)
        and isinstance(a.get("prices"), list)
        and a["prices"]
        and all(isinstance(a.get(k, []), list) for k in ("market_caps", "total_volumes"))
        for a in answers
    )


def lacking(span_days: set[date], records: list[Record], answers: list[Any]) -> set[date]:
    """The days a well-formed answer had no data for; none when the answer is malformed or empty (ask again)."""
    if not well_formed(answers):
        return set()
    return span_days - {date.fromisoformat(r.last_updated[:10]) for r in records}


@dataclass
class BackfillResult:
    """What a backfill (or a heal) fetched and merged."""

    coins_done: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    requests: int = 0
    merge: MergeReport | None = None
    seconds: float = 0.0
    paced_seconds: float = 0.0
    failed_currencies: list[tuple[str, str]] = field(default_factory=list)
    currencies: tuple[str, ...] = ()
    span: DayRange | None = None  # the days asked for
    unwritten: list[str] = field(default_factory=list)  # side outputs not written (raw answers, findings, ...)

    @property
    def exit_code(self) -> int:
        unwritten = self.unwritten or (self.merge.unwritten if self.merge else ())
        return EXIT_PARTIAL if self.missing or self.rejected or self.failed_currencies or unwritten else EXIT_OK

    def not_written(self) -> list[str]:
        """Every side output this backfill could not write."""
        return [*self.unwritten, *(self.merge.unwritten if self.merge else ())]

    def summary(self, csv_name: str) -> str:
        word = "ok" if self.exit_code == EXIT_OK else "partial"
        added = self.merge.added if self.merge else 0
        skipped = self.merge.skipped_duplicates if self.merge else 0
        where = f" in {', '.join(self.currencies)}" if len(self.currencies) > 1 else ""
        line = (
            f"backfill {word}: {count(len(set(self.coins_done)), 'coin')}{where}, {count(added, 'row')} added, "
            f"{count(skipped, 'duplicate')} skipped, {len(self.rejected)} rejected, {count(self.requests, 'request')} "
            f"in {self.seconds:.1f} s"
        )
        if self.missing:
            unknown = list(dict.fromkeys(self.missing))
            line += f", {len(unknown)} unknown ({', '.join(unknown[:10])})"
        for currency, why in self.failed_currencies:
            line += f", {currency} failed: {why}"
        line += f" -> {csv_name}"
        if self.not_written():
            line += "; not written: " + "; ".join(self.not_written())
        return line


class Progress:
    """A tqdm bar on a terminal, else a log line every few coins, both with the time left, pacing included."""

    def __init__(
        self,
        total: int,
        done: int = 0,
        stream: Any = None,
        *,
        pacing: Callable[[int], float] = lambda coins: 0.0,
        monotonic: Callable[[], float] = time.monotonic,
        label: str = "backfill",
    ) -> None:
        self.total, self.done = total, done
        self.label = label
        self.stream = stream or sys.stderr
        self.pacing = pacing  # seconds the rate limit needs for the requests of this many more coins
        self.monotonic = monotonic
        self.started = monotonic()
        self.every = max(1, total // 10)
        self.bar = None
        if self.stream.isatty():
            # start-up time: tqdm loads only when a progress bar is shown
            from tqdm import tqdm

            # tqdm's own estimate knows nothing of the pacing to come, so the postfix carries ours.
            self.bar = tqdm(
                total=total,
                initial=done,
                unit="coin",
                file=self.stream,
                desc=label,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]",
            )

    def left(self) -> float:
        """Seconds left: the pace so far, or the rate limit's wait for the rest when that is longer."""
        remaining = self.total - self.done
        by_pace = (self.monotonic() - self.started) / max(1, self.done) * remaining if self.done else 0.0
        return max(by_pace, self.pacing(remaining))

    def step(self, coin_id: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(f"{coin_id}, about {_duration(self.left())} left", refresh=False)
            self.bar.update(1)
            return
        if self.done % self.every == 0 or self.done == self.total:
            log.info(
                "%s: %d of %s, about %s left", self.label, self.done, count(self.total, "coin"), _duration(self.left())
            )

    def waiting(self, seconds: float) -> None:
        """Say why nothing moves while the rate limit holds the next request back (short pauses pass unsaid)."""
        if seconds < 10:  # the plan's own pace (6 s a call on the public plan) goes unsaid
            return
        if self.bar is not None:
            self.bar.set_postfix_str(
                f"waiting {_duration(seconds)} for the rate limit, about {_duration(self.left())} left", refresh=True
            )
            return
        log.info(
            "%s: %d of %s, waiting %s for the rate limit, about %s left",
            self.label,
            self.done,
            count(self.total, "coin"),
            _duration(seconds),
            _duration(self.left()),
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


class Manifest:
    """Which coins of one backfill are fetched already (their raw answers' paths), so a rerun resumes."""

    def __init__(
        self, settings: Settings, vs_currency: str, span: DayRange, coins: tuple[str, ...], storage: Storage
    ) -> None:
        ident = f"{vs_currency}|{span.first}|{span.last}"
        name = f"backfill-{vs_currency}-{span.first}-{span.last}-{hashlib.sha256(ident.encode()).hexdigest()[:8]}"
        self.path = settings.layout.manifest(name)
        self.storage = storage
        data = read_json(self.path)
        self.done: dict[str, str] = {}
        if isinstance(data, dict) and isinstance(data.get("done"), dict):
            self.done = {c: p for c, p in data["done"].items() if c in coins and isinstance(p, str)}

    def answers(self, coin_id: str) -> list[Any] | None:
        """The stored answers of a coin fetched before, or None."""
        rel = self.done.get(coin_id)
        if rel is None:
            return None
        try:
            payload = json.loads(gzip.decompress(self.storage.read(rel) or b""))
            return payload["answers"]
        except (OSError, ValueError, KeyError, EOFError, TypeError, PipelineError):
            return None

    def mark(self, coin_id: str, archive: str) -> None:
        self.done[coin_id] = archive
        ensure_dir(self.path.parent)
        write_json_atomic(self.path, {"done": self.done})

    def finish(self) -> None:
        self.path.unlink(missing_ok=True)


@dataclass
class Fetched:
    """What fetch_days gathered: rows, rejections, the days answered without data, what was not written."""

    records: list[Record] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    unavailable: dict[tuple[str, str], set[date]] = field(default_factory=dict)
    unwritten: list[str] = field(default_factory=list)  # raw answers that could not be archived
    done: list[str] = field(default_factory=list)  # coins whose answers came


def fetch_days(
    client: CoinGeckoClient,
    storage: Storage,
    vs_currency: str,
    wanted: dict[str, set[date]],
    into: Fetched,
    *,
    plan: str,
    clock: Callable[[], datetime],
    purpose: str,
    failed: Callable[[str, ExtractError], bool],
    progress: Progress | None = None,
    manifest: Manifest | None = None,
    malformed: Callable[[str], str] | None = None,
) -> Fetched:
    """The one fetch loop of backfill, heal and seed: each coin's market_chart answers for its wanted days
    (one request per window, paced by the client's limiter; an interrupted backfill's stored answers reused),
    archived under raw/, turned into rows of the wanted days, with progress.

    `failed(coin, error)` decides about a coin CoinGecko refused: False skips the coin, True stops the loop
    (a currency refused), raising aborts. `malformed(coin)`, when given, says what to do after a malformed or empty answer.
    """
    for coin_id, days in wanted.items():
        span = DayRange(min(days), max(days))
        answers = manifest.answers(coin_id) if manifest else None
        if answers is None:
            try:
                answers = fetch_coin(client, coin_id, vs_currency, span, plan)
            except ExtractError as exc:
                if failed(coin_id, exc):
                    break
                if progress is not None:
                    progress.step(coin_id)
                continue
            try:
                archive = storage.archive(
                    clock(), f"market_chart_{coin_id}_{vs_currency}", chart_payload(coin_id, vs_currency, span, answers)
                )
                if manifest is not None:
                    manifest.mark(coin_id, archive)
            except (OSError, PipelineError) as exc:
                why = failure_text(exc, f"{storage.location}/raw")
                log.warning("could not archive the raw answer for %s (%s); the %s goes on", coin_id, why, purpose)
                into.unwritten.append(f"raw answer for {coin_id} ({why})")
        coin_records, coin_rejected = records_from(coin_id, vs_currency, answers, span)
        coin_records = [r for r in coin_records if date.fromisoformat(r.last_updated[:10]) in days]
        into.records.extend(coin_records)
        into.rejected.extend(coin_rejected)
        into.done.append(coin_id)
        if malformed is not None and not well_formed(answers):
            log.warning(
                "CoinGecko's answer for %s's missing days was malformed or empty; %s", coin_id, malformed(coin_id)
            )
        into.unavailable[(coin_id, vs_currency)] = lacking(days, coin_records, answers)
        if progress is not None:
            progress.step(coin_id)
    return into


def store_rows(storage: Storage, fetched: Fetched, now: datetime) -> MergeReport:
    """Fetched rows, completed with name, symbol and fetch time, merged into the history in one write."""
    return storage.merge(complete_rows(fetched.records, storage, now), unavailable=fetched.unavailable, checked=now)


def backfill_coins(settings: Settings, vs_currency: str) -> tuple[str, ...]:
    """The coins to backfill in one currency: --coins, plus the top N members the last run recorded."""
    if not settings.top:
        return settings.coins

    path = settings.layout.top_members
    members = TopMembers(path).members(vs_currency)[: settings.top]
    if not members:
        state = "does not exist" if not os.path.lexists(path) else "holds no top N for it"
        log.warning(
            "no top %d recorded in %s yet (%s %s): run `python main.py run --top %d` first",
            settings.top,
            vs_currency,
            display_path(path),
            state,
            settings.top,
        )
    return tuple(dict.fromkeys([*members, *settings.coins]))


def backfill(
    settings: Settings,
    client: CoinGeckoClient,
    *,
    clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    progress_stream: Any = None,
) -> BackfillResult:
    """Fetch each coin's daily points for the planned range in every currency (resuming), then merge them once.

    A currency CoinGecko refuses (an unknown code) is reported and skipped; the others go on.
    """
    started = time.monotonic()
    now = clock()
    span = plan_range(settings, now)
    storage = storage_for(settings)
    storage.preflight(settings.vs_currencies)  # the one file policy (top-members.json too), before any request
    plan = {vs: backfill_coins(settings, vs) for vs in settings.vs_currencies}
    total = sum(map(len, plan.values()))
    log.info(
        "backfill: %s in %s, %s to %s (%s)",
        count(len(set().union(*plan.values())), "coin"),
        ", ".join(settings.vs_currencies),
        span.first,
        span.last,
        count(span.days, "day"),
    )
    storage.check()  # a CSV that `run` would refuse is refused here too, before any request
    manifests = {vs: Manifest(settings, vs, span, coins, storage) for vs, coins in plan.items()}
    resumed = sum(len(m.done) for m in manifests.values())
    if resumed:
        log.info("backfill: resuming, %d of %s already fetched", resumed, count(total, "coin"))
    per_coin = len(windows(span, settings.api_plan))
    enforce(settings, f"backfill of {count(total - resumed, 'coin')}", (total - resumed) * per_coin)
    result = BackfillResult(currencies=settings.vs_currencies, span=span)
    progress = Progress(
        total,
        stream=progress_stream,
        monotonic=client.limiter.monotonic,
        pacing=lambda left: client.limiter.time_for(left * per_coin),
    )
    client.limiter.on_wait = progress.waiting
    calls_before = client.calls
    every_day = {span.first + timedelta(days=i) for i in range(span.days)}
    fetched = Fetched()
    try:
        for vs_currency, coins in plan.items():

            def failed(coin_id: str, exc: ExtractError, vs_currency: str = vs_currency) -> bool:
                """An unknown coin is skipped; a currency CoinGecko refuses stops that currency (of several)."""
                if exc.status == 404:
                    log.warning("CoinGecko does not know %s (%s); skipped", coin_id, exc)
                    result.missing.append(coin_id)
                    return False
                if exc.status == 400 and len(settings.vs_currencies) > 1:
                    log.warning("%s failed: %s", vs_currency, exc)
                    result.failed_currencies.append((vs_currency, str(exc)))
                    return True
                raise exc

            fetch_days(
                client,
                storage,
                vs_currency,
                dict.fromkeys(coins, every_day),
                fetched,
                plan=settings.api_plan,
                clock=clock,
                purpose="backfill",
                failed=failed,
                progress=progress,
                manifest=manifests[vs_currency],
            )
    finally:
        client.limiter.on_wait = None
        progress.close()
        result.requests = client.calls - calls_before
        result.paced_seconds = client.limiter.waited
        result.rejected.extend(fetched.rejected)
        result.coins_done.extend(fetched.done)
        result.unwritten.extend(fetched.unwritten)
    for line in rejection_lines(result.rejected):
        log.warning("%s", line)
    if not result.coins_done:
        why = "; ".join(f"{vs}: {reason}" for vs, reason in result.failed_currencies)
        raise ExtractError("no coin could be backfilled" + (f" ({why})" if why else "") + "; nothing was merged")
    result.merge = store_rows(storage, fetched, clock())
    for manifest in manifests.values():
        manifest.finish()
    result.seconds = time.monotonic() - started
    return result


def heal_gaps(
    settings: Settings,
    client: CoinGeckoClient,
    coins: tuple[str, ...],
    *,
    vs_currency: str | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    within: dict[str, list[tuple[int, int]]] | None = None,
    from_start: set[str] | frozenset[str] = frozenset(),
) -> tuple[int, int, tuple, tuple[str, ...]]:
    """Fill complete UTC days since each coin's first observation that have none, within the plan's reach.

    One request per coin with gaps; the gaps come from the index. `within` limits a coin to the day
    ranges given (a top-N coin: its days inside the top N); a coin in `from_start` is healed back to
    the currency's first observed day (--top-backfill). Returns (days filled, coins asked, new quality
    findings, side outputs not written).
    """
    vs_currency = vs_currency or settings.vs_currency
    within = within or {}
    now = clock()
    newest = newest_complete_day(now)
    earliest = earliest_reachable_day(settings.api_plan, now)
    storage = storage_for(settings)
    wanted: dict[str, list[date]] = {}
    with storage.index() as index:
        now_ms = int(now.timestamp() * 1000)
        start = index.first_day(vs_currency) if from_start else None
        for coin_id in coins:
            ranges = index.gaps(
                coin_id, vs_currency, now.date(), now_ms, since_day=start if coin_id in from_start else None
            )
            if coin_id in within:
                ranges = intersect(ranges, within[coin_id])
            days = [
                day_of(n)
                for a, b in ranges
                for n in range(max(a, day_number(earliest)) if earliest else a, min(b, day_number(newest)) + 1)
            ]
            if days:
                wanted[coin_id] = days
    if not wanted:
        return 0, 0, (), ()
    log.info(
        "healing %s of %s%s",
        count(sum(map(len, wanted.values())), "missing day"),
        count(len(wanted), "coin"),
        f" in {vs_currency}" if len(settings.vs_currencies) > 1 else "",
    )
    added, findings, unwritten = fill_days(settings, client, storage, vs_currency, wanted, clock=clock, purpose="heal")
    return added, len(wanted), findings, unwritten


def fill_days(
    settings: Settings,
    client: CoinGeckoClient,
    storage: Storage,
    vs_currency: str,
    wanted: dict[str, list[date]],
    *,
    clock: Callable[[], datetime],
    purpose: str,
    progress: Progress | None = None,
) -> tuple[int, tuple, tuple[str, ...]]:
    """Fetch each coin's wanted days (one request per coin and window), archive the answers, merge them once.

    A coin that fails is a warning (its days are asked for again next run). Returns (rows added, new findings,
    side outputs not written).
    """
    now = clock()
    # What fills a coin's days after a failure: the next run heals gaps, but a seed's days lie before the
    # coin's first observation, where healing never looks.
    heal = purpose == "heal"

    def backfill_hint(coin_id: str) -> str:
        return (
            f"`{settings.command_hint('backfill', '--days', str(settings.seed_days), '--coins', coin_id)}` fills them"
        )

    def failed(coin_id: str, exc: ExtractError) -> bool:
        again = "its days are asked for again next run" if heal else backfill_hint(coin_id)
        log.warning("could not %s %s: %s; %s", purpose, coin_id, exc, again)
        return False

    fetched = fetch_days(
        client,
        storage,
        vs_currency,
        {coin_id: set(days) for coin_id, days in wanted.items()},
        Fetched(),
        plan=settings.api_plan,
        clock=clock,
        purpose=purpose,
        failed=failed,
        progress=progress,
        malformed=(lambda coin_id: "they are asked for again next run") if heal else backfill_hint,
    )
    report = store_rows(storage, fetched, now)
    return report.added, report.findings, (*fetched.unwritten, *report.unwritten)


def seed_days(settings: Settings, now: datetime) -> list[date]:
    """The days a first run fills: the last --seed-days complete days, within the plan's reach (may be none)."""
    newest = newest_complete_day(now)
    first = newest - timedelta(days=settings.seed_days - 1)
    earliest = earliest_reachable_day(settings.api_plan, now)
    if earliest and first < earliest:
        first = earliest
    return [first + timedelta(days=i) for i in range((newest - first).days + 1)]


def seed(
    settings: Settings,
    client: CoinGeckoClient,
    coins: tuple[str, ...],
    *,
    vs_currency: str,
    clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    progress_stream: Any = None,
) -> tuple[int, tuple, tuple[str, ...]]:
    """A first run's history: the last --seed-days days of each coin, one request per coin, paced, with progress.

    Returns (rows added, new quality findings, side outputs not written).
    """
    days = seed_days(settings, clock()) if settings.seed_days else []
    if not days or not coins:
        return 0, (), ()
    log.info(
        "a new history: filling the last %s of %s%s, about %s at the rate limit (--seed-days %d; 0 turns it off)",
        count(len(days), "day"),
        count(len(coins), "coin"),
        f" in {vs_currency}" if len(settings.vs_currencies) > 1 else "",
        _duration(client.limiter.time_for(len(coins))),
        settings.seed_days,
    )
    progress = Progress(
        len(coins),
        stream=progress_stream,
        monotonic=client.limiter.monotonic,
        pacing=lambda left: client.limiter.time_for(left),
        label="seeding",
    )
    client.limiter.on_wait = progress.waiting
    try:
        return fill_days(
            settings,
            client,
            storage_for(settings),
            vs_currency,
            {c: days for c in coins},
            clock=clock,
            purpose="seed",
            progress=progress,
        )
    finally:
        client.limiter.on_wait = None
        progress.close()


def intersect(ranges: list[tuple[int, int]], allowed: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of sorted day ranges that lie inside any of the allowed ranges."""
    out = []
    for a, b in ranges:
        for lo, hi in allowed:
            first, last = max(a, lo), min(b, hi)
            if first <= last:
                out.append((first, last))
    return sorted(out)


def record_backfill(settings: Settings, result: BackfillResult | None, *, error: str = "") -> str | None:
    """The last backfill in status.json (when, which days, rows added, outcome), for `status` and the report.

    Returns None, or what was not written and why."""
    if settings.data_url is not None or not settings.data_dir.is_dir():
        return None
    span = result.span if result else None
    entry = {
        "finished_at": iso(datetime.now(timezone.utc)),
        "result": "failed" if result is None else "ok" if result.exit_code == EXIT_OK else "partial",
        "first_day": str(span.first) if span else "",
        "last_day": str(span.last) if span else "",
        "days": span.days if span else 0,
        "added": result.merge.added if result and result.merge else 0,
        "coins": len(set(result.coins_done)) if result else 0,
        "requests": result.requests if result else 0,
        "error": error,
    }
    return StatusFile(settings.layout.status).update(last_backfill=entry)


def backfill_command(settings: Settings, console: Console) -> int:
    """`backfill`: past daily points for every coin, merged once, then the charts redrawn when rows were added."""
    try:
        with make_client(settings, sleep=console.sleep) as client:
            result = backfill(settings, client)
    except PipelineError as exc:
        record_backfill(settings, None, error=str(exc))
        raise
    except KeyboardInterrupt:
        record_backfill(settings, None, error="interrupted; run the same backfill again and it resumes")
        raise
    where = display_path(result.merge.csv_path if result.merge else settings.csv_path)
    chart_error = None
    if settings.charts and result.merge and result.merge.added:
        _, chart_error = draw_charts(settings, storage_for(settings))
        if not chart_error:
            outcome = {"result": "ok", "summary": result.summary(where), "trigger": "backfill"}
            not_written = publish_report(settings, outcome=outcome)
            if not_written:  # the rows landed: the backfill is partial, and says what is missing
                result.unwritten.append(not_written)
    not_written = record_backfill(settings, result)
    if not_written:
        result.unwritten.append(not_written)
    summary = result.summary(where) + (f"; charts failed: {chart_error}" if chart_error else "")
    log.info("%s", summary)
    findings = result.merge.findings if result.merge else ()
    if findings:
        log.info("%s", summary_line(findings))
    return result.exit_code
