"""The CoinGecko API client and its plans."""
