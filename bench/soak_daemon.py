"""Soak test of the daemon: N simulated days (default 1,000) against the local fake CoinGecko, with charts.

Requirement: "1,000 simulated days against the local fake API, with charts; prints peak memory at day 10 and
day 1,000 (growth under 20 MB) and open file descriptors (no growth)."

The daemon is built like `flows.daemon.daemon_command` builds it (DaemonLock held; job = flows.run.run_pipeline with a real
CoinGeckoClient from make_client, returning RunResult.outcome()), with the differences that make time simulated:
  * the daemon reads a FakeClock that starts at 2024-01-01T00:00Z (daily run 00:00 UTC), its `wait` advances that
    clock, and run_pipeline gets the same clock (in the real daemon both are the wall clock);
  * before each daily run the fake API moves every coin's last_updated forward one day (the data is rebased so it
    is 5 minutes old at the first run), so every day brings one new row per coin;
  * the client's sleep between HTTP retries is a no-op, so nothing really sleeps.
Faults strike once each on days 2-8 (so every code path has run before the day-10 baseline), then periodically:
a 503 and a TCP reset the client retries, a Cloudflare 403 and six 503s that fail the run (the daemon retries
5 minutes later), a coin missing (a partial run, retried for that coin), and a lost day (the API answers [] all day;
the next day's run heals the gap from /coins/{id}/market_chart/range, which the fake serves).

Measured at day 10, every --every days and the last day: RSS (/proc/self/statm), peak RSS (ru_maxrss), open fds,
threads, gc objects, Python allocated blocks, CSV rows, pyplot open figures. Verdicts: peak and current RSS growth
day 10 -> last day under 20 MB, no fd growth, the CSV holds every (coin, day) exactly once and no duplicate
(coin_id, vs_currency, last_updated), and the daemon loop survived.

Run from the repo root:  python bench/soak_daemon.py [--days 1000] [--max-minutes M] [--coins real|synthetic]
Diagnostics: --no-charts, --trim (RSS after malloc_trim), --tracemalloc [--trace-frames N], --keep.
Exit code: 0 when every verdict passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import collections
import csv
import gc
import logging
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from flows.run import run_pipeline  # noqa: E402
from lambdas.wiring import make_client  # noqa: E402
from tests.fake_coingecko import (  # noqa: E402
    DEFAULT_COINS_FIXTURE,
    FakeCoinGecko,
    Fault,
    format_iso_ms,
    load_fixture,
    make_daily_chart,
    markets_rows,
    parse_iso,
)
from tests.test_daemon import FakeClock  # noqa: E402  (the same clock the daemon's tests use)
from utils.daemon import Daemon, DaemonLock, StatusFile, resolve_zone  # noqa: E402
from utils.history.locations import prepare_data_dir  # noqa: E402
from utils.settings import build_settings  # noqa: E402

START = datetime(2024, 1, 1, tzinfo=timezone.utc)
RSS_LIMIT_MB = 20.0
PAGE = os.sysconf("SC_PAGE_SIZE")
MB = 1024 * 1024

# Fault schedule: the period in simulated days of each fault (day 1, the daemon's initial run, stays clean).
# Runs shorter than 200 days use the short periods so a quick run meets every fault too.
FAULT_PERIODS = {
    "503_once": (50, 5),  # one 503, then success: retried inside the client, the run is ok
    "reset": (131, 13),  # one TCP reset, then success: retried inside the client, the run is ok
    "html_403": (97, 9),  # a Cloudflare 403 HTML page: the run fails, the daemon retries 5 min later
    "503_x6": (211, 21),  # 503 six times: the client gives up, the run fails, the daemon retries
    "partial": (73, 7),  # one coin missing from the answer: a partial run, the daemon retries that coin
    "lost_day": (157, 11),  # /coins/markets answers [] all day: every run and retry fails, no row that day;
    # the next day's run heals the gap from /coins/{id}/market_chart/range
}
# Each fault also strikes once before day 10, so every code path (and every lazy import, e.g. pandas in the
# healing's state rebuild) has run before the day-10 baseline: growth after it is growth, not warm-up.
WARM_UP_DAY = {"503_once": 2, "reset": 3, "html_403": 4, "503_x6": 5, "partial": 6, "lost_day": 8}


class CountingHandler(logging.Handler):
    """Formats every record (as the daemon's stderr handler would) and keeps only counts and the last few."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self.counts: collections.Counter[str] = collections.Counter()
        self.last = collections.deque(maxlen=8)

    def emit(self, record: logging.LogRecord) -> None:
        text = self.format(record)
        self.counts[record.levelname] += 1
        if record.levelno >= logging.WARNING:
            self.last.append(text)


def rebased_rows(rows: list[dict], newest: datetime) -> list[dict]:
    """The rows with every last_updated shifted by one amount so that the newest one is `newest`.

    The daemon's first run is at START; the fake's data must be of that moment (a few minutes old), or the
    pipeline's gap healing would see years missing between the data and the clock.
    """
    shift = newest - max(parse_iso(row["last_updated"]) for row in rows)
    for row in rows:
        row["last_updated"] = format_iso_ms(parse_iso(row["last_updated"]) + shift)
    return rows


def malloc_trim() -> bool:
    """Give free heap pages back to the OS (glibc); False where unavailable."""
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0)) or True
    except (OSError, AttributeError):
        return False


def rss_now_kb() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE // 1024


def peak_rss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux


def open_fds() -> dict[int, str]:
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            pass  # the fd of the listdir itself, already closed
    return fds


def os_threads() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return -1


def open_figures() -> str:
    pyplot = sys.modules.get("matplotlib.pyplot")
    return str(len(pyplot.get_fignums())) if pyplot is not None else "-"


def csv_rows(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, "rb") as fh:
        return max(0, sum(1 for _ in fh) - 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=1000, help="simulated days (default 1000)")
    parser.add_argument(
        "--coins",
        choices=("real", "synthetic"),
        default="real",
        help="the fake's 10 real fixture coins (default) or 9 generated ones",
    )
    parser.add_argument("--every", type=int, default=100, help="also measure every N days (default 100)")
    parser.add_argument(
        "--tracemalloc",
        action="store_true",
        help="trace allocations from day 10 on and print what is still alive at the end that was "
        "allocated after day 10 (slower; RSS figures then include tracemalloc's own memory)",
    )
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="stop at the end of the first day after this much wall time and judge the days done",
    )
    parser.add_argument(
        "--no-charts",
        dest="charts",
        action="store_false",
        help="diagnostic: PIPELINE_CHARTS=0, to tell the pipeline's memory from the charts'",
    )
    parser.add_argument(
        "--trace-frames",
        type=int,
        default=1,
        help="frames kept per allocation with --tracemalloc (default 1: cheap, grouped by line)",
    )
    parser.add_argument(
        "--trim",
        action="store_true",
        help="diagnostic: after each measurement call glibc malloc_trim(0) and also report the RSS "
        "after it (memory that is free heap rather than live data); changes later RSS figures",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary data folder")
    args = parser.parse_args(argv)
    if args.days < 10:
        parser.error("--days must be at least 10 (the first measurement is at day 10)")

    root = logging.getLogger()
    counter = CountingHandler()
    root.addHandler(counter)
    root.setLevel(logging.INFO)  # what `main.py daemon` sets without -v / -q
    for name in ("urllib3", "matplotlib", "PIL", "filelock", "schedule"):
        logging.getLogger(name).setLevel(logging.WARNING)

    tmp = Path(tempfile.mkdtemp(prefix="soak_daemon_"))
    try:
        return soak(args, tmp, counter)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def soak(args: argparse.Namespace, tmp: Path, counter: CountingHandler) -> int:
    """Run the simulated days in tmp, print the table and the verdicts; 0 when every verdict passes."""
    data_dir = tmp / "data"
    rows = markets_rows(9, start=START) if args.coins == "synthetic" else load_fixture(DEFAULT_COINS_FIXTURE)
    rows = rebased_rows(rows, START - timedelta(minutes=5))
    fake = FakeCoinGecko(rows).start()
    coin_ids = tuple(row["id"] for row in fake.coins)
    for index, row in enumerate(fake.coins):  # daily points for the gap healing to fetch
        fake.market_chart[row["id"]] = make_daily_chart(
            (START - timedelta(days=30)).date(), args.days + 60, row["current_price"] or 1.0, seed=index
        )
    env = {
        "COINGECKO_API_URL": fake.base_url,
        "PIPELINE_DATA_DIR": str(data_dir),
        "PIPELINE_COINS": ",".join(coin_ids),
        "PIPELINE_CHARTS": "1" if args.charts else "0",
        "PIPELINE_TIMEZONE": "UTC",
        "PIPELINE_AT": "00:00",
    }
    settings = build_settings("daemon", {}, env)
    assert settings.charts == args.charts and settings.coins == coin_ids

    # -- the daemon, as flows.daemon.daemon_command builds it (fake clock, no-op sleep) ------------------------------
    clock = FakeClock(START)
    prepare_data_dir(settings.data_dir)
    stats = collections.Counter()
    chart_errors: collections.Counter[str] = collections.Counter()
    run_seconds: list[float] = []  # wall time of the job, per run (a few KB for 1,000 days)

    def job(coins, should_stop):
        # flows.daemon.daemon_command's job, plus clock=clock: in the real daemon run_pipeline's clock and the daemon's are
        # the same wall clock, so here both are the simulated one.
        started = time.perf_counter()
        try:
            with make_client(settings, sleep=lambda s: None) as client:
                result = run_pipeline(settings, client, clock=clock, coins=coins, should_stop=should_stop)
                stats["healed"] += getattr(result, "healed", 0)
                outcome = result.outcome()
        except BaseException:
            stats["runs_raised"] += 1
            raise
        finally:
            run_seconds.append(time.perf_counter() - started)
        stats[f"runs_{outcome.result}"] += 1
        stats["appended"] += outcome.appended
        if outcome.error:  # ok/partial with an error = the charts failed
            stats["chart_errors"] += 1
            chart_errors[outcome.error[:160]] += 1
        return outcome

    lock = DaemonLock(settings.layout.daemon_pid)  # held for the whole run, as flows.daemon.daemon_command does
    lock.acquire()
    daemon = Daemon(
        job,
        at=settings.at,
        zone=resolve_zone(settings.timezone),
        retry_delays=settings.retry_delays,
        status=StatusFile(settings.state_dir / "status.json"),
        clock=clock,
        initial_run=settings.initial_run,
    )

    # -- the simulated days --------------------------------------------------------------------------------------
    day = 1
    fake_requests_total = 0
    held_back: list | None = None  # the fake's rows, while one coin is hidden for a partial day
    lost_rows: list | None = None  # the fake's rows, while a lost day answers []
    measurements: list[dict] = []
    fds_day10: dict[int, str] = {}
    snapshot10 = None
    wall_start = time.perf_counter()
    measure_days = {10, args.days} | set(range(args.every, args.days + 1, args.every))

    def measure(at_day: int) -> None:
        nonlocal fds_day10, snapshot10
        settle = time.monotonic() + 2.0  # let the fake's handler threads see their client's close
        while (fake._connections or threading.active_count() > 2) and time.monotonic() < settle:  # noqa: SLF001
            time.sleep(0.01)
        gc.collect()
        fds = open_fds()
        row = {
            "day": at_day,
            "rss": rss_now_kb() / 1024,
            "peak": peak_rss_kb() / 1024,
            "fds": len(fds),
            "blocks": sys.getallocatedblocks(),
            "threads": os_threads(),
            "py_threads": threading.active_count(),
            "gc": len(gc.get_objects()),
            "rows": csv_rows(settings.csv_path),
            "figs": open_figures(),
            "runs": daemon.runs,
            "last_run_s": run_seconds[-1] if run_seconds else 0.0,
            "wall": time.perf_counter() - wall_start,
        }
        if args.trim:
            malloc_trim()
            row["trimmed"] = rss_now_kb() / 1024
        measurements.append(row)
        print(
            f"  day {at_day:>5}: rss {row['rss']:7.1f} MB  peak {row['peak']:7.1f} MB  fds {row['fds']:3d}  "
            f"rows {row['rows']:6d}  {row['wall']:7.1f} s",
            file=sys.stderr,
            flush=True,
        )
        if at_day == 10:
            fds_day10 = fds
            if args.tracemalloc:
                import tracemalloc

                tracemalloc.start(args.trace_frames)
                snapshot10 = tracemalloc.take_snapshot()

    period = {name: long if args.days >= 200 else short for name, (long, short) in FAULT_PERIODS.items()}

    def fires(name: str, n: int) -> bool:
        return n == WARM_UP_DAY[name] or n % period[name] == 0

    def start_day(n: int) -> None:
        nonlocal held_back, lost_rows, fake_requests_total
        if lost_rows is not None:  # the API is back after a lost day
            fake.set_coins(lost_rows)
            lost_rows = None
        fake.advance(86400)
        fake_requests_total += len(fake.requests)
        fake.requests.clear()  # the fake records every request; keep the harness's own memory flat
        if fires("503_once", n):
            fake.add_fault(Fault.server_error(503))
            stats["fault_503_once"] += 1
        if fires("reset", n):
            fake.add_fault(Fault.reset())
            stats["fault_reset"] += 1
        if fires("html_403", n):
            fake.add_fault(Fault.html())
            stats["fault_html_403"] += 1
        if fires("503_x6", n):
            fake.add_fault(Fault.server_error(503), times=6)
            stats["fault_503_x6"] += 1
        if fires("lost_day", n) and n < args.days:
            lost_rows = list(fake.coins)
            fake.set_coins([])
            stats["fault_lost_day"] += 1
        elif fires("partial", n):
            held_back = list(fake.coins)
            fake.set_coins(held_back[:-1])
            stats["fault_partial"] += 1

    def wait(seconds: float) -> None:
        nonlocal day, held_back
        target = clock.now + timedelta(seconds=max(seconds, 0.001))
        if target.date() != clock.now.date():  # the day's runs are over; the next event is the next daily run
            out_of_time = args.max_minutes is not None and time.perf_counter() - wall_start > args.max_minutes * 60
            if day in measure_days or (out_of_time and day > 10):
                measure(day)
            if day >= args.days or (out_of_time and day > 10):
                daemon.stop()
                return
            day += 1
            start_day(day)
        elif held_back is not None:  # a same-day retry after a partial run: the coin is back
            fake.set_coins(held_back)
            held_back = None
        clock.advance(seconds)

    print(
        f"soak: {args.days} simulated days, {len(coin_ids)} coins ({args.coins}), "
        f"charts {'on' if args.charts else 'OFF'}, data in {data_dir}",
        file=sys.stderr,
        flush=True,
    )
    daemon.start()
    try:
        code = daemon.run_forever(wait=wait)
    finally:
        lock.release()
    wall = time.perf_counter() - wall_start

    top_stats = None
    if args.tracemalloc and snapshot10 is not None:
        import tracemalloc

        gc.collect()
        top_stats = tracemalloc.take_snapshot().compare_to(
            snapshot10, "traceback" if args.trace_frames > 1 else "lineno"
        )
        tracemalloc.stop()

    fds_end = open_fds()
    fake_requests_total += len(fake.requests)
    fake.stop()

    days = day  # the days simulated: args.days, or fewer when --max-minutes ran out
    # -- the CSV: one row per coin per day, never twice ---------------------------------------------------------
    with open(settings.csv_path, newline="", encoding="utf-8") as fh:
        records = list(csv.DictReader(fh))
    keys = collections.Counter((r["coin_id"], r["vs_currency"], r["last_updated"]) for r in records)
    duplicates = sum(n - 1 for n in keys.values() if n > 1)
    per_coin = collections.Counter(r["coin_id"] for r in records)
    # Run d (at 00:00 of simulated day d) stores the observation of the day before (last_updated ~23:55).
    expected_dates = {(START + timedelta(days=d - 2)).date().isoformat() for d in range(1, days + 1)}
    per_coin_day = collections.Counter((r["coin_id"], r["last_updated"][:10]) for r in records)
    missing_days = [(c, d) for c in coin_ids for d in sorted(expected_dates) if (c, d) not in per_coin_day]
    foreign = [k for k in per_coin_day if k[0] not in coin_ids or k[1] not in expected_dates]
    doubled = sorted(k for k, n in per_coin_day.items() if n > 1)
    expected_rows = len(coin_ids) * days
    status = daemon.status.read()

    # -- report ---------------------------------------------------------------------------------------------
    print()
    cut = "" if days == args.days else f" of {args.days} asked (--max-minutes ran out)"
    print(
        f"Soak: {days} simulated days{cut} ({START:%Y-%m-%d} .. {clock.now:%Y-%m-%d}), {len(coin_ids)} coins, "
        f"charts {'on' if args.charts else 'OFF'}, Python {sys.version.split()[0]}, pid {os.getpid()}"
    )
    trim_head = f" {'trimmed':>8}" if args.trim else ""
    print(
        f"{'day':>5} {'runs':>5} {'rss MB':>8} {'peak MB':>8}{trim_head} {'fds':>4} {'thr':>4} {'pythr':>5} "
        f"{'gc objects':>10} {'py blocks':>9} {'csv rows':>8} {'figs':>4} {'last run s':>10} {'wall s':>8}"
    )
    for m in measurements:
        trim_cell = f" {m['trimmed']:>8.1f}" if args.trim else ""
        print(
            f"{m['day']:>5} {m['runs']:>5} {m['rss']:>8.1f} {m['peak']:>8.1f}{trim_cell} {m['fds']:>4} "
            f"{m['threads']:>4} {m['py_threads']:>5} {m['gc']:>10} {m['blocks']:>9} {m['rows']:>8} {m['figs']:>4} "
            f"{m['last_run_s']:>10.3f} {m['wall']:>8.1f}"
        )
    print(
        "(rss: /proc/self/statm after gc.collect(); peak: ru_maxrss; thr: OS threads, pythr: threading; "
        "py blocks: sys.getallocatedblocks(); figs: pyplot open figures, '-' = pyplot never imported"
        + ("; trimmed: rss after malloc_trim(0)" if args.trim else "")
        + ")"
    )

    first = next(m for m in measurements if m["day"] == 10)
    last = measurements[-1]
    rss_growth = last["rss"] - first["rss"]
    peak_growth = last["peak"] - first["peak"]
    fd_growth = last["fds"] - first["fds"]
    complete_ok = duplicates == 0 and not missing_days and not foreign
    rows_ok = len(records) == expected_rows and complete_ok and not doubled
    runs = daemon.runs
    print()
    print(
        f"runs: {runs} ({stats['runs_ok']} ok, {stats['runs_partial']} partial, {stats['runs_raised']} failed); "
        f"rows appended {stats['appended']} + {stats['healed']} healed; runs with a chart error: "
        f"{stats['chart_errors']}"
    )
    print(
        f"faults injected (once on days 2-8, then every N days): "
        f"{stats['fault_503_once']} x one 503 ({period['503_once']}), "
        f"{stats['fault_reset']} x one TCP reset ({period['reset']}), {stats['fault_html_403']} x Cloudflare "
        f"403 HTML ({period['html_403']}), {stats['fault_503_x6']} x six 503s ({period['503_x6']}), "
        f"{stats['fault_partial']} x a coin missing ({period['partial']}), {stats['fault_lost_day']} x a lost day "
        f"({period['lost_day']}); "
        f"{fake_requests_total} requests to the fake"
    )
    for message, count in chart_errors.most_common(5):
        print(f"  chart error x{count}: {message}")
    print(f"log records: {dict(counter.counts)}")
    for text in counter.last:
        print(f"  last warning or error: {text[:240]}")
    print(
        f"status.json: last_run {status.get('last_run', {}).get('result')} "
        f"({status.get('last_run', {}).get('trigger')}), last_success {status.get('last_success')}, "
        f"daemon_pid {status.get('daemon_pid')}"
    )
    raw_files = sum(len(files) for _, _, files in os.walk(settings.raw_dir))
    print(
        f"data folder: csv {settings.csv_path.stat().st_size / MB:.2f} MB, {raw_files} raw snapshots, "
        f"charts {sorted(p.name for p in data_dir.glob('*.png'))}"
    )
    print(
        f"wall time: {wall:.1f} s total, {wall / days * 1000:.0f} ms per simulated day, "
        f"{wall / max(runs, 1) * 1000:.0f} ms per run "
        f"(job: median {sorted(run_seconds)[len(run_seconds) // 2] * 1000:.0f} ms, "
        f"max {max(run_seconds) * 1000:.0f} ms)"
    )
    if args.tracemalloc:
        print("note: --tracemalloc was on from day 10; RSS figures include tracemalloc's own bookkeeping")

    print()
    verdicts = [
        (
            f"peak RSS growth day 10 -> day {last['day']}: {first['peak']:.1f} -> {last['peak']:.1f} MB "
            f"= {peak_growth:+.1f} MB (< {RSS_LIMIT_MB:g} MB)",
            peak_growth < RSS_LIMIT_MB,
        ),
        (
            f"current RSS growth day 10 -> day {last['day']}: {first['rss']:.1f} -> {last['rss']:.1f} MB "
            f"= {rss_growth:+.1f} MB (< {RSS_LIMIT_MB:g} MB)",
            rss_growth < RSS_LIMIT_MB,
        ),
        (
            f"open fds day 10 -> day {last['day']}: {first['fds']} -> {last['fds']} = {fd_growth:+d} (no growth)",
            fd_growth <= 0,
        ),
        (
            f"CSV complete: every coin has a row for each of the {days} days ({len(missing_days)} (coin, day) "
            f"missing, {len(foreign)} unexpected), {duplicates} duplicate (coin_id, vs_currency, last_updated)",
            complete_ok,
        ),
        (
            f"CSV rows: {len(records)} == {len(coin_ids)} coins x {days} days = {expected_rows} (one row per coin "
            f"per day; each coin has {min(per_coin.values(), default=0)}..{max(per_coin.values(), default=0)}"
            f" rows, {len(doubled)} (coin, day) with two or more)",
            rows_ok,
        ),
        (f"daemon loop survived every failed run and exited {code} after day {day}", code == 0),
    ]
    for text, ok in verdicts:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")

    if doubled:
        print()
        print(f"(coin, day) with more than one row ({len(doubled)}; first 5):")
        for coin, day_text in doubled[:5]:
            found = [
                (r["last_updated"], r["source"], r["fetched_at"] or "-")
                for r in records
                if r["coin_id"] == coin and r["last_updated"][:10] == day_text
            ]
            print(f"  {coin} {day_text}: " + "; ".join(f"{lu} source={src} fetched_at={fa}" for lu, src, fa in found))
    for coin, day_text in missing_days[:5]:
        print(f"  missing: {coin} {day_text}")
    if fd_growth:
        new = {fd: target for fd, target in fds_end.items() if fds_day10.get(fd) != target}
        print("fds open at the end that were not open at day 10:")
        for fd, target in sorted(new.items())[:20]:
            print(f"  {fd}: {target}")
    if top_stats is not None:
        print()
        print("tracemalloc: allocations made after day 10 and still alive at the end (top 12 by size):")
        for stat in top_stats[:12]:
            print(f"  {stat.size_diff / 1024:+9.1f} KiB  {stat.count_diff:+7d} blocks")
            for line in stat.traceback.format(limit=6, most_recent_first=True):
                print(f"      {line}")
        total = sum(s.size_diff for s in top_stats)
        print(f"  total still alive from after day 10: {total / 1024:+.1f} KiB")

    return 0 if all(ok for _, ok in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
