"""The cryptodata collector: exchange WebSocket/REST feeds -> normalized records -> MongoDB."""
