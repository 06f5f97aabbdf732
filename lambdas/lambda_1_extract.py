"""Extract: fetch /coins/markets for the configured coins into a Snapshot (HTTP only, no files)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from utils.coingecko import CoinGeckoClient
from utils.errors import ExtractError
from utils.file_storage import archive_raw

log = logging.getLogger(__name__)

PAGE_SIZE = 250  # the most /coins/markets returns per request


@dataclass(frozen=True)
class Snapshot:
    """What CoinGecko answered for one run: raw rows plus when and what was asked."""

    fetched_at: datetime
    vs_currency: str
    requested: tuple[str, ...]
    rows: list[Any]
    pages: list[Any] = field(default_factory=list, repr=False)

    @property
    def missing(self) -> tuple[str, ...]:
        """Requested ids CoinGecko left out (unknown, renamed or delisted)."""
        seen = {row.get("id") for row in self.rows if isinstance(row, dict)}
        return tuple(coin for coin in self.requested if coin not in seen)


def extract(coins: tuple[str, ...], vs_currency: str, client: CoinGeckoClient,
            clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> Snapshot:
    """Fetch every coin in ceil(n / 250) requests. Raises ExtractError."""
    fetched_at = clock()
    rows: list[Any] = []
    pages: list[Any] = []
    for start in range(0, len(coins), PAGE_SIZE):
        chunk = list(coins[start:start + PAGE_SIZE])
        page = client.markets(vs_currency, chunk, page=1, per_page=PAGE_SIZE)
        if not isinstance(page, list):
            kind = type(page).__name__.replace("dict", "object").replace("NoneType", "null")
            raise ExtractError(f"CoinGecko /coins/markets answered a JSON {kind} where a list of coins "
                               "belongs; the API may have changed or be misbehaving: try again later")
        pages.append(page)
        rows.extend(page)
    log.debug("fetched %d rows for %d coins in %d requests", len(rows), len(coins), len(pages))
    return Snapshot(fetched_at=fetched_at, vs_currency=vs_currency, requested=tuple(coins), rows=rows,
                    pages=pages)


def archive_snapshot(snapshot: Snapshot, raw_dir: Path) -> Path:
    """Keep the raw answer as gzip JSON so a later version can reprocess history."""
    payload = {
        "endpoint": "/coins/markets",
        "fetched_at": snapshot.fetched_at.astimezone(timezone.utc).isoformat(),
        "vs_currency": snapshot.vs_currency,
        "requested": list(snapshot.requested),
        "pages": snapshot.pages,
    }
    return archive_raw(raw_dir, snapshot.fetched_at, f"coins_markets_{snapshot.vs_currency}", payload)
