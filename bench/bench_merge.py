"""The CSV store's merge at ten million rows (issue 18, peak RSS <= 600 MB): a backfill into the whole market.

    nice python bench/bench_merge.py [--coins 17000] [--days 600] [--backfill-coins 3] [--backfill-days 30]
                                     [--work DIR] [--reference-rows N]

Copies the cached 10,200,000-row history of bench/bench_market.py (17,000 coins x 600 days, generated there once
under /tmp/bench-market/) into --work DIR/data (default /tmp/bench-merge/work), builds its index with `status`,
then runs `backfill --coins <a few> --days 30` against the local fake CoinGecko (tests/fake_coingecko.py) in its
own process and prints its wall time, CPU time (user + system) and peak RSS (from wait4). The backfill's daily
points are new rows at 00:00 UTC of past days: HistoryStore.merge weaves them into the middle of the 2.1 GB file,
which it rewrites whole.

--reference-rows N also merges the same rows into the first N rows of the history with the in-memory reference
(csvio.merged_body, what merge did before) and with csvio.merge_file, each in its own process, for a figure of
both at a size the reference can hold (its memory grows with the file: several GB at 10M rows).
"""

from __future__ import annotations

import argparse
import filecmp
import os
import resource
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_market import cached_history, measure  # noqa: E402

from tests.fake_coingecko import FakeCoinGecko, make_daily_chart, markets_rows  # noqa: E402

WORK = Path("/tmp/bench-merge/work")

_ONE = r"""
import sys, time
from datetime import date, timedelta
from pathlib import Path
from tests.support import record
from utils.history import csvio
path, how, coins, days, first = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
start = date.today() - timedelta(days=days + 1)
records = [record(f"coin-{c:05d}", f"{start + timedelta(days=d)}T00:00:00.000Z", vs_currency="usd")
           for c in range(first, first + coins) for d in range(days)]
if how == "reference":
    content = path.read_bytes()
    head = csvio.header_length(content)
    path.write_bytes(content[:head] + csvio.merged_body(content[head:], records))
else:
    csvio.merge_file(path, records)
"""


def one_merge(path: Path, how: str, coins: int, days: int, first: int = 1) -> tuple[float, float, float]:
    """(wall s, CPU s, peak RSS MB) of one merge of coins x days rows into path, in its own process."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", _ONE, str(path), how, str(coins), str(days), str(first)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"the {how} merge failed")
    return time.monotonic() - started, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coins", type=int, default=17_000)
    parser.add_argument("--days", type=int, default=600)
    parser.add_argument("--backfill-coins", type=int, default=3)
    parser.add_argument("--backfill-days", type=int, default=30)
    parser.add_argument("--work", type=Path, default=WORK, help="folder of the history's copy (deleted first)")
    parser.add_argument("--reference-rows", type=int, default=0, help="also time merged_body on this many rows")
    parser.add_argument("--skip-backfill", action="store_true", help="only the --reference-rows comparison")
    parser.add_argument(
        "--late-rows",
        type=int,
        default=0,
        help="after the backfill, append N rows of the history's third-last day (stale coins in a new snapshot) "
        "and time merge_file alone: the rows that come late are merged in a second pass over the file's end",
    )
    args = parser.parse_args()
    source = cached_history(args.coins, args.days)
    work = args.work
    data = work / "data"
    rows: list[tuple[str, str, str]] = []
    if args.reference_rows:
        small = work / "small"
        shutil.rmtree(small, ignore_errors=True)
        small.mkdir(parents=True)
        for how in ("reference", "stream"):
            path = small / f"{how}.csv"
            with open(source, "rb") as src, open(path, "wb") as out:  # line by line: a forked child's peak RSS
                for _ in range(args.reference_rows + 1):  # counts this process's memory at the fork
                    out.write(src.readline())
            wall, cpu, rss = one_merge(path, how, args.backfill_coins, args.backfill_days)
            rows.append(
                (f"{how} merge, {args.reference_rows:,} rows", f"{wall:.1f} s wall, {cpu:.1f} s CPU", f"{rss:,.0f} MB")
            )
        same = filecmp.cmp(small / "reference.csv", small / "stream.csv", shallow=False)  # a block at a time
        rows.append(("same bytes", "yes" if same else "NO", ""))
    if not args.skip_backfill:
        shutil.rmtree(work / "data", ignore_errors=True)
        data.mkdir(parents=True)
        shutil.copyfile(source, data / "crypto_data.csv")
        env = {
            **os.environ,
            "PIPELINE_DATA_DIR": str(data),
            "PIPELINE_VS_CURRENCY": "usd",
            "PIPELINE_HEAL": "0",
            "PIPELINE_CHARTS": "0",
            "PYTHONPATH": str(REPO),
        }
        wall, cpu, rss, code = measure(["status"], env)
        rows.append(("index build (`status`)", f"{wall:.1f} s wall, {cpu:.1f} s CPU", f"{rss:,.0f} MB"))
        ids = [f"coin-{c:05d}" for c in range(1, args.backfill_coins + 1)]
        now = datetime.now(timezone.utc)
        start = now.date() - timedelta(days=args.backfill_days + 2)
        with FakeCoinGecko(markets_rows(10, vs_currency="usd")) as fake:
            for i, coin in enumerate(ids):
                fake.market_chart[coin] = make_daily_chart(start, args.backfill_days + 2, 100.0 + i, seed=i)
            size = (data / "crypto_data.csv").stat().st_size
            wall, cpu, rss, code = measure(
                ["backfill", "--coins", ",".join(ids), "--days", str(args.backfill_days), "--no-charts"],
                {**env, "COINGECKO_API_URL": fake.base_url, "PIPELINE_RATE_LIMIT": "10000"},
            )
        grown = (data / "crypto_data.csv").stat().st_size - size
        rows.append(
            (
                f"`backfill --coins <{len(ids)} coins> --days {args.backfill_days}` (exit {code}, +{grown:,} bytes)",
                f"{wall:.1f} s wall, {cpu:.1f} s CPU",
                f"{rss:,.0f} MB",
            )
        )
    if args.late_rows and not args.skip_backfill:
        path = data / "crypto_data.csv"
        size = path.stat().st_size
        with open(path, "rb") as fh:
            fh.seek(max(0, size - 3 * args.coins * 230))  # about three days of rows from the end
            fh.readline()
            late = b"".join(fh.readline() for _ in range(args.late_rows))
        with open(path, "ab") as fh:
            fh.write(late)
        wall, cpu, rss = one_merge(path, "stream", args.backfill_coins, args.backfill_days, first=101)
        rows.append(
            (
                f"merge_file alone, {args.backfill_coins} coins x {args.backfill_days} days, into the history "
                f"+ {args.late_rows} appended rows 3 days old",
                f"{wall:.1f} s wall, {cpu:.1f} s CPU",
                f"{rss:,.0f} MB",
            )
        )
    print(f"\nload average: {Path('/proc/loadavg').read_text().strip()}")
    # Linux counts the parent's peak RSS at the fork into a child's: this is the floor of the figures below.
    print(f"this process's own peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB")
    print("| measure | time | peak RSS |\n|---|---|---|")
    for what, figure, rss_text in rows:
        print(f"| {what} | {figure} | {rss_text} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
