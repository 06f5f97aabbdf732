"""Notifications: a local webhook receiver gets one JSON POST for a failure, new findings and a recovery."""

from __future__ import annotations

import json
import threading
import unittest
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.fake_coingecko import load_fixture, markets_rows
from tests.support import PipelineTestCase, make_stale

SECRET = "CG-n0tify-s3cret-KEY-42"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def doc(self) -> dict:
        return json.loads(self.body)


class Receiver:
    """A webhook on 127.0.0.1:0 that records every request and answers with `status` (and `headers`)."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.status = 200
        self.headers: dict[str, str] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                receiver.received.append(Received(self.path, dict(self.headers), self.rfile.read(length)))
                self.send_response(receiver.status)
                for name, value in receiver.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T000/B000/XXXX"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Notifications(PipelineTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.hook = Receiver()
        self.addCleanup(self.hook.stop)
        self.env.update(
            {"PIPELINE_NOTIFY_URL": self.hook.url, "COINGECKO_API_KEY": SECRET, "PIPELINE_MAX_RETRY_WAIT": "0"}
        )
        self.fresh_coins()

    def fresh_coins(self) -> None:
        """Coins updated minutes ago, so a run has no quality finding."""
        self.fake.set_coins(markets_rows(3, start=datetime.now(timezone.utc) - timedelta(minutes=5)))
        self.env["PIPELINE_COINS"] = ",".join(r["id"] for r in self.fake.coins)

    def fail_next_run(self) -> None:
        self.fake.set_coins([])  # no usable rows: the run fails and appends nothing

    def events(self) -> list[str]:
        return [r.doc["event"] for r in self.hook.received]

    def test_failure_then_recovery_one_post_each(self) -> None:
        self.assertEqual(self.run_main().code, 0)
        self.assertEqual(self.hook.received, [])  # a clean run says nothing by default
        self.fail_next_run()
        self.assertEqual(self.run_main().code, 1)
        self.assertEqual(self.run_main().code, 1)
        self.fresh_coins()
        self.assertEqual(self.run_main().code, 0)
        self.assertEqual(self.events(), ["failure", "failure", "recovery"])
        failure, recovery = self.hook.received[0].doc, self.hook.received[2].doc
        self.assertEqual((failure["result"], failure["exit_code"]), ("failed", 1))
        self.assertTrue(failure["text"].startswith("crypto-history: run failed\nrun failed: no usable rows"))
        self.assertEqual(failure["text"], failure["content"])
        self.assertEqual(recovery["title"], "crypto-history: ok again after 2 failures")
        self.assertEqual(recovery["failures_before"], 2)
        self.assertEqual(self.hook.received[0].path, "/hooks/T000/B000/XXXX")
        self.assertEqual(self.hook.received[0].headers["Content-Type"], "application/json")

    def test_new_findings_are_sent_once(self) -> None:
        self.env["PIPELINE_COINS"] = "bitcoin,ethereum"
        self.fake.set_coins(load_fixture("coins_markets_2023-01-08_real_10coins.json"))
        make_stale(self.fake, "bitcoin")  # three days behind ethereum in the same answer
        first = self.run_main()
        self.assertEqual(first.code, 0, first.stderr)
        self.assertEqual(self.run_main().code, 0)  # the same findings again: nothing new, nothing sent
        self.assertEqual(self.events(), ["findings"])
        doc = self.hook.received[0].doc
        self.assertEqual(doc["findings"], {"stale": 1})
        self.assertIn("quality: 1 finding (1 stale)", doc["text"])
        self.assertIn("- bitcoin eur 2023-01-05T16:49:40.132Z stale: last updated", doc["text"])

    def test_the_key_is_in_no_request_to_the_webhook(self) -> None:
        self.fail_next_run()
        self.run_main("--api-key", SECRET, "--api-plan", "demo")
        self.fresh_coins()
        self.run_main("--notify-on", "always")
        self.assertEqual(len(self.hook.received), 2)
        for request in self.hook.received:
            self.assertNotIn(SECRET.encode(), request.body)
            self.assertNotIn(SECRET, json.dumps(request.headers))
            self.assertNotIn("x-cg-demo-api-key", {k.lower() for k in request.headers})

    def test_a_500_from_the_webhook_is_a_warning_and_the_run_stands(self) -> None:
        self.hook.status = 500
        self.fail_next_run()
        result = self.run_main()
        self.assertEqual(result.code, 1)
        self.assertIn(
            "warning: could not send the failure notification to 127.0.0.1: it answered HTTP 500; "
            "the run's result stands",
            result.stderr,
        )
        self.assertNotIn("/hooks/T000", result.stderr)  # a webhook's path is its secret
        self.fresh_coins()
        ok = self.run_main()
        self.assertEqual(ok.code, 0, ok.stderr)
        self.assertIn("could not send the recovery notification", ok.stderr)

    def test_a_redirect_is_not_followed(self) -> None:
        self.hook.status, self.hook.headers = 302, {"Location": "http://127.0.0.1:9/elsewhere"}
        result = self.run_main("--notify-on", "always")
        self.assertEqual(result.code, 0, result.stderr)
        self.assertEqual(len(self.hook.received), 1)
        self.assertIn("a redirect to http://127.0.0.1:9/elsewhere, which is not followed", result.stderr)

    def test_an_unreachable_webhook_is_a_warning(self) -> None:
        self.fail_next_run()
        result = self.run_main("--notify-url", "http://127.0.0.1:9/hook")
        self.assertEqual(result.code, 1)
        self.assertIn("warning: could not send the failure notification to 127.0.0.1: cannot reach it", result.stderr)

    def test_notify_on_failure_only_skips_findings(self) -> None:
        self.fake.set_coins(load_fixture("coins_markets_2023-01-08_real_10coins.json"))
        self.env["PIPELINE_COINS"] = "bitcoin"
        self.run_main("--notify-on", "failure")
        self.assertEqual(self.hook.received, [])
        self.assertEqual(self.run_main("--notify-on", "sometimes").code, 2)
        self.assertEqual(self.run_main("--notify-url", "ftp://example.org/x").code, 2)

    def test_ntfy_topic_from_the_fragment(self) -> None:
        self.fail_next_run()
        self.run_main("--notify-url", self.hook.url.split("/hooks")[0] + "/#crypto-alerts")
        request = self.hook.received[0]
        self.assertEqual(request.path, "/")
        self.assertEqual(request.doc["topic"], "crypto-alerts")
        self.assertIn("run failed", request.doc["message"])


if __name__ == "__main__":
    unittest.main()
