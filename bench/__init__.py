"""Reproducible benchmarks: `make bench` compares the gateway with nginx on the same machine in the same run."""
