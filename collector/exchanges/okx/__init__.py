"""OKX v5 public market data (spot + USDT-margined SWAP)."""
