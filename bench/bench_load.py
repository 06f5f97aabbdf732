"""Benchmark the load step: appending one 250-coin snapshot to an empty vs a 1,000,000-row CSV history.

Target: appending one snapshot to a 1,000,000-row history takes at most 1.5x as long as appending it to an
empty one, and under 100 ms for the load itself.

Run from the repo root:  python bench/bench_load.py  [--rows N] [--repeats N] [--tmpdir DIR] [--keep]
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
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from lambdas.lambda_3_load import load  # noqa: E402
from utils import history  # noqa: E402
from utils.schema import HEADER_LINE, SOURCE_MARKETS, Record, format_timestamp, rows_to_csv  # noqa: E402

N_COINS = 250
VS_CURRENCY = "eur"
BASE = datetime(2024, 1, 1, tzinfo=timezone.utc)
INTERVAL = timedelta(hours=1)  # one snapshot an hour
VARIANTS = 16  # price variants per coin, cycled through the snapshots
RATIO_TARGET = 1.5
ABS_TARGET_MS = 100.0


# -- realistic records -------------------------------------------------------------------------------

def _coin_profiles(seed: int = 42) -> list[dict]:
    """Static per-coin facts: id, name, symbol, base price, supply, rank."""
    rng = random.Random(seed)
    coins = []
    for i in range(N_COINS):
        price = 10 ** rng.uniform(-6, 4.8)  # from a millionth of a euro to ~60k
        circulating = 10 ** rng.uniform(6, 12)
        total = circulating * rng.uniform(1.0, 1.5)
        coins.append({
            "coin_id": f"coin-{i:03d}", "name": f"Coin {i:03d}", "symbol": f"c{i:03d}",
            "price": price, "circulating": circulating, "total": total,
            "max": (total * rng.uniform(1.0, 2.0)) if rng.random() < 0.6 else None,
            "rank": i + 1, "volume_share": rng.uniform(0.01, 0.3),
            "lag_ms": rng.randrange(1_000, 59_000),  # how long before the snapshot CoinGecko last updated it
        })
    return coins


COINS = _coin_profiles()


def _snapshot_time(s: int) -> datetime:
    return BASE + s * INTERVAL


def _last_updated(s: int, c: int) -> str:
    return format_timestamp(_snapshot_time(s) - timedelta(milliseconds=COINS[c]["lag_ms"]))


def _fetched_at(s: int) -> str:
    return format_timestamp(_snapshot_time(s) + timedelta(milliseconds=1_234))


def _record(s: int, c: int, last_updated: str, fetched_at: str) -> Record:
    """Coin c in snapshot s; prices depend only on (s + c) % VARIANTS so the big file can reuse templates."""
    coin = COINS[c]
    v = (s + c) % VARIANTS
    factor = 1.0 + (v - VARIANTS / 2) * 0.00731
    price = coin["price"] * factor
    cap = round(price * coin["circulating"])
    return Record(
        name=coin["name"], symbol=coin["symbol"], current_price=price, market_cap=float(cap),
        price_change_percentage_24h=(v - VARIANTS / 2) * 0.731, circulating_supply=coin["circulating"],
        last_updated=last_updated, fetched_at=fetched_at, coin_id=coin["coin_id"], vs_currency=VS_CURRENCY,
        market_cap_rank=coin["rank"], total_volume=cap * coin["volume_share"], high_24h=price * 1.0213,
        low_24h=price * 0.9787, total_supply=coin["total"], max_supply=coin["max"], source=SOURCE_MARKETS,
    )


def make_snapshot(s: int) -> list[Record]:
    """The 250 Records of snapshot s (snapshot s is s hours after 2024-01-01T00:00Z)."""
    fetched = _fetched_at(s)
    return [_record(s, c, _last_updated(s, c), fetched) for c in range(N_COINS)]


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


def snapshot_csv_fast(s: int, templates) -> str:
    """What rows_to_csv(make_snapshot(s)) returns, built from templates (about 30x faster)."""
    t = _snapshot_time(s)
    fetched = _fetched_at(s)
    # Every lag is under a minute and the snapshot is on the hour, so last_updated is in the minute before it.
    minute = format_timestamp(t - timedelta(minutes=1))[:17]  # "YYYY-MM-DDTHH:MM:"
    parts = []
    for c in range(N_COINS):
        ms = 60_000 - COINS[c]["lag_ms"]
        head, mid, tail = templates[c][(s + c) % VARIANTS]
        parts.append(f"{head}{minute}{ms // 1000:02d}.{ms % 1000:03d}Z{mid}{fetched}{tail}")
    return "".join(parts)


def write_history(csv_path: Path, n_snapshots: int) -> None:
    templates = _templates()
    # Guard: the fast lines must be exactly what the load code would have written.
    for s in (0, 1, 17, n_snapshots - 1):
        assert snapshot_csv_fast(s, templates) == rows_to_csv(make_snapshot(s)), f"template mismatch at {s}"
    with open(csv_path, "w", encoding="utf-8", newline="") as fh:
        fh.write(HEADER_LINE)
        chunk = []
        for s in range(n_snapshots):
            chunk.append(snapshot_csv_fast(s, templates))
            if len(chunk) == 200:
                fh.write("".join(chunk))
                chunk.clear()
        fh.write("".join(chunk))


# -- timing ------------------------------------------------------------------------------------------

def timed_load(records: list[Record], csv_path: Path):
    t0 = time.perf_counter()
    report = load(records, csv_path)
    return (time.perf_counter() - t0) * 1000.0, report


def p90(values: list[float]) -> float:
    """Nearest-rank 90th percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows in the big history (multiple of 250)")
    ap.add_argument("--repeats", type=int, default=15, help="timed appends per case")
    ap.add_argument("--tmpdir", default=None, help="where to make temp folders (default: the system temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the temp folder (its path is printed)")
    args = ap.parse_args()
    if args.rows % N_COINS:
        ap.error(f"--rows must be a multiple of {N_COINS}")
    logging.basicConfig(level=logging.WARNING)  # the load's own info lines would muddle the output
    n_snap = args.rows // N_COINS
    reps = args.repeats

    root = Path(tempfile.mkdtemp(prefix="bench_load_", dir=args.tmpdir))
    print(f"temp folder: {root}  (python {sys.version.split()[0]}, {os.cpu_count()} cpus)")
    ok = True
    try:
        # Snapshots are built before timing; only load() is on the clock.
        # ---- Case B setup: a big history whose state file is built (one-time cost, reported apart) -----
        csv_b = root / "big" / "history.csv"
        csv_b.parent.mkdir()
        t0 = time.perf_counter()
        write_history(csv_b, n_snap)
        gen_s = time.perf_counter() - t0
        size_mb = csv_b.stat().st_size / 1e6
        print(f"generated {args.rows:,} rows ({size_mb:.0f} MB) in {gen_s:.1f} s")
        os.sync()  # a real history is long on disk; don't time the writeback of the file we just wrote

        # One-time: the first load on a history without a state file scans the whole CSV.
        rebuild_ms, rep = timed_load(make_snapshot(n_snap), csv_b)
        assert rep.appended == N_COINS, rep
        appended = rep.appended
        assert history.state_path(csv_b).exists()
        os.sync()

        # ---- Warm-up (imports, first-call costs) ---------------------------------------------------
        snap0, snap1 = make_snapshot(0), make_snapshot(1)
        warm = root / "warmup" / "history.csv"
        load(snap0, warm)
        load(snap1, warm)

        # ---- A and B interleaved, so machine noise hits both alike -----------------------------------
        # A: fresh folder, snapshot 0 loaded untimed (creates file + state), then snapshot 1 timed: a
        #    250-row history getting 250 new rows.
        # B: the next snapshot appended to the big history (250 new rows, later last_updated each time).
        b_snaps = [make_snapshot(n_snap + 1 + i) for i in range(reps)]
        a_ms, b_ms = [], []

        def case_a(i: int) -> None:
            csv_a = root / f"empty_{i:02d}" / "history.csv"
            load(snap0, csv_a)
            ms, rep = timed_load(snap1, csv_a)
            assert rep.appended == N_COINS, rep
            a_ms.append(ms)

        def case_b(i: int) -> None:
            nonlocal appended
            ms, rep = timed_load(b_snaps[i], csv_b)
            assert rep.appended == N_COINS and rep.skipped_duplicates == 0, rep
            appended += rep.appended
            b_ms.append(ms)

        for i in range(reps):
            for step in ((case_a, case_b) if i % 2 == 0 else (case_b, case_a)):
                step(i)

        # ---- Second run: the same snapshot again, all duplicates -----------------------------------
        d_ms = []
        for _ in range(reps):
            ms, rep = timed_load(b_snaps[-1], csv_b)
            assert rep.appended == 0 and rep.skipped_duplicates == N_COINS, rep
            d_ms.append(ms)

        # ---- Table ---------------------------------------------------------------------------------
        a_med, b_med, d_med = (statistics.median(x) for x in (a_ms, b_ms, d_ms))
        ratio = b_med / a_med
        rows = [
            ("A  append 250 to 250-row history", a_ms),
            (f"B  append 250 to {args.rows:,}-row history", b_ms),
            (f"B2 same snapshot again (0 appended, {args.rows:,})", d_ms),
        ]
        print()
        print(f"{'case':<52} {'n':>3} {'median ms':>10} {'p90 ms':>8} {'min ms':>8}")
        print("-" * 85)
        for label, vals in rows:
            print(f"{label:<52} {len(vals):>3} {statistics.median(vals):>10.2f} {p90(vals):>8.2f} {min(vals):>8.2f}")
        print("-" * 85)
        print(f"one-time state rebuild + first append on {args.rows:,} rows: {rebuild_ms:,.0f} ms (not in the table)")
        print()
        r_ok = ratio <= RATIO_TARGET
        b_ok = b_med < ABS_TARGET_MS
        print(f"ratio B/A median  = {ratio:.2f}  (target <= {RATIO_TARGET})       {'PASS' if r_ok else 'FAIL'}")
        print(f"B median          = {b_med:.2f} ms  (target < {ABS_TARGET_MS:g} ms)   {'PASS' if b_ok else 'FAIL'}")
        ok &= r_ok and b_ok

        # ---- Correctness ---------------------------------------------------------------------------
        import pandas as pd

        key = ["coin_id", "vs_currency", "last_updated"]
        df = pd.read_csv(csv_b, usecols=key, dtype=str, keep_default_na=False)
        expected = args.rows + appended
        dups = int(df.duplicated(subset=key).sum())
        state = history.current_state(csv_b)
        c_ok = len(df) == expected and dups == 0 and state.rows == expected
        print(f"correctness: {len(df):,} rows (expected {args.rows:,} + {appended:,} = {expected:,}), "
              f"{dups} duplicate keys, state rows {state.rows:,}   {'PASS' if c_ok else 'FAIL'}")
        ok &= c_ok
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(f"overall: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
