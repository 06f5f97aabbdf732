"""The one table of options: each declared once, with its flag, parser, default, environment variable, config-file
key, the commands that take it and its help. The command line (main.py), the config file and the environment
(utils/settings.py), the Lambda events (lambda_settings in utils/settings.py) and the README's option table (tests/test_readme.py) all
read this table.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from utils.coingecko.plans import UNIVERSE_CAP, default_base_url
from utils.errors import ConfigError
from utils.history.layout import TABLE_FORMATS, is_s3, split_s3_url
from utils.history.schema import COIN_ID_RE, CURRENCY_RE

DEFAULT_COINS = (
    "bitcoin",
    "ethereum",
    "binancecoin",
    "cardano",
    "solana",
    "dogecoin",
    "polkadot",
    "litecoin",
    "avalanche-2",
)
PLANS = ("public", "demo", "pro")
SCALES = ("auto", "log", "linear")
FIRST_DATE, LAST_DATE = date(1970, 1, 1), date(2999, 12, 31)  # what --since/--until accept: date arithmetic stays safe
MAX_DAYS = 36500  # a century: more than the history can hold, far below what date arithmetic overflows at


def _parse_coins(text: str) -> tuple[str, ...]:
    ids: dict[str, None] = {}  # ordered, and O(1) membership for 10,000 ids
    for part in str(text).split(","):
        coin = part.strip().lower()
        if not coin:
            continue
        if not COIN_ID_RE.match(coin):
            guess = "-".join(re.findall("[a-z0-9]+", coin))  # 'Bit Coin' -> bit-coin, which /search can look up
            look_up = f"; `python main.py check --coins {guess}` suggests the right one" if guess else ""
            raise ConfigError(
                f"coins: {part.strip()!r} is not a CoinGecko API id (ids look like 'bitcoin' or 'avalanche-2'){look_up}"
            )
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
            raise ConfigError(
                f"vs-currency: {str(part).strip()!r} is not a currency code; use one like eur, usd "
                "or btc, or several: eur,usd"
            )
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
        raise ConfigError(
            f"api-url: {text!r} is not a valid URL ({exc}); use e.g. {default_base_url('public')}"
        ) from None
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
        raise ConfigError(
            "retry-delays: give minutes greater than 0 and at most 1440 (a day), like 5,15,60; "
            "0 is not allowed: a failed run is retried after a pause"
        )
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
        raise ConfigError(
            f"seed-days: {text!r} is not a whole number of days; use 0 (off) to {MAX_SEED_DAYS}"
        ) from None
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
        raise ConfigError(
            "COINGECKO_API_KEY holds non-ASCII characters (a typographic dash or quote?); "
            "paste the key as the CoinGecko dashboard shows it"
        )
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
        raise ConfigError(
            f"{name}: {text!r} starts with ~ but that home folder is unknown; write the path in full"
        ) from None


def _parse_data_dir(text: Any) -> Path | str:
    text = str(text)
    if is_s3(text):
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
    """A webhook URL that parses whole (scheme, host, port), so a bad one is a config error before any command."""
    url = str(text).strip()
    if not url:
        return None
    advice = "use a webhook URL like https://ntfy.sh/your-topic"
    try:
        parts = urlsplit(url)
        port = parts.port  # reading it validates it: "http://h:abc/x" raises here
        host = parts.hostname
    except ValueError as exc:  # "http://[::1/x": an unclosed IPv6 bracket; a port that is not a number
        raise ConfigError(f"notify-url: not a valid URL ({exc}); {advice}") from None
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"notify-url: the scheme must be http or https, not {parts.scheme or 'none'!r}; {advice}")
    if not host or not (_HOST_RE.match(host.rstrip(".")) or _is_ip(host)):
        raise ConfigError(f"notify-url: {host or 'no host'!r} is not a host name; {advice}")
    if port == 0:
        raise ConfigError(f"notify-url: port 0 is not a port; {advice}")
    return url


_HOST_RE = re.compile(
    r"^(?=.{1,253}\Z)[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
    r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\Z"
)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _parse_credits(text: Any) -> int:
    try:
        value = int(str(text).strip().replace("_", "").replace(",", ""))
    except ValueError:
        raise ConfigError(
            f"monthly-credits: {text!r} is not a whole number of API calls; use a positive number like 10000"
        ) from None
    if value <= 0:
        raise ConfigError(f"monthly-credits: {value} is not a positive number of API calls; use one like 10000")
    return value


def _parse_table_format(text: Any) -> str:
    value = str(text).strip().lower()
    if value not in TABLE_FORMATS:
        raise ConfigError(f"table-format: {text!r} is not one of {', '.join(TABLE_FORMATS)}")
    return value


NOTIFY_EVENTS = ("failure", "findings", "always")


def _parse_notify_on(text: Any) -> tuple[str, ...]:
    parts = text if isinstance(text, list) else str(text).split(",")
    events = tuple(dict.fromkeys(str(p).strip().lower() for p in parts if str(p).strip()))
    bad = [e for e in events if e not in NOTIFY_EVENTS]
    if bad or not events:
        raise ConfigError(f"notify-on: {text!r} is not one of {', '.join(NOTIFY_EVENTS)} (or a comma list of them)")
    return events


COMMANDS = ("run", "check", "plot", "daemon", "status", "backfill", "top", "quality", "report", "export")
FETCHING = ("run", "daemon", "backfill", "check")  # the commands that call CoinGecko
READERS = ("status", "top", "plot", "quality", "report", "export")  # the commands that only read the history
RUNS = ("run", "daemon")
CHARTING = ("run", "daemon", "plot", "report")


@dataclass(frozen=True)
class Option:
    """One option, declared once.

    `name` is the Settings field and the config-file key; `parse` turns a flag, variable or config value into the
    setting (None: a command-line-only option such as -v). `kind` is value, off (--no-x stores False; the config file
    also takes no_x), on (a switch storing True), count or true. `commands` list it in their --help; `hidden` accept
    it without listing it (it changes nothing for them). `default` is text the parser accepts (checked against
    Settings' defaults by tests/test_cli.py), `default_note` words for a default that depends on something else,
    `command_defaults` a command's own default (for the flows, through command_default).
    """

    name: str
    flags: tuple[str, ...]
    help: str
    parse: Callable[[Any], Any] | None = None
    env: str | None = None
    metavar: str | None = None
    kind: str = "value"
    choices: tuple[str, ...] | None = None
    group: str = "data"
    commands: tuple[str, ...] = COMMANDS
    hidden: tuple[str, ...] = ()
    default: str | None = None
    default_note: str | None = None
    command_defaults: dict[str, str] = field(default_factory=dict)
    anywhere: bool = False  # may also come before the command (`python main.py -q plot`)
    event: bool = False  # a key of a Lambda event (utils/aws.py)

    @property
    def flag(self) -> str:
        """The long flag: --coins, --no-charts, --verbose."""
        return self.flags[-1]

    @property
    def config_keys(self) -> tuple[str, ...]:
        """The config-file keys: the name, and no_<name> for an off switch; none for command-line-only options."""
        if self.parse is None or self.env == "PIPELINE_CONFIG":
            return ()
        return (self.name, f"no_{self.name}") if self.kind == "off" else (self.name,)

    @property
    def env_text(self) -> str | None:
        """The variable as the README and --help write it: PIPELINE_CHARTS=0 for a switch."""
        if self.env is None:
            return None
        return self.env + {"off": "=0", "on": "=1"}.get(self.kind, "")

    def help_for(self, command: str) -> str:
        """The help line: the meaning, then [VARIABLE; default ...]."""
        default = self.command_defaults.get(command) or self.default_note or self.default
        parts = [p for p in (self.env_text, f"default {default}" if default and self.kind == "value" else None) if p]
        text = self.help + (f" [{'; '.join(parts)}]" if parts else "")
        return text.replace("%", "%%")  # argparse formats help with %


API_HIDDEN = READERS  # the API options change nothing for the readers: accepted (scripts pass them), not listed

OPTION_TABLE: tuple[Option, ...] = (
    # data and API options
    Option(
        "coins",
        ("--coins",),
        "CoinGecko API ids",
        _parse_coins,
        "PIPELINE_COINS",
        "ID,ID,...",
        commands=FETCHING,
        hidden=API_HIDDEN,
        default=", ".join(DEFAULT_COINS),
        event=True,
    ),
    Option(
        "vs_currency",
        ("--vs-currency",),
        "quote currencies; a run, backfill and healing fetch each, plot, top and the charts use the first",
        _parse_currencies,
        "PIPELINE_VS_CURRENCY",
        "CUR,CUR,...",
        default="eur",
        event=True,
    ),
    Option(
        "data_dir",
        ("--data-dir",),
        "folder for the CSV, charts and raw snapshots",
        _parse_data_dir,
        "PIPELINE_DATA_DIR",
        "DIR",
        default_note="data/ beside main.py",
        anywhere=True,
    ),
    Option(
        "api_url",
        ("--api-url",),
        "API base URL",
        _parse_url,
        "COINGECKO_API_URL",
        "URL",
        commands=FETCHING,
        hidden=API_HIDDEN,
        default_note="follows the plan",
    ),
    Option(
        "api_key",
        ("--api-key",),
        "API key; prefer the COINGECKO_API_KEY variable, which stays out of shell history",
        _parse_key,
        "COINGECKO_API_KEY",
        "KEY",
        commands=FETCHING,
        hidden=API_HIDDEN,
    ),
    Option(
        "api_plan",
        ("--api-plan",),
        "public (no key), demo or pro: picks host and key header",
        _parse_plan,
        "COINGECKO_API_PLAN",
        choices=PLANS,
        commands=FETCHING,
        hidden=API_HIDDEN,
        default_note="demo with a key, else public",
    ),
    Option(
        "timeout",
        ("--timeout",),
        "deadline of each HTTP request: connecting, the headers and the whole body "
        "must be done within it (a failed attempt is retried)",
        _seconds("timeout", 0.1, 600),
        "PIPELINE_TIMEOUT",
        "SECONDS",
        commands=FETCHING,
        hidden=API_HIDDEN,
        default="30",
    ),
    Option(
        "max_retry_wait",
        ("--max-retry-wait",),
        "most time to spend waiting between retries before giving up",
        _seconds("max-retry-wait", 0, 86400),
        "PIPELINE_MAX_RETRY_WAIT",
        "SECONDS",
        commands=FETCHING,
        hidden=API_HIDDEN,
        default="120",
    ),
    Option(
        "table_format",
        ("--table-format",),
        "how the history is kept: csv (crypto_data.csv with its SQLite index) "
        "or delta (a Delta Lake table, crypto_data/)",
        _parse_table_format,
        "PIPELINE_TABLE_FORMAT",
        choices=TABLE_FORMATS,
        default_note="csv for a folder, delta for s3://",
        event=True,
    ),
    Option(
        "out",
        ("--out",),
        "the file to write (.parquet: Parquet; else CSV); required",
        _path("out"),
        metavar="FILE",
        group="export",
        commands=("export",),
    ),
    Option(
        "lock_timeout",
        ("--lock-timeout",),
        "how long to wait for another process writing the history",
        _seconds("lock-timeout", 0, 86400),
        "PIPELINE_LOCK_TIMEOUT",
        "SECONDS",
        default="300",
    ),
    Option(
        "rate_limit",
        ("--rate-limit",),
        "most API calls per minute this client makes",
        _parse_rate,
        "PIPELINE_RATE_LIMIT",
        "N",
        commands=FETCHING,
        hidden=API_HIDDEN,
        default_note="by plan: public 10, demo 30, pro 250",
    ),
    Option(
        "max_response_mb",
        ("--max-response-mb",),
        "largest API answer accepted, counted after decompression; a larger one fails the request",
        _parse_megabytes,
        "PIPELINE_MAX_RESPONSE_MB",
        "MB",
        default="64",
    ),
    Option(
        "monthly_credits",
        ("--monthly-credits",),
        "API calls a UTC month may use; a run or backfill whose "
        "estimate passes what is left stops before any request (exit 2)",
        _parse_credits,
        "PIPELINE_MONTHLY_CREDITS",
        "N",
        commands=(*FETCHING, "status"),
        default_note="demo 10000, pro 100000, public unlimited",
    ),
    Option(
        "over_budget",
        ("--over-budget",),
        "run even when the estimated API calls pass what is left of the month's --monthly-credits",
        _parse_bool("over-budget"),
        kind="on",
        group="switches",
        commands=(*RUNS, "backfill"),
    ),
    Option("config", ("--config",), "TOML file with the same keys", None, "PIPELINE_CONFIG", "FILE", anywhere=True),
    # output
    Option(
        "log_file",
        ("--log-file",),
        "also log to this file, with timestamps, rotated at 10 MB (5 kept)",
        _path("log-file"),
        "PIPELINE_LOG_FILE",
        "PATH",
        group="output",
        anywhere=True,
    ),
    Option("verbose", ("-v", "--verbose"), "more detail on stderr", kind="count", group="output", anywhere=True),
    Option("quiet", ("-q", "--quiet"), "only errors on stderr", kind="true", group="output", anywhere=True),
    # what a run does besides fetching
    Option(
        "charts",
        ("--no-charts",),
        "do not draw the charts (backfill redraws them only when it added rows)",
        _parse_bool("charts"),
        "PIPELINE_CHARTS",
        kind="off",
        group="switches",
        commands=(*RUNS, "backfill"),
    ),
    Option(
        "heal",
        ("--no-heal",),
        "do not fill days missing from the history, nor seed an empty one",
        _parse_bool("heal"),
        "PIPELINE_HEAL",
        kind="off",
        group="switches",
        commands=RUNS,
    ),
    Option(
        "seed_days",
        ("--seed-days",),
        "when the history is empty, also fill the last N days of each coin (one "
        "request per coin, within the plan's reach); 0 turns it off",
        _parse_seed_days,
        "PIPELINE_SEED_DAYS",
        "N",
        group="switches",
        commands=RUNS,
        default="30",
    ),
    Option(
        "top",
        ("--top",),
        "the top N coins by market cap in each currency (1 to 20,000, or all: the whole "
        "market): run and daemon track them, with --coins if given; backfill also fills those the last run "
        "recorded; top prints them",
        _parse_top,
        "PIPELINE_TOP",
        "N",
        group="switches",
        commands=(*RUNS, "backfill", "top"),
        command_defaults={"top": "100"},
    ),
    Option(
        "top_backfill",
        ("--top-backfill",),
        "heal a coin that enters the top N back to the start of the history",
        _parse_bool("top-backfill"),
        "PIPELINE_TOP_BACKFILL",
        kind="on",
        group="switches",
        commands=RUNS,
    ),
    # which coins and days the charts show, a backfill fetches and quality lists
    Option(
        "plot_coins",
        ("--plot-coins",),
        "coins to chart: ids, symbols or names, any case",
        lambda t: tuple(c.strip() for c in str(t).split(",") if c.strip()),
        "PIPELINE_PLOT_COINS",
        "COIN,COIN,...",
        group="charts",
        commands=CHARTING,
        default_note="all",
    ),
    Option(
        "scale",
        ("--scale",),
        "value axis: log when coins span more than two orders of magnitude (auto)",
        _parse_scale,
        "PIPELINE_CHART_SCALE",
        choices=SCALES,
        group="charts",
        commands=CHARTING,
        default="auto",
    ),
    Option(
        "since",
        ("--since",),
        "first day to chart or backfill (not with --days)",
        _parse_date("since"),
        metavar="YYYY-MM-DD",
        group="days",
        commands=(*CHARTING, "backfill", "export"),
        event=True,
    ),
    Option(
        "until",
        ("--until",),
        "last day to chart or backfill (default the newest day; backfill: the newest complete day)",
        _parse_date("until"),
        metavar="YYYY-MM-DD",
        group="days",
        commands=(*CHARTING, "backfill", "export"),
        event=True,
    ),
    Option(
        "days",
        ("--days",),
        "the last N days, counted back from --until or the newest day (not with --since): "
        "the days plot and report chart, backfill fetches and quality lists",
        _parse_days,
        metavar="N",
        group="days",
        commands=(*CHARTING, "backfill", "quality"),
        command_defaults={"backfill": "365", "quality": "30"},
        event=True,
    ),
    Option(
        "date",
        ("--date",),
        "the UTC day to show (default today)",
        _parse_date("date"),
        metavar="YYYY-MM-DD",
        group="days",
        commands=("top",),
    ),
    # quality and notifications
    Option(
        "spike_threshold",
        ("--spike-threshold",),
        "a move beyond this against the previous day that reverses within a day is a spike",
        _parse_threshold,
        "PIPELINE_SPIKE_THRESHOLD",
        "FRACTION",
        group="quality",
        commands=(*RUNS, "backfill"),
        default="0.5",
    ),
    Option(
        "notify_url",
        ("--notify-url",),
        "POST a small JSON document to this webhook (Slack, Discord, ntfy) after "
        "a failed run, new quality findings, or recovery",
        _parse_notify_url,
        "PIPELINE_NOTIFY_URL",
        "URL",
        group="quality",
        commands=RUNS,
    ),
    Option(
        "notify_on",
        ("--notify-on",),
        "when to notify, a comma list",
        _parse_notify_on,
        "PIPELINE_NOTIFY_ON",
        "failure|findings|always",
        group="quality",
        commands=RUNS,
        default="failure,findings",
    ),
    # the daemon's schedule
    Option(
        "at",
        ("--at",),
        "time of the daily run",
        _parse_at,
        "PIPELINE_AT",
        "HH:MM",
        group="schedule",
        commands=("daemon",),
        default="00:00",
    ),
    Option(
        "timezone",
        ("--timezone",),
        "time zone of --at",
        lambda t: str(t).strip() or None,
        "PIPELINE_TIMEZONE",
        "AREA/CITY",
        group="schedule",
        commands=("daemon",),
        default_note="the machine's zone",
    ),
    Option(
        "retry_delays",
        ("--retry-delays",),
        "minutes to wait before each retry of a failed run, the last repeating until the next scheduled run",
        _parse_delays,
        "PIPELINE_RETRY_DELAYS",
        "MIN,MIN,...",
        group="schedule",
        commands=("daemon",),
        default="5,15,60",
    ),
    Option(
        "initial_run",
        ("--no-initial-run",),
        "do not run at start even when the last success is more than a day old",
        _parse_bool("initial-run"),
        "PIPELINE_INITIAL_RUN",
        kind="off",
        group="schedule",
        commands=("daemon",),
    ),
)
OPTIONS = {option.name: option for option in OPTION_TABLE}
SETTINGS_OPTIONS = tuple(o for o in OPTION_TABLE if o.config_keys)  # what flags, variables and config files set
CONFIG_KEYS = tuple(key for o in SETTINGS_OPTIONS for key in o.config_keys)
EVENT_OPTIONS = tuple(o.name for o in OPTION_TABLE if o.event)


def command_default(name: str, command: str) -> int:
    """A command's own default for a number option: `top` prints 100, `backfill` fetches 365 days."""
    return int(OPTIONS[name].command_defaults[command])
