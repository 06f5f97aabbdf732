"""The month's API credits: estimate a command's calls before any request, refuse what the month cannot pay for,
warn once at 80 %, and say how much is used (`status`, `check`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timezone

from utils.coingecko.ledger import WARN_SHARE, CreditLedger, Usage, over_budget_message
from utils.coingecko.plans import PAGE_SIZE, UNIVERSE_CAP, top_label, top_pages
from utils.errors import OverBudget
from utils.history.tracking import TopMembers
from utils.settings import Settings

log = logging.getLogger(__name__)

LISTED_COINS = 17_000  # about how many coins CoinGecko lists: the estimate of `--top all` before a run has seen them


def ledger_for(settings: Settings, clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> CreditLedger:
    """The data folder's credit ledger."""
    return CreditLedger(
        settings.layout.api_credits, settings.layout.api_credits_lock, clock=clock, lock_timeout=settings.lock_timeout
    )


def usage(settings: Settings, ledger: CreditLedger | None = None) -> Usage:
    """This month's use against the plan's credits."""
    return (ledger or ledger_for(settings)).usage(settings.api_plan, settings.credits)


def _chunks(n: int) -> int:
    return -(-n // PAGE_SIZE)


def run_estimate(
    settings: Settings, coins: tuple[str, ...] | None = None, seeding: bool = False
) -> tuple[int, int, int]:
    """(calls of /coins/markets a run makes, calls --top-backfill adds to heal the coins entering the top N,
    calls of seeding a new history: one per coin and currency).

    With --top, the pages the last run needed (one more for growth), else ceil(N / 250) (`all`: about 17,000
    coins); plus the --coins outside the top by id. Healing of days missed is not counted (it is usually
    nothing and never more than one call per coin and gap)."""
    currencies = len(settings.vs_currencies)
    if coins or not settings.top:
        tracked = len(coins or settings.coins)
        return _chunks(tracked) * currencies, 0, tracked * currencies if seeding else 0
    members = TopMembers(settings.layout.top_members)
    calls = backfill = seed = 0
    for currency in settings.vs_currencies:
        known = len(members.members(currency))
        if known and (members.size(currency) or 0) >= settings.top:  # the last run saw where the listing ends
            listed = min(settings.top, known + PAGE_SIZE)
        else:
            listed = LISTED_COINS if settings.top >= UNIVERSE_CAP else settings.top
        calls += top_pages(listed) + (_chunks(len(settings.coins)) if settings.coins else 0)
        seed += listed + len(settings.coins) if seeding else 0
        if settings.top_backfill and members.currencies.get(currency):
            backfill += max(0, listed - known)  # each coin that enters is healed back: one call each
    return calls, backfill, seed


def enforce(settings: Settings, what: str, estimate: int, ledger: CreditLedger | None = None) -> None:
    """Raise OverBudget (exit 2) when `estimate` calls would pass what is left of the month, unless --over-budget."""
    if settings.credits is None or estimate <= 0:
        return
    ledger = ledger or ledger_for(settings)
    ledger.check()  # a ledger behind a link is refused here, before any request
    used = ledger.usage(settings.api_plan, settings.credits)
    if used.left is not None and estimate > used.left:
        if settings.over_budget:
            log.warning("%s: going on (--over-budget)", over_budget_message(what, estimate, used))
            return
        raise OverBudget(over_budget_message(what, estimate, used))


def check_run(
    settings: Settings, coins: tuple[str, ...] | None = None, seeding: Callable[[], bool] = lambda: False
) -> None:
    """Before a run's first request: its estimate against the month's credits; --top-backfill's cost said."""
    if settings.credits is None and not (settings.top_backfill and settings.top):
        return  # no monthly limit, and no --top-backfill whose cost is worth saying
    calls, backfill, seed = run_estimate(settings, coins, seeding() if settings.credits is not None else False)
    if backfill:
        log.warning(
            "--top-backfill with --top %s: about %s more calls to heal the coins entering the top back to "
            "the start of the history (one per coin and currency)",
            top_label(settings.top or 0),
            f"{backfill:,}",
        )
    what = (
        "this run"
        + (" with --top-backfill" if backfill else "")
        + (f" (seeding the new history: {seed:,} calls; --seed-days 0 skips it)" if seed else "")
    )
    enforce(settings, what, calls + backfill + seed)


def warn_once(
    settings: Settings, notify: Callable[[str, str], None] | None = None, ledger: CreditLedger | None = None
) -> str | None:
    """The daemon, after each run: once a month, at 80 % of the credits, a warning (and a notification)."""
    if settings.credits is None:
        return None
    ledger = ledger or ledger_for(settings)
    used = ledger.usage(settings.api_plan, settings.credits)
    if used.calls < WARN_SHARE * settings.credits or ledger.warned(used.month):
        return None
    line = (
        f"{used.line()}: {used.calls / settings.credits:.0%} of the month's credits used; "
        f"{used.left:,} left until the month ends (--monthly-credits sets the budget)"
    )
    log.warning("%s", line)
    ledger.mark_warned(used.month)
    if notify is not None:
        notify("API credits at 80 %", line)
    return line
