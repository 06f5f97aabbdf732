"""Benchmark: draw the three charts from a 1,000,000-row history, against the original approach.

Run from the repository root:  python bench/bench_charts.py

It builds a history of 100 coins x 10,000 snapshots (one every 6 hours, prices from 1e-5 to
1e5) in a temporary folder. In a fresh Python process (so that the peak RSS printed is that
run's own) it first builds the history's index (the one-time cost of a history without one,
timed apart), then renders the charts with utils.charts.render.render_charts, which read the
index's daily points. Targets: render 1.5 s or less, peak RSS of the whole process (build
included) 450 MB or less. It then times the original script's approach on the same file
(pandas.read_csv of every row and column, then seaborn.lineplot(x=last_updated,
y=current_price, hue=name) saved to PNG) under a timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TARGET_SECONDS = 1.5  # render time, the index already built (issue 10)
TARGET_RSS_MB = 450.0  # peak RSS of the process, the one-time index build included
SNAPSHOT_HOURS = 6


def _part(args: tuple[int, int, int, int, int]) -> bytes:
    """CSV lines for the snapshots [lo, hi) of every coin, deterministic for a seed."""
    import numpy as np
    import pandas as pd

    from utils.history.schema import COLUMNS

    coins, snapshots, lo, hi, seed = args
    rng = np.random.default_rng(seed)
    # Per coin: a starting price spread log-uniformly over 1e-5..1e5, a supply that puts the
    # market cap between 1e6 and 1e12, a volatility of 0.5-2 % per 6 hours.
    base = 10 ** rng.uniform(-5, 5, coins)
    supply = 10 ** rng.uniform(6, 12, coins) / base
    vol = rng.uniform(0.005, 0.02, coins)
    steps = rng.normal(0.0, 1.0, (snapshots, coins)) * vol
    walk = np.exp(np.cumsum(steps, axis=0))[lo:hi]
    price = _round_significant(base * walk, 6)
    n = hi - lo
    cap = np.round(price * supply)
    start = np.datetime64("2016-01-01T00:00:00", "ms")
    slots = start + np.timedelta64(SNAPSHOT_HOURS * 3_600_000, "ms") * np.arange(lo, hi)
    jitter = rng.integers(0, 600_000, (snapshots, coins))[lo:hi].astype("timedelta64[ms]")
    stamp = (slots[:, None] + jitter).ravel()
    last_updated = np.char.add(np.datetime_as_string(stamp, unit="ms"), "Z")
    fetched = np.char.add(
        np.datetime_as_string(np.repeat(slots + np.timedelta64(660_000, "ms"), coins), unit="ms"), "Z"
    )
    ids = np.array([f"coin-{i:03d}" for i in range(coins)])
    rank = np.argsort(np.argsort(-(base * supply))) + 1
    frame = pd.DataFrame(
        {
            "name": np.tile(np.array([f"Coin {i:03d}" for i in range(coins)]), n),
            "symbol": np.tile(np.array([f"c{i:03d}" for i in range(coins)]), n),
            "current_price": price.ravel(),
            "market_cap": cap.ravel(),
            "price_change_percentage_24h": np.round(rng.normal(0, 3, n * coins), 3),
            "circulating_supply": np.tile(np.round(supply), n),
            "last_updated": last_updated,
            "fetched_at": fetched,
            "coin_id": np.tile(ids, n),
            "vs_currency": "eur",
            "market_cap_rank": np.tile(rank, n),
            "total_volume": np.round(cap.ravel() * 0.04),
            "high_24h": _round_significant(price.ravel() * 1.02, 6),
            "low_24h": _round_significant(price.ravel() * 0.98, 6),
            "total_supply": np.tile(np.round(supply), n),
            "max_supply": np.nan,
            "source": "coins_markets",
        },
        columns=list(COLUMNS),
    )
    return frame.to_csv(index=False, header=False, lineterminator="\n").encode()


def _round_significant(values, digits: int):
    """Round to that many significant digits, as CoinGecko quotes prices."""
    import numpy as np

    scale = 10.0 ** (digits - 1 - np.floor(np.log10(values)))
    return np.round(values * scale) / scale


def build_history(path: Path, coins: int, snapshots: int, seed: int = 7) -> None:
    """Write a valid history CSV (header from utils.history.schema) using every core."""
    from utils.history.schema import HEADER_LINE

    workers = max(os.cpu_count() or 1, 1)
    parts = max(workers * 2, 1)
    bounds = [snapshots * k // parts for k in range(parts + 1)]
    jobs = [(coins, snapshots, bounds[k], bounds[k + 1], seed) for k in range(parts)]
    with open(path, "wb") as fh, Pool(workers) as pool:
        fh.write(HEADER_LINE.encode())
        for chunk in pool.imap(_part, jobs):
            fh.write(chunk)


def measure_render(csv_path: Path, out_dir: Path) -> dict[str, object]:
    """Import, build the index (one-time), render, in this process; times and peak RSS of each part."""
    t0 = time.perf_counter()
    from utils.charts.data import ChartOptions
    from utils.charts.render import render_charts
    from utils.history.csv_store import HistoryStore
    from utils.history.layout import DataLayout

    t1, cpu1 = time.perf_counter(), _cpu_s()
    with HistoryStore(DataLayout(csv_path.parent, csv_path.name)).index():
        pass  # brings the index up to the CSV: the whole build when there is none yet
    t2, cpu2 = time.perf_counter(), _cpu_s()
    build_peak = _peak_rss_mb()
    render_base = _reset_peak_rss()
    report = render_charts(csv_path, out_dir, ChartOptions(vs_currency="eur"))
    t3, cpu3 = time.perf_counter(), _cpu_s()
    return {
        "import_s": t1 - t0,
        "build_s": t2 - t1,
        "build_cpu_s": cpu2 - cpu1,
        "build_peak_rss_mb": build_peak,
        "render_s": t3 - t2,
        "cpu_s": cpu3 - cpu2,
        "render_peak_rss_mb": _peak_rss_mb() if render_base else None,
        "peak_rss_mb": max(build_peak, _peak_rss_mb()),  # the reset clears ru_maxrss too: the larger of the two
        "rows_used": report.rows_used,
        "coins": len(report.coins),
        "price_scale": report.price_scale,
        "skipped_lines": report.skipped_lines,
    }


def _reset_peak_rss() -> bool:
    """Start the process's peak RSS (VmHWM) again from now (Linux); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def measure_original(csv_path: Path, out_dir: Path) -> dict[str, object]:
    """The original script's way: every row and column into pandas, seaborn over raw rows."""
    t0 = time.perf_counter()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    t1, cpu1 = time.perf_counter(), _cpu_s()
    frame = pd.read_csv(csv_path)
    frame["last_updated"] = pd.to_datetime(frame["last_updated"])
    plt.figure(figsize=(14, 8))
    sns.lineplot(data=frame, x="last_updated", y="current_price", hue="name")
    plt.savefig(out_dir / "original_price_trend.png")
    plt.close("all")
    t2, cpu2 = time.perf_counter(), _cpu_s()
    return {"import_s": t1 - t0, "render_s": t2 - t1, "cpu_s": cpu2 - cpu1, "peak_rss_mb": _peak_rss_mb()}


def _cpu_s() -> float:
    """CPU seconds of this process so far, all threads: the work, whatever else the machine runs."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _max_rss_mb() -> float:
    """The process's peak RSS (getrusage), where /proc/self/status is not available."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _peak_rss_mb() -> float:
    """The peak RSS since the process started or _reset_peak_rss (VmHWM on Linux)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return _max_rss_mb()


def _child(mode: str, csv_path: Path, out_dir: Path, timeout: float | None) -> tuple[dict | None, float]:
    """Run one measurement in a fresh interpreter; (its JSON result or None on timeout, wall)."""
    command = [sys.executable, str(Path(__file__).resolve()), f"--{mode}", str(csv_path), str(out_dir)]
    t0 = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False)
    except subprocess.TimeoutExpired:
        return None, time.perf_counter() - t0
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1]), wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coins", type=int, default=100)
    parser.add_argument("--snapshots", type=int, default=10_000)
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds allowed for the original approach (default 300)"
    )
    parser.add_argument("--skip-original", action="store_true")
    parser.add_argument("--keep", type=Path, help="write the CSV and PNGs here instead of a temp dir")
    parser.add_argument("--history", type=Path, help="chart this existing history instead of building one")
    parser.add_argument("--repeat", type=int, default=1, help="render runs (default 1)")
    parser.add_argument("--render", nargs=2, type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--original", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.render:
        print(json.dumps(measure_render(*args.render)))
        return 0
    if args.original:
        print(json.dumps(measure_original(*args.original)))
        return 0

    with tempfile.TemporaryDirectory(prefix="bench_charts_") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.history:
            csv_path = args.history
            print(f"history: {csv_path} ({csv_path.stat().st_size / 1e6:.0f} MB)")
        else:
            csv_path = work / "crypto_data.csv"
            t0 = time.perf_counter()
            build_history(csv_path, args.coins, args.snapshots)
            rows = args.coins * args.snapshots
            size_mb = csv_path.stat().st_size / 1e6
            print(
                f"history: {rows:,} rows ({args.coins} coins x {args.snapshots:,} snapshots,"
                f" {size_mb:.0f} MB) built in {time.perf_counter() - t0:.1f} s"
            )

        ok = True
        for _ in range(max(args.repeat, 1)):
            print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
            result, wall = _child("render", csv_path, work, None)
            assert result is not None
            render_s = float(result["render_s"])
            render_peak = result["render_peak_rss_mb"]
            print(
                f"index build (one-time): {result['build_s']:.2f} s wall, {result['build_cpu_s']:.2f} s CPU,"
                f" peak RSS {result['build_peak_rss_mb']:.0f} MB"
            )
            print(
                f"render_charts: {render_s:.2f} s wall (target <= {TARGET_SECONDS:g} s),"
                f" {result['cpu_s']:.2f} s CPU,"
                + (f" peak RSS while rendering {render_peak:.0f} MB," if render_peak is not None else "")
                + f" peak RSS of the process {result['peak_rss_mb']:.0f} MB (target <= {TARGET_RSS_MB:.0f} MB),"
                f" imports {result['import_s']:.2f} s, whole process {wall:.2f} s;"
                f" {result['rows_used']:,} daily points, {result['coins']} coins,"
                f" {result['price_scale']} price axis"
            )
            ok = ok and render_s <= TARGET_SECONDS and float(result["peak_rss_mb"]) <= TARGET_RSS_MB
        if args.skip_original:
            print("original approach: skipped")
        else:
            original, original_wall = _child("original", csv_path, work, args.timeout)
            if original is None:
                print(
                    f"original approach (seaborn lineplot over raw rows): > {args.timeout:.0f} s"
                    f" (stopped at the timeout)"
                )
                print(f"ratio: > {args.timeout / render_s:.0f}x faster")
            else:
                seconds = float(original["render_s"])
                print(
                    f"original approach (seaborn lineplot over raw rows): {seconds:.1f} s wall,"
                    f" {original['cpu_s']:.1f} s CPU, peak RSS {original['peak_rss_mb']:.0f} MB"
                )
                print(
                    f"ratio: {seconds / render_s:.0f}x faster in wall time,"
                    f" {float(original['cpu_s']) / float(result['cpu_s']):.0f}x in CPU time"
                )
        print("within targets" if ok else "OVER TARGET")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
