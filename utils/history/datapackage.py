"""data/datapackage.json: a Frictionless Data Package that describes crypto_data.csv and quality.csv."""

from __future__ import annotations

import json
import logging
import os

from utils.errors import PipelineError
from utils.history.files import atomic_write_bytes, describe_os_error, read_bounded
from utils.history.layout import DataLayout
from utils.history.quality import QUALITY_HEADER, RULES
from utils.history.schema import SOURCE_LEGACY, SOURCE_MARKET_CHART, SOURCE_MARKETS

log = logging.getLogger(__name__)

SURVIVORSHIP = (
    "One row per coin per observation; an observation is stored once. Survivorship-free: rows are never "
    "removed, so a coin CoinGecko stops listing (delisted, dead) keeps its history up to the last day it "
    "was seen, and a coin that comes back continues the same series under the same coin_id. With "
    "`--top all` every listed coin is fetched each day; the top N of a past day is the coins observed "
    "that day ranked by market_cap_rank, delisted ones included. The days a tracked coin was last seen "
    "before delisting are kept in .state/top-members.json (gone)."
)
TIME = {"type": "datetime", "format": "any"}  # ISO 8601 UTC with milliseconds, e.g. 2023-01-08T16:49:40.132Z
# Per column of crypto_data.csv: (frictionless type, unit, meaning).
HISTORY_FIELDS: dict[str, tuple[dict, str, str]] = {
    "name": (
        {"type": "string"},
        "",
        "the coin's name as CoinGecko gives it (a leading ' keeps a spreadsheet from running it as a formula)",
    ),
    "symbol": ({"type": "string"}, "", "the coin's ticker symbol as CoinGecko gives it"),
    "current_price": ({"type": "number"}, "vs_currency per coin", "price of one coin"),
    "market_cap": ({"type": "number"}, "vs_currency", "market capitalisation"),
    "price_change_percentage_24h": ({"type": "number"}, "percent", "price change over the last 24 hours"),
    "circulating_supply": ({"type": "number"}, "coins", "coins in circulation"),
    "last_updated": (TIME, "UTC", "when CoinGecko last updated this coin's data: the observation's time"),
    "fetched_at": (TIME, "UTC", "when this pipeline fetched it (empty for legacy rows)"),
    "coin_id": ({"type": "string"}, "", "CoinGecko API id of the coin"),
    "vs_currency": ({"type": "string"}, "", "quote currency of the prices, caps and volumes (lower case)"),
    "market_cap_rank": ({"type": "integer"}, "", "rank by market cap (1 is the largest)"),
    "total_volume": ({"type": "number"}, "vs_currency", "trading volume over the last 24 hours"),
    "high_24h": ({"type": "number"}, "vs_currency per coin", "highest price over the last 24 hours"),
    "low_24h": ({"type": "number"}, "vs_currency per coin", "lowest price over the last 24 hours"),
    "total_supply": ({"type": "number"}, "coins", "coins in existence"),
    "max_supply": ({"type": "number"}, "coins", "most coins there will ever be"),
    "source": (
        {"type": "string", "constraints": {"enum": [SOURCE_MARKETS, SOURCE_MARKET_CHART, SOURCE_LEGACY]}},
        "",
        "coins_markets: a /coins/markets snapshot; market_chart: a backfilled daily point (00:00 UTC); "
        "legacy: migrated from the original script",
    ),
}
QUALITY_FIELDS: dict[str, tuple[dict, str, str]] = {
    "coin_id": ({"type": "string"}, "", "CoinGecko API id of the observation's coin"),
    "vs_currency": ({"type": "string"}, "", "quote currency of the observation"),
    "last_updated": (TIME, "UTC", "the observation's time (for missing_day: 00:00 UTC of the missing day)"),
    "rule": ({"type": "string", "constraints": {"enum": list(RULES)}}, "", "the quality rule the observation broke"),
    "detail": ({"type": "string"}, "", "what was found, in words"),
    "found_at": (TIME, "UTC", "when the check found it"),
}


def _schema(fields: dict[str, tuple[dict, str, str]], key: list[str]) -> dict:
    out = []
    for name, (kind, unit, meaning) in fields.items():
        field = {"name": name, **kind, "description": meaning + (f" (unit: {unit})" if unit else "")}
        if unit:
            field["unit"] = unit
        out.append(field)
    return {"fields": out, "missingValues": [""], "primaryKey": key}


def history_resource(layout: DataLayout, table_format: str = "csv") -> dict:
    """The history's resource: the CSV file, or the Delta table described column by column."""
    csv_dialect = {"delimiter": ",", "quoteChar": '"', "doubleQuote": True, "header": True}
    schema = _schema(HISTORY_FIELDS, ["coin_id", "vs_currency", "last_updated"])
    if table_format != "delta":
        return {
            "name": "crypto_data",
            "path": layout.csv.name,
            "format": "csv",
            "mediatype": "text/csv",
            "encoding": "utf-8",
            "dialect": csv_dialect,
            "description": SURVIVORSHIP,
            "schema": schema,
        }
    schema["fields"].append(
        {
            "name": "month",
            "type": "string",
            "description": "YYYY-MM (UTC) of last_updated: "
            "a partition column of the Delta table, not in the CSV export",
        }
    )
    return {
        "name": "crypto_data",
        "path": layout.table.name,
        "format": "delta",
        "mediatype": "application/vnd.delta-lake",
        "description": SURVIVORSHIP + " Stored as a Delta Lake table (a folder of Parquet files and its "
        "_delta_log/), partitioned by vs_currency and month. Frictionless tools do not read "
        "Delta tables: this schema describes its columns (timestamps are UTC timestamps, numbers "
        "float64, market_cap_rank a nullable int64; nulls are nulls). `python main.py export "
        "--out FILE` writes it as CSV in the CSV store's layout, or as Parquet.",
        "schema": schema,
    }


def describe(layout: DataLayout, table_format: str = "csv") -> dict:
    """The package descriptor: both files, every column with type, unit and meaning, keys, nulls, source, licence."""
    csv_dialect = {"delimiter": ",", "quoteChar": '"', "doubleQuote": True, "header": True}
    return {
        "name": "crypto-market-history",
        "title": "Crypto market history",
        "description": "A daily history of cryptocurrency prices, market caps, volumes and supply from the "
        "CoinGecko API, kept by this pipeline, and the quality findings about it. An empty cell is "
        "null (never 0). Times are UTC, ISO 8601.",
        "sources": [{"title": "CoinGecko API", "path": "https://www.coingecko.com/en/api"}],
        "licenses": [
            {
                "name": "CoinGecko-API-Terms",
                "title": "Data provided by CoinGecko; use is subject to CoinGecko's API terms",
                "path": "https://www.coingecko.com/en/api_terms",
            }
        ],
        "resources": [
            history_resource(layout, table_format),
            {
                "name": "quality",
                "path": layout.quality.name,
                "format": "csv",
                "mediatype": "text/csv",
                "encoding": "utf-8",
                "dialect": csv_dialect,
                "description": "Quality findings: one row per observation and rule it broke; rows are never changed "
                "or dropped.",
                "schema": _schema(QUALITY_FIELDS, ["coin_id", "vs_currency", "last_updated", "rule"]),
            },
        ],
    }


def package_bytes(layout: DataLayout, table_format: str = "csv") -> bytes:
    """datapackage.json's content."""
    return (json.dumps(describe(layout, table_format), indent=2) + "\n").encode("utf-8")


def write_datapackage(layout: DataLayout, table_format: str = "csv") -> str | None:
    """Write datapackage.json (and an empty quality.csv it names) when missing or out of date; never fatal.

    Returns None, or what was not written and why (the caller's run is then partial)."""
    data = package_bytes(layout, table_format)
    try:
        if not os.path.lexists(layout.quality):
            atomic_write_bytes(layout.quality, QUALITY_HEADER.encode("utf-8"), "quality findings")
        if read_bounded(layout.datapackage, len(data) + 1, "data package") != data:
            atomic_write_bytes(layout.datapackage, data, "data package")
    except (OSError, PipelineError) as exc:
        why = describe_os_error(exc, layout.datapackage, "write") if isinstance(exc, OSError) else str(exc)
        log.warning("could not write %s: %s", layout.datapackage.name, why)
        return f"{layout.datapackage.name} ({why})"
    return None
