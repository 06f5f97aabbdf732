"""The views a run, a backfill and `report` redraw: the charts and data/report.html (the one-page report).

Both are views of the history: drawing them never fails the run that landed the data.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from lambdas.wiring import chart_options, storage_for
from utils.clock import DAY_MS, day_number, day_of
from utils.daemon import StatusFile
from utils.errors import LoadError
from utils.history.files import atomic_write_bytes, describe_os_error
from utils.history.index import HistoryIndex
from utils.history.layout import CHART_NAMES, display_path
from utils.history.locations import Storage
from utils.history.quality import RULE_WORDS, QualityLog
from utils.history.tracking import TopMembers
from utils.options import command_default
from utils.settings import Settings
from utils.views.html_report import Chart, CoinRow, ReportData, png_data_uri, render
from utils.words import count

if TYPE_CHECKING:  # matplotlib loads only when charts are drawn
    from utils.charts.data import ChartOptions

log = logging.getLogger(__name__)


def tracked_selection(settings: Settings) -> tuple[tuple[str, ...], frozenset[str] | None]:
    """The currencies and coins the most recent run or daemon tracked (status.json), for the views.

    (currencies, coins): the first currency keeps the plain chart names; coins None when no run recorded its
    selection (every coin of the history is shown then). A top-N run's coins are its members now, plus --coins.
    """
    if settings.command in ("run", "daemon"):  # the run drawing the charts is the most recent one
        currencies, coins, top = settings.vs_currencies, set(settings.coins), settings.top or 0
    else:
        status = StatusFile(settings.layout.status).read() if settings.data_url is None else {}
        currencies = tuple(status.get("tracked_currencies") or ()) or settings.vs_currencies
        if "tracked_ids" not in status:
            return currencies, None
        coins, top = set(status["tracked_ids"]), status.get("tracked_top") or 0
    if top:
        members = TopMembers(settings.layout.top_members)
        for currency in currencies:
            coins.update(members.members(currency)[:top])
    return currencies, frozenset(coins)


Selection = tuple[tuple[str, ...], frozenset[str] | None]  # what tracked_selection returns


def view_options(settings: Settings, selection: Selection | None = None) -> ChartOptions:
    """Chart options from the settings and the last run's selection: a currency's charts keep their names
    whatever command draws them, and the coins drawn are the ones tracked now (unless --plot-coins)."""
    currencies, coins = selection or tracked_selection(settings)
    options = chart_options(settings)
    return replace(options, primary=currencies[0], tracked=coins)


def draw_charts(
    settings: Settings, storage: Storage, selection: Selection | None = None
) -> tuple[tuple[str, ...], str | None]:
    """Charts of every currency after a run: a failure is reported, never fatal, because the CSV already landed."""
    try:
        from lambdas.lambda_4_charts import charts  # start-up time: matplotlib loads only when charts are drawn

        return charts(storage, view_options(settings, selection), every_currency=True)[0], None
    except Exception as exc:  # noqa: BLE001 - charts are a view; the data run must not fail because of them
        log.debug("chart failure", exc_info=True)
        return (), str(exc) or type(exc).__name__


FINDING_DAYS = command_default("days", "quality")  # 30: the findings `quality` and the report show
CHART_TITLES = dict(zip(CHART_NAMES, ("Price trend", "Market-cap trend", "Performance")))


def _utc(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M")


REPORT_TOP = 100  # a large history's table: the largest coins by the newest market cap ...
REPORT_MOVERS = 5  # ... and the day's biggest movers outside them
LARGE_HISTORY_COINS = 200  # past this many coins, the table shows those only


def coin_rows(
    index: HistoryIndex, vs_currency: str, today: datetime, findings: Counter, coins: list[str] | None = None
) -> list[CoinRow]:
    """Each coin's (or each of `coins`') newest daily point with its 1/7/30-day changes and coverage, by rank."""
    series = {s.coin_id: s for s in index.series(vs_currency, coins=coins)}
    out: list[CoinRow] = []
    latest = index.latest(vs_currency, coins)
    days = [ts // DAY_MS for _, ts, _, _, _ in latest]
    # One query for the 30 days before every coin's newest point, not one per coin (each reads those days whole).
    history = (
        index.points_of([(row[0], vs_currency) for row in latest], min(days) - 30, max(days) - 1) if latest else {}
    )
    for coin_id, ts, price, cap, rank in latest:
        info = series.get(coin_id)
        if info is None:
            continue
        day = ts // DAY_MS
        earlier = {
            t // DAY_MS: p for t, p, _ in history.get((coin_id, vs_currency), ()) if day - 30 <= t // DAY_MS < day
        }

        def change(days: int) -> float | None:
            then = earlier.get(day - days)
            return price / then - 1 if price is not None and then else None

        missing = info.missing_count(today.date())
        yesterday = day_number(today.date()) - 1  # "to yesterday": today's 00:00 point is not counted
        present = sum(min(b, yesterday) - a + 1 for a, b in info.covered if a <= yesterday)
        out.append(
            CoinRow(
                coin_id,
                info.name,
                info.symbol,
                _utc(ts),
                price,
                change(1),
                change(7),
                change(30),
                cap,
                rank,
                str(day_of(info.first_day)),
                present,
                missing,
                findings[coin_id],
            )
        )
    out.sort(key=lambda c: (c.rank is None, c.rank or 0, c.coin_id))
    return out


def last_run(settings: Settings, outcome: dict[str, Any] | None) -> dict[str, Any] | None:
    """The run just finished when given, else the one status.json recorded."""
    if outcome is not None:
        done = dict(outcome)
        moment = done.get("finished_at")
        if isinstance(moment, datetime):
            done["finished_at"] = moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        return done
    recorded = StatusFile(settings.layout.status).read().get("last_run")
    if not isinstance(recorded, dict):
        return None
    return {k: recorded.get(k) for k in ("result", "finished_at", "trigger", "error", "exit_code")} | {
        "summary": None,
        "finished_at": str(recorded.get("finished_at") or "").replace("T", " ")[:19],
    }


def last_backfill(settings: Settings) -> dict[str, Any] | None:
    """The last backfill status.json recorded, its time as the page shows times."""
    recorded = StatusFile(settings.layout.status).read().get("last_backfill")
    if not isinstance(recorded, dict):
        return None
    return recorded | {"finished_at": str(recorded.get("finished_at") or "").replace("T", " ")[:19]}


def build_report(
    settings: Settings,
    *,
    outcome: dict[str, Any] | None = None,
    now: datetime | None = None,
    selection: Selection | None = None,
) -> ReportData:
    """Gather what the page shows: index, quality.csv, status and the charts already drawn."""
    now = now or datetime.now(timezone.utc)
    layout = settings.layout
    findings = QualityLog(layout.quality).since(now - timedelta(days=FINDING_DAYS))
    with storage_for(settings).index() as index:
        currencies = index.currencies()
        vs = settings.vs_currency if settings.vs_currency in currencies or not currencies else currencies[0]
        in_currency = [f for f in findings if f.vs_currency == vs]
        held = index.coin_count(vs)
        shown = None
        if held > LARGE_HISTORY_COINS:
            top, movers = index.leaders(vs, REPORT_TOP, REPORT_MOVERS)
            shown = top + movers
        coins = coin_rows(index, vs, now, Counter(f.coin_id for f in in_currency), shown)
        rows = index.rows
    tracked_currencies, tracked = selection or tracked_selection(settings)
    every = len(coins)
    if tracked is not None and any(c.coin_id in tracked for c in coins):  # the tables follow the charts' rule
        coins = [c for c in coins if c.coin_id in tracked]
    charts = [
        Chart(CHART_TITLES[name], png_data_uri(path))
        for name, path in zip(CHART_NAMES, layout.charts_of(vs, tracked_currencies[0]))
        if path.is_file()
    ]
    notes = []
    if every > len(coins):
        notes.append(
            f"This page shows the {count(len(coins), 'coin')} the last run tracked; the history holds {every - len(coins)} "
            "more from earlier runs (kept in the CSV; `python main.py plot --plot-coins ID,ID` charts any of them)."
        )
    if len(currencies) > 1:
        notes.append(
            f"The history also holds {', '.join(c for c in currencies if c != vs)}; this page shows {vs} "
            "(choose with --vs-currency)."
        )
    if shown is not None:
        notes.append(
            f"The history holds {held:,} coins in {vs}; the table shows the {len(top)} largest by the newest "
            f"market cap and the day's {len(movers)} biggest movers (`python main.py top --date` lists "
            "any day's whole ranking)."
        )
    counts = Counter(f.rule for f in in_currency)
    return ReportData(
        generated_at=now.strftime("%Y-%m-%d %H:%M UTC"),
        vs_currency=vs,
        csv_name=layout.csv.name,
        rows=rows,
        coins=coins,
        charts=charts,
        findings=list(reversed(in_currency)),
        finding_counts={RULE_WORDS[r]: n for r, n in counts.most_common()},
        last_run=last_run(settings, outcome),
        days=FINDING_DAYS,
        notes=notes,
        last_backfill=last_backfill(settings),
    )


def write_report(settings: Settings, *, outcome: dict[str, Any] | None = None, draw: bool = True) -> str:
    """Draw the charts (when asked and possible), then write report.html beside the history (an S3 object
    for s3://); returns where it went. Raises PipelineError."""
    storage = storage_for(settings)
    selection = tracked_selection(settings)  # once for the charts and the tables: 17,000 coins' spells to read
    if draw:
        storage.preflight(settings.vs_currencies)  # the one file policy, before anything is written
        _, error = draw_charts(settings, storage, selection)
        if error:
            log.warning("the report goes without fresh charts: %s", error)
    storage.pull(settings.layout.quality.name)  # findings stored beside an S3 history, read from a local copy
    html = render(build_report(settings, outcome=outcome, selection=selection))
    path = settings.layout.report
    try:
        atomic_write_bytes(path, html.encode("utf-8"), "report")
    except OSError as exc:
        raise LoadError(describe_os_error(exc, path, "write the report to")) from None
    return storage.publish_file(path)


def publish_report(settings: Settings, *, outcome: dict[str, Any] | None = None) -> str | None:
    """The report after a run that drew the charts: a failure is a warning, the data already landed.

    Returns None, or what was not written and why (the run is then partial)."""
    try:
        write_report(settings, outcome=outcome, draw=False)
    except Exception as exc:  # noqa: BLE001 - the report is a view; the run must not fail because of it
        log.debug("report failure", exc_info=True)
        log.warning("could not write %s: %s", display_path(settings.layout.report), exc)
        return f"{settings.layout.report.name} ({exc})"
    return None
