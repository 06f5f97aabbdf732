"""Benchmark the history store: the load stage, the index's size and build, `run` and `status` on 1,000,000 rows.

The big history is what a migrated file from the original script gives: 1,000,000 rows of 250 coins, half of
the snapshots in 2019-20 and half in the 13+ months up to now, a five-year gap between them. On it:

  load     the load stage appending one 250-coin snapshot, median of --repeats, vs the same on a 250-row history:
           at most 1.2x, and under 50 ms
  size     the index and everything else in .state/ on disk: at most 15% of the CSV's size
  build    the one-time index build: delete .state/, time the next load: 10 s or less
  run      a whole `python main.py run --no-charts` for 250 coins against the local fake CoinGecko (in this
           process), median of --run-repeats: at most 1.3x the same run on an empty history
  status   `python main.py status`: under 1 s (median of --run-repeats)

Also (no target): the same snapshot loaded again (all duplicates), the load on an hourly history without a gap,
and the load on a history migrated from the original script's seven-column file (--legacy-rows rows).

Run from the repo root:  python bench/bench_load.py  [--rows N] [--repeats N] [--run-repeats N] [--tmpdir DIR] [--keep]
Exit code: 0 when every target and correctness check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from lambdas.lambda_3_load import load  # noqa: E402
from tests.fake_coingecko import FakeCoinGecko, markets_rows  # noqa: E402
from utils.history.index import HistoryIndex  # noqa: E402
from utils.history.layout import DataLayout  # noqa: E402
from utils.history.schema import HEADER_LINE, LEGACY_COLUMNS, SOURCE_MARKETS, Record, format_timestamp, rows_to_csv  # noqa: E402

N_COINS = 250
VS_CURRENCY = "eur"
VARIANTS = 16  # price variants per coin, cycled through the snapshots
OLD_START = datetime(2019, 1, 1, tzinfo=timezone.utc)
RECENT_DAYS = 370  # the recent half covers every day the free plans' gap healing reaches (365), so a run heals nothing
LOAD_RATIO_TARGET = 1.2
LOAD_MS_TARGET = 50.0
SIZE_TARGET = 0.15
BUILD_S_TARGET = 10.0
RUN_RATIO_TARGET = 1.3
STATUS_S_TARGET = 1.0


# -- realistic records -------------------------------------------------------------------------------


def _coin_profiles(seed: int = 42) -> list[dict]:
    """Static per-coin facts; ids, names and symbols as the fake server's markets_rows(250) names them."""
    rng = random.Random(seed)
    coins = []
    for i in range(N_COINS):
        price = 10 ** rng.uniform(-6, 4.8)  # from a millionth of a euro to ~60k
        circulating = 10 ** rng.uniform(6, 12)
        total = circulating * rng.uniform(1.0, 1.5)
        coins.append(
            {
                "coin_id": f"coin-{i:04d}",
                "name": f"Coin {i:04d}",
                "symbol": f"c{i:04d}",
                "price": price,
                "circulating": circulating,
                "total": total,
                "max": (total * rng.uniform(1.0, 2.0)) if rng.random() < 0.6 else None,
                "rank": i + 1,
                "volume_share": rng.uniform(0.01, 0.3),
                "lag_ms": rng.randrange(1_000, 59_000),  # how long before the snapshot CoinGecko last updated it
            }
        )
    return coins


COINS = _coin_profiles()


class Schedule:
    """When snapshot s was taken: on the hour, every `hours`; with a gap, the second half ends just before now."""

    def __init__(self, n_snapshots: int, hours: int, gap: bool) -> None:
        self.n = n_snapshots
        self.step = timedelta(hours=hours)
        self.half = n_snapshots // 2 if gap else n_snapshots
        now = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
        # The last snapshot is two hours ago, so that the next timed ones (and the fake's data) are newer.
        self.recent_start = now - timedelta(hours=2) - (n_snapshots - 1 - self.half) * self.step

    def time(self, s: int) -> datetime:
        """Snapshots past the end (s >= n) continue the recent half, one hour apart, never reaching now."""
        if s < self.half:
            return OLD_START + s * self.step
        if s < self.n:
            return self.recent_start + (s - self.half) * self.step
        return self.time(self.n - 1) + (s - self.n + 1) * timedelta(minutes=1)


def _last_updated(t: datetime, c: int) -> str:
    return format_timestamp(t - timedelta(milliseconds=COINS[c]["lag_ms"]))


def _fetched_at(t: datetime) -> str:
    return format_timestamp(t + timedelta(milliseconds=1_234))


def _record(s: int, c: int, last_updated: str, fetched_at: str) -> Record:
    """Coin c in snapshot s; prices depend only on (s + c) % VARIANTS so the big file can reuse templates."""
    coin = COINS[c]
    v = (s + c) % VARIANTS
    factor = 1.0 + (v - VARIANTS / 2) * 0.00731
    price = coin["price"] * factor
    cap = round(price * coin["circulating"])
    return Record(
        name=coin["name"],
        symbol=coin["symbol"],
        current_price=price,
        market_cap=float(cap),
        price_change_percentage_24h=(v - VARIANTS / 2) * 0.731,
        circulating_supply=coin["circulating"],
        last_updated=last_updated,
        fetched_at=fetched_at,
        coin_id=coin["coin_id"],
        vs_currency=VS_CURRENCY,
        market_cap_rank=coin["rank"],
        total_volume=cap * coin["volume_share"],
        high_24h=price * 1.0213,
        low_24h=price * 0.9787,
        total_supply=coin["total"],
        max_supply=coin["max"],
        source=SOURCE_MARKETS,
    )


def make_snapshot(s: int, schedule: Schedule) -> list[Record]:
    """The 250 Records of snapshot s."""
    t = schedule.time(s)
    fetched = _fetched_at(t)
    return [_record(s, c, _last_updated(t, c), fetched) for c in range(N_COINS)]


# -- fast generation of a big history ----------------------------------------------------------------

_LU = "\x01LU\x01"
_FA = "\x01FA\x01"


def _templates() -> list[list[tuple[str, str, str]]]:
    """templates[c][v] = the CSV line of coin c, variant v, split around last_updated and fetched_at."""
    out = []
    for c in range(N_COINS):
        per_variant = []
        for v in range(VARIANTS):
            s = (v - c) % VARIANTS  # any s with (s + c) % VARIANTS == v
            line = rows_to_csv([_record(s, c, _LU, _FA)])
            head, rest = line.split(_LU)
            mid, tail = rest.split(_FA)
            per_variant.append((head, mid, tail))
        out.append(per_variant)
    return out


def snapshot_csv_fast(s: int, schedule: Schedule, templates) -> str:
    """What rows_to_csv(make_snapshot(s)) returns, built from templates (about 30x faster)."""
    t = schedule.time(s)
    fetched = _fetched_at(t)
    # Every lag is under a minute and the snapshot is on the hour, so last_updated is in the minute before it.
    minute = format_timestamp(t - timedelta(minutes=1))[:17]  # "YYYY-MM-DDTHH:MM:"
    parts = []
    for c in range(N_COINS):
        ms = 60_000 - COINS[c]["lag_ms"]
        head, mid, tail = templates[c][(s + c) % VARIANTS]
        parts.append(f"{head}{minute}{ms // 1000:02d}.{ms % 1000:03d}Z{mid}{fetched}{tail}")
    return "".join(parts)


def write_history(csv_path: Path, schedule: Schedule) -> None:
    templates = _templates()
    # Guard: the fast lines must be exactly what the load code would have written.
    for s in (0, 1, 17, schedule.half, schedule.n - 1):
        assert snapshot_csv_fast(s, schedule, templates) == rows_to_csv(make_snapshot(s, schedule)), s
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", encoding="utf-8", newline="") as fh:
        fh.write(HEADER_LINE)
        chunk = []
        for s in range(schedule.n):
            chunk.append(snapshot_csv_fast(s, schedule, templates))
            if len(chunk) == 200:
                fh.write("".join(chunk))
                chunk.clear()
        fh.write("".join(chunk))


LEGACY_COINS = (
    ("Bitcoin", "btc", 40_000.0),
    ("Ethereum", "eth", 2_500.0),
    ("BNB", "bnb", 300.0),
    ("Cardano", "ada", 0.45),
    ("Solana", "sol", 100.0),
    ("Dogecoin", "doge", 0.08),
    ("Polkadot", "dot", 6.5),
    ("Litecoin", "ltc", 70.0),
    ("Avalanche", "avax", 30.0),
)


def write_legacy_history(csv_path: Path, rows: int) -> None:
    """The original script's seven-column file: the nine coins once an hour, ending a day ago."""
    snapshots = max(rows // len(LEGACY_COINS), 1)
    end = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) - timedelta(days=1)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", encoding="utf-8", newline="") as fh:
        fh.write(",".join(LEGACY_COLUMNS) + "\n")
        for s in range(snapshots):
            stamp = (end - (snapshots - 1 - s) * timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
            for c, (name, symbol, price) in enumerate(LEGACY_COINS):
                p = price * (1 + ((s + c) % 16 - 8) * 0.00731)
                fh.write(f"{name},{symbol},{p!r},{round(p * 1e8)},{((s + c) % 16 - 8) * 0.731:.3f},1.0e8,{stamp}\n")


# -- measuring ---------------------------------------------------------------------------------------


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """(milliseconds, result) of one call."""
    t0 = time.perf_counter()
    result = fn()
    return (time.perf_counter() - t0) * 1000.0, result


def p90(values: list[float]) -> float:
    """Nearest-rank 90th percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


def disk_bytes(path: Path) -> int:
    """Bytes a file or folder takes on disk (allocated blocks, as du counts them)."""
    if path.is_file():
        return path.stat().st_blocks * 512
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def load_pair(
    a_csv: Callable[[int], Path], b_csv: Path, snap0: list[Record], snap1: list[Record], b_snaps: list[list[Record]]
) -> tuple[list[float], list[float]]:
    """A (250 rows into a 250-row history) and B (250 rows into the big one), interleaved so noise hits both."""
    a_ms: list[float] = []
    b_ms: list[float] = []

    def case_a(i: int) -> None:
        csv_a = a_csv(i)
        load(snap0, csv_a)
        ms, rep = timed(lambda: load(snap1, csv_a))
        assert rep.appended == N_COINS, rep
        a_ms.append(ms)

    def case_b(i: int) -> None:
        ms, rep = timed(lambda: load(b_snaps[i], b_csv))
        assert rep.appended == N_COINS and rep.skipped_duplicates == 0, rep
        b_ms.append(ms)

    for i in range(len(b_snaps)):
        for step in (case_a, case_b) if i % 2 == 0 else (case_b, case_a):
            step(i)
    return a_ms, b_ms


def cli(data_dir: Path, *argv: str, env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    """Seconds of one `python main.py ...` in a child process, and what it did."""
    full = dict(os.environ, PIPELINE_DATA_DIR=str(data_dir), **env)
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "main.py"), *argv],
        env=full,
        capture_output=True,
        text=True,
        cwd=data_dir.parent,
        timeout=120,
    )
    return time.perf_counter() - t0, done


def check_cli(done: subprocess.CompletedProcess, what: str) -> None:
    if done.returncode != 0:
        raise SystemExit(f"{what} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")


def row_table(rows: list[tuple[str, list[float]]], unit: str = "ms") -> None:
    print(f"{'case':<60} {'n':>3} {'median ' + unit:>10} {'p90 ' + unit:>8} {'min ' + unit:>8}")
    print("-" * 93)
    for label, vals in rows:
        print(f"{label:<60} {len(vals):>3} {statistics.median(vals):>10.2f} {p90(vals):>8.2f} {min(vals):>8.2f}")
    print("-" * 93)


# -- the bench ---------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows in the big histories (multiple of 500)")
    ap.add_argument("--repeats", type=int, default=15, help="timed appends per case")
    ap.add_argument("--run-repeats", type=int, default=5, help="timed `run` and `status` processes per case")
    ap.add_argument(
        "--legacy-rows", type=int, default=270_000, help="rows of the seven-column file to migrate (0: skip that case)"
    )
    ap.add_argument("--no-hourly", action="store_true", help="skip the hourly history without a gap")
    ap.add_argument("--tmpdir", default=None, help="where to make temp folders (default: the system temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the temp folder (its path is printed)")
    args = ap.parse_args()
    if args.rows % (2 * N_COINS):
        ap.error(f"--rows must be a multiple of {2 * N_COINS}")
    logging.basicConfig(level=logging.WARNING)  # the load's own info lines would muddle the output
    n_snap = args.rows // N_COINS
    reps = args.repeats
    # The recent half covers RECENT_DAYS with a snapshot every `hours` (at most a day, so no day is missing).
    hours = min(24, max(1, math.ceil(RECENT_DAYS * 24 / (n_snap // 2))))
    gap = Schedule(n_snap, hours, gap=True)
    heal = (gap.time(n_snap - 1) - gap.time(gap.half)).days >= RECENT_DAYS - 1
    if not heal:
        print(
            f"note: {args.rows:,} rows do not cover the last {RECENT_DAYS} days: `run` without healing (it would "
            "ask for every missing day)"
        )

    root = Path(tempfile.mkdtemp(prefix="bench_load_", dir=args.tmpdir))
    print(
        f"temp folder: {root}  (python {sys.version.split()[0]}, {os.cpu_count()} cpus, "
        f"load average {os.getloadavg()[0]:.1f})"
    )
    ok = True
    try:
        # ---- the big history with a five-year gap -----------------------------------------------------
        big = root / "big" / "data"
        csv_b = big / "crypto_data.csv"
        layout = DataLayout(big)
        t0 = time.perf_counter()
        write_history(csv_b, gap)
        csv_bytes = csv_b.stat().st_size
        print(
            f"generated {args.rows:,} rows ({csv_bytes / 1e6:.0f} MB): {n_snap // 2:,} snapshots every {hours} h "
            f"from {gap.time(0):%Y-%m-%d} to {gap.time(gap.half - 1):%Y-%m-%d}, {n_snap - gap.half:,} from "
            f"{gap.time(gap.half):%Y-%m-%d} to {gap.time(n_snap - 1):%Y-%m-%d %H:%M}, in "
            f"{time.perf_counter() - t0:.1f} s"
        )
        os.sync()  # a real history is long on disk; don't time the writeback of the file we just wrote

        # One-time: the first load on a history without an index reads the whole CSV. Twice: .state/ deleted again.
        next_snap = n_snap
        build_ms, build_cpu = [], []
        for _ in range(2):
            shutil.rmtree(layout.state_dir, ignore_errors=True)
            snapshot, cpu0 = make_snapshot(next_snap, gap), time.process_time()
            ms, rep = timed(lambda: load(snapshot, csv_b))
            build_cpu.append(time.process_time() - cpu0)
            assert rep.appended == N_COINS, rep
            build_ms.append(ms)
            next_snap += 1
        os.sync()
        appended = 2 * N_COINS

        # ---- load: A (250-row history) and B (the big one), interleaved -----------------------------
        tiny = Schedule(2, 1, gap=False)
        snap0, snap1 = make_snapshot(0, tiny), make_snapshot(1, tiny)
        load(snap0, root / "warmup" / "crypto_data.csv")  # imports, first-call costs
        load(snap1, root / "warmup" / "crypto_data.csv")
        b_snaps = [make_snapshot(next_snap + i, gap) for i in range(reps)]
        next_snap += reps
        a_ms, b_ms = load_pair(lambda i: root / f"small_{i:02d}" / "crypto_data.csv", csv_b, snap0, snap1, b_snaps)
        appended += reps * N_COINS
        d_ms = []
        for _ in range(reps):
            ms, rep = timed(lambda: load(b_snaps[-1], csv_b))
            assert rep.appended == 0 and rep.skipped_duplicates == N_COINS, rep
            d_ms.append(ms)

        rows = [
            ("A  append 250 to a 250-row history", a_ms),
            (f"B  append 250 to the {args.rows:,}-row history (5-year gap)", b_ms),
            ("B2 the same snapshot again (0 appended)", d_ms),
        ]

        # ---- info: an hourly history without a gap, and a migrated seven-column file ---------------
        if not args.no_hourly:
            hourly = Schedule(n_snap, 1, gap=False)
            csv_h = root / "hourly" / "data" / "crypto_data.csv"
            write_history(csv_h, hourly)
            os.sync()
            load(make_snapshot(n_snap, hourly), csv_h)  # builds its index
            h_snaps = [make_snapshot(n_snap + 1 + i, hourly) for i in range(reps)]
            ha_ms, h_ms = load_pair(
                lambda i: root / f"small_h{i:02d}" / "crypto_data.csv", csv_h, snap0, snap1, h_snaps
            )
            rows += [
                ("A' append 250 to a 250-row history", ha_ms),
                (f"H  append 250 to a {args.rows:,}-row hourly history (no gap)", h_ms),
            ]
            shutil.rmtree(csv_h.parent.parent)
        if args.legacy_rows:
            csv_l = root / "legacy" / "data" / "crypto_data.csv"
            write_legacy_history(csv_l, args.legacy_rows)
            os.sync()
            migrate_ms, rep = timed(lambda: load(make_snapshot(0, tiny), csv_l))
            assert rep.migration is not None and rep.appended == N_COINS, rep
            migrated = rep.migration.rows_written
            l_snaps = [make_snapshot(1 + i, Schedule(reps + 1, 1, gap=False)) for i in range(reps)]
            la_ms, l_ms = load_pair(
                lambda i: root / f"small_l{i:02d}" / "crypto_data.csv", csv_l, snap0, snap1, l_snaps
            )
            rows += [
                ('A" append 250 to a 250-row history', la_ms),
                (f"L  append 250 to a migrated {migrated:,}-row 7-column file", l_ms),
            ]

        print()
        row_table(rows)
        print(
            f"one-time index build + first append on {args.rows:,} rows (.state/ deleted): "
            + ", ".join(f"{ms / 1000:.2f} s ({cpu:.2f} s CPU)" for ms, cpu in zip(build_ms, build_cpu))
        )
        if args.legacy_rows:
            print(
                f"one-time migration of {args.legacy_rows:,} seven-column rows + index + first append: "
                f"{migrate_ms / 1000:.2f} s"
            )
        print()

        a_med, b_med = statistics.median(a_ms), statistics.median(b_ms)
        ratio = b_med / a_med
        state_bytes = disk_bytes(layout.state_dir)
        index_bytes = sum(
            disk_bytes(Path(str(layout.index) + s))
            for s in ("", "-wal", "-shm")
            if Path(str(layout.index) + s).exists()
        )
        share = state_bytes / csv_bytes
        build_s = max(build_ms) / 1000
        checks = [
            (f"load B/A median    = {ratio:.2f}  (target <= {LOAD_RATIO_TARGET})", ratio <= LOAD_RATIO_TARGET),
            (f"load B median      = {b_med:.2f} ms  (target < {LOAD_MS_TARGET:g} ms)", b_med < LOAD_MS_TARGET),
            (
                f".state/ on disk    = {state_bytes / 1e6:.1f} MB (index {index_bytes / 1e6:.1f} MB) = {share:.1%} "
                f"of the CSV's {csv_bytes / 1e6:.0f} MB  (target <= {SIZE_TARGET:.0%})",
                share <= SIZE_TARGET,
            ),
            (
                f"index build        = {build_s:.2f} s, the slower of 2  (target <= {BUILD_S_TARGET:g} s)",
                build_s <= BUILD_S_TARGET,
            ),
        ]

        # ---- whole runs and status, as a user starts them ------------------------------------------
        fake = FakeCoinGecko(
            markets_rows(N_COINS, VS_CURRENCY, start=datetime.now(timezone.utc) - timedelta(minutes=10))
        ).start()
        try:
            env = {
                "COINGECKO_API_URL": fake.base_url,
                "PIPELINE_COINS": ",".join(c["coin_id"] for c in COINS),
                "PIPELINE_VS_CURRENCY": VS_CURRENCY,
                "PIPELINE_HEAL": "1" if heal else "0",
                # The empty history's run measures the load, not a first run's seeding of 30 days per coin.
                "PIPELINE_SEED_DAYS": "0",
            }
            run_empty: list[float] = []
            run_big: list[float] = []
            for i in range(args.run_repeats):
                fake.advance(1)  # new last_updated: every run appends 250 rows
                for big_first in (False, True) if i % 2 == 0 else (True, False):
                    where = big if big_first else root / f"run_empty_{i:02d}" / "data"
                    seconds, done = cli(where, "run", "--no-charts", env=env)
                    check_cli(done, "run")
                    (run_big if big_first else run_empty).append(seconds * 1000)
                appended += N_COINS
            status_ms = []
            for _ in range(args.run_repeats):
                seconds, done = cli(big, "status", env=env)
                check_cli(done, "status")
                status_ms.append(seconds * 1000)
        finally:
            fake.stop()
        print()
        row_table(
            [
                ("run --no-charts, 250 coins, empty history", run_empty),
                (f"run --no-charts, 250 coins, {args.rows:,}-row history", run_big),
                (f"status, {args.rows:,}-row history", status_ms),
            ]
        )
        print("status said:\n  " + "\n  ".join(done.stdout.strip().splitlines()[:6]))
        print()
        run_ratio = statistics.median(run_big) / statistics.median(run_empty)
        status_s = statistics.median(status_ms) / 1000
        checks += [
            (f"run big/empty      = {run_ratio:.2f}  (target <= {RUN_RATIO_TARGET})", run_ratio <= RUN_RATIO_TARGET),
            (f"status median      = {status_s:.2f} s  (target < {STATUS_S_TARGET:g} s)", status_s < STATUS_S_TARGET),
        ]

        # ---- correctness: every key once, and the index agrees with the CSV ------------------------
        import pandas as pd

        key = ["coin_id", "vs_currency", "last_updated"]
        df = pd.read_csv(csv_b, usecols=key, dtype=str, keep_default_na=False)
        expected = args.rows + appended
        dups = int(df.duplicated(subset=key).sum())
        with HistoryIndex(layout.index) as index:
            assert index.sync(csv_b) == "fresh"
            indexed = index.rows
            keys = len(index.stored_keys())
        checks.append(
            (
                f"correctness: {len(df):,} rows (expected {args.rows:,} + {appended:,} = {expected:,}), "
                f"{dups} duplicate keys, index rows {indexed:,}, keys {keys:,}",
                len(df) == expected and dups == 0 and indexed == expected and keys == expected,
            )
        )
        for text, passed in checks:
            print(f"{text:<100} {verdict(passed)}")
            ok &= passed
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(f"overall: {verdict(ok)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
