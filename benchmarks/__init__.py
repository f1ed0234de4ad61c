"""Benchmarks of the suite (`make bench`): timing tables and ratios, never tests. They use only public API."""
