"""Benchmarks: `make bench` runs every module here, side by side with real peers."""
