"""Fake exchange servers (WebSocket + REST on 127.0.0.1) speaking the real message formats."""
