"""Efficiency benchmarks: KV bytes, peak memory, largest batch under a budget, decode throughput (docs/efficiency.md)."""
