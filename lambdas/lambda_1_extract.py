"""Extract: fetch /coins/markets for the configured coins into a Snapshot (HTTP only, no files)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from utils.coingecko.client import CoinGeckoClient
from utils.coingecko.plans import PAGE_SIZE, UNIVERSE_CAP, top_pages
from utils.errors import ExtractError
from utils.history.schema import (  # noqa: F401 - the stage's types
    Snapshot,
    snapshot_from_payload,
    snapshot_json,
    snapshot_payload,
)
from utils.redact import redacted_errors
from utils.words import count

if TYPE_CHECKING:
    from utils.history.locations import Storage

log = logging.getLogger(__name__)


def _checked(page: Any) -> list[Any]:
    """A /coins/markets answer that is a list, else ExtractError."""
    if not isinstance(page, list):
        kind = type(page).__name__.replace("dict", "object").replace("NoneType", "null")
        raise ExtractError(
            f"CoinGecko /coins/markets answered a JSON {kind} where a list of coins "
            "belongs; the API may have changed or be misbehaving: try again later"
        )
    return page


def extract(
    coins: tuple[str, ...],
    vs_currency: str,
    client: CoinGeckoClient,
    clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
) -> Snapshot:
    """Fetch every coin in ceil(n / 250) requests. Raises ExtractError."""
    fetched_at = clock()
    rows: list[Any] = []
    pages: list[Any] = []
    bodies: list[bytes | None] = []
    for start in range(0, len(coins), PAGE_SIZE):
        chunk = list(coins[start : start + PAGE_SIZE])
        page = _checked(client.markets(vs_currency, chunk, page=1, per_page=PAGE_SIZE))
        pages.append(page)
        bodies.append(client.last_body)
        rows.extend(page)
    log.debug("fetched %d rows for %d coins in %d requests", len(rows), len(coins), len(pages))
    return Snapshot(
        fetched_at=fetched_at, vs_currency=vs_currency, requested=tuple(coins), rows=rows, pages=pages, bodies=bodies
    )


def _row_id(row: Any) -> str | None:
    coin_id = row.get("id") if isinstance(row, dict) else None
    return coin_id if isinstance(coin_id, str) else None


@dataclass(frozen=True)
class TopAnswer:
    """One currency's top N: the snapshot to store, the top N's ids best first, and the tracked coins delisted."""

    snapshot: Snapshot
    top_ids: list[str]
    gone: list[str] = field(default_factory=list)  # earlier members /coins/markets returns no more, by page or id
    pages: int = 0  # the ranking pages asked for
    repeated: int = 0  # rows of a coin already seen on an earlier page (ranks moved while paging): dropped


def extract_top(
    top: int,
    coins: tuple[str, ...],
    vs_currency: str,
    client: CoinGeckoClient,
    clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    *,
    members: tuple[str, ...] = (),
    progress: Callable[[int, int], None] | None = None,
) -> TopAnswer:
    """The top N by market cap in at most ceil(N / 250) pages, plus the coins outside them by id.

    Paging stops at a short page (the whole listing was seen) or at N; N is at most UNIVERSE_CAP, so a
    server that answers full pages for ever is still asked at most UNIVERSE_CAP / 250 times. A coin seen
    on two pages (ranks move while paging) keeps its first row. An earlier member (`members`) seen on no
    page may have moved past the page boundary: it is asked for by id in the same run, with the coins of
    `coins` outside the top N, 250 a request; a member that answer lacks too is gone (delisted).
    `progress(page, pages)` is told after each page. Raises ExtractError.
    """
    fetched_at = clock()
    pages: list[Any] = []
    bodies: list[bytes | None] = []
    seen: dict[str, Any] = {}
    repeated = 0
    total = top_pages(top)
    for number in range(1, total + 1):
        page = _checked(client.markets(vs_currency, [], page=number, per_page=PAGE_SIZE))
        pages.append(page)
        bodies.append(client.last_body)
        for row in page:
            coin_id = _row_id(row)
            if coin_id is None:
                continue
            if coin_id in seen:
                repeated += 1
            else:
                seen[coin_id] = row
        if progress is not None:
            progress(number, total)
        if len(page) < PAGE_SIZE:
            break  # CoinGecko lists fewer coins than asked for: no further page
    ranked = list(seen.items())
    top_ids = [coin_id for coin_id, _ in ranked[:top]]
    inside = set(top_ids)
    beyond = {coin_id: row for coin_id, row in ranked[top:]}
    lost = [c for c in dict.fromkeys(members) if c not in seen]
    wanted = [c for c in coins if c not in inside]
    rows = [row for _, row in ranked[:top]] + [beyond[c] for c in wanted if c in beyond]
    ask = tuple(dict.fromkeys([*lost, *(c for c in wanted if c not in beyond)]))
    gone: list[str] = []
    if ask:
        by_id = extract(ask, vs_currency, client, clock)
        pages.extend(by_id.pages)
        bodies.extend(by_id.bodies)
        found = {_row_id(row): row for row in by_id.rows if _row_id(row)}
        for coin_id in lost:
            row = found.get(coin_id)
            if row is None:
                gone.append(coin_id)
            elif len(top_ids) < top and _within(row, top):  # it moved past a page boundary: still inside
                top_ids.append(coin_id)
                inside.add(coin_id)
                rows.append(row)
        rows.extend(found[c] for c in wanted if c in found and c not in inside and c not in beyond)
    wanted = [c for c in wanted if c not in inside]
    requested = tuple(dict.fromkeys([*top_ids, *wanted]))
    log.debug(
        "top %d in %s: %d rows in %d requests, %d repeated, %d gone",
        top,
        vs_currency,
        len(rows),
        len(pages),
        repeated,
        len(gone),
    )
    snapshot = Snapshot(
        fetched_at=fetched_at, vs_currency=vs_currency, requested=requested, rows=rows, pages=pages, bodies=bodies
    )
    return TopAnswer(snapshot, top_ids, gone, min(len(pages), total), repeated)


def _within(row: Any, top: int) -> bool:
    """Whether a coin asked for by id ranks inside the top N (a coin without a rank counts as inside the whole market)."""
    rank = row.get("market_cap_rank") if isinstance(row, dict) else None
    if isinstance(rank, int) and not isinstance(rank, bool):
        return rank <= top
    return top >= UNIVERSE_CAP


def fetch_tracked(
    top: int | None,
    coins: tuple[str, ...],
    vs_currency: str,
    client: CoinGeckoClient,
    clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    *,
    members: tuple[str, ...] = (),
    progress: Callable[[int, int], None] | None = None,
) -> TopAnswer:
    """One currency's answers by the one rule the command line and Lambda share: with a top N, the top N
    plus the coins outside it (and earlier members, to see who left); without, the coins alone by id."""
    if top:
        return extract_top(top, coins, vs_currency, client, clock, members=members, progress=progress)
    return TopAnswer(extract(coins, vs_currency, client, clock), [])


def archive_snapshot(snapshot: Snapshot, storage: "Storage") -> str:
    """Keep the raw answer as gzip JSON so a later version can reprocess history; returns where it went."""
    return storage.archive(snapshot.fetched_at, f"coins_markets_{snapshot.vs_currency}", snapshot_json(snapshot))


@redacted_errors
def handler(event: dict[str, Any] | None, context: object) -> dict[str, Any]:
    """AWS Lambda: fetch every configured currency (the top N and the coins) and archive each raw answer.

    A currency that fails is named in "failed" and the others go on; all failing raises ExtractError.
    Returns the raw answers' keys for the transform, and each currency's top N and delisted members for
    the load, which records them beside the table.
    """
    # Lambda handler: the AWS helpers load in the function, never for the command line
    from lambdas.wiring import make_client, storage_for
    from utils.aws import setup_lambda_logging
    from utils.errors import AuthError
    from utils.history.tracking import shared_members
    from utils.settings import lambda_settings

    setup_lambda_logging()
    settings = lambda_settings(event)
    storage = storage_for(settings)
    members = shared_members(storage.read, settings.layout) if settings.top else None
    out: dict[str, Any] = {"raw_keys": [], "requested": [], "missing": [], "tops": {}, "gone": {}, "failed": []}
    with make_client(settings) as client:
        for vs_currency in settings.vs_currencies:
            earlier = tuple(members.members(vs_currency)) if members is not None else ()
            try:
                answer = fetch_tracked(settings.top, settings.coins, vs_currency, client, members=earlier)
            except AuthError:
                raise  # the key or plan is wrong for every currency alike
            except ExtractError as exc:
                log.warning("%s failed: %s", vs_currency, exc)
                out["failed"].append([vs_currency, str(exc)])
                continue
            snapshot = answer.snapshot
            out["raw_keys"].append(archive_snapshot(snapshot, storage))
            out["requested"] = list(dict.fromkeys([*out["requested"], *snapshot.requested]))
            out["missing"] = list(dict.fromkeys([*out["missing"], *snapshot.missing]))
            if settings.top:
                out["tops"][vs_currency], out["gone"][vs_currency] = answer.top_ids, answer.gone
            log.info(
                "extract %s: %s for %s -> %s/%s",
                vs_currency,
                count(len(snapshot.rows), "row"),
                count(len(snapshot.requested), "coin"),
                storage.location,
                out["raw_keys"][-1],
            )
    if not out["raw_keys"]:
        raise ExtractError(
            "every currency failed: "
            + "; ".join(f"{vs}: {why}" for vs, why in out["failed"])
            + "; nothing was appended"
        )
    return out
