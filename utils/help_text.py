"""What --help says about the program and each command: the description, and the exit codes each command returns."""

from __future__ import annotations

DESCRIPTION = "Keep a daily CSV history of CoinGecko market data (prices, market caps, supply) and chart it."
ATTRIBUTION = "Data provided by CoinGecko (https://www.coingecko.com)."
EPILOG = (
    "exit codes: 0 success; 1 the run failed and nothing was appended; 2 bad usage or configuration; "
    "3 partial: some coins were missing or rejected, or one of several currencies failed; the rest was "
    "appended. " + ATTRIBUTION
)
CHECK_EPILOG = (
    "exit codes: 0 every check passed; 1 a check failed (connectivity, key or plan, an unknown coin "
    "id); 2 bad usage or configuration. " + ATTRIBUTION
)
PLOT_EPILOG = (
    "exit codes: 0 the charts were drawn; 1 no history yet, or no data in the chosen currency or days; "
    "2 bad usage or configuration, or --plot-coins matches no coin. " + ATTRIBUTION
)
TOP_EPILOG = (
    "exit codes: 0 the list was printed; 1 no observation in that currency on that day; "
    "2 bad usage or configuration. " + ATTRIBUTION
)
STATUS_EPILOG = (
    "exit codes: 0 the status was shown; 1 neither a history nor a recorded run yet; "
    "2 bad usage or configuration. " + ATTRIBUTION
)
EXPORT_EPILOG = (
    "exit codes: 0 the file was written (an empty history gives the header alone); 1 the history could "
    "not be read or the file not written (nothing is left at --out); 2 bad usage or configuration, "
    "a bad --out path. " + ATTRIBUTION
)
QUALITY_EPILOG = "exit codes: 0 the findings were listed (none is fine); 2 bad usage or configuration. " + ATTRIBUTION
REPORT_EPILOG = "exit codes: 0 the report was written; 1 no history yet; 2 bad usage or configuration. " + ATTRIBUTION
TOP_DESCRIPTION = (
    DESCRIPTION + " Without a command it runs the pipeline once, as `python main.py run` does, "
    "with run's options, listed below. -v, -q, --data-dir, --config and --log-file may also come "
    "before any command (`python main.py -q plot`). Each command lists its own options: "
    "`python main.py COMMAND --help`."
)


# Each command's line in the top-level help, its description and its epilog (exit codes).
SUBCOMMANDS = {
    "run": (
        "run the pipeline once (the default command)",
        "Fetch the coins once, append new rows to the CSV history, draw the charts.",
        EPILOG,
    ),
    "daemon": (
        "stay running and run the pipeline every day",
        "Run the pipeline every day at --at in --timezone, retry failures the same day, stop cleanly on "
        "SIGTERM or Ctrl-C.",
        EPILOG,
    ),
    "backfill": (
        "fill the history with past daily points",
        "Fetch daily points (00:00 UTC) for past days from /coins/{id}/market_chart/range, one request per "
        "coin, merge them into the history, then redraw the charts. Resumes where an interrupted backfill "
        "stopped. The range is complete UTC days, by default the last 365.",
        EPILOG,
    ),
    "status": (
        "show the last run, the next run and the history's coverage",
        "Show the last run and its result, the next scheduled run, and the history: rows, coins, first and "
        "last observation, days missing.",
        STATUS_EPILOG,
    ),
    "check": (
        "check connectivity, the API key and plan, and the coin ids",
        "Check /ping, the key and plan, and that CoinGecko knows every coin id.",
        CHECK_EPILOG,
    ),
    "top": (
        "print the top N coins by market cap on a past day",
        "Print the top N coins by market cap as this history recorded them on one UTC day: rank, id, symbol and "
        "market cap from each coin's last observation of that day, in the first --vs-currency. Reads the index, "
        "not the CSV.",
        TOP_EPILOG,
    ),
    "plot": (
        "draw the charts from the history",
        "Draw the price, market-cap and performance charts from the CSV history.",
        PLOT_EPILOG,
    ),
    "quality": (
        "list the quality findings of the last days",
        "List the quality findings (data/quality.csv) found in the last N days: spikes, zero prices and "
        "market caps, prices outside their own 24 h range, stale coins, days healing could not fill.",
        QUALITY_EPILOG,
    ),
    "report": (
        "write data/report.html, the one-page report",
        "Write data/report.html: the charts, the latest observation per coin, coverage, the last 30 days' "
        "quality findings and the last run, in one self-contained file.",
        REPORT_EPILOG,
    ),
    "export": (
        "write the history as CSV or Parquet",
        "Write the history, from either store (--table-format csv or delta, local or s3://), to one file: CSV "
        "in the CSV store's exact columns and formatting, or Parquet when FILE ends in .parquet. Every currency "
        "unless --vs-currency is given; --since and --until pick the UTC days. Streams in bounded memory; the "
        "file appears whole or not at all.",
        EXPORT_EPILOG,
    ),
}
