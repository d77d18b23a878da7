"""Volume/liquidity derived from the live book and the latest ticker."""
from __future__ import annotations

from datetime import datetime

from collector.orderbook import BookSide, OrderBook
from common.schema import Liquidity, Ticker

BANDS_BPS = (10, 50, 100)   # 0.1 %, 0.5 %, 1 % of mid


def _depth_within(side: BookSide, limit: float, is_bid: bool) -> tuple[float, float]:
    """(base, quote) resting on one side between the best level and ``limit`` (inclusive)."""
    base = quote = 0.0
    for price, size in side.iter_levels():
        if (price < limit) if is_bid else (price > limit):
            break
        base += size
        quote += price * size
    return base, quote


def compute_liquidity(book: OrderBook, ticker: Ticker | None, *, exchange: str, symbol: str,
                      pair: str, market: str, ts: datetime, received_at: datetime) -> Liquidity | None:
    bid, ask = book.best_bid(), book.best_ask()
    if bid is None or ask is None:
        return None
    mid = (bid[0] + ask[0]) / 2.0
    record = Liquidity(exchange, symbol, pair, market, ts, received_at,
                       mid=mid, spread_bps=(ask[0] - bid[0]) / mid * 1e4)
    for bps in BANDS_BPS:
        bid_base, bid_quote = _depth_within(book.bids, mid * (1 - bps / 1e4), True)
        ask_base, ask_quote = _depth_within(book.asks, mid * (1 + bps / 1e4), False)
        setattr(record, f"bid_depth_{bps}bps", bid_base)
        setattr(record, f"ask_depth_{bps}bps", ask_base)
        setattr(record, f"bid_depth_{bps}bps_quote", bid_quote)
        setattr(record, f"ask_depth_{bps}bps_quote", ask_quote)
    if ticker is not None:
        record.volume_24h = ticker.volume_24h
        record.quote_volume_24h = ticker.quote_volume_24h
    return record
