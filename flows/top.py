"""`python main.py top --date YYYY-MM-DD`: the top N coins by market cap as the history recorded them that day."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone

from flows.wiring import Console
from lambdas.wiring import storage_for
from utils.clock import day_number
from utils.coingecko.plans import UNIVERSE_CAP, top_label
from utils.daemon import StatusFile
from utils.errors import EXIT_FAILED, EXIT_OK
from utils.history.layout import display_path
from utils.history.tracking import TopMembers
from utils.options import command_default
from utils.settings import Settings
from utils.words import count

DEFAULT_TOP = command_default("top", "top")  # 100: how many `top` prints without --top
GONE_AFTER_DAYS = 7  # `status` lists a delisted coin once it has been gone this long
GONE_SHOWN = 20


def format_cap(value: float | None) -> str:
    """A market cap with thousands separators; '-' when CoinGecko gave none."""
    return "-" if value is None else f"{value:,.0f}"


def print_top(settings: Settings, out: Callable[[str], None] = print) -> int:
    """Print rank, id, symbol and market cap of the day's top N from the index; exit 1 when the day has none."""
    day = settings.date or datetime.now(timezone.utc).date()
    limit = settings.top or DEFAULT_TOP
    currency = settings.vs_currency
    storage = storage_for(settings, create=False)
    with storage.index() as index:
        rows = index.top_of_day(currency, day_number(day), limit)
    if not rows:
        out(
            f"no observations in {currency} on {day} in {display_path(storage.csv_display)}: "
            "`python main.py status` shows the days the history covers"
        )
        return EXIT_FAILED
    # The order is CoinGecko's market_cap_rank of that observation; a backfilled point has none and follows.
    out(
        f"top {top_label(limit)} by market-cap rank in {currency} on {day} (UTC), each coin's last observation "
        "that day (unranked coins last, by market cap):"
    )
    out(f"{'rank':>5}  {'id':<32} {'symbol':<10} {'market cap (' + currency + ')':>24}")
    for rank, coin_id, symbol, cap in rows:
        out(f"{rank if rank is not None else '-':>5}  {coin_id:<32} {symbol.upper():<10} {format_cap(cap):>24}")
    return EXIT_OK


def describe_tracking(settings: Settings, now: datetime, out: Callable[[str], None]) -> None:
    """How many coins a run tracks, and for the top N of each currency how many entered or left in 30 days."""
    members = TopMembers(settings.layout.top_members)
    status = StatusFile(settings.layout.status).read()  # what the last whole run fetched, not this command's --coins
    # The most recent run decides: after a one-off --top, a run without it tracks its --coins again.
    if not members.currencies or status.get("tracked_top") == 0:
        if status.get("tracked_coins"):
            currencies = status.get("tracked_currencies") or [settings.vs_currency]
            out(f"tracked:      {count(status['tracked_coins'], 'coin')} in {', '.join(currencies)}")
        return
    for currency in sorted(members.currencies):
        inside = members.members(currency)
        extra = members.also(currency)
        entered, left = members.recent(currency, now.date())
        size = members.size(currency)
        what = "the whole market" if size and size >= UNIVERSE_CAP else f"the top {size or '?'}"
        out(
            f"tracked:      {len(inside) + len(extra)} coins in {currency}: {what} "
            f"({len(inside)} coins){f' and {len(extra)} more from --coins' if extra else ''}; "
            f"last 30 days: {entered} entered, {left} left the top"
        )
        gone = sorted(
            (day, coin_id)
            for coin_id, day in members.gone(currency).items()
            if (now.date() - day).days > GONE_AFTER_DAYS
        )
        if gone:
            listed = ", ".join(f"{coin_id} gone since {day}" for day, coin_id in gone[:GONE_SHOWN])
            out(
                f"gone:         {count(len(gone), 'coin')} in {currency} no longer listed by CoinGecko for more than "
                f"{GONE_AFTER_DAYS} days (history kept): {listed}{', ...' if len(gone) > GONE_SHOWN else ''}"
            )


def top_command(settings: Settings, console: Console) -> int:
    """`top`: the day's top N by market cap, as the history recorded them."""
    return print_top(settings, out=console.out)
