"""The one place that makes text safe to show: API keys redacted, control and bidi characters made visible.

Every text that reaches stderr, the log file, `.state/status.json`, `status` or an exception message goes
through `redact`. It knows the keys this process was given (`remember_secret`) and anything shaped like a
CoinGecko key, so a server that echoes a key, or a key pasted into the wrong option, never shows.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from typing import Any

MASK = "***"
# CoinGecko keys are "CG-" and about two dozen letters and digits; test and older keys also carry - or _.
KEY_SHAPE = re.compile(r"(?<![A-Za-z0-9])CG-[A-Za-z0-9_-]{20,}")
# A key named by its header or query parameter (x-cg-demo-api-key: ..., x_cg_pro_api_key=...), whatever it is.
KEY_FIELD = re.compile(r"(?i)(x[-_]cg[-_](?:demo|pro)[-_]api[-_]key['\"]?\s*[:=]\s*['\"]?)[^\s&'\",;}]+")
# Character ranges (for a regex class) that must never reach a terminal or a cell as they are:
CONTROLS = "\x00-\x1f\x7f-\x9f\u2028\u2029"  # C0 and C1 (ESC starts every ANSI sequence), line separators
BIDI_CONTROLS = (
    "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"  # embeddings, overrides and isolates: they reorder what follows
)
SURROGATES = "\ud800-\udfff"  # lone surrogates, which no encoder accepts
UNSAFE = re.compile(f"[{CONTROLS}{BIDI_CONTROLS}{SURROGATES}]")
UNSAFE_BUT_NEWLINE = re.compile(f"(?!\n)[{CONTROLS}{BIDI_CONTROLS}{SURROGATES}]")

_secrets: set[str] = set()  # filled at run time (settings, client), never at import


def remember_secret(secret: str | None) -> None:
    """Redact this exact string from now on (the configured API key)."""
    if secret and len(secret) >= 8:  # a short "key" would blank out ordinary words; real keys are ~27 characters
        _secrets.add(secret)


def forget_secrets() -> None:
    """Start a new command with no remembered keys (main() may run many times in one test process)."""
    _secrets.clear()


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def redact(text: object, *, multiline: bool = False) -> str:
    """Text safe to show: keys become ***, controls, bidi overrides and lone surrogates become visible escapes.

    With multiline (a traceback at -v), newlines stay; everything else is one line.
    """
    text = str(text)
    for secret in sorted(_secrets, key=len, reverse=True):  # longest first: one key may contain another
        if secret in text:
            text = text.replace(secret, MASK)
    if "CG-" in text:
        text = KEY_SHAPE.sub(MASK, text)
    if "api" in text.lower():
        text = KEY_FIELD.sub(lambda m: m.group(1) + MASK, text)
    return (UNSAFE_BUT_NEWLINE if multiline else UNSAFE).sub(_escape, text)


def redact_tree(value: object) -> object:
    """A JSON value with every string in it redacted (for status.json)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact(k): redact_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_tree(v) for v in value]
    return value


class RedactFilter(logging.Filter):
    """Put a handler's log lines through `redact`: no key, no raw control or bidi characters, whoever logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "_redacted", False):  # one record may pass several handlers
            record.msg, record.args = redact(record.getMessage()), None
            if record.exc_info and not record.exc_text:
                record.exc_text = redact(logging.Formatter().formatException(record.exc_info), multiline=True)
            record._redacted = True  # type: ignore[attr-defined]
        return True


_REDACTED_TYPES: dict[str, type[Exception]] = {}


def redacted_errors(handler: Callable[..., Any]) -> Callable[..., Any]:
    """A Lambda handler whose every exception reaches the runtime with its text through `redact` (the runtime
    logs errorMessage and the traceback itself). The error's class name is kept, so Step Functions' retry rules
    (ErrorEquals: ExtractError, LoadError) still match; the original traceback is not passed on."""

    @functools.wraps(handler)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return handler(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - every exception: its text is what leaks
            name = type(exc).__name__
            kind = _REDACTED_TYPES.setdefault(name, type(name, (Exception,), {"__module__": "lambda"}))
            raise kind(redact(f"{exc}")) from None

    return wrapped
