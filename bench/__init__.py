"""Benchmarks of aligner_jax against its peers (see bench/README.md); not part of the package."""
