"""What the Lambda handlers share: the API key from SSM or Secrets Manager, their logging, gzip JSON (S3 objects: utils/s3.py).

boto3 is imported inside the functions: the local command line never needs it.
"""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Mapping
from typing import Any

from utils.errors import ConfigError
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


def setup_lambda_logging() -> None:
    """One line per event at INFO, every line through the one redaction function (the runtime owns the handler)."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in root.handlers:
        if not any(isinstance(f, RedactFilter) for f in handler.filters):
            handler.addFilter(RedactFilter())
    for name in ("urllib3", "botocore", "boto3", "matplotlib", "PIL"):
        logging.getLogger(name).setLevel(logging.WARNING)


def gzip_json(value: Any) -> bytes:
    return gzip.compress(json.dumps(value, separators=(",", ":")).encode(), mtime=0)


def gunzip_json(data: bytes | None) -> Any:
    if data is None:
        raise ConfigError("the object named in the event does not exist")
    return json.loads(gzip.decompress(data))
