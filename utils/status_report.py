"""`python main.py status`: the last run, the next run and the history's coverage, for a human."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime, timezone

from utils.daemon import StatusFile, parse_iso
from utils.errors import EXIT_FAILED, EXIT_OK
from utils.gaps import coverage, ranges, read_observations
from utils.pipeline import display_path
from utils.settings import Settings


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


def print_status(settings: Settings, out: Callable[[str], None] = print,
                 now: datetime | None = None) -> int:
    """Print the status; exit 1 when there is neither a history nor a recorded run."""
    now = now or datetime.now(timezone.utc)
    status = StatusFile(settings.state_dir / "status.json").read()
    csv_path = settings.csv_path
    has_csv = csv_path.is_file()
    if not status and not has_csv:
        out(f"no history yet at {display_path(csv_path)}: run `python main.py` first")
        return EXIT_FAILED
    last = status.get("last_run") if isinstance(status.get("last_run"), dict) else None
    if last:
        counts = (f"{last.get('appended', 0)} appended, {last.get('duplicates', 0)} duplicates skipped, "
                  f"{last.get('rejected', 0)} rejected")
        out(f"last run:     {_when(last.get('finished_at'))}: {last.get('result', '?')} "
            f"(exit {last.get('exit_code', '?')}; {counts}; {last.get('trigger', 'run')})")
        if last.get("error"):
            out(f"              {last['error']}")
        if last.get("incomplete_coins"):
            out(f"              incomplete: {', '.join(last['incomplete_coins'])}")
    else:
        out("last run:     none recorded")
    out(f"last success: {_when(status.get('last_success'))}")
    pid = status.get("daemon_pid")
    if _pid_alive(pid):
        out(f"next run:     {_when(status.get('next_run'))} (daemon PID {pid}, daily at {status.get('at', '?')} "
            f"{status.get('timezone', '')})")
    else:
        out("next run:     no daemon running (start one with `python main.py daemon`)")
    if not has_csv:
        out(f"history:      none yet at {display_path(csv_path)}")
        return EXIT_OK
    info = coverage(read_observations(csv_path), settings.vs_currency, now.date())
    out(f"history:      {display_path(csv_path)}: {info.rows} rows in {settings.vs_currency}, "
        f"{len(info.coins)} coins")
    if info.rows:
        out(f"observations: first {info.first:%Y-%m-%d %H:%M} UTC, last {info.last:%Y-%m-%d %H:%M} UTC")
        out(f"coins:        {', '.join(info.coins[:30])}{' ...' if len(info.coins) > 30 else ''}")
        if info.total_missing:
            out(f"days missing: {info.total_missing} coin-days without any observation "
                f"(`python main.py backfill` fills them)")
            for coin_id, days in list(info.missing_days.items())[:20]:
                spans = ", ".join(str(a) if a == b else f"{a}..{b}" for a, b in ranges(days)[:5])
                out(f"              {coin_id}: {len(days)} ({spans}{', ...' if len(ranges(days)) > 5 else ''})")
        else:
            out("days missing: none")
    return EXIT_OK
