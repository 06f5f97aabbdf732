"""Extract: fetch /coins/markets for the configured coins into a Snapshot (HTTP only, no files)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from utils.coingecko.client import CoinGeckoClient
from utils.errors import ExtractError
from utils.history.schema import Snapshot, snapshot_from_payload, snapshot_payload  # noqa: F401 - the stage's types

if TYPE_CHECKING:
    from utils.history.locations import Storage

log = logging.getLogger(__name__)

PAGE_SIZE = 250  # the most /coins/markets returns per request


def _checked(page: Any) -> list[Any]:
    """A /coins/markets answer that is a list, else ExtractError."""
    if not isinstance(page, list):
        kind = type(page).__name__.replace("dict", "object").replace("NoneType", "null")
        raise ExtractError(f"CoinGecko /coins/markets answered a JSON {kind} where a list of coins "
                           "belongs; the API may have changed or be misbehaving: try again later")
    return page


def extract(coins: tuple[str, ...], vs_currency: str, client: CoinGeckoClient,
            clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> Snapshot:
    """Fetch every coin in ceil(n / 250) requests. Raises ExtractError."""
    fetched_at = clock()
    rows: list[Any] = []
    pages: list[Any] = []
    for start in range(0, len(coins), PAGE_SIZE):
        chunk = list(coins[start:start + PAGE_SIZE])
        page = _checked(client.markets(vs_currency, chunk, page=1, per_page=PAGE_SIZE))
        pages.append(page)
        rows.extend(page)
    log.debug("fetched %d rows for %d coins in %d requests", len(rows), len(coins), len(pages))
    return Snapshot(fetched_at=fetched_at, vs_currency=vs_currency, requested=tuple(coins), rows=rows,
                    pages=pages)


def _row_id(row: Any) -> str | None:
    coin_id = row.get("id") if isinstance(row, dict) else None
    return coin_id if isinstance(coin_id, str) else None


def extract_top(top: int, coins: tuple[str, ...], vs_currency: str, client: CoinGeckoClient,
                clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> tuple[Snapshot, list[str]]:
    """The top N by market cap in ceil(N / 250) pages, plus the coins outside them by id; and the top N's ids.

    Coins of `coins` that the last page brings beyond the top N cost nothing more; the rest are asked
    for by id, 250 a request. Raises ExtractError.
    """
    fetched_at = clock()
    pages: list[Any] = []
    ranked: list[Any] = []
    for number in range(1, -(-top // PAGE_SIZE) + 1):
        page = _checked(client.markets(vs_currency, [], page=number, per_page=PAGE_SIZE))
        pages.append(page)
        ranked.extend(page)
        if len(page) < PAGE_SIZE:
            break  # CoinGecko lists fewer coins than asked for: no further page
    top_rows = [row for row in ranked if _row_id(row)][:top]
    top_ids = list(dict.fromkeys(_row_id(row) for row in top_rows))  # type: ignore[misc]
    wanted = [c for c in coins if c not in set(top_ids)]
    beyond = {_row_id(row): row for row in ranked[len(top_rows):] if _row_id(row) in set(wanted)}
    rows = top_rows + list(beyond.values())
    rest = tuple(c for c in wanted if c not in beyond)
    if rest:
        by_id = extract(rest, vs_currency, client, clock)
        pages.extend(by_id.pages)
        rows.extend(by_id.rows)
    requested = tuple(dict.fromkeys([*top_ids, *wanted]))  # type: ignore[list-item]
    log.debug("top %d in %s: %d rows in %d requests", top, vs_currency, len(rows), len(pages))
    return Snapshot(fetched_at=fetched_at, vs_currency=vs_currency, requested=requested, rows=rows,
                    pages=pages), top_ids


def archive_snapshot(snapshot: Snapshot, storage: "Storage") -> str:
    """Keep the raw answer as gzip JSON so a later version can reprocess history; returns where it went."""
    return storage.archive(snapshot.fetched_at, f"coins_markets_{snapshot.vs_currency}", snapshot_payload(snapshot))



def handler(event: dict[str, Any] | None, context: object) -> dict[str, Any]:
    """AWS Lambda: fetch the snapshot and store the raw answer in the bucket; return its key for the next stage."""
    from utils.aws import lambda_settings, setup_lambda_logging
    from utils.clients import make_client
    from utils.history.locations import storage_for

    setup_lambda_logging()
    settings = lambda_settings(event)
    storage = storage_for(settings)
    with make_client(settings) as client:
        if settings.top:  # no membership state on Lambda: each run simply takes the day's top N
            snapshot, _ = extract_top(settings.top, settings.coins, settings.vs_currency, client)
        else:
            snapshot = extract(settings.coins, settings.vs_currency, client)
    raw_key = archive_snapshot(snapshot, storage)
    log.info("extract: %d rows for %d coins -> %s/%s", len(snapshot.rows), len(snapshot.requested), storage.location,
             raw_key)
    return {"raw_key": raw_key, "requested": list(snapshot.requested), "missing": list(snapshot.missing)}
