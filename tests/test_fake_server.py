"""Tests proving that the fake CoinGecko server behaves as documented."""

from __future__ import annotations

import json
import re
import threading
import time
import unittest
from datetime import date, datetime, timezone
from typing import Any

import requests

try:
    from tests.fake_coingecko import FakeCoinGecko, Fault, error_kinds, load_fixture, make_daily_chart, markets_rows
except ModuleNotFoundError:  # run as a top-level module, e.g. unittest discover -s tests
    from fake_coingecko import FakeCoinGecko, Fault, error_kinds, load_fixture, make_daily_chart, markets_rows  # type: ignore[no-redef]

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
TIMEOUT = 5.0


class FakeClock:
    """A hand-driven monotonic clock."""

    def __init__(self, start: float = 1000.0) -> None:
        """Start at the given time."""
        self.now = start

    def __call__(self) -> float:
        """Return the current fake time."""
        return self.now


class FakeServerTestCase(unittest.TestCase):
    """Base class: one running fake and one requests.Session per test."""

    def setUp(self) -> None:
        """Start a fake with the default fixture rows."""
        self.fake = FakeCoinGecko().start()
        self.addCleanup(self.fake.stop)
        self.session = requests.Session()
        self.addCleanup(self.session.close)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        """GET base_url + path with a default timeout."""
        kwargs.setdefault("timeout", TIMEOUT)
        return self.session.get(self.fake.base_url + path, **kwargs)

    def markets(self, headers: dict[str, str] | None = None, **params: Any) -> requests.Response:
        """GET /coins/markets with vs_currency=usd unless given."""
        params.setdefault("vs_currency", "usd")
        return self.get("/coins/markets", params=params, headers=headers)


class BasicsTest(FakeServerTestCase):
    """Ping, headers, keep-alive, 404s and request recording."""

    def test_ping_headers_and_keep_alive(self) -> None:
        """Ping answers JSON with server and content-length headers on one reused connection."""
        first, second = self.get("/ping"), self.get("/ping")
        self.assertEqual(first.json(), {"gecko_says": "(V3) To the Moon!"})
        self.assertEqual(first.headers["server"], "fake-coingecko")
        self.assertEqual(first.headers["content-type"], "application/json")
        self.assertEqual(int(first.headers["content-length"]), len(first.content))
        self.assertEqual(second.status_code, 200)
        ports = {r.client_port for r in self.fake.requests_to("/ping")}
        self.assertEqual(len(ports), 1, "requests.Session should reuse the connection")
        self.assertTrue(self.fake.base_url.startswith("http://127.0.0.1:"))
        self.assertTrue(self.fake.base_url.endswith("/api/v3"))

    def test_unknown_paths_are_404(self) -> None:
        """Unknown endpoints and paths outside /api/v3 answer 404 JSON."""
        self.assertEqual(self.get("/nope").status_code, 404)
        self.assertEqual(self.get("/nope").json(), {"error": "Not found"})
        outside = self.session.get(self.fake.base_url.replace("/api/v3", "/ping"), timeout=TIMEOUT)
        self.assertEqual(outside.status_code, 404)
        self.assertEqual(outside.headers["server"], "fake-coingecko")

    def test_requests_are_recorded(self) -> None:
        """Method, path, query, lower-cased headers and raw path are recorded."""
        self.markets(ids="bitcoin", per_page="5", headers={"X-Cg-Demo-Api-Key": "k1"})
        recorded = self.fake.requests_to("/coins/markets")
        self.assertEqual(len(recorded), 1)
        request = recorded[0]
        self.assertEqual(request.method, "GET")
        self.assertEqual(request.query, {"ids": "bitcoin", "per_page": "5", "vs_currency": "usd"})
        self.assertEqual(request.headers["x-cg-demo-api-key"], "k1")
        self.assertTrue(request.raw_path.startswith("/api/v3/coins/markets?"))
        self.assertEqual(self.fake.requests_to("/ping"), [])

    def test_key_endpoint(self) -> None:
        """GET /key reports plan, per-minute limit and monthly credits."""
        body = self.get("/key").json()
        for name in (
            "plan",
            "rate_limit_request_per_minute",
            "monthly_call_credit",
            "current_total_monthly_calls",
            "current_remaining_monthly_calls",
        ):
            self.assertIn(name, body)

    def test_default_rows_are_the_real_fixture(self) -> None:
        """Without coins the fake serves the real 10-coin fixture."""
        self.assertEqual(self.fake.coins, load_fixture("coins_markets_2023-01-08_real_10coins.json"))


class CoinsMarketsTest(FakeServerTestCase):
    """/coins/markets filtering, ordering, paging and validation."""

    def test_ids_filter_orders_by_market_cap_and_drops_unknown(self) -> None:
        """Rows come back in market-cap order; unknown ids are silently left out."""
        response = self.markets(ids="shiba-inu,bitcoin,no-such-coin,ethereum")
        self.assertEqual(response.status_code, 200)
        self.assertEqual(response.headers["content-type"], "application/json")
        self.assertEqual([row["id"] for row in response.json()], ["bitcoin", "ethereum", "shiba-inu"])
        self.assertEqual(self.markets(ids="no-such-coin").json(), [])

    def test_exponent_floats_survive(self) -> None:
        """Tiny prices keep their exponent form on the wire."""
        self.assertIn('"current_price":8.45e-06', self.markets(ids="shiba-inu").text)

    def test_paging_with_ids(self) -> None:
        """per_page and page apply even when ids are given."""
        ids = "bitcoin,ethereum,tether,binancecoin,ripple"
        page1 = [r["id"] for r in self.markets(ids=ids, per_page=2, page=1).json()]
        page3 = [r["id"] for r in self.markets(ids=ids, per_page=2, page=3).json()]
        self.assertEqual(page1, ["bitcoin", "ethereum"])
        self.assertEqual(page3, ["ripple"])
        self.assertEqual(self.markets(ids=ids, per_page=2, page=4).json(), [])

    def test_paging_without_ids_and_cap_at_250(self) -> None:
        """Without ids all rows are paged: default 100 per page, at most 250."""
        self.fake.set_coins(markets_rows(300))
        self.assertEqual(len(self.markets().json()), 100)
        self.assertEqual(len(self.markets(per_page=1000).json()), 250)
        last = self.markets(per_page=250, page=2).json()
        self.assertEqual([r["id"] for r in last][-1], "coin-0299")
        self.assertEqual(len(last), 50)

    def test_null_market_cap_sorted_last(self) -> None:
        """A row with null market_cap comes after all others."""
        rows = load_fixture("coins_markets_null_heavy_coin_2026.json") + self.fake.coins[:2]
        self.fake.set_coins(rows)
        self.assertEqual([r["id"] for r in self.markets().json()], ["bitcoin", "ethereum", "atlas-2"])

    def test_vs_currency_validation(self) -> None:
        """Missing or unsupported vs_currency answers 400 with CoinGecko's error shape."""
        missing = self.get("/coins/markets", params={"ids": "bitcoin"})
        self.assertEqual((missing.status_code, missing.json()), (400, {"error": "Missing parameter vs_currency"}))
        invalid = self.markets(vs_currency="usdt")
        self.assertEqual((invalid.status_code, invalid.json()), (400, {"error": "invalid vs_currency"}))
        self.assertEqual(self.markets(vs_currency="eur").status_code, 200)

    def test_coins_can_be_replaced_and_advanced(self) -> None:
        """advance() moves last_updated and prices; nulls stay null."""
        null_row = load_fixture("coins_markets_null_heavy_coin_2026.json")[0]
        self.fake.set_coins(self.fake.coins[:1] + [null_row])
        before = self.markets(ids="bitcoin").json()[0]
        self.fake.advance(seconds=60, price_factor=1.5)
        after = self.markets(ids="bitcoin,atlas-2").json()
        self.assertEqual(before["last_updated"], "2023-01-08T16:49:40.132Z")
        self.assertEqual(after[0]["last_updated"], "2023-01-08T16:50:40.132Z")
        self.assertAlmostEqual(after[0]["current_price"], before["current_price"] * 1.5)
        self.assertIsNone(after[1]["last_updated"])
        self.assertIsNone(after[1]["current_price"])
        self.fake.advance(seconds=0.5)
        self.assertEqual(self.fake.coins[0]["last_updated"], "2023-01-08T16:50:40.632Z")


class HelpersTest(unittest.TestCase):
    """markets_rows, make_daily_chart and load_fixture."""

    def test_markets_rows(self) -> None:
        """Synthetic rows are complete, ranked, spread over 1e-5..1e5 and stamped in ISO ms."""
        rows = markets_rows(50, vs_currency="eur")
        self.assertEqual(len({r["id"] for r in rows}), 50)
        self.assertEqual(rows[0]["id"], "coin-0000")
        self.assertEqual(set(rows[0]), set(load_fixture("coins_markets_2023-01-08_real_10coins.json")[0]))
        prices = [r["current_price"] for r in rows]
        self.assertGreater(max(prices), 5e4)
        self.assertLess(min(prices), 2e-5)
        caps = [r["market_cap"] for r in rows]
        self.assertEqual(caps, sorted(caps, reverse=True))
        self.assertTrue(all(ISO_MS.match(r["last_updated"]) for r in rows))
        self.assertEqual(json.loads(json.dumps(rows)), rows)
        self.assertEqual(markets_rows(3), markets_rows(3))

    def test_make_daily_chart(self) -> None:
        """Daily points sit at 00:00 UTC and the partial point comes last."""
        partial = datetime(2024, 1, 4, 13, 5, 7, tzinfo=timezone.utc)
        chart = make_daily_chart(date(2024, 1, 1), 3, 42000.0, partial_point_at=partial)
        stamps = [point[0] for point in chart["prices"]]
        self.assertEqual(stamps[:3], [1704067200000, 1704153600000, 1704240000000])
        self.assertEqual(stamps[3], int(partial.timestamp() * 1000))
        self.assertEqual(chart["prices"][0][1], 42000.0)
        self.assertEqual([p[0] for p in chart["total_volumes"]], stamps)
        self.assertEqual([p[0] for p in chart["market_caps"]], stamps)


class MarketChartAndSearchTest(FakeServerTestCase):
    """/coins/{id}/market_chart/range and /search."""

    def test_range_filters_points(self) -> None:
        """Only points within [from, to] come back; unknown ids answer 404."""
        self.fake.market_chart["bitcoin"] = make_daily_chart(date(2024, 1, 1), 10, 42000.0)
        params = {"vs_currency": "usd", "from": 1704153600, "to": 1704326400}
        body = self.get("/coins/bitcoin/market_chart/range", params=params).json()
        self.assertEqual([p[0] for p in body["prices"]], [1704153600000, 1704240000000, 1704326400000])
        self.assertEqual(len(body["market_caps"]), 3)
        missing = self.get("/coins/nope/market_chart/range", params=params)
        self.assertEqual((missing.status_code, missing.json()), (404, {"error": "coin not found"}))

    def test_range_history_limit(self) -> None:
        """With history_limit_days set, an older from answers 401 with error 10012."""
        self.fake.market_chart["bitcoin"] = load_fixture("market_chart_daily_5pts_2023-12.json")
        self.fake.wall_clock = lambda: 1703116800.0 + 400 * 86400
        self.fake.history_limit_days = 365
        params = {"vs_currency": "usd", "from": 1702771200, "to": 1703116800}
        response = self.get("/coins/bitcoin/market_chart/range", params=params)
        self.assertEqual(response.status_code, 401)
        self.assertEqual(response.json()["error"]["status"]["error_code"], 10012)
        self.fake.history_limit_days = None
        self.assertEqual(len(self.get("/coins/bitcoin/market_chart/range", params=params).json()["prices"]), 5)

    def test_search_suggests(self) -> None:
        """Search matches substrings case-insensitively and near-miss ids."""

        def ids(query: str) -> list[str]:
            body = self.get("/search", params={"query": query}).json()
            self.assertEqual(body["exchanges"], [])
            return [coin["id"] for coin in body["coins"]]

        self.assertEqual(ids("bitcoinn")[0], "bitcoin")
        self.assertIn("polygon-ecosystem-token", ids("MATIC"))
        self.assertIn("avalanche-2", ids("avax"))
        self.assertEqual(ids("zzzzqqq"), [])


class FaultTest(FakeServerTestCase):
    """Every fault kind, FIFO order and path matching."""

    def test_faults_are_fifo_and_one_shot(self) -> None:
        """Faults answer one request each, in order, then normal service resumes."""
        self.fake.add_fault(Fault.server_error(502), times=2)
        self.fake.add_fault(Fault.status(418, "teapot"))
        self.assertEqual([self.get("/ping").status_code for _ in range(4)], [502, 502, 418, 200])
        self.assertEqual(self.fake.pending_faults, 0)

    def test_fault_path_matching_and_clear(self) -> None:
        """A fault bound to a path waits for that path; clear_faults drops the queue."""
        self.fake.add_fault(Fault.server_error(503), path="/coins/markets")
        self.assertEqual(self.get("/ping").status_code, 200)
        self.assertEqual(self.markets().status_code, 503)
        self.fake.add_fault(Fault.server_error(), path="/coins/*/market_chart/range")
        self.assertEqual(self.get("/coins/x/market_chart/range").status_code, 500)
        self.fake.add_fault(Fault.server_error(), times=3)
        self.fake.clear_faults()
        self.assertEqual(self.get("/ping").status_code, 200)

    def test_status_fault(self) -> None:
        """Fault.status sends the given code, body and headers."""
        self.fake.add_fault(Fault.status(409, {"a": 1}, {"X-Extra": "yes"}))
        response = self.get("/ping")
        self.assertEqual((response.status_code, response.json()), (409, {"a": 1}))
        self.assertEqual(response.headers["x-extra"], "yes")
        self.assertEqual(response.headers["server"], "fake-coingecko")

    def test_rate_limited(self) -> None:
        """429 carries the real body, with or without Retry-After."""
        real_body = load_fixture("error_bodies_captured.json")["rate_limit_429"]["body"]
        self.fake.add_fault(Fault.rate_limited("7"))
        self.fake.add_fault(Fault.rate_limited(None))
        with_header, without = self.get("/ping"), self.get("/ping")
        self.assertEqual((with_header.status_code, with_header.headers["retry-after"]), (429, "7"))
        self.assertEqual(with_header.json(), real_body)
        self.assertEqual(without.status_code, 429)
        self.assertNotIn("retry-after", without.headers)

    def test_rate_limited_reset_headers(self) -> None:
        """The 2025 variant has x-ratelimit-* headers and no Retry-After."""
        self.fake.add_fault(Fault.rate_limited_reset("2025-07-25 14:54:00 +0000"))
        response = self.get("/ping")
        self.assertEqual(response.status_code, 429)
        self.assertEqual(response.headers["x-ratelimit-reset"], "2025-07-25 14:54:00 +0000")
        self.assertEqual(response.headers["x-ratelimit-remaining"], "0")
        self.assertIn("x-ratelimit-limit", response.headers)
        self.assertNotIn("retry-after", response.headers)

    def test_rate_limit_in_200_and_throttled_text(self) -> None:
        """A 200 may carry the 429 body; old 429s were plain text."""
        self.fake.add_fault(Fault.rate_limit_in_200())
        self.fake.add_fault(Fault.throttled_text())
        in_200, text = self.markets(), self.markets()
        self.assertEqual(in_200.status_code, 200)
        self.assertEqual(in_200.json()["status"]["error_code"], 429)
        self.assertEqual((text.status_code, text.text), (429, "Throttled"))

    def test_server_errors(self) -> None:
        """5xx faults answer JSON or Cloudflare's short text."""
        self.fake.add_fault(Fault.server_error())
        self.fake.add_fault(Fault.server_error(502, text=True))
        json_error, text_error = self.get("/ping"), self.get("/ping")
        self.assertEqual(json_error.status_code, 500)
        self.assertEqual(json_error.json()["status"]["error_code"], 500)
        self.assertEqual((text_error.status_code, text_error.text), (502, "error code: 502"))

    def test_html(self) -> None:
        """Cloudflare HTML pages come with text/html, on 403 or even 200."""
        self.fake.add_fault(Fault.html())
        self.fake.add_fault(Fault.html(status=200))
        self.fake.add_fault(Fault.html(status=503, challenge=True))
        denied, ok_html, challenge = self.get("/ping"), self.get("/ping"), self.get("/ping")
        self.assertEqual(denied.status_code, 403)
        self.assertTrue(denied.headers["content-type"].startswith("text/html"))
        self.assertIn("Access denied | api.coingecko.com used Cloudflare", denied.text)
        self.assertEqual(ok_html.status_code, 200)
        self.assertRaises(requests.exceptions.JSONDecodeError, ok_html.json)
        self.assertIn("Just a moment...", challenge.text)

    def test_malformed_and_wrong_shape(self) -> None:
        """Broken JSON fails to parse; wrong_shape is an object where a list belongs."""
        self.fake.add_fault(Fault.malformed_json())
        self.fake.add_fault(Fault.wrong_shape())
        broken, wrong = self.markets(), self.markets()
        self.assertEqual(broken.status_code, 200)
        self.assertEqual(broken.headers["content-type"], "application/json")
        self.assertRaises(requests.exceptions.JSONDecodeError, broken.json)
        self.assertIsInstance(wrong.json(), dict)
        self.assertIsInstance(self.markets().json(), list)

    def test_truncated_json(self) -> None:
        """A body cut short of its Content-Length raises ChunkedEncodingError in requests."""
        self.fake.add_fault(Fault.truncated_json())
        with self.assertRaises(requests.exceptions.ChunkedEncodingError):
            self.markets()
        self.assertEqual(self.markets().status_code, 200)

    def test_stall_read_timeout(self) -> None:
        """A stall longer than the client's read timeout raises ReadTimeout."""
        self.fake.add_fault(Fault.stall(3))
        started = time.monotonic()
        with self.assertRaises(requests.exceptions.ReadTimeout):
            self.get("/ping", timeout=0.5)
        self.assertLess(time.monotonic() - started, 2)
        self.assertEqual(self.get("/ping").status_code, 200)

    def test_short_stall_then_answer(self) -> None:
        """A stall shorter than the timeout still answers normally."""
        self.fake.add_fault(Fault.stall(0.2))
        started = time.monotonic()
        self.assertEqual(self.get("/ping").json(), {"gecko_says": "(V3) To the Moon!"})
        self.assertGreaterEqual(time.monotonic() - started, 0.2)

    def test_reset_connection_error(self) -> None:
        """A reset closes the socket without a response: ConnectionError."""
        self.fake.add_fault(Fault.reset())
        with self.assertRaises(requests.exceptions.ConnectionError):
            self.get("/ping")
        self.assertEqual(self.get("/ping").status_code, 200)

    def test_error_bodies(self) -> None:
        """Every captured error kind answers its status and body."""
        captured = load_fixture("error_bodies_captured.json")
        expected_status = {
            "history_beyond_365_days_10012": 401,
            "unknown_coin_id_404": 404,
            "invalid_vs_currency_400": 400,
            "rate_limit_429": 429,
            "pro_key_on_public_host_10010_from_test_stub": 400,
            "missing_api_key_10002": 401,
            "demo_key_on_pro_host_10011": 400,
        }
        for kind in error_kinds():
            with self.subTest(kind=kind):
                self.fake.add_fault(Fault.error_body(kind))
                response = self.get("/ping")
                if kind in expected_status:
                    self.assertEqual(response.status_code, expected_status[kind])
                if "body" in captured.get(kind, {}):
                    self.assertEqual(response.json(), captured[kind]["body"])
        self.assertRaises(KeyError, Fault.error_body, "no_such_kind")


class RequiredKeyTest(FakeServerTestCase):
    """required_key and CoinGecko's key errors."""

    def test_demo_key(self) -> None:
        """Demo key required: missing 401/10002, pro header 400/10010, right key 200."""
        self.fake.required_key = ("x-cg-demo-api-key", "secret")
        missing = self.get("/ping")
        self.assertEqual(missing.status_code, 401)
        self.assertEqual(missing.json()["status"]["error_code"], 10002)
        self.assertTrue(missing.json()["status"]["error_message"].startswith("API Key Missing."))
        wrong = self.get("/ping", headers={"x-cg-demo-api-key": "nope"})
        self.assertEqual(wrong.status_code, 401)
        pro = self.get("/ping", headers={"x-cg-pro-api-key": "secret"})
        self.assertEqual(pro.status_code, 400)
        self.assertEqual(pro.json()["status"]["error_code"], 10010)
        self.assertEqual(self.get("/ping", headers={"x-cg-demo-api-key": "secret"}).status_code, 200)
        self.assertEqual(self.get("/ping", params={"x_cg_demo_api_key": "secret"}).status_code, 200)

    def test_pro_key(self) -> None:
        """Pro key required: demo header 400/10011 (top-level error_code), right key 200."""
        self.fake.required_key = ("x-cg-pro-api-key", "paid")
        demo = self.get("/coins/markets", headers={"x-cg-demo-api-key": "paid"})
        self.assertEqual(demo.status_code, 400)
        self.assertEqual(demo.json()["error_code"], 10011)
        self.assertIn("api.coingecko.com", demo.json()["status"]["error_message"])
        ok = self.markets(ids="bitcoin", headers={"x-cg-pro-api-key": "paid"})
        self.assertEqual([row["id"] for row in ok.json()], ["bitcoin"])


class RateLimitTest(FakeServerTestCase):
    """The sliding 60 s window with an injected clock."""

    def test_sliding_window(self) -> None:
        """Beyond the limit: 429 with the real body and Retry-After until the window slides."""
        clock = FakeClock()
        self.fake.clock = clock
        self.fake.rate_limit_per_minute = 3
        statuses = []
        for _ in range(3):
            statuses.append(self.get("/ping").status_code)
            clock.now += 10
        self.assertEqual(statuses, [200, 200, 200])
        limited = self.get("/ping")
        self.assertEqual(limited.status_code, 429)
        self.assertEqual(limited.headers["retry-after"], "30")
        self.assertEqual(limited.json()["status"]["error_code"], 429)
        clock.now = 1000.0 + 60
        self.assertEqual(self.get("/ping").status_code, 200)
        self.assertEqual(self.get("/ping").status_code, 429)
        clock.now = 1000.0 + 70
        self.assertEqual(self.get("/ping").status_code, 200)
        self.assertEqual([r.time for r in self.fake.requests][:2], [1000.0, 1010.0])


class ShutdownTest(unittest.TestCase):
    """stop() must not hang on stalled or idle connections."""

    def test_stop_during_stall_is_fast(self) -> None:
        """stop() wakes a stalled handler and closes keep-alive connections quickly."""
        fake = FakeCoinGecko().start()
        fake.add_fault(Fault.stall(30))
        outcome: list[BaseException | int] = []

        def call() -> None:
            try:
                outcome.append(requests.get(fake.base_url + "/ping", timeout=10).status_code)
            except requests.RequestException as exc:
                outcome.append(exc)

        worker = threading.Thread(target=call, daemon=True)
        worker.start()
        deadline = time.monotonic() + 2  # this module tests the fake alone: no tests.support here
        while not fake.stalls_begun and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertTrue(fake.stalls_begun, "the stall never began")
        started = time.monotonic()
        fake.stop()
        worker.join(timeout=3)
        self.assertLess(time.monotonic() - started, 2)
        self.assertFalse(worker.is_alive())
        self.assertIsInstance(outcome[0], requests.exceptions.ConnectionError)

    def test_context_manager(self) -> None:
        """The context manager starts and stops the server."""
        with FakeCoinGecko(coins=markets_rows(3)) as fake:
            body = requests.get(fake.base_url + "/coins/markets", params={"vs_currency": "eur"}, timeout=TIMEOUT).json()
            self.assertEqual([row["id"] for row in body], ["coin-0000", "coin-0001", "coin-0002"])
        self.assertEqual(fake.port, 0)


if __name__ == "__main__":
    unittest.main()
