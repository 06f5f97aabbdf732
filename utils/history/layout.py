"""The data folder's layout: the one object that names every path in it."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from utils.errors import ConfigError

CSV_NAME = "crypto_data.csv"
PRICE_CHART = "crypto_price_trend.png"
MARKET_CAP_CHART = "crypto_market_cap_trend.png"
PERFORMANCE_CHART = "crypto_performance.png"
CHART_NAMES = (PRICE_CHART, MARKET_CAP_CHART, PERFORMANCE_CHART)
CHART_SUFFIX = ".png"
TEMP_SUFFIX = ".tmp"
RAW = "raw"  # raw API answers, also the key prefix on S3
RECORDS = "records"  # the transform's output on S3, for the load Lambda
QUALITY_NAME = "quality.csv"
REPORT_NAME = "report.html"
DATAPACKAGE_NAME = "datapackage.json"
TABLE_NAME = "crypto_data"  # the Delta table's folder (--table-format delta), beside where the CSV would be
TABLE_FORMATS = ("csv", "delta")


@dataclass(frozen=True)
class DataLayout:
    """Where the history, its index, its companions and every scratch file of one data folder live."""

    data_dir: Path
    csv_name: str = CSV_NAME

    @property
    def csv(self) -> Path:
        """The user's history: the source of truth."""
        return self.data_dir / self.csv_name

    @property
    def quarantine(self) -> Path:
        """Torn last lines and unmappable legacy rows, kept for the user to look at."""
        return self.data_dir / f"{self.csv_name}.quarantine"

    def legacy_backup(self, stamp: str) -> Path:
        """The original seven-column file, kept when it is migrated."""
        return self.data_dir / f"{self.csv_name}.legacy-{stamp}.bak"

    @property
    def state_dir(self) -> Path:
        """The program's own files: everything in it can be rebuilt from the CSV."""
        return self.data_dir / ".state"

    @property
    def index(self) -> Path:
        """The SQLite index of the history (keys, daily points, day coverage)."""
        return self.state_dir / f"{self.csv_name}.index.sqlite"

    @property
    def table(self) -> Path:
        """The history as a Delta Lake table (--table-format delta): a folder of Parquet files and _delta_log/."""
        return self.data_dir / TABLE_NAME

    @property
    def table_index(self) -> Path:
        """The SQLite index of the Delta table: the readers' daily points, covered days, keys."""
        return self.state_dir / f"{TABLE_NAME}.delta.index.sqlite"

    @property
    def labels_marker(self) -> Path:
        """That rows without a name got their coin's name once, and which coins still wait for a snapshot."""
        return self.state_dir / f"{self.csv_name}.labels.json"

    @property
    def table_labels_marker(self) -> Path:
        """The same for the Delta table (--table-format delta)."""
        return self.state_dir / f"{TABLE_NAME}.delta.labels.json"

    @property
    def old_state(self) -> Path:
        """The JSON state of versions before the index; removed when found."""
        return self.state_dir / f"{self.csv_name}.state.json"

    @property
    def lock(self) -> Path:
        """The cross-process lock every writer of the history takes."""
        return self.state_dir / f"{self.csv_name}.lock"

    @property
    def status(self) -> Path:
        """The last run's outcome and the daemon's schedule."""
        return self.state_dir / "status.json"

    @property
    def daemon_pid(self) -> Path:
        """One daemon per data folder: its PID, locked while it runs."""
        return self.state_dir / "daemon.pid"

    @property
    def top_members(self) -> Path:
        """Which coins were in the top N of each currency, and when they entered and left."""
        return self.state_dir / "top-members.json"

    @property
    def api_credits(self) -> Path:
        """The API credit ledger: requests to CoinGecko per UTC month, endpoint and currency (attempts, 429s)."""
        return self.state_dir / "api-credits.json"

    @property
    def api_credits_lock(self) -> Path:
        """Taken while a process merges its counts into the ledger."""
        return self.state_dir / "api-credits.json.lock"

    @property
    def coin_searches(self) -> Path:
        """The /search answers for ids that stopped returning data, one per coin per day."""
        return self.state_dir / "coin-searches.json"

    def manifest(self, name: str) -> Path:
        """A resumable backfill's progress."""
        return self.state_dir / f"{name}.json"

    @property
    def quality(self) -> Path:
        """The quality findings: one row per (observation, rule), appended, never rewritten."""
        return self.data_dir / QUALITY_NAME

    @property
    def report(self) -> Path:
        """The one-page HTML report (charts, latest prices, coverage, findings, last run)."""
        return self.data_dir / REPORT_NAME

    @property
    def datapackage(self) -> Path:
        """The Frictionless Data Package that describes the CSV files."""
        return self.data_dir / DATAPACKAGE_NAME

    @property
    def notify_state(self) -> Path:
        """Consecutive failed runs, so a notification can say 'ok again after N failures'."""
        return self.state_dir / "notify.json"

    @property
    def raw_dir(self) -> Path:
        """Raw API answers as gzip JSON under raw/YYYY/MM/DD/."""
        return self.data_dir / RAW

    def chart(self, name: str) -> Path:
        return self.data_dir / name

    @property
    def charts(self) -> tuple[Path, ...]:
        """The primary currency's charts (today's names)."""
        return tuple(self.chart(name) for name in CHART_NAMES)

    def charts_of(self, currency: str, primary: str) -> tuple[Path, ...]:
        """The price, market-cap and performance charts of one currency (see chart_names)."""
        return tuple(self.chart(name) for name in chart_names(currency, primary))

    def temp_prefix(self, final: Path) -> str:
        """The name prefix of a temporary file that becomes `final` once renamed."""
        return f".{final.name}."

    @property
    def pending_findings(self) -> Path:
        """Quality findings that could not be written to quality.csv yet: the next run writes them."""
        return self.state_dir / "pending-findings.json"

    def temp_files(self) -> list[Path]:
        """Temporary files this program writes in the data folder, its state folder and raw/YYYY/MM/DD/."""
        found: list[Path] = []
        folders = [self.data_dir, self.state_dir]
        with contextlib.suppress(OSError):
            if self.raw_dir.is_dir() and not self.raw_dir.is_symlink():
                folders += [
                    p
                    for p in self.raw_dir.glob("[0-9][0-9][0-9][0-9]/[0-9][0-9]/[0-9][0-9]")
                    if p.is_dir() and not any(q.is_symlink() for q in (p, p.parent, p.parent.parent))
                ]
        for folder in folders:
            try:
                found.extend(p for p in folder.glob(f".*{TEMP_SUFFIX}") if p.is_file() and not p.is_symlink())
            except OSError:
                continue
        return found

    def chart_files(self, currencies: Sequence[str] = ()) -> tuple[Path, ...]:
        """Every chart of the folder: the plain names, each currency's `_<cur>` names, and any on disk."""
        names = list(CHART_NAMES)
        for currency in currencies:
            names += suffixed_chart_names(currency)
        with contextlib.suppress(OSError):
            names += sorted(p.name for p in self.data_dir.iterdir() if is_chart_name(p.name))
        return tuple(self.chart(name) for name in dict.fromkeys(names))

    def managed_files(self, currencies: Sequence[str] = ()) -> tuple[tuple[str, Path], ...]:
        """(what, path) of every file the pipeline writes in this folder (besides raw/ and the backfill progress)."""
        index = str(self.index)
        return (
            ("history CSV", self.csv),
            ("quarantine file", self.quarantine),
            ("history index", self.index),
            ("index journal", Path(index + "-wal")),
            ("index journal", Path(index + "-shm")),
            ("history lock", self.lock),
            ("status file", self.status),
            ("daemon PID file", self.daemon_pid),
            ("top-N membership file", self.top_members),
            ("coin search memory", self.coin_searches),
            ("notification state", self.notify_state),
            ("pending findings", self.pending_findings),
            ("label marker", self.labels_marker),
            ("quality findings", self.quality),
            ("report", self.report),
            ("data package", self.datapackage),
            *(("chart", path) for path in self.chart_files(currencies)),
        )

    def managed(self) -> tuple[Path, ...]:
        """Every file and folder the pipeline writes: nothing else may be pointed at them (a log file, say)."""
        return (self.state_dir, self.raw_dir, self.table, *(path for _, path in self.managed_files()))

    def is_managed_name(self, name: str) -> bool:
        """A file name in the data folder that the pipeline writes or may write (charts of any currency included)."""
        return (
            name in {p.name for _, p in self.managed_files()} or is_chart_name(name) or name.startswith(self.csv_name)
        )


CHART_NAME_RE = re.compile(
    "^("
    + "|".join(re.escape(n.removesuffix(CHART_SUFFIX)) for n in CHART_NAMES)
    + r")(_[a-z0-9][a-z0-9_-]*)?"
    + re.escape(CHART_SUFFIX)
    + r"\Z"
)


def is_chart_name(name: str) -> bool:
    """crypto_price_trend.png, crypto_price_trend_usd.png and kin: a chart of some currency."""
    return bool(CHART_NAME_RE.match(name))


def primary_currency(vs_currency: str | Sequence[str]) -> str:
    """The first configured currency: the one whose charts keep the plain names (a list of currencies is coming)."""
    return (vs_currency if isinstance(vs_currency, str) else vs_currency[0]).strip().lower()


def chart_names(currency: str, primary: str) -> tuple[str, ...]:
    """The three chart file names of a currency: the primary's are today's, another's end in _<cur>.png."""
    currency = currency.strip().lower()
    return CHART_NAMES if currency == primary.strip().lower() else suffixed_chart_names(currency)


def suffixed_chart_names(currency: str) -> tuple[str, ...]:
    """The names a currency's charts take when it is not the first configured one: crypto_price_trend_usd.png."""
    return tuple(name.removesuffix(CHART_SUFFIX) + f"_{currency.strip().lower()}{CHART_SUFFIX}" for name in CHART_NAMES)


def is_s3(location: Path | str) -> bool:
    """The one rule for "is it S3?": an s3:// URL (every local folder is a Path or a plain path)."""
    return str(location).startswith("s3://")


def data_dir_option(location: Path | str) -> str:
    """`--data-dir X` for a command in a hint, so that it reaches this history from the current folder."""
    return f"--data-dir {shlex.quote(display_path(location))}"


def display_path(path: Path | str) -> str:
    """A path relative to the current folder when it lies inside it; s3:// locations as they are."""
    if is_s3(path):
        return str(path)
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


# S3's bucket naming rules: 3-63 of a-z 0-9 . -, a letter or digit at each end, no "..", not an IP address.
BUCKET_RE = re.compile(r"^(?!xn--|sthree-|\d+\.\d+\.\d+\.\d+$)[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def split_s3_url(url: str) -> tuple[str, str]:
    """(bucket, prefix ending in / or empty) of s3://bucket/prefix, checked before anything is created. Raises ConfigError."""
    try:
        parts = urlsplit(url)
    except ValueError:  # "s3://[x": urlsplit's own complaint about IPv6 brackets
        parts = urlsplit("")
    if parts.scheme != "s3" or not parts.netloc:
        raise ConfigError(f"data-dir: {url!r} is not an s3://bucket/prefix URL")
    if not BUCKET_RE.match(parts.netloc) or ".." in parts.netloc or parts.netloc.endswith("-s3alias"):
        raise ConfigError(
            f"data-dir: {parts.netloc!r} is not an S3 bucket name (3-63 lower-case letters, digits, "
            "dots and hyphens, starting and ending with a letter or digit)"
        )
    prefix = parts.path.strip("/")
    if any(part in (".", "..") for part in prefix.split("/")) or "\0" in prefix:
        raise ConfigError(f"data-dir: {url!r} may not contain '.' or '..' folders or a NUL character")
    return parts.netloc, (prefix + "/" if prefix else "")


def same_file_as(st: os.stat_result, path: Path | None, layout: DataLayout) -> Path | None:
    """The managed file (or file in the data folder) that is the same file as `st`, other than `path` itself."""
    for _, other in layout.managed_files():
        if path is not None and other == path:
            continue
        try:
            ost = os.lstat(other)
        except OSError:
            continue
        if (ost.st_dev, ost.st_ino) == (st.st_dev, st.st_ino):
            return other
    for folder in (layout.state_dir, layout.raw_dir):
        for root, _, names in os.walk(folder):
            for name in names:
                other = Path(root) / name
                if path is not None and other == path:
                    continue
                with contextlib.suppress(OSError):
                    ost = os.lstat(other)
                    if (ost.st_dev, ost.st_ino) == (st.st_dev, st.st_ino):
                        return other
    return None


def log_file_conflict(log_file: Path, layout: DataLayout) -> str | None:
    """Why a --log-file may not be used (it is, lies in, or is the same file as something the pipeline manages,
    or is a link), or None. Compared by name, by where links lead, and by device and inode."""
    data_dir = layout.data_dir.resolve()
    managed = tuple(path.resolve() for path in layout.managed())
    log_file = log_file if log_file.is_absolute() else Path.cwd() / log_file
    for candidate in {Path(os.path.normpath(log_file)), log_file.resolve()}:
        if candidate == data_dir or any(candidate == path or path in candidate.parents for path in managed):
            return "is a file the pipeline manages"
        if candidate.parent == data_dir and (
            layout.is_managed_name(candidate.name)
            or (candidate.name.startswith(".") and candidate.name.endswith(".tmp"))
        ):
            return "is a file the pipeline manages"
    try:
        st = os.lstat(log_file)
    except OSError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link, and a log is never written through a link"
    if stat.S_ISDIR(st.st_mode):
        return "is a folder"
    if st.st_nlink > 1:
        other = same_file_as(st, None, layout)
        if other is None:
            with contextlib.suppress(OSError):
                for entry in os.scandir(layout.data_dir):
                    if entry.is_file(follow_symlinks=False):
                        est = entry.stat(follow_symlinks=False)
                        if (est.st_dev, est.st_ino) == (st.st_dev, st.st_ino):
                            other = Path(entry.path)
                            break
        if other is not None:
            return f"is the same file as {other} (a hard link)"
    return None
