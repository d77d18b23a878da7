"""The cryptodata HTTP API (aiohttp), reading what the collector stored in MongoDB."""
