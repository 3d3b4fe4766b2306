"""Benchmarks: haystack builder and runners; results in bench/results/."""
