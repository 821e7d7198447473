"""Speed benchmarks (run as ``python -m bench.benchmarks.<name>``); never part of the unit tests."""
