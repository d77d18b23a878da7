"""Binance spot + USD-M futures: channels, routes and limits (data, not code).

USD-M futures split their WebSocket into routes in 2026: diff depth and bookTicker on /public,
everything else (trades, tickers, mark price, klines) on /market. An unrouted connection silently
receives no /market streams.
"""
from __future__ import annotations

SPOT_WS_PATH = "/stream"
PERP_PUBLIC_WS_PATH = "/public/stream"
PERP_MARKET_WS_PATH = "/market/stream"

SPOT_STREAMS = ("{s}@ticker", "{s}@trade", "{s}@depth@100ms", "{s}@kline_1m")
PERP_PUBLIC_STREAMS = ("{s}@depth@100ms",)
PERP_MARKET_STREAMS = ("{s}@ticker", "{s}@aggTrade", "{s}@markPrice", "{s}@kline_1m")

SPOT_DEPTH_PATH = "/api/v3/depth"
SPOT_DEPTH_LIMIT = 1000
SPOT_DEPTH_WEIGHT = 50
SPOT_EXCHANGE_INFO_PATH = "/api/v3/exchangeInfo"
PERP_DEPTH_PATH = "/fapi/v1/depth"
PERP_DEPTH_LIMIT = 1000
PERP_DEPTH_WEIGHT = 20
PERP_EXCHANGE_INFO_PATH = "/fapi/v1/exchangeInfo"
OPEN_INTEREST_PATH = "/fapi/v1/openInterest"
PREMIUM_INDEX_PATH = "/fapi/v1/premiumIndex"

# REST weight per minute (spot 6000, USD-M 2400); we stay at 80 % of each.
SPOT_WEIGHT_PER_MINUTE = 4800
PERP_WEIGHT_PER_MINUTE = 1920
# Incoming message limit is 5/s on spot: one SUBSCRIBE per connection, at most this many params.
MAX_PARAMS_PER_SUBSCRIBE = 200
# Error code for an unknown symbol.
INVALID_SYMBOL = -1121
# Backfill (no API key needed): the newest 1000 spot trades, the newest aggregate futures trades,
# closed candles from a start time.
SPOT_TRADES_PATH = "/api/v3/trades"
SPOT_TRADES_WEIGHT = 25
PERP_AGG_TRADES_PATH = "/fapi/v1/aggTrades"
PERP_AGG_TRADES_WEIGHT = 20
SPOT_KLINES_PATH = "/api/v3/klines"
PERP_KLINES_PATH = "/fapi/v1/klines"
KLINES_WEIGHT = 2
BACKFILL_LIMIT = 1000
