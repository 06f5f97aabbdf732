"""Benchmark `python main.py top --date`: the day's top N from a 1,000,000-row history.

The history: 1,000 coins x 1,000 days, one snapshot a day (the worst case for a day lookup: a
million daily points). The index is built once (as the first run on such a file would), then
`top --date` is timed in a fresh process (imports included) and in-process (the query alone).

Target: `python main.py top --date D` answers in under 0.5 s.

Run from the repo root:  python bench/bench_top.py  [--coins N] [--days N] [--repeats N] [--tmpdir DIR] [--keep]
Exit code: 0 when the target and the correctness check pass, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from utils.history.schema import HEADER_LINE  # noqa: E402

TARGET_S = 0.5
FIRST_DAY = date(2023, 1, 1)


def write_history(csv_path: Path, coins: int, days: int) -> int:
    """A CSV of coins x days rows; the coin ranks shuffle a little each day. Returns the row count."""
    with open(csv_path, "w", encoding="utf-8", newline="") as fh:
        fh.write(HEADER_LINE)
        for d in range(days):
            day = FIRST_DAY + timedelta(days=d)
            stamp = f"{day.isoformat()}T12:00:00.000Z"
            lines = []
            for c in range(coins):
                # ranks rotate by one place a day inside each block of ten, so the day's order is the day's own
                rank = (c // 10) * 10 + (c + d) % 10 + 1
                cap = 10**12 // rank
                lines.append(
                    f"Coin {c:04d},c{c:04d},{1000.0 / rank!r},{cap},,,{stamp},{stamp},coin-{c:04d},eur,"
                    f"{rank},{cap // 20},,,,,coins_markets\n"
                )
            fh.write("".join(lines))
    return coins * days


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coins", type=int, default=1000)
    parser.add_argument("--days", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tmpdir")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)

    folder = Path(tempfile.mkdtemp(prefix="bench-top-", dir=args.tmpdir))
    try:
        data_dir = folder / "data"
        data_dir.mkdir()
        started = time.perf_counter()
        rows = write_history(data_dir / "crypto_data.csv", args.coins, args.days)
        print(
            f"history: {rows:,} rows ({(data_dir / 'crypto_data.csv').stat().st_size / 2**20:.0f} MB) written "
            f"in {time.perf_counter() - started:.1f} s"
        )

        from flows.top import print_top
        from utils.settings import build_settings

        env = {"PIPELINE_DATA_DIR": str(data_dir)}
        the_day = FIRST_DAY + timedelta(days=args.days // 2)
        settings = build_settings("top", {"date": the_day.isoformat(), "top": "100"}, env)
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            print_top(settings)  # the first reader builds the index, once
        print(f"index built once in {time.perf_counter() - started:.1f} s")

        in_process = []
        for _ in range(args.repeats):
            out: list[str] = []
            started = time.perf_counter()
            code = print_top(settings, out=out.append)
            in_process.append(time.perf_counter() - started)
        ranks = [line.split()[0] for line in out[2:]]
        correct = code == 0 and ranks == [str(r) for r in range(1, 101)] and len(out) == 102

        command = [sys.executable, str(REPO_ROOT / "main.py"), "top", "--date", the_day.isoformat(), "--top", "100"]
        whole = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            proc = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True)
            whole.append(time.perf_counter() - started)
            correct &= proc.returncode == 0 and proc.stdout.splitlines() == out
        print()
        print("| what | median | max | target |")
        print("|---|---:|---:|---:|")
        print(
            f"| `top --date` in-process (index query + printing) | {statistics.median(in_process) * 1000:.0f} ms "
            f"| {max(in_process) * 1000:.0f} ms | |"
        )
        print(
            f"| `python main.py top --date` (new process, imports included) | {statistics.median(whole):.2f} s "
            f"| {max(whole):.2f} s | < {TARGET_S} s |"
        )
        ok = statistics.median(whole) < TARGET_S and correct
        print(f"\ncorrect output: {'yes' if correct else 'NO'}")
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1
    finally:
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
