"""The whole market at ten million rows: every command against a 17,000-coin x 600-day history (issue 18).

    nice python bench/bench_market.py [--coins 17000] [--days 600] [--only build,status,...] [--work DIR]
                                      [--repeats 3]

Builds (once, cached under /tmp/bench-market/) a 10,200,000-row history in the project's CSV: 17,000
coins x 600 daily observations in one currency, ending yesterday, generated with numpy and written
with pyarrow's CSV writer. Each coin's prices walk into the price the fake CoinGecko then serves for it,
as a real history leads into the next day's answer. Then, each command in its own process (`python main.py ...`), measures
wall time, CPU time (user + system of the child, so network and pacing waits are not in it) and peak
RSS (from wait4), and prints one table with PASS/FAIL against the issue's targets. Each command runs
--repeats times (default 3) and the verdict is on the median: this kind of virtual machine's speed moves by
up to 40 % from one minute to the next. The run is measured in alternating pairs, on the history and on an
empty one, with the history put back between them (the CSV cut back to its length, the rest copied back),
so that each is the first run of its day on the same history:

| measure                                  | target                               |
| index build from scratch (`status`)      | <= 60 s                              |
| status, top --date, quality              | <= 1 s each                          |
| plot                                     | <= 3 s                               |
| report                                   | <= 4 s                               |
| run --top all (17,000 coins, fake API)   | <= 3 s CPU, <= 1.5x an empty history |
| .state/ size                             | <= 15 % of the CSV                   |
| peak RSS of every command                | <= 600 MB                            |

The project's bytecode is compiled first (python -m compileall), as a user's first run leaves it, so that no
measure includes compiling the project where PYTHONDONTWRITEBYTECODE is set.

The history is copied into --work DIR/data (default /tmp/bench-market/work) and indexed by the first
`status` (the `build` step). A later run with --only (without build) reuses that copy and its index, so
`--only plot` measures the plot alone; give each person or experiment its own --work folder, or a
`build` elsewhere deletes the copy being measured.

The fake CoinGecko (tests/fake_coingecko.py) serves 17,000 coins from this process on 127.0.0.1.
Run it with `nice`, once or twice: it writes about 3 GB and keeps both cores busy for minutes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from statistics import median

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.fake_coingecko import FakeCoinGecko, markets_rows  # noqa: E402
from utils.history.schema import COLUMNS, HEADER_LINE  # noqa: E402

CACHE = Path("/tmp/bench-market")
MB = 2**20


def generate(path: Path, coins: int, days: int, currency: str = "usd", seed: int = 18) -> None:
    """coins x days rows, one observation per coin per day at about noon UTC, in time order, written in slices.

    Like the pipeline's own rows: no quoting (no cell holds a comma or a quote), caps and volumes as integers,
    prices as full-precision floats (pyarrow writes some in exponent form, which every CSV reader takes)."""
    rng = np.random.default_rng(seed)
    width = len(str(coins - 1))
    ids = np.array([f"coin-{i:0{width}d}" for i in range(coins)], dtype=object)
    names = np.array([f"Coin {i:0{width}d}" for i in range(coins)], dtype=object)
    symbols = np.array([f"c{i:0{width}d}" for i in range(coins)], dtype=object)
    # The market the benchmark's `run` fetches next (the fake's, the same seed): each coin's prices walk (4 % a day)
    # into its price there, one more step away, as a real history leads into the next day's answer. A history of
    # unrelated prices would make every coin of the run a 100x jump for the quality checks (see the README).
    market = markets_rows(coins, vs_currency=currency)
    final = np.log(np.array([row["current_price"] for row in market], dtype=np.float64))
    supply = np.array([row["circulating_supply"] for row in market], dtype=np.float64)
    steps = rng.normal(0, 0.04, (days + 1, coins))
    # log price of day d = the market's, less the steps of days d+1 .. days (the last one the run's own day)
    behind = np.cumsum(steps[::-1], axis=0)[::-1] - steps
    first = (datetime.now(timezone.utc) - timedelta(days=days)).replace(hour=12, minute=0, second=0, microsecond=0)
    tmp = path.with_suffix(".partial")
    with open(tmp, "wb") as fh:
        fh.write(HEADER_LINE.encode())
        options = pacsv.WriteOptions(include_header=False, quoting_style="none")
        for day in range(days):
            price = np.exp(final - behind[day])
            cap = price * supply
            order = np.argsort(-cap)
            rank = np.empty(coins, dtype=np.int64)
            rank[order] = np.arange(1, coins + 1)
            moment = first + timedelta(days=day)
            offsets = (np.arange(coins) * 137 + rng.integers(0, 999, coins)).astype("timedelta64[ms]")
            stamps = np.datetime64(moment.replace(tzinfo=None), "ms") + offsets
            updated = np.datetime_as_string(stamps, unit="ms")
            fetched = np.datetime_as_string(
                np.datetime64(moment.replace(tzinfo=None), "ms") + np.timedelta64(90_000, "ms"), unit="ms"
            )
            columns = {
                "name": names,
                "symbol": symbols,
                "current_price": price,
                "market_cap": np.round(cap).astype(np.int64),
                "price_change_percentage_24h": np.round(rng.normal(0, 4, coins), 5),
                "circulating_supply": np.round(supply, 2),
                "last_updated": np.char.add(updated.astype(str), "Z"),
                "fetched_at": np.full(coins, str(fetched) + "Z", dtype=object),
                "coin_id": ids,
                "vs_currency": np.full(coins, currency, dtype=object),
                "market_cap_rank": rank,
                "total_volume": np.round(cap * rng.uniform(0.005, 0.1, coins)).astype(np.int64),
                "high_24h": price * 1.03,
                "low_24h": price * 0.97,
                "total_supply": np.round(supply * 1.2, 2),
                "max_supply": pa.nulls(coins, pa.float64()),
                "source": np.full(coins, "coins_markets", dtype=object),
            }
            table = pa.table({name: columns[name] for name in COLUMNS})
            pacsv.write_csv(table, fh, write_options=options)
    os.replace(tmp, path)


def cached_history(coins: int, days: int) -> Path:
    path = CACHE / f"history-{coins}x{days}-v2.csv"  # v2: prices that lead into the fake's market
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        generate(path, coins, days)
        print(
            f"generated {path} ({path.stat().st_size / MB:,.0f} MB) in {time.monotonic() - started:.0f} s", flush=True
        )
    return path


def spread(values: list[float]) -> str:
    """ "2.41 s (2.12-3.94)": the median and the range of one command's repeats."""
    if len(values) == 1:
        return f"{values[0]:.2f} s"
    return f"{median(values):.2f} s ({min(values):.2f}-{max(values):.2f})"


def keep_as_is(data: Path) -> Callable[[], None]:
    """A function that puts the data folder back as it is now: the CSV cut back to its length with its
    modification time (the same file, so its index stays valid and is not rebuilt), everything else copied
    back from a copy taken now. A run's rows, raw answer and state changes are undone."""
    csv_path = data / "crypto_data.csv"
    st = csv_path.stat()
    saved = data.parent / "before-run"
    shutil.rmtree(saved, ignore_errors=True)
    shutil.copytree(data, saved, ignore=lambda folder, names: [csv_path.name] if Path(folder) == data else [])

    def put_back() -> None:
        with open(csv_path, "r+b") as fh:
            fh.truncate(st.st_size)
        os.utime(csv_path, ns=(st.st_atime_ns, st.st_mtime_ns))
        for child in data.iterdir():
            if child.name != csv_path.name:
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        for child in saved.iterdir():
            (shutil.copytree if child.is_dir() else shutil.copy2)(child, data / child.name)

    return put_back


def measure(argv: list[str], env: dict[str, str]) -> tuple[float, float, float, int]:
    """(wall s, CPU s, peak RSS MB, exit code) of `python main.py ARGV` in its own process."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "main.py"), *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    assert proc.stderr is not None
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    err = proc.stderr.read().decode(errors="replace")
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 3):
        print(f"  {' '.join(argv)} exited {proc.returncode}: {err.strip()[-400:]}", flush=True)
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, proc.returncode


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coins", type=int, default=17_000)
    parser.add_argument("--days", type=int, default=600)
    parser.add_argument("--only", default="", help="comma list of steps: build,status,top,quality,plot,report,run")
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="times each command runs (the run: pairs, on the history and on an empty one, alternating); "
        "the verdict is on the median",
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=CACHE / "work",
        help="folder of the history's copy and its index (kept between runs)",
    )
    args = parser.parse_args()
    only = set(filter(None, args.only.split(",")))
    source = cached_history(args.coins, args.days)
    work = args.work
    data = work / "data"
    results: list[tuple[str, str, str, bool]] = []
    env = {
        **os.environ,
        "PIPELINE_DATA_DIR": str(data),
        "PIPELINE_VS_CURRENCY": "usd",
        "PIPELINE_HEAL": "0",
        "PYTHONPATH": str(REPO),
    }

    def step(name: str) -> bool:
        return not only or name in only

    # The commands are measured as they run once installed: with their bytecode cached. Where
    # PYTHONDONTWRITEBYTECODE is set (as on this machine), each child would otherwise compile the project's
    # modules from source, 0.1-0.3 s of CPU a command that a user's second run never pays.
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "main.py", "flows", "lambdas", "utils"], cwd=REPO, check=True
    )

    if step("build") or not (data / ".state").exists():
        shutil.rmtree(work, ignore_errors=True)
        data.mkdir(parents=True)
        shutil.copyfile(source, data / "crypto_data.csv")  # a copy: the commands may rewrite it
        wall, cpu, rss, code = measure(["status"], env)
        results.append(
            (
                "index build from scratch (first `status`)",
                f"{wall:.1f} s wall, {cpu:.1f} s CPU",
                f"{rss:,.0f} MB",
                code == 0 and wall <= 60 and rss <= 600,
            )
        )
        csv_size = (data / "crypto_data.csv").stat().st_size
        state = folder_size(data / ".state")
        results.append(
            (
                ".state/ size vs the CSV",
                f"{state / MB:,.0f} MB of {csv_size / MB:,.0f} MB = {state / csv_size:.1%}",
                "",
                state <= 0.15 * csv_size,
            )
        )
    yesterday = (datetime.now(timezone.utc) - timedelta(days=1)).date()
    commands = [
        ("status", ["status"], 1.0),
        ("top", ["top", "--date", str(yesterday)], 1.0),
        ("quality", ["quality"], 1.0),
        ("plot", ["plot"], 3.0),
        ("report", ["report"], 4.0),
    ]
    for name, argv, limit in commands:
        if step(name):
            runs = [measure(argv, env) for _ in range(args.repeats)]
            walls, cpus = [r[0] for r in runs], [r[1] for r in runs]
            rss = max(r[2] for r in runs)
            results.append(
                (
                    f"`{' '.join(argv)}`",
                    f"{spread(walls)} wall, {spread(cpus)} CPU",
                    f"{rss:,.0f} MB",
                    all(r[3] == 0 for r in runs) and median(walls) <= limit and rss <= 600,
                )
            )
    if step("run"):
        with FakeCoinGecko(
            markets_rows(args.coins, vs_currency="usd", start=datetime.now(timezone.utc) - timedelta(minutes=45))
        ) as fake:
            run_env = {
                **env,
                "COINGECKO_API_URL": fake.base_url,
                "PIPELINE_RATE_LIMIT": "10000",
                "PIPELINE_CHARTS": "0",
            }
            put_back = keep_as_is(data)
            on_history, on_empty = [], []
            for repeat in range(args.repeats):
                if repeat:
                    put_back()  # the same history again: each run is the first of its day on it
                on_history.append(measure(["run", "--top", "all"], run_env))
                empty = CACHE / "empty"
                shutil.rmtree(empty, ignore_errors=True)
                empty.mkdir(parents=True)
                fake.advance(60)
                on_empty.append(measure(["run", "--top", "all"], {**run_env, "PIPELINE_DATA_DIR": str(empty)}))
            put_back()
        cpu, e_cpu = median([r[1] for r in on_history]), median([r[1] for r in on_empty])
        rss, e_rss = max(r[2] for r in on_history), max(r[2] for r in on_empty)
        results.append(
            (
                "`run --top all --no-charts` (17,000 coins) on the history vs an empty one, alternating",
                f"{spread([r[1] for r in on_history])} vs {spread([r[1] for r in on_empty])} CPU: medians "
                f"{cpu / e_cpu:.2f}x ({median([r[0] for r in on_history]):.1f} s vs "
                f"{median([r[0] for r in on_empty]):.1f} s wall)",
                f"{rss:,.0f} / {e_rss:,.0f} MB",
                all(r[3] == 0 for r in on_history + on_empty) and cpu <= 3 and cpu <= 1.5 * e_cpu and rss <= 600,
            )
        )
    print(f"\nload average: {Path('/proc/loadavg').read_text().strip()}")
    print("| measure | time | peak RSS | verdict |\n|---|---|---|---|")
    for what, figure, rss_text, ok in results:
        print(f"| {what} | {figure} | {rss_text} | {'PASS' if ok else 'FAIL'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
