"""System tests: real processes (python -m collector / api, supervisord, nx-27017), fault injection, benchmarks smoke."""
