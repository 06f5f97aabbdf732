"""What the Lambda handlers share: the API key from SSM or Secrets Manager, S3 objects, AWS errors in one line.

boto3 is imported inside the functions: the local command line never needs it.
"""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Mapping
from typing import Any

from utils.errors import EXIT_FAILED, EXIT_USAGE, ConfigError
from utils.history.layout import split_s3_url
from utils.redact import RedactFilter

log = logging.getLogger(__name__)

_key_cache: dict[str, str] = {}


def api_key_from_aws(env: Mapping[str, str]) -> str | None:
    """The CoinGecko key from the SSM parameter or the secret the environment names (cached per container)."""
    parameter = env.get("COINGECKO_API_KEY_PARAMETER", "").strip()
    secret = env.get("COINGECKO_API_KEY_SECRET_ID", "").strip()
    source = parameter or secret
    if not source:
        return None
    if source in _key_cache:
        return _key_cache[source]
    # optional package: boto3 and botocore come with requirements-aws.txt, for s3:// only
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        if parameter:
            value = boto3.client("ssm").get_parameter(Name=parameter, WithDecryption=True)["Parameter"]["Value"]
        else:
            value = boto3.client("secretsmanager").get_secret_value(SecretId=secret)["SecretString"]
            if value.lstrip().startswith("{"):
                value = json.loads(value).get("api_key", "")
    except (BotoCoreError, ClientError, ValueError) as exc:
        raise ConfigError(
            f"cannot read the CoinGecko key from {'SSM parameter' if parameter else 'secret'} "
            f"{source}: {type(exc).__name__}; check the name and the function's permissions"
        ) from None
    _key_cache[source] = value.strip()
    return _key_cache[source]


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


def setup_lambda_logging() -> None:
    """One line per event at INFO, every line through the one redaction function (the runtime owns the handler)."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in root.handlers:
        if not any(isinstance(f, RedactFilter) for f in handler.filters):
            handler.addFilter(RedactFilter())
    for name in ("urllib3", "botocore", "boto3", "matplotlib", "PIL"):
        logging.getLogger(name).setLevel(logging.WARNING)


def read_object(location: str, rel: str) -> bytes | None:
    """An object under the function's s3:// data location, or None when it does not exist."""
    # optional package: boto3 and botocore come with requirements-aws.txt, for s3:// only
    import boto3
    from botocore.exceptions import ClientError

    bucket, prefix = split_s3_url(location)
    try:
        return boto3.client("s3").get_object(Bucket=bucket, Key=prefix + rel)["Body"].read()
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
            return None
        raise ConfigError(
            f"cannot read s3://{bucket}/{prefix}{rel}: {exc.response.get('Error', {}).get('Code')}; "
            "check the bucket and the function's permissions"
        ) from None


def write_object(location: str, rel: str, data: bytes) -> None:
    """Store an object under the function's s3:// data location."""
    # optional package: boto3 and botocore come with requirements-aws.txt, for s3:// only
    import boto3

    bucket, prefix = split_s3_url(location)
    boto3.client("s3").put_object(Bucket=bucket, Key=prefix + rel, Body=data)


def gzip_json(value: Any) -> bytes:
    return gzip.compress(json.dumps(value, separators=(",", ":")).encode(), mtime=0)


def gunzip_json(data: bytes | None) -> Any:
    if data is None:
        raise ConfigError("the object named in the event does not exist")
    return json.loads(gzip.decompress(data))
