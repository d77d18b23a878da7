"""Collector benchmarks (run with python -m tests.bench.collector_bench; not collected as tests)."""
