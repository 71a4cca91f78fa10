"""Benchmarks: `python bench/run.py` compares rpcd with stock Twisted and the peers."""
