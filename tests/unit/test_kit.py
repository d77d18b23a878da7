"""The feed kit's pieces, each against its one rule (no sockets)."""
from __future__ import annotations

from datetime import datetime, timezone

from collector.connection import HeartbeatPolicy
from collector.kit.availability import Availability
from collector.kit.emitters import CandleCloser, ChangeOrInterval
from collector.kit.requests import PendingRequests
from collector.kit.spec import Channel, ConnectionSpec, Limits, VenueSpec, batches, plan_connections
from collector.kit.trade_candles import TradeCandles
from collector.kit.tradeids import Hole, TradeIdContinuity
from common.schema import Candle, Trade

T0 = 1_764_633_600_000          # 2025-12-02T00:00:00Z, a minute boundary (ms)


def _dt(ms: float) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def _trade(trade_id: str, at_ms: float, price: float, size: float, market: str = "perp"
           ) -> Trade:
    return Trade("kraken", "PF_XBTUSD", "BTC/USD", market, _dt(at_ms), _dt(at_ms),
                 trade_id=trade_id, price=price, size=size, side="buy")


def test_trade_candles_ohlcv_from_distinct_trades_closed_after_the_minute():
    builder = TradeCandles({"perp"}, grace_s=2.0)
    builder.add(_trade("1", T0 + 1_000, 100.0, 1.0))
    builder.add(_trade("3", T0 + 50_000, 99.0, 0.5))
    builder.add(_trade("2", T0 + 20_000, 104.0, 2.0))
    builder.add(_trade("2", T0 + 20_000, 104.0, 2.0))      # a repeat (rotation, backfill)
    builder.add(_trade("9", T0 + 5_000, 1.0, 1.0, market="spot"))   # not a built market
    [running] = builder.due(T0 + 59_000)
    assert (running.ts, running.open, running.high, running.low, running.close) == \
        (_dt(T0), 100.0, 104.0, 99.0, 99.0)
    assert (running.volume, running.quote_volume, running.trades) == (3.5, 100.0 + 208.0 + 49.5, 3)
    assert (running.closed, running.source, running.interval) == (False, "trades", "1m")
    assert builder.due(T0 + 60_500) == []                  # unchanged, still within the grace
    [final] = builder.due(T0 + 62_001)
    assert final.closed is True and final.close == 99.0 and final.trades == 3
    assert builder.due(T0 + 63_000) == []


def test_trade_candles_rebuild_a_closed_minute_from_backfilled_trades():
    builder = TradeCandles({"perp"})
    builder.add(_trade("10", T0 + 10_000, 100.0, 1.0))
    builder.due(T0 + 70_000)                                # closed with one trade
    builder.add(_trade("9", T0 + 2_000, 98.0, 1.0))         # backfill: an earlier trade
    builder.add(_trade("10", T0 + 10_000, 100.0, 1.0))      # and the one already counted
    [rebuilt] = builder.due(T0 + 120_000)
    assert (rebuilt.open, rebuilt.low, rebuilt.close, rebuilt.trades, rebuilt.closed) == \
        (98.0, 98.0, 100.0, 2, True)


def test_change_or_interval():
    rule = ChangeOrInterval(min_interval_s=1.0, max_interval_s=60.0)
    assert rule.due("k", 1, now=0.0) is True
    assert rule.due("k", 2, now=0.5) is False              # changed, but within min interval
    assert rule.due("k", 2, now=1.0) is True
    assert rule.due("k", 2, now=30.0) is False             # unchanged
    assert rule.due("k", 2, now=61.0) is True              # unchanged, interval elapsed
    assert rule.due("other", 2, now=61.0) is True


def _candle(minute: int, close: float) -> Candle:
    return Candle("gateio", "BTC_USDT", "BTC/USDT", "spot", _dt(T0 + minute * 60_000),
                  _dt(T0), close=close)


def test_candle_closer():
    closer = CandleCloser()
    first = _candle(0, 1.0)
    assert closer.push(first) == [first]
    again = _candle(0, 2.0)
    assert closer.push(again) == [again]
    nxt = _candle(1, 3.0)
    out = closer.push(nxt)
    assert out == [again, nxt] and again.closed is True and nxt.closed is False
    assert closer.push(_candle(0, 9.0)) == []               # older than the running one
    closer.drop("spot")
    late = _candle(2, 4.0)
    assert closer.push(late) == [late] and nxt.closed is False   # dropped: never closed


def test_trade_id_continuity():
    off: list = []
    ids = TradeIdContinuity(max_holes_per_minute=2, on_switched_off=off.append)
    assert ids.check("a", 10, 10, 1000) is None
    assert ids.check("a", 11, 11, 1001) is None
    assert ids.check("a", 11, 11, 1001) is None                # repeat
    assert ids.check("a", 15, 16, 1005) == Hole(12, 14, 1001, 1005)
    assert ids.check("a", 12, 12, 1002) is None                # late overlap: no move back
    assert ids.check("a", 17, 17, 1006) is None
    ids.forget(["a"])
    assert ids.check("a", 30, 30, 2000) is None                # after a reconnect: no hole
    assert ids.check("a", 40, 40, 2001) == Hole(31, 39, 2000, 2001)
    assert ids.check("b", 1, 1, 2001) is None
    assert ids.check("a", 50, 50, 2002) is None and off == ["a"]   # 3rd hole: off, told once
    assert ids.check("a", 60, 60, 2003) is None and off == ["a"]
    ids.forget(["a"])                                          # a reconnect: still off
    assert ids.check("a", 70, 70, 2004) is None
    assert ids.check("a", 90, 90, 2005) is None and off == ["a"]
    assert ids.check("b", 3, 3, 2006) == Hole(2, 2, 2001, 2006)   # other keys still checked


def test_availability_is_per_market():
    reasons: dict[str, str] = {}
    registry = Availability("gateio", reasons)
    registry.mark("perp", "BTC_USDT", "contract lookup failed: 404")
    assert registry.ok("spot", "BTC_USDT") and not registry.ok("perp", "BTC_USDT")
    assert reasons == {"perp:BTC_USDT": "contract lookup failed: 404"}


def test_plan_splits_connections_by_count_and_chars_and_keeps_symbols_together():
    book, trades = Channel("book.", "book"), Channel("trades.", "trades")
    spec = VenueSpec("x", (ConnectionSpec("spot", "spot", "spot_ws_url", (book, trades),
                                          path="/ws", heartbeat=HeartbeatPolicy()),),
                     Limits(subscriptions_per_connection=5, arg_chars_per_connection=30))
    symbols = ["AAA", "BBB", "CCC", "DDDDDDDDDD"]
    plan = plan_connections(spec, lambda market: symbols, lambda m, s, st: st != "trades" or
                            s != "BBB", lambda field: "ws://h/", lambda s: s.channel.name +
                            s.symbol)
    labelled = [(label, url, [(s.channel.name, s.symbol) for s in subs])
                for _spec, label, url, subs in plan]
    assert labelled == [
        # AAA (2 subs, 18 chars) + BBB (book only: 8) = 26 chars; CCC (18) would pass 30.
        ("spot", "ws://h/ws", [("book.", "AAA"), ("trades.", "AAA"), ("book.", "BBB")]),
        ("spot-2", "ws://h/ws", [("book.", "CCC"), ("trades.", "CCC")]),
        ("spot-3", "ws://h/ws", [("book.", "DDDDDDDDDD"), ("trades.", "DDDDDDDDDD")]),
    ]
    assert batches([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]
    assert batches([1, 2], 0) == [[1, 2]] and batches([], 3) == []


def test_pending_requests_by_id_or_named_argument_bounded_and_forgotten():
    pending: PendingRequests[str] = PendingRequests(ttl_s=60.0, max_pending=3)
    ids = [pending.new_id() for _ in range(4)]
    assert ids == [1, 2, 3, 4]
    for req_id, conn, args in ((1, "spot", ["a", "b"]), (2, "spot", ["c"]), (3, "perp", ["c"]),
                               (4, "spot", ["d"])):
        pending.add(req_id, conn, args)
    assert len(pending) == 3 and pending.take(1) is None        # bounded: the oldest went
    assert pending.take(None, "perp", "c").args == ["c"]         # no id: the named argument
    assert pending.take(2).conn == "spot" and pending.take(2) is None
    pending.drop("spot")
    assert len(pending) == 0 and pending.take(4) is None
    stale: PendingRequests[str] = PendingRequests(ttl_s=0.0)
    stale.add("r1", "spot", ["x"])
    assert "r1" not in stale                                      # older than the TTL
