"""Kraken: spot WebSocket v2 and Kraken Futures (perpetual ``PF_*``) WebSocket v1."""
