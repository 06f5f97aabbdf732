"""The API credit ledger: every request to CoinGecko counted per UTC month, in the data folder's state.

CoinGecko bills by the month (the Demo plan: 10,000 calls). The one HTTP client tells a recorder of
every attempt it sends (retries and 429s included); this ledger keeps the counts per month, endpoint
and currency in `.state/api-credits.json`. Like every state file it is written atomically, never
through a symbolic link, rebuilt empty when corrupt or of the wrong shape, and merged under its own
lock, so concurrent runs add up instead of overwriting each other.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

from utils.errors import ConfigError, PipelineError
from utils.history.files import ensure_dir, read_json, write_json_atomic

log = logging.getLogger(__name__)

LEDGER_VERSION = 1
WARN_SHARE = 0.8  # the daemon warns once a month when this share of the month's credits is used
FLUSH_SECONDS = 2.0  # counts are merged into the file at least this often while requests go on, and at the end
MONTHS_KEPT = 24
MAX_LEDGER_BYTES = 1 << 20  # a ledger is a few KB; a larger file is not ours and is counted afresh
_COIN_PATH = re.compile(r"^/coins/[^/]+/")


def month_of(moment: datetime) -> str:
    """The UTC month a request counts in: '2026-03'."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m")


def next_month(month: str) -> date:
    """The first day of the month after `month` (when its credits start again)."""
    year, number = (int(part) for part in month.split("-"))
    return date(year + number // 12, number % 12 + 1, 1)


def endpoint_of(path: str) -> str:
    """The endpoint a request counts under: per-coin paths folded into one ('/coins/{id}/market_chart/range')."""
    return _COIN_PATH.sub("/coins/{id}/", path.split("?")[0])


@dataclass(frozen=True)
class Usage:
    """One month's use: calls sent and how many CoinGecko answered 429, with its credits (None: unlimited)."""

    month: str
    calls: int
    rate_limited: int
    credits: int | None
    plan: str

    @property
    def left(self) -> int | None:
        return None if self.credits is None else max(0, self.credits - self.calls)

    def line(self) -> str:
        """'API calls this month: 1,234 of 10,000 (demo)'."""
        of = "unlimited" if self.credits is None else f"{self.credits:,}"
        extra = f", {self.rate_limited:,} answered 429" if self.rate_limited else ""
        return f"API calls this month: {self.calls:,} of {of} ({self.plan}{extra})"


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _clean(data: Any) -> dict[str, Any]:
    """The ledger's valid part: anything corrupt or of the wrong type is dropped (counted again from zero)."""
    months: dict[str, Any] = {}
    raw = data.get("months") if isinstance(data, dict) else None
    for month, entry in raw.items() if isinstance(raw, dict) else ():
        if not (isinstance(month, str) and re.fullmatch(r"\d{4}-\d{2}", month) and isinstance(entry, dict)):
            continue
        lines = {}
        for key, counts in entry.items():
            if isinstance(key, str) and isinstance(counts, dict):
                lines[key] = {"attempts": _count(counts.get("attempts")), "429": _count(counts.get("429"))}
        months[month] = lines
    warned = data.get("warned") if isinstance(data, dict) else None
    warned = [m for m in warned if isinstance(m, str)] if isinstance(warned, list) else []
    return {"version": LEDGER_VERSION, "months": months, "warned": warned}


class CreditLedger:
    """Counts per UTC month, endpoint and currency: what the client sent, and what CoinGecko answered 429."""

    def __init__(
        self,
        path: Path,
        lock_path: Path,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
        lock_timeout: float = 30.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path, self.lock_path = path, lock_path
        self.clock, self.lock_timeout, self.monotonic = clock, lock_timeout, monotonic
        self.pending: dict[tuple[str, str], list[int]] = {}  # (month, "endpoint currency") -> [attempts, 429s]
        self.flushed_at = monotonic()

    def check(self) -> None:
        """Refuse a ledger behind a symbolic link (exit 2), as every state file is refused."""
        for path in (self.path.parent, self.path):
            if path.is_symlink():
                raise ConfigError(
                    f"{path} is a symbolic link; the API credit ledger is never written through a link: "
                    "replace the link with the file it points to, or remove it to count afresh"
                )

    # -- the client's recorder ------------------------------------------------------------
    def record(self, path: str, params: Mapping[str, Any], status: int | None) -> None:
        """One attempt sent to CoinGecko (status None: no answer); counted, and merged into the file now and then."""
        currency = str(params.get("vs_currency") or "-").lower()[:16]
        key = (month_of(self.clock()), f"{endpoint_of(path)} {currency}")
        counts = self.pending.setdefault(key, [0, 0])
        counts[0] += 1
        if status == 429:
            counts[1] += 1
        if self.monotonic() - self.flushed_at >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Merge the pending counts into the file under the lock; a failure is a warning (the run goes on)."""
        if not self.pending:
            return
        from filelock import FileLock, Timeout  # start-up time: filelock brings asyncio (0.1 s); readers never lock

        try:
            self.check()
            ensure_dir(self.path.parent)
            with FileLock(str(self.lock_path), timeout=self.lock_timeout):
                data = self._read()
                for (month, key), (attempts, limited) in self.pending.items():
                    line = data["months"].setdefault(month, {}).setdefault(key, {"attempts": 0, "429": 0})
                    line["attempts"] += attempts
                    line["429"] += limited
                for old in sorted(data["months"])[:-MONTHS_KEPT]:
                    del data["months"][old]
                write_json_atomic(self.path, data)
            self.pending.clear()
        except (OSError, PipelineError, Timeout) as exc:
            log.warning("could not count API calls in %s: %s", self.path, getattr(exc, "strerror", None) or exc)
        self.flushed_at = self.monotonic()

    # -- reading --------------------------------------------------------------------------
    def _read(self) -> dict[str, Any]:
        try:
            too_big = self.path.stat().st_size > MAX_LEDGER_BYTES
        except OSError:
            too_big = False
        data = None if too_big else read_json(self.path)
        clean = _clean(data)
        if data is not None and clean != data:
            log.info("%s held something other than the ledger's counts; the valid part is kept", self.path)
        return clean

    def usage(self, plan: str, credits: int | None, month: str | None = None) -> Usage:
        """This month's use (the file plus what this process has not merged yet)."""
        month = month or month_of(self.clock())
        lines = self._read()["months"].get(month, {})
        calls = sum(line["attempts"] for line in lines.values())
        limited = sum(line["429"] for line in lines.values())
        for (m, _), (attempts, rate_limited) in self.pending.items():
            if m == month:
                calls += attempts
                limited += rate_limited
        return Usage(month, calls, limited, credits, plan)

    def lines(self, month: str | None = None) -> dict[str, dict[str, int]]:
        """This month's counts per 'endpoint currency'."""
        return self._read()["months"].get(month or month_of(self.clock()), {})

    def warned(self, month: str) -> bool:
        return month in self._read()["warned"]

    def mark_warned(self, month: str) -> None:
        """Remember that this month's 80 % warning went out (once per month)."""
        from filelock import FileLock, Timeout  # start-up time: filelock brings asyncio (0.1 s); readers never lock

        try:
            self.check()
            ensure_dir(self.path.parent)
            with FileLock(str(self.lock_path), timeout=self.lock_timeout):
                data = self._read()
                data["warned"] = sorted(set(data["warned"]) | {month})[-MONTHS_KEPT:]
                write_json_atomic(self.path, data)
        except (OSError, PipelineError, Timeout) as exc:
            log.warning("could not write %s: %s", self.path, getattr(exc, "strerror", None) or exc)


def over_budget_message(what: str, estimate: int, usage: Usage) -> str:
    """The one line of a command the month's credits cannot pay for."""
    return (
        f"{what} needs about {estimate:,} API calls, but only {usage.left:,} of this month's {usage.credits:,} "
        f"({usage.plan}) are left ({usage.calls:,} used; they start again on {next_month(usage.month)}): "
        "pass --over-budget to run anyway, or raise --monthly-credits if your plan has more"
    )
