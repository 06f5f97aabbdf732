"""A local HTTP server that imitates CoinGecko API v3 for tests (stdlib only)."""

from __future__ import annotations

import copy
import fnmatch
import functools
import json
import math
import random
import socket
import struct
import sys
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import parse_qsl, urlsplit

FIXTURES_DIR = Path(__file__).resolve().parent / "fixtures"
API_PREFIX = "/api/v3"
DEFAULT_COINS_FIXTURE = "coins_markets_2023-01-08_real_10coins.json"
DEMO_KEY_HEADER = "x-cg-demo-api-key"
PRO_KEY_HEADER = "x-cg-pro-api-key"
SUPPORTED_VS_CURRENCIES = frozenset(
    {"usd", "eur", "gbp", "jpy", "btc", "eth", "chf", "cad", "aud", "cny", "krw", "inr", "sats"}
)
DEFAULT_PER_PAGE = 100
MAX_PER_PAGE = 250
WINDOW_SECONDS = 60.0

# Bodies not in error_bodies_captured.json. 10002: the captured prefix (2026-05-17) with the
# tail completed by hand. 10011: real shape seen 2025-09-01 (error_code at the top level).
MISSING_KEY_MESSAGE = (
    "API Key Missing. Please make sure you're using the right authentication method. "
    "For Pro API, please visit: https://docs.coingecko.com/reference/authentication. "
    "For Public/Demo API, please visit: https://docs.coingecko.com/v3.0.1/reference/authentication"
)
DEMO_KEY_ON_PRO_MESSAGE = (
    "If you are using Demo API key, please change your root URL from pro-api.coingecko.com "
    "to api.coingecko.com Please refer here for more details: "
    "https://docs.coingecko.com/v3.0.1/reference/introduction"
)

CLOUDFLARE_ACCESS_DENIED_HTML = """<!DOCTYPE html>
<!--[if lt IE 7]> <html class="no-js ie6 oldie" lang="en-US"> <![endif]-->
<!--[if IE 7]>    <html class="no-js ie7 oldie" lang="en-US"> <![endif]-->
<!--[if IE 8]>    <html class="no-js ie8 oldie" lang="en-US"> <![endif]-->
<!--[if gt IE 8]><!--> <html class="no-js" lang="en-US"> <!--<![endif]-->
<head>
<title>Access denied | api.coingecko.com used Cloudflare to restrict access</title>
<meta charset="UTF-8" />
<meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />
<meta name="robots" content="noindex, nofollow" />
</head>
<body>
  <div id="cf-wrapper">
    <div id="cf-error-details" class="cf-error-details-wrapper">
      <div class="cf-wrapper cf-header cf-error-overview">
        <h1><span class="cf-error-type">Error</span> <span class="cf-error-code">1020</span></h1>
        <h2 class="cf-subheadline">Access denied</h2>
      </div>
      <p>This website is using a security service to protect itself from online attacks.</p>
      <p>Cloudflare Ray ID: <strong class="font-semibold">7a1b2c3d4e5f6789</strong></p>
    </div>
  </div>
</body>
</html>
"""

CLOUDFLARE_CHALLENGE_HTML = """<!DOCTYPE html><html lang="en-US"><head><title>Just a moment...</title>
<meta http-equiv="Content-Type" content="text/html; charset=UTF-8">
<meta name="robots" content="noindex,nofollow"></head>
<body><div class="main-wrapper" role="main"><div class="main-content">
<h1 class="zone-name-title h1">api.coingecko.com</h1>
<h2 class="h2">Checking if the site connection is secure</h2>
</div></div></body></html>
"""

# Ids a /search can suggest even when they are not in FakeCoinGecko.coins.
KNOWN_COINS: tuple[dict[str, Any], ...] = (
    {"id": "bitcoin", "name": "Bitcoin", "symbol": "BTC", "market_cap_rank": 1},
    {"id": "ethereum", "name": "Ethereum", "symbol": "ETH", "market_cap_rank": 2},
    {"id": "tether", "name": "Tether", "symbol": "USDT", "market_cap_rank": 3},
    {"id": "ripple", "name": "XRP", "symbol": "XRP", "market_cap_rank": 4},
    {"id": "binancecoin", "name": "BNB", "symbol": "BNB", "market_cap_rank": 5},
    {"id": "solana", "name": "Solana", "symbol": "SOL", "market_cap_rank": 6},
    {"id": "usd-coin", "name": "USDC", "symbol": "USDC", "market_cap_rank": 7},
    {"id": "dogecoin", "name": "Dogecoin", "symbol": "DOGE", "market_cap_rank": 8},
    {"id": "cardano", "name": "Cardano", "symbol": "ADA", "market_cap_rank": 10},
    {"id": "avalanche-2", "name": "Avalanche", "symbol": "AVAX", "market_cap_rank": 15},
    {"id": "polkadot", "name": "Polkadot", "symbol": "DOT", "market_cap_rank": 20},
    {"id": "litecoin", "name": "Litecoin", "symbol": "LTC", "market_cap_rank": 22},
    {"id": "shiba-inu", "name": "Shiba Inu", "symbol": "SHIB", "market_cap_rank": 18},
    {"id": "polygon-ecosystem-token", "name": "POL (ex-MATIC)", "symbol": "POL", "market_cap_rank": 40},
    {"id": "matic-network", "name": "Polygon", "symbol": "MATIC", "market_cap_rank": None},
    {"id": "staked-ether", "name": "Lido Staked Ether", "symbol": "STETH", "market_cap_rank": 9},
    {"id": "algorand", "name": "Algorand", "symbol": "ALGO", "market_cap_rank": 60},
    {"id": "axelar", "name": "Axelar", "symbol": "AXL", "market_cap_rank": 150},
    {"id": "axl-inu", "name": "AXL INU", "symbol": "AXL", "market_cap_rank": None},
)


def load_fixture(name: str) -> Any:
    """Return the parsed JSON of tests/fixtures/<name>."""
    with open(FIXTURES_DIR / name, encoding="utf-8") as handle:
        return json.load(handle)


def format_iso_ms(moment: datetime) -> str:
    """Format an aware or naive-UTC datetime as CoinGecko does: 2023-01-08T16:49:40.132Z."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_iso(value: str) -> datetime:
    """Parse a CoinGecko ISO timestamp ("...Z") into an aware UTC datetime."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(timezone.utc)


def _dumps(payload: Any) -> bytes:
    """Serialise JSON compactly, as CoinGecko does."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _error_timestamp() -> str:
    """Return a timestamp in the style of CoinGecko's error bodies."""
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}+00:00"


def rate_limit_body() -> dict[str, Any]:
    """Return the real 429 JSON body."""
    return copy.deepcopy(load_fixture("error_bodies_captured.json")["rate_limit_429"]["body"])


def error_kinds() -> list[str]:
    """List the names accepted by Fault.error_body and error_response."""
    captured = [k for k in load_fixture("error_bodies_captured.json") if not k.startswith("_")]
    return captured + ["missing_api_key_10002", "demo_key_on_pro_host_10011"]


def error_response(kind: str) -> tuple[int, bytes, str]:
    """Return (status, body, content type) for one of the captured error shapes."""
    captured = load_fixture("error_bodies_captured.json")
    if kind in ("missing_api_key_10002", "missing_api_key_10002_truncated"):
        body = {"status": {"timestamp": _error_timestamp(), "error_code": 10002, "error_message": MISSING_KEY_MESSAGE}}
        return 401, _dumps(body), "application/json"
    if kind == "demo_key_on_pro_host_10011":
        body = {
            "timestamp": _error_timestamp(),
            "error_code": 10011,
            "status": {"error_message": DEMO_KEY_ON_PRO_MESSAGE},
        }
        return 400, _dumps(body), "application/json"
    if kind == "cloudflare_block_html_prefix":
        return 403, CLOUDFLARE_ACCESS_DENIED_HTML.encode("utf-8"), "text/html; charset=UTF-8"
    if kind.startswith("_") or kind not in captured:
        raise KeyError(f"unknown error kind {kind!r}; known: {', '.join(error_kinds())}")
    entry = captured[kind]
    status = entry.get("http_status")
    return (status if isinstance(status, int) else 400), _dumps(entry["body"]), "application/json"


@dataclass
class Fault:
    """One scripted misbehaviour; each instance answers exactly one request."""

    kind: str = "respond"  # respond | stall | reset | truncate | trickle
    http_status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    delay: float = 0.0

    @classmethod
    def status(
        cls, code: int, body: bytes | str | dict | list | None = None, headers: dict[str, str] | None = None
    ) -> Fault:
        """Answer with any status, body and headers (dict/list bodies become JSON)."""
        extra = {k.lower(): v for k, v in (headers or {}).items()}
        if isinstance(body, (dict, list)):
            raw, ctype = _dumps(body), "application/json"
        elif isinstance(body, str):
            raw, ctype = body.encode("utf-8"), "text/plain; charset=utf-8"
        else:
            raw, ctype = body or b"", "application/json"
        ctype = extra.pop("content-type", ctype)
        return cls(http_status=code, body=raw, headers=extra, content_type=ctype)

    @classmethod
    def rate_limited(cls, retry_after: str | None = "1") -> Fault:
        """Answer 429 with the real body, and Retry-After unless it is None."""
        headers = {} if retry_after is None else {"retry-after": str(retry_after)}
        return cls.status(429, rate_limit_body(), headers)

    @classmethod
    def rate_limited_reset(cls, reset_header_value: str = "2025-07-25 14:54:00 +0000", limit: int = 30) -> Fault:
        """Answer 429 with x-ratelimit-limit/remaining/reset headers and no Retry-After."""
        headers = {
            "x-ratelimit-limit": str(limit),
            "x-ratelimit-remaining": "0",
            "x-ratelimit-reset": reset_header_value,
        }
        return cls.status(429, rate_limit_body(), headers)

    @classmethod
    def rate_limit_in_200(cls) -> Fault:
        """Answer HTTP 200 whose JSON body is the 429 rate-limit error."""
        return cls.status(200, rate_limit_body())

    @classmethod
    def throttled_text(cls) -> Fault:
        """Answer 429 with the old plain-text body "Throttled" and no Retry-After."""
        return cls.status(429, "Throttled")

    @classmethod
    def server_error(cls, code: int = 500, text: bool = False) -> Fault:
        """Answer a 5xx with a JSON status body, or Cloudflare's short text when text=True."""
        if text:
            return cls.status(code, f"error code: {code}")
        reason = BaseHTTPRequestHandler.responses.get(code, ("Server Error",))[0]
        return cls.status(code, {"status": {"error_code": code, "error_message": reason}})

    @classmethod
    def html(cls, status: int = 403, challenge: bool = False) -> Fault:
        """Answer a Cloudflare HTML page (access denied, or "Just a moment..." when challenge)."""
        page = CLOUDFLARE_CHALLENGE_HTML if challenge else CLOUDFLARE_ACCESS_DENIED_HTML
        return cls.status(status, page, {"content-type": "text/html; charset=UTF-8", "cf-ray": "7a1b2c3d4e5f6789-FRA"})

    @classmethod
    def malformed_json(cls) -> Fault:
        """Answer 200 application/json with a complete but syntactically broken body."""
        return cls.status(200, b'[{"id": "bitcoin", "sym', {"content-type": "application/json"})

    @classmethod
    def truncated_json(cls) -> Fault:
        """Send the real markets JSON but cut the connection halfway (Content-Length kept full)."""
        full = _dumps(load_fixture(DEFAULT_COINS_FIXTURE))
        return cls(kind="truncate", http_status=200, body=full)

    @classmethod
    def wrong_shape(cls, body: dict | None = None) -> Fault:
        """Answer 200 with a JSON object where a list belongs."""
        return cls.status(200, body if body is not None else {"bitcoin": {"usd": 16951.52}})

    @classmethod
    def stall(cls, seconds: float) -> Fault:
        """Sleep before answering normally (aborted early when the server stops)."""
        return cls(kind="stall", delay=float(seconds))

    @classmethod
    def reset(cls) -> Fault:
        """Close the connection with a TCP RST and no response at all."""
        return cls(kind="reset")

    @classmethod
    def trickle(cls, interval: float = 1.0, body: bytes | None = None) -> Fault:
        """Send status and headers at once, then the body one byte every interval seconds (a slow-loris answer)."""
        full = body if body is not None else _dumps(load_fixture(DEFAULT_COINS_FIXTURE))
        return cls(kind="trickle", http_status=200, body=full, delay=float(interval))

    @classmethod
    def redirect(cls, location: str, code: int = 302) -> Fault:
        """Answer a redirect to location (any host, port or scheme)."""
        return cls.status(code, b"", {"location": location})

    @classmethod
    def gzip_bomb(cls, gib: int = 2) -> Fault:
        """Answer 200 with Content-Encoding: gzip and a ~1 MB-per-GiB body that unpacks to gib GiB of zeros."""
        return cls.status(200, gzip_bomb(gib), {"content-encoding": "gzip"})

    @classmethod
    def error_body(cls, kind: str) -> Fault:
        """Answer one of the captured error shapes by name (see error_kinds())."""
        code, body, ctype = error_response(kind)
        return cls(http_status=code, body=body, content_type=ctype)


@functools.lru_cache(maxsize=2)
def gzip_bomb(gib: int) -> bytes:
    """A valid single-stream gzip of gib GiB of zeros, built in well under a second.

    Each MiB is deflated after a full flush, so every MiB after the first compresses to the same bytes:
    the body is that segment repeated, then the closing block with the CRC and size of the whole.
    """
    zeros, count = bytes(2**20), gib * 1024
    deflate = zlib.compressobj(9, zlib.DEFLATED, 31)
    first = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
    repeated = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
    closing = deflate.flush()[:-8]  # the final block; its trailer is recomputed for the whole stream
    crc = 0
    for _ in range(count):
        crc = zlib.crc32(zeros, crc)
    return first + repeated * (count - 1) + closing + struct.pack("<II", crc, (count * 2**20) & 0xFFFFFFFF)


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake saw it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    raw_path: str
    time: float = 0.0  # value of FakeCoinGecko.clock when it arrived
    client_port: int = 0  # the client's source port: equal ports mean a reused connection


@dataclass
class _Answer:
    """A response ready to send."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def _json_answer(status: int, payload: Any, headers: dict[str, str] | None = None) -> _Answer:
    """Build a JSON answer."""
    return _Answer(status, _dumps(payload), "application/json", dict(headers or {}))


def _edit_distance(a: str, b: str, limit: int = 2) -> int:
    """Levenshtein distance, returning limit + 1 as soon as it exceeds limit."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        if min(current) > limit:
            return limit + 1
        previous = current
    return previous[-1]


def _int_param(value: str | None, default: int) -> int:
    """Parse an integer query parameter, falling back to default."""
    try:
        return int(value) if value not in (None, "") else default
    except ValueError:
        return default


def _sort_key_desc(field_name: str) -> Callable[[dict[str, Any]], tuple[int, float]]:
    """Sort key for a numeric field, descending, nulls last."""

    def key(row: dict[str, Any]) -> tuple[int, float]:
        value = row.get(field_name)
        return (1, 0.0) if value is None else (0, -float(value))

    return key


def _sort_key_asc(field_name: str) -> Callable[[dict[str, Any]], tuple[int, float]]:
    """Sort key for a numeric field, ascending, nulls last."""

    def key(row: dict[str, Any]) -> tuple[int, float]:
        value = row.get(field_name)
        return (1, 0.0) if value is None else (0, float(value))

    return key


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows its FakeCoinGecko and stays quiet."""

    daemon_threads = True
    allow_reuse_address = True
    fake: FakeCoinGecko

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore client disconnects; remember anything else."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
            return
        self.fake.errors.append(repr(exc))


class _Handler(BaseHTTPRequestHandler):
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK wait
    """Request handler delegating to FakeCoinGecko."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def version_string(self) -> str:
        """Value of the Server header."""
        return "fake-coingecko"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Silence the default stderr log."""

    def setup(self) -> None:
        """Track the connection so stop() can close it."""
        super().setup()
        self.server.fake._track(self.connection, True)

    def finish(self) -> None:
        """Untrack the connection."""
        try:
            super().finish()
        finally:
            self.server.fake._track(self.connection, False)

    def _dispatch(self) -> None:
        """Handle any method."""
        length = _int_param(self.headers.get("content-length"), 0)
        if length > 0:
            self.rfile.read(length)
        self.server.fake._handle(self)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch

    def send_answer(self, answer: _Answer, cut_at: int | None = None) -> None:
        """Write status, headers (always Content-Length) and body."""
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(answer.body)))
        for name, value in answer.headers.items():
            self.send_header(name, value)
        if cut_at is not None:
            self.send_header("Connection", "close")
        self.end_headers()
        body = answer.body if cut_at is None else answer.body[:cut_at]
        self.wfile.write(body)
        self.wfile.flush()

    def send_trickle(self, answer: _Answer, interval: float, stopping: threading.Event) -> None:
        """Write status and headers, then the body a byte at a time until done, cut off or stopped."""
        self.close_connection = True
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(answer.body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.flush()
        for index in range(len(answer.body)):
            if stopping.wait(interval):
                return
            self.wfile.write(answer.body[index : index + 1])
            self.wfile.flush()
            self.server.fake.trickled_bytes += 1

    def reset_connection(self) -> None:
        """Abort the TCP connection with RST."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.connection.close()


class FakeCoinGecko:
    """An HTTP server imitating CoinGecko API v3 under /api/v3 on 127.0.0.1."""

    def __init__(self, coins: list[dict[str, Any]] | None = None) -> None:
        """Prepare the fake; coins are /coins/markets rows (default: the real 10-coin fixture)."""
        self.coins: list[dict[str, Any]] = copy.deepcopy(
            coins if coins is not None else load_fixture(DEFAULT_COINS_FIXTURE)
        )
        self.requests: list[RecordedRequest] = []
        self.errors: list[str] = []
        self.market_chart: dict[str, dict[str, list[list[float | None]]]] = {}
        self.required_key: tuple[str, str] | None = None
        self.rate_limit_per_minute: int | None = None
        self.rate_limit_counts_rejected = False
        self.clock: Callable[[], float] = time.monotonic
        self.wall_clock: Callable[[], float] = time.time
        self.history_limit_days: int | None = None
        self.endless_pages = False  # every unfiltered /coins/markets page is full, however far one pages
        self.page_hooks: dict[int, list[Callable[[], None]]] = {}  # run right after that page is served
        self.stalls_begun = 0  # stall faults under way or done: the client is waiting inside the request
        self.trickled_bytes = 0  # body bytes that trickle faults have sent so far
        self.base_url = ""
        self._lock = threading.Lock()
        self._faults: deque[tuple[Fault, str | None]] = deque()
        self._window: deque[float] = deque()
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> FakeCoinGecko:
        """Bind 127.0.0.1 on a free port and serve in a daemon thread."""
        if self._server is not None:
            return self
        self._stopping.clear()
        server = _Server(("127.0.0.1", 0), _Handler)
        server.fake = self
        self._server = server
        self.base_url = f"http://127.0.0.1:{server.server_address[1]}{API_PREFIX}"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-coingecko", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake stalled handlers and close open connections."""
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=2)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeCoinGecko:
        """Start the server."""
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        """Stop the server."""
        self.stop()

    @property
    def port(self) -> int:
        """The bound port (0 before start)."""
        return self._server.server_address[1] if self._server is not None else 0

    # -- scripting -------------------------------------------------------------------------
    def set_coins(self, rows: Iterable[dict[str, Any]]) -> None:
        """Replace the /coins/markets rows (deep-copied)."""
        new_rows = copy.deepcopy(list(rows))
        with self._lock:
            self.coins = new_rows

    def rename(self, old_id: str, new_id: str, name: str | None = None, symbol: str | None = None) -> None:
        """Give a coin a new id (and name, symbol), as CoinGecko did with matic-network: /coins/markets stops
        returning the old id, and /search finds the new one (the old one stays known to /search only if it is
        in KNOWN_COINS, like matic-network)."""
        with self._lock:
            rows = copy.deepcopy(self.coins)
            for row in rows:
                if row.get("id") == old_id:
                    row["id"] = new_id
                    row["name"] = name if name is not None else row.get("name")
                    row["symbol"] = symbol if symbol is not None else row.get("symbol")
            self.coins = rows

    def universe(self, n: int, *, start: datetime | None = None, seed: int = 0) -> list[str]:
        """Serve n generated coins (coin-00000...) ranked by market cap; returns their ids, best first."""
        rows = markets_rows(n, start=start or datetime.now(timezone.utc) - timedelta(minutes=5), seed=seed)
        self.set_coins(rows)
        return [row["id"] for row in rows]

    def ranked_ids(self) -> list[str]:
        """The ids in market-cap order, as an unfiltered /coins/markets pages them now."""
        with self._lock:
            return [row["id"] for row in sorted(self.coins, key=_sort_key_desc("market_cap"))]

    def move(self, coin_id: str, to_position: int) -> None:
        """Give a coin the market cap that puts it at 0-based to_position of the ranking (ranks renumbered)."""
        with self._lock:
            rows = sorted(copy.deepcopy(self.coins), key=_sort_key_desc("market_cap"))
            coin = next(row for row in rows if row.get("id") == coin_id)
            rows.remove(coin)
            above = rows[to_position - 1]["market_cap"] if to_position > 0 else None
            below = rows[to_position]["market_cap"] if to_position < len(rows) else None
            if above is None:
                coin["market_cap"] = (below or 1) * 2
            elif below is None:
                coin["market_cap"] = above / 2
            else:
                coin["market_cap"] = (above + below) / 2
            rows.insert(to_position, coin)
            for rank, row in enumerate(rows, 1):
                row["market_cap_rank"] = rank
            self.coins = rows

    def remove(self, *coin_ids: str) -> None:
        """Delist coins: /coins/markets returns them no more, by page or by id."""
        gone = set(coin_ids)
        with self._lock:
            self.coins = [row for row in self.coins if row.get("id") not in gone]

    def after_page(self, page: int, action: Callable[[], None]) -> None:
        """Run action once, right after the unfiltered /coins/markets page `page` is served (ranks move while paging)."""
        with self._lock:
            self.page_hooks.setdefault(page, []).append(action)

    def market_pages(self) -> list[int]:
        """The page numbers of the unfiltered /coins/markets requests, in order."""
        return [_int_param(r.query.get("page"), 1) for r in self.requests_to("/coins/markets") if "ids" not in r.query]

    def advance(self, seconds: float = 60, price_factor: float = 1.01) -> None:
        """Move every coin's last_updated forward and scale current_price (nulls stay null)."""
        step = timedelta(milliseconds=round(seconds * 1000))
        with self._lock:
            rows = copy.deepcopy(self.coins)
            for row in rows:
                if row.get("last_updated"):
                    row["last_updated"] = format_iso_ms(parse_iso(row["last_updated"]) + step)
                if row.get("current_price") is not None:
                    row["current_price"] = row["current_price"] * price_factor
            self.coins = rows

    def add_fault(self, fault: Fault, times: int = 1, path: str | None = None) -> None:
        """Queue a fault for the next `times` requests whose path matches (None = any; globs ok)."""
        with self._lock:
            for _ in range(times):
                self._faults.append((fault, path))

    def clear_faults(self) -> None:
        """Drop every queued fault."""
        with self._lock:
            self._faults.clear()

    @property
    def pending_faults(self) -> int:
        """Number of queued faults not yet consumed."""
        with self._lock:
            return len(self._faults)

    def requests_to(self, path: str) -> list[RecordedRequest]:
        """Recorded requests whose path (without /api/v3) equals path."""
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def reset_rate_limit(self) -> None:
        """Forget the calls counted in the rate-limit window."""
        with self._lock:
            self._window.clear()

    # -- internals -------------------------------------------------------------------------
    def _track(self, conn: socket.socket, add: bool) -> None:
        """Remember or forget an open connection."""
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _take_fault(self, path: str) -> Fault | None:
        """Pop the first queued fault matching path."""
        with self._lock:
            for index, (fault, pattern) in enumerate(self._faults):
                if pattern is None or pattern == path or fnmatch.fnmatchcase(path, pattern):
                    del self._faults[index]
                    return fault
        return None

    def _handle(self, handler: _Handler) -> None:
        """Record, apply faults, limits and keys, then route."""
        split = urlsplit(handler.path)
        path = split.path
        inside = path == API_PREFIX or path.startswith(API_PREFIX + "/")
        if inside:
            path = path[len(API_PREFIX) :] or "/"
        query: dict[str, str] = {}
        for name, value in parse_qsl(split.query, keep_blank_values=True):
            query.setdefault(name, value)
        headers = {name.lower(): value for name, value in handler.headers.items()}
        request = RecordedRequest(
            handler.command, path, query, headers, handler.path, self.clock(), handler.client_address[1]
        )
        with self._lock:
            self.requests.append(request)

        fault = self._take_fault(path)
        if fault is not None and fault.kind == "reset":
            handler.reset_connection()
            return
        if fault is not None and fault.kind == "stall":
            with self._lock:
                self.stalls_begun += 1
            if self._stopping.wait(fault.delay):
                handler.close_connection = True
                return
            fault = None
        if fault is not None and fault.kind == "trickle":
            handler.send_trickle(
                _Answer(fault.http_status, fault.body, fault.content_type), fault.delay, self._stopping
            )
            return
        if fault is not None and fault.kind == "truncate":
            handler.close_connection = True
            handler.send_answer(
                _Answer(fault.http_status, fault.body, fault.content_type, dict(fault.headers)),
                cut_at=len(fault.body) // 2,
            )
            return
        if fault is not None:
            answer = _Answer(fault.http_status, fault.body, fault.content_type, dict(fault.headers))
        elif not inside:
            answer = _json_answer(404, {"error": "Not found"})
        else:
            try:
                answer = self._rate_limit(request) or self._auth_error(request) or self._route(request)
            except Exception as exc:  # noqa: BLE001 - a bug in the fake must show up in tests
                self.errors.append(f"{type(exc).__name__}: {exc}")
                answer = _json_answer(500, {"error": f"fake-coingecko bug: {exc!r}"})
        handler.send_answer(answer)

    def _rate_limit(self, request: RecordedRequest) -> _Answer | None:
        """Apply the sliding 60 s window; return a 429 answer when it is full."""
        limit = self.rate_limit_per_minute
        if limit is None:
            return None
        now = request.time
        with self._lock:
            while self._window and self._window[0] <= now - WINDOW_SECONDS:
                self._window.popleft()
            if len(self._window) < limit:
                self._window.append(now)
                return None
            wait = self._window[0] + WINDOW_SECONDS - now
            if self.rate_limit_counts_rejected:
                self._window.append(now)
        retry_after = str(max(1, math.ceil(wait)))
        return _json_answer(429, rate_limit_body(), {"retry-after": retry_after})

    def _auth_error(self, request: RecordedRequest) -> _Answer | None:
        """Check required_key; return the matching CoinGecko error answer or None."""
        if self.required_key is None:
            return None
        name, expected = self.required_key[0].lower(), self.required_key[1]

        def given(header: str) -> str | None:
            return request.headers.get(header, request.query.get(header.replace("-", "_")))

        if given(name) == expected:
            return None
        demo, pro = given(DEMO_KEY_HEADER), given(PRO_KEY_HEADER)
        if name == PRO_KEY_HEADER and demo is not None and pro is None:
            kind = "demo_key_on_pro_host_10011"
        elif name == DEMO_KEY_HEADER and pro is not None and demo is None:
            kind = "pro_key_on_public_host_10010_from_test_stub"
        else:
            kind = "missing_api_key_10002"
        status, body, ctype = error_response(kind)
        return _Answer(status, body, ctype)

    def _route(self, request: RecordedRequest) -> _Answer:
        """Dispatch a request to an endpoint."""
        path = request.path.rstrip("/") or "/"
        if request.method != "GET":
            return _json_answer(404, {"error": "Not found"})
        if path == "/ping":
            return _json_answer(200, {"gecko_says": "(V3) To the Moon!"})
        if path == "/coins/markets":
            return self._coins_markets(request.query)
        if path == "/search":
            return self._search(request.query.get("query", ""))
        if path == "/key":
            return self._key()
        parts = path.split("/")
        if len(parts) == 5 and parts[1] == "coins" and parts[3:] == ["market_chart", "range"]:
            return self._market_chart_range(parts[2], request.query)
        if len(parts) == 4 and parts[1] == "coins" and parts[3] == "market_chart":
            return self._market_chart_days(parts[2], request.query)
        return _json_answer(404, {"error": "Not found"})

    def _check_vs_currency(self, query: dict[str, str]) -> _Answer | None:
        """Validate vs_currency like CoinGecko does."""
        vs = query.get("vs_currency", "").strip()
        if not vs:
            return _json_answer(400, {"error": "Missing parameter vs_currency"})
        if vs.lower() not in SUPPORTED_VS_CURRENCIES:
            return _json_answer(400, {"error": "invalid vs_currency"})
        return None

    def _coins_markets(self, query: dict[str, str]) -> _Answer:
        """GET /coins/markets: filter by ids/names/symbols, order, paginate."""
        problem = self._check_vs_currency(query)
        if problem is not None:
            return problem
        with self._lock:
            rows = list(self.coins)

        def split_list(key: str) -> list[str]:
            return [item.strip() for item in query.get(key, "").split(",") if item.strip()]

        ids, names, symbols = split_list("ids"), split_list("names"), split_list("symbols")
        if ids:
            wanted = set(ids)
            rows = [row for row in rows if row.get("id") in wanted]
        elif names:
            wanted = {name.lower() for name in names}
            rows = [row for row in rows if str(row.get("name", "")).lower() in wanted]
        elif symbols:
            wanted = {symbol.lower() for symbol in symbols}
            rows = [row for row in rows if str(row.get("symbol", "")).lower() in wanted]
        order = query.get("order", "market_cap_desc")
        orderings: dict[str, tuple[Callable[[dict[str, Any]], Any], bool]] = {
            "market_cap_desc": (_sort_key_desc("market_cap"), False),
            "market_cap_asc": (_sort_key_asc("market_cap"), False),
            "volume_desc": (_sort_key_desc("total_volume"), False),
            "volume_asc": (_sort_key_asc("total_volume"), False),
            "id_asc": (lambda row: str(row.get("id")), False),
            "id_desc": (lambda row: str(row.get("id")), True),
        }
        key, reverse = orderings.get(order, orderings["market_cap_desc"])
        rows = sorted(rows, key=key, reverse=reverse)
        per_page = min(max(_int_param(query.get("per_page"), DEFAULT_PER_PAGE), 1), MAX_PER_PAGE)
        page = max(_int_param(query.get("page"), 1), 1)
        if self.endless_pages and not (ids or names or symbols):
            template = rows[0] if rows else markets_rows(1)[0]
            rows = [
                dict(template, id=f"endless-{page}-{i}", market_cap_rank=(page - 1) * per_page + i + 1)
                for i in range(per_page)
            ]
            return _json_answer(200, rows)
        answer = _json_answer(200, rows[(page - 1) * per_page : page * per_page])
        if not (ids or names or symbols):
            with self._lock:
                hooks = self.page_hooks.pop(page, [])
            for hook in hooks:
                hook()
        return answer

    def _search(self, text: str) -> _Answer:
        """GET /search: suggest coins by substring or a near-miss id."""
        needle = text.strip().lower()
        candidates: dict[str, dict[str, Any]] = {c["id"]: dict(c) for c in KNOWN_COINS}
        with self._lock:
            rows = list(self.coins)
        for row in rows:
            if row.get("id"):
                candidates[row["id"]] = {
                    "id": row["id"],
                    "name": row.get("name") or row["id"],
                    "symbol": str(row.get("symbol") or "").upper(),
                    "market_cap_rank": row.get("market_cap_rank"),
                }
        found: list[tuple[int, int, dict[str, Any]]] = []
        if needle:
            for coin in candidates.values():
                fields = (coin["id"].lower(), coin["name"].lower(), coin["symbol"].lower())
                exact = needle in fields
                close = len(needle) >= 4 and _edit_distance(needle, fields[0]) <= 2
                if exact or close or any(needle in value for value in fields):
                    rank = coin["market_cap_rank"] if coin["market_cap_rank"] is not None else 10**9
                    found.append((0 if exact else 1, rank, coin))
        found.sort(key=lambda item: (item[0], item[1], item[2]["id"]))
        coins = [
            {
                "id": c["id"],
                "name": c["name"],
                "api_symbol": c["id"],
                "symbol": c["symbol"],
                "market_cap_rank": c["market_cap_rank"],
            }
            for _, _, c in found[:25]
        ]
        return _json_answer(200, {"coins": coins, "exchanges": [], "icos": [], "categories": [], "nfts": []})

    def _key(self) -> _Answer:
        """GET /key: usage like the pro /key endpoint."""
        with self._lock:
            used = len(self.requests)
        monthly = 10_000
        return _json_answer(
            200,
            {
                "plan": "Demo" if self.required_key and self.required_key[0].lower() == DEMO_KEY_HEADER else "Other",
                "rate_limit_request_per_minute": self.rate_limit_per_minute or 30,
                "monthly_call_credit": monthly,
                "current_total_monthly_calls": used,
                "current_remaining_monthly_calls": max(monthly - used, 0),
            },
        )

    def _chart_for(self, coin_id: str, query: dict[str, str]) -> tuple[_Answer | None, dict]:
        """Validate a chart request and return its series."""
        problem = self._check_vs_currency(query)
        if problem is not None:
            return problem, {}
        chart = self.market_chart.get(coin_id)
        if chart is None:
            return _json_answer(404, {"error": "coin not found"}), {}
        return None, chart

    def _beyond_history(self, from_s: float) -> _Answer | None:
        """Answer 401/10012 when from_s is older than history_limit_days."""
        if self.history_limit_days is None:
            return None
        if from_s < self.wall_clock() - self.history_limit_days * 86400:
            status, body, ctype = error_response("history_beyond_365_days_10012")
            return _Answer(status, body, ctype)
        return None

    def _market_chart_range(self, coin_id: str, query: dict[str, str]) -> _Answer:
        """GET /coins/{id}/market_chart/range: points within [from, to] (UNIX seconds)."""
        problem, chart = self._chart_for(coin_id, query)
        if problem is not None:
            return problem
        try:
            start, end = float(query["from"]), float(query["to"])
        except KeyError as exc:
            return _json_answer(400, {"error": f"Missing parameter {exc.args[0]}"})
        except ValueError:
            return _json_answer(400, {"error": "invalid from/to"})
        too_old = self._beyond_history(start)
        if too_old is not None:
            return too_old
        return _json_answer(200, _slice_chart(chart, start * 1000, end * 1000))

    def _market_chart_days(self, coin_id: str, query: dict[str, str]) -> _Answer:
        """GET /coins/{id}/market_chart?days=N|max: the last N days up to wall_clock()."""
        problem, chart = self._chart_for(coin_id, query)
        if problem is not None:
            return problem
        days = query.get("days", "")
        now = self.wall_clock()
        if days == "max":
            start = 0.0
        else:
            try:
                start = now - float(days) * 86400
            except ValueError:
                return _json_answer(400, {"error": "Missing parameter days"})
        too_old = self._beyond_history(start)
        if too_old is not None:
            return too_old
        return _json_answer(200, _slice_chart(chart, start * 1000, now * 1000))


def _slice_chart(chart: dict[str, list], start_ms: float, end_ms: float) -> dict[str, list]:
    """Keep the points of each series with start_ms <= timestamp <= end_ms."""
    return {
        name: [list(point) for point in chart.get(name, []) if start_ms <= point[0] <= end_ms]
        for name in ("prices", "market_caps", "total_volumes")
    }


def make_daily_chart(
    start: date,
    days: int,
    base_price: float,
    partial_point_at: datetime | None = None,
    supply: float = 19_500_000.0,
    seed: int = 0,
) -> dict[str, list[list[float]]]:
    """Build a market_chart dict: daily 00:00 UTC points from start, plus an optional partial one."""
    rng = random.Random(seed)
    first = datetime(start.year, start.month, start.day, tzinfo=timezone.utc)
    stamps = [first + timedelta(days=i) for i in range(days)]
    if partial_point_at is not None:
        moment = partial_point_at if partial_point_at.tzinfo else partial_point_at.replace(tzinfo=timezone.utc)
        stamps.append(moment)
    chart: dict[str, list[list[float]]] = {"prices": [], "market_caps": [], "total_volumes": []}
    price = float(base_price)
    for index, stamp in enumerate(stamps):
        if index:
            price *= 1 + rng.uniform(-0.04, 0.04)
        ms = int(round(stamp.timestamp() * 1000))
        cap = price * supply
        chart["prices"].append([ms, price])
        chart["market_caps"].append([ms, cap])
        chart["total_volumes"].append([ms, cap * rng.uniform(0.01, 0.08)])
    return chart


def markets_rows(
    n: int, vs_currency: str = "eur", start: datetime = datetime(2024, 1, 1, 12, 0, tzinfo=timezone.utc), seed: int = 0
) -> list[dict[str, Any]]:
    """Generate n realistic /coins/markets rows (ids coin-0000..., prices 1e5 down to 1e-5)."""
    rng = random.Random(seed)
    width = max(4, len(str(max(n - 1, 0))))
    rows: list[dict[str, Any]] = []
    for index in range(n):
        exponent = 5 - 10 * (index / (n - 1) if n > 1 else 0)
        price = float(f"{10**exponent * rng.uniform(0.8, 1.25):.6g}")
        market_cap = int(1e12 / (1 + index)) - rng.randint(0, 999)
        circulating = market_cap / price
        total_supply = round(circulating * rng.uniform(1.0, 1.5), 2)
        change_pct = round(rng.uniform(-12, 12), 5)
        high, low = price * (1 + abs(change_pct) / 100), price * (1 - abs(change_pct) / 100)
        ath = price * rng.uniform(1.0, 20.0)
        atl = price * rng.uniform(0.001, 1.0)
        updated = start + timedelta(milliseconds=index * 137 + rng.randint(0, 999))
        symbol = f"c{index:0{width}d}"
        rows.append(
            {
                "id": f"coin-{index:0{width}d}",
                "symbol": symbol,
                "name": f"Coin {index:0{width}d}",
                "image": f"https://coin-images.coingecko.com/coins/images/{index + 1}/large/{symbol}.png",
                "current_price": price,
                "market_cap": market_cap,
                "market_cap_rank": index + 1,
                "fully_diluted_valuation": int(total_supply * price),
                "total_volume": int(market_cap * rng.uniform(0.005, 0.1)),
                "high_24h": float(f"{high:.6g}"),
                "low_24h": float(f"{low:.6g}"),
                "price_change_24h": float(f"{price * change_pct / 100:.6g}"),
                "price_change_percentage_24h": change_pct,
                "market_cap_change_24h": round(market_cap * change_pct / 100, 1),
                "market_cap_change_percentage_24h": round(change_pct * rng.uniform(0.95, 1.05), 5),
                "circulating_supply": round(circulating, 2),
                "total_supply": total_supply,
                "max_supply": None if index % 3 else total_supply,
                "ath": float(f"{ath:.6g}"),
                "ath_change_percentage": round((price / ath - 1) * 100, 5),
                "ath_date": format_iso_ms(start - timedelta(days=30 + index % 700)),
                "atl": float(f"{atl:.6g}"),
                "atl_change_percentage": round((price / atl - 1) * 100, 5),
                "atl_date": format_iso_ms(start - timedelta(days=800 + index % 900)),
                "roi": None
                if index % 4
                else {
                    "times": round(rng.uniform(-0.9, 300), 6),
                    "currency": vs_currency.lower(),
                    "percentage": round(rng.uniform(-90, 30000), 6),
                },
                "last_updated": format_iso_ms(updated),
            }
        )
    return rows
