"""Coin-id diagnostics every run uses: stale observations, ids that stopped returning data, and the ids
CoinGecko does not know (with the listing /search suggests). `check` and each run print these lines."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from utils.clock import DAY_MS, day_of
from utils.coingecko.client import CoinGeckoClient
from utils.errors import ExtractError
from utils.history.index import HistoryIndex
from utils.history.quality import stale_rows
from utils.history.schema import Record
from utils.history.tracking import SearchMemory


def stale_notes(records: list[Record]) -> list[str]:
    """One warning per stale observation: the quality rule's (utils.history.quality.stale_rows), in words."""
    return [
        f"{record.coin_id} ({record.vs_currency}) last updated {record.last_updated[:16]}Z, "
        f"{lag / 3_600_000:.0f} h before the rest of the answer"
        for record, lag in stale_rows(records)
    ]


@dataclass(frozen=True)
class LastSeen:
    """What the history last knew of a coin: its label and the day of its newest observation."""

    name: str
    symbol: str
    last_day: date


def last_seen(index: HistoryIndex, coin_ids: Sequence[str]) -> dict[str, LastSeen]:
    """The coins among coin_ids that the history holds observations of, in any currency."""
    found: dict[str, LastSeen] = {}
    for info in (info for coin_id in dict.fromkeys(coin_ids) for info in index.series(coin_id=coin_id)):
        held = found.get(info.coin_id)
        day = day_of(info.last_ms // DAY_MS)
        if held is None or day > held.last_day or (info.name and not held.name):
            found[info.coin_id] = LastSeen(
                info.name or (held.name if held else ""),
                info.symbol or (held.symbol if held else ""),
                max(day, held.last_day) if held else day,
            )
    return found


def _related(candidate: dict[str, Any], coin_id: str, seen: LastSeen) -> int:
    """How plainly a /search result continues a coin: same symbol, or the old name or symbol in its own."""
    new_id, new_name = str(candidate.get("id", "")).lower(), str(candidate.get("name", "")).lower()
    new_symbol = str(candidate.get("symbol", "")).lower()
    old_name, old_symbol = seen.name.lower().strip(), seen.symbol.lower().strip()
    score = 2 if old_symbol and new_symbol == old_symbol else 0
    for old in filter(None, (old_name, old_symbol)):
        if old in new_id or old in new_name:
            score += 1
    return score


def successor_note(
    client: CoinGeckoClient, memory: SearchMemory, coin_id: str, seen: LastSeen, coins: Sequence[str], today: date
) -> str:
    """One line on an id that returned data before and now returns none, with the listing /search suggests.

    At most one /search per coin per UTC day: the answer is remembered in the state.
    """
    head = f"{coin_id} returned no data since {seen.last_day}"
    try:
        found = remembered_search(client, seen.name or seen.symbol or coin_id, coin_id, memory, today, seen.last_day)
    except ExtractError as exc:  # not remembered: the next run asks again
        return f"{head}; /search failed ({exc}), so no successor to suggest yet"
    ranked = sorted(
        (c for c in found if c["id"] != coin_id and _related(c, coin_id, seen)),
        key=lambda c: -_related(c, coin_id, seen),
    )
    label = f"{seen.name or coin_id} ({seen.symbol.upper() or '?'})"
    if not ranked:
        return f"{head}; /search finds no other listing of {label}: it may be delisted; drop it from --coins"
    best = ranked[0]
    if len(coins) <= 12 and coin_id in coins:
        use = "--coins " + ",".join(best["id"] if c == coin_id else c for c in coins)
    else:
        use = f"--coins with {best['id']} in place of {coin_id}"
    return f"{head}; CoinGecko now lists {best['name']} ({best['symbol'].upper()}) as {best['id']}: use `{use}`"


def remembered_search(
    client: CoinGeckoClient,
    query: str,
    coin_id: str,
    memory: SearchMemory | None = None,
    today: date | None = None,
    since: date | None = None,
) -> list[dict[str, Any]]:
    """The coins /search finds for a query about one coin; with a memory, asked at most once per coin per UTC day.

    Raises ExtractError when the search fails (a failure is not remembered)."""
    if memory is not None and today is not None:
        held = memory.get(coin_id, today)
        if held is not None:
            return held
    answer = client.search(query.strip())
    found = [
        {"id": c["id"], "name": str(c.get("name") or ""), "symbol": str(c.get("symbol") or "")}
        for c in search_coins(answer)[:25]
    ]
    if memory is not None and today is not None:
        memory.put(coin_id, today, found, since)
    return found


def search_coins(answer: Any) -> list[dict[str, Any]]:
    """The coins of a /search answer that carry an id."""
    coins = answer.get("coins") if isinstance(answer, dict) else None
    return [c for c in coins if isinstance(c, dict) and isinstance(c.get("id"), str)] if isinstance(coins, list) else []


def _near_misses(found: list[dict[str, Any]], coin_id: str, limit: int = 3) -> list[str]:
    """Other ids /search found, labelled with name and symbol."""
    out: list[str] = []
    for coin in found:
        if coin["id"] != coin_id:
            label = coin["id"]
            if coin.get("name") or coin.get("symbol"):
                label += f" ({coin.get('name', '')}, {str(coin.get('symbol', '')).upper()})"
            out.append(label)
        if len(out) >= limit:
            break
    return out


def id_hint(
    client: CoinGeckoClient, coin_id: str, memory: SearchMemory | None = None, today: date | None = None
) -> str | None:
    """What an id CoinGecko does not know probably meant: the id behind a symbol (btc), else near misses.

    With a memory, /search is asked about the id at most once per UTC day."""
    try:
        found = remembered_search(client, coin_id.replace("-", " "), coin_id, memory, today)
    except ExtractError:
        found = []
    if any(c["id"] == coin_id for c in found):
        return None  # a real id that CoinGecko left out this time: no other id to offer
    # /search ranks by market cap, so the first coin with this symbol is the one people mean.
    by_symbol = [c["id"] for c in found if str(c.get("symbol", "")).lower() == coin_id and c["id"] != coin_id]
    if by_symbol:
        others = f" (or {', '.join(by_symbol[1:3])})" if len(by_symbol) > 1 else ""
        return f"{coin_id.upper()} is a symbol: use its CoinGecko id, {by_symbol[0]}{others}"
    near = _near_misses(found, coin_id)
    return f"did you mean {' or '.join(near)}?" if near else None


def missing_ids_note(
    client: CoinGeckoClient,
    missing: Sequence[str],
    lookups: int = 3,
    memory: SearchMemory | None = None,
    today: date | None = None,
    check: str = "python main.py check",
) -> str:
    """One line on coins CoinGecko returned nothing for, naming the right ids where /search finds them,
    else the `check` command (as the user must type it) that looks at them.

    At most `lookups` searches (and, with a memory, one per id per day), so a long list of bad ids
    or a daemon's retries cannot eat the rate limit.
    """
    hints = []
    for coin_id in missing[:lookups]:
        hint = id_hint(client, coin_id, memory, today)
        if hint:
            hints.append(hint if len(missing) == 1 else f"{coin_id}: {hint}")
    advice = "; ".join(hints) if hints else f"check the ids with `{check}`"
    return f"CoinGecko returned no data for {', '.join(missing)}: {advice}"
