"""Binance replay server for the benchmarks (run in its own process; not a test).

Speaks just enough HTTP/1.1 + RFC 6455 to look like Binance to the collector: the combined-stream
WebSocket (``.../stream``, SUBSCRIBE answered with an ack) and the REST endpoints the feed calls
(``/api/v3/exchangeInfo``, ``/api/v3/depth``). Messages are generated once per scenario, encoded
with orjson and pre-framed as WebSocket text frames, so the server costs almost no CPU: it writes
frame-aligned chunks to the socket as fast as the client drains them (``rate=0``) or at a fixed
rate. Plain ``ws://`` and ``wss://`` (self-signed certificate generated at start-up) are served on
two ports.

The scenario is encoded in the URL so one server serves every run::

    ws://127.0.0.1:PORT/b/<kind>/<count>/<rate>/<symbols>/<levels>/<warmup>/stream
    http://127.0.0.1:PORT/b/<kind>/<count>/<rate>/<symbols>/<levels>/<warmup>/api/v3/depth?...

``kind``: trade | ticker | depth | kline | mix. ``levels``: book levels per side in the REST
snapshot (diffs touch 5-15 levels per side inside that range). The stream sends ``warmup``
messages, waits until every symbol's depth snapshot was served (depth/mix; the feed's documented
sync), then the remaining ``count - warmup`` messages. Depth diffs continue from the snapshot's
``lastUpdateId`` (``U = prev u + 1``), so a client following Binance's procedure stays in sync.

Usage: ``python -m tests.bench.replay_server --port 0 --tls-port 0`` prints ``READY <port>
<tls_port> <cert_path>`` on stdout.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
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


def symbols_for(count: int) -> list[str]:
    named = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "ADAUSDT", "DOGEUSDT"]
    return (named + [f"ZZ{i:04d}USDT" for i in range(count)])[:count]


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
    update_id: int = 1000
    bids: dict[int, str] = field(default_factory=dict)   # tick index below mid -> qty text
    asks: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for i in range(1, self.levels + 1):
            self.bids[i] = f"{self.rng.uniform(0.001, 5):.8f}"
            self.asks[i] = f"{self.rng.uniform(0.001, 5):.8f}"
        self.snapshot = orjson.dumps({
            "lastUpdateId": self.update_id,
            "bids": [[self.price(-i), q] for i, q in sorted(self.bids.items())],
            "asks": [[self.price(i), q] for i, q in sorted(self.asks.items())]})

    def price(self, offset: int) -> str:
        return f"{self.mid + offset * TICK:.8f}"

    def diff(self, ts: int) -> dict:
        rng = self.rng
        out = {}
        for side, sign in (("b", -1), ("a", 1)):
            levels = self.bids if sign < 0 else self.asks
            changes = []
            for _ in range(rng.randint(5, 15)):
                # Skewed towards the top of the book, always inside the snapshot's range.
                i = 1 + min(self.levels - 1, int(rng.expovariate(1.0 / max(2.0, self.levels / 8))))
                if i in levels and rng.random() < 0.2 and len(levels) > self.levels // 2:
                    del levels[i]
                    changes.append([self.price(sign * i), "0.00000000"])
                else:
                    q = f"{rng.uniform(0.001, 5):.8f}"
                    levels[i] = q
                    changes.append([self.price(sign * i), q])
            out[side] = changes
        first = self.update_id + 1
        self.update_id += rng.randint(1, 20)
        return {"e": "depthUpdate", "E": ts, "s": self.symbol, "U": first, "u": self.update_id,
                "b": out["b"], "a": out["a"]}


class TickerState:
    """A symbol's rolling 24 h statistics, moving like a live market: every message has a new
    last price (a random walk on the tick grid), new best bid/ask and their sizes, growing
    volumes and trade counts; open/high/low move now and then. (Identical messages would let a
    text->float cache look better than it is on a real stream.)"""

    def __init__(self, book: Book, rng: random.Random) -> None:
        self.book, self.rng = book, rng
        self.last = 0
        self.open, self.high, self.low = -50, 80, -90
        self.volume, self.quote = 122474.816, 2036102085.697464
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

    def next(self, ts: int) -> dict:
        self.step()
        rng, price = self.rng, self.book.price
        spread = rng.randint(1, 2)
        change = (self.last - self.open) * TICK
        open_price = self.book.mid + self.open * TICK
        return {"e": "24hrTicker", "E": ts, "s": self.book.symbol, "p": f"{change:.8f}",
                "P": f"{change / open_price * 100:.3f}",
                "w": f"{self.quote / self.volume:.8f}", "x": price(self.last - 1),
                "c": price(self.last), "Q": f"{rng.uniform(0.0001, 2):.8f}",
                "b": price(self.last - spread + 1), "B": f"{rng.uniform(0.001, 5):.8f}",
                "a": price(self.last + 1), "A": f"{rng.uniform(0.001, 5):.8f}",
                "o": price(self.open), "h": price(self.high), "l": price(self.low),
                "v": f"{self.volume:.8f}", "q": f"{self.quote:.8f}", "O": ts - 86_400_000,
                "C": ts, "F": self.first_id, "L": self.last_id,
                "n": self.last_id - self.first_id + 1}

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

    @property
    def has_depth(self) -> bool:
        return self.kind in ("depth", "mix")

    def build(self) -> None:
        rng = random.Random(42)
        syms = symbols_for(self.nsymbols)
        self.books = {s: Book(s, 100.0 + 500 * i + 60000.0 * (i == 0), self.levels, rng)
                      for i, s in enumerate(syms)}
        trade_ids = {s: 1_000_000 for s in syms}
        tickers = {s: TickerState(book, rng) for s, book in self.books.items()}
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

    def snapshot(self, symbol: str) -> bytes | None:
        book = self.books.get(symbol)
        if book is None:
            return None
        self.snapshots_served.add(symbol)
        if self.synced is not None and len(self.snapshots_served) >= len(self.books):
            self.synced.set()
        return book.snapshot


class ReplayServer:
    def __init__(self) -> None:
        self.scenarios: dict[str, Scenario] = {}

    def scenario(self, key: str) -> Scenario:
        sc = self.scenarios.get(key)
        if sc is None:
            kind, count, rate, nsym, levels, warmup = key.split("/")
            sc = Scenario(kind, int(count), float(rate), int(nsym), int(levels), int(warmup))
            sc.build()
            # Keep memory bounded across many runs: only the newest few scenarios stay cached.
            if len(self.scenarios) > 6:
                self.scenarios.pop(next(iter(self.scenarios)))
            self.scenarios[key] = sc
        return sc

    @staticmethod
    def split(path: str) -> tuple[str, str]:
        """``/b/k/n/r/s/l/w/rest...`` -> (scenario key, rest)."""
        parts = path.split("/")
        if len(parts) < 9 or parts[1] != "b":
            raise ValueError(path)
        return "/".join(parts[2:8]), "/" + "/".join(parts[8:])

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
        return 404, b'{"code":-1,"msg":"not found"}'

    async def websocket(self, target: str, headers: dict, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
        accept = base64.b64encode(hashlib.sha1(headers["sec-websocket-key"].encode() + GUID).digest())
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        key, _ = self.split(urlsplit(target).path)
        sc = self.scenario(key)
        sc.snapshots_served = set()
        sc.synced = asyncio.Event()
        first = await read_frame(reader)           # SUBSCRIBE
        if first is None:
            return
        writer.write(frame(orjson.dumps({"result": None, "id": _msg_id(first)})))
        acker = asyncio.get_running_loop().create_task(self.ack_more(reader, writer))
        try:
            await self.stream(sc, writer)
            await acker                              # keep the socket open until the client leaves
        finally:
            acker.cancel()

    async def ack_more(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            payload = await read_frame(reader)
            if payload is None:
                return
            if payload:
                writer.write(frame(orjson.dumps({"result": None, "id": _msg_id(payload)})))

    async def stream(self, sc: Scenario, writer: asyncio.StreamWriter) -> None:
        frames = sc.frames
        warm = min(sc.warmup, len(frames))
        await self.send(frames[:warm], sc.rate, writer)
        if sc.has_depth:
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
