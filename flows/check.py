"""`python main.py check`: connectivity, key and plan, and coin ids, each reported on one line."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

from flows.budget import usage
from flows.diagnose import LastSeen, id_hint, last_seen, stale_notes, successor_note
from flows.wiring import Console
from lambdas.lambda_2_transform import transform
from lambdas.wiring import make_client, storage_for
from utils.coingecko.client import KEY_HEADERS, CoinGeckoClient
from utils.errors import EXIT_FAILED, EXIT_OK, AuthError, ExtractError, PipelineError
from utils.history.schema import Snapshot
from utils.history.tracking import SearchMemory, TopMembers
from utils.settings import Settings
from utils.words import count

log = logging.getLogger(__name__)

MAX_SEARCHED = 10  # unknown ids that get a /search for suggestions
MAX_LISTED = 50  # further unknown ids named on the summary line


def credit_line(settings: Settings) -> str:
    """The plan's monthly budget and this month's use, from the data folder's ledger."""
    budget = "no monthly limit" if settings.credits is None else f"{settings.credits:,} a month"
    source = "--monthly-credits" if settings.monthly_credits is not None else f"the {settings.api_plan} plan's default"
    return f"{usage(settings).line()}; budget {budget} ({source})"


def run_check(
    settings: Settings, *, sleep: Callable[[float], None] = time.sleep, out: Callable[[str], None] = print
) -> int:
    """Check everything and print one line per finding; 0 only when all is fine."""
    ok = True
    out(f"ok    credits: {credit_line(settings)}")
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
            out(
                "ok    key: none (public plan, best effort and a low rate limit); a free Demo key is more "
                "reliable: set COINGECKO_API_KEY"
            )
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
            out(
                f"ok    coins: CoinGecko knows {'the' if len(coins) == 1 else 'all'} {count(len(coins), 'id')} in {settings.vs_currency}"
            )
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
            out(
                f"FAIL  {len(rest)} more ids are not known to CoinGecko (not searched for suggestions; fix the "
                f"ones above and run check again): {names}"
            )
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

    return tuple(TopMembers(settings.layout.top_members).members(settings.vs_currency)) or ("bitcoin",)


def history_of(settings: Settings, coin_ids: Sequence[str]) -> dict[str, LastSeen]:
    """What the history knows of these coins; nothing when there is no readable history."""
    if not coin_ids or settings.data_url or not settings.data_dir.is_dir():
        return {}

    try:
        storage = storage_for(settings, create=False)
        if not storage.has_history():
            return {}
        with storage.index() as index:
            return last_seen(index, coin_ids)
    except PipelineError as exc:
        log.debug("no history to compare with: %s", exc)
        return {}


def market_rows(settings: Settings, client: CoinGeckoClient, coins: Sequence[str]) -> list[Any]:
    """The /coins/markets rows for the ids, 250 a request."""
    found: list[Any] = []
    for start in range(0, len(coins), 250):
        rows = client.markets(settings.vs_currency, list(coins[start : start + 250]))
        if not isinstance(rows, list):
            raise ExtractError("/coins/markets answered something other than a list of coins")
        found.extend(rows)
    return found


def check_command(settings: Settings, console: Console) -> int:
    """`check`: connectivity, key and plan, coin ids and currencies."""
    return run_check(settings, sleep=console.sleep, out=console.out)
