"""Binance spot + USD-M futures: channels, routes and limits (data, not code).

USD-M futures split their WebSocket into routes in 2026: diff depth and bookTicker on /public,
everything else (trades, tickers, mark price, klines) on /market. An unrouted connection silently
receives no /market streams.
"""
from __future__ import annotations

from collector.kit.spec import SNAPSHOT_DIFF, Channel, ConnectionSpec, Limits, VenueSpec

SPOT_WS_PATH = "/stream"
PERP_PUBLIC_WS_PATH = "/public/stream"
PERP_MARKET_WS_PATH = "/market/stream"

# Channel names are stream templates ({s} = lower-case symbol); partitioned by the stream suffix.
TICKER = Channel("{s}@ticker", "ticker", stream="ticker")
KLINE = Channel("{s}@kline_1m", "kline", stream="kline_1m")
DEPTH = Channel("{s}@depth@100ms", "book", stream="depth@100ms")
SPOT_STREAMS = (TICKER, Channel("{s}@trade", "trades", stream="trade"), DEPTH, KLINE)
PERP_PUBLIC_STREAMS = (DEPTH,)
PERP_MARKET_STREAMS = (TICKER, Channel("{s}@aggTrade", "trades", stream="aggTrade"),
                       Channel("{s}@markPrice", "funding", stream="markPrice"), KLINE)
# Open interest has no stream: it is REST-polled by the owner of this (pseudo) stream.
OPEN_INTEREST_STREAM = "openInterest"

SPOT_DEPTH_PATH = "/api/v3/depth"
SPOT_DEPTH_LIMIT = 1000
SPOT_DEPTH_WEIGHT = 50
SPOT_EXCHANGE_INFO_PATH = "/api/v3/exchangeInfo"
SPOT_EXCHANGE_INFO_WEIGHT = 20
PERP_DEPTH_PATH = "/fapi/v1/depth"
PERP_DEPTH_LIMIT = 1000
PERP_DEPTH_WEIGHT = 20
PERP_EXCHANGE_INFO_PATH = "/fapi/v1/exchangeInfo"
PERP_EXCHANGE_INFO_WEIGHT = 1
OPEN_INTEREST_PATH = "/fapi/v1/openInterest"
PREMIUM_INDEX_PATH = "/fapi/v1/premiumIndex"

# REST weight per minute (spot 6000, USD-M 2400); we stay at 80 % of each.
SPOT_WEIGHT_PER_MINUTE = 4800
PERP_WEIGHT_PER_MINUTE = 1920
# Incoming message limit is 5/s per connection (pings/pongs included): requests are paced at
# 4/s. A connection carries at most 1024 streams; one SUBSCRIBE carries at most 200 params.
MAX_PARAMS_PER_SUBSCRIBE = 200
MAX_STREAMS_PER_CONNECTION = 1024
REQUEST_INTERVAL_S = 0.25
# Backfill (no API key needed): the newest 1000 spot trades, older ones by fromId
# (historicalTrades, same weight), aggregate futures trades (newest or by fromId, last 48 h
# only), closed candles from a start time. A gap pages back at most ``backfill_max_pages``
# pages (an exchange setting, 20 by default).
SPOT_TRADES_PATH = "/api/v3/trades"
SPOT_HISTORICAL_TRADES_PATH = "/api/v3/historicalTrades"
SPOT_TRADES_WEIGHT = 25
PERP_AGG_TRADES_PATH = "/fapi/v1/aggTrades"
PERP_AGG_TRADES_WEIGHT = 20
SPOT_KLINES_PATH = "/api/v3/klines"
PERP_KLINES_PATH = "/fapi/v1/klines"
SPOT_KLINES_WEIGHT = 2
PERP_KLINES_WEIGHT = 5          # limit 1000 (1-99: 1, 100-499: 2, 500-1000: 5)
BACKFILL_LIMIT = 1000

SPEC = VenueSpec(
    name="binance",
    connections=(
        ConnectionSpec("spot", "spot", "spot_ws_url", SPOT_STREAMS, path=SPOT_WS_PATH),
        ConnectionSpec("perp-public", "perp", "perp_ws_url", PERP_PUBLIC_STREAMS,
                       path=PERP_PUBLIC_WS_PATH),
        ConnectionSpec("perp-market", "perp", "perp_ws_url", PERP_MARKET_STREAMS,
                       path=PERP_MARKET_WS_PATH),
    ),
    # The server pings (spot every 20 s, futures every 3 min); websockets answers them.
    limits=Limits(connect_interval_s=1.0,        # 300 connection attempts / 5 min / IP
                  subscriptions_per_connection=MAX_STREAMS_PER_CONNECTION,
                  args_per_request=MAX_PARAMS_PER_SUBSCRIBE,
                  request_interval_s=REQUEST_INTERVAL_S),
    book_protocol=SNAPSHOT_DIFF,
)

