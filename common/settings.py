"""Typed configuration shared by the collector and the API.

Every field can be set from the environment with the ``CRYPTODATA_`` prefix; nested fields use a
double underscore, e.g. ``CRYPTODATA_BINANCE__SPOT_WS_URL`` or ``CRYPTODATA_RETENTION__TRADES``.
Lists are JSON (``CRYPTODATA_BINANCE__SPOT_SYMBOLS='["BTCUSDT"]'``). An optional env-style file
named by ``CRYPTODATA_CONFIG_FILE`` (default ``.env`` in the working directory) is read first;
real environment variables win over it. ``MONGODB_URI`` is accepted without the prefix because
it is the name every MongoDB tool uses.
"""
from __future__ import annotations

import os
from functools import lru_cache
from typing import Literal

from pydantic import AliasChoices, BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ExchangeSettings(BaseModel):
    """Per-exchange switches, symbols and base URLs (the URLs are overridable for tests/proxies)."""

    enabled: bool = True
    spot_symbols: list[str] = []
    perp_symbols: list[str] = []
    spot_ws_url: str = ""
    spot_rest_url: str = ""
    perp_ws_url: str = ""
    perp_rest_url: str = ""
    # Order-book depth kept in memory (levels per side) and how many levels a stored snapshot keeps.
    book_depth: int = 1000
    # Seconds without any data message before a connection is declared dead (the heartbeat is
    # separate: a connection that answers pings but sends no data is still dead).
    idle_timeout_s: float = 30.0
    # Make-before-break rotation of every connection after this many seconds (0 = off); Binance
    # cuts connections at 24 h.
    rotate_after_s: float = 0.0
    # REST backfill of trades/candles after a disconnect, restart or trade-id hole.
    backfill: bool = True
    # Pages of trades one gap's backfill may fetch (a REST budget; venues that page back by id).
    backfill_max_pages: int = 20


class BinanceSettings(ExchangeSettings):
    spot_symbols: list[str] = ["BTCUSDT", "BTCUSDC"]       # BUSD pairs no longer trade
    perp_symbols: list[str] = ["BTCUSDT"]
    spot_ws_url: str = "wss://stream.binance.com:9443"
    spot_rest_url: str = "https://api.binance.com"
    # USD-M futures: the /public and /market routes are appended to this base.
    perp_ws_url: str = "wss://fstream.binance.com"
    perp_rest_url: str = "https://fapi.binance.com"
    rotate_after_s: float = 23.5 * 3600


class BybitSettings(ExchangeSettings):
    spot_symbols: list[str] = ["BTCUSDT", "BTCUSDC"]
    perp_symbols: list[str] = ["BTCUSDT"]
    spot_ws_url: str = "wss://stream.bybit.com/v5/public/spot"
    perp_ws_url: str = "wss://stream.bybit.com/v5/public/linear"
    spot_rest_url: str = "https://api.bybit.com"
    perp_rest_url: str = "https://api.bybit.com"
    book_depth: int = 200


class KrakenSettings(ExchangeSettings):
    # The seed's names (XBT/USD, XXBTZUSD) are accepted and mapped to the WebSocket v2 name.
    spot_symbols: list[str] = ["BTC/USD"]
    perp_symbols: list[str] = ["PF_XBTUSD"]
    spot_ws_url: str = "wss://ws.kraken.com/v2"
    spot_rest_url: str = "https://api.kraken.com"
    perp_ws_url: str = "wss://futures.kraken.com/ws/v1"
    perp_rest_url: str = "https://futures.kraken.com"
    book_depth: int = 100
    # Perpetuals over the Derivatives WebSocket v1 (decommissioned 1 March 2027) or the Unified
    # WebSocket (v2 format, asset_class "derivatives"); v1 until unified is proven live.
    perp_transport: Literal["unified", "v1"] = "v1"
    perp_unified_ws_url: str = "wss://uws.kraken.com/v2/public"


class GateioSettings(ExchangeSettings):
    spot_symbols: list[str] = ["BTC_USDT", "BTC_USDC"]
    perp_symbols: list[str] = ["BTC_USDT"]
    spot_ws_url: str = "wss://api.gateio.ws/ws/v4/"
    spot_rest_url: str = "https://api.gateio.ws/api/v4"
    perp_ws_url: str = "wss://fx-ws.gateio.ws/v4/ws/usdt"
    perp_rest_url: str = "https://api.gateio.ws/api/v4"
    book_depth: int = 100


class OkxSettings(ExchangeSettings):
    spot_symbols: list[str] = ["BTC-USDT", "BTC-USDC"]
    perp_symbols: list[str] = ["BTC-USDT-SWAP"]
    # Base of the v5 WebSocket API: /public and /business are appended.
    spot_ws_url: str = "wss://ws.okx.com:8443/ws/v5"
    perp_ws_url: str = "wss://ws.okx.com:8443/ws/v5"
    spot_rest_url: str = "https://www.okx.com"
    perp_rest_url: str = "https://www.okx.com"
    book_depth: int = 400


class RetentionSettings(BaseModel):
    """Retention in seconds per collection (documents whose ``ts`` is older are deleted)."""

    # How: ``auto`` = a TTL index on a real MongoDB, the collector's bounded deletes on nx-27017
    # (common.indexes.server_profile); ``ttl`` / ``delete`` force one (e.g. to exercise the TTL
    # provisioning against nx-27017 in the deployment checks).
    mechanism: Literal["auto", "ttl", "delete"] = "auto"

    market_data: int = 7 * 86400
    order_book: int = 2 * 86400
    trades: int = 7 * 86400
    ohlcv: int = 365 * 86400
    funding_rates: int = 365 * 86400
    open_interest: int = 90 * 86400
    volume_liquidity: int = 30 * 86400


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CRYPTODATA_",
        env_nested_delimiter="__",
        env_file=os.environ.get("CRYPTODATA_CONFIG_FILE", ".env"),
        extra="ignore",
    )

    mongodb_uri: str = Field(
        "mongodb://127.0.0.1:27017",
        validation_alias=AliasChoices("MONGODB_URI", "CRYPTODATA_MONGODB_URI"),
    )
    mongodb_db: str = "cryptodata"

    binance: BinanceSettings = BinanceSettings()
    bybit: BybitSettings = BybitSettings()
    kraken: KrakenSettings = KrakenSettings()
    gateio: GateioSettings = GateioSettings()
    okx: OkxSettings = OkxSettings()
    # Comma-free JSON list of exchanges to run; the per-exchange ``enabled`` flag also applies.
    exchanges: list[str] = ["binance", "bybit", "kraken", "gateio", "okx"]

    retention: RetentionSettings = RetentionSettings()
    # Where the server has no TTL indexes (nx-27017, see common.indexes), the collector's
    # retention task deletes expired documents every this many seconds (collector.retention).
    retention_interval_s: float = 60.0

    # Writer: flush when a collection's batch reaches batch_size or flush_interval_s has passed.
    # 0.25 s keeps receive->stored p99 well under 500 ms for low-rate collections (tickers,
    # klines) at 2,000 msgs/s; busy collections flush on batch_size first anyway.
    batch_size: int = 500
    flush_interval_s: float = 0.25
    queue_max: int = 200_000
    # Disk spool for MongoDB outages (docs/reliability.md): directory, size limit and what
    # happens when it is full: "drop_oldest" (default) or "reject" (keep in memory up to
    # queue_max, then drop new documents).
    spool_dir: str = "var/spool"
    spool_max_mb: float = 512.0
    spool_full_policy: str = "drop_oldest"
    # How often the live book is sampled into order_book snapshots and volume_liquidity records.
    book_snapshot_interval_s: float = 1.0
    book_snapshot_levels: int = 20
    liquidity_interval_s: float = 5.0
    status_interval_s: float = 5.0
    log_stats_interval_s: float = 30.0
    # REST polling cadence (open interest, funding fallback); the CLI's POLL_INTERVAL_S overrides.
    poll_interval_s: float = 30.0

    # Sentry (common/sentry.py): an empty DSN means nothing is sent. ``release`` defaults to
    # cryptodata@<git commit> (or the REVISION file the deployment writes).
    sentry_dsn: str = ""
    environment: str = "production"
    release: str = ""

    api_host: str = "127.0.0.1"
    api_port: int = 5001
    log_level: str = "INFO"
    # Seconds after which a stream with no stored record counts as stale in /health.
    stale_after_s: float = 120.0
    # API keys accepted in the X-API-Key header (JSON list in CRYPTODATA_API_KEYS).
    api_keys: list[str] = []
    # "auto": keys required when api_host is not a loopback address; "on" / "off" force it.
    api_auth: str = "auto"
    # Token-bucket rate limit per API key (or per client IP without auth); 0 disables it.
    api_rate_per_s: float = 20.0
    api_rate_burst: int = 40
    # Scale-out: "i/N" = this process owns partition i of N of the (exchange, market, symbol,
    # stream) subscriptions (stable crc32 split, see collector/partition.py); "" = all of them.
    partition: str = ""

    def exchange(self, name: str) -> ExchangeSettings:
        return getattr(self, name)

    def enabled_exchanges(self) -> list[str]:
        return [name for name in self.exchanges if self.exchange(name).enabled]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
