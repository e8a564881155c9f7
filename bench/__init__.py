"""The aqnode benchmark suite: ``scripts/bench`` (see BENCHMARKS.md)."""
