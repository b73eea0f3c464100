"""Shipyard benchmarks: each module compares us with named peers in the same run."""
