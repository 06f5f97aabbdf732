"""The words and numbers around a chart: amounts in a currency, dates of the window, titles, legend labels.

Plain text only, no matplotlib: draw.py's tick formatters call these.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

CURRENCY_SYMBOLS = {"eur": "€", "usd": "$", "gbp": "£", "jpy": "¥"}

SHORT_HISTORY_NOTE = (
    "Fewer than two days of data for every coin: the lines grow day by day.\n"
    "`python main.py backfill --days 30` fills the last 30 days now."
)


def format_money(value: float, currency: str, digits: int = 3) -> str:
    """A human amount: €1.2T, $350B, €16.95K, €0.0012; unknown currencies as a suffix code."""
    return _with_currency(_human_number(abs(value), digits), value < 0, currency)


def _with_currency(number: str, negative: bool, currency: str) -> str:
    symbol = CURRENCY_SYMBOLS.get(currency.lower())
    sign = "-" if negative else ""
    if symbol:
        return f"{sign}{symbol}{number}"
    return f"{sign}{number} {currency.upper()}"


def price_text(value: float, currency: str) -> str:
    """A latest price for the legend: €16,951 between a thousand and a million, else €0.07204."""
    if 1e3 <= value < 1e6:
        return _with_currency(f"{value:,.0f}", False, currency)
    return format_money(value, currency, 4)


def _human_number(value: float, digits: int) -> str:
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    rounded = float(f"{value:.{digits}g}")
    for unit, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if rounded >= unit:
            return _significant(rounded / unit, digits) + suffix
    if rounded >= 1e-6:
        return _significant(rounded, digits)
    mantissa, exponent = f"{rounded:.{digits - 1}e}".split("e")
    if "." in mantissa:
        mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def _significant(value: float, digits: int) -> str:
    """value (> 0) with that many significant digits, plain notation, no trailing zeros."""
    exponent = math.floor(math.log10(value))
    decimals = max(digits - 1 - exponent, 0)
    text = f"{value:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def tick_digits(locs: Sequence[float]) -> int:
    """Significant digits that state every tick value exactly: 125B at 2 digits reads "120B", so 3."""
    shown = [float(v) for v in locs if v != 0]
    for digits in range(2, 13):
        if all(math.isclose(float(f"{v:.{digits}g}"), v, rel_tol=1e-9) for v in shown):
            break
    return digits


def index_text(x: float) -> str:
    """Plain index numbers (97.5, 100, 250,000), no offset, no scientific notation; from a million on 1.25M, 10B:
    a tick label of 14 digits would run off the chart's left edge."""
    if abs(x) >= 1e6:
        return ("-" if x < 0 else "") + _human_number(abs(x), 3)
    return f"{x:,.6f}".rstrip("0").rstrip(".")


def change_text(index: float) -> str:
    """The change since the first point of an index based at 100: +4.1%, -23.4%, +1,274%, and from a million
    per cent on +7.96B% (as index_text's ticks): "+7,960,597,781,667%" ran off the legend's right edge."""
    change = index - 100.0
    if abs(change) >= 1e6:
        return ("-" if change < 0 else "+") + _human_number(abs(change), 3) + "%"
    return f"{change:+,.0f}%" if abs(change) >= 1000 else f"{change:+.1f}%"


def _day_text(moment: datetime) -> str:
    return f"{moment.day} {moment:%b %Y}"


def window_text(start: datetime, end: datetime) -> str:
    """8 Jan 2023, 2–8 Jan 2023, 10 Dec 2022 – 8 Jan 2023, always marked UTC."""
    if start.date() == end.date():
        return f"{_day_text(end)} (UTC)"
    if (start.year, start.month) == (end.year, end.month):
        return f"{start.day}–{_day_text(end)} (UTC)"
    if start.year == end.year:
        return f"{start.day} {start:%b} – {_day_text(end)} (UTC)"
    return f"{_day_text(start)} – {_day_text(end)} (UTC)"


def picked_text(top: int, held: int, movers: int) -> str:
    """Which coins a chart of a large history shows, in place of its coin count."""
    return f"the {top} largest of {held:,} coins by market cap" + (
        f" + the day's {movers} biggest movers" if movers else ""
    )


@dataclass(frozen=True)
class ChartText:
    title: str
    subtitle: str
    stamp: str


def chart_text(
    *,
    title: str,
    what: str,
    currency: str,
    window: tuple[datetime, datetime],
    coins: int,
    untracked: int,
    bucket_days: int,
    scale: str,
    now: datetime,
    picked: str = "",
) -> ChartText:
    """Title (what, where, when), subtitle (what the axis shows, which coins) and stamp (which points, source, age).

    picked, when a large history is cut to its leaders, says which coins in place of their count.
    """
    newest = window[1]
    per = (
        "Last observation of each UTC day" if bucket_days == 1 else f"Last observation of every {bucket_days} UTC days"
    )
    stamp = f"{per} · Newest data: {newest:%Y-%m-%d %H:%M} UTC · Data: CoinGecko"
    if now - newest > timedelta(days=2):
        stamp = f"{stamp} · {(now - newest).days} days old when drawn"
    count = picked or f"{coins} coin{'' if coins == 1 else 's'}"
    if untracked:
        count += f" tracked now ({untracked} more in the history: --plot-coins draws them)"
    log_note = ", log scale" if scale == "log" else ""
    return ChartText(
        title=f"{title} in {currency.upper()} · {window_text(*window)}",
        subtitle=f"{what}{log_note} · {count}",
        stamp=stamp,
    )


def legend_label(coin_label: str, value: str, *, mover: bool = False) -> str:
    """A legend entry: the coin, then its latest value; a star marks one of the day's biggest movers."""
    return f"{coin_label}{MOVER_MARK if mover else ''}  {value}"


MOVER_MARK = "*"


def movers_label(count: int) -> str:
    """The legend's note under the coins when some are there as the day's biggest movers."""
    return (
        f"{MOVER_MARK} one of the day's {count} biggest movers"
        if count > 1
        else f"{MOVER_MARK} the day's biggest mover"
    )


def more_label(count: int) -> str:
    return f"+{count} more (grey)"


def gap_label(gap_days: int) -> str:
    return f"dotted: no data for over {gap_days} days"


NO_DATA_LABEL = "no data for any coin"
