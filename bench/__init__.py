"""Benchmarks: each prints ratios measured side by side in one run and appends them to bench/RESULTS.md."""
