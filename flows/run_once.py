"""One run of the pipeline (extract -> archive -> transform -> load -> heal -> charts), shared by `run` and the daemon.

A run fetches every configured currency; one that fails (an unknown code, say) leaves the others
and makes the run partial. With --top it fetches the top N of each currency and records who
entered and who left.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from flows.backfill import heal_gaps, seed
from flows.budget import check_run
from flows.diagnose import last_seen, missing_ids_note, stale_notes, successor_note
from flows.views import draw_charts, publish_report
from lambdas.lambda_1_extract import archive_snapshot, fetch_tracked
from lambdas.lambda_2_transform import Rejected, TransformResult, rejection_lines, transform
from lambdas.lambda_3_load import load, record_membership
from lambdas.wiring import storage_for
from utils.clock import utc_now
from utils.coingecko.client import CoinGeckoClient, Offline
from utils.coingecko.plans import top_label, top_pages
from utils.daemon import Outcome
from utils.errors import EXIT_OK, EXIT_PARTIAL, AuthError, ExtractError, PipelineError
from utils.history.csv_store import LoadReport
from utils.history.files import failure_text
from utils.history.layout import display_path
from utils.history.locations import S3Storage
from utils.history.quality import Finding, summary_line
from utils.history.schema import Record, Snapshot
from utils.history.tracking import SearchMemory, TopMembers, shared_members, spell_ranges
from utils.settings import Settings
from utils.words import count

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
PROGRESS_PAGES = 10  # a top N of more pages than this shows its progress


@dataclass(frozen=True)
class RunResult:
    """The outcome of one run, for the summary line, the exit code and the daemon's status."""

    requested: tuple[str, ...]
    load: LoadReport
    missing: tuple[str, ...] = ()
    rejected: tuple[Rejected, ...] = ()
    seconds: float = 0.0
    chart_error: str | None = None
    charts: tuple[str, ...] = field(default=())
    healed: int = 0
    seeded: int = 0  # rows of past days a first run added (--seed-days)
    failed_currencies: tuple[tuple[str, str], ...] = ()  # (currency, why) for each currency that failed
    stale: tuple[str, ...] = ()  # "coin (currency) last updated ..." for each stale observation
    renamed: tuple[str, ...] = ()  # one note per requested id that stopped returning data
    findings: tuple[Finding, ...] = ()  # new quality findings of the load and the healing
    unwritten: tuple[str, ...] = ()  # side outputs that could not be written: "quality.csv (why)", ...

    @property
    def exit_code(self) -> int:
        # junk beside every requested coin is not partial; a currency that failed is, and so is a side output
        # (raw answer, findings, data package, report, status file) that could not be written after rows landed
        return EXIT_PARTIAL if self.incomplete_coins or self.failed_currencies or self.unwritten else EXIT_OK

    @property
    def incomplete_coins(self) -> tuple[str, ...]:
        """Coins to fetch again: left out by CoinGecko or rejected."""
        bad = set(self.missing) | {r.coin_id for r in self.rejected}
        return tuple(c for c in self.requested if c in bad)

    def outcome(self) -> Outcome:
        """The daemon's and the status file's view of this run."""
        summary = self.summary() + (f"; {self.quality_line()}" if self.findings else "")
        return Outcome(
            "ok" if self.exit_code == EXIT_OK else "partial",
            self.exit_code,
            self.load.appended,
            self.load.skipped_duplicates,
            len(self.rejected),
            self.incomplete_coins,
            self.chart_error,
            summary,
            warnings=self.stale + self.renamed,
        )

    def quality_line(self) -> str:
        """The line after the summary: 'quality: 2 findings (1 spike, 1 stale)'."""
        return summary_line(self.findings)

    def summary(self) -> str:
        """The one line a run prints on stderr."""
        word = "ok" if self.exit_code == EXIT_OK else "partial"
        got = len(self.requested) - len(self.incomplete_coins)
        coins = count(got, "coin") if not self.incomplete_coins else f"{got} of {count(len(self.requested), 'coin')}"
        skipped = self.load.skipped_duplicates
        parts = [
            coins,
            count(self.load.appended, "row") + " appended",
            count(skipped, "duplicate") + " skipped",
            f"{len(self.rejected)} rejected",
        ]
        if self.healed:
            parts.append(count(self.healed, "missing day") + " healed")
        if self.seeded:
            parts.append(count(self.seeded, "row") + " of past days seeded")
        if self.missing:
            parts.append(
                f"{len(self.missing)} missing ({', '.join(self.missing[:10])}"
                f"{', ...' if len(self.missing) > 10 else ''})"
            )
        if self.stale:
            parts.append(f"{len(self.stale)} stale")
        for currency, why in self.failed_currencies:
            parts.append(f"{currency} failed: {why}")
        line = f"run {word}: " + ", ".join(parts) + f" in {self.seconds:.1f} s -> {display_path(self.load.csv_path)}"
        if self.chart_error:
            line += f"; charts failed: {self.chart_error}"
        if self.unwritten:
            line += "; not written: " + "; ".join(self.unwritten)
        return line


class RunOnce:
    """The steps of one run, each a stage of lambdas/ plus what the run needs around it; main.py chains them."""

    def __init__(
        self,
        settings: Settings,
        client: CoinGeckoClient,
        *,
        clock: Clock = utc_now,
        coins: tuple[str, ...] | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.settings, self.client, self.clock, self.should_stop = settings, client, clock, should_stop
        self.retry = bool(coins)  # a daemon retry names the coins to fetch again: no top N then
        self.coins = coins or settings.coins
        self.started = time.monotonic()
        self.storage = storage_for(settings, should_stop)
        # a managed file that is a link, or a hard link onto another, is refused before any request (exit 2)
        self.storage.preflight(settings.vs_currencies)
        self.storage.check()  # a history this version cannot write is refused before any request
        # Healing and seeding merge past days: local histories and the Delta table on S3, not a CSV object on S3
        # (rewritten whole on every merge).
        self.merges = not isinstance(self.storage, S3Storage)
        self.members = (
            (
                shared_members(self.storage.read, settings.layout)
                if settings.data_url
                else TopMembers(settings.layout.top_members)
            )
            if settings.top
            else None
        )
        # so is a run the month's API credits cannot pay for
        check_run(settings, coins, seeding=lambda: self._seeding() and self._history_empty())
        self.snapshots: list[Snapshot] = []
        self.tops: dict[str, list[str]] = {}  # each currency's top N this run, best first
        self.gone: dict[str, list[str]] = {}  # each currency's tracked coins that CoinGecko lists no more
        self.failed: list[tuple[str, str]] = []
        self.transformed: TransformResult | None = None
        self.incomplete_rejected: list[Rejected] = []
        self.stale: list[str] = []
        self.renamed: list[str] = []
        self.report: LoadReport | None = None
        self.healed = 0
        self.seeded = 0  # rows a first run added for the days before it (--seed-days)
        self.empty_before = False
        self.findings: tuple[Finding, ...] = ()
        self.chart_paths: tuple[str, ...] = ()
        self.chart_error: str | None = None
        self.unwritten: list[str] = []  # side outputs that could not be written (the run is then partial)

    def extract(self) -> list[Snapshot]:
        """lambda_1_extract for each currency, raw answers archived; a currency that fails is noted, the rest go on."""
        first_error: ExtractError | None = None
        for vs_currency in self.settings.vs_currencies:
            try:
                snapshot = self._fetch(vs_currency)
            except (AuthError, Offline):
                raise  # the key or plan is wrong, or the host unreachable, for every currency alike
            except ExtractError as exc:
                self.failed.append((vs_currency, str(exc)))
                first_error = first_error or exc
                continue
            try:
                archive_snapshot(snapshot, self.storage)
            except (OSError, PipelineError) as exc:
                why = failure_text(exc, f"{self.storage.location}/raw")
                log.warning(
                    "could not archive the raw answer under %s/raw (%s); the run goes on", self.storage.location, why
                )
                self.unwritten.append(f"raw answer for {vs_currency} ({why})")
            self.snapshots.append(snapshot)
        if not self.snapshots:  # the error line says it all: no warning before it saying the same
            if len(self.failed) == 1 and first_error is not None:
                raise first_error
            raise ExtractError(
                "every currency failed: "
                + "; ".join(f"{vs}: {why}" for vs, why in self.failed)
                + "; nothing was appended"
            )
        return self.snapshots  # a currency that failed while others went on is named once, in the summary

    def _fetch(self, vs_currency: str) -> Snapshot:
        """One currency's /coins/markets answers by the rule Lambda shares: the top N plus the coins, or the coins."""
        top = None if self.retry else self.settings.top  # a daemon retry asks for the coins it names, by id
        members = tuple(self.members.members(vs_currency)) if top and self.members is not None else ()
        with PageProgress(top_pages(top) if top else 0, vs_currency) as progress:
            answer = fetch_tracked(
                top, self.coins, vs_currency, self.client, self.clock, members=members, progress=progress.step
            )
        if top:
            self.tops[vs_currency] = answer.top_ids
            self.gone[vs_currency] = answer.gone
            if answer.repeated:
                log.info(
                    "top %s in %s: %s seen twice while ranks moved between pages, stored once",
                    top_label(top),
                    vs_currency,
                    count(answer.repeated, "coin"),
                )
            if answer.gone:
                log.info(
                    "top %s in %s: %s no longer listed by CoinGecko (%s); their history is kept",
                    top_label(top),
                    vs_currency,
                    count(len(answer.gone), "coin"),
                    ", ".join(answer.gone[:10]) + (", ..." if len(answer.gone) > 10 else ""),
                )
        return answer.snapshot

    def transform(self, snapshots: list[Snapshot]) -> TransformResult:
        """lambda_2_transform for each currency: records and rejections; no usable row at all fails the run."""
        records: list[Record] = []
        rejected: list[Rejected] = []
        for snapshot in snapshots:
            result = transform(snapshot)
            stored = {record.coin_id for record in result.records}  # a coin that landed is complete in this currency
            self.incomplete_rejected.extend(r for r in result.rejected if r.coin_id not in stored)
            self.stale.extend(stale_notes(result.records))
            records.extend(result.records)
            rejected.extend(result.rejected)
        for line in rejection_lines(rejected):
            log.warning("%s", line)
        rows = sum(len(snapshot.rows) for snapshot in snapshots)
        unknown = self._missing_notes(self.missing(), empty_answer=not rows)
        if not records:
            note = "; ".join(filter(None, [*self.renamed, unknown]))
            why = (
                note
                if note and not rows
                else (
                    f"CoinGecko returned {count(rows, 'row')} for {count(len(self.requested()), 'requested coin')} "
                    "and none could be stored"
                )
            )
            raise ExtractError(f"no usable rows: {why}; nothing was appended")
        for line in [*self.renamed, *filter(None, [unknown])]:
            log.warning("%s", line)
        for note in self.stale:
            log.warning("stale: %s; stored, but CoinGecko may have stopped tracking it", note)
        self.transformed = TransformResult(records, rejected)
        return self.transformed

    def requested(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c for snapshot in self.snapshots for c in snapshot.requested))

    def missing(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c for snapshot in self.snapshots for c in snapshot.missing))

    def _missing_notes(self, missing: tuple[str, ...], *, empty_answer: bool = False) -> str | None:
        """Ids that returned data before get a successor (one /search per coin per day, remembered in the
        state) in self.renamed; the one line on ids never seen is returned.

        An answer with no row at all, for coins it returned before, is an outage on CoinGecko's side, not
        every coin renamed at once: one line, and no /search (which would spend the rate limit on nothing)."""
        if not missing:
            return None
        with self.storage.index() as index:
            known = last_seen(index, missing)
        if empty_answer and known:
            self.renamed = []
            return (
                f"CoinGecko answered no rows at all for {count(len(missing), 'coin')}, {len(known)} of which it returned "
                "before: probably a problem on its side; try again later (a daemon retries by itself)"
            )
        memory = SearchMemory(self.settings.layout.coin_searches)
        today = self.clock().date()
        self.renamed = [
            successor_note(self.client, memory, coin_id, known[coin_id], self.settings.coins, today)
            for coin_id in missing
            if coin_id in known
        ]
        never = tuple(c for c in missing if c not in known)
        check = self.settings.command_hint("check", "--coins", ",".join(never))
        note = missing_ids_note(self.client, never, memory=memory, today=today, check=check) if never else None
        memory.save()
        return note

    def load(self, result: TransformResult) -> LoadReport:
        """lambda_3_load: append what the history lacks; then record who entered and left each top N."""
        self.empty_before = self._seeding() and self._history_empty()
        self.report = load(result.records, self.storage)
        if self.members is not None and self.tops:
            changed = record_membership(
                self.storage,
                self.settings.layout,
                self.tops,
                self.gone,
                self.clock().date(),
                self.settings.top or 0,
                self.settings.coins,
            )
            for vs_currency, changes in changed.items():
                if changes.entered or changes.left:
                    log.info(
                        "top %s in %s: %d entered (%s), %d left (%s)",
                        top_label(self.settings.top or 0),
                        vs_currency,
                        len(changes.entered),
                        ", ".join(changes.entered[:10]),
                        len(changes.left),
                        ", ".join(changes.left[:10]),
                    )
            self.members = TopMembers(self.settings.layout.top_members)  # as recorded, for healing
        self.findings += self.report.findings
        self.unwritten += self.report.unwritten
        return self.report

    def _seeding(self) -> bool:
        """Whether this run may seed an empty history (healing on, --seed-days above 0, a local history)."""
        return bool(self.settings.heal and self.settings.seed_days and self.merges)

    def _history_empty(self) -> bool:
        with self.storage.index() as index:
            return index.rows == 0

    def heal(self) -> int:
        """Fill days missed while the pipeline was down, or seed a new history with its last --seed-days days
        (not after a stop is asked; a failure is a warning)."""
        if self.settings.heal and self.merges and not self.should_stop() and self.transformed:
            # Only coins that landed now: a missing coin is retried, and healing it too would add a second row that day.
            if self.empty_before:
                self.seeded, found, unwritten = seed_history(
                    self.settings, self.client, self.transformed.records, self.clock
                )
            else:
                self.healed, found, unwritten = heal(
                    self.settings, self.client, self.transformed.records, self.members, self.clock
                )
            self.findings += found
            self.unwritten += unwritten
        return self.healed + self.seeded

    def charts(self) -> tuple[str, ...]:
        """lambda_4_charts: redraw from the index (skipped once a stop is asked; a failure never fails the run)."""
        if self.settings.charts and not self.should_stop():
            self.chart_paths, self.chart_error = draw_charts(self.settings, self.storage)
        return self.chart_paths

    def result(self) -> RunResult:
        """The run's outcome, for the summary line, the exit code and the status file."""
        assert self.snapshots and self.transformed is not None and self.report is not None, (
            "result() comes after extract, transform and load"
        )
        return RunResult(
            requested=self.requested(),
            load=self.report,
            missing=self.missing(),
            rejected=tuple(self.incomplete_rejected),
            seconds=time.monotonic() - self.started,
            chart_error=self.chart_error,
            charts=self.chart_paths,
            healed=self.healed,
            seeded=self.seeded,
            failed_currencies=tuple(self.failed),
            stale=tuple(self.stale),
            renamed=tuple(self.renamed),
            findings=self.findings,
            unwritten=tuple(self.unwritten),
        )

    def write_report(self, result: RunResult) -> RunResult:
        """report.html after a run that drew the charts, beside the history; a report that could not be written
        makes the run partial and is named, never failed (the rows landed)."""
        if self.chart_paths:
            outcome = result.outcome()
            not_written = publish_report(
                self.settings,
                outcome={
                    "result": outcome.result,
                    "summary": outcome.summary,
                    "exit_code": result.exit_code,
                    "trigger": "run",
                    "finished_at": self.clock(),
                },
            )
            if not_written:
                return replace(result, unwritten=(*result.unwritten, not_written))
        return result


class PageProgress:
    """Progress through the ranking pages of a long top N (more than 10 pages): a tqdm bar on a terminal, else a log
    line every 10 pages."""

    def __init__(self, total: int, vs_currency: str, stream: Any = None) -> None:
        self.total, self.vs_currency = total, vs_currency
        self.stream = stream or sys.stderr
        self.bar = None
        self.shown = total > PROGRESS_PAGES
        if self.shown and self.stream.isatty():
            # start-up time: tqdm loads only when a progress bar is shown
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="page", file=self.stream, desc=f"top {vs_currency}", leave=False)

    def step(self, page: int, total: int) -> None:
        if not self.shown:
            return
        if self.bar is not None:
            self.bar.update(page - self.bar.n)
        elif page % PROGRESS_PAGES == 0:
            log.info("top in %s: page %d of at most %d", self.vs_currency, page, total)

    def __enter__(self) -> PageProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


def _in(settings: Settings, vs_currency: str) -> str:
    """' in usd' when a run fetches several currencies, so a warning says which one."""
    return f" in {vs_currency}" if len(settings.vs_currencies) > 1 else ""


def heal(
    settings: Settings, client: CoinGeckoClient, records: list[Record], members: TopMembers | None, clock: Clock
) -> tuple[int, tuple[Finding, ...], tuple[str, ...]]:
    """Fill days missing since each coin's first observation, per currency; a failure here never fails the run.

    A coin tracked only for its place in the top N is healed only on days it was inside (with
    --top-backfill: back to the start of the currency's history).
    """
    added = 0
    findings: tuple[Finding, ...] = ()
    unwritten: tuple[str, ...] = ()
    explicit = set(settings.coins)
    for vs_currency in settings.vs_currencies:
        landed = tuple(dict.fromkeys(r.coin_id for r in records if r.vs_currency == vs_currency))
        if not landed:
            continue
        within: dict[str, list[tuple[int, int]]] = {}
        from_start: set[str] = set()
        if members is not None:
            today = clock().date()
            for coin_id in landed:
                if coin_id in explicit:
                    continue
                if settings.top_backfill:
                    from_start.add(coin_id)
                else:
                    within[coin_id] = spell_ranges(members.spells(vs_currency, coin_id), today)
        try:
            filled, _, found, missed = heal_gaps(
                settings, client, landed, vs_currency=vs_currency, clock=clock, within=within, from_start=from_start
            )
        except PipelineError as exc:
            log.warning("could not heal gaps in the history%s: %s", _in(settings, vs_currency), exc)
            continue
        added += filled
        findings += found
        unwritten += missed
    return added, findings, unwritten


def seed_history(
    settings: Settings, client: CoinGeckoClient, records: list[Record], clock: Clock
) -> tuple[int, tuple[Finding, ...], tuple[str, ...]]:
    """A first run: the last --seed-days days of every coin that landed, per currency (a failure is a warning)."""
    added = 0
    findings: tuple[Finding, ...] = ()
    unwritten: tuple[str, ...] = ()
    for vs_currency in settings.vs_currencies:
        landed = tuple(dict.fromkeys(r.coin_id for r in records if r.vs_currency == vs_currency))
        try:
            filled, found, missed = seed(settings, client, landed, vs_currency=vs_currency, clock=clock)
        except PipelineError as exc:
            log.warning(
                "could not fill the new history's first days%s: %s; `%s` fills them",
                _in(settings, vs_currency),
                exc,
                settings.command_hint("backfill", "--days", str(settings.seed_days)),
            )
            continue
        added += filled
        findings += found
        unwritten += missed
    return added, findings, unwritten
