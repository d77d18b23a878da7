"""Bybit v5 public market data (spot + USDT linear perpetual)."""
