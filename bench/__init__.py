"""Benchmarks (`make bench`): side by side in one run, reported as ratios."""
