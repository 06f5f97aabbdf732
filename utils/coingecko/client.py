"""The one place that speaks HTTP to CoinGecko: session, host, key header, timeouts, retries, errors."""

from __future__ import annotations

import json
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Protocol
from urllib.parse import urljoin, urlsplit

import orjson
import requests
from requests.adapters import HTTPAdapter
from tenacity import RetryCallState, Retrying, retry_if_exception_type
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from utils.coingecko.plans import DEFAULT_MAX_RESPONSE_MB, PRO_URL, PUBLIC_URL, default_base_url  # noqa: F401 - re-exported
from utils.errors import AuthError, BadRequest, ExtractError, PipelineError, RateLimited, RetriableError, Stopped
from utils.redact import redact, remember_secret
from utils.words import count

log = logging.getLogger(__name__)

KEY_HEADERS = {"demo": "x-cg-demo-api-key", "pro": "x-cg-pro-api-key"}
USER_AGENT = "crypto-history-pipeline/1.0 (+https://github.com/; python-requests)"
RETRIABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
DEFAULT_PORTS = {"http": 80, "https": 443}
CHUNK_BYTES = 64 * 1024  # decompressed bytes per read: the cap is checked this often
WATCH_INTERVAL = 0.05  # seconds between the watchdog's looks at the deadline and the stop flag

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
    """Calls spread evenly: one every RATE_WINDOW / per_minute seconds (6 a minute: one every 10 s), never a
    burst followed by a long wait; so at most `per_minute` calls start in any minute."""

    def __init__(
        self, per_minute: int, *, sleep: Sleep = time.sleep, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.per_minute = per_minute
        self.interval = RATE_WINDOW / per_minute
        self.sleep = sleep
        self.monotonic = monotonic
        self.last: float | None = None  # when the last call started
        self.previous: float | None = None  # the one before, should the last be refunded
        self.slept_until = float("-inf")  # the end of a retry's backoff, which the interval may count
        self.waited = 0.0
        self.on_wait: Sleep | None = None  # told each pause before it starts, so progress can say why it stalls

    def waited_elsewhere(self, started: float, seconds: float) -> None:
        """A retry's backoff slept `seconds` from `started`: that time counts towards the interval (an injected
        sleep may not move the clock)."""
        self.slept_until = max(self.slept_until, started + seconds)

    def acquire(self) -> None:
        """Wait until the interval since the last call has passed, then count this one."""
        now = max(self.monotonic(), self.slept_until)
        if self.last is not None and now < self.last + self.interval:
            pause = self.last + self.interval - now
            log.debug("pacing: one call every %.1f s, waiting %.1f s", self.interval, pause)
            if self.on_wait is not None:
                self.on_wait(pause)
            self.waited += pause
            self.sleep(pause)
            now = max(self.monotonic(), now + pause)  # an injected sleep may not move the clock
        self.previous, self.last = self.last, now

    def refund(self) -> None:
        """Forget the last call (it never reached the server): the next one need not wait for it."""
        self.last = self.previous

    def time_for(self, calls: int) -> float:
        """Seconds of pacing before `calls` more calls could all have started (0 when one call fits now)."""
        if calls <= 0:
            return 0.0
        now = self.monotonic()
        first = now if self.last is None else max(now, self.last + self.interval)
        return first - now + (calls - 1) * self.interval


def make_limiter(
    plan: str,
    rate_limit: int | None = None,
    *,
    sleep: Sleep = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> RateLimiter:
    """The limiter for a plan: --rate-limit when given, else the plan's default."""
    per_minute = rate_limit or DEFAULT_RATE_LIMITS.get(plan, DEFAULT_RATE_LIMITS["public"])
    return RateLimiter(per_minute, sleep=sleep, monotonic=monotonic)


def origin_of(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL, default ports filled in: the unit the key is bound to."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or DEFAULT_PORTS.get(scheme, -1)
    except ValueError:  # a port out of range matches no origin
        port = -1
    return scheme, (parts.hostname or "").lower(), port


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


class CallRecorder(Protocol):
    """Told of every attempt sent to CoinGecko (the credit ledger); the client knows nothing of where it counts."""

    def record(self, path: str, params: Mapping[str, Any], status: int | None) -> None: ...

    def flush(self) -> None: ...


SENT = 0  # an attempt went out and no status came back (yet)


# Digits to "0", the decimal point kept, every other byte to " ": " " and 19 zeros is an integer of 19 digits or more
# (or a float's whole part that long); a fraction's digits follow a "." instead.
_DIGIT_RUNS = bytes(48 if 48 <= b <= 57 else 46 if b == 46 else 32 for b in range(256))
_LONG = b"0" * 19


def decode_json(content: bytes) -> Any:
    """json.loads of an answer, in orjson's time when that is the same value (a page of 250 coins is 200 KB; the
    whole market is 70 pages a currency): orjson refuses what json reads differently (NaN, Infinity, 1e400, lone
    surrogates, other encodings), which then goes to json.loads, with its own errors; and it reads an integer
    past 64 bits as a float, so text holding a run of 19 or more digits (an integer of 19 digits or more) goes to
    json.loads before orjson sees it."""
    if content[:1] in (b"[", b"{"):
        digits = content.translate(_DIGIT_RUNS)
        if b" " + _LONG not in digits and not digits.startswith(_LONG):
            try:
                return orjson.loads(content)
            except orjson.JSONDecodeError:
                pass
    return json.loads(content)


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
        limiter: RateLimiter | None = None,
        max_response_mb: float = DEFAULT_MAX_RESPONSE_MB,
        should_stop: Callable[[], bool] = lambda: False,
        recorder: CallRecorder | None = None,
    ) -> None:
        self.recorder = recorder  # counts every attempt sent (retries, 429s, redirect hops on our origin)
        self._answered: int | None = None  # the status of the attempt in flight, SENT without one
        self.last_body: bytes | None = None  # the bytes of the last answer get_json returned (the raw archive's)
        self.base_url = base_url.rstrip("/")
        self.origin = origin_of(self.base_url)
        self.plan = plan
        self.timeout = timeout  # also the deadline of a whole request: connect, headers and every read
        self.max_retry_wait = max_retry_wait
        self.max_attempts = max_attempts
        self.sleep = sleep
        self.clock = clock
        self.calls = 0
        # A limiter handed in is shared with other clients (the daemon's runs): one budget per process.
        self.limiter = limiter or make_limiter(plan, rate_limit, sleep=sleep, monotonic=monotonic)
        self.max_response_mb = max_response_mb
        self.should_stop = should_stop
        self.secret = api_key or None
        remember_secret(self.secret)
        # The key is never a session header: it goes per request, and only to self.origin (see _key_for).
        self.key_header = KEY_HEADERS.get(plan) if self.secret else None
        self.session = session or requests.Session()
        self.session.headers.update({"User-Agent": USER_AGENT, "Accept": "application/json"})
        for prefix in ("https://", "http://"):
            self.session.mount(prefix, _WatchedAdapter())

    def close(self) -> None:
        """Release the connection pool and hand the last counts to the recorder."""
        self.session.close()
        if self.recorder is not None:
            self.recorder.flush()

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
            sleep=self._backoff,
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            return retrying(self._get_once, path, dict(params or {}))
        except RetriableError as exc:
            stats = retrying.statistics
            raise (Offline if isinstance(exc, Unreachable) else ExtractError)(
                self._scrub(
                    f"{exc}; gave up after {count(stats.get('attempt_number', 1), 'attempt')} and "
                    f"{stats.get('idle_for', 0.0):.0f} s of waiting (limit --max-retry-wait "
                    f"{self.max_retry_wait:g} s): check your connection or try again later"
                ),
                status=exc.status,
                error_code=exc.error_code,
            ) from exc
        except PipelineError as exc:
            exc.args = (self._scrub(str(exc)),)
            raise

    def _backoff(self, seconds: float) -> None:
        """A retry's wait: slept, and counted towards the rate limit's interval before the next call."""
        started = self.limiter.monotonic()
        self.sleep(seconds)
        self.limiter.waited_elsewhere(started, seconds)

    def _scrub(self, text: str) -> str:
        """One line without the key: every error this client raises passes the one redaction function."""
        return redact(text)

    def ping(self) -> Any:
        """GET /ping."""
        return self.get_json("/ping")

    def markets(self, vs_currency: str, ids: list[str], page: int = 1, per_page: int = 250) -> Any:
        """GET /coins/markets for up to per_page ids; without ids, one page of every coin by market cap."""
        params: dict[str, Any] = {"vs_currency": vs_currency}
        if ids:
            params["ids"] = ",".join(ids)
        params.update(
            {"per_page": per_page, "page": page, "order": "market_cap_desc", "sparkline": "false", "precision": "full"}
        )
        return self.get_json("/coins/markets", params)

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

    def _attempts(self, error: BaseException | None) -> int:
        """How many attempts this error is worth: a host that does not resolve or refuses fails fast."""
        return min(self.max_attempts, UNREACHABLE_ATTEMPTS) if isinstance(error, Unreachable) else self.max_attempts

    def _stop(self, state: RetryCallState) -> bool:
        """Stop after max_attempts (3 for a DNS failure or a refused connection), or when the next wait would
        exceed the total waiting budget."""
        error = state.outcome.exception() if state.outcome else None
        if state.attempt_number >= self._attempts(error):
            return True
        upcoming = getattr(state, "upcoming_sleep", 0.0) or 0.0
        return state.idle_for + upcoming > self.max_retry_wait

    def _log_retry(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        # Offline, the final error says it all: the retries are detail (-v), not one more line each.
        level = logging.DEBUG if isinstance(error, Unreachable) else logging.WARNING
        log.log(
            level,
            "%s; retrying in %.1f s (attempt %d of %d)",
            self._scrub(str(error)),
            wait,
            state.attempt_number + 1,
            self._attempts(error),
        )

    # -- one request ----------------------------------------------------------------------

    def _get_once(self, path: str, params: dict[str, Any]) -> Any:
        """One attempt: the request and its redirects, under one deadline, cut short by a stop."""
        self.limiter.acquire()
        if self.should_stop():
            raise Stopped("stopped before a request to CoinGecko; nothing was appended")
        watchdog = _Watchdog(time.monotonic() + self.timeout, self.should_stop)
        self._answered = None
        try:
            with watchdog:
                status, headers, body = self._exchange(path, params, watchdog)
        except (requests.RequestException, OSError, ValueError) as exc:
            self._record(path, params)
            if watchdog.reason == "stop":
                raise Stopped("stopped during a request to CoinGecko; nothing was appended") from exc
            if watchdog.reason == "stop":
                raise WebhookError("cut off: the program is stopping") from None
            if watchdog.reason == "deadline" or isinstance(exc, requests.Timeout):
                raise RetriableError(
                    f"CoinGecko did not answer {path} within {self.timeout:g} s (--timeout bounds the whole request)"
                ) from exc
            error = self._network_error(path, exc)
            if isinstance(error, Unreachable):
                self.limiter.refund()  # nothing reached CoinGecko: the retry need not wait for the rate limit
            raise error from exc
        except BaseException:
            self._record(path, params)
            raise
        self.last_body = None
        try:
            value = self._decode(path, status, headers, body)
            self.last_body = body
            return value
        except PipelineError as exc:
            if getattr(exc, "error_code", None) == 429:  # also a 429 body inside an HTTP 200
                self._answered = 429
            raise
        finally:
            self._record(path, params)

    def _record(self, path: str, params: Mapping[str, Any]) -> None:
        """Tell the recorder of the attempt just made, once."""
        if self.recorder is not None and self._answered is not None:
            self.recorder.record(path, params, self._answered or None)
        self._answered = None

    def _exchange(self, path: str, params: dict[str, Any], watchdog: _Watchdog) -> tuple[int, Mapping[str, str], bytes]:
        """GET the URL, following at most MAX_REDIRECTS redirects by hand; the key goes only to our origin."""
        url, query = self.base_url + path, params
        for _hop in range(MAX_REDIRECTS + 1):
            remaining = watchdog.remaining()
            if watchdog.reason is not None or remaining <= 0:
                raise requests.Timeout("deadline passed between redirects")
            self.calls += 1
            ours = origin_of(url) == self.origin
            self._answered = SENT if ours else None
            response = self.session.get(
                url,
                params=query,
                headers=self._key_for(url),
                stream=True,
                allow_redirects=False,
                timeout=(remaining, remaining),
            )
            self._answered = response.status_code if ours else None
            with response:
                location = response.headers.get("Location")
                if response.status_code not in REDIRECT_STATUSES or not location:
                    return response.status_code, response.headers, self._read_capped(path, response)
                self._record(path, params or {})
                target = urljoin(response.url, location)
                self._check_redirect(response.url, target)
                log.debug("CoinGecko %s redirected (HTTP %d) to %s", path, response.status_code, target)
            url, query = target, None
        raise ExtractError(f"CoinGecko {path} redirected more than {MAX_REDIRECTS} times; check --api-url")

    def _key_for(self, url: str) -> dict[str, str]:
        """The key header for a request to url: only when url is on the configured API origin."""
        if self.key_header and self.secret and origin_of(url) == self.origin:
            return {self.key_header: self.secret}
        return {}

    def _check_redirect(self, source: str, target: str) -> None:
        """Refuse a redirect that leaves http(s) or drops TLS."""
        scheme = urlsplit(target).scheme.lower()
        if scheme not in ("http", "https"):
            raise ExtractError(f"refused a redirect to {_short(target, 160)}: not an http(s) URL; check --api-url")
        if urlsplit(source).scheme.lower() == "https" and scheme == "http":
            raise ExtractError(
                f"refused a redirect from https to plain http ({_short(target, 160)}): the request "
                "would travel unencrypted; check --api-url and any proxy in between"
            )

    def _read_capped(self, path: str, response: requests.Response) -> bytes:
        """The body, decompressed, read in chunks and abandoned past --max-response-mb (a gzip bomb stops here)."""
        limit = int(self.max_response_mb * 2**20)
        body = bytearray()
        for chunk in response.iter_content(CHUNK_BYTES):
            body += chunk
            if len(body) > limit:
                raise ExtractError(
                    f"CoinGecko's answer to {path} is larger than {self.max_response_mb:g} MB once "
                    "decompressed; stopped reading it (raise --max-response-mb if that is expected)",
                    status=response.status_code,
                )
        return bytes(body)

    def _network_error(self, path: str, exc: BaseException) -> ExtractError:
        """The typed error for a failed exchange: TLS is fatal, the rest is worth retrying."""
        if isinstance(exc, requests.exceptions.SSLError):
            return ExtractError(
                f"TLS to {self.base_url} failed ({_network_reason(exc)}): the certificate is not "
                "trusted; check the URL, the system clock and any proxy (REQUESTS_CA_BUNDLE)"
            )
        if isinstance(exc, (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError)):
            return RetriableError(f"CoinGecko's answer to {path} was cut short ({_network_reason(exc)})")
        if isinstance(exc, (requests.ConnectionError, OSError)):
            reason = _network_reason(exc)
            kind = Unreachable if reason in UNREACHABLE_REASONS else RetriableError
            return kind(f"cannot connect to {self.base_url} ({reason})")
        return ExtractError(f"request to {path} failed: {_network_reason(exc)}")

    def _decode(self, path: str, status: int, headers: Mapping[str, str], content: bytes) -> Any:
        content_type = headers.get("Content-Type", "unknown content type").split(";")[0].strip()
        body: Any = None
        parse_error: str | None = None
        try:
            body = decode_json(content)
        except (ValueError, RecursionError) as exc:
            parse_error = f"{exc.__class__.__name__}: {exc}"
        code, message = error_from_body(body)
        if message:  # a server or proxy may quote the key back: never let it into an error
            message = redact(message)
        now = self.clock()
        where = f"CoinGecko {path} answered HTTP {status}"

        if status == 429 or code == 429:
            wait = parse_retry_after(headers.get("Retry-After"), now)
            if wait is None:
                wait = parse_ratelimit_reset(headers.get("x-ratelimit-reset"), now)
            if wait is not None and wait > self.max_retry_wait:
                raise ExtractError(
                    f"rate limited by CoinGecko ({where}), which asks to wait {wait:.0f} s, more than "
                    f"--max-retry-wait {self.max_retry_wait:g} s: run again later, or use an API key "
                    "(COINGECKO_API_KEY) for a higher limit",
                    status=status,
                    error_code=429,
                )
            raise RateLimited(f"rate limited by CoinGecko ({where})", status=status, error_code=429, retry_after=wait)
        if status in RETRIABLE_STATUSES:
            detail = message or (
                _short(redact(content.decode("utf-8", "replace")), 80) if parse_error is None else content_type
            )
            raise RetriableError(f"{where} ({detail})", status=status, error_code=code)
        if status >= 400 or code is not None:
            text = message or (f"a {content_type} page" if parse_error else "no error message")
            advice = ERROR_ADVICE.get(code or -1)
            if advice is None and b"cloudflare" in content[:4096].lower():
                advice = ERROR_ADVICE[1020]
            full = f"{where}: {_short(text)}" + (f" ({advice})" if advice else "")
            if code in (10002, 10005, 10010, 10011, 10012) or status == 401:
                raise AuthError(full, status=status, error_code=code)
            if status == 400:
                raise BadRequest(full, status=status, error_code=code)
            raise ExtractError(full, status=status, error_code=code)
        if parse_error is not None:
            what = (
                "an HTML page"
                if "html" in content_type or content.lstrip()[:1] == b"<"
                else f"malformed JSON ({_short(parse_error, 100)})"
            )
            raise ExtractError(
                f"{where} with {what} instead of JSON (content type {content_type}); "
                "CoinGecko may be down or blocking this address: try again later"
            )
        return body


# -- cutting a request short -----------------------------------------------------------------
# requests has no deadline for a whole request and no way to abandon one from outside: its timeout
# bounds each socket read, so a server that sends a byte a second, or a stop asked mid-request, waits
# for ever. The connection classes below note which thread uses them; a watchdog thread per request
# shuts that socket down at the deadline or on a stop, which wakes the blocked read at once.

_IN_FLIGHT: dict[int, HTTPConnection] = {}  # thread id -> the connection it is using; dict writes are atomic


class _Watched:
    """Mixin: register the connection for the calling thread before it connects or sends."""

    watched_sock: socket.socket | None = None  # kept: http.client drops .sock when a response says "close"

    def connect(self) -> None:
        _IN_FLIGHT[threading.get_ident()] = self  # type: ignore[assignment]
        super().connect()  # type: ignore[misc]
        self.watched_sock = self.sock  # type: ignore[attr-defined]

    def request(self, *args: Any, **kwargs: Any) -> None:
        _IN_FLIGHT[threading.get_ident()] = self  # type: ignore[assignment]
        super().request(*args, **kwargs)  # type: ignore[misc]


class _WatchedHTTPConnection(_Watched, HTTPConnection):
    """An HTTP connection a watchdog can cut."""


class _WatchedHTTPSConnection(_Watched, HTTPSConnection):
    """An HTTPS connection a watchdog can cut."""


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_WATCHED_POOLS = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class _WatchedAdapter(HTTPAdapter):
    """requests' adapter with pools of watched connections (also behind an HTTP proxy; SOCKS keeps its own)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _WATCHED_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = _WATCHED_POOLS
        return manager


class _Watchdog:
    """While a request runs, cut its connection when the deadline passes or a stop is asked."""

    def __init__(self, deadline: float, should_stop: Callable[[], bool]) -> None:
        self.deadline = deadline  # time.monotonic(): real time, whatever clock the caller injects elsewhere
        self.should_stop = should_stop
        self.reason: str | None = None  # "deadline" or "stop" once it fired
        self.owner = threading.get_ident()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="coingecko-watchdog", daemon=True)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def __enter__(self) -> _Watchdog:
        _IN_FLIGHT.pop(self.owner, None)  # a connection of an earlier request is not this one's
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        _IN_FLIGHT.pop(self.owner, None)

    def _watch(self) -> None:
        while not self._done.wait(max(0.0, min(WATCH_INTERVAL, self.remaining()))):
            if self.reason is None:
                if self.should_stop():
                    self.reason = "stop"
                elif self.remaining() <= 0:
                    self.reason = "deadline"
            if self.reason is not None:
                _cut(_IN_FLIGHT.get(self.owner))  # again each round: a connection may still be opening
                self._done.wait(WATCH_INTERVAL)


def _cut(connection: HTTPConnection | None) -> None:
    """Shut a connection's socket down so a read blocked on it returns now (close() would not wake it)."""
    sock = getattr(connection, "sock", None) or getattr(connection, "watched_sock", None)
    if sock is not None:
        try:
            socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket's, also under TLS
        except OSError:
            pass


UNREACHABLE_REASONS = ("connection refused", "name or service not known", "temporary failure in name resolution")
UNREACHABLE_ATTEMPTS = 3  # a DNS failure or a refused connection: the first attempt and two retries


class Unreachable(RetriableError):
    """The host does not resolve or refuses the connection: retried twice, not six times."""


class Offline(ExtractError):
    """Unreachable after its retries: every later request of this run would fail the same way."""


def _network_reason(exc: BaseException) -> str:
    """A short cause for a network error, without the URL (which is noise in a one-line error)."""
    text = str(exc).lower()
    for marker in (
        "connection refused",
        "connection reset",
        "remote end closed",
        "name or service not known",
        "temporary failure in name resolution",
        "certificate verify failed",
        "timed out",
    ):
        if marker in text:
            return marker
    return type(exc).__name__


# -- webhooks ----------------------------------------------------------------------------------
WEBHOOK_MAX_ANSWER = 64 * 1024  # bytes of a webhook's answer read before it is dropped unread


class WebhookError(PipelineError):
    """A notification could not be delivered (the run itself is not affected)."""


def post_json(
    url: str, document: Any, *, timeout: float = 30.0, should_stop: Callable[[], bool] = lambda: False
) -> int:
    """POST a JSON document to a webhook within the API's bounds; returns the HTTP status. Raises WebhookError.

    The same watchdog as an API request: the deadline, or a stop (the daemon's SIGTERM), cuts the connection."""
    # The same bounds as the API: one deadline for the whole request (the same watchdog), no redirect followed
    # (a POST is not replayed elsewhere), the answer capped; a fresh session, so no key header can ride along.
    body = json.dumps(document, ensure_ascii=False).encode("utf-8")
    if should_stop():
        raise WebhookError("not sent: the program is stopping")
    watchdog = _Watchdog(time.monotonic() + timeout, should_stop)
    with requests.Session() as session:
        session.trust_env = False  # no proxy or netrc credentials from the environment reach the webhook
        for prefix in ("https://", "http://"):
            session.mount(prefix, _WatchedAdapter())
        try:
            with (
                watchdog,
                session.post(
                    url,
                    data=body,
                    timeout=(timeout, timeout),
                    allow_redirects=False,
                    stream=True,
                    headers={"User-Agent": USER_AGENT, "Content-Type": "application/json"},
                ) as response,
            ):
                read = 0
                for chunk in response.iter_content(CHUNK_BYTES):
                    read += len(chunk)
                    if read > WEBHOOK_MAX_ANSWER:
                        break  # the status is all we need
                status, location = response.status_code, response.headers.get("Location")
        except (requests.RequestException, OSError, ValueError) as exc:
            if watchdog.reason == "stop":
                raise WebhookError("cut off: the program is stopping") from None
            if watchdog.reason == "deadline" or isinstance(exc, requests.Timeout):
                raise WebhookError(f"no answer within {timeout:g} s (--timeout bounds the whole request)") from None
            raise WebhookError(f"cannot reach it ({_network_reason(exc)})") from None
    if status in REDIRECT_STATUSES or 300 <= status < 400:
        where = f" to {_short(redact(location), 120)}" if location else ""
        raise WebhookError(f"it answered HTTP {status}, a redirect{where}, which is not followed: give the final URL")
    if status >= 400:
        raise WebhookError(f"it answered HTTP {status}")
    return status
