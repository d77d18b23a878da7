"""Gate.io v4 channels, REST paths and limits (data only).

Sources: Gate API v4 documentation (gate.com/docs/developers/apiv4): the Spot WebSocket v4 and
Futures WebSocket v4 pages (channels, argument order, ``order_book_update`` + "How to maintain a
local order book", ``spot.ping``/``futures.ping``) and the REST v4 reference (``/spot/order_book``,
``/spot/trades``, ``/spot/candlesticks``, ``/futures/{settle}/order_book``, ``trades``,
``candlesticks``, ``contracts/{contract}``, ``contract_stats``).
"""
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

# Data kind of each channel (partitioning). futures.tickers carries ticker and funding;
# futures.contract_stats is the single source of stored open interest.
SPOT_KINDS = {SPOT_TICKERS: "ticker", SPOT_TRADES: "trades", SPOT_BOOK: "book",
              SPOT_CANDLES: "kline"}
FUT_KINDS = {FUT_TICKERS: "ticker", FUT_TRADES: "trades", FUT_BOOK: "book",
             FUT_CANDLES: "kline", FUT_STATS: "open_interest"}
# Idle-watchdog class of each channel: contract_stats pushes once per 1m interval, so alone on a
# connection it is as quiet as a trade stream.
IDLE_KINDS = {"ticker": "ticker", "trades": "trades", "book": "book", "kline": "kline",
              "open_interest": "trades"}

# REST (relative to .../api/v4). limit <= 100: deeper snapshots are cached and lag the stream.
SPOT_BOOK_REST = "/spot/order_book"
FUT_BOOK_REST = "/futures/usdt/order_book"
FUT_CONTRACT_REST = "/futures/usdt/contracts/{contract}"
SNAPSHOT_LIMIT = 100
# Backfill. Trades: newest first, ``limit`` <= 1000, a ``from``/``to`` window paged with
# ``page`` (spot) / ``offset`` (futures). Candlesticks: ``from`` only (``limit`` may not be
# combined with ``from``/``to``; ``to`` defaults to now), at most 1000 points per request.
SPOT_TRADES_REST = "/spot/trades"
SPOT_CANDLES_REST = "/spot/candlesticks"
FUT_TRADES_REST = "/futures/usdt/trades"
FUT_CANDLES_REST = "/futures/usdt/candlesticks"
FUT_STATS_REST = "/futures/usdt/contract_stats"
TRADES_PAGE = 1000
TRADES_MAX_PAGES = 10
CANDLES_MAX_POINTS = 1000
# REST contract_stats is asked at its documented default interval; its points fall on the
# minute boundaries of the 1m stream (same unique key).
STATS_REST_INTERVAL = "5m"
STATS_REST_LIMIT = 100

# Contract size used when /futures/usdt/contracts is unreachable (BTC_USDT: 0.0001 BTC).
DEFAULT_QUANTO_MULTIPLIER = {"BTC_USDT": 0.0001}

# Gate public REST allows 200 requests per 10 s per endpoint; one budget of 300 per minute for
# every endpoint together stays far below.
REST_CALLS = 300.0
REST_WINDOW_S = 60.0

PING_INTERVAL_S = 10.0
CONNECT_INTERVAL_S = 1.0
BACKOFF_MAX_S = 60.0
