"""Gate.io API v4: spot and USDT-margined perpetual futures."""
