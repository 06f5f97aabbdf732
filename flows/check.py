"""`python main.py check`: connectivity, key and plan, and coin ids, each reported on one line."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any

from lambdas.lambda_2_transform import transform
from utils.coingecko.client import KEY_HEADERS, CoinGeckoClient
from utils.errors import EXIT_FAILED, EXIT_OK, AuthError, ExtractError, PipelineError
from utils.history.csvio import DAY_MS
from utils.history.index import HistoryIndex, day_of
from utils.history.quality import stale_rows
from utils.history.schema import Record, Snapshot
from utils.settings import Settings
from utils.history.tracking import SearchMemory

log = logging.getLogger(__name__)

MAX_SEARCHED = 10  # unknown ids that get a /search for suggestions
MAX_LISTED = 50  # further unknown ids named on the summary line



def stale_notes(records: list[Record]) -> list[str]:
    """One warning per stale observation: the quality rule's (utils.history.quality.stale_rows), in words."""
    return [f"{record.coin_id} ({record.vs_currency}) last updated {record.last_updated[:16]}Z, "
            f"{lag / 3_600_000:.0f} h before the rest of the answer" for record, lag in stale_rows(records)]


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
            found[info.coin_id] = LastSeen(info.name or (held.name if held else ""),
                                           info.symbol or (held.symbol if held else ""),
                                           max(day, held.last_day) if held else day)
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


def successor_note(client: CoinGeckoClient, memory: SearchMemory, coin_id: str, seen: LastSeen,
                   coins: Sequence[str], today: date) -> str:
    """One line on an id that returned data before and now returns none, with the listing /search suggests.

    At most one /search per coin per UTC day: the answer is remembered in the state.
    """
    head = f"{coin_id} returned no data since {seen.last_day}"
    try:
        found = remembered_search(client, seen.name or seen.symbol or coin_id, coin_id, memory, today, seen.last_day)
    except ExtractError as exc:  # not remembered: the next run asks again
        return f"{head}; /search failed ({exc}), so no successor to suggest yet"
    ranked = sorted((c for c in found if c["id"] != coin_id and _related(c, coin_id, seen)),
                    key=lambda c: -_related(c, coin_id, seen))
    label = f"{seen.name or coin_id} ({seen.symbol.upper() or '?'})"
    if not ranked:
        return f"{head}; /search finds no other listing of {label}: it may be delisted; drop it from --coins"
    best = ranked[0]
    if len(coins) <= 12 and coin_id in coins:
        use = "--coins " + ",".join(best["id"] if c == coin_id else c for c in coins)
    else:
        use = f"--coins with {best['id']} in place of {coin_id}"
    return (f"{head}; CoinGecko now lists {best['name']} ({best['symbol'].upper()}) as {best['id']}: "
            f"use `{use}`")


def remembered_search(client: CoinGeckoClient, query: str, coin_id: str, memory: SearchMemory | None = None,
                      today: date | None = None, since: date | None = None) -> list[dict[str, Any]]:
    """The coins /search finds for a query about one coin; with a memory, asked at most once per coin per UTC day.

    Raises ExtractError when the search fails (a failure is not remembered)."""
    if memory is not None and today is not None:
        held = memory.get(coin_id, today)
        if held is not None:
            return held
    answer = client.search(query.strip())
    found = [{"id": c["id"], "name": str(c.get("name") or ""), "symbol": str(c.get("symbol") or "")}
             for c in search_coins(answer)[:25]]
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


def id_hint(client: CoinGeckoClient, coin_id: str, memory: SearchMemory | None = None,
            today: date | None = None) -> str | None:
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


def missing_ids_note(client: CoinGeckoClient, missing: Sequence[str], lookups: int = 3,
                     memory: SearchMemory | None = None, today: date | None = None) -> str:
    """One line on coins CoinGecko returned nothing for, naming the right ids where /search finds them.

    At most `lookups` searches (and, with a memory, one per id per day), so a long list of bad ids
    or a daemon's retries cannot eat the rate limit.
    """
    hints = []
    for coin_id in missing[:lookups]:
        hint = id_hint(client, coin_id, memory, today)
        if hint:
            hints.append(hint if len(missing) == 1 else f"{coin_id}: {hint}")
    advice = "; ".join(hints) if hints else "check the ids with `python main.py check`"
    return f"CoinGecko returned no data for {', '.join(missing)}: {advice}"


def run_check(settings: Settings, *, sleep: Callable[[float], None] = time.sleep,
              out: Callable[[str], None] = print) -> int:
    """Check everything and print one line per finding; 0 only when all is fine."""
    from utils.clients import make_client

    ok = True
    with make_client(settings, sleep=sleep) as client:
        try:
            answer = client.ping()
            says = answer.get("gecko_says", "") if isinstance(answer, dict) else ""
            out(f"ok    connectivity: {settings.api_url}/ping answered {says!r}")
        except AuthError as exc:
            out(f"FAIL  key/plan: {exc}")
            return EXIT_FAILED
        except ExtractError as exc:
            out(f"FAIL  connectivity: {exc}")
            return EXIT_FAILED
        if settings.api_plan == "public":
            out("ok    key: none (public plan, best effort and a low rate limit); a free Demo key is more "
                "reliable: set COINGECKO_API_KEY")
        else:
            ok &= check_key(settings, client, out)
        coins = check_coins(settings)
        try:
            rows = market_rows(settings, client, coins)
        except ExtractError as exc:
            out(f"FAIL  coins: {exc}")
            return EXIT_FAILED
        known = {r.get("id") for r in rows if isinstance(r, dict) and isinstance(r.get("id"), str)}
        unknown = [c for c in coins if c not in known]
        if not unknown:
            out(f"ok    coins: CoinGecko knows all {len(coins)} ids in {settings.vs_currency}")
        seen = history_of(settings, unknown)
        memory = SearchMemory(settings.layout.coin_searches)
        today = datetime.now(timezone.utc).date()
        # Each search is one paced call (ten a minute on the public plan): only the first few get one.
        for coin in unknown[:MAX_SEARCHED]:
            ok = False
            if coin in seen:
                out(f"FAIL  coin {successor_note(client, memory, coin, seen[coin], settings.coins, today)}")
                continue
            hint = id_hint(client, coin, memory, today) or "search https://www.coingecko.com for its API id"
            out(f"FAIL  coin {coin!r} is not known to CoinGecko; {hint}")
        rest = unknown[MAX_SEARCHED:]
        if rest:
            names = ", ".join(rest[:MAX_LISTED]) + (", ..." if len(rest) > MAX_LISTED else "")
            out(f"FAIL  {len(rest)} more ids are not known to CoinGecko (not searched for suggestions; fix the "
                f"ones above and run check again): {names}")
        memory.save()
        for currency in settings.vs_currencies[1:]:
            try:
                client.markets(currency, [coins[0]], per_page=1)
                out(f"ok    currency: CoinGecko quotes in {currency}")
            except AuthError:
                raise
            except ExtractError as exc:
                ok = False
                out(f"FAIL  currency {currency!r}: {exc}")
        snapshot = Snapshot(datetime.now(timezone.utc), settings.vs_currency, tuple(coins), rows)
        for note in stale_notes(transform(snapshot).records):
            out(f"warn  stale: {note}; CoinGecko may have stopped tracking it")
    return EXIT_OK if ok else EXIT_FAILED


def check_key(settings: Settings, client: CoinGeckoClient, out: Callable[[str], None]) -> bool:
    """The key works on this host with this header (the pro host can also report the plan)."""
    header = KEY_HEADERS[settings.api_plan]
    try:
        if settings.api_plan == "pro":
            info: Any = client.get_json("/key")
            plan = info.get("plan") if isinstance(info, dict) else None
            limit = info.get("rate_limit_request_per_minute") if isinstance(info, dict) else None
            out(f"ok    key: accepted by the pro host ({header}); plan {plan or '?'}, {limit or '?'} calls/min")
        else:
            client.markets(settings.vs_currency, [(settings.coins or ("bitcoin",))[0]], per_page=1)
            out(f"ok    key: accepted as a Demo key ({header})")
        return True
    except AuthError as exc:
        out(f"FAIL  key/plan: {exc}")
        return False


def check_coins(settings: Settings) -> tuple[str, ...]:
    """The ids to check: --coins, and with --top alone the top N members the last run recorded."""
    if settings.coins:
        return settings.coins
    from utils.history.tracking import TopMembers

    return tuple(TopMembers(settings.layout.top_members).members(settings.vs_currency)) or ("bitcoin",)


def history_of(settings: Settings, coin_ids: Sequence[str]) -> dict[str, LastSeen]:
    """What the history knows of these coins; nothing when there is no readable history."""
    if not coin_ids or not settings.csv_path.is_file() or settings.data_url:
        return {}
    from utils.history.locations import storage_for

    try:
        with storage_for(settings).index() as index:
            return last_seen(index, coin_ids)
    except PipelineError as exc:
        log.debug("no history to compare with: %s", exc)
        return {}


def market_rows(settings: Settings, client: CoinGeckoClient, coins: Sequence[str]) -> list[Any]:
    """The /coins/markets rows for the ids, 250 a request."""
    found: list[Any] = []
    for start in range(0, len(coins), 250):
        rows = client.markets(settings.vs_currency, list(coins[start:start + 250]))
        if not isinstance(rows, list):
            raise ExtractError("/coins/markets answered something other than a list of coins")
        found.extend(rows)
    return found
