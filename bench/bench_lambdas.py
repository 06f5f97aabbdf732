"""Peak memory of each Lambda step on a realistic input: the figures template.yaml's MemorySize comes from.

The four steps of the state machine (extract, transform, load, views) run as the state machine runs
them: each handler in its own fresh Python process (a cold Lambda), each one's output the next one's
event, against a local S3 (moto in server mode on loopback, tests/s3_server.py) and the local fake
CoinGecko. The input: --top 250 coins in --currencies currencies (default eur,usd,btc: 750 rows a
run), on an empty history and on a --rows history (default 1,000,000 rows, bench/bench_load.py's,
converted to the S3 store by one command-line run first). Printed: wall time and peak RSS (ru_maxrss
of the child, from wait4) per step, and the MemorySize each would need with 50 % headroom.

Run from the repo root:  python bench/bench_lambdas.py [--rows 1000000] [--currencies eur,usd,btc] [--repeats 2]
Exit code: 0 when every step succeeded, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench.bench_load import N_COINS, RECENT_DAYS, Schedule, write_history  # noqa: E402
from tests.fake_coingecko import FakeCoinGecko, markets_rows  # noqa: E402
from tests.s3_server import LocalS3, child_env  # noqa: E402

STEPS = (
    ("extract", "lambdas.lambda_1_extract", "handler"),
    ("transform", "lambdas.lambda_2_transform", "handler"),
    ("load", "lambdas.lambda_3_load", "handler"),
    ("views", "flows.serverless", "views_handler"),
)
CHILD = """
import json, sys
from importlib import import_module
handler = getattr(import_module(sys.argv[1]), sys.argv[2])
out = handler(json.loads(sys.stdin.read()), None)
sys.stdout.write(json.dumps(out))
"""
HEADROOM = 1.5  # MemorySize >= peak RSS x 1.5: room for a bigger day, and Lambda's CPU share grows with memory


def run_step(module: str, name: str, event: dict, env: dict[str, str], cwd: Path) -> tuple[dict, float, float]:
    """(output, seconds, peak RSS in MB) of one handler in a fresh process."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, module, name], env=env, cwd=cwd, stdin=subprocess.PIPE, stdout=out, stderr=err
        )
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(event).encode())
        proc.stdin.close()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(
                f"{module}.{name} exited {proc.returncode}:\n{err.read().decode(errors='replace')[-4000:]}"
            )
        return json.loads(out.read()), seconds, usage.ru_maxrss / 1024


def memory_size(peak_mb: float) -> int:
    """The smallest MemorySize (a multiple of 64 MB, at least 128) with HEADROOM over the peak."""
    return max(128, 64 * math.ceil(peak_mb * HEADROOM / 64))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows of the big history (a multiple of 500; 0: skip)")
    ap.add_argument("--currencies", default="eur,usd,btc", help="currencies a run fetches")
    ap.add_argument("--repeats", type=int, default=2, help="chains per history (median)")
    ap.add_argument("--tmpdir", default=None)
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bench_lambdas_", dir=args.tmpdir))
    with open("/proc/loadavg") as fh:
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, load average {' '.join(fh.read().split()[:3])}")
    start = datetime.now(timezone.utc) - timedelta(minutes=30)
    figures: dict[str, dict[str, list[tuple[float, float]]]] = {}
    try:
        with LocalS3() as s3, FakeCoinGecko(markets_rows(N_COINS, start=start)) as fake:
            histories = [("empty", 0)] + ([("big", args.rows)] if args.rows else [])
            for label, rows in histories:
                base = dict(
                    os.environ,
                    PIPELINE_DATA_DIR=s3.url(label),
                    COINGECKO_API_URL=fake.base_url,
                    COINGECKO_API_PLAN="public",
                    PIPELINE_RATE_LIMIT="10000",
                    PIPELINE_TOP=str(N_COINS),
                    PIPELINE_VS_CURRENCY=args.currencies,
                    PIPELINE_HEAL="0",
                    MPLBACKEND="Agg",
                    TMPDIR=str(root / label / "tmp"),
                    PYTHONPATH=str(REPO_ROOT),
                )
                for name in ("PIPELINE_COINS", "COINGECKO_API_KEY", "COINGECKO_API_KEY_PARAMETER"):
                    base.pop(name, None)
                env = child_env(s3, base)
                (root / label / "tmp").mkdir(parents=True)
                if rows:
                    csv_path = root / label / "crypto_data.csv"
                    n_snap = rows // N_COINS
                    write_history(
                        csv_path,
                        Schedule(n_snap, min(24, max(1, math.ceil(RECENT_DAYS * 24 / (n_snap // 2)))), gap=True),
                    )
                    s3.client().upload_file(str(csv_path), s3.bucket, f"{label}/crypto_data.csv")
                    t0 = time.perf_counter()
                    done = subprocess.run(
                        [sys.executable, str(REPO_ROOT / "main.py"), "run", "--no-charts"],
                        env=env,
                        cwd=root,
                        capture_output=True,
                        text=True,
                    )
                    if done.returncode not in (0, 3):
                        raise SystemExit(f"converting the {rows:,}-row history failed:\n{done.stderr[-3000:]}")
                    print(f"{label}: {rows:,} rows converted by a first run in {time.perf_counter() - t0:.1f} s")
                per_step = figures.setdefault(label, {})
                for _ in range(args.repeats):
                    fake.advance(60)
                    event: dict = {}
                    for step, module, name in STEPS:
                        event, seconds, rss = run_step(module, name, event, env, root)
                        per_step.setdefault(step, []).append((seconds, rss))
                    if event.get("chart_error"):
                        raise SystemExit(f"the views step could not draw: {event['chart_error']}")
        print(
            f"\ninput: top {N_COINS} in {args.currencies} ({N_COINS * len(args.currencies.split(','))} rows a run); "
            f"median of {args.repeats} chains"
        )
        print(f"{'step':<10} {'history':<12} {'wall s':>8} {'peak RSS MB':>12} {'MemorySize for x1.5':>20}")
        for label, per_step in figures.items():
            for step, values in per_step.items():
                seconds = statistics.median(v[0] for v in values)
                rss = max(v[1] for v in values)
                print(f"{step:<10} {label:<12} {seconds:>8.2f} {rss:>12.0f} {memory_size(rss):>20}")
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
