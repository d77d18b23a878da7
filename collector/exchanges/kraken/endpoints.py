"""Kraken endpoints, channels and limits (data only).

Sources: Kraken API documentation (docs.kraken.com): Spot WebSocket v2 (``book``, ``ticker``,
``trade``, ``ohlc``, ``instrument``, ``heartbeat``, ``ping``), the v2 book-checksum guide, the Spot
REST ``/0/public/Trades`` and ``/0/public/OHLC`` pages, and the Kraken Futures WebSocket v1
(``ticker``, ``trade``, ``book``, ``heartbeat``) and REST v3 (``instruments``, ``tickers``,
``history``) pages.
"""
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

# Data kind of each subscription (partitioning, idle thresholds). The spot ``ticker`` (default
# ``event_trigger: trades``) and ``ohlc`` channels update on trades only, so on a quiet pair they
# are as quiet as the trade channel: they count as "trades" for the idle watchdog.
SPOT_KINDS = {SPOT_TICKER: "ticker", SPOT_TRADE: "trades", SPOT_BOOK: "book", SPOT_OHLC: "kline"}
SPOT_IDLE_KINDS = {SPOT_TICKER: "trades", SPOT_TRADE: "trades", SPOT_BOOK: "book",
                   SPOT_OHLC: "trades"}

# Spot REST (relative to spot_rest_url). Trades: ``pair``, ``since`` (the first request in
# seconds, then the returned ``last`` cursor, nanoseconds), ``count`` <= 1000, oldest first.
# OHLC: ``pair``, ``interval`` (minutes), ``since``; at most the last 720 rows, and the last row
# is the running (unclosed) candle.
SPOT_TRADES_REST = "/0/public/Trades"
SPOT_OHLC_REST = "/0/public/OHLC"
SPOT_TRADES_PAGE = 1000
SPOT_TRADES_MAX_PAGES = 10
# v2 asset codes that the REST ``pair`` parameter spells differently.
REST_ASSETS = {"BTC": "XBT", "DOGE": "XDG"}
# Public REST: Kraken documents about one call per second per IP as safe.
SPOT_REST_CALLS = 3.0
SPOT_REST_WINDOW_S = 3.0

# Futures REST (relative to perp_rest_url).
FUT_INSTRUMENTS_REST = "/derivatives/api/v3/instruments"
FUT_TICKERS_REST = "/derivatives/api/v3/tickers"
# Trade history: the 100 most recent trades before ``lastTime`` (newest first).
FUT_HISTORY_REST = "/derivatives/api/v3/history"
FUT_HISTORY_PAGE = 100
FUT_HISTORY_MAX_PAGES = 10
# No published per-IP figure for the public futures REST endpoints: the spot rate is used.
FUT_REST_CALLS = 3.0
FUT_REST_WINDOW_S = 3.0

# Futures WebSocket v1 feeds.
FUT_TICKER = "ticker"
FUT_TRADE = "trade"
FUT_BOOK = "book"
FUT_HEARTBEAT = "heartbeat"
# The futures ticker carries ticker, funding and open interest; it is pushed every second.
FUT_KINDS = {FUT_TICKER: "ticker", FUT_TRADE: "trades", FUT_BOOK: "book"}

# Kraken Futures perpetuals accrue funding hourly (inferred from next_funding_rate_time being on
# the hour; no doc sentence found).
FUNDING_INTERVAL_HOURS = 1.0

# Cloudflare bans an IP for 10 minutes after ~150 (re)connects per rolling 10 minutes, and Kraken
# asks for >= 5 s between reconnects after maintenance. One throttle covers the spot and the
# futures connection of a collector (and is multiplied by the partition count, since partitions
# share the IP): 8 s -> at most 75 connection attempts per 10 minutes, half the ban threshold.
CONNECT_INTERVAL_S = 8.0
BACKOFF_MAX_S = 60.0
# Per-book resubscribe cool-down (a book that keeps failing must not flood the exchange) and the
# retry when the fresh snapshot does not arrive.
RESYNC_COOLDOWN_S = 2.0
RESYNC_RETRY_S = 10.0
