"""Benchmark the Delta store on a local disk: converting a 1,000,000-row CSV, the table's size, and a 250-coin
load, `run`, `status`, `top`, `plot` and `export` on that table against the same on an empty one.

The history is bench/bench_load.py's: 250 coins, half of the snapshots in 2019-20 and half in the 13 months up
to now (a five-year gap). Targets (issue 17): conversion <= 60 s; the table <= 35 % of the CSV's bytes; a run
on the big table <= 1.3x the run on an empty one, peak RSS <= empty + 100 MB; status, top --date and quality
<= 1.5 s; plot of 10 coins over the whole history <= 3 s. (S3 figures: bench/bench_table.py.)

Run from the repo root:  python bench/bench_delta_local.py [--rows N] [--run-repeats N] [--tmpdir DIR] [--keep]
Exit code: 0 when every target passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench.bench_load import N_COINS, RECENT_DAYS, Schedule, make_snapshot, write_history  # noqa: E402
from tests.fake_coingecko import FakeCoinGecko  # noqa: E402
from utils.history.delta_table import DeltaHistory, convert_csv  # noqa: E402
from utils.history.locations import DeltaStorage, LocalStorage  # noqa: E402

TARGETS = {"convert_s": 60.0, "size": 0.35, "run_ratio": 1.3, "rss_mb": 100.0, "read_s": 1.5, "plot_s": 3.0}


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def cli(data_dir: Path, *argv: str, env: dict[str, str]) -> tuple[float, float, subprocess.CompletedProcess]:
    """Seconds and peak RSS (MB) of one `python main.py ...` child, and what it did."""
    full = dict(os.environ, PIPELINE_DATA_DIR=str(data_dir), PIPELINE_TABLE_FORMAT="delta", **env)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "main.py"), *argv],
        env=full,
        capture_output=True,
        text=True,
        cwd=data_dir.parent,
        timeout=600,
    )
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if done.returncode not in (0, 3):
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return seconds, max(peak, before) / 1024, done


def child_peak_mb(data_dir: Path, *argv: str, env: dict[str, str]) -> float:
    """Peak RSS of one child alone (ru_maxrss of RUSAGE_CHILDREN is the largest child so far, so ask a fresh shell)."""
    full = dict(os.environ, PIPELINE_DATA_DIR=str(data_dir), PIPELINE_TABLE_FORMAT="delta", **env)
    code = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=False, capture_output=True); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, sys.executable, str(REPO_ROOT / "main.py"), *argv],
        env=full,
        capture_output=True,
        text=True,
        cwd=data_dir.parent,
        timeout=600,
    )
    return int(done.stdout.strip() or 0) / 1024


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows of the big history (multiple of 500)")
    ap.add_argument("--run-repeats", type=int, default=5, help="timed commands per case")
    ap.add_argument("--tmpdir", default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    n_snap = args.rows // N_COINS
    hours = min(24, max(1, math.ceil(RECENT_DAYS * 24 / (n_snap // 2))))
    schedule = Schedule(n_snap, hours, gap=True)
    root = Path(tempfile.mkdtemp(prefix="bench_delta_", dir=args.tmpdir))
    print(
        f"temp folder: {root}  (python {sys.version.split()[0]}, {os.cpu_count()} cpus, "
        f"load average {os.getloadavg()[0]:.1f})"
    )
    ok = True
    fake = FakeCoinGecko(None).start()
    try:
        big = root / "big" / "data"
        csv_path = big / "crypto_data.csv"
        write_history(csv_path, schedule)
        csv_bytes = csv_path.stat().st_size
        print(f"generated {args.rows:,} rows, {csv_bytes / 1e6:.0f} MB of CSV")
        os.sync()

        history = DeltaHistory(str(big / "crypto_data"))
        cpu0, t0 = time.process_time(), time.perf_counter()
        report = convert_csv(history, csv_path)
        convert_s, convert_cpu = time.perf_counter() - t0, time.process_time() - cpu0
        assert report.rows == args.rows, report
        table_bytes = disk_bytes(big / "crypto_data")
        files = len(list((big / "crypto_data").rglob("*.parquet")))
        ok &= convert_s <= TARGETS["convert_s"]
        print(
            f"convert   {args.rows:,} rows in {convert_s:.1f} s ({convert_cpu:.1f} s CPU), {report.chunks} chunks, "
            f"{files} Parquet files: {verdict(convert_s <= TARGETS['convert_s'])} (<= 60 s)"
        )
        ratio = table_bytes / csv_bytes
        ok &= ratio <= TARGETS["size"]
        print(
            f"size      table {table_bytes / 1e6:.1f} MB = {ratio:.1%} of the CSV's {csv_bytes / 1e6:.0f} MB: "
            f"{verdict(ratio <= TARGETS['size'])} (<= 35 %)"
        )

        storage = DeltaStorage(LocalStorage(big), history, big)
        t0 = time.perf_counter()
        with storage.index() as index:
            indexed = index.rows
        print(
            f"index     first catch-up of the new table's index: {indexed:,} rows in {time.perf_counter() - t0:.1f} s "
            "(once per table; runs after it read only new files)"
        )

        # In-process loads: one 250-coin snapshot on the big table vs an empty one.
        empty = root / "empty" / "data"
        empty.mkdir(parents=True)
        small = DeltaStorage(LocalStorage(empty), DeltaHistory(str(empty / "crypto_data")), empty)
        big_ms, empty_ms = [], []
        for i in range(args.run_repeats):
            for target, out in ((storage, big_ms), (small, empty_ms)):
                records = make_snapshot(n_snap + i, schedule)
                t0 = time.perf_counter()
                done = target.append(records)
                out.append((time.perf_counter() - t0) * 1000)
                assert done.appended == N_COINS, done
        print(
            f"load      250 coins: {statistics.median(big_ms):.0f} ms on {args.rows:,} rows vs "
            f"{statistics.median(empty_ms):.0f} ms on a new table ({statistics.median(big_ms) / statistics.median(empty_ms):.2f} x), "
            f"median of {args.run_repeats}"
        )

        # Whole runs against the local fake, in child processes.
        fake.set_coins([{**c} for c in fake.coins])
        env = {
            "COINGECKO_API_URL": fake.base_url,
            "PIPELINE_COINS": ",".join(c["id"] for c in fake.coins),
            "PIPELINE_HEAL": "0",
            "PIPELINE_CHARTS": "0",
        }
        runs: dict[str, list[float]] = {"big": [], "empty": []}
        for _ in range(args.run_repeats):
            fake.advance(60)
            for name, data in (("big", big), ("empty", empty)):
                seconds, _, _ = cli(data, "run", "--no-charts", env=env)
                runs[name].append(seconds)
        run_ratio = statistics.median(runs["big"]) / statistics.median(runs["empty"])
        rss_big = child_peak_mb(big, "run", "--no-charts", env=env)
        rss_empty = child_peak_mb(empty, "run", "--no-charts", env=env)
        ok &= run_ratio <= TARGETS["run_ratio"] and rss_big <= rss_empty + TARGETS["rss_mb"]
        print(
            f"run       {statistics.median(runs['big']):.2f} s on the big table vs {statistics.median(runs['empty']):.2f} s "
            f"on the small one = {run_ratio:.2f} x: {verdict(run_ratio <= TARGETS['run_ratio'])} (<= 1.3 x); peak RSS "
            f"{rss_big:.0f} MB vs {rss_empty:.0f} MB: {verdict(rss_big <= rss_empty + TARGETS['rss_mb'])} (<= +100 MB)"
        )
        day = schedule.time(n_snap - 5).date()
        for argv, target in (
            (("status",), "read_s"),
            (("top", "--date", str(day)), "read_s"),
            (("quality",), "read_s"),
            (("plot", "--plot-coins", ",".join(c["id"] for c in fake.coins[:10])), "plot_s"),
        ):
            times = [cli(big, *argv, env=env)[0] for _ in range(args.run_repeats)]
            median = statistics.median(times)
            ok &= median <= TARGETS[target]
            print(
                f"{argv[0]:<9} {median:.2f} s median on {args.rows:,} rows: {verdict(median <= TARGETS[target])} "
                f"(<= {TARGETS[target]:g} s)"
            )
        out = root / "export.csv"
        seconds, _, _ = cli(big, "export", "--out", str(out), env=env)
        print(f"export    CSV of the whole table in {seconds:.1f} s ({out.stat().st_size / 1e6:.0f} MB)")
        out = root / "export.parquet"
        seconds, _, _ = cli(big, "export", "--out", str(out), env=env)
        print(f"export    Parquet of the whole table in {seconds:.1f} s ({out.stat().st_size / 1e6:.0f} MB)")
    finally:
        fake.stop()
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print("ALL PASS" if ok else "SOME FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
