"""Command line: parse flags and environment into Settings, dispatch a command, return its exit code."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import logging
import logging.handlers
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from utils.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, ConfigError, PipelineError
from utils.redact import RedactFilter, forget_secrets, redact, remember_secret
from utils.settings import DEFAULT_COINS, PLANS, SCALES, Settings, build_settings

VERSION = "2.0.0"  # `python main.py --version`
# What `pip install -r requirements.txt` brings, as import names: checked before anything imports them.
RUNTIME_MODULES = ("requests", "pandas", "numpy", "matplotlib", "seaborn", "PIL", "schedule", "tenacity",
                   "filelock", "tqdm", "tzlocal", "jinja2")

log = logging.getLogger("pipeline")
STARTED = time.monotonic()  # when this command began: a run's summary reports its whole wall time

# command -> (flow module, function(settings, console) -> exit code). A flow is imported when its command runs.
COMMAND_TABLE = {
    "run": ("flows.run", "run_command"),
    "check": ("flows.check", "check_command"),
    "plot": ("flows.plot", "plot_command"),
    "daemon": ("flows.daemon", "daemon_command"),
    "status": ("flows.status", "status_command"),
    "backfill": ("flows.backfill", "backfill_command"),
    "top": ("flows.top", "top_command"),
    "quality": ("flows.report", "quality_command"),
    "report": ("flows.report", "report_command"),
}
COMMANDS = tuple(COMMAND_TABLE)
# Options a user may also give before the command (`python main.py -q plot`).
GLOBAL_OPTIONS = ("verbose", "quiet", "data_dir", "config", "log_file")
BEFORE = "before_"  # where options given before the command land, so the command's defaults cannot hide them
# Options that change nothing for `status` and `plot`: still accepted (scripts pass them), no longer listed.
UNUSED_BY_READERS = ("--coins", "--api-url", "--api-key", "--api-plan", "--timeout", "--max-retry-wait",
                     "--rate-limit")
READERS = ("status", "plot", "top", "quality", "report")  # the commands that take UNUSED_BY_READERS
DESCRIPTION = "Keep a daily CSV history of CoinGecko market data (prices, market caps, supply) and chart it."
ATTRIBUTION = "Data provided by CoinGecko (https://www.coingecko.com)."
EPILOG = ("exit codes: 0 success; 1 the run failed and nothing was appended; 2 bad usage or configuration; "
          "3 partial: some coins were missing or rejected, or one of several currencies failed; the rest was "
          "appended. " + ATTRIBUTION)
CHECK_EPILOG = ("exit codes: 0 every check passed; 1 a check failed (connectivity, key or plan, an unknown coin "
                "id); 2 bad usage or configuration. " + ATTRIBUTION)
PLOT_EPILOG = ("exit codes: 0 the charts were drawn; 1 no history yet, or no data in the chosen currency or days; "
               "2 bad usage or configuration, or --plot-coins matches no coin. " + ATTRIBUTION)
TOP_EPILOG = ("exit codes: 0 the list was printed; 1 no observation in that currency on that day; "
              "2 bad usage or configuration. " + ATTRIBUTION)
STATUS_EPILOG = ("exit codes: 0 the status was shown; 1 neither a history nor a recorded run yet; "
                 "2 bad usage or configuration. " + ATTRIBUTION)
QUALITY_EPILOG = ("exit codes: 0 the findings were listed (none is fine); 2 bad usage or configuration. "
                  + ATTRIBUTION)
REPORT_EPILOG = ("exit codes: 0 the report was written; 1 no history yet; 2 bad usage or configuration. "
                 + ATTRIBUTION)
TOP_DESCRIPTION = (DESCRIPTION + " Without a command it runs the pipeline once, as `python main.py run` does, "
                   "with run's options, listed below. -v, -q, --data-dir, --config and --log-file may also come "
                   "before any command (`python main.py -q plot`). Each command lists its own options: "
                   "`python main.py COMMAND --help`.")


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        command = self.prog.split()[-1]
        where = f"python main.py {command}" if command in COMMANDS else "python main.py"
        self.exit(EXIT_USAGE, f"error: {message} (see `{where} --help`)\n")


def common_options(hidden: Sequence[str] = ()) -> argparse.ArgumentParser:
    """Options every command takes; defaults are None so the environment and config file can fill them.

    Options in `hidden` are accepted but left out of --help, for commands they change nothing for.
    """
    p = argparse.ArgumentParser(add_help=False)
    title = "data options" if hidden else "data and API options"
    g = p.add_argument_group(f"{title} (flag > environment > config file > default)")
    # ", " between the ids, so that help wraps between coins, never inside one.
    g.add_argument("--coins", metavar="ID,ID,...",
                   help=f"CoinGecko API ids [PIPELINE_COINS; default {', '.join(DEFAULT_COINS)}]")
    g.add_argument("--vs-currency", metavar="CUR,CUR,...",
                   help="quote currencies; a run, backfill and healing fetch each, plot, top and the charts "
                        "use the first [PIPELINE_VS_CURRENCY; default eur]")
    g.add_argument("--data-dir", metavar="DIR",
                   help="folder for the CSV, charts and raw snapshots [PIPELINE_DATA_DIR; default data/ beside main.py]")
    g.add_argument("--api-url", metavar="URL", help="API base URL [COINGECKO_API_URL; default follows the plan]")
    g.add_argument("--api-key", metavar="KEY",
                   help="API key; prefer the COINGECKO_API_KEY variable, which stays out of shell history")
    g.add_argument("--api-plan", choices=PLANS,
                   help="public (no key), demo or pro: picks host and key header "
                        "[COINGECKO_API_PLAN; default demo with a key, else public]")
    g.add_argument("--timeout", metavar="SECONDS",
                   help="deadline of each HTTP request: connecting, the headers and the whole body must be done "
                        "within it (a failed attempt is retried) [PIPELINE_TIMEOUT; default 30]")
    g.add_argument("--max-retry-wait", metavar="SECONDS",
                   help="most time to spend waiting between retries before giving up "
                        "[PIPELINE_MAX_RETRY_WAIT; default 120]")
    g.add_argument("--lock-timeout", metavar="SECONDS",
                   help="how long to wait for another process writing the history [PIPELINE_LOCK_TIMEOUT; default 300]")
    g.add_argument("--rate-limit", metavar="N",
                   help="most API calls per minute this client makes [PIPELINE_RATE_LIMIT; default by plan: "
                        "public 10, demo 30, pro 250]")
    g.add_argument("--max-response-mb", metavar="MB",
                   help="largest API answer accepted, counted after decompression; a larger one fails the "
                        "request [PIPELINE_MAX_RESPONSE_MB; default 64]")
    g.add_argument("--config", metavar="FILE", help="TOML file with the same keys [PIPELINE_CONFIG]")
    v = p.add_argument_group("output")
    v.add_argument("--log-file", metavar="PATH",
                   help="also log to this file, with timestamps, rotated at 10 MB (5 kept) [PIPELINE_LOG_FILE]")
    v.add_argument("-v", "--verbose", action="count", default=0, help="more detail on stderr")
    v.add_argument("-q", "--quiet", action="store_true", help="only errors on stderr")
    for action in p._actions:  # argparse offers no public walk over actions
        if set(action.option_strings) & set(hidden):
            action.help = argparse.SUPPRESS
    return p


def chart_options() -> argparse.ArgumentParser:
    """Options that choose what the charts show."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("chart options")
    g.add_argument("--plot-coins", metavar="COIN,COIN,...",
                   help="coins to chart: ids, symbols or names, any case [PIPELINE_PLOT_COINS; default all]")
    g.add_argument("--since", metavar="YYYY-MM-DD", help="first day to chart (not with --days)")
    g.add_argument("--until", metavar="YYYY-MM-DD", help="last day to chart")
    g.add_argument("--days", metavar="N", help="chart the last N days (up to --until; not with --since)")
    g.add_argument("--scale", choices=SCALES,
                   help="value axis: log when coins span more than two orders of magnitude (auto) "
                        "[PIPELINE_CHART_SCALE; default auto]")
    return p


def run_switches(after: str) -> argparse.ArgumentParser:
    """--no-charts, --no-heal, --top and --top-backfill, as `run` and `daemon` take them."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--no-charts", dest="charts", action="store_const", const=False,
                   help=f"do not draw charts after {after} [PIPELINE_CHARTS=0]")
    p.add_argument("--no-heal", dest="heal", action="store_const", const=False,
                   help="do not fill days missing from the history, nor seed an empty one [PIPELINE_HEAL=0]")
    p.add_argument("--seed-days", metavar="N",
                   help="when the history is empty, also fill the last N days of each coin (one request per "
                        "coin, within the plan's reach); 0 turns it off [PIPELINE_SEED_DAYS; default 30]")
    top_option(p, "track the top N coins by market cap in each currency (1 to 20,000, or all: the whole market), with --coins if given "
                  "[PIPELINE_TOP]")
    p.add_argument("--top-backfill", dest="top_backfill", action="store_const", const=True,
                   help="heal a coin that enters the top N back to the start of the history "
                        "[PIPELINE_TOP_BACKFILL=1]")
    return p


def top_option(parser: argparse.ArgumentParser, text: str) -> None:
    """--top N, with the help that fits the command."""
    parser.add_argument("--top", metavar="N", help=text)


def watch_options(notify: bool = True) -> argparse.ArgumentParser:
    """Quality checks (and, for run and daemon, notifications), for the commands that load rows."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("quality and notifications" if notify else "quality")
    g.add_argument("--spike-threshold", metavar="FRACTION",
                   help="a move beyond this against the previous day that reverses within a day is a spike "
                        "[PIPELINE_SPIKE_THRESHOLD; default 0.5, i.e. 50%%]")
    if not notify:
        return p
    g.add_argument("--notify-url", metavar="URL",
                   help="POST a small JSON document to this webhook (Slack, Discord, ntfy) after a failed run, "
                        "new quality findings, or recovery [PIPELINE_NOTIFY_URL]")
    g.add_argument("--notify-on", metavar="failure|findings|always",
                   help="when to notify, a comma list [PIPELINE_NOTIFY_ON; default failure,findings]")
    return p


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: run's options at the top level, then one subparser per command."""
    parser = OneLineParser(prog="main.py", usage="%(prog)s [-h] [COMMAND] [OPTIONS ...]",
                           description=TOP_DESCRIPTION, epilog=EPILOG,
                           parents=[run_switches("the run"), common_options(), chart_options(), watch_options()])
    # These parents are this parser's alone, so renaming their actions leaves the subcommands' copies be.
    for action in parser._actions:  # argparse offers no public walk over actions
        if action.option_strings and action.dest != "help":
            action.dest, action.default = BEFORE + action.dest, argparse.SUPPRESS
    parser.add_argument("--version", action="version", help="print the version and exit",
                        version=f"%(prog)s {VERSION} (Python {sys.version.split()[0]})")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    common, charts, readers = common_options(), chart_options(), common_options(hidden=UNUSED_BY_READERS)
    watch = watch_options()
    sub.add_parser("run", parents=[run_switches("the run"), common, charts, watch],
                   help="run the pipeline once (the default command)",
                   description="Fetch the coins once, append new rows to the CSV history, draw the charts.",
                   epilog=EPILOG)
    daemon = sub.add_parser("daemon", parents=[run_switches("each run"), common, charts, watch],
                            help="stay running and run the pipeline every day",
                            description="Run the pipeline every day at --at in --timezone, retry failures the "
                                        "same day, stop cleanly on SIGTERM or Ctrl-C.", epilog=EPILOG)
    d = daemon.add_argument_group("schedule")
    d.add_argument("--at", metavar="HH:MM", help="time of the daily run [PIPELINE_AT; default 00:00]")
    d.add_argument("--timezone", metavar="AREA/CITY",
                   help="time zone of --at [PIPELINE_TIMEZONE; default the machine's zone]")
    d.add_argument("--retry-delays", metavar="MIN,MIN,...",
                   help="minutes to wait before each retry of a failed run, the last repeating until the "
                        "next scheduled run [PIPELINE_RETRY_DELAYS; default 5,15,60]")
    d.add_argument("--no-initial-run", dest="initial_run", action="store_const", const=False,
                   help="do not run at start even when the last success is more than a day old "
                        "[PIPELINE_INITIAL_RUN=0]")
    backfill = sub.add_parser("backfill", parents=[common, watch_options(notify=False)],
                              help="fill the history with past daily points",
                              description="Fetch daily points (00:00 UTC) for past days from "
                                          "/coins/{id}/market_chart/range, one request per coin, merge them "
                                          "into the history, then redraw the charts. Resumes where an interrupted "
                                          "backfill stopped.",
                              epilog=EPILOG)
    backfill.add_argument("--no-charts", dest="charts", action="store_const", const=False,
                          help="do not redraw the charts after rows were added [PIPELINE_CHARTS=0]")
    top_option(backfill, "also backfill the top N coins the last run recorded [PIPELINE_TOP]")
    b = backfill.add_argument_group("range (complete UTC days; default the last 365)")
    b.add_argument("--days", metavar="N", help="the last N complete days (up to --until; not with --since)")
    b.add_argument("--since", metavar="YYYY-MM-DD", help="first day (not with --days)")
    b.add_argument("--until", metavar="YYYY-MM-DD", help="last day (default the newest complete day)")
    sub.add_parser("status", parents=[readers], help="show the last run, the next run and the history's coverage",
                   description="Show the last run and its result, the next scheduled run, and the history: rows, "
                               "coins, first and last observation, days missing.", epilog=STATUS_EPILOG)
    sub.add_parser("check", parents=[common], help="check connectivity, the API key and plan, and the coin ids",
                   description="Check /ping, the key and plan, and that CoinGecko knows every coin id.",
                   epilog=CHECK_EPILOG)
    top = sub.add_parser("top", parents=[readers], help="print the top N coins by market cap on a past day",
                         description="Print the top N coins by market cap as this history recorded them on one UTC "
                                     "day: rank, id, symbol and market cap from each coin's last observation of "
                                     "that day, in the first --vs-currency. Reads the index, not the CSV.",
                         epilog=TOP_EPILOG)
    t = top.add_argument_group("day")
    t.add_argument("--date", metavar="YYYY-MM-DD", help="the UTC day (default today)")
    top_option(t, "how many coins to print [PIPELINE_TOP; default 100]")
    sub.add_parser("plot", parents=[readers, charts], help="draw the charts from the history",
                   description="Draw the price, market-cap and performance charts from the CSV history.",
                   epilog=PLOT_EPILOG)
    quality = sub.add_parser("quality", parents=[readers], help="list the quality findings of the last days",
                             description="List the quality findings (data/quality.csv) found in the last N days: "
                                         "spikes, zero prices and market caps, prices outside their own 24 h "
                                         "range, stale coins, days healing could not fill.",
                             epilog=QUALITY_EPILOG)
    quality.add_argument("--days", metavar="N", help="findings of the last N days (default 30)")
    sub.add_parser("report", parents=[readers, charts], help="write data/report.html, the one-page report",
                   description="Write data/report.html: the charts, the latest observation per coin, coverage, "
                               "the last 30 days' quality findings and the last run, in one self-contained file.",
                   epilog=REPORT_EPILOG)
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse argv: options without a command mean `run`; the global options may also come before a command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        return parser.parse_args(["run", *argv])
    before = {name[len(BEFORE):]: value for name, value in vars(args).items() if name.startswith(BEFORE)}
    for action in parser._actions:
        name = action.dest.removeprefix(BEFORE)
        if name != action.dest and name in before and name not in GLOBAL_OPTIONS:
            flag = action.option_strings[-1]
            takes = {o for a in subparser(parser, args.command)._actions for o in a.option_strings}
            if flag not in takes:  # moving it after the command would be refused
                parser.error(f"{flag} is not an option of `{args.command}`; leave it out")
            if args.command in READERS and flag in UNUSED_BY_READERS:  # moving it would do nothing
                instead = (f"; to chart some coins: python main.py {args.command} --plot-coins ID,ID"
                           if args.command in ("plot", "report") and flag == "--coins" else "; leave it out")
                parser.error(f"{flag} changes nothing for `{args.command}`, which reads the history{instead}")
            parser.error(f"{flag} goes after the command: python main.py {args.command} {flag} ...")
    for name, value in before.items():
        if name == "verbose":
            args.verbose += value
        elif not getattr(args, name):  # given after the command too: that one wins
            setattr(args, name, value)
    return args


def subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """The parser of one command."""
    for action in parser._actions:  # argparse offers no public walk over actions
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[command]
    raise KeyError(command)


class CliFormatter(logging.Formatter):
    """Plain messages for info, a level prefix for warnings and errors."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.WARNING and not getattr(record, "plain", False):
            message = f"{record.levelname.lower()}: {message}"
        if record.exc_info and record.levelno <= logging.DEBUG:
            message += "\n" + (record.exc_text or self.formatException(record.exc_info))
        return message


LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


class DaemonFormatter(logging.Formatter):
    """The daemon's stderr: timestamped lines, except the final error, one bare line like every command's."""

    def __init__(self) -> None:
        super().__init__(LOG_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "plain", False) and record.levelno >= logging.ERROR:
            return record.getMessage()
        return super().format(record)


def setup_logging(verbose: int, quiet: bool, *, timestamps: bool = False, log_file: Path | None = None) -> None:
    """Log to stderr (and a rotated file): warnings and summaries by default, debug with -v, errors only with -q."""
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_pipeline", False):
            root.removeHandler(old)
            old.close()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    handlers[0].setFormatter(DaemonFormatter() if timestamps else CliFormatter())
    if log_file is not None:
        try:
            # backslashreplace: whatever slips past redaction, a bad character never costs a traceback.
            file_handler = logging.handlers.RotatingFileHandler(log_file, maxBytes=10 * 2**20, backupCount=5,
                                                                encoding="utf-8", errors="backslashreplace")
        except OSError as exc:
            raise ConfigError(f"--log-file {log_file}: cannot open it ({exc.strerror})") from None
        file_handler.setFormatter(logging.Formatter(LOG_FORMAT))
        handlers.append(file_handler)
    for handler in handlers:
        handler._pipeline = True  # type: ignore[attr-defined]
        handler.addFilter(RedactFilter())
        root.addHandler(handler)
    root.setLevel(logging.ERROR if quiet else logging.DEBUG if verbose else logging.INFO)
    # Third-party chatter stays at warning unless asked for twice.
    for name in ("urllib3", "matplotlib", "PIL", "filelock", "schedule", "botocore", "boto3"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose > 1 else logging.WARNING)


def settings_from(args: argparse.Namespace, env: Mapping[str, str]) -> Settings:
    """Settings from parsed arguments and the environment."""
    flags = {name: getattr(args, name, None) for name in
             ("coins", "vs_currency", "data_dir", "api_url", "api_key", "api_plan", "timeout", "max_retry_wait",
              "lock_timeout", "plot_coins", "since", "until", "days", "scale", "charts", "at", "timezone",
              "retry_delays", "initial_run", "log_file", "rate_limit", "max_response_mb", "heal",
              "top", "top_backfill", "date", "spike_threshold", "notify_url", "notify_on", "seed_days")}
    verbosity = -1 if args.quiet else args.verbose
    settings = build_settings(args.command, flags, env, config_path=args.config, verbosity=verbosity)
    if settings.api_plan == "public" and (args.api_key or env.get("COINGECKO_API_KEY")):
        log.warning("an API key is set but --api-plan is public, so no key is sent; use --api-plan demo or pro")
    return settings


def show(line: str) -> None:
    """Print a line the user asked for (status, check, chart paths): redacted, controls made visible."""
    print(redact(line))


def missing_runtime_package() -> str | None:
    """The first runtime package this Python cannot import (found by name, nothing imported), or None."""
    for name in RUNTIME_MODULES:
        try:
            if importlib.util.find_spec(name) is None:
                return name
        except (ImportError, ValueError):
            return name
    return None


def runtime_line(package: str) -> str:
    """The one line for a Python without the runtime packages: which one, and the two ways to run."""
    return (f"error: the package {package!r} is not installed for {sys.executable}; run with `make run` "
            "(it creates .venv with the packages of requirements.txt) or `.venv/bin/python main.py` "
            "once .venv exists")


def main(argv: Sequence[str] | None = None, *, env: Mapping[str, str] | None = None,
         sleep: Callable[[float], None] = time.sleep) -> int:
    """Run one command and return its exit code."""
    global STARTED
    STARTED = time.monotonic()
    env = os.environ if env is None else env
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    package = missing_runtime_package()
    if package is not None:  # before a command imports one: a plain line, not an unexpected ModuleNotFoundError
        sys.stderr.write(runtime_line(package) + "\n")
        return EXIT_USAGE
    forget_secrets()
    remember_secret(args.api_key)
    remember_secret(env.get("COINGECKO_API_KEY", "").strip())
    setup_logging(args.verbose, args.quiet)
    try:
        settings = settings_from(args, env)
        remember_secret(settings.api_key)
        if settings.log_file or settings.command == "daemon":
            setup_logging(args.verbose, args.quiet, timestamps=settings.command == "daemon",
                          log_file=settings.log_file)
        code = dispatch(settings, sleep)
        sys.stdout.flush()  # a reader that went away (`status | head -1`) shows here, not as a traceback at exit
        return code
    except BrokenPipeError:
        silence_stdout()
        return EXIT_OK
    except PipelineError as exc:
        word = "config error" if isinstance(exc, ConfigError) else f"{args.command} failed"
        log.error("%s: %s", word, exc, extra={"plain": True})
        return exc.exit_code
    except KeyboardInterrupt:
        resume = "; run the same backfill again and it resumes where it stopped" if args.command == "backfill" else ""
        log.error("interrupted; the history holds only whole rows%s", resume, extra={"plain": True})
        return 130
    except OSError as exc:  # a file or folder the command needs (unreadable CSV, read-only chart folder, ...)
        log.debug("file error", exc_info=True)
        log.error("%s failed: %s", args.command, describe_file_error(exc), extra={"plain": True})
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, never a traceback
        from utils.aws import explain_aws_error

        log.debug("unexpected error", exc_info=True)
        known = explain_aws_error(exc)
        if known is not None:
            log.error("%s failed: %s", args.command, known[0], extra={"plain": True})
            return known[1]
        log.error("%s failed: unexpected %s: %s (run again with -v for details and please report it)",
                  args.command, type(exc).__name__, exc, extra={"plain": True})
        return EXIT_FAILED


def dispatch(settings: Settings, sleep: Callable[[float], None]) -> int:
    """Run the flow the command table names for the settings' command."""
    from flows.wiring import Console  # start-up time: the flows load only when a command runs

    module, function = COMMAND_TABLE[settings.command]
    flow = getattr(importlib.import_module(module), function)
    return flow(settings, Console(out=show, sleep=sleep, started=STARTED))


def silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's last flush into a closed pipe stays quiet."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def describe_file_error(exc: OSError) -> str:
    """One line for a file error that no stage turned into a PipelineError."""
    from utils.history.files import describe_os_error

    if exc.filename is None:
        return exc.strerror or type(exc).__name__
    return describe_os_error(exc, exc.filename, "open")


if __name__ == "__main__":
    sys.exit(main())
