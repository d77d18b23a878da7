"""Integration tests: feeds against the fake exchanges, the API, storage on a real MongoDB wire-protocol server."""
