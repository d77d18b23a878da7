"""Bybit v5 public WebSocket/REST facts (data only). Sources: bybit-exchange/docs v5."""
from __future__ import annotations

# Topics (``{topic}.{symbol}``); the category is decided by the connection URL.
TICKERS = "tickers"
TRADES = "publicTrade"
ORDERBOOK_DEPTH = 200
ORDERBOOK = f"orderbook.{ORDERBOOK_DEPTH}"
KLINE_INTERVAL = "1"
KLINE = f"kline.{KLINE_INTERVAL}"
KLINE_INTERVALS = {"1": "1m", "3": "3m", "5": "5m", "15": "15m", "30": "30m", "60": "1h",
                   "120": "2h", "240": "4h", "360": "6h", "720": "12h", "D": "1d", "W": "1w",
                   "M": "1M"}
# Topic -> data kind (partitioning key and idle threshold, collector/exchanges/base.py).
TOPIC_KINDS = {TICKERS: "ticker", TRADES: "trades", ORDERBOOK: "book", KLINE: "kline"}

# Subscribe limits: spot at most 10 args per request; args text <= 21,000 chars per connection.
SPOT_MAX_ARGS_PER_REQUEST = 10
LINEAR_MAX_ARGS_PER_REQUEST = 100
# Application ping {"op":"ping"} recommended every 20 s.
PING_INTERVAL_S = 20.0
PING_MESSAGE = '{"op":"ping"}'

# REST
REST_TICKERS = "/v5/market/tickers"          # ?category=linear&symbol=
REST_OPEN_INTEREST = "/v5/market/open-interest"
REST_FUNDING_HISTORY = "/v5/market/funding/history"
REST_RECENT_TRADE = "/v5/market/recent-trade"   # ?category&symbol&limit (newest trades)
RECENT_TRADE_LIMIT = {"spot": 60, "perp": 1000}  # documented maxima: spot 1-60, others 1-1000
REST_KLINE = "/v5/market/kline"              # ?category&symbol&interval&start&limit, newest first
KLINE_LIMIT = 1000
# 600 requests per 5 s per IP (HTTP 403 and a >= 10 min wait when exceeded): this process takes
# half, leaving room for a second partition or process on the same IP.
REST_WEIGHT_PER_WINDOW = 300.0
REST_WINDOW_S = 5.0
REST_BAN_PAUSE_S = 600.0
# 500 new connections per 5 minutes per domain.
CONNECT_INTERVAL_S = 0.6

CATEGORY = {"spot": "spot", "perp": "linear"}
