"""Gate.io v4 channels, REST paths and limits (data only).

Sources: Gate API v4 documentation (gate.com/docs/developers/apiv4): the Spot WebSocket v4 and
Futures WebSocket v4 pages (channels, argument order, ``order_book_update`` + "How to maintain a
local order book", ``spot.ping``/``futures.ping``) and the REST v4 reference (``/spot/order_book``,
``/spot/trades``, ``/spot/candlesticks``, ``/futures/{settle}/order_book``, ``trades``,
``candlesticks``, ``contracts/{contract}``, ``contract_stats``).
"""
from __future__ import annotations

import time
from typing import Callable

import orjson

from collector.connection import HeartbeatPolicy
from collector.kit.spec import SNAPSHOT_DIFF, Channel, ConnectionSpec, Limits, VenueSpec

SPOT_TICKERS = "spot.tickers"
SPOT_TRADES = "spot.trades"
SPOT_BOOK = "spot.order_book_update"
SPOT_CANDLES = "spot.candlesticks"
SPOT_PING = "spot.ping"
SPOT_PONG = "spot.pong"
SPOT_SYSTEM = "spot.system"

FUT_TICKERS = "futures.tickers"
FUT_TRADES = "futures.trades"
FUT_BOOK = "futures.order_book_update"
FUT_CANDLES = "futures.candlesticks"
FUT_STATS = "futures.contract_stats"
FUT_PING = "futures.ping"
FUT_PONG = "futures.pong"
FUT_SYSTEM = "futures.system"

BOOK_INTERVAL = "100ms"
BOOK_LEVEL = "100"          # futures level argument; spot 100ms = 100 levels
CANDLE_INTERVAL = "1m"
STATS_INTERVAL = "1m"

# Futures size fields as decimal strings (A48788): without this header on the futures WS
# handshake and /futures REST calls, sizes are integers truncated toward zero.
SIZE_DECIMAL_HEADER = ("X-Gate-Size-Decimal", "1")

# REST (relative to .../api/v4). limit <= 100: deeper snapshots are cached and lag the stream.
SPOT_BOOK_REST = "/spot/order_book"
FUT_BOOK_REST = "/futures/usdt/order_book"
FUT_CONTRACT_REST = "/futures/usdt/contracts/{contract}"
SNAPSHOT_LIMIT = 100
SYMBOL_PARAM = {"spot": "currency_pair", "perp": "contract"}
BOOK_REST = {"spot": SPOT_BOOK_REST, "perp": FUT_BOOK_REST}
UNKNOWN_LABELS = ("INVALID_CURRENCY_PAIR", "CONTRACT_NOT_FOUND")
# Backfill. Trades: newest first, ``limit`` <= 1000, a ``from``/``to`` window paged with
# ``page`` (spot) / ``offset`` (futures). Candlesticks: ``from`` only (``limit`` may not be
# combined with ``from``/``to``; ``to`` defaults to now), at most 1000 points per request.
SPOT_TRADES_REST = "/spot/trades"
SPOT_CANDLES_REST = "/spot/candlesticks"
FUT_TRADES_REST = "/futures/usdt/trades"
FUT_CANDLES_REST = "/futures/usdt/candlesticks"
FUT_STATS_REST = "/futures/usdt/contract_stats"
TRADES_REST = {"spot": SPOT_TRADES_REST, "perp": FUT_TRADES_REST}
CANDLES_REST = {"spot": SPOT_CANDLES_REST, "perp": FUT_CANDLES_REST}
TRADES_PAGE = 1000
TRADES_MAX_PAGES = 10
CANDLES_MAX_POINTS = 1000
# REST contract_stats at the stream's 1m interval (same unique key), paged with ``from``.
STATS_REST_INTERVAL = "1m"
STATS_REST_LIMIT = 100
STATS_REST_MAX_PAGES = 10

# Contract size used when /futures/usdt/contracts is unreachable (BTC_USDT: 0.0001 BTC).
DEFAULT_QUANTO_MULTIPLIER = {"BTC_USDT": 0.0001}

# Gate public REST allows 200 requests per 10 s per endpoint; one budget of 300 per minute for
# every endpoint together stays far below.
REST_CALLS = 300.0
REST_WINDOW_S = 60.0

PING_INTERVAL_S = 10.0
CONNECT_INTERVAL_S = 1.0
BACKOFF_MAX_S = 60.0


# Each channel's own argument order (Gate rejects another order); "{s}" = the symbol.
ARGUMENTS = {SPOT_CANDLES: (CANDLE_INTERVAL, "{s}"), FUT_CANDLES: (CANDLE_INTERVAL, "{s}"),
             SPOT_BOOK: ("{s}", BOOK_INTERVAL), FUT_BOOK: ("{s}", BOOK_INTERVAL, BOOK_LEVEL),
             FUT_STATS: ("{s}", STATS_INTERVAL)}


def payload(channel: str, symbol: str) -> list[str]:
    """A subscribe request's ``payload`` for one symbol (tickers and trades: ``[symbol]``)."""
    return [symbol if arg == "{s}" else arg for arg in ARGUMENTS.get(channel, ("{s}",))]


def app_ping(channel: str) -> Callable[[], str]:
    """``{"time": <unix s>, "channel": "spot.ping"}`` (answered with ``spot.pong``)."""
    return lambda: orjson.dumps({"time": int(time.time()), "channel": channel}).decode()


# Partition streams are the data kinds (as before the kit: ownership does not move).
# futures.tickers carries ticker and funding; futures.contract_stats is the single source of
# stored open interest, pushed once per 1m interval: alone on a connection it idles like trades.
SPOT_CHANNELS = (Channel(SPOT_TICKERS, "ticker"), Channel(SPOT_TRADES, "trades"),
                 Channel(SPOT_BOOK, "book"), Channel(SPOT_CANDLES, "kline"))
FUT_CHANNELS = (Channel(FUT_TICKERS, "ticker"), Channel(FUT_TRADES, "trades"),
                Channel(FUT_BOOK, "book"), Channel(FUT_CANDLES, "kline"),
                Channel(FUT_STATS, "open_interest", idle="trades"))

SPEC = VenueSpec(
    name="gateio",
    connections=(
        ConnectionSpec("spot", "spot", "spot_ws_url", SPOT_CHANNELS,
                       heartbeat=HeartbeatPolicy(app_ping=app_ping(SPOT_PING),
                                                 app_ping_interval_s=PING_INTERVAL_S)),
        ConnectionSpec("perp", "perp", "perp_ws_url", FUT_CHANNELS,
                       heartbeat=HeartbeatPolicy(app_ping=app_ping(FUT_PING),
                                                 app_ping_interval_s=PING_INTERVAL_S),
                       headers=(SIZE_DECIMAL_HEADER,)),
    ),
    # No documented subscription cap per connection; one request per (channel, symbol).
    limits=Limits(connect_interval_s=CONNECT_INTERVAL_S, backoff_max_s=BACKOFF_MAX_S,
                  rest_weight_per_window=REST_CALLS, rest_window_s=REST_WINDOW_S),
    book_protocol=SNAPSHOT_DIFF,
)
