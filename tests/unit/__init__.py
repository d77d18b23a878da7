"""Unit tests: one module or pure function at a time (parsers per exchange, order book, book sync, resync, the feed kit, schema and docs), no sockets or servers."""
