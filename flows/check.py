"""`python main.py check`: connectivity, key and plan, and coin ids, each reported on one line."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from utils.coingecko import KEY_HEADERS, CoinGeckoClient
from utils.errors import EXIT_FAILED, EXIT_OK, AuthError, ExtractError
from utils.settings import Settings

log = logging.getLogger(__name__)

MAX_SEARCHED = 10  # unknown ids that get a /search for suggestions
MAX_LISTED = 50  # further unknown ids named on the summary line


def _search(client: CoinGeckoClient, coin_id: str) -> list[dict[str, Any]]:
    """The coins /search finds for an id, or none when the search itself fails."""
    try:
        found = client.search(coin_id.replace("-", " ").strip())
    except ExtractError:
        return []
    coins = found.get("coins") if isinstance(found, dict) else None
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


def id_hint(client: CoinGeckoClient, coin_id: str) -> str | None:
    """What an id CoinGecko does not know probably meant: the id behind a symbol (btc), else near misses."""
    found = _search(client, coin_id)
    if any(c["id"] == coin_id for c in found):
        return None  # a real id that CoinGecko left out this time: no other id to offer
    # /search ranks by market cap, so the first coin with this symbol is the one people mean.
    by_symbol = [c["id"] for c in found if str(c.get("symbol", "")).lower() == coin_id and c["id"] != coin_id]
    if by_symbol:
        others = f" (or {', '.join(by_symbol[1:3])})" if len(by_symbol) > 1 else ""
        return f"{coin_id.upper()} is a symbol: use its CoinGecko id, {by_symbol[0]}{others}"
    near = _near_misses(found, coin_id)
    return f"did you mean {' or '.join(near)}?" if near else None


def missing_ids_note(client: CoinGeckoClient, missing: Sequence[str], lookups: int = 3) -> str:
    """One line on coins CoinGecko returned nothing for, naming the right ids where /search finds them.

    At most `lookups` searches, so a long list of bad ids cannot eat the rate limit.
    """
    hints = []
    for coin_id in missing[:lookups]:
        hint = id_hint(client, coin_id)
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
        try:
            known = known_ids(settings, client)
        except ExtractError as exc:
            out(f"FAIL  coins: {exc}")
            return EXIT_FAILED
        unknown = [c for c in settings.coins if c not in known]
        if not unknown:
            out(f"ok    coins: CoinGecko knows all {len(settings.coins)} ids in {settings.vs_currency}")
        # Each search is one paced call (ten a minute on the public plan): only the first few get one.
        for coin in unknown[:MAX_SEARCHED]:
            ok = False
            hint = id_hint(client, coin) or "search https://www.coingecko.com for its API id"
            out(f"FAIL  coin {coin!r} is not known to CoinGecko; {hint}")
        rest = unknown[MAX_SEARCHED:]
        if rest:
            names = ", ".join(rest[:MAX_LISTED]) + (", ..." if len(rest) > MAX_LISTED else "")
            out(f"FAIL  {len(rest)} more ids are not known to CoinGecko (not searched for suggestions; fix the "
                f"ones above and run check again): {names}")
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
            client.markets(settings.vs_currency, [settings.coins[0]], per_page=1)
            out(f"ok    key: accepted as a Demo key ({header})")
        return True
    except AuthError as exc:
        out(f"FAIL  key/plan: {exc}")
        return False


def known_ids(settings: Settings, client: CoinGeckoClient) -> set[str]:
    """The requested ids that /coins/markets answers for."""
    found: set[str] = set()
    for start in range(0, len(settings.coins), 250):
        rows = client.markets(settings.vs_currency, list(settings.coins[start:start + 250]))
        if not isinstance(rows, list):
            raise ExtractError("/coins/markets answered something other than a list of coins")
        found |= {r.get("id") for r in rows if isinstance(r, dict) and isinstance(r.get("id"), str)}
    return found
