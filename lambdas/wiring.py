"""The wiring: Settings (the configuration of the command line and of the Lambda functions) turned into library objects.

The library under utils/ knows no Settings. Each adapter here reads the settings one library object needs
and builds it: the storage behind --data-dir, the CoinGecko client, the chart options. It lives in lambdas/, the layer under flows/, because
the Lambda handlers need it as much as the flows do and a handler may not import flows/ (the layers
contract); the flows import it from here. It is no stage: it imports none of them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from utils.history.layout import TABLE_NAME, primary_currency
from utils.history.locations import (
    DeltaHistory,
    DeltaStorage,
    LocalStorage,
    QualityRules,
    S3Storage,
    Storage,
    prepare_data_dir,
    refuse_file_as_data_dir,
)
from utils.s3 import storage_options
from utils.settings import Settings

if TYPE_CHECKING:
    from utils.charts.data import ChartOptions
    from utils.coingecko.client import CoinGeckoClient, RateLimiter


def table_format_of(settings: Settings) -> str:
    """--table-format, or its default: delta for an s3:// location, csv for a local folder."""
    return settings.table_format or ("delta" if settings.data_url else "csv")


def storage_for(settings: Settings, should_stop: Callable[[], bool] | None = None, *, create: bool = True) -> Storage:
    """The storage behind --data-dir, checked before any request; should_stop ends a wait for the lock.

    create=False for commands that only read: a mistyped --data-dir is left uncreated."""
    rules = QualityRules(settings.spike_threshold)
    if settings.data_url:
        s3 = S3Storage(settings.data_url, scratch=settings.data_dir)
        if table_format_of(settings) == "csv":
            return s3
        # delta-rs is told where S3 is from the environment boto3 reads: the library itself reads none
        history = DeltaHistory(f"{settings.data_url}/{TABLE_NAME}", storage_options(os.environ))
        return DeltaStorage(
            s3, history, settings.data_dir, lock_timeout=settings.lock_timeout, rules=rules, should_stop=should_stop
        )
    if create:
        prepare_data_dir(settings.data_dir)
    else:
        refuse_file_as_data_dir(settings.data_dir)
    local = LocalStorage(settings.data_dir, settings.lock_timeout, rules, should_stop)
    if table_format_of(settings) == "csv":
        return local
    return DeltaStorage(
        local,
        DeltaHistory(str(local.layout.table)),
        settings.data_dir,
        lock_timeout=settings.lock_timeout,
        rules=rules,
        should_stop=should_stop,
    )


def chart_options(settings: Settings) -> ChartOptions:
    """Chart options from the settings."""
    # optional package: matplotlib and pandas, which the Extract and Transform zips leave out
    from utils.charts.data import ChartOptions

    primary = primary_currency(settings.vs_currency)
    return ChartOptions(
        vs_currency=primary,
        coins=settings.plot_coins,
        since=settings.since,
        until=settings.until,
        days=settings.days,
        scale=settings.scale,
        primary=primary,
    )


def make_client(
    settings: Settings,
    sleep: Callable[[float], None] = time.sleep,
    *,
    limiter: RateLimiter | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> CoinGeckoClient:
    """The CoinGecko client the settings describe; a limiter passed in is shared (the daemon's, for its life)."""
    # start-up time: requests, tenacity and filelock load only for the commands that call the API, not plot or status
    from utils.coingecko.client import CoinGeckoClient
    from utils.coingecko.ledger import CreditLedger

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
