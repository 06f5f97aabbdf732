"""`python main.py status`: the last run, the next run and the history's coverage, for a human."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from flows.budget import usage
from flows.top import describe_tracking
from flows.wiring import Console
from lambdas.wiring import storage_for
from utils.clock import day_number, day_of
from utils.coingecko.plans import FREE_REACH_DAYS, PAID_REACH, earliest_reachable_day
from utils.daemon import StatusFile, parse_iso
from utils.errors import EXIT_FAILED, EXIT_OK
from utils.history.csv_store import LegacyHistory
from utils.history.index import HistoryIndex, Range, SeriesInfo, subtract
from utils.history.layout import display_path
from utils.history.locations import refuse_file_as_data_dir
from utils.history.quality import RULE_WORDS, QualityLog
from utils.settings import Settings
from utils.words import count


def _when(text: object) -> str:
    moment = parse_iso(text)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "never"


def _pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def print_status(settings: Settings, out: Callable[[str], None] = print, now: datetime | None = None) -> int:
    """Print the status; exit 1 when there is neither a history nor a recorded run."""
    now = now or datetime.now(timezone.utc)
    if settings.data_url is None:
        refuse_file_as_data_dir(settings.data_dir)
    status = StatusFile(settings.layout.status).read()
    csv_path: Path | str = settings.csv_path
    storage = None
    if settings.data_url or settings.data_dir.is_dir():
        storage = storage_for(settings)
        csv_path = storage.csv_display
    # A folder or an unreadable file in the CSV's place is an error, not "no history".
    has_csv = storage is not None and storage.has_history()
    if not status and not has_csv:
        out(f"no history yet at {display_path(csv_path)}: run `{settings.run_hint}` first")
        return EXIT_FAILED
    last = status.get("last_run") if isinstance(status.get("last_run"), dict) else None
    if last:
        counts = (
            f"{last.get('appended', 0)} appended, {count(int(last.get('duplicates', 0) or 0), 'duplicate')} skipped, "
            f"{last.get('rejected', 0)} rejected"
        )
        out(
            f"last run:     {_when(last.get('finished_at'))}: {last.get('result', '?')} "
            f"(exit {last.get('exit_code', '?')}; {counts}; {last.get('trigger', 'run')})"
        )
        if last.get("error"):
            out(f"              {last['error']}")
        if last.get("incomplete_coins"):
            out(f"              incomplete: {', '.join(last['incomplete_coins'])}")
        for warning in (last.get("warnings") or [])[:20]:
            out(f"              warning: {warning}")
    else:
        out("last run:     none recorded")
    out(f"last success: {_when(status.get('last_success'))}")
    out(backfill_line(status.get("last_backfill")))
    out(f"credits:      {usage(settings).line()}")
    out(quality_counts(settings, now))
    pid = status.get("daemon_pid")
    if _pid_alive(pid):
        out(
            f"next run:     {_when(status.get('next_run'))} (daemon PID {pid}, daily at {status.get('at', '?')} "
            f"{status.get('timezone', '')})"
        )
    else:
        out(f"next run:     no daemon running (start one with `{settings.command_hint('daemon')}`)")
    describe_tracking(settings, now, out)
    if not has_csv or storage is None:
        out(f"history:      none yet at {display_path(csv_path)}")
        return EXIT_OK
    try:
        with storage.index() as index:
            currencies = index.currencies()
            series = index.series()
            rows, damaged = index.rows, index.damaged
            out(
                f"history:      {display_path(csv_path)}: {count(rows, 'row')}, {count(len({s.coin_id for s in series}), 'coin')}"
                + (f" in {', '.join(currencies)}" if currencies else "")
                + (f"; {damaged} damaged lines skipped (not valid rows)" if damaged else "")
            )
            for currency in currencies or [settings.vs_currency]:
                in_currency = [s for s in series if s.vs_currency == currency]
                describe_currency(currency, in_currency, now, out)
                if in_currency:
                    describe_missing(settings, currency, in_currency, index, now, out)
    except LegacyHistory as exc:
        out(f"history:      {exc}")
        return EXIT_OK
    return EXIT_OK


def backfill_line(last: dict | None) -> str:
    """'last backfill: 2026-12-04 12:00:00 UTC: ok, 30 days (2026-11-04..2026-12-03), 9 coins, 270 rows added'."""
    if not last:
        return "last backfill: none recorded"
    line = f"last backfill: {_when(last.get('finished_at'))}: {last.get('result', '?')}"
    if last.get("days"):
        line += (
            f", {count(last['days'], 'day')} ({last.get('first_day')}..{last.get('last_day')}), "
            f"{count(last.get('coins', 0), 'coin')}, {count(last.get('added', 0), 'row')} added"
        )
    if last.get("error"):
        line += f"; {last['error']}"
    return line


def describe_currency(currency: str, series: list[SeriesInfo], now: datetime, out: Callable[[str], None]) -> None:
    """Rows, coins, first and last observation and the days missing of one quote currency."""
    if not series:
        out(f"{currency}:          no rows")
        return
    rows = sum(s.rows for s in series)
    first = datetime.fromtimestamp(min(s.first_ms for s in series) / 1000, timezone.utc)
    last = datetime.fromtimestamp(max(s.last_ms for s in series) / 1000, timezone.utc)
    coins = sorted(s.coin_id for s in series)
    out(f"{currency}:          {count(rows, 'row')} in {currency}, {count(len(coins), 'coin')}")
    out(f"observations: first {first:%Y-%m-%d %H:%M} UTC, last {last:%Y-%m-%d %H:%M} UTC")
    out(f"coins:        {', '.join(coins[:30])}{' ...' if len(coins) > 30 else ''}")


def describe_missing(
    settings: Settings,
    currency: str,
    series: list[SeriesInfo],
    index: HistoryIndex,
    now: datetime,
    out: Callable[[str], None],
) -> None:
    """The days without an observation, split by what can fill them: a backfill (within the plan's reach),
    nothing on this plan (older), nothing at all (CoinGecko had no data for them)."""
    today = now.date()
    now_ms = int(now.timestamp() * 1000)
    earliest = earliest_reachable_day(settings.api_plan, now)
    reach = day_number(earliest) if earliest else None
    fillable: dict[str, list[Range]] = {}
    beyond: dict[str, list[Range]] = {}
    none_there = 0
    unavailable = index.unavailable_by_coin(currency, now_ms)  # days CoinGecko answered without
    for info in series:
        gaps = info.missing(today)
        for hole in unavailable.get(info.coin_id, ()):
            before = sum(b - a + 1 for a, b in gaps)
            gaps = [part for gap in gaps for part in subtract(gap, [hole])]
            none_there += before - sum(b - a + 1 for a, b in gaps)
        for a, b in gaps:
            if reach is not None and a < reach:
                beyond.setdefault(info.coin_id, []).append((a, min(b, reach - 1)))
            if reach is None or b >= reach:
                fillable.setdefault(info.coin_id, []).append((max(a, reach) if reach is not None else a, b))
    if not fillable and not beyond and not none_there:
        out("days missing: none")
        return
    if fillable:
        first = min(a for spans in fillable.values() for a, _ in spans)
        out(
            f"days missing: {_coin_days(fillable)} within the {settings.api_plan} plan's reach: "
            f"`{backfill_hint(settings, currency, sorted(fillable), day_of(first))}` fills them"
        )
        _list_spans(fillable, out)
    if beyond:
        out(
            f"days missing: {_coin_days(beyond)} before {earliest}, older than the {settings.api_plan} plan reaches "
            f"(the past {FREE_REACH_DAYS} days): no command can fill them on this plan; a paid plan "
            f"(`--api-plan pro`) reaches back to {PAID_REACH}"
        )
        _list_spans(beyond, out)
    if none_there:
        out(f"days missing: {count(none_there, 'coin-day')} CoinGecko answered without data (not asked again)")


def backfill_hint(settings: Settings, currency: str, coins: list[str], first: date) -> str:
    """The backfill command that fills these coins' days in this currency: only the options it needs."""
    parts = ["backfill", f"--since {first}"]
    if set(coins) != set(settings.coins):  # only the coins with days to fill: one request each
        parts.append(f"--coins {','.join(coins)}")
    if currency not in settings.vs_currencies:
        parts.append(f"--vs-currency {currency}")
    return settings.command_hint(*parts)


def _coin_days(spans: dict[str, list[Range]]) -> str:
    return count(sum(b - a + 1 for ranges in spans.values() for a, b in ranges), "coin-day")


def _list_spans(missing: dict[str, list[Range]], out: Callable[[str], None]) -> None:
    for coin_id, spans in sorted(missing.items())[:20]:
        days = sum(b - a + 1 for a, b in spans)
        text = ", ".join(str(day_of(a)) if a == b else f"{day_of(a)}..{day_of(b)}" for a, b in spans[:5])
        out(f"              {coin_id}: {days} ({text}{', ...' if len(spans) > 5 else ''})")
    if len(missing) > 20:
        out(f"              and {count(len(missing) - 20, 'more coin')}")


def quality_counts(settings: Settings, now: datetime) -> str:
    """The last 30 days' quality findings, counted by rule."""
    counts = Counter(f.rule for f in QualityLog(settings.layout.quality).since(now - timedelta(days=30)))
    if not counts:
        return "quality:      no findings in the last 30 days"
    total = sum(counts.values())
    return (
        f"quality:      {total} finding{'s' if total != 1 else ''} in the last 30 days ("
        + ", ".join(f"{n} {RULE_WORDS[r]}" for r, n in counts.most_common())
        + "): `python main.py quality` lists them"
    )


def status_command(settings: Settings, console: Console) -> int:
    """`status`: the last run, the next run and the history's coverage."""
    return print_status(settings, out=console.out)
