"""The one-page HTML report, rendered with Jinja2 (autoescaped: every name from the API is text, never markup)."""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TEMPLATES = Path(__file__).resolve().parent / "templates"


@dataclass(frozen=True)
class CoinRow:
    """One coin's latest daily point, its changes and its coverage."""

    coin_id: str
    name: str
    symbol: str
    observed: str
    price: float | None
    change_24h: float | None
    change_7d: float | None
    change_30d: float | None
    market_cap: float | None
    rank: int | None
    first_day: str
    days_present: int
    days_missing: int
    findings: int = 0


@dataclass(frozen=True)
class Chart:
    title: str
    data_uri: str


@dataclass
class ReportData:
    """Everything the page shows."""

    generated_at: str
    vs_currency: str
    csv_name: str
    rows: int
    coins: list[CoinRow]
    charts: list[Chart]
    findings: list[Any]  # utils.history.quality.Finding
    finding_counts: dict[str, int]
    last_run: dict[str, Any] | None
    days: int = 30
    last_backfill: dict[str, Any] | None = None  # status.json's record of the last `backfill`
    notes: list[str] = field(default_factory=list)
    findings_shown: int = 200  # a page, not a dump: `python main.py quality` lists them all


def png_data_uri(path: Path) -> str:
    """A PNG as a data: URI, so the page needs no file beside it."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def fmt_price(value: float | None) -> str:
    """Prices span 1e-5..1e5: two decimals from 1 up, four significant digits below."""
    if value is None or not math.isfinite(value):
        return "–"
    if abs(value) >= 1:
        return f"{value:,.2f}"
    if value == 0:
        return "0"
    text = f"{value:.{max(2, 3 - math.floor(math.log10(abs(value))))}f}".rstrip("0")
    return text + "0" * (2 - len(text.split(".")[1]))  # four significant digits, never fewer than two decimals


def fmt_big(value: float | None) -> str:
    """Market caps as 1.23 T, 456.7 B, 12.3 M."""
    if value is None or not math.isfinite(value):
        return "–"
    for size, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:,.2f} {unit}"
    return f"{value:,.0f}"


def fmt_change(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value * 100:+.1f}%"


def change_class(value: float | None) -> str:
    if value is None or not math.isfinite(value) or abs(value) < 0.0005:
        return "flat"
    return "up" if value > 0 else "down"


def render(data: ReportData) -> str:
    """The page as one HTML string."""
    # start-up time: jinja2 loads when a page is rendered, not for plot or status (which import the report's types)
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(price=fmt_price, big=fmt_big, change=fmt_change, change_class=change_class)
    return env.get_template("report.html.j2").render(r=data)
