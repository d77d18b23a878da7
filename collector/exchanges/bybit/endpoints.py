"""Bybit v5 public WebSocket/REST: channels, limits and REST facts (data, not code).

Sources and the date they were checked: docs/exchanges/bybit.md (bybit-exchange/docs v5).
"""
from __future__ import annotations

from collector.connection import HeartbeatPolicy
from collector.kit.spec import RESUBSCRIBE, Channel, ConnectionSpec, Limits, VenueSpec

# Topics are ``{channel}.{symbol}``; the category (spot / linear) is decided by the URL.
TICKERS = "tickers"
TRADES = "publicTrade"
ORDERBOOK_DEPTH = 200
ORDERBOOK = f"orderbook.{ORDERBOOK_DEPTH}"
KLINE_INTERVAL = "1"
KLINE = f"kline.{KLINE_INTERVAL}"
KLINE_INTERVALS = {"1": "1m", "3": "3m", "5": "5m", "15": "15m", "30": "30m", "60": "1h",
                   "120": "2h", "240": "4h", "360": "6h", "720": "12h", "D": "1d", "W": "1w",
                   "M": "1M"}
# Partition stream names are the data kinds (unchanged since before the kit: ownership stays).
CHANNELS = (Channel(TICKERS, "ticker"), Channel(TRADES, "trades"), Channel(ORDERBOOK, "book"),
            Channel(KLINE, "kline"))

# Subscribe limits: spot at most 10 args per request (linear has none; 10 there too keeps one
# rule); the args of all subscriptions on one public connection at most 21,000 characters (we
# plan 20,000 for margin).
MAX_ARGS_PER_REQUEST = 10
MAX_ARG_CHARS_PER_CONNECTION = 20_000
# Application ping {"op":"ping"} recommended every 20 s; the server cuts a connection after
# 10 minutes with neither a ping nor data.
PING_INTERVAL_S = 20.0
PING_MESSAGE = '{"op":"ping"}'

# REST
REST_TICKERS = "/v5/market/tickers"          # ?category=linear&symbol=
REST_OPEN_INTEREST = "/v5/market/open-interest"
REST_FUNDING_HISTORY = "/v5/market/funding/history"
REST_RECENT_TRADE = "/v5/market/recent-trade"   # ?category&symbol&limit (newest trades)
RECENT_TRADE_LIMIT = {"spot": 60, "perp": 1000}  # documented maxima: spot 1-60, others 1-1000
REST_KLINE = "/v5/market/kline"              # ?category&symbol&interval&start&end&limit
KLINE_LIMIT = 1000
# Market endpoints answer an unknown symbol with HTTP 200 and this retCode / retMsg.
PARAMS_ERROR = 10001
NOT_SUPPORTED_SYMBOLS = "Not supported symbols"
# 600 requests per 5 s per IP (HTTP 403 and a >= 10 min wait when exceeded): this process takes
# half, leaving room for a second partition or process on the same IP.
REST_WEIGHT_PER_WINDOW = 300.0
REST_WINDOW_S = 5.0
REST_BAN_PAUSE_S = 600.0
# 500 new connections per 5 minutes per domain.
CONNECT_INTERVAL_S = 0.6

CATEGORY = {"spot": "spot", "perp": "linear"}


def ping_message() -> str:
    return PING_MESSAGE


HEARTBEAT = HeartbeatPolicy(app_ping=ping_message, app_ping_interval_s=PING_INTERVAL_S)

SPEC = VenueSpec(
    name="bybit",
    connections=(
        ConnectionSpec("spot", "spot", "spot_ws_url", CHANNELS, heartbeat=HEARTBEAT),
        ConnectionSpec("linear", "perp", "perp_ws_url", CHANNELS, heartbeat=HEARTBEAT),
    ),
    limits=Limits(connect_interval_s=CONNECT_INTERVAL_S,
                  arg_chars_per_connection=MAX_ARG_CHARS_PER_CONNECTION,
                  args_per_request=MAX_ARGS_PER_REQUEST,
                  rest_weight_per_window=REST_WEIGHT_PER_WINDOW, rest_window_s=REST_WINDOW_S),
    book_protocol=RESUBSCRIBE,
)
