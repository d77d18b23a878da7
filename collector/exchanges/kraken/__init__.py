"""Kraken: spot WebSocket v2 and Kraken Futures (perpetual ``PF_*``) WebSocket v1, or, with
``perp_transport: unified``, the Unified WebSocket (v2 format, ``asset_class: derivatives``).

| data type        | spot (wss://ws.kraken.com/v2)          | perp (wss://futures.kraken.com/ws/v1)   |
|------------------|----------------------------------------|-----------------------------------------|
| market_data      | ``ticker``                             | ``ticker``                              |
| trades           | ``trade``                              | ``trade`` (+ ``trade_snapshot``)        |
| order_book       | ``book`` depth 100, CRC32 per update   | ``book`` (seq +1 per message)           |
| ohlcv            | ``ohlc`` interval 1                    | 1m built from trades (``source: trades``) |
| funding_rates    | -                                      | ``ticker`` relative_funding_rate        |
| open_interest    | -                                      | ``ticker`` openInterest                 |
| volume_liquidity | derived from book + ticker             | derived from book + ticker              |

Spot precisions for the checksum come from the v2 ``instrument`` channel; futures symbols are
validated with REST ``/derivatives/api/v3/instruments``. After a gap, spot trades and closed
candles (``/0/public/Trades``, ``/0/public/OHLC``), futures trades (``/derivatives/api/v3/history``)
and funding / open interest (``/derivatives/api/v3/tickers``) are backfilled over REST.
"""
