"""Settings: one frozen object built once from flags > environment > config file > defaults."""

from __future__ import annotations

import importlib.util
import os
import shlex
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, time
from pathlib import Path
from typing import Any

from utils.aws import api_key_from_aws
from utils.coingecko.plans import DEFAULT_MAX_RESPONSE_MB, PLAN_CREDITS, default_base_url
from utils.errors import ConfigError
from utils.history.layout import DataLayout, log_file_conflict, split_s3_url
from utils.options import (
    CONFIG_KEYS,
    DEFAULT_COINS,  # noqa: F401 - re-exported: tests and scripts name it from utils.settings
    EVENT_OPTIONS,
    OPTIONS,
    SETTINGS_OPTIONS,
    _parse_bool,
    local_path,
)
from utils.scratch import private_scratch

PROJECT_DIR = Path(__file__).resolve().parent.parent


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
    table_format: str | None = None  # csv or delta; None: delta for s3://, csv for a local folder
    vs_currency_set: bool = False  # --vs-currency (or its variable or config key) was given: export filters by it
    out: Path | None = None  # `export`: the file to write (.parquet: Parquet, else CSV)
    top: int | None = None  # track the top N by market cap in each currency (with the coins, if given)
    top_backfill: bool = False  # heal a coin that enters the top N back to the start of the history
    date: date | None = None  # `top`: the UTC day to show
    spike_threshold: float = 0.5  # quality: a move beyond this fraction that reverses within a day is a spike
    notify_url: str | None = field(default=None, repr=False)  # a webhook URL may carry its own token
    notify_on: tuple[str, ...] = ("failure", "findings")
    monthly_credits: int | None = None  # API calls a UTC month may use; None: the plan's default
    over_budget: bool = False  # run even when the estimate passes what is left of the month's credits
    seed_days: int = 30  # a run on an empty history also fills this many past days per coin (0: off)

    @property
    def credits(self) -> int | None:
        """The month's API credits: --monthly-credits, else the plan's default (None: unlimited)."""
        return self.monthly_credits if self.monthly_credits is not None else PLAN_CREDITS.get(self.api_plan)

    @property
    def run_hint(self) -> str:
        """The command that starts this history: `python main.py`, with --data-dir when it is not the default."""
        where = self.data_url or (None if self.data_dir == PROJECT_DIR / "data" else str(self.data_dir))
        return "python main.py" + (f" --data-dir {shlex.quote(where)}" if where else "")

    def command_hint(self, *words: str) -> str:
        """A command for a hint, as it must be typed to reach this history: with --data-dir when not the default."""
        where = self.data_url or (None if self.data_dir == PROJECT_DIR / "data" else str(self.data_dir))
        return " ".join(["python main.py", *words, *(["--data-dir", shlex.quote(where)] if where else [])])

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
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
            f"{exc.start}); save it as UTF-8"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    table = data.get("pipeline", data)
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path}: [pipeline] must be a table")
    normalized = {str(k).replace("-", "_"): v for k, v in table.items()}
    unknown = sorted(set(normalized) - set(CONFIG_KEYS))
    if unknown:
        raise ConfigError(f"config file {path}: unknown keys {', '.join(unknown)}; known: {', '.join(CONFIG_KEYS)}")
    for option in (o for o in SETTINGS_OPTIONS if o.kind == "off"):  # no_charts = true is charts = false
        name, negated = option.config_keys
        if negated not in normalized:
            continue
        value = not _parse_bool(negated)(normalized.pop(negated))
        if name in normalized and OPTIONS[name].parse(normalized[name]) != value:  # type: ignore[misc]
            raise ConfigError(f"config file {path}: {name} and {negated} contradict each other; keep one of them")
        normalized[name] = value
    if isinstance(normalized.get("coins"), list):
        normalized["coins"] = ",".join(map(str, normalized["coins"]))
    if isinstance(normalized.get("vs_currency"), list):
        normalized["vs_currency"] = ",".join(map(str, normalized["vs_currency"]))
    return normalized


def build_settings(
    command: str, flags: Mapping[str, Any], env: Mapping[str, str], config_path: str | None = None, verbosity: int = 0
) -> Settings:
    """Resolve every option: flag > environment > config file > default. Raises ConfigError."""
    config_path = config_path or env.get("PIPELINE_CONFIG") or None
    file_values = load_config_file(local_path("config", config_path)) if config_path else {}
    values: dict[str, Any] = {}
    from_file: set[str] = set()
    for option in SETTINGS_OPTIONS:
        name, env_name = option.name, option.env
        raw: Any = flags.get(name)
        if raw is None and env_name and env.get(env_name, "").strip():
            raw = env[env_name]
        if raw is None and name in file_values:
            raw = file_values[name]
            from_file.add(name)
        if raw is not None and option.parse is not None:
            values[name] = option.parse(raw)
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
            raise ConfigError(
                f"--data-dir {values['data_dir']} needs boto3, which the local set-up leaves out: "
                "install it with `pip install -r requirements-aws.txt`"
            )
        values["data_url"] = values["data_dir"].rstrip("/")
        values["data_dir"] = private_scratch(env) / bucket / prefix  # per user, 0700, checked: never a shared name
        if command == "daemon":
            raise ConfigError(
                f"`{command}` needs a local --data-dir; on AWS the EventBridge schedule runs "
                "the pipeline (see the README)"
            )
    if "data_dir" in values and not values["data_dir"].is_absolute():
        # A relative data_dir in the config file means beside the file, wherever the command runs from.
        base = local_path("config", config_path).absolute().parent if "data_dir" in from_file else Path.cwd()
        values["data_dir"] = base / values["data_dir"]
    since, until = values.get("since"), values.get("until")
    if since and values.get("days"):
        raise ConfigError(
            f"--since {since} and --days {values['days']} both set the first day; give one of them "
            "(--days counts back from --until, or from the newest day)"
        )
    if since and until and since > until:
        raise ConfigError(f"--since {since} is after --until {until}")
    if "vs_currency" in values:
        values["vs_currency_set"] = True
        values["vs_currencies"] = values["vs_currency"]
        values["vs_currency"] = values["vs_currencies"][0]
    if values.get("top") and "coins" not in values:
        values["coins"] = ()  # --top alone tracks the top N; with --coins, the union
    settings = Settings(command=command, verbosity=verbosity, **values)
    check_log_file(settings)
    return settings


def check_log_file(settings: Settings) -> None:
    """Refuse a --log-file that is, lies inside, or is the same file as something the pipeline manages, or a link."""
    if settings.log_file is None:
        return
    why = log_file_conflict(settings.log_file, settings.layout)
    if why:
        raise ConfigError(
            f"--log-file {settings.log_file} {why} in {settings.data_dir} (the CSV, .state/, raw/, "
            f"the charts, quality.csv, the report...); the log never writes into them: choose another "
            f"path, e.g. {settings.data_dir / 'pipeline.log'}"
        )


def lambda_settings(
    event: Mapping[str, Any] | None, command: str = "run", env: Mapping[str, str] | None = None
) -> Settings:
    """Settings for a handler: the function's environment, overridden by the event's options."""
    env = dict(os.environ if env is None else env)
    key = api_key_from_aws(env)
    if key:
        env["COINGECKO_API_KEY"] = key
    flags = {name: (event or {}).get(name) for name in EVENT_OPTIONS}
    if isinstance(flags["coins"], list):
        flags["coins"] = ",".join(map(str, flags["coins"]))
    return build_settings(command, flags, env)
