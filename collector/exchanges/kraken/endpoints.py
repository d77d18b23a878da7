"""Kraken endpoints, channels and limits (data only). Sources: /work/shared notes kraken.md."""
from __future__ import annotations

# Spot WebSocket v2 channels.
SPOT_INSTRUMENT = "instrument"
SPOT_TICKER = "ticker"
SPOT_TRADE = "trade"
SPOT_BOOK = "book"
SPOT_OHLC = "ohlc"
SPOT_HEARTBEAT = "heartbeat"
SPOT_STATUS = "status"
# Allowed v2 book depths; the configured depth is rounded up to one of them.
SPOT_BOOK_DEPTHS = (10, 25, 100, 500, 1000)
SPOT_OHLC_INTERVAL_MIN = 1
# The checksum covers the top 10 levels of each side.
CHECKSUM_LEVELS = 10
# v2 application ping; the server closes connections idle for ~1 minute.
SPOT_PING_INTERVAL_S = 20.0

# Futures REST (relative to perp_rest_url): instrument list used to validate symbols.
FUT_INSTRUMENTS_REST = "/derivatives/api/v3/instruments"

# Futures WebSocket v1 feeds.
FUT_TICKER = "ticker"
FUT_TRADE = "trade"
FUT_BOOK = "book"
FUT_HEARTBEAT = "heartbeat"

# Kraken Futures perpetuals accrue funding hourly (inferred from next_funding_rate_time being on
# the hour; no doc sentence found).
FUNDING_INTERVAL_HOURS = 1.0

# Cloudflare bans an IP for 10 minutes after ~150 (re)connects per rolling 10 minutes; Kraken asks
# for >= 5 s between reconnects after maintenance.
CONNECT_INTERVAL_S = 5.0
BACKOFF_MAX_S = 60.0
