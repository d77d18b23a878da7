"""OKX v5 public market data: channels, routes and limits (data, not code).

Sources and the date each fact was checked: docs/exchanges/okx.md (the conformance contract).
Spot and SWAP instruments share the same URLs; each market gets its own /public and /business
connections (the kit's connections carry one market each).
"""
from __future__ import annotations

from collector.connection import HeartbeatPolicy
from collector.kit.spec import RESUBSCRIBE, Channel, ConnectionSpec, Limits, VenueSpec

# Paths appended to the v5 WebSocket base URL.
PUBLIC_PATH = "/public"
BUSINESS_PATH = "/business"      # candle channels migrated here (error 64001 on /public)

# Channels; partition streams are the data kinds, as before the kit (ownership unchanged).
# /public channels push only on change; books send a no-change message every ~60 s and the text
# ping keeps the socket alive meanwhile: idle class "quiet" (70 s), not the 10 s book default.
TICKERS = Channel("tickers", "ticker", idle="quiet")
BOOKS = Channel("books", "book", idle="quiet")     # 400 levels, snapshot + incremental, 100 ms
BOOK_DEPTH = 400
FUNDING = Channel("funding-rate", "funding", idle="quiet")
OPEN_INTEREST = Channel("open-interest", "open_interest", idle="quiet")
DERIVATIVE_CHANNELS = (FUNDING, OPEN_INTEREST)
# /business. Trades: ``trades-all`` pushes every fill (``trades`` on /public aggregates the fills
# of one taker order under the LAST fill's id, while REST /market/trades lists fills: mixing the
# two double-counts volume after a backfill). Same partition stream "trades" as before.
TRADES = Channel("trades-all", "trades")
CANDLE = Channel("candle1m", "kline")

# funding-rate pushes every 30-90 s, open-interest every 3 s when it changes. The REST fallback
# takes over only after this much silence on a live subscription (or after a subscribe error).
WS_MAX_SILENCE_S = {FUNDING.name: 180.0, OPEN_INTEREST.name: 180.0}

# Checksum: best 25 levels per side (deprecated by OKX: always 0 since 2026-06-23).
CHECKSUM_LEVELS = 25
# Per-symbol cool-down between book resubscriptions.
RESYNC_COOLDOWN_S = 2.0

# No server pings: send the text "ping" after 25 s of silence (server drops after 30 s) and
# expect "pong" (or data) in time, else reconnect (docs: "connect").
PING_TEXT = "ping"
PONG_TEXT = "pong"
PING_INTERVAL_S = 25.0
PONG_TIMEOUT_S = 5.0
HEARTBEAT = HeartbeatPolicy(app_ping=lambda: PING_TEXT, app_ping_interval_s=PING_INTERVAL_S,
                            ping_only_when_quiet=True, app_pong_timeout_s=PONG_TIMEOUT_S)

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
REST_HISTORY_TRADES = "/api/v5/market/history-trades"   # ?instId&type=1&after=<tradeId>&limit
HISTORY_TRADES_LIMIT = 100                         # 3 months back; 20 requests / 2 s
REST_CANDLES = "/api/v5/market/candles"            # ?instId&bar&limit&after=<ts> (newest first;
CANDLES_LIMIT = 300                                # only the latest 1,440 rows)
REST_HISTORY_CANDLES = "/api/v5/market/history-candles"   # older candles, same parameters
BACKFILL_MAX_PAGES = 50                            # per gap and kind: 5,000 fills / 250 h
REST_BOOKS = "/api/v5/market/books"                # ?instId&sz (sz default 1!, max 400)
# Error codes: unknown instrument (REST, HTTP 200) / unknown channel or instrument (WS);
# rate limit in the body (HTTP 200 or 429) and "system busy" (HTTP 429): back off like a 429.
UNKNOWN_INSTRUMENT = "51001"
WS_UNKNOWN_ARG = "60018"
RATE_LIMIT_CODES = ("50011", "50013")
RATE_LIMIT_PAUSE_S = 2.0                           # one window of the per-endpoint limits
# Only linear contracts: ctVal in base units (inverse ones count USD; not supported).
LINEAR = "linear"
# Documented ctVal of the doc samples' instrument (tests and fuzzing prime the feed with it).
DEFAULT_CT_VAL = {"BTC-USDT-SWAP": 0.01}
# One budget for every REST call: 10 requests / 2 s is the tightest documented limit among the
# endpoints used (funding-rate: 10 or 20 / 2 s depending on the source; open-interest 20 / 2 s).
REST_WEIGHT_PER_WINDOW = 10.0
REST_WINDOW_S = 2.0
# WS trade-id holes: more than this many per minute on one instrument means the ids are not
# consecutive after all (the check switches itself off for it rather than flood the ledger).
TRADE_HOLES_PER_MINUTE_MAX = 5

SWAP_SUFFIX = "-SWAP"


def _connections(market: str, url: str, public: tuple[Channel, ...]) -> tuple[ConnectionSpec, ...]:
    prefix = "" if market == "spot" else "perp-"
    return (ConnectionSpec(f"{prefix}public", market, url, public, path=PUBLIC_PATH,
                           heartbeat=HEARTBEAT),
            ConnectionSpec(f"{prefix}business", market, url, (TRADES, CANDLE),
                           path=BUSINESS_PATH, heartbeat=HEARTBEAT))


SPEC = VenueSpec(
    name="okx",
    connections=(_connections("spot", "spot_ws_url", (TICKERS, BOOKS)) +
                 _connections("perp", "perp_ws_url",
                              (TICKERS, BOOKS, FUNDING, OPEN_INTEREST))),
    # 3 connection attempts per second per IP (the base multiplies by the partition count).
    # Fewer than 30 book channels per connection (docs: spread 400-level books over
    # connections): at most 56 subscriptions, i.e. 28 spot or 14 SWAP books on one /public.
    limits=Limits(connect_interval_s=0.4, subscriptions_per_connection=56,
                  rest_weight_per_window=REST_WEIGHT_PER_WINDOW, rest_window_s=REST_WINDOW_S),
    book_protocol=RESUBSCRIBE,
)
