"""Gate.io v4 channels, REST paths and limits (data only). Sources: /work/shared notes gateio.md."""
from __future__ import annotations

SPOT_TICKERS = "spot.tickers"
SPOT_TRADES = "spot.trades"
SPOT_BOOK = "spot.order_book_update"
SPOT_CANDLES = "spot.candlesticks"
SPOT_PING = "spot.ping"
SPOT_PONG = "spot.pong"

FUT_TICKERS = "futures.tickers"
FUT_TRADES = "futures.trades"
FUT_BOOK = "futures.order_book_update"
FUT_CANDLES = "futures.candlesticks"
FUT_STATS = "futures.contract_stats"
FUT_PING = "futures.ping"
FUT_PONG = "futures.pong"

BOOK_INTERVAL = "100ms"
BOOK_LEVEL = "100"          # futures level argument; spot 100ms = 100 levels
CANDLE_INTERVAL = "1m"
STATS_INTERVAL = "1m"

# REST (relative to .../api/v4). limit <= 100: deeper snapshots are cached and lag the stream.
SPOT_BOOK_REST = "/spot/order_book"
FUT_BOOK_REST = "/futures/usdt/order_book"
FUT_CONTRACT_REST = "/futures/usdt/contracts/{contract}"
SNAPSHOT_LIMIT = 100

# Contract size used when /futures/usdt/contracts is unreachable (BTC_USDT: 0.0001 BTC).
DEFAULT_QUANTO_MULTIPLIER = {"BTC_USDT": 0.0001}

PING_INTERVAL_S = 10.0
CONNECT_INTERVAL_S = 1.0
BACKOFF_MAX_S = 60.0
