"""The pipeline's exceptions: each carries a one-line message that says what to do, and an exit code."""

from __future__ import annotations

from utils.redact import redact

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3


class PipelineError(Exception):
    """Base of every error the pipeline raises on purpose."""

    exit_code = EXIT_FAILED

    def __init__(self, *args: object) -> None:
        # Messages quote servers, files and settings: redacted once here, they are safe wherever they go.
        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))


class ConfigError(PipelineError):
    """Bad command line, environment or config file."""

    exit_code = EXIT_USAGE


class ExtractError(PipelineError):
    """CoinGecko could not be reached or answered something unusable."""

    def __init__(self, message: str, *, status: int | None = None, error_code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code


class RetriableError(ExtractError):
    """A failure worth retrying: network error, 408, 429 or 5xx."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error_code: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, error_code=error_code)
        self.retry_after = retry_after


class RateLimited(RetriableError):
    """CoinGecko said 429 (in the status or in the body)."""


class AuthError(ExtractError):
    """The key, plan or host is wrong (10002, 10005, 10010, 10011, 10012, 401, 403)."""

    exit_code = EXIT_USAGE


class BadRequest(ExtractError):
    """CoinGecko rejected a parameter (invalid vs_currency, ...): a configuration problem."""

    exit_code = EXIT_USAGE


class OverBudget(PipelineError):
    """A command would pass what is left of the month's API credits (--over-budget runs it anyway)."""

    exit_code = EXIT_USAGE


class Stopped(PipelineError):
    """A stop (SIGTERM, Ctrl-C in the daemon) ended a request or a wait: nothing was appended."""


class LoadError(PipelineError):
    """The history could not be written; nothing was appended."""


class SchemaMismatch(LoadError):
    """The CSV on disk has columns this version does not write."""

    exit_code = EXIT_USAGE


class LockTimeout(LoadError):
    """Another process held the history's lock for too long."""
