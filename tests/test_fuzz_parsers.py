"""Hypothesis fuzzing of every ``collector/exchanges/*/parsers.py`` function named ``parse_*``:
mutated fixture messages (tests/fixtures/<exchange>/*.jsonl) and arbitrary JSON. Only the
"malformed input" exceptions may escape (the feeds catch those and count the message as
malformed); anything else is a parser bug. Plus: the Binance feed's on_message never raises for
arbitrary bytes. New adapters are picked up automatically (parsers module + fixtures dir)."""
from __future__ import annotations

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
from tests.faultlog import report

ALLOWED = (KeyError, ValueError, TypeError, IndexError, AttributeError)
FIXTURES = Path(__file__).parent / "fixtures"
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
CHECKED: dict[str, int] = {}


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
    CHECKED[f"{exchange}.{name}"] = CHECKED.get(f"{exchange}.{name}", 0) + 1


def test_fuzz_summary():
    report("fuzz_parsers", parsers=len(PARSERS), examples=sum(CHECKED.values()))
    assert PARSERS


@pytest.fixture(scope="module")
def binance_feed():
    from collector.exchanges.base import FeedContext
    from collector.exchanges.binance.feed import BinanceFeed
    from collector.stats import Stats
    from collector.writer import Writer
    from common.settings import BinanceSettings, Settings

    cfg = BinanceSettings()
    feed = BinanceFeed(cfg, FeedContext(Settings(), Writer(None), Stats(), None, 1.0))
    return feed


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=st.binary(max_size=300) | st.text(max_size=300)
       | messages(_fixtures("binance")).map(lambda m: orjson.dumps(m, option=orjson.OPT_NON_STR_KEYS)
                                            if _dumpable(m) else b"{}"),
       market=st.sampled_from(["spot", "perp"]))
def test_binance_on_message_never_raises(binance_feed, raw, market):
    binance_feed._on_message(_Conn(), raw, market)


def _dumpable(value) -> bool:
    try:
        orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
        return True
    except (TypeError, orjson.JSONEncodeError):
        return False


class _Conn:
    def reconnect(self, reason: str) -> None:
        pass
