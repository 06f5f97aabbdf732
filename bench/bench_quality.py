"""Benchmark the quality checks: what they add to loading one 250-coin snapshot into a 1,000,000-row history.

Target: the checks (utils.history.quality.inspect, run by every load against the index) take under 10 ms for a
250-coin snapshot on a 1,000,000-row history (250 coins x 4,000 hourly snapshots).

Run from the repo root:  python bench/bench_quality.py  [--rows N] [--repeats N] [--tmpdir DIR]
Exit code: 0 when the target is met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils.history.csv_store import HistoryStore  # noqa: E402
from utils.history.layout import DataLayout  # noqa: E402
from utils.history.quality import QualityRules, inspect  # noqa: E402
from utils.history.schema import HEADER_LINE, SOURCE_MARKETS, Record, format_timestamp, rows_to_csv  # noqa: E402

N_COINS = 250
START = datetime(2025, 1, 1, tzinfo=timezone.utc)
TARGET_MS = 10.0


def snapshot(s: int, rng: random.Random, prices: list[float]) -> list[Record]:
    """Snapshot s (hourly): every coin, its price on a small random walk, a real 24 h range around it."""
    when = START + timedelta(hours=s)
    out = []
    for c in range(N_COINS):
        prices[c] *= 1 + rng.uniform(-0.01, 0.01)
        price = prices[c]
        out.append(
            Record(
                name=f"Coin {c:04d}",
                symbol=f"c{c:04d}",
                current_price=price,
                market_cap=price * 1e7,
                price_change_percentage_24h=0.5,
                circulating_supply=1e7,
                last_updated=format_timestamp(when - timedelta(seconds=30 + c % 20)),
                fetched_at=format_timestamp(when),
                coin_id=f"coin-{c:04d}",
                vs_currency="eur",
                market_cap_rank=c + 1,
                total_volume=price * 1e5,
                high_24h=price * 1.05,
                low_24h=price * 0.95,
                total_supply=None,
                max_supply=None,
                source=SOURCE_MARKETS,
            )
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of history (default 1,000,000)")
    parser.add_argument("--repeats", type=int, default=30, help="timed snapshots (default 30)")
    parser.add_argument("--tmpdir", help="where to build the history (default a temporary folder)")
    args = parser.parse_args()
    snapshots = max(2, args.rows // N_COINS)
    rng = random.Random(7)
    prices = [10 ** (5 - 10 * c / (N_COINS - 1)) for c in range(N_COINS)]
    with tempfile.TemporaryDirectory(dir=args.tmpdir) as tmp:
        layout = DataLayout(Path(tmp))
        started = time.perf_counter()
        with open(layout.csv, "w", encoding="utf-8", newline="") as fh:
            fh.write(HEADER_LINE)
            for s in range(snapshots):
                fh.write(rows_to_csv(snapshot(s, rng, prices)))
        written = time.perf_counter() - started
        store = HistoryStore(layout, rules=QualityRules())
        started = time.perf_counter()
        with store.index() as index:
            indexed = time.perf_counter() - started
            rows = index.rows
            checks, findings = [], 0
            for i in range(args.repeats):
                records = snapshot(snapshots + i, rng, prices)  # new keys, never stored: the load's new rows
                t0 = time.perf_counter()
                found = inspect(records, records, index, store.rules)
                checks.append((time.perf_counter() - t0) * 1000)
                findings += len(found)
        # One real load with the checks, for scale.
        t0 = time.perf_counter()
        report = store.append(snapshot(snapshots + args.repeats, rng, prices))
        load_ms = (time.perf_counter() - t0) * 1000
    median, worst = statistics.median(checks), max(checks)
    print(
        f"history: {rows:,} rows, {N_COINS} coins, {snapshots:,} hourly snapshots "
        f"(written in {written:.1f} s, indexed in {indexed:.1f} s)"
    )
    print("| what | median | p90 | max |")
    print("|---|---:|---:|---:|")
    p90 = sorted(checks)[int(len(checks) * 0.9) - 1]
    print(
        f"| quality checks of one {N_COINS}-coin snapshot ({args.repeats} runs) | {median:.2f} ms | {p90:.2f} ms "
        f"| {worst:.2f} ms |"
    )
    print(f"| one whole load with the checks (append {report.appended} rows) | {load_ms:.1f} ms | | |")
    print(f"findings on the random walk: {findings} (expected 0)")
    ok = median < TARGET_MS and findings == 0
    print(
        f"{'PASS' if ok else 'FAIL'}: the checks add {median:.2f} ms (median) to a {N_COINS}-coin load on a "
        f"{rows:,}-row history; target < {TARGET_MS:g} ms"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
