"""Test support: fake exchanges, helpers, the fault table, the soak, process harnesses."""
