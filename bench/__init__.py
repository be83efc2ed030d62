"""Benchmarks and the load generator; each prints JSON."""
