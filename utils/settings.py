"""Settings: one frozen object built once from flags > environment > config file > defaults."""

from __future__ import annotations

import importlib.util
import math
import os
import tempfile
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from utils.errors import ConfigError
from utils.history.layout import TEMP_SUFFIX, DataLayout, split_s3_url
from utils.coingecko.plans import DEFAULT_MAX_RESPONSE_MB, UNIVERSE_CAP, default_base_url
from utils.history.schema import COIN_ID_RE, CURRENCY_RE

PROJECT_DIR = Path(__file__).resolve().parent.parent
DEFAULT_COINS = ("bitcoin", "ethereum", "binancecoin", "cardano", "solana", "dogecoin", "polkadot",
                 "litecoin", "avalanche-2")
PLANS = ("public", "demo", "pro")
SCALES = ("auto", "log", "linear")
FIRST_DATE, LAST_DATE = date(1970, 1, 1), date(2999, 12, 31)  # what --since/--until accept: date arithmetic stays safe
MAX_DAYS = 36500  # a century: more than the history can hold, far below what date arithmetic overflows at


@dataclass(frozen=True)
class Settings:
    """Everything a command needs to know, resolved once."""

    command: str = "run"
    coins: tuple[str, ...] = DEFAULT_COINS
    vs_currency: str = "eur"  # the first (primary) of vs_currencies: charts, plot, status and top read it
    vs_currencies: tuple[str, ...] = ("eur",)  # every currency a run, backfill or heal fetches
    data_dir: Path = PROJECT_DIR / "data"
    api_plan: str = "public"
    api_url: str = "https://api.coingecko.com/api/v3"
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 30.0
    max_retry_wait: float = 120.0
    lock_timeout: float = 300.0
    charts: bool = True
    verbosity: int = 0
    plot_coins: tuple[str, ...] = ()
    since: date | None = None
    until: date | None = None
    days: int | None = None
    scale: str = "auto"
    at: time = time(0, 0)
    timezone: str | None = None
    retry_delays: tuple[float, ...] = (5.0, 15.0, 60.0)
    initial_run: bool = True
    log_file: Path | None = None
    rate_limit: int | None = None
    max_response_mb: float = DEFAULT_MAX_RESPONSE_MB
    heal: bool = True
    data_url: str | None = None  # s3://bucket/prefix when the history lives on S3; data_dir is then scratch
    top: int | None = None  # track the top N by market cap in each currency (with the coins, if given)
    top_backfill: bool = False  # heal a coin that enters the top N back to the start of the history
    date: date | None = None  # `top`: the UTC day to show
    spike_threshold: float = 0.5  # quality: a move beyond this fraction that reverses within a day is a spike
    notify_url: str | None = field(default=None, repr=False)  # a webhook URL may carry its own token
    notify_on: tuple[str, ...] = ("failure", "findings")
    seed_days: int = 30  # a run on an empty history also fills this many past days per coin (0: off)

    @property
    def location(self) -> str:
        """Where the history lives: the s3:// URL or the local folder."""
        return self.data_url or str(self.data_dir)

    @property
    def layout(self) -> DataLayout:
        """Every path in the data folder (for an s3:// history, the local scratch copy)."""
        return DataLayout(self.data_dir)

    @property
    def csv_path(self) -> Path:
        return self.layout.csv

    @property
    def state_dir(self) -> Path:
        return self.layout.state_dir

    @property
    def raw_dir(self) -> Path:
        return self.layout.raw_dir


# name -> (environment variable, parser). Config-file keys are the names themselves.
def _parse_coins(text: str) -> tuple[str, ...]:
    ids: dict[str, None] = {}  # ordered, and O(1) membership for 10,000 ids
    for part in str(text).split(","):
        coin = part.strip().lower()
        if not coin:
            continue
        if not COIN_ID_RE.match(coin):
            raise ConfigError(f"coins: {part.strip()!r} is not a CoinGecko API id (ids look like 'bitcoin' "
                              "or 'avalanche-2'); `python main.py check` suggests the right one")
        ids.setdefault(coin, None)
    if not ids:
        raise ConfigError("coins: the list is empty; give ids like --coins bitcoin,ethereum")
    return tuple(ids)


def _parse_currencies(text: Any) -> tuple[str, ...]:
    parts = text if isinstance(text, list) else str(text).split(",")
    found: dict[str, None] = {}
    for part in parts:
        cur = str(part).strip().lower()
        if not cur:
            continue
        if not CURRENCY_RE.match(cur):
            raise ConfigError(f"vs-currency: {str(part).strip()!r} is not a currency code; use one like eur, usd "
                              "or btc, or several: eur,usd")
        found.setdefault(cur, None)
    if not found:
        raise ConfigError("vs-currency: the list is empty; give one like eur, or several: eur,usd")
    return tuple(found)


MAX_TOP = UNIVERSE_CAP  # `--top all` is the whole market, capped here (CoinGecko lists about 17,000 coins)


def _parse_top(text: Any) -> int:
    if isinstance(text, str) and text.strip().lower() == "all":
        return MAX_TOP
    try:
        value = int(str(text).strip())
    except ValueError:
        raise ConfigError(f"top: {text!r} is not a whole number of coins; use 1 to {MAX_TOP:,} or all") from None
    if not 1 <= value <= MAX_TOP:
        raise ConfigError(f"top: {value} is out of range; use 1 to {MAX_TOP:,} coins, or all for the whole market")
    return value


def _parse_plan(text: str) -> str:
    plan = str(text).strip().lower()
    if plan not in PLANS:
        raise ConfigError(f"api-plan: {text!r} is not a plan; use one of {', '.join(PLANS)}")
    return plan


def _parse_url(text: str) -> str:
    url = str(text).strip().rstrip("/")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - reading it validates it
    except ValueError as exc:
        raise ConfigError(f"api-url: {text!r} is not a valid URL ({exc}); use e.g. {default_base_url('public')}") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"api-url: {text!r} is not an http(s) URL; use e.g. {default_base_url('public')}")
    if parts.username or parts.password or parts.query:
        raise ConfigError("api-url: put no credentials or query in the URL; set the key in COINGECKO_API_KEY")
    return url


def _seconds(name: str, low: float, high: float) -> Callable[[Any], float]:
    def parse(text: Any) -> float:
        try:
            value = float(text)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{name}: {text!r} is not a number of seconds") from None
        if not math.isfinite(value) or not low <= value <= high:
            raise ConfigError(f"{name}: {text!r} is out of range; use {low:g} to {high:g} seconds")
        return value
    return parse


def _parse_bool(name: str) -> Callable[[Any], bool]:
    def parse(text: Any) -> bool:
        if isinstance(text, bool):
            return text
        value = str(text).strip().lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{name}: {text!r} is not true or false")
    return parse


def _parse_date(name: str) -> Callable[[Any], date]:
    def parse(text: Any) -> date:
        if isinstance(text, (datetime, time)):  # TOML's own date-times and times: a day is asked for
            raise ConfigError(f"{name}: {text} is a date and time; write a day alone, like {name} = 2024-01-31")
        try:
            day = text if isinstance(text, date) else date.fromisoformat(str(text).strip())
        except ValueError:
            raise ConfigError(f"{name}: {text!r} is not a date; use YYYY-MM-DD") from None
        if not FIRST_DATE <= day <= LAST_DATE:
            raise ConfigError(f"{name}: {day} is out of range; use a date from {FIRST_DATE} to {LAST_DATE}")
        return day
    return parse


def _parse_days(text: Any) -> int:
    try:
        value = int(str(text).strip())
    except ValueError:
        raise ConfigError(f"days: {text!r} is not a whole number of days") from None
    if not 1 <= value <= MAX_DAYS:
        raise ConfigError(f"days: {value} is out of range; use 1 or more, up to {MAX_DAYS} (a century)")
    return value


def _parse_scale(text: Any) -> str:
    value = str(text).strip().lower()
    if value not in SCALES:
        raise ConfigError(f"scale: {text!r} is not one of {', '.join(SCALES)}")
    return value


def _parse_at(text: Any) -> time:
    value = str(text).strip()
    try:
        hour, minute = value.split(":")
        return time(int(hour), int(minute))
    except ValueError:
        raise ConfigError(f"at: {text!r} is not a time of day; use HH:MM, e.g. 00:00 or 06:30") from None


def _parse_delays(text: Any) -> tuple[float, ...]:
    parts = text if isinstance(text, list) else str(text).split(",")
    try:
        delays = tuple(float(p) for p in parts if str(p).strip())
    except (ValueError, OverflowError):
        raise ConfigError(f"retry-delays: {text!r} is not a list of minutes like 5,15,60") from None
    if not delays or any(not math.isfinite(d) or d <= 0 or d > 1440 for d in delays):
        raise ConfigError("retry-delays: give minutes between 0 and 1440, like 5,15,60")
    return delays


def _parse_rate(text: Any) -> int:
    try:
        value = int(str(text).strip())
    except ValueError:
        raise ConfigError(f"rate-limit: {text!r} is not a whole number of calls per minute") from None
    if not 1 <= value <= 10000:
        raise ConfigError("rate-limit: use 1 to 10000 calls per minute")
    return value


MAX_SEED_DAYS = 3650


def _parse_seed_days(text: Any) -> int:
    try:
        value = int(str(text).strip())
    except ValueError:
        raise ConfigError(f"seed-days: {text!r} is not a whole number of days; use 0 (off) to {MAX_SEED_DAYS}") from None
    if not 0 <= value <= MAX_SEED_DAYS:
        raise ConfigError(f"seed-days: use 0 (off) to {MAX_SEED_DAYS} days")
    return value


def _parse_megabytes(text: Any) -> float:
    try:
        value = float(str(text).strip())
    except ValueError:
        raise ConfigError(f"max-response-mb: {text!r} is not a number of megabytes") from None
    if not math.isfinite(value) or not 0.001 <= value <= 4096:
        raise ConfigError(f"max-response-mb: {text!r} is out of range; use 0.001 to 4096 megabytes")
    return value


def _parse_key(text: Any) -> str:
    key = str(text).strip()
    if not key or any(ch.isspace() or not ch.isprintable() for ch in key):
        raise ConfigError("COINGECKO_API_KEY holds spaces or control characters; paste the key alone")
    if not key.isascii():  # an HTTP header carries ASCII only; the message never quotes the key
        raise ConfigError("COINGECKO_API_KEY holds non-ASCII characters (a typographic dash or quote?); "
                          "paste the key as the CoinGecko dashboard shows it")
    return key


def _path(name: str) -> Callable[[Any], Path]:
    """A local path option: ~ expanded, refused when it cannot name a file."""
    def parse(text: Any) -> Path:
        return local_path(name, str(text))
    return parse


def local_path(name: str, text: str) -> Path:
    """A path from a flag, variable or config file, ~ expanded. Raises ConfigError."""
    if "\0" in text:
        raise ConfigError(f"{name}: {text!r} holds a NUL character, which no file name can")
    try:
        return Path(text).expanduser()
    except RuntimeError:  # ~user of a user that does not exist, or no home folder at all
        raise ConfigError(f"{name}: {text!r} starts with ~ but that home folder is unknown; write the path in full") from None


def _parse_data_dir(text: Any) -> Path | str:
    text = str(text)
    if text.startswith("s3://"):
        split_s3_url(text.strip())  # bucket and prefix checked before anything is created
        return text.strip()
    return local_path("data-dir", text)


def _parse_threshold(text: Any) -> float:
    try:
        value = float(str(text).strip().rstrip("%")) / (100 if str(text).strip().endswith("%") else 1)
    except ValueError:
        raise ConfigError(f"spike-threshold: {text!r} is not a number; use a fraction like 0.5 (50%)") from None
    if not math.isfinite(value) or not 0.01 <= value <= 100:
        raise ConfigError("spike-threshold: use 0.01 to 100 (a fraction of the price: 0.5 is a 50% move)")
    return value


def _parse_notify_url(text: Any) -> str | None:
    url = str(text).strip()
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError("notify-url: not an http(s) URL; use a webhook URL like https://ntfy.sh/your-topic")
    return url


NOTIFY_EVENTS = ("failure", "findings", "always")


def _parse_notify_on(text: Any) -> tuple[str, ...]:
    parts = text if isinstance(text, list) else str(text).split(",")
    events = tuple(dict.fromkeys(str(p).strip().lower() for p in parts if str(p).strip()))
    bad = [e for e in events if e not in NOTIFY_EVENTS]
    if bad or not events:
        raise ConfigError(f"notify-on: {text!r} is not one of {', '.join(NOTIFY_EVENTS)} (or a comma list of them)")
    return events


OPTIONS: dict[str, tuple[str | None, Callable[[Any], Any]]] = {
    "coins": ("PIPELINE_COINS", _parse_coins),
    "vs_currency": ("PIPELINE_VS_CURRENCY", _parse_currencies),
    "data_dir": ("PIPELINE_DATA_DIR", _parse_data_dir),
    "api_url": ("COINGECKO_API_URL", _parse_url),
    "api_key": ("COINGECKO_API_KEY", _parse_key),
    "api_plan": ("COINGECKO_API_PLAN", _parse_plan),
    "timeout": ("PIPELINE_TIMEOUT", _seconds("timeout", 0.1, 600)),
    "max_retry_wait": ("PIPELINE_MAX_RETRY_WAIT", _seconds("max-retry-wait", 0, 86400)),
    "lock_timeout": ("PIPELINE_LOCK_TIMEOUT", _seconds("lock-timeout", 0, 86400)),
    "charts": ("PIPELINE_CHARTS", _parse_bool("charts")),
    "plot_coins": ("PIPELINE_PLOT_COINS", lambda t: tuple(c.strip() for c in str(t).split(",") if c.strip())),
    "since": (None, _parse_date("since")),
    "until": (None, _parse_date("until")),
    "days": (None, _parse_days),
    "scale": ("PIPELINE_CHART_SCALE", _parse_scale),
    "at": ("PIPELINE_AT", _parse_at),
    "timezone": ("PIPELINE_TIMEZONE", lambda t: str(t).strip() or None),
    "retry_delays": ("PIPELINE_RETRY_DELAYS", _parse_delays),
    "initial_run": ("PIPELINE_INITIAL_RUN", _parse_bool("initial-run")),
    "log_file": ("PIPELINE_LOG_FILE", _path("log-file")),
    "rate_limit": ("PIPELINE_RATE_LIMIT", _parse_rate),
    "max_response_mb": ("PIPELINE_MAX_RESPONSE_MB", _parse_megabytes),
    "heal": ("PIPELINE_HEAL", _parse_bool("heal")),
    "top": ("PIPELINE_TOP", _parse_top),
    "top_backfill": ("PIPELINE_TOP_BACKFILL", _parse_bool("top-backfill")),
    "date": (None, _parse_date("date")),
    "spike_threshold": ("PIPELINE_SPIKE_THRESHOLD", _parse_threshold),
    "notify_url": ("PIPELINE_NOTIFY_URL", _parse_notify_url),
    "notify_on": ("PIPELINE_NOTIFY_ON", _parse_notify_on),
    "seed_days": ("PIPELINE_SEED_DAYS", _parse_seed_days),
}
# Config-file keys spelled like the flags (no_charts = true), each the negation of an option.
NEGATED_KEYS = {"no_charts": "charts", "no_heal": "heal", "no_initial_run": "initial_run"}


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a TOML config file whose keys are the option names (coins, vs_currency, data_dir, ...)."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; check --config / PIPELINE_CONFIG") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                          f"{exc.start}); save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    table = data.get("pipeline", data)
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path}: [pipeline] must be a table")
    normalized = {str(k).replace("-", "_"): v for k, v in table.items()}
    unknown = sorted(set(normalized) - set(OPTIONS) - set(NEGATED_KEYS))
    if unknown:
        raise ConfigError(f"config file {path}: unknown keys {', '.join(unknown)}; "
                          f"known: {', '.join([*OPTIONS, *NEGATED_KEYS])}")
    for negated, name in NEGATED_KEYS.items():
        if negated not in normalized:
            continue
        value = not _parse_bool(negated)(normalized.pop(negated))
        if name in normalized and OPTIONS[name][1](normalized[name]) != value:
            raise ConfigError(f"config file {path}: {name} and {negated} contradict each other; keep one of them")
        normalized[name] = value
    if isinstance(normalized.get("coins"), list):
        normalized["coins"] = ",".join(map(str, normalized["coins"]))
    if isinstance(normalized.get("vs_currency"), list):
        normalized["vs_currency"] = ",".join(map(str, normalized["vs_currency"]))
    return normalized


def build_settings(command: str, flags: Mapping[str, Any], env: Mapping[str, str],
                   config_path: str | None = None, verbosity: int = 0) -> Settings:
    """Resolve every option: flag > environment > config file > default. Raises ConfigError."""
    config_path = config_path or env.get("PIPELINE_CONFIG") or None
    file_values = load_config_file(local_path("config", config_path)) if config_path else {}
    values: dict[str, Any] = {}
    for name, (env_name, parse) in OPTIONS.items():
        raw: Any = flags.get(name)
        if raw is None and env_name and env.get(env_name, "").strip():
            raw = env[env_name]
        if raw is None and name in file_values:
            raw = file_values[name]
        if raw is not None:
            values[name] = parse(raw)
    if "api_plan" not in values:
        values["api_plan"] = "demo" if values.get("api_key") else "public"
    if values["api_plan"] != "public" and not values.get("api_key"):
        raise ConfigError(f"--api-plan {values['api_plan']} needs a key: set COINGECKO_API_KEY")
    if values["api_plan"] == "public":
        values.pop("api_key", None)
    values.setdefault("api_url", default_base_url(values["api_plan"]))
    if isinstance(values.get("data_dir"), str):
        bucket, prefix = split_s3_url(values["data_dir"])
        if importlib.util.find_spec("boto3") is None:
            raise ConfigError(f"--data-dir {values['data_dir']} needs boto3, which the local set-up leaves out: "
                              "install it with `pip install -r requirements-aws.txt`")
        values["data_url"] = values["data_dir"].rstrip("/")
        values["data_dir"] = Path(tempfile.gettempdir()) / "crypto-history" / bucket / prefix
        if command in ("daemon", "status"):
            raise ConfigError(f"`{command}` needs a local --data-dir; on AWS the EventBridge schedule runs "
                              "the pipeline (see the README)")
    if "data_dir" in values and not values["data_dir"].is_absolute():
        values["data_dir"] = Path.cwd() / values["data_dir"]
    since, until = values.get("since"), values.get("until")
    if since and values.get("days"):
        raise ConfigError(f"--since {since} and --days {values['days']} both set the first day; give one of them "
                          "(--days counts back from --until, or from the newest day)")
    if since and until and since > until:
        raise ConfigError(f"--since {since} is after --until {until}")
    if "vs_currency" in values:
        values["vs_currencies"] = values["vs_currency"]
        values["vs_currency"] = values["vs_currencies"][0]
    if values.get("top") and "coins" not in values:
        values["coins"] = ()  # --top alone tracks the top N; with --coins, the union
    settings = Settings(command=command, verbosity=verbosity, **values)
    check_log_file(settings)
    return settings


def check_log_file(settings: Settings) -> None:
    """Refuse a --log-file that is, or lies inside, something the pipeline manages: rotation would rename it."""
    if settings.log_file is None:
        return
    layout = settings.layout
    data_dir = layout.data_dir.resolve()
    managed = tuple(path.resolve() for path in layout.managed())
    log_file = settings.log_file if settings.log_file.is_absolute() else Path.cwd() / settings.log_file
    for candidate in {Path(os.path.normpath(log_file)), log_file.resolve()}:
        if (candidate == data_dir or any(candidate == path or path in candidate.parents for path in managed)
                or (candidate.parent == data_dir and (candidate.name.startswith(layout.csv_name)  # .bak and kin
                                                      or (candidate.name.startswith(".")
                                                          and candidate.name.endswith(TEMP_SUFFIX))))):
            raise ConfigError(f"--log-file {settings.log_file} is a file the pipeline manages in "
                              f"{settings.data_dir} (the CSV, .state/, raw/ or the charts), and log rotation "
                              f"would rename it; choose another path, e.g. {settings.data_dir / 'pipeline.log'}")
