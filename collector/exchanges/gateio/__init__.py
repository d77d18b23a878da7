"""Gate.io API v4: spot and USDT-margined perpetual futures.

| data type        | spot (wss://api.gateio.ws/ws/v4/)                  | perp (wss://fx-ws.gateio.ws/v4/ws/usdt)              |
|------------------|----------------------------------------------------|------------------------------------------------------|
| market_data      | ``spot.tickers``                                   | ``futures.tickers``                                  |
| trades           | ``spot.trades``                                    | ``futures.trades`` (size sign = taker side)          |
| order_book       | ``spot.order_book_update`` + REST /spot/order_book | ``futures.order_book_update`` + REST /futures/usdt/order_book |
| ohlcv            | ``spot.candlesticks`` 1m                           | ``futures.candlesticks`` 1m                          |
| funding_rates    | -                                                  | ``futures.tickers`` funding_rate (+ REST contract schedule) |
| open_interest    | -                                                  | ``futures.contract_stats`` 1m (only source)          |
| volume_liquidity | derived from book + ticker                         | derived from book + ticker                           |

Futures sizes are contracts x ``quanto_multiplier`` (REST /futures/usdt/contracts/{contract});
``is_internal`` futures trades are skipped. After a gap, trades, closed candles, funding and open
interest are backfilled over REST.
"""
