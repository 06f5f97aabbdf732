"""Where log lines go: stderr (plain for a command, timestamped for the daemon) and an optional rotated file, every
line through the one redaction filter."""

from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path

from utils.errors import ConfigError
from utils.redact import RedactFilter


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
            file_handler = logging.handlers.RotatingFileHandler(
                log_file, maxBytes=10 * 2**20, backupCount=5, encoding="utf-8", errors="backslashreplace"
            )
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
