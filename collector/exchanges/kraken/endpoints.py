"""Kraken endpoints, channels and limits (data only).

Sources: Kraken API documentation (docs.kraken.com): Spot WebSocket v2 (``book``, ``ticker``,
``trade``, ``ohlc``, ``instrument``, ``heartbeat``, ``ping``), the v2 book-checksum guide, the Spot
REST ``/0/public/Trades`` and ``/0/public/OHLC`` pages, and the Kraken Futures WebSocket v1
(``ticker``, ``trade``, ``book``, ``heartbeat``) and REST v3 (``instruments``, ``tickers``,
``history``) pages.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from collector.connection import HeartbeatPolicy
from collector.kit.spec import RESUBSCRIBE, Channel, ConnectionSpec, Limits, VenueSpec

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

# The ticker is subscribed with ``event_trigger: bbo``: it is pushed on every top-of-book change,
# so bid/ask stay fresh between trades (the default, ``trades``, fires on trades only).
SPOT_TICKER_TRIGGER = "bbo"
# Subscribe parameters per spot channel (besides the symbols); books are subscribed once the
# pairs' precisions (for the checksum) are known from the ``instrument`` channel.
SPOT_PARAMS: dict[str, dict[str, Any]] = {
    SPOT_TICKER: {"event_trigger": SPOT_TICKER_TRIGGER}, SPOT_TRADE: {"snapshot": False},
    SPOT_OHLC: {"interval": SPOT_OHLC_INTERVAL_MIN}}
# Partition streams are the data kinds (ownership unchanged since before the feed kit). The
# ``ohlc`` channel updates on trades only: on a quiet pair it is as quiet as the trade channel.
SPOT_CHANNELS = (Channel(SPOT_TICKER, "ticker"), Channel(SPOT_TRADE, "trades"),
                 Channel(SPOT_BOOK, "book"), Channel(SPOT_OHLC, "kline", idle="trades"))

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
# Derivatives REST v3 is decommissioned on 2027-03-01 with no documented successor for the
# instruments, tickers and history endpoints (docs/exchanges/kraken.md): after that date a
# failing call retires it for the process (no REST backfill for perpetuals; one /health error).
FUT_REST_DECOMMISSION = datetime(2027, 3, 1, tzinfo=timezone.utc)
FUT_REST_RETIRED = ("derivatives REST v3 decommissioned 2027-03-01 and failing: no REST "
                    "backfill (trades, funding, open interest) for perpetuals")
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
FUT_CHANNELS = (Channel(FUT_TICKER, "ticker"), Channel(FUT_TRADE, "trades"),
                Channel(FUT_BOOK, "book"))
# The client must send a ping at least every 60 s (WebSocket ping frames do).
FUT_PING_INTERVAL_S = 30.0

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
# Spot books: the checksum of the last update applied is verified at most this long after it
# arrived, and always before a sampler reads the book (a break is caught within 0.1 s, and
# nothing is stored from an unverified book; the CRC of every single update cost ~40 % of the
# book path).
VERIFY_AFTER_S = 0.1
RESYNC_RETRY_S = 10.0

# Futures v1: at most 100 requests/s per connection (one request per product and feed); spot
# v2's message rate is dynamic (``{"Error":"Exceeded msg rate"}``): requests on one connection
# are paced at about 66/s.
REQUEST_INTERVAL_S = 0.015


def _ping() -> str:
    return '{"method":"ping"}'


V2_HEARTBEAT = HeartbeatPolicy(app_ping=_ping, app_ping_interval_s=SPOT_PING_INTERVAL_S)
SPOT_CONNECTION = ConnectionSpec("spot", "spot", "spot_ws_url", SPOT_CHANNELS,
                                 heartbeat=V2_HEARTBEAT)
LIMITS = Limits(connect_interval_s=CONNECT_INTERVAL_S, backoff_max_s=BACKOFF_MAX_S,
                request_interval_s=REQUEST_INTERVAL_S, rest_weight_per_window=SPOT_REST_CALLS,
                rest_window_s=SPOT_REST_WINDOW_S)

# Perpetuals over the Unified WebSocket. Documented (D-UWS): the endpoint, "the same v2 message
# format" as spot v2, ``asset_class: derivatives`` on subscriptions, the v2 connection rules
# (application ping, ~1 minute idle cut). INFERRED from "same v2 format" (no source found): the
# channel names ticker/trade/book, ``PF_`` symbols, the CRC32 book checksum, and the ticker's
# funding / mark / index / open-interest field names (parsers.parse_unified_ticker).
UNIFIED_ASSET_CLASS = "derivatives"
UNIFIED_PARAMS: dict[str, dict[str, Any]] = {
    SPOT_TICKER: {"event_trigger": SPOT_TICKER_TRIGGER}, SPOT_TRADE: {"snapshot": False}}
UNIFIED_CHANNELS = (Channel(SPOT_TICKER, "ticker"), Channel(SPOT_TRADE, "trades"),
                    Channel(SPOT_BOOK, "book"))

# One perpetual transport is used, chosen by the settings (``perp_transport``): the feed blanks
# the URL of the other, so its connection is not planned. Same label and partition streams.
SPEC = VenueSpec(
    name="kraken",
    connections=(
        SPOT_CONNECTION,
        ConnectionSpec("perp", "perp", "perp_ws_url", FUT_CHANNELS,
                       heartbeat=HeartbeatPolicy(protocol_ping_interval_s=FUT_PING_INTERVAL_S)),
        ConnectionSpec("perp", "perp", "perp_unified_ws_url", UNIFIED_CHANNELS,
                       heartbeat=V2_HEARTBEAT),
    ),
    limits=LIMITS,
    book_protocol=RESUBSCRIBE,
)
