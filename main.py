"""Command line: parse flags and environment into Settings, dispatch a command, return its exit code."""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import importlib.util
import logging
import logging.handlers
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence

from utils.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, ConfigError, PipelineError
from utils.help_text import EPILOG, SUBCOMMANDS, TOP_DESCRIPTION
from utils.history.files import describe_os_error
from utils.logs import setup_logging
from utils.options import OPTION_TABLE, OPTIONS, READERS, RUNS, SETTINGS_OPTIONS
from utils.redact import forget_secrets, redact, remember_secret
from utils.settings import Settings, build_settings

VERSION = "2.0.0"  # `python main.py --version`
# What `pip install -r requirements.txt` brings, as import names: checked before anything imports them.
RUNTIME_MODULES = (
    "requests",
    "pandas",
    "numpy",
    "matplotlib",
    "seaborn",
    "PIL",
    "schedule",
    "tenacity",
    "filelock",
    "tqdm",
    "tzlocal",
    "jinja2",
)

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
    "export": ("flows.export", "export_command"),
}
COMMANDS = tuple(COMMAND_TABLE)
# Options a user may also give before the command (`python main.py -q plot`).
GLOBAL_OPTIONS = tuple(option.name for option in OPTION_TABLE if option.anywhere)  # also before the command
BEFORE = "before_"  # where options given before the command land, so the command's defaults cannot hide them


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        command = self.prog.split()[-1]
        where = f"python main.py {command}" if command in COMMANDS else "python main.py"
        self.exit(EXIT_USAGE, f"error: {message} (see `{where} --help`)\n")


GROUP_TITLES = {"output": "output", "charts": "chart options", "schedule": "schedule", "export": "export"}


def group_title(group: str, command: str) -> str:
    """The --help heading of an option group, as it reads for this command."""
    if group == "data":
        what = "data options" if command in READERS else "data and API options"
        return f"{what} (flag > environment > config file > default)"
    if group == "quality":
        return "quality and notifications" if command in RUNS else "quality"
    if group == "days":
        return "range (complete UTC days)" if command == "backfill" else "days"
    return GROUP_TITLES[group]


def add_options(parser: argparse.ArgumentParser, command: str) -> None:
    """The options of OPTION_TABLE that the command takes; those it only accepts are left out of --help."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for option in OPTION_TABLE:
        if command not in option.commands and command not in option.hidden:
            continue
        target: argparse._ActionsContainer = parser
        if option.group != "switches":
            if option.group not in groups:
                groups[option.group] = parser.add_argument_group(group_title(option.group, command))
            target = groups[option.group]
        shown = option.help_for(command) if command in option.commands else argparse.SUPPRESS
        kinds: dict[str, dict[str, object]] = {
            "value": {"metavar": option.metavar, "choices": option.choices},
            "off": {"action": "store_const", "const": False},
            "on": {"action": "store_const", "const": True},
            "count": {"action": "count", "default": 0},
            "true": {"action": "store_true"},
        }
        target.add_argument(*option.flags, dest=option.name, help=shown, **kinds[option.kind])  # type: ignore[arg-type]


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: run's options at the top level, then one subparser per command."""
    parser = OneLineParser(
        prog="main.py", usage="%(prog)s [-h] [COMMAND] [OPTIONS ...]", description=TOP_DESCRIPTION, epilog=EPILOG
    )
    add_options(parser, "run")
    for action in parser._actions:  # argparse offers no public walk over actions
        if action.option_strings and action.dest != "help":
            action.dest, action.default = BEFORE + action.dest, argparse.SUPPRESS
    parser.add_argument(
        "--version",
        action="version",
        help="print the version and exit",
        version=f"%(prog)s {VERSION} (Python {sys.version.split()[0]})",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for command, (line, description, epilog) in SUBCOMMANDS.items():
        add_options(sub.add_parser(command, help=line, description=description, epilog=epilog), command)
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse argv: options without a command mean `run`; the global options may also come before a command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        return parser.parse_args(["run", *argv])
    before = {name[len(BEFORE) :]: value for name, value in vars(args).items() if name.startswith(BEFORE)}
    for action in parser._actions:
        name = action.dest.removeprefix(BEFORE)
        if name != action.dest and name in before and name not in GLOBAL_OPTIONS:
            flag = action.option_strings[-1]
            takes = {o for a in subparser(parser, args.command)._actions for o in a.option_strings}
            if flag not in takes:  # moving it after the command would be refused
                parser.error(f"{flag} is not an option of `{args.command}`; leave it out")
            if args.command in OPTIONS[name].hidden:  # accepted there, but moving it would do nothing
                instead = (
                    f"; to chart some coins: python main.py {args.command} --plot-coins ID,ID"
                    if args.command in ("plot", "report") and flag == "--coins"
                    else "; leave it out"
                )
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


def settings_from(args: argparse.Namespace, env: Mapping[str, str]) -> Settings:
    """Settings from parsed arguments and the environment."""
    flags = {option.name: getattr(args, option.name, None) for option in SETTINGS_OPTIONS}
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
    return (
        f"error: the package {package!r} is not installed for {sys.executable}; run with `make run` "
        "(it creates .venv with the packages of requirements.txt) or `.venv/bin/python main.py` "
        "once .venv exists"
    )


def main(
    argv: Sequence[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
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
        code = run(args, env, sleep)
        sys.stdout.flush()  # a reader that went away (`status | head -1`) shows here, not as a traceback at exit
        return code
    except BrokenPipeError:
        silence_stdout()
        return EXIT_OK
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - the last line of defence: one line, no traceback
        return report_error(exc, args.command)


def run(args: argparse.Namespace, env: Mapping[str, str], sleep: Callable[[float], None]) -> int:
    """Settings from the arguments, logging as the command needs it, then the command's flow."""
    settings = settings_from(args, env)
    remember_secret(settings.api_key)
    if settings.log_file or settings.command == "daemon":
        setup_logging(args.verbose, args.quiet, timestamps=settings.command == "daemon", log_file=settings.log_file)
    return dispatch(settings, sleep)


def report_error(exc: BaseException, command: str) -> int:
    """One line on stderr for what stopped a command, and its exit code."""
    if isinstance(exc, PipelineError):
        word = "config error" if isinstance(exc, ConfigError) else f"{command} failed"
        log.error("%s: %s", word, exc, extra={"plain": True})
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        resume = "; run the same backfill again and it resumes where it stopped" if command == "backfill" else ""
        log.error("interrupted; the history holds only whole rows%s", resume, extra={"plain": True})
        return 130
    if isinstance(exc, OSError):  # a file or folder the command needs (unreadable CSV, read-only chart folder, ...)
        log.debug("file error", exc_info=exc)
        log.error("%s failed: %s", command, describe_file_error(exc), extra={"plain": True})
        return EXIT_FAILED
    from utils.s3 import explain_aws_error  # start-up time: only on an error of another kind

    log.debug("%s stopped on this error (the details of the line below)", command, exc_info=exc)
    known = explain_aws_error(exc)
    if known is not None:
        log.error("%s failed: %s", command, known[0], extra={"plain": True})
        return known[1]
    log.error(
        "%s failed: unexpected %s: %s (run again with -v for details and please report it)",
        command,
        type(exc).__name__,
        exc,
        extra={"plain": True},
    )
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
    if exc.filename is None:
        return exc.strerror or type(exc).__name__
    return describe_os_error(exc, exc.filename, "open")


def __getattr__(name: str) -> object:
    """`main.run_pipeline`, as scripts written before flows/run.py call it (imported on first use, to start fast)."""
    if name == "run_pipeline":
        # start-up time: the flows load only when a command runs
        from flows.run import run_pipeline

        return run_pipeline
    raise AttributeError(f"module 'main' has no attribute {name!r}")


if __name__ == "__main__":
    code = main()
    # The process ends now: what the command made is freed with it, not traversed by a last collection
    # (about 0.1 s of CPU after a plot or report; gc.freeze moves every object out of the collector's reach).
    gc.freeze()
    sys.exit(code)
