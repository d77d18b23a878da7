"""OKX v5 public WebSocket/REST facts (data only). Sources: OKX docs v5 (see shared notes)."""
from __future__ import annotations

# Paths appended to the v5 WebSocket base URL.
PUBLIC_PATH = "/public"
BUSINESS_PATH = "/business"      # candle channels migrated here (error 64001 on /public)

TICKERS = "tickers"
TRADES = "trades"
BOOKS = "books"                  # 400 levels, snapshot + incremental, 100 ms
BOOK_DEPTH = 400
CANDLE = "candle1m"
FUNDING = "funding-rate"
OPEN_INTEREST = "open-interest"

PUBLIC_CHANNELS_SPOT = (TICKERS, TRADES, BOOKS)
PUBLIC_CHANNELS_SWAP = (TICKERS, TRADES, BOOKS, FUNDING, OPEN_INTEREST)
BUSINESS_CHANNELS = (CANDLE,)

# Channel -> data kind (partitioning key and idle threshold, collector/exchanges/base.py).
CHANNEL_KINDS = {TICKERS: "ticker", TRADES: "trades", BOOKS: "book", CANDLE: "kline",
                 FUNDING: "funding", OPEN_INTEREST: "open_interest"}
# funding-rate pushes every 30-90 s; open-interest's cadence is not documented. The REST fallback
# takes over only after this much silence on a live subscription (or after a subscribe error).
WS_MAX_SILENCE_S = {FUNDING: 180.0, OPEN_INTEREST: 180.0}

# Checksum: best 25 levels per side (deprecated by OKX: always 0 since 2026-06-23).
CHECKSUM_LEVELS = 25
# Per-symbol cool-down between book resubscriptions.
RESYNC_COOLDOWN_S = 2.0

# No server pings: send the text "ping" after 25 s of silence (server drops after 30 s).
PING_TEXT = "ping"
PONG_TEXT = "pong"
PING_INTERVAL_S = 25.0
# 3 connection attempts per second per IP.
CONNECT_INTERVAL_S = 0.4

# 480 subscribe/unsubscribe/login requests per connection per hour (token bucket); we keep a margin
# and reconnect (a fresh bucket) instead of exceeding it.
SUBSCRIBE_REQUESTS_PER_HOUR = 480
SUBSCRIBE_BUDGET_MARGIN = 20

# REST
REST_INSTRUMENTS = "/api/v5/public/instruments"   # ?instType=SWAP&instId=
REST_OPEN_INTEREST = "/api/v5/public/open-interest"
REST_FUNDING = "/api/v5/public/funding-rate"
REST_TRADES = "/api/v5/market/trades"              # ?instId&limit (newest first)
TRADES_LIMIT = 500
REST_CANDLES = "/api/v5/market/candles"            # ?instId&bar&limit (newest first)
CANDLES_LIMIT = 300
DEFAULT_CT_VAL = {"BTC-USDT-SWAP": 0.01}
# One budget for every REST call: 10 requests / 2 s is the tightest documented limit among the
# endpoints used (funding-rate: 10 or 20 / 2 s depending on the source; open-interest 20 / 2 s).
REST_WEIGHT_PER_WINDOW = 10.0
REST_WINDOW_S = 2.0
# WS trade-id holes: more than this many per minute on one instrument means the ids are not
# consecutive after all (the check switches itself off for it rather than flood the ledger).
TRADE_HOLES_PER_MINUTE_MAX = 5

SWAP_SUFFIX = "-SWAP"
