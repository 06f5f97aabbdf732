"""S3 objects: the one place that reads, writes, lists and deletes objects, and turns S3's errors into one line.

Every S3 object the program touches goes through `S3Objects`: the CSV store's history and its companions
(utils/history/locations.py `S3Storage`), the Delta store's companions, and the Lambda handlers' raw answers
and records (lambdas/). Reads are bounded (an object larger than the caller's limit is refused, not loaded);
writes are single PUTs, which S3 makes visible whole or not at all, optionally conditional (If-Match an ETag,
If-None-Match *) so that two writers never overwrite each other unseen (`Conflict`).

Errors, as the README's fault matrix words them: a missing bucket and a refused key are configuration
errors (exit 2); any other refusal is a failed step (exit 1); botocore's own errors (no credentials, an
unreachable endpoint) reach main.py, which words them with `explain_aws_error`.

boto3 is imported inside the functions: the local command line never needs it. This module reads no
environment itself: `storage_options` is given the environment by its caller (lambdas/wiring.py), and boto3
reads the AWS variables and files.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from utils.errors import EXIT_FAILED, EXIT_USAGE, ConfigError, LoadError, PipelineError
from utils.history.layout import split_s3_url

MAX_OBJECT_BYTES = 2 << 30  # the default read limit: a CSV history object of this size is past what one run loads

MISSING = ("NoSuchKey", "404", "NotFound")
NO_BUCKET = ("NoSuchBucket",)
REFUSED = ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch")
CONFLICT = ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")

# The variables delta-rs needs to find the same S3 as boto3 (a local S3 needs the endpoint and plain HTTP).
STORAGE_VARIABLES = (
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_ALLOW_HTTP",
)


class Conflict(Exception):
    """Another writer changed the object since it was read (a conditional PUT was refused)."""


def error_code(exc: BaseException) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def reason(exc: BaseException) -> str:
    """S3's code and message, e.g. "AccessDenied Access Denied"."""
    error = getattr(exc, "response", {}).get("Error", {})
    return f"{error.get('Code', type(exc).__name__)} {error.get('Message', '')}".strip()


def client_error(exc: BaseException, bucket: str, action: str, consequence: str = "") -> PipelineError:
    """One line for a botocore ClientError: a missing bucket or a refused key is exit 2, anything else exit 1."""
    code = error_code(exc)
    if code in NO_BUCKET or (code in ("404", "NotFound") and not action):
        return ConfigError(f"the bucket {bucket} does not exist: create it or fix --data-dir")
    if code in REFUSED:
        return ConfigError(
            f"S3 refused the credentials for s3://{bucket} ({code}): use a key that may read and write it"
        )
    where = f"cannot {action}" if action else f"cannot use s3://{bucket}"
    return LoadError(f"{where}: {reason(exc)}{consequence}")


def explain_aws_error(exc: BaseException) -> tuple[str, int] | None:
    """One line and an exit code for a botocore error that reached the command line, else None."""
    if not type(exc).__module__.startswith("botocore"):
        return None
    name = type(exc).__name__
    if name in (
        "NoCredentialsError",
        "PartialCredentialsError",
        "NoRegionError",
        "ProfileNotFound",
        "InvalidConfigError",
        "ConfigNotFound",
    ):
        return (
            f"AWS is not configured for the s3:// data folder ({name}: {exc}); set AWS credentials and a "
            "region (AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, and AWS_REGION)"
        ), EXIT_USAGE
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError"):
        return (
            f"cannot reach S3 ({name}: {exc}); check the network, AWS_REGION and any AWS_ENDPOINT_URL, then run again"
        ), EXIT_FAILED
    return f"S3 failed ({name}: {exc}); run again with -v for details", EXIT_FAILED


def storage_options(env: Mapping[str, str]) -> dict[str, str]:
    """delta-rs' S3 options from the environment given (the one boto3 reads), so both find the same S3."""
    options = {name: env[name] for name in STORAGE_VARIABLES if env.get(name)}
    if env.get("AWS_ENDPOINT_URL_S3"):  # boto3's S3-only endpoint comes before AWS_ENDPOINT_URL: the same here
        options["AWS_ENDPOINT_URL"] = env["AWS_ENDPOINT_URL_S3"]
    options.setdefault("AWS_REGION", env.get("AWS_DEFAULT_REGION") or "us-east-1")
    if options.get("AWS_ENDPOINT_URL", "").startswith("http://"):
        options.setdefault("AWS_ALLOW_HTTP", "true")
    return options


def new_client() -> Any:
    """boto3's S3 client, in botocore's "standard" retry mode (3 attempts, AWS's recommended mode) unless the
    user chose a mode (AWS_RETRY_MODE, or retry_mode in the AWS config file, which boto3 then applies). The
    default "legacy" mode makes 5 attempts with exponential back-off: 3.6 s a call here before an endpoint
    that refuses connections is reported, against 0.07 s in standard mode, which still retries throttling."""
    # optional package: boto3 and botocore come with requirements-aws.txt, for s3:// only
    import boto3
    import botocore.session
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError

    try:  # the config file's profile only (no service model is loaded): boto3's own session makes the client
        chosen = os.environ.get("AWS_RETRY_MODE") or botocore.session.get_session().get_scoped_config().get(
            "retry_mode"
        )
    except BotoCoreError:  # e.g. an AWS_PROFILE that is not there: the client below reports it in its words
        chosen = None
    if chosen:
        return boto3.client("s3")
    return boto3.client("s3", config=Config(retries={"mode": "standard"}))


class S3Objects:
    """The objects under s3://bucket/prefix, by their path relative to the prefix."""

    def __init__(self, url: str, client: Any = None) -> None:
        self.bucket, self.prefix = split_s3_url(url)
        self.location = url.rstrip("/")
        self._client = client

    @property
    def client(self) -> Any:
        """boto3's S3 client, made on first use: importing boto3 and loading its models costs about 0.7 s of CPU,
        which a reader of the Delta table (status, top, plot), whose table opens through delta-rs, never pays."""
        if self._client is None:
            self._client = new_client()
        return self._client

    def key(self, rel: str) -> str:
        return self.prefix + rel

    def url(self, rel: str) -> str:
        return f"s3://{self.bucket}/{self.key(rel)}"

    def get(self, rel: str, *, limit: int = MAX_OBJECT_BYTES) -> tuple[bytes | None, str | None]:
        """The object's bytes and ETag, or (None, None) when it does not exist; refused when over `limit` bytes."""
        # optional package: boto3 and botocore come with requirements-aws.txt, for s3:// only
        from botocore.exceptions import ClientError

        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.key(rel))
        except ClientError as exc:
            if error_code(exc) in MISSING:
                return None, None
            raise client_error(exc, self.bucket, f"read {self.url(rel)}") from None
        body = answer["Body"]
        try:
            size = int(answer.get("ContentLength") or 0)
            if size > limit:
                raise LoadError(self._too_big(rel, size, limit))
            data = body.read(limit + 1)
        finally:
            body.close()
        if len(data) > limit:
            raise LoadError(self._too_big(rel, len(data), limit))
        return data, answer.get("ETag")

    def _too_big(self, rel: str, size: int, limit: int) -> str:
        return (
            f"{self.url(rel)} is {size:,} bytes, more than the {limit:,} this program reads at once; "
            "it is not one of ours: move it away"
        )

    def read(self, rel: str, *, limit: int = MAX_OBJECT_BYTES) -> bytes | None:
        """The object's bytes, or None when it does not exist."""
        return self.get(rel, limit=limit)[0]

    def head(self, rel: str, size: int = 65536) -> bytes:
        """The first bytes of an object (its header line), or b"" when it does not exist or cannot be read."""
        # optional package: boto3 and botocore come with requirements-aws.txt, for s3:// only
        from botocore.exceptions import ClientError

        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.key(rel), Range=f"bytes=0-{size - 1}")
        except ClientError:
            return b""
        body = answer["Body"]
        try:
            return body.read(size)
        finally:
            body.close()

    def stream(self, rel: str) -> Any:
        """The object's body as a file-like stream, for readers that go through it in bounded chunks."""
        # optional package: boto3 and botocore come with requirements-aws.txt, for s3:// only
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.key(rel))["Body"]
        except ClientError as exc:
            raise client_error(exc, self.bucket, f"read {self.url(rel)}") from None

    def put(
        self,
        rel: str,
        data: bytes,
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
        content_type: str = "application/octet-stream",
        consequence: str = "",
    ) -> str:
        """Write an object whole (one PUT), optionally only if unchanged (If-Match) or absent (If-None-Match).

        Returns the new ETag; raises Conflict when the condition fails."""
        # optional package: boto3 and botocore come with requirements-aws.txt, for s3:// only
        from botocore.exceptions import ClientError

        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self.key(rel), "Body": data, "ContentType": content_type}
        if if_match:
            args["IfMatch"] = if_match
        elif if_none_match:
            args["IfNoneMatch"] = "*"
        try:
            return str(self.client.put_object(**args).get("ETag", ""))
        except ClientError as exc:
            if error_code(exc) in CONFLICT:
                raise Conflict(error_code(exc)) from None
            raise client_error(exc, self.bucket, f"write {self.url(rel)}", consequence) from None

    def list(self, rel_prefix: str = "", *, limit: int | None = None) -> list[str]:
        """The paths (relative to the prefix) of the objects under rel_prefix, in key order; at most `limit`."""
        # optional package: boto3 and botocore come with requirements-aws.txt, for s3:// only
        from botocore.exceptions import ClientError

        found: list[str] = []
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.key(rel_prefix)}
        try:
            while True:
                if limit is not None:
                    args["MaxKeys"] = min(1000, limit - len(found))
                answer = self.client.list_objects_v2(**args)
                found += [o["Key"][len(self.prefix) :] for o in answer.get("Contents", [])]
                if not answer.get("IsTruncated") or (limit is not None and len(found) >= limit):
                    return found
                args["ContinuationToken"] = answer["NextContinuationToken"]
        except ClientError as exc:
            raise client_error(exc, self.bucket, f"list {self.url(rel_prefix)}") from None

    def delete(self, rel: str) -> None:
        """Delete an object (deleting one that does not exist is no error)."""
        # optional package: boto3 and botocore come with requirements-aws.txt, for s3:// only
        from botocore.exceptions import ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key(rel))
        except ClientError as exc:
            raise client_error(exc, self.bucket, f"delete {self.url(rel)}") from None

    def check_bucket(self) -> None:
        """The bucket exists and the key may use it: one line, exit 2, before any other request. Raises ConfigError."""
        # optional package: boto3 and botocore come with requirements-aws.txt, for s3:// only
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            known = client_error(exc, self.bucket, "")
            raise (known if isinstance(known, ConfigError) else ConfigError(str(known))) from None


def read_object(location: str, rel: str, *, limit: int = MAX_OBJECT_BYTES) -> bytes | None:
    """An object under an s3:// data location, or None when it does not exist (the Lambda handlers' reads)."""
    return S3Objects(location).read(rel, limit=limit)


def write_object(location: str, rel: str, data: bytes) -> None:
    """Store an object under an s3:// data location (the Lambda handlers' writes)."""
    S3Objects(location).put(rel, data)
