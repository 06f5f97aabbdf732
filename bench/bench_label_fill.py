"""Benchmark the one-time fill of names and symbols into backfilled rows (utils/history/labels.py) on the CSV store.

A 1,000,000-row history of 1,000 coins in which every tenth row (a backfilled daily point of an earlier
version) has no name or symbol; the fill scans it once (csvio.labelled_body) and rewrites the rows it names.
Printed: the CSV's size, the rows filled, wall and CPU seconds of the scan. The rewrite (temp file, fsync,
rename) and the index rebuild that follow are measured by bench_load.py's "build" figure. No target: it runs
once per history.

Run from the repo root:  python bench/bench_label_fill.py  [--rows N]
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils.history import csvio  # noqa: E402
from utils.history.schema import Record, rows_to_csv  # noqa: E402

COINS = 1000


def history(rows: int) -> bytes:
    """CSV data lines: one row per coin per day, every tenth row without a name and symbol."""
    records = []
    for i in range(rows):
        moment = datetime.fromtimestamp(1_600_000_000 + (i // COINS) * 86_400, timezone.utc)
        named = i % 10 != 0
        records.append(
            Record(
                "Coin" if named else "",
                "c" if named else "",
                1.5,
                2e9,
                None,
                None,
                moment.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                "",
                f"coin-{i % COINS:04d}",
                "eur",
                None,
                3e7,
                None,
                None,
                None,
                None,
                "market_chart",
            )
        )
    return rows_to_csv(records).encode()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    body = history(args.rows)
    labels = {f"coin-{k:04d}": (f"Coin {k}", f"c{k}") for k in range(COINS)}
    cpu, wall = time.process_time(), time.perf_counter()
    _, filled, left = csvio.labelled_body(body, labels)
    print(
        f"label fill scan: {len(body) / 1e6:.0f} MB, {args.rows:,} rows, {filled:,} filled, {len(left)} coins left: "
        f"{time.perf_counter() - wall:.1f} s wall, {time.process_time() - cpu:.1f} s CPU"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
