"""Implementations compared by the benchmarks, one module per framework (never mixed)."""
