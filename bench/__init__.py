"""Benchmarks: scripts that print figures as ratios against a baseline measured in the same run.

Run one with `uv run python -m bench.<name> --help`; see bench/README.md.
"""
