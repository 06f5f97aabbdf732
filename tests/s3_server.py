"""A local S3: moto in server mode on a loopback port (a real HTTP server in its own process), for tests and benches.

Child processes reach it through the standard AWS variables (AWS_ENDPOINT_URL, which boto3 and
delta-rs both read, and AWS_ALLOW_HTTP for delta-rs), so the code under test takes its ordinary
HTTP path, conditional writes included. Nothing is patched in the process under test.
"""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
import time
import uuid
from typing import Any

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _die_with_parent() -> None:
    """In the server's process: end it when the test or bench that started it dies, even by SIGKILL."""
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class LocalS3:
    """moto's S3 server in a process of its own, on 127.0.0.1:<free port>, with one bucket of its own.

    A process, not a thread of the caller: a benchmark measures the peak RSS of the commands it starts
    (ru_maxrss survives fork and exec, so a caller holding the server's objects would inflate it), and a
    killed or stopped server leaves no state behind in the caller. The bucket's name is new each time."""

    def __init__(self, bucket: str = "crypto-history-test") -> None:
        self.bucket = f"{bucket}-{uuid.uuid4().hex[:12]}"
        self.proc: subprocess.Popen | None = None
        self.endpoint = ""

    def start(self) -> LocalS3:
        for _ in range(5):  # a free port may be taken between asking for it and the server binding it
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
            self.endpoint = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        break
                except OSError:
                    time.sleep(0.05)
            if self.proc.poll() is None:
                self.client().create_bucket(Bucket=self.bucket)
                return self
        raise RuntimeError("could not start moto's S3 server")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def new_bucket(self, name: str = "crypto-history-test") -> LocalS3:
        """This server with a bucket of its own, new: tests that share one server stay apart."""
        other = copy.copy(self)
        other.bucket = f"{name}-{uuid.uuid4().hex[:12]}"
        other.client().create_bucket(Bucket=other.bucket)
        return other

    def __enter__(self) -> LocalS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def env(self) -> dict[str, str]:
        """What a child process needs to use this server as its S3."""
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint, "AWS_ALLOW_HTTP": "true"}

    def storage_options(self) -> dict[str, str]:
        """deltalake's storage_options for this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        }

    def url(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}"

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def keys(self, prefix: str) -> dict[str, int]:
        """Every object under prefix, with its size in bytes."""
        out: dict[str, int] = {}
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                out[item["Key"]] = item["Size"]
        return out

    def get(self, key: str) -> bytes:
        return self.client().get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def put(self, key: str, data: bytes) -> None:
        self.client().put_object(Bucket=self.bucket, Key=key, Body=data)


def child_env(s3: LocalS3, base: dict[str, str] | None = None) -> dict[str, str]:
    """os.environ (or base) with the local S3's variables, and no real AWS profile to fall back on."""
    env = dict(os.environ if base is None else base)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        env.pop(name, None)
    env.update(s3.env)
    return env
