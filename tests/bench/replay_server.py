"""Exchange replay server for the benchmarks (run in its own process; not a test).

Speaks just enough HTTP/1.1 + RFC 6455 to look like an exchange to the collector. Binance: the
combined-stream WebSocket (``.../stream``, SUBSCRIBE answered with an ack) and the REST endpoints
the feed calls (``/api/v3/exchangeInfo``, ``/api/v3/depth``). Bybit, OKX, Kraken and Gate.io:
their spot streams in their own wire formats (``tests/bench/exchanges.py``), plus Gate.io's REST
book snapshot. Messages are generated once per scenario, encoded and pre-framed as WebSocket text
frames, so the server costs almost no CPU: it writes frame-aligned chunks to the socket as fast
as the client drains them (``rate=0``) or at a fixed rate. Plain ``ws://`` and ``wss://``
(self-signed certificate generated at start-up) are served on two ports.

The scenario is encoded in the URL so one server serves every run::

    ws://127.0.0.1:PORT/b/<exchange>/<kind>/<count>/<rate>/<symbols>/<levels>/<warmup>/stream
    http://127.0.0.1:PORT/b/<exchange>/<kind>/<count>/<rate>/<symbols>/<levels>/<warmup>/api/v3/depth?...

``exchange``: binance | bybit | okx | kraken | gateio. ``kind``: trade | ticker | depth | kline |
mix (kline and mix: Binance only). ``levels``: book levels per side in the snapshot (diffs touch
5-15 levels per side inside that range). The stream sends ``warmup`` messages, waits until every
symbol's REST depth snapshot was served (Binance, Gate.io; the feeds' documented sync), then the
remaining ``count - warmup`` messages. Depth diffs continue from the snapshot's id
(``U = prev u + 1``), so a client following the exchange's procedure stays in sync; Bybit, OKX
and Kraken depth streams start with the WebSocket snapshot those exchanges send.

Usage: ``python -m tests.bench.replay_server --port 0 --tls-port 0`` prints ``READY <port>
<tls_port> <cert_path>`` on stdout.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import hashlib
import os
import random
import ssl
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import orjson

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# Event times start at server start-up: documents must be younger than the TTL indexes' retention
# or MongoDB's TTL monitor deletes them while the benchmark counts them.
BASE_TS = int(time.time() * 1000)
TICK = 0.01


from tests.bench.exchanges import DECIMALS, FRAMES, symbols_for  # noqa: E402,F401


def frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return bytes((0x81, 126)) + struct.pack("!H", n) + payload
    return bytes((0x81, 127)) + struct.pack("!Q", n) + payload


@dataclass
class Book:
    symbol: str
    mid: float
    levels: int
    rng: random.Random
    decimals: int = 8
    update_id: int = 1000
    bids: dict[int, str] = field(default_factory=dict)   # tick index below mid -> qty text
    asks: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for i in range(1, self.levels + 1):
            self.bids[i] = f"{self.rng.uniform(0.001, 5):.8f}"
            self.asks[i] = f"{self.rng.uniform(0.001, 5):.8f}"
        # Tick indexes in best-first order (index 1 is the best level of either side).
        self.keys = {"b": sorted(self.bids), "a": sorted(self.asks)}
        self.snapshot = orjson.dumps({
            "lastUpdateId": self.update_id,
            "bids": [[self.price(-i), q] for i, q in sorted(self.bids.items())],
            "asks": [[self.price(i), q] for i, q in sorted(self.asks.items())]})

    def price(self, offset: int) -> str:
        return f"{self.mid + offset * TICK:.{self.decimals}f}"

    def levels_text(self) -> tuple[list[list[str]], list[list[str]]]:
        """The whole book as ``[price, qty]`` text pairs, best first."""
        return ([[self.price(-i), self.bids[i]] for i in self.keys["b"]],
                [[self.price(i), self.asks[i]] for i in self.keys["a"]])

    def top(self, n: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        return ([(self.price(-i), self.bids[i]) for i in self.keys["b"][:n]],
                [(self.price(i), self.asks[i]) for i in self.keys["a"][:n]])

    def changes(self, deleted: str) -> tuple[list[list[str]], list[list[str]]]:
        """Apply 5-15 random changes per side to the book; returns them as ``[price, qty]``
        text pairs (``deleted`` is the exchange's quantity text of a removed level)."""
        rng = self.rng
        out = []
        for side, sign in (("b", -1), ("a", 1)):
            levels = self.bids if sign < 0 else self.asks
            keys = self.keys[side]
            changes = []
            for _ in range(rng.randint(5, 15)):
                # Skewed towards the top of the book, always inside the snapshot's range.
                i = 1 + min(self.levels - 1, int(rng.expovariate(1.0 / max(2.0, self.levels / 8))))
                if i in levels and rng.random() < 0.2 and len(levels) > self.levels // 2:
                    del levels[i]
                    del keys[bisect.bisect_left(keys, i)]
                    changes.append([self.price(sign * i), deleted])
                else:
                    q = f"{rng.uniform(0.001, 5):.8f}"
                    if i not in levels:
                        bisect.insort(keys, i)
                    levels[i] = q
                    changes.append([self.price(sign * i), q])
            out.append(changes)
        return out[0], out[1]

    def diff(self, ts: int) -> dict:
        """A Binance ``depthUpdate`` (``U`` = previous ``u`` + 1)."""
        bids, asks = self.changes("0.00000000")
        first = self.update_id + 1
        self.update_id += self.rng.randint(1, 20)
        return {"e": "depthUpdate", "E": ts, "s": self.symbol, "U": first, "u": self.update_id,
                "b": bids, "a": asks}

class TickerState:
    """A symbol's rolling 24 h statistics, moving like a live market: every message has a new
    last price (a random walk on the tick grid), new best bid/ask and their sizes, growing
    volumes and trade counts; open/high/low move now and then. (Identical messages would let a
    text->float cache look better than it is on a real stream.)"""

    def __init__(self, book: Book, rng: random.Random) -> None:
        self.book, self.rng = book, rng
        self.last = 0
        self.open, self.high, self.low = -50, 80, -90
        self.volume = 122474.816
        self.quote = self.volume * book.mid
        self.first_id, self.last_id = 2289691, 2432543

    def step(self) -> None:
        rng = self.rng
        self.last += rng.choice((-2, -1, -1, 0, 1, 1, 2))
        self.high, self.low = max(self.high, self.last), min(self.low, self.last)
        if rng.random() < 0.3:
            self.open += rng.choice((-1, 1))       # the 24 h window slides
        traded = rng.uniform(0.0001, 2.0)
        self.volume += traded
        self.quote += traded * (self.book.mid + self.last * TICK)
        self.last_id += rng.randint(1, 30)

    def values(self) -> dict[str, str]:
        """One step of the market, as text fields every exchange's ticker is built from."""
        self.step()
        rng, price, d = self.rng, self.book.price, self.book.decimals
        spread = rng.randint(1, 2)
        change = (self.last - self.open) * TICK
        ratio = change / (self.book.mid + self.open * TICK)
        return {"last": price(self.last), "prev": price(self.last - 1),
                "bid": price(self.last - spread + 1), "ask": price(self.last + 1),
                "bid_qty": f"{rng.uniform(0.001, 5):.8f}", "ask_qty": f"{rng.uniform(0.001, 5):.8f}",
                "last_qty": f"{rng.uniform(0.0001, 2):.8f}", "open": price(self.open),
                "high": price(self.high), "low": price(self.low), "volume": f"{self.volume:.8f}",
                "quote": f"{self.quote:.8f}", "vwap": f"{self.quote / self.volume:.{d}f}",
                "change": f"{change:.{d}f}", "change_pct": f"{ratio * 100:.3f}",
                "change_pct2": f"{ratio * 100:.2f}", "change_ratio": f"{ratio:.6f}"}

    def next(self, ts: int) -> dict:
        """A Binance ``24hrTicker``."""
        v = self.values()
        return {"e": "24hrTicker", "E": ts, "s": self.book.symbol, "p": v["change"],
                "P": v["change_pct"], "w": v["vwap"], "x": v["prev"], "c": v["last"],
                "Q": v["last_qty"], "b": v["bid"], "B": v["bid_qty"], "a": v["ask"],
                "A": v["ask_qty"], "o": v["open"], "h": v["high"], "l": v["low"],
                "v": v["volume"], "q": v["quote"], "O": ts - 86_400_000, "C": ts,
                "F": self.first_id, "L": self.last_id, "n": self.last_id - self.first_id + 1}

    def kline(self, ts: int) -> dict:
        self.step()
        rng, price = self.rng, self.book.price
        start = ts - ts % 60_000
        vol = rng.uniform(1, 30000)
        first = self.open // 8
        return {"e": "kline", "E": ts, "s": self.book.symbol, "k": {
            "t": start, "T": start + 59_999, "s": self.book.symbol, "i": "1m", "f": 100,
            "L": self.last_id, "o": price(first), "c": price(self.last),
            "h": price(max(self.last, first) + 4), "l": price(min(self.last, first) - 4),
            "v": f"{vol:.8f}", "n": self.last_id % 1000, "x": False,
            "q": f"{vol * self.book.mid:.8f}", "V": f"{vol / 2:.8f}",
            "Q": f"{vol * self.book.mid / 2:.8f}", "B": "0"}}


@dataclass
class Scenario:
    exchange: str
    kind: str
    count: int
    rate: float
    nsymbols: int
    levels: int
    warmup: int
    frames: list[bytes] = field(default_factory=list)
    books: dict[str, Book] = field(default_factory=dict)
    snapshots_served: set = field(default_factory=set)
    synced: asyncio.Event | None = None
    greeting: bytes | None = None         # answer to the first client request
    rest_snapshots: bool = True           # books start from a REST snapshot (else a WS one)
    format: object = None
    rest_bodies: dict[str, bytes | None] = field(default_factory=dict)

    @property
    def has_depth(self) -> bool:
        return self.kind in ("depth", "mix")

    @property
    def waits_for_snapshots(self) -> bool:
        return self.has_depth and self.rest_snapshots

    def build(self) -> None:
        rng = random.Random(42)
        syms = symbols_for(self.nsymbols, self.exchange)
        self.books = {s: Book(s, 100.0 + 500 * i + 60000.0 * (i == 0), self.levels, rng,
                              DECIMALS[self.exchange]) for i, s in enumerate(syms)}
        tickers = {s: TickerState(book, rng) for s, book in self.books.items()}
        if self.exchange != "binance":
            self.build_exchange(rng, syms, tickers)
            return
        trade_ids = {s: 1_000_000 for s in syms}
        kinds = [self.kind] if self.kind != "mix" else \
            ["trade"] * 5 + ["depth"] * 2 + ["ticker"] * 2 + ["kline"]
        frames = self.frames
        for n in range(self.count):
            sym = syms[n % len(syms)]
            low = sym.lower()
            kind = kinds[(n // len(syms)) % len(kinds)]
            ts = BASE_TS + n
            book = self.books[sym]
            if kind == "trade":
                trade_ids[sym] += 1
                data = {"e": "trade", "E": ts, "s": sym, "t": trade_ids[sym],
                        "p": book.price(rng.randint(-5, 5)), "q": f"{rng.uniform(0.0001, 2):.8f}",
                        "T": ts, "m": rng.random() < 0.5, "M": True}
                stream = f"{low}@trade"
            elif kind == "ticker":
                data = tickers[sym].next(ts)
                stream = f"{low}@ticker"
            elif kind == "kline":
                data = tickers[sym].kline(ts)
                stream = f"{low}@kline_1m"
            else:
                data = book.diff(ts)
                stream = f"{low}@depth@100ms"
            frames.append(frame(orjson.dumps({"stream": stream, "data": data})))

    def build_exchange(self, rng: random.Random, syms: list[str], tickers: dict) -> None:
        """Bybit / OKX / Kraken / Gate.io frames (tests/bench/exchanges.py): trade, ticker or
        depth. A depth stream starts with each book's WebSocket snapshot where the exchange
        sends one (Bybit, OKX, Kraken; counted as data like the exchange's own), else the
        client fetches the REST snapshot first (Gate.io)."""
        fmt = self.format = FRAMES[self.exchange](rng)
        self.greeting = fmt.greeting(self.books)
        frames = self.frames
        n = 0
        if self.kind == "depth":
            # Snapshots of the books' state before the first diff: REST bodies (served on
            # request) or the WebSocket snapshot message that starts the stream.
            self.rest_bodies = {s: fmt.rest_snapshot(self.books[s]) for s in syms}
            for sym in syms:
                first = fmt.snapshot_frame(self.books[sym], BASE_TS)
                if first is not None:
                    frames.append(frame(first))
                    n += 1
            self.rest_snapshots = n == 0
        build = {"trade": lambda s, ts: fmt.trade(self.books[s], ts),
                 "ticker": lambda s, ts: fmt.ticker(tickers[s], ts),
                 "depth": lambda s, ts: fmt.depth(self.books[s], ts)}[self.kind]
        for i in range(n, self.count):
            frames.append(frame(build(syms[i % len(syms)], BASE_TS + i)))

    def snapshot(self, symbol: str) -> bytes | None:
        book = self.books.get(symbol)
        if book is None:
            return None
        self.snapshots_served.add(symbol)
        if self.synced is not None and len(self.snapshots_served) >= len(self.books):
            self.synced.set()
        if self.format is not None:
            return self.rest_bodies.get(symbol)
        return book.snapshot


class ReplayServer:
    def __init__(self) -> None:
        self.scenarios: dict[str, Scenario] = {}

    def scenario(self, key: str) -> Scenario:
        sc = self.scenarios.get(key)
        if sc is None:
            exchange, kind, count, rate, nsym, levels, warmup = key.split("/")
            sc = Scenario(exchange, kind, int(count), float(rate), int(nsym), int(levels),
                          int(warmup))
            sc.build()
            # Keep memory bounded across many runs: only the newest few scenarios stay cached.
            if len(self.scenarios) > 6:
                self.scenarios.pop(next(iter(self.scenarios)))
            self.scenarios[key] = sc
        return sc

    @staticmethod
    def split(path: str) -> tuple[str, str]:
        """``/b/x/k/n/r/s/l/w/rest...`` -> (scenario key, rest)."""
        parts = path.split("/")
        if len(parts) < 10 or parts[1] != "b":
            raise ValueError(path)
        return "/".join(parts[2:9]), "/" + "/".join(parts[9:])

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                if headers.get("upgrade", "").lower() == "websocket":
                    await self.websocket(target, headers, reader, writer)
                    return
                status, body = self.rest(target)
                writer.write(b"HTTP/1.1 %d OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\nConnection: keep-alive\r\n\r\n" % (status, len(body))
                             + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    def rest(self, target: str) -> tuple[int, bytes]:
        url = urlsplit(target)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        try:
            key, rest = self.split(url.path)
        except ValueError:
            return 404, b'{"code":-1,"msg":"not found"}'
        sc = self.scenario(key)
        if rest.endswith("/exchangeInfo"):
            symbol = query.get("symbol")
            syms = [symbol] if symbol else list(sc.books)
            return 200, orjson.dumps({"symbols": [{"symbol": s, "status": "TRADING"} for s in syms]})
        if rest.endswith("/depth"):
            body = sc.snapshot(query.get("symbol", ""))
            if body is None:
                return 400, b'{"code":-1121,"msg":"Invalid symbol."}'
            return 200, body
        if rest.endswith("/spot/order_book"):                     # Gate.io
            body = sc.snapshot(query.get("currency_pair", ""))
            if body is None:
                return 400, b'{"label":"INVALID_CURRENCY_PAIR","message":"Invalid pair"}'
            return 200, body
        return 404, b'{"code":-1,"msg":"not found"}'

    async def websocket(self, target: str, headers: dict, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
        accept = base64.b64encode(hashlib.sha1(headers["sec-websocket-key"].encode() + GUID).digest())
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        key, rest = self.split(urlsplit(target).path)
        sc = self.scenario(key)
        if sc.exchange == "okx" and rest.endswith("/business"):
            # OKX's candle connection: not measured, so it gets no data (requests are read).
            while await read_frame(reader) is not None:
                pass
            return
        sc.snapshots_served = set()
        sc.synced = asyncio.Event()
        first = await read_frame(reader)           # the client's first request (subscribe)
        if first is None:
            return
        if sc.exchange == "binance":
            writer.write(frame(orjson.dumps({"result": None, "id": _msg_id(first)})))
        elif sc.greeting is not None:
            writer.write(frame(sc.greeting))
        acker = asyncio.get_running_loop().create_task(
            self.ack_more(reader, writer, sc.exchange == "binance"))
        try:
            await self.stream(sc, writer)
            await acker                              # keep the socket open until the client leaves
        finally:
            acker.cancel()

    async def ack_more(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       ack: bool = True) -> None:
        """Read the client's further requests; Binance-style acks only for Binance (the other
        feeds need none, and an ack in the wrong shape would count as a malformed message)."""
        while True:
            payload = await read_frame(reader)
            if payload is None:
                return
            if payload and ack:
                writer.write(frame(orjson.dumps({"result": None, "id": _msg_id(payload)})))

    async def stream(self, sc: Scenario, writer: asyncio.StreamWriter) -> None:
        frames = sc.frames
        warm = min(sc.warmup, len(frames))
        await self.send(frames[:warm], sc.rate, writer)
        if sc.waits_for_snapshots:
            try:
                await asyncio.wait_for(sc.synced.wait(), 20)
            except asyncio.TimeoutError:
                print("replay: not every depth snapshot was requested", file=sys.stderr)
            await asyncio.sleep(0.4)               # the feed applies its buffered diffs
        await self.send(frames[warm:], sc.rate, writer)

    @staticmethod
    async def send(frames: list[bytes], rate: float, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        if rate <= 0:
            chunk = 256
            for start in range(0, len(frames), chunk):
                writer.write(b"".join(frames[start:start + chunk]))
                await writer.drain()
            return
        tick = 0.005
        per_tick = rate * tick
        started = loop.time()
        sent = 0
        while sent < len(frames):
            due = min(len(frames), int((loop.time() - started) / tick * per_tick) + 1)
            if due > sent:
                writer.write(b"".join(frames[sent:due]))
                sent = due
                await writer.drain()
            await asyncio.sleep(tick)


def _msg_id(payload: bytes):
    try:
        return orjson.loads(payload).get("id")
    except (orjson.JSONDecodeError, AttributeError):
        return None


async def read_frame(reader: asyncio.StreamReader) -> bytes | None:
    """One client frame (masked); None on close/EOF, b"" for control frames."""
    try:
        b0, b1 = await reader.readexactly(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", await reader.readexactly(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", await reader.readexactly(8))[0]
        mask = await reader.readexactly(4) if b1 & 0x80 else b"\0\0\0\0"
        data = await reader.readexactly(n)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    payload = bytes(c ^ mask[i % 4] for i, c in enumerate(data))
    opcode = b0 & 0x0F
    if opcode == 0x8:
        return None
    return payload if opcode in (0x1, 0x2) else b""


def make_cert(directory: str) -> tuple[str, str]:
    """Self-signed certificate for 127.0.0.1/localhost (cryptography package)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path


async def main_async(port: int, tls_port: int, cert_dir: str) -> None:
    server = ReplayServer()
    plain = await asyncio.start_server(server.handle, "127.0.0.1", port, limit=2 ** 20)
    cert_path, key_path = make_cert(cert_dir)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_path, key_path)
    tls = await asyncio.start_server(server.handle, "127.0.0.1", tls_port, ssl=ctx, limit=2 ** 20)
    print("READY", plain.sockets[0].getsockname()[1], tls.sockets[0].getsockname()[1], cert_path,
          flush=True)
    async with plain, tls:
        await asyncio.gather(plain.serve_forever(), tls.serve_forever())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tls-port", type=int, default=0)
    parser.add_argument("--cert-dir", default=None)
    args = parser.parse_args()
    cert_dir = args.cert_dir or tempfile.mkdtemp(prefix="replay-cert-")
    try:
        import uvloop
        uvloop.run(main_async(args.port, args.tls_port, cert_dir))
    except ImportError:
        asyncio.run(main_async(args.port, args.tls_port, cert_dir))


if __name__ == "__main__":
    main()
