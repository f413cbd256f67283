"""Benchmarks: each module measures one thing against real peers or ground truth and prints a markdown table.

`python -m benchmarks` (what `make bench` runs) runs them all; `python -m benchmarks.<name>` runs one.
"""
