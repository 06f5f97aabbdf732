"""`python main.py top --date YYYY-MM-DD`: the top N coins by market cap as the history recorded them that day."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone

from utils.errors import EXIT_FAILED, EXIT_OK
from utils.index import day_number
from utils.layout import display_path
from utils.settings import Settings
from utils.storage import storage_for

DEFAULT_TOP = 100


def format_cap(value: float | None) -> str:
    """A market cap with thousands separators; '-' when CoinGecko gave none."""
    return "-" if value is None else f"{value:,.0f}"


def print_top(settings: Settings, out: Callable[[str], None] = print) -> int:
    """Print rank, id, symbol and market cap of the day's top N from the index; exit 1 when the day has none."""
    day = settings.date or datetime.now(timezone.utc).date()
    limit = settings.top or DEFAULT_TOP
    currency = settings.vs_currency
    with storage_for(settings).index() as index:
        rows = index.top_of_day(currency, day_number(day), limit)
    if not rows:
        out(f"no observations in {currency} on {day} in {display_path(settings.csv_path)}: "
            "`python main.py status` shows the days the history covers")
        return EXIT_FAILED
    out(f"top {limit} by market cap in {currency} on {day} (UTC), each coin's last observation that day:")
    out(f"{'rank':>5}  {'id':<32} {'symbol':<10} {'market cap (' + currency + ')':>24}")
    for rank, coin_id, symbol, cap in rows:
        out(f"{rank if rank is not None else '-':>5}  {coin_id:<32} {symbol.upper():<10} {format_cap(cap):>24}")
    return EXIT_OK
