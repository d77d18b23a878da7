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
# 600 requests per 5 s per IP; we stay far below.
REST_WEIGHT_PER_WINDOW = 300.0
REST_WINDOW_S = 5.0
# 500 new connections per 5 minutes per domain.
CONNECT_INTERVAL_S = 0.6

CATEGORY = {"spot": "spot", "perp": "linear"}
