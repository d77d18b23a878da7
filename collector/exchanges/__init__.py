"""Exchange adapters. Each is a package with ``endpoints`` (data: channels, limits, heartbeat
rule), ``parsers`` (pure: raw message -> normalized records) and ``feed`` (a ``Feed`` subclass that
subscribes, routes parsed records and drives book sync)."""
from __future__ import annotations

import importlib

# exchange id -> "module:class" of its Feed (imported only when enabled).
FEEDS = {
    "binance": "collector.exchanges.binance.feed:BinanceFeed",
    "bybit": "collector.exchanges.bybit.feed:BybitFeed",
    "kraken": "collector.exchanges.kraken.feed:KrakenFeed",
    "gateio": "collector.exchanges.gateio.feed:GateioFeed",
    "okx": "collector.exchanges.okx.feed:OkxFeed",
}


def load_feed_class(name: str):
    module_name, class_name = FEEDS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)
