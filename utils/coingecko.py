"""The one place that speaks HTTP to CoinGecko: session, host, key header, timeouts, retries, errors."""

from __future__ import annotations

import json
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

import requests
from tenacity import RetryCallState, Retrying, retry_if_exception_type

from utils.errors import AuthError, BadRequest, ExtractError, RateLimited, RetriableError
from utils.plans import PRO_URL, PUBLIC_URL, default_base_url  # noqa: F401 - re-exported
from utils.redact import redact, remember_secret

log = logging.getLogger(__name__)

KEY_HEADERS = {"demo": "x-cg-demo-api-key", "pro": "x-cg-pro-api-key"}
USER_AGENT = "crypto-history-pipeline/1.0 (+https://github.com/; python-requests)"
RETRIABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524})

# What CoinGecko's own error codes mean, in words that say what to do.
ERROR_ADVICE = {
    10002: "the API key is missing or not sent the right way: set COINGECKO_API_KEY and --api-plan "
           "(demo keys go in the x-cg-demo-api-key header to api.coingecko.com, paid keys in "
           "x-cg-pro-api-key to pro-api.coingecko.com)",
    10005: "this endpoint is not part of your CoinGecko plan",
    10010: "this is a paid (Pro) key used on the public host: use --api-plan pro "
           "(host pro-api.coingecko.com, header x-cg-pro-api-key)",
    10011: "this is a Demo key used on the Pro host: use --api-plan demo "
           "(host api.coingecko.com, header x-cg-demo-api-key)",
    10012: "the free plans only reach the past 365 days of history; a paid plan reaches further",
    1020: "CoinGecko's firewall blocked this address; try later or from another network",
}

Sleep = Callable[[float], None]
# Calls per minute the client allows itself by default: below each plan's published limit.
DEFAULT_RATE_LIMITS = {"public": 10, "demo": 30, "pro": 250}
RATE_WINDOW = 60.5  # seconds; a little over a minute so arrival jitter never crosses the server's window


class RateLimiter:
    """A sliding one-minute window: at most `per_minute` calls start in any RATE_WINDOW seconds."""

    def __init__(self, per_minute: int, *, sleep: Sleep = time.sleep,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.sleep = sleep
        self.monotonic = monotonic
        self.starts: deque[float] = deque()
        self.waited = 0.0
        self.on_wait: Sleep | None = None  # told each pause before it starts, so progress can say why it stalls

    def acquire(self) -> None:
        """Wait until one more call fits in the window, then count it."""
        now = self.monotonic()
        self._forget(now)
        if len(self.starts) >= self.per_minute:
            pause = self.starts[0] + RATE_WINDOW - now
            log.debug("pacing: %d calls in the last minute, waiting %.1f s", len(self.starts), pause)
            if self.on_wait is not None:
                self.on_wait(pause)
            self.waited += pause
            self.sleep(pause)
            now = max(self.monotonic(), now + pause)  # an injected sleep may not move the clock
            self._forget(now)
        self.starts.append(now)

    def time_for(self, calls: int) -> float:
        """Seconds of pacing before `calls` more calls could all have started (0 when they fit now)."""
        now = self.monotonic()
        starts = [start for start in self.starts if start > now - RATE_WINDOW]
        last = now
        for _ in range(calls):
            if len(starts) >= self.per_minute:  # the call waits until the per_minute-th latest start leaves
                last = max(last, starts[-self.per_minute] + RATE_WINDOW)
            starts.append(last)
        return last - now

    def _forget(self, now: float) -> None:
        while self.starts and self.starts[0] <= now - RATE_WINDOW:
            self.starts.popleft()


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return max(0.0, (moment - now).total_seconds())


def parse_ratelimit_reset(value: str | None, now: datetime) -> float | None:
    """Seconds until x-ratelimit-reset: a date like '2025-07-25 14:54:00 +0000' or epoch seconds."""
    if not value:
        return None
    value = value.strip()
    try:
        number = float(value)
    except ValueError:
        number = None
    if number is not None:
        # Epoch seconds if it looks like one, else a delta.
        return max(0.0, number - now.timestamp()) if number > 1e9 else max(0.0, number)
    for fmt in ("%Y-%m-%d %H:%M:%S %z", "%Y-%m-%dT%H:%M:%S%z"):
        try:
            return max(0.0, (datetime.strptime(value, fmt) - now).total_seconds())
        except ValueError:
            continue
    return parse_retry_after(value, now)


def error_from_body(body: Any) -> tuple[int | None, str | None]:
    """(error_code, message) from any of CoinGecko's error body shapes, or (None, None)."""
    if not isinstance(body, dict):
        return None, None
    error = body.get("error")
    status = error.get("status") if isinstance(error, dict) else body.get("status")
    status = status if isinstance(status, dict) else {}
    code = status.get("error_code", body.get("error_code"))
    message = status.get("error_message", body.get("error_message"))
    if message is None and isinstance(error, str):
        message = error
    code = code if isinstance(code, int) and not isinstance(code, bool) else None
    return code, (str(message).strip() or None) if message is not None else None


def _short(text: str, limit: int = 200) -> str:
    """One line of at most limit characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class CoinGeckoClient:
    """HTTP access to CoinGecko with retries: the rest of the program never imports requests."""

    def __init__(
        self,
        base_url: str,
        *,
        plan: str = "public",
        api_key: str | None = None,
        timeout: float = 30.0,
        max_retry_wait: float = 120.0,
        max_attempts: int = 6,
        sleep: Sleep = time.sleep,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
        session: requests.Session | None = None,
        rate_limit: int | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.plan = plan
        self.timeout = timeout
        self.max_retry_wait = max_retry_wait
        self.max_attempts = max_attempts
        self.sleep = sleep
        self.clock = clock
        self.calls = 0
        per_minute = rate_limit or DEFAULT_RATE_LIMITS.get(plan, DEFAULT_RATE_LIMITS["public"])
        self.limiter = RateLimiter(per_minute, sleep=sleep, monotonic=monotonic)
        self.secret = api_key or None
        remember_secret(self.secret)
        self.session = session or requests.Session()
        self.session.headers.update({"User-Agent": USER_AGENT, "Accept": "application/json"})
        if api_key and plan in KEY_HEADERS:
            self.session.headers[KEY_HEADERS[plan]] = api_key

    def close(self) -> None:
        """Release the connection pool."""
        self.session.close()

    def __enter__(self) -> CoinGeckoClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- public calls ---------------------------------------------------------------------

    def get_json(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        """GET a path under the base URL and return the decoded JSON, retrying what is worth it."""
        retrying = Retrying(
            retry=retry_if_exception_type(RetriableError),
            wait=self._wait,
            stop=self._stop,
            sleep=self.sleep,
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            return retrying(self._get_once, path, dict(params or {}))
        except RetriableError as exc:
            stats = retrying.statistics
            raise ExtractError(
                f"{exc}; gave up after {stats.get('attempt_number', 1)} attempts and "
                f"{stats.get('idle_for', 0.0):.0f} s of waiting (limit --max-retry-wait "
                f"{self.max_retry_wait:g} s): check your connection or try again later",
                status=exc.status, error_code=exc.error_code) from exc

    def ping(self) -> Any:
        """GET /ping."""
        return self.get_json("/ping")

    def markets(self, vs_currency: str, ids: list[str], page: int = 1, per_page: int = 250) -> Any:
        """GET /coins/markets for up to per_page ids."""
        return self.get_json("/coins/markets", {
            "vs_currency": vs_currency, "ids": ",".join(ids), "per_page": per_page, "page": page,
            "order": "market_cap_desc", "sparkline": "false", "precision": "full",
        })

    def search(self, query: str) -> Any:
        """GET /search?query=..."""
        return self.get_json("/search", {"query": query})

    # -- retry policy ---------------------------------------------------------------------

    def _wait(self, state: RetryCallState) -> float:
        """Retry-After (or the rate-limit reset) when given, else exponential backoff with full jitter."""
        error = state.outcome.exception() if state.outcome else None
        hinted = getattr(error, "retry_after", None)
        if hinted is not None:
            return hinted + random.uniform(0, 1)
        base = min(60.0, 1.0 * 2 ** (state.attempt_number - 1))
        return random.uniform(base / 2, base)

    def _stop(self, state: RetryCallState) -> bool:
        """Stop after max_attempts, or when the next wait would exceed the total waiting budget."""
        if state.attempt_number >= self.max_attempts:
            return True
        upcoming = getattr(state, "upcoming_sleep", 0.0) or 0.0
        return state.idle_for + upcoming > self.max_retry_wait

    def _log_retry(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning("%s; retrying in %.1f s (attempt %d of %d)", error, wait,
                    state.attempt_number + 1, self.max_attempts)

    # -- one request ----------------------------------------------------------------------

    def _get_once(self, path: str, params: dict[str, Any]) -> Any:
        url = self.base_url + path
        self.limiter.acquire()
        self.calls += 1
        try:
            response = self.session.get(url, params=params, timeout=self.timeout)
        except requests.exceptions.SSLError as exc:
            raise ExtractError(f"TLS to {self.base_url} failed ({_network_reason(exc)}): the certificate is not "
                               "trusted; check the URL, the system clock and any proxy (REQUESTS_CA_BUNDLE)") from exc
        except requests.Timeout as exc:
            raise RetriableError(f"CoinGecko did not answer {path} within {self.timeout:g} s") from exc
        except requests.ConnectionError as exc:
            raise RetriableError(f"cannot connect to {self.base_url} ({_network_reason(exc)})") from exc
        except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError) as exc:
            raise RetriableError(f"CoinGecko's answer to {path} was cut short ({_network_reason(exc)})") from exc
        except requests.RequestException as exc:
            raise ExtractError(f"request to {path} failed: {_network_reason(exc)}") from exc
        return self._decode(path, response)

    def _decode(self, path: str, response: requests.Response) -> Any:
        status = response.status_code
        content_type = response.headers.get("Content-Type", "unknown content type").split(";")[0].strip()
        body: Any = None
        parse_error: str | None = None
        try:
            body = json.loads(response.content)
        except (ValueError, RecursionError) as exc:
            parse_error = f"{exc.__class__.__name__}: {exc}"
        code, message = error_from_body(body)
        if message:  # a server or proxy may quote the key back: never let it into an error
            message = redact(message)
        now = self.clock()
        where = f"CoinGecko {path} answered HTTP {status}"

        if status == 429 or code == 429:
            wait = parse_retry_after(response.headers.get("Retry-After"), now)
            if wait is None:
                wait = parse_ratelimit_reset(response.headers.get("x-ratelimit-reset"), now)
            if wait is not None and wait > self.max_retry_wait:
                raise ExtractError(
                    f"rate limited by CoinGecko ({where}), which asks to wait {wait:.0f} s, more than "
                    f"--max-retry-wait {self.max_retry_wait:g} s: run again later, or use an API key "
                    "(COINGECKO_API_KEY) for a higher limit", status=status, error_code=429)
            raise RateLimited(f"rate limited by CoinGecko ({where})", status=status, error_code=429,
                              retry_after=wait)
        if status in RETRIABLE_STATUSES:
            detail = message or (_short(redact(response.text), 80) if parse_error is None else content_type)
            raise RetriableError(f"{where} ({detail})", status=status, error_code=code)
        if status >= 400 or code is not None:
            text = message or (f"a {content_type} page" if parse_error else "no error message")
            advice = ERROR_ADVICE.get(code or -1)
            if advice is None and _looks_like_cloudflare(response):
                advice = ERROR_ADVICE[1020]
            full = f"{where}: {_short(text)}" + (f" ({advice})" if advice else "")
            if code in (10002, 10005, 10010, 10011, 10012) or status == 401:
                raise AuthError(full, status=status, error_code=code)
            if status == 400:
                raise BadRequest(full, status=status, error_code=code)
            raise ExtractError(full, status=status, error_code=code)
        if parse_error is not None:
            what = "an HTML page" if "html" in content_type or response.content.lstrip()[:1] == b"<" else \
                f"malformed JSON ({_short(parse_error, 100)})"
            raise ExtractError(f"{where} with {what} instead of JSON (content type {content_type}); "
                               "CoinGecko may be down or blocking this address: try again later")
        return body


def _looks_like_cloudflare(response: requests.Response) -> bool:
    return b"cloudflare" in response.content[:4096].lower()


def _network_reason(exc: BaseException) -> str:
    """A short cause for a network error, without the URL (which is noise in a one-line error)."""
    text = str(exc).lower()
    for marker in ("connection refused", "connection reset", "remote end closed", "name or service not known",
                   "temporary failure in name resolution", "certificate verify failed", "timed out"):
        if marker in text:
            return marker
    return type(exc).__name__
