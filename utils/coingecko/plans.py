"""CoinGecko's plans, the hosts that serve them and the answer-size cap (no HTTP here: settings and the client both need them)."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

PUBLIC_URL = "https://api.coingecko.com/api/v3"
PRO_URL = "https://pro-api.coingecko.com/api/v3"
DEFAULT_MAX_RESPONSE_MB = 64.0  # the largest answer accepted, after decompression (--max-response-mb)


def default_base_url(plan: str) -> str:
    """The host that serves a plan."""
    return PRO_URL if plan == "pro" else PUBLIC_URL


# Monthly API credits when --monthly-credits is not given: Demo's published 10,000; keyless access has no monthly
# quota (only a per-minute one); paid keys: the smallest paid plan's (Basic, 100,000 a month).
PLAN_CREDITS: dict[str, int | None] = {"public": None, "demo": 10_000, "pro": 100_000}
UNIVERSE_CAP = 20_000  # the most coins `--top` tracks (`--top all`): CoinGecko lists about 17,000; 80 pages of 250
PAGE_SIZE = 250  # the most /coins/markets returns per request


def top_label(top: int) -> str:
    """How a top N reads to a user: 'all' for the whole market."""
    return "all" if top >= UNIVERSE_CAP else str(top)


FREE_PLANS = ("public", "demo")
FREE_REACH_DAYS = 365  # the free plans' daily history reaches this many days back
PAID_REACH = "2013"  # a paid plan (pro) reaches back to CoinGecko's first data


def earliest_reachable_day(plan: str, now: datetime) -> date | None:
    """The oldest day the plan's history reaches, or None when it reaches back to the start."""
    if plan not in FREE_PLANS:
        return None
    return (now.astimezone(timezone.utc) - timedelta(days=FREE_REACH_DAYS)).date() + timedelta(days=1)


def top_pages(top: int) -> int:
    """The most ranking pages a top N asks for."""
    return -(-min(top, UNIVERSE_CAP) // PAGE_SIZE)
