"""One run of the pipeline (extract -> archive -> transform -> load -> charts), shared by `run` and the daemon."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from lambdas.lambda_1_extract import archive_snapshot, extract
from lambdas.lambda_2_transform import Rejected, TransformResult, rejection_lines, transform
from flows.check import missing_ids_note
from lambdas.lambda_3_load import load
from utils.coingecko import CoinGeckoClient
from utils.daemon import Outcome
from utils.errors import EXIT_OK, EXIT_PARTIAL, ExtractError, PipelineError
from utils.settings import Settings
from utils.layout import display_path
from utils.quality import Finding, summary_line
from utils.schema import Snapshot
from utils.storage import Storage, storage_for
from utils.store import LoadReport

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


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
    findings: tuple[Finding, ...] = ()  # new quality findings of the load and the healing

    @property
    def exit_code(self) -> int:
        return EXIT_PARTIAL if self.incomplete_coins else EXIT_OK  # junk beside every requested coin is not partial

    @property
    def incomplete_coins(self) -> tuple[str, ...]:
        """Coins to fetch again: left out by CoinGecko or rejected."""
        bad = set(self.missing) | {r.coin_id for r in self.rejected}
        return tuple(c for c in self.requested if c in bad)

    def outcome(self) -> Outcome:
        """The daemon's and the status file's view of this run."""
        summary = self.summary() + (f"; {self.quality_line()}" if self.findings else "")
        return Outcome("ok" if self.exit_code == EXIT_OK else "partial", self.exit_code, self.load.appended,
                       self.load.skipped_duplicates, len(self.rejected),
                       self.incomplete_coins, self.chart_error, summary)

    def quality_line(self) -> str:
        """The line after the summary: 'quality: 2 findings (1 spike, 1 stale)'."""
        return summary_line(self.findings)

    def summary(self) -> str:
        """The one line a run prints on stderr."""
        word = "ok" if self.exit_code == EXIT_OK else "partial"
        got = len(self.requested) - len(self.incomplete_coins)
        coins = f"{got} coins" if word == "ok" else f"{got} of {len(self.requested)} coins"
        skipped = self.load.skipped_duplicates
        parts = [coins, f"{self.load.appended} rows appended", f"{skipped} duplicates skipped",
                 f"{len(self.rejected)} rejected"]
        if self.healed:
            parts.append(f"{self.healed} missing days healed")
        if self.missing:
            parts.append(f"{len(self.missing)} missing ({', '.join(self.missing[:10])}"
                         f"{', ...' if len(self.missing) > 10 else ''})")
        line = f"run {word}: " + ", ".join(parts) + f" in {self.seconds:.1f} s -> {display_path(self.load.csv_path)}"
        if self.chart_error:
            line += f"; charts failed: {self.chart_error}"
        return line


class RunOnce:
    """The steps of one run, each a stage of lambdas/ plus what the run needs around it; main.py chains them."""

    def __init__(self, settings: Settings, client: CoinGeckoClient, *, clock: Clock = utc_now,
                 coins: tuple[str, ...] | None = None, should_stop: Callable[[], bool] = lambda: False) -> None:
        self.settings, self.client, self.clock, self.should_stop = settings, client, clock, should_stop
        self.coins = coins or settings.coins
        self.started = time.monotonic()
        self.storage = storage_for(settings)
        self.storage.check()  # a history this version cannot write is refused before any request
        self.snapshot: Snapshot | None = None
        self.transformed: TransformResult | None = None
        self.report: LoadReport | None = None
        self.healed = 0
        self.findings: tuple[Finding, ...] = ()
        self.chart_paths: tuple[str, ...] = ()
        self.chart_error: str | None = None

    def extract(self) -> Snapshot:
        """lambda_1_extract: fetch the coins, and keep the raw answer (a failure to archive is only a warning)."""
        snapshot = extract(self.coins, self.settings.vs_currency, self.client, self.clock)
        try:
            archive_snapshot(snapshot, self.storage)
        except (OSError, PipelineError) as exc:
            log.warning("could not archive the raw answer under %s/raw (%s); the run goes on", self.storage.location,
                        getattr(exc, "strerror", None) or exc)
        self.snapshot = snapshot
        return snapshot

    def transform(self, snapshot: Snapshot) -> TransformResult:
        """lambda_2_transform: records and rejections; no usable row at all fails the run."""
        result = transform(snapshot)
        for line in rejection_lines(result.rejected):
            log.warning("%s", line)
        missing_note = missing_ids_note(self.client, snapshot.missing) if snapshot.missing else None
        if not result.records:
            why = (missing_note if missing_note and not snapshot.rows else f"CoinGecko returned "
                   f"{len(snapshot.rows)} rows for {len(self.coins)} requested coins and none could be stored")
            raise ExtractError(f"no usable rows: {why}; nothing was appended")
        if missing_note:
            log.warning("%s", missing_note)
        self.transformed = result
        return result

    def load(self, result: TransformResult) -> LoadReport:
        """lambda_3_load: append what the history lacks."""
        self.report = load(result.records, self.storage)
        self.findings += self.report.findings
        return self.report

    def heal(self) -> int:
        """Fill days missed while the pipeline was down (not after a stop is asked; a failure is a warning)."""
        if self.settings.heal and self.settings.data_url is None and not self.should_stop() and self.transformed:
            # Only coins that landed now: a missing coin is retried, and healing it too would add a second row that day.
            landed = tuple(dict.fromkeys(record.coin_id for record in self.transformed.records))
            self.healed, found = heal(self.settings, self.client, landed, self.clock)
            self.findings += found
        return self.healed

    def charts(self) -> tuple[str, ...]:
        """lambda_4_charts: redraw from the index (skipped once a stop is asked; a failure never fails the run)."""
        if self.settings.charts and not self.should_stop():
            self.chart_paths, self.chart_error = draw_charts(self.settings, self.storage)
        return self.chart_paths

    def result(self) -> RunResult:
        """The run's outcome, for the summary line, the exit code and the status file."""
        assert self.snapshot is not None and self.transformed is not None and self.report is not None, \
            "result() comes after extract, transform and load"
        stored = {record.coin_id for record in self.transformed.records}  # a coin that landed is complete
        rejected = tuple(r for r in self.transformed.rejected if r.coin_id not in stored)
        return RunResult(requested=self.coins, load=self.report, missing=self.snapshot.missing, rejected=rejected,
                         seconds=time.monotonic() - self.started, chart_error=self.chart_error,
                         charts=self.chart_paths, healed=self.healed, findings=self.findings)

    def write_report(self, result: RunResult) -> None:
        """data/report.html after a run that drew the charts (local histories; a failure is only a warning)."""
        if self.chart_paths and self.settings.data_url is None:
            from flows.report import publish_report

            outcome = result.outcome()
            publish_report(self.settings, outcome={"result": outcome.result, "summary": outcome.summary,
                                                   "exit_code": result.exit_code, "trigger": "run",
                                                   "finished_at": self.clock()})


def heal(settings: Settings, client: CoinGeckoClient, coins: tuple[str, ...],
         clock: Clock) -> tuple[int, tuple[Finding, ...]]:
    """Fill days missing since each coin's first observation; a failure here never fails the run."""
    from flows.backfill import heal_gaps

    try:
        added, _, findings = heal_gaps(settings, client, coins, clock=clock)
    except PipelineError as exc:
        log.warning("could not heal gaps in the history: %s", exc)
        return 0, ()
    return added, findings


def draw_charts(settings: Settings, storage: Storage) -> tuple[tuple[str, ...], str | None]:
    """Charts after a run: a failure is reported, never fatal, because the CSV already landed."""
    try:
        from lambdas.lambda_4_charts import charts
        from utils.visualization import chart_options

        return charts(storage, chart_options(settings))[0], None
    except Exception as exc:  # noqa: BLE001 - charts are a view; the data run must not fail because of them
        log.debug("chart failure", exc_info=True)
        return (), str(exc) or type(exc).__name__
