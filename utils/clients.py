"""The CoinGecko client that a Settings object describes (shared by the flows and the Lambda handlers)."""

from __future__ import annotations

import time
from collections.abc import Callable

from utils.coingecko.client import CoinGeckoClient, RateLimiter
from utils.coingecko.ledger import CreditLedger
from utils.settings import Settings


def make_client(
    settings: Settings,
    sleep: Callable[[float], None] = time.sleep,
    *,
    limiter: RateLimiter | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> CoinGeckoClient:
    """The CoinGecko client the settings describe; a limiter passed in is shared (the daemon's, for its life)."""
    recorder = CreditLedger(
        settings.layout.api_credits, settings.layout.api_credits_lock, lock_timeout=settings.lock_timeout
    )
    return CoinGeckoClient(
        settings.api_url,
        plan=settings.api_plan,
        api_key=settings.api_key,
        recorder=recorder,
        timeout=settings.timeout,
        max_retry_wait=settings.max_retry_wait,
        sleep=sleep,
        rate_limit=settings.rate_limit,
        max_response_mb=settings.max_response_mb,
        limiter=limiter,
        should_stop=should_stop,
    )
