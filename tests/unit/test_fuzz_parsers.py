"""Hypothesis fuzzing of every ``collector/exchanges/*/parsers.py`` function named ``parse_*``:
mutated fixture messages (tests/fixtures/<exchange>/*.jsonl) and arbitrary JSON. Only the
"malformed input" exceptions may escape (the feeds catch those and count the message as
malformed); anything else is a parser bug. Plus: the message handler of every connection of
every feed (``collector.exchanges.FEEDS``) never raises, for arbitrary bytes/text and mutated
fixture messages, and counts every message that is not a JSON object as malformed (an exception
escaping a handler would end that connection's task). New adapters are picked up automatically
(parsers module + fixtures dir, FEEDS entry)."""
from __future__ import annotations

import asyncio
import copy
import importlib
import inspect
import pkgutil
from datetime import datetime, timezone
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import collector.exchanges as exchanges_pkg
from collector.exchanges import FEEDS, load_feed_class
from collector.exchanges.base import FeedContext
from collector.exchanges.gateio import endpoints as gateio_endpoints
from collector.exchanges.okx import endpoints as okx_endpoints
from collector.stats import Stats
from collector.writer import Writer
from common.settings import Settings
from tests.support.faultlog import tally

# OverflowError: int() of an infinite float (a number too large for a double) is malformed input too.
ALLOWED = (KeyError, ValueError, TypeError, IndexError, AttributeError, OverflowError)
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
RECEIVED = datetime(2026, 1, 1, tzinfo=timezone.utc)

json_scalars = (st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70)
                | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
                | st.sampled_from(["0", "-1", "1e400", "nan", "", "0.00000001", "1712345678901"]))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=4), inner, max_size=4),
                           max_leaves=12)


def _parser_modules():
    found = []
    for info in pkgutil.iter_modules(exchanges_pkg.__path__):
        if not info.ispkg:
            continue
        try:
            module = importlib.import_module(f"collector.exchanges.{info.name}.parsers")
        except ModuleNotFoundError:
            continue
        found.append((info.name, module))
    return found


def _fixtures(exchange: str) -> list:
    samples = []
    for path in sorted((FIXTURES / exchange).glob("*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                doc = orjson.loads(line)
                samples.append(doc)
                if isinstance(doc, dict) and isinstance(doc.get("data"), (dict, list)):
                    samples.append(doc["data"])
                if isinstance(doc, list) and doc:
                    samples.extend(doc[:2])
    return samples or [{}]


EXTREMES = [2 ** 70, -2 ** 70, 10 ** 17, -1, 0, 1e300, float("inf"), float("nan"), "1e400",
            "inf", "-0", "", None, True, [], {}, "\x00", 2 ** 63]


def _mutate(value, draw, depth=0):
    """Randomly replace/delete/keep parts of a realistic message."""
    choice = draw(st.integers(0, 9))
    if choice == 0 or depth > 4:
        return draw(json_values)
    if choice <= 3 and not isinstance(value, (dict, list)):
        return draw(st.sampled_from(EXTREMES))
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            action = draw(st.integers(0, 9))
            if action == 0:
                continue                         # key missing
            out[key] = _mutate(item, draw, depth + 1) if action < 4 else item
        return out
    if isinstance(value, list):
        items = [_mutate(v, draw, depth + 1) if draw(st.booleans()) else v for v in value]
        return items[:draw(st.integers(0, len(items)))] if draw(st.booleans()) else items
    return value


@st.composite
def messages(draw, samples):
    if draw(st.integers(0, 4)) == 0:
        return draw(json_values)
    return _mutate(draw(st.sampled_from(samples)), draw)


def _paths(value, prefix: tuple = ()) -> list[tuple]:
    """Every key/index path inside a decoded message."""
    items = value.items() if isinstance(value, dict) else \
        enumerate(value) if isinstance(value, list) else ()
    out = []
    for key, item in items:
        out.append(prefix + (key,))
        out.extend(_paths(item, prefix + (key,)))
    return out


@st.composite
def near_valid(draw, samples):
    """A real message with exactly one field deleted or replaced (reaches deeper code than
    heavier mutations, which mostly fail at the first lookup)."""
    msg = copy.deepcopy(draw(st.sampled_from(samples)))
    paths = _paths(msg)
    if not paths:
        return msg
    path = draw(st.sampled_from(paths))
    parent = msg
    for key in path[:-1]:
        parent = parent[key]
    if isinstance(parent, dict) and draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(st.sampled_from(EXTREMES) | json_scalars)
    return msg


def _args_for(func, draw, samples):
    args = []
    for name, param in inspect.signature(func).parameters.items():
        if param.default is not inspect.Parameter.empty:
            break
        if name == "received_at":
            args.append(RECEIVED)
        elif name == "market":
            args.append(draw(st.sampled_from(["spot", "perp"])))
        elif name in ("symbol", "exchange", "interval"):
            args.append(draw(st.sampled_from(["BTCUSDT", "BTC-USDT", ""])))
        elif name in ("mark", "mark_price", "price"):
            args.append(draw(st.none() | st.floats(0, 1e6)))
        else:
            args.append(draw(messages(samples)))
    return args


PARSERS = [(ex, name, func) for ex, module in _parser_modules()
           for name, func in inspect.getmembers(module, inspect.isfunction)
           if name.startswith("parse_") and func.__module__ == module.__name__]


def test_every_adapter_is_fuzzed():
    exchanges = {ex for ex, _, _ in PARSERS}
    assert PARSERS and exchanges == set(FEEDS), (exchanges, set(FEEDS))


@pytest.mark.parametrize("exchange,name,func", PARSERS, ids=[f"{e}.{n}" for e, n, _ in PARSERS])
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_parser_raises_only_malformed_errors(exchange, name, func, data):
    samples = _fixtures(exchange)
    args = _args_for(func, data.draw, samples)
    try:
        func(*args)
    except ALLOWED:
        pass
    tally("fuzz_parsers", expected="only malformed-input errors (which the feeds count) escape "
          "a parser", examples=1)


# ---- feed message handlers -------------------------------------------------------------------
# What a feed's prepare() would have fetched over REST (contract sizes), so that near-valid
# messages reach the record-building code instead of stopping at the missing lookup.
PRIME = {
    "gateio": lambda feed: feed.multipliers.update(gateio_endpoints.DEFAULT_QUANTO_MULTIPLIER),
    "okx": lambda feed: feed.ct_val.update(okx_endpoints.DEFAULT_CT_VAL),
}
# Non-JSON control frames a handler legitimately ignores without counting them.
CONTROL_TEXT = {"pong", b"pong"}


@pytest.fixture(scope="module")
def loop():
    # Handlers schedule work (snapshot fetches, resubscribes): they need a running loop.
    loop = asyncio.new_event_loop()
    yield loop
    pending = asyncio.all_tasks(loop)
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.close()


@pytest.fixture(scope="module")
def feeds(loop):
    """Every feed, as the collector builds it (default settings), with its connections (not
    connected: ``reconnect`` is a no-op, ``send`` fails as on a dropped socket)."""
    async def build():
        built = {}
        for name in FEEDS:
            settings = Settings(_env_file=None)
            feed = load_feed_class(name)(settings.exchange(name), FeedContext(
                settings, Writer(None), Stats(), None, 30.0))  # type: ignore[arg-type]
            PRIME.get(name, lambda _: None)(feed)
            built[name] = (feed, feed.build_connections())
        return built
    return loop.run_until_complete(build())


def _json_object(raw: str | bytes) -> bool:
    try:
        return isinstance(orjson.loads(raw), dict)
    except orjson.JSONDecodeError:
        return False


def _raw(exchange: str):
    samples = _fixtures(exchange)
    return (st.binary(max_size=300) | st.text(max_size=300)
            | (messages(samples) | near_valid(samples)).map(
                lambda m: orjson.dumps(m, option=orjson.OPT_NON_STR_KEYS) if _dumpable(m)
                else b"{}"))


@pytest.mark.parametrize("exchange", list(FEEDS))
@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_feed_message_handlers_never_raise(exchange, feeds, loop, data):
    feed, conns = feeds[exchange]
    conn = data.draw(st.sampled_from(conns))
    raw = data.draw(_raw(exchange))
    before, records_before = feed.stats.malformed, sum(feed.stats.records.values())

    async def deliver() -> None:
        conn.on_message(conn, raw)          # exactly what WsConnection calls per message
        # Work the handler scheduled (REST snapshot, resubscribe) needs a session: drop it.
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()
    loop.run_until_complete(deliver())
    counted = feed.stats.malformed - before
    if not _json_object(raw) and raw not in CONTROL_TEXT:
        assert counted == 1, (exchange, conn.name, raw)
    tally("fuzz_feed_handlers", expected="no exception escapes a feed's message handler; "
          "malformed messages counted", examples=1, malformed=counted,
          records_built=sum(feed.stats.records.values()) - records_before)


def _dumpable(value) -> bool:
    try:
        orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
        return True
    except (TypeError, orjson.JSONEncodeError):
        return False
