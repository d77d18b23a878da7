"""Wire formats of the replay server for Bybit, OKX, Kraken and Gate.io (Binance's is in
``replay_server.py``), and the per-exchange facts the benchmark client needs.

Message shapes follow the documented samples in ``tests/fixtures/<exchange>`` (the same ones the
fakes in ``tests/fakes`` send); values move like a live market (``TickerState``, ``Book``):

- **bybit** (v5 spot): ``publicTrade.<S>``, ``tickers.<S>`` (spot snapshot pushes),
  ``orderbook.200.<S>``: one ``snapshot`` then ``delta`` messages, ``u`` + 1 each.
- **okx** (v5, ``/ws/v5/public``): ``trades-all`` (one fill per push, the channel the feed
  subscribes on /business; the replay server streams every kind on the one data connection),
  ``tickers``, ``books`` (400 levels): one
  ``snapshot`` then ``update`` messages with ``prevSeqId``/``seqId``, ``checksum`` 0 (the field is
  deprecated and always 0 since 2026-06-23: docs/exchanges/okx.md), 4-field levels
  ``[px, sz, "0", orders]``.
- **kraken** (spot WebSocket v2): numbers are JSON numbers with the engine's precision (trailing
  zeros kept, so these messages are written as text, not with orjson); ``trade``, ``ticker``,
  ``book`` with a ``snapshot`` then ``update`` messages carrying the CRC32 checksum of the top 10
  asks + top 10 bids. The first client request is answered with an ``instrument`` snapshot
  (price/qty precisions), as the feed waits for it before subscribing the book.
- **gateio** (v4 spot): ``spot.trades``, ``spot.tickers``, ``spot.order_book_update`` diffs with
  ``U``/``u`` spliced onto the REST ``/spot/order_book?with_id=true`` snapshot (served by the
  replay server; the stream waits for it like Binance's).
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable

import orjson

if TYPE_CHECKING:
    from tests.bench.replay_server import Book, TickerState

EXCHANGES = ("binance", "bybit", "okx", "kraken", "gateio")
# Book levels per side the exchange's stream keeps (and the feed is configured with).
BOOK_LEVELS = {"binance": 1000, "bybit": 200, "okx": 400, "kraken": 100, "gateio": 100}
# Price decimals on the wire (every exchange but Binance: 2, the 0.01 tick).
DECIMALS = {"binance": 8, "bybit": 2, "okx": 2, "kraken": 2, "gateio": 2}


def symbols_for(count: int, exchange: str = "binance") -> list[str]:
    """Native spot symbols of ``exchange``: BTC, ETH, ... then synthetic ones."""
    bases = ["BTC", "ETH", "SOL", "BNB", "XRP", "ADA", "DOGE"] + [f"ZZ{i:04d}" for i in range(count)]
    quote = "USD" if exchange == "kraken" else "USDT"
    fmt = {"binance": "{b}{q}", "bybit": "{b}{q}", "okx": "{b}-{q}", "kraken": "{b}/{q}",
           "gateio": "{b}_{q}"}[exchange]
    return [fmt.format(b=b, q=quote) for b in bases[:count]]


# ---- what the benchmark client needs per exchange ------------------------------------------------
# Suffix of the feed's configured spot WebSocket URL, as in the default settings (the replay
# server ignores it, except OKX's <base>/business connection, which gets no data: candles are not
# measured, and the feed opens it whatever it subscribes).
WS_SUFFIX = {"binance": "", "bybit": "/v5/public/spot", "okx": "/ws/v5", "kraken": "/v2",
             "gateio": "/ws/v4/"}
# URL the floor client connects to, relative to the scenario base URL.
FLOOR_PATH = {"binance": "/stream", "bybit": "/v5/public/spot", "okx": "/ws/v5/public",
              "kraken": "/v2", "gateio": "/ws/v4/"}
# Floor client: "is this decoded message market data?" (everything else is control traffic).
IS_DATA: dict[str, Callable[[Any], bool]] = {
    "binance": lambda m: "data" in m,
    "bybit": lambda m: "topic" in m,
    "okx": lambda m: "data" in m,
    "kraken": lambda m: m.get("channel") in ("trade", "ticker", "book"),
    "gateio": lambda m: m.get("event") == "update",
}
# REST depth snapshot the floor client downloads too (exchanges that sync books over REST).
SNAPSHOT_PATH = {"binance": ("/api/v3/depth", "symbol", {"limit": "1000"}),
                 "gateio": ("/spot/order_book", "currency_pair",
                            {"limit": "100", "with_id": "true"})}


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _crc_signed(text: str) -> int:
    import zlib
    crc = zlib.crc32(text.encode())
    return crc - (1 << 32) if crc >= (1 << 31) else crc


def _kraken_digits(text: str) -> str:
    return text.replace(".", "").lstrip("0")


# ---- per-exchange frames ---------------------------------------------------------------------------
class Frames:
    """Builds one exchange's payloads (bytes) for a scenario; subclasses per exchange."""

    name = ""

    def __init__(self, rng) -> None:
        self.rng = rng
        self.trade_id = 1_000_000

    def greeting(self, books: dict[str, Book]) -> bytes | None:
        """Answer to the client's first request (control traffic), if the exchange sends one."""
        return None

    def snapshot_frame(self, book: Book, ts: int) -> bytes | None:
        """The WebSocket book snapshot that starts a depth stream (None: REST snapshot)."""
        return None

    def rest_snapshot(self, book: Book) -> bytes | None:
        return None

    def trade(self, book: Book, ts: int) -> bytes:
        raise NotImplementedError

    def ticker(self, ticker: TickerState, ts: int) -> bytes:
        raise NotImplementedError

    def depth(self, book: Book, ts: int) -> bytes:
        raise NotImplementedError

    # shared helpers
    def _trade_values(self, book: Book) -> tuple[int, str, str, str]:
        rng = self.rng
        self.trade_id += 1
        return (self.trade_id, book.price(rng.randint(-5, 5)), f"{rng.uniform(0.0001, 2):.8f}",
                "buy" if rng.random() < 0.5 else "sell")


class BybitFrames(Frames):
    name = "bybit"

    def trade(self, book, ts):
        tid, price, qty, side = self._trade_values(book)
        return orjson.dumps({
            "topic": f"publicTrade.{book.symbol}", "type": "snapshot", "ts": ts,
            "data": [{"T": ts, "s": book.symbol, "S": "Buy" if side == "buy" else "Sell",
                      "v": qty, "p": price, "L": "PlusTick", "i": str(2290000000000000000 + tid),
                      "BT": False, "seq": tid}]})

    def ticker(self, t, ts):
        v = t.values()
        return orjson.dumps({
            "topic": f"tickers.{t.book.symbol}", "ts": ts, "type": "snapshot", "cs": ts,
            "data": {"symbol": t.book.symbol, "lastPrice": v["last"], "highPrice24h": v["high"],
                     "lowPrice24h": v["low"], "prevPrice24h": v["open"],
                     "volume24h": v["volume"], "turnover24h": v["quote"],
                     "price24hPcnt": v["change_ratio"], "usdIndexPrice": v["vwap"]}})

    def _book_msg(self, book, kind, ts, bids, asks):
        return orjson.dumps({
            "topic": f"orderbook.200.{book.symbol}", "type": kind, "ts": ts,
            "data": {"s": book.symbol, "b": bids, "a": asks, "u": book.update_id,
                     "seq": 66544703342 + book.update_id}, "cts": ts - 2})

    def snapshot_frame(self, book, ts):
        bids, asks = book.levels_text()
        return self._book_msg(book, "snapshot", ts, bids, asks)

    def depth(self, book, ts):
        bids, asks = book.changes("0")
        book.update_id += 1
        return self._book_msg(book, "delta", ts, bids, asks)


class OkxFrames(Frames):
    name = "okx"

    def trade(self, book, ts):
        tid, price, qty, side = self._trade_values(book)
        return orjson.dumps({
            "arg": {"channel": "trades-all", "instId": book.symbol},
            "data": [{"instId": book.symbol, "tradeId": str(tid), "px": price, "sz": qty,
                      "side": side, "ts": str(ts)}]})

    def ticker(self, t, ts):
        v = t.values()
        return orjson.dumps({
            "arg": {"channel": "tickers", "instId": t.book.symbol},
            "data": [{"instType": "SPOT", "instId": t.book.symbol, "last": v["last"],
                      "lastSz": v["last_qty"], "askPx": v["ask"], "askSz": v["ask_qty"],
                      "bidPx": v["bid"], "bidSz": v["bid_qty"], "open24h": v["open"],
                      "high24h": v["high"], "low24h": v["low"], "sodUtc0": v["open"],
                      "sodUtc8": v["open"], "volCcy24h": v["quote"], "vol24h": v["volume"],
                      "ts": str(ts)}]})

    def _book_msg(self, book, action, ts, bids, asks, prev):
        rng = self.rng
        return orjson.dumps({
            "arg": {"channel": "books", "instId": book.symbol}, "action": action,
            "data": [{"asks": [[p, q, "0", str(rng.randint(1, 20))] for p, q in asks],
                      "bids": [[p, q, "0", str(rng.randint(1, 20))] for p, q in bids],
                      "ts": str(ts), "checksum": 0, "prevSeqId": prev,
                      "seqId": book.update_id}]})

    def snapshot_frame(self, book, ts):
        bids, asks = book.levels_text()
        return self._book_msg(book, "snapshot", ts, bids, asks, -1)

    def depth(self, book, ts):
        bids, asks = book.changes("0")
        prev = book.update_id
        book.update_id += self.rng.randint(1, 3)
        return self._book_msg(book, "update", ts, bids, asks, prev)


class KrakenFrames(Frames):
    """Kraken v2 numbers are JSON numbers whose digits matter (checksum): written as text."""

    name = "kraken"

    def greeting(self, books):
        return orjson.dumps({"channel": "instrument", "type": "snapshot", "data": {
            "assets": [], "pairs": [{"symbol": s, "base": s.split("/")[0], "quote": "USD",
                                     "status": "online", "price_precision": 2,
                                     "qty_precision": 8, "price_increment": 0.01,
                                     "qty_increment": 1e-08} for s in books]}})

    def trade(self, book, ts):
        tid, price, qty, side = self._trade_values(book)
        return (f'{{"channel":"trade","type":"update","data":[{{"symbol":"{book.symbol}",'
                f'"side":"{side}","price":{price},"qty":{qty},"ord_type":"market",'
                f'"trade_id":{tid},"timestamp":"{iso(ts)}"}}]}}').encode()

    def ticker(self, t, ts):
        v = t.values()
        return (f'{{"channel":"ticker","type":"update","data":[{{"symbol":"{t.book.symbol}",'
                f'"bid":{v["bid"]},"bid_qty":{v["bid_qty"]},"ask":{v["ask"]},'
                f'"ask_qty":{v["ask_qty"]},"last":{v["last"]},"volume":{v["volume"]},'
                f'"vwap":{v["vwap"]},"low":{v["low"]},"high":{v["high"]},'
                f'"change":{v["change"]},"change_pct":{v["change_pct2"]},'
                f'"timestamp":"{iso(ts)}"}}]}}').encode()

    def _checksum(self, book) -> int:
        import zlib
        bids, asks = book.top(10)
        text = "".join(_kraken_digits(p) + _kraken_digits(q) for p, q in asks) + \
            "".join(_kraken_digits(p) + _kraken_digits(q) for p, q in bids)
        return zlib.crc32(text.encode()) & 0xFFFFFFFF

    def _book_msg(self, book, kind, ts, bids, asks):
        def levels(side):
            return ",".join(f'{{"price":{p},"qty":{q}}}' for p, q in side)
        return (f'{{"channel":"book","type":"{kind}","data":[{{"symbol":"{book.symbol}",'
                f'"bids":[{levels(bids)}],"asks":[{levels(asks)}],'
                f'"checksum":{self._checksum(book)},"timestamp":"{iso(ts)}"}}]}}').encode()

    def snapshot_frame(self, book, ts):
        bids, asks = book.levels_text()
        return self._book_msg(book, "snapshot", ts, bids, asks)

    def depth(self, book, ts):
        bids, asks = book.changes("0.00000000")
        return self._book_msg(book, "update", ts, bids, asks)


class GateioFrames(Frames):
    name = "gateio"

    def trade(self, book, ts):
        tid, price, qty, side = self._trade_values(book)
        return orjson.dumps({
            "time": ts // 1000, "time_ms": ts, "channel": "spot.trades", "event": "update",
            "result": {"id": tid, "create_time": ts // 1000, "create_time_ms": f"{ts}.{tid % 10000:04d}",
                       "side": side, "currency_pair": book.symbol, "amount": qty, "price": price,
                       "range": f"{tid}-{tid}", "id_market": tid}})

    def ticker(self, t, ts):
        v = t.values()
        return orjson.dumps({
            "time": ts // 1000, "time_ms": ts, "channel": "spot.tickers", "event": "update",
            "result": {"currency_pair": t.book.symbol, "last": v["last"], "lowest_ask": v["ask"],
                       "highest_bid": v["bid"], "change_percentage": v["change_pct"],
                       "base_volume": v["volume"], "quote_volume": v["quote"],
                       "high_24h": v["high"], "low_24h": v["low"]}})

    def rest_snapshot(self, book):
        bids, asks = book.levels_text()
        return orjson.dumps({"id": book.update_id, "current": 0, "update": 0,
                             "asks": asks, "bids": bids})

    def depth(self, book, ts):
        bids, asks = book.changes("0")
        first = book.update_id + 1
        book.update_id += self.rng.randint(1, 20)
        return orjson.dumps({
            "time": ts // 1000, "time_ms": ts, "channel": "spot.order_book_update",
            "event": "update", "result": {"t": ts, "e": "depthUpdate", "E": ts // 1000,
                                          "s": book.symbol, "U": first, "u": book.update_id,
                                          "b": bids, "a": asks}})


FRAMES: dict[str, type[Frames]] = {cls.name: cls for cls in
                                   (BybitFrames, OkxFrames, KrakenFrames, GateioFrames)}
